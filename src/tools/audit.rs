//! The drift audit: every read-model document's `lastSequenceNumber` against the highest
//! `sequenceNumber` of its aggregate in the event collection.
//!
//! Both sides are read as streams sorted by aggregate id and walked together (a merge join), so
//! memory does not grow with the number of aggregates: the event side is one aggregation
//! (`$group` per aggregate with the highest and lowest sequence and the count, `$sort` on `_id`,
//! `allowDiskUse`), the read-model side one `find` of `{_id, lastSequenceNumber}` sorted by
//! `_id`. Both orders are the server's BSON order, and the walk compares ids with the same order
//! ([`bson_order::compare`], manual: "Comparison/Sort Order").
//!
//! An aggregate is **behind** (read model below its newest event), **ahead** (read model above
//! it, without events at all, or with a stored sequence that is not a valid integer),
//! **missing** (events but no document) or has a **gap** (its stored events do not run 1, 2, ...
//! without a hole; such an aggregate cannot be folded past the hole and is left to parking).
//! A candidate is looked at a second time before it is reported, read model first and events
//! second, so that an event appended during the walk does not make a document look ahead.
//!
//! Repair goes through the live path ([`Applier::handle`], the sequence guard), so it is safe
//! while the daemon runs: whatever the daemon applied first comes back as a duplicate.

use crate::config::{Config, ProjectionConfig};
use crate::error::StoreError;
use crate::model::event::decode_event;
use crate::model::partition::Worker;
use crate::model::projection::SEQUENCE_FIELD;
use crate::ops::stats::ProjectionStats;
use crate::pipeline::apply::{Applier, Disposition};
use bson::{Bson, Document, doc};
use bson_order::compare;
use futures_util::TryStreamExt;
use mongodb::{Client, Collection, Database};
use std::cmp::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

/// How a read-model document differs from its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DriftKind {
    /// The stored sequence is below the aggregate's newest event.
    Behind,
    /// The stored sequence is above the newest event, the aggregate has no events, or the
    /// stored sequence is not a valid integer: the document cannot be un-applied.
    Ahead,
    /// The aggregate has events but no read-model document.
    Missing,
    /// The aggregate's events have a hole: they cannot be folded past it.
    Gap,
}

impl DriftKind {
    /// Every kind, in the order reports list them.
    pub(crate) const ALL: [DriftKind; 4] = [
        DriftKind::Behind,
        DriftKind::Ahead,
        DriftKind::Missing,
        DriftKind::Gap,
    ];

    /// The name used in reports and in the metric's `kind` label.
    pub fn as_str(self) -> &'static str {
        match self {
            DriftKind::Behind => "behind",
            DriftKind::Ahead => "ahead",
            DriftKind::Missing => "missing",
            DriftKind::Gap => "gap",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What the read model holds for one aggregate.
#[derive(Debug, Clone, PartialEq)]
pub enum Stored {
    /// No read-model document.
    NoDocument,
    /// A valid stored sequence (an integer of at least 1).
    Sequence(i64),
    /// A document whose `lastSequenceNumber` is absent (`None`) or not a valid sequence.
    Invalid(Option<Bson>),
}

impl Stored {
    /// The stored sequence of a read-model document.
    pub fn of(document: &Document) -> Stored {
        match document.get(SEQUENCE_FIELD) {
            Some(Bson::Int32(n)) if *n >= 1 => Stored::Sequence(*n as i64),
            Some(Bson::Int64(n)) if *n >= 1 => Stored::Sequence(*n),
            other => Stored::Invalid(other.cloned()),
        }
    }

    fn describe(&self) -> String {
        match self {
            Stored::NoDocument => "-".into(),
            Stored::Sequence(n) => n.to_string(),
            Stored::Invalid(None) => "(none)".into(),
            Stored::Invalid(Some(v)) => format!("invalid {v}"),
        }
    }

    fn to_json(&self) -> serde_json::Value {
        match self {
            Stored::NoDocument => serde_json::Value::Null,
            Stored::Sequence(n) => serde_json::json!(n),
            Stored::Invalid(v) => serde_json::json!({
                "invalid": v.clone().map(Bson::into_relaxed_extjson),
            }),
        }
    }
}

/// One aggregate's events, as the event collection's `$group` sums them up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventsSummary {
    pub highest: i64,
    pub(crate) lowest: i64,
    pub count: i64,
}

impl EventsSummary {
    /// True when the events are exactly 1..=highest (the unique index rules out repeats).
    pub(crate) fn contiguous(&self) -> bool {
        self.lowest == 1 && self.count == self.highest
    }

