//! Safe apply: commit a verified image, boot it on trial, confirm or roll back.
//!
//! The A/B trial-boot scheme of ESP-IDF's app rollback and MCUboot's test swap:
//!
//! 1. [`commit`]: after the receiver verified the whole image (sha256, md5, size, signature)
//!    in the inactive slot, one atomic boot-record write marks it `pending`.
//! 2. [`BootManager::on_boot`] (the bootloader's decision, at every start): a pending image is
//!    hashed again and booted on trial, its attempt counter persisted *before* it runs; once
//!    the counter reaches the limit without a confirmation it is abandoned (rollback) and the
//!    confirmed slot boots. A pending image that no longer hashes to what was verified is
//!    never booted.
//! 3. [`BootManager::confirm`]: the new image declares itself healthy; it becomes the active
//!    slot. [`BootManager::rollback`] abandons it explicitly.
//!
//! Each step is one atomic write of the boot record, so a power cut anywhere leaves the
//! device on the verified new image or on the old one.

#[allow(unused_imports)]
use crate::prelude::*;

use sha2::{Digest as _, Sha256};

use crate::store::{BootRecord, Corruption, ImageInfo, Slot, SlotStore, StoreError};

/// Default boot attempts of a pending image before it is rolled back.
pub const DEFAULT_MAX_BOOT_ATTEMPTS: u32 = 3;

/// Which slot to boot, and whether it is on trial.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootDecision {
    /// The slot to run.
    pub slot: Slot,
    /// What it holds.
    pub image: Option<ImageInfo>,
    /// A new image on trial: call [`BootManager::confirm`] once healthy.
    pub trial: bool,
    /// A pending image was abandoned at this boot, and why.
    pub rolled_back: Option<&'static str>,
}

/// Marks the verified image in `slot` pending: it boots on trial at the next start.
/// Refuses the active slot (never overwrite what runs).
pub fn commit(store: &mut dyn SlotStore, slot: Slot, info: ImageInfo) -> Result<(), StoreError> {
    let mut rec = store.load_boot()?.unwrap_or_else(|| BootRecord::new(None));
    if slot == rec.active {
        return Err(StoreError::Corrupt {
            what: "commit",
            why: Corruption::ActiveSlot,
        });
    }
    rec.set_image(slot, Some(info));
    rec.pending = Some(slot);
    rec.attempts = 0;
    store.save_boot(&rec)
}

/// What [`revert`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reverted {
    /// The boot record now boots `slot`, which holds `to`; the image that ran (`from`) is
    /// on the rolled-back list. The node runs `to` after its next start (a Linux node:
    /// after its next boot decision, [`BootManager::on_boot`]).
    Switched {
        /// The slot that boots now.
        slot: Slot,
        /// The image it holds.
        to: ImageInfo,
        /// The image left, if known.
        from: Option<ImageInfo>,
    },
    /// The node already runs that image (confirmed, nothing pending): nothing changed.
    AlreadyThere,
}

/// Why [`revert`] refused: the typed refusals of a rollback command at the boot record.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RevertError {
    /// The previous slot holds no image, or another one than the command names.
    #[error("the previous slot does not hold {version} ({sha256}); it holds {holds:?}")]
    NotInPreviousSlot {
        /// SHA-256 (hex) the command names.
        sha256: String,
        /// Version the command names.
        version: String,
        /// What the previous slot holds (SHA-256 hex), if anything.
        holds: Option<String>,
    },
    /// The previous slot's bytes no longer hash to its record: it is never booted.
    #[error("the previous slot no longer matches its verified sha256")]
    Damaged,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Carries out a verified rollback command (`docs/ota-protocol.md`, ROLLBACK 707): makes
