//! Lowercase hex, the only text encoding of binary values in this crate.
//!
//! Decoding accepts lowercase only: every digest, key and signature has exactly one textual
//! form, so the canonical (signed) manifest bytes never depend on how a file spelled a value.

#[allow(unused_imports)]
use crate::prelude::*;

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Appends the lowercase hex form of `bytes` to `out`.
pub(crate) fn encode_into(bytes: &[u8], out: &mut String) {
    out.reserve(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
}

/// The lowercase hex form of `bytes`.
pub(crate) fn encode(bytes: &[u8]) -> String {
    let mut s = String::new();
    encode_into(bytes, &mut s);
    s
}

/// Why a hex string was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HexError {
    /// Not exactly `2 * N` characters.
    Length { expected: usize, found: usize },
    /// A character outside `0-9a-f` at this byte offset.
    Digit { offset: usize },
}

impl core::fmt::Display for HexError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Length { expected, found } => {
                write!(
                    f,
                    "expected {expected} hex digits, found {found} characters"
                )
            }
            Self::Digit { offset } => write!(
                f,
                "character {} is not a lowercase hex digit (0-9, a-f)",
                offset + 1
            ),
        }
    }
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Decodes exactly `N` bytes from `2 * N` lowercase hex digits.
pub(crate) fn decode_array<const N: usize>(s: &str) -> Result<[u8; N], HexError> {
    let text = s.as_bytes();
    if text.len() != 2 * N {
        return Err(HexError::Length {
            expected: 2 * N,
            found: s.chars().count(),
        });
    }
    let mut out = [0u8; N];
    for (i, (byte, pair)) in out.iter_mut().zip(text.chunks_exact(2)).enumerate() {
        let hi = nibble(pair[0]).ok_or(HexError::Digit { offset: 2 * i })?;
        let lo = nibble(pair[1]).ok_or(HexError::Digit { offset: 2 * i + 1 })?;
        *byte = (hi << 4) | lo;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let bytes = [0x00, 0x01, 0xab, 0xff];
        assert_eq!(encode(&bytes), "0001abff");
        assert_eq!(decode_array::<4>("0001abff"), Ok(bytes));
    }

    #[test]
    fn refuses_uppercase_and_bad_length() {
        assert_eq!(
            decode_array::<2>("00AB"),
            Err(HexError::Digit { offset: 2 })
        );
        assert_eq!(
            decode_array::<2>("000"),
            Err(HexError::Length {
                expected: 4,
                found: 3
            })
        );
        // Multi-byte UTF-8 must not panic on the pair split.
        assert!(decode_array::<2>("é00").is_err());
    }
}
