//! The manifest: what an artefact contains, how it is encoded and chunked, and who signed it.

#[allow(unused_imports)]
use crate::prelude::*;

use core::ops::Range;

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};

use crate::codec::{self, Codec, WindowError};
use crate::digest::{ChunkHash, KeyId, ManifestSignature, Md5Digest, Sha256Digest};
use crate::version::Version;

/// The manifest format this build writes and reads.
pub const FORMAT_VERSION: u32 = 2;

/// Default size of a transmitted chunk: fits one painlessMesh-sized frame with room for headers.
pub const DEFAULT_CHUNK_SIZE: u32 = 1024;

/// Smallest allowed chunk size. Smaller chunks would make the hash list (16 bytes per chunk)
/// a large fraction of the payload.
pub const MIN_CHUNK_SIZE: u32 = 64;

/// Largest allowed chunk size. 32 KiB base64-encodes to 43,692 characters, under the 65,535
/// character limit ArduinoJson puts on a string in a painlessMesh frame, and is the most a
/// small receiver should have to buffer before it can check a chunk hash.
pub const MAX_CHUNK_SIZE: u32 = 32 * 1024;

/// Largest raw image an artefact may declare (64 MiB, more than any ESP32 app partition).
pub const MAX_IMAGE_SIZE: u64 = 64 * 1024 * 1024;

/// Largest payload an artefact may declare. DEFLATE can expand incompressible data slightly
/// (stored blocks, or fixed Huffman codes from other encoders), hence the slack.
pub const MAX_PAYLOAD_SIZE: u64 = 2 * MAX_IMAGE_SIZE;

/// Largest manifest JSON accepted or written (1 MiB). At 35 bytes per chunk hash this allows
/// about 29,000 chunks, i.e. 29 MiB of payload at the default chunk size.
pub const MAX_MANIFEST_LEN: usize = 1024 * 1024;

/// Longest `role` or `hardware` string.
pub const MAX_TEXT_LEN: usize = 64;

/// Prefix of every signed message, so that a signature over a manifest can never be valid for
/// any other message a meshfleet key signs (domain separation). Fixed for format 2.
pub const SIGNATURE_CONTEXT: &[u8] = b"meshfleet-mfw-manifest-v2\n";

/// Describes one firmware artefact. Serialised as a JSON object with exactly these keys, in
/// this order.
///
/// Unknown keys are rejected when parsing: every key of a signed manifest must be covered by
/// the signature, and a key this build does not know could not be (see
/// [`Manifest::signed_bytes`]). Future additions bump [`FORMAT_VERSION`].
///
/// Fields are public for reading and for tools; an [`Artefact`](crate::Artefact) or
/// [`StreamVerifier`](crate::StreamVerifier) only accepts a manifest that passes
/// [`Manifest::validate`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Manifest format, [`FORMAT_VERSION`].
    pub format: u32,
    /// painlessMesh node role the image is for (the OTA `role` key), e.g. `"sensor"`.
    pub role: String,
    /// Hardware the image is for (the OTA `hardware` key): `"ESP8266"` or `"ESP32"`.
    pub hardware: String,
    /// Firmware version, normalised (see [`Version`]).
    pub version: Version,
    /// Raw image size in bytes.
    pub size: u64,
    /// MD5 of the raw image: the value stock painlessMesh nodes check.
    pub md5: Md5Digest,
    /// SHA-256 of the raw image.
    pub sha256: Sha256Digest,
    /// Encoding of the payload.
    pub codec: Codec,
    /// The DEFLATE window the payload needs, in bytes: no back-reference in the stream reaches
    /// farther back, so a receiver decodes it with a window of this size
    /// ([`codec::decoder_footprint`]). A power of two from [`codec::MIN_WINDOW`] to
    /// [`codec::MAX_WINDOW`] for [`Codec::Deflate`], 0 for [`Codec::None`].
    pub window: u32,
    /// Payload size in bytes (equal to `size` for [`Codec::None`]).
    pub compressed_size: u64,
    /// Size of every transmitted chunk of the payload but the last.
    pub chunk_size: u32,
    /// Number of chunks: `ceil(compressed_size / chunk_size)`.
    pub chunk_count: u32,
    /// [`ChunkHash`] of each payload chunk, in order: the *chunk table*. Present in `.mfw`
    /// files; absent (empty, and not serialised) in the *lean* form a receiver gets in an
    /// OFFER ([`Manifest::lean`]), which carries only `hash_pages` and fetches the table
    /// page by page with the payload. Not covered by the signature directly: `validate`
    /// checks a present table against the signed `hash_pages`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunk_hashes: Vec<ChunkHash>,
    /// [`ChunkHash`] of each *hash page*: the chunk table cut into pages of
    /// [`Manifest::hashes_per_page`] consecutive 16-byte chunk hashes (`chunk_size` bytes,
    /// so a page travels like a chunk), each page hashed as one byte string. This two-level
    /// hash tree keeps the signed manifest small (16 bytes per 64 KiB of payload at the
    /// default chunk size) while every chunk stays checkable on arrival.
    pub hash_pages: Vec<ChunkHash>,
    /// SHA-256 of the whole payload.
    pub payload_sha256: Sha256Digest,
    /// When the artefact was packed, Unix time in seconds, if the packer said.
    pub created: Option<u64>,
    /// Id of the key that signed the manifest.
    pub key_id: Option<KeyId>,
    /// Ed25519 signature over [`Manifest::signed_bytes`].
    pub signature: Option<ManifestSignature>,
}

