//! `mongo-projector demo`: the whole product end to end, on an embedded server or another one.
//!
//! Starts `mongo-sim` in-process (or uses the server the caller connected to), appends a
//! generated workload for the example domain with several concurrent writers (next sequence
//! number from the latest event, insert, retry on duplicate key), inserts some events
//! deliberately out of order and one malformed event, runs the real daemon, stops and restarts
//! it mid-way, and finally checks every account against an independent in-order fold of its
//! events.

use crate::cluster::daemon::{Daemon, DaemonReport};
use crate::config::{Config, ProjectionConfig};
use crate::model::projection::SEQUENCE_FIELD;
use crate::ops::stats::StatsSnapshot;
use bson::{Bson, Document, doc};
use futures_util::TryStreamExt;
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::{Client, Collection, IndexModel};
use rand::Rng;
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The example configuration, embedded so the demo needs no files.
pub(crate) const EXAMPLE_CONFIG: &str = include_str!("../../config/example.toml");

/// Size of the generated workload.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub accounts: u32,
    pub events: u64,
    pub writers: u32,
    /// Accounts whose events are appended in pairs, the later one first.
    pub out_of_order_accounts: u32,
    pub seed: u64,
    /// The database to use instead of the example configuration's (`bank`), for a server
    /// that is not the demo's own.
    pub database: Option<String>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            accounts: 200,
            events: 5_000,
            writers: 4,
            out_of_order_accounts: 10,
            seed: 7,
            database: None,
        }
    }
}

/// What the demo saw.
#[derive(Debug, Clone)]
pub struct DemoReport {
    pub events_written: u64,
    pub accounts_checked: usize,
    pub mismatches: Vec<String>,
    pub first_run: StatsSnapshot,
    pub second_run: StatsSnapshot,
    pub dead_lettered_entries: u64,
    pub elapsed: Duration,
}

impl DemoReport {
    pub fn passed(&self) -> bool {
        self.mismatches.is_empty() && self.accounts_checked > 0
    }
}

/// One account as the fold computes it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Account {
    pub owner: Option<String>,
    pub currency: Option<String>,
    pub balance: i64,
    pub status: Option<String>,
    pub(crate) last_sequence: i64,
}

/// The reference fold of the example domain, written independently of the handlers.
pub fn fold(events: &[Document]) -> Account {
    let mut a = Account::default();
    for e in events {
        let data = e.get_document("data").cloned().unwrap_or_default();
        let amount = match data.get("amount") {
            Some(Bson::Int64(n)) => *n,
            Some(Bson::Int32(n)) => *n as i64,
            _ => 0,
        };
        match e.get_str("eventType").unwrap_or("") {
            "AccountOpened" => {
                a.owner = data.get_str("owner").ok().map(str::to_string);
                a.currency = data.get_str("currency").ok().map(str::to_string);
                a.balance = 0;
                a.status = Some("open".into());
            }
            "Deposited" => a.balance += amount,
            "Withdrawn" => a.balance -= amount,
            "AccountClosed" => a.status = Some("closed".into()),
            _ => {}
        }
        a.last_sequence = match e.get("sequenceNumber") {
            Some(Bson::Int64(n)) => *n,
            Some(Bson::Int32(n)) => *n as i64,
            _ => a.last_sequence,
        };
    }
    a
}

/// The same shape read from a read-model document.
pub fn account_from_read_model(d: &Document) -> Account {
    let int = |k: &str| match d.get(k) {
        Some(Bson::Int64(n)) => *n,
        Some(Bson::Int32(n)) => *n as i64,
        _ => 0,
    };
    Account {
        owner: d.get_str("owner").ok().map(str::to_string),
        currency: d.get_str("currency").ok().map(str::to_string),
        balance: int("balance"),
        status: d.get_str("status").ok().map(str::to_string),
        last_sequence: int(SEQUENCE_FIELD),
    }
}

fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    matches!(&*e.kind, ErrorKind::Write(WriteFailure::WriteError(w)) if w.code == 11000)
}

fn account_id(i: u32) -> String {
    format!("acc-{i:05}")
}

