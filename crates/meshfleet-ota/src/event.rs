//! What the OTA plugins tell the application (through [`meshfleet_mesh::Event::Plugin`]).

#[allow(unused_imports)]
use crate::prelude::*;

use meshfleet_mesh::{Duration, NodeId, PluginEvent};
use serde_json::json;

use crate::store::StoreError;

/// Why an announce was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnnounceReason {
    /// The offer started.
    Start,
    /// The periodic timer (the library's 60 s task).
    Periodic,
    /// New nodes joined the mesh.
    Join,
}

impl AnnounceReason {
    fn label(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Periodic => "periodic",
            Self::Join => "join",
        }
    }
}

/// Why a node refused an offer: the typed form of the refusal's text, sent along in the
/// STATUS `refusal` key and in outcome reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Refusal {
    /// The manifest does not parse or validate.
    InvalidManifest,
    /// The manifest's signature does not verify under the node's key.
    Signature,
    /// Another role.
    Role,
    /// Other hardware.
    Hardware,
    /// A codec the node does not decode.
    Codec,
    /// A larger DEFLATE window than the node can give.
    Window,
    /// Payload and chunk table exceed the node's staging.
    Staging,
    /// The running image is on trial.
    OnTrial,
    /// The node rolled this image back, and no valid intent names it.
    RolledBack,
    /// Not newer than the running version, and no valid intent names it.
    Downgrade,
    /// Another campaign in progress, not older.
    Busy,
    /// The node is the source of another campaign.
    Source,
    /// The node's store failed.
    StoreFailed,
    /// The node is not in the campaign's scope (2.3.2).
    OutOfScope,
    /// A refusal this build does not know (from a newer peer).
    Other,
}

impl Refusal {
    /// Every refusal, for parsing.
    const ALL: [Self; 15] = [
        Self::InvalidManifest,
        Self::Signature,
        Self::Role,
        Self::Hardware,
        Self::Codec,
        Self::Window,
        Self::Staging,
        Self::OnTrial,
        Self::RolledBack,
        Self::Downgrade,
        Self::Busy,
        Self::Source,
        Self::StoreFailed,
        Self::OutOfScope,
        Self::Other,
    ];

    /// Its snake_case name (the wire form).
    pub fn label(self) -> &'static str {
        match self {
            Self::InvalidManifest => "invalid_manifest",
            Self::Signature => "signature",
            Self::Role => "role",
            Self::Hardware => "hardware",
            Self::Codec => "codec",
            Self::Window => "window",
            Self::Staging => "staging",
            Self::OnTrial => "on_trial",
            Self::RolledBack => "rolled_back",
            Self::Downgrade => "downgrade",
            Self::Busy => "busy",
            Self::Source => "source",
            Self::StoreFailed => "store_failed",
            Self::OutOfScope => "out_of_scope",
            Self::Other => "other",
        }
    }

    /// Parses [`Refusal::label`]; unknown names are [`Refusal::Other`].
    pub fn from_label(s: &str) -> Self {
        Self::ALL
            .into_iter()
            .find(|r| r.label() == s)
            .unwrap_or(Self::Other)
    }

    /// The node cannot take this image at all (role, hardware, codec, window, staging):
    /// an *incompatible* node rather than one that refused.
    pub fn is_incompatible(self) -> bool {
        matches!(
            self,
            Self::Role | Self::Hardware | Self::Codec | Self::Window | Self::Staging
        )
    }
}

/// How one node ended a campaign, as it reported to the campaign's origin
/// ([`OtaEvent::NodeReport`], [`crate::MeshfleetOta::outcomes`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeOutcome {
    /// It verified and committed the image.
    Updated,
    /// It already runs the image.
    AlreadyCurrent,
    /// It refused the offer.
    Refused(Refusal),
    /// It cannot take the image (role, hardware, codec, window or staging).
    Incompatible(Refusal),
    /// The complete image failed verification, or its store failed.
    Failed,
    /// It committed the image, booted it on trial and rolled it back.
    RolledBack,
}

