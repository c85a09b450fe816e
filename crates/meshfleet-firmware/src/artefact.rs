//! `.mfw` files: packing an image, serialising, parsing and chunk access.

#[allow(unused_imports)]
use crate::prelude::*;

use ed25519_dalek::SigningKey;

use crate::codec::MAX_WINDOW;
use crate::digest::ChunkHash;
use crate::manifest::{Manifest, ManifestError, MAX_MANIFEST_LEN};
// Packing (the `std` feature).
#[cfg(feature = "std")]
use crate::codec::{self, Codec, DeflateError, StreamDecoder, MAX_LEVEL};
#[cfg(feature = "std")]
use crate::digest::{Md5Digest, Sha256Digest};
#[cfg(feature = "std")]
use crate::manifest::{
    valid_text, DEFAULT_CHUNK_SIZE, FORMAT_VERSION, MAX_CHUNK_SIZE, MAX_IMAGE_SIZE, MIN_CHUNK_SIZE,
};
#[cfg(feature = "std")]
use crate::version::Version;

/// First four bytes of every `.mfw` file.
pub const MAGIC: [u8; 4] = *b"MFW1";

/// Bytes before the manifest: magic and the little-endian `u32` manifest length.
pub const HEADER_LEN: usize = 8;

/// Default DEFLATE level for [`pack`]: zlib's best. Level 10 also tries `miniz_oxide`'s
/// level 10 at the 32 KiB window and keeps the smaller stream (see [`codec::deflate`]).
pub const DEFAULT_LEVEL: u8 = 9;

/// Default DEFLATE window for [`pack`]: the format's largest, 32 KiB, the best compression,
/// for receivers that can hold it (an ESP32). An ESP8266 needs a smaller one: see
/// [`PackOptions::window`].
pub const DEFAULT_WINDOW: u32 = MAX_WINDOW;

/// A parsed firmware artefact: a validated manifest and a payload of exactly
/// `manifest.compressed_size` bytes.
///
/// Holding an `Artefact` means the file was well-formed, not that it is authentic or intact:
/// call [`Artefact::verify`] before using the image.
#[derive(Clone, PartialEq, Eq)]
pub struct Artefact {
    manifest: Manifest,
    payload: Vec<u8>,
}

impl core::fmt::Debug for Artefact {
    // The payload is hundreds of kilobytes; its length is what a reader of a log wants.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Artefact")
            .field("manifest", &self.manifest)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// What [`pack`] should produce.
#[cfg(feature = "std")]
#[derive(Clone, Debug)]
pub struct PackOptions<'a> {
    /// painlessMesh node role, e.g. `"sensor"`.
    pub role: String,
    /// `"ESP8266"` or `"ESP32"`.
    pub hardware: String,
    /// Firmware version.
    pub version: Version,
    /// Payload codec; default [`Codec::Deflate`].
    pub codec: Codec,
    /// DEFLATE level 0..=10; default [`DEFAULT_LEVEL`]. Ignored for [`Codec::None`].
    pub level: u8,
    /// DEFLATE window in bytes, a power of two from [`codec::MIN_WINDOW`] to
    /// [`codec::MAX_WINDOW`]; default [`DEFAULT_WINDOW`]. A receiver needs this much RAM plus
    /// the inflater's tables ([`codec::decoder_footprint`]): 8192 (18.3 KiB in all) suits an
    /// ESP8266. Ignored for [`Codec::None`] (its manifest says 0).
    pub window: u32,
    /// Transmitted chunk size; default [`DEFAULT_CHUNK_SIZE`].
    pub chunk_size: u32,
    /// Creation time to record (Unix seconds). Taken as input so that packing is deterministic:
    /// the same image and options always give the same bytes.
    pub created: Option<u64>,
    /// Key to sign with; `None` packs an unsigned artefact (see [`Artefact::sign`]).
    pub signing_key: Option<&'a SigningKey>,
}