/// Appends the next event of `account` the way the seed describes, done right: read the
/// latest sequence, insert the next, retry on a duplicate key. Returns false when the account
/// is closed.
async fn append_next(
    events: &Collection<Document>,
    account: &str,
    rng: &mut StdRng,
) -> mongodb::error::Result<bool> {
    loop {
        let latest = events
            .find_one(doc! {"aggregateId": account})
            .sort(doc! {"sequenceNumber": -1})
            .await?;
        let (seq, last_type) = match &latest {
            None => (1, None),
            Some(d) => (
                d.get_i64("sequenceNumber").unwrap_or(0) + 1,
                d.get_str("eventType").ok().map(str::to_string),
            ),
        };
        let (event_type, data) = match last_type.as_deref() {
            Some("AccountClosed") => return Ok(false),
            None => (
                "AccountOpened",
                doc! {"owner": format!("owner of {account}"), "currency": "EUR"},
            ),
            Some(_) => match rng.random_range(0..100) {
                0..60 => ("Deposited", doc! {"amount": rng.random_range(1..500i64)}),
                60..92 => ("Withdrawn", doc! {"amount": rng.random_range(1..200i64)}),
                92..98 => ("Audited", doc! {"by": "auditor"}),
                _ => ("AccountClosed", doc! {}),
            },
        };
        let event = doc! {
            "aggregateId": account,
            "sequenceNumber": seq,
            "eventType": event_type,
            "data": data,
            "timestamp": bson::DateTime::now(),
        };
        match events.insert_one(event).await {
            Ok(_) => return Ok(true),
            Err(e) if is_duplicate_key(&e) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Appends two events of `account`, the later one first.
async fn append_pair_out_of_order(
    events: &Collection<Document>,
    account: &str,
    rng: &mut StdRng,
) -> mongodb::error::Result<u64> {
    let latest = events
        .find_one(doc! {"aggregateId": account})
        .sort(doc! {"sequenceNumber": -1})
        .await?;
    let next = match &latest {
        None => return append_next(events, account, rng).await.map(u64::from),
        Some(d) if d.get_str("eventType") == Ok("AccountClosed") => return Ok(0),
        Some(d) => d.get_i64("sequenceNumber").unwrap_or(0) + 1,
    };
    let make = |seq: i64, amount: i64| {
        doc! {"aggregateId": account, "sequenceNumber": seq, "eventType": "Deposited",
        "data": {"amount": amount}, "timestamp": bson::DateTime::now()}
    };
    let later = make(next + 1, rng.random_range(1..100));
    let earlier = make(next, rng.random_range(1..100));
    let mut written = 0;
    for e in [later, earlier] {
        match events.insert_one(e).await {
            Ok(_) => written += 1,
            Err(e) if is_duplicate_key(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

/// Runs the demo against `client` (an embedded server unless the caller passes another).
pub async fn run_demo(
    client: &Client,
    options: &DemoOptions,
) -> Result<DemoReport, Box<dyn std::error::Error + Send + Sync>> {
    let started = Instant::now();
    let config = demo_config(options)?;
    let projection = config
        .projection("accounts")
        .ok_or("example config lacks the accounts projection")?
        .clone();
    let db = client.database(&projection.database);
    let events: Collection<Document> = db.collection(&projection.events);
    create_event_index(&events).await?;
    let workload = Workload::new(events.clone(), options);
    let writers = workload.spawn_writers();
    // One event the daemon must dead-letter rather than skip: it has no sequence number.
    events
        .insert_one(
            doc! {"aggregateId": "broken-1", "eventType": "Deposited", "data": {"amount": 1}},
        )
        .await?;
    let first_run = run_until_halfway(&config, client, &workload.halfway).await?;
    let second = run_until_projected(&config, client, writers, &db, &projection).await?;
    let events_written = workload.written.load(Ordering::Relaxed);
    let mismatches = if second.caught_up {
        compare_with_fold(&db, &projection.events, &projection.target).await?
    } else {
        vec!["the daemon did not catch up within 120 s".to_string()]
    };
    let accounts_checked = db
        .collection::<Document>(&projection.target)
        .count_documents(doc! {})
        .await? as usize;
    let dead_lettered_entries = db
        .collection::<Document>(&projection.parking.collection)
        .count_documents(doc! {"state": crate::store::park::DEAD})
        .await?;
    Ok(DemoReport {
        events_written,
        accounts_checked,
        mismatches,
        first_run,
        second_run: second.stats,
        dead_lettered_entries,
        elapsed: started.elapsed(),
    })
}

/// Why the demo failed: the server, the example configuration, or a daemon run.
type DemoError = Box<dyn std::error::Error + Send + Sync>;

/// The example configuration, moved to `options.database` when the caller names one.
fn demo_config(options: &DemoOptions) -> Result<Config, DemoError> {
    let mut config = Config::parse(EXAMPLE_CONFIG)?;
    if let Some(db) = &options.database {
        for p in &mut config.projections {
            p.database = db.clone();
        }
        config.checkpoints.database = Some(db.clone());
    }
    Ok(config)
}

/// The unique `{aggregateId, sequenceNumber}` index that makes concurrent writers retry
/// instead of writing one sequence number twice.
async fn create_event_index(events: &Collection<Document>) -> mongodb::error::Result<()> {
    events
        .create_index(
            IndexModel::builder()
                .keys(doc! {"aggregateId": 1, "sequenceNumber": 1})
                .options(
                    mongodb::options::IndexOptions::builder()
                        .unique(true)
                        .build(),
                )
                .build(),
        )
        .await?;
    Ok(())
}

/// The generated workload, shared by its concurrent writers.
#[derive(Clone)]
struct Workload {
    events: Collection<Document>,
    options: DemoOptions,
    /// Accounts (the lowest ids) whose events writer 0 alone appends, in pairs out of order.
    out_of_order: u32,
    /// Events written so far by every writer.
    written: Arc<AtomicU64>,
    /// Notified once half the workload is written: the first run stops there.
    halfway: Arc<tokio::sync::Notify>,
}

impl Workload {
    fn new(events: Collection<Document>, options: &DemoOptions) -> Self {
        Self {
            events,
            options: options.clone(),
            out_of_order: options.out_of_order_accounts.min(options.accounts / 2),
            written: Arc::new(AtomicU64::new(0)),
            halfway: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// One task per writer (at least one), each with its own seed.
    fn spawn_writers(&self) -> Vec<JoinHandle<mongodb::error::Result<()>>> {
        (0..self.options.writers.max(1))
            .map(|w| tokio::spawn(self.clone().write(w)))
            .collect()
    }

    /// Writer `w`'s loop: appends to random accounts until the workload is written.
    async fn write(self, w: u32) -> mongodb::error::Result<()> {
        let options = &self.options;
        let mut rng = StdRng::seed_from_u64(options.seed.wrapping_add(w as u64));
        let half = options.events / 2;
        while self.written.load(Ordering::Relaxed) < options.events {
            let i = rng.random_range(0..options.accounts);
            let account = account_id(i);
            let n = if i < self.out_of_order && w == 0 {
                append_pair_out_of_order(&self.events, &account, &mut rng).await?
            } else if i < self.out_of_order {
                continue; // out-of-order accounts belong to writer 0 alone
            } else {
                u64::from(append_next(&self.events, &account, &mut rng).await?)
            };
            let before = self.written.fetch_add(n, Ordering::Relaxed);
            if before < half && before + n >= half {
                self.halfway.notify_one();
            }
        }
        Ok(())
    }
}

/// First run, stopped mid-way through the workload. Returns its counters.
async fn run_until_halfway(
    config: &Config,
    client: &Client,
    halfway: &tokio::sync::Notify,
) -> Result<StatsSnapshot, DemoError> {
    let shutdown = CancellationToken::new();
    let daemon = Daemon::new(config, client, &shutdown);
    let report = {
        let run = daemon.run();
        tokio::pin!(run);
        tokio::select! {
            report = &mut run => report,
            _ = halfway.notified() => {
                shutdown.cancel();
                run.await
            }
        }
    };
    if !report.all_ok() {
        return Err(format!("first run failed: {:?}", report.results).into());
    }
    Ok(daemon.total())
}

/// How the second run ended.
struct SecondRun {
    /// Every aggregate's read model reached its newest event before the deadline.
    caught_up: bool,
    stats: StatsSnapshot,
}

/// Second run, from the checkpoint the first one left, until everything is projected: it
/// starts once the writers are done, and stops when every read model is at its newest event
/// (or after 120 s).
async fn run_until_projected(
    config: &Config,
    client: &Client,
    writers: Vec<JoinHandle<mongodb::error::Result<()>>>,
    db: &mongodb::Database,
    projection: &ProjectionConfig,
) -> Result<SecondRun, DemoError> {
    let shutdown = CancellationToken::new();
    let daemon = Daemon::new(config, client, &shutdown);
    let run = daemon.run();
    tokio::pin!(run);
    for w in writers {
        w.await??;
    }
    let caught_up = wait_until_projected(run.as_mut(), db, projection).await?;
    shutdown.cancel();
    let report = run.await;
    if !report.all_ok() {
        return Err(format!("second run failed: {:?}", report.results).into());
    }
    Ok(SecondRun {
        caught_up,
        stats: daemon.total(),
    })
}

/// Polls until every read model is projected (true) or 120 s have passed (false); a daemon
/// that stops meanwhile is an error.
async fn wait_until_projected(
    mut run: Pin<&mut impl Future<Output = DaemonReport>>,
    db: &mongodb::Database,
    projection: &ProjectionConfig,
) -> Result<bool, DemoError> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        tokio::select! {
            report = &mut run => return Err(format!("daemon stopped early: {:?}", report.results).into()),
            done = projected_everything(db, &projection.events, &projection.target) => {
                if done? {
                    return Ok(true);
                }
            }
        }
        tokio::select! {
            report = &mut run => return Err(format!("daemon stopped early: {:?}", report.results).into()),
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    Ok(false)
}

/// True when every aggregate's read model is at its newest stored sequence.
async fn projected_everything(
    db: &mongodb::Database,
    events: &str,
    target: &str,
) -> mongodb::error::Result<bool> {
    let latest: Vec<Document> = db
        .collection::<Document>(events)
        .aggregate(vec![
            doc! {"$match": {"sequenceNumber": {"$exists": true}}},
            doc! {"$group": {"_id": "$aggregateId", "max": {"$max": "$sequenceNumber"}}},
        ])
        .await?
        .try_collect()
        .await?;
    let models = read_models(db, target).await?;
    Ok(latest.iter().all(|g| {
        let id = g.get_str("_id").unwrap_or_default();
        let max = match g.get("max") {
            Some(Bson::Int64(n)) => *n,
            Some(Bson::Int32(n)) => *n as i64,
            _ => 0,
        };
        models.get(id).map(|a| a.last_sequence) == Some(max)
    }))
}

/// Every read-model document keyed by its `_id`.
async fn read_models(
    db: &mongodb::Database,
    target: &str,
) -> mongodb::error::Result<BTreeMap<String, Account>> {
    let docs: Vec<Document> = db
        .collection::<Document>(target)
        .find(doc! {})
        .await?
        .try_collect()
        .await?;
    Ok(docs
        .iter()
        .filter_map(|d| {
            Some((
                d.get_str("_id").ok()?.to_string(),
                account_from_read_model(d),
            ))
        })
        .collect())
}

/// Every account whose read model differs from the fold of its events, described.
pub async fn compare_with_fold(
    db: &mongodb::Database,
    events: &str,
    target: &str,
) -> mongodb::error::Result<Vec<String>> {
    let all: Vec<Document> = db
        .collection::<Document>(events)
        .find(doc! {"sequenceNumber": {"$exists": true}})
        .sort(doc! {"aggregateId": 1, "sequenceNumber": 1})
        .await?
        .try_collect()
        .await?;
    let mut by_account: BTreeMap<String, Vec<Document>> = BTreeMap::new();
    for e in all {
        if let Ok(id) = e.get_str("aggregateId") {
            by_account.entry(id.to_string()).or_default().push(e);
        }
    }
    let models = read_models(db, target).await?;
    let mut mismatches = Vec::new();
    for (id, evs) in &by_account {
        let expected = fold(evs);
        match models.get(id) {
            Some(got) if *got == expected => {}
            Some(got) => mismatches.push(format!("{id}: read model {got:?} != fold {expected:?}")),
            None => mismatches.push(format!("{id}: no read model document (fold {expected:?})")),
        }
    }
    for id in models.keys() {
        if !by_account.contains_key(id) {
            mismatches.push(format!("{id}: read model document without events"));
        }
    }
    Ok(mismatches)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_fold_follows_the_example_domain() {
        let evs = vec![
            doc! {"sequenceNumber": 1i64, "eventType": "AccountOpened", "data": {"owner": "ann", "currency": "EUR"}},
            doc! {"sequenceNumber": 2i64, "eventType": "Deposited", "data": {"amount": 50i64}},
            doc! {"sequenceNumber": 3i64, "eventType": "Audited", "data": {}},
            doc! {"sequenceNumber": 4i64, "eventType": "Withdrawn", "data": {"amount": 20i64}},
            doc! {"sequenceNumber": 5i64, "eventType": "AccountClosed", "data": {}},
        ];
        let a = fold(&evs);
        assert_eq!(
            a,
            Account {
                owner: Some("ann".into()),
                currency: Some("EUR".into()),
                balance: 30,
                status: Some("closed".into()),
                last_sequence: 5
            }
        );
    }
}