/// Why a manifest was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// Not JSON, a missing or mistyped key, or an unknown key.
    #[error("manifest is not valid: {0}")]
    Json(#[source] serde_json::Error),
    /// Written by a newer (or unknown) meshfleet.
    #[error("manifest format {found} is not supported (this build reads format {FORMAT_VERSION}); upgrade meshfleet")]
    UnsupportedFormat {
        /// The `format` value found.
        found: u64,
    },
    /// The payload uses a codec this build cannot decode.
    #[error("unknown codec {name:?} (this build supports \"none\" and \"deflate\")")]
    UnknownCodec {
        /// The `codec` value found.
        name: String,
    },
    /// `role` or `hardware` is empty, too long, or has characters other than printable ASCII.
    #[error(
        "{field} must be 1 to {MAX_TEXT_LEN} printable ASCII characters, without '\"' or '\\'"
    )]
    InvalidText {
        /// `"role"` or `"hardware"`.
        field: &'static str,
    },
    /// The image is empty.
    #[error("the image is empty")]
    EmptyImage,
    /// The image is larger than [`MAX_IMAGE_SIZE`].
    #[error("the image is {size} bytes; the limit is {MAX_IMAGE_SIZE}")]
    ImageTooLarge {
        /// Declared image size.
        size: u64,
    },
    /// `compressed_size` is 0 or larger than [`MAX_PAYLOAD_SIZE`].
    #[error("compressed_size {compressed_size} is out of range 1..={MAX_PAYLOAD_SIZE}")]
    PayloadSize {
        /// Declared payload size.
        compressed_size: u64,
    },
    /// `window` is not valid for `codec` (see [`Codec::check_window`]).
    #[error("invalid manifest: {0}")]
    Window(#[from] WindowError),
    /// With codec `none` the payload is the image, so the sizes must agree.
    #[error("codec none requires compressed_size ({compressed_size}) to equal size ({size})")]
    StoredSizeMismatch {
        /// Declared image size.
        size: u64,
        /// Declared payload size.
        compressed_size: u64,
    },
    /// `chunk_size` out of range.
    #[error("chunk_size {chunk_size} is out of range {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}")]
    ChunkSize {
        /// Declared chunk size.
        chunk_size: u32,
    },
    /// `chunk_count` disagrees with `compressed_size` and `chunk_size`.
    #[error("chunk_count is {declared}, but {compressed_size} payload bytes in chunks of {chunk_size} make {expected}")]
    ChunkCount {
        /// Declared chunk count.
        declared: u32,
        /// Count implied by the sizes.
        expected: u64,
        /// Declared payload size.
        compressed_size: u64,
        /// Declared chunk size.
        chunk_size: u32,
    },
    /// `chunk_hashes` has the wrong length (it must list every chunk, or be absent).
    #[error("chunk_hashes lists {listed} hashes for {chunk_count} chunks")]
    ChunkHashCount {
        /// Hashes listed.
        listed: usize,
        /// Declared chunk count.
        chunk_count: u32,
    },
    /// `hash_pages` has the wrong length.
    #[error("hash_pages lists {listed} pages; {chunk_count} chunk hashes in pages of {per_page} make {expected}")]
    HashPageCount {
        /// Pages listed.
        listed: usize,
        /// Pages implied by the chunk count and the page size.
        expected: u32,
        /// Declared chunk count.
        chunk_count: u32,
        /// Chunk hashes per page.
        per_page: u32,
    },
    /// The chunk table does not hash to the signed `hash_pages`.
    #[error("chunk_hashes do not match hash page {page}: the chunk table was altered")]
    HashPageMismatch {
        /// First page that does not match.
        page: u32,
    },
    /// Exactly one of `key_id` and `signature` is present.
    #[error("key_id and signature must be both present or both absent")]
    HalfSigned,
    /// The serialised manifest exceeds [`MAX_MANIFEST_LEN`].
    #[error("manifest is {len} bytes; the limit is {MAX_MANIFEST_LEN} (use a larger chunk size)")]
    TooLarge {
        /// Serialised length.
        len: usize,
    },
}

