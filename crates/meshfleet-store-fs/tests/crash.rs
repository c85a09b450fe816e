//! Power cut at every step of receive-and-apply: the device always boots the verified new
//! image or the old one, never a broken one, and a restarted node finishes the update.
//! Once with the file store called directly, once through the store worker (writes
//! performed behind the engine's back, in order).

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::Net;
use meshfleet_firmware::{pack, Artefact, PackOptions, SigningKey, Version};
use meshfleet_mesh::{Config, Duration, Node, NodeId};
use meshfleet_ota::store::image_info;
use meshfleet_ota::{
    BootManager, BootRecord, IoFault, MemStore, MeshfleetConfig, MeshfleetOta, Slot, SlotStore,
    StoreError, StoreOp,
};
use meshfleet_store_fs::{FileStore, WorkerConfig, WorkerStore};

/// What the faulty store reports once the power is gone.
fn cut() -> StoreError {
    StoreError::Io {
        op: StoreOp::Write,
        fault: IoFault::Interrupted,
    }
}

const ROLE: &str = "sensor";
const HW: &str = "ESP32";

fn key() -> SigningKey {
    SigningKey::from_bytes(&[9u8; 32])
}

fn image(len: usize, seed: u8) -> Vec<u8> {
    let mut x = u32::from(seed).wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn artefact(img: &[u8]) -> Artefact {
    let k = key();
    let mut o = PackOptions::new(ROLE, HW, Version::parse("2.0.0").unwrap());
    o.signing_key = Some(&k);
    o.chunk_size = 128;
    pack(img, o).unwrap()
}

/// A store that loses power at its `budget`-th mutating operation: area writes are cut in
/// the middle, atomic records are either not written or fully written (both are possible on
/// a real device), and every later operation fails.
struct Faulty {
    inner: FileStore,
    budget: usize,
    ops: Arc<AtomicUsize>,
    dead: bool,
}

impl Faulty {
    /// Counts one mutation; `Ok(true)` = perform it, `Ok(false)` = this is the cut.
    fn tick(&mut self) -> Result<bool, StoreError> {
        if self.dead {
            return Err(cut());
        }
        let n = self.ops.fetch_add(1, Ordering::SeqCst);
        if n == self.budget {
            self.dead = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn record(
        &mut self,
        f: impl FnOnce(&mut FileStore) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        if self.tick()? {
            return f(&mut self.inner);
        }
        if self.budget % 2 == 1 {
            f(&mut self.inner)?; // written, but the power went before we learnt it
        }
        Err(cut())
    }
}

impl SlotStore for Faulty {
    fn load_state(&mut self) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.load_state()
    }
    fn save_state(&mut self, state: &[u8]) -> Result<(), StoreError> {
        self.record(|s| s.save_state(state))
    }
    fn clear_state(&mut self) -> Result<(), StoreError> {
        self.record(FileStore::clear_state)
    }
    fn reset_staging(&mut self, len: u64) -> Result<(), StoreError> {
        self.record(|s| s.reset_staging(len))
    }
    fn write_staging(&mut self, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        if self.tick()? {
            return self.inner.write_staging(offset, data);
        }
        self.inner.write_staging(offset, &data[..data.len() / 2])?;
        Err(cut())
    }
    fn read_staging(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        self.inner.read_staging(offset, len)
    }
    fn erase_slot(&mut self, slot: Slot) -> Result<(), StoreError> {
        self.record(|s| s.erase_slot(slot))
    }
    fn write_slot(&mut self, slot: Slot, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        if self.tick()? {
            return self.inner.write_slot(slot, offset, data);
        }
        self.inner
            .write_slot(slot, offset, &data[..data.len() / 2])?;
        Err(cut())
    }
    fn sync_slot(&mut self, slot: Slot) -> Result<(), StoreError> {
        self.record(|s| s.sync_slot(slot))
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
        self.record(|s| s.save_boot(record))
    }
}

fn config(running: Option<meshfleet_ota::ImageInfo>) -> MeshfleetConfig {
    let mut c = MeshfleetConfig::new(ROLE, HW);
    c.trusted_key = Some(key().verifying_key());
    c.running = running;
    c.save_every = 4;
    c
}

/// Runs one transfer from a source into `store`; returns when done, failed or timed out.
fn transfer(art: &Artefact, store: Box<dyn SlotStore>, running: Option<meshfleet_ota::ImageInfo>) {
    let mut net = Net::new(Duration::from_millis(1));
    let mut s = Node::new(Config::new(NodeId(1)));
    s.add_plugin(Box::new(MeshfleetOta::source(
        config(None),
        Box::new(MemStore::new()),
        art.clone(),
        None,
    )))
    .unwrap();
    net.add(s);
    let mut r = Node::new(Config::new(NodeId(2)));
    r.add_plugin(Box::new(MeshfleetOta::new(config(running), store).unwrap()))
        .unwrap();
    let r = net.add(r);
    net.connect(r, 0);
    net.run_until_cond(Duration::from_millis(50), Duration::from_secs(20), |n| {
        let o = n.nodes[1].plugin::<MeshfleetOta>().unwrap();
        o.is_complete() || o.failure().is_some()
    });
}

fn install_old(dir: &std::path::Path, old: &[u8]) {
    let mut fs = FileStore::open(dir).unwrap();
    fs.write_slot(Slot::A, 0, old).unwrap();
    fs.sync_slot(Slot::A).unwrap();
    fs.save_boot(&BootRecord::new(Some(image_info(old, "1.0.0"))))
        .unwrap();
}

/// Boots the device in `dir`: returns (image, trial).
fn boot(dir: &std::path::Path) -> (Vec<u8>, bool, BootManager<FileStore>) {
    let mut bm = BootManager::new(FileStore::open(dir).unwrap(), 3);
    let d = bm.on_boot().unwrap();
    let info = d.image.clone().unwrap();
    let img = bm.store().read_slot(d.slot, 0, info.size as usize).unwrap();
    assert_eq!(image_info(&img, &info.version).sha256, info.sha256);
    (img, d.trial, bm)
}

fn store(faulty: Faulty, through_worker: bool) -> Box<dyn SlotStore> {
    if through_worker {
        Box::new(WorkerStore::spawn(faulty, WorkerConfig::default()).unwrap())
    } else {
        Box::new(faulty)
    }
}

#[test]
fn power_cut_at_every_step_never_leaves_a_broken_image() {
    power_cut_at_every_step(false);
}

#[test]
fn power_cut_at_every_step_through_the_worker_never_leaves_a_broken_image() {
    power_cut_at_every_step(true);
}

fn power_cut_at_every_step(through_worker: bool) {
    let old = image(1500, 1);
    let new = image(1500, 2);
    let art = artefact(&new);

    // How many mutating steps a clean update takes.
    let total = {
        let dir = tempfile::tempdir().unwrap();
        install_old(dir.path(), &old);
        let ops = Arc::new(AtomicUsize::new(0));
        let store = Faulty {
            inner: FileStore::open(dir.path()).unwrap(),
            budget: usize::MAX,
            ops: ops.clone(),
            dead: false,
        };
        // Dropped at the end of the transfer: the worker has written everything.
        transfer(
            &art,
            self::store(store, through_worker),
            Some(image_info(&old, "1.0.0")),
        );
        let (img, trial, _) = boot(dir.path());
        assert_eq!((img, trial), (new.clone(), true));
        ops.load(Ordering::SeqCst)
    };
    assert!(total > 10, "{total} steps");

    let mut ended_new = 0;
    for k in 0..total {
        let dir = tempfile::tempdir().unwrap();
        install_old(dir.path(), &old);
        let store = Faulty {
            inner: FileStore::open(dir.path()).unwrap(),
            budget: k,
            ops: Arc::new(AtomicUsize::new(0)),
            dead: false,
        };
        transfer(
            &art,
            self::store(store, through_worker),
            Some(image_info(&old, "1.0.0")),
        );

        // Power back: the bootloader decides. Only the old or the verified new image.
        let (img, trial, mut bm) = boot(dir.path());
        assert!(img == old || img == new, "step {k}: booted a broken image");
        if img == new {
            ended_new += 1;
            assert!(trial);
            bm.confirm().unwrap();
        }
        let running = bm.current().and_then(|d| d.image.clone());
        drop(bm);

        // The node restarts and finishes (resuming whatever was persisted).
        transfer(
            &art,
            Box::new(FileStore::open(dir.path()).unwrap()),
            running,
        );
        let (img, _, mut bm) = boot(dir.path());
        assert_eq!(
            img, new,
            "step {k}: the update did not complete after restart"
        );
        bm.confirm().unwrap();
        let (img, trial, _) = boot(dir.path());
        assert_eq!((img, trial), (new.clone(), false), "step {k}");
    }
    println!("{total} mutating steps; {ended_new} power cuts ended on the new image");
    // The cut after the commit record is the only one that lands on the new image
    // (or two, when the record was written but unacknowledged).
    assert!(ended_new >= 1);
}