impl NodeOutcome {
    /// The wire form: (`outcome`, `refusal`).
    pub fn labels(self) -> (&'static str, Option<&'static str>) {
        match self {
            Self::Updated => ("updated", None),
            Self::AlreadyCurrent => ("already_current", None),
            Self::Refused(r) => ("refused", Some(r.label())),
            Self::Incompatible(r) => ("incompatible", Some(r.label())),
            Self::Failed => ("failed", None),
            Self::RolledBack => ("rolled_back", None),
        }
    }

    /// Parses [`NodeOutcome::labels`].
    pub fn from_labels(outcome: &str, refusal: Option<&str>) -> Option<Self> {
        let r = Refusal::from_label(refusal.unwrap_or(""));
        Some(match outcome {
            "updated" => Self::Updated,
            "already_current" => Self::AlreadyCurrent,
            "refused" => Self::Refused(r),
            "incompatible" => Self::Incompatible(r),
            "failed" => Self::Failed,
            "rolled_back" => Self::RolledBack,
            _ => return None,
        })
    }

    /// The outcome of a refusal `r`.
    pub fn of_refusal(r: Refusal) -> Self {
        if r.is_incompatible() {
            Self::Incompatible(r)
        } else {
            Self::Refused(r)
        }
    }
}

/// Why a node refused a signed rollback command (ROLLBACK 707): the typed form of the
/// ROLLBACK_RESULT's `refusal`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum RollbackRefusal {
    /// The command does not parse or is out of bounds.
    Malformed,
    /// Its signature does not verify under the node's key (never answered on the wire:
    /// a forged command gets no reply; only the node's own event says so).
    Signature,
    /// An install intent, not a rollback command.
    WrongAction,
    /// It names another role or hardware.
    OtherRole,
    /// This node is not in its scope.
    OutOfScope,
    /// It expired.
    Expired,
    /// It is not newer than the last intent this node acted on.
    Replayed,
    /// The previous slot holds no image or another one than it names.
    NotInPreviousSlot,
    /// The previous slot no longer hashes to its record.
    Damaged,
    /// The node's store failed.
    StoreFailed,
    /// A refusal this build does not know (from a newer peer).
    Other,
}

impl RollbackRefusal {
    const ALL: [Self; 11] = [
        Self::Malformed,
        Self::Signature,
        Self::WrongAction,
        Self::OtherRole,
        Self::OutOfScope,
        Self::Expired,
        Self::Replayed,
        Self::NotInPreviousSlot,
        Self::Damaged,
        Self::StoreFailed,
        Self::Other,
    ];

    /// Its snake_case name (the wire form).
    pub fn label(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Signature => "signature",
            Self::WrongAction => "wrong_action",
            Self::OtherRole => "other_role",
            Self::OutOfScope => "out_of_scope",
            Self::Expired => "expired",
            Self::Replayed => "replayed",
            Self::NotInPreviousSlot => "not_in_previous_slot",
            Self::Damaged => "damaged",
            Self::StoreFailed => "store_failed",
            Self::Other => "other",
        }
    }

    /// Parses [`RollbackRefusal::label`]; unknown names are [`RollbackRefusal::Other`].
    pub fn from_label(s: &str) -> Self {
        Self::ALL
            .into_iter()
            .find(|r| r.label() == s)
            .unwrap_or(Self::Other)
    }
}

/// What a node did with a signed rollback command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RollbackOutcome {
    /// Its previous slot boots from its next start on (a driver with
    /// `ApplyMode::Now` starts it at once); the image it left is on its rolled-back list.
    Reverted,
    /// It already runs the named image, nothing pending: nothing to do (also the answer
    /// to the same command sent again after it reverted).
    AlreadyThere,
    /// It refused.
    Refused(RollbackRefusal),
}