    fn of(group: &Document) -> Option<EventsSummary> {
        let int = |k: &str| match group.get(k) {
            Some(Bson::Int32(n)) => Some(*n as i64),
            Some(Bson::Int64(n)) => Some(*n),
            _ => None,
        };
        Some(EventsSummary {
            highest: int("highest")?,
            lowest: int("lowest")?,
            count: int("count")?,
        })
    }
}

/// How an aggregate differs, given both sides (`None` for a side that has nothing for it).
pub(crate) fn classify(stored: &Stored, events: Option<&EventsSummary>) -> Option<DriftKind> {
    match (stored, events) {
        (_, Some(e)) if !e.contiguous() => Some(DriftKind::Gap),
        (Stored::NoDocument, None) => None,
        (Stored::NoDocument, Some(_)) => Some(DriftKind::Missing),
        (Stored::Sequence(s), Some(e)) => match s.cmp(&e.highest) {
            Ordering::Less => Some(DriftKind::Behind),
            Ordering::Equal => None,
            Ordering::Greater => Some(DriftKind::Ahead),
        },
        (Stored::Invalid(_), _) | (Stored::Sequence(_), None) => Some(DriftKind::Ahead),
    }
}

/// One aggregate out of step.
#[derive(Debug, Clone, PartialEq)]
pub struct Drift {
    pub kind: DriftKind,
    pub aggregate: Bson,
    pub stored: Stored,
    /// The aggregate's events (`None`: it has none).
    pub events: Option<EventsSummary>,
}

impl Drift {
    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": self.kind.as_str(),
            "aggregate": self.aggregate.clone().into_relaxed_extjson(),
            "stored": self.stored.to_json(),
            "highest": self.events.map(|e| e.highest),
            "events": self.events.map(|e| e.count),
        })
    }
}

/// What `--repair` did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RepairSummary {
    /// Aggregates brought level with their events.
    pub repaired: u64,
    /// Events applied (or skipped for lack of a handler) through the guard.
    pub applied: u64,
    /// Events the guard found already applied (the live daemon got there first).
    pub duplicates: u64,
    /// "Ahead" documents deleted and folded again from their events.
    pub refolded: u64,
    /// Aggregates that could not be repaired, with the reason (the first few).
    pub failures: Vec<String>,
    pub failed: u64,
}

/// The result of one audit of one projection.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditReport {
    pub projection: String,
    /// Distinct aggregates seen on either side.
    pub checked: u64,
    /// Aggregates of each kind, indexed like [`DriftKind::ALL`].
    pub counts: [u64; 4],
    /// The first few drifts found, in aggregate id order (those looked at again after the
    /// settle time last).
    pub examples: Vec<Drift>,
    /// Present when the audit repaired what it found.
    pub repair: Option<RepairSummary>,
}

impl AuditReport {
    /// Aggregates of one kind.
    pub fn count(&self, kind: DriftKind) -> u64 {
        self.counts[kind.index()]
    }

