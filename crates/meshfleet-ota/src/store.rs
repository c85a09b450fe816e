//! Where a receiver keeps what must survive a reboot: staged chunks, its transfer state,
//! two image slots and the boot record.
//!
//! The layout is the classic A/B scheme (ESP-IDF `otadata`, MCUboot's test-swap): the
//! running image is in the *active* slot, an update is written to the other one, and the
//! boot record says which slot boots. Every change of the boot record is one atomic write,
//! so a power cut at any moment leaves either the old record or the new one.
//!
//! Two implementations: [`MemStore`] for the simulator (clones share one store, so a
//! simulated reboot that keeps the handle keeps the data) and [`FileStore`] for Linux (a
//! directory; small records written with write-temp + fsync + rename + fsync of the
//! directory).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

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
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The file system refused.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A record could not be read back.
    #[error("corrupt {what}: {detail}")]
    Corrupt {
        /// Which record.
        what: &'static str,
        /// Why.
        detail: String,
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
    /// Injected by a test (a simulated power cut).
    #[error("simulated crash")]
    Crash,
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

// ------------------------------------------------------------------------------ memory

#[derive(Debug, Default)]
struct MemInner {
    state: Option<Vec<u8>>,
    staging: Area,
    slots: [Area; 2],
    boot: Option<BootRecord>,
    shared: SharedPages,
}

/// Bytes per page of a [`MemStore`] area.
const PAGE: usize = 4096;

/// One page of an area: shared, copied on write.
type Page = Arc<Vec<u8>>;

/// A storage area (staging, a slot) as pages, so that stores holding the same bytes share
/// them: a simulated fleet of thousands of nodes all stage and flash the same image.
#[derive(Clone, Debug, Default)]
struct Area {
    len: usize,
    /// `len.div_ceil(PAGE)` pages; the last one holds the remainder.
    pages: Vec<Page>,
}

impl Area {
    /// `len` bytes of `fill`.
    fn filled(len: usize, fill: u8) -> Self {
        let mut a = Self::default();
        a.resize(len, fill);
        a
    }

    /// Grows or shrinks to `len` bytes, new bytes set to `fill`.
    fn resize(&mut self, len: usize, fill: u8) {
        self.pages.truncate(len.div_ceil(PAGE));
        let n = self.pages.len();
        if let Some(last) = self.pages.last_mut() {
            let want = (len - (n - 1) * PAGE).min(PAGE);
            if last.len() != want {
                Arc::make_mut(last).resize(want, fill);
            }
        }
        let full: Page = Arc::new(vec![fill; PAGE]);
        while self.pages.len() * PAGE < len {
            let n = (len - self.pages.len() * PAGE).min(PAGE);
            self.pages.push(if n == PAGE {
                full.clone()
            } else {
                Arc::new(vec![fill; n])
            });
        }
        self.len = len;
    }

    /// Writes `data` at `start` (within `len`); pages that end up holding shared content
    /// are swapped for the shared copy.
    fn write(&mut self, start: usize, data: &[u8], shared: &SharedPages) {
        let mut at = start;
        let mut rest = data;
        while !rest.is_empty() {
            let (index, offset) = (at / PAGE, at % PAGE);
            let Some(page) = self.pages.get_mut(index) else {
                return;
            };
            let n = rest.len().min(page.len() - offset);
            Arc::make_mut(page)[offset..offset + n].copy_from_slice(&rest[..n]);
            if let Some(same) = shared.find(page) {
                *page = same;
            }
            rest = &rest[n..];
            at += n;
        }
    }

    fn read(&self, start: usize, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        let mut at = start;
        while out.len() < len {
            let (index, offset) = (at / PAGE, at % PAGE);
            let Some(page) = self.pages.get(index) else {
                break;
            };
            let n = (len - out.len()).min(page.len() - offset);
            out.extend_from_slice(&page[offset..offset + n]);
            at += n;
        }
        out
    }
}

/// Page contents that [`MemStore`]s share instead of each holding a copy: the images and
/// payloads a simulated fleet stages and flashes. Cloning shares the set.
///
/// A store's page whose bytes equal one of these pages (the content split into 4 KiB
/// pages from its start, as staging and slots are written from offset 0) is replaced by
/// the shared one, so N nodes that received the same image hold it once between them.
#[derive(Clone, Debug, Default)]
pub struct SharedPages {
    by_hash: Arc<std::collections::HashMap<u64, Vec<Page>>>,
}

impl SharedPages {
    /// The pages of each of `contents`.
    pub fn new(contents: &[&[u8]]) -> Self {
        let mut by_hash: std::collections::HashMap<u64, Vec<Page>> = Default::default();
        for content in contents {
            for chunk in content.chunks(PAGE) {
                let bucket = by_hash.entry(page_hash(chunk)).or_default();
                if !bucket.iter().any(|p| p.as_slice() == chunk) {
                    bucket.push(Arc::new(chunk.to_vec()));
                }
            }
        }
        Self {
            by_hash: Arc::new(by_hash),
        }
    }

    /// Bytes held by the set.
    pub fn bytes(&self) -> usize {
        self.by_hash.values().flatten().map(|p| p.len()).sum()
    }

    fn find(&self, page: &Page) -> Option<Page> {
        if self.by_hash.is_empty() {
            return None;
        }
        self.by_hash
            .get(&page_hash(page))?
            .iter()
            .find(|p| !Arc::ptr_eq(p, page) && p.as_slice() == page.as_slice())
            .cloned()
    }
}

fn page_hash(bytes: &[u8]) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// An in-memory [`SlotStore`] for the simulator and tests.
///
/// Clones share the same storage: the simulator keeps one handle per node and gives a clone
/// to the node's OTA plugin; a simulated reboot drops the plugin and builds a new one from
/// the kept handle, so everything "persisted" survives, as flash does. Areas are kept as
/// 4 KiB pages, copied on write; with [`SharedPages`] ([`MemStore::with_shared`]), pages
/// equal to a shared one are not held twice.
#[derive(Clone, Debug, Default)]
pub struct MemStore {
    inner: Arc<Mutex<MemInner>>,
}

impl MemStore {
    /// An empty store (a fresh device).
    pub fn new() -> Self {
        Self::default()
    }

    /// A store whose slot A holds `image`, booted and confirmed (a device running it).
    pub fn with_image(image: &[u8], version: &str) -> Self {
        Self::with_shared(image, version, SharedPages::default())
    }

    /// As [`MemStore::with_image`], sharing pages with other stores through `shared`.
    pub fn with_shared(image: &[u8], version: &str, shared: SharedPages) -> Self {
        let s = Self::new();
        {
            let mut g = s.lock();
            g.shared = shared;
            let mut slot = Area::filled(image.len(), 0xff);
            slot.write(0, image, &g.shared);
            g.slots[0] = slot;
            g.boot = Some(BootRecord::new(Some(image_info(image, version))));
        }
        s
    }

    /// Bytes of the staging area and slots that this store holds alone (pages not
    /// shared with any other store or [`SharedPages`]).
    pub fn own_bytes(&self) -> usize {
        let g = self.lock();
        core::iter::once(&g.staging)
            .chain(&g.slots)
            .flat_map(|a| &a.pages)
            .filter(|p| Arc::strong_count(p) == 1)
            .map(|p| p.len())
            .sum()
    }

    fn lock(&self) -> MutexGuard<'_, MemInner> {
        // A poisoned lock means a test panicked while holding it; the data is still
        // consistent at the granularity of one call, so keep going.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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

fn range(
    what: &'static str,
    len: u64,
    offset: u64,
    n: usize,
) -> Result<std::ops::Range<usize>, StoreError> {
    let err = || StoreError::OutOfRange {
        what,
        offset,
        len: n,
    };
    let start = usize::try_from(offset).map_err(|_| err())?;
    let end = start.checked_add(n).ok_or_else(err)?;
    if end as u64 > len {
        return Err(err());
    }
    Ok(start..end)
}

/// Largest slot or staging area (the manifest crate's payload limit).
const MAX_AREA: u64 = meshfleet_firmware::MAX_PAYLOAD_SIZE;

impl SlotStore for MemStore {
    fn load_state(&mut self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().state.clone())
    }
    fn save_state(&mut self, state: &[u8]) -> Result<(), StoreError> {
        self.lock().state = Some(state.to_vec());
        Ok(())
    }
    fn clear_state(&mut self) -> Result<(), StoreError> {
        self.lock().state = None;
        Ok(())
    }
    fn reset_staging(&mut self, len: u64) -> Result<(), StoreError> {
        if len > MAX_AREA {
            return Err(StoreError::OutOfRange {
                what: "staging",
                offset: 0,
                len: usize::MAX,
            });
        }
        self.lock().staging = Area::filled(len as usize, 0);
        Ok(())
    }
    fn write_staging(&mut self, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        let mut g = self.lock();
        let r = range("staging", g.staging.len as u64, offset, data.len())?;
        let MemInner {
            staging, shared, ..
        } = &mut *g;
        staging.write(r.start, data, shared);
        Ok(())
    }
    fn read_staging(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        let g = self.lock();
        let r = range("staging", g.staging.len as u64, offset, len)?;
        Ok(g.staging.read(r.start, len))
    }
    fn erase_slot(&mut self, slot: Slot) -> Result<(), StoreError> {
        self.lock().slots[slot.index()] = Area::default();
        Ok(())
    }
    fn write_slot(&mut self, slot: Slot, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        let mut g = self.lock();
        let end = offset.saturating_add(data.len() as u64);
        if end > MAX_AREA {
            return Err(StoreError::OutOfRange {
                what: "slot",
                offset,
                len: data.len(),
            });
        }
        let MemInner { slots, shared, .. } = &mut *g;
        let s = &mut slots[slot.index()];
        if (s.len as u64) < end {
            s.resize(end as usize, 0xff);
        }
        s.write(offset as usize, data, shared);
        Ok(())
    }
    fn sync_slot(&mut self, _slot: Slot) -> Result<(), StoreError> {
        Ok(())
    }
    fn read_slot(&mut self, slot: Slot, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        let g = self.lock();
        let s = &g.slots[slot.index()];
        let r = range("slot", s.len as u64, offset, len)?;
        Ok(s.read(r.start, len))
    }
    fn slot_len(&mut self, slot: Slot) -> Result<u64, StoreError> {
        Ok(self.lock().slots[slot.index()].len as u64)
    }
    fn load_boot(&mut self) -> Result<Option<BootRecord>, StoreError> {
        Ok(self.lock().boot.clone())
    }
    fn save_boot(&mut self, record: &BootRecord) -> Result<(), StoreError> {
        self.lock().boot = Some(record.clone());
        Ok(())
    }
}

// ------------------------------------------------------------------------------ files

/// A [`SlotStore`] in a directory, for Linux nodes:
///
/// ```text
/// slot_a.bin, slot_b.bin   image slots
/// staging.bin              staged payload chunks (random access)
/// state.json               transfer state (atomic replace)
/// boot.json                boot record (atomic replace)
/// ```
///
/// Records are replaced by writing `NAME.tmp`, fsync, rename over `NAME`, fsync of the
/// directory: after a crash either the old or the new file is there. Area writes are
/// fsynced before the call returns, so a record written afterwards never points at data
/// that is not on disk.
#[derive(Debug)]
pub struct FileStore {
    dir: PathBuf,
}

impl FileStore {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            op: "create",
            path: dir.clone(),
            source,
        })?;
        // Leftover temporaries of an interrupted replace are garbage.
        for name in ["state.json.tmp", "boot.json.tmp"] {
            let _ = fs::remove_file(dir.join(name));
        }
        Ok(Self { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file holding `slot`'s image: what a Linux node runs or hands to its application
    /// once the image is committed.
    pub fn slot_path(&self, slot: Slot) -> PathBuf {
        self.path(Self::slot_name(slot))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn slot_name(slot: Slot) -> &'static str {
        match slot {
            Slot::A => "slot_a.bin",
            Slot::B => "slot_b.bin",
        }
    }

    fn read_record(&self, name: &'static str) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.path(name);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StoreError::Io {
                    op: "open",
                    path,
                    source,
                })
            }
        };
        let mut out = Vec::new();
        // Bounded read: a damaged or foreign file must not make us allocate without limit.
        file.take(MAX_STATE_LEN as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|source| StoreError::Io {
                op: "read",
                path: path.clone(),
                source,
            })?;
        if out.len() > MAX_STATE_LEN {
            return Err(StoreError::Corrupt {
                what: name,
                detail: format!("larger than {MAX_STATE_LEN} bytes"),
            });
        }
        Ok(Some(out))
    }

    fn replace_record(&self, name: &str, data: &[u8]) -> Result<(), StoreError> {
        let tmp = self.path(&format!("{name}.tmp"));
        let dst = self.path(name);
        let io = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { op, path, source }
        };
        let mut f = File::create(&tmp).map_err(io("create", &tmp))?;
        f.write_all(data).map_err(io("write", &tmp))?;
        f.sync_all().map_err(io("fsync", &tmp))?;
        drop(f);
        fs::rename(&tmp, &dst).map_err(io("rename", &dst))?;
        self.sync_dir()
    }

    fn sync_dir(&self) -> Result<(), StoreError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| StoreError::Io {
                op: "fsync",
                path: self.dir.clone(),
                source,
            })
    }

    fn write_at(&self, name: &str, offset: u64, data: &[u8], sync: bool) -> Result<(), StoreError> {
        let path = self.path(name);
        let io = |op| {
            let path = path.clone();
            move |source| StoreError::Io { op, path, source }
        };
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io("open"))?;
        f.seek(SeekFrom::Start(offset)).map_err(io("seek"))?;
        f.write_all(data).map_err(io("write"))?;
        if sync {
            f.sync_data().map_err(io("fsync"))?;
        }
        Ok(())
    }

    fn read_at(&self, name: &'static str, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        let path = self.path(name);
        let io = |op| {
            let path = path.clone();
            move |source| StoreError::Io { op, path, source }
        };
        let mut f = File::open(&path).map_err(io("open"))?;
        let flen = f.metadata().map_err(io("stat"))?.len();
        range(name, flen, offset, len)?;
        f.seek(SeekFrom::Start(offset)).map_err(io("seek"))?;
        let mut buf = vec![0; len];
        f.read_exact(&mut buf).map_err(io("read"))?;
        Ok(buf)
    }

    fn file_len(&self, name: &str) -> Result<u64, StoreError> {
        match fs::metadata(self.path(name)) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(source) => Err(StoreError::Io {
                op: "stat",
                path: self.path(name),
                source,
            }),
        }
    }

    fn truncate(&self, name: &str, len: u64) -> Result<(), StoreError> {
        let path = self.path(name);
        let io = |op| {
            let path = path.clone();
            move |source| StoreError::Io { op, path, source }
        };
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io("create"))?;
        f.set_len(len).map_err(io("truncate"))?;
        f.sync_all().map_err(io("fsync"))?;
        self.sync_dir()
    }
}

