//! Applying events to a read model under the sequence guard, and deciding what an outcome
//! means: applied, duplicate (skip and count), or gap (heal from the event collection, else
//! park). See `projection` for the statement itself.
//!
//! Two ways in: [`Applier::handle`] takes one event at a time (healing, parking, sweeping and
//! operator actions use it), and [`Applier::handle_batch`] takes a lane's batch and writes it in
//! rounds, one `update` command per round with at most one statement per aggregate, so that a
//! round trip carries hundreds of events instead of one.

use crate::config::{ProjectionConfig, UnhandledPolicy};
use crate::error::StoreError;
use crate::model::event::{Event, Malformed, decode_event};
use crate::model::partition::Worker;
use crate::model::projection::{Change, SEQUENCE_FIELD, Template, guarded_statement};
use crate::ops::stats::ProjectionStats;
use crate::store::park::{ParkReason, ParkedEvent, ParkedStore};
use bson::raw::RawArrayBuf;
use bson::{Bson, Document, RawDocumentBuf, doc, rawdoc};
use futures_util::TryStreamExt;
use mongodb::{Collection, Database};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The result of one guarded write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The stored sequence was `seq - 1` (or the document was new and `seq == 1`).
    Applied,
    /// The stored sequence is already `>= seq`: a redelivery.
    Duplicate { stored: i64 },
    /// The stored sequence (0: no document) is below `seq - 1`.
    Gap { stored: i64 },
    /// The server refused the update itself (for example `$inc` on a string): never
    /// retryable as is.
    Rejected(String),
}

/// What finally happened to an event handed to [`Applier::handle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Applied,
    Skipped,
    Duplicate,
    Parked,
    DeadLettered,
}

/// The read-model collection, written with majority write concern through raw `update`
/// commands so that `n`, `upserted` and `writeErrors` can be read exactly.
#[derive(Clone)]
pub struct ReadModel {
    db: Database,
    collection: String,
}

impl ReadModel {
    pub fn new(db: Database, collection: impl Into<String>) -> Self {
        Self {
            db,
            collection: collection.into(),
        }
    }

    pub fn collection(&self) -> Collection<Document> {
        self.db.collection(&self.collection)
    }

    /// Runs one guarded statement for `event` and classifies the outcome.
    pub async fn apply(
        &self,
        event: &Event,
        statement: &RawDocumentBuf,
    ) -> Result<Outcome, StoreError> {
        // A concurrent writer could move the document between the update and the probe; the
        // probe then sees exactly `seq - 1` and the update is simply tried again.
        for _ in 0..3 {
            let reply = self
                .db
                .run_raw_command(self.update_command([statement.clone()]))
                .await?;
            if let Ok(wce) = reply.get_document("writeConcernError") {
                return Err(StoreError::WriteConcern(
                    wce.get_str("errmsg").unwrap_or("unknown").to_string(),
                ));
            }
            if let Ok(errors) = reply.get_array("writeErrors")
                && let Some(Bson::Document(e)) = errors.first()
            {
                let code = e.get_i32("code").unwrap_or(0);
                let first_event_redelivered = code == 11000
                    && event.sequence == 1
                    && e.get_document("keyPattern")
                        .map(|k| k.keys().eq(["_id"]))
                        .unwrap_or(true);
                if first_event_redelivered {
                    return Ok(Outcome::Duplicate {
                        stored: self
                            .stored_sequence(&event.aggregate_id)
                            .await?
                            .unwrap_or(1),
                    });
                }
                let message = e.get_str("errmsg").unwrap_or("");
                if let Some(e) = crate::error::server_write_error(code, message) {
                    return Err(e);
                }
                return Ok(Outcome::Rejected(format!(
                    "update refused with code {code}: {message}"
                )));
            }
            let n = reply_count(&reply, "n")?;
            if n >= 1 {
                return Ok(Outcome::Applied);
            }
            match self.stored_sequence(&event.aggregate_id).await? {
                Some(stored) if stored >= event.sequence => {
                    return Ok(Outcome::Duplicate { stored });
                }
                Some(stored) if stored == event.sequence - 1 => continue,
                stored => {
                    return Ok(Outcome::Gap {
                        stored: stored.unwrap_or(0),
                    });
                }
            }
        }
        Err(StoreError::Reply(format!(
            "read model document {} kept changing under a guarded update",
            event.aggregate_id
        )))
    }

