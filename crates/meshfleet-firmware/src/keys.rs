//! Ed25519 signing keys and their files.
//!
//! # File formats
//!
//! Secret key file: two lines, the header [`SECRET_KEY_HEADER`] and the 32-byte Ed25519 seed
//! as 64 lowercase hex digits:
//!
//! ```text
//! meshfleet-ed25519-secret-key-v1
//! 9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60
//! ```
//!
//! Public key file: one line, the 32-byte public key as 64 lowercase hex digits.
//!
//! The header makes a secret key recognisable (to people, `grep` and secret scanners) and lets
//! the reader tell the two files apart, so passing one for the other gets a precise error
//! rather than a wrong key. Line ends may be `\n` or `\r\n`; a final newline is optional.
//! Written secret key files are created with mode 0600 on Unix, and never overwrite a file.

#[allow(unused_imports)]
use crate::prelude::*;

use ed25519_dalek::{SigningKey, VerifyingKey};
use rand_core::CryptoRngCore;

use crate::digest::KeyId;
use crate::hex;

/// First line of a secret key file.
pub const SECRET_KEY_HEADER: &str = "meshfleet-ed25519-secret-key-v1";

/// Largest key file read; both formats are under 100 bytes, so anything bigger is the wrong
/// file and is not read into memory.
#[cfg(feature = "std")]
const MAX_KEY_FILE_LEN: u64 = 4096;

/// Generates a signing key from `rng`. Deterministic for a seeded RNG; pass `OsRng` for real
/// keys.
pub fn keygen(rng: &mut impl CryptoRngCore) -> SigningKey {
    SigningKey::generate(rng)
}

/// The id of `key` (see [`KeyId`]).
pub fn key_id(key: &VerifyingKey) -> KeyId {
    KeyId::of(key)
}

/// Why key text was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// A secret key was expected, but the text has no header line.
    #[error("not a meshfleet secret key: the first line should be {SECRET_KEY_HEADER:?}{}", if *.looks_public { " (this looks like a public key file)" } else { "" })]
    NotSecretKey {
        /// The text is a valid-looking public key.
        looks_public: bool,
    },
    /// A public key was expected, but this is a secret key file.
    #[error("this is a secret key file; give the public key (.pub) file instead")]
    SecretKeyGiven,
    /// The key line is not 64 lowercase hex digits.
    #[error("key line: {0}")]
    Hex(String),
    /// More lines than the format has.
    #[error("unexpected text after the key on line {line}")]
    TrailingText {
        /// 1-based line number.
        line: usize,
    },
    /// The 32 bytes are not a valid Ed25519 public key (not a curve point, or of small order).
    #[error("not a valid Ed25519 public key")]
    InvalidPublicKey,
}

/// Non-empty lines, with `\r` stripped, numbered from 1.
fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .map(|l| l.trim_end_matches('\r'))
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.is_empty())
}

fn key_bytes(line: &str) -> Result<[u8; 32], KeyError> {
    hex::decode_array(line.trim()).map_err(|e| KeyError::Hex(e.to_string()))
}

/// The secret key file text for `key`.
pub fn encode_secret_key(key: &SigningKey) -> String {
    let mut s = String::with_capacity(SECRET_KEY_HEADER.len() + 66);
    s.push_str(SECRET_KEY_HEADER);
    s.push('\n');
    hex::encode_into(key.as_bytes(), &mut s);
    s.push('\n');
    s
}

/// Parses secret key file text.
pub fn decode_secret_key(text: &str) -> Result<SigningKey, KeyError> {
    let mut lines = lines(text);
    match lines.next() {
        Some((_, header)) if header.trim() == SECRET_KEY_HEADER => {}
        Some((_, other)) => {
            return Err(KeyError::NotSecretKey {
                looks_public: key_bytes(other).is_ok(),
            })
        }
        None => {
            return Err(KeyError::NotSecretKey {
                looks_public: false,
            })
        }
    }
    let Some((_, line)) = lines.next() else {
        return Err(KeyError::Hex(
            "missing (the file ends after the header)".into(),
        ));
    };
    let seed = key_bytes(line)?;
    if let Some((line, _)) = lines.next() {
        return Err(KeyError::TrailingText { line });
    }
    Ok(SigningKey::from_bytes(&seed))
}

