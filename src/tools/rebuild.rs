//! Live rebuild: recomputes a projection's read model into a shadow collection while the live
//! one keeps serving and advancing, then swaps the shadow in atomically and hands the
//! position over to the live daemon, so that readers never see a partial or regressed read
//! model. Typical use: a projection's handlers changed and its read model must be recomputed.
//!
//! The phases, each recorded in a state document of `projector_rebuilds` (checkpoint
//! database) so that an interrupted rebuild resumes where it stopped:
//!
//! 1. **building**: a change stream on the event collection is opened first (its position is
//!    kept), then the event collection is scanned in `{aggregateId, sequenceNumber}` order and
//!    every event goes through the same guarded [`Applier`] with the shadow as target (and a
//!    shadow parked collection). Progress (the aggregate the scan has reached) is saved after
//!    every chunk.
//! 2. **catching_up**: the stream is followed from the position kept before the scan until
//!    the newest event applied to the shadow is younger than `max_lag` (or the stream is quiet).
//! 3. **swapping**: the live workers are taken over ([`Handover`]); the stream is read until it
//!    is past the moment they were all held; the shadow must not be behind the live read model
//!    for any aggregate; the live collection's indexes are built on the shadow; the shadow
//!    replaces the target with `renameCollection ... dropTarget: true` (atomic for readers);
//!    each worker's checkpoint is set to the shadow's position; the shadow's parked entries
//!    replace the projection's; the workers are given back.
//! 4. **done**.

use crate::backoff::Backoff;
use crate::config::{Config, ProjectionConfig};
use crate::error::{ErrorAction, Failures, StoreError};
use crate::model::partition::Worker;
use crate::ops::stats::RebuildFigures;
use crate::pipeline::apply::{AggregateKey, Applier};
use crate::pipeline::checkpointer::{Checkpointer, Position, PositionStore};
use crate::pipeline::dispatcher::Dispatcher;
use crate::pipeline::lanes::Lanes;
use crate::pipeline::scan::Scan;
use crate::pipeline::stream::{EventStream, Reader, StreamFrom};
use crate::pipeline::tail::{Ended, Tail, Until};
use crate::store::checkpoint::{Checkpoint, CheckpointStore};
use crate::store::lease::{Lease, LeaseStore, Renewal};
use bson::{Bson, DateTime, Document, doc};
use futures_util::TryStreamExt;
use mongodb::change_stream::ChangeStream;
use mongodb::change_stream::event::ResumeToken;
use mongodb::{Client, Collection, Database};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The collection (in the checkpoint database) holding one state document per rebuild.
pub(crate) const STATE_COLLECTION: &str = "projector_rebuilds";

/// Where a rebuild stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Building,
    CatchingUp,
    Swapping,
    Done,
}

impl Phase {
    /// Every phase, in order (the values of the `phase` metric label).
    pub(crate) const ALL: [Phase; 4] = [
        Phase::Building,
        Phase::CatchingUp,
        Phase::Swapping,
        Phase::Done,
    ];

    pub fn as_str(self) -> &'static str {
        PHASE_NAMES[self as usize]
    }

    fn parse(s: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// How a rebuild is run.
#[derive(Debug, Clone)]
pub struct RebuildOptions {
    /// Discard a stored, unfinished rebuild of the projection and its shadow; start over.
    pub restart: bool,
    /// The operator's word that no daemon runs the projection: swap without a handover.
    pub offline: bool,
    /// Swap even when the rebuilt read model is behind the live one for some aggregates
    /// (events the new handlers refused or parked); refused otherwise.
    pub allow_behind: bool,
    /// Catching up ends once the newest event applied to the shadow is younger than this.
    pub max_lag: Duration,
    /// Events per scan chunk; progress is saved after each.
    pub chunk: usize,
    /// Parallel writers into the shadow (aggregates are routed to them by a stable hash).
    pub lanes: usize,
}

impl Default for RebuildOptions {
    fn default() -> Self {
        Self {
            restart: false,
            offline: false,
            allow_behind: false,
            max_lag: Duration::from_secs(2),
            chunk: 5_000,
            lanes: crate::config::default_lanes(),
        }
    }
}

/// Why a rebuild did not finish.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The rebuild cannot or must not go on as asked; the message says what to do.
    #[error("{0}")]
    Refused(String),
}

/// How a call to [`run`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebuildOutcome {
    /// The shadow was swapped in and the position handed over.
    Swapped(RebuildSummary),
    /// Stopped by the shutdown token; running again resumes from the saved state.
    Interrupted { phase: Phase },
}

/// What a finished rebuild did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildSummary {
    /// Events read from the event collection by the scan (over all runs of this rebuild).
    pub scanned: i64,
    /// Events read from the change stream after the scan (over all runs).
    pub streamed: i64,
    /// Read-model documents swapped in.
    pub documents: u64,
    /// Parked or dead-lettered entries of the rebuilt read model.
    pub parked: u64,
}

/// Live progress of a rebuild, for logs and the metrics: the figures the metrics read
/// ([`RebuildFigures`]), with this rebuild's phases.
#[derive(Debug)]
pub struct RebuildProgress {
    figures: Arc<RebuildFigures>,
}

/// The phases' names, in order (the values of the `phase` metric label).
const PHASE_NAMES: [&str; 4] = ["building", "catching_up", "swapping", "done"];

impl Default for RebuildProgress {
    fn default() -> Self {
        Self {
            figures: Arc::new(RebuildFigures::new(&PHASE_NAMES)),
        }
    }
}

impl std::ops::Deref for RebuildProgress {
    type Target = RebuildFigures;

    fn deref(&self) -> &RebuildFigures {
        &self.figures
    }
}

impl RebuildProgress {
    pub fn phase(&self) -> Phase {
        Phase::ALL[self.figures.phase_index().min(Phase::ALL.len() - 1)]
    }

    fn set_phase(&self, phase: Phase) {
        let i = Phase::ALL.iter().position(|p| *p == phase).unwrap_or(0);
        self.figures.set_phase_index(i);
    }

