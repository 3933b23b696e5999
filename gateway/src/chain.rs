//! The order of one channel's durable messages on this node: which message comes next, which
//! is a duplicate, and where a gap begins, so that clients always see an unbroken `prev`
//! chain (contract §4).

use crate::position::{Link, Opening};

/// What to do with a durable message, given the chain so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Already seen: drop it.
    Duplicate,
    /// Deliver it with this link (`prev` = the previous message delivered here).
    Deliver(Link),
    /// Messages between `after` and `next` were missed: repair, then [`Chain::resume`].
    Gap {
        /// The last sequence seen.
        after: u64,
        /// The message that revealed the gap.
        next: Link,
    },
}

/// The order of a channel's durable messages on this node: the last sequence seen
/// (delivered or dropped; `None` until this node knows where the channel stands) and the
/// last delivered, so that `prev` always names the previous message delivered here and
/// clients see an unbroken chain even when a malformed message in between was dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    seen: Option<u64>,
    delivered: u64,
}

impl Chain {
    /// The chain of a channel opened at `opening`.
    pub fn new(opening: Opening) -> Chain {
        Chain {
            seen: opening.stream,
            delivered: opening.channel_last,
        }
    }

    /// The last sequence seen (`None`: not known yet).
    pub fn seen(&self) -> Option<u64> {
        self.seen
    }

    /// The last sequence delivered (0 if none).
    pub fn last_delivered(&self) -> u64 {
        self.delivered
    }

    /// Classifies the next durable message. `Gap` changes nothing: repair, then `resume`.
    pub fn accept(&mut self, link: Link) -> Step {
        if self.seen.is_some_and(|l| link.seq <= l) {
            return Step::Duplicate;
        }
        if let Some(after) = self.seen.filter(|l| link.prev > *l) {
            return Step::Gap { after, next: link };
        }
        Step::Deliver(self.admit(link))
    }

    /// After a gap before `next`: `repaired` is the last sequence the repair delivered, or
    /// `None` if it failed (then `next` shows its real `prev`, so clients see the gap and
    /// recover with `since` themselves). Returns the link to deliver `next` with.
    pub fn resume(&mut self, next: Link, repaired: Option<u64>) -> Link {
        self.delivered = repaired.unwrap_or(next.prev);
        self.admit(next)
    }

    /// Everything up to `seen` was read back, the last delivered being `delivered`.
    pub fn caught_up(&mut self, seen: u64, delivered: u64) {
        self.seen = Some(seen);
        self.delivered = delivered;
    }

    /// `seq` was delivered (its message could be encoded).
    pub fn delivered(&mut self, seq: u64) {
        self.delivered = seq;
    }

    /// The stream was recreated: sequences start again from 1.
    pub fn restart(&mut self) {
        self.seen = Some(0);
        self.delivered = 0;
    }

    fn admit(&mut self, link: Link) -> Link {
        let prev = if self.seen.is_some() { self.delivered } else { link.prev };
        self.seen = Some(link.seq);
        Link { seq: link.seq, prev }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::position::Opening;

    fn link(seq: u64, prev: u64) -> Link {
        Link { seq, prev }
    }

    fn opened(stream: Option<u64>, channel_last: u64) -> Chain {
        Chain::new(Opening { stream, channel_last })
    }

    #[test]
    fn in_order_messages_are_delivered_as_they_come() {
        let mut c = opened(Some(10), 10);
        assert_eq!(c.accept(link(11, 10)), Step::Deliver(link(11, 10)));
        c.delivered(11);
        assert_eq!(c.accept(link(14, 11)), Step::Deliver(link(14, 11)));
    }

    #[test]
    fn a_sequence_already_seen_is_a_duplicate() {
        let mut c = opened(Some(10), 10);
        assert_eq!(c.accept(link(10, 7)), Step::Duplicate);
        assert_eq!(c.accept(link(3, 0)), Step::Duplicate);
        assert_eq!(c.accept(link(11, 10)), Step::Deliver(link(11, 10)));
        assert_eq!(c.accept(link(11, 10)), Step::Duplicate);
    }

    #[test]
    fn a_prev_beyond_the_last_seen_is_a_gap_that_changes_nothing() {
        let mut c = opened(Some(10), 10);
        let step = c.accept(link(15, 12));
        assert_eq!(
            step,
            Step::Gap {
                after: 10,
                next: link(15, 12)
            }
        );
        assert_eq!(c, opened(Some(10), 10));
    }

    #[test]
    fn after_a_repair_prev_names_the_last_repaired() {
        let mut c = opened(Some(10), 10);
        assert_eq!(c.resume(link(15, 12), Some(12)), link(15, 12));
        c.delivered(15);
        assert_eq!(c.accept(link(16, 15)), Step::Deliver(link(16, 15)));
    }

    #[test]
    fn after_a_failed_repair_the_real_prev_shows_the_gap() {
        let mut c = opened(Some(10), 10);
        assert_eq!(c.resume(link(15, 12), None), link(15, 12));
    }

    #[test]
    fn a_dropped_message_keeps_the_chain_on_the_last_delivered() {
        let mut c = opened(Some(10), 10);
        // 11 is seen but could not be encoded: never `delivered`.
        assert_eq!(c.accept(link(11, 10)), Step::Deliver(link(11, 10)));
        assert_eq!(c.accept(link(12, 11)), Step::Deliver(link(12, 10)));
    }

    #[test]
    fn an_unknown_opening_trusts_the_message_prev() {
        let mut c = opened(None, 0);
        assert_eq!(c.accept(link(42, 40)), Step::Deliver(link(42, 40)));
        c.delivered(42);
        assert_eq!(c.accept(link(42, 40)), Step::Duplicate);
        assert_eq!(c.accept(link(43, 42)), Step::Deliver(link(43, 42)));
    }

    #[test]
    fn caught_up_moves_both_ends() {
        let mut c = opened(Some(10), 4);
        c.caught_up(20, 18);
        assert_eq!(c.last_delivered(), 18);
        assert_eq!(c.accept(link(20, 18)), Step::Duplicate);
        assert_eq!(c.accept(link(21, 20)), Step::Deliver(link(21, 18)));
    }

    #[test]
    fn a_restart_begins_again_from_zero() {
        let mut c = opened(Some(500), 500);
        c.restart();
        assert_eq!(c.accept(link(1, 0)), Step::Deliver(link(1, 0)));
        c.delivered(1);
        assert_eq!(
            c.accept(link(3, 2)),
            Step::Gap {
                after: 1,
                next: link(3, 2)
            }
        );
    }
}
