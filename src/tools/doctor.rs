//! `mongo-projector doctor`: whether the server named by `MONGODB_URI`, and the user it
//! authenticates, can do what a configuration asks, told before anything runs.
//!
//! Every check is one [`Check`]: `ok`, `warn` or `fail`, a reason and, when it fails, what to
//! do. The checks, in order:
//! - the connection, the topology (a replica set or a sharded cluster; a standalone has no
//!   change streams) and the server version against the supported range
//!   ([`SUPPORTED_OLDEST`] to [`SUPPORTED_NEWEST`], README "Supported MongoDB versions");
//! - per partitioned projection, `$toHashedIndexKey` (the partition filter), parsed by the
//!   server in a read-only aggregation of the event collection;
//! - per database, every feature the configuration uses, run for real on a scratch collection
//!   that is dropped afterwards: a majority write, the guarded upsert (through the daemon's own
//!   [`ReadModel`]: applied, duplicate, gap), an update pipeline with `$$NOW` and `$$event`,
//!   the partition filter's split, a change stream opened, resumed after its own token and
//!   started at an operation time, and `renameCollection` with `dropTarget` when rebuilds are
//!   expected;
//! - the user's privileges (`connectionStatus` with `showPrivileges`) for every collection
//!   the configuration touches;
//! - per projection, the unique `{aggregateId: 1, sequenceNumber: 1}` index;
//! - the oplog window against every stored checkpoint's cluster time.
//!
//! The first group is the [`preflight`] that `run` performs at start-up: a projection whose
//! features the server lacks is not started, with the same message as here. The decisions
//! (version comparison, which features a configuration needs, privilege matching, checkpoint
//! age) are small pure functions; the I/O stays in the functions that call them.

use crate::config::{Config, Handler, ProjectionConfig, redact_uri};
use crate::model::event::Event;
use crate::model::partition::Partition;
use crate::model::projection::{Change, Template, guarded_statement};
use crate::pipeline::apply::{Outcome, ReadModel};
use crate::store::checkpoint::CheckpointStore;
use bson::oid::ObjectId;
use bson::{Bson, Document, Timestamp, doc};
use futures_util::TryStreamExt;
use mongodb::options::WriteConcern;
use mongodb::{Client, Collection, Database};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

/// The oldest MongoDB release series mongo-projector supports.
pub const SUPPORTED_OLDEST: (u32, u32) = (6, 0);
/// The newest release series it is tested against; newer ones are a warning, not a failure.
pub const SUPPORTED_NEWEST: (u32, u32) = (8, 0);

/// How long one probe may take: a majority write waits for a majority of the data-bearing
/// members, which a broken replica set never gives.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub reason: String,
    /// What to do; always present on a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// The projection the check is about; `None`: the whole configuration (a failure then
    /// concerns every projection).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub projection: Option<String>,
}

impl Check {
    fn ok(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Check {
            name: name.into(),
            status: Status::Ok,
            reason: reason.into(),
            fix: None,
            projection: None,
        }
    }

    fn warn(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Check {
            status: Status::Warn,
            ..Check::ok(name, reason)
        }
    }

    fn fail(name: impl Into<String>, reason: impl Into<String>, fix: impl Into<String>) -> Self {
        Check {
            status: Status::Fail,
            fix: Some(fix.into()),
            ..Check::ok(name, reason)
        }
    }

    fn with_fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }

    fn about(mut self, projection: &str) -> Self {
        self.projection = Some(projection.to_string());
        self
    }

    /// `fail  server version: ...; fix: ...`: how doctor prints the check and `run` logs it.
    pub(crate) fn to_line(&self) -> String {
        let mut line = format!("{:<5} {}: {}", self.status.as_str(), self.name, self.reason);
        if let Some(fix) = &self.fix {
            line.push_str("; fix: ");
            line.push_str(fix);
        }
        line
    }
}

/// Every check doctor ran, in order.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    /// True when a check failed (doctor then exits 1).
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.status == Status::Fail)
    }

    fn count(&self, status: Status) -> usize {
        self.checks.iter().filter(|c| c.status == status).count()
    }

    /// One line per check, then the counts.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            out.push_str(&c.to_line());
            out.push('\n');
        }
        out.push_str(&format!(
            "{} ok, {} warn, {} fail\n",
            self.count(Status::Ok),
            self.count(Status::Warn),
            self.count(Status::Fail)
        ));
        out
    }

    /// `{ok, counts: {ok, warn, fail}, checks: [...]}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "ok": !self.failed(),
            "counts": {
                "ok": self.count(Status::Ok),
                "warn": self.count(Status::Warn),
                "fail": self.count(Status::Fail),
            },
            "checks": self.checks,
        })
    }
}

/// A projection `run` does not start, and the failed checks that say why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BlockedProjection {
    pub projection: String,
    pub checks: Vec<Check>,
}

/// The start-up subset of the checks: the server, its version and the features each
/// projection needs, all read-only.
#[derive(Debug, Clone, Default)]
pub(crate) struct Preflight {
    pub checks: Vec<Check>,
}

impl Preflight {
    /// The projections of `config` that cannot run on this server: every one when a check of
    /// the whole configuration failed, otherwise those with a failed check of their own.
    pub fn blocked(&self, config: &Config) -> Vec<BlockedProjection> {
        config
            .projections
            .iter()
            .filter_map(|p| {
                let checks: Vec<Check> = self
                    .checks
                    .iter()
                    .filter(|c| {
                        c.status == Status::Fail
                            && c.projection.as_deref().is_none_or(|on| on == p.name)
                    })
                    .cloned()
                    .collect();
                (!checks.is_empty()).then(|| BlockedProjection {
                    projection: p.name.clone(),
                    checks,
                })
            })
            .collect()
    }
}

/// Why the preflight could not judge the server at all: it did not answer.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach MongoDB: {0}")]
pub(crate) struct Unreachable(String);

/// A MongoDB release as `buildInfo.version` spells it (`"7.0.14"`, `"8.0.0-rc3"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Version {
    major: u32,
    minor: u32,
    patch: u32,
}

impl Version {
    pub(crate) fn parse(s: &str) -> Option<Version> {
        let mut parts = s.split('.');
        let mut number = |required: bool| -> Option<u32> {
            match parts.next() {
                Some(p) => {
                    let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
                    digits.parse().ok()
                }
                None if required => None,
                None => Some(0),
            }
        };
        Some(Version {
            major: number(true)?,
            minor: number(true)?,
            patch: number(false)?,
        })
    }