    /// The figures the metrics report.
    pub fn figures(&self) -> Arc<RebuildFigures> {
        self.figures.clone()
    }
}

/// The names under which the daemon may run a projection's workers, each with its own lease
/// and checkpoint: the projection's own name, and the `<projection>/...` names of its
/// partition workers (under any partition count) found as `_id`s in `coll` (the lease or the
/// checkpoint collection). Read from the stores rather than the configuration, so that workers
/// of a running daemon whose partition count differs from this configuration's are included.
pub(crate) async fn worker_names(
    projection: &str,
    coll: &Collection<Document>,
) -> Result<Vec<String>, StoreError> {
    // Every string that starts with "<projection>/" sorts between it and "<projection>0"
    // ('0' follows '/'): a range on `_id` instead of a regular expression.
    let mut cursor = coll
        .find(doc! {"_id": {"$gt": format!("{projection}/"), "$lt": format!("{projection}0")}})
        .projection(doc! {"_id": 1})
        .await?;
    let mut names = vec![projection.to_string()];
    while let Some(d) = cursor.try_next().await? {
        if let Ok(name) = d.get_str("_id")
            && !names.iter().any(|n| n == name)
        {
            names.push(name.to_string());
        }
    }
    names.sort();
    Ok(names)
}

/// The shadow read-model collection of a projection.
pub(crate) fn shadow_name(projection: &ProjectionConfig) -> String {
    format!("{}_rebuild", projection.target)
}

/// The shadow parked collection of a projection.
pub(crate) fn shadow_parked_name(projection: &ProjectionConfig) -> String {
    format!("{}_rebuild", projection.parking.collection)
}

/// What the shadow is built with: a resumed rebuild must use the same handlers, or the shadow
/// would mix two versions of them.
fn fingerprint(p: &ProjectionConfig) -> String {
    let described = format!(
        "{}|{}|{}|{:?}|{:?}|{:?}|{:?}",
        p.database, p.events, p.target, p.filter, p.fields, p.unhandled, p.handlers
    );
    format!("{:016x}", AggregateKey::Str(described).stable_hash())
}

/// The stored state of one rebuild.
#[derive(Debug, Clone)]
struct RebuildState {
    phase: Phase,
    fingerprint: String,
    /// The shadow's stream position: below it, every event is in the shadow.
    token: ResumeToken,
    /// Scan progress: every aggregate sorted before this one is in the shadow.
    scan_from: Option<Bson>,
    scanned: i64,
    streamed: i64,
    started_at: DateTime,
    /// When the swap held every worker: the projection's parked entries older than this
    /// belong to the old read model.
    held_at: Option<DateTime>,
}

/// The `projector_rebuilds` collection.
#[derive(Clone)]
struct StateStore {
    coll: Collection<Document>,
}

impl StateStore {
    fn new(db: &Database) -> Self {
        Self {
            coll: crate::store::majority_collection(db, STATE_COLLECTION),
        }
    }

    async fn load(&self, projection: &str) -> Result<Option<RebuildState>, StoreError> {
        let Some(d) = self.coll.find_one(doc! {"_id": projection}).await? else {
            return Ok(None);
        };
        let bad = |what: &str| {
            StoreError::internal(format!(
                "rebuild state of {projection} in {STATE_COLLECTION} has {what}; run again with --restart"
            ))
        };
        let phase = d
            .get_str("phase")
            .ok()
            .and_then(Phase::parse)
            .ok_or_else(|| bad("no readable phase"))?;
        let token = match d.get("token") {
            Some(t @ Bson::Document(_)) => bson::from_bson::<ResumeToken>(t.clone())
                .map_err(|_| bad("an unreadable resume token"))?,
            _ => return Err(bad("no resume token")),
        };
        let count = |k: &str| d.get(k).and_then(Bson::as_i64).unwrap_or(0);
        Ok(Some(RebuildState {
            phase,
            fingerprint: d.get_str("fingerprint").unwrap_or("").to_string(),
            token,
            scan_from: d.get("scanFrom").cloned(),
            scanned: count("scanned"),
            streamed: count("streamed"),
            started_at: d
                .get_datetime("startedAt")
                .copied()
                .unwrap_or_else(|_| DateTime::now()),
            held_at: d.get_datetime("heldAt").ok().copied(),
        }))
    }

    /// Writes the state; `session` (when given) receives the write's operation time.
    async fn save(
        &self,
        projection: &ProjectionConfig,
        state: &RebuildState,
        session: Option<&mut mongodb::ClientSession>,
    ) -> Result<(), StoreError> {
        let token = bson::to_bson(&state.token)
            .map_err(|e| StoreError::internal(format!("resume token: {e}")))?;
        let mut set = doc! {
            "phase": state.phase.as_str(),
            "fingerprint": &state.fingerprint,
            "shadow": shadow_name(projection),
            "shadowParked": shadow_parked_name(projection),
            "token": token,
            "scanned": state.scanned,
            "streamed": state.streamed,
            "startedAt": state.started_at,
            "updatedAt": DateTime::now(),
        };
        if let Some(t) = state.held_at {
            set.insert("heldAt", t);
        }
        let mut update = doc! {};
        match &state.scan_from {
            Some(from) => {
                set.insert("scanFrom", from.clone());
            }
            None => {
                update.insert("$unset", doc! {"scanFrom": ""});
            }
        }
        update.insert("$set", set);
        let action = self
            .coll
            .update_one(doc! {"_id": &projection.name}, update)
            .upsert(true);
        match session {
            Some(s) => action.session(s).await?,
            None => action.await?,
        };
        Ok(())
    }

    async fn delete(&self, projection: &str) -> Result<(), StoreError> {
        self.coll.delete_one(doc! {"_id": projection}).await?;
        Ok(())
    }
}

/// The rebuild's stream position, kept in its state document.
struct RebuildPosition {
    states: StateStore,
    projection: ProjectionConfig,
    state: RebuildState,
    /// Events streamed by earlier runs of this rebuild.
    streamed_before: i64,
    /// The shadow's counters: events received from the stream in this run.
    stats: Arc<crate::ops::stats::ProjectionStats>,
}