impl SlotStore for FileStore {
    fn load_state(&mut self) -> Result<Option<Vec<u8>>, StoreError> {
        self.read_record("state.json")
    }
    fn save_state(&mut self, state: &[u8]) -> Result<(), StoreError> {
        if state.len() > MAX_STATE_LEN {
            return Err(StoreError::OutOfRange {
                what: "state",
                offset: 0,
                len: state.len(),
            });
        }
        self.replace_record("state.json", state)
    }
    fn clear_state(&mut self) -> Result<(), StoreError> {
        match fs::remove_file(self.path("state.json")) {
            Ok(()) => self.sync_dir(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::Io {
                op: "remove",
                path: self.path("state.json"),
                source,
            }),
        }
    }
    fn reset_staging(&mut self, len: u64) -> Result<(), StoreError> {
        if len > MAX_AREA {
            return Err(StoreError::OutOfRange {
                what: "staging",
                offset: 0,
                len: usize::MAX,
            });
        }
        self.truncate("staging.bin", len)
    }
    fn write_staging(&mut self, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        range("staging", self.file_len("staging.bin")?, offset, data.len())?;
        self.write_at("staging.bin", offset, data, true)
    }
    fn read_staging(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        self.read_at("staging.bin", offset, len)
    }
    fn erase_slot(&mut self, slot: Slot) -> Result<(), StoreError> {
        self.truncate(Self::slot_name(slot), 0)
    }
    fn write_slot(&mut self, slot: Slot, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        if offset.saturating_add(data.len() as u64) > MAX_AREA {
            return Err(StoreError::OutOfRange {
                what: "slot",
                offset,
                len: data.len(),
            });
        }
        // Synced once, before the image is committed (`sync_slot`): the boot record is
        // what makes a slot count, and it is only written after that sync.
        self.write_at(Self::slot_name(slot), offset, data, false)
    }
    fn sync_slot(&mut self, slot: Slot) -> Result<(), StoreError> {
        let path = self.path(Self::slot_name(slot));
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .and_then(|f| f.sync_all())
            .map_err(|source| StoreError::Io {
                op: "fsync",
                path,
                source,
            })
    }
    fn read_slot(&mut self, slot: Slot, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        self.read_at(Self::slot_name(slot), offset, len)
    }
    fn slot_len(&mut self, slot: Slot) -> Result<u64, StoreError> {
        self.file_len(Self::slot_name(slot))
    }
    fn load_boot(&mut self) -> Result<Option<BootRecord>, StoreError> {
        match self.read_record("boot.json")? {
            None => Ok(None),
            Some(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| StoreError::Corrupt {
                        what: "boot.json",
                        detail: e.to_string(),
                    })
            }
        }
    }
    fn save_boot(&mut self, record: &BootRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(record).map_err(|e| StoreError::Corrupt {
            what: "boot.json",
            detail: e.to_string(),
        })?;
        self.replace_record("boot.json", &bytes)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
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

    #[test]
    fn file_store() {
        let dir = tempfile::tempdir().unwrap();
        exercise(&mut FileStore::open(dir.path()).unwrap());
        // Reopened: records persist.
        let mut s = FileStore::open(dir.path()).unwrap();
        assert!(s.load_boot().unwrap().is_some());
        assert_eq!(s.read_slot(Slot::B, 0, 5).unwrap(), b"hello");
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