    fn series(&self) -> (u32, u32) {
        (self.major, self.minor)
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

fn series(s: (u32, u32)) -> String {
    format!("{}.{}", s.0, s.1)
}

/// The server version against the supported range.
pub(crate) fn judge_version(version: &str) -> Check {
    const NAME: &str = "server version";
    let range = format!(
        "supported: {} to {}",
        series(SUPPORTED_OLDEST),
        series(SUPPORTED_NEWEST)
    );
    let Some(v) = Version::parse(version) else {
        return Check::warn(
            NAME,
            format!(
                "cannot read the version {version:?} ({range}); the feature checks below decide"
            ),
        );
    };
    if v.series() < SUPPORTED_OLDEST {
        Check::fail(
            NAME,
            format!(
                "MongoDB {v} is older than {}, the oldest release mongo-projector supports",
                series(SUPPORTED_OLDEST)
            ),
            format!(
                "upgrade the deployment to MongoDB {} or later (README: Supported MongoDB versions)",
                series(SUPPORTED_OLDEST)
            ),
        )
    } else if v.series() > SUPPORTED_NEWEST {
        Check::warn(
            NAME,
            format!(
                "MongoDB {v} is newer than {}, the newest release mongo-projector is tested against ({range})",
                series(SUPPORTED_NEWEST)
            ),
        )
    } else {
        Check::ok(NAME, format!("MongoDB {v} ({range})"))
    }
}

/// The deployment's kind from its `hello` reply (manual: "hello"): a replica-set member
/// names its set, a mongos says `msg: "isdbgrid"`, a standalone neither.
pub(crate) fn judge_topology(hello: &Document) -> Check {
    const NAME: &str = "topology";
    if let Ok(set) = hello.get_str("setName") {
        let primary = hello.get_str("primary").unwrap_or("no primary");
        return Check::ok(NAME, format!("replica set {set} (primary {primary})"));
    }
    if hello.get_str("msg") == Ok("isdbgrid") {
        return Check::ok(NAME, "sharded cluster (mongos)");
    }
    Check::fail(
        NAME,
        "a standalone mongod: change streams need a replica set or a sharded cluster",
        "restart mongod with --replSet rs0, run rs.initiate() once (a replica set of one member is enough) and add replicaSet=rs0 to MONGODB_URI",
    )
}

/// The features a projection's configuration uses that not every server has, beyond the
/// guarded update and change streams that every projection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Feature {
    /// Handlers written as update pipelines (`$$event`).
    UpdatePipeline,
    /// `$toHashedIndexKey` in the partition filter (`partitions > 1`).
    HashedIndexKey,
}

/// What `projection` needs of the server.
pub(crate) fn features(projection: &ProjectionConfig) -> BTreeSet<Feature> {
    let mut needed = BTreeSet::new();
    if projection
        .handlers
        .values()
        .any(|h| matches!(h, Handler::Pipeline(_)))
    {
        needed.insert(Feature::UpdatePipeline);
    }
    if projection.partitions > 1 {
        needed.insert(Feature::HashedIndexKey);
    }
    needed
}

/// Why a probe failed: the server's error code, when it sent one, and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ProbeError {
    code: Option<i32>,
    message: String,
}

impl From<mongodb::error::Error> for ProbeError {
    /// The server's code, name and message; the driver's description otherwise (never the
    /// raw reply the driver's own message carries).
    fn from(e: mongodb::error::Error) -> Self {
        use mongodb::error::{ErrorKind, WriteFailure};
        let server = |code: i32, name: &str, message: &str| ProbeError {
            code: Some(code),
            message: format!("{name} ({code}): {message}"),
        };
        match &*e.kind {
            ErrorKind::Command(c) => server(c.code, &c.code_name, &c.message),
            ErrorKind::Write(WriteFailure::WriteError(w)) => server(
                w.code,
                w.code_name.as_deref().unwrap_or("WriteError"),
                &w.message,
            ),
            ErrorKind::Write(WriteFailure::WriteConcernError(w)) => {
                server(w.code, &w.code_name, &w.message)
            }
            other => ProbeError {
                code: None,
                message: other.to_string(),
            },
        }
    }
}

impl From<crate::error::StoreError> for ProbeError {
    fn from(e: crate::error::StoreError) -> Self {
        match e {
            crate::error::StoreError::Mongo(e) => e.into(),
            other => other.to_string().into(),
        }
    }
}

impl From<String> for ProbeError {
    fn from(message: String) -> Self {
        ProbeError {
            code: None,
            message,
        }
    }
}

impl From<&str> for ProbeError {
    fn from(message: &str) -> Self {
        message.to_string().into()
    }
}

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl ProbeError {
    /// `fix`, unless the server's code says better what to do.
    fn fix_or(&self, fix: &str) -> String {
        match self.code {
            Some(13) => {
                "grant the user the missing actions (see the privileges checks below)".to_string()
            }
            Some(168) => format!(
                "this server does not know the operator: use MongoDB {} to {} (README: Supported MongoDB versions)",
                series(SUPPORTED_OLDEST),
                series(SUPPORTED_NEWEST)
            ),
            _ => fix.to_string(),
        }
    }
}

type Probe<T> = Result<T, ProbeError>;

/// Runs `probe` for at most [`PROBE_TIMEOUT`].
async fn bounded<T>(probe: impl Future<Output = Probe<T>>) -> Probe<T> {
    match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "no answer within {} s (a majority write waits for a majority of the data-bearing members; a change stream returns majority-committed changes only)",
            PROBE_TIMEOUT.as_secs()
        )
        .into()),
    }
}

/// A check from a probe's result: `ok` with `done`, or `fail` with the error and a fix.
fn judged(name: String, result: Probe<String>, fix: &str) -> Check {
    match result {
        Ok(done) => Check::ok(name, done),
        Err(e) => {
            let fix = e.fix_or(fix);
            Check::fail(name, e.message, fix)
        }
    }
}

/// The server, its version and each projection's features: what `run` checks at start-up.
/// `Err` when the server does not answer at all (`run` then tries again).
pub(crate) async fn preflight(config: &Config, client: &Client) -> Result<Preflight, Unreachable> {
    let admin = client.database("admin");
    let hello = admin
        .run_command(doc! {"hello": 1})
        .await
        .map_err(|e| Unreachable(e.to_string()))?;
    let info = admin
        .run_command(doc! {"buildInfo": 1})
        .await
        .map_err(|e| Unreachable(e.to_string()))?;
    let mut checks = vec![
        judge_topology(&hello),
        judge_version(info.get_str("version").unwrap_or_default()),
    ];
    for p in &config.projections {
        if features(p).contains(&Feature::HashedIndexKey) {
            checks.push(hashed_key_probe(client, p).await);
        }
    }
    Ok(Preflight { checks })
}

