//! Verification: of a whole artefact, or chunk by chunk as a receiver gets them.

#[allow(unused_imports)]
use crate::prelude::*;

use core::borrow::Borrow;
use core::fmt;

use ed25519_dalek::VerifyingKey;
use md5::Md5;
use sha2::{Digest as _, Sha256};

use crate::artefact::Artefact;
use crate::codec::{DecodeError, StreamDecoder, WindowError};
use crate::digest::{ChunkHash, KeyId, Md5Digest, Sha256Digest};
use crate::manifest::{Manifest, ManifestError, SignatureError};

/// Why an artefact, or a stream of its chunks, failed verification.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The signature is missing, by another key, or does not match.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// A chunk's bytes do not hash to the manifest's value: corrupted or tampered in transit.
    /// The chunk was not used; a receiver can request it again.
    #[error("chunk {index} hash mismatch")]
    ChunkHash {
        /// 0-based chunk index.
        index: u32,
    },
    /// A chunk has the wrong length. The chunk was not used.
    #[error("chunk {index} is {found} bytes, expected {expected}")]
    ChunkLength {
        /// 0-based chunk index.
        index: u32,
        /// Length the manifest implies.
        expected: usize,
        /// Length received.
        found: usize,
    },
    /// A chunk index beyond the last chunk.
    #[error("there is no chunk {index}: the artefact has {chunk_count} chunks")]
    NoSuchChunk {
        /// The index given.
        index: u32,
        /// Chunks in the artefact.
        chunk_count: u32,
    },
    /// Chunks must be pushed in order, because the payload is decoded as a stream.
    #[error("chunk {found} pushed out of order; chunk {expected} is next")]
    OutOfOrder {
        /// The next chunk expected.
        expected: u32,
        /// The chunk pushed.
        found: u32,
    },
    /// [`StreamVerifier::finish`] was called before every chunk was pushed.
    #[error("only {received} of {chunk_count} chunks were received")]
    MissingChunks {
        /// Chunks pushed.
        received: u32,
        /// Chunks in the artefact.
        chunk_count: u32,
    },
    /// The payload as a whole does not hash to `payload_sha256`.
    #[error(
        "payload sha256 mismatch: the payload hashes to {found}, the manifest says {expected}"
    )]
    PayloadSha256 {
        /// Manifest value.
        expected: Sha256Digest,
        /// Computed value.
        found: Sha256Digest,
    },
    /// The payload does not decode to an image of the declared size (or needs a larger
    /// window than the manifest declares).
    #[error("decoding the payload failed: {0}")]
    Decode(#[from] DecodeError),
    /// The manifest's window is not valid for its codec, so no decoder can be built.
    #[error(transparent)]
    Window(#[from] WindowError),
    /// The decoded image does not hash to `sha256`.
    #[error("sha256 mismatch: the image hashes to {found}, the manifest says {expected}")]
    Sha256 {
        /// Manifest value.
        expected: Sha256Digest,
        /// Computed value.
        found: Sha256Digest,
    },
    /// The decoded image does not hash to `md5`.
    #[error("md5 mismatch: the image hashes to {found}, the manifest says {expected}")]
    Md5 {
        /// Manifest value.
        expected: Md5Digest,
        /// Computed value.
        found: Md5Digest,
    },
}

/// What was established about the signature by a successful verification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureCheck {
    /// The manifest is signed by the given key.
    Verified(KeyId),
    /// No key was given, so only integrity was checked ("unsigned-check only"): the image
    /// matches the manifest, but anyone could have written both. `claimed_key` is the key id
    /// the manifest names, if it is signed; it was not checked.
    NotChecked {
        /// Key id named by the manifest, unverified.
        claimed_key: Option<KeyId>,
    },
}

impl fmt::Display for SignatureCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Verified(id) => write!(f, "signature verified (key {id})"),
            Self::NotChecked {
                claimed_key: Some(id),
            } => write!(
                f,
                "integrity only: signature by key {id} not checked (no key given)"
            ),
            Self::NotChecked { claimed_key: None } => {
                f.write_str("integrity only: the artefact is unsigned")
            }
        }
    }
}

