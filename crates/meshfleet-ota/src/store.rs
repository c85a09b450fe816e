//! Where a receiver keeps what must survive a reboot: staged chunks, its transfer state,
//! two image slots and the boot record.
//!
//! The layout is the classic A/B scheme (ESP-IDF `otadata`, MCUboot's test-swap): the
//! running image is in the *active* slot, an update is written to the other one, and the
//! boot record says which slot boots. Every change of the boot record is one atomic write,
//! so a power cut at any moment leaves either the old record or the new one.
//!
//! [`MemStore`] is the simulator's store (clones share one store, so a simulated reboot
//! that keeps the handle keeps the data). Stores that touch an operating system live at the
//! edge, outside this sans-IO crate: `meshfleet-store-fs` has the Linux file store (a
//! directory; small records written with write-temp + fsync + rename + fsync of the
//! directory) and the worker that keeps its fsyncs off the node's owner task. They report
//! OS failures as the typed [`StoreError::Io`].

#[allow(unused_imports)]
use crate::prelude::*;

use serde::{Deserialize, Serialize};

/// Largest state record accepted when reading it back (the manifest is at most 1 MiB, the
/// bitmap 256 KiB for 2^21 chunks).
pub const MAX_STATE_LEN: usize = 2 * 1024 * 1024;

/// One of the two image slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Slot {
    /// Slot A.
    A,
    /// Slot B.
    B,
}

impl Slot {
    /// The other slot.
    pub fn other(self) -> Self {
        match self {
            Self::A => Self::B,
            Self::B => Self::A,
        }
    }

    fn index(self) -> usize {
        match self {
            Self::A => 0,
            Self::B => 1,
        }
    }
}

/// What a slot holds, as verified when it was written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// Firmware version.
    pub version: String,
    /// SHA-256 of the image, lowercase hex.
    pub sha256: String,
    /// MD5 of the image, lowercase hex (what stock nodes compare).
    pub md5: String,
    /// Image size in bytes.
    pub size: u64,
}

/// Which slot boots, and the trial of a new image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootRecord {
    /// The confirmed slot.
    pub active: Slot,
    /// What each slot holds (A, B), if known.
    pub images: [Option<ImageInfo>; 2],
    /// A committed, verified image waiting to prove itself.
    pub pending: Option<Slot>,
    /// Boots of `pending` so far without a confirmation.
    pub attempts: u32,
    /// SHA-256 (hex) of images that were rolled back here, newest last, at most
    /// [`MAX_REFUSED`]: offers of them are refused unless the operator's signed intent names them, so a bad image is not
    /// fetched, tried and rolled back over and over.
    #[serde(default)]
    pub refused: Vec<String>,
    /// `issued` of the last operator intent ([`meshfleet_firmware::Intent`]) an image was
    /// installed under here (0: none). Intents issued at or before it are refused, so a
    /// used intent cannot be replayed to install its image again later.
    #[serde(default)]
    pub intent_issued: u64,
}

/// How many rolled-back images a node remembers.
pub const MAX_REFUSED: usize = 8;

impl BootRecord {
    /// A device running `info` from slot A.
    pub fn new(info: Option<ImageInfo>) -> Self {
        Self {
            active: Slot::A,
            images: [info, None],
            pending: None,
            attempts: 0,
            refused: Vec::new(),
            intent_issued: 0,
        }
    }

    /// Remembers that `slot`'s image was rolled back.
    pub fn refuse_image_in(&mut self, slot: Slot) {
        if let Some(sha) = self.image(slot).map(|i| i.sha256.clone()) {
            self.refused.retain(|s| *s != sha);
            self.refused.push(sha);
            if self.refused.len() > MAX_REFUSED {
                self.refused.remove(0);
            }
        }
    }

    /// What `slot` holds.
    pub fn image(&self, slot: Slot) -> Option<&ImageInfo> {
        self.images[slot.index()].as_ref()
    }