    /// Aggregates out of step, of any kind.
    pub fn drifted(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// True when something is still out of step after the audit: drift found and not
    /// repaired, or a gap (which repair never folds past).
    pub fn unresolved(&self) -> bool {
        match &self.repair {
            None => self.drifted() > 0,
            Some(r) => r.failed > 0 || self.count(DriftKind::Gap) > 0,
        }
    }

    /// The report as one JSON object (for `--json`).
    pub fn to_json(&self) -> serde_json::Value {
        let counts: serde_json::Map<String, serde_json::Value> = DriftKind::ALL
            .iter()
            .map(|k| (k.as_str().to_string(), serde_json::json!(self.count(*k))))
            .collect();
        serde_json::json!({
            "projection": self.projection,
            "checked": self.checked,
            "drift": counts,
            "examples": self.examples.iter().map(Drift::to_json).collect::<Vec<_>>(),
            "repair": self.repair.as_ref().map(|r| serde_json::json!({
                "repaired": r.repaired,
                "applied": r.applied,
                "duplicates": r.duplicates,
                "refolded": r.refolded,
                "failed": r.failed,
                "failures": r.failures,
            })),
        })
    }

    /// The report as a table for a terminal.
    pub fn to_table(&self) -> String {
        let mut out = format!(
            "projection {}: {} aggregate{} checked, {} out of step\n",
            self.projection,
            self.checked,
            if self.checked == 1 { "" } else { "s" },
            self.drifted()
        );
        for k in DriftKind::ALL {
            out.push_str(&format!("  {:<8} {}\n", k.as_str(), self.count(k)));
        }
        if !self.examples.is_empty() {
            let rows: Vec<[String; 4]> = self
                .examples
                .iter()
                .map(|d| {
                    [
                        d.kind.as_str().to_string(),
                        d.aggregate.to_string(),
                        d.stored.describe(),
                        match (d.kind, d.events) {
                            (_, None) => "-".to_string(),
                            (DriftKind::Gap, Some(e)) => {
                                format!("{} ({} of {} stored)", e.highest, e.count, e.highest)
                            }
                            (_, Some(e)) => e.highest.to_string(),
                        },
                    ]
                })
                .collect();
            let header = ["kind", "aggregate", "stored", "highest"];
            let width = |i: usize| {
                rows.iter()
                    .map(|r| r[i].chars().count())
                    .chain([header[i].len()])
                    .max()
                    .unwrap_or(0)
            };
            let widths = [width(0), width(1), width(2)];
            let line = |r: [&str; 4]| {
                format!(
                    "  {:<w0$}  {:<w1$}  {:>w2$}  {}\n",
                    r[0],
                    r[1],
                    r[2],
                    r[3],
                    w0 = widths[0],
                    w1 = widths[1],
                    w2 = widths[2]
                )
            };
            out.push('\n');
            out.push_str(&line(header));
            for r in &rows {
                out.push_str(&line([&r[0], &r[1], &r[2], &r[3]]));
            }
            let shown = self.examples.len() as u64;
            if shown < self.drifted() {
                out.push_str(&format!("  ... and {} more\n", self.drifted() - shown));
            }
        }
        if let Some(r) = &self.repair {
            out.push_str(&format!(
                "\nrepair: {} aggregate{} repaired ({} event{} applied, {} already applied, {} document{} folded again)\n",
                r.repaired,
                if r.repaired == 1 { "" } else { "s" },
                r.applied,
                if r.applied == 1 { "" } else { "s" },
                r.duplicates,
                r.refolded,
                if r.refolded == 1 { "" } else { "s" },
            ));
            if self.count(DriftKind::Gap) > 0 {
                out.push_str(&format!(
                    "  {} aggregate{} with a gap left to parking (an event is missing from the event collection)\n",
                    self.count(DriftKind::Gap),
                    if self.count(DriftKind::Gap) == 1 { "" } else { "s" },
                ));
            }
            for f in &r.failures {
                out.push_str(&format!("  not repaired: {f}\n"));
            }
            if r.failed > r.failures.len() as u64 {
                out.push_str(&format!(
                    "  ... and {} more not repaired\n",
                    r.failed - r.failures.len() as u64
                ));
            }
        }
        out
    }
}

/// How long the background audit lets a candidate settle when `http.readiness_max_lag` is
/// off: a lag the daemon may have without drift.
pub(crate) const DEFAULT_SETTLE: std::time::Duration = std::time::Duration::from_secs(30);

/// What one audit does besides comparing.
#[derive(Debug, Clone, Copy)]
pub struct AuditOptions {
    /// How many drifts the report lists (all are counted, and all are repaired).
    pub examples: usize,
    /// Heal what is found through the guarded path.
    pub repair: bool,
    /// How long to give the live daemon before an aggregate that looks behind or missing is
    /// looked at again (zero: at once). The background audit uses `http.readiness_max_lag`,
    /// or [`DEFAULT_SETTLE`] when that is off.
    pub settle: Duration,
}

/// Behind-or-missing candidates an audit holds back for a later look at most.
const MAX_DEFERRED: usize = 10_000;

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            examples: 20,
            repair: false,
            settle: Duration::ZERO,
        }
    }
}