/// `$toHashedIndexKey` parsed by the server in an aggregation of the projection's event
/// collection that reads at most one document: an unknown operator fails while the pipeline
/// is parsed, whether or not the collection exists.
async fn hashed_key_probe(client: &Client, p: &ProjectionConfig) -> Check {
    let name = format!("{}: $toHashedIndexKey", p.name);
    let field = format!("${}", p.fields.aggregate_id);
    let cmd = doc! {
        "aggregate": &p.events,
        "pipeline": [{"$limit": 1}, {"$project": {"h": {"$toHashedIndexKey": field}}}],
        "cursor": {},
    };
    let db = client.database(&p.database);
    let result = bounded(async { Ok(db.run_command(cmd).await?) }).await;
    let check = match result {
        Ok(_) => Check::ok(
            name,
            format!("understood: partitions = {} can filter by it", p.partitions),
        ),
        Err(e) if e.code == Some(168) => Check::fail(
            name,
            format!(
                "partitions = {} needs $toHashedIndexKey, which this server does not know: {e}",
                p.partitions
            ),
            "run the projection unpartitioned (partitions = 1), or use MongoDB 6.0 to 8.0, which have $toHashedIndexKey",
        ),
        // Anything else (a failover, a missing privilege) says nothing about the operator:
        // a warning, so that `run` does not hold the projection back for it.
        Err(e) => {
            let fix = e.fix_or("check that the event collection can be read");
            Check::warn(
                name,
                format!(
                    "partitions = {} needs $toHashedIndexKey; the probe could not tell: {e}",
                    p.partitions
                ),
            )
            .with_fix(fix)
        }
    };
    check.about(&p.name)
}

/// Options of a doctor run.
#[derive(Debug, Clone, Default)]
pub struct DoctorOptions {
    /// Rebuilds are expected: check `renameCollection` and the rebuild's privileges even when
    /// no rebuild is in progress.
    pub rebuild: bool,
}

/// Every check for `config` against the server `client` talks to (`uri` only names it,
/// redacted, in the connection line).
pub async fn run(config: &Config, client: &Client, uri: &str, options: &DoctorOptions) -> Report {
    let mut report = Report::default();
    let admin = client.database("admin");
    let ping = bounded(async { Ok(admin.run_command(doc! {"ping": 1}).await?) }).await;
    match ping {
        Ok(_) => report.checks.push(Check::ok(
            "connection",
            format!("{} answers", redact_uri(uri)),
        )),
        Err(e) => {
            report.checks.push(Check::fail(
                "connection",
                format!("{}: {e}", redact_uri(uri)),
                "check MONGODB_URI (hosts, replicaSet, credentials, TLS) and that the server is reachable from here",
            ));
            return report;
        }
    }
    match preflight(config, client).await {
        Ok(p) => report.checks.extend(p.checks),
        Err(e) => {
            report.checks.push(Check::fail(
                "server",
                e.to_string(),
                "check that the server is up and reachable from here",
            ));
            return report;
        }
    }
    let rebuild = options.rebuild || rebuild_in_progress(config, client).await;
    for (db, projections) in by_database(config) {
        report
            .checks
            .extend(scratch_checks(config, client, &db, &projections, rebuild).await);
    }
    report
        .checks
        .extend(privilege_checks(config, client, rebuild).await);
    for p in &config.projections {
        report.checks.push(index_check(client, p).await);
    }
    report.checks.extend(oplog_checks(config, client).await);
    report
}

/// A rebuild state document of a configured projection: a rebuild is under way.
async fn rebuild_in_progress(config: &Config, client: &Client) -> bool {
    let names: Vec<&str> = config.projections.iter().map(|p| p.name.as_str()).collect();
    let states: Collection<Document> = client
        .database(config.checkpoint_database())
        .collection(crate::tools::rebuild::STATE_COLLECTION);
    matches!(
        states.find_one(doc! {"_id": {"$in": names}}).await,
        Ok(Some(_))
    )
}

/// The configuration's projections grouped by database, in name order.
fn by_database(config: &Config) -> BTreeMap<String, Vec<ProjectionConfig>> {
    let mut dbs: BTreeMap<String, Vec<ProjectionConfig>> = BTreeMap::new();
    for p in &config.projections {
        dbs.entry(p.database.clone()).or_default().push(p.clone());
    }
    dbs
}

/// A probe's collection in `db`, written with majority write concern and a bounded wait.
fn scratch_collection(db: &Database, name: &str) -> Collection<Document> {
    let wc = WriteConcern::builder()
        .w(mongodb::options::Acknowledgment::Majority)
        .w_timeout(Duration::from_secs(10))
        .build();
    db.collection_with_options(
        name,
        mongodb::options::CollectionOptions::builder()
            .write_concern(wc)
            .build(),
    )
}

/// The feature checks of one database, on scratch collections dropped afterwards.
async fn scratch_checks(
    config: &Config,
    client: &Client,
    db_name: &str,
    projections: &[ProjectionConfig],
    rebuild: bool,
) -> Vec<Check> {
    let scratch = Scratch::new(client, db_name);
    let mut checks = vec![
        scratch.majority_write_check().await,
        scratch.guarded_upsert_check().await,
    ];
    checks.extend(scratch.pipeline_check(config, projections).await);
    checks.extend(scratch.partition_check(projections).await);
    checks.push(scratch.change_stream_check().await);
    if rebuild {
        checks.push(scratch.rename_check(client).await);
    }
    checks.extend(scratch.drop_collections().await);
    checks
}

/// The scratch collections of one database's feature checks, named uniquely so that two
/// doctors never share one: `name` for the probes, `shadow` as the rename probe's target.
struct Scratch<'a> {
    db: Database,
    db_name: &'a str,
    name: String,
    shadow: String,
}

impl<'a> Scratch<'a> {
    fn new(client: &Client, db_name: &'a str) -> Self {
        let name = format!("mongo_projector_doctor_{}", ObjectId::new().to_hex());
        Self {
            db: client.database(db_name),
            db_name,
            shadow: format!("{name}_shadow"),
            name,
        }
    }

    /// A check's name, prefixed with the database.
    fn label(&self, what: &str) -> String {
        format!("{}: {what}", self.db_name)
    }

    async fn majority_write_check(&self) -> Check {
        let coll = scratch_collection(&self.db, &self.name);
        let write = bounded(async {
            coll.insert_one(doc! {"_id": "majority"}).await?;
            Ok(format!(
                "a write to {}.{} was acknowledged by a majority",
                self.db_name, self.name
            ))
        })
        .await;
        judged(
            self.label("majority write concern"),
            write,
            "a majority of the replica set's data-bearing members must be up (an arbiter does not count): see rs.status()",
        )
    }

