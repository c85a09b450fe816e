//! `meshfleet firmware`: keygen, pack, inspect and verify, end to end through the binary.
#![allow(clippy::unwrap_used)]

mod common;

use common::{meshfleet, text};

#[test]
fn pack_inspect_verify_and_every_rejection() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let image: Vec<u8> = (0..200_000u32)
        .map(|i| (i % 251) as u8 ^ (i / 1000) as u8)
        .collect();
    std::fs::write(d.join("app.bin"), &image).unwrap();

    let o = meshfleet(d, &["firmware", "keygen", "--out", "fleet.key"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(d.join("fleet.key.pub").exists());
    let o = meshfleet(d, &["firmware", "keygen", "--out", "other.key"]);
    assert!(o.status.success());

    let o = meshfleet(
        d,
        &[
            "firmware",
            "pack",
            "app.bin",
            "--role",
            "sensor",
            "--hardware",
            "ESP32",
            "--version",
            "2.1.0",
            "--sign",
            "fleet.key",
            "--out",
            "app.mfw",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    // Never overwrite an artefact.
    let o = meshfleet(
        d,
        &[
            "firmware",
            "pack",
            "app.bin",
            "--role",
            "sensor",
            "--hardware",
            "ESP32",
            "--version",
            "2.1.0",
            "--out",
            "app.mfw",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));

    let o = meshfleet(d, &["firmware", "inspect", "app.mfw", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(m["role"], "sensor");
    assert_eq!(m["version"], "2.1.0");
    assert_eq!(m["size"], 200_000);
    assert!(m["compressed_size"].as_u64().unwrap() < 200_000);

    let o = meshfleet(
        d,
        &[
            "firmware",
            "verify",
            "app.mfw",
            "--key",
            "fleet.key.pub",
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["signature"], "verified");

    // Wrong key.
    let o = meshfleet(
        d,
        &["firmware", "verify", "app.mfw", "--key", "other.key.pub"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("not by the given key"), "{}", text(&o));

    // Truncated file.
    let bytes = std::fs::read(d.join("app.mfw")).unwrap();
    std::fs::write(d.join("short.mfw"), &bytes[..bytes.len() - 100]).unwrap();
    let o = meshfleet(
        d,
        &["firmware", "verify", "short.mfw", "--key", "fleet.key.pub"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("truncated"), "{}", text(&o));

    // One payload byte flipped: the chunk hash names the chunk.
    let mut bad = bytes.clone();
    let last = bad.len() - 10;
    bad[last] ^= 0x40;
    std::fs::write(d.join("bad.mfw"), &bad).unwrap();
    let o = meshfleet(
        d,
        &["firmware", "verify", "bad.mfw", "--key", "fleet.key.pub"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("chunk"), "{}", text(&o));

    // Manifest edited after signing (version bumped): a forged signature.
    let mut raw = bytes.clone();
    let pos = raw.windows(7).position(|w| w == b"\"2.1.0\"").unwrap();
    raw[pos + 1] = b'9';
    std::fs::write(d.join("forged.mfw"), &raw).unwrap();
    let o = meshfleet(
        d,
        &["firmware", "verify", "forged.mfw", "--key", "fleet.key.pub"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).to_lowercase().contains("signature"),
        "{}",
        text(&o)
    );

    // Usage errors exit 2.
    let o = meshfleet(
        d,
        &[
            "firmware",
            "pack",
            "app.bin",
            "--role",
            "sensor",
            "--hardware",
            "ESP32",
            "--version",
            "not-a-version",
            "--out",
            "x.mfw",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}
