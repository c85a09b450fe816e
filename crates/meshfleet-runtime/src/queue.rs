//! The per-link send queue and its overflow policy (see the crate docs, "Send queues").

use std::collections::VecDeque;

use meshfleet_mesh::Priority;

/// What [`SendQueue::push`] did with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Push {
    /// Queued; nothing else was touched.
    Queued,
    /// Queued after evicting this many older bulk or normal frames to make room.
    QueuedAfterEvicting(usize),
    /// Refused: the queue is full. A normal or bulk frame is refused when it does not fit;
    /// a control frame only when evicting every other frame would still not make room.
    Dropped,
}

/// Frames waiting for a link's writer, one FIFO per [`Priority`]: control frames go
/// first, then normal ones, bulk (OTA chunks) last.
///
/// Memory is bounded by `cap` bytes, except that a frame larger than `cap` is accepted
/// into an *empty* queue (otherwise a legitimate big frame, such as the node sync of a
/// large mesh, could never be sent). The bound is therefore `max(cap, largest frame)`.
#[derive(Debug)]
pub(crate) struct SendQueue {
    high: VecDeque<Vec<u8>>,
    normal: VecDeque<Vec<u8>>,
    bulk: VecDeque<Vec<u8>>,
    bytes: usize,
    cap: usize,
}

impl SendQueue {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            high: VecDeque::new(),
            normal: VecDeque::new(),
            bulk: VecDeque::new(),
            bytes: 0,
            cap,
        }
    }

    /// Bytes queued (not counting what the writer is writing).
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.high.is_empty() && self.normal.is_empty() && self.bulk.is_empty()
    }

    /// The capacity in bytes.
    pub(crate) fn cap(&self) -> usize {
        self.cap
    }

    fn fits(&self, len: usize) -> bool {
        self.is_empty() || self.bytes.saturating_add(len) <= self.cap
    }

    /// Queues `frame` under the policy described on [`Push`].
    pub(crate) fn push(&mut self, frame: Vec<u8>, priority: Priority) -> Push {
        let len = frame.len();
        if priority != Priority::Control {
            if !self.fits(len) {
                return Push::Dropped;
            }
            self.bytes += len;
            if priority == Priority::Bulk {
                self.bulk.push_back(frame);
            } else {
                self.normal.push_back(frame);
            }
            return Push::Queued;
        }
        // Node sync and time sync must get through a congested link: losing them costs
        // the link (node timeout) or the clock, losing a normal frame costs one message
        // and a bulk one a repair. So they displace the oldest bulk, then normal frames.
        let mut evicted = 0;
        while !self.fits(len) {
            let Some(old) = self.bulk.pop_front().or_else(|| self.normal.pop_front()) else {
                break;
            };
            self.bytes -= old.len();
            evicted += 1;
        }
        if !self.fits(len) {
            return Push::Dropped;
        }
        self.bytes += len;
        self.high.push_back(frame);
        if evicted == 0 {
            Push::Queued
        } else {
            Push::QueuedAfterEvicting(evicted)
        }
    }

    /// Length of the frame [`SendQueue::pop`] would return.
    pub(crate) fn peek_len(&self) -> Option<usize> {
        self.high
            .front()
            .or_else(|| self.normal.front())
            .or_else(|| self.bulk.front())
            .map(Vec::len)
    }

    /// The next frame: the oldest of the most urgent non-empty class.
    pub(crate) fn pop(&mut self) -> Option<Vec<u8>> {
        let frame = self
            .high
            .pop_front()
            .or_else(|| self.normal.pop_front())
            .or_else(|| self.bulk.pop_front())?;
        self.bytes -= frame.len();
        Some(frame)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const C: Priority = Priority::Control;
    const N: Priority = Priority::Normal;
    const B: Priority = Priority::Bulk;

    fn f(tag: u8, len: usize) -> Vec<u8> {
        vec![tag; len]
    }

    fn drain(q: &mut SendQueue) -> Vec<u8> {
        std::iter::from_fn(|| q.pop()).map(|f| f[0]).collect()
    }

    #[test]
    fn high_priority_jumps_ahead_and_keeps_fifo_order() {
        let mut q = SendQueue::new(1000);
        q.push(f(1, 10), N);
        q.push(f(2, 10), N);
        q.push(f(3, 10), C);
        q.push(f(4, 10), N);
        q.push(f(5, 10), C);
        assert_eq!(drain(&mut q), [3, 5, 1, 2, 4]);
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn full_queue_drops_new_normal_frames() {
        let mut q = SendQueue::new(30);
        assert_eq!(q.push(f(1, 10), N), Push::Queued);
        assert_eq!(q.push(f(2, 20), N), Push::Queued);
        assert_eq!(q.push(f(3, 1), N), Push::Dropped);
        assert_eq!(q.bytes(), 30);
        assert_eq!(drain(&mut q), [1, 2]);
    }

    #[test]
    fn high_priority_evicts_the_oldest_normal_frames() {
        let mut q = SendQueue::new(30);
        q.push(f(1, 10), N);
        q.push(f(2, 10), N);
        q.push(f(3, 10), N);
        assert_eq!(q.push(f(9, 15), C), Push::QueuedAfterEvicting(2));
        assert_eq!(q.bytes(), 25);
        assert_eq!(drain(&mut q), [9, 3]);
    }

    #[test]
    fn high_priority_is_dropped_when_only_high_priority_is_queued() {
        let mut q = SendQueue::new(20);
        q.push(f(1, 15), C);
        assert_eq!(q.push(f(2, 10), C), Push::Dropped);
        assert_eq!(drain(&mut q), [1]);
    }

    #[test]
    fn an_oversized_frame_passes_an_empty_queue_only() {
        let mut q = SendQueue::new(10);
        assert_eq!(q.push(f(1, 50), N), Push::Queued);
        assert_eq!(q.push(f(2, 1), N), Push::Dropped);
        assert_eq!(q.peek_len(), Some(50));
        q.pop();
        assert!(q.is_empty());
        assert_eq!(q.push(f(3, 5), N), Push::Queued);
    }

    #[test]
    fn bulk_goes_after_normal_and_is_evicted_first() {
        let mut q = SendQueue::new(40);
        q.push(f(1, 10), B);
        q.push(f(2, 10), N);
        q.push(f(3, 10), B);
        q.push(f(4, 10), N);
        // Full: a control frame evicts the oldest bulk frame, not the older normal one.
        assert_eq!(q.push(f(9, 10), C), Push::QueuedAfterEvicting(1));
        assert_eq!(drain(&mut q), [9, 2, 4, 3]);
    }
}