impl PositionStore for RebuildPosition {
    async fn write(&mut self, _position: &Position, token: &ResumeToken) -> Result<(), StoreError> {
        self.state.token = token.clone();
        self.state.streamed = self.streamed_before + self.stats.snapshot().received as i64;
        self.states.save(&self.projection, &self.state, None).await
    }
}

/// How the rebuild takes a projection's workers away from the live daemon for the swap, so
/// that nothing writes the read model, its parked entries or its checkpoints meanwhile.
pub enum Handover {
    /// The operator states that no daemon runs the projection (`--offline`).
    Offline,
    /// The live daemon holds a lease per worker: each holder is asked to hand its lease over
    /// (it stops its worker gracefully, with a final checkpoint, and releases), the rebuild
    /// acquires every lease, holds them (renewed) during the swap and releases them after.
    Leases(LeaseHandover),
}

/// The lease side of a [`Handover`].
pub struct LeaseHandover {
    pub store: LeaseStore,
    /// The same lease collection, read for the projection's worker names.
    leases: Collection<Document>,
    /// This rebuild's holder name.
    pub holder: String,
    /// Lease and handover-request time-to-live; both are renewed every third of it.
    pub ttl: Duration,
    /// How long to wait for the live workers to hand over before giving up.
    pub timeout: Duration,
}

impl LeaseHandover {
    /// Leases in `collection` of `db`, held as `rebuild-<unique id>`.
    pub fn new(db: &Database, collection: &str, ttl: Duration, timeout: Duration) -> Self {
        Self {
            store: LeaseStore::new(db, collection),
            leases: db.collection(collection),
            holder: format!("rebuild-{}", bson::oid::ObjectId::new().to_hex()),
            ttl,
            timeout,
        }
    }

    /// Asks every holder to hand over and acquires every lease of `known` workers and of the
    /// projection's workers found in the lease collection (looked up again until no new one
    /// appears); `None` on shutdown. Gives up, releasing what it got, after `timeout`.
    async fn take(
        &self,
        projection: &str,
        known: &[String],
        shutdown: &CancellationToken,
    ) -> Result<Option<Vec<Lease>>, RebuildError> {
        let deadline = Instant::now() + self.timeout;
        let mut held: Vec<Lease> = Vec::new();
        let mut workers: Vec<String> = known.to_vec();
        let mut asked_at: Option<Instant> = None;
        let outcome = loop {
            if shutdown.is_cancelled() {
                break Ok(None);
            }
            for name in worker_names(projection, &self.leases).await? {
                if !workers.contains(&name) {
                    workers.push(name);
                }
            }
            let waiting: Vec<&String> = workers
                .iter()
                .filter(|w| !held.iter().any(|l| &l.name == *w))
                .collect();
            if waiting.is_empty() {
                break Ok(Some(()));
            }
            if Instant::now() >= deadline {
                break Err(RebuildError::Refused(format!(
                    "the live workers of {} did not hand their leases over within {} (is the \
                     daemon running with leases? without leases, stop it and pass --offline)",
                    waiting
                        .iter()
                        .map(|w| w.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    humantime::format_duration(self.timeout)
                )));
            }
            if asked_at.is_none_or(|t| t.elapsed() >= self.ttl / 3) {
                asked_at = Some(Instant::now());
                for w in &waiting {
                    self.store
                        .request_handover(w, &self.holder, self.ttl)
                        .await?;
                }
                for lease in &held {
                    self.store.renew(lease, self.ttl).await?;
                }
            }
            for w in waiting {
                if let Some(lease) = self.store.try_acquire(w, &self.holder, self.ttl).await? {
                    tracing::info!(worker = %w, epoch = lease.epoch, "rebuild: lease handed over");
                    held.push(lease);
                }
            }
            // Polling the lease documents: the live holder answers at its next renewal.
            tokio::select! {
                _ = tokio::time::sleep(LEASE_POLL) => {}
                _ = shutdown.cancelled() => {}
            }
        };
        match outcome {
            Ok(Some(())) => Ok(Some(held)),
            other => {
                self.release(&held, &workers).await?;
                other.map(|_| None)
            }
        }
    }

    /// Releases the leases and withdraws the handover requests.
    async fn release(&self, held: &[Lease], workers: &[String]) -> Result<(), StoreError> {
        for lease in held {
            self.store.release(lease).await?;
        }
        for w in workers {
            self.store.clear_handover(w, &self.holder).await?;
        }
        Ok(())
    }
}

/// How often the lease documents are looked at while waiting for a handover.
const LEASE_POLL: Duration = Duration::from_millis(100);

/// The workers held by the rebuild during the swap.
struct Held {
    /// Per worker name, the fencing epoch of the lease held (None: offline).
    workers: Vec<(String, Option<i64>)>,
    leases: Vec<Lease>,
    /// Cancelled when a lease could not be renewed: the swap must not go on.
    lost: CancellationToken,
    /// Stops the renewals.
    renewing: Option<tokio_util::sync::DropGuard>,
}

impl Handover {
    /// Takes every worker of the projection (`known`, and with leases every one found in the
    /// lease collection); returns once none of them runs any more, or `None` on shutdown.
    async fn take(
        &self,
        projection: &str,
        known: &[String],
        shutdown: &CancellationToken,
    ) -> Result<Option<Held>, RebuildError> {
        let workers = known;
        match self {
            Handover::Offline => Ok(Some(Held {
                workers: workers.iter().map(|w| (w.clone(), None)).collect(),
                leases: Vec::new(),
                lost: CancellationToken::new(),
                renewing: None,
            })),
            Handover::Leases(h) => {
                let Some(leases) = h.take(projection, workers, shutdown).await? else {
                    return Ok(None);
                };
                let lost = CancellationToken::new();
                let stop = CancellationToken::new();
                tokio::spawn(renew_leases(
                    h.store.clone(),
                    leases.clone(),
                    h.ttl,
                    lost.clone(),
                    stop.clone(),
                ));
                Ok(Some(Held {
                    workers: leases
                        .iter()
                        .map(|l| (l.name.clone(), Some(l.epoch)))
                        .collect(),
                    leases,
                    lost,
                    renewing: Some(stop.drop_guard()),
                }))
            }
        }
    }

