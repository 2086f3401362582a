//! Loss on one session's main channel, from the sequence numbers it receives. Pure.
//!
//! A session counts from its baseline: the first seq it receives, or the `floor` if that is
//! lower. The floor is the channel's next seq when the session's handshake finished: messages
//! from there on were published after the node confirmed every subscription, so each one must
//! arrive. Every seq at or above the baseline that has not arrived when a later one does is
//! lost; a seq that turns up late (reordered) takes its loss back.

/// How far back a late seq is told apart from a duplicate.
const WINDOW: u64 = 64;

/// What one received seq changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Change {
    /// Seqs newly counted lost (negative when a late one took its loss back).
    pub lost: i64,
    /// Of `lost`, the seqs between the floor and a first seq above it.
    pub lost_at_join: u64,
    /// This seq was counted already.
    pub duplicate: bool,
    /// This seq came after a higher one.
    pub reordered: bool,
}

/// One session's view of its main channel.
#[derive(Debug, Clone)]
pub struct Tracker {
    floor: u64,
    /// The lowest seq counted: `min(first seq, floor)`, once a seq arrived.
    baseline: Option<u64>,
    /// The highest seq received.
    last: u64,
    /// Bit `d` set: seq `last − d` received.
    window: u64,
}

impl Tracker {
    /// A session whose handshake finished when the channel's next seq was `floor`.
    pub fn new(floor: u64) -> Self {
        Self {
            floor,
            baseline: None,
            last: 0,
            window: 0,
        }
    }

    /// Records the arrival of `seq`.
    pub fn record(&mut self, seq: u64) -> Change {
        let Some(baseline) = self.baseline else {
            let missed = seq.saturating_sub(self.floor);
            self.baseline = Some(seq.min(self.floor));
            self.last = seq;
            self.window = 1;
            return Change {
                lost: missed as i64,
                lost_at_join: missed,
                ..Change::default()
            };
        };
        if seq > self.last {
            let step = seq - self.last;
            self.window = if step >= WINDOW {
                1
            } else {
                (self.window << step) | 1
            };
            self.last = seq;
            return Change {
                lost: (step - 1) as i64,
                ..Change::default()
            };
        }
        let back = self.last - seq;
        if back < WINDOW && self.window & (1 << back) != 0 {
            return Change {
                duplicate: true,
                ..Change::default()
            };
        }
        if back < WINDOW {
            self.window |= 1 << back;
        }
        Change {
            // Below the baseline it was never counted; further back than the window it is
            // taken for late, not a duplicate.
            lost: if seq >= baseline { -1 } else { 0 },
            reordered: true,
            ..Change::default()
        }
    }

    /// The seqs still missing at the end, when the channel's next seq is `next`: all from the
    /// floor if nothing arrived, else those after the last received.
    pub fn tail(&self, next: u64) -> u64 {
        match self.baseline {
            None => next.saturating_sub(self.floor),
            Some(_) => next.saturating_sub(self.last + 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lost(tracker: &mut Tracker, seqs: &[u64]) -> i64 {
        seqs.iter().map(|&s| tracker.record(s).lost).sum()
    }

    #[test]
    fn contiguous_seqs_lose_nothing() {
        let mut t = Tracker::new(10);
        // A first seq below the floor (published before the handshake ended) is fine.
        assert_eq!(lost(&mut t, &[8, 9, 10, 11, 12]), 0);
        assert_eq!(t.tail(13), 0);
        assert_eq!(t.tail(15), 2);
    }

    #[test]
    fn gaps_are_lost_and_late_seqs_take_it_back() {
        let mut t = Tracker::new(0);
        assert_eq!(lost(&mut t, &[0, 1, 4]), 2);
        let late = t.record(2);
        assert_eq!((late.lost, late.reordered), (-1, true));
        let again = t.record(2);
        assert_eq!((again.lost, again.duplicate), (0, true));
        let dup = t.record(4);
        assert!(dup.duplicate);
        assert_eq!(t.tail(5), 0);
    }

    #[test]
    fn a_first_seq_above_the_floor_lost_the_ones_between() {
        let mut t = Tracker::new(5);
        let first = t.record(8);
        assert_eq!((first.lost, first.lost_at_join), (3, 3));
        // One of those arrives late after all.
        assert_eq!(t.record(6).lost, -1);
        // Below the floor and the first seq: never counted.
        assert_eq!(t.record(3).lost, 0);
    }

    #[test]
    fn far_jumps_and_late_seqs_beyond_the_window() {
        let mut t = Tracker::new(0);
        assert_eq!(lost(&mut t, &[0, 200]), 199);
        assert_eq!(t.record(100).lost, -1);
        assert_eq!(t.record(201).lost, 0);
    }

    #[test]
    fn a_session_that_received_nothing_misses_all_from_its_floor() {
        let t = Tracker::new(40);
        assert_eq!(t.tail(40), 0);
        assert_eq!(t.tail(43), 3);
    }
}