    /// An ordered `update` command of `statements`, with majority write concern, built as
    /// BSON bytes: the statements are already encoded and are copied, not re-encoded.
    fn update_command(
        &self,
        statements: impl IntoIterator<Item = RawDocumentBuf>,
    ) -> RawDocumentBuf {
        let mut updates = RawArrayBuf::new();
        for statement in statements {
            updates.push(statement);
        }
        let mut command = rawdoc! {"update": self.collection.as_str()};
        command.append("updates", updates);
        command.append("ordered", true);
        command.append("writeConcern", rawdoc! {"w": "majority"});
        command
    }

    /// The `lastSequenceNumber` stored for an aggregate (None: no document, or none recorded).
    pub async fn stored_sequence(&self, aggregate_id: &Bson) -> Result<Option<i64>, StoreError> {
        Ok(self
            .stored_sequences(std::slice::from_ref(aggregate_id))
            .await?
            .remove(&AggregateKey::of(aggregate_id)))
    }

    /// The `lastSequenceNumber` of many aggregates in one query (absent: no document, or none
    /// recorded). One round trip for a whole round of a batch.
    pub(crate) async fn stored_sequences(
        &self,
        aggregate_ids: &[Bson],
    ) -> Result<HashMap<AggregateKey, i64>, StoreError> {
        let filter = match aggregate_ids {
            [one] => doc! {"_id": one.clone()},
            many => doc! {"_id": {"$in": many.to_vec()}},
        };
        let mut cursor = self
            .collection()
            .find(filter)
            .projection(doc! {SEQUENCE_FIELD: 1})
            .batch_size(aggregate_ids.len().clamp(1, 10_000) as u32)
            .await?;
        let mut out = HashMap::with_capacity(aggregate_ids.len());
        while let Some(d) = cursor.try_next().await? {
            let seq = match d.get(SEQUENCE_FIELD) {
                Some(Bson::Int64(n)) => *n,
                Some(Bson::Int32(n)) => *n as i64,
                _ => continue,
            };
            if let Some(id) = d.get("_id") {
                out.insert(AggregateKey::of(id), seq);
            }
        }
        Ok(out)
    }
}

fn reply_count(reply: &Document, field: &str) -> Result<i64, StoreError> {
    match reply.get(field) {
        Some(Bson::Int32(n)) => Ok(*n as i64),
        Some(Bson::Int64(n)) => Ok(*n),
        _ => Err(StoreError::Reply(format!(
            "update reply without {field}: {reply}"
        ))),
    }
}

/// An aggregate id as a hashable key: the read-model `_id` compares numbers by value, so
/// 32- and 64-bit integers map to one key; other ids are keyed by their BSON bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum AggregateKey {
    Str(String),
    Int(i64),
    Bytes(Vec<u8>),
}

impl AggregateKey {
    /// The key of an aggregate id as stored in an event.
    pub fn of(id: &Bson) -> AggregateKey {
        match id {
            Bson::String(s) => AggregateKey::Str(s.clone()),
            Bson::Int32(n) => AggregateKey::Int(*n as i64),
            Bson::Int64(n) => AggregateKey::Int(*n),
            other => {
                AggregateKey::Bytes(bson::to_vec(&doc! {"": other.clone()}).unwrap_or_default())
            }
        }
    }

