//! The simulator's event queue: a calendar queue of one-millisecond buckets
//! for the next [`RING_MS`] milliseconds, and a binary heap for events
//! further out. Almost every event (a delivery, a node's next wake-up) lands
//! within a few seconds, so pushing and popping are O(1) where a heap of
//! tens of thousands of events costs a cache miss per level.
//!
//! Order: by time, then by push order, exactly as a heap of (time, sequence)
//! would give (tested against one). Each bucket holds events of one
//! millisecond in push order; events from the far heap move into their
//! bucket as soon as it comes within reach, before anything else can be
//! pushed for that millisecond, so they stay ahead of later pushes.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// Milliseconds covered by buckets (a power of two, above the longest link
/// latency and most timers).
const RING_MS: u64 = 4_096;

#[derive(Debug)]
struct Far<T> {
    at_ms: u64,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Far<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.at_ms, self.seq) == (other.at_ms, other.seq)
    }
}
impl<T> Eq for Far<T> {}
impl<T> PartialOrd for Far<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Far<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at_ms, self.seq).cmp(&(other.at_ms, other.seq))
    }
}

#[derive(Debug)]
pub(crate) struct EventQueue<T> {
    /// The earliest millisecond a bucket can hold; buckets hold
    /// [`Self::cursor_ms`, `cursor_ms + RING_MS`).
    cursor_ms: u64,
    buckets: Vec<VecDeque<T>>,
    in_buckets: usize,
    far: BinaryHeap<Reverse<Far<T>>>,
    seq: u64,
    /// Buffers of drained buckets, the most recently drained last. A bucket
    /// that starts filling takes the last: its memory was read moments ago
    /// and is still in cache, where a bucket's own buffer was last touched a
    /// whole turn of the ring (four seconds of simulation) ago, so that
    /// nearly every push wrote to a cold line.
    spare: Vec<VecDeque<T>>,
}

/// Drained buffers kept for reuse, at most: deliveries arrive in steps of
/// the 10 ms quantum over links of up to a few hundred milliseconds, so a few
/// dozen buckets fill at once; more spares would only hold memory.
const SPARE_BUFFERS: usize = 64;

impl<T> EventQueue<T> {
    pub(crate) fn new(start_ms: u64) -> EventQueue<T> {
        EventQueue {
            cursor_ms: start_ms,
            buckets: (0..RING_MS).map(|_| VecDeque::new()).collect(),
            in_buckets: 0,
            far: BinaryHeap::new(),
            seq: 0,
            spare: Vec::new(),
        }
    }

    fn bucket(at_ms: u64) -> usize {
        (at_ms % RING_MS) as usize
    }

    /// Queues `item` at `at_ms`, which must not be before the last popped
    /// event's time.
    #[inline(always)]
    pub(crate) fn push(&mut self, at_ms: u64, item: T) {
        debug_assert!(at_ms >= self.cursor_ms, "an event in the past");
        let at_ms = at_ms.max(self.cursor_ms);
        self.seq += 1;
        if at_ms < self.cursor_ms + RING_MS {
            let bucket = &mut self.buckets[Self::bucket(at_ms)];
            if bucket.capacity() == 0
                && let Some(spare) = self.spare.pop()
            {
                *bucket = spare;
            }
            bucket.push_back(item);
            self.in_buckets += 1;
        } else {
            self.far.push(Reverse(Far {
                at_ms,
                seq: self.seq,
                item,
            }));
        }
    }

    /// Moves far events that have come within reach into their buckets.
    fn pull_near(&mut self) {
        while let Some(Reverse(next)) = self.far.peek() {
            if next.at_ms >= self.cursor_ms + RING_MS {
                break;
            }
            let Reverse(next) = self.far.pop().expect("peeked");
            self.buckets[Self::bucket(next.at_ms)].push_back(next.item);
            self.in_buckets += 1;
        }
    }

    /// The earliest event and its time.
    pub(crate) fn pop(&mut self) -> Option<(u64, T)> {
        loop {
            if self.in_buckets == 0 {
                // Nothing near: jump to the first far event.
                let Reverse(next) = self.far.peek()?;
                self.cursor_ms = self.cursor_ms.max(next.at_ms);
                self.pull_near();
            }
            if let Some(item) = self.buckets[Self::bucket(self.cursor_ms)].pop_front() {
                self.in_buckets -= 1;
                return Some((self.cursor_ms, item));
            }
            let drained = &mut self.buckets[Self::bucket(self.cursor_ms)];
            if drained.capacity() > 0 && self.spare.len() < SPARE_BUFFERS {
                let mut buffer = std::mem::take(drained);
                buffer.clear();
                self.spare.push(buffer);
            }
            self.cursor_ms += 1;
            self.pull_near();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Random pushes (near, far, equal times) interleaved with pops give the
    /// same sequence as a heap ordered by (time, push order).
    #[test]
    fn pops_in_the_order_of_a_heap_of_time_and_sequence() {
        for seed in 0..20 {
            let mut rng = Rng::new(seed);
            let mut queue = EventQueue::new(1_000);
            let mut heap: BinaryHeap<Reverse<(u64, u64)>> = BinaryHeap::new();
            let (mut now, mut seq) = (1_000u64, 0u64);
            let mut popped = Vec::new();
            let mut expected = Vec::new();
            for _ in 0..5_000 {
                if rng.below(3) == 0 {
                    if let Some((at, item)) = queue.pop() {
                        let Reverse((t, s)) = heap.pop().expect("same length");
                        now = at;
                        popped.push((at, item));
                        expected.push((t, s));
                    }
                } else {
                    let delay = match rng.below(4) {
                        0 => 0,
                        1 => rng.below(200),
                        2 => rng.below(RING_MS * 3),
                        _ => RING_MS - 1 + rng.below(3),
                    };
                    seq += 1;
                    queue.push(now + delay, seq);
                    heap.push(Reverse((now + delay, seq)));
                }
            }
            while let Some((at, item)) = queue.pop() {
                popped.push((at, item));
                let Reverse(e) = heap.pop().expect("same length");
                expected.push(e);
            }
            assert!(heap.is_empty());
            assert_eq!(popped, expected, "seed {seed}");
        }
    }
}
