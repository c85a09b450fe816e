//! Payload codecs and the bounded-memory streaming decoder a receiver runs.
//!
//! # Stream format: raw DEFLATE (RFC 1951), no zlib or gzip wrapper
//!
//! The zlib wrapper (RFC 1950) would add a 2-byte header and an Adler-32 trailer. Integrity is
//! already covered three times over (per-chunk hashes, the payload SHA-256, the image SHA-256 and
//! MD5, all signed), so Adler-32 would only cost CPU on an 80 MHz ESP8266 and give nothing.
//! The stream is what `miniz_oxide::deflate::compress_to_vec` and zlib's `deflate` with
//! `windowBits = -15` produce; Python reads it with `zlib.decompress(data, -15)`, C with
//! miniz's `tinfl_decompress` without `TINFL_FLAG_PARSE_ZLIB_HEADER`.
//!
//! # Memory on the receiver
//!
//! DEFLATE back-references reach at most 32 KiB back, and miniz_oxide's compressor uses the full
//! range, so a decoder needs a 32 KiB window of the most recent output. [`StreamDecoder`]
//! keeps exactly that, as a power-of-two *wrapping* buffer that `miniz_oxide`'s core inflater
//! writes into (its documented mode when `TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF` is not set),
//! plus the inflater state (Huffman tables, bit buffer). Input is never buffered: the inflater
//! consumes every byte it is given and keeps partial bit state itself, so a chunk can be dropped
//! as soon as [`StreamDecoder::push`] returns. Output is handed to a sink in slices of the window
//! as soon as it is produced. [`STREAM_DECODER_FOOTPRINT`] is the total.

use core::fmt;
use core::mem::size_of;

use miniz_oxide::inflate::core::{
    decompress, inflate_flags::TINFL_FLAG_HAS_MORE_INPUT, DecompressorOxide,
};
use miniz_oxide::inflate::TINFLStatus;

/// How the payload of an artefact is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// The payload is the raw image.
    None,
    /// The payload is the image as a raw DEFLATE stream (RFC 1951, 32 KiB window).
    Deflate,
}

impl Codec {
    /// Every codec this build understands, with its manifest name.
    pub const ALL: [(Self, &'static str); 2] = [(Self::None, "none"), (Self::Deflate, "deflate")];

    /// The name used in manifests.
    pub const fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Deflate => "deflate",
        }
    }

