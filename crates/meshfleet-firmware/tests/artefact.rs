//! Pack → bytes → parse → verify on the real firmware corpus, and every way a file can be
//! damaged or forged.

mod common;

use common::{corpus, key, mfw, replace_once};
use meshfleet_firmware::{
    decoder_footprint, pack, Artefact, Codec, DecodeError, Manifest, ManifestError, PackError,
    PackOptions, ParseError, SignatureCheck, SignatureError, StreamDecoder, StreamVerifier,
    VerifyError, Version, WindowError, DEFAULT_WINDOW, HEADER_LEN,
};

fn version(s: &str) -> Version {
    Version::parse(s).unwrap_or_else(|e| panic!("{e}"))
}

/// A small but real image: the first 40 KiB of the smallest corpus file is too short for 17+
/// chunks once compressed, so use a whole ath9k image (51,008 bytes, ~27 KB compressed).
fn ath9k() -> Vec<u8> {
    corpus()
        .into_iter()
        .find(|(name, _)| name.starts_with("ath9k"))
        .map(|(_, bytes)| bytes)
        .unwrap_or_else(|| panic!("no ath9k image in the corpus"))
}

fn signed_file(image: &[u8]) -> Vec<u8> {
    let k = key(1);
    let mut opts = PackOptions::new("sensor", "ESP8266", version("1.2.10"));
    opts.signing_key = Some(&k);
    opts.created = Some(1_767_225_600);
    pack(image, opts)
        .unwrap_or_else(|e| panic!("{e}"))
        .to_bytes()
}

