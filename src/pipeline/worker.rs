//! A projection's worker: the pipeline's stages composed for one worker. It starts where
//! [`start`] says (its checkpoint, a position its projection's other checkpoints vouch for,
//! or as configured), follows the change stream ([`Tail`]), re-opens it after errors as the
//! error policy says, and recovers without loss when its position has left the oplog: it
//! folds its share of the event collection ([`Scan`]) under a stream opened first.

use crate::backoff::Backoff;
use crate::config::{CheckpointConfig, ProjectionConfig, SourceConfig, StartFrom};
use crate::error::{ErrorAction, Failures, StopReason, StoreError};
use crate::model::partition::Worker;
use crate::ops::stats::ProjectionStats;
use crate::pipeline::apply::Applier;
use crate::pipeline::checkpointer::{Checkpointer, Position, WorkerCheckpoint};
use crate::pipeline::dispatcher::Dispatcher;
use crate::pipeline::lanes::Lanes;
use crate::pipeline::scan::Scan;
use crate::pipeline::start::{self, Start, StreamStart};
use crate::pipeline::stream::{EventStream, Reader, StreamFrom};
use crate::pipeline::tail::{Tail, Until};
use crate::store::checkpoint::{Checkpoint, CheckpointStore};
use bson::{Document, RawDocumentBuf, doc};
use futures_util::TryStreamExt;
use mongodb::change_stream::ChangeStream;
use mongodb::options::IndexOptions;
use mongodb::{Collection, Database, IndexModel};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Why a projection stopped for good.
#[derive(Debug, thiserror::Error)]
#[error("projection {projection}: {message}")]
pub struct ProjectionStopped {
    pub projection: String,
    pub reason: StopReason,
    pub message: String,
}

/// Everything one projection's worker needs.
pub(crate) struct ProjectionWorker {
    /// Which worker this is: its name and share of the projection.
    pub worker: Worker,
    /// The projection's settings (`worker.projection`).
    pub config: Arc<ProjectionConfig>,
    pub source: SourceConfig,
    pub(crate) checkpointing: CheckpointConfig,
    pub db: Database,
    pub applier: Applier,
    pub checkpoints: CheckpointStore,
    pub stats: Arc<ProjectionStats>,
    pub shutdown: CancellationToken,
    /// The lease epoch that fences this run's checkpoint writes; `None` without leases.
    pub(crate) fence: Option<i64>,
    /// Set when a checkpoint write was refused because a newer lease holder claimed the
    /// checkpoint: the run stops and never writes again.
    fenced: Arc<AtomicBool>,
    /// This run's failures in a row: the next pause, and the count of errors not known to be
    /// transient ([`crate::error`]).
    failures: std::sync::Mutex<Failures>,
}

/// How the stream is opened next.
#[derive(Debug, Clone)]
enum Opening {
    /// After folding the worker's share of the event collection.
    Scan,
    From(StreamFrom),
}

impl ProjectionWorker {
    pub fn new(
        worker: Worker,
        source: SourceConfig,
        checkpointing: CheckpointConfig,
        db: Database,
        checkpoints: CheckpointStore,
        shutdown: CancellationToken,
    ) -> Self {
        let stats = Arc::new(ProjectionStats::default());
        let applier = Applier::new(&worker, &db, stats.clone());
        Self {
            config: worker.projection.clone(),
            worker,
            failures: std::sync::Mutex::new(Failures::new(&source)),
            source,
            checkpointing,
            db,
            applier,
            checkpoints,
            stats,
            shutdown,
            fence: None,
            fenced: Default::default(),
        }
    }

    /// A fresh worker for one period as lease holder: the same projection, stores and
    /// counters, its own stop token, and checkpoint writes fenced by `epoch`.
    pub(crate) fn for_run(&self, shutdown: CancellationToken, epoch: i64) -> ProjectionWorker {
        let mut run = ProjectionWorker::new(
            self.worker.clone(),
            self.source.clone(),
            self.checkpointing.clone(),
            self.db.clone(),
            self.checkpoints.clone(),
            shutdown,
        );
        run.stats = self.stats.clone();
        run.applier = Applier::new(&self.worker, &self.db, self.stats.clone());
        run.fence = Some(epoch);
        run
    }