    /// A hash that is the same in every process and on every run (FNV-1a), so that routing
    /// by aggregate never depends on a random seed.
    pub(crate) fn stable_hash(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for b in bytes {
                h ^= *b as u64;
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        match self {
            AggregateKey::Str(s) => eat(s.as_bytes()),
            AggregateKey::Int(n) => eat(&n.to_le_bytes()),
            AggregateKey::Bytes(b) => eat(b),
        }
        h
    }
}

/// What a lane last knew of each aggregate's stored sequence. Read-model sequences only grow,
/// so a cached value is a lower bound of the stored one: "stored >= seq" from the cache is a
/// certain duplicate; anything else is checked by the guarded write itself. Bounded: when full
/// it is cleared, which costs one probe per aggregate on its next round.
#[derive(Debug)]
pub(crate) struct SequenceCache {
    known: HashMap<AggregateKey, i64>,
    capacity: usize,
}

impl SequenceCache {
    /// An empty cache of at most `capacity` aggregates.
    pub fn new(capacity: usize) -> Self {
        Self {
            known: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    fn get(&self, key: &AggregateKey) -> Option<i64> {
        self.known.get(key).copied()
    }

    fn put(&mut self, key: AggregateKey, seq: i64) {
        if self.known.len() >= self.capacity && !self.known.contains_key(&key) {
            self.known.clear();
        }
        let slot = self.known.entry(key).or_insert(seq);
        *slot = (*slot).max(seq);
    }

    fn forget(&mut self, key: &AggregateKey) {
        self.known.remove(key);
    }
}

/// A round sorted out: the statements to write (with the item and its disposition once
/// written), chain by chain, and the items that go the one-by-one way.
#[derive(Default)]
struct RoundPlan {
    send: Vec<(usize, Disposition)>,
    statements: Vec<RawDocumentBuf>,
    slow: Vec<usize>,
}

/// What an ordered `update` command did with one statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    Applied,
    /// Refused, or did not match its guard.
    Failed,
    /// After the refused statement: the server did not run it.
    NotAttempted,
}

/// The index of the statement an ordered `update` reply's `writeErrors` refused, if any.
fn first_refused(reply: &Document) -> Option<usize> {
    let errors = reply.get_array("writeErrors").ok()?;
    errors
        .iter()
        .filter_map(|e| match e {
            Bson::Document(e) => e
                .get("index")
                .and_then(Bson::as_i64)
                .or_else(|| e.get_i32("index").ok().map(i64::from)),
            _ => None,
        })
        .min()
        .map(|index| index.max(0) as usize)
}

/// The batch's unfinished items, grouped by aggregate (in order of first appearance), each
/// group in stream order.
fn pending_by_aggregate(items: &[BatchItem], keys: &[AggregateKey]) -> Vec<Vec<usize>> {
    let mut slot_of: HashMap<&AggregateKey, usize> = HashMap::new();
    let mut pending: Vec<Vec<usize>> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        if item.done.is_some() {
            continue;
        }
        let slot = *slot_of.entry(&keys[i]).or_insert_with(|| {
            pending.push(Vec::new());
            pending.len() - 1
        });
        pending[slot].push(i);
    }
    pending
}

/// One event of a batch and, once reached, its final disposition. A batch interrupted by a
/// transient error is retried with the finished items left alone.
#[derive(Debug, Clone)]
pub(crate) struct BatchItem {
    pub event: Event,
    pub done: Option<Disposition>,
}

impl BatchItem {
    /// An event not yet handled.
    pub fn new(event: Event) -> Self {
        Self { event, done: None }
    }
}

/// Everything needed to take one event to its final disposition: guarded apply, healing from
/// the event collection, parking, and releasing parked successors. Cheap to clone: every lane
/// holds its own copy of the same handles.
#[derive(Clone)]
pub struct Applier {
    /// The projection's settings (shared by its workers).
    pub config: Arc<ProjectionConfig>,
    /// The worker's name, for logs.
    pub worker: String,
    pub read_model: ReadModel,
    pub events: Collection<Document>,
    pub parked: ParkedStore,
    pub stats: Arc<ProjectionStats>,
    parked_watch: Arc<ParkedWatch>,
    /// The handlers, compiled once, by event type.
    templates: Arc<HashMap<String, Template>>,
}

/// Whether this projection may have parked events waiting for a predecessor: when it has none,
/// an applied event needs no look-up of parked successors, which would otherwise cost a round
/// trip per event. Every park moves `epoch`; a sweep that finds nothing parked records the
/// epoch it started from, so a park racing with that sweep keeps the answer "maybe".
#[derive(Debug, Default)]
struct ParkedWatch {
    epoch: AtomicU64,
    clear_at: AtomicU64,
}

impl ParkedWatch {
    fn new() -> Self {
        // Unknown at start: entries may have been parked by an earlier run.
        Self {
            epoch: AtomicU64::new(1),
            clear_at: AtomicU64::new(0),
        }
    }

