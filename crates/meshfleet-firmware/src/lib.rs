//! Signed, compressed firmware artefacts (`.mfw`) for meshfleet OTA.
//!
//! A pure library: no clock, no sockets, no global RNG. Time and randomness come in as
//! arguments, so packing is deterministic and everything can be tested in isolation. Used by the
//! CLI (`meshfleet firmware keygen|pack|inspect|verify`) and by the OTA engine, on the sending
//! side ([`Artefact::chunk`]) and the receiving side ([`StreamVerifier`], [`StreamDecoder`]).
//!
//! # Pipeline
//!
//! ```
//! use meshfleet_firmware::{keys, pack, Artefact, PackOptions, Version};
//! # use rand_core::SeedableRng as _;
//! # let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
//! let key = keys::keygen(&mut rng); // the CLI passes `OsRng`
//! let image = b"\xe9 an ESP8266 flash image ...".repeat(64);
//!
//! let mut opts = PackOptions::new("sensor", "ESP8266", Version::parse("1.2.10")?);
//! opts.signing_key = Some(&key);
//! let file = pack(&image, opts)?.to_bytes();
//!
//! let artefact = Artefact::from_bytes(&file)?;
//! let verified = artefact.verify(Some(&key.verifying_key()))?;
//! assert_eq!(verified.image(), &image[..]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # File format (`.mfw`, format 2)
//!
//! ```text
//! offset  size  content
//! 0       4     magic "MFW1"
//! 4       4     manifest length L, u32 little-endian, L <= 1 MiB
//! 8       L     manifest, UTF-8 JSON (written compact; any JSON formatting is read)
//! 8+L     P     payload: the image encoded with `codec`; P = manifest.compressed_size exactly
//! ```
//!
//! The manifest ([`Manifest`]) as written by [`pack`] (hashes shortened here):
//!
//! ```json
//! {"format":2,"role":"sensor","hardware":"ESP8266","version":"1.2.10","size":594036,
//!  "md5":"<32 hex>","sha256":"<64 hex>","codec":"deflate","window":32768,"compressed_size":387326,
//!  "chunk_size":1024,"chunk_count":380,"chunk_hashes":["<32 hex>",...],
//!  "hash_pages":["<32 hex>",...],"payload_sha256":"<64 hex>","created":1767225600,
//!  "key_id":"<16 hex>","signature":"<128 hex>"}
//! ```
//!
//! * `size`, `md5`, `sha256` describe the raw image. `md5` is what a stock painlessMesh node
//!   announces and checks, so a meshfleet sender can serve stock nodes from the same artefact.
//! * `codec` is `none` or `deflate` (raw DEFLATE, see [`codec`]); `window` is the DEFLATE
//!   window the payload needs (a power of two from 512 to 32768 bytes; 0 for `none`), so a
//!   receiver knows the memory it takes before accepting it; `compressed_size`,
//!   `chunk_size` (default 1024, 64..=32768), `chunk_count`, `chunk_hashes`, `hash_pages` and
//!   `payload_sha256` describe the payload *as transmitted*.
//! * The signature is Ed25519 over [`Manifest::signed_bytes`]: a fixed context string and the
//!   compact JSON of the manifest without `chunk_hashes` and with `"signature":null`; `key_id`
//!   (first 8 bytes of the SHA-256 of the public key) is inside the signed bytes.
//!
//! # Chunk integrity: a two-level hash tree
//!
//! Each chunk of the transmitted payload has a 16-byte truncated SHA-256, so a receiver
//! rejects a corrupted or forged chunk the moment it arrives, *before* decompressing,
//! storing or forwarding it, and asks for that one chunk again.
//!
//! Those hashes (the *chunk table*, 16 bytes per chunk) are not signed one by one: the table
//! is cut into pages of `chunk_size / 16` hashes ([`Manifest::hashes_per_page`]), and the
//! signed manifest lists the hash of each page (`hash_pages`). A receiver gets the *lean*
//! manifest ([`Manifest::lean`], no table: ~1 KB whatever the image size), checks its
//! signature once, then receives each page like a chunk, just ahead of the chunks it covers,
//! checks it against `hash_pages`, and checks those chunks against it. In format 1 the whole
//! table was in the signed manifest: 24 KB of JSON for 1 MiB that every hop of a mesh had to
//! receive and parse whole before it could start forwarding, and 11 KiB of RAM on a device.
//!
//! A full Merkle tree would shrink the signed part to one root, at the price of a proof
//! (log2(n) x 16 bytes) with every chunk; two levels already keep the manifest at 16 bytes
//! per 64 KiB of payload, and checking a chunk stays one SHA-256 and a compare.
//!
//! Truncating to 128 bits is safe here: forging a chunk needs a second preimage of a hash the
//! signer published (2^128 work). Final acceptance does not rest on the truncated hashes
//! anyway: the full `payload_sha256`, image `sha256` and `md5` are all checked at the end.
//!
//! # Receiver memory
//!
//! [`StreamDecoder`] decodes a DEFLATE payload pushed chunk by chunk with a fixed footprint of
//! [`decoder_footprint`]`(codec, window)` bytes: the manifest's window plus the inflater's
//! tables ([`codec::INFLATER_STATE_SIZE`]); no input is buffered. 43,336 bytes for the
//! default 32 KiB window (an ESP32 has the room), 18,760 for an 8 KiB window (an ESP8266,
//! with about 40 KB free, has the room for that). See [`codec`] for details.
//!
//! # `no_std`
//!
//! The crate is `#![no_std]` with `alloc`. Its `std` feature (on by default) adds what needs
//! the standard library: [`pack`] and [`codec::deflate`] (the compressor), and the key file
//! functions of [`keys`]. Without it, parsing, verifying and stream-decoding an artefact,
//! intents, versions and key generation/encoding remain: what a device receiving OTA needs
//! (`cargo build -p meshfleet-firmware --no-default-features --target thumbv7em-none-eabihf`,
//! run by `scripts/check-core-deps.sh`). The error types implement `core::error::Error`,
//! which needs Rust 1.81 for that build; the default `std` build keeps the workspace MSRV.
#![no_std]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

