//! [`WorkerStore`]: a store on its own thread, so fsyncs do not stall the node.
//!
//! Why a worker and not an engine that emits store operations (quinn-proto and str0m emit
//! transmits the driver performs): the OTA engines already speak to a synchronous
//! [`SlotStore`], whose contract (records atomic, areas trusted only through a record
//! written after them) the crash tests check at every step. A worker keeps that contract
//! and the engines unchanged, because the only thing that matters for crash safety is the
//! *order* in which operations reach the disk, and one FIFO queue drained by one thread
//! keeps it. Emitting operations would make every store call in the engines a suspended
//! state (about 40 call sites in `meshfleet-ota`), for the same guarantee.

use std::collections::BTreeMap;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};

use meshfleet_ota::store::{IoFault, StoreOp};
use meshfleet_ota::{BootRecord, Slot, SlotStore, StoreError};

/// How the worker is sized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerConfig {
    /// Writes queued before a caller waits for the disk (backpressure). Each holds at most
    /// one chunk or one state record, so the memory the queue can take is bounded.
    pub queue: usize,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        // 64 chunks of 1 KiB: about half a second of a link's chunks at the pacing rate,
        // far more than one fsync takes on a healthy disk.
        Self { queue: 64 }
    }
}

enum Write {
    SaveState(Vec<u8>),
    ClearState,
    ResetStaging(u64),
    Staging {
        seq: u64,
        offset: u64,
        data: Vec<u8>,
    },
    EraseSlot(Slot),
    Slot(Slot, u64, Vec<u8>),
    SyncSlot(Slot),
    SaveBoot(BootRecord),
}

enum Read {
    State,
    Staging(u64, usize),
    Slot(Slot, u64, usize),
    SlotLen(Slot),
    Boot,
}

enum ReadResult {
    Bytes(Result<Vec<u8>, StoreError>),
    State(Result<Option<Vec<u8>>, StoreError>),
    Len(Result<u64, StoreError>),
    Boot(Result<Option<BootRecord>, StoreError>),
}

enum Job {
    Write(Write),
    Read(Read, SyncSender<ReadResult>),
}

#[derive(Default)]
struct Shared {
    /// Staged chunks queued but not yet written, by offset: served to reads of exactly
    /// that range (a relay forwards a chunk right after it stored it).
    staging: BTreeMap<u64, (u64, Vec<u8>)>,
    /// The first failure: every later call reports it and no later write is performed.
    failed: Option<StoreError>,
    /// Numbers the staged writes, so a finished write removes only its own queued copy.
    seq: u64,
}

/// A [`SlotStore`] that performs writes on its own thread, in the order they were made.
///
/// Guarantees:
/// * **Order**: operations reach the inner store in call order (one FIFO, one thread), so
///   a record (`state`, `boot`) never lands before the area writes made before it. A crash
///   loses a suffix of the queue: the disk then holds what a crash a little earlier would
///   have left, which the inner store's contract already covers.
/// * **Reads see every earlier write**: a read of a staged chunk still queued is served
///   from the queue's copy; any other read waits until the writes before it are done.
/// * **Failures are sticky**: a write that fails makes the store refuse every later call
///   with that error and perform no later write (a failed area write must not be followed
///   by a record that trusts it). The caller learns it at its next call, not at the
///   failed one. Reopen the store to recover.
/// * **Bounded**: at most [`WorkerConfig::queue`] writes wait; then the caller waits.
///
/// Clones are handles to the same worker and queue (the boot manager and the OTA engine
/// of one node share it, so each sees the other's writes in order). Dropping the last
/// handle finishes the queued writes and stops the thread.
#[derive(Clone)]
pub struct WorkerStore {
    worker: Arc<Worker>,
}

struct Worker {
    tx: Option<SyncSender<Job>>,
    shared: Arc<Mutex<Shared>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for WorkerStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerStore")
            .field("queued_staging", &lock(&self.worker.shared).staging.len())
            .finish_non_exhaustive()
    }
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // The worker never panics while holding the lock; if it did, the data is still the
    // last consistent map.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl WorkerStore {
    /// Moves `inner` to a new thread. Fails only if the OS cannot start a thread.
    pub fn spawn<S: SlotStore + 'static>(
        inner: S,
        config: WorkerConfig,
    ) -> Result<Self, std::io::Error> {
        let (tx, rx) = mpsc::sync_channel(config.queue.max(1));
        let shared = Arc::new(Mutex::new(Shared::default()));
        let worker_shared = shared.clone();
        let thread = thread::Builder::new()
            .name("ota-store".into())
            .spawn(move || run(inner, &rx, &worker_shared))?;
        Ok(Self {
            worker: Arc::new(Worker {
                tx: Some(tx),
                shared,
                thread: Some(thread),
            }),
        })
    }

    fn shared(&self) -> MutexGuard<'_, Shared> {
        lock(&self.worker.shared)
    }

    fn failed(&self) -> Result<(), StoreError> {
        self.shared().failed.clone().map_or(Ok(()), Err)
    }

    fn stopped(op: StoreOp) -> StoreError {
        StoreError::Io {
            op,
            fault: IoFault::WorkerStopped,
        }
    }

    fn write(&mut self, op: StoreOp, w: Write) -> Result<(), StoreError> {
        self.failed()?;
        let tx = self.worker.tx.as_ref().ok_or_else(|| Self::stopped(op))?;
        tx.send(Job::Write(w)).map_err(|_| Self::stopped(op))
    }

    fn read(&mut self, op: StoreOp, r: Read) -> Result<ReadResult, StoreError> {
        self.failed()?;
        let (reply, answer) = mpsc::sync_channel(1);
        let tx = self.worker.tx.as_ref().ok_or_else(|| Self::stopped(op))?;
        tx.send(Job::Read(r, reply))
            .map_err(|_| Self::stopped(op))?;
        let answer = answer.recv().map_err(|_| Self::stopped(op))?;
        // A write queued before this read may have failed meanwhile: sticky, reported.
        self.failed()?;
        Ok(answer)
    }
}