/// An artefact that passed [`Artefact::verify`], with its decoded image.
#[derive(Clone, Debug)]
pub struct VerifiedArtefact<'a> {
    artefact: &'a Artefact,
    image: Vec<u8>,
    signature: SignatureCheck,
}

impl<'a> VerifiedArtefact<'a> {
    /// The artefact.
    pub fn artefact(&self) -> &'a Artefact {
        self.artefact
    }

    /// Its manifest.
    pub fn manifest(&self) -> &'a Manifest {
        self.artefact.manifest()
    }

    /// The raw image: what a stock painlessMesh node receives, and what gets flashed.
    pub fn image(&self) -> &[u8] {
        &self.image
    }

    /// Takes the raw image.
    pub fn into_image(self) -> Vec<u8> {
        self.image
    }

    /// What was established about the signature.
    pub fn signature(&self) -> SignatureCheck {
        self.signature
    }
}

impl Artefact {
    /// Verifies everything and decodes the image.
    ///
    /// In order: the signature (if `key` is given: the manifest must be signed by exactly that
    /// key), every chunk hash, the payload SHA-256, decoding to exactly `size` bytes, the image
    /// SHA-256 and MD5. With `key = None` only integrity is checked, which protects against
    /// corruption but not against someone who rewrote the whole file; the result says so
    /// ([`SignatureCheck::NotChecked`]). The payload length was already checked when the
    /// artefact was built ([`ParseError::Truncated`](crate::ParseError::Truncated)).
    ///
    /// Memory: the image plus a [`StreamDecoder`]; the payload is not copied.
    pub fn verify(&self, key: Option<&VerifyingKey>) -> Result<VerifiedArtefact<'_>, VerifyError> {
        let manifest = self.manifest();
        let signature = match key {
            Some(key) => SignatureCheck::Verified(manifest.verify_signature(key)?),
            None => SignatureCheck::NotChecked {
                claimed_key: manifest.key_id,
            },
        };
        let mut verifier = StreamVerifier::new_validated(manifest)?;
        // The declared size is trusted for the reservation only as far as the actual payload
        // could decode to: DEFLATE expands at most 1032:1.
        let reserve = manifest
            .size
            .min((self.payload().len() as u64).saturating_mul(1032));
        let mut image = Vec::with_capacity(usize::try_from(reserve).unwrap_or(0));
        for (index, chunk) in (0u32..).zip(self.chunks()) {
            verifier.push_chunk(index, chunk, |bytes| image.extend_from_slice(bytes))?;
        }
        verifier.finish()?;
        Ok(VerifiedArtefact {
            artefact: self,
            image,
            signature,
        })
    }
}

/// Verifies and decodes an artefact's payload chunk by chunk, as a receiver gets it, with
/// memory bounded by the manifest, three hash states and one [`StreamDecoder`] with the
/// manifest's window ([`Manifest::decoder_footprint`]).
///
/// Use: check the manifest's signature first ([`Manifest::verify_signature`]), then push each
/// chunk in order with [`StreamVerifier::push_chunk`], writing the image bytes it hands to the
/// sink to the inactive partition, then call [`StreamVerifier::finish`] and only activate the
/// image if it succeeds: image bytes reach the sink before the whole image is known to match.
///
/// A chunk with a wrong length or hash is rejected *before* it touches any state, so the
/// receiver can request it again and push the retry. Any other error leaves the verifier spent.
///
/// `M` is anything that borrows a [`Manifest`]: the manifest itself, `&Manifest`, `Arc<Manifest>`.
#[derive(Debug)]
pub struct StreamVerifier<M: Borrow<Manifest> = Manifest> {
    manifest: M,
    next: u32,
    payload_sha256: Sha256,
    image_sha256: Sha256,
    image_md5: Md5,
    decoder: StreamDecoder,
}

impl<M: Borrow<Manifest>> StreamVerifier<M> {
    /// A verifier for the artefact `manifest` describes. Refuses an invalid manifest.
    /// Its decoder has exactly the manifest's window.
    pub fn new(manifest: M) -> Result<Self, ManifestError> {
        manifest.borrow().validate()?;
        Ok(Self::new_validated(manifest)?)
    }

