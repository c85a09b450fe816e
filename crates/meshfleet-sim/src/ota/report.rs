//! The campaign's report (`summary.json` under `ota`) and the models behind two of its
//! columns: which image a node ends on, and the RAM a receiver needs for the update.

use meshfleet_firmware::Codec;
use meshfleet_ota::proto::BINARY_CHUNK_HEADER;
use meshfleet_ota::{boot, ImageInfo, MemStore, SlotStore};
use meshfleet_wire::Package;
use serde::Serialize;

use super::bound::LowerBound;
use super::campaign::Payload;
use super::{OtaCampaign, BOOT_ATTEMPTS, MD5_CONTEXT_BYTES};

/// Counts of notable OTA events over the run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct OtaCounters {
    /// Stock receivers whose request task gave up.
    pub gave_up: u64,
    /// Stock receivers that saw a broadcast part out of sequence.
    pub broadcast_gaps: u64,
    /// Stock updates that failed (MD5, write).
    pub update_failed: u64,
    /// meshfleet chunks rejected (hash, length, …).
    pub chunks_rejected: u64,
    /// meshfleet complete images that failed verification (or store failures).
    pub verify_failed: u64,
    /// meshfleet offers refused.
    pub offers_rejected: u64,
    /// Store or boot-record operations that failed in the simulator's wrapper.
    pub store_errors: u64,
}

/// Which image a node runs (or boots next) at the end, as its storage says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinalImage {
    /// The verified new image (running, or committed and booting next).
    New,
    /// Its old image.
    Old,
    /// Anything else: a slot that does not hash to its record, or an image that is neither.
    Broken,
}

/// One receiver's outcome.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct OtaNodeReport {
    /// Node number.
    pub node: u32,
    /// Hops from the source in the tree at the start (`None`: not in the source's mesh).
    pub depth: Option<u32>,
    /// When it first held the verified new image, virtual seconds after the start.
    pub updated_after_s: Option<f64>,
    /// What it runs or boots next at the end.
    pub image: FinalImage,
}

/// The result of a campaign. In `summary.json` under `ota`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct OtaReport {
    /// `stock`, `stock_broadcasted` or `meshfleet`.
    pub strategy: String,
    /// Source node number.
    pub source: u32,
    /// Raw image size, bytes.
    pub image_bytes: u64,
    /// Compressed, chunked payload size S (meshfleet transfers this), bytes.
    pub payload_bytes: u64,
    /// When the source started, virtual seconds (`None`: never started).
    pub started_s: Option<f64>,
    /// How long the run went on after the start, virtual seconds.
    pub observed_s: Option<f64>,
    /// Receivers: every node but the source.
    pub receivers: u32,
    /// Receivers that got the verified new image.
    pub updated: u32,
    /// `updated / receivers`.
    pub success_ratio: f64,
    /// Time from the start until the last receiver was updated, if all were.
    pub makespan_s: Option<f64>,
    /// Time from the start until the latest update so far.
    pub last_update_s: Option<f64>,
    /// Frames of OTA package types (10-12, 700-709, binary chunks) put on the air.
    pub ota_frames_on_air: u64,
    /// Their bytes.
    pub ota_bytes_on_air: u64,
    /// All bytes put on the air from the start until the latest update (mesh traffic
    /// included).
    pub bytes_on_air_until_last_update: u64,
    /// All bytes put on the air from the start until the end of the run.
    pub bytes_on_air_since_start: u64,
    /// OTA bytes the source put on the air.
    pub source_ota_bytes: u64,
    /// All bytes the source put on the air since the start.
    pub source_bytes: u64,
    /// Peak RAM one receiver needs for the update, bytes (definition in
    /// `docs/ota-protocol.md`, "Lower bound"; largest over the receivers).
    pub peak_node_ota_memory_bytes: u64,
    /// Receivers whose storage ends on the new image / the old one / neither.
    pub final_new: u32,
    /// See `final_new`.
    pub final_old: u32,
    /// See `final_new`.
    pub final_broken: u32,
    /// Notable events.
    pub counters: OtaCounters,
    /// The lower bound for this run's tree and links (`None` before the start).
    pub lower_bound: Option<LowerBound>,
    /// `makespan_s / lower_bound.bound_s` (the mean-value bound).
    pub ratio_to_bound: Option<f64>,
    /// `makespan_s / lower_bound.combined_bound_s` (mean-value and stochastic bounds).
    pub ratio_to_combined_bound: Option<f64>,
    /// Per receiver.
    pub per_node: Vec<OtaNodeReport>,
}

