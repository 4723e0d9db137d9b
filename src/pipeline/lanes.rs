//! Partitioned parallel apply: N lanes, each a task with its own bounded queue of batches.
//!
//! An event goes to the lane chosen by a stable hash of its aggregate id, so all events of one
//! aggregate pass through one lane in stream order (order holds within an aggregate) while
//! different aggregates are written in parallel. A lane writes each batch with
//! [`Applier::handle_batch`], retries known-transient errors in place (the stream does not move past
//! an event until it is applied, skipped or parked), and reports the batch's tickets back so
//! that the [`crate::pipeline::watermark::Watermark`] can move. Every channel is bounded: a slow server
//! fills the lanes' queues and then slows the reader down instead of growing memory.

use crate::backoff::Backoff;
use crate::error::{ErrorAction, StoreError};
use crate::model::event::Event;
use crate::pipeline::apply::{AggregateKey, Applier, BatchItem, SequenceCache};
use crate::pipeline::watermark::Ticket;
use crate::store::park::ParkedEvent;
use bson::Bson;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Batches a lane may have queued besides the one it is writing.
pub(crate) const LANE_QUEUE: usize = 2;

/// Aggregates whose stored sequence one lane remembers (see [`SequenceCache`]).
pub(crate) const CACHE_PER_LANE: usize = 50_000;

/// What a lane is given to do.
#[derive(Debug)]
pub(crate) enum LaneWork {
    /// Events of the stream, in stream order, with their tickets.
    Batch(Vec<(Ticket, Event)>),
    /// Due parked events of this lane's aggregates: retried here rather than beside the lane,
    /// so that a retry never races with the same aggregate's live events.
    Parked(Vec<ParkedEvent>),
}

/// What a lane tells the dispatcher.
#[derive(Debug)]
pub enum LaneReport {
    /// Every event of these tickets reached its final disposition.
    Done(Vec<Ticket>),
    /// A non-transient error: the projection cannot go on this way.
    Failed(StoreError),
}

/// The lane for an aggregate among `lanes`.
pub(crate) fn lane_of(aggregate_id: &Bson, lanes: usize) -> usize {
    (AggregateKey::of(aggregate_id).stable_hash() % lanes.max(1) as u64) as usize
}

/// Running lanes: their queues, the reports channel and the tasks.
pub struct Lanes {
    /// One bounded queue per lane (see [`LANE_QUEUE`]).
    pub(crate) senders: Vec<mpsc::Sender<LaneWork>>,
    pub reports: mpsc::Receiver<LaneReport>,
    tasks: Vec<JoinHandle<()>>,
}

impl Lanes {
    /// Starts `count` lanes. The reports channel holds one message per batch that can be in
    /// flight, so a lane never waits on it and the dispatcher never deadlocks with a lane.
    pub fn spawn(
        applier: &Applier,
        count: usize,
        shutdown: &CancellationToken,
        retry_initial: Duration,
        retry_max: Duration,
    ) -> Lanes {
        let count = count.max(1);
        let (report_tx, reports) = mpsc::channel(count * (LANE_QUEUE + 2) + 1);
        let mut senders = Vec::with_capacity(count);
        let mut tasks = Vec::with_capacity(count);
        for _ in 0..count {
            let (tx, rx) = mpsc::channel(LANE_QUEUE);
            senders.push(tx);
            tasks.push(tokio::spawn(run_lane(
                applier.clone(),
                rx,
                report_tx.clone(),
                shutdown.clone(),
                retry_initial,
                retry_max,
            )));
        }
        Lanes {
            senders,
            reports,
            tasks,
        }
    }

    /// How many lanes run.
    pub fn count(&self) -> usize {
        self.senders.len()
    }

    /// Stops taking batches and lets the lanes finish what they have queued; returns the
    /// reports that arrive meanwhile, until every lane has ended.
    pub async fn finish(mut self) -> Vec<LaneReport> {
        self.senders.clear();
        let mut out = Vec::new();
        while let Some(r) = self.reports.recv().await {
            out.push(r);
        }
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        out
    }
}

impl Drop for Lanes {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn run_lane(
    applier: Applier,
    mut work: mpsc::Receiver<LaneWork>,
    reports: mpsc::Sender<LaneReport>,
    shutdown: CancellationToken,
    retry_initial: Duration,
    retry_max: Duration,
) {
    let mut cache = SequenceCache::new(CACHE_PER_LANE);
    while let Some(work) = work.recv().await {
        let batch = match work {
            LaneWork::Batch(batch) => batch,
            LaneWork::Parked(entries) => {
                for parked in &entries {
                    let mut backoff = Backoff::new(retry_initial, retry_max);
                    loop {
                        match applier.retry_parked(parked).await {
                            Ok(_) => break,
                            Err(e) if e.action() == ErrorAction::Retry => {
                                // The next sweep tries again; no need to hold the lane up.
                                tracing::warn!(projection = %applier.worker, error = %e, "retrying a parked event failed");
                                if backoff.ceiling() >= retry_max || !backoff.wait(&shutdown).await
                                {
                                    break;
                                }
                            }
                            Err(e) => {
                                let _ = reports.send(LaneReport::Failed(e)).await;
                                return;
                            }
                        }
                    }
                }
                continue;
            }
        };
        let (tickets, events): (Vec<Ticket>, Vec<Event>) = batch.into_iter().unzip();
        let mut items: Vec<BatchItem> = events.into_iter().map(BatchItem::new).collect();
        // Known-transient errors are retried here for as long as they last; anything else
        // goes to the worker, which counts it against its retry budget ([`crate::error`]).
        let mut backoff = Backoff::new(retry_initial, retry_max);
        loop {
            match applier.handle_batch(&mut items, &mut cache).await {
                Ok(()) => break,
                Err(e) if e.action() == ErrorAction::Retry => {
                    let pause = backoff.next_pause();
                    tracing::warn!(
                        projection = %applier.worker,
                        error = %e,
                        unfinished = items.iter().filter(|i| i.done.is_none()).count(),
                        retry_in = ?pause,
                        "applying a batch failed; retrying"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
                Err(e) => {
                    let _ = reports.send(LaneReport::Failed(e)).await;
                    return;
                }
            }
        }
        if reports.send(LaneReport::Done(tickets)).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_is_stable_and_spreads_aggregates() {
        let a = Bson::String("acc-17".into());
        assert_eq!(lane_of(&a, 4), lane_of(&a.clone(), 4));
        assert_eq!(lane_of(&Bson::Int32(5), 8), lane_of(&Bson::Int64(5), 8));
        let mut per_lane = [0usize; 4];
        for i in 0..4000 {
            per_lane[lane_of(&Bson::String(format!("acc-{i}")), 4)] += 1;
        }
        assert!(per_lane.iter().all(|n| *n > 800), "{per_lane:?}");
    }
}
