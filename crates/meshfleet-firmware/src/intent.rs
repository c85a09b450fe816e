//! The operator's signed intent: permission to install one image that a node would refuse
//! on its own (a downgrade, a re-install, an image it rolled back).
//!
//! A manifest's signature says "this image is genuine". It does not say "install it now,
//! whatever runs": an old genuine image stays genuine for ever, so a node refuses an offer
//! that is not newer than what it runs, and an image it once rolled back. An [`Intent`] is
//! the operator's separate, signed statement that lifts those two refusals for one image
//! ([`Intent::sha256`]), on the nodes it names ([`Intent::nodes`], or every node of its
//! role and hardware), until it expires ([`Intent::expires`]). It travels with the OFFER
//! (`docs/ota-protocol.md`, 2.3) and relays pass it on unchanged; without it nothing in an
//! OFFER can make a node install an image that is not newer.
//!
//! Serialised as compact JSON, keys in declaration order:
//!
//! ```json
//! {"format":1,"role":"sensor","hardware":"ESP32","version":"1.9.4","sha256":"<64 hex>",
//!  "nodes":[3735928559],"issued":1767225600,"expires":1767312000,
//!  "key_id":"<16 hex>","signature":"<128 hex>"}
//! ```
//!
//! The signature is Ed25519 over [`INTENT_CONTEXT`] + the compact JSON with
//! `"signature":null` ([`Intent::signed_bytes`]): a domain separate from manifests, so a
//! signature over one can never pass for the other.
//!
//! # Rollback commands
//!
//! The same signed structure with `"action":"rollback"` (right after `format`) is the
//! operator's **rollback command** (`docs/ota-protocol.md`, ROLLBACK 707): "the nodes in
//! scope: boot your previous slot, which must hold the image `sha256` of `version`". One
//! signing scheme, one key, one replay counter: `action` is inside the signed bytes, so a
//! rollback command is never valid as an install intent ([`Intent::allows`] refuses it)
//! and an install intent never rolls a node back ([`Intent::allows_rollback`] refuses it).
//! An install intent leaves `action` out, so its JSON and signed bytes are what they were
//! before rollback commands existed; a build that does not know `action` refuses a
//! rollback command as malformed (`deny_unknown_fields`), never as an install intent.

#[allow(unused_imports)]
use crate::prelude::*;

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};

use crate::digest::{KeyId, ManifestSignature, Sha256Digest};
use crate::manifest::{valid_text, SignatureError};
use crate::{Manifest, Version};

/// Prefix of the signed bytes of an intent (domain separation from manifests).
pub const INTENT_CONTEXT: &[u8] = b"meshfleet-intent-v1\n";
/// The intent format this build reads and writes.
pub const INTENT_FORMAT: u32 = 1;
/// Most node ids one intent may name (it rides in every OFFER; 256 ids is ~3 KB).
pub const MAX_INTENT_NODES: usize = 256;
/// Longest intent JSON accepted.
pub const MAX_INTENT_LEN: usize = 8 * 1024;

/// What a signed [`Intent`] lets a node do.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum IntentAction {
    /// Install the image it names, although it is not newer or was rolled back (travels
    /// with an OFFER). The default, left out of the JSON.
    #[default]
    Install,
    /// Boot the previous slot, which must hold the image it names (the ROLLBACK command).
    Rollback,
}

impl IntentAction {
    /// Whether this is [`IntentAction::Install`] (left out of the JSON).
    pub fn is_install(&self) -> bool {
        *self == Self::Install
    }

    /// `install` or `rollback`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Install => "install",
            Self::Rollback => "rollback",
        }
    }
}

/// The operator's signed permission to install one image that is not newer than what a
/// node runs, or that the node rolled back. See the module docs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Intent {
    /// [`INTENT_FORMAT`].
    pub format: u32,
    /// What it allows; [`IntentAction::Install`] (left out) unless it is a rollback
    /// command.
    #[serde(default, skip_serializing_if = "IntentAction::is_install")]
    pub action: IntentAction,
    /// Role of the image (must equal the manifest's).
    pub role: String,
    /// Hardware of the image (must equal the manifest's).
    pub hardware: String,
    /// Version of the image (must equal the manifest's).
    pub version: Version,
    /// SHA-256 of the raw image it allows: the manifest's `sha256`.
    pub sha256: Sha256Digest,
    /// Scope: the node ids it applies to; empty means every node of `role` and `hardware`.
    pub nodes: Vec<u32>,
    /// When it was signed, Unix seconds. A node that installed an image under an intent
    /// refuses intents issued at or before that one (a used intent cannot be replayed).
    pub issued: u64,
    /// Unix seconds after which it is void. Nodes that know the time check it; see
    /// `docs/security.md` for nodes that do not.
    pub expires: u64,
    /// Id of the signing key.
    pub key_id: Option<KeyId>,
    /// Ed25519 signature over [`Intent::signed_bytes`].
    pub signature: Option<ManifestSignature>,
}

