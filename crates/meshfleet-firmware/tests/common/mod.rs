//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;

use meshfleet_firmware::{keys, Sha256Digest, SigningKey};
use rand_core::SeedableRng as _;

/// `shared/firmware`, beside the project checkout.
pub fn corpus_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/firmware"
    ))
}

/// Every firmware image of the shared corpus, name and bytes, checked against `SHA256SUMS`.
pub fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir();
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap_or_else(|e| {
        panic!(
            "firmware corpus not found: {}/SHA256SUMS: {e}. The shared folder must sit beside \
             the project checkout (../shared/firmware from the workspace root, with the .bin/.fw \
             images and SHA256SUMS).",
            dir.display()
        )
    });
    let mut files = Vec::new();
    for line in sums.lines().filter(|l| !l.trim().is_empty()) {
        let (sum, name) = line
            .split_once(char::is_whitespace)
            .unwrap_or_else(|| panic!("bad SHA256SUMS line {line:?}"));
        let name = name.trim().trim_start_matches('*').to_owned();
        let bytes = std::fs::read(dir.join(&name))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.join(&name).display()));
        assert_eq!(
            Sha256Digest::of(&bytes).to_hex(),
            sum,
            "{name} does not match SHA256SUMS"
        );
        files.push((name, bytes));
    }
    assert!(
        files.len() >= 5,
        "expected the 5 corpus images, found {}",
        files.len()
    );
    files
}

/// A deterministic signing key.
pub fn key(seed: u64) -> SigningKey {
    keys::keygen(&mut rand_chacha::ChaCha20Rng::seed_from_u64(seed))
}

/// An `.mfw` file from raw parts, for files a correct packer would never write.
pub fn mfw(manifest_json: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = b"MFW1".to_vec();
    out.extend_from_slice(
        &u32::try_from(manifest_json.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    out.extend_from_slice(manifest_json);
    out.extend_from_slice(payload);
    out
}

/// Replaces the first occurrence of `from` in `haystack` (which must contain it).
pub fn replace_once(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let at = haystack
        .windows(from.len())
        .position(|w| w == from)
        .unwrap_or_else(|| panic!("{:?} not found", String::from_utf8_lossy(from)));
    let mut out = haystack[..at].to_vec();
    out.extend_from_slice(to);
    out.extend_from_slice(&haystack[at + from.len()..]);
    out
}
