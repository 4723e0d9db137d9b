//! The checkpointer: what of a pipeline's position is persisted, and when.
//!
//! The position is the watermark's: the newest resume token below which every event is
//! applied, skipped or parked. It is written every `checkpoints.every_events / 2` finalized
//! events or every `checkpoints.every`, whichever comes first, and on a quiet stream from its
//! post-batch token, so that an idle worker's position never ages out of the oplog. The crash
//! window bounds what a `kill -9` delivers again: reading waits while `every_events` events
//! lie beyond the stored position, handled or in flight.
//!
//! Where the position goes is a [`PositionStore`]: a worker's checkpoint document (fenced by
//! its lease epoch), or a live rebuild's state document.

use crate::config::CheckpointConfig;
use crate::error::StoreError;
use crate::store::checkpoint::{Checkpoint, CheckpointStore};
use bson::{DateTime, Timestamp};
use mongodb::change_stream::event::ResumeToken;
use std::time::{Duration, Instant};

/// Where a pipeline stands.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Position {
    /// The newest token below which everything is handled; `None` before the first.
    pub token: Option<ResumeToken>,
    /// The cluster time of the newest event handled.
    pub cluster_time: Option<Timestamp>,
    /// Events handled since the worker first started.
    pub events_handled: i64,
    /// For `start = "now"`: where the worker's share is covered from
    /// ([`Checkpoint::origin`]).
    pub(crate) origin: Option<Timestamp>,
}

/// Where a position is persisted.
pub(crate) trait PositionStore {
    /// Writes `position`, whose token is `token`.
    fn write(
        &mut self,
        position: &Position,
        token: &ResumeToken,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send;
}

/// A worker's checkpoint document: fenced by the lease epoch when there is one, and marked as
/// issued by the worker's own stream.
pub(crate) struct WorkerCheckpoint {
    pub store: CheckpointStore,
    /// The worker's name (the document's `_id`).
    pub name: String,
    /// The lease epoch of this run; `None` without leases.
    pub(crate) fence: Option<i64>,
    /// Set once a newer holder refused a write of this run: nothing is written any more.
    pub fenced: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl PositionStore for WorkerCheckpoint {
    async fn write(&mut self, position: &Position, token: &ResumeToken) -> Result<(), StoreError> {
        if self.fenced.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        let checkpoint = Checkpoint {
            token: token.clone(),
            cluster_time: position.cluster_time,
            events_handled: position.events_handled,
            updated_at: DateTime::now(),
            token_from: Some(self.name.clone()),
            origin: position.origin,
        };
        match self.fence {
            Some(epoch) => self.store.save(&self.name, &checkpoint, epoch).await,
            None => self.store.save_unfenced(&self.name, &checkpoint).await,
        }
    }
}

/// The position of one pipeline, and when it is due to be persisted.
pub(crate) struct Checkpointer<S> {
    store: S,
    pub position: Position,
    saved_token: Option<ResumeToken>,
    /// Finalized events since the last write.
    unsaved: u64,
    last_save: Instant,
    /// After a failed write: no new attempt before this.
    retry_at: Option<Instant>,
    every_events: u64,
    every: Duration,
}

impl<S: PositionStore> Checkpointer<S> {
    /// A checkpointer at `position`; `stored` when that position is already persisted (a
    /// resumed checkpoint).
    pub fn new(store: S, position: Position, stored: bool, policy: &CheckpointConfig) -> Self {
        Checkpointer {
            saved_token: if stored { position.token.clone() } else { None },
            store,
            position,
            unsaved: 0,
            last_save: Instant::now(),
            retry_at: None,
            every_events: policy.every_events.max(1),
            every: policy.every,
        }
    }

    /// `finalized` more events are handled, up to `safe` (the watermark's position).
    pub fn advance(&mut self, finalized: u64, safe: Option<(ResumeToken, Option<Timestamp>)>) {
        if let Some((token, cluster_time)) = safe {
            self.position.token = Some(token);
            self.position.cluster_time = cluster_time.or(self.position.cluster_time);
        }
        self.position.events_handled += finalized as i64;
        self.unsaved += finalized;
    }

    /// Events a crash now would deliver again: those handled since the last write, and those
    /// in flight.
    pub fn beyond(&self, in_flight: usize) -> u64 {
        self.unsaved + in_flight as u64
    }

    /// The crash window is full: reading waits for the lanes and the next write.
    pub(crate) fn window_full(&self, in_flight: usize) -> bool {
        self.beyond(in_flight) >= self.every_events
    }

    /// Progress not yet persisted.
    pub fn moved(&self) -> bool {
        self.unsaved > 0 || self.position.token != self.saved_token
    }

    /// Due for a write: half the window of events, or `every` with progress unpersisted. The
    /// other half of the window stays open for events in flight, so the lanes keep writing
    /// while the checkpoint is saved.
    pub fn due(&self) -> bool {
        self.moved()
            && (self.unsaved >= self.every_events.div_ceil(2)
                || self.last_save.elapsed() >= self.every)
    }

    /// A quiet stream's post-batch token: past every event read so far when nothing is in
    /// flight, so the position moves there.
    pub(crate) fn quiet(&mut self, token: Option<ResumeToken>, nothing_in_flight: bool) {
        if nothing_in_flight && token.is_some() && token != self.position.token {
            self.position.token = token;
        }
    }

    /// Whether a failed write waits for its retry time.
    pub(crate) fn waiting_to_retry(&self) -> bool {
        self.retry_at.is_some_and(|at| Instant::now() < at)
    }

    /// After a failed write: the next attempt in `pause` at the earliest.
    pub(crate) fn retry_in(&mut self, pause: Duration) {
        self.retry_at = Some(Instant::now() + pause);
    }

    /// Writes the position if it moved (and it has a token). `Ok(true)` when written.
    pub async fn write(&mut self) -> Result<bool, StoreError> {
        let Some(token) = self.position.token.clone() else {
            return Ok(false);
        };
        if !self.moved() {
            return Ok(false);
        }
        self.store.write(&self.position, &token).await?;
        self.saved_token = Some(token);
        self.unsaved = 0;
        self.last_save = Instant::now();
        self.retry_at = None;
        Ok(true)
    }

    /// The store, for what its owner keeps in it besides the position.
    pub fn store(&mut self) -> &mut S {
        &mut self.store
    }
}