/// Why an intent does not allow installing an offered image.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IntentError {
    /// Not parseable, wrong format, too long, or out of bounds.
    #[error("malformed intent: {0}")]
    Malformed(String),
    /// The signature does not verify under the fleet key.
    #[error("intent signature: {0}")]
    Signature(#[from] SignatureError),
    /// It names another image (sha256, version, role or hardware differ).
    #[error("the intent names another image")]
    OtherImage,
    /// This node is not in its scope.
    #[error("node {0} is not in the intent's scope")]
    OutOfScope(u32),
    /// It expired.
    #[error("the intent expired at {expires}, it is now {now}")]
    Expired {
        /// Its expiry, Unix seconds.
        expires: u64,
        /// The node's time, Unix seconds.
        now: u64,
    },
    /// An install intent presented as a rollback command, or the other way round.
    #[error("the intent is a {got} intent, {wanted} was needed")]
    WrongAction {
        /// What it allows.
        got: &'static str,
        /// What the node was asked to do.
        wanted: &'static str,
    },
    /// It is not newer than an intent this node already acted on.
    #[error("the intent (issued {issued}) is not newer than one already used here ({used})")]
    Replayed {
        /// Its issue time.
        issued: u64,
        /// The issue time of the last intent this node installed under.
        used: u64,
    },
}

impl Intent {
    /// An unsigned intent for the image `m` describes, issued at `issued`, valid for
    /// `valid_for_s` seconds, for `nodes` (empty: all of its role and hardware).
    pub fn for_manifest(m: &Manifest, nodes: Vec<u32>, issued: u64, valid_for_s: u64) -> Self {
        Self {
            format: INTENT_FORMAT,
            action: IntentAction::Install,
            role: m.role.clone(),
            hardware: m.hardware.clone(),
            version: m.version.clone(),
            sha256: m.sha256,
            nodes,
            issued,
            expires: issued.saturating_add(valid_for_s),
            key_id: None,
            signature: None,
        }
    }

    /// An unsigned rollback command: the nodes in `nodes` (empty: every node of `role` and
    /// `hardware`) boot their previous slot, which must hold the image `sha256` of
    /// `version`; issued at `issued`, valid for `valid_for_s` seconds.
    pub fn rollback_to(
        role: impl Into<String>,
        hardware: impl Into<String>,
        version: Version,
        sha256: Sha256Digest,
        nodes: Vec<u32>,
        issued: u64,
        valid_for_s: u64,
    ) -> Self {
        Self {
            format: INTENT_FORMAT,
            action: IntentAction::Rollback,
            role: role.into(),
            hardware: hardware.into(),
            version,
            sha256,
            nodes,
            issued,
            expires: issued.saturating_add(valid_for_s),
            key_id: None,
            signature: None,
        }
    }

    /// Parses and bounds-checks intent JSON.
    pub fn from_json(json: &[u8]) -> Result<Self, IntentError> {
        if json.len() > MAX_INTENT_LEN {
            return Err(IntentError::Malformed(format!(
                "{} bytes, at most {MAX_INTENT_LEN}",
                json.len()
            )));
        }
        let i: Self =
            serde_json::from_slice(json).map_err(|e| IntentError::Malformed(e.to_string()))?;
        i.validate()?;
        Ok(i)
    }

    /// Bounds: format, text fields, scope size.
    pub fn validate(&self) -> Result<(), IntentError> {
        if self.format != INTENT_FORMAT {
            return Err(IntentError::Malformed(format!(
                "format {}, this build reads {INTENT_FORMAT}",
                self.format
            )));
        }
        if !valid_text(&self.role) || !valid_text(&self.hardware) {
            return Err(IntentError::Malformed("role or hardware".into()));
        }
        if self.nodes.len() > MAX_INTENT_NODES {
            return Err(IntentError::Malformed(format!(
                "{} nodes, at most {MAX_INTENT_NODES}",
                self.nodes.len()
            )));
        }
        Ok(())
    }