impl RollbackOutcome {
    /// The wire form: (`outcome`, `refusal`).
    pub fn labels(self) -> (&'static str, Option<&'static str>) {
        match self {
            Self::Reverted => ("reverted", None),
            Self::AlreadyThere => ("already_there", None),
            Self::Refused(r) => ("refused", Some(r.label())),
        }
    }

    /// Parses [`RollbackOutcome::labels`].
    pub fn from_labels(outcome: &str, refusal: Option<&str>) -> Option<Self> {
        Some(match outcome {
            "reverted" => Self::Reverted,
            "already_there" => Self::AlreadyThere,
            "refused" => Self::Refused(RollbackRefusal::from_label(refusal.unwrap_or(""))),
            _ => return None,
        })
    }
}

/// Why an unfinished campaign was abandoned ([`OtaEvent::CampaignAbandoned`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AbandonReason {
    /// No unit arrived for [`crate::MeshfleetConfig::campaign_timeout`].
    NoProgress,
    /// A newer signed version (or one the operator's intent names) was offered.
    Superseded {
        /// The campaign that replaces it.
        by: u32,
    },
}

impl AbandonReason {
    fn label(self) -> &'static str {
        match self {
            Self::NoProgress => "no_progress",
            Self::Superseded { .. } => "superseded",
        }
    }
}

/// What a neighbour lacks to decode a campaign's payload ([`OtaEvent::PeerCannotDecode`]),
/// from its CAPS.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeGap {
    /// It does not list the payload's codec.
    Codec {
        /// The payload's codec.
        needed: String,
        /// The codecs it lists.
        listed: Vec<String>,
    },
    /// Its decompression window is smaller than the payload needs.
    Window {
        /// Bytes the payload needs.
        needed: u32,
        /// Bytes it can give.
        offered: u32,
    },
}

impl core::fmt::Display for DecodeGap {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Codec { needed, listed } => write!(
                f,
                "it does not decode codec {needed} (it lists {})",
                listed.join(", ")
            ),
            Self::Window { needed, offered } => write!(
                f,
                "the payload needs a {needed}-byte decompression window, it can give {offered}"
            ),
        }
    }
}

/// Why a stock update failed ([`OtaEvent::UpdateFailed`]); it restarts from part 0.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UpdateFailure {
    /// A part was not valid base64.
    BadPart,
    /// The image grew past the configured maximum.
    TooLarge {
        /// The maximum, bytes.
        limit: u64,
    },
    /// The received image's MD5 differs from the announced one.
    Md5Mismatch {
        /// The MD5 the received bytes hash to.
        got: String,
    },
}

impl core::fmt::Display for UpdateFailure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::BadPart => f.write_str("part is not valid base64"),
            Self::TooLarge { limit } => write!(f, "image exceeds {limit} bytes"),
            Self::Md5Mismatch { got } => write!(f, "md5 mismatch: image hashes to {got}"),
        }
    }
}

/// Why a meshfleet campaign's complete image was not applied ([`OtaEvent::VerifyFailed`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerifyFailure {
    /// The image failed verification (hashes, size, signature, missing chunks).
    Image(meshfleet_firmware::VerifyError),
    /// The payload does not decode (a corrupt stream under a valid chunk list).
    Undecodable,
    /// The store failed; the node stops taking part until restarted.
    Store(StoreError),
}

impl core::fmt::Display for VerifyFailure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Image(e) => core::fmt::Display::fmt(e, f),
            Self::Undecodable => f.write_str("the payload does not decode"),
            Self::Store(e) => write!(f, "store failed: {e}"),
        }
    }
}

