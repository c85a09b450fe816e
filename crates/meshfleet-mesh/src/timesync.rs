//! The library's time sync arithmetic (ntp.hpp), reproduced exactly, including its
//! quirks, because C++ nodes on the other end of a link run the same rules.

use meshfleet_wire::{NodeId, NodeTree};

/// An accepted offset must be smaller than this (TIME_SYNC_ACCURACY, µs).
pub const TIME_SYNC_ACCURACY: u32 = 5_000;
/// Offsets smaller than this (but > 4) are divided by 4 to avoid over-correction.
pub const MIN_LARGE_OFFSET_STEP: i32 = 500;
/// A sample whose round trip exceeds this multiple of the peer's processing time is
/// discarded (offset 0).
pub const MAX_CPU_TRIP_RATIO: u32 = 85;

/// `clockOffset(t0, t1, t2, t3)`: the NTP offset with the library's softening and
/// outlier rule, in wrapping uint32 arithmetic.
pub fn clock_offset(t0: u32, t1: u32, t2: u32, t3: u32) -> i32 {
    let offset = (t1.wrapping_sub(t0) as i32 / 2).wrapping_add(t2.wrapping_sub(t3) as i32 / 2);
    let mut signed = offset;
    if signed.unsigned_abs() < MIN_LARGE_OFFSET_STEP as u32 && signed.unsigned_abs() > 4 {
        signed /= 4;
    }
    if t3.wrapping_sub(t0) > t2.wrapping_sub(t1).wrapping_mul(MAX_CPU_TRIP_RATIO) {
        signed = 0;
    }
    signed
}

/// `tripDelay`: one-way delay estimate of a TIME_DELAY exchange.
pub fn trip_delay(t0: u32, t1: u32, t2: u32, t3: u32) -> i32 {
    (t3.wrapping_sub(t0).wrapping_sub(t2.wrapping_sub(t1)) as i32) / 2
}

/// `adopt(mesh, connection)`: whether we take the time of the neighbour whose tree is
/// `remote`. `mine` is our tree without that neighbour's branch.
///
/// Time authority wins; otherwise the larger side is the source, and on a tie the lower
/// node id adopts the higher one's time.
pub fn adopt(mine: &NodeTree, remote: &NodeTree) -> bool {
    adopt_by_size(
        (mine.node_id, mine.has_time_authority, mine.size()),
        (remote.node_id, remote.has_time_authority, remote.size()),
    )
}

/// [`adopt`] on `(node id, has time authority, node count)` of each side, for callers
/// that keep the counts instead of the trees.
pub fn adopt_by_size(mine: (NodeId, bool, usize), remote: (NodeId, bool, usize)) -> bool {
    let ((my_id, my_authority, my_count), (remote_id, remote_authority, remote_count)) =
        (mine, remote);
    if !my_authority && remote_authority {
        return true;
    }
    if my_authority && !remote_authority {
        return false;
    }
    if my_count > remote_count {
        return false;
    }
    if my_count == remote_count {
        return my_id < remote_id;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_matches_the_transcript() {
        // 01_two_node: A(1001) adopts B's time; first exchange gave +2099999968.
        let off = clock_offset(241_009_825, 2_341_009_943, 2_341_009_949, 241_010_103);
        assert!((off - 2_099_999_968).abs() < 200, "{off}");
    }

    #[test]
    fn small_offsets_are_softened_and_outliers_dropped() {
        assert_eq!(clock_offset(0, 100, 100, 0), 25); // 100 -> 100/4
        assert_eq!(clock_offset(0, 3, 3, 0), 2); // tiny: kept (each half rounds down)
                                                 // Round trip 10_000 µs vs 10 µs processing: ratio 1000 > 85 -> discarded.
        assert_eq!(clock_offset(0, 5_000, 5_010, 10_000), 0);
    }

    #[test]
    fn adoption_rule() {
        let leaf = |id| NodeTree::leaf(NodeId(id));
        let mut big = leaf(5);
        big.subs.push(leaf(6));
        assert!(adopt(&leaf(1), &big));
        assert!(!adopt(&big, &leaf(1)));
        assert!(adopt(&leaf(1001), &leaf(3_000_000_002)));
        assert!(!adopt(&leaf(3_000_000_002), &leaf(1001)));
        let mut auth = leaf(1);
        auth.has_time_authority = true;
        assert!(!adopt(&auth, &big));
        assert!(adopt(&big, &auth));
    }
}