/// The audit of one projection.
#[derive(Clone)]
pub struct Audit {
    /// The worker whose share is audited (the whole projection, or one partition of it).
    worker: Worker,
    config: Arc<ProjectionConfig>,
    db: Database,
    events: Collection<Document>,
    read_model: Collection<Document>,
}

/// Ids with the types an event's aggregate id may have (see `event::decode_event`).
const AGGREGATE_ID_TYPES: [&str; 5] = ["string", "objectId", "int", "long", "binData"];

impl Audit {
    pub fn new(worker: Worker, db: &Database) -> Self {
        let config = worker.projection.clone();
        Self {
            events: crate::store::majority_collection(db, &config.events),
            read_model: crate::store::majority_collection(db, &config.target),
            db: db.clone(),
            config,
            worker,
        }
    }

    /// The `$group` per aggregate over the projection's events (its `filter` first), sorted
    /// by aggregate id; `only` restricts it to one aggregate. Events the daemon would
    /// dead-letter as malformed (sequence not an integer from 1, id of another type) are left
    /// out, as the daemon leaves them out of the read model.
    fn summary_pipeline(&self, only: Option<&Bson>) -> Vec<Document> {
        let f = &self.config.fields;
        let mut pipeline = Vec::new();
        if let Some(filter) = &self.config.filter {
            pipeline.push(doc! {"$match": filter.clone()});
        }
        let mut valid = doc! {&f.sequence_number: {"$type": ["int", "long"], "$gte": 1}};
        match only {
            Some(id) => valid.insert(&f.aggregate_id, id.clone()),
            None => valid.insert(
                &f.aggregate_id,
                doc! {"$type": AGGREGATE_ID_TYPES.to_vec(), "$ne": ""},
            ),
        };
        // A partition worker audits its own share of the aggregates.
        self.worker.restrict(&mut valid, &f.aggregate_id);
        pipeline.push(doc! {"$match": valid});
        let seq = format!("${}", f.sequence_number);
        pipeline.push(doc! {"$group": {
            "_id": format!("${}", f.aggregate_id),
            "highest": {"$max": &seq},
            "lowest": {"$min": &seq},
            "count": {"$sum": 1},
        }});
        if only.is_none() {
            pipeline.push(doc! {"$sort": {"_id": 1}});
        }
        pipeline
    }

    /// One aggregate's events, read again.
    async fn events_of(&self, aggregate: &Bson) -> Result<Option<EventsSummary>, StoreError> {
        let mut cursor = self
            .events
            .aggregate(self.summary_pipeline(Some(aggregate)))
            .await?;
        Ok(cursor
            .try_next()
            .await?
            .as_ref()
            .and_then(EventsSummary::of))
    }

    /// One aggregate's read-model document, read again.
    async fn stored_of(&self, aggregate: &Bson) -> Result<Stored, StoreError> {
        Ok(self
            .read_model
            .find_one(doc! {"_id": aggregate.clone()})
            .projection(doc! {SEQUENCE_FIELD: 1})
            .await?
            .map(|d| Stored::of(&d))
            .unwrap_or(Stored::NoDocument))
    }

