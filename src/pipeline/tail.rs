//! Following a change stream: the loop that joins the stages. The reader prefetches the
//! stream, the dispatcher routes each event to its aggregate's lane under a ticket, the lanes
//! write batches and report tickets back, the watermark finalizes them in read order, and the
//! checkpointer persists the position when it is due. Reading waits while the crash window is
//! full. Every path that follows a stream runs this loop: the live worker, and the live
//! rebuild's catch-up (with its own target, position store and [`Until`]).

use crate::error::StoreError;
use crate::model::event::decode_change;
use crate::model::partition::Worker;
use crate::ops::stats::ProjectionStats;
use crate::pipeline::apply::Applier;
use crate::pipeline::checkpointer::{Checkpointer, PositionStore};
use crate::pipeline::dispatcher::Dispatcher;
use crate::pipeline::lanes::lane_of;
use crate::pipeline::stream::{Read, Reader, is_invalidate};
use crate::store::park::ParkedEvent;
use bson::Timestamp;
use mongodb::change_stream::event::ResumeToken;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// A ticket's position in the stream: the event's token and cluster time.
pub(crate) type Mark = (ResumeToken, Option<Timestamp>);

/// How long to follow.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Until {
    /// Until shutdown or an error: the live worker.
    Shutdown,
    /// Until the newest event read is younger than this, or the stream is quiet.
    Lag(Duration),
    /// Until past this cluster time: an event after it, or two empty batches from `getMore`s
    /// sent after the moment (the first may come from a reply the driver already had).
    Past(Timestamp, Instant),
}

/// Why following ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    Shutdown,
    /// The [`Until`] was reached; everything read is handled and the position written.
    Reached,
}

/// What a path decides about a failed checkpoint write: try again after a pause, or stop.
pub(crate) type SaveFailed<'a> = dyn FnMut(StoreError) -> Result<Duration, StoreError> + Send + 'a;

/// One following of a stream.
pub(crate) struct Tail<'a, S> {
    pub worker: &'a Worker,
    pub applier: &'a Applier,
    pub stats: &'a ProjectionStats,
    pub(crate) checkpointer: &'a mut Checkpointer<S>,
    pub(crate) save_failed: &'a mut SaveFailed<'a>,
    pub shutdown: &'a CancellationToken,
    /// How often the loop looks after the position and parked events when nothing else wakes
    /// it.
    pub(crate) tick_every: Duration,
    /// How often due parked events are retried in their lanes.
    pub sweep_every: Duration,
    /// The pauses between attempts to dead-letter a malformed event.
    pub retry: crate::backoff::Backoff,
}

/// Where the loop stands between events.
struct Loop {
    last_sweep: Instant,
    quiet_after_moment: u32,
    newest: Option<Timestamp>,
}