    /// Gives the workers back to the live daemon.
    async fn give_back(&self, mut held: Held) -> Result<(), RebuildError> {
        drop(held.renewing.take());
        match self {
            Handover::Offline => Ok(()),
            Handover::Leases(h) => {
                let workers: Vec<String> = held.workers.iter().map(|(w, _)| w.clone()).collect();
                h.release(&held.leases, &workers).await?;
                Ok(())
            }
        }
    }
}

/// Renews held leases every third of their ttl until `stop`; cancels `lost` when one is no
/// longer ours.
async fn renew_leases(
    store: LeaseStore,
    leases: Vec<Lease>,
    ttl: Duration,
    lost: CancellationToken,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(ttl / 3) => {}
            _ = stop.cancelled() => return,
        }
        for lease in &leases {
            match store.renewal(lease, ttl).await {
                Ok(Renewal::Lost) => {
                    tracing::error!(worker = %lease.name, "rebuild: a lease held for the swap was lost");
                    lost.cancel();
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(worker = %lease.name, error = %e, "rebuild: renewing a lease failed; retrying")
                }
            }
        }
    }
}

/// The handover a configuration allows: with leases (`[leases]`, on by default) the live
/// daemon is asked to hand the projection over; without them the swap needs `--offline`.
pub fn handover_for(
    config: &Config,
    client: &Client,
    options: &RebuildOptions,
) -> Result<Handover, RebuildError> {
    if config.leases.enabled {
        // The holder answers at its next renewal and then drains; a dead holder's lease
        // expires after the ttl.
        let timeout =
            (config.leases.ttl + config.leases.renew_every + config.shutdown.deadline) * 2;
        return Ok(Handover::Leases(LeaseHandover::new(
            &client.database(config.checkpoint_database()),
            &config.leases.collection,
            config.leases.ttl,
            timeout,
        )));
    }
    if options.offline {
        return Ok(Handover::Offline);
    }
    Err(RebuildError::Refused(
        "leases are not enabled ([leases] enabled = false), so a running daemon cannot hand the \
         projection over for the swap: stop the daemon (or its projection) and pass --offline"
            .into(),
    ))
}

/// Rebuilds `projection` into its shadow and swaps it in (see the module documentation).
/// Resumes a stored rebuild of the same handlers; `Ok(Interrupted)` when `shutdown` fires.
pub async fn run(
    config: &Config,
    client: &Client,
    projection: &str,
    options: &RebuildOptions,
    handover: &Handover,
    progress: &Arc<RebuildProgress>,
    shutdown: &CancellationToken,
) -> Result<RebuildOutcome, RebuildError> {
    let Some(p) = config.projection(projection) else {
        let names: Vec<&str> = config.projections.iter().map(|p| p.name.as_str()).collect();
        return Err(RebuildError::Refused(format!(
            "no projection {projection:?} in the configuration (known: {})",
            names.join(", ")
        )));
    };
    let rebuild = Rebuild::new(config, client, p, options, progress, shutdown);
    rebuild.run(handover).await
}

/// What `rebuild` would do, read without changing anything (`--dry-run`, and the question
/// asked before it starts).
#[derive(Debug, Clone)]
pub struct RebuildPlan {
    pub projection: String,
    /// `database.collection` of the read model that is replaced.
    pub target: String,
    /// `database.collection` of the shadow it is rebuilt into.
    pub shadow: String,
    /// Events in the event collection now (estimated), all folded again.
    pub events: u64,
    /// The workers whose checkpoints are handed over at the swap.
    pub workers: Vec<String>,
    /// The phase of an unfinished rebuild that would be resumed (`None`: a new one; with
    /// `--restart`, the unfinished one is discarded first).
    pub resumes: Option<Phase>,
}

impl std::fmt::Display for RebuildPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.resumes {
            Some(phase) => writeln!(
                f,
                "resume the rebuild of {} (it stopped while {})",
                self.projection,
                phase.as_str()
            )?,
            None => writeln!(f, "rebuild {} from its events", self.projection)?,
        }
        writeln!(
            f,
            "  fold about {} events into {}, then follow the stream",
            self.events, self.shadow
        )?;
        writeln!(
            f,
            "  swap it over {} (renameCollection with dropTarget; the old read model is dropped)",
            self.target
        )?;
        write!(
            f,
            "  hand the position over to {} worker(s): {}",
            self.workers.len(),
            self.workers.join(", ")
        )
    }
}

/// What rebuilding `projection` would do, read from the stores.
pub async fn plan(
    config: &Config,
    client: &Client,
    projection: &str,
    options: &RebuildOptions,
) -> Result<RebuildPlan, RebuildError> {
    let Some(p) = config.projection(projection) else {
        return Err(RebuildError::Refused(format!(
            "no projection {projection:?} in the configuration"
        )));
    };
    let checkpoint_db = client.database(config.checkpoint_database());
    let resumes = if options.restart {
        None
    } else {
        StateStore::new(&checkpoint_db)
            .load(projection)
            .await?
            .map(|s| s.phase)
            .filter(|phase| *phase != Phase::Done)
    };
    let events = client
        .database(&p.database)
        .collection::<Document>(&p.events)
        .estimated_document_count()
        .await
        .map_err(StoreError::from)?;
    let workers = worker_names(
        projection,
        &checkpoint_db.collection(&config.checkpoints.collection),
    )
    .await?;
    Ok(RebuildPlan {
        projection: projection.to_string(),
        target: format!("{}.{}", p.database, p.target),
        shadow: format!("{}.{}", p.database, shadow_name(p)),
        events,
        workers,
        resumes,
    })
}