/// The public key file text for `key`.
pub fn encode_public_key(key: &VerifyingKey) -> String {
    let mut s = hex::encode(key.as_bytes());
    s.push('\n');
    s
}

/// Parses public key file text.
pub fn decode_public_key(text: &str) -> Result<VerifyingKey, KeyError> {
    let mut lines = lines(text);
    let Some((_, line)) = lines.next() else {
        return Err(KeyError::Hex("missing (the file is empty)".into()));
    };
    if line.trim() == SECRET_KEY_HEADER {
        return Err(KeyError::SecretKeyGiven);
    }
    let bytes = key_bytes(line)?;
    if let Some((line, _)) = lines.next() {
        return Err(KeyError::TrailingText { line });
    }
    let key = VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::InvalidPublicKey)?;
    // A small-order key would accept signatures `verify_strict` is designed to refuse anyway;
    // refusing it here reports the problem where the key enters.
    if key.is_weak() {
        return Err(KeyError::InvalidPublicKey);
    }
    Ok(key)
}

#[cfg(feature = "std")]
pub use file::{
    read_public_key, read_secret_key, write_public_key, write_secret_key, KeyFileError,
};

/// Key files (the `std` feature).
#[cfg(feature = "std")]
mod file {
    use std::fs::{File, OpenOptions};
    use std::io::{self, Read as _, Write as _};
    use std::path::{Path, PathBuf};

    use super::*;

    /// Why a key file could not be read or written.
    #[derive(Debug, thiserror::Error)]
    #[non_exhaustive]
    pub enum KeyFileError {
        /// The file could not be opened, read or written.
        #[error("{}: {source}", .path.display())]
        Io {
            /// The file.
            path: PathBuf,
            /// The OS error.
            #[source]
            source: io::Error,
        },
        /// Refused to overwrite an existing file.
        #[error("{} already exists; refusing to overwrite a key file (move or delete it first)", .path.display())]
        Exists {
            /// The file.
            path: PathBuf,
        },
        /// The file is larger than any key file.
        #[error("{} is not a key file (larger than {MAX_KEY_FILE_LEN} bytes)", .path.display())]
        TooLarge {
            /// The file.
            path: PathBuf,
        },
        /// The contents are not a key of the expected kind.
        #[error("{}: {source}", .path.display())]
        Invalid {
            /// The file.
            path: PathBuf,
            /// What is wrong with the contents.
            #[source]
            source: KeyError,
        },
    }

