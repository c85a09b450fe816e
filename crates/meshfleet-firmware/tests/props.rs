//! Property tests: round trips on arbitrary data, arbitrary chunking of the decoder input, and
//! parsers that never panic whatever bytes they get.

mod common;

use common::key;
use meshfleet_firmware::{
    codec, pack, Artefact, Codec, PackOptions, StreamDecoder, Version, MAX_CHUNK_SIZE,
    MIN_CHUNK_SIZE,
};
use proptest::prelude::*;

/// Images that are random, repetitive (compressible, long matches) or a mix.
fn image() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 1..6000),
        (prop::collection::vec(any::<u8>(), 1..48), 1..400usize)
            .prop_map(|(unit, n)| unit.repeat(n)),
        (
            prop::collection::vec(any::<u8>(), 1..3000),
            prop::collection::vec(any::<u8>(), 1..3000)
        )
            .prop_map(|(a, b)| [a.clone(), b, a].concat()),
    ]
}

fn codec_strategy() -> impl Strategy<Value = Codec> {
    prop_oneof![Just(Codec::None), Just(Codec::Deflate)]
}

/// Every valid DEFLATE window, 512 to 32768 bytes.
fn window_strategy() -> impl Strategy<Value = u32> {
    (9u32..=15).prop_map(|bits| 1 << bits)
}

/// Splits `data` at the given piece lengths (cycled). A length of 0 yields an empty piece
/// (pushing nothing must be harmless) followed by a 1-byte one, so the split always progresses.
fn pieces<'a>(data: &'a [u8], lens: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    let mut i = 0;
    while !rest.is_empty() {
        let mut n = lens[i % lens.len()];
        if n == 0 {
            out.push(&rest[..0]);
            n = 1;
        }
        let (head, tail) = rest.split_at(n.min(rest.len()));
        out.push(head);
        rest = tail;
        i += 1;
    }
    out
}

/// A small signed artefact file, the starting point for mutations.
fn base_file() -> (Vec<u8>, Artefact) {
    let k = key(9);
    let image: Vec<u8> = (0..3000u32).map(|i| (i * i % 251) as u8).collect();
    let mut opts = PackOptions::new(
        "sensor",
        "ESP32",
        Version::parse("2.0.1").unwrap_or_else(|e| panic!("{e}")),
    );
    opts.chunk_size = 256;
    opts.signing_key = Some(&k);
    let artefact = pack(&image, opts).unwrap_or_else(|e| panic!("{e}"));
    (artefact.to_bytes(), artefact)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn pack_parse_verify_round_trip(
        image in image(),
        codec in codec_strategy(),
        level in 0u8..=10,
        window in window_strategy(),
        chunk_size in MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE / 8,
        signed in any::<bool>(),
        created in proptest::option::of(any::<u64>()),
    ) {
        let k = key(3);
        let mut opts = PackOptions::new("node", "ESP8266", Version::new(1, 2, 3));
        opts.codec = codec;
        opts.level = level;
        opts.window = window;
        opts.chunk_size = chunk_size;
        opts.created = created;
        opts.signing_key = signed.then_some(&k);
        let packed = pack(&image, opts).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let file = packed.to_bytes();
        let parsed = Artefact::from_bytes(&file).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&parsed, &packed);
        prop_assert_eq!(parsed.to_bytes(), file);

        let vk = k.verifying_key();
        let verified = parsed
            .verify(signed.then_some(&vk))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(verified.image(), &image[..]);

        let m = parsed.manifest();
        prop_assert_eq!(m.window, if codec == Codec::Deflate { window } else { 0 });
        let rejoined: Vec<u8> = (0..parsed.chunk_count())
            .flat_map(|i| parsed.chunk(i).unwrap_or_default().to_vec())
            .collect();
        prop_assert_eq!(&rejoined[..], parsed.payload());
        for i in 0..parsed.chunk_count() {
            let chunk = parsed.chunk(i).unwrap_or_default();
            prop_assert!(!chunk.is_empty() && chunk.len() <= chunk_size as usize);
            prop_assert!(parsed.verify_chunk(i, chunk));
        }
        prop_assert_eq!(m.chunk_hashes.len(), m.chunk_count as usize);
    }

    #[test]
    fn stream_decoder_any_split_equals_original(
        image in image(),
        codec in codec_strategy(),
        window in window_strategy(),
        lens in prop::collection::vec(0usize..3000, 1..16),
    ) {
        let (payload, window) = match codec {
            Codec::None => (image.clone(), 0),
            Codec::Deflate => (
                codec::deflate(&image, 6, window).map_err(|e| TestCaseError::fail(e.to_string()))?,
                window,
            ),
        };
        // A decoder with exactly the window the stream was packed with.
        let mut decoder = StreamDecoder::new(codec, window, image.len() as u64)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut out = Vec::new();
        for piece in pieces(&payload, &lens) {
            decoder
                .push(piece, |b| out.extend_from_slice(b))
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        prop_assert_eq!(decoder.finish(), Ok(image.len() as u64));
        prop_assert_eq!(out, image);
    }

    #[test]
    fn stream_decoder_survives_garbage(
        garbage in prop::collection::vec(any::<u8>(), 0..4000),
        limit in 0u64..100_000,
        window in window_strategy(),
        lens in prop::collection::vec(1usize..500, 1..8),
    ) {
        let mut decoder = StreamDecoder::new(Codec::Deflate, window, limit)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut produced = 0u64;
        for piece in pieces(&garbage, &lens) {
            if decoder.push(piece, |b| produced += b.len() as u64).is_err() {
                break;
            }
        }
        prop_assert!(produced <= limit);
        let _ = decoder.finish();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn from_bytes_never_panics_on_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = Artefact::from_bytes(&bytes);
    }

    #[test]
    fn from_bytes_never_panics_behind_a_valid_header(
        claimed in any::<u32>(),
        body in prop::collection::vec(any::<u8>(), 0..600),
    ) {
        let mut bytes = b"MFW1".to_vec();
        bytes.extend_from_slice(&claimed.to_le_bytes());
        bytes.extend_from_slice(&body);
        let _ = Artefact::from_bytes(&bytes);
        // And with the length matching the body, so the JSON parser sees it.
        bytes[4..8].copy_from_slice(&(body.len() as u32).to_le_bytes());
        let _ = Artefact::from_bytes(&bytes);
    }

    /// Whatever a corrupter or forger changes, a file that still verifies under the signer's
    /// key is the original artefact.
    #[test]
    fn mutated_files_never_verify_as_something_else(
        edits in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let (file, original) = base_file();
        let mut bytes = file.clone();
        for (at, xor) in edits {
            let i = at.index(bytes.len());
            bytes[i] ^= xor;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len()));
        }
        if let Ok(artefact) = Artefact::from_bytes(&bytes) {
            let _ = artefact.verify(None);
            if artefact.verify(Some(&key(9).verifying_key())).is_ok() {
                prop_assert_eq!(artefact, original);
            }
        }
    }
}
