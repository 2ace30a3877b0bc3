//! Writes waiting for the remote tier to come back: bounded, in order, newest per target.
//!
//! While the server is away, winners, failure records and lease releases are kept here (already
//! encoded) and pushed in the order they were made when it returns. A newer write to the same
//! target replaces the older one, so a key tuned twice during an outage is sent once, with its
//! latest winner. The queue is bounded: beyond its capacity the oldest writes are dropped (they
//! are still in the local store; the one warning of the outage says so).

use std::collections::VecDeque;

use super::tier::LeaseToken;

/// One write to the remote tier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Write {
    /// A value under a key (entries, binaries).
    Put { key: String, value: Vec<u8> },
    /// A field of a map (failure records).
    Field {
        key: String,
        field: String,
        value: Vec<u8>,
    },
    /// A lease release (compare-and-delete with the holder's token).
    Release { key: String, token: LeaseToken },
}

impl Write {
    /// Two writes to the same target: the later makes the earlier pointless.
    fn same_target(&self, other: &Write) -> bool {
        match (self, other) {
            (Write::Put { key: a, .. }, Write::Put { key: b, .. }) => a == b,
            (
                Write::Field {
                    key: a, field: fa, ..
                },
                Write::Field {
                    key: b, field: fb, ..
                },
            ) => a == b && fa == fb,
            (Write::Release { key: a, token: ta }, Write::Release { key: b, token: tb }) => {
                a == b && ta == tb
            }
            _ => false,
        }
    }
}

/// The bounded queue of writes.
#[derive(Debug)]
pub(crate) struct WriteQueue {
    items: VecDeque<Write>,
    capacity: usize,
}

impl WriteQueue {
    pub(crate) fn new(capacity: usize) -> WriteQueue {
        WriteQueue {
            items: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Appends `w`, dropping an older write to the same target; returns how many writes were
    /// dropped for lack of room (the oldest).
    pub(crate) fn push(&mut self, w: Write) -> usize {
        self.items.retain(|old| !old.same_target(&w));
        let mut dropped = 0;
        while self.items.len() >= self.capacity {
            self.items.pop_front();
            dropped += 1;
        }
        self.items.push_back(w);
        dropped
    }

    /// The oldest write.
    pub(crate) fn pop(&mut self) -> Option<Write> {
        self.items.pop_front()
    }

    /// Puts back a write that could not be sent, at the front, unless a newer write to its
    /// target arrived meanwhile or the queue filled up.
    pub(crate) fn requeue(&mut self, w: Write) {
        if self.items.len() < self.capacity && !self.items.iter().any(|n| n.same_target(&w)) {
            self.items.push_front(w);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str, v: u8) -> Write {
        Write::Put {
            key: k.into(),
            value: vec![v],
        }
    }

    #[test]
    fn newest_per_target_in_order_and_bounded() {
        let mut q = WriteQueue::new(3);
        assert_eq!(q.push(put("a", 1)), 0);
        assert_eq!(q.push(put("b", 1)), 0);
        assert_eq!(q.push(put("a", 2)), 0);
        assert_eq!(q.len(), 2);
        assert_eq!(q.pop(), Some(put("b", 1)));
        q.requeue(put("b", 1));
        assert_eq!(q.push(put("c", 1)), 0);
        assert_eq!(q.push(put("d", 1)), 1);
        let order: Vec<Write> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(order, vec![put("a", 2), put("c", 1), put("d", 1)]);
        // A requeued write loses to a newer one of its target.
        q.push(put("x", 2));
        q.requeue(put("x", 1));
        assert_eq!(q.pop(), Some(put("x", 2)));
        assert!(q.is_empty());
    }
}
