//! Tailing one projection's event collection: opening the change stream from the stored
//! checkpoint (or from now, or from the start of the collection), handing each event to the
//! [`Applier`], checkpointing, re-opening with backoff after errors, and recovering without
//! loss when the stored token has fallen off the oplog.

use crate::backoff::Backoff;
use crate::config::{CheckpointConfig, ProjectionConfig, SourceConfig, StartFrom};
use crate::error::{ErrorAction, Failures, StopReason, StoreError};
use crate::model::event::{Event, decode_change, decode_event};
use crate::model::partition::Worker;
use crate::ops::stats::ProjectionStats;
use crate::pipeline::apply::Applier;
use crate::pipeline::lanes::{LaneReport, LaneWork, Lanes, lane_of};
use crate::pipeline::start::{self, Start, StreamStart};
use crate::pipeline::watermark::{Ticket, Watermark};
use crate::store::checkpoint::{Checkpoint, CheckpointStore};
use crate::store::park::ParkedEvent;
use bson::{Bson, DateTime, Document, RawDocumentBuf, Timestamp, doc};
use futures_util::TryStreamExt;
use mongodb::change_stream::ChangeStream;
use mongodb::change_stream::event::ResumeToken;
use mongodb::options::{ChangeStreamOptions, IndexOptions};
use mongodb::{Collection, Database, IndexModel};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
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
pub struct ProjectionWorker {
    /// Which worker this is: its name and share of the projection.
    pub worker: Worker,
    /// The projection's settings (`worker.projection`).
    pub config: Arc<ProjectionConfig>,
    pub source: SourceConfig,
    pub checkpointing: CheckpointConfig,
    pub db: Database,
    pub applier: Applier,
    pub checkpoints: CheckpointStore,
    pub stats: Arc<ProjectionStats>,
    pub shutdown: CancellationToken,
    /// The lease epoch that fences this run's checkpoint writes; `None` without leases.
    pub fence: Option<i64>,
    /// Set when a checkpoint write was refused because a newer lease holder claimed the
    /// checkpoint: the run stops and never writes again.
    fenced: std::sync::atomic::AtomicBool,
    /// This run's failures in a row: the next pause, and the count of errors not known to be
    /// transient ([`crate::error`]).
    failures: std::sync::Mutex<Failures>,
}

/// Where the worker stands: the newest position below which everything is handled.
struct Position {
    token: Option<ResumeToken>,
    cluster_time: Option<Timestamp>,
    events_handled: i64,
    saved_token: Option<ResumeToken>,
    unsaved_events: u64,
    last_save: Instant,
    /// Where this worker's share is covered from, for `start = "now"`
    /// ([`Checkpoint::origin`]).
    origin: Option<Timestamp>,
    /// After a failed checkpoint write: no new attempt before this.
    save_retry_at: Option<Instant>,
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
    pub fn for_run(&self, shutdown: CancellationToken, epoch: i64) -> ProjectionWorker {
        ProjectionWorker {
            worker: self.worker.clone(),
            config: self.config.clone(),
            source: self.source.clone(),
            checkpointing: self.checkpointing.clone(),
            db: self.db.clone(),
            applier: Applier::new(&self.worker, &self.db, self.stats.clone()),
            checkpoints: self.checkpoints.clone(),
            stats: self.stats.clone(),
            shutdown,
            fence: Some(epoch),
            fenced: Default::default(),
            failures: std::sync::Mutex::new(Failures::new(&self.source)),
        }
    }

