//! The ordered finalizer behind checkpoints with parallel apply.
//!
//! Every change event read from the stream gets a ticket, in stream order, together with its
//! position (resume token, cluster time). Lanes acknowledge tickets in whatever order their
//! writes finish; the watermark only ever moves to the newest position below which *every*
//! ticket is acknowledged (invariant 1 of DESIGN.md: the checkpoint is the low watermark of
//! acknowledged events, never the newest token seen). Memory is bounded by the number of
//! tickets in flight, which the caller caps.

use std::collections::VecDeque;

/// A ticket: the stream-order number of one change event.
pub(crate) type Ticket = u64;

/// Tickets in flight and the newest fully acknowledged position. `P` is the position type
/// (a resume token with its cluster time in the daemon, anything in tests).
#[derive(Debug)]
pub struct Watermark<P> {
    /// Ticket number of `pending[0]`.
    front: Ticket,
    /// In stream order: each ticket's position and whether it is acknowledged.
    pending: VecDeque<(P, bool)>,
    /// The position of the newest ticket below which everything is acknowledged.
    safe: Option<P>,
    /// Tickets finalized (acknowledged and below the watermark) since the last [`Self::take_finalized`].
    finalized: u64,
}

impl<P: Clone> Default for Watermark<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: Clone> Watermark<P> {
    /// Nothing issued, nothing acknowledged.
    pub fn new() -> Self {
        Self {
            front: 0,
            pending: VecDeque::new(),
            safe: None,
            finalized: 0,
        }
    }

    /// Registers the next event in stream order and returns its ticket.
    pub fn issue(&mut self, position: P) -> Ticket {
        let ticket = self.front + self.pending.len() as u64;
        self.pending.push_back((position, false));
        ticket
    }

    /// Marks a ticket acknowledged (applied, skipped, duplicate or parked) and advances the
    /// watermark over every acknowledged ticket at the front. Unknown or repeated tickets are
    /// ignored: an acknowledgement can only ever make the watermark move forward.
    pub(crate) fn ack(&mut self, ticket: Ticket) {
        if ticket < self.front {
            return;
        }
        let Some(slot) = self.pending.get_mut((ticket - self.front) as usize) else {
            return;
        };
        slot.1 = true;
        while let Some((_, true)) = self.pending.front() {
            let (position, _) = self.pending.pop_front().expect("front exists");
            self.front += 1;
            self.finalized += 1;
            self.safe = Some(position);
        }
    }

    /// The newest position below which every issued ticket is acknowledged.
    pub fn safe(&self) -> Option<&P> {
        self.safe.as_ref()
    }

    /// How many tickets became final since the last call (for "checkpoint every N events").
    pub(crate) fn take_finalized(&mut self) -> u64 {
        std::mem::take(&mut self.finalized)
    }

    /// Tickets issued but not yet below the watermark.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// The position of the oldest ticket not yet below the watermark.
    pub(crate) fn oldest_pending(&self) -> Option<&P> {
        self.pending.front().map(|(p, _)| p)
    }

    /// The first ticket not yet below the watermark (the next to be issued when idle).
    #[cfg(test)]
    fn first_unfinalized(&self) -> Ticket {
        self.front
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn out_of_order_acks_wait_for_the_oldest() {
        let mut w = Watermark::new();
        let a = w.issue("a");
        let b = w.issue("b");
        let c = w.issue("c");
        w.ack(c);
        assert_eq!(w.safe(), None);
        assert_eq!(w.oldest_pending(), Some(&"a"));
        w.ack(a);
        assert_eq!(w.safe(), Some(&"a"));
        assert_eq!(w.oldest_pending(), Some(&"b"));
        w.ack(b);
        assert_eq!(w.safe(), Some(&"c"));
        assert_eq!(w.in_flight(), 0);
        assert_eq!(w.oldest_pending(), None);
        assert_eq!(w.take_finalized(), 3);
        w.ack(b); // repeated: ignored
        assert_eq!(w.safe(), Some(&"c"));
    }

    /// Two lanes, each acknowledging its own tickets in order (as a lane does), but with the
    /// two lanes' acknowledgements interleaved adversarially and issuing interleaved with
    /// acknowledging. After every step the watermark's position is one whose ticket and every
    /// earlier ticket are acknowledged, and it is the newest such position.
    fn check(lane_of: Vec<bool>, schedule: Vec<u8>) -> Result<(), TestCaseError> {
        let mut w: Watermark<Ticket> = Watermark::new();
        let mut issued = 0usize;
        let mut lanes: [VecDeque<Ticket>; 2] = [VecDeque::new(), VecDeque::new()];
        let mut acked = vec![false; lane_of.len()];
        for step in schedule {
            match step % 3 {
                0 if issued < lane_of.len() => {
                    let t = w.issue(issued as Ticket);
                    prop_assert_eq!(t, issued as Ticket);
                    lanes[lane_of[issued] as usize].push_back(t);
                    issued += 1;
                }
                1 | 2 => {
                    let lane = (step % 3 - 1) as usize;
                    if let Some(t) = lanes[lane].pop_front() {
                        w.ack(t);
                        acked[t as usize] = true;
                    }
                }
                _ => {}
            }
            // The newest ticket below which everything is acknowledged.
            let prefix = acked[..issued].iter().take_while(|a| **a).count();
            let expected = prefix.checked_sub(1).map(|t| t as Ticket);
            prop_assert_eq!(w.safe().copied(), expected);
            if let Some(safe) = w.safe() {
                for t in 0..=*safe {
                    prop_assert!(
                        acked[t as usize],
                        "watermark {} passes unacknowledged {}",
                        safe,
                        t
                    );
                }
            }
            prop_assert_eq!(w.in_flight(), issued - prefix);
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn the_watermark_never_passes_an_unacknowledged_event(
            lane_of in prop::collection::vec(any::<bool>(), 0..60),
            schedule in prop::collection::vec(any::<u8>(), 0..300),
        ) {
            check(lane_of, schedule)?;
        }
    }

    // Acknowledgements in any order at all (not even per-lane order), for good measure.
    proptest! {
        #[test]
        fn any_ack_order_finalizes_exactly_the_acknowledged_prefix(
            order in (1usize..50).prop_flat_map(|n| Just((0..n as u64).collect::<Vec<_>>()).prop_shuffle()),
        ) {
            let mut w: Watermark<Ticket> = Watermark::new();
            for _ in 0..order.len() {
                let t = w.first_unfinalized() + w.in_flight() as u64;
                prop_assert_eq!(w.issue(t), t);
            }
            let mut acked = vec![false; order.len()];
            for t in &order {
                w.ack(*t);
                acked[*t as usize] = true;
                let prefix = acked.iter().take_while(|a| **a).count();
                prop_assert_eq!(w.safe().copied(), prefix.checked_sub(1).map(|t| t as u64));
            }
            prop_assert_eq!(w.in_flight(), 0);
        }
    }
}