    fn maybe_parked(&self) -> bool {
        self.epoch.load(Ordering::Acquire) != self.clear_at.load(Ordering::Acquire)
    }
}

impl Applier {
    pub fn new(worker: &Worker, db: &Database, stats: Arc<ProjectionStats>) -> Self {
        let config = worker.projection.clone();
        let events = crate::store::majority_collection(db, &config.events);
        Self {
            read_model: ReadModel::new(db.clone(), config.target.clone()),
            parked: ParkedStore::for_worker(db, worker),
            worker: worker.name.clone(),
            events,
            config,
            stats,
            parked_watch: Arc::new(ParkedWatch::new()),
            templates: Arc::new(
                worker
                    .projection
                    .handlers
                    .iter()
                    .map(|(event_type, h)| (event_type.clone(), Template::compile(h)))
                    .collect(),
            ),
        }
    }

    fn change_for(&self, event: &Event) -> Option<Change<'_>> {
        match self.templates.get(&event.event_type) {
            Some(template) => Some(Change::Handler(template)),
            None => match self.config.unhandled {
                UnhandledPolicy::Skip => Some(Change::AdvanceOnly),
                UnhandledPolicy::Park => None,
            },
        }
    }

    /// Takes a decoded event to its final disposition. `Err` only for transient store
    /// errors; the caller retries the same event.
    pub async fn handle(&self, event: &Event) -> Result<Disposition, StoreError> {
        let disposition = self.handle_inner(event).await?;
        if matches!(disposition, Disposition::Applied | Disposition::Skipped) {
            self.release_successors(event).await?;
        }
        Ok(disposition)
    }

    /// Whether an applied event may have parked successors to release. When the watch cannot
    /// tell (at start, or after a park), one query of the parked collection decides, and
    /// "nothing parked" is remembered until the next park: without it, a path that never
    /// sweeps parked events (the fold of the event collection) would look up successors for
    /// every event it applies.
    async fn successors_may_be_parked(&self) -> Result<bool, StoreError> {
        if !self.parked_watch.maybe_parked() {
            return Ok(false);
        }
        // Read before the query: a park racing with it moves the epoch past this one, and
        // the answer stays "maybe".
        let epoch = self.parked_watch.epoch.load(Ordering::Acquire);
        if self.parked.any_parked().await? {
            return Ok(true);
        }
        self.parked_watch.clear_at.store(epoch, Ordering::Release);
        Ok(false)
    }

    /// Takes a lane's batch (its events in stream order) to final dispositions, in rounds.
    /// Each round writes, for every aggregate of the batch, the run of its pending events that
    /// follow its stored sequence one by one (a chain), all in one ordered `update` command: a
    /// live batch (many aggregates, one event each) and a fold's batch (a few aggregates, many
    /// consecutive events each) both take one round trip. Anything else (a duplicate, a gap,
    /// an event without handler or that cannot be rendered, a statement that did not match)
    /// is settled from the cache or goes through [`Applier::handle`] one by one. `Err` only
    /// for transient store errors; the caller retries the same items, and finished ones are
    /// left alone.
    pub(crate) async fn handle_batch(
        &self,
        items: &mut [BatchItem],
        cache: &mut SequenceCache,
    ) -> Result<(), StoreError> {
        let keys: Vec<AggregateKey> = items
            .iter()
            .map(|item| AggregateKey::of(&item.event.aggregate_id))
            .collect();
        loop {
            let pending = pending_by_aggregate(items, &keys);
            if pending.is_empty() {
                return Ok(());
            }
            self.run_round(items, &keys, &pending, cache).await?;
        }
    }