    /// True when this run stopped because a newer lease holder fenced its checkpoint.
    pub fn was_fenced(&self) -> bool {
        self.fenced.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn events(&self) -> Collection<Document> {
        self.db.collection(&self.config.events)
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

    /// Runs until shutdown (Ok) or until the projection cannot go on (Err).
    pub async fn run(&self) -> Result<(), ProjectionStopped> {
        let name = self.worker.name.clone();
        self.ensure_event_index().await;
        let mut position = Position {
            token: None,
            cluster_time: None,
            events_handled: 0,
            saved_token: None,
            unsaved_events: 0,
            last_save: Instant::now(),
            origin: None,
            save_retry_at: None,
        };
        let mut inherited_at: Option<Timestamp> = None;
        let Some((start, own)) = self.choose_start().await? else {
            return Ok(()); // shut down before the checkpoints could be read
        };
        match start {
            Start::Resume(c) => {
                tracing::info!(projection = %name, events_handled = c.events_handled, "resuming from checkpoint");
                position.events_handled = c.events_handled;
                position.cluster_time = c.cluster_time;
                position.origin = c.origin;
                position.saved_token = Some(c.token.clone());
                position.token = Some(c.token);
            }
            Start::Inherited(inherited) => {
                tracing::info!(
                    projection = %name,
                    from = %inherited.from,
                    reason = ?inherited.reason,
                    at = ?inherited.at,
                    "starting from a position other checkpoints vouch for (later events are redelivered; the sequence guard absorbs those already applied)"
                );
                if let Some(mine) = own {
                    position.events_handled = mine.events_handled;
                    position.origin = mine.origin;
                }
                match inherited.at {
                    StreamStart::At(at) => {
                        inherited_at = Some(at);
                        position.origin = position.origin.or(Some(at));
                    }
                    StreamStart::AfterToken(token) => position.token = Some(token),
                }
            }
            Start::Configured => {
                tracing::info!(projection = %name, start = ?self.config.start, "no checkpoint covers this worker's share: first start as configured")
            }
        }
        let mut first_start = position.token.is_none()
            && inherited_at.is_none()
            && self.config.start == StartFrom::Beginning;
        while !self.shutdown.is_cancelled() {
            let opened = if first_start {
                self.catch_up_from_collection(&mut position).await
            } else if let Some(at) = inherited_at {
                self.open_from(None, Some(at)).await.map(Some)
            } else {
                self.open(position.token.clone()).await.map(Some)
            };
            let stream = match opened {
                Ok(Some(s)) => {
                    inherited_at = None; // from now on the position is this stream's own
                    s
                }
                Ok(None) => break, // shut down during catch-up
                Err(e) if e.action() == ErrorAction::HistoryLost => {
                    self.history_lost(&e);
                    first_start = true;
                    continue;
                }
                Err(e) => {
                    self.restart_after(&e).await?;
                    continue;
                }
            };
            first_start = false;
            if position.token.is_none() {
                // First start from "now": remember where "now" was, so a restart continues
                // there, and so that a sibling started later begins there too.
                position.token = stream.resume_token();
                if position.origin.is_none() && self.config.start == StartFrom::Now {
                    position.origin = position.token.as_ref().and_then(start::token_cluster_time);
                }
                if let Err(e) = self.save(&mut position).await {
                    return Err(self.stop_for(&e));
                }
            }
            match self.tail(stream, &mut position).await {
                Ok(()) => break,
                Err(e) if e.action() == ErrorAction::HistoryLost => {
                    self.history_lost(&e);
                    first_start = true;
                }
                Err(e) => {
                    if let Err(stopped) = self.restart_after(&e).await {
                        self.save_final(&mut position).await;
                        return Err(stopped);
                    }
                }
            }
        }
        self.save_final(&mut position).await;
        if self.was_fenced() {
            return Err(self.stopped(
                StopReason::Fenced,
                "a newer lease holder claimed the checkpoint; this run stopped",
            ));
        }
        tracing::info!(projection = %name, events_handled = position.events_handled, "projection stopped");
        Ok(())
    }

    /// The stop an error calls for by itself (a stop, or a retry budget spent elsewhere).
    fn stop_for(&self, e: &StoreError) -> ProjectionStopped {
        match e.action() {
            ErrorAction::Stop(reason) => self.stopped(reason, e.to_string()),
            _ => self.stopped(StopReason::RetriesExhausted, e.to_string()),
        }
    }

    /// Where this worker starts ([`start::choose_start`]), from its own checkpoint and
    /// those of the rest of its projection. Read errors are retried with backoff until
    /// shutdown (`None`): starting without knowing the checkpoints could skip events. An
    /// unreadable own checkpoint stops the worker.
    async fn choose_start(&self) -> Result<Option<(Start, Option<Checkpoint>)>, ProjectionStopped> {
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

    /// The `$match` after `$changeStream`: inserts (with the projection's filter and the
    /// worker's partition on the event document) and the invalidate that ends a stream.
    fn stream_pipeline(&self) -> Vec<Document> {
        let mut inserts = match &self.config.filter {
            None => doc! {"operationType": "insert"},
            Some(f) => {
                let mut m = prefix_filter(f, "fullDocument.");
                m.insert("operationType", "insert");
                m
            }
        };
        let aggregate_id = format!("fullDocument.{}", self.config.fields.aggregate_id);
        self.worker.restrict(&mut inserts, &aggregate_id);
        vec![doc! {"$match": {"$or": [inserts, {"operationType": "invalidate"}]}}]
    }

    async fn open(
        &self,
        token: Option<ResumeToken>,
    ) -> Result<ChangeStream<RawDocumentBuf>, StoreError> {
        self.open_from(token, None).await
    }

    /// Opens the stream after `token`, or at the cluster time `start_at`, or from now.
    async fn open_from(
        &self,
        token: Option<ResumeToken>,
        start_at: Option<Timestamp>,
    ) -> Result<ChangeStream<RawDocumentBuf>, StoreError> {
        // Bounded batches: a backlog is fetched a slice at a time, never in one reply.
        let options = ChangeStreamOptions::builder()
            .resume_after(token)
            .start_at_operation_time(start_at)
            .max_await_time(Some(self.source.max_await))
            .batch_size(Some(STREAM_BATCH))
            .build();
        let stream = self
            .events()
            .watch()
            .pipeline(self.stream_pipeline())
            .with_options(options)
            .await?
            .with_type::<RawDocumentBuf>();
        Ok(stream)
    }

    /// This worker's apply lanes, retrying transient errors with the stream's backoff.
    fn spawn_lanes(&self) -> Lanes {
        Lanes::spawn(
            &self.applier,
            self.source.lanes,
            &self.shutdown,
            self.source.reopen_backoff_initial,
            self.source.reopen_backoff_max,
        )
    }

    /// Reads change events until shutdown (Ok) or an error, applying them through the lanes.
    ///
    /// Three stages run at once: a reader task pulls the change stream into a bounded prefetch
    /// queue (so the next batch is read while this one is written), this dispatcher gives each
    /// event a ticket and routes it to its aggregate's lane, and the lanes write batches and
    /// report tickets back. The position only moves to the watermark of reported tickets. No
    /// more than `checkpoints.every_events` tickets lie beyond the stored checkpoint (saved
    /// every half of that), which bounds what a crash redelivers. On the way out the lanes
    /// finish what they were given, so a graceful stop leaves a checkpoint after everything
    /// that was applied.
    async fn tail(
        &self,
        stream: ChangeStream<RawDocumentBuf>,
        position: &mut Position,
    ) -> Result<(), StoreError> {
        let (read_tx, mut reads) = mpsc::channel(PREFETCH);
        // Aborted when this future is dropped (a crash of the worker task), not only on return.
        let reader =
            tokio_util::task::AbortOnDropHandle::new(tokio::spawn(read_stream(stream, read_tx)));
        let mut lanes = self.spawn_lanes();
        let mut watermark: Watermark<(ResumeToken, Option<Timestamp>)> = Watermark::new();
        let mut pending: Vec<Vec<(Ticket, Event)>> = vec![Vec::new(); lanes.count()];
        let batch_size = self.source.batch_size.max(1);
        let tick_every = self
            .config
            .parking
            .sweep_every
            .min(self.checkpointing.every)
            .max(Duration::from_millis(10));
        let mut tick = tokio::time::interval(tick_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_sweep = Instant::now();
        let result: Result<(), StoreError> = 'run: loop {
            if self.shutdown.is_cancelled() {
                break Ok(());
            }
            while let Ok(report) = lanes.reports.try_recv() {
                if let Err(e) = self.on_report(report, &mut watermark, position).await {
                    break 'run Err(e);
                }
            }
            // The crash bound: at most `every_events` events between the stored checkpoint
            // and the newest one handed out, so a kill -9 redelivers no more than that. When
            // the window is full, reading waits for the lanes and the next checkpoint.
            let beyond = position.unsaved_events + watermark.in_flight() as u64;
            self.stats
                .beyond_checkpoint
                .store(beyond, std::sync::atomic::Ordering::Relaxed);
            let full = beyond >= self.checkpointing.every_events;
            let read = if full {
                Err(mpsc::error::TryRecvError::Empty)
            } else {
                reads.try_recv()
            };
            let read = match read {
                Ok(read) => read,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    break Err(StoreError::Reply("change stream reader ended".into()));
                }
                Err(mpsc::error::TryRecvError::Empty) => {
                    // Nothing more is ready: hand out partial batches now rather than wait
                    // for the next getMore, which may take `max_await` on a quiet stream.
                    for (lane, waiting) in pending.iter_mut().enumerate() {
                        if !waiting.is_empty() {
                            let batch = std::mem::take(waiting);
                            if let Err(e) = self
                                .dispatch(&mut lanes, lane, batch, &mut watermark, position)
                                .await
                            {
                                break 'run Err(e);
                            }
                        }
                    }
                    tokio::select! {
                        _ = self.shutdown.cancelled() => break Ok(()),
                        report = lanes.reports.recv() => {
                            let Some(report) = report else {
                                break Err(StoreError::Reply("apply lanes stopped".into()));
                            };
                            if let Err(e) = self.on_report(report, &mut watermark, position).await {
                                break Err(e);
                            }
                            continue;
                        }
                        _ = tick.tick() => {
                            if let Err(e) = self.housekeeping(&lanes, &mut last_sweep, position, full).await {
                                break Err(e);
                            }
                            continue;
                        }
                        read = reads.recv(), if !full => match read {
                            Some(read) => read,
                            None => break Err(StoreError::Reply("change stream reader ended".into())),
                        },
                    }
                }
            };
            match read {
                Read::Failed(e) => break Err(e),
                Read::Quiet(token) => {
                    self.stats.record_progress(watermark.in_flight() == 0);
                    // A quiet stream: the post-batch resume token still moves; persist it so
                    // that an idle projection's position never ages out of the oplog. Only
                    // with nothing in flight: the token is past every event read so far.
                    if watermark.in_flight() == 0 && token.is_some() && token != position.token {
                        position.token = token;
                    }
                    if position.token != position.saved_token
                        && position.last_save.elapsed() >= self.checkpointing.every
                        && let Err(e) = self.save(position).await
                    {
                        break Err(e);
                    }
                }
                Read::Event(raw) => {
                    if raw.get_str("operationType").ok() == Some("invalidate") {
                        break Err(StoreError::Stop(
                            StopReason::Namespace,
                            format!(
                                "the event collection {}.{} was dropped or renamed (change stream invalidated)",
                                self.config.database, self.config.events
                            ),
                        ));
                    }
                    ProjectionStats::add(&self.stats.received, 1);
                    self.stats.record_progress(false);
                    let change = match decode_change(&raw, &self.config.fields) {
                        Ok(c) => c,
                        Err(e) => break Err(StoreError::Reply(e)),
                    };
                    let ticket = watermark.issue((change.token.clone(), change.cluster_time));
                    if watermark.in_flight() == 1 {
                        self.stats
                            .record_oldest_pending(change.cluster_time.map(|t| t.time));
                    }
                    match change.event {
                        Ok(event) => {
                            let lane = lane_of(&event.aggregate_id, pending.len());
                            pending[lane].push((ticket, event));
                            if pending[lane].len() >= batch_size {
                                let batch = std::mem::take(&mut pending[lane]);
                                if let Err(e) = self
                                    .dispatch(&mut lanes, lane, batch, &mut watermark, position)
                                    .await
                                {
                                    break Err(e);
                                }
                            }
                        }
                        Err(malformed) => {
                            let token = bson::to_bson(&change.token).ok();
                            if let Err(e) = self
                                .dead_letter_with_retry(&malformed, token.as_ref())
                                .await
                            {
                                break Err(e);
                            }
                            watermark.ack(ticket);
                            if let Err(e) = self.advance(&mut watermark, position).await {
                                break Err(e);
                            }
                        }
                    }
                }
            }
            if last_sweep.elapsed() >= self.config.parking.sweep_every
                && let Err(e) = self
                    .housekeeping(&lanes, &mut last_sweep, position, full)
                    .await
            {
                break Err(e);
            }
        };
        reader.abort();
        // Whatever was handed to the lanes is finished (or abandoned on shutdown while being
        // retried); events still waiting in `pending` were never written and stay above the
        // watermark, so they are read again after a restart.
        let mut failure = None;
        for report in lanes.finish().await {
            match report {
                LaneReport::Done(tickets) => {
                    for t in tickets {
                        watermark.ack(t);
                    }
                }
                LaneReport::Failed(e) => failure = Some(e),
            }
        }
        let advanced = self.advance(&mut watermark, position).await;
        // Whatever was not handled is read again by the next stream, which reports it anew.
        self.stats.record_oldest_pending(None);
        match (result, failure, advanced) {
            (Err(e), _, _) => Err(e),
            (Ok(()), Some(e), _) if !self.shutdown.is_cancelled() => Err(e),
            (Ok(()), _, Err(e)) => Err(e),
            (Ok(()), _, Ok(())) => Ok(()),
        }
    }

    /// Hands a batch to a lane, taking the lanes' reports while that lane's queue is full.
    async fn dispatch(
        &self,
        lanes: &mut Lanes,
        lane: usize,
        batch: Vec<(Ticket, Event)>,
        watermark: &mut Watermark<(ResumeToken, Option<Timestamp>)>,
        position: &mut Position,
    ) -> Result<(), StoreError> {
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
                    Some(report) => self.on_report(report, watermark, position).await?,
                    None => return Err(StoreError::Reply("apply lanes stopped".into())),
                },
            }
        }
    }

    /// Hands a batch to a lane during a catch-up, where reports only matter for failures.
    /// Returns how many batches were reported done meanwhile.
    async fn hand_over(
        lanes: &mut Lanes,
        lane: usize,
        batch: Vec<(Ticket, Event)>,
    ) -> Result<usize, StoreError> {
        let mut done = 0;
        loop {
            tokio::select! {
                permit = lanes.senders[lane].reserve() => {
                    return match permit {
                        Ok(permit) => {
                            permit.send(LaneWork::Batch(batch));
                            Ok(done)
                        }
                        Err(_) => Err(StoreError::Reply("an apply lane stopped".into())),
                    };
                }
                report = lanes.reports.recv() => match report {
                    Some(LaneReport::Failed(e)) => return Err(e),
                    Some(LaneReport::Done(_)) => done += 1,
                    None => return Err(StoreError::Reply("apply lanes stopped".into())),
                },
            }
        }
    }

    /// Takes a lane's report: its tickets move the watermark, a failure ends this stream.
    async fn on_report(
        &self,
        report: LaneReport,
        watermark: &mut Watermark<(ResumeToken, Option<Timestamp>)>,
        position: &mut Position,
    ) -> Result<(), StoreError> {
        match report {
            LaneReport::Done(tickets) => {
                for t in tickets {
                    watermark.ack(t);
                }
                self.advance(watermark, position).await
            }
            LaneReport::Failed(e) => Err(e),
        }
    }

    /// Moves the position to the watermark and checkpoints every N events or T time.
    async fn advance(
        &self,
        watermark: &mut Watermark<(ResumeToken, Option<Timestamp>)>,
        position: &mut Position,
    ) -> Result<(), StoreError> {
        let finalized = watermark.take_finalized();
        if finalized == 0 {
            return Ok(());
        }
        self.progressed();
        self.stats.record_oldest_pending(
            watermark
                .oldest_pending()
                .and_then(|(_, cluster_time)| cluster_time.map(|t| t.time)),
        );
        if let Some((token, cluster_time)) = watermark.safe() {
            position.token = Some(token.clone());
            position.cluster_time = cluster_time.or(position.cluster_time);
            self.stats.record_event_time(cluster_time.map(|t| t.time));
        }
        position.events_handled += finalized as i64;
        position.unsaved_events += finalized;
        // Half the interval: the other half stays open for events in flight, so the lanes
        // keep writing while the checkpoint is saved (see the window in `tail`).
        if position.unsaved_events >= self.checkpointing.every_events.div_ceil(2)
            || position.last_save.elapsed() >= self.checkpointing.every
        {
            self.save(position).await?;
        }
        Ok(())
    }

    /// Periodic work of the dispatcher: retry due parked events, and persist progress that
    /// has waited `checkpoints.every`, or at once while the crash window is `full` (a failed
    /// checkpoint write would otherwise hold reading back until `every`).
    async fn housekeeping(
        &self,
        lanes: &Lanes,
        last_sweep: &mut Instant,
        position: &mut Position,
        full: bool,
    ) -> Result<(), StoreError> {
        if position.unsaved_events > 0
            && (full || position.last_save.elapsed() >= self.checkpointing.every)
        {
            self.save(position).await?;
        }
        if last_sweep.elapsed() >= self.config.parking.sweep_every {
            *last_sweep = Instant::now();
            let mut per_lane: Vec<Vec<ParkedEvent>> = vec![Vec::new(); lanes.count()];
            for parked in self.applier.due_parked().await? {
                let lane = match parked.event.get(&self.config.fields.aggregate_id) {
                    Some(id) => lane_of(id, per_lane.len()),
                    None => 0,
                };
                per_lane[lane].push(parked);
            }
            for (lane, entries) in per_lane.into_iter().enumerate() {
                // A lane with a full queue is busy: its due entries wait for the next sweep.
                if !entries.is_empty() {
                    let _ = lanes.senders[lane].try_send(LaneWork::Parked(entries));
                }
            }
        }
        Ok(())
    }

    /// Dead-letters a malformed event, retrying transient errors in place.
    async fn dead_letter_with_retry(
        &self,
        malformed: &crate::model::event::Malformed,
        token: Option<&Bson>,
    ) -> Result<(), StoreError> {
        let mut backoff = Backoff::new(
            self.source.reopen_backoff_initial,
            self.source.reopen_backoff_max,
        );
        loop {
            match self.applier.dead_letter_malformed(malformed, token).await {
                Ok(()) => return Ok(()),
                Err(e)
                    if e.action() == ErrorAction::Retry && backoff.wait(&self.shutdown).await => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Persists the position if it moved. A failed write is retried at a later save, after
    /// the next pause of the worker's backoff (a checkpoint that lags behind only means more
    /// redelivery, never loss); `Err` when the failure calls for the worker to stop (a stop,
    /// or too many errors not known to be transient in a row).
    async fn save(&self, position: &mut Position) -> Result<(), StoreError> {
        if position.save_retry_at.is_some_and(|at| Instant::now() < at) {
            return Ok(());
        }
        match self.write_checkpoint(position).await {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.action(), ErrorAction::Stop(_)) => Err(e),
            Err(e) => {
                let exhausted = self
                    .failures
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .count(&e);
                if let Some(reason) = exhausted {
                    return Err(StoreError::Stop(reason, format!("checkpoint write: {e}")));
                }
                let pause = self.next_pause();
                position.save_retry_at = Some(Instant::now() + pause);
                self.stats.set_last_error(format!("checkpoint write: {e}"));
                tracing::warn!(projection = %self.worker.name, error = %e, retry_in = ?pause, "checkpoint write failed; will retry");
                Ok(())
            }
        }
    }

    /// Writes the position if it moved (fenced by the lease epoch when there is one). A write
    /// refused because a newer holder claimed the checkpoint stops this run, and is no error.
    async fn write_checkpoint(&self, position: &mut Position) -> Result<(), StoreError> {
        let Some(token) = position.token.clone() else {
            return Ok(());
        };
        if self.was_fenced() {
            return Ok(());
        }
        if position.saved_token.as_ref() == Some(&token) && position.unsaved_events == 0 {
            return Ok(());
        }
        let checkpoint = Checkpoint {
            token: token.clone(),
            cluster_time: position.cluster_time,
            events_handled: position.events_handled,
            updated_at: DateTime::now(),
            token_from: Some(self.worker.name.clone()),
            origin: position.origin,
        };
        let written = match self.fence {
            Some(epoch) => {
                self.checkpoints
                    .save(&self.worker.name, &checkpoint, epoch)
                    .await
            }
            None => {
                self.checkpoints
                    .save_unfenced(&self.worker.name, &checkpoint)
                    .await
            }
        };
        match written {
            Ok(()) => {
                self.stats
                    .record_checkpoint(position.cluster_time.map(|t| t.time));
                position.saved_token = Some(token);
                position.unsaved_events = 0;
                position.last_save = Instant::now();
                position.save_retry_at = None;
                Ok(())
            }
            Err(e @ StoreError::Fenced(_)) => {
                self.fenced
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                ProjectionStats::add(&self.stats.checkpoint_fenced, 1);
                tracing::warn!(
                    projection = %self.worker.name,
                    epoch = ?self.fence,
                    error = %e,
                    "checkpoint write refused: a newer lease holder took over; stopping this run"
                );
                self.shutdown.cancel();
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The last checkpoint before stopping, retried with backoff: the shutdown deadline bounds
    /// how long this may take, and an error that retrying cannot fix ends it at once.
    async fn save_final(&self, position: &mut Position) {
        if position.token.is_none() {
            return;
        }
        let mut backoff = Backoff::new(
            self.source.reopen_backoff_initial,
            self.source.reopen_backoff_max,
        );
        for _ in 0..8 {
            match self.write_checkpoint(position).await {
                Ok(()) => return,
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

    /// Folds every stored event through the guard, then returns a stream opened before the
    /// scan began, so nothing written meanwhile is missed. Used on a first start from the
    /// beginning and when the stored token is no longer in the oplog. `None` on shutdown.
    async fn catch_up_from_collection(
        &self,
        position: &mut Position,
    ) -> Result<Option<ChangeStream<RawDocumentBuf>>, StoreError> {
        let stream = self.open(None).await?;
        let started_at = stream.resume_token();
        self.stats.record_scan_started();
        let f = &self.config.fields;
        let mut filter = self.config.filter.clone().unwrap_or_default();
        self.worker.restrict(&mut filter, &f.aggregate_id);
        let mut cursor = self
            .events()
            .find(filter)
            .sort(doc! {&f.aggregate_id: 1, &f.sequence_number: 1})
            .batch_size(1000)
            .await?;
        // The same lanes as the live stream: each lane's memory of stored sequences makes an
        // already-applied prefix cost one probe per aggregate and round, no writes. Nothing
        // is checkpointed until the whole scan is applied, so the position is not involved.
        let mut lanes = self.spawn_lanes();
        let mut pending: Vec<Vec<(Ticket, Event)>> = vec![Vec::new(); lanes.count()];
        let batch_size = self.source.batch_size.max(1);
        let mut scanned = 0u64;
        // Batches handed over and batches reported done: equal at the end means complete.
        let (mut sent, mut done) = (0usize, 0usize);
        while let Some(doc) = cursor.try_next().await? {
            if self.shutdown.is_cancelled() {
                return Ok(None);
            }
            scanned += 1;
            if scanned.is_multiple_of(1000) {
                // A long scan is progress too: liveness must not fail while catching up.
                self.stats.record_progress(false);
            }
            let event = match decode_event(&doc, f) {
                Ok(e) => e,
                Err(malformed) => {
                    self.applier.dead_letter_malformed(&malformed, None).await?;
                    continue;
                }
            };
            let lane = lane_of(&event.aggregate_id, pending.len());
            pending[lane].push((scanned, event));
            if pending[lane].len() >= batch_size {
                let batch = std::mem::take(&mut pending[lane]);
                done += Self::hand_over(&mut lanes, lane, batch).await?;
                sent += 1;
            }
        }
        for (lane, batch) in pending.into_iter().enumerate() {
            if !batch.is_empty() {
                done += Self::hand_over(&mut lanes, lane, batch).await?;
                sent += 1;
            }
        }
        for report in lanes.finish().await {
            match report {
                LaneReport::Failed(e) => return Err(e),
                LaneReport::Done(_) => done += 1,
            }
        }
        if done < sent {
            return Ok(None); // shut down while a lane was still retrying: nothing is saved
        }
        tracing::info!(projection = %self.worker.name, scanned, "caught up from the event collection");
        // Events written during the scan come from the stream, which reports them anew.
        self.stats.record_oldest_pending(None);
        position.token = started_at;
        position.events_handled += scanned as i64;
        position.unsaved_events += scanned.max(1);
        self.progressed();
        self.save(position).await?;
        Ok(Some(stream))
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
        if self.config.create_index {
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
        } else {
            tracing::warn!(
                projection = %self.worker.name,
                "the event collection has no unique index on {{{}: 1, {}: 1}}: ordering and gap-healing rely on it",
                f.aggregate_id,
                f.sequence_number
            );
        }
    }
}

/// Change events read ahead of the dispatcher: while the lanes write one batch, the next is
/// already being read. Bounded, so a slow server slows the reader.
const PREFETCH: usize = 4096;

/// Change events asked for per `getMore`: half the prefetch queue, so one reply fits while
/// the previous one is still being dispatched.
const STREAM_BATCH: u32 = 2048;

/// What the reader task passes on.
enum Read {
    Event(RawDocumentBuf),
    /// An empty batch: the stream is caught up; its post-batch resume token.
    Quiet(Option<ResumeToken>),
    Failed(StoreError),
}

/// Pulls the change stream into the prefetch queue until the queue is dropped or the stream
/// fails (the failure is passed on, then the task ends).
async fn read_stream(mut stream: ChangeStream<RawDocumentBuf>, out: mpsc::Sender<Read>) {
    loop {
        let read = match stream.next_if_any().await {
            Ok(Some(raw)) => Read::Event(raw),
            Ok(None) if !stream.is_alive() => Read::Failed(StoreError::Reply(
                "change stream closed by the server".into(),
            )),
            Ok(None) => Read::Quiet(stream.resume_token()),
            Err(e) => Read::Failed(e.into()),
        };
        let last = matches!(read, Read::Failed(_));
        if out.send(read).await.is_err() || last {
            return;
        }
    }
}

/// Prefixes every field condition of a filter (`{a: 1}` -> `{"fullDocument.a": 1}`),
/// descending into `$and`/`$or`/`$nor`.
pub fn prefix_filter(filter: &Document, prefix: &str) -> Document {
    let mut out = Document::new();
    for (k, v) in filter {
        match (k.as_str(), v) {
            ("$and" | "$or" | "$nor", Bson::Array(items)) => {
                let items: Vec<Bson> = items
                    .iter()
                    .map(|i| match i {
                        Bson::Document(d) => Bson::Document(prefix_filter(d, prefix)),
                        other => other.clone(),
                    })
                    .collect();
                out.insert(k.clone(), items);
            }
            _ => {
                out.insert(format!("{prefix}{k}"), v.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_prefixed_for_the_change_stream() {
        let f = doc! {"tenant": "t1", "$or": [{"kind": "a"}, {"kind": "b"}]};
        assert_eq!(
            prefix_filter(&f, "fullDocument."),
            doc! {"fullDocument.tenant": "t1", "$or": [{"fullDocument.kind": "a"}, {"fullDocument.kind": "b"}]}
        );
    }
}