    /// True when this run stopped because a newer lease holder fenced its checkpoint.
    pub(crate) fn was_fenced(&self) -> bool {
        self.fenced.load(Ordering::Relaxed)
    }

    /// Runs until shutdown (Ok) or until the projection cannot go on (Err).
    pub async fn run(&self) -> Result<(), ProjectionStopped> {
        self.ensure_event_index().await;
        let Some((position, stored, mut next)) = self.plan_start().await? else {
            return Ok(()); // shut down before the checkpoints could be read
        };
        let store = WorkerCheckpoint {
            store: self.checkpoints.clone(),
            name: self.worker.name.clone(),
            fence: self.fence,
            fenced: self.fenced.clone(),
        };
        let mut checkpointer = Checkpointer::new(store, position, stored, &self.checkpointing);
        let stream = EventStream::new(&self.worker, &self.db, self.source.max_await);
        while !self.shutdown.is_cancelled() {
            let handled = checkpointer.position.events_handled;
            let ended = match self.open(&stream, &next, &mut checkpointer).await {
                Ok(None) => break, // shut down during the fold
                Ok(Some(opened)) => self.follow(opened, &mut checkpointer).await,
                Err(e) => Err(e),
            };
            if let Some(token) = checkpointer.position.token.clone() {
                // From now on the position is this stream's own.
                next = Opening::From(StreamFrom::After(token));
            }
            let Err(e) = ended else { break };
            if checkpointer.position.events_handled > handled {
                self.progressed();
            }
            if e.action() == ErrorAction::HistoryLost {
                self.history_lost(&e);
                next = Opening::Scan;
            } else if let Err(stopped) = self.restart_after(&e).await {
                self.save_final(&mut checkpointer).await;
                return Err(stopped);
            }
        }
        self.save_final(&mut checkpointer).await;
        if self.was_fenced() {
            return Err(self.stopped(
                StopReason::Fenced,
                "a newer lease holder claimed the checkpoint; this run stopped",
            ));
        }
        tracing::info!(projection = %self.worker.name, events_handled = checkpointer.position.events_handled, "projection stopped");
        Ok(())
    }

    /// Opens the stream as `next` says; a first opening from "now" records where "now" was,
    /// so that a restart continues there and a sibling started later begins there too.
    /// `None` on shutdown during a fold.
    async fn open(
        &self,
        stream: &EventStream,
        next: &Opening,
        checkpointer: &mut Checkpointer<WorkerCheckpoint>,
    ) -> Result<Option<ChangeStream<RawDocumentBuf>>, StoreError> {
        let opened = match next {
            Opening::Scan => return self.fold(stream, checkpointer).await,
            Opening::From(from) => stream.open(from.clone()).await?,
        };
        if checkpointer.position.token.is_none() {
            let token = opened.resume_token();
            let origin = &mut checkpointer.position.origin;
            if origin.is_none() && self.config.start == StartFrom::Now {
                *origin = token.as_ref().and_then(start::token_cluster_time);
            }
            checkpointer.position.token = token;
            self.save_now(checkpointer).await?;
        }
        Ok(Some(opened))
    }

    /// Follows an open stream until shutdown (Ok) or an error.
    async fn follow(
        &self,
        opened: ChangeStream<RawDocumentBuf>,
        checkpointer: &mut Checkpointer<WorkerCheckpoint>,
    ) -> Result<(), StoreError> {
        let mut save_failed = |e: StoreError| self.checkpoint_failed(e);
        let tail = Tail {
            worker: &self.worker,
            applier: &self.applier,
            stats: &self.stats,
            checkpointer,
            save_failed: &mut save_failed,
            shutdown: &self.shutdown,
            tick_every: self
                .config
                .parking
                .sweep_every
                .min(self.checkpointing.every),
            sweep_every: self.config.parking.sweep_every,
            retry: self.backoff(),
        };
        let dispatcher = Dispatcher::new(self.spawn_lanes(), self.source.batch_size);
        tail.run(Reader::spawn(opened), dispatcher, Until::Shutdown)
            .await
            .map(|_| ())
    }