    /// One round: aggregates whose stored sequence is not known yet are probed first (one
    /// query), the chains are written with one command, and every aggregate's first event
    /// that cannot be chained goes the one-by-one way. Every round finishes at least the first
    /// pending event of every aggregate it does not leave for a later round, so rounds end.
    async fn run_round(
        &self,
        items: &mut [BatchItem],
        keys: &[AggregateKey],
        pending: &[Vec<usize>],
        cache: &mut SequenceCache,
    ) -> Result<(), StoreError> {
        self.probe_unknown(items, keys, pending, cache).await?;
        let mut plan = self.plan_round(items, keys, pending, cache);
        if !plan.send.is_empty() {
            let statements = std::mem::take(&mut plan.statements);
            let written = self.write_round(items, &plan.send, statements).await?;
            let maybe_parked = self.successors_may_be_parked().await?;
            let mut broken: HashSet<&AggregateKey> = HashSet::new();
            for ((i, kind), outcome) in plan.send.iter().zip(written) {
                let key = &keys[*i];
                if broken.contains(key) {
                    // After a link that did not apply, the rest of the chain waits for the
                    // next round (probed again).
                    continue;
                }
                match outcome {
                    Written::Applied => {
                        cache.put(key.clone(), items[*i].event.sequence);
                        self.count_applied(*kind);
                        items[*i].done = Some(*kind);
                        if maybe_parked {
                            self.release_successors(&items[*i].event).await?;
                        }
                    }
                    Written::Failed => {
                        cache.forget(key);
                        plan.slow.push(*i);
                        broken.insert(key);
                    }
                    Written::NotAttempted => {
                        cache.forget(key);
                        broken.insert(key);
                    }
                }
            }
        }
        for i in plan.slow {
            let event = &items[i].event;
            // Whatever happens here may move the stored sequence in ways the cache cannot
            // follow (healing, released successors): it is probed again next time.
            cache.forget(&keys[i]);
            let disposition = self.handle(event).await?;
            items[i].done = Some(disposition);
        }
        Ok(())
    }

    /// Reads, in one query, the stored sequence of every pending aggregate the cache does not
    /// know.
    async fn probe_unknown(
        &self,
        items: &[BatchItem],
        keys: &[AggregateKey],
        pending: &[Vec<usize>],
        cache: &mut SequenceCache,
    ) -> Result<(), StoreError> {
        let unknown: Vec<usize> = pending
            .iter()
            .map(|chain| chain[0])
            .filter(|i| cache.get(&keys[*i]).is_none())
            .collect();
        if !unknown.is_empty() {
            let ids: Vec<Bson> = unknown
                .iter()
                .map(|i| items[*i].event.aggregate_id.clone())
                .collect();
            let found = self.read_model.stored_sequences(&ids).await?;
            for i in unknown {
                let stored = found.get(&keys[i]).copied().unwrap_or(0);
                cache.put(keys[i].clone(), stored);
            }
        }
        Ok(())
    }

    /// Sorts each aggregate's pending events by what the cache says of it: leading duplicates
    /// are settled here, the events that follow the stored sequence one by one become its
    /// chain of statements, and a first event that cannot start a chain goes the slow way.
    /// Events after a chain's end wait for the next round.
    fn plan_round(
        &self,
        items: &mut [BatchItem],
        keys: &[AggregateKey],
        pending: &[Vec<usize>],
        cache: &SequenceCache,
    ) -> RoundPlan {
        let mut plan = RoundPlan::default();
        for events in pending {
            let stored = cache.get(&keys[events[0]]).unwrap_or(0);
            let mut chained = 0;
            for &i in events {
                let event = &items[i].event;
                if chained == 0 && event.sequence <= stored {
                    ProjectionStats::add(&self.stats.duplicates, 1);
                    items[i].done = Some(Disposition::Duplicate);
                    continue;
                }
                let link = (event.sequence == stored + 1 + chained)
                    .then(|| self.change_for(event))
                    .flatten()
                    .and_then(|change| {
                        let kind = if matches!(change, Change::AdvanceOnly) {
                            Disposition::Skipped
                        } else {
                            Disposition::Applied
                        };
                        guarded_statement(event, change).ok().map(|s| (kind, s))
                    });
                match link {
                    Some((kind, statement)) => {
                        plan.send.push((i, kind));
                        plan.statements.push(statement);
                        chained += 1;
                    }
                    None => {
                        if chained == 0 {
                            plan.slow.push(i);
                        }
                        break;
                    }
                }
            }
        }
        plan
    }