    async fn guarded_upsert_check(&self) -> Check {
        judged(
            self.label("guarded upsert"),
            bounded(guarded_upsert(&self.db, &self.name)).await,
            "the sequence guard needs mongod's update semantics (an upsert, a duplicate key on _id): use MongoDB 6.0 to 8.0",
        )
    }

    /// Only when a handler or the leases (in the checkpoint database) write a pipeline.
    async fn pipeline_check(
        &self,
        config: &Config,
        projections: &[ProjectionConfig],
    ) -> Option<Check> {
        let mut pipeline_users: Vec<String> = projections
            .iter()
            .filter(|p| features(p).contains(&Feature::UpdatePipeline))
            .map(|p| format!("handlers of {}", p.name))
            .collect();
        if config.leases.enabled && self.db_name == config.checkpoint_database() {
            pipeline_users.push("leases".to_string());
        }
        if pipeline_users.is_empty() {
            return None;
        }
        let used_by = pipeline_users.join(", ");
        let result = bounded(pipeline_update(&self.db, &self.name))
            .await
            .map(|()| format!("evaluated (used by {used_by})"));
        Some(judged(
            self.label("update pipeline with $$NOW"),
            result,
            "update pipelines and $$NOW need MongoDB 4.2 or later: use MongoDB 6.0 to 8.0",
        ))
    }

    /// Only when a projection is partitioned, split as finely as the finest one.
    async fn partition_check(&self, projections: &[ProjectionConfig]) -> Option<Check> {
        let count = projections.iter().map(|p| p.partitions).max()?;
        if count <= 1 {
            return None;
        }
        Some(judged(
            self.label("partition filter"),
            bounded(partition_split(&self.db, &self.name, count)).await,
            "run the projections unpartitioned (partitions = 1), or use MongoDB 6.0 to 8.0",
        ))
    }

    async fn change_stream_check(&self) -> Check {
        let stream = bounded(change_stream(&self.db, &self.name)).await;
        let stream_fix = match &stream {
            Err(e) if e.code == Some(40573) => {
                "change streams need a replica set or a sharded cluster: see the topology check"
            }
            _ => {
                "change streams need a replica set or a sharded cluster running MongoDB 6.0 to 8.0, with healthy replication (rs.status())"
            }
        };
        judged(self.label("change stream"), stream, stream_fix)
    }

    async fn rename_check(&self, client: &Client) -> Check {
        let result = bounded(rename(client, &self.db, &self.name, &self.shadow)).await;
        let db_name = self.db_name;
        judged(
            self.label("renameCollection"),
            result,
            &format!(
                "grant renameCollectionSameDB on database {db_name} and dropCollection on its read models (the built-in role readWrite on {db_name} has both)"
            ),
        )
    }

    /// Drops both scratch collections; a warning names those left behind.
    async fn drop_collections(self) -> Option<Check> {
        let mut left = Vec::new();
        for name in [&self.name, &self.shadow] {
            if let Err(e) = self.db.collection::<Document>(name).drop().await {
                left.push(format!("{name} ({e})"));
            }
        }
        if left.is_empty() {
            return None;
        }
        Some(
            Check::warn(
                self.label("scratch collections"),
                format!("could not drop {}", left.join(", ")),
            )
            .with_fix(format!(
                "drop them by hand: db.getSiblingDB(\"{}\").getCollection(NAME).drop()",
                self.db_name
            )),
        )
    }
}

/// An event of the probe aggregate.
fn probe_event(sequence: i64) -> Event {
    Event {
        aggregate_id: Bson::String("doctor-probe".into()),
        sequence,
        event_type: "Probed".into(),
        document: bson::rawdoc! {
            "aggregateId": "doctor-probe",
            "sequenceNumber": sequence,
            "eventType": "Probed",
            "data": {"amount": 5i64},
        },
    }
}

/// The daemon's guarded update, run by the daemon's own [`ReadModel`]: event 1 creates the
/// document, event 1 again is a duplicate, event 3 is a gap.
async fn guarded_upsert(db: &Database, scratch: &str) -> Probe<String> {
    let model = ReadModel::new(db.clone(), scratch);
    let template = Template::compile(&Handler::Operators(
        doc! {"$inc": {"balance": "${data.amount}"}},
    ));
    let change = Change::Handler(&template);
    let steps = [
        (1, Outcome::Applied),
        (1, Outcome::Duplicate { stored: 1 }),
        (3, Outcome::Gap { stored: 1 }),
    ];
    for (seq, expected) in steps {
        let event = probe_event(seq);
        let statement = guarded_statement(&event, change).map_err(|e| e.to_string())?;
        let got = model.apply(&event, &statement).await?;
        if got != expected {
            return Err(format!("event {seq} gave {got:?} where mongod gives {expected:?}").into());
        }
    }
    Ok("event 1 applied, event 1 again a duplicate, event 3 a gap".to_string())
}

/// An update pipeline with `$$NOW` and an event value, as pipeline handlers and leases write.
async fn pipeline_update(db: &Database, scratch: &str) -> Probe<()> {
    let model = ReadModel::new(db.clone(), scratch);
    let coll = db.collection::<Document>(scratch);
    let id = "doctor-pipeline";
    let mut first = probe_event(1);
    first.aggregate_id = Bson::String(id.into());
    let statement = guarded_statement(&first, Change::AdvanceOnly).map_err(|e| e.to_string())?;
    model.apply(&first, &statement).await?;
    let mut event = probe_event(2);
    event.aggregate_id = Bson::String(id.into());
    let template = Template::compile(&Handler::Pipeline(vec![doc! {"$set": {
        "checkedAt": "$$NOW",
        "amount": "$$event.data.amount",
    }}]));
    let change = Change::Handler(&template);
    let statement = guarded_statement(&event, change).map_err(|e| e.to_string())?;
    let got = model.apply(&event, &statement).await?;
    if got != Outcome::Applied {
        return Err(format!("the pipeline update gave {got:?}").into());
    }
    let d = coll
        .find_one(doc! {"_id": id})
        .await?
        .ok_or("the probe document is gone")?;
    match (d.get("checkedAt"), d.get("amount")) {
        (Some(Bson::DateTime(_)), Some(Bson::Int64(5))) => Ok(()),
        _ => Err(format!("$$NOW or the event value did not evaluate: {d}").into()),
    }
}

