//! Artefacts streamed over MQTT in hashed pieces (`upload_begin`, `upload_piece`,
//! `upload_commit`; each a signed command like any other).
//!
//! * **begin** `{size, sha256, piece_size}`: an upload id (`u-` and 16 hex digits) and the
//!   piece count. At most `max-uploads` uploads at a time, each at most `max-artefact`
//!   bytes, so what a sender can make the gateway hold is bounded by their product.
//! * **piece** `{upload, index, sha256, data}` (`data` base64): the piece is checked
//!   against its own hash and its expected length (every piece is `piece_size` bytes but
//!   the last). Idempotent: the same piece again is answered `duplicate` and changes
//!   nothing; a different piece for an index already filled is refused.
//! * **commit** `{upload}`: every piece must be there (the reply lists missing ones), the
//!   whole must hash to `sha256`; then it is verified against the fleet key like an
//!   upload and stored by its hash (the artefact id `create` takes).
//! * An upload with no piece for `upload-timeout-s` is dropped (checked on every upload
//!   command), as is one whose commit failed verification. Uploads live in memory: a
//!   gateway restart drops them (the sender begins again).

use std::collections::HashMap;

use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The refusal for an upload id the gateway does not hold: uploads live in memory, so
/// after a gateway restart (or expiry) the sender must begin again.
fn unknown(id: &str) -> String {
    format!(
        "no upload {id}: it expired, was committed, or the gateway restarted \
         (uploads are held in memory); begin again"
    )
}

/// Smallest piece, bytes.
pub const MIN_PIECE: u32 = 1024;
/// Largest piece, bytes (base64 of it plus the envelope fits the default 64 KiB payload).
pub const MAX_PIECE: u32 = 32 * 1024;

/// What an upload command carries.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UploadArgs {
    /// The upload (piece, commit).
    #[serde(default)]
    pub(crate) upload: Option<String>,
    /// Total bytes (begin).
    #[serde(default)]
    pub(crate) size: Option<u64>,
    /// SHA-256 of the whole (begin) or of the piece (piece), hex.
    #[serde(default)]
    pub(crate) sha256: Option<String>,
    /// Bytes per piece (begin).
    #[serde(default)]
    pub(crate) piece_size: Option<u32>,
    /// Which piece, from 0 (piece).
    #[serde(default)]
    pub(crate) index: Option<u32>,
    /// The piece, base64 (piece).
    #[serde(default)]
    pub(crate) data: Option<String>,
}

/// Why an upload command was refused: a stable code and a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UploadRefusal {
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

fn no(code: &'static str, message: impl Into<String>) -> UploadRefusal {
    UploadRefusal {
        code,
        message: message.into(),
    }
}

fn hex32(s: Option<&str>, what: &str) -> Result<[u8; 32], UploadRefusal> {
    let s = s.ok_or_else(|| no("bad_command", format!("`{what}` is required")))?;
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return Err(no("bad_command", format!("`{what}` is 64 hex digits")));
    }
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16)
            .map_err(|_| no("bad_command", format!("`{what}` is 64 hex digits")))?;
    }
    Ok(out)
}

struct Upload {
    size: u64,
    sha256: [u8; 32],
    piece_size: u32,
    /// Piece hashes received, by index; `None` while missing.
    pieces: Vec<Option<[u8; 32]>>,
    data: Vec<u8>,
    last_activity: i64,
}

impl Upload {
    fn count(size: u64, piece: u32) -> u64 {
        size.div_ceil(u64::from(piece))
    }

    fn piece_len(&self, index: u32) -> usize {
        let start = u64::from(index) * u64::from(self.piece_size);
        (self.size - start).min(u64::from(self.piece_size)) as usize
    }

    fn missing(&self) -> Vec<u32> {
        self.pieces
            .iter()
            .enumerate()
            .filter(|(_, p)| p.is_none())
            .map(|(i, _)| i as u32)
            .collect()
    }
}

/// The uploads in progress.
pub(crate) struct Uploads {
    max_uploads: usize,
    max_size: u64,
    timeout_ms: i64,
    open: HashMap<String, Upload>,
    next: u64,
}

/// What a piece did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct PieceOutcome {
    /// It was there already (same bytes).
    pub(crate) duplicate: bool,
    /// Pieces still missing.
    pub(crate) missing: usize,
}

impl Uploads {
    pub(crate) fn new(max_uploads: usize, max_size: u64, timeout_ms: i64, seed: u64) -> Self {
        Self {
            max_uploads,
            max_size,
            timeout_ms,
            open: HashMap::new(),
            next: seed,
        }
    }

    /// Drops uploads idle for longer than the timeout; how many.
    pub(crate) fn expire(&mut self, now: i64) -> usize {
        let before = self.open.len();
        let t = self.timeout_ms;
        self.open.retain(|_, u| now - u.last_activity <= t);
        before - self.open.len()
    }