    /// Sets what `slot` holds.
    pub fn set_image(&mut self, slot: Slot, info: Option<ImageInfo>) {
        self.images[slot.index()] = info;
    }

    /// The slot updates are written to.
    pub fn inactive(&self) -> Slot {
        self.active.other()
    }
}

/// Why a store operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The storage medium refused an operation.
    #[error("storage {op} failed: {fault}")]
    Io {
        /// What was being done.
        op: StoreOp,
        /// Why it failed.
        fault: IoFault,
    },
    /// A record could not be read back.
    #[error("corrupt {what}: {why}")]
    Corrupt {
        /// Which record.
        what: &'static str,
        /// What is wrong with it.
        why: Corruption,
    },
    /// A read or write outside the prepared area.
    #[error("{what} access out of range (offset {offset}, len {len})")]
    OutOfRange {
        /// Which area.
        what: &'static str,
        /// Offset.
        offset: u64,
        /// Length.
        len: usize,
    },
}

/// A storage operation, for [`StoreError::Io`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreOp {
    /// Opening a file or area.
    Open,
    /// Creating one.
    Create,
    /// Reading.
    Read,
    /// Writing.
    Write,
    /// Making writes durable (fsync).
    Sync,
    /// Replacing a record (rename).
    Rename,
    /// Deleting a record.
    Remove,
    /// Reading a size.
    Stat,
    /// Emptying or resizing an area.
    Truncate,
    /// Positioning within an area.
    Seek,
}

impl core::fmt::Display for StoreOp {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Open => "open",
            Self::Create => "create",
            Self::Read => "read",
            Self::Write => "write",
            Self::Sync => "sync",
            Self::Rename => "rename",
            Self::Remove => "remove",
            Self::Stat => "stat",
            Self::Truncate => "truncate",
            Self::Seek => "seek",
        })
    }
}

/// Why a storage operation failed (the edge maps its OS errors to these).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum IoFault {
    /// A file or area that must exist does not.
    NotFound,
    /// Not allowed.
    PermissionDenied,
    /// No space left.
    StorageFull,
    /// The medium is read-only.
    ReadOnly,
    /// Fewer bytes than expected.
    Truncated,
    /// Interrupted (a power cut, a signal).
    Interrupted,
    /// The thread that performs the store's operations is gone.
    WorkerStopped,
    /// Anything else the medium reported.
    Other,
}

impl core::fmt::Display for IoFault {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::NotFound => "not found",
            Self::PermissionDenied => "permission denied",
            Self::StorageFull => "no space left",
            Self::ReadOnly => "read-only storage",
            Self::Truncated => "shorter than expected",
            Self::Interrupted => "interrupted",
            Self::WorkerStopped => "the store's worker has stopped",
            Self::Other => "I/O error",
        })
    }
}

/// What is wrong with a record ([`StoreError::Corrupt`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Corruption {
    /// Larger than a record may be.
    TooLarge {
        /// The limit, bytes.
        limit: usize,
    },
    /// Not a record of the expected form.
    Undecodable,
    /// A commit into the slot that runs (the caller's mistake, refused).
    ActiveSlot,
}

impl core::fmt::Display for Corruption {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::TooLarge { limit } => write!(f, "larger than {limit} bytes"),
            Self::Undecodable => f.write_str("cannot be decoded"),
            Self::ActiveSlot => f.write_str("refusing to commit into the active slot"),
        }
    }
}

/// Persistent storage of an OTA receiver. See the module docs.
///
/// Contract: every method either completes or fails; after a failure (a power cut) the
/// store, reopened, shows for each *record* (`state`, `boot`) either the old or the new
/// value, never a mix. Area writes (`staging`, slots) may be partial: their contents are
/// only trusted through a record written after them.
pub trait SlotStore: Send {
    /// The persisted transfer state, if any.
    fn load_state(&mut self) -> Result<Option<Vec<u8>>, StoreError>;
    /// Replaces the transfer state atomically.
    fn save_state(&mut self, state: &[u8]) -> Result<(), StoreError>;
    /// Deletes the transfer state.
    fn clear_state(&mut self) -> Result<(), StoreError>;