    /// Compares the whole read model with the event collection; with `options.repair`, heals
    /// every drift found except gaps.
    pub async fn run(&self, options: AuditOptions) -> Result<AuditReport, StoreError> {
        let mut report = AuditReport {
            projection: self.worker.name.clone(),
            repair: options.repair.then(RepairSummary::default),
            ..AuditReport::default()
        };
        let applier = options
            .repair
            .then(|| Applier::new(&self.worker, &self.db, Arc::new(ProjectionStats::default())));
        // Events first: whatever the read model shows afterwards can only be newer.
        let mut events = self
            .events
            .aggregate(self.summary_pipeline(None))
            .allow_disk_use(true)
            .batch_size(1000)
            .await?;
        let mut mine = doc! {};
        self.worker.restrict(&mut mine, "_id");
        let mut models = self
            .read_model
            .find(mine)
            .projection(doc! {SEQUENCE_FIELD: 1})
            .sort(doc! {"_id": 1})
            .batch_size(1000)
            .await?;
        let mut next_group = Ordered::new("event collection's $group");
        let mut next_model = Ordered::new("read model");
        let mut deferred: Vec<(Bson, tokio::time::Instant)> = Vec::new();
        let mut group = next_group.next(&mut events).await?;
        let mut model = next_model.next(&mut models).await?;
        loop {
            // Which side holds the smaller id (both: the same aggregate on both sides).
            let side = match (&group, &model) {
                (None, None) => break,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(g), Some(m)) => compare(&g.0, &m.0),
            };
            let (mut aggregate, mut stored, mut summary) = (None, Stored::NoDocument, None);
            if side != Ordering::Greater
                && let Some((id, s)) = group.take()
            {
                aggregate = Some(id);
                summary = s;
                group = next_group.next(&mut events).await?;
            }
            if side != Ordering::Less
                && let Some((id, s)) = model.take()
            {
                aggregate.get_or_insert(id);
                stored = s;
                model = next_model.next(&mut models).await?;
            }
            let Some(aggregate) = aggregate else {
                break;
            };
            report.checked += 1;
            let Some(kind) = classify(&stored, summary.as_ref()) else {
                continue;
            };
            // Behind and missing are also what lag looks like: with a settle time they are
            // looked at again once the daemon has had that long to catch up (a bounded number
            // of them; past that, they are judged at once).
            let lag_like = matches!(kind, DriftKind::Behind | DriftKind::Missing);
            if lag_like && !options.settle.is_zero() && deferred.len() < MAX_DEFERRED {
                deferred.push((aggregate, tokio::time::Instant::now() + options.settle));
                continue;
            }
            self.second_look(aggregate, &mut report, applier.as_ref(), options)
                .await?;
        }
        for (aggregate, due) in deferred {
            tokio::time::sleep_until(due).await;
            self.second_look(aggregate, &mut report, applier.as_ref(), options)
                .await?;
        }
        Ok(report)
    }

    /// Reads one candidate again, read model first (so that an event appended since the
    /// `$group` was read cannot make its document look ahead), then counts, lists and
    /// repairs what it still is.
    async fn second_look(
        &self,
        aggregate: Bson,
        report: &mut AuditReport,
        applier: Option<&Applier>,
        options: AuditOptions,
    ) -> Result<(), StoreError> {
        let stored = self.stored_of(&aggregate).await?;
        let summary = self.events_of(&aggregate).await?;
        let Some(kind) = classify(&stored, summary.as_ref()) else {
            return Ok(());
        };
        let drift = Drift {
            kind,
            aggregate,
            stored,
            events: summary,
        };
        report.counts[kind.index()] += 1;
        if let (Some(applier), Some(repair)) = (applier, report.repair.as_mut()) {
            self.repair(applier, &drift, repair, options.examples)
                .await?;
        }
        if report.examples.len() < options.examples {
            report.examples.push(drift);
        }
        Ok(())
    }

    /// Brings one aggregate level with its events through the guard.
    async fn repair(
        &self,
        applier: &Applier,
        drift: &Drift,
        summary: &mut RepairSummary,
        keep_failures: usize,
    ) -> Result<(), StoreError> {
        let changed = |summary: &mut RepairSummary| {
            Self::failed(
                summary,
                keep_failures,
                drift,
                "changed while being repaired",
            )
        };
        // "Ahead" starts over: the document goes if it still holds what the audit saw.
        if drift.kind == DriftKind::Ahead {
            if !self.delete_ahead(drift).await? {
                changed(summary);
                return Ok(());
            }
            summary.refolded += 1;
        }
        let Some(highest) = drift.events.map(|e| e.highest) else {
            // Events-less documents are only ever "ahead": deleting them is the whole repair.
            if drift.kind == DriftKind::Ahead {
                summary.repaired += 1;
            } else {
                changed(summary);
            }
            return Ok(());
        };
        let from = match (&drift.kind, &drift.stored) {
            (DriftKind::Gap, _) => return Ok(()),
            (DriftKind::Behind, Stored::Sequence(s)) => s + 1,
            // Missing, ahead (deleted above), or behind something that is not a sequence.
            _ => 1,
        };
        match self
            .fold(applier, &drift.aggregate, from, highest, summary)
            .await?
        {
            Ok(()) => summary.repaired += 1,
            Err(why) => Self::failed(summary, keep_failures, drift, &why),
        }
        Ok(())
    }

    fn failed(summary: &mut RepairSummary, keep: usize, drift: &Drift, why: &str) {
        summary.failed += 1;
        if summary.failures.len() < keep {
            summary.failures.push(format!(
                "{} ({}): {why}",
                drift.aggregate,
                drift.kind.as_str()
            ));
        }
    }

    /// Deletes an "ahead" document if it still holds what the audit saw; false when it changed.
    async fn delete_ahead(&self, drift: &Drift) -> Result<bool, StoreError> {
        // `$eq`: a stored value that is itself a document must not be read as operators.
        let sequence = match &drift.stored {
            Stored::Sequence(n) => doc! {"$eq": *n},
            Stored::Invalid(Some(v)) => doc! {"$eq": v.clone()},
            Stored::Invalid(None) => doc! {"$exists": false},
            Stored::NoDocument => return Ok(false),
        };
        tracing::warn!(
            projection = %self.worker.name,
            aggregate = %drift.aggregate,
            stored = %drift.stored.describe(),
            highest = drift.events.map(|e| e.highest),
            "read-model document ahead of its events: deleting it and folding its events again"
        );
        let deleted = self
            .read_model
            .delete_one(doc! {"_id": drift.aggregate.clone(), SEQUENCE_FIELD: sequence})
            .await?;
        Ok(deleted.deleted_count == 1)
    }

    /// Applies events `from..=to` of one aggregate in order through the guard. `Err` with the
    /// reason when an event is missing, malformed, or not applied.
    async fn fold(
        &self,
        applier: &Applier,
        aggregate: &Bson,
        from: i64,
        to: i64,
        summary: &mut RepairSummary,
    ) -> Result<Result<(), String>, StoreError> {
        let f = &self.config.fields;
        let range = doc! {
            &f.aggregate_id: aggregate.clone(),
            &f.sequence_number: {"$gte": from, "$lte": to},
        };
        let filter = match &self.config.filter {
            Some(filter) => doc! {"$and": [filter.clone(), range]},
            None => range,
        };
        let mut cursor = self
            .events
            .find(filter)
            .sort(doc! {&f.sequence_number: 1})
            .await?;
        let mut expected = from;
        while let Some(document) = cursor.try_next().await? {
            let event = match decode_event(&document, f) {
                Ok(e) => e,
                Err(malformed) => {
                    return Ok(Err(format!(
                        "event {expected} is malformed: {}",
                        malformed.reason
                    )));
                }
            };
            if event.sequence != expected {
                return Ok(Err(format!("event {expected} is missing")));
            }
            match applier.handle(&event).await? {
                Disposition::Applied | Disposition::Skipped => summary.applied += 1,
                Disposition::Duplicate => summary.duplicates += 1,
                other => {
                    return Ok(Err(format!(
                        "event {expected} was not applied ({other:?}; see `parked list`)"
                    )));
                }
            }
            expected += 1;
        }
        if expected <= to {
            return Ok(Err(format!("event {expected} is missing")));
        }
        Ok(Ok(()))
    }
}

