//! The file store keeps the `SlotStore` contract; the worker keeps the order of writes,
//! serves reads of queued chunks, reports failures, and does not make its caller wait for
//! a slow disk.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meshfleet_ota::store::image_info;
use meshfleet_ota::{BootRecord, IoFault, MemStore, Slot, SlotStore, StoreError, StoreOp};
use meshfleet_store_fs::{FileStore, WorkerConfig, WorkerStore};

fn exercise(s: &mut dyn SlotStore) {
    assert!(s.load_state().unwrap().is_none());
    s.save_state(b"{\"x\":1}").unwrap();
    assert_eq!(s.load_state().unwrap().unwrap(), b"{\"x\":1}");
    s.clear_state().unwrap();
    assert!(s.load_state().unwrap().is_none());
    s.reset_staging(10).unwrap();
    s.write_staging(4, b"abc").unwrap();
    assert_eq!(s.read_staging(3, 5).unwrap(), b"\0abc\0");
    s.erase_slot(Slot::B).unwrap();
    s.write_slot(Slot::B, 0, b"hello").unwrap();
    s.write_slot(Slot::B, 5, b" world").unwrap();
    s.sync_slot(Slot::B).unwrap();
    assert_eq!(s.slot_len(Slot::B).unwrap(), 11);
    assert_eq!(s.read_slot(Slot::B, 6, 5).unwrap(), b"world");
    assert!(s.load_boot().unwrap().is_none());
    let rec = BootRecord::new(Some(image_info(b"x", "1.0.0")));
    s.save_boot(&rec).unwrap();
    assert_eq!(s.load_boot().unwrap().unwrap(), rec);
}

#[test]
fn file_store_keeps_the_contract_and_its_records_across_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = FileStore::open(dir.path()).unwrap();
    exercise(&mut s);
    // Out of range is refused at once, typed.
    assert!(matches!(
        s.write_staging(8, b"abc"),
        Err(StoreError::OutOfRange { .. })
    ));
    assert!(s.read_staging(u64::MAX, 2).is_err());
    let mut s = FileStore::open(dir.path()).unwrap();
    assert!(s.load_boot().unwrap().is_some());
    assert_eq!(s.read_slot(Slot::B, 0, 5).unwrap(), b"hello");
    // A record that is not one is `Corrupt`, not an I/O error.
    std::fs::write(dir.path().join("boot.json"), b"{nope").unwrap();
    assert!(matches!(
        s.load_boot(),
        Err(StoreError::Corrupt {
            what: "boot.json",
            ..
        })
    ));
}

#[test]
fn os_errors_become_typed_faults_and_opening_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    // A directory under a regular file cannot be created: the user sees the path.
    let err = FileStore::open(file.join("store")).unwrap_err();
    assert!(err.to_string().contains("a-file"), "{err}");
    // A missing slot file: reading it is a typed `NotFound` of a read, no path inside.
    let mut s = FileStore::open(dir.path().join("store")).unwrap();
    assert_eq!(
        s.read_slot(Slot::A, 0, 1),
        Err(StoreError::Io {
            op: StoreOp::Open,
            fault: IoFault::NotFound
        })
    );
}

#[test]
fn the_worker_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = WorkerStore::spawn(
        FileStore::open(dir.path()).unwrap(),
        WorkerConfig::default(),
    )
    .unwrap();
    exercise(&mut w);
    drop(w);
    let mut s = FileStore::open(dir.path()).unwrap();
    assert_eq!(s.read_slot(Slot::B, 0, 11).unwrap(), b"hello world");
}

/// A disk that takes `delay` per write and logs the writes in the order it performs them.
#[derive(Clone)]
struct Slow {
    inner: MemStore,
    delay: Duration,
    log: Arc<Mutex<Vec<String>>>,
    fail_at: Option<usize>,
}

impl Slow {
    fn note(&mut self, what: String) -> Result<(), StoreError> {
        std::thread::sleep(self.delay);
        let mut log = self.log.lock().unwrap();
        if self.fail_at == Some(log.len()) {
            return Err(StoreError::Io {
                op: StoreOp::Write,
                fault: IoFault::StorageFull,
            });
        }
        log.push(what);
        Ok(())
    }
}