    /// Uploads in progress.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.open.len()
    }

    /// Starts an upload: its id and piece count.
    pub(crate) fn begin(
        &mut self,
        a: &UploadArgs,
        now: i64,
    ) -> Result<(String, u64), UploadRefusal> {
        self.expire(now);
        let size = a
            .size
            .ok_or_else(|| no("bad_command", "`size` is required"))?;
        let sha256 = hex32(a.sha256.as_deref(), "sha256")?;
        let piece_size = a
            .piece_size
            .ok_or_else(|| no("bad_command", "`piece_size` is required"))?;
        if size == 0 || size > self.max_size {
            return Err(no(
                "too_large",
                format!("size must be 1 to {} bytes (max-artefact)", self.max_size),
            ));
        }
        if !(MIN_PIECE..=MAX_PIECE).contains(&piece_size) {
            return Err(no(
                "bad_command",
                format!("piece_size must be {MIN_PIECE} to {MAX_PIECE}"),
            ));
        }
        if self.open.len() >= self.max_uploads {
            return Err(no(
                "busy",
                format!(
                    "{} uploads in progress (max-uploads); commit one or let it expire",
                    self.open.len()
                ),
            ));
        }
        // Unguessable enough that one operator cannot stumble into another's upload;
        // every command is signed anyway.
        self.next = self
            .next
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let id = format!("u-{:016x}", self.next ^ (now as u64).rotate_left(17));
        let n = Upload::count(size, piece_size);
        self.open.insert(
            id.clone(),
            Upload {
                size,
                sha256,
                piece_size,
                pieces: vec![None; n as usize],
                // Grown as pieces arrive, never past `size`.
                data: Vec::new(),
                last_activity: now,
            },
        );
        Ok((id, n))
    }

    fn get(&mut self, a: &UploadArgs) -> Result<&mut Upload, UploadRefusal> {
        let id = a
            .upload
            .as_deref()
            .ok_or_else(|| no("bad_command", "`upload` is required"))?;
        self.open
            .get_mut(id)
            .ok_or_else(|| no("unknown_upload", unknown(id)))
    }

    /// Stores one piece.
    pub(crate) fn piece(
        &mut self,
        a: &UploadArgs,
        now: i64,
    ) -> Result<PieceOutcome, UploadRefusal> {
        self.expire(now);
        let index = a
            .index
            .ok_or_else(|| no("bad_command", "`index` is required"))?;
        let want = hex32(a.sha256.as_deref(), "sha256")?;
        let data = a
            .data
            .as_deref()
            .ok_or_else(|| no("bad_command", "`data` is required"))?;
        let u = self.get(a)?;
        if index as usize >= u.pieces.len() {
            return Err(no(
                "bad_piece",
                format!("index {index}: the upload has {} pieces", u.pieces.len()),
            ));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data.as_bytes())
            .map_err(|_| no("bad_piece", "`data` is not base64"))?;
        let got: [u8; 32] = Sha256::digest(&bytes).into();
        if got != want {
            return Err(no(
                "piece_corrupt",
                format!("piece {index} does not match its sha256"),
            ));
        }
        let len = u.piece_len(index);
        if bytes.len() != len {
            return Err(no(
                "bad_piece",
                format!("piece {index} is {} bytes; expected {len}", bytes.len()),
            ));
        }
        u.last_activity = now;
        let slot = &mut u.pieces[index as usize];
        if let Some(had) = slot {
            if *had == want {
                let missing = u.missing().len();
                return Ok(PieceOutcome {
                    duplicate: true,
                    missing,
                });
            }
            return Err(no(
                "piece_conflict",
                format!("piece {index} was already received with other bytes"),
            ));
        }
        *slot = Some(want);
        let start = index as usize * u.piece_size as usize;
        if u.data.len() < start + len {
            u.data.resize(start + len, 0);
        }
        u.data[start..start + len].copy_from_slice(&bytes);
        Ok(PieceOutcome {
            duplicate: false,
            missing: u.missing().len(),
        })
    }

    /// Ends an upload: its bytes if complete and matching the announced hash. The upload
    /// is gone afterwards unless pieces are missing (the sender may still send them).
    pub(crate) fn commit(&mut self, a: &UploadArgs, now: i64) -> Result<Vec<u8>, UploadRefusal> {
        self.expire(now);
        let u = self.get(a)?;
        let missing = u.missing();
        if !missing.is_empty() {
            u.last_activity = now;
            let shown: Vec<String> = missing.iter().take(32).map(u32::to_string).collect();
            return Err(no(
                "missing_pieces",
                format!(
                    "{} pieces missing: {}{}",
                    missing.len(),
                    shown.join(", "),
                    if missing.len() > 32 { ", ..." } else { "" }
                ),
            ));
        }
        let id = a.upload.clone().unwrap_or_default();
        let Some(u) = self.open.remove(&id) else {
            return Err(no("unknown_upload", unknown(&id)));
        };
        let got: [u8; 32] = Sha256::digest(&u.data).into();
        if got != u.sha256 {
            return Err(no(
                "hash_mismatch",
                "the pieces do not hash to the announced sha256; the upload is dropped",
            ));
        }
        Ok(u.data)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn begin_args(body: &[u8], piece: u32) -> UploadArgs {
        UploadArgs {
            upload: None,
            size: Some(body.len() as u64),
            sha256: Some(hex(&Sha256::digest(body))),
            piece_size: Some(piece),
            index: None,
            data: None,
        }
    }

    fn piece_args(id: &str, body: &[u8], piece: usize, i: usize) -> UploadArgs {
        let chunk = &body[i * piece..((i + 1) * piece).min(body.len())];
        UploadArgs {
            upload: Some(id.into()),
            size: None,
            sha256: Some(hex(&Sha256::digest(chunk))),
            piece_size: None,
            index: Some(i as u32),
            data: Some(base64::engine::general_purpose::STANDARD.encode(chunk)),
        }
    }

    fn commit_args(id: &str) -> UploadArgs {
        UploadArgs {
            upload: Some(id.into()),
            size: None,
            sha256: None,
            piece_size: None,
            index: None,
            data: None,
        }
    }

    #[test]
    fn pieces_in_any_order_with_repeats_make_the_whole() {
        let body: Vec<u8> = (0..5000u32).map(|i| (i * 13 % 256) as u8).collect();
        let mut up = Uploads::new(2, 1 << 20, 60_000, 1);
        let (id, n) = up.begin(&begin_args(&body, 1024), 0).unwrap();
        assert_eq!(n, 5);
        for i in [4, 0, 2, 1, 3] {
            let o = up.piece(&piece_args(&id, &body, 1024, i), 1).unwrap();
            assert!(!o.duplicate);
        }
        let again = up.piece(&piece_args(&id, &body, 1024, 2), 2).unwrap();
        assert_eq!(
            again,
            PieceOutcome {
                duplicate: true,
                missing: 0
            }
        );
        assert_eq!(up.commit(&commit_args(&id), 3).unwrap(), body);
        assert_eq!(up.len(), 0);
    }

    #[test]
    fn bad_pieces_and_limits_are_refused() {
        let body = vec![7u8; 3000];
        let mut up = Uploads::new(1, 4096, 60_000, 1);
        assert_eq!(
            up.begin(&begin_args(&vec![0; 5000], 1024), 0)
                .unwrap_err()
                .code,
            "too_large"
        );
        assert_eq!(
            up.begin(&begin_args(&body, 100), 0).unwrap_err().code,
            "bad_command"
        );
        let (id, _) = up.begin(&begin_args(&body, 1024), 0).unwrap();
        assert_eq!(
            up.begin(&begin_args(&body, 1024), 0).unwrap_err().code,
            "busy"
        );
        let mut corrupt = piece_args(&id, &body, 1024, 0);
        corrupt.data = Some(base64::engine::general_purpose::STANDARD.encode([8u8; 1024]));
        assert_eq!(up.piece(&corrupt, 1).unwrap_err().code, "piece_corrupt");
        let mut short = piece_args(&id, &body, 1024, 0);
        short.data = Some(base64::engine::general_purpose::STANDARD.encode([7u8; 10]));
        short.sha256 = Some(hex(&Sha256::digest([7u8; 10])));
        assert_eq!(up.piece(&short, 1).unwrap_err().code, "bad_piece");
        let mut beyond = piece_args(&id, &body, 1024, 0);
        beyond.index = Some(3);
        assert_eq!(up.piece(&beyond, 1).unwrap_err().code, "bad_piece");
        up.piece(&piece_args(&id, &body, 1024, 0), 1).unwrap();
        let e = up.commit(&commit_args(&id), 2).unwrap_err();
        assert_eq!(e.code, "missing_pieces");
        assert!(e.message.contains("1, 2"), "{}", e.message);
        // Still there: the missing pieces may come.
        assert_eq!(up.len(), 1);
        // Idle past the timeout: gone.
        assert_eq!(up.expire(2 + 60_001), 1);
        assert_eq!(
            up.piece(&piece_args(&id, &body, 1024, 1), 60_004)
                .unwrap_err()
                .code,
            "unknown_upload"
        );
    }

    #[test]
    fn a_whole_that_does_not_match_its_hash_is_dropped() {
        let body = vec![1u8; 2048];
        let mut up = Uploads::new(2, 1 << 20, 60_000, 1);
        let mut args = begin_args(&body, 1024);
        args.sha256 = Some("00".repeat(32));
        let (id, _) = up.begin(&args, 0).unwrap();
        up.piece(&piece_args(&id, &body, 1024, 0), 1).unwrap();
        up.piece(&piece_args(&id, &body, 1024, 1), 1).unwrap();
        assert_eq!(
            up.commit(&commit_args(&id), 2).unwrap_err().code,
            "hash_mismatch"
        );
        assert_eq!(up.len(), 0);
    }
}
