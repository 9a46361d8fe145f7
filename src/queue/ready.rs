//! A destination's ready queue, in three lanes by message priority (pure).
//!
//! Priority is the RFC 6710 level, -9 to 9: above 0 goes in the high lane, 0 in the normal
//! lane, below 0 in the bulk lane. A job leaves from the highest non-empty lane, first in first
//! out within a lane, so a password-reset code queued behind a newsletter leaves first. Levels
//! within a lane are not ordered further: three lanes keep every operation O(1), and senders
//! use the three words of `X-Ringmta-Priority` far more than the nineteen levels.

use std::collections::VecDeque;

/// Jobs ready to go, by lane.
#[derive(Debug)]
pub struct Ready<T> {
    lanes: [VecDeque<T>; 3],
}

impl<T> Default for Ready<T> {
    fn default() -> Self {
        Ready {
            lanes: Default::default(),
        }
    }
}

/// The lane of a priority level: 0 high, 1 normal, 2 bulk.
fn lane(priority: i8) -> usize {
    match priority {
        p if p > 0 => 0,
        0 => 1,
        _ => 2,
    }
}

impl<T> Ready<T> {
    /// Queues a job behind the others of its lane.
    pub fn push_back(&mut self, priority: i8, job: T) {
        self.lanes[lane(priority)].push_back(job);
    }

    /// Puts a job back at the head of its lane (it was taken and could not go).
    pub fn push_front(&mut self, priority: i8, job: T) {
        self.lanes[lane(priority)].push_front(job);
    }

    /// The next job: the head of the highest non-empty lane.
    pub fn pop_front(&mut self) -> Option<T> {
        self.lanes.iter_mut().find_map(VecDeque::pop_front)
    }

    /// The lane the next job would come from (0 high, 1 normal, 2 bulk), if any.
    pub fn next_lane(&self) -> Option<usize> {
        self.lanes.iter().position(|l| !l.is_empty())
    }

    /// Jobs queued.
    pub fn len(&self) -> usize {
        self.lanes.iter().map(VecDeque::len).sum()
    }

    /// Whether no job is queued.
    pub fn is_empty(&self) -> bool {
        self.lanes.iter().all(VecDeque::is_empty)
    }

    /// Keeps the jobs `keep` says to keep (it may change them), in order.
    pub fn retain_mut(&mut self, mut keep: impl FnMut(&mut T) -> bool) {
        for l in &mut self.lanes {
            l.retain_mut(&mut keep);
        }
    }

    /// Takes every job, in the order they would have left.
    pub fn drain(&mut self) -> Vec<T> {
        self.lanes.iter_mut().flat_map(|l| l.drain(..)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn higher_priority_leaves_first_and_order_holds_within_a_lane() {
        let mut r = Ready::default();
        for (priority, job) in [
            (0, "n1"),
            (-1, "b1"),
            (0, "n2"),
            (9, "h1"),
            (-9, "b2"),
            (1, "h2"),
        ] {
            r.push_back(priority, job);
        }
        assert_eq!((r.len(), r.next_lane()), (6, Some(0)));
        // A job put back goes to the head of its own lane, not ahead of a higher lane.
        assert_eq!(r.pop_front(), Some("h1"));
        assert_eq!(r.pop_front(), Some("h2"));
        r.push_front(0, "n0");
        r.push_front(3, "h0");
        let order: Vec<_> = std::iter::from_fn(|| r.pop_front()).collect();
        assert_eq!(order, ["h0", "n0", "n1", "n2", "b1", "b2"]);
        assert!(r.is_empty());
        assert_eq!(r.next_lane(), None);
        r.push_back(-2, "b");
        r.push_back(2, "h");
        assert_eq!(r.drain(), ["h", "b"]);
        assert!(r.is_empty());
    }
}