/// The partition filter splits documents: each is in exactly one of `count` partitions, as
/// the workers' filters rely on.
async fn partition_split(db: &Database, scratch: &str, count: u32) -> Probe<String> {
    let coll = scratch_collection(db, scratch);
    let ids: Vec<String> = (0..16).map(|i| format!("aggregate-{i}")).collect();
    let docs: Vec<Document> = ids
        .iter()
        .map(|id| doc! {"_id": format!("split-{id}"), "aggregateId": id})
        .collect();
    coll.insert_many(docs).await?;
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    for index in 0..count {
        let mut filter = Partition { index, count }.filter("aggregateId");
        filter.insert("aggregateId", doc! {"$exists": true});
        let found: Vec<Document> = coll.find(filter).await?.try_collect().await?;
        for d in found {
            let id = d.get_str("aggregateId").unwrap_or_default().to_string();
            *seen.entry(id).or_default() += 1;
        }
    }
    let wrong: Vec<&String> = ids.iter().filter(|id| seen.get(*id) != Some(&1)).collect();
    if wrong.is_empty() {
        Ok(format!(
            "16 aggregates each fall in exactly one of {count} partitions ($toHashedIndexKey)"
        ))
    } else {
        Err(format!("not in exactly one of {count} partitions: {wrong:?}").into())
    }
}

/// The `_id` of a change event's document.
fn changed_id(e: &mongodb::change_stream::event::ChangeStreamEvent<Document>) -> Option<String> {
    e.document_key
        .as_ref()
        .and_then(|k| k.get_str("_id").ok().map(str::to_string))
}

/// The next change event of `stream` (the caller bounds the wait).
async fn next_change(
    stream: &mut mongodb::change_stream::ChangeStream<
        mongodb::change_stream::event::ChangeStreamEvent<Document>,
    >,
) -> Probe<mongodb::change_stream::event::ChangeStreamEvent<Document>> {
    loop {
        if let Some(e) = stream.next_if_any().await? {
            return Ok(e);
        }
        if !stream.is_alive() {
            return Err("the change stream was closed by the server".into());
        }
    }
}

/// A change stream opened, read, resumed after its own token and started at an operation
/// time, as workers do.
async fn change_stream(db: &Database, scratch: &str) -> Probe<String> {
    let coll = scratch_collection(db, scratch);
    let wait = Duration::from_millis(200);
    let mut stream = coll.watch().max_await_time(wait).await?;
    coll.insert_one(doc! {"_id": "stream-1"}).await?;
    coll.insert_one(doc! {"_id": "stream-2"}).await?;
    let first = loop {
        let e = next_change(&mut stream).await?;
        if changed_id(&e).as_deref() == Some("stream-1") {
            break e;
        }
    };
    drop(stream);
    let mut resumed = coll
        .watch()
        .resume_after(first.id.clone())
        .max_await_time(wait)
        .await?;
    let next = next_change(&mut resumed).await?;
    if changed_id(&next).as_deref() != Some("stream-2") {
        return Err(format!(
            "resumed after its own token, the stream gave {:?} instead of the next insert",
            changed_id(&next)
        )
        .into());
    }
    let at = first
        .cluster_time
        .ok_or("the change event carries no clusterTime")?;
    let mut started = coll
        .watch()
        .start_at_operation_time(at)
        .max_await_time(wait)
        .await?;
    let again = next_change(&mut started).await?;
    if changed_id(&again).as_deref() != Some("stream-1") {
        return Err(format!(
            "started at an insert's cluster time, the stream gave {:?} instead of that insert",
            changed_id(&again)
        )
        .into());
    }
    Ok("opened, resumed after its own token, started at an operation time".to_string())
}

/// `renameCollection` with `dropTarget`, as the live rebuild swaps its shadow in.
async fn rename(client: &Client, db: &Database, scratch: &str, shadow: &str) -> Probe<String> {
    let db_name = db.name();
    scratch_collection(db, shadow)
        .insert_one(doc! {"_id": "renamed"})
        .await?;
    client
        .database("admin")
        .run_command(doc! {
            "renameCollection": format!("{db_name}.{shadow}"),
            "to": format!("{db_name}.{scratch}"),
            "dropTarget": true,
            "writeConcern": {"w": "majority", "wtimeout": 10_000},
        })
        .await?;
    let renamed = db
        .collection::<Document>(scratch)
        .find_one(doc! {"_id": "renamed"})
        .await?;
    if renamed.is_none() {
        return Err("the renamed collection does not hold the shadow's document".into());
    }
    Ok("a shadow collection replaced its target (dropTarget: true), as rebuild swaps".to_string())
}

/// A namespace the configuration touches and the actions it needs there; `collection` empty:
/// the database itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Need {
    db: String,
    collection: String,
    actions: BTreeSet<&'static str>,
    /// What needs them, for the message.
    used_for: BTreeSet<String>,
}

/// Every privilege `config` needs (manual: "Privilege Actions"), by namespace: the daemon's
/// (`run`), and with `rebuild` also the live rebuild's.
pub(crate) fn required_privileges(config: &Config, rebuild: bool) -> Vec<Need> {
    let mut needs: BTreeMap<(String, String), Need> = BTreeMap::new();
    let mut add = |db: &str, coll: &str, actions: &[&'static str], why: String| {
        let need = needs
            .entry((db.to_string(), coll.to_string()))
            .or_insert_with(|| Need {
                db: db.to_string(),
                collection: coll.to_string(),
                actions: BTreeSet::new(),
                used_for: BTreeSet::new(),
            });
        need.actions.extend(actions.iter().copied());
        need.used_for.insert(why);
    };
    const READ_WRITE: &[&str] = &["find", "insert", "update"];
    for p in &config.projections {
        let db = p.database.as_str();
        let mut events = vec!["find", "changeStream", "listIndexes"];
        if p.create_index {
            events.push("createIndex");
        }
        add(db, &p.events, &events, format!("events of {}", p.name));
        add(
            db,
            &p.target,
            READ_WRITE,
            format!("read model of {}", p.name),
        );
        add(
            db,
            &p.parking.collection,
            &["find", "insert", "update", "remove"],
            format!("parked events of {}", p.name),
        );
        if rebuild {
            add(
                db,
                "",
                &["renameCollectionSameDB"],
                format!("rebuild of {}", p.name),
            );
            add(
                db,
                &p.target,
                &["dropCollection", "listIndexes"],
                format!("rebuild of {}", p.name),
            );
            add(
                db,
                &crate::tools::rebuild::shadow_name(p),
                &[
                    "find",
                    "insert",
                    "update",
                    "remove",
                    "createIndex",
                    "dropCollection",
                ],
                format!("rebuild of {}", p.name),
            );
            add(
                db,
                &crate::tools::rebuild::shadow_parked_name(p),
                &["find", "insert", "update", "remove", "dropCollection"],
                format!("rebuild of {}", p.name),
            );
        }
    }
    let cdb = config.checkpoint_database();
    add(
        cdb,
        &config.checkpoints.collection,
        READ_WRITE,
        "checkpoints".into(),
    );
    if config.leases.enabled {
        add(cdb, &config.leases.collection, READ_WRITE, "leases".into());
        add(
            cdb,
            crate::config::INSTANCES_COLLECTION,
            &["find", "insert", "update", "remove"],
            "instance heartbeats".into(),
        );
    }
    if rebuild {
        add(
            cdb,
            crate::tools::rebuild::STATE_COLLECTION,
            &["find", "insert", "update", "remove"],
            "rebuild state".into(),
        );
    }
    needs.into_values().collect()
}

