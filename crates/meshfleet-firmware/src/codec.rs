//! Payload codecs and the bounded-memory streaming decoder a receiver runs.
//!
//! # Stream format: raw DEFLATE (RFC 1951), no zlib or gzip wrapper
//!
//! The zlib wrapper (RFC 1950) would add a 2-byte header and an Adler-32 trailer. Integrity is
//! already covered three times over (per-chunk hashes, the payload SHA-256, the image SHA-256 and
//! MD5, all signed), so Adler-32 would only cost CPU on an 80 MHz ESP8266 and give nothing.
//! The stream is what zlib's `deflate` with `windowBits = -log2(window)` produces; Python reads
//! it with `zlib.decompress(data, -15)`, C with miniz's `tinfl_decompress` without
//! `TINFL_FLAG_PARSE_ZLIB_HEADER`.
//!
//! # The window: what the receiver must hold
//!
//! DEFLATE back-references reach at most 32 KiB back (RFC 1951 §2.2), so a general decoder
//! keeps the last 32 KiB of output. That is too much for an ESP8266 (about 40 KB free, and
//! the inflater's tables need 10.3 KiB more), so an artefact declares the *window* its stream
//! needs (the manifest's `window`: a power of two from [`MIN_WINDOW`] to [`MAX_WINDOW`]), and
//! [`deflate`] never emits a back-reference farther than that: it uses zlib's compressor (the
//! pure-Rust `zlib-rs`, through `flate2`) with `windowBits = log2(window)`; zlib keeps its
//! distances below `window - 262`. `miniz_oxide`'s compressor cannot limit its window.
//!
//! Measured on the firmware corpus (`crates/meshfleet-firmware/RESULTS.md`): the ESP8266
//! images compress to 0.652 of their size with a 32 KiB window, 0.667 with 8 KiB, 0.679 with
//! 4 KiB.
//!
//! # Memory on the receiver
//!
//! [`StreamDecoder`] keeps exactly the declared window, as a power-of-two *wrapping* buffer
//! that `miniz_oxide`'s core inflater writes into (its documented mode when
//! `TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF` is not set: it works with any power-of-two
//! buffer at least as large as the stream's farthest back-reference, and fails on a
//! back-reference farther than the buffer), plus the inflater state (Huffman tables, bit
//! buffer). Input is never buffered: the inflater consumes every byte it is given and keeps
//! partial bit state itself, so a chunk can be dropped as soon as [`StreamDecoder::push`]
//! returns. Output is handed to a sink in slices of the window as soon as it is produced.
//! [`decoder_footprint`] is the total.

#[allow(unused_imports)]
use crate::prelude::*;

use core::fmt;
use core::mem::size_of;

#[cfg(feature = "std")]
use std::io::Write as _;

