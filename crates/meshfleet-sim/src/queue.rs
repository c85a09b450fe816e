//! The event queue: a binary heap ordered by (time, insertion sequence).
//!
//! Two events at the same virtual time run in the order they were scheduled. That order is
//! itself a function of the seed and the scenario only, so a run is reproducible bit for bit
//! without relying on the heap's (unspecified) order among equal keys.
//!
//! The heap holds only 24-byte keys; the events themselves sit in a slab and do not move
//! while the heap sifts. A big run keeps tens of thousands of events pending, and with the
//! events in the heap (64 bytes each, a frame's `Vec` among them) every sift was a chain of
//! cache misses: the heap's pop was the largest single cost of the simulator's own code.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use meshfleet_mesh::Instant;

struct Key {
    at: Instant,
    seq: u64,
    /// Index of the event in the slab.
    slot: u32,
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at && self.seq == other.seq
    }
}

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        // BinaryHeap is a max-heap: reverse so the earliest (then lowest seq) pops first.
        other
            .at
            .cmp(&self.at)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

/// A deterministic priority queue of timed events.
pub(crate) struct EventQueue<E> {
    heap: BinaryHeap<Key>,
    /// The pending events, by slot; `None` in a free slot.
    slab: Vec<Option<E>>,
    /// Free slots, reused last-freed first.
    free: Vec<u32>,
    next_seq: u64,
}

impl<E> EventQueue<E> {
    pub(crate) fn new() -> Self {
        Self {
            heap: BinaryHeap::new(),
            slab: Vec::new(),
            free: Vec::new(),
            next_seq: 0,
        }
    }

    /// Schedules `event` at `at`; among equal times, later calls run later.
    ///
    /// # Panics
    ///
    /// With more than 2^32 events pending at once (a simulation that large does not fit
    /// in memory anyway).
    pub(crate) fn push(&mut self, at: Instant, event: E) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slab[slot as usize] = Some(event);
                slot
            }
            None => {
                self.slab.push(Some(event));
                #[allow(clippy::expect_used)]
                u32::try_from(self.slab.len() - 1).expect("fewer than 2^32 pending events")
            }
        };
        self.heap.push(Key { at, seq, slot });
    }

    /// The time of the next event.
    pub(crate) fn peek_time(&self) -> Option<Instant> {
        self.heap.peek().map(|k| k.at)
    }

    /// Removes and returns the next event.
    pub(crate) fn pop(&mut self) -> Option<(Instant, E)> {
        let key = self.heap.pop()?;
        let event = self.slab.get_mut(key.slot as usize)?.take()?;
        self.free.push(key.slot);
        Some((key.at, event))
    }

    /// Events waiting (stale wakeups included).
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_first_then_fifo() {
        let mut q = EventQueue::new();
        q.push(Instant::from_micros(5), "c");
        q.push(Instant::from_micros(1), "a");
        q.push(Instant::from_micros(5), "d");
        q.push(Instant::from_micros(1), "b");
        let order: Vec<_> = std::iter::from_fn(|| q.pop().map(|(_, e)| e)).collect();
        assert_eq!(order, ["a", "b", "c", "d"]);
    }

    #[test]
    fn same_order_as_a_sorted_list_with_slots_reused() {
        // A reference: pending (time, push number), popped by the smallest.
        let mut q = EventQueue::new();
        let mut model: Vec<(u64, u64)> = Vec::new();
        let mut pushed = 0u64;
        let mut rng = meshfleet_mesh::Rng::new(7);
        for round in 0..2000u64 {
            for _ in 0..rng.below(4) {
                let at = round + rng.below(20);
                q.push(Instant::from_micros(at), pushed);
                model.push((at, pushed));
                pushed += 1;
            }
            for _ in 0..rng.below(4) {
                let want = model.iter().copied().min();
                model.retain(|e| Some(*e) != want);
                let got = q.pop().map(|(t, n)| (t.as_micros(), n));
                assert_eq!(got, want);
            }
        }
        assert_eq!(q.len(), model.len());
        // Slots are reused: never more than the peak of pending events.
        assert!(q.slab.len() < pushed as usize / 2, "{} slots", q.slab.len());
    }
}