/// A privilege from `connectionStatus.authInfo.authenticatedUserPrivileges`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Granted {
    /// `Some((db, collection))` for a namespace resource (empty strings are wildcards);
    /// `None` for `{anyResource: true}`; cluster resources are left out.
    namespace: Option<(String, String)>,
    actions: BTreeSet<String>,
}

/// The namespace privileges in a `connectionStatus` reply's `authInfo`.
pub(crate) fn granted_privileges(auth_info: &Document) -> Vec<Granted> {
    let Ok(privileges) = auth_info.get_array("authenticatedUserPrivileges") else {
        return Vec::new();
    };
    privileges
        .iter()
        .filter_map(|p| {
            let Bson::Document(p) = p else { return None };
            let resource = p.get_document("resource").ok()?;
            let actions: BTreeSet<String> = p
                .get_array("actions")
                .ok()?
                .iter()
                .filter_map(|a| a.as_str().map(str::to_string))
                .collect();
            let namespace = if resource.get_bool("anyResource") == Ok(true) {
                None
            } else {
                Some((
                    resource.get_str("db").ok()?.to_string(),
                    resource.get_str("collection").ok()?.to_string(),
                ))
            };
            Some(Granted { namespace, actions })
        })
        .collect()
}

/// Whether `granted` allows `action` on `db.collection` (`collection` empty: the database).
/// Manual, "Resource Document": an empty `db` is every database, an empty `collection` every
/// non-system collection and the database itself; `{db: "", collection: C}` never a database.
pub(crate) fn allows(granted: &[Granted], action: &str, db: &str, collection: &str) -> bool {
    granted.iter().any(|g| {
        let covered = match &g.namespace {
            None => true,
            Some((gdb, gcoll)) => {
                (gdb.is_empty() || gdb == db)
                    && if gcoll.is_empty() {
                        !collection.starts_with("system.")
                    } else {
                        gcoll == collection
                    }
            }
        };
        covered && g.actions.contains(action)
    })
}