/// Why a manifest signature was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The manifest carries no signature but one was required.
    #[error("artefact is unsigned, but a signature by key {expected} is required")]
    Unsigned {
        /// Id of the key that should have signed.
        expected: KeyId,
    },
    /// Signed by a different key than the one given.
    #[error("artefact is signed by key {signed_by}, not by the given key {expected}")]
    WrongKey {
        /// Key id named in the manifest.
        signed_by: KeyId,
        /// Id of the key given for verification.
        expected: KeyId,
    },
    /// The signature is not valid for the manifest's contents under the given key.
    #[error("signature does not match key {key_id}: the manifest was changed after signing, or the signature is corrupt")]
    Mismatch {
        /// Id of the key used.
        key_id: KeyId,
    },
}

/// Reads `format` and `codec` before the full parse, so that a manifest from a newer format or
/// with an unknown codec gets that diagnosis instead of a generic "unknown field" one.
#[derive(serde::Deserialize)]
struct Probe {
    format: u64,
    codec: Option<String>,
}

/// Counts serialised bytes without storing them.
#[cfg(feature = "std")]
struct Counter(usize);

#[cfg(feature = "std")]
impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// True if `s` is allowed as `role` or `hardware`.
pub(crate) fn valid_text(s: &str) -> bool {
    (1..=MAX_TEXT_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\')
}

impl Manifest {
    /// Parses and validates manifest JSON (any formatting, any key order).
    pub fn from_json(json: &[u8]) -> Result<Self, ManifestError> {
        if json.len() > MAX_MANIFEST_LEN {
            return Err(ManifestError::TooLarge { len: json.len() });
        }
        let probe: Probe = serde_json::from_slice(json).map_err(ManifestError::Json)?;
        if probe.format != u64::from(FORMAT_VERSION) {
            return Err(ManifestError::UnsupportedFormat {
                found: probe.format,
            });
        }
        if let Some(name) = probe.codec {
            if Codec::from_name(&name).is_none() {
                return Err(ManifestError::UnknownCodec { name });
            }
        }
        let manifest: Self = serde_json::from_slice(json).map_err(ManifestError::Json)?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// The manifest as compact JSON: keys in declaration order, no whitespace. This is the form
    /// written into `.mfw` files.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_json(&mut out);
        out
    }

    pub(crate) fn write_json(&self, out: &mut Vec<u8>) {
        // Cannot fail: every field is a string, integer, list or null, and Vec<u8> is an
        // infallible writer.
        #[cfg(feature = "std")]
        serde_json::to_writer(out, self).expect("manifest serialisation is infallible");
        // serde_json has no writer API without std: serialise, then append.
        #[cfg(not(feature = "std"))]
        out.extend_from_slice(
            &serde_json::to_vec(self).expect("manifest serialisation is infallible"),
        );
    }

    /// Length of [`Manifest::to_json`], without building it (with the `std` feature; without
    /// it, by building it).
    pub fn json_len(&self) -> usize {
        #[cfg(feature = "std")]
        {
            let mut counter = Counter(0);
            // Same reasoning as `write_json`; the counter never fails.
            serde_json::to_writer(&mut counter, self)
                .expect("manifest serialisation is infallible");
            counter.0
        }
        #[cfg(not(feature = "std"))]
        {
            let mut out = Vec::new();
            self.write_json(&mut out);
            out.len()
        }
    }

    /// Checks the internal consistency of the manifest (sizes, chunk list, text fields).
    /// Digests and the signature are checked against data by
    /// [`Artefact::verify`](crate::Artefact::verify).
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.format != FORMAT_VERSION {
            return Err(ManifestError::UnsupportedFormat {
                found: self.format.into(),
            });
        }
        if !valid_text(&self.role) {
            return Err(ManifestError::InvalidText { field: "role" });
        }
        if !valid_text(&self.hardware) {
            return Err(ManifestError::InvalidText { field: "hardware" });
        }
        if self.size == 0 {
            return Err(ManifestError::EmptyImage);
        }
        if self.size > MAX_IMAGE_SIZE {
            return Err(ManifestError::ImageTooLarge { size: self.size });
        }
        if !(1..=MAX_PAYLOAD_SIZE).contains(&self.compressed_size) {
            return Err(ManifestError::PayloadSize {
                compressed_size: self.compressed_size,
            });
        }
        self.codec.check_window(self.window)?;
        if self.codec == Codec::None && self.compressed_size != self.size {
            return Err(ManifestError::StoredSizeMismatch {
                size: self.size,
                compressed_size: self.compressed_size,
            });
        }
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&self.chunk_size) {
            return Err(ManifestError::ChunkSize {
                chunk_size: self.chunk_size,
            });
        }
        let expected = self.compressed_size.div_ceil(u64::from(self.chunk_size));
        if u64::from(self.chunk_count) != expected {
            return Err(ManifestError::ChunkCount {
                declared: self.chunk_count,
                expected,
                compressed_size: self.compressed_size,
                chunk_size: self.chunk_size,
            });
        }
        let pages = self.page_count();
        if self.hash_pages.len() as u64 != u64::from(pages) {
            return Err(ManifestError::HashPageCount {
                listed: self.hash_pages.len(),
                expected: pages,
                chunk_count: self.chunk_count,
                per_page: self.hashes_per_page(),
            });
        }
        if !self.chunk_hashes.is_empty() {
            if self.chunk_hashes.len() as u64 != u64::from(self.chunk_count) {
                return Err(ManifestError::ChunkHashCount {
                    listed: self.chunk_hashes.len(),
                    chunk_count: self.chunk_count,
                });
            }
            let computed = page_hashes(&self.chunk_hashes, self.hashes_per_page());
            if let Some(page) = computed
                .iter()
                .zip(&self.hash_pages)
                .position(|(a, b)| a != b)
            {
                return Err(ManifestError::HashPageMismatch {
                    page: u32::try_from(page).unwrap_or(u32::MAX),
                });
            }
        }
        if self.key_id.is_some() != self.signature.is_some() {
            return Err(ManifestError::HalfSigned);
        }
        let len = self.json_len();
        if len > MAX_MANIFEST_LEN {
            return Err(ManifestError::TooLarge { len });
        }
        Ok(())
    }

    /// The exact bytes an Ed25519 signature covers:
    ///
    /// ```text
    /// SIGNATURE_CONTEXT || to_json(lean manifest with signature = None)
    /// ```
    ///
    /// i.e. `"meshfleet-mfw-manifest-v2\n"` followed by the compact JSON of the manifest
    /// without `chunk_hashes` and with `"signature":null`: keys in declaration order
    /// (`format`, `role`, `hardware`, `version`, `size`, `md5`, `sha256`, `codec`, `window`,
    /// `compressed_size`, `chunk_size`, `chunk_count`, `hash_pages`, `payload_sha256`,
    /// `created`, `key_id`, `signature`), no whitespace,
    /// integers in plain decimal, absent optional values as `null`, digests as lowercase hex
    /// strings, the version in normalised form. `role` and `hardware` are printable ASCII
    /// without `"` or `\`, so no string ever needs escaping and the form is easy to reproduce
    /// in any language. `key_id` is covered, binding the signature to the key it names.
    ///
    /// A verifier re-serialises the *parsed* manifest rather than hashing the file's bytes, so
    /// what is verified is exactly what the program goes on to use.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = SIGNATURE_CONTEXT.to_vec();
        if self.signature.is_none() && self.chunk_hashes.is_empty() {
            self.write_json(&mut out);
        } else {
            let unsigned = Self {
                signature: None,
                chunk_hashes: Vec::new(),
                ..self.clone()
            };
            unsigned.write_json(&mut out);
        }
        out
    }

    /// Sets the chunk table to `hashes`, with `chunk_count` and `hash_pages` to match (for
    /// tools and tests that build a manifest by hand; [`crate::pack`] does this itself).
    pub fn set_chunk_table(&mut self, hashes: Vec<ChunkHash>) {
        self.chunk_count = u32::try_from(hashes.len()).unwrap_or(u32::MAX);
        self.hash_pages = page_hashes(&hashes, self.hashes_per_page());
        self.chunk_hashes = hashes;
    }

    /// The lean form: this manifest without the chunk table. It is what an OFFER carries:
    /// the signature still verifies (it never covered the table), and it stays small
    /// whatever the image size, so a relay can check it and offer downstream at once.
    pub fn lean(&self) -> Self {
        Self {
            chunk_hashes: Vec::new(),
            ..self.clone()
        }
    }

    /// True if the chunk table is present (a full manifest, not a lean one).
    pub fn has_chunk_table(&self) -> bool {
        !self.chunk_hashes.is_empty()
    }

    /// Chunk hashes per hash page: `chunk_size / 16`, so that a page is at most one chunk.
    pub fn hashes_per_page(&self) -> u32 {
        (self.chunk_size / CHUNK_HASH_LEN).max(1)
    }

    /// Number of hash pages: `ceil(chunk_count / hashes_per_page)`.
    pub fn page_count(&self) -> u32 {
        self.chunk_count.div_ceil(self.hashes_per_page())
    }

    /// The chunk indices page `page` covers, or `None` past the last page.
    pub fn page_chunks(&self, page: u32) -> Option<Range<u32>> {
        if page >= self.page_count() {
            return None;
        }
        let per = self.hashes_per_page();
        let start = page.checked_mul(per)?;
        Some(start..start.saturating_add(per).min(self.chunk_count))
    }

    /// Length in bytes of hash page `page` (16 per chunk it covers), or `None` past the end.
    pub fn page_len(&self, page: u32) -> Option<usize> {
        self.page_chunks(page)
            .map(|r| r.len() * CHUNK_HASH_LEN as usize)
    }

    /// True if `bytes` is exactly hash page `page` (length and hash). A receiver checks each
    /// page on arrival; the chunk hashes in a page that passes are then trusted as if signed.
    pub fn verify_page(&self, page: u32, bytes: &[u8]) -> bool {
        self.page_len(page) == Some(bytes.len())
            && self.hash_pages.get(page as usize) == Some(&ChunkHash::of(bytes))
    }

    /// Hash page `page` from the chunk table (a full manifest only).
    pub fn page_bytes(&self, page: u32) -> Option<Vec<u8>> {
        let r = self.page_chunks(page)?;
        let hashes = self.chunk_hashes.get(r.start as usize..r.end as usize)?;
        Some(hashes.iter().flat_map(|h| h.0).collect())
    }

    /// Signs the manifest with `key`, setting `key_id` and `signature` (replacing any earlier
    /// signature).
    pub fn sign(&mut self, key: &SigningKey) {
        self.key_id = Some(KeyId::of(&key.verifying_key()));
        self.signature = None;
        let signature = key.sign(&self.signed_bytes());
        self.signature = Some(ManifestSignature(signature.to_bytes()));
    }

    /// Checks that the manifest is signed by `key`. Returns the key's id.
    ///
    /// Uses Ed25519 strict verification (`verify_strict`: rejects non-canonical signatures and
    /// small-order keys), so one manifest has one valid signature per key.
    pub fn verify_signature(&self, key: &VerifyingKey) -> Result<KeyId, SignatureError> {
        let expected = KeyId::of(key);
        let (Some(signed_by), Some(signature)) = (self.key_id, self.signature) else {
            return Err(SignatureError::Unsigned { expected });
        };
        if signed_by != expected {
            return Err(SignatureError::WrongKey {
                signed_by,
                expected,
            });
        }
        key.verify_strict(&self.signed_bytes(), &Signature::from_bytes(&signature.0))
            .map_err(|_| SignatureError::Mismatch { key_id: expected })?;
        Ok(expected)
    }

    /// Byte range of chunk `index` in the payload, or `None` past the last chunk.
    pub fn chunk_range(&self, index: u32) -> Option<Range<usize>> {
        if index >= self.chunk_count {
            return None;
        }
        let start = u64::from(index).checked_mul(u64::from(self.chunk_size))?;
        if start >= self.compressed_size {
            return None;
        }
        let end = start
            .saturating_add(u64::from(self.chunk_size))
            .min(self.compressed_size);
        Some(usize::try_from(start).ok()?..usize::try_from(end).ok()?)
    }

    /// Length of chunk `index` (every chunk is `chunk_size` bytes but the last), or `None` past
    /// the last chunk.
    pub fn chunk_len(&self, index: u32) -> Option<usize> {
        self.chunk_range(index).map(|r| r.len())
    }

    /// The expected hash of chunk `index`.
    pub fn chunk_hash(&self, index: u32) -> Option<&ChunkHash> {
        self.chunk_hashes.get(usize::try_from(index).ok()?)
    }

    /// True if `bytes` is exactly chunk `index` of the payload (length and hash). A receiver
    /// calls this on every chunk as it arrives, before decoding or storing it. Always false
    /// on a lean manifest (no chunk table): check against the hash from the verified page
    /// with [`Manifest::verify_chunk_against`].
    pub fn verify_chunk(&self, index: u32, bytes: &[u8]) -> bool {
        self.chunk_hash(index)
            .is_some_and(|h| self.verify_chunk_against(index, bytes, h))
    }

    /// True if `bytes` has chunk `index`'s length and hashes to `expected` (taken from a
    /// verified hash page).
    pub fn verify_chunk_against(&self, index: u32, bytes: &[u8], expected: &ChunkHash) -> bool {
        self.chunk_len(index) == Some(bytes.len()) && ChunkHash::of(bytes) == *expected
    }

    /// Bytes of RAM a receiver's [`StreamDecoder`](crate::StreamDecoder) needs for this
    /// payload: [`codec::decoder_footprint`] of `codec` and `window`.
    pub fn decoder_footprint(&self) -> usize {
        codec::decoder_footprint(self.codec, self.window)
    }
}

/// Bytes of one chunk hash.
const CHUNK_HASH_LEN: u32 = 16;

/// The hash of every page of `table`, `per_page` hashes to a page.
pub(crate) fn page_hashes(table: &[ChunkHash], per_page: u32) -> Vec<ChunkHash> {
    table
        .chunks(per_page.max(1) as usize)
        .map(|page| {
            let bytes: Vec<u8> = page.iter().flat_map(|h| h.0).collect();
            ChunkHash::of(&bytes)
        })
        .collect()
}