#[cfg(feature = "std")]
impl PackOptions<'_> {
    /// Options with the defaults: deflate at [`DEFAULT_LEVEL`] with a [`DEFAULT_WINDOW`]
    /// window, [`DEFAULT_CHUNK_SIZE`] chunks, no timestamp, unsigned.
    pub fn new(role: impl Into<String>, hardware: impl Into<String>, version: Version) -> Self {
        Self {
            role: role.into(),
            hardware: hardware.into(),
            version,
            codec: Codec::Deflate,
            level: DEFAULT_LEVEL,
            window: DEFAULT_WINDOW,
            chunk_size: DEFAULT_CHUNK_SIZE,
            created: None,
            signing_key: None,
        }
    }
}

/// Why [`pack`] refused.
#[cfg(feature = "std")]
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackError {
    /// The DEFLATE level is above [`MAX_LEVEL`].
    #[error("compression level {level} is out of range 0..={MAX_LEVEL}")]
    Level {
        /// The level asked for.
        level: u8,
    },
    /// The options or image make an invalid manifest (empty image, bad chunk size, bad
    /// window, bad role...).
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The compressor failed (a bug in it; nothing was produced).
    #[error("internal error: {0}")]
    Deflate(#[source] DeflateError),
    /// The compressed stream did not decode back to the image. A bug in the compressor or this
    /// crate; nothing was produced.
    #[error("internal error: the packed payload does not decode back to the image ({0})")]
    SelfCheck(&'static str),
}

/// Why bytes are not a well-formed `.mfw` file (or a manifest and payload do not fit together).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The manifest lacks the chunk table: it is the lean form an OFFER carries, not an
    /// artefact's.
    #[error("the manifest has no chunk_hashes (the lean form sent in offers); an .mfw file needs the full manifest")]
    NoChunkTable,
    /// Shorter than the 8-byte header.
    #[error("file is {len} bytes, too short for an .mfw header ({HEADER_LEN} bytes)")]
    TooShort {
        /// File length.
        len: usize,
    },
    /// Does not start with `MFW1`.
    #[error(
        "not an .mfw file: it starts with {found:02x?}, expected \"MFW1\"{}",
        magic_hint(found)
    )]
    BadMagic {
        /// The first four bytes.
        found: [u8; 4],
    },
    /// The header claims a manifest larger than [`MAX_MANIFEST_LEN`].
    #[error("header claims a {claimed}-byte manifest; the limit is {MAX_MANIFEST_LEN}")]
    ManifestTooLarge {
        /// Claimed length.
        claimed: u32,
    },
    /// The file ends inside the manifest.
    #[error("file truncated: expected a {claimed}-byte manifest, found {available} bytes")]
    ManifestTruncated {
        /// Claimed manifest length.
        claimed: u32,
        /// Bytes after the header.
        available: usize,
    },
    /// The manifest is invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The payload is shorter than `compressed_size`.
    #[error("file truncated: expected {expected} payload bytes, found {found}")]
    Truncated {
        /// `compressed_size` from the manifest.
        expected: u64,
        /// Payload bytes present.
        found: u64,
    },
    /// The payload is longer than `compressed_size`.
    #[error("{extra} unexpected bytes after the {expected}-byte payload")]
    TrailingData {
        /// `compressed_size` from the manifest.
        expected: u64,
        /// Bytes beyond it.
        extra: u64,
    },
}

/// A hint for the most likely mistake: passing the raw image instead of the artefact.
fn magic_hint(found: &[u8; 4]) -> &'static str {
    // 0xE9 starts every ESP8266/ESP32 application image (esptool's ESP_IMAGE_MAGIC).
    if found[0] == 0xe9 {
        " (this looks like a raw ESP firmware image; pack it into an .mfw first)"
    } else {
        ""
    }
}