    fn read_text(path: &Path) -> Result<String, KeyFileError> {
        let io_err = |source| KeyFileError::Io {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let mut text = String::new();
        // Read one byte past the limit to detect an oversized file without reading it all.
        file.take(MAX_KEY_FILE_LEN + 1)
            .read_to_string(&mut text)
            .map_err(io_err)?;
        if text.len() as u64 > MAX_KEY_FILE_LEN {
            return Err(KeyFileError::TooLarge {
                path: path.to_owned(),
            });
        }
        Ok(text)
    }

    fn write_new(path: &Path, text: &str, secret: bool) -> Result<(), KeyFileError> {
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        if secret {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        #[cfg(not(unix))]
        let _ = secret;
        let mut file = options.open(path).map_err(|source| {
            if source.kind() == io::ErrorKind::AlreadyExists {
                KeyFileError::Exists {
                    path: path.to_owned(),
                }
            } else {
                KeyFileError::Io {
                    path: path.to_owned(),
                    source,
                }
            }
        })?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|source| KeyFileError::Io {
                path: path.to_owned(),
                source,
            })
    }

    /// Reads a secret key file.
    pub fn read_secret_key(path: &Path) -> Result<SigningKey, KeyFileError> {
        decode_secret_key(&read_text(path)?).map_err(|source| KeyFileError::Invalid {
            path: path.to_owned(),
            source,
        })
    }

    /// Reads a public key file.
    pub fn read_public_key(path: &Path) -> Result<VerifyingKey, KeyFileError> {
        decode_public_key(&read_text(path)?).map_err(|source| KeyFileError::Invalid {
            path: path.to_owned(),
            source,
        })
    }

    /// Writes a new secret key file (mode 0600 on Unix). Fails if `path` exists.
    pub fn write_secret_key(path: &Path, key: &SigningKey) -> Result<(), KeyFileError> {
        write_new(path, &encode_secret_key(key), true)
    }

    /// Writes a new public key file. Fails if `path` exists.
    pub fn write_public_key(path: &Path, key: &VerifyingKey) -> Result<(), KeyFileError> {
        write_new(path, &encode_public_key(key), false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng as _;

    fn key(seed: u64) -> SigningKey {
        keygen(&mut rand_chacha::ChaCha20Rng::seed_from_u64(seed))
    }

    #[test]
    fn keygen_is_deterministic_for_a_seeded_rng() {
        assert_eq!(key(7).to_bytes(), key(7).to_bytes());
        assert_ne!(key(7).to_bytes(), key(8).to_bytes());
    }

    #[test]
    fn rfc8032_test_vector_1() {
        // RFC 8032 §7.1, TEST 1: secret seed and its public key.
        let text = format!(
            "{SECRET_KEY_HEADER}\n9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60\n"
        );
        let sk = decode_secret_key(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            encode_public_key(&sk.verifying_key()),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a\n"
        );
        assert_eq!(encode_secret_key(&sk), text);
    }

    #[test]
    fn text_round_trip_and_crlf() {
        let sk = key(1);
        let text = encode_secret_key(&sk).replace('\n', "\r\n");
        let back = decode_secret_key(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.to_bytes(), sk.to_bytes());
        let pk = sk.verifying_key();
        let back = decode_public_key(&encode_public_key(&pk)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, pk);
        // Without a trailing newline too.
        assert!(decode_public_key(encode_public_key(&pk).trim_end()).is_ok());
    }

    #[test]
    fn mixing_up_the_files_is_diagnosed() {
        let sk = key(2);
        let public = encode_public_key(&sk.verifying_key());
        assert_eq!(
            decode_secret_key(&public).map(|_| ()),
            Err(KeyError::NotSecretKey { looks_public: true })
        );
        assert_eq!(
            decode_public_key(&encode_secret_key(&sk)).map(|_| ()),
            Err(KeyError::SecretKeyGiven)
        );
    }

    #[test]
    fn bad_contents() {
        assert!(matches!(decode_public_key(""), Err(KeyError::Hex(_))));
        assert!(matches!(
            decode_public_key("abcd\n"),
            Err(KeyError::Hex(m)) if m.contains("expected 64 hex digits")
        ));
        let pk = encode_public_key(&key(3).verifying_key());
        assert_eq!(
            decode_public_key(&format!("{pk}junk\n")).map(|_| ()),
            Err(KeyError::TrailingText { line: 2 })
        );
        // The identity point has small order.
        let identity = format!("01{}", "00".repeat(31));
        assert_eq!(
            decode_public_key(&identity).map(|_| ()),
            Err(KeyError::InvalidPublicKey)
        );
        assert!(matches!(
            decode_secret_key(&format!("{SECRET_KEY_HEADER}\n")),
            Err(KeyError::Hex(_))
        ));
    }

    #[test]
    fn files() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dir = tmp.path();
        let sk = key(4);
        let secret = dir.join("fleet.key");
        let public = dir.join("fleet.pub");
        write_secret_key(&secret, &sk).unwrap_or_else(|e| panic!("{e}"));
        write_public_key(&public, &sk.verifying_key()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            read_secret_key(&secret).map(|k| k.to_bytes()).ok(),
            Some(sk.to_bytes())
        );
        assert_eq!(read_public_key(&public).ok(), Some(sk.verifying_key()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&secret).map(|m| m.permissions().mode() & 0o777);
            assert_eq!(mode.ok(), Some(0o600));
        }
        let err = write_secret_key(&secret, &sk).expect_err("must not overwrite");
        assert!(matches!(err, KeyFileError::Exists { .. }), "{err}");
        let err = read_public_key(&secret).expect_err("secret given as public");
        assert!(err.to_string().contains("fleet.key"), "{err}");
        assert!(err.to_string().contains("secret key file"), "{err}");
        let err = read_public_key(&dir.join("missing.pub")).expect_err("missing");
        assert!(matches!(err, KeyFileError::Io { .. }), "{err}");
    }
}