    /// Folds every stored event of the worker's share through the guard, then returns a
    /// stream opened before the fold began, so that nothing written meanwhile is missed. Used
    /// on a first start from the beginning and when the position has left the oplog. Nothing
    /// is checkpointed until the whole fold is applied. `None` on shutdown.
    async fn fold(
        &self,
        stream: &EventStream,
        checkpointer: &mut Checkpointer<WorkerCheckpoint>,
    ) -> Result<Option<ChangeStream<RawDocumentBuf>>, StoreError> {
        let opened = stream.open(StreamFrom::Now).await?;
        let started_at = opened.resume_token();
        self.stats.record_scan_started();
        let mut cursor = Scan::new(&self.worker, &self.db).open().await?;
        // The same lanes as the live stream: each lane's memory of stored sequences makes an
        // already-applied prefix cost one probe per aggregate and round, no writes.
        let mut dispatcher = Dispatcher::new(self.spawn_lanes(), self.source.batch_size);
        loop {
            let read = cursor
                .feed(1000, &mut dispatcher, &self.applier, &self.shutdown)
                .await?;
            // A long fold is progress too: liveness must not fail while catching up.
            self.stats.record_progress(false);
            if read == 0 {
                break;
            }
        }
        dispatcher.hand_out_partial().await?;
        let (watermark, failure) = dispatcher.finish().await;
        if let Some(e) = failure {
            return Err(e);
        }
        if !cursor.exhausted || watermark.in_flight() > 0 {
            return Ok(None); // shut down meanwhile: nothing is saved
        }
        tracing::info!(projection = %self.worker.name, scanned = cursor.scanned, "caught up from the event collection");
        // Events written during the fold come from the stream, which reports them anew.
        self.stats.record_oldest_pending(None);
        if let Some(token) = started_at {
            checkpointer.advance(cursor.scanned, Some((token, None)));
        }
        self.save_now(checkpointer).await?;
        Ok(Some(opened))
    }

    /// This worker's apply lanes, retrying transient errors with its backoff.
    fn spawn_lanes(&self) -> Lanes {
        Lanes::spawn(
            &self.applier,
            self.source.lanes,
            &self.shutdown,
            self.source.reopen_backoff_initial,
            self.source.reopen_backoff_max,
        )
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(
            self.source.reopen_backoff_initial,
            self.source.reopen_backoff_max,
        )
    }

    /// Where this worker starts ([`start::choose_start`]): the position, whether it is
    /// already stored, and how the stream is opened first. `None` on shutdown.
    async fn plan_start(&self) -> Result<Option<(Position, bool, Opening)>, ProjectionStopped> {
        let name = &self.worker.name;
        let Some((start, own)) = self.read_checkpoints().await? else {
            return Ok(None);
        };
        let mut position = Position::default();
        if let Some(mine) = &own {
            position.events_handled = mine.events_handled;
            position.origin = mine.origin;
        }
        let plan = match start {
            Start::Resume(c) => {
                tracing::info!(projection = %name, events_handled = c.events_handled, "resuming from checkpoint");
                position.cluster_time = c.cluster_time;
                position.token = Some(c.token.clone());
                (position, true, Opening::From(StreamFrom::After(c.token)))
            }
            Start::Inherited(inherited) => {
                tracing::info!(
                    projection = %name,
                    from = %inherited.from,
                    reason = ?inherited.reason,
                    at = ?inherited.at,
                    "starting from a position other checkpoints vouch for (later events are redelivered; the sequence guard absorbs those already applied)"
                );
                let from = match inherited.at {
                    StreamStart::At(at) => {
                        position.origin = position.origin.or(Some(at));
                        StreamFrom::At(at)
                    }
                    StreamStart::AfterToken(token) => StreamFrom::After(token),
                };
                (position, false, Opening::From(from))
            }
            Start::Configured => {
                tracing::info!(projection = %name, start = ?self.config.start, "no checkpoint covers this worker's share: first start as configured");
                let opening = match self.config.start {
                    StartFrom::Beginning => Opening::Scan,
                    StartFrom::Now => Opening::From(StreamFrom::Now),
                };
                (position, false, opening)
            }
        };
        Ok(Some(plan))
    }