/// One OTA happening. Downcast a [`PluginEvent`] with `event.downcast_ref::<OtaEvent>()`.
///
/// Every variant has a stable JSON form (`{"event": "<snake_case name>", ...}`) for `--json`
/// output.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OtaEvent {
    // ---- stock sender ----
    /// An Announce (10) went out.
    AnnounceSent {
        /// Why.
        reason: AnnounceReason,
        /// Announces left on the periodic timer.
        remaining: u32,
    },
    /// A part was served to `node`.
    PartServed {
        /// The requester.
        node: NodeId,
        /// 0-based part.
        part: u32,
        /// Parts in the image.
        no_part: u32,
        /// Parts served to this node so far (retries included).
        served: u32,
    },
    /// `node` requested and got the last part.
    NodeCompleted {
        /// The node.
        node: NodeId,
        /// From its first request to the last part.
        took: Duration,
    },
    /// A DataRequest was not answered.
    RequestIgnored {
        /// The requester.
        node: NodeId,
        /// Why (`md5`, `role`, `hardware`, `part_out_of_range`, `no_route`, `malformed`).
        reason: &'static str,
    },

    // ---- stock receiver ----
    /// The receiver started (or resumed) fetching an image.
    UpdateStarted {
        /// MD5 of the image.
        md5: String,
        /// Parts in the image.
        no_part: u32,
        /// The part it asks for first.
        from_part: u32,
        /// The announcer.
        sender: NodeId,
    },
    /// A part was written.
    PartReceived {
        /// 0-based part.
        part: u32,
        /// Parts in the image.
        no_part: u32,
    },
    /// A broadcast part arrived out of sequence: the receiver left broadcast mode and asks
    /// for the missing part by unicast (the Alteriom fallback).
    BroadcastGap {
        /// The part it needs.
        expected: u32,
        /// The part that arrived.
        got: u32,
    },
    /// The request task ran out of retries; the update is abandoned until the next announce.
    GaveUp {
        /// MD5 of the image.
        md5: String,
        /// The part it was waiting for.
        part: u32,
    },
    /// The image was received and its MD5 matches: it is installed (the library reboots
    /// 2 s later).
    Updated {
        /// MD5 of the new image.
        md5: String,
        /// Image size.
        size: u64,
    },
    /// The update failed (write error, MD5 mismatch); it restarts from part 0 on the next
    /// announce.
    UpdateFailed {
        /// MD5 announced.
        md5: String,
        /// Why.
        reason: UpdateFailure,
    },

    // ---- meshfleet protocol ----
    /// A neighbour's capabilities arrived.
    CapsReceived {
        /// The neighbour.
        peer: NodeId,
        /// Whether it accepts binary frames.
        binary: bool,
    },
    /// No CAPS from a neighbour in time: it is treated as a stock node.
    NeighbourIsStock {
        /// The neighbour.
        peer: NodeId,
    },
    /// An offer was accepted: the transfer starts (or resumes).
    OfferAccepted {
        /// Campaign id.
        campaign: u32,
        /// Firmware version offered.
        version: String,
        /// Chunks already held (resume).
        have: u32,
        /// Chunks in the payload.
        chunks: u32,
    },
    /// An offer was refused (by this node).
    OfferRejected {
        /// The neighbour that offered.
        peer: NodeId,
        /// Why.
        kind: Refusal,
        /// Why, for a human.
        reason: String,
    },
    /// A chunk was dropped because it failed verification.
    ChunkRejected {
        /// The neighbour it came from.
        peer: NodeId,
        /// Chunk index.
        index: u32,
        /// Why (`hash`, `length`, `index`, `campaign`).
        reason: &'static str,
    },
    /// Transfer progress (emitted every ~10% and at the end).
    Progress {
        /// Campaign id.
        campaign: u32,
        /// Chunks held.
        have: u32,
        /// Chunks in the payload.
        chunks: u32,
    },
    /// Every chunk is held and the image verified (sha256, md5, size, signature).
    Verified {
        /// Campaign id.
        campaign: u32,
    },
    /// The verified image was committed to the inactive slot and is pending boot: the driver
    /// runs its post-update hook (reboot).
    Applied {
        /// Campaign id.
        campaign: u32,
        /// New version.
        version: String,
    },
    /// Verification of the complete image failed; the staged data was discarded.
    VerifyFailed {
        /// Campaign id.
        campaign: u32,
        /// Why.
        reason: VerifyFailure,
    },
    /// A neighbour's CAPS show it cannot decode the campaign's payload (codec not listed, or
    /// a smaller `window` than the manifest needs), so it is not offered the campaign. Once
    /// per neighbour link and campaign. The driver can serve it otherwise (the stock flow,
    /// or an artefact packed with a window it can hold).
    PeerCannotDecode {
        /// The neighbour.
        peer: NodeId,
        /// Campaign id.
        campaign: u32,
        /// What it lacks, with the values.
        reason: DecodeGap,
    },
    /// A neighbour refused the offer we made it (its STATUS `reject`). Distinct from
    /// [`OtaEvent::OfferRejected`], which is *this* node refusing an offer it received, so a
    /// source never reports its own refusals as a receiver's failure.
    PeerRefused {
        /// The neighbour.
        peer: NodeId,
        /// Campaign id.
        campaign: u32,
        /// Its reason, typed (`None` from a peer that did not say).
        kind: Option<Refusal>,
        /// Its reason, for a human (truncated to 200 characters).
        reason: String,
    },
    /// A node reported its outcome of a campaign this node is the origin of (it may be
    /// anywhere in the mesh). Emitted when a node's outcome changes.
    NodeReport {
        /// The reporting node.
        node: NodeId,
        /// Campaign id.
        campaign: u32,
        /// Its outcome.
        outcome: NodeOutcome,
        /// Its running version, as it said.
        version: String,
    },
    /// An unfinished transfer was given up; its staged data is discarded.
    CampaignAbandoned {
        /// Campaign id.
        campaign: u32,
        /// Why.
        reason: AbandonReason,
    },
    /// The neighbour this node fetches the campaign from changed (the old one left, stopped
    /// delivering, or a neighbour on the route to the campaign's origin offered it).
    UpstreamChanged {
        /// Campaign id.
        campaign: u32,
        /// The new upstream.
        peer: NodeId,
    },
    /// A downstream neighbour reported it has the whole image.
    PeerDone {
        /// The neighbour.
        peer: NodeId,
        /// Campaign id.
        campaign: u32,
    },
    /// This node received a signed rollback command and did this with it.
    RollbackCommand {
        /// The node that sent it.
        from: NodeId,
        /// The command's `issued`.
        issued: u64,
        /// What the node did.
        outcome: RollbackOutcome,
        /// The version it goes back to (reverted) or runs.
        version: String,
    },
    /// A node answered a rollback command this node sent (ROLLBACK_RESULT).
    RollbackReport {
        /// The node ordered back.
        node: NodeId,
        /// The command's `issued`.
        issued: u64,
        /// What it did.
        outcome: RollbackOutcome,
        /// The version it goes back to (reverted) or runs, as it said.
        version: String,
    },
}