    /// The codec called `name` in a manifest, if this build knows it.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(codec, _)| *codec)
    }

    /// Heap and inline bytes a [`StreamDecoder`] for this codec holds.
    pub const fn decoder_footprint(self) -> usize {
        match self {
            Self::None => size_of::<StreamDecoder>(),
            Self::Deflate => STREAM_DECODER_FOOTPRINT,
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The DEFLATE window: the farthest back-reference the format allows (RFC 1951 §2.2), and the
/// size of the decoder's wrapping output buffer. Must be a power of two for the inflater's
/// wrapping mode.
pub const DEFLATE_WINDOW_SIZE: usize = 32 * 1024;

/// Bytes of `miniz_oxide`'s inflater state (Huffman tables and bit buffer) on this target.
///
/// 10,504 bytes (10.3 KiB) on 64-bit hosts with miniz_oxide 0.8; on 32-bit targets (Xtensa) a
/// few bytes less, as the bit buffer is a `u32`. Almost all of it is the three Huffman tables
/// (3 × 3,200 bytes). A C receiver using miniz's `tinfl_decompressor` needs about the same.
pub const INFLATER_STATE_SIZE: usize = size_of::<DecompressorOxide>();

/// Total memory of a DEFLATE [`StreamDecoder`] on this target: the decoder value itself, the
/// boxed inflater state and the 32 KiB window; 43,336 bytes on 64-bit hosts (64 + 10,504 +
/// 32,768), plus the allocator's overhead for two blocks. Nothing else is allocated while
/// decoding, whatever the input; the sink gets slices borrowed from the window.
pub const STREAM_DECODER_FOOTPRINT: usize =
    size_of::<StreamDecoder>() + INFLATER_STATE_SIZE + DEFLATE_WINDOW_SIZE;

/// Highest compression level (`miniz_oxide`'s "uber" level 10).
pub const MAX_LEVEL: u8 = 10;

/// Compresses `image` into a raw DEFLATE stream at `level` (0 = stored, 1 = fastest,
/// 9 = best zlib-compatible, 10 = slowest and smallest). Levels above [`MAX_LEVEL`] are clamped
/// by `miniz_oxide`; [`crate::pack`] rejects them first.
pub fn deflate(image: &[u8], level: u8) -> Vec<u8> {
    miniz_oxide::deflate::compress_to_vec(image, level)
}

/// Why a payload stream could not be decoded.
///
/// After any error the decoder is spent: further calls return [`DecodeError::Spent`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The DEFLATE stream is invalid at this input offset.
    #[error("compressed stream is corrupt near payload byte {offset} (after {produced} image bytes were decoded)")]
    Corrupt {
        /// Offset in the compressed stream of the input that could not be decoded.
        offset: u64,
        /// Image bytes decoded before the error.
        produced: u64,
    },
    /// The stream decodes to more bytes than the manifest declares.
    #[error("decompressed image is larger than the {limit} bytes the manifest declares")]
    TooLong {
        /// The declared image size.
        limit: u64,
    },
    /// The stream ended (or the input ran out) before the declared image size was reached.
    #[error("decompressed image is {produced} bytes, the manifest declares {expected}")]
    TooShort {
        /// The declared image size.
        expected: u64,
        /// Image bytes actually decoded.
        produced: u64,
    },
    /// The input ran out in the middle of the DEFLATE stream (no final block).
    #[error("compressed stream is incomplete: it stops before its final block ({produced} image bytes decoded)")]
    Incomplete {
        /// Image bytes decoded.
        produced: u64,
    },
    /// Bytes follow the end of the DEFLATE stream.
    #[error("{bytes} unexpected bytes after the end of the compressed stream")]
    TrailingData {
        /// How many bytes follow the final block in the input seen so far.
        bytes: u64,
    },
    /// The decoder already failed; start a new one.
    #[error("decoder already failed on earlier input; start a new one")]
    Spent,
}

/// Decodes a payload pushed in order, in pieces of any size, with bounded memory.
///
/// ```
/// use meshfleet_firmware::{codec, Codec, StreamDecoder};
///
/// let image = b"firmware firmware firmware firmware".repeat(100);
/// let payload = codec::deflate(&image, 9);
/// let mut decoder = StreamDecoder::new(Codec::Deflate, image.len() as u64);
/// let mut out = Vec::new();
/// for chunk in payload.chunks(7) {
///     decoder.push(chunk, |bytes| out.extend_from_slice(bytes))?;
/// }
/// decoder.finish()?;
/// assert_eq!(out, image);
/// # Ok::<(), meshfleet_firmware::DecodeError>(())
/// ```
///
/// The declared image size is enforced while decoding: the sink never receives more than
/// `expected_len` bytes in total, so a hostile stream cannot make a receiver write past the
/// partition it prepared. [`StreamDecoder::finish`] then checks that the stream is complete.
pub struct StreamDecoder {
    inner: Inner,
    expected_len: u64,
    produced: u64,
    consumed: u64,
    state: State,
}

enum Inner {
    Passthrough,
    // Boxed so that the decoder itself stays small and cheap to move; the two allocations are
    // made once, up front, and never grow.
    Inflate {
        core: Box<DecompressorOxide>,
        window: Box<[u8]>,
        /// Where the next output byte goes in `window`.
        pos: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Running,
    /// The DEFLATE final block has been decoded.
    Ended,
    Failed,
}

impl fmt::Debug for StreamDecoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamDecoder")
            .field("codec", &self.codec())
            .field("expected_len", &self.expected_len)
            .field("produced", &self.produced)
            .field("consumed", &self.consumed)
            .field("state", &self.state)
            .finish()
    }
}

impl StreamDecoder {
    /// A decoder for `codec` that expects exactly `expected_len` image bytes.
    pub fn new(codec: Codec, expected_len: u64) -> Self {
        let inner = match codec {
            Codec::None => Inner::Passthrough,
            Codec::Deflate => Inner::Inflate {
                core: Box::default(),
                window: vec![0u8; DEFLATE_WINDOW_SIZE].into_boxed_slice(),
                pos: 0,
            },
        };
        Self {
            inner,
            expected_len,
            produced: 0,
            consumed: 0,
            state: State::Running,
        }
    }

    /// The codec being decoded.
    pub fn codec(&self) -> Codec {
        match self.inner {
            Inner::Passthrough => Codec::None,
            Inner::Inflate { .. } => Codec::Deflate,
        }
    }