/// One rebuild in progress.
struct Rebuild<'a> {
    config: &'a Config,
    projection: &'a ProjectionConfig,
    options: &'a RebuildOptions,
    db: Database,
    states: StateStore,
    checkpoints: CheckpointStore,
    /// The checkpoint collection, read for the projection's worker names.
    checkpoint_names: Collection<Document>,
    /// The projection with the shadow as its target and the shadow parked collection.
    shadow: Worker,
    /// The guarded applier writing the shadow.
    applier: Applier,
    progress: &'a Arc<RebuildProgress>,
    shutdown: &'a CancellationToken,
    client: &'a Client,
}

impl<'a> Rebuild<'a> {
    fn new(
        config: &'a Config,
        client: &'a Client,
        projection: &'a ProjectionConfig,
        options: &'a RebuildOptions,
        progress: &'a Arc<RebuildProgress>,
        shutdown: &'a CancellationToken,
    ) -> Self {
        let db = client.database(&projection.database);
        let checkpoint_db = client.database(config.checkpoint_database());
        let mut shadow = projection.clone();
        shadow.target = shadow_name(projection);
        shadow.parking.collection = shadow_parked_name(projection);
        let shadow = Worker::whole(Arc::new(shadow));
        Self {
            applier: Applier::new(&shadow, &db, progress.stats.clone()),
            shadow,
            states: StateStore::new(&checkpoint_db),
            checkpoints: CheckpointStore::new(&checkpoint_db, &config.checkpoints.collection),
            checkpoint_names: checkpoint_db.collection(&config.checkpoints.collection),
            db,
            config,
            projection,
            options,
            progress,
            shutdown,
            client,
        }
    }

    fn name(&self) -> &str {
        &self.projection.name
    }