/// What the std prelude would give every module.
mod prelude {
    pub(crate) use alloc::borrow::ToOwned;
    pub(crate) use alloc::boxed::Box;
    pub(crate) use alloc::format;
    pub(crate) use alloc::string::{String, ToString};
    pub(crate) use alloc::vec;
    pub(crate) use alloc::vec::Vec;
}

mod artefact;
pub mod codec;
mod digest;
mod hex;
pub mod intent;
pub mod keys;
mod manifest;
mod verify;
mod version;

#[cfg(feature = "std")]
pub use artefact::{pack, PackError, PackOptions};
pub use artefact::{Artefact, ParseError, DEFAULT_LEVEL, DEFAULT_WINDOW, HEADER_LEN, MAGIC};
#[cfg(feature = "std")]
pub use codec::DeflateError;
pub use codec::{
    decoder_footprint, Codec, DecodeError, StreamDecoder, WindowError, DEFLATE_WINDOW_SIZE,
    MAX_WINDOW, MIN_WINDOW,
};
pub use digest::{ChunkHash, HexValueError, KeyId, ManifestSignature, Md5Digest, Sha256Digest};
pub use intent::{
    Intent, IntentAction, IntentError, INTENT_CONTEXT, INTENT_FORMAT, MAX_INTENT_NODES,
};
pub use manifest::{
    Manifest, ManifestError, SignatureError, DEFAULT_CHUNK_SIZE, FORMAT_VERSION, MAX_CHUNK_SIZE,
    MAX_IMAGE_SIZE, MAX_MANIFEST_LEN, MAX_PAYLOAD_SIZE, MAX_TEXT_LEN, MIN_CHUNK_SIZE,
    SIGNATURE_CONTEXT,
};
pub use verify::{SignatureCheck, StreamVerifier, VerifiedArtefact, VerifyError};
pub use version::{Version, VersionError, VersionErrorKind, MAX_VERSION_LEN};

/// Re-exported so callers name the same key types this crate uses.
pub use ed25519_dalek::{SigningKey, VerifyingKey};
