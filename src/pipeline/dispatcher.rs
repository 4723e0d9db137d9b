//! The dispatcher: gives every event a ticket in the order it was read, routes it to the lane
//! of its aggregate in batches, and takes the lanes' reports back into the watermark, which
//! then says how far everything is handled.
//!
//! Every path that applies events uses it: the change stream (tickets carry the event's resume
//! token), and the fold of the event collection (tickets carry the aggregate id). An event
//! that is handled without a lane (a malformed one, dead-lettered at once) gets a ticket and
//! is acknowledged by the caller.

use crate::error::StoreError;
use crate::model::event::Event;
use crate::pipeline::lanes::{LaneReport, LaneWork, Lanes, lane_of};
use crate::pipeline::watermark::{Ticket, Watermark};
use crate::store::park::ParkedEvent;

/// Events on their way to the lanes, and the watermark of those handled.
pub struct Dispatcher<P> {
    lanes: Lanes,
    watermark: Watermark<P>,
    /// Per lane, the events of its next batch.
    pending: Vec<Vec<(Ticket, Event)>>,
    batch_size: usize,
}

impl<P: Clone> Dispatcher<P> {
    /// Batches of at most `batch_size` events for each of `lanes`.
    pub fn new(lanes: Lanes, batch_size: usize) -> Self {
        Dispatcher {
            pending: vec![Vec::new(); lanes.count()],
            lanes,
            watermark: Watermark::new(),
            batch_size: batch_size.max(1),
        }
    }

    /// A ticket for the next event read, with its position.
    pub fn issue(&mut self, position: P) -> Ticket {
        self.watermark.issue(position)
    }

    /// An event handled without a lane.
    pub(crate) fn ack(&mut self, ticket: Ticket) {
        self.watermark.ack(ticket);
    }

    /// The watermark: how far everything is handled, and what is still in flight.
    pub fn watermark(&mut self) -> &mut Watermark<P> {
        &mut self.watermark
    }

    /// Tickets issued and not yet finalized.
    pub fn in_flight(&self) -> usize {
        self.watermark.in_flight()
    }

    pub(crate) fn lane_count(&self) -> usize {
        self.lanes.count()
    }

    /// Puts an event in its aggregate's next batch; a full batch is handed to its lane at once.
    pub async fn route(&mut self, ticket: Ticket, event: Event) -> Result<(), StoreError> {
        let lane = lane_of(&event.aggregate_id, self.pending.len());
        self.pending[lane].push((ticket, event));
        if self.pending[lane].len() >= self.batch_size {
            let batch = std::mem::take(&mut self.pending[lane]);
            self.hand_over(lane, batch).await?;
        }
        Ok(())
    }

    /// Hands every partial batch to its lane: nothing more is ready to be read.
    pub async fn hand_out_partial(&mut self) -> Result<(), StoreError> {
        for lane in 0..self.pending.len() {
            if !self.pending[lane].is_empty() {
                let batch = std::mem::take(&mut self.pending[lane]);
                self.hand_over(lane, batch).await?;
            }
        }
        Ok(())
    }

    /// Hands a batch to a lane, taking the lanes' reports while its queue is full.
    async fn hand_over(
        &mut self,
        lane: usize,
        batch: Vec<(Ticket, Event)>,
    ) -> Result<(), StoreError> {
        let Dispatcher {
            lanes, watermark, ..
        } = self;
        loop {
            tokio::select! {
                permit = lanes.senders[lane].reserve() => {
                    return match permit {
                        Ok(permit) => {
                            permit.send(LaneWork::Batch(batch));
                            Ok(())
                        }
                        Err(_) => Err(StoreError::Reply("an apply lane stopped".into())),
                    };
                }
                report = lanes.reports.recv() => match report {
                    Some(report) => acknowledge(watermark, report)?,
                    None => return Err(StoreError::Reply("apply lanes stopped".into())),
                },
            }
        }
    }

    /// Takes every report that is ready.
    pub(crate) fn take_ready_reports(&mut self) -> Result<(), StoreError> {
        while let Ok(report) = self.lanes.reports.try_recv() {
            self.take(report)?;
        }
        Ok(())
    }

    /// Waits for the next report and takes it.
    pub(crate) async fn take_next_report(&mut self) -> Result<(), StoreError> {
        match self.lanes.reports.recv().await {
            Some(report) => self.take(report),
            None => Err(StoreError::Reply("apply lanes stopped".into())),
        }
    }

    fn take(&mut self, report: LaneReport) -> Result<(), StoreError> {
        acknowledge(&mut self.watermark, report)
    }

    /// Offers due parked events of its aggregates to a lane, between its batches; a lane whose
    /// queue is full is busy, and its entries wait for the next offer.
    pub(crate) fn offer_parked(&self, lane: usize, entries: Vec<ParkedEvent>) {
        let _ = self.lanes.senders[lane].try_send(LaneWork::Parked(entries));
    }

    /// Stops handing out batches; the lanes finish what they were given (or abandon it on
    /// shutdown while retrying), and their tickets are acknowledged. Events still waiting in a
    /// partial batch were never written and stay above the watermark. Returns the watermark and
    /// the first failure a lane reported.
    pub async fn finish(self) -> (Watermark<P>, Option<StoreError>) {
        let Dispatcher {
            lanes,
            mut watermark,
            ..
        } = self;
        let mut failure = None;
        for report in lanes.finish().await {
            if let Err(e) = acknowledge(&mut watermark, report) {
                failure.get_or_insert(e);
            }
        }
        (watermark, failure)
    }
}

/// A lane's report: its tickets move the watermark; a failure ends this pipeline.
fn acknowledge<P: Clone>(
    watermark: &mut Watermark<P>,
    report: LaneReport,
) -> Result<(), StoreError> {
    match report {
        LaneReport::Done(tickets) => {
            for t in tickets {
                watermark.ack(t);
            }
            Ok(())
        }
        LaneReport::Failed(e) => Err(e),
    }
}