/// Packs `image` into an artefact: compresses it, chunks and hashes the payload, fills in the
/// manifest and signs it if `opts.signing_key` is set.
///
/// Deterministic: the same image and options give byte-identical output. The payload is
/// decoded again with a [`StreamDecoder`] of the manifest's window before returning, so an
/// artefact that a receiver with that window could not decode is never produced.
#[cfg(feature = "std")]
pub fn pack(image: &[u8], opts: PackOptions<'_>) -> Result<Artefact, PackError> {
    let size = image.len() as u64;
    // Refuse what `validate` would refuse before spending time compressing.
    for (field, value) in [("role", &opts.role), ("hardware", &opts.hardware)] {
        if !valid_text(value) {
            return Err(ManifestError::InvalidText { field }.into());
        }
    }
    if size == 0 {
        return Err(ManifestError::EmptyImage.into());
    }
    if size > MAX_IMAGE_SIZE {
        return Err(ManifestError::ImageTooLarge { size }.into());
    }
    if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&opts.chunk_size) {
        return Err(ManifestError::ChunkSize {
            chunk_size: opts.chunk_size,
        }
        .into());
    }
    // Codec `none` decompresses nothing: its window is 0 whatever the options say.
    let window = match opts.codec {
        Codec::None => 0,
        Codec::Deflate => opts.window,
    };
    opts.codec
        .check_window(window)
        .map_err(ManifestError::from)?;
    let payload = match opts.codec {
        Codec::None => image.to_vec(),
        Codec::Deflate => {
            if opts.level > MAX_LEVEL {
                return Err(PackError::Level { level: opts.level });
            }
            codec::deflate(image, opts.level, window).map_err(PackError::Deflate)?
        }
    };
    self_check(image, &payload, opts.codec, window)?;

    // `chunk_size` was range-checked above, so `chunks` cannot get 0.
    let chunk_hashes: Vec<ChunkHash> = payload
        .chunks(opts.chunk_size as usize)
        .map(ChunkHash::of)
        .collect();
    // At most MAX_PAYLOAD_SIZE / MIN_CHUNK_SIZE (2^21) chunks; a saturated value would be
    // caught by `validate` anyway.
    let chunk_count = u32::try_from(chunk_hashes.len()).unwrap_or(u32::MAX);
    let mut manifest = Manifest {
        format: FORMAT_VERSION,
        role: opts.role,
        hardware: opts.hardware,
        version: opts.version,
        size,
        md5: Md5Digest::of(image),
        sha256: Sha256Digest::of(image),
        codec: opts.codec,
        window,
        compressed_size: payload.len() as u64,
        chunk_size: opts.chunk_size,
        chunk_count,
        hash_pages: crate::manifest::page_hashes(&chunk_hashes, (opts.chunk_size / 16).max(1)),
        chunk_hashes,
        payload_sha256: Sha256Digest::of(&payload),
        created: opts.created,
        key_id: None,
        signature: None,
    };
    if let Some(key) = opts.signing_key {
        manifest.sign(key);
    }
    Artefact::from_parts(manifest, payload).map_err(|e| match e {
        ParseError::Manifest(e) => PackError::Manifest(e),
        _ => PackError::SelfCheck("payload length disagrees with the manifest"),
    })
}

/// Decodes `payload` the way a receiver will and compares with `image`, without buffering.
#[cfg(feature = "std")]
fn self_check(image: &[u8], payload: &[u8], codec: Codec, window: u32) -> Result<(), PackError> {
    let mut decoder = StreamDecoder::new(codec, window, image.len() as u64)
        .map_err(|_| PackError::SelfCheck("invalid window"))?;
    let mut offset = 0usize;
    let mut same = true;
    for chunk in payload.chunks(DEFAULT_CHUNK_SIZE as usize) {
        decoder
            .push(chunk, |out| {
                let end = offset + out.len();
                same &= image.get(offset..end) == Some(out);
                offset = end;
            })
            .map_err(|_| PackError::SelfCheck("decoder error"))?;
    }
    decoder
        .finish()
        .map_err(|_| PackError::SelfCheck("decoder did not finish"))?;
    if same {
        Ok(())
    } else {
        Err(PackError::SelfCheck("decoded bytes differ"))
    }
}