    /// Prepares an empty staging area of `len` bytes (random access by chunk offset).
    fn reset_staging(&mut self, len: u64) -> Result<(), StoreError>;
    /// Writes staged bytes at `offset` and makes them durable.
    fn write_staging(&mut self, offset: u64, data: &[u8]) -> Result<(), StoreError>;
    /// Reads staged bytes.
    fn read_staging(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, StoreError>;

    /// Empties `slot` before an image is written to it.
    fn erase_slot(&mut self, slot: Slot) -> Result<(), StoreError>;
    /// Writes image bytes to `slot` at `offset`.
    fn write_slot(&mut self, slot: Slot, offset: u64, data: &[u8]) -> Result<(), StoreError>;
    /// Makes the slot's writes durable.
    fn sync_slot(&mut self, slot: Slot) -> Result<(), StoreError>;
    /// Reads image bytes from `slot`.
    fn read_slot(&mut self, slot: Slot, offset: u64, len: usize) -> Result<Vec<u8>, StoreError>;
    /// Bytes in `slot`.
    fn slot_len(&mut self, slot: Slot) -> Result<u64, StoreError>;

    /// The boot record (`None` on a fresh device).
    fn load_boot(&mut self) -> Result<Option<BootRecord>, StoreError>;
    /// Replaces the boot record atomically.
    fn save_boot(&mut self, record: &BootRecord) -> Result<(), StoreError>;
}

impl<S: SlotStore + ?Sized> SlotStore for Box<S> {
    fn load_state(&mut self) -> Result<Option<Vec<u8>>, StoreError> {
        (**self).load_state()
    }
    fn save_state(&mut self, state: &[u8]) -> Result<(), StoreError> {
        (**self).save_state(state)
    }
    fn clear_state(&mut self) -> Result<(), StoreError> {
        (**self).clear_state()
    }
    fn reset_staging(&mut self, len: u64) -> Result<(), StoreError> {
        (**self).reset_staging(len)
    }
    fn write_staging(&mut self, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        (**self).write_staging(offset, data)
    }
    fn read_staging(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        (**self).read_staging(offset, len)
    }
    fn erase_slot(&mut self, slot: Slot) -> Result<(), StoreError> {
        (**self).erase_slot(slot)
    }
    fn write_slot(&mut self, slot: Slot, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        (**self).write_slot(slot, offset, data)
    }
    fn sync_slot(&mut self, slot: Slot) -> Result<(), StoreError> {
        (**self).sync_slot(slot)
    }
    fn read_slot(&mut self, slot: Slot, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        (**self).read_slot(slot, offset, len)
    }
    fn slot_len(&mut self, slot: Slot) -> Result<u64, StoreError> {
        (**self).slot_len(slot)
    }
    fn load_boot(&mut self) -> Result<Option<BootRecord>, StoreError> {
        (**self).load_boot()
    }
    fn save_boot(&mut self, record: &BootRecord) -> Result<(), StoreError> {
        (**self).save_boot(record)
    }
}

/// The [`ImageInfo`] of `image`.
pub fn image_info(image: &[u8], version: &str) -> ImageInfo {
    use md5::Md5;
    use sha2::{Digest as _, Sha256};
    ImageInfo {
        version: version.into(),
        sha256: crate::stock::hex(&Sha256::digest(image)),
        md5: crate::stock::hex(&Md5::digest(image)),
        size: image.len() as u64,
    }
}

/// Largest slot or staging area (the manifest crate's payload limit).
pub const MAX_AREA: u64 = meshfleet_firmware::MAX_PAYLOAD_SIZE;

// The in-memory store (simulator, tests): shared between threads behind a `Mutex`.
#[cfg(feature = "std")]
mod mem;
#[cfg(feature = "std")]
pub use mem::{MemStore, SharedPages};

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::mem::PAGE;
    use super::*;

