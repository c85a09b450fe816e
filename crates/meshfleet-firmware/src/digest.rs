//! Fixed-size binary values that appear in manifests as lowercase hex strings.

#[allow(unused_imports)]
use crate::prelude::*;

use core::fmt;
use core::str::FromStr;

use ed25519_dalek::VerifyingKey;
use md5::Md5;
use sha2::{Digest as _, Sha256};

use crate::hex::{self, HexError};

/// A hex string in a manifest or key file was not the expected value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what}: {detail}")]
pub struct HexValueError {
    what: &'static str,
    detail: HexDetail,
}

/// Keeps the crate-private [`HexError`] out of the public API while preserving its message.
#[derive(Clone, Debug, PartialEq, Eq)]
struct HexDetail(HexError);

impl fmt::Display for HexDetail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl HexValueError {
    pub(crate) fn new(what: &'static str, err: HexError) -> Self {
        Self {
            what,
            detail: HexDetail(err),
        }
    }
}

macro_rules! hex_value {
    ($(#[$meta:meta])* $name:ident, $len:expr, $what:expr) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            /// Length in bytes.
            pub const LEN: usize = $len;

            /// The raw bytes.
            pub const fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            /// Lowercase hex, as written in manifests.
            pub fn to_hex(&self) -> String {
                hex::encode(&self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.to_hex())
            }
        }

        impl FromStr for $name {
            type Err = HexValueError;

            /// Parses exactly `2 * LEN` lowercase hex digits.
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                hex::decode_array(s)
                    .map(Self)
                    .map_err(|e| HexValueError::new($what, e))
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.to_hex())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(
                deserializer: D,
            ) -> Result<Self, D::Error> {
                struct Visitor;
                impl serde::de::Visitor<'_> for Visitor {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        write!(f, "{} as {} lowercase hex digits", $what, 2 * $len)
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$name, E> {
                        v.parse().map_err(E::custom)
                    }
                }
                deserializer.deserialize_str(Visitor)
            }
        }
    };
}

hex_value!(
    /// MD5 of the raw image: what stock painlessMesh nodes announce and check
    /// (`Update.setMD5`), so it must be the standard `md5sum` form.
    Md5Digest,
    16,
    "md5"
);

hex_value!(
    /// SHA-256 of a byte string (the raw image or the transmitted payload).
    Sha256Digest,
    32,
    "sha256"
);

hex_value!(
    /// Per-chunk integrity value: the first 16 bytes of SHA-256 of one transmitted chunk.
    ///
    /// 128 bits are enough here because the list is authenticated by the manifest signature and
    /// an attacker would need a *second preimage* for a chunk someone else signed; collision
    /// attacks (64-bit work) only help the signer, whose image is still bound by the full
    /// [`Manifest::payload_sha256`](crate::Manifest::payload_sha256) and
    /// [`Manifest::sha256`](crate::Manifest::sha256).
    ChunkHash,
    16,
    "chunk hash"
);

hex_value!(
    /// Identifies a signing key: the first 8 bytes of SHA-256 of the 32-byte Ed25519 public
    /// key. A hint for humans and for picking a key, not a security boundary: signatures are
    /// always checked against the full key.
    KeyId,
    8,
    "key id"
);

hex_value!(
    /// An Ed25519 signature (64 bytes) over [`Manifest::signed_bytes`](crate::Manifest::signed_bytes).
    ManifestSignature,
    64,
    "signature"
);

impl Md5Digest {
    /// MD5 of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self(Md5::digest(data).into())
    }
}

impl Sha256Digest {
    /// SHA-256 of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self(Sha256::digest(data).into())
    }
}

impl ChunkHash {
    /// The truncated SHA-256 of one chunk.
    pub fn of(chunk: &[u8]) -> Self {
        Self::from_sha256(&Sha256::digest(chunk).into())
    }

    fn from_sha256(full: &[u8; 32]) -> Self {
        let mut out = [0u8; 16];
        out.copy_from_slice(&full[..16]);
        Self(out)
    }
}

impl KeyId {
    /// The id of `key`.
    pub fn of(key: &VerifyingKey) -> Self {
        let full: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut out = [0u8; 8];
        out.copy_from_slice(&full[..8]);
        Self(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digests() {
        assert_eq!(
            Md5Digest::of(b"").to_hex(),
            "d41d8cd98f00b204e9800998ecf8427e"
        );
        assert_eq!(
            Sha256Digest::of(b"abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            ChunkHash::of(b"abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223"
        );
    }

    #[test]
    fn serde_is_lowercase_hex() {
        let d = ChunkHash([0xab; 16]);
        let json = serde_json::to_string(&d).unwrap_or_default();
        assert_eq!(json, format!("\"{}\"", "ab".repeat(16)));
        let back: ChunkHash = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, d);
        let err = serde_json::from_str::<ChunkHash>("\"AB\"").expect_err("uppercase, short");
        assert!(err.to_string().contains("invalid chunk hash"), "{err}");
    }
}