impl Artefact {
    /// Joins a manifest and its payload, e.g. on a receiver that got the manifest first and
    /// then every chunk. Checks the manifest ([`Manifest::validate`]) and the payload length.
    pub fn from_parts(manifest: Manifest, payload: Vec<u8>) -> Result<Self, ParseError> {
        manifest.validate()?;
        if !manifest.has_chunk_table() {
            return Err(ParseError::NoChunkTable);
        }
        let expected = manifest.compressed_size;
        let found = payload.len() as u64;
        if found < expected {
            return Err(ParseError::Truncated { expected, found });
        }
        if found > expected {
            return Err(ParseError::TrailingData {
                expected,
                extra: found - expected,
            });
        }
        Ok(Self { manifest, payload })
    }

    /// Parses an `.mfw` file. Nothing is allocated on the strength of a length the file
    /// claims: the manifest length is checked against [`MAX_MANIFEST_LEN`] and the bytes
    /// actually present, and the payload is copied only once its length equals
    /// `compressed_size`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ParseError> {
        let (header, rest) = bytes
            .split_first_chunk::<HEADER_LEN>()
            .ok_or(ParseError::TooShort { len: bytes.len() })?;
        let (magic, len) = header.split_at(4);
        if magic != MAGIC {
            let mut found = [0u8; 4];
            found.copy_from_slice(magic);
            return Err(ParseError::BadMagic { found });
        }
        let mut len_bytes = [0u8; 4];
        len_bytes.copy_from_slice(len);
        let claimed = u32::from_le_bytes(len_bytes);
        let manifest_len = usize::try_from(claimed)
            .ok()
            .filter(|&n| n <= MAX_MANIFEST_LEN)
            .ok_or(ParseError::ManifestTooLarge { claimed })?;
        let (json, payload) =
            rest.split_at_checked(manifest_len)
                .ok_or(ParseError::ManifestTruncated {
                    claimed,
                    available: rest.len(),
                })?;
        let manifest = Manifest::from_json(json)?;
        if !manifest.has_chunk_table() {
            return Err(ParseError::NoChunkTable);
        }
        let expected = manifest.compressed_size;
        let found = payload.len() as u64;
        if found != expected {
            return Err(if found < expected {
                ParseError::Truncated { expected, found }
            } else {
                ParseError::TrailingData {
                    expected,
                    extra: found - expected,
                }
            });
        }
        Ok(Self {
            manifest,
            payload: payload.to_vec(),
        })
    }

    /// The `.mfw` file: `MFW1`, manifest length (u32 LE), manifest JSON, payload.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(HEADER_LEN + self.manifest.json_len() + self.payload.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&[0; 4]);
        self.manifest.write_json(&mut out);
        // The manifest was validated to be at most MAX_MANIFEST_LEN (1 MiB), so it fits a u32.
        let len = u32::try_from(out.len() - HEADER_LEN).unwrap_or(u32::MAX);
        out[4..HEADER_LEN].copy_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&self.payload);
        out
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The payload as transmitted (the compressed stream for [`Codec::Deflate`]).
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// Splits into manifest and payload.
    pub fn into_parts(self) -> (Manifest, Vec<u8>) {
        (self.manifest, self.payload)
    }

    /// Number of transmitted chunks.
    pub fn chunk_count(&self) -> u32 {
        self.manifest.chunk_count
    }

    /// Chunk `index` of the payload, or `None` past the last one. Indexes come from the
    /// network, hence `Option` rather than a panic.
    pub fn chunk(&self, index: u32) -> Option<&[u8]> {
        self.payload.get(self.manifest.chunk_range(index)?)
    }

    /// The chunks in order.
    pub fn chunks(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        // Validated to be at least MIN_CHUNK_SIZE, never 0.
        self.payload.chunks(self.manifest.chunk_size as usize)
    }

    /// The expected hash of chunk `index`.
    pub fn chunk_hash(&self, index: u32) -> Option<&ChunkHash> {
        self.manifest.chunk_hash(index)
    }

    /// True if `bytes` is exactly chunk `index` (see [`Manifest::verify_chunk`]).
    pub fn verify_chunk(&self, index: u32, bytes: &[u8]) -> bool {
        self.manifest.verify_chunk(index, bytes)
    }

    /// Signs (or re-signs) the manifest with `key`.
    pub fn sign(&mut self, key: &SigningKey) {
        self.manifest.sign(key);
    }
}