    /// Writes a round's statements with one ordered `update` command (the links of a chain
    /// must apply in order); what became of each.
    async fn write_round(
        &self,
        items: &[BatchItem],
        send: &[(usize, Disposition)],
        statements: Vec<RawDocumentBuf>,
    ) -> Result<Vec<Written>, StoreError> {
        let started = std::time::Instant::now();
        let reply = self
            .read_model
            .db
            .run_raw_command(self.read_model.update_command(statements))
            .await?;
        self.stats.apply_seconds.observe(started.elapsed());
        if let Ok(wce) = reply.get_document("writeConcernError") {
            return Err(StoreError::WriteConcern(
                wce.get_str("errmsg").unwrap_or("unknown").to_string(),
            ));
        }
        // Ordered: the server stops at the first refused statement.
        let attempted = first_refused(&reply).unwrap_or(send.len()).min(send.len());
        let mut written = vec![Written::NotAttempted; send.len()];
        if reply_count(&reply, "n")? == attempted as i64 {
            // The fast path: every statement before the refused one matched its guard.
            written[..attempted].fill(Written::Applied);
            if attempted < send.len() {
                written[attempted] = Written::Failed;
            }
            return Ok(written);
        }
        // Some did not match: after the write, a stored sequence between the event's own and
        // the last attempted link of its chain means this command applied it (the cache said
        // the chain's predecessor was stored, and only this lane writes this aggregate, in
        // order); anything else goes the one-by-one way.
        let mut last_link: HashMap<AggregateKey, i64> = HashMap::new();
        for (i, _) in &send[..attempted] {
            let e = &items[*i].event;
            last_link.insert(AggregateKey::of(&e.aggregate_id), e.sequence);
        }
        let ids: Vec<Bson> = send[..attempted]
            .iter()
            .map(|(i, _)| items[*i].event.aggregate_id.clone())
            .collect();
        let now = self.read_model.stored_sequences(&ids).await?;
        for (j, (i, _)) in send.iter().enumerate().take(attempted) {
            let e = &items[*i].event;
            let key = AggregateKey::of(&e.aggregate_id);
            let applied = now
                .get(&key)
                .is_some_and(|stored| e.sequence <= *stored && *stored <= last_link[&key]);
            written[j] = if applied {
                Written::Applied
            } else {
                Written::Failed
            };
        }
        if attempted < send.len() {
            written[attempted] = Written::Failed;
        }
        Ok(written)
    }

    /// Records a malformed event as dead-lettered.
    pub(crate) async fn dead_letter_malformed(
        &self,
        malformed: &Malformed,
        token: Option<&Bson>,
    ) -> Result<(), StoreError> {
        self.parked.dead_letter_malformed(malformed, token).await?;
        ProjectionStats::add(&self.stats.malformed, 1);
        ProjectionStats::add(&self.stats.dead_lettered, 1);
        tracing::warn!(projection = %self.worker, reason = %malformed.reason, "malformed event dead-lettered");
        Ok(())
    }