impl PluginEvent for OtaEvent {
    fn to_json(&self) -> serde_json::Value {
        match self {
            Self::AnnounceSent { reason, remaining } => {
                json!({"event": "announce_sent", "reason": reason.label(), "remaining": remaining})
            }
            Self::PartServed {
                node,
                part,
                no_part,
                served,
            } => json!({"event": "part_served", "node": node.0, "part": part,
                        "no_part": no_part, "served": served}),
            Self::NodeCompleted { node, took } => {
                json!({"event": "node_completed", "node": node.0, "took_ms": took.as_millis()})
            }
            Self::RequestIgnored { node, reason } => {
                json!({"event": "request_ignored", "node": node.0, "reason": reason})
            }
            Self::UpdateStarted {
                md5,
                no_part,
                from_part,
                sender,
            } => json!({"event": "update_started", "md5": md5, "no_part": no_part,
                        "from_part": from_part, "sender": sender.0}),
            Self::PartReceived { part, no_part } => {
                json!({"event": "part_received", "part": part, "no_part": no_part})
            }
            Self::BroadcastGap { expected, got } => {
                json!({"event": "broadcast_gap", "expected": expected, "got": got})
            }
            Self::GaveUp { md5, part } => json!({"event": "gave_up", "md5": md5, "part": part}),
            Self::Updated { md5, size } => json!({"event": "updated", "md5": md5, "size": size}),
            Self::UpdateFailed { md5, reason } => {
                json!({"event": "update_failed", "md5": md5, "reason": reason.to_string()})
            }
            Self::CapsReceived { peer, binary } => {
                json!({"event": "caps_received", "peer": peer.0, "bin": binary})
            }
            Self::NeighbourIsStock { peer } => {
                json!({"event": "neighbour_is_stock", "peer": peer.0})
            }
            Self::OfferAccepted {
                campaign,
                version,
                have,
                chunks,
            } => json!({"event": "offer_accepted", "campaign": campaign, "version": version,
                        "have": have, "chunks": chunks}),
            Self::OfferRejected { peer, kind, reason } => {
                json!({"event": "offer_rejected", "peer": peer.0, "kind": kind.label(),
                       "reason": reason})
            }
            Self::ChunkRejected {
                peer,
                index,
                reason,
            } => json!({"event": "chunk_rejected", "peer": peer.0, "index": index,
                        "reason": reason}),
            Self::Progress {
                campaign,
                have,
                chunks,
            } => json!({"event": "progress", "campaign": campaign, "have": have,
                        "chunks": chunks}),
            Self::Verified { campaign } => json!({"event": "verified", "campaign": campaign}),
            Self::Applied { campaign, version } => {
                json!({"event": "applied", "campaign": campaign, "version": version})
            }
            Self::VerifyFailed { campaign, reason } => {
                json!({"event": "verify_failed", "campaign": campaign,
                       "reason": reason.to_string()})
            }
            Self::PeerCannotDecode {
                peer,
                campaign,
                reason,
            } => json!({"event": "peer_cannot_decode", "peer": peer.0, "campaign": campaign,
                        "reason": reason.to_string()}),
            Self::PeerRefused {
                peer,
                campaign,
                kind,
                reason,
            } => json!({"event": "peer_refused", "peer": peer.0, "campaign": campaign,
                        "kind": kind.map(Refusal::label), "reason": reason}),
            Self::NodeReport {
                node,
                campaign,
                outcome,
                version,
            } => {
                let (o, r) = outcome.labels();
                json!({"event": "node_report", "node": node.0, "campaign": campaign,
                       "outcome": o, "refusal": r, "version": version})
            }
            Self::CampaignAbandoned { campaign, reason } => {
                let by = match reason {
                    AbandonReason::Superseded { by } => Some(*by),
                    AbandonReason::NoProgress => None,
                };
                json!({"event": "campaign_abandoned", "campaign": campaign,
                       "reason": reason.label(), "superseded_by": by})
            }
            Self::UpstreamChanged { campaign, peer } => {
                json!({"event": "upstream_changed", "campaign": campaign, "peer": peer.0})
            }
            Self::PeerDone { peer, campaign } => {
                json!({"event": "peer_done", "peer": peer.0, "campaign": campaign})
            }
            Self::RollbackCommand {
                from,
                issued,
                outcome,
                version,
            } => {
                let (o, r) = outcome.labels();
                json!({"event": "rollback_command", "from": from.0, "issued": issued,
                       "outcome": o, "refusal": r, "version": version})
            }
            Self::RollbackReport {
                node,
                issued,
                outcome,
                version,
            } => {
                let (o, r) = outcome.labels();
                json!({"event": "rollback_report", "node": node.0, "issued": issued,
                       "outcome": o, "refusal": r, "version": version})
            }
        }
    }
}