    fn exercise(s: &mut dyn SlotStore) {
        assert!(s.load_state().unwrap().is_none());
        s.save_state(b"{\"x\":1}").unwrap();
        assert_eq!(s.load_state().unwrap().unwrap(), b"{\"x\":1}");
        s.clear_state().unwrap();
        assert!(s.load_state().unwrap().is_none());
        s.reset_staging(10).unwrap();
        s.write_staging(4, b"abc").unwrap();
        assert_eq!(s.read_staging(3, 5).unwrap(), b"\0abc\0");
        assert!(s.write_staging(8, b"abc").is_err());
        assert!(s.read_staging(u64::MAX, 2).is_err());
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
    fn mem_store() {
        exercise(&mut MemStore::new());
    }

    use proptest::prelude::*;

    proptest! {
        /// Pages are an implementation detail: a paged store reads back exactly what a
        /// flat byte vector would, across page boundaries, growth and erases.
        #[test]
        fn mem_store_pages_read_as_flat_bytes(
            ops in prop::collection::vec((0u8..4, 0usize..3 * PAGE, 0usize..2 * PAGE + 9, any::<u8>()), 1..30),
        ) {
            let shared = SharedPages::new(&[&[7u8; PAGE][..], &[9u8; 100][..]]);
            let mut s = MemStore::with_shared(b"old", "1.0.0", shared);
            let (mut slot, mut staging) = (b"old".to_vec(), Vec::new());
            for (op, offset, len, byte) in ops {
                let data = vec![byte % 3 + 7; len];
                match op {
                    0 => {
                        s.write_slot(Slot::A, offset as u64, &data).unwrap();
                        if slot.len() < offset + len {
                            slot.resize(offset + len, 0xff);
                        }
                        slot[offset..offset + len].copy_from_slice(&data);
                    }
                    1 => {
                        s.erase_slot(Slot::A).unwrap();
                        slot.clear();
                    }
                    2 => {
                        s.reset_staging((offset + len) as u64).unwrap();
                        staging = vec![0; offset + len];
                    }
                    _ => {
                        let ok = s.write_staging(offset as u64, &data).is_ok();
                        prop_assert_eq!(ok, offset + len <= staging.len());
                        if ok {
                            staging[offset..offset + len].copy_from_slice(&data);
                        }
                    }
                }
                prop_assert_eq!(s.slot_len(Slot::A).unwrap(), slot.len() as u64);
                prop_assert_eq!(s.read_slot(Slot::A, 0, slot.len()).unwrap(), slot.clone());
                prop_assert_eq!(s.read_staging(0, staging.len()).unwrap(), staging.clone());
            }
        }
    }

    #[test]
    fn stores_holding_the_same_image_share_its_pages() {
        let image: Vec<u8> = (0..10 * PAGE + 123).map(|i| (i * 7 % 251) as u8).collect();
        let shared = SharedPages::new(&[&image]);
        let stores: Vec<MemStore> = (0..50)
            .map(|_| MemStore::with_shared(b"old", "1.0.0", shared.clone()))
            .collect();
        for s in &stores {
            let mut s = s.clone();
            s.erase_slot(Slot::B).unwrap();
            // Written in 1 KiB chunks, as a receiver flashes.
            for (i, chunk) in image.chunks(1024).enumerate() {
                s.write_slot(Slot::B, (i * 1024) as u64, chunk).unwrap();
            }
            assert_eq!(s.read_slot(Slot::B, 0, image.len()).unwrap(), image);
            // Only slot A's page of the old image is its own.
            assert_eq!(s.own_bytes(), 3);
        }
        // Without shared pages every store holds its own copy.
        let mut alone = MemStore::with_image(b"old", "1.0.0");
        alone.write_slot(Slot::B, 0, &image).unwrap();
        assert_eq!(alone.own_bytes(), 3 + image.len());
    }

    #[test]
    fn mem_store_clones_share() {
        let a = MemStore::new();
        let mut b = a.clone();
        b.save_state(b"s").unwrap();
        assert_eq!(a.clone().load_state().unwrap().unwrap(), b"s");
    }
}