/// the previous slot, which must hold the image `sha256` (hex) of `version`, the one that
/// boots, in **one** boot-record write that also puts the image that ran on the
/// rolled-back list (so it is not fetched again without an operator intent) and records
/// `issued` as the last intent acted on (a replayed command is refused).
///
/// * A pending image (committed, not booted yet, or running on trial) is abandoned: the
///   confirmed slot boots, if it holds the named image.
/// * Otherwise the inactive slot must hold it; its bytes are hashed again first (like a
///   pending image at boot) and it becomes the active, confirmed slot: it ran confirmed
///   before the update.
/// * A node that runs the named image already, with nothing pending, changes nothing.
pub fn revert(
    store: &mut dyn SlotStore,
    sha256: &str,
    version: &str,
    issued: u64,
) -> Result<Reverted, RevertError> {
    let mut rec = store.load_boot()?.unwrap_or_else(|| BootRecord::new(None));
    let names = |i: Option<&ImageInfo>| {
        i.is_some_and(|i| i.sha256.eq_ignore_ascii_case(sha256) && i.version == version)
    };
    let target = match rec.pending {
        // Pending or on trial: the previous image is the confirmed one.
        Some(_) => rec.active,
        None if names(rec.image(rec.active)) => return Ok(Reverted::AlreadyThere),
        None => rec.inactive(),
    };
    if !names(rec.image(target)) {
        return Err(RevertError::NotInPreviousSlot {
            sha256: sha256.to_string(),
            version: version.to_string(),
            holds: rec.image(target).map(|i| i.sha256.clone()),
        });
    }
    let Some(to) = rec.image(target).cloned() else {
        return Err(RevertError::Damaged);
    };
    if target != rec.active {
        match slot_sha256(store, target, to.size) {
            Ok(h) if h.eq_ignore_ascii_case(&to.sha256) => {}
            Ok(_) | Err(StoreError::OutOfRange { .. }) => return Err(RevertError::Damaged),
            Err(e) => return Err(e.into()),
        }
    }
    let left = rec.pending.unwrap_or(rec.active);
    let from = rec.image(left).cloned();
    rec.refuse_image_in(left);
    rec.pending = None;
    rec.attempts = 0;
    rec.active = target;
    rec.intent_issued = rec.intent_issued.max(issued);
    store.save_boot(&rec)?;
    Ok(Reverted::Switched {
        slot: target,
        to,
        from,
    })
}

/// SHA-256 of the first `size` bytes of `slot`, read in bounded pieces, as hex.
pub fn slot_sha256(store: &mut dyn SlotStore, slot: Slot, size: u64) -> Result<String, StoreError> {
    const PIECE: u64 = 64 * 1024;
    let mut h = Sha256::new();
    let mut off = 0u64;
    while off < size {
        let n = (size - off).min(PIECE) as usize;
        h.update(store.read_slot(slot, off, n)?);
        off += n as u64;
    }
    Ok(crate::stock::hex(&h.finalize()))
}

/// The boot side of a device: decides what boots, confirms, rolls back.
#[derive(Debug)]
pub struct BootManager<S: SlotStore> {
    store: S,
    max_attempts: u32,
    /// The decision of the current boot.
    current: Option<BootDecision>,
}

impl<S: SlotStore> BootManager<S> {
    /// A manager over `store` allowing `max_attempts` trial boots.
    pub fn new(store: S, max_attempts: u32) -> Self {
        Self {
            store,
            max_attempts: max_attempts.max(1),
            current: None,
        }
    }

    /// The store.
    pub fn store(&mut self) -> &mut S {
        &mut self.store
    }

    /// Gives the store back.
    pub fn into_store(self) -> S {
        self.store
    }

    /// The decision of this boot, after [`BootManager::on_boot`].
    pub fn current(&self) -> Option<&BootDecision> {
        self.current.as_ref()
    }