fn run<S: SlotStore>(mut inner: S, rx: &Receiver<Job>, shared: &Mutex<Shared>) {
    while let Ok(job) = rx.recv() {
        match job {
            Job::Write(w) => {
                if lock(shared).failed.is_some() {
                    // Sticky: nothing after a failed write reaches the disk.
                    continue;
                }
                let mut done_seq = None;
                let r = match w {
                    Write::SaveState(s) => inner.save_state(&s),
                    Write::ClearState => inner.clear_state(),
                    Write::ResetStaging(len) => inner.reset_staging(len),
                    Write::Staging { seq, offset, data } => {
                        done_seq = Some((offset, seq));
                        inner.write_staging(offset, &data)
                    }
                    Write::EraseSlot(slot) => inner.erase_slot(slot),
                    Write::Slot(slot, offset, data) => inner.write_slot(slot, offset, &data),
                    Write::SyncSlot(slot) => inner.sync_slot(slot),
                    Write::SaveBoot(rec) => inner.save_boot(&rec),
                };
                let mut sh = lock(shared);
                if let Some((offset, seq)) = done_seq {
                    // Only if no later write to that offset replaced the queued copy.
                    if sh.staging.get(&offset).is_some_and(|(s, _)| *s == seq) {
                        sh.staging.remove(&offset);
                    }
                }
                if let Err(e) = r {
                    sh.failed.get_or_insert(e);
                }
            }
            Job::Read(r, reply) => {
                let result = match r {
                    Read::State => ReadResult::State(inner.load_state()),
                    Read::Staging(offset, len) => {
                        ReadResult::Bytes(inner.read_staging(offset, len))
                    }
                    Read::Slot(slot, offset, len) => {
                        ReadResult::Bytes(inner.read_slot(slot, offset, len))
                    }
                    Read::SlotLen(slot) => ReadResult::Len(inner.slot_len(slot)),
                    Read::Boot => ReadResult::Boot(inner.load_boot()),
                };
                // The caller may have given up waiting (it was dropped): nothing to do.
                let _ = reply.send(result);
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing the queue lets the worker finish what is queued and stop.
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A reply of the wrong kind cannot happen (each read has its own reply channel); it is
/// reported as a stopped worker rather than trusted.
fn mismatch(op: StoreOp) -> StoreError {
    WorkerStore::stopped(op)
}

impl SlotStore for WorkerStore {
    fn load_state(&mut self) -> Result<Option<Vec<u8>>, StoreError> {
        match self.read(StoreOp::Read, Read::State)? {
            ReadResult::State(r) => r,
            _ => Err(mismatch(StoreOp::Read)),
        }
    }

    fn save_state(&mut self, state: &[u8]) -> Result<(), StoreError> {
        self.write(StoreOp::Write, Write::SaveState(state.to_vec()))
    }

    fn clear_state(&mut self) -> Result<(), StoreError> {
        self.write(StoreOp::Remove, Write::ClearState)
    }

    fn reset_staging(&mut self, len: u64) -> Result<(), StoreError> {
        // Queued chunks before the reset are emptied by it: never serve them again.
        self.shared().staging.clear();
        self.write(StoreOp::Truncate, Write::ResetStaging(len))
    }

    fn write_staging(&mut self, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        let seq = {
            let mut sh = self.shared();
            sh.seq += 1;
            let seq = sh.seq;
            sh.staging.insert(offset, (seq, data.to_vec()));
            seq
        };
        let r = self.write(
            StoreOp::Write,
            Write::Staging {
                seq,
                offset,
                data: data.to_vec(),
            },
        );
        if r.is_err() {
            self.shared().staging.remove(&offset);
        }
        r
    }

    fn read_staging(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        self.failed()?;
        if let Some((_, data)) = self.shared().staging.get(&offset) {
            if data.len() == len {
                return Ok(data.clone());
            }
        }
        match self.read(StoreOp::Read, Read::Staging(offset, len))? {
            ReadResult::Bytes(r) => r,
            _ => Err(mismatch(StoreOp::Read)),
        }
    }

    fn erase_slot(&mut self, slot: Slot) -> Result<(), StoreError> {
        self.write(StoreOp::Truncate, Write::EraseSlot(slot))
    }

    fn write_slot(&mut self, slot: Slot, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        self.write(StoreOp::Write, Write::Slot(slot, offset, data.to_vec()))
    }

    fn sync_slot(&mut self, slot: Slot) -> Result<(), StoreError> {
        self.write(StoreOp::Sync, Write::SyncSlot(slot))
    }

    fn read_slot(&mut self, slot: Slot, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        match self.read(StoreOp::Read, Read::Slot(slot, offset, len))? {
            ReadResult::Bytes(r) => r,
            _ => Err(mismatch(StoreOp::Read)),
        }
    }

    fn slot_len(&mut self, slot: Slot) -> Result<u64, StoreError> {
        match self.read(StoreOp::Stat, Read::SlotLen(slot))? {
            ReadResult::Len(r) => r,
            _ => Err(mismatch(StoreOp::Stat)),
        }
    }

    fn load_boot(&mut self) -> Result<Option<BootRecord>, StoreError> {
        match self.read(StoreOp::Read, Read::Boot)? {
            ReadResult::Boot(r) => r,
            _ => Err(mismatch(StoreOp::Read)),
        }
    }

    fn save_boot(&mut self, record: &BootRecord) -> Result<(), StoreError> {
        self.write(StoreOp::Write, Write::SaveBoot(record.clone()))
    }
}