    async fn run(&self, handover: &Handover) -> Result<RebuildOutcome, RebuildError> {
        let name = self.name().to_string();
        if self.options.restart {
            self.discard().await?;
        }
        let fingerprint = fingerprint(self.projection);
        let mut state = match self.states.load(&name).await? {
            Some(s) if s.phase != Phase::Done && s.fingerprint != fingerprint => {
                return Err(RebuildError::Refused(format!(
                    "an unfinished rebuild of {name} was started with other handlers, filter or \
                     fields than the configuration has now; run again with --restart to discard \
                     it and start over"
                )));
            }
            Some(mut s) if s.phase != Phase::Done => {
                tracing::info!(projection = %name, phase = s.phase.as_str(), scanned = s.scanned, streamed = s.streamed, "resuming the rebuild");
                // A swap that stopped before the rename catches up again first, so that the
                // live workers are held only for the last events.
                if s.phase == Phase::Swapping
                    && self
                        .collection_exists(&shadow_name(self.projection))
                        .await?
                {
                    s.phase = Phase::CatchingUp;
                }
                s
            }
            _ => self.begin(fingerprint).await?,
        };
        self.progress.set_phase(state.phase);
        loop {
            if state.phase == Phase::Building {
                if !self.scan(&mut state).await? {
                    return Ok(self.interrupted(state.phase));
                }
                state.phase = Phase::CatchingUp;
                state.scan_from = None;
                self.states.save(self.projection, &state, None).await?;
                self.progress.set_phase(state.phase);
                tracing::info!(projection = %name, scanned = state.scanned, "rebuild: scan complete; catching up with the stream");
            }
            if state.phase == Phase::CatchingUp {
                match self
                    .follow(&mut state, Until::Lag(self.options.max_lag))
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => return Ok(self.interrupted(state.phase)),
                    Err(RebuildError::Store(e)) if e.action() == ErrorAction::HistoryLost => {
                        tracing::warn!(projection = %name, error = %e, "rebuild: its position is no longer in the oplog; scanning again from a new one (what the shadow has is kept)");
                        self.scan_again(&mut state).await?;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
                tracing::info!(projection = %name, streamed = state.streamed, lag_seconds = self.progress.lag_seconds(), "rebuild: caught up; taking the projection over for the swap");
                state.phase = Phase::Swapping;
                self.states.save(self.projection, &state, None).await?;
                self.progress.set_phase(state.phase);
            }
            break;
        }
        // Index builds take time: done here, the live workers are not held during them (the
        // swap builds again only what the read model gained meanwhile; an existing identical
        // index is left alone).
        let shadow = shadow_name(self.projection);
        if self.collection_exists(&shadow).await? {
            self.copy_indexes(&shadow).await?;
        }
        let workers = worker_names(self.name(), &self.checkpoint_names).await?;
        let Some(held) = handover.take(self.name(), &workers, self.shutdown).await? else {
            return Ok(self.interrupted(state.phase));
        };
        let swapped = self.swap(&mut state, &held).await;
        // The workers go back whatever happened: after a refusal the live daemon goes on with
        // the old read model, after a swap with the new one.
        let given_back = handover.give_back(held).await;
        let summary = match swapped? {
            Some(summary) => summary,
            None => return Ok(self.interrupted(state.phase)),
        };
        given_back?;
        tracing::info!(
            projection = %name,
            scanned = summary.scanned,
            streamed = summary.streamed,
            documents = summary.documents,
            parked = summary.parked,
            "rebuild: swapped in and handed over"
        );
        Ok(RebuildOutcome::Swapped(summary))
    }

    fn interrupted(&self, phase: Phase) -> RebuildOutcome {
        tracing::info!(projection = %self.name(), phase = phase.as_str(), "rebuild interrupted; running it again resumes here");
        RebuildOutcome::Interrupted { phase }
    }

    /// Drops an unfinished rebuild: its state and both shadow collections.
    async fn discard(&self) -> Result<(), StoreError> {
        self.states.delete(self.name()).await?;
        self.drop_shadows().await
    }

    async fn drop_shadows(&self) -> Result<(), StoreError> {
        self.db
            .collection::<Document>(&shadow_name(self.projection))
            .drop()
            .await?;
        self.db
            .collection::<Document>(&shadow_parked_name(self.projection))
            .drop()
            .await?;
        Ok(())
    }

    /// A new rebuild: empty shadows, and the stream's position taken before the scan, so that
    /// nothing written during the scan is missed.
    async fn begin(&self, fingerprint: String) -> Result<RebuildState, RebuildError> {
        self.drop_shadows().await?;
        // The shadow exists from the start, so that a projection without events still has a
        // collection to swap in.
        self.db
            .create_collection(shadow_name(self.projection))
            .await
            .map_err(StoreError::from)?;
        let stream = self.stream().open(StreamFrom::Now).await?;
        let Some(token) = stream.resume_token() else {
            return Err(RebuildError::Store(StoreError::Reply(
                "a new change stream has no resume token".into(),
            )));
        };
        drop(stream);
        let state = RebuildState {
            phase: Phase::Building,
            fingerprint,
            token,
            scan_from: None,
            scanned: 0,
            streamed: 0,
            started_at: DateTime::now(),
            held_at: None,
        };
        self.states.save(self.projection, &state, None).await?;
        tracing::info!(projection = %self.name(), shadow = %shadow_name(self.projection), "rebuild started: scanning the event collection into the shadow");
        Ok(state)
    }

    /// When the shadow's position has fallen off the oplog: a new position, taken before a new
    /// scan from the start. The shadow keeps what it has; the guard absorbs it as duplicates.
    async fn scan_again(&self, state: &mut RebuildState) -> Result<(), RebuildError> {
        let stream = self.stream().open(StreamFrom::Now).await?;
        let Some(token) = stream.resume_token() else {
            return Err(StoreError::Reply("a new change stream has no resume token".into()).into());
        };
        state.token = token;
        state.phase = Phase::Building;
        state.scan_from = None;
        self.states.save(self.projection, state, None).await?;
        self.progress.set_phase(state.phase);
        Ok(())
    }

    /// The event collection's change stream, with the projection's filter.
    fn stream(&self) -> EventStream {
        EventStream::new(&self.shadow, &self.db, self.config.source.max_await)
    }

    /// The shadow's lanes.
    fn dispatcher<P: Clone>(&self) -> Dispatcher<P> {
        let lanes = Lanes::spawn(
            &self.applier,
            self.options.lanes,
            self.shutdown,
            self.config.source.reopen_backoff_initial,
            self.config.source.reopen_backoff_max,
        );
        Dispatcher::new(lanes, self.config.source.batch_size)
    }

    /// Folds the event collection into the shadow from the saved progress: the same scan as a
    /// worker's first start. After every chunk the state records the aggregate up to which
    /// everything is applied, where a resumed rebuild scans from. False when interrupted.
    async fn scan(&self, state: &mut RebuildState) -> Result<bool, RebuildError> {
        let mut cursor = Scan::new(&self.shadow, &self.db)
            .resuming_at(state.scan_from.as_ref())
            .open()
            .await?;
        let mut dispatcher = self.dispatcher::<Bson>();
        let scanned_before = state.scanned;
        let mut last_log = Instant::now();
        loop {
            let chunk = self.options.chunk.max(1) as u64;
            let read = cursor
                .feed(chunk, &mut dispatcher, &self.applier, self.shutdown)
                .await?;
            self.progress.scanned.fetch_add(read, Ordering::Relaxed);
            state.scanned = scanned_before + cursor.scanned as i64;
            // Everything scanned before the watermark's aggregate is in the shadow; that
            // aggregate is read again on resume (the guard absorbs its applied events).
            if let Some(safe) = dispatcher.watermark().safe() {
                state.scan_from = Some(safe.clone());
            }
            self.states.save(self.projection, state, None).await?;
            if read == 0 {
                break;
            }
            if last_log.elapsed() >= PROGRESS_LOG_EVERY {
                last_log = Instant::now();
                tracing::info!(projection = %self.name(), scanned = state.scanned, applied = self.progress.applied(), "rebuild: scanning");
            }
        }
        dispatcher.hand_out_partial().await?;
        let (watermark, failure) = dispatcher.finish().await;
        // Interrupted or not, the lanes finished what they had: resume from there.
        if let Some(safe) = watermark.safe() {
            state.scan_from = Some(safe.clone());
            self.states.save(self.projection, state, None).await?;
        }
        if let Some(e) = failure {
            return Err(e.into());
        }
        Ok(cursor.exhausted && watermark.in_flight() == 0)
    }

    /// Follows the stream from the saved position into the shadow until `until`, with the
    /// same tail as a live worker; the position is saved in the rebuild's state. False when
    /// interrupted.
    async fn follow(&self, state: &mut RebuildState, until: Until) -> Result<bool, RebuildError> {
        let mut failures = Failures::new(&self.config.source);
        let position = Position {
            token: Some(state.token.clone()),
            ..Position::default()
        };
        let store = RebuildPosition {
            states: self.states.clone(),
            projection: self.projection.clone(),
            state: state.clone(),
            streamed_before: state.streamed,
            stats: self.progress.stats.clone(),
        };
        let mut checkpointer = Checkpointer::new(store, position, true, &self.config.checkpoints);
        let stream = self.stream();
        let ended = loop {
            let from = StreamFrom::After(
                checkpointer
                    .position
                    .token
                    .clone()
                    .unwrap_or(state.token.clone()),
            );
            let result = match stream.open(from).await {
                Ok(opened) => self.tail(opened, &mut checkpointer, until).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(ended) => break ended,
                Err(e) => {
                    *state = checkpointer.store().state.clone();
                    self.on_stream_error(e, &mut failures).await?;
                }
            }
        };
        *state = checkpointer.store().state.clone();
        Ok(ended == Ended::Reached)
    }

    /// One following of an open stream into the shadow.
    async fn tail(
        &self,
        opened: ChangeStream<bson::RawDocumentBuf>,
        checkpointer: &mut Checkpointer<RebuildPosition>,
        until: Until,
    ) -> Result<Ended, StoreError> {
        // A failed state write ends this following; the reopening counts it.
        let mut save_failed = Err;
        let tail = Tail {
            worker: &self.shadow,
            applier: &self.applier,
            stats: &self.progress.stats,
            checkpointer,
            save_failed: &mut save_failed,
            shutdown: self.shutdown,
            tick_every: self.config.checkpoints.every,
            sweep_every: self.shadow.projection.parking.sweep_every,
            retry: Backoff::new(
                self.config.source.reopen_backoff_initial,
                self.config.source.reopen_backoff_max,
            ),
        };
        let logging = async {
            loop {
                tokio::time::sleep(PROGRESS_LOG_EVERY).await;
                tracing::info!(projection = %self.name(), streamed = self.progress.streamed(), lag_seconds = self.progress.lag_seconds(), "rebuild: following the stream");
            }
        };
        tokio::select! {
            ended = tail.run(Reader::spawn(opened), self.dispatcher(), until) => ended,
            () = logging => unreachable!("the progress log never ends"),
        }
    }

    /// A failed stream: waits and re-opens after transient errors, and after errors not known
    /// to be transient up to `source.unknown_error_retries` in a row; anything else ends the
    /// rebuild ([`crate::error`]).
    async fn on_stream_error(
        &self,
        e: StoreError,
        failures: &mut Failures,
    ) -> Result<(), RebuildError> {
        if e.action() == ErrorAction::HistoryLost {
            return Err(e.into());
        }
        if let Some(reason) = failures.count(&e) {
            return Err(StoreError::Stop(reason, e.to_string()).into());
        }
        let pause = failures.backoff.next_pause();
        tracing::warn!(projection = %self.name(), error = %e, retry_in = ?pause, "rebuild: change stream failed; re-opening");
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = self.shutdown.cancelled() => {}
        }
        Ok(())
    }