    /// Decides which slot boots now. Call once per start, before running the image.
    pub fn on_boot(&mut self) -> Result<BootDecision, StoreError> {
        let mut rec = self
            .store
            .load_boot()?
            .unwrap_or_else(|| BootRecord::new(None));
        let mut rolled_back = None;
        if let Some(p) = rec.pending {
            let verdict = if rec.attempts >= self.max_attempts {
                Err("the new image did not confirm within its boot attempts")
            } else {
                match rec.image(p).cloned() {
                    None => Err("pending slot has no image record"),
                    Some(info) => match slot_sha256(&mut self.store, p, info.size) {
                        Ok(h) if h == info.sha256 => Ok(()),
                        Ok(_) => Err("pending image no longer matches its verified sha256"),
                        Err(StoreError::OutOfRange { .. }) => Err("pending image is truncated"),
                        Err(e) => return Err(e),
                    },
                }
            };
            match verdict {
                Ok(()) => {
                    // Count the attempt before running it: a crash in the new image
                    // then still uses one up.
                    rec.attempts += 1;
                    self.store.save_boot(&rec)?;
                    let d = BootDecision {
                        slot: p,
                        image: rec.image(p).cloned(),
                        trial: true,
                        rolled_back: None,
                    };
                    self.current = Some(d.clone());
                    return Ok(d);
                }
                Err(why) => {
                    rec.refuse_image_in(p);
                    rec.pending = None;
                    rec.attempts = 0;
                    self.store.save_boot(&rec)?;
                    rolled_back = Some(why);
                }
            }
        }
        let d = BootDecision {
            slot: rec.active,
            image: rec.image(rec.active).cloned(),
            trial: false,
            rolled_back,
        };
        self.current = Some(d.clone());
        Ok(d)
    }

    /// The running trial image is healthy: make it the active slot.
    pub fn confirm(&mut self) -> Result<(), StoreError> {
        let Some(cur) = self.current.as_ref().filter(|d| d.trial) else {
            return Ok(()); // nothing on trial
        };
        let slot = cur.slot;
        let mut rec = self
            .store
            .load_boot()?
            .unwrap_or_else(|| BootRecord::new(None));
        if rec.pending == Some(slot) {
            rec.active = slot;
            rec.pending = None;
            rec.attempts = 0;
            self.store.save_boot(&rec)?;
        }
        if let Some(c) = self.current.as_mut() {
            c.trial = false;
        }
        Ok(())
    }