    /// Compact JSON, keys in declaration order.
    pub fn to_json(&self) -> Vec<u8> {
        // Strings, integers, lists and nulls into a Vec: cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// [`INTENT_CONTEXT`] + the compact JSON with `"signature":null`.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = INTENT_CONTEXT.to_vec();
        let unsigned = Self {
            signature: None,
            ..self.clone()
        };
        out.extend_from_slice(&unsigned.to_json());
        out
    }

    /// Signs with `key` (sets `key_id` and `signature`).
    pub fn sign(&mut self, key: &SigningKey) {
        self.key_id = Some(KeyId::of(&key.verifying_key()));
        self.signature = None;
        let s = key.sign(&self.signed_bytes());
        self.signature = Some(ManifestSignature(s.to_bytes()));
    }

    /// Checks the signature under `key` (strict Ed25519).
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

    /// Whether this intent lets node `node` install the image of `m`: signed by `key` (when
    /// the node has one; a node without a key checks integrity only, as for manifests),
    /// naming exactly that image, with `node` in scope, not expired at `now_unix` (when the
    /// node knows the time), and issued after `used` (the last intent this node installed
    /// under).
    pub fn allows(
        &self,
        m: &Manifest,
        node: u32,
        key: Option<&VerifyingKey>,
        now_unix: Option<u64>,
        used: u64,
    ) -> Result<(), IntentError> {
        self.validate()?;
        if let Some(k) = key {
            self.verify_signature(k)?;
        }
        if self.action != IntentAction::Install {
            return Err(IntentError::WrongAction {
                got: self.action.label(),
                wanted: IntentAction::Install.label(),
            });
        }
        if self.sha256 != m.sha256
            || self.version != m.version
            || self.role != m.role
            || self.hardware != m.hardware
        {
            return Err(IntentError::OtherImage);
        }
        self.check_scope_time(node, now_unix, used)
    }

    /// Whether this rollback command applies to node `node` of `role` on `hardware`:
    /// a rollback command ([`IntentAction::Rollback`]), signed by `key` (when the node
    /// has one), naming the node's role and hardware, with `node` in scope, not expired at
    /// `now_unix` (when the node knows the time), and issued after `used` (the last intent
    /// this node acted on: installed under, or rolled back by). Whether the previous slot
    /// holds the image it names is the boot record's business
    /// (`meshfleet_ota::boot::revert`).
    pub fn allows_rollback(
        &self,
        node: u32,
        role: &str,
        hardware: &str,
        key: Option<&VerifyingKey>,
        now_unix: Option<u64>,
        used: u64,
    ) -> Result<(), IntentError> {
        self.validate()?;
        if let Some(k) = key {
            self.verify_signature(k)?;
        }
        if self.action != IntentAction::Rollback {
            return Err(IntentError::WrongAction {
                got: self.action.label(),
                wanted: IntentAction::Rollback.label(),
            });
        }
        if self.role != role || self.hardware != hardware {
            return Err(IntentError::OtherImage);
        }
        self.check_scope_time(node, now_unix, used)
    }