impl<S: PositionStore> Tail<'_, S> {
    /// Follows `reader` through `dispatcher` until `until`, shutdown (Ok) or an error. On the
    /// way out the lanes finish what they were given and the position moves to the watermark,
    /// so a graceful stop leaves a position after everything that was applied.
    pub async fn run(
        mut self,
        mut reader: Reader,
        mut dispatcher: Dispatcher<Mark>,
        until: Until,
    ) -> Result<Ended, StoreError> {
        let mut tick = tokio::time::interval(self.tick_every.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut state = Loop {
            last_sweep: Instant::now(),
            quiet_after_moment: 0,
            newest: None,
        };
        let result = loop {
            match self
                .step(&mut reader, &mut dispatcher, &mut tick, &mut state, until)
                .await
            {
                Ok(None) => continue,
                Ok(Some(ended)) => break Ok(ended),
                Err(e) => break Err(e),
            }
        };
        drop(reader);
        // Reached: everything read must be applied, partial batches too. Otherwise what waits
        // in a partial batch was never written; it stays above the watermark and is read again.
        let result = match result {
            Ok(Ended::Reached) => dispatcher.hand_out_partial().await.map(|()| Ended::Reached),
            other => other,
        };
        let (mut watermark, failure) = dispatcher.finish().await;
        let finalized = watermark.take_finalized();
        self.handled(finalized, watermark.safe().cloned(), None);
        // Whatever was not handled is read again by the next stream, which reports it anew.
        self.stats.record_oldest_pending(None);
        let written = self.save(true).await;
        match (result, failure, written) {
            (Err(e), _, _) => Err(e),
            (Ok(_), Some(e), _) if !self.shutdown.is_cancelled() => Err(e),
            (Ok(_), _, Err(e)) => Err(e),
            (Ok(ended), _, Ok(())) => Ok(ended),
        }
    }

    /// Takes what is ready, or waits for the next of: a report, a tick, a read. `Some` when
    /// following ends.
    async fn step(
        &mut self,
        reader: &mut Reader,
        dispatcher: &mut Dispatcher<Mark>,
        tick: &mut tokio::time::Interval,
        state: &mut Loop,
        until: Until,
    ) -> Result<Option<Ended>, StoreError> {
        if self.shutdown.is_cancelled() {
            return Ok(Some(Ended::Shutdown));
        }
        dispatcher.take_ready_reports()?;
        self.finalize(dispatcher).await?;
        let in_flight = dispatcher.in_flight();
        self.stats
            .beyond_checkpoint
            .store(self.checkpointer.beyond(in_flight), Ordering::Relaxed);
        let full = self.checkpointer.window_full(in_flight);
        let ready = if full { None } else { reader.try_read() };
        let read = match ready {
            Some(read) => read,
            None => {
                // Nothing more is ready: hand out partial batches now rather than wait for
                // the next getMore, which may take `max_await` on a quiet stream.
                dispatcher.hand_out_partial().await?;
                tokio::select! {
                    _ = self.shutdown.cancelled() => return Ok(Some(Ended::Shutdown)),
                    report = dispatcher.take_next_report() => {
                        report?;
                        return Ok(None);
                    }
                    _ = tick.tick() => {
                        self.housekeeping(dispatcher, state, full).await?;
                        return Ok(None);
                    }
                    read = reader.read(), if !full => read,
                }
            }
        };
        let ended = self.take(read, dispatcher, state, until).await?;
        if state.last_sweep.elapsed() >= self.sweep_every {
            self.housekeeping(dispatcher, state, full).await?;
        }
        Ok(ended)
    }

    /// One read from the stream.
    async fn take(
        &mut self,
        read: Read,
        dispatcher: &mut Dispatcher<Mark>,
        state: &mut Loop,
        until: Until,
    ) -> Result<Option<Ended>, StoreError> {
        match read {
            Read::Failed(e) => Err(e),
            Read::Quiet { token, asked_at } => {
                let idle = dispatcher.in_flight() == 0;
                self.stats.record_progress(idle);
                self.checkpointer.quiet(token, idle);
                if self.checkpointer.moved() && self.checkpointer.due() {
                    self.save(false).await?;
                }
                Ok(match until {
                    Until::Shutdown => None,
                    Until::Lag(_) => Some(Ended::Reached),
                    Until::Past(_, moment) => {
                        if asked_at >= moment {
                            state.quiet_after_moment += 1;
                        }
                        (state.quiet_after_moment >= 2).then_some(Ended::Reached)
                    }
                })
            }
            Read::Event(raw) => {
                if is_invalidate(&raw) {
                    let p = &self.worker.projection;
                    return Err(StoreError::Stop(
                        crate::error::StopReason::Namespace,
                        format!(
                            "the event collection {}.{} was dropped or renamed (change stream invalidated)",
                            p.database, p.events
                        ),
                    ));
                }
                ProjectionStats::add(&self.stats.received, 1);
                self.stats.record_progress(false);
                let change = decode_change(&raw, &self.worker.projection.fields)
                    .map_err(StoreError::Reply)?;
                state.newest = change.cluster_time.or(state.newest);
                let ticket = dispatcher.issue((change.token.clone(), change.cluster_time));
                if dispatcher.in_flight() == 1 {
                    self.stats
                        .record_oldest_pending(change.cluster_time.map(|t| t.time));
                }
                match change.event {
                    Ok(event) => dispatcher.route(ticket, event).await?,
                    Err(malformed) => {
                        let token = bson::to_bson(&change.token).ok();
                        self.applier
                            .dead_letter_with_retry(
                                &malformed,
                                token.as_ref(),
                                self.retry.clone(),
                                self.shutdown,
                            )
                            .await?;
                        dispatcher.ack(ticket);
                    }
                }
                Ok(reached(until, state.newest).then_some(Ended::Reached))
            }
        }
    }

    /// Moves the position to the watermark; writes it when due.
    async fn finalize(&mut self, dispatcher: &mut Dispatcher<Mark>) -> Result<(), StoreError> {
        let watermark = dispatcher.watermark();
        let finalized = watermark.take_finalized();
        if finalized == 0 {
            return Ok(());
        }
        let safe = watermark.safe().cloned();
        let oldest = watermark
            .oldest_pending()
            .and_then(|(_, t)| t.map(|t| t.time));
        self.handled(finalized, safe, Some(oldest));
        if self.checkpointer.due() {
            self.save(false).await?;
        }
        Ok(())
    }

    /// `finalized` more events are handled, up to `safe`; `oldest` is the cluster time of
    /// the oldest still in flight, when known.
    fn handled(&mut self, finalized: u64, safe: Option<Mark>, oldest: Option<Option<u32>>) {
        if finalized == 0 {
            return;
        }
        if let Some(oldest) = oldest {
            self.stats.record_oldest_pending(oldest);
        }
        if let Some((_, cluster_time)) = &safe {
            self.stats.record_event_time(cluster_time.map(|t| t.time));
        }
        self.checkpointer.advance(finalized, safe);
    }

    /// Periodic work: persist progress that has waited `checkpoints.every` (or at once while
    /// the crash window is full, so that a failed write does not hold reading back), and
    /// offer due parked events to the lanes of their aggregates.
    async fn housekeeping(
        &mut self,
        dispatcher: &Dispatcher<Mark>,
        state: &mut Loop,
        full: bool,
    ) -> Result<(), StoreError> {
        if self.checkpointer.moved() && (full || self.checkpointer.due()) {
            self.save(false).await?;
        }
        if state.last_sweep.elapsed() >= self.sweep_every {
            state.last_sweep = Instant::now();
            let lanes = dispatcher.lane_count();
            let mut per_lane: Vec<Vec<ParkedEvent>> = vec![Vec::new(); lanes];
            let field = &self.worker.projection.fields.aggregate_id;
            for parked in self.applier.due_parked().await? {
                let lane = parked.event.get(field).map_or(0, |id| lane_of(id, lanes));
                per_lane[lane].push(parked);
            }
            for (lane, entries) in per_lane.into_iter().enumerate() {
                if !entries.is_empty() {
                    dispatcher.offer_parked(lane, entries);
                }
            }
        }
        Ok(())
    }

    /// Writes the position (`force`: even while a failed write waits for its retry); a
    /// failure is the path's to judge.
    async fn save(&mut self, force: bool) -> Result<(), StoreError> {
        if !force && self.checkpointer.waiting_to_retry() {
            return Ok(());
        }
        match self.checkpointer.write().await {
            Ok(written) => {
                if written {
                    let time = self.checkpointer.position.cluster_time.map(|t| t.time);
                    self.stats.record_checkpoint(time);
                }
                Ok(())
            }
            Err(e) => {
                let pause = (self.save_failed)(e)?;
                self.checkpointer.retry_in(pause);
                Ok(())
            }
        }
    }
}

/// Whether `until` is reached once the newest event read has cluster time `newest`.
fn reached(until: Until, newest: Option<Timestamp>) -> bool {
    match (until, newest) {
        (Until::Past(t, _), Some(n)) => n > t,
        (Until::Lag(max), Some(n)) => {
            (crate::ops::stats::unix_millis() / 1000).saturating_sub(n.time as u64) <= max.as_secs()
        }
        _ => false,
    }
}
