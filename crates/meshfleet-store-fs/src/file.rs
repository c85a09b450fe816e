//! [`FileStore`]: the OTA store in a directory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use meshfleet_ota::store::{Corruption, IoFault, StoreOp, MAX_AREA, MAX_STATE_LEN};
use meshfleet_ota::{BootRecord, Slot, SlotStore, StoreError};

/// The store directory could not be created: the path and the OS's reason, for the user.
#[derive(Debug, thiserror::Error)]
#[error("cannot create the OTA store directory {}", path.display())]
pub struct OpenError {
    /// The directory.
    pub path: PathBuf,
    /// The OS's reason.
    #[source]
    pub source: io::Error,
}

/// The core's typed fault for an OS error. The path is not kept: it is the store's
/// directory, which the user gave and [`FileStore::dir`] returns.
fn fault(e: &io::Error) -> IoFault {
    match e.kind() {
        io::ErrorKind::NotFound => IoFault::NotFound,
        io::ErrorKind::PermissionDenied => IoFault::PermissionDenied,
        io::ErrorKind::Interrupted => IoFault::Interrupted,
        io::ErrorKind::UnexpectedEof => IoFault::Truncated,
        // `StorageFull`/`ReadOnlyFilesystem` kinds are newer than the MSRV: by errno.
        _ => match e.raw_os_error() {
            Some(28) => IoFault::StorageFull, // ENOSPC
            Some(30) => IoFault::ReadOnly,    // EROFS
            _ => IoFault::Other,
        },
    }
}

/// Maps an OS error of `op` to the core's error.
fn io(op: StoreOp) -> impl Fn(io::Error) -> StoreError {
    move |e| StoreError::Io {
        op,
        fault: fault(&e),
    }
}

/// `offset..offset + len` within an area of `len_of_area` bytes.
fn check_range(
    what: &'static str,
    len_of_area: u64,
    offset: u64,
    len: usize,
) -> Result<(), StoreError> {
    let end = offset.checked_add(len as u64);
    if end.map_or(true, |end| end > len_of_area) {
        return Err(StoreError::OutOfRange { what, offset, len });
    }
    Ok(())
}

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
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, OpenError> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(|source| OpenError {
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
        Self::slot_path_in(&self.dir, slot)
    }

    /// [`FileStore::slot_path`] of the store in `dir`, without opening it.
    pub fn slot_path_in(dir: &Path, slot: Slot) -> PathBuf {
        dir.join(Self::slot_name(slot))
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
            Err(e) => return Err(io(StoreOp::Open)(e)),
        };
        let mut out = Vec::new();
        // Bounded read: a damaged or foreign file must not make us allocate without limit.
        file.take(MAX_STATE_LEN as u64 + 1)
            .read_to_end(&mut out)
            .map_err(io(StoreOp::Read))?;
        if out.len() > MAX_STATE_LEN {
            return Err(StoreError::Corrupt {
                what: name,
                why: Corruption::TooLarge {
                    limit: MAX_STATE_LEN,
                },
            });
        }
        Ok(Some(out))
    }

    fn replace_record(&self, name: &str, data: &[u8]) -> Result<(), StoreError> {
        let tmp = self.path(&format!("{name}.tmp"));
        let dst = self.path(name);
        let mut f = File::create(&tmp).map_err(io(StoreOp::Create))?;
        f.write_all(data).map_err(io(StoreOp::Write))?;
        f.sync_all().map_err(io(StoreOp::Sync))?;
        drop(f);
        fs::rename(&tmp, &dst).map_err(io(StoreOp::Rename))?;
        self.sync_dir()
    }

    fn sync_dir(&self) -> Result<(), StoreError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(StoreOp::Sync))
    }

    fn write_at(&self, name: &str, offset: u64, data: &[u8], sync: bool) -> Result<(), StoreError> {
        let path = self.path(name);
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(StoreOp::Open))?;
        f.seek(SeekFrom::Start(offset)).map_err(io(StoreOp::Seek))?;
        f.write_all(data).map_err(io(StoreOp::Write))?;
        if sync {
            f.sync_data().map_err(io(StoreOp::Sync))?;
        }
        Ok(())
    }

    fn read_at(&self, name: &'static str, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        let path = self.path(name);
        let mut f = File::open(&path).map_err(io(StoreOp::Open))?;
        let flen = f.metadata().map_err(io(StoreOp::Stat))?.len();
        check_range(name, flen, offset, len)?;
        f.seek(SeekFrom::Start(offset)).map_err(io(StoreOp::Seek))?;
        let mut buf = vec![0; len];
        f.read_exact(&mut buf).map_err(io(StoreOp::Read))?;
        Ok(buf)
    }

    fn file_len(&self, name: &str) -> Result<u64, StoreError> {
        match fs::metadata(self.path(name)) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(io(StoreOp::Stat)(e)),
        }
    }

    fn truncate(&self, name: &str, len: u64) -> Result<(), StoreError> {
        let path = self.path(name);
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io(StoreOp::Create))?;
        f.set_len(len).map_err(io(StoreOp::Truncate))?;
        f.sync_all().map_err(io(StoreOp::Sync))?;
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
            Err(e) => Err(io(StoreOp::Remove)(e)),
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
        check_range("staging", self.file_len("staging.bin")?, offset, data.len())?;
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
            .map_err(io(StoreOp::Sync))
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
                    .map_err(|_| StoreError::Corrupt {
                        what: "boot.json",
                        why: Corruption::Undecodable,
                    })
            }
        }
    }
    fn save_boot(&mut self, record: &BootRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(record).map_err(|_| StoreError::Corrupt {
            what: "boot.json",
            why: Corruption::Undecodable,
        })?;
        self.replace_record("boot.json", &bytes)
    }
}
