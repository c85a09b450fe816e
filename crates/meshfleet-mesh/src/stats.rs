//! Counters a node keeps about itself (exported as metrics by drivers).

use crate::event::{CloseReason, DropReason};

/// Monotonic counters since the node started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Bytes handed in by the driver.
    pub bytes_in: u64,
    /// Bytes handed out in transmits.
    pub bytes_out: u64,
    /// Frames received (before decoding).
    pub frames_in: u64,
    /// Frames queued for sending (including forwards).
    pub frames_out: u64,
    /// Frames forwarded for others (SINGLE relays and BROADCAST floods).
    pub forwarded: u64,
    /// Application messages sent by us.
    pub app_sent: u64,
    /// Application messages delivered to us.
    pub app_received: u64,
    /// Frames over the size cap.
    pub dropped_too_long: u64,
    /// Frames that failed to decode.
    pub dropped_decode: u64,
    /// SINGLE frames with no route.
    pub dropped_no_route: u64,
    /// Packages of types no plugin handles.
    pub unhandled_packages: u64,
    /// Node syncs whose tree was refused (it listed us, or was too deep or too large to
    /// relay; see [`crate::TreeRefusal`]).
    pub refused_trees: u64,
    /// Time sync messages not acted on (from unsynced links, unsolicited replies, ...;
    /// see [`crate::TimeRefusal`]).
    pub refused_time: u64,
    /// Time steps cut to [`crate::Config::max_time_step`].
    pub time_steps_bounded: u64,
    /// Links opened.
    pub links_opened: u64,
    /// Links closed because the peer left.
    pub closed_peer: u64,
    /// Links closed by the node-sync timeout.
    pub closed_timeout: u64,
    /// Links closed for invalid or duplicate node syncs (loops, changed ids, our id).
    pub closed_invalid: u64,
    /// Links closed by the application.
    pub closed_requested: u64,
    /// Layout changes seen.
    pub layout_changes: u64,
    /// Non-zero time corrections applied.
    pub time_adjustments: u64,
    /// Node syncs sent as a digest instead of the whole tree ([`crate::NodeSyncPolicy`]).
    pub digest_syncs_sent: u64,
    /// Digests that did not match the tree we hold from the peer: we asked it to resend.
    pub digest_mismatches: u64,
}

impl Stats {
    pub(crate) fn count_drop(&mut self, reason: &DropReason) {
        match reason {
            DropReason::TooLong => self.dropped_too_long += 1,
            DropReason::Decode(_) | DropReason::Malformed(_) => self.dropped_decode += 1,
            DropReason::NoRoute(_) => self.dropped_no_route += 1,
            DropReason::Unhandled(_) => self.unhandled_packages += 1,
            DropReason::TreeRefused(_) => self.refused_trees += 1,
            DropReason::TimeRefused(_) => self.refused_time += 1,
        }
    }

    pub(crate) fn count_close(&mut self, reason: &CloseReason) {
        match reason {
            CloseReason::PeerClosed => self.closed_peer += 1,
            CloseReason::NodeSyncTimeout => self.closed_timeout += 1,
            CloseReason::Requested => self.closed_requested += 1,
            _ => self.closed_invalid += 1,
        }
    }
}
