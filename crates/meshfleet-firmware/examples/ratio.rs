//! Measures compression and bytes on the wire per firmware byte for the shared corpus, for
//! each DEFLATE window.
//!
//! ```text
//! cargo run --release -p meshfleet-firmware --example ratio [DIR]
//! ```
//!
//! `DIR` defaults to `../shared/firmware` beside the workspace. Prints Markdown tables:
//!
//! 1. The compressors at the 32 KiB window: our levels 6, 9 (zlib-rs) and 10 (the smaller of
//!    zlib-rs 9 and miniz_oxide 10), and miniz_oxide level 10 on its own (the encoder this
//!    crate used before windows could be limited).
//! 2. Per window (4, 8, 16 and 32 KiB) at the default level 9: payload / image and meshfleet
//!    bytes on the wire / image, and the receiver's decoder footprint for that window.
//! 3. Bytes on the wire per image byte, stock against meshfleet, counting OTA data frames
//!    and the manifest, not requests, CAPS, NAK/STATUS or TCP:
//!    - stock painlessMesh: the image cut into 1024-byte raw parts, each sent as the JSON of
//!      an OTA Data package (type 12) with the part in base64, plus the NUL terminator, with
//!      10-digit node ids, built exactly as the library serialises it;
//!    - meshfleet: every chunk in a binary CHUNK frame (docs/ota-protocol.md 2.1: 15 bytes
//!      around the chunk), plus the OFFER frame that carries the signed manifest, once;
//!    - for comparison, the level-9 payload carried in stock Data frames (base64 in JSON),
//!      i.e. compression without a binary transport.
//!
//! A measurement, not a benchmark: no timing is taken. The output is deterministic.

use std::path::PathBuf;

use base64::Engine as _;
use meshfleet_firmware::{
    decoder_footprint, pack, Artefact, Codec, Md5Digest, PackOptions, Version,
};
use rand_core::SeedableRng as _;

/// Raw bytes per stock OTA part (the Alteriom sender's `otaPartSize`, and the test driver's).
const STOCK_PART: usize = 1024;
/// Bytes around a chunk in a binary CHUNK frame: mark (1), length (4), tag (2), campaign (4),
/// index (4); `meshfleet_ota::proto::BINARY_CHUNK_HEADER` + 5.
const BINARY_CHUNK_OVERHEAD: usize = 15;
/// 10-digit node ids, as ESP nodes' ids usually are (`uint32` from the MAC).
const FROM: u32 = 3_000_000_001;
const DEST: u32 = 3_000_000_002;
/// The windows compared.
const WINDOWS: [u32; 4] = [4096, 8192, 16384, 32768];

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

/// meshfleet bytes on the wire for one hop: every chunk and every hash page of the chunk
/// table (16 bytes per chunk) in a binary frame, and the OFFER with the lean manifest (keys as
/// `meshfleet_ota::proto::Offer` serialises them, the campaign id at its longest, plus the
/// NUL terminator).
fn meshfleet_wire_len(a: &Artefact) -> usize {
    let m = a.manifest();
    let chunks: usize = a.chunks().map(|c| c.len() + BINARY_CHUNK_OVERHEAD).sum();
    let pages: usize = (0..m.page_count())
        .map(|k| m.page_len(k).unwrap_or(0) + BINARY_CHUNK_OVERHEAD)
        .sum();
    chunks + pages + offer_len(a)
}

fn offer_len(a: &Artefact) -> usize {
    let manifest = String::from_utf8_lossy(&a.manifest().lean().to_json()).into_owned();
    let offer = format!(
        "{{\"from\":{FROM},\"routing\":0,\"type\":701,\"dest\":{DEST},\"campaign\":4294967295,\
         \"forced\":false,\"manifest\":{manifest}}}"
    );
    offer.len() + 1
}