    /// Image bytes handed to sinks so far.
    pub fn produced(&self) -> u64 {
        self.produced
    }

    /// Payload bytes pushed so far.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Decodes the next piece of payload, calling `sink` with image bytes in order (zero or more
    /// times). All of `input` is consumed; nothing is retained but the codec's window.
    pub fn push(&mut self, input: &[u8], mut sink: impl FnMut(&[u8])) -> Result<(), DecodeError> {
        let result = self.push_inner(input, &mut sink);
        if result.is_err() {
            self.state = State::Failed;
        }
        result
    }

    fn push_inner(&mut self, input: &[u8], sink: &mut dyn FnMut(&[u8])) -> Result<(), DecodeError> {
        match self.state {
            State::Running => {}
            State::Failed => return Err(DecodeError::Spent),
            State::Ended if input.is_empty() => return Ok(()),
            State::Ended => {
                return Err(DecodeError::TrailingData {
                    bytes: input.len() as u64,
                })
            }
        }
        let limit = self.expected_len;
        let produced = &mut self.produced;
        match &mut self.inner {
            Inner::Passthrough => {
                emit(produced, limit, sink, input)?;
                self.consumed += input.len() as u64;
                Ok(())
            }
            Inner::Inflate { core, window, pos } => {
                let mut rest = input;
                loop {
                    // HAS_MORE_INPUT: running out of input is "need more", not an error; the
                    // end of the stream is decided by the final block, checked in `finish`.
                    let (status, used, written) =
                        decompress(core, rest, window, *pos, TINFL_FLAG_HAS_MORE_INPUT);
                    rest = rest.get(used..).unwrap_or_default();
                    self.consumed += used as u64;
                    if written > 0 {
                        // The inflater writes contiguously from `pos` and never past the end of
                        // the window; `get` keeps a violated assumption from being a panic.
                        let out = window
                            .get(*pos..*pos + written)
                            .ok_or(DecodeError::Corrupt {
                                offset: self.consumed,
                                produced: *produced,
                            })?;
                        emit(produced, limit, sink, out)?;
                        *pos = (*pos + written) & (DEFLATE_WINDOW_SIZE - 1);
                    }
                    match status {
                        // The inflater has used up all of `input`; its bit state carries over.
                        TINFLStatus::NeedsMoreInput if rest.is_empty() => return Ok(()),
                        // HasMoreOutput: the window is full; what it held was emitted above and
                        // it now wraps. (NeedsMoreInput with input left is not expected.)
                        TINFLStatus::HasMoreOutput | TINFLStatus::NeedsMoreInput => {
                            // Neither comes without progress, but a loop over untrusted input
                            // must end even if that assumption about the inflater breaks.
                            if used == 0 && written == 0 {
                                return Err(DecodeError::Corrupt {
                                    offset: self.consumed,
                                    produced: *produced,
                                });
                            }
                        }
                        TINFLStatus::Done => {
                            self.state = State::Ended;
                            return if rest.is_empty() {
                                Ok(())
                            } else {
                                Err(DecodeError::TrailingData {
                                    bytes: rest.len() as u64,
                                })
                            };
                        }
                        _ => {
                            return Err(DecodeError::Corrupt {
                                offset: self.consumed,
                                produced: *produced,
                            })
                        }
                    }
                }
            }
        }
    }

    /// Declares the end of the payload: checks that the stream is complete and decoded to
    /// exactly the expected size. Returns the image length.
    pub fn finish(self) -> Result<u64, DecodeError> {
        match (self.state, &self.inner) {
            (State::Failed, _) => Err(DecodeError::Spent),
            (State::Running, Inner::Inflate { .. }) => Err(DecodeError::Incomplete {
                produced: self.produced,
            }),
            _ if self.produced != self.expected_len => Err(DecodeError::TooShort {
                expected: self.expected_len,
                produced: self.produced,
            }),
            _ => Ok(self.produced),
        }
    }
}

