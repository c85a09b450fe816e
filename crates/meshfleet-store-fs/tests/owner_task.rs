//! A slow disk must not hold up the node: through the real runtime on loopback TCP, a
//! plugin that stores every package it gets (as the OTA receiver stores chunks) sits in
//! front of a disk that takes 200 ms per write. A message sent right after ten such
//! packages arrives after ~2 s when the plugin writes directly (the owner task waits for
//! every write: that is the stall this crate removes) and at once through the worker.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use meshfleet_mesh::wire::{Package, Routing};
use meshfleet_mesh::{Claims, Config, Ctx, LinkId, Node, NodeId, Plugin};
use meshfleet_ota::{BootRecord, MemStore, Slot, SlotStore, StoreError};
use meshfleet_runtime::{MessageKind, Runtime, RuntimeConfig, RuntimeEvent};
use meshfleet_store_fs::{WorkerConfig, WorkerStore};

const WRITE: Duration = Duration::from_millis(200);
const PACKAGES: u64 = 10;
const TYPE: i64 = 900;

/// A disk that takes [`WRITE`] per staged write (a blocking sleep, like a blocking fsync).
struct SlowDisk(MemStore);

impl SlotStore for SlowDisk {
    fn load_state(&mut self) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.load_state()
    }
    fn save_state(&mut self, state: &[u8]) -> Result<(), StoreError> {
        self.0.save_state(state)
    }
    fn clear_state(&mut self) -> Result<(), StoreError> {
        self.0.clear_state()
    }
    fn reset_staging(&mut self, len: u64) -> Result<(), StoreError> {
        self.0.reset_staging(len)
    }
    fn write_staging(&mut self, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        std::thread::sleep(WRITE);
        self.0.write_staging(offset, data)
    }
    fn read_staging(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        self.0.read_staging(offset, len)
    }
    fn erase_slot(&mut self, slot: Slot) -> Result<(), StoreError> {
        self.0.erase_slot(slot)
    }
    fn write_slot(&mut self, slot: Slot, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        self.0.write_slot(slot, offset, data)
    }
    fn sync_slot(&mut self, slot: Slot) -> Result<(), StoreError> {
        self.0.sync_slot(slot)
    }
    fn read_slot(&mut self, slot: Slot, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        self.0.read_slot(slot, offset, len)
    }
    fn slot_len(&mut self, slot: Slot) -> Result<u64, StoreError> {
        self.0.slot_len(slot)
    }
    fn load_boot(&mut self) -> Result<Option<BootRecord>, StoreError> {
        self.0.load_boot()
    }
    fn save_boot(&mut self, record: &BootRecord) -> Result<(), StoreError> {
        self.0.save_boot(record)
    }
}

/// Stores each package of type [`TYPE`] at the next staging offset.
struct Stager {
    store: Box<dyn SlotStore>,
    next: u64,
}

impl Plugin for Stager {
    fn name(&self) -> &'static str {
        "stager"
    }

    fn claims(&self) -> Claims {
        Claims::none().ty(TYPE)
    }

    fn handle_package(&mut self, _: &mut Ctx<'_>, _: LinkId, _: Routing, _: &Package) {
        self.store.write_staging(self.next * 4, b"data").unwrap();
        self.next += 1;
    }
}

/// Sends ten packages and then a message from B to A; returns how long after the
/// message was sent A reported it.
async fn message_delay(store: Box<dyn SlotStore>) -> Duration {
    let mut a_node = Node::new(Config::new(NodeId(1)));
    let mut store = store;
    store.reset_staging(PACKAGES * 4).unwrap();
    a_node
        .add_plugin(Box::new(Stager { store, next: 0 }))
        .unwrap();
    let mut cfg = RuntimeConfig::default();
    cfg.listen = Some("127.0.0.1:0".parse().unwrap());
    let (a, a_task) = Runtime::start(a_node, cfg).await.unwrap();
    let mut a_events = a.subscribe();
    let mut cfg = RuntimeConfig::default();
    cfg.connect = vec![a.listen_addr().unwrap().to_string()];
    let (b, b_task) = Runtime::start(Node::new(Config::new(NodeId(2))), cfg)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while b.nodes().await.unwrap() != vec![NodeId(1)] {
        assert!(Instant::now() < deadline, "B never synced with A");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.with_node(|node, now| {
        for _ in 0..PACKAGES {
            let text = format!(r#"{{"from":2,"routing":1,"type":{TYPE},"dest":1}}"#);
            node.send_package(now, &Package::from_text(text).unwrap())
                .unwrap();
        }
    })
    .await
    .unwrap();
    let sent = Instant::now();
    b.send_single(NodeId(1), "after the packages")
        .await
        .unwrap();
    let arrived = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match a_events.recv().await {
                Ok(RuntimeEvent::Received {
                    msg,
                    kind: MessageKind::Single,
                    ..
                }) if msg == "after the packages" => return Instant::now(),
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("A's events ended: {e}"),
            }
        }
    })
    .await
    .expect("A never reported the message");
    b.shutdown().await;
    b_task.await.unwrap();
    a.shutdown().await;
    a_task.await.unwrap();
    arrived - sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_disk_behind_the_worker_does_not_delay_frames_on_the_owner_task() {
    let direct = message_delay(Box::new(SlowDisk(MemStore::new()))).await;
    let worker = WorkerStore::spawn(SlowDisk(MemStore::new()), WorkerConfig::default()).unwrap();
    let through_worker = message_delay(Box::new(worker)).await;
    println!("message delay: direct {direct:?}, through the worker {through_worker:?}");
    // Directly, the owner task sleeps through every write before it reads the message.
    assert!(
        direct >= WRITE * (PACKAGES as u32 - 1),
        "direct writes should have stalled the owner task: {direct:?}"
    );
    // Through the worker, the message is read while the disk is still busy (generous
    // bound for a loaded 2-core machine; the disk alone needs 2 s).
    assert!(
        through_worker < WRITE * 4,
        "the worker should keep the owner task free: {through_worker:?}"
    );
}