/// One side of the merge join, checked to arrive in strictly increasing BSON order of `_id`
/// (otherwise the walk would report nonsense).
struct Ordered {
    side: &'static str,
    last: Option<Bson>,
}

/// Something the walk reads: an id and what that side knows of it.
trait Keyed: Sized {
    fn keyed(d: Document) -> Option<(Bson, Self)>;
}

impl Keyed for Option<EventsSummary> {
    fn keyed(mut d: Document) -> Option<(Bson, Self)> {
        let summary = EventsSummary::of(&d);
        Some((d.remove("_id")?, summary))
    }
}

impl Keyed for Stored {
    fn keyed(mut d: Document) -> Option<(Bson, Self)> {
        let stored = Stored::of(&d);
        Some((d.remove("_id")?, stored))
    }
}

impl Ordered {
    fn new(side: &'static str) -> Self {
        Self { side, last: None }
    }

    async fn next<T: Keyed>(
        &mut self,
        cursor: &mut mongodb::Cursor<Document>,
    ) -> Result<Option<(Bson, T)>, StoreError> {
        loop {
            let Some(d) = cursor.try_next().await? else {
                return Ok(None);
            };
            let Some((id, value)) = T::keyed(d) else {
                continue;
            };
            if let Some(last) = &self.last
                && compare(last, &id) != Ordering::Less
            {
                return Err(StoreError::Reply(format!(
                    "the {} did not arrive sorted by _id ({id} after {last})",
                    self.side
                )));
            }
            self.last = Some(id.clone());
            return Ok(Some((id, value)));
        }
    }
}