#[cfg(feature = "std")]
use flate2::write::ZlibEncoder;
#[cfg(feature = "std")]
use flate2::{Compress, Compression};
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
    /// The payload is the image as a raw DEFLATE stream (RFC 1951) whose back-references
    /// stay within the manifest's `window`.
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

    /// Checks that `window` is a valid manifest `window` for this codec: a power of two from
    /// [`MIN_WINDOW`] to [`MAX_WINDOW`] for [`Codec::Deflate`], 0 for [`Codec::None`].
    pub const fn check_window(self, window: u32) -> Result<(), WindowError> {
        match self {
            Self::None if window == 0 => Ok(()),
            Self::None => Err(WindowError::None { window }),
            Self::Deflate
                if window.is_power_of_two() && window >= MIN_WINDOW && window <= MAX_WINDOW =>
            {
                Ok(())
            }
            Self::Deflate => Err(WindowError::Deflate { window }),
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The largest DEFLATE window: the farthest back-reference the format allows (RFC 1951 §2.2).
pub const MAX_WINDOW: u32 = 32 * 1024;

/// The smallest window an artefact may declare. zlib's raw-DEFLATE compressor does not go
/// below `windowBits = 9`: asked for 8 (256 bytes) it silently uses 9.
pub const MIN_WINDOW: u32 = 512;

/// [`MAX_WINDOW`] as a `usize`: the window of a general-purpose DEFLATE decoder.
pub const DEFLATE_WINDOW_SIZE: usize = MAX_WINDOW as usize;

/// Bytes of `miniz_oxide`'s inflater state (Huffman tables and bit buffer) on this target.
///
/// 10,504 bytes (10.3 KiB) on 64-bit hosts with miniz_oxide 0.8; on 32-bit targets (Xtensa) a
/// few bytes less, as the bit buffer is a `u32`. Almost all of it is the three Huffman tables
/// (3 × 3,200 bytes). A C receiver using miniz's `tinfl_decompressor` needs about the same.
/// It does not depend on the window.
pub const INFLATER_STATE_SIZE: usize = size_of::<DecompressorOxide>();

/// Total memory of a [`StreamDecoder`] for `codec` and a manifest `window` on this target.
///
/// For [`Codec::Deflate`]: the decoder value itself, the boxed inflater state and the window,
/// plus the allocator's overhead for two blocks. On 64-bit hosts that is 64 + 10,504 +
/// `window` bytes: 43,336 for a 32 KiB window, 18,760 for 8 KiB, 14,664 for 4 KiB. For
/// [`Codec::None`] only the decoder value (64 bytes; `window` is 0). Nothing else is
/// allocated while decoding, whatever the input; the sink gets slices borrowed from the
/// window.
pub const fn decoder_footprint(codec: Codec, window: u32) -> usize {
    match codec {
        Codec::None => size_of::<StreamDecoder>(),
        Codec::Deflate => size_of::<StreamDecoder>() + INFLATER_STATE_SIZE + window as usize,
    }
}

/// Highest compression level: 0 = stored, 1 = fastest, 9 = zlib's best, 10 = the smaller of
/// zlib level 9 and `miniz_oxide`'s "uber" level 10 (32 KiB window only, see [`deflate`]).
pub const MAX_LEVEL: u8 = 10;

/// Why a `window` is not valid for a codec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WindowError {
    /// A DEFLATE window must be a power of two in range.
    #[error("window {window} is not valid for codec deflate: it must be a power of two from {MIN_WINDOW} to {MAX_WINDOW} bytes")]
    Deflate {
        /// The window given.
        window: u32,
    },
    /// Codec `none` decompresses nothing, so it declares no window.
    #[error("window {window} is not valid for codec none: it must be 0 (nothing is decompressed)")]
    None {
        /// The window given.
        window: u32,
    },
}

/// Why [`deflate`] produced nothing.
#[cfg(feature = "std")]
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeflateError {
    /// The level is above [`MAX_LEVEL`].
    #[error("compression level {level} is out of range 0..={MAX_LEVEL}")]
    Level {
        /// The level asked for.
        level: u8,
    },
    /// The window is not a valid DEFLATE window.
    #[error(transparent)]
    Window(#[from] WindowError),
    /// The compressor failed (a bug in it: the input cannot cause this).
    #[error("the DEFLATE compressor failed: {0}")]
    Compressor(#[source] std::io::Error),
}

/// Compresses `image` into a raw DEFLATE stream at `level` (see [`MAX_LEVEL`]) whose
/// back-references reach at most `window` bytes back, so a [`StreamDecoder`] with that window
/// decodes it.
///
/// Levels 0 to 9 are zlib's (the `zlib-rs` implementation), for every window. Level 10
/// compresses with zlib level 9 and, at the 32 KiB window, also with `miniz_oxide`'s level 10,
/// and keeps the smaller stream. Measured on the corpus at 32 KiB (RESULTS.md): zlib level 9
/// is 0.2-0.3% smaller than `miniz_oxide` level 10 on the three ESP8266 images, 0.2-0.3%
/// larger on the two ath9k images; so the default level, 9, is zlib's, and level 10 takes
/// the better of the two for every image. Deterministic: the same input, level and window
/// always give the same bytes. Needs the `std` feature (the compressor is `flate2`'s).
#[cfg(feature = "std")]
pub fn deflate(image: &[u8], level: u8, window: u32) -> Result<Vec<u8>, DeflateError> {
    if level > MAX_LEVEL {
        return Err(DeflateError::Level { level });
    }
    Codec::Deflate.check_window(window)?;
    // Checked above: a power of two from 2^9 to 2^15.
    let bits = window.trailing_zeros() as u8;
    let zlib = zlib_deflate(image, level.min(9), bits)?;
    if level == MAX_LEVEL && window == MAX_WINDOW {
        let miniz = miniz_oxide::deflate::compress_to_vec(image, MAX_LEVEL);
        if miniz.len() < zlib.len() {
            return Ok(miniz);
        }
    }
    Ok(zlib)
}

#[cfg(feature = "std")]
fn zlib_deflate(image: &[u8], level: u8, window_bits: u8) -> Result<Vec<u8>, DeflateError> {
    // `zlib_header = false`: raw DEFLATE. The encoder type is named for the format it writes
    // by default; the header (and Adler-32) come from the `Compress` it drives, which has
    // none here.
    let compress =
        Compress::new_with_window_bits(Compression::new(u32::from(level)), false, window_bits);
    let out = Vec::with_capacity(image.len() / 2 + 64);
    let mut encoder = ZlibEncoder::new_with_compress(out, compress);
    encoder.write_all(image).map_err(DeflateError::Compressor)?;
    encoder.finish().map_err(DeflateError::Compressor)
}

/// Why a payload stream could not be decoded.
///
/// After any error the decoder is spent: further calls return [`DecodeError::Spent`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The DEFLATE stream is invalid at this input offset, or refers farther back than the
    /// decoder's window (a stream packed with a larger window than the manifest declares).
    #[error("compressed stream is corrupt (or needs a larger window than declared) near payload byte {offset} (after {produced} image bytes were decoded)")]
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
/// // An ESP8266-sized window: the decoder holds 8 KiB of output plus the inflater's tables.
/// let payload = codec::deflate(&image, 9, 8192)?;
/// let mut decoder = StreamDecoder::new(Codec::Deflate, 8192, image.len() as u64)?;
/// let mut out = Vec::new();
/// for chunk in payload.chunks(7) {
///     decoder.push(chunk, |bytes| out.extend_from_slice(bytes))?;
/// }
/// decoder.finish()?;
/// assert_eq!(out, image);
/// # Ok::<(), Box<dyn std::error::Error>>(())
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
            .field("window", &self.window())
            .field("expected_len", &self.expected_len)
            .field("produced", &self.produced)
            .field("consumed", &self.consumed)
            .field("state", &self.state)
            .finish()
    }
}

impl StreamDecoder {
    /// A decoder for `codec` with a `window`-byte window (the manifest's `window`: see
    /// [`Codec::check_window`]) that expects exactly `expected_len` image bytes. Allocates
    /// [`decoder_footprint`]`(codec, window)` bytes, once.
    pub fn new(codec: Codec, window: u32, expected_len: u64) -> Result<Self, WindowError> {
        codec.check_window(window)?;
        let inner = match codec {
            Codec::None => Inner::Passthrough,
            Codec::Deflate => Inner::Inflate {
                core: Box::default(),
                // Exactly the declared window: a power of two (checked above), as the
                // inflater's wrapping mode requires.
                window: vec![0u8; window as usize].into_boxed_slice(),
                pos: 0,
            },
        };
        Ok(Self {
            inner,
            expected_len,
            produced: 0,
            consumed: 0,
            state: State::Running,
        })
    }

    /// The window in bytes (0 for [`Codec::None`]).
    pub fn window(&self) -> u32 {
        match &self.inner {
            Inner::Passthrough => 0,
            // At most MAX_WINDOW: `new` checked it.
            Inner::Inflate { window, .. } => u32::try_from(window.len()).unwrap_or(u32::MAX),
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
                        // The window's length is a power of two.
                        *pos = (*pos + written) & (window.len() - 1);
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

    /// Every valid DEFLATE window, 512 to 32768.
    const WINDOWS: [u32; 7] = [512, 1024, 2048, 4096, 8192, 16384, 32768];

    fn window_for(codec: Codec) -> u32 {
        match codec {
            Codec::None => 0,
            Codec::Deflate => MAX_WINDOW,
        }
    }

    fn decode_all(
        codec: Codec,
        payload: &[u8],
        expected: u64,
        piece: usize,
    ) -> Result<Vec<u8>, DecodeError> {
        decode_with_window(codec, window_for(codec), payload, expected, piece)
    }

    fn decode_with_window(
        codec: Codec,
        window: u32,
        payload: &[u8],
        expected: u64,
        piece: usize,
    ) -> Result<Vec<u8>, DecodeError> {
        let mut d = StreamDecoder::new(codec, window, expected).map_err(|_| DecodeError::Spent)?;
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

    /// A stream whose only long back-references are `distance` bytes back: a block of
    /// noise, repeated once `distance` bytes later.
    fn repeat_at(distance: usize) -> Vec<u8> {
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let noise: Vec<u8> = (0..distance)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        [&noise[..], &noise[..]].concat()
    }

    #[test]
    fn footprint_is_window_plus_state() {
        // Keep the documented figures honest: the inflater state is about 10.3 KiB and the
        // decoder value itself is small (the big parts are boxed).
        const { assert!(INFLATER_STATE_SIZE > 10 * 1024 && INFLATER_STATE_SIZE < 11 * 1024) };
        const { assert!(size_of::<StreamDecoder>() <= 64) };
        for w in WINDOWS {
            assert_eq!(
                decoder_footprint(Codec::Deflate, w),
                size_of::<StreamDecoder>() + INFLATER_STATE_SIZE + w as usize
            );
            // The decoder allocates exactly the declared window, no more.
            let d = StreamDecoder::new(Codec::Deflate, w, 1).map_err(|e| e.to_string());
            assert_eq!(d.map(|d| d.window()), Ok(w));
        }
        assert_eq!(
            decoder_footprint(Codec::None, 0),
            size_of::<StreamDecoder>()
        );
        // The exact figures the docs quote (x86_64, miniz_oxide 0.8).
        #[cfg(target_pointer_width = "64")]
        {
            assert_eq!(INFLATER_STATE_SIZE, 10_504);
            assert_eq!(size_of::<StreamDecoder>(), 64);
            assert_eq!(decoder_footprint(Codec::Deflate, 32 * 1024), 43_336);
            assert_eq!(decoder_footprint(Codec::Deflate, 16 * 1024), 26_952);
            assert_eq!(decoder_footprint(Codec::Deflate, 8 * 1024), 18_760);
            assert_eq!(decoder_footprint(Codec::Deflate, 4 * 1024), 14_664);
        }
    }

    #[test]
    fn windows_are_checked() {
        for w in WINDOWS {
            assert_eq!(Codec::Deflate.check_window(w), Ok(()));
        }
        for w in [0, 256, 511, 513, 3000, 65536, u32::MAX] {
            assert_eq!(
                Codec::Deflate.check_window(w),
                Err(WindowError::Deflate { window: w })
            );
            assert!(StreamDecoder::new(Codec::Deflate, w, 10).is_err());
            assert!(matches!(
                deflate(b"x", 9, w),
                Err(DeflateError::Window(WindowError::Deflate { .. }))
            ));
        }
        assert_eq!(Codec::None.check_window(0), Ok(()));
        assert_eq!(
            Codec::None.check_window(512),
            Err(WindowError::None { window: 512 })
        );
        assert!(matches!(
            deflate(b"x", 11, 512),
            Err(DeflateError::Level { level: 11 })
        ));
    }

    #[test]
    fn round_trip_at_every_window_with_a_decoder_of_that_window() {
        let image = sample();
        let mut sizes = Vec::new();
        for w in WINDOWS {
            for level in [1, 6, 9, 10] {
                let payload = deflate(&image, level, w).map_err(|e| e.to_string());
                let payload = payload.as_deref().unwrap_or_default();
                for piece in [1, 1000, payload.len()] {
                    assert_eq!(
                        decode_with_window(Codec::Deflate, w, payload, image.len() as u64, piece)
                            .as_deref(),
                        Ok(&image[..]),
                        "window {w}, level {level}, piece {piece}"
                    );
                }
                if level == 9 {
                    sizes.push(payload.len());
                }
            }
        }
        // The window is really what limits the compressor: the widest one finds repeats
        // the narrowest cannot (the sample's period is ~16 KB).
        assert!(sizes[6] < sizes[0] * 9 / 10, "{sizes:?}");
    }

    #[test]
    fn the_compressor_stays_within_the_window_and_the_decoder_within_its_own() {
        // Repeats exactly 20,000 bytes back: within a 32 KiB window, beyond 16 KiB.
        let image = repeat_at(20_000);
        let n = image.len() as u64;
        let wide = deflate(&image, 9, 32768).unwrap_or_default();
        let narrow = deflate(&image, 9, 16384).unwrap_or_default();
        // The 32 KiB stream uses the repeat; the 16 KiB one cannot.
        assert!(wide.len() < 21_000, "{}", wide.len());
        assert!(narrow.len() > 39_000, "{}", narrow.len());
        // Each decodes with a decoder of its own window (wrapping many times for 16 KiB)...
        assert_eq!(
            decode_with_window(Codec::Deflate, 16384, &narrow, n, 1024).as_deref(),
            Ok(&image[..])
        );
        assert_eq!(
            decode_with_window(Codec::Deflate, 32768, &wide, n, 1024).as_deref(),
            Ok(&image[..])
        );
        // ... but a decoder whose window is smaller than the stream's farthest
        // back-reference fails cleanly: it holds only its window.
        assert!(matches!(
            decode_with_window(Codec::Deflate, 16384, &wide, n, 1024),
            Err(DecodeError::Corrupt { .. })
        ));
    }

    #[test]
    fn level_10_at_32k_is_the_smaller_of_both_compressors() {
        let image = sample();
        let best = deflate(&image, 10, MAX_WINDOW).unwrap_or_default();
        let zlib = deflate(&image, 9, MAX_WINDOW).unwrap_or_default();
        let miniz = miniz_oxide::deflate::compress_to_vec(&image, 10);
        assert!(!best.is_empty());
        assert_eq!(best.len(), zlib.len().min(miniz.len()));
        // Below 32 KiB only zlib can keep within the window.
        assert_eq!(
            deflate(&image, 10, 8192).ok(),
            deflate(&image, 9, 8192).ok()
        );
    }

    #[test]
    fn deflate_round_trip_any_piece_size() {
        let image = sample();
        let payload = deflate(&image, 6, MAX_WINDOW).unwrap_or_default();
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
        let payload = deflate(&image, 9, MAX_WINDOW).unwrap_or_default();
        let mut d = match StreamDecoder::new(Codec::Deflate, MAX_WINDOW, 50_000) {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        };
        let mut seen = 0usize;
        let err = d.push(&payload, |b| seen += b.len());
        assert_eq!(err, Err(DecodeError::TooLong { limit: 50_000 }));
        assert!(seen <= 50_000);
        assert_eq!(d.push(&[], |_| {}), Err(DecodeError::Spent));
    }

    #[test]
    fn truncated_and_trailing() {
        let image = sample();
        let payload = deflate(&image, 6, MAX_WINDOW).unwrap_or_default();
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