impl SlotStore for Slow {
    fn load_state(&mut self) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.load_state()
    }
    fn save_state(&mut self, state: &[u8]) -> Result<(), StoreError> {
        self.note(format!("state {}", String::from_utf8_lossy(state)))?;
        self.inner.save_state(state)
    }
    fn clear_state(&mut self) -> Result<(), StoreError> {
        self.note("clear".into())?;
        self.inner.clear_state()
    }
    fn reset_staging(&mut self, len: u64) -> Result<(), StoreError> {
        self.note(format!("reset {len}"))?;
        self.inner.reset_staging(len)
    }
    fn write_staging(&mut self, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        self.note(format!("chunk {offset}"))?;
        self.inner.write_staging(offset, data)
    }
    fn read_staging(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        self.inner.read_staging(offset, len)
    }
    fn erase_slot(&mut self, slot: Slot) -> Result<(), StoreError> {
        self.inner.erase_slot(slot)
    }
    fn write_slot(&mut self, slot: Slot, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        self.inner.write_slot(slot, offset, data)
    }
    fn sync_slot(&mut self, slot: Slot) -> Result<(), StoreError> {
        self.inner.sync_slot(slot)
    }
    fn read_slot(&mut self, slot: Slot, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        self.inner.read_slot(slot, offset, len)
    }
    fn slot_len(&mut self, slot: Slot) -> Result<u64, StoreError> {
        self.inner.slot_len(slot)
    }
    fn load_boot(&mut self) -> Result<Option<BootRecord>, StoreError> {
        self.inner.load_boot()
    }
    fn save_boot(&mut self, record: &BootRecord) -> Result<(), StoreError> {
        self.inner.save_boot(record)
    }
}

fn slow(delay: Duration, fail_at: Option<usize>) -> Slow {
    Slow {
        inner: MemStore::new(),
        delay,
        log: Arc::new(Mutex::new(Vec::new())),
        fail_at,
    }
}

#[test]
fn writes_do_not_wait_for_a_slow_disk_and_land_in_order() {
    // 20 chunk writes and a state record on a disk that takes 50 ms per write: 1.05 s of
    // disk time. Called directly, each call would return only after its write.
    let disk = slow(Duration::from_millis(50), None);
    let log = disk.log.clone();
    let mut w = WorkerStore::spawn(disk, WorkerConfig::default()).unwrap();
    let t0 = Instant::now();
    w.reset_staging(20 * 4).unwrap();
    for i in 0..20u64 {
        w.write_staging(i * 4, &[i as u8; 4]).unwrap();
        // A relay forwards the chunk at once: served from the queue, no waiting.
        assert_eq!(w.read_staging(i * 4, 4).unwrap(), vec![i as u8; 4]);
    }
    w.save_state(b"20 held").unwrap();
    let issued = t0.elapsed();
    // Generous for a loaded machine, still far below one write per call (1.05 s).
    assert!(
        issued < Duration::from_millis(400),
        "the caller waited {issued:?} for the disk"
    );
    // A read of something not queued waits for the writes before it: it sees them all.
    assert_eq!(w.load_state().unwrap().unwrap(), b"20 held");
    assert!(t0.elapsed() >= Duration::from_millis(50 * 22));
    let mut want = vec!["reset 80".to_owned()];
    want.extend((0..20).map(|i| format!("chunk {}", i * 4)));
    want.push("state 20 held".into());
    assert_eq!(*log.lock().unwrap(), want, "the disk saw the calls' order");
}

#[test]
fn a_failed_write_is_reported_at_the_next_call_and_nothing_after_it_lands() {
    // The third write (chunk 4) fails: the state record after it must never be written,
    // or it would claim a chunk the disk does not hold.
    let disk = slow(Duration::from_millis(5), Some(2));
    let log = disk.log.clone();
    let inner = disk.inner.clone();
    let mut w = WorkerStore::spawn(disk, WorkerConfig::default()).unwrap();
    w.reset_staging(12).unwrap();
    w.write_staging(0, b"aaaa").unwrap();
    w.write_staging(4, b"bbbb").unwrap();
    let _ = w.write_staging(8, b"cccc");
    let _ = w.save_state(b"all held");
    // A barrier read: every queued write has been tried by the time it answers.
    let fault = StoreError::Io {
        op: StoreOp::Write,
        fault: IoFault::StorageFull,
    };
    assert_eq!(w.load_boot(), Err(fault.clone()));
    assert_eq!(w.save_state(b"again"), Err(fault));
    drop(w);
    assert_eq!(*log.lock().unwrap(), vec!["reset 12", "chunk 0"]);
    assert!(inner.clone().load_state().unwrap().is_none());
}