/// The periodic audit inside the daemon (`[audit] every`): every projection in turn, without
/// repair, its figures exported as metrics and drift logged as a warning.
#[derive(Clone)]
pub(crate) struct BackgroundAudit {
    every: Duration,
    settle: Duration,
    audits: Vec<(Audit, Arc<ProjectionStats>)>,
    shutdown: CancellationToken,
}

impl BackgroundAudit {
    /// `None` when `[audit] every` is off.
    pub fn new(
        config: &Config,
        client: &Client,
        shutdown: &CancellationToken,
        workers: impl IntoIterator<Item = (Worker, Arc<ProjectionStats>)>,
    ) -> Option<Self> {
        let every = config.audit.every?;
        let audits = workers
            .into_iter()
            .map(|(w, stats)| {
                let db = client.database(&w.projection.database);
                (Audit::new(w, &db), stats)
            })
            .collect();
        Some(Self {
            every,
            settle: config.http.readiness_max_lag.unwrap_or(DEFAULT_SETTLE),
            audits,
            shutdown: shutdown.clone(),
        })
    }

    /// Starts the periodic audit; it stops with shutdown, or when the handle is dropped.
    pub fn spawn(self) -> AbortOnDropHandle<()> {
        AbortOnDropHandle::new(tokio::spawn(self.run()))
    }