    /// For manifests already validated (those inside an [`Artefact`]); the window was
    /// checked then, so this does not fail in practice.
    pub(crate) fn new_validated(manifest: M) -> Result<Self, WindowError> {
        let m = manifest.borrow();
        let decoder = StreamDecoder::new(m.codec, m.window, m.size)?;
        Ok(Self {
            manifest,
            next: 0,
            payload_sha256: Sha256::new(),
            image_sha256: Sha256::new(),
            image_md5: Md5::new(),
            decoder,
        })
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        self.manifest.borrow()
    }

    /// Index of the next chunk to push (equal to the chunk count when all were pushed).
    pub fn next_chunk(&self) -> u32 {
        self.next
    }

    /// True once every chunk was pushed.
    pub fn is_complete(&self) -> bool {
        self.next == self.manifest().chunk_count
    }

    /// Checks chunk `index` (length and hash), then decodes it, handing image bytes to `sink`.
    /// Needs a full manifest (with the chunk table); with a lean one every chunk fails its
    /// hash check: use [`StreamVerifier::push_chunk_with_hash`].
    pub fn push_chunk(
        &mut self,
        index: u32,
        bytes: &[u8],
        sink: impl FnMut(&[u8]),
    ) -> Result<(), VerifyError> {
        match self.manifest.borrow().chunk_hash(index).copied() {
            Some(expected) => self.push_chunk_with_hash(index, bytes, &expected, sink),
            // A lean manifest has no hash to match: the all-zero placeholder fails the hash
            // check like a wrong hash would, after the index, order and length checks.
            None => self.push_chunk_with_hash(index, bytes, &ChunkHash([0; 16]), sink),
        }
    }

    /// As [`StreamVerifier::push_chunk`], checking the chunk against `expected`: its hash
    /// from a hash page the caller verified ([`Manifest::verify_page`]).
    pub fn push_chunk_with_hash(
        &mut self,
        index: u32,
        bytes: &[u8],
        expected_hash: &ChunkHash,
        mut sink: impl FnMut(&[u8]),
    ) -> Result<(), VerifyError> {
        let manifest = self.manifest.borrow();
        let chunk_count = manifest.chunk_count;
        if index >= chunk_count {
            return Err(VerifyError::NoSuchChunk { index, chunk_count });
        }
        if index != self.next {
            return Err(VerifyError::OutOfOrder {
                expected: self.next,
                found: index,
            });
        }
        // `validate` guarantees a range and a hash for every index below `chunk_count`.
        let expected = manifest.chunk_len(index).unwrap_or(0);
        if bytes.len() != expected {
            return Err(VerifyError::ChunkLength {
                index,
                expected,
                found: bytes.len(),
            });
        }
        if *expected_hash != ChunkHash::of(bytes) {
            return Err(VerifyError::ChunkHash { index });
        }
        self.next += 1;
        self.payload_sha256.update(bytes);
        let (sha, md5) = (&mut self.image_sha256, &mut self.image_md5);
        self.decoder.push(bytes, |out| {
            sha.update(out);
            md5.update(out);
            sink(out);
        })?;
        Ok(())
    }

    /// Checks that everything arrived and matches: chunk count, payload SHA-256, complete
    /// decoding to the declared size, image SHA-256 and MD5.
    pub fn finish(self) -> Result<(), VerifyError> {
        let manifest = self.manifest.borrow();
        if self.next != manifest.chunk_count {
            return Err(VerifyError::MissingChunks {
                received: self.next,
                chunk_count: manifest.chunk_count,
            });
        }
        let payload = Sha256Digest(self.payload_sha256.finalize().into());
        if payload != manifest.payload_sha256 {
            return Err(VerifyError::PayloadSha256 {
                expected: manifest.payload_sha256,
                found: payload,
            });
        }
        self.decoder.finish()?;
        let sha256 = Sha256Digest(self.image_sha256.finalize().into());
        if sha256 != manifest.sha256 {
            return Err(VerifyError::Sha256 {
                expected: manifest.sha256,
                found: sha256,
            });
        }
        let md5 = Md5Digest(self.image_md5.finalize().into());
        if md5 != manifest.md5 {
            return Err(VerifyError::Md5 {
                expected: manifest.md5,
                found: md5,
            });
        }
        Ok(())
    }
}