    /// Scope, expiry and replay: the checks an install intent and a rollback command share.
    fn check_scope_time(
        &self,
        node: u32,
        now_unix: Option<u64>,
        used: u64,
    ) -> Result<(), IntentError> {
        if !self.nodes.is_empty() && !self.nodes.contains(&node) {
            return Err(IntentError::OutOfScope(node));
        }
        if let Some(now) = now_unix {
            if now >= self.expires {
                return Err(IntentError::Expired {
                    expires: self.expires,
                    now,
                });
            }
        }
        if self.issued <= used {
            return Err(IntentError::Replayed {
                issued: self.issued,
                used,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{pack, PackOptions};

    fn manifest(v: &str) -> Manifest {
        let o = PackOptions::new("sensor", "ESP32", Version::parse(v).unwrap());
        pack(&[7u8; 3000], o).unwrap().manifest().clone()
    }

    #[test]
    fn signed_intent_allows_only_its_image_scope_and_time() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let vk = key.verifying_key();
        let m = manifest("1.0.0");
        let mut i = Intent::for_manifest(&m, vec![5, 6], 1000, 100);
        i.sign(&key);
        let back = Intent::from_json(&i.to_json()).unwrap();
        assert_eq!(back, i);
        assert_eq!(back.allows(&m, 5, Some(&vk), Some(1050), 0), Ok(()));
        assert_eq!(
            back.allows(&m, 7, Some(&vk), Some(1050), 0),
            Err(IntentError::OutOfScope(7))
        );
        assert!(matches!(
            back.allows(&m, 5, Some(&vk), Some(1100), 0),
            Err(IntentError::Expired { .. })
        ));
        assert!(matches!(
            back.allows(&m, 5, Some(&vk), None, 1000),
            Err(IntentError::Replayed { .. })
        ));
        let other = manifest("1.0.1");
        assert_eq!(
            back.allows(&other, 5, Some(&vk), None, 0),
            Err(IntentError::OtherImage)
        );
        // Any change after signing breaks it: widening the scope, extending the expiry.
        let mut wider = back.clone();
        wider.nodes.clear();
        assert!(matches!(
            wider.allows(&m, 5, Some(&vk), None, 0),
            Err(IntentError::Signature(SignatureError::Mismatch { .. }))
        ));
        let mut later = back.clone();
        later.expires += 1;
        assert!(later.verify_signature(&vk).is_err());
        // Another key.
        let other_key = SigningKey::from_bytes(&[4; 32]).verifying_key();
        assert!(matches!(
            back.allows(&m, 5, Some(&other_key), None, 0),
            Err(IntentError::Signature(SignatureError::WrongKey { .. }))
        ));
        // A manifest signature is no intent signature (domain separation).
        let mut unsigned = Intent::for_manifest(&m, vec![], 1000, 100);
        unsigned.key_id = Some(KeyId::of(&vk));
        let mut signed_m = m.clone();
        signed_m.sign(&key);
        unsigned.signature = signed_m.signature;
        assert!(unsigned.verify_signature(&vk).is_err());
    }

    #[test]
    fn rollback_commands_and_install_intents_never_pass_for_each_other() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let vk = key.verifying_key();
        let m = manifest("1.0.0");
        let mut rb = Intent::rollback_to(
            "sensor",
            "ESP32",
            m.version.clone(),
            m.sha256,
            vec![5],
            2000,
            100,
        );
        rb.sign(&key);
        let json = String::from_utf8(rb.to_json()).unwrap();
        assert!(json.starts_with(r#"{"format":1,"action":"rollback","role":"sensor""#));
        let back = Intent::from_json(json.as_bytes()).unwrap();
        assert_eq!(back, rb);
        assert_eq!(
            back.allows_rollback(5, "sensor", "ESP32", Some(&vk), Some(2050), 1999),
            Ok(())
        );
        assert_eq!(
            back.allows_rollback(6, "sensor", "ESP32", Some(&vk), None, 0),
            Err(IntentError::OutOfScope(6))
        );
        assert_eq!(
            back.allows_rollback(5, "relay", "ESP32", Some(&vk), None, 0),
            Err(IntentError::OtherImage)
        );
        assert!(matches!(
            back.allows_rollback(5, "sensor", "ESP32", Some(&vk), Some(2100), 0),
            Err(IntentError::Expired { .. })
        ));
        assert!(matches!(
            back.allows_rollback(5, "sensor", "ESP32", Some(&vk), None, 2000),
            Err(IntentError::Replayed { .. })
        ));
        // A rollback command does not install its image...
        assert!(matches!(
            back.allows(&m, 5, Some(&vk), None, 0),
            Err(IntentError::WrongAction { .. })
        ));
        // ...and an install intent does not roll back.
        let mut install = Intent::for_manifest(&m, vec![5], 2000, 100);
        install.sign(&key);
        assert!(!String::from_utf8(install.to_json())
            .unwrap()
            .contains("action"));
        assert!(matches!(
            install.allows_rollback(5, "sensor", "ESP32", Some(&vk), None, 0),
            Err(IntentError::WrongAction { .. })
        ));
        // The action is signed: turning the install intent into a rollback breaks it.
        let mut forged = install.clone();
        forged.action = IntentAction::Rollback;
        assert!(matches!(
            forged.allows_rollback(5, "sensor", "ESP32", Some(&vk), None, 0),
            Err(IntentError::Signature(SignatureError::Mismatch { .. }))
        ));
        // Without a key only integrity and scope count (as for manifests).
        assert_eq!(
            back.allows_rollback(5, "sensor", "ESP32", None, None, 0),
            Ok(())
        );
    }

    #[test]
    fn bounds() {
        let m = manifest("1.0.0");
        let mut i = Intent::for_manifest(&m, vec![1; MAX_INTENT_NODES + 1], 1, 1);
        assert!(matches!(i.validate(), Err(IntentError::Malformed(_))));
        i.nodes.clear();
        i.format = 2;
        assert!(Intent::from_json(&i.to_json()).is_err());
        assert!(Intent::from_json(&vec![b' '; MAX_INTENT_LEN + 1]).is_err());
    }
}