    async fn run(self) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.every) => {}
                _ = self.shutdown.cancelled() => return,
            }
            for (audit, stats) in &self.audits {
                let name = &audit.worker.name;
                let result = tokio::select! {
                    r = audit.run(AuditOptions { examples: 5, repair: false, settle: self.settle }) => r,
                    _ = self.shutdown.cancelled() => return,
                };
                match result {
                    Ok(report) => {
                        stats.audit.record(
                            DriftKind::ALL
                                .iter()
                                .map(|k| (k.as_str(), report.count(*k)))
                                .collect(),
                        );
                        if report.drifted() > 0 {
                            let first: Vec<String> = report
                                .examples
                                .iter()
                                .map(|d| format!("{} {}", d.kind.as_str(), d.aggregate))
                                .collect();
                            tracing::warn!(
                                projection = %name,
                                checked = report.checked,
                                behind = report.count(DriftKind::Behind),
                                ahead = report.count(DriftKind::Ahead),
                                missing = report.count(DriftKind::Missing),
                                gap = report.count(DriftKind::Gap),
                                first = %first.join(", "),
                                "drift audit: read model out of step with the event collection (see `mongo-projector audit`)"
                            );
                        } else {
                            tracing::info!(projection = %name, checked = report.checked, "drift audit: no drift");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(projection = %name, error = %e, "drift audit failed; trying again at the next interval")
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(highest: i64, lowest: i64, count: i64) -> Option<EventsSummary> {
        Some(EventsSummary {
            highest,
            lowest,
            count,
        })
    }

    #[test]
    fn every_kind_of_drift_is_told_apart() {
        let seq = Stored::Sequence;
        assert_eq!(classify(&seq(5), events(5, 1, 5).as_ref()), None);
        assert_eq!(
            classify(&seq(3), events(5, 1, 5).as_ref()),
            Some(DriftKind::Behind)
        );
        assert_eq!(
            classify(&seq(7), events(5, 1, 5).as_ref()),
            Some(DriftKind::Ahead)
        );
        assert_eq!(classify(&seq(2), None), Some(DriftKind::Ahead));
        assert_eq!(
            classify(
                &Stored::Invalid(Some(Bson::String("3".into()))),
                events(3, 1, 3).as_ref()
            ),
            Some(DriftKind::Ahead)
        );
        assert_eq!(
            classify(&Stored::NoDocument, events(2, 1, 2).as_ref()),
            Some(DriftKind::Missing)
        );
        // 1, 2, 3, 5: four events up to 5.
        assert_eq!(
            classify(&seq(3), events(5, 1, 4).as_ref()),
            Some(DriftKind::Gap)
        );
        // 2, 3: the first event is missing.
        assert_eq!(
            classify(&Stored::NoDocument, events(3, 2, 2).as_ref()),
            Some(DriftKind::Gap)
        );
    }

    #[test]
    fn only_integers_from_one_are_stored_sequences() {
        assert_eq!(
            Stored::of(&doc! {"lastSequenceNumber": 4i32}),
            Stored::Sequence(4)
        );
        assert_eq!(
            Stored::of(&doc! {"lastSequenceNumber": 4i64}),
            Stored::Sequence(4)
        );
        assert_eq!(Stored::of(&doc! {}), Stored::Invalid(None));
        for bad in [Bson::Double(4.0), Bson::Int64(0), Bson::String("4".into())] {
            assert_eq!(
                Stored::of(&doc! {"lastSequenceNumber": bad.clone()}),
                Stored::Invalid(Some(bad))
            );
        }
    }

    #[test]
    fn the_report_reads_as_a_table_and_as_json() {
        let report = AuditReport {
            projection: "accounts".into(),
            checked: 3,
            counts: [1, 1, 0, 0],
            examples: vec![
                Drift {
                    kind: DriftKind::Behind,
                    aggregate: Bson::String("a".into()),
                    stored: Stored::Sequence(2),
                    events: events(4, 1, 4),
                },
                Drift {
                    kind: DriftKind::Ahead,
                    aggregate: Bson::String("ghost".into()),
                    stored: Stored::Sequence(9),
                    events: None,
                },
            ],
            repair: None,
        };
        let table = report.to_table();
        assert!(
            table.contains("3 aggregates checked, 2 out of step"),
            "{table}"
        );
        assert!(table.contains("behind   1"), "{table}");
        assert!(
            table
                .lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>()
                    == ["ahead", "\"ghost\"", "9", "-"]),
            "{table}"
        );
        let json = report.to_json();
        assert_eq!(json["drift"]["behind"], 1);
        assert_eq!(json["examples"][0]["aggregate"], "a");
        assert_eq!(json["examples"][0]["highest"], 4);
        assert_eq!(json["examples"][1]["highest"], serde_json::Value::Null);
        assert!(report.unresolved());
    }

    #[test]
    fn the_walk_uses_mongodb_order_of_ids() {
        // Numbers of any width are one id, and numbers sort before strings, as on the server.
        assert_eq!(compare(&Bson::Int32(7), &Bson::Int64(7)), Ordering::Equal);
        assert_eq!(
            compare(&Bson::Int64(10), &Bson::String("1".into())),
            Ordering::Less
        );
        assert_eq!(
            compare(&Bson::String("B".into()), &Bson::String("a".into())),
            Ordering::Less
        );
    }
}