/// Hands `bytes` to `sink`, enforcing the declared size before a byte reaches it.
fn emit(
    produced: &mut u64,
    limit: u64,
    sink: &mut dyn FnMut(&[u8]),
    bytes: &[u8],
) -> Result<(), DecodeError> {
    let total = *produced + bytes.len() as u64;
    if total > limit {
        return Err(DecodeError::TooLong { limit });
    }
    *produced = total;
    sink(bytes);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(
        codec: Codec,
        payload: &[u8],
        expected: u64,
        piece: usize,
    ) -> Result<Vec<u8>, DecodeError> {
        let mut d = StreamDecoder::new(codec, expected);
        let mut out = Vec::new();
        for chunk in payload.chunks(piece.max(1)) {
            d.push(chunk, |b| out.extend_from_slice(b))?;
        }
        d.finish()?;
        Ok(out)
    }

    fn sample() -> Vec<u8> {
        // Long-distance repeats (> window) and short ones, so the window wraps many times.
        let mut v = Vec::new();
        for i in 0..200_000u32 {
            v.extend_from_slice(&(i % 7919).to_le_bytes()[..((i % 3) + 1) as usize]);
        }
        v
    }

    #[test]
    fn footprint_is_window_plus_state() {
        // Keep the documented figures honest: the inflater state is about 10.3 KiB and the
        // decoder value itself is small (the big parts are boxed).
        const { assert!(INFLATER_STATE_SIZE > 10 * 1024 && INFLATER_STATE_SIZE < 11 * 1024) };
        const { assert!(size_of::<StreamDecoder>() <= 64) };
        assert_eq!(
            STREAM_DECODER_FOOTPRINT,
            size_of::<StreamDecoder>() + INFLATER_STATE_SIZE + DEFLATE_WINDOW_SIZE
        );
    }

    #[test]
    fn deflate_round_trip_any_piece_size() {
        let image = sample();
        let payload = deflate(&image, 6);
        for piece in [1, 2, 3, 1000, 1024, 4096, payload.len()] {
            assert_eq!(
                decode_all(Codec::Deflate, &payload, image.len() as u64, piece).as_deref(),
                Ok(&image[..]),
                "piece {piece}"
            );
        }
    }

    #[test]
    fn passthrough() {
        let image = sample();
        assert_eq!(
            decode_all(Codec::None, &image, image.len() as u64, 1000).as_deref(),
            Ok(&image[..])
        );
        assert_eq!(
            decode_all(Codec::None, &image, image.len() as u64 - 1, 1000),
            Err(DecodeError::TooLong {
                limit: image.len() as u64 - 1
            })
        );
        assert!(matches!(
            decode_all(Codec::None, &image, image.len() as u64 + 1, 1000),
            Err(DecodeError::TooShort { .. })
        ));
    }

    #[test]
    fn size_limit_is_enforced_before_the_sink() {
        let image = vec![0u8; 100_000];
        let payload = deflate(&image, 9);
        let mut d = StreamDecoder::new(Codec::Deflate, 50_000);
        let mut seen = 0usize;
        let err = d.push(&payload, |b| seen += b.len());
        assert_eq!(err, Err(DecodeError::TooLong { limit: 50_000 }));
        assert!(seen <= 50_000);
        assert_eq!(d.push(&[], |_| {}), Err(DecodeError::Spent));
    }

    #[test]
    fn truncated_and_trailing() {
        let image = sample();
        let payload = deflate(&image, 6);
        let n = image.len() as u64;
        assert!(matches!(
            decode_all(Codec::Deflate, &payload[..payload.len() - 1], n, 512),
            Err(DecodeError::Incomplete { .. })
        ));
        let mut long = payload.clone();
        long.extend_from_slice(b"xy");
        assert_eq!(
            decode_all(Codec::Deflate, &long, n, long.len()),
            Err(DecodeError::TrailingData { bytes: 2 })
        );
        // Trailing bytes arriving in a later push are caught too.
        assert_eq!(
            decode_all(Codec::Deflate, &long, n, payload.len()),
            Err(DecodeError::TrailingData { bytes: 2 })
        );
    }

    #[test]
    fn corrupt_stream() {
        // Block type 3 is reserved (RFC 1951 §3.2.3).
        assert!(matches!(
            decode_all(Codec::Deflate, &[0x07, 0, 0, 0], 10, 4),
            Err(DecodeError::Corrupt { .. })
        ));
    }

    #[test]
    fn codec_names() {
        for (codec, name) in Codec::ALL {
            assert_eq!(Codec::from_name(name), Some(codec));
            assert_eq!(codec.to_string(), name);
        }
        assert_eq!(Codec::from_name("lz4"), None);
    }
}
