//! Measures compression and bytes on the wire per firmware byte for the shared corpus.
//!
//! ```text
//! cargo run --release -p meshfleet-firmware --example ratio [DIR]
//! ```
//!
//! `DIR` defaults to `../shared/firmware` beside the workspace. Prints Markdown tables:
//!
//! * DEFLATE ratio (payload / image) of our format at levels 6, 9 and 10, 32 KiB window.
//! * Bytes on the wire per image byte, counting only OTA data frames (not requests, not TCP):
//!   - stock painlessMesh: the image cut into 1024-byte raw parts, each sent as the JSON of an
//!     OTA Data package (type 12) with the part in base64, plus the NUL terminator, with
//!     10-digit node ids, built exactly as the library serialises it;
//!   - meshfleet: the level-9 payload in 1024-byte chunks, each with a binary per-chunk header
//!     *assumed* to be 24 bytes (the OTA frame layout is not fixed yet); also with the signed
//!     manifest (sent once) added;
//!   - for comparison, the level-9 payload carried in stock Data frames (base64 in JSON), i.e.
//!     compression without a binary transport.
//!
//! A measurement, not a benchmark: no timing is taken.

use std::path::PathBuf;

use base64::Engine as _;
use meshfleet_firmware::{pack, Artefact, Md5Digest, PackOptions, Version};
use rand_core::SeedableRng as _;

/// Raw bytes per stock OTA part (the Alteriom sender's `otaPartSize`, and the test driver's).
const STOCK_PART: usize = 1024;
/// Assumed size of a meshfleet per-chunk header on the wire.
const MESHFLEET_CHUNK_HEADER: usize = 24;
/// 10-digit node ids, as ESP nodes' ids usually are (`uint32` from the MAC).
const FROM: u32 = 3_000_000_001;
const DEST: u32 = 3_000_000_002;

/// Bytes on the wire for sending `data` in stock OTA Data frames of `part` bytes each.
fn stock_frames_len(data: &[u8], md5: &Md5Digest, part: usize) -> usize {
    let b64 = base64::engine::general_purpose::STANDARD;
    let no_part = data.len().div_ceil(part);
    data.chunks(part)
        .enumerate()
        .map(|(part_no, chunk)| {
            // Key order and formatting as painlessMesh 1.10 serialises an ota::Data package
            // (PROTOCOL.md 4.3); `+ 1` for the NUL frame terminator.
            let frame = format!(
                "{{\"from\":{FROM},\"routing\":1,\"type\":12,\"md5\":\"{md5}\",\"hardware\":\"ESP8266\",\
                 \"role\":\"sensor\",\"noPart\":{no_part},\"broadcasted\":false,\"dest\":{DEST},\
                 \"partNo\":{part_no},\"data\":\"{}\"}}",
                b64.encode(chunk)
            );
            frame.len() + 1
        })
        .sum()
}

fn packed(image: &[u8], level: u8, key: &meshfleet_firmware::SigningKey) -> Artefact {
    let mut opts = PackOptions::new("sensor", "ESP8266", Version::new(1, 0, 0));
    opts.level = level;
    opts.signing_key = Some(key);
    opts.created = Some(0);
    pack(image, opts).unwrap_or_else(|e| panic!("pack failed: {e}"))
}

fn main() {
    let dir = std::env::args_os().nth(1).map_or_else(
        || {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../../shared/firmware"
            ))
        },
        PathBuf::from,
    );
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}; the shared folder should be beside the workspace \
             (../shared/firmware), or pass a directory",
            dir.display()
        )
    });
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|ext| ext == "bin" || ext == "fw"))
        .collect();
    files.sort();
    // A fixed key: signatures are the same size whatever the key.
    let key = meshfleet_firmware::keys::keygen(&mut rand_chacha::ChaCha20Rng::seed_from_u64(0));

    println!("| image | raw bytes | level 6 | level 9 | level 10 | ratio 6 | ratio 9 | ratio 10 |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut wire_rows = Vec::new();
    for path in &files {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let image = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let raw = image.len();
        let [l6, l9, l10] = [6u8, 9, 10].map(|level| packed(&image, level, &key));
        let ratio = |a: &Artefact| a.payload().len() as f64 / raw as f64;
        println!(
            "| {name} | {raw} | {} | {} | {} | {:.3} | {:.3} | {:.3} |",
            l6.payload().len(),
            l9.payload().len(),
            l10.payload().len(),
            ratio(&l6),
            ratio(&l9),
            ratio(&l10)
        );

        let md5 = Md5Digest::of(&image);
        let stock = stock_frames_len(&image, &md5, STOCK_PART);
        let chunks = l9.chunk_count() as usize;
        let meshfleet = l9.payload().len() + MESHFLEET_CHUNK_HEADER * chunks;
        let manifest = l9.to_bytes().len() - l9.payload().len();
        let compressed_in_stock_frames = stock_frames_len(l9.payload(), &md5, STOCK_PART);
        wire_rows.push(format!(
            "| {name} | {raw} | {stock} | {:.3} | {chunks} | {meshfleet} | {:.3} | {manifest} | {:.3} | {:.3} | {:.3} |",
            stock as f64 / raw as f64,
            meshfleet as f64 / raw as f64,
            (meshfleet + manifest) as f64 / raw as f64,
            compressed_in_stock_frames as f64 / raw as f64,
            (meshfleet + manifest) as f64 / stock as f64,
        ));
    }
    println!();
    println!(
        "| image | raw bytes | stock wire bytes | stock per byte | meshfleet chunks | meshfleet wire bytes \
         ({MESHFLEET_CHUNK_HEADER} B/chunk header) | meshfleet per byte | manifest + file header bytes | \
         meshfleet per byte incl. manifest | deflate-9 payload in stock frames, per byte | meshfleet incl. manifest / stock |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in wire_rows {
        println!("{row}");
    }
}