    /// The swap, with the workers held. `None` when interrupted before the rename.
    async fn swap(
        &self,
        state: &mut RebuildState,
        held: &Held,
    ) -> Result<Option<RebuildSummary>, RebuildError> {
        let shadow = shadow_name(self.projection);
        for (worker, epoch) in &held.workers {
            if let Some(epoch) = epoch {
                // From here on, a late checkpoint write of a former holder is refused.
                self.checkpoints.claim(worker, *epoch).await?;
            }
        }
        let renamed = !self.collection_exists(&shadow).await?;
        if !renamed {
            // The moment every worker was held: a state write whose operation time is after
            // everything a live worker could have read from its stream.
            let mut session = self
                .client
                .start_session()
                .await
                .map_err(StoreError::from)?;
            state.held_at = Some(DateTime::now());
            self.states
                .save(self.projection, state, Some(&mut session))
                .await?;
            let moment = Instant::now();
            let Some(held_at) = session.operation_time() else {
                return Err(
                    StoreError::Reply("the server reported no operation time".into()).into(),
                );
            };
            match self.follow(state, Until::Past(held_at, moment)).await {
                Ok(true) => {}
                Ok(false) => return Ok(None),
                Err(RebuildError::Store(e)) if e.action() == ErrorAction::HistoryLost => {
                    self.scan_again(state).await?;
                    return Err(RebuildError::Refused(format!(
                        "the rebuild's position fell off the oplog during the swap ({e}); the live \
                         daemon goes on with the old read model; run again to scan from a new \
                         position (what the shadow has is kept)"
                    )));
                }
                Err(e) => return Err(e),
            }
            self.check_not_behind().await?;
            self.copy_indexes(&shadow).await?;
            if held.lost.is_cancelled() {
                return Err(RebuildError::Refused(
                    "a lease held for the swap was lost before the rename; run again to resume"
                        .into(),
                ));
            }
            // Atomic for readers: they see the old read model until here, then the new one
            // (manual: "renameCollection": within a database the rename is atomic).
            self.client
                .database("admin")
                .run_command(doc! {
                    "renameCollection": format!("{}.{}", self.projection.database, shadow),
                    "to": format!("{}.{}", self.projection.database, self.projection.target),
                    "dropTarget": true,
                    "writeConcern": {"w": "majority"},
                })
                .await
                .map_err(StoreError::from)?;
            tracing::info!(projection = %self.name(), "rebuild: shadow renamed over the read model");
        }
        self.hand_over_checkpoints(state, held).await?;
        let parked = self.move_parked(state).await?;
        state.phase = Phase::Done;
        self.states.save(self.projection, state, None).await?;
        self.progress.set_phase(Phase::Done);
        let documents = self
            .db
            .collection::<Document>(&self.projection.target)
            .count_documents(doc! {})
            .await
            .map_err(StoreError::from)?;
        Ok(Some(RebuildSummary {
            scanned: state.scanned,
            streamed: state.streamed,
            documents,
            parked,
        }))
    }

    async fn collection_exists(&self, name: &str) -> Result<bool, StoreError> {
        Ok(!self
            .db
            .list_collection_names()
            .filter(doc! {"name": name})
            .await?
            .is_empty())
    }