/// The user's privileges against every namespace the configuration touches.
async fn privilege_checks(config: &Config, client: &Client, rebuild: bool) -> Vec<Check> {
    const NAME: &str = "privileges";
    let reply = bounded(async {
        Ok(client
            .database("admin")
            .run_command(doc! {"connectionStatus": 1, "showPrivileges": true})
            .await?)
    })
    .await;
    let reply = match reply {
        Ok(r) => r,
        Err(e) => {
            return vec![Check::warn(
                NAME,
                format!(
                    "connectionStatus failed ({e}): privileges not checked; the feature checks above show what the user may do"
                ),
            )];
        }
    };
    let auth = reply.get_document("authInfo").cloned().unwrap_or_default();
    let user = auth
        .get_array("authenticatedUsers")
        .ok()
        .and_then(|users| users.first())
        .and_then(Bson::as_document)
        .map(|u| {
            format!(
                "{}@{}",
                u.get_str("user").unwrap_or("?"),
                u.get_str("db").unwrap_or("?")
            )
        });
    let Some(user) = user else {
        return vec![Check::ok(
            NAME,
            "no authenticated user: the server runs without access control, every action is allowed",
        )];
    };
    let granted = granted_privileges(&auth);
    required_privileges(config, rebuild)
        .into_iter()
        .map(|need| {
            let target = if need.collection.is_empty() {
                format!("database {}", need.db)
            } else {
                format!("{}.{}", need.db, need.collection)
            };
            let name = format!("{NAME} {target}");
            let used_for = need.used_for.iter().cloned().collect::<Vec<_>>().join(", ");
            let missing: Vec<&str> = need
                .actions
                .iter()
                .copied()
                .filter(|a| !allows(&granted, a, &need.db, &need.collection))
                .collect();
            if missing.is_empty() {
                let all: Vec<&str> = need.actions.iter().copied().collect();
                Check::ok(name, format!("{user} may {} ({used_for})", all.join(", ")))
            } else {
                let resource = format!(
                    "{{db: \"{}\", collection: \"{}\"}}",
                    need.db, need.collection
                );
                Check::fail(
                    name,
                    format!("{user} lacks {} ({used_for})", missing.join(", ")),
                    format!(
                        "grant the built-in role readWrite on database {} (db.grantRolesToUser(\"{}\", [{{role: \"readWrite\", db: \"{}\"}}])), or a role with {{resource: {resource}, actions: [{}]}}",
                        need.db,
                        user.split('@').next().unwrap_or_default(),
                        need.db,
                        missing
                            .iter()
                            .map(|a| format!("\"{a}\""))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            }
        })
        .collect()
}

/// The unique `{aggregateId: 1, sequenceNumber: 1}` index (with the configured field names)
/// that ordering and gap-healing rely on.
async fn index_check(client: &Client, p: &ProjectionConfig) -> Check {
    let f = &p.fields;
    let name = format!("{}: unique index", p.name);
    let keys = doc! {&f.aggregate_id: 1, &f.sequence_number: 1};
    let shown = format!("{{{}: 1, {}: 1}}", f.aggregate_id, f.sequence_number);
    let create = format!(
        "db.getSiblingDB(\"{}\").{}.createIndex({shown}, {{unique: true}})",
        p.database, p.events
    );
    let events: Collection<Document> = client.database(&p.database).collection(&p.events);
    let listed = bounded(async {
        let indexes: Vec<mongodb::IndexModel> = events.list_indexes().await?.try_collect().await?;
        Ok(indexes)
    })
    .await;
    let check = match listed {
        Ok(indexes) => {
            let same_keys = indexes.iter().find(|i| i.keys == keys);
            let unique = same_keys
                .and_then(|i| i.options.as_ref())
                .and_then(|o| o.unique)
                .unwrap_or(false);
            judge_index(same_keys.is_some(), unique, p.create_index, &shown, &create)
        }
        // NamespaceNotFound: the event collection does not exist yet.
        Err(e) if e.code == Some(26) => judge_index(false, false, p.create_index, &shown, &create),
        Err(e) => {
            let fix = e.fix_or("check that the event collection's indexes can be listed");
            Check::fail(
                name.clone(),
                format!(
                    "cannot list the indexes of {}.{}: {e}",
                    p.database, p.events
                ),
                fix,
            )
        }
    };
    Check { name, ..check }.about(&p.name)
}

/// What the index found means, given `create_index`.
pub(crate) fn judge_index(
    present: bool,
    unique: bool,
    create_index: bool,
    keys: &str,
    create: &str,
) -> Check {
    const NAME: &str = "unique index";
    match (present, unique, create_index) {
        (true, true, _) => Check::ok(NAME, format!("{keys} is unique")),
        (true, false, _) => Check::fail(
            NAME,
            format!(
                "an index on {keys} exists but is not unique, so duplicate sequence numbers are not refused"
            ),
            format!("drop it and create it unique: {create} (fails while duplicates exist)"),
        ),
        (false, _, true) => Check::warn(
            NAME,
            format!(
                "no index on {keys} yet: run creates it at start (create_index = true; it fails while duplicate sequence numbers exist)"
            ),
        ),
        (false, _, false) => Check::fail(
            NAME,
            format!(
                "no unique index on {keys}, and create_index = false: ordering and gap-healing rely on it"
            ),
            create.to_string(),
        ),
    }
}

/// A stored checkpoint's position against the oldest entry of the oplog.
pub(crate) fn judge_checkpoint(
    worker: &str,
    cluster_time: Option<Timestamp>,
    oldest: Timestamp,
    newest: Timestamp,
) -> Check {
    let name = format!("checkpoint {worker}");
    let Some(at) = cluster_time else {
        return Check::ok(
            name,
            "no cluster time recorded: its age cannot be compared with the oplog",
        );
    };
    if (at.time, at.increment) < (oldest.time, oldest.increment) {
        Check::warn(
            name,
            format!(
                "older than the oldest oplog entry by {}: the next start recovers from the event collection (lossless, but a scan of the whole collection)",
                humantime::format_duration(Duration::from_secs(u64::from(oldest.time - at.time)))
            ),
        )
        .with_fix("make the oplog window longer than the longest time a worker may stay stopped (replSetResizeOplog, or oplogMinRetentionHours)")
    } else {
        Check::ok(
            name,
            format!(
                "{} behind the newest oplog entry, {} of headroom before it leaves the oplog",
                humantime::format_duration(Duration::from_secs(u64::from(
                    newest.time.saturating_sub(at.time)
                ))),
                humantime::format_duration(Duration::from_secs(u64::from(at.time - oldest.time)))
            ),
        )
    }
}

/// The oplog window, and every stored checkpoint against it.
async fn oplog_checks(config: &Config, client: &Client) -> Vec<Check> {
    const NAME: &str = "oplog window";
    let oplog: Collection<Document> = client.database("local").collection("oplog.rs");
    let end = |direction: i32| {
        let oplog = oplog.clone();
        async move {
            let d = oplog
                .find_one(doc! {})
                .sort(doc! {"$natural": direction})
                .projection(doc! {"ts": 1})
                .await?
                .ok_or("the oplog is empty")?;
            match d.get("ts") {
                Some(Bson::Timestamp(ts)) => Ok(*ts),
                _ => Err(ProbeError::from("an oplog entry without ts")),
            }
        }
    };
    let window = bounded(async { Ok((end(1).await?, end(-1).await?)) }).await;
    let (oldest, newest) = match window {
        Ok(w) => w,
        Err(e) => {
            return vec![Check::warn(
                NAME,
                format!("cannot read local.oplog.rs ({e}): the checkpoints' age is not compared with it, and the headroom metric stays absent"),
            )
            .with_fix("grant find on local.oplog.rs (the built-in role clusterMonitor has it) to see the oplog window")];
        }
    };
    let mut checks = vec![Check::ok(
        NAME,
        format!(
            "{} (oldest entry at {})",
            humantime::format_duration(Duration::from_secs(u64::from(
                newest.time.saturating_sub(oldest.time)
            ))),
            bson::DateTime::from_millis(i64::from(oldest.time) * 1000)
                .try_to_rfc3339_string()
                .unwrap_or_default()
        ),
    )];
    let store = CheckpointStore::new(
        &client.database(config.checkpoint_database()),
        &config.checkpoints.collection,
    );
    let mut any = false;
    for p in &config.projections {
        match store.load_family(&p.name).await {
            Ok(family) => {
                for (worker, checkpoint) in family {
                    any = true;
                    checks.push(
                        judge_checkpoint(&worker, checkpoint.cluster_time, oldest, newest)
                            .about(&p.name),
                    );
                }
            }
            Err(e) => checks.push(
                Check::warn(
                    format!("checkpoints of {}", p.name),
                    format!("cannot be read: {e}"),
                )
                .about(&p.name),
            ),
        }
    }
    if !any {
        checks.push(Check::ok(
            "checkpoints",
            "none stored yet: each worker starts as configured (start)",
        ));
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [[projections]]
        name = "p"
        database = "d"
        events = "e"
        target = "t"
        handlers = { A = { "$set" = { a = 1 } } }
    "#;

    #[test]
    fn versions_are_judged_against_the_supported_range() {
        assert_eq!(judge_version("5.0.31").status, Status::Fail);
        assert!(
            judge_version("5.0.31")
                .fix
                .unwrap()
                .contains("6.0 or later")
        );
        assert_eq!(judge_version("4.4.0").status, Status::Fail);
        assert_eq!(judge_version("6.0.0").status, Status::Ok);
        assert_eq!(judge_version("7.0.14").status, Status::Ok);
        assert_eq!(judge_version("8.0.4").status, Status::Ok);
        assert_eq!(judge_version("8.0.0-rc3").status, Status::Ok);
        assert_eq!(judge_version("8.2.1").status, Status::Warn);
        assert_eq!(judge_version("9.0.0").status, Status::Warn);
        assert_eq!(judge_version("banana").status, Status::Warn);
        assert_eq!(
            Version::parse("8.0.0-rc3"),
            Some(Version {
                major: 8,
                minor: 0,
                patch: 0
            })
        );
        assert_eq!(
            Version::parse("7.0"),
            Some(Version {
                major: 7,
                minor: 0,
                patch: 0
            })
        );
        assert_eq!(Version::parse("7"), None);
    }

    #[test]
    fn a_standalone_is_refused_with_the_fix() {
        let set = doc! {"isWritablePrimary": true, "setName": "rs0", "primary": "h:1"};
        assert_eq!(judge_topology(&set).status, Status::Ok);
        let mongos = doc! {"isWritablePrimary": true, "msg": "isdbgrid"};
        assert_eq!(judge_topology(&mongos).status, Status::Ok);
        let standalone = doc! {"isWritablePrimary": true};
        let c = judge_topology(&standalone);
        assert_eq!(c.status, Status::Fail);
        assert!(c.fix.unwrap().contains("--replSet"));
    }

    #[test]
    fn features_follow_the_configuration() {
        let example = Config::parse(include_str!("../../config/example.toml")).unwrap();
        assert_eq!(
            features(&example.projections[0]),
            BTreeSet::from([Feature::UpdatePipeline])
        );
        let mut plain = Config::parse(MINIMAL).unwrap().projections.remove(0);
        assert!(features(&plain).is_empty());
        plain.partitions = 3;
        assert_eq!(features(&plain), BTreeSet::from([Feature::HashedIndexKey]));
    }

    #[test]
    fn a_failed_check_blocks_its_projection_or_every_projection() {
        let text = format!("{MINIMAL}{}", MINIMAL.replace("\"p\"", "\"q\""));
        let config = Config::parse(&text).unwrap();
        let hashed = Check::fail("q: $toHashedIndexKey", "refused", "fix").about("q");
        let preflight = Preflight {
            checks: vec![Check::ok("topology", "rs"), hashed.clone()],
        };
        assert_eq!(
            preflight.blocked(&config),
            vec![BlockedProjection {
                projection: "q".into(),
                checks: vec![hashed],
            }]
        );
        let old = Check::fail("server version", "5.0", "upgrade");
        let preflight = Preflight {
            checks: vec![old, Check::warn("x", "y").about("p")],
        };
        let blocked: Vec<String> = preflight
            .blocked(&config)
            .into_iter()
            .map(|b| b.projection)
            .collect();
        assert_eq!(blocked, ["p", "q"]);
    }

    #[test]
    fn the_example_needs_these_privileges() {
        let config = Config::parse(include_str!("../../config/example.toml")).unwrap();
        let needs = required_privileges(&config, false);
        let find = |coll: &str| {
            needs
                .iter()
                .find(|n| n.db == "bank" && n.collection == coll)
                .unwrap_or_else(|| panic!("no need for {coll}: {needs:?}"))
        };
        assert_eq!(
            find("events").actions,
            BTreeSet::from(["find", "changeStream", "listIndexes", "createIndex"])
        );
        assert_eq!(
            find("accounts").actions,
            BTreeSet::from(["find", "insert", "update"])
        );
        assert!(find("accounts_parked").actions.contains("remove"));
        assert!(find("projector_leases").actions.contains("update"));
        assert!(find("projector_instances").actions.contains("remove"));
        assert!(
            !needs.iter().any(|n| n.collection.is_empty()),
            "no database action without rebuild"
        );
        let with_rebuild = required_privileges(&config, true);
        let db = with_rebuild
            .iter()
            .find(|n| n.db == "bank" && n.collection.is_empty())
            .unwrap();
        assert_eq!(db.actions, BTreeSet::from(["renameCollectionSameDB"]));
        assert!(
            with_rebuild
                .iter()
                .any(|n| n.collection == "accounts_rebuild")
        );
    }

    fn granted(resource: Document, actions: &[&str]) -> Document {
        doc! {"resource": resource, "actions": actions.to_vec()}
    }

    #[test]
    fn privileges_match_as_the_manual_says() {
        let auth = doc! {"authenticatedUserPrivileges": [
            granted(doc! {"db": "bank", "collection": ""}, &["find", "renameCollectionSameDB"]),
            granted(doc! {"db": "bank", "collection": "events"}, &["changeStream"]),
            granted(doc! {"db": "", "collection": "accounts"}, &["update"]),
            granted(doc! {"db": "", "collection": ""}, &["listIndexes"]),
            granted(doc! {"cluster": true}, &["serverStatus"]),
        ]};
        let g = granted_privileges(&auth);
        assert!(allows(&g, "find", "bank", "events"));
        assert!(!allows(&g, "find", "shop", "events"));
        assert!(!allows(&g, "find", "bank", "system.users"));
        assert!(allows(&g, "renameCollectionSameDB", "bank", ""));
        assert!(allows(&g, "changeStream", "bank", "events"));
        assert!(!allows(&g, "changeStream", "bank", "accounts"));
        assert!(allows(&g, "update", "shop", "accounts"));
        assert!(!allows(&g, "update", "shop", ""));
        assert!(allows(&g, "listIndexes", "any", "thing"));
        assert!(!allows(&g, "serverStatus", "admin", ""));
        let any = granted_privileges(&doc! {"authenticatedUserPrivileges": [
            granted(doc! {"anyResource": true}, &["find"]),
        ]});
        assert!(allows(&any, "find", "x", "y"));
        assert!(granted_privileges(&doc! {}).is_empty());
    }

    #[test]
    fn the_index_is_judged_with_create_index() {
        let j = |present, unique, create| {
            judge_index(
                present,
                unique,
                create,
                "{a: 1, s: 1}",
                "db.e.createIndex(...)",
            )
            .status
        };
        assert_eq!(j(true, true, false), Status::Ok);
        assert_eq!(j(true, false, true), Status::Fail);
        assert_eq!(j(false, false, true), Status::Warn);
        assert_eq!(j(false, false, false), Status::Fail);
    }

    #[test]
    fn a_checkpoint_older_than_the_oplog_is_a_warning() {
        let ts = |time| Timestamp { time, increment: 1 };
        let c = judge_checkpoint("accounts", Some(ts(100)), ts(200), ts(300));
        assert_eq!(c.status, Status::Warn);
        assert!(
            c.reason.contains("recovers from the event collection"),
            "{}",
            c.reason
        );
        let c = judge_checkpoint("accounts", Some(ts(250)), ts(200), ts(300));
        assert_eq!(c.status, Status::Ok);
        assert!(c.reason.contains("50s of headroom"), "{}", c.reason);
        assert_eq!(judge_checkpoint("a", None, ts(1), ts(2)).status, Status::Ok);
        // Same second, earlier increment: already gone.
        let c = judge_checkpoint(
            "a",
            Some(Timestamp {
                time: 200,
                increment: 0,
            }),
            ts(200),
            ts(300),
        );
        assert_eq!(c.status, Status::Warn);
    }

    #[test]
    fn reports_render_one_line_per_check_and_json() {
        let report = Report {
            checks: vec![
                Check::ok("connection", "answers"),
                Check::fail("server version", "MongoDB 5.0.1 is older", "upgrade"),
            ],
        };
        let text = report.to_text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "ok    connection: answers");
        assert_eq!(
            lines[1],
            "fail  server version: MongoDB 5.0.1 is older; fix: upgrade"
        );
        assert_eq!(lines[2], "1 ok, 0 warn, 1 fail");
        assert!(report.failed());
        let json = report.to_json();
        assert_eq!(json["ok"], false);
        assert_eq!(json["counts"]["fail"], 1);
        assert_eq!(json["checks"][1]["status"], "fail");
        assert_eq!(json["checks"][1]["fix"], "upgrade");
        assert!(json["checks"][0].get("fix").is_none());
    }
}
