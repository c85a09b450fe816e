//! `meshfleet firmware`: keygen, pack, inspect and verify, end to end through the binary.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Output;

use common::{meshfleet, pack, text};

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

    let o = pack(
        d,
        "app.bin",
        "ESP32",
        "2.1.0",
        Some("fleet.key"),
        "app.mfw",
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    // Never overwrite an artefact.
    let o = pack(d, "app.bin", "ESP32", "2.1.0", None, "app.mfw", &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));

    let o = meshfleet(d, &["firmware", "inspect", "app.mfw", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(m["role"], "sensor");
    assert_eq!(m["version"], "2.1.0");
    assert_eq!(m["size"], 200_000);
    assert!(m["compressed_size"].as_u64().unwrap() < 200_000);
    // The default window: the format's largest.
    assert_eq!(m["codec"], "deflate");
    assert_eq!(m["window"], 32768);

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
    let o = pack(d, "app.bin", "ESP32", "not-a-version", None, "x.mfw", &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

/// `pack ARGS... --out OUT` of `app.bin` for role sensor on ESP8266, unsigned.
fn pack_esp8266(d: &Path, extra: &[&str], out: &str) -> Output {
    pack(d, "app.bin", "ESP8266", "1.0.0", None, out, extra)
}

#[test]
fn pack_with_a_window_for_small_receivers() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Repeats 12,000 bytes apart: within a 16 KiB window, beyond 8 KiB.
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    let block: Vec<u8> = (0..12_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(d.join("app.bin"), block.repeat(8)).unwrap();

    for (arg, window) in [
        ("8K", 8192u32),
        ("16KiB", 16384),
        ("4096", 4096),
        ("512", 512),
    ] {
        let out = format!("w{window}.mfw");
        let o = pack_esp8266(d, &["--window", arg], &out);
        assert!(o.status.success(), "{arg}: {}", text(&o));
        assert!(
            text(&o).contains(&format!("{} KiB window", f64::from(window) / 1024.0)),
            "{}",
            text(&o)
        );
        let o = meshfleet(d, &["firmware", "inspect", &out, "--json"]);
        assert!(o.status.success(), "{}", text(&o));
        let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(m["window"], window, "{arg}");
        // The decompressor's memory: the window plus ~10 KiB of tables.
        let decoder = m["decoder_bytes"].as_u64().unwrap();
        assert!(
            decoder > u64::from(window) + 10_000 && decoder < u64::from(window) + 11_000,
            "{decoder}"
        );
        let o = meshfleet(d, &["firmware", "verify", &out]);
        assert!(o.status.success(), "{}", text(&o));
    }
    // The window limits the compressor: 8 KiB cannot reach the repeats, 16 KiB can.
    let len = |f: &str| std::fs::metadata(d.join(f)).unwrap().len();
    assert!(
        len("w16384.mfw") * 3 < len("w8192.mfw"),
        "{} vs {}",
        len("w16384.mfw"),
        len("w8192.mfw")
    );

    let o = meshfleet(d, &["firmware", "inspect", "w8192.mfw"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("window:      8192 bytes"), "{}", text(&o));

    // Codec none has no window, whatever --window says.
    let o = pack_esp8266(d, &["--codec", "none", "--window", "8K"], "none.mfw");
    assert!(o.status.success(), "{}", text(&o));
    let o = meshfleet(d, &["firmware", "inspect", "none.mfw", "--json"]);
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(m["window"], 0);

    // Not a power of two, out of range, not a size: usage errors, nothing written.
    for bad in ["3000", "64K", "256", "0", "8M", "lots"] {
        let o = pack_esp8266(d, &["--window", bad], "bad.mfw");
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", text(&o));
        assert!(text(&o).contains("--window"), "{bad}: {}", text(&o));
        assert!(!d.join("bad.mfw").exists());
    }
    let o = pack_esp8266(d, &["--window", "3000"], "bad.mfw");
    assert!(
        text(&o).contains("power of two from 512 to 32768"),
        "{}",
        text(&o)
    );
}

/// `firmware intent --rollback`: a signed rollback command to the artefact's image, which
/// verifies under the fleet key; without the flag the same file gives an install intent.
#[test]
fn intent_for_a_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("app.bin"), vec![7u8; 5000]).unwrap();
    let o = meshfleet(d, &["firmware", "keygen", "--out", "fleet.key"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = pack_esp8266(d, &["--sign", "fleet.key"], "old.mfw");
    assert!(o.status.success(), "{}", text(&o));
    for (flag, out, action) in [
        (Some("--rollback"), "rb.intent", "rollback"),
        (None, "in.intent", "install"),
    ] {
        let mut args = vec![
            "firmware",
            "intent",
            "old.mfw",
            "--sign",
            "fleet.key",
            "--node",
            "5",
            "--out",
            out,
        ];
        args.extend(flag);
        let o = meshfleet(d, &args);
        assert!(o.status.success(), "{}", text(&o));
        assert!(text(&o).contains(if action == "rollback" {
            "roll back to"
        } else {
            "install"
        }));
        let raw = std::fs::read(d.join(out)).unwrap();
        let i = meshfleet_firmware::Intent::from_json(&raw).unwrap();
        let want = if action == "rollback" {
            meshfleet_firmware::IntentAction::Rollback
        } else {
            meshfleet_firmware::IntentAction::Install
        };
        assert_eq!(i.action, want);
        assert_eq!(i.nodes, vec![5]);
        assert_eq!(i.version.to_string(), "1.0.0");
        let key = meshfleet_firmware::keys::read_public_key(&d.join("fleet.key.pub")).unwrap();
        i.verify_signature(&key).unwrap();
    }
}