    /// Refuses the swap when the shadow is behind the live read model for some aggregate: the
    /// swap would make readers see it go back. With the workers held, the live model is still.
    async fn check_not_behind(&self) -> Result<(), RebuildError> {
        let live = self.db.collection::<Document>(&self.projection.target);
        let mut cursor = live
            .find(doc! {})
            .projection(doc! {crate::model::projection::SEQUENCE_FIELD: 1})
            .batch_size(1000)
            .await
            .map_err(StoreError::from)?;
        let mut behind: Vec<String> = Vec::new();
        let mut total_behind = 0u64;
        let mut page: Vec<(Bson, i64)> = Vec::new();
        loop {
            let next = cursor.try_next().await.map_err(StoreError::from)?;
            let end = next.is_none();
            if let Some(d) = next
                && let Some(id) = d.get("_id")
            {
                let seq = d
                    .get(crate::model::projection::SEQUENCE_FIELD)
                    .and_then(Bson::as_i64)
                    .unwrap_or(0);
                page.push((id.clone(), seq));
            }
            if page.len() >= 1000 || (end && !page.is_empty()) {
                let ids: Vec<Bson> = page.iter().map(|(id, _)| id.clone()).collect();
                let rebuilt = self.applier.read_model.stored_sequences(&ids).await?;
                for (id, seq) in page.drain(..) {
                    // A document missing from the shadow would disappear for readers.
                    let new = rebuilt.get(&AggregateKey::of(&id)).copied();
                    if new.is_none_or(|new| new < seq) {
                        let new = new.unwrap_or(0);
                        total_behind += 1;
                        if behind.len() < 10 {
                            let id = match id {
                                Bson::String(s) => s,
                                other => other.to_string(),
                            };
                            behind.push(format!("{id}: live {seq}, rebuilt {new}"));
                        }
                    }
                }
            }
            if end {
                break;
            }
        }
        if total_behind == 0 {
            return Ok(());
        }
        let message = format!(
            "the rebuilt read model is behind the live one for {total_behind} aggregate(s) ({}); \
             their next events are parked or dead-lettered in {} (see `mongo-projector parked \
             list`); fix the handlers and run again with --restart, or pass --allow-behind",
            behind.join("; "),
            shadow_parked_name(self.projection)
        );
        if self.options.allow_behind {
            tracing::warn!(projection = %self.name(), "{message}");
            return Ok(());
        }
        Err(RebuildError::Refused(message))
    }

    /// Builds the live read model's secondary indexes on the shadow, so that readers' queries
    /// are as fast after the swap as before.
    async fn copy_indexes(&self, shadow: &str) -> Result<(), RebuildError> {
        let reply = self
            .db
            .run_command(doc! {"listIndexes": &self.projection.target})
            .await;
        let specs: Vec<Document> = match reply {
            Ok(r) => r
                .get_document("cursor")
                .and_then(|c| c.get_array("firstBatch"))
                .map(|b| b.iter().filter_map(Bson::as_document).cloned().collect())
                .unwrap_or_default(),
            // No live read model yet: nothing to copy.
            Err(e) if crate::error::server_code(&e) == Some(26) => Vec::new(),
            Err(e) => return Err(StoreError::from(e).into()),
        };
        let indexes: Vec<Document> = specs
            .into_iter()
            .filter(|s| s.get_str("name").ok() != Some("_id_"))
            .map(|mut s| {
                s.remove("ns");
                s.remove("v");
                s
            })
            .collect();
        if indexes.is_empty() {
            return Ok(());
        }
        tracing::info!(projection = %self.name(), indexes = indexes.len(), "rebuild: building the read model's indexes on the shadow");
        self.db
            .run_command(doc! {"createIndexes": shadow, "indexes": indexes, "writeConcern": {"w": "majority"}})
            .await
            .map_err(StoreError::from)?;
        Ok(())
    }

    /// Sets every worker's checkpoint to the shadow's position, keeping its running count and
    /// origin. The token is the rebuild's stream's, not the worker's: marked as such, a worker
    /// starts at its cluster time instead of resuming after it
    /// ([`crate::model::partition::Vouched::ForeignToken`]).
    async fn hand_over_checkpoints(
        &self,
        state: &RebuildState,
        held: &Held,
    ) -> Result<(), RebuildError> {
        for (worker, epoch) in &held.workers {
            let previous = self.checkpoints.load(worker).await?;
            let checkpoint = Checkpoint {
                token: state.token.clone(),
                cluster_time: crate::pipeline::start::token_cluster_time(&state.token),
                events_handled: previous.as_ref().map_or(0, |c| c.events_handled),
                updated_at: DateTime::now(),
                token_from: Some(format!("{} rebuild", self.name())),
                origin: previous.and_then(|c| c.origin),
            };
            match epoch {
                Some(epoch) => self.checkpoints.save(worker, &checkpoint, *epoch).await?,
                None => self.checkpoints.save_unfenced(worker, &checkpoint).await?,
            }
        }
        Ok(())
    }

    /// Replaces the projection's parked entries with the rebuilt read model's (the old ones
    /// describe a read model that no longer exists), then drops the shadow parked collection.
    /// Only entries parked before the workers were held are the old read model's: should a
    /// crash after the rename let the daemon run on the new read model before this runs again,
    /// what it parked meanwhile is kept. Idempotent. Returns the entries moved.
    async fn move_parked(&self, state: &RebuildState) -> Result<u64, RebuildError> {
        let shadow = self.applier.parked.collection().clone();
        let live = self
            .db
            .collection::<Document>(&self.projection.parking.collection);
        let mut old = doc! {"projection": self.name()};
        if let Some(t) = state.held_at {
            old.insert("firstParkedAt", doc! {"$lte": t});
        }
        live.delete_many(old).await.map_err(StoreError::from)?;
        let mut cursor = shadow.find(doc! {}).await.map_err(StoreError::from)?;
        let mut moved = 0;
        while let Some(entry) = cursor.try_next().await.map_err(StoreError::from)? {
            let Some(id) = entry.get("_id").cloned() else {
                continue;
            };
            live.replace_one(doc! {"_id": id}, entry)
                .upsert(true)
                .await
                .map_err(StoreError::from)?;
            moved += 1;
        }
        shadow.drop().await.map_err(StoreError::from)?;
        Ok(moved)
    }
}

/// How often a long phase logs its progress.
const PROGRESS_LOG_EVERY: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_round_trip_through_their_names() {
        for p in Phase::ALL {
            assert_eq!(Phase::parse(p.as_str()), Some(p));
        }
        assert_eq!(Phase::parse("sleeping"), None);
    }

    #[test]
    fn the_fingerprint_follows_the_handlers() {
        let config = Config::parse(include_str!("../../config/example.toml")).unwrap();
        let p = config.projections[0].clone();
        let mut changed = p.clone();
        changed.handlers.remove("Deposited");
        assert_eq!(fingerprint(&p), fingerprint(&p.clone()));
        assert_ne!(fingerprint(&p), fingerprint(&changed));
    }
}