    /// [`Applier::dead_letter_malformed`], retrying known-transient errors in place after the
    /// pauses of `backoff`; `shutdown` ends the retries.
    pub(crate) async fn dead_letter_with_retry(
        &self,
        malformed: &Malformed,
        token: Option<&Bson>,
        mut backoff: crate::backoff::Backoff,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Result<(), StoreError> {
        loop {
            match self.dead_letter_malformed(malformed, token).await {
                Ok(()) => return Ok(()),
                Err(e)
                    if e.action() == crate::error::ErrorAction::Retry
                        && backoff.wait(shutdown).await => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// One guarded attempt, without healing or parking: `Err(stored)` on a gap.
    async fn apply_once(&self, event: &Event) -> Result<Result<Disposition, i64>, StoreError> {
        let Some(change) = self.change_for(event) else {
            self.park(
                event,
                ParkReason::Unhandled,
                format!("no handler for event type {:?}", event.event_type),
            )
            .await?;
            return Ok(Ok(Disposition::Parked));
        };
        let statement = match guarded_statement(event, change) {
            Ok(s) => s,
            Err(e) => {
                self.dead_letter(event, ParkReason::HandlerError, e.0)
                    .await?;
                return Ok(Ok(Disposition::DeadLettered));
            }
        };
        let applied = if matches!(change, Change::AdvanceOnly) {
            Disposition::Skipped
        } else {
            Disposition::Applied
        };
        let started = std::time::Instant::now();
        let outcome = self.read_model.apply(event, &statement).await?;
        self.stats.apply_seconds.observe(started.elapsed());
        Ok(match outcome {
            Outcome::Applied => {
                self.count_applied(applied);
                Ok(applied)
            }
            Outcome::Duplicate { .. } => {
                ProjectionStats::add(&self.stats.duplicates, 1);
                Ok(Disposition::Duplicate)
            }
            Outcome::Rejected(reason) => {
                self.dead_letter(event, ParkReason::HandlerError, reason)
                    .await?;
                Ok(Disposition::DeadLettered)
            }
            Outcome::Gap { stored } => Err(stored),
        })
    }

    /// Applies `event`; on a gap, heals from the event collection and tries once more, then
    /// parks it.
    async fn handle_inner(&self, event: &Event) -> Result<Disposition, StoreError> {
        let stored = match self.apply_once(event).await? {
            Ok(done) => return Ok(done),
            Err(stored) => stored,
        };
        let stored = if self.heal(event, stored).await? {
            match self.apply_once(event).await? {
                Ok(done) => return Ok(done),
                Err(stored) => stored,
            }
        } else {
            self.read_model
                .stored_sequence(&event.aggregate_id)
                .await?
                .unwrap_or(0)
        };
        self.park(
            event,
            ParkReason::Gap,
            format!("waiting for sequence {} (stored {stored})", stored + 1),
        )
        .await?;
        Ok(Disposition::Parked)
    }

    fn count_applied(&self, d: Disposition) {
        if d == Disposition::Skipped {
            ProjectionStats::add(&self.stats.skipped, 1);
        } else {
            ProjectionStats::add(&self.stats.applied, 1);
        }
    }

    /// Reads the missing predecessors of `event` from the event collection and applies them
    /// in order. True when the aggregate is now at `event.sequence - 1`.
    async fn heal(&self, event: &Event, stored: i64) -> Result<bool, StoreError> {
        let f = &self.config.fields;
        let filter = doc! {
            &f.aggregate_id: event.aggregate_id.clone(),
            &f.sequence_number: {"$gt": stored, "$lt": event.sequence},
        };
        let mut cursor = self
            .events
            .find(filter)
            .sort(doc! {&f.sequence_number: 1})
            .await?;
        let mut expected = stored + 1;
        while let Some(doc) = cursor.try_next().await? {
            let missing = match decode_event(&doc, f) {
                Ok(e) => e,
                Err(malformed) => {
                    // A stored event that cannot be decoded blocks its aggregate: keep it visible.
                    self.dead_letter_malformed(&malformed, None).await?;
                    return Ok(false);
                }
            };
            if missing.sequence != expected {
                return Ok(false);
            }
            match self.apply_once(&missing).await? {
                Ok(Disposition::Applied | Disposition::Skipped | Disposition::Duplicate) => {
                    ProjectionStats::add(&self.stats.healed, 1);
                    tracing::debug!(
                        projection = %self.worker,
                        aggregate = %missing.aggregate_id,
                        sequence = missing.sequence,
                        "missing predecessor read back from the event collection"
                    );
                    // A parked copy of the healed event is no longer needed.
                    self.parked
                        .remove(&missing.aggregate_id, missing.sequence)
                        .await?;
                }
                Ok(Disposition::Parked | Disposition::DeadLettered) | Err(_) => return Ok(false),
            }
            expected += 1;
        }
        Ok(expected == event.sequence)
    }

    /// Applies parked events that directly follow `event`, for as long as they chain.
    async fn release_successors(&self, event: &Event) -> Result<(), StoreError> {
        let mut next = event.sequence + 1;
        while let Some(parked) = self.parked.find_waiting(&event.aggregate_id, next).await? {
            let successor = match decode_event(&parked, &self.config.fields) {
                Ok(e) => e,
                Err(_) => return Ok(()),
            };
            match self.apply_once(&successor).await? {
                Ok(Disposition::Applied | Disposition::Skipped | Disposition::Duplicate) => {
                    self.parked
                        .remove(&successor.aggregate_id, successor.sequence)
                        .await?;
                    ProjectionStats::add(&self.stats.released, 1);
                    next += 1;
                }
                Ok(Disposition::Parked | Disposition::DeadLettered) | Err(_) => return Ok(()),
            }
        }
        Ok(())
    }

    async fn park(
        &self,
        event: &Event,
        reason: ParkReason,
        detail: String,
    ) -> Result<(), StoreError> {
        let first_time = self
            .parked
            .park(event, reason, &detail, &self.config.parking)
            .await?;
        // After the write: a sweep that looked before it either saw the entry or sees a new epoch.
        self.parked_watch.epoch.fetch_add(1, Ordering::AcqRel);
        if first_time {
            ProjectionStats::add(&self.stats.parked, 1);
            tracing::info!(
                projection = %self.worker,
                aggregate = %event.aggregate_id,
                sequence = event.sequence,
                reason = reason.as_str(),
                %detail,
                "event parked"
            );
        }
        Ok(())
    }

    async fn dead_letter(
        &self,
        event: &Event,
        reason: ParkReason,
        detail: String,
    ) -> Result<(), StoreError> {
        self.parked.dead_letter(event, reason, &detail).await?;
        ProjectionStats::add(&self.stats.dead_lettered, 1);
        tracing::warn!(
            projection = %self.worker,
            aggregate = %event.aggregate_id,
            sequence = event.sequence,
            reason = reason.as_str(),
            %detail,
            "event dead-lettered"
        );
        Ok(())
    }

    /// Operator action: gives up on a parked or dead-lettered event by advancing its
    /// aggregate's sequence past it without applying its handler, then releases the parked
    /// events that follow. Only possible when the event is the next one its aggregate needs.
    pub async fn skip_parked(
        &self,
        parked: &ParkedEvent,
    ) -> Result<Result<(), String>, StoreError> {
        let event = match decode_event(&parked.event, &self.config.fields) {
            Ok(e) => e,
            Err(_) => {
                // A malformed entry has no place in any sequence: skipping it only acknowledges it.
                self.parked.remove_entry(&parked.id).await?;
                return Ok(Ok(()));
            }
        };
        let statement =
            guarded_statement(&event, Change::AdvanceOnly).map_err(|e| StoreError::Reply(e.0))?;
        match self.read_model.apply(&event, &statement).await? {
            Outcome::Applied | Outcome::Duplicate { .. } => {
                self.parked.remove_entry(&parked.id).await?;
                tracing::warn!(
                    projection = %self.worker,
                    aggregate = %event.aggregate_id,
                    sequence = event.sequence,
                    "parked event skipped by an operator"
                );
                self.release_successors(&event).await?;
                Ok(Ok(()))
            }
            Outcome::Gap { stored } => Ok(Err(format!(
                "cannot skip sequence {} of {}: the read model is at {stored}; resolve sequence {} first",
                event.sequence,
                event.aggregate_id,
                stored + 1
            ))),
            Outcome::Rejected(reason) => Ok(Err(reason)),
        }
    }

    /// Parked events whose next attempt is due (at most 64). Also notes when nothing at all is
    /// parked any more, so that applied events stop looking for parked successors.
    pub async fn due_parked(&self) -> Result<Vec<ParkedEvent>, StoreError> {
        self.successors_may_be_parked().await?;
        self.parked.due(64).await
    }

    /// One more attempt at a parked event; dead-letters it past its limits. True when it was
    /// resolved (applied or found already applied). The daemon runs this in the lane of the
    /// event's aggregate, so that it never races with that aggregate's live events.
    pub async fn retry_parked(&self, parked: &ParkedEvent) -> Result<bool, StoreError> {
        let Ok(event) = decode_event(&parked.event, &self.config.fields) else {
            return Ok(false);
        };
        if parked.reason == ParkReason::Unhandled.as_str() && self.change_for(&event).is_none() {
            self.parked.reschedule(parked, &self.config.parking).await?;
            return Ok(false);
        }
        match self.handle_inner(&event).await? {
            Disposition::Applied | Disposition::Skipped | Disposition::Duplicate => {
                self.parked
                    .remove(&event.aggregate_id, event.sequence)
                    .await?;
                ProjectionStats::add(&self.stats.released, 1);
                self.release_successors(&event).await?;
                Ok(true)
            }
            Disposition::Parked => {
                if self.parked.reschedule(parked, &self.config.parking).await? {
                    ProjectionStats::add(&self.stats.dead_lettered, 1);
                    tracing::warn!(
                        projection = %self.worker,
                        aggregate = %event.aggregate_id,
                        sequence = event.sequence,
                        attempts = parked.attempts + 1,
                        "parked event dead-lettered: its predecessor never arrived"
                    );
                }
                Ok(false)
            }
            Disposition::DeadLettered => Ok(false),
        }
    }
}