fn parse(bytes: &[u8]) -> Artefact {
    Artefact::from_bytes(bytes).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn corpus_round_trip_signed() {
    let k = key(1);
    for (name, image) in corpus() {
        let mut opts = PackOptions::new("node", "ESP8266", version("1.9.4-113"));
        opts.signing_key = Some(&k);
        // Level 6 keeps the debug-build test quick; levels are measured by examples/ratio.rs.
        opts.level = 6;
        let file = pack(&image, opts)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .to_bytes();
        let artefact = parse(&file);
        let m = artefact.manifest();
        assert_eq!(m.size, image.len() as u64, "{name}");
        assert_eq!(m.md5, meshfleet_firmware::Md5Digest::of(&image), "{name}");
        assert!(m.compressed_size < m.size, "{name} should compress");
        assert_eq!(artefact.chunks().len() as u32, m.chunk_count, "{name}");
        let verified = artefact
            .verify(Some(&k.verifying_key()))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(verified.image(), &image[..], "{name}");
        assert_eq!(
            verified.signature(),
            SignatureCheck::Verified(meshfleet_firmware::KeyId::of(&k.verifying_key()))
        );
        // Every chunk checks against its own hash, and not against its neighbour's.
        for i in 0..artefact.chunk_count() {
            let chunk = artefact.chunk(i).unwrap_or_else(|| panic!("chunk {i}"));
            assert!(artefact.verify_chunk(i, chunk), "{name} chunk {i}");
            if i > 0 {
                assert!(!artefact.verify_chunk(i - 1, chunk), "{name} chunk {i}");
            }
        }
        assert_eq!(artefact.chunk(artefact.chunk_count()), None);
    }
}

#[test]
fn codec_none_round_trip_and_md5_matches_md5sum() {
    let image = ath9k();
    let mut opts = PackOptions::new("sensor", "ESP32", version("1"));
    opts.codec = Codec::None;
    let artefact = parse(
        &pack(&image, opts)
            .unwrap_or_else(|e| panic!("{e}"))
            .to_bytes(),
    );
    assert_eq!(artefact.payload(), &image[..]);
    // Nothing to decompress: no window, whatever `opts.window` said.
    assert_eq!(artefact.manifest().window, 0);
    let verified = artefact.verify(None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(verified.image(), &image[..]);
    assert_eq!(
        verified.signature(),
        SignatureCheck::NotChecked { claimed_key: None }
    );
    assert_eq!(
        verified.signature().to_string(),
        "integrity only: the artefact is unsigned"
    );
}

#[test]
fn packing_is_deterministic() {
    let image = ath9k();
    assert_eq!(signed_file(&image), signed_file(&image));
}

#[test]
fn flipped_byte_in_a_chunk_names_the_chunk() {
    let image = ath9k();
    let mut file = signed_file(&image);
    let artefact = parse(&file);
    assert!(artefact.chunk_count() > 17, "need at least 18 chunks");
    let manifest_len = file.len() - HEADER_LEN - artefact.payload().len();
    let offset = HEADER_LEN + manifest_len + 17 * artefact.manifest().chunk_size as usize + 100;
    file[offset] ^= 0x01;
    let tampered = parse(&file);
    assert!(!tampered.verify_chunk(17, tampered.chunk(17).unwrap_or_default()));
    let k = key(1);
    for key in [Some(&k.verifying_key()), None] {
        let err = tampered.verify(key).expect_err("tampered chunk");
        assert_eq!(err, VerifyError::ChunkHash { index: 17 });
        assert_eq!(err.to_string(), "chunk 17 hash mismatch");
    }
}

#[test]
fn truncated_files() {
    let file = signed_file(&ath9k());
    let artefact = parse(&file);
    let expected = artefact.manifest().compressed_size;

    let err = Artefact::from_bytes(&file[..file.len() - 100]).expect_err("truncated payload");
    assert!(matches!(err, ParseError::Truncated { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "file truncated: expected {expected} payload bytes, found {}",
            expected - 100
        )
    );

    let err = Artefact::from_bytes(&file[..HEADER_LEN + 10]).expect_err("truncated manifest");
    assert!(
        matches!(err, ParseError::ManifestTruncated { available: 10, .. }),
        "{err}"
    );

    let err = Artefact::from_bytes(&file[..5]).expect_err("truncated header");
    assert!(matches!(err, ParseError::TooShort { len: 5 }), "{err}");

    let mut long = file.clone();
    long.push(0);
    let err = Artefact::from_bytes(&long).expect_err("trailing byte");
    assert!(
        matches!(err, ParseError::TrailingData { extra: 1, .. }),
        "{err}"
    );
}

#[test]
fn header_claims_are_checked_before_allocating() {
    let mut file = b"MFW1".to_vec();
    file.extend_from_slice(&u32::MAX.to_le_bytes());
    let err = Artefact::from_bytes(&file).expect_err("huge claim");
    assert!(
        matches!(err, ParseError::ManifestTooLarge { claimed: u32::MAX }),
        "{err}"
    );

    let err = Artefact::from_bytes(b"PK\x03\x04rest of a zip").expect_err("magic");
    assert!(err.to_string().starts_with("not an .mfw file"), "{err}");
    let esp8266 = corpus()
        .into_iter()
        .find(|(name, _)| name.starts_with("esp8266"))
        .map(|(_, bytes)| bytes)
        .unwrap_or_default();
    let err = Artefact::from_bytes(&esp8266).expect_err("raw image");
    assert!(err.to_string().contains("raw ESP firmware image"), "{err}");

    // A manifest claiming a huge payload gets "truncated", not an allocation.
    let file = signed_file(&ath9k());
    let artefact = parse(&file);
    let mut m = artefact.manifest().clone();
    m.compressed_size = 1 << 40;
    let err = Artefact::from_bytes(&mfw(&m.to_json(), artefact.payload())).expect_err("claim");
    assert!(
        matches!(err, ParseError::Manifest(ManifestError::PayloadSize { .. })),
        "{err}"
    );
}

#[test]
fn wrong_key_and_missing_signature() {
    let file = signed_file(&ath9k());
    let artefact = parse(&file);
    let other = key(2);
    let err = artefact
        .verify(Some(&other.verifying_key()))
        .expect_err("wrong key");
    assert!(
        matches!(err, VerifyError::Signature(SignatureError::WrongKey { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("not by the given key"), "{err}");

    let (mut m, payload) = artefact.clone().into_parts();
    m.key_id = None;
    m.signature = None;
    let unsigned = Artefact::from_parts(m, payload).unwrap_or_else(|e| panic!("{e}"));
    let err = unsigned
        .verify(Some(&key(1).verifying_key()))
        .expect_err("unsigned");
    assert!(
        matches!(err, VerifyError::Signature(SignatureError::Unsigned { .. })),
        "{err}"
    );
}

#[test]
fn manifest_edited_after_signing_is_caught() {
    let k = key(1);
    let file = signed_file(&ath9k());

    // In place, same length: what someone with a hex editor would do.
    let forged = replace_once(&file, b"\"version\":\"1.2.10\"", b"\"version\":\"1.2.11\"");
    let artefact = parse(&forged);
    assert_eq!(artefact.manifest().version, version("1.2.11"));
    let err = artefact
        .verify(Some(&k.verifying_key()))
        .expect_err("forged version");
    let key_id = meshfleet_firmware::KeyId::of(&k.verifying_key());
    assert_eq!(
        err,
        VerifyError::Signature(SignatureError::Mismatch { key_id })
    );
    assert!(
        err.to_string()
            .starts_with(&format!("signature does not match key {key_id}")),
        "{err}"
    );
    // Without a key only integrity is checked, and the report says so.
    let verified = artefact.verify(None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        verified.signature(),
        SignatureCheck::NotChecked {
            claimed_key: Some(key_id)
        }
    );

    // Through the API, with a re-serialised file.
    let (mut m, payload) = parse(&file).into_parts();
    m.role = "gateway".into();
    let forged = Artefact::from_parts(m, payload).unwrap_or_else(|e| panic!("{e}"));
    let forged = parse(&forged.to_bytes());
    assert!(matches!(
        forged.verify(Some(&k.verifying_key())),
        Err(VerifyError::Signature(SignatureError::Mismatch { .. }))
    ));

    // A forger who re-signs with their own key and names it is still refused.
    let mut resigned = forged.clone();
    resigned.sign(&key(666));
    assert!(matches!(
        resigned.verify(Some(&k.verifying_key())),
        Err(VerifyError::Signature(SignatureError::WrongKey { .. }))
    ));
}

#[test]
fn signature_survives_reformatting_of_the_manifest_json() {
    // The signature covers the parsed manifest, not its spelling.
    let k = key(1);
    let file = signed_file(&ath9k());
    let artefact = parse(&file);
    let value: serde_json::Value =
        serde_json::from_slice(&artefact.manifest().to_json()).unwrap_or_else(|e| panic!("{e}"));
    let pretty = serde_json::to_vec_pretty(&value).unwrap_or_else(|e| panic!("{e}"));
    let reformatted = parse(&mfw(&pretty, artefact.payload()));
    assert!(reformatted.verify(Some(&k.verifying_key())).is_ok());
    assert_eq!(reformatted.to_bytes(), file);
}

#[test]
fn manifest_errors_are_specific() {
    let file = signed_file(&ath9k());
    let artefact = parse(&file);
    let json = artefact.manifest().to_json();

    let bad = replace_once(&json, b"\"codec\":\"deflate\"", b"\"codec\":\"lz4\"");
    let err = Artefact::from_bytes(&mfw(&bad, artefact.payload())).expect_err("codec");
    assert!(
        matches!(&err, ParseError::Manifest(ManifestError::UnknownCodec { name }) if name == "lz4"),
        "{err}"
    );
    assert!(
        err.to_string().starts_with("unknown codec \"lz4\""),
        "{err}"
    );

    let bad = replace_once(&json, b"\"format\":2", b"\"format\":3,\"window\":4096");
    let err = Artefact::from_bytes(&mfw(&bad, artefact.payload())).expect_err("format");
    assert!(
        matches!(
            err,
            ParseError::Manifest(ManifestError::UnsupportedFormat { found: 3 })
        ),
        "{err}"
    );

    // An extra key could not be covered by the signature, so it is refused outright.
    let bad = replace_once(&json, b"\"format\":2", b"\"format\":2,\"forced\":true");
    let err = Artefact::from_bytes(&mfw(&bad, artefact.payload())).expect_err("extra key");
    assert!(err.to_string().contains("unknown field `forced`"), "{err}");

    let bad = replace_once(&json, b"\"chunk_size\":1024", b"\"chunk_size\":512");
    let err = Artefact::from_bytes(&mfw(&bad, artefact.payload())).expect_err("count");
    assert!(
        matches!(err, ParseError::Manifest(ManifestError::ChunkCount { .. })),
        "{err}"
    );

    let bad = replace_once(&json, b"\"version\":\"1.2.10\"", b"\"version\":\"1.2.x\"");
    let err = Artefact::from_bytes(&mfw(&bad, artefact.payload())).expect_err("version");
    assert!(
        err.to_string().contains("invalid version \"1.2.x\""),
        "{err}"
    );

    // Duplicate keys: two parsers could disagree on which one counts, so none is chosen.
    let bad = replace_once(
        &json,
        b"\"role\":\"sensor\"",
        b"\"role\":\"sensor\",\"role\":\"relay\"",
    );
    let err = Artefact::from_bytes(&mfw(&bad, artefact.payload())).expect_err("duplicate key");
    assert!(err.to_string().contains("duplicate field `role`"), "{err}");

    // The window must be a power of two in range for deflate (here: not a power of two)...
    let bad = replace_once(&json, b"\"window\":32768", b"\"window\":20000");
    let err = Artefact::from_bytes(&mfw(&bad, artefact.payload())).expect_err("window");
    assert!(
        matches!(
            err,
            ParseError::Manifest(ManifestError::Window(WindowError::Deflate {
                window: 20000
            }))
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "invalid manifest: window 20000 is not valid for codec deflate: it must be a power of \
         two from 512 to 32768 bytes"
    );
    // ... and 0 for none.
    let stored = {
        let mut opts = PackOptions::new("sensor", "ESP8266", version("1.2.10"));
        opts.codec = Codec::None;
        pack(&ath9k(), opts).unwrap_or_else(|e| panic!("{e}"))
    };
    let bad = replace_once(
        &stored.manifest().to_json(),
        b"\"window\":0",
        b"\"window\":8192",
    );
    let err = Artefact::from_bytes(&mfw(&bad, stored.payload())).expect_err("window none");
    assert!(err.to_string().contains("must be 0"), "{err}");
    // The window is a required key.
    let bad = replace_once(&json, b"\"window\":32768,", b"");
    let err = Artefact::from_bytes(&mfw(&bad, artefact.payload())).expect_err("no window");
    assert!(err.to_string().contains("missing field `window`"), "{err}");

    let md5 = artefact.manifest().md5.to_hex();
    let bad = replace_once(&json, md5.as_bytes(), md5.to_uppercase().as_bytes());
    let err = Artefact::from_bytes(&mfw(&bad, artefact.payload())).expect_err("uppercase md5");
    assert!(err.to_string().contains("invalid md5"), "{err}");
}

/// The chunk table is not signed itself: it must hash to the signed hash pages, and an
/// artefact file must carry it; the lean form (what an OFFER carries) keeps the signature.
#[test]
fn chunk_table_is_bound_to_the_signed_hash_pages() {
    let file = signed_file(&ath9k());
    let artefact = parse(&file);
    let m = artefact.manifest();
    assert!(m.page_count() >= 1);
    assert_eq!(m.hash_pages.len() as u32, m.page_count());

    // Swap one chunk hash for another: the table no longer matches page 0.
    let json = m.to_json();
    let (h0, h1) = (m.chunk_hashes[0].to_hex(), m.chunk_hashes[1].to_hex());
    let bad = replace_once(&json, h0.as_bytes(), h1.as_bytes());
    let err = Artefact::from_bytes(&mfw(&bad, artefact.payload())).expect_err("altered table");
    assert!(
        matches!(
            err,
            ParseError::Manifest(ManifestError::HashPageMismatch { page: 0 })
        ),
        "{err}"
    );

    // The lean manifest: small, still validly signed, refused as an artefact.
    let lean = m.lean();
    assert!(!lean.has_chunk_table());
    assert!(
        lean.json_len() < m.json_len() / 2,
        "{} vs {}",
        lean.json_len(),
        m.json_len()
    );
    lean.validate().unwrap_or_else(|e| panic!("{e}"));
    let key = key(1).verifying_key();
    lean.verify_signature(&key)
        .unwrap_or_else(|e| panic!("{e}"));
    let err = Artefact::from_bytes(&mfw(&lean.to_json(), artefact.payload())).expect_err("lean");
    assert!(matches!(err, ParseError::NoChunkTable), "{err}");

    // Pages verify, and each chunk verifies against the hash its page lists.
    for page in 0..m.page_count() {
        let bytes = m.page_bytes(page).unwrap_or_default();
        assert!(lean.verify_page(page, &bytes), "page {page}");
        let mut flipped = bytes.clone();
        flipped[0] ^= 1;
        assert!(!lean.verify_page(page, &flipped), "page {page}");
        let range = m.page_chunks(page).unwrap_or(0..0);
        for (i, hash) in range.zip(bytes.chunks(16)) {
            let hash = meshfleet_firmware::ChunkHash(hash.try_into().unwrap_or([0; 16]));
            let chunk = artefact.chunk(i).unwrap_or_default();
            assert!(lean.verify_chunk_against(i, chunk, &hash), "chunk {i}");
            assert!(
                !lean.verify_chunk(i, chunk),
                "lean manifests verify no chunk alone"
            );
        }
    }
    assert_eq!(m.page_bytes(m.page_count()), None);
}

#[test]
fn pack_refuses_bad_options() {
    let image = ath9k();
    let mut opts = PackOptions::new("sensor", "ESP8266", version("1.0.0"));
    opts.level = 11;
    assert!(matches!(
        pack(&image, opts),
        Err(PackError::Level { level: 11 })
    ));

    let mut opts = PackOptions::new("sensor", "ESP8266", version("1.0.0"));
    opts.chunk_size = 16;
    let err = pack(&image, opts).expect_err("chunk size");
    assert!(
        err.to_string().contains("chunk_size 16 is out of range"),
        "{err}"
    );

    let opts = PackOptions::new("sen\"sor", "ESP8266", version("1.0.0"));
    let err = pack(&image, opts).expect_err("role");
    assert!(err.to_string().starts_with("role must be"), "{err}");

    let opts = PackOptions::new("sensor", "ESP8266", version("1.0.0"));
    assert!(matches!(
        pack(&[], opts),
        Err(PackError::Manifest(ManifestError::EmptyImage))
    ));

    for window in [0, 256, 1000, 65536] {
        let mut opts = PackOptions::new("sensor", "ESP8266", version("1.0.0"));
        opts.window = window;
        assert!(
            matches!(
                pack(&image, opts),
                Err(PackError::Manifest(ManifestError::Window(
                    WindowError::Deflate { .. }
                )))
            ),
            "window {window}"
        );
    }
}

#[test]
fn every_window_packs_verifies_and_is_signed() {
    let image = ath9k();
    let k = key(1);
    let mut previous = None;
    for bits in 9..=15 {
        let window = 1u32 << bits;
        let mut opts = PackOptions::new("sensor", "ESP8266", version("1.0.0"));
        opts.window = window;
        opts.signing_key = Some(&k);
        let a = parse(
            &pack(&image, opts)
                .unwrap_or_else(|e| panic!("{e}"))
                .to_bytes(),
        );
        let m = a.manifest();
        assert_eq!(m.window, window);
        assert_eq!(
            m.decoder_footprint(),
            decoder_footprint(Codec::Deflate, window)
        );
        // The window is in the signed bytes, right after the codec.
        let signed = String::from_utf8(m.signed_bytes()).unwrap_or_default();
        let key_order = format!("\"codec\":\"deflate\",\"window\":{window},");
        assert!(signed.contains(&key_order), "{signed}");
        let verified = a
            .verify(Some(&k.verifying_key()))
            .unwrap_or_else(|e| panic!("window {window}: {e}"));
        assert_eq!(verified.image(), &image[..]);
        // Claiming another window breaks the signature.
        let (mut forged, payload) = a.clone().into_parts();
        forged.window = if window == 512 { 1024 } else { window / 2 };
        let forged = Artefact::from_parts(forged, payload).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            forged.verify(Some(&k.verifying_key())),
            Err(VerifyError::Signature(SignatureError::Mismatch { .. }))
        ));
        // A larger window compresses better (allowing a few bytes of block-split noise).
        let size = m.compressed_size;
        if let Some(prev) = previous {
            assert!(size <= prev + 64, "window {window}: {size} after {prev}");
        }
        previous = Some(size);
    }
}

#[test]
fn verification_decodes_with_the_manifest_window() {
    // An image whose only long matches are 20,000 bytes apart, packed with a 32 KiB window:
    // its stream uses them. An (unsigned) manifest that understates the window makes the
    // verifier's decoder too small for the stream, and verification fails in decoding
    // instead of producing a wrong image.
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    let noise: Vec<u8> = (0..20_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let image = [&noise[..], &noise[..]].concat();
    let opts = PackOptions::new("sensor", "ESP8266", version("1.0.0"));
    let artefact = pack(&image, opts).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        artefact.payload().len() < 21_000,
        "the stream uses the repeat"
    );
    assert!(artefact.verify(None).is_ok());

    for window in [16384, 8192, 512] {
        let (mut m, payload) = artefact.clone().into_parts();
        m.window = window;
        let small = Artefact::from_parts(m, payload).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            matches!(
                small.verify(None),
                Err(VerifyError::Decode(DecodeError::Corrupt { .. }))
            ),
            "window {window}"
        );
        let mut v = StreamVerifier::new(small.manifest()).unwrap_or_else(|e| panic!("{e}"));
        let pushed: Result<(), VerifyError> = (0..small.chunk_count())
            .try_for_each(|i| v.push_chunk(i, small.chunk(i).unwrap_or_default(), |_| {}));
        assert!(
            matches!(
                pushed,
                Err(VerifyError::Decode(DecodeError::Corrupt { .. }))
            ),
            "window {window}: {pushed:?}"
        );
    }

    // Packed with a 16 KiB window, the same image needs only that (and is bigger).
    let mut opts = PackOptions::new("sensor", "ESP8266", version("1.0.0"));
    opts.window = 16384;
    let narrow = pack(&image, opts).unwrap_or_else(|e| panic!("{e}"));
    assert!(narrow.payload().len() > 39_000);
    let mut v = StreamVerifier::new(narrow.manifest()).unwrap_or_else(|e| panic!("{e}"));
    let mut out = Vec::new();
    for i in 0..narrow.chunk_count() {
        v.push_chunk(i, narrow.chunk(i).unwrap_or_default(), |b| {
            out.extend_from_slice(b);
        })
        .unwrap_or_else(|e| panic!("{e}"));
    }
    v.finish().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out, image);
}

#[test]
fn stream_decoder_one_chunk_at_a_time() {
    let image = ath9k();
    let artefact = parse(&signed_file(&image));
    assert_eq!(artefact.manifest().window, DEFAULT_WINDOW);
    let mut decoder = StreamDecoder::new(
        Codec::Deflate,
        artefact.manifest().window,
        image.len() as u64,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut out = Vec::new();
    for i in 0..artefact.chunk_count() {
        let chunk = artefact.chunk(i).unwrap_or_else(|| panic!("chunk {i}"));
        decoder
            .push(chunk, |bytes| out.extend_from_slice(bytes))
            .unwrap_or_else(|e| panic!("chunk {i}: {e}"));
    }
    assert_eq!(decoder.finish(), Ok(image.len() as u64));
    assert_eq!(out, image);
}

#[test]
fn stream_verifier_rejects_a_bad_chunk_and_accepts_the_retry() {
    let image = ath9k();
    let k = key(1);
    let artefact = parse(&signed_file(&image));
    // A receiver has the manifest (from the announcement) before any chunk.
    let manifest: Manifest = artefact.manifest().clone();
    assert!(manifest.verify_signature(&k.verifying_key()).is_ok());
    let mut receiver = StreamVerifier::new(manifest).unwrap_or_else(|e| panic!("{e}"));
    let mut flash = Vec::new();
    for i in 0..artefact.chunk_count() {
        let chunk = artefact.chunk(i).unwrap_or_default();
        if i == 3 {
            let mut corrupt = chunk.to_vec();
            corrupt[0] ^= 0x80;
            assert_eq!(
                receiver.push_chunk(i, &corrupt, |b| flash.extend_from_slice(b)),
                Err(VerifyError::ChunkHash { index: 3 })
            );
            assert_eq!(
                receiver.push_chunk(i, &chunk[1..], |b| flash.extend_from_slice(b)),
                Err(VerifyError::ChunkLength {
                    index: 3,
                    expected: chunk.len(),
                    found: chunk.len() - 1
                })
            );
            assert_eq!(
                receiver.push_chunk(i + 1, chunk, |b| flash.extend_from_slice(b)),
                Err(VerifyError::OutOfOrder {
                    expected: 3,
                    found: 4
                })
            );
        }
        receiver
            .push_chunk(i, chunk, |b| flash.extend_from_slice(b))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    assert!(receiver.is_complete());
    let count = artefact.chunk_count();
    assert_eq!(
        receiver.push_chunk(count, b"", |_| {}),
        Err(VerifyError::NoSuchChunk {
            index: count,
            chunk_count: count
        })
    );
    receiver.finish().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(flash, image);
}

#[test]
fn stream_verifier_reports_missing_chunks() {
    let artefact = parse(&signed_file(&ath9k()));
    let mut receiver = StreamVerifier::new(artefact.manifest()).unwrap_or_else(|e| panic!("{e}"));
    for i in 0..2 {
        receiver
            .push_chunk(i, artefact.chunk(i).unwrap_or_default(), |_| {})
            .unwrap_or_else(|e| panic!("{e}"));
    }
    assert_eq!(
        receiver.finish(),
        Err(VerifyError::MissingChunks {
            received: 2,
            chunk_count: artefact.chunk_count()
        })
    );
}

#[test]
fn signer_inconsistencies_are_caught_after_decoding() {
    // A manifest whose chunk hashes and payload hash are right but whose image facts are
    // wrong (a buggy or malicious packer) still fails verification.
    let image = ath9k();
    let artefact = parse(&signed_file(&image));

    let (mut m, payload) = artefact.clone().into_parts();
    m.sha256.0[0] ^= 1;
    let a = Artefact::from_parts(m, payload).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(a.verify(None), Err(VerifyError::Sha256 { .. })));

    let (mut m, payload) = artefact.clone().into_parts();
    m.md5.0[0] ^= 1;
    let a = Artefact::from_parts(m, payload).unwrap_or_else(|e| panic!("{e}"));
    let err = a.verify(None).expect_err("md5");
    assert!(err.to_string().starts_with("md5 mismatch"), "{err}");

    let (mut m, payload) = artefact.clone().into_parts();
    m.size -= 1;
    let a = Artefact::from_parts(m, payload).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        a.verify(None).map(|_| ()),
        Err(VerifyError::Decode(DecodeError::TooLong {
            limit: image.len() as u64 - 1
        }))
    );

    let (mut m, payload) = artefact.into_parts();
    m.payload_sha256.0[0] ^= 1;
    let a = Artefact::from_parts(m, payload).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        a.verify(None),
        Err(VerifyError::PayloadSha256 { .. })
    ));
}