fn packed(image: &[u8], level: u8, window: u32, key: &meshfleet_firmware::SigningKey) -> Artefact {
    let mut opts = PackOptions::new("sensor", "ESP8266", Version::new(1, 0, 0));
    opts.level = level;
    opts.window = window;
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

    let mut level_rows = Vec::new();
    let mut window_rows = Vec::new();
    let mut wire_rows = Vec::new();
    for path in &files {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let image = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let raw = image.len();
        let per = |n: usize| n as f64 / raw as f64;

        let [l6, l9, l10] = [6u8, 9, 10].map(|level| packed(&image, level, 32768, &key));
        let miniz10 = miniz_oxide::deflate::compress_to_vec(&image, 10).len();
        level_rows.push(format!(
            "| {name} | {raw} | {} | {} | {} | {miniz10} | {:.3} | {:.3} | {:.3} | {:.3} |",
            l6.payload().len(),
            l9.payload().len(),
            l10.payload().len(),
            per(l6.payload().len()),
            per(l9.payload().len()),
            per(l10.payload().len()),
            per(miniz10),
        ));

        let by_window: Vec<Artefact> = WINDOWS
            .iter()
            .map(|&w| packed(&image, 9, w, &key))
            .collect();
        let mut row = format!("| {name} | {raw} |");
        for a in &by_window {
            row.push_str(&format!(
                " {:.3} | {:.3} |",
                per(a.payload().len()),
                per(meshfleet_wire_len(a))
            ));
        }
        window_rows.push(row);

        let md5 = Md5Digest::of(&image);
        let stock = stock_frames_len(&image, &md5, STOCK_PART);
        let compressed_in_stock_frames = stock_frames_len(l9.payload(), &md5, STOCK_PART);
        let w8 = &by_window[1];
        wire_rows.push(format!(
            "| {name} | {raw} | {stock} | {:.3} | {} | {} | {:.3} | {} | {:.3} | {:.3} | {:.3} | {:.3} |",
            per(stock),
            l9.chunk_count(),
            offer_len(&l9),
            per(meshfleet_wire_len(&l9)),
            w8.chunk_count(),
            per(meshfleet_wire_len(w8)),
            per(compressed_in_stock_frames),
            meshfleet_wire_len(&l9) as f64 / stock as f64,
            meshfleet_wire_len(w8) as f64 / stock as f64,
        ));
    }

    println!("Compressors at the 32 KiB window (payload bytes, and payload / image):");
    println!();
    println!(
        "| image | raw bytes | level 6 | level 9 | level 10 | miniz_oxide 10 | ratio 6 | ratio 9 | ratio 10 | ratio miniz_oxide 10 |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in level_rows {
        println!("{row}");
    }

    println!();
    println!("Per window, level 9: payload / image and meshfleet bytes on the wire / image:");
    println!();
    let mut head = String::from("| image | raw bytes |");
    let mut rule = String::from("|---|---:|");
    for w in WINDOWS {
        head.push_str(&format!(
            " {} KiB payload | {} KiB wire |",
            w / 1024,
            w / 1024
        ));
        rule.push_str("---:|---:|");
    }
    println!("{head}");
    println!("{rule}");
    for row in window_rows {
        println!("{row}");
    }
    let mut foot = String::from("| decoder footprint, bytes (this host) | |");
    for w in WINDOWS {
        foot.push_str(&format!(" {} | |", decoder_footprint(Codec::Deflate, w)));
    }
    println!("{foot}");

    println!();
    println!(
        "Stock against meshfleet, bytes on the wire per image byte (data frames and manifest):"
    );
    println!();
    println!(
        "| image | raw bytes | stock wire bytes | stock per byte | meshfleet chunks (32 KiB) | OFFER bytes (32 KiB) | \
         meshfleet per byte (32 KiB) | meshfleet chunks (8 KiB) | meshfleet per byte (8 KiB) | \
         deflate-9 payload in stock frames, per byte | meshfleet / stock (32 KiB) | meshfleet / stock (8 KiB) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in wire_rows {
        println!("{row}");
    }
}
