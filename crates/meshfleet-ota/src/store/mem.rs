//! [`MemStore`]: an in-memory [`SlotStore`] for the simulator and tests (the `std`
//! feature: clones share their storage across threads behind a `Mutex`).

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

#[allow(unused_imports)]
use crate::prelude::*;

use super::{image_info, BootRecord, Slot, SlotStore, StoreError, MAX_AREA};

#[derive(Debug, Default)]
struct MemInner {
    state: Option<Vec<u8>>,
    staging: Area,
    slots: [Area; 2],
    boot: Option<BootRecord>,
    shared: SharedPages,
}

/// Bytes per page of a [`MemStore`] area.
pub(super) const PAGE: usize = 4096;

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
    by_hash: Arc<HashMap<u64, Vec<Page>>>,
}

impl SharedPages {
    /// The pages of each of `contents`.
    pub fn new(contents: &[&[u8]]) -> Self {
        let mut by_hash: HashMap<u64, Vec<Page>> = Default::default();
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
    let mut h = DefaultHasher::new();
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
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn range(
    what: &'static str,
    len: u64,
    offset: u64,
    n: usize,
) -> Result<core::ops::Range<usize>, StoreError> {
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