    /// Abandons a pending or trial image: the next boot runs the confirmed slot.
    pub fn rollback(&mut self) -> Result<(), StoreError> {
        let mut rec = self
            .store
            .load_boot()?
            .unwrap_or_else(|| BootRecord::new(None));
        if let Some(p) = rec.pending {
            rec.refuse_image_in(p);
            rec.pending = None;
            rec.attempts = 0;
            self.store.save_boot(&rec)?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::{image_info, MemStore};

    fn device() -> (MemStore, ImageInfo) {
        let s = MemStore::with_image(b"old image", "1.0.0");
        let mut w = s.clone();
        w.write_slot(Slot::B, 0, b"new image!").unwrap();
        (s, image_info(b"new image!", "1.1.0"))
    }

    #[test]
    fn trial_then_confirm() {
        let (s, info) = device();
        commit(&mut s.clone(), Slot::B, info).unwrap();
        let mut bm = BootManager::new(s.clone(), 3);
        let d = bm.on_boot().unwrap();
        assert_eq!((d.slot, d.trial), (Slot::B, true));
        bm.confirm().unwrap();
        let d = BootManager::new(s, 3).on_boot().unwrap();
        assert_eq!((d.slot, d.trial), (Slot::B, false));
    }

    #[test]
    fn unconfirmed_image_rolls_back_after_its_attempts() {
        let (s, info) = device();
        commit(&mut s.clone(), Slot::B, info).unwrap();
        for _ in 0..3 {
            let d = BootManager::new(s.clone(), 3).on_boot().unwrap();
            assert_eq!(d.slot, Slot::B); // crashes before confirming
        }
        let d = BootManager::new(s, 3).on_boot().unwrap();
        assert_eq!(d.slot, Slot::A);
        assert!(d.rolled_back.is_some());
    }

    #[test]
    fn rolled_back_images_are_remembered() {
        let (s, info) = device();
        let sha = info.sha256.clone();
        commit(&mut s.clone(), Slot::B, info).unwrap();
        for _ in 0..3 {
            BootManager::new(s.clone(), 3).on_boot().unwrap();
        }
        BootManager::new(s.clone(), 3).on_boot().unwrap();
        let rec = s.clone().load_boot().unwrap().unwrap();
        assert_eq!(rec.refused, vec![sha]);
        // An explicit rollback (a failed post-update hook) is remembered too, once.
        let (s, info) = device();
        let sha = info.sha256.clone();
        commit(&mut s.clone(), Slot::B, info).unwrap();
        let mut bm = BootManager::new(s.clone(), 3);
        bm.on_boot().unwrap();
        bm.rollback().unwrap();
        bm.rollback().unwrap();
        assert_eq!(s.clone().load_boot().unwrap().unwrap().refused, vec![sha]);
    }

    #[test]
    fn a_damaged_pending_image_never_boots() {
        let (s, info) = device();
        commit(&mut s.clone(), Slot::B, info).unwrap();
        s.clone().write_slot(Slot::B, 0, b"X").unwrap();
        let d = BootManager::new(s, 3).on_boot().unwrap();
        assert_eq!(d.slot, Slot::A);
        assert_eq!(
            d.rolled_back,
            Some("pending image no longer matches its verified sha256")
        );
    }

    #[test]
    fn revert_boots_the_previous_slot_in_one_write() {
        // Confirmed update: B active, A holds the old image.
        let (s, info) = device();
        let old = s.clone().load_boot().unwrap().unwrap().images[0]
            .clone()
            .unwrap();
        commit(&mut s.clone(), Slot::B, info.clone()).unwrap();
        let mut bm = BootManager::new(s.clone(), 3);
        bm.on_boot().unwrap();
        bm.confirm().unwrap();
        let r = revert(&mut s.clone(), &old.sha256, &old.version, 7).unwrap();
        assert_eq!(
            r,
            Reverted::Switched {
                slot: Slot::A,
                to: old.clone(),
                from: Some(info.clone())
            }
        );
        let rec = s.clone().load_boot().unwrap().unwrap();
        assert_eq!((rec.active, rec.pending), (Slot::A, None));
        assert_eq!(rec.refused, vec![info.sha256.clone()]);
        assert_eq!(rec.intent_issued, 7);
        let d = BootManager::new(s.clone(), 3).on_boot().unwrap();
        assert_eq!(
            (d.slot, d.trial, d.image),
            (Slot::A, false, Some(old.clone()))
        );
        // Again: already there.
        assert_eq!(
            revert(&mut s.clone(), &old.sha256, &old.version, 8).unwrap(),
            Reverted::AlreadyThere
        );
        // Another image named: refused, nothing written.
        assert!(matches!(
            revert(&mut s.clone(), &info.sha256, "9.9.9", 9),
            Err(RevertError::NotInPreviousSlot { .. })
        ));
    }

    #[test]
    fn revert_abandons_a_trial_image_and_refuses_a_damaged_previous_slot() {
        let (s, info) = device();
        let old = s.clone().load_boot().unwrap().unwrap().images[0]
            .clone()
            .unwrap();
        commit(&mut s.clone(), Slot::B, info.clone()).unwrap();
        BootManager::new(s.clone(), 3).on_boot().unwrap(); // on trial
        revert(&mut s.clone(), &old.sha256, &old.version, 1).unwrap();
        let d = BootManager::new(s.clone(), 3).on_boot().unwrap();
        assert_eq!((d.slot, d.trial), (Slot::A, false));
        // Confirmed update whose old slot was overwritten since: never booted.
        let (s, info) = device();
        commit(&mut s.clone(), Slot::B, info).unwrap();
        let mut bm = BootManager::new(s.clone(), 3);
        bm.on_boot().unwrap();
        bm.confirm().unwrap();
        s.clone().write_slot(Slot::A, 0, b"X").unwrap();
        assert!(matches!(
            revert(&mut s.clone(), &old.sha256, &old.version, 1),
            Err(RevertError::Damaged)
        ));
        assert_eq!(s.clone().load_boot().unwrap().unwrap().active, Slot::B);
    }

    #[test]
    fn commit_refuses_the_active_slot() {
        let (s, info) = device();
        assert!(commit(&mut s.clone(), Slot::A, info).is_err());
    }
}