/// What a meshfleet node's storage boots next (the boot manager's decision, without
/// counting an attempt), checked against the slot's bytes.
pub(super) fn final_image(store: &MemStore, p: &Payload) -> FinalImage {
    let mut s = store.clone();
    let Ok(Some(rec)) = s.load_boot() else {
        return FinalImage::Broken;
    };
    let hashes = |s: &mut MemStore, slot, info: &ImageInfo| {
        boot::slot_sha256(s, slot, info.size).is_ok_and(|h| h == info.sha256)
    };
    let mut slot = rec.active;
    if let Some(pending) = rec.pending {
        // `on_boot` boots a pending image that still hashes to its record (with attempts
        // left) and rolls back otherwise.
        if rec.attempts < BOOT_ATTEMPTS
            && rec
                .image(pending)
                .is_some_and(|info| hashes(&mut s, pending, info))
        {
            slot = pending;
        }
    }
    match rec.image(slot) {
        Some(info) if hashes(&mut s, slot, info) => {
            if info.sha256 == p.new_info.sha256 {
                FinalImage::New
            } else if info.sha256 == p.old_info.sha256 {
                FinalImage::Old
            } else {
                FinalImage::Broken
            }
        }
        _ => FinalImage::Broken,
    }
}

/// RAM a meshfleet receiver needs for the update, bytes: the larger of the OFFER phase (the
/// OFFER frame being parsed: the lean manifest) and the transfer phase (the DEFLATE
/// decoder for the artefact's window: the window and the inflater's tables; one chunk
/// frame, its own unit bitmap and one "wanted" bitmap per downstream neighbour). Staged
/// chunks, the chunk table's hash pages (a chunk is checked against its 16-byte entry read
/// back from flash) and the image go to flash, not RAM.
pub(super) fn meshfleet_memory(
    m: &meshfleet_firmware::Manifest,
    children: u32,
    offer_frame: u64,
) -> u64 {
    let units = meshfleet_ota::proto::Layout::of(m).units();
    let bitmap = u64::from(units).div_ceil(8);
    // Codec none passes chunks straight to the slot: no decoder buffers to count.
    let decoder = match m.codec {
        Codec::Deflate => m.decoder_footprint() as u64,
        Codec::None => 0,
    };
    let frame = u64::from(m.chunk_size) + BINARY_CHUNK_HEADER as u64 + 5;
    let transfer = decoder + frame + bitmap * (1 + u64::from(children));
    let offer = offer_frame.max(m.lean().json_len() as u64);
    transfer.max(offer)
}

/// RAM a stock receiver needs for the update, bytes: the Data frame being parsed (JSON with
/// the base64 part), the decoded part handed to `Update.write`, and the MD5 context.
pub(super) fn stock_memory(c: &OtaCampaign, data_frame: u64) -> u64 {
    let offer = &c.payload.offer;
    let part = u64::from(offer.style().raw_part_size()).min(offer.image().len() as u64);
    let frame = if data_frame > 0 {
        data_frame
    } else {
        // Not seen on the air (no transfer): the frame of part 0 as the library sends it.
        let req = offer.announce(1).request(u32::MAX, 0);
        let reply = req.reply(offer.part_base64(0).unwrap_or_default());
        Package::from_serialize(&reply).map_or(0, |p| p.text().len() as u64 + 1)
    };
    frame + part + MD5_CONTEXT_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ota::{synthetic_image, OtaStrategy};

    #[test]
    fn per_node_memory_follows_the_artefact_window() {
        let img = synthetic_image(64 * 1024, 5);
        let wide = OtaCampaign::new(OtaStrategy::Meshfleet, img).unwrap_or_else(|e| panic!("{e}"));
        let narrow = wide
            .clone()
            .with_window(8192)
            .unwrap_or_else(|e| panic!("{e}"));
        let (mw, mn) = (wide.artefact().manifest(), narrow.artefact().manifest());
        assert_eq!((mw.window, mn.window), (32768, 8192));
        assert_eq!(narrow.image(), wide.image());
        // The transfer phase (2 children: 3 bitmaps) dominates for this image: the decoder
        // for the artefact's window, one chunk frame and the unit bitmaps (the chunk table
        // stays in flash).
        for m in [mw, mn] {
            let units = u64::from(m.chunk_count + m.page_count());
            assert_eq!(
                meshfleet_memory(m, 2, 0),
                m.decoder_footprint() as u64 + 1024 + 15 + 3 * units.div_ceil(8),
                "window {}",
                m.window
            );
        }
        assert_eq!(mw.decoder_footprint() - mn.decoder_footprint(), 24_576);
        assert!(
            narrow.clone().with_window(1000).is_err(),
            "not a power of two"
        );
    }
}