    /// The worker's own checkpoint and where it starts, from the rest of its projection's.
    /// Read errors are retried with backoff until shutdown (`None`): starting without knowing
    /// the checkpoints could skip events. An unreadable own checkpoint stops the worker.
    async fn read_checkpoints(
        &self,
    ) -> Result<Option<(Start, Option<Checkpoint>)>, ProjectionStopped> {
        let name = &self.worker.name;
        loop {
            let read = async {
                // The own checkpoint is read on its own first: unreadable, it is an error of
                // this worker, where the family merely leaves an unreadable one out.
                let own = self.checkpoints.load(name).await?;
                let family = self.checkpoints.load_family(&self.config.name).await?;
                Ok::<_, StoreError>((own, family))
            };
            match read.await {
                Ok((own, family)) => {
                    self.progressed();
                    let start = start::choose_start(name, &family, self.config.start);
                    return Ok(Some((start, own)));
                }
                Err(e) => {
                    if let Some(stopped) = self.failed(&e) {
                        return Err(stopped);
                    }
                    let pause = self.next_pause();
                    tracing::warn!(projection = %name, error = %e, retry_in = ?pause, "cannot read the checkpoints yet; will retry");
                    if !self.sleep(pause).await {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Writes the position now; a failure the policy does not let pass is an error.
    async fn save_now(
        &self,
        checkpointer: &mut Checkpointer<WorkerCheckpoint>,
    ) -> Result<(), StoreError> {
        match checkpointer.write().await {
            Ok(written) => {
                if written {
                    let time = checkpointer.position.cluster_time.map(|t| t.time);
                    self.stats.record_checkpoint(time);
                }
                Ok(())
            }
            Err(e) => {
                let pause = self.checkpoint_failed(e)?;
                checkpointer.retry_in(pause);
                Ok(())
            }
        }
    }

    /// The policy for a failed checkpoint write. A newer lease holder's claim stops this run
    /// (and is no error); a stop is an error; anything else is counted, and tried again after
    /// the worker's next pause (a checkpoint that lags behind only means more redelivery, never
    /// loss) until errors not known to be transient have come too often in a row.
    fn checkpoint_failed(&self, e: StoreError) -> Result<Duration, StoreError> {
        match e.action() {
            ErrorAction::Stop(StopReason::Fenced) => {
                self.fenced.store(true, Ordering::Relaxed);
                ProjectionStats::add(&self.stats.checkpoint_fenced, 1);
                tracing::warn!(
                    projection = %self.worker.name,
                    epoch = ?self.fence,
                    error = %e,
                    "checkpoint write refused: a newer lease holder took over; stopping this run"
                );
                self.shutdown.cancel();
                Ok(Duration::from_secs(3600))
            }
            ErrorAction::Stop(_) => Err(e),
            _ => {
                let exhausted = self
                    .failures
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .count(&e);
                if let Some(reason) = exhausted {
                    return Err(StoreError::Stop(reason, format!("checkpoint write: {e}")));
                }
                let pause = self.next_pause();
                self.stats.set_last_error(format!("checkpoint write: {e}"));
                tracing::warn!(projection = %self.worker.name, error = %e, retry_in = ?pause, "checkpoint write failed; will retry");
                Ok(pause)
            }
        }
    }

    /// The last checkpoint before stopping, retried with backoff: the shutdown deadline bounds
    /// how long this may take, and an error that retrying cannot fix ends it at once.
    async fn save_final(&self, checkpointer: &mut Checkpointer<WorkerCheckpoint>) {
        if checkpointer.position.token.is_none() || self.was_fenced() {
            return;
        }
        let mut backoff = self.backoff();
        for _ in 0..8 {
            match checkpointer.write().await {
                Ok(_) => return,
                Err(e) if matches!(e.action(), ErrorAction::Stop(_)) => {
                    tracing::error!(projection = %self.worker.name, error = %e, "final checkpoint refused");
                    break;
                }
                Err(e) => {
                    tracing::warn!(projection = %self.worker.name, error = %e, "final checkpoint failed; retrying");
                    tokio::time::sleep(backoff.next_pause()).await;
                }
            }
        }
        tracing::error!(
            projection = %self.worker.name,
            "final checkpoint could not be written; a restart redelivers events since the last one (absorbed by the guard)"
        );
    }

    /// The worker cannot go on: the reason is also `/status`'s last error and, unless a newer
    /// lease holder took over (which is no fault), `mongo_projector_worker_stopped`.
    pub(crate) fn stopped(
        &self,
        reason: StopReason,
        message: impl Into<String>,
    ) -> ProjectionStopped {
        let message = message.into();
        if reason != StopReason::Fenced {
            self.stats.set_stopped(reason);
            self.stats
                .set_last_error(format!("projection stopped: {message}"));
            tracing::error!(
                projection = %self.worker.name,
                reason = reason.label(),
                error = %message,
                fix = reason.fix(),
                "projection stopped"
            );
        }
        ProjectionStopped {
            projection: self.worker.name.clone(),
            reason,
            message,
        }
    }

    /// Counts a failure; the stop it calls for, if any.
    fn failed(&self, e: &StoreError) -> Option<ProjectionStopped> {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let reason = failures.count(e)?;
        let message = match reason {
            StopReason::RetriesExhausted => format!(
                "{e} (failed {} times in a row; errors not known to be transient are retried source.unknown_error_retries times)",
                failures.unknown_in_a_row()
            ),
            _ => e.to_string(),
        };
        drop(failures);
        Some(self.stopped(reason, message))
    }

    /// Something was applied: the next failure starts from the first pause and a fresh count.
    fn progressed(&self) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .progress();
    }

    /// The next pause of this worker's backoff.
    fn next_pause(&self) -> Duration {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .backoff
            .next_pause()
    }

    /// Waits `pause` unless shutdown comes first (false then).
    async fn sleep(&self, pause: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(pause) => true,
            _ = self.shutdown.cancelled() => false,
        }
    }

    fn history_lost(&self, e: &StoreError) {
        ProjectionStats::add(&self.stats.history_lost_recoveries, 1);
        tracing::warn!(
            projection = %self.worker.name,
            error = %e,
            "resume point is no longer in the oplog: catching up from the event collection"
        );
    }

    /// After a failure of the stream or of what it feeds: counts it (a stop, or too many
    /// errors not known to be transient, ends the worker), then waits the next pause before
    /// the stream is opened again from the last handled position.
    async fn restart_after(&self, e: &StoreError) -> Result<(), ProjectionStopped> {
        if let Some(stopped) = self.failed(e) {
            return Err(stopped);
        }
        self.stats.count_restart(&e.reason());
        self.stats.set_last_error(e.to_string());
        let pause = self.next_pause();
        tracing::warn!(
            projection = %self.worker.name,
            reason = %e.reason(),
            error = %e,
            retry_in = ?pause,
            "change stream failed; re-opening from the last handled position"
        );
        self.sleep(pause).await;
        Ok(())
    }

    fn events(&self) -> Collection<Document> {
        self.db.collection(&self.config.events)
    }

    /// Checks for the unique `{aggregateId: 1, sequenceNumber: 1}` index that ordering and
    /// healing rely on; creates it when configured to.
    async fn ensure_event_index(&self) {
        let f = &self.config.fields;
        let wanted = doc! {&f.aggregate_id: 1, &f.sequence_number: 1};
        let present = match self.events().list_indexes().await {
            Ok(cursor) => match cursor.try_collect::<Vec<IndexModel>>().await {
                Ok(indexes) => indexes.iter().any(|i| {
                    i.keys == wanted && i.options.as_ref().and_then(|o| o.unique).unwrap_or(false)
                }),
                Err(_) => false,
            },
            Err(_) => false, // the collection does not exist yet
        };
        if present {
            return;
        }
        if !self.config.create_index {
            tracing::warn!(
                projection = %self.worker.name,
                "the event collection has no unique index on {{{}: 1, {}: 1}}: ordering and gap-healing rely on it",
                f.aggregate_id,
                f.sequence_number
            );
            return;
        }
        let model = IndexModel::builder()
            .keys(wanted)
            .options(IndexOptions::builder().unique(true).build())
            .build();
        match self.events().create_index(model).await {
            Ok(_) => {
                tracing::info!(projection = %self.worker.name, "created the unique index on the event collection")
            }
            Err(e) => {
                tracing::warn!(projection = %self.worker.name, error = %e, "cannot create the unique event index")
            }
        }
    }
}
