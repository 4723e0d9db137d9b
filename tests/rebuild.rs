//! Live rebuild over the wire: a projection's read model recomputed with changed handlers
//! into a shadow collection while events keep arriving and a reader keeps reading, then
//! swapped in without the reader ever seeing a partial or regressed read model; an
//! interrupted rebuild resumes; a rebuild that would regress an aggregate is refused.
//!
//! Each test runs against the embedded `mongo-sim`, or against the replica set named by
//! `MONGODB_URI`.

mod common;

use bson::{Bson, Document, doc};
use common::{TestEnv, documents, event, eventually};
use futures_util::TryStreamExt;
use mongo_projector::cluster::daemon::Daemon;
use mongo_projector::config::{Config, Handler, StartFrom};
use mongo_projector::pipeline::start::{Start, StreamStart, choose_start, token_cluster_time};
use mongo_projector::store::checkpoint::CheckpointStore;
use mongo_projector::store::lease::{LeaseStore, Renewal};
use mongo_projector::tools::rebuild::{
    self, Handover, Phase, RebuildError, RebuildOptions, RebuildOutcome, RebuildProgress,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);
const ACCOUNTS: usize = 12;

/// The handlers before the change: owner, status and balance, and every applied sequence in
/// `seen` (so that a reader can check a document is complete for its `lastSequenceNumber`).
fn old_handlers(config: &mut Config) {
    let p = &mut config.projections[0];
    p.handlers.clear();
    p.handlers.insert(
        "Opened".into(),
        Handler::Operators(doc! {
            "$set": {"owner": "${data.owner}", "status": "open", "balance": 0i64},
            "$push": {"seen": "${sequenceNumber}"},
        }),
    );
    p.handlers.insert(
        "Deposited".into(),
        Handler::Operators(doc! {
            "$inc": {"balance": "${data.amount}"},
            "$push": {"seen": "${sequenceNumber}"},
        }),
    );
}

/// The changed handlers: deposits are also counted, and a new account is marked `version: 2`
/// (which only a rebuild gives the accounts opened before the change).
fn new_handlers(config: &mut Config) {
    let p = &mut config.projections[0];
    p.handlers.clear();
    p.handlers.insert(
        "Opened".into(),
        Handler::Operators(doc! {
            "$set": {"owner": "${data.owner}", "status": "open", "balance": 0i64, "deposits": 0i64, "version": 2i64},
            "$push": {"seen": "${sequenceNumber}"},
        }),
    );
    p.handlers.insert(
        "Deposited".into(),
        Handler::Operators(doc! {
            "$inc": {"balance": "${data.amount}", "deposits": 1i64},
            "$push": {"seen": "${sequenceNumber}"},
        }),
    );
}

fn account_event(account: usize, seq: i64) -> Document {
    let id = format!("acc-{account:02}");
    if seq == 1 {
        event(&id, 1, "Opened", doc! {"owner": format!("owner-{account}")})
    } else {
        event(&id, seq, "Deposited", doc! {"amount": seq})
    }
}

/// Appends `per_account` more events to each account, round-robin; returns the new heads.
async fn append(env: &TestEnv, heads: &mut [i64], per_account: i64) {
    let mut batch = Vec::new();
    for _ in 0..per_account {
        for (a, head) in heads.iter_mut().enumerate() {
            *head += 1;
            batch.push(account_event(a, *head));
        }
    }
    env.events().insert_many(batch).await.unwrap();
}

/// The read model the new handlers give for every stored event.
async fn new_fold(env: &TestEnv) -> BTreeMap<String, Document> {
    let events: Vec<Document> = env
        .events()
        .find(doc! {})
        .sort(doc! {"aggregateId": 1, "sequenceNumber": 1})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let mut out: BTreeMap<String, Document> = BTreeMap::new();
    for e in events {
        let id = e.get_str("aggregateId").unwrap().to_string();
        let seq = e.get_i64("sequenceNumber").unwrap();
        let data = e.get_document("data").unwrap();
        let d = out.entry(id.clone()).or_default();
        match e.get_str("eventType").unwrap() {
            "Opened" => {
                d.insert("owner", data.get_str("owner").unwrap());
                d.insert("status", "open");
                d.insert("balance", 0i64);
                d.insert("deposits", 0i64);
                d.insert("version", 2i64);
            }
            _ => {
                let b = d.get_i64("balance").unwrap() + data.get_i64("amount").unwrap();
                d.insert("balance", b);
                let n = d.get_i64("deposits").unwrap() + 1;
                d.insert("deposits", n);
            }
        }
        let mut seen = d.get_array("seen").cloned().unwrap_or_default();
        seen.push(Bson::Int64(seq));
        d.insert("seen", seen);
        d.insert("lastSequenceNumber", seq);
    }
    out
}

/// The read model as stored, without `_id`, keyed by it.
async fn read_model(env: &TestEnv) -> BTreeMap<String, Document> {
    documents(&env.accounts(), doc! {})
        .await
        .into_iter()
        .map(|mut d| {
            let id = d.get_str("_id").unwrap().to_string();
            d.remove("_id");
            (id, d)
        })
        .collect()
}

/// Keys in a fixed order, so that two documents compare by content.
fn normalised(m: BTreeMap<String, Document>) -> BTreeMap<String, BTreeMap<String, Bson>> {
    m.into_iter()
        .map(|(k, d)| (k, d.into_iter().collect()))
        .collect()
}

/// Reads the whole read model every few milliseconds and records anything a reader must
/// never see: a document that disappears, a sequence that goes back, a document that is not
/// complete for its sequence, fewer documents than before, or the old handlers' shape after
/// the new one was seen.
struct Reader {
    stop: Arc<AtomicBool>,
    handle: tokio::task::JoinHandle<(Vec<String>, usize)>,
}

impl Reader {
    fn start(env: &TestEnv) -> Reader {
        let stop = Arc::new(AtomicBool::new(false));
        let accounts = env.accounts();
        let flag = stop.clone();
        let handle = tokio::spawn(async move {
            let mut problems = Vec::new();
            let mut last: HashMap<String, i64> = HashMap::new();
            let mut new_shape_seen = false;
            let mut reads = 0;
            while !flag.load(Ordering::Relaxed) {
                // One batch: a cursor never spans the rename.
                let docs: Vec<Document> = match accounts.find(doc! {}).batch_size(10_000).await {
                    Ok(c) => c.try_collect().await.unwrap_or_default(),
                    Err(e) => {
                        problems.push(format!("read failed: {e}"));
                        continue;
                    }
                };
                reads += 1;
                if docs.len() < last.len() {
                    problems.push(format!(
                        "{} documents after {} were seen",
                        docs.len(),
                        last.len()
                    ));
                }
                let mut present = std::collections::HashSet::new();
                let new_shape_now = docs.iter().any(|d| d.contains_key("version"));
                if new_shape_seen && docs.iter().any(|d| !d.contains_key("version")) {
                    problems.push("the old read model came back after the new one".into());
                }
                new_shape_seen |= new_shape_now;
                for d in &docs {
                    let id = d.get_str("_id").unwrap_or("?").to_string();
                    let seq = d.get_i64("lastSequenceNumber").unwrap_or(0);
                    let seen: Vec<i64> = d
                        .get_array("seen")
                        .map(|a| a.iter().filter_map(Bson::as_i64).collect())
                        .unwrap_or_default();
                    if seen != (1..=seq).collect::<Vec<_>>()
                        || d.get_str("owner").is_err()
                        || d.get_str("status").is_err()
                        || d.get_i64("balance").is_err()
                    {
                        problems.push(format!("incomplete document {d}"));
                    }
                    if let Some(before) = last.get(&id)
                        && *before > seq
                    {
                        problems.push(format!("{id} went back from {before} to {seq}"));
                    }
                    last.insert(id.clone(), seq);
                    present.insert(id);
                }
                for id in last.keys() {
                    if !present.contains(id) {
                        problems.push(format!("{id} disappeared"));
                    }
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            (problems, reads)
        });
        Reader { stop, handle }
    }

    async fn finish(self) -> (Vec<String>, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.await.unwrap()
    }
}

/// Keeps appending events (a few per account per round) until stopped; the write side of the
/// application, independent of the projector. Returns the heads reached.
struct Writer {
    stop: Arc<AtomicBool>,
    handle: tokio::task::JoinHandle<Vec<i64>>,
}

impl Writer {
    fn start(env: &TestEnv, mut heads: Vec<i64>) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let events = env.events();
        let flag = stop.clone();
        let handle = tokio::spawn(async move {
            let mut a = 0;
            while !flag.load(Ordering::Relaxed) {
                heads[a] += 1;
                events.insert_one(account_event(a, heads[a])).await.unwrap();
                a = (a + 1) % heads.len();
                // A steady trickle of events (workload pacing, not synchronisation).
                tokio::time::sleep(Duration::from_millis(4)).await;
            }
            heads
        });
        Writer { stop, handle }
    }

    async fn finish(self) -> Vec<i64> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.await.unwrap()
    }
}

/// Runs a daemon with `config` until `done` holds, then stops it gracefully.
async fn run_daemon_until<F, Fut>(env: &TestEnv, config: &Config, what: &str, done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let shutdown = CancellationToken::new();
    let daemon = Daemon::new(config, &env.client, &shutdown);
    let handle = tokio::spawn(async move { daemon.run().await });
    eventually(what, WAIT, done).await;
    shutdown.cancel();
    let report = handle.await.unwrap();
    assert!(report.all_ok(), "{:?}", report.results);
}

async fn at_heads(env: &TestEnv, heads: &[i64]) -> bool {
    let model = read_model(env).await;
    heads.iter().enumerate().all(|(a, h)| {
        model
            .get(&format!("acc-{a:02}"))
            .and_then(|d| d.get_i64("lastSequenceNumber").ok())
            == Some(*h)
    })
}

fn options() -> RebuildOptions {
    RebuildOptions {
        offline: true,
        max_lag: Duration::from_secs(1),
        chunk: 25,
        lanes: 3,
        ..RebuildOptions::default()
    }
}

async fn rebuild_once(
    env: &TestEnv,
    config: &Config,
    options: &RebuildOptions,
    progress: &Arc<RebuildProgress>,
    shutdown: &CancellationToken,
) -> Result<RebuildOutcome, RebuildError> {
    let handover = rebuild::handover_for(config, &env.client, options)?;
    rebuild::run(
        config,
        &env.client,
        "accounts",
        options,
        &handover,
        progress,
        shutdown,
    )
    .await
}

/// The read model built by the old handlers, at `per_account` events per account.
async fn old_read_model(env: &TestEnv, per_account: i64) -> Vec<i64> {
    let mut old = env.config();
    old_handlers(&mut old);
    let mut heads = vec![0i64; ACCOUNTS];
    append(env, &mut heads, per_account).await;
    let h = heads.clone();
    run_daemon_until(env, &old, "the old read model is built", || {
        let h = h.clone();
        async move { at_heads(env, &h).await }
    })
    .await;
    heads
}

/// A rebuild that nothing cancels, reporting to `progress`.
async fn rebuild_with(
    env: &TestEnv,
    config: &Config,
    options: &RebuildOptions,
    progress: &Arc<RebuildProgress>,
) -> Result<RebuildOutcome, RebuildError> {
    rebuild_once(env, config, options, progress, &CancellationToken::new()).await
}

/// A rebuild that nothing cancels and whose progress nobody watches.
async fn rebuild_to_end(
    env: &TestEnv,
    config: &Config,
    options: &RebuildOptions,
) -> Result<RebuildOutcome, RebuildError> {
    rebuild_with(env, config, options, &Arc::new(RebuildProgress::default())).await
}

/// The options of a rebuild that takes the projection over through its leases.
fn leased_options() -> RebuildOptions {
    RebuildOptions {
        offline: false,
        ..options()
    }
}

/// The example configuration with the changed handlers.
fn new_config(env: &TestEnv) -> Config {
    let mut config = env.config();
    new_handlers(&mut config);
    config
}

/// Starts a rebuild in small chunks (so that it saves its progress often and takes long
/// enough to be cut) and cancels it once a part of the scan is done.
async fn rebuild_cut_during_scan(env: &TestEnv, config: &Config) -> RebuildOutcome {
    let shutdown = CancellationToken::new();
    let progress = Arc::new(RebuildProgress::default());
    let watcher = {
        let (progress, shutdown) = (progress.clone(), shutdown.clone());
        tokio::spawn(async move {
            eventually("a part of the scan done", WAIT, || async {
                progress.scanned.load(Ordering::Relaxed) >= 20
            })
            .await;
            shutdown.cancel();
        })
    };
    let small_chunks = RebuildOptions {
        chunk: 2,
        ..options()
    };
    let outcome = rebuild_once(env, config, &small_chunks, &progress, &shutdown)
        .await
        .unwrap();
    watcher.await.unwrap();
    outcome
}

/// The rebuild's saved state, if any.
async fn saved_state(env: &TestEnv) -> Option<Document> {
    env.db
        .collection::<Document>("projector_rebuilds")
        .find_one(doc! {"_id": "accounts"})
        .await
        .unwrap()
}

/// The read model is exactly the fold of every event with the new handlers: nothing lost,
/// nothing applied twice.
async fn assert_new_fold(env: &TestEnv) {
    assert_eq!(
        normalised(read_model(env).await),
        normalised(new_fold(env).await)
    );
}

/// The reader read often and never saw a partial, regressed or vanished read model.
async fn assert_reader_saw_no_problem(reader: Reader) {
    let (problems, reads) = reader.finish().await;
    assert!(problems.is_empty(), "the reader saw: {problems:#?}");
    assert!(reads > 10, "the reader read only {reads} times");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_swaps_in_the_new_handlers_and_readers_never_see_it_partial_or_behind() {
    let env = TestEnv::new("rebuild_swap").await;
    let heads = old_read_model(&env, 6).await;
    let config = new_config(&env);
    // The write side goes on during the whole rebuild, and a reader reads throughout.
    let reader = Reader::start(&env);
    let writer = Writer::start(&env, heads);
    let progress = Arc::new(RebuildProgress::default());
    let outcome = rebuild_with(&env, &config, &options(), &progress)
        .await
        .unwrap();
    let RebuildOutcome::Swapped(summary) = outcome else {
        panic!("not swapped: {outcome:?}");
    };
    assert_eq!(progress.phase(), Phase::Done);
    let monitor = mongo_projector::ops::metrics::Monitor::new(&config, &env.client, Vec::new());
    monitor.watch_rebuild("accounts", progress.figures());
    let metrics = monitor.render();
    for line in [
        "mongo_projector_rebuild_phase{projection=\"accounts\",phase=\"done\"} 1",
        "mongo_projector_rebuild_phase{projection=\"accounts\",phase=\"building\"} 0",
        &format!(
            "mongo_projector_rebuild_events_scanned_total{{projection=\"accounts\"}} {}",
            summary.scanned
        ),
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
    assert!(progress.applied() >= (ACCOUNTS * 6) as u64);
    assert_eq!(summary.documents, ACCOUNTS as u64);
    assert!(summary.scanned >= (ACCOUNTS * 6) as i64, "{summary:?}");
    // The daemon, with the new handlers deployed, continues from the handed-over position.
    let heads = writer.finish().await;
    let mut more = heads.clone();
    append(&env, &mut more, 2).await;
    run_daemon_until(&env, &config, "new events applied after the swap", || {
        let h = more.clone();
        let env = &env;
        async move { at_heads(env, &h).await }
    })
    .await;
    assert_reader_saw_no_problem(reader).await;
    // Exactly the fold of every event with the new handlers: nothing lost, nothing twice.
    assert_new_fold(&env).await;
    for shadow in ["accounts_rebuild", "accounts_parked_rebuild"] {
        let names = env.db.list_collection_names().await.unwrap();
        assert!(!names.contains(&shadow.to_string()), "{shadow} left behind");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_daemon_hands_over_for_the_swap_and_continues_on_the_rebuilt_read_model() {
    let env = TestEnv::new("rebuild_live").await;
    let heads = old_read_model(&env, 6).await;
    // The new handlers are deployed: the live daemon applies them from now on, and the
    // rebuild recomputes what the old ones had applied.
    let mut config = new_config(&env);
    config.leases.ttl = Duration::from_millis(900);
    config.leases.renew_every = Duration::from_millis(300);
    let stop_live = CancellationToken::new();
    let daemon = Arc::new(Daemon::new(&config, &env.client, &stop_live));
    let live = tokio::spawn({
        let daemon = daemon.clone();
        async move { daemon.run().await }
    });
    common::wait_until_tailing(&env, "accounts").await;
    let reader = Reader::start(&env);
    let writer = Writer::start(&env, heads);
    let options = leased_options();
    let progress = Arc::new(RebuildProgress::default());
    let handover = rebuild::handover_for(&config, &env.client, &options).unwrap();
    assert!(matches!(handover, Handover::Leases(_)));
    let outcome = rebuild::run(
        &config,
        &env.client,
        "accounts",
        &options,
        &handover,
        &progress,
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert!(matches!(outcome, RebuildOutcome::Swapped(_)), "{outcome:?}");
    let heads = writer.finish().await;
    eventually("the live daemon applied every event", WAIT, || async {
        at_heads(&env, &heads).await
    })
    .await;
    // The lease went to the rebuild and back to the daemon (each change of hands is a new
    // epoch), and the handover request was withdrawn.
    let lease = LeaseStore::new(&env.db, &config.leases.collection)
        .current("accounts")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lease.handover_to, None, "{lease:?}");
    assert_eq!(lease.holder, config.leases.holder, "{lease:?}");
    assert!(lease.epoch >= 3, "{lease:?}");
    stop_live.cancel();
    let report = live.await.unwrap();
    assert!(report.all_ok(), "{:?}", report.results);
    assert_reader_saw_no_problem(reader).await;
    assert_new_fold(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_rebuild_resumes_where_its_scan_stopped() {
    let env = TestEnv::new("rebuild_resume").await;
    let mut heads = old_read_model(&env, 4).await;
    append(&env, &mut heads, 6).await; // 120 events in all, in chunks of 25
    let config = new_config(&env);
    let outcome = rebuild_cut_during_scan(&env, &config).await;
    assert_eq!(
        outcome,
        RebuildOutcome::Interrupted {
            phase: Phase::Building
        }
    );
    let state = saved_state(&env).await.expect("a saved state");
    assert_eq!(state.get_str("phase").unwrap(), "building");
    assert!(state.get("scanFrom").is_some(), "{state}");
    // Interrupted before the swap: readers still see the old read model.
    assert!(
        read_model(&env)
            .await
            .values()
            .all(|d| !d.contains_key("deposits"))
    );
    let second = Arc::new(RebuildProgress::default());
    let outcome = rebuild_with(&env, &config, &options(), &second)
        .await
        .unwrap();
    assert!(matches!(outcome, RebuildOutcome::Swapped(_)), "{outcome:?}");
    let rescanned = second.scanned.load(Ordering::Relaxed);
    assert!(
        rescanned <= 110,
        "the second run scanned {rescanned} of 120 events: it did not resume"
    );
    assert_new_fold(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_that_would_put_aggregates_back_is_refused_and_changes_nothing() {
    let env = TestEnv::new("rebuild_behind").await;
    old_read_model(&env, 3).await;
    let before = read_model(&env).await;
    let mut config = new_config(&env);
    // The changed handler needs a field the deposits do not have: every deposit is
    // dead-lettered in the rebuilt read model, which stays at sequence 1.
    config.projections[0].handlers.insert(
        "Deposited".into(),
        Handler::Operators(doc! {"$inc": {"balance": "${data.cents}"}}),
    );
    let refused = rebuild_to_end(&env, &config, &options()).await.unwrap_err();
    let message = refused.to_string();
    assert!(matches!(refused, RebuildError::Refused(_)), "{message}");
    assert!(
        message.contains(&format!("behind the live one for {ACCOUNTS} aggregate(s)")),
        "{message}"
    );
    assert!(message.contains("acc-00: live 3, rebuilt 1"), "{message}");
    assert_eq!(
        read_model(&env).await,
        before,
        "the live read model changed"
    );
    // Both deposits of every account are dead-lettered in the rebuilt read model only.
    let dead = env
        .db
        .collection::<Document>("accounts_parked_rebuild")
        .count_documents(doc! {"state": "dead"})
        .await
        .unwrap();
    assert_eq!(dead, (ACCOUNTS * 2) as u64);
    assert_eq!(env.parked().count_documents(doc! {}).await.unwrap(), 0);
    // The same handlers again: the stored rebuild is resumed, and refused again.
    let again = rebuild_to_end(&env, &config, &options()).await.unwrap_err();
    assert!(again.to_string().contains("behind the live one"), "{again}");
    // Other handlers than the stored rebuild's: refused until --restart.
    new_handlers(&mut config);
    let other = rebuild_to_end(&env, &config, &options()).await.unwrap_err();
    assert!(other.to_string().contains("--restart"), "{other}");
    let restart = RebuildOptions {
        restart: true,
        ..options()
    };
    let outcome = rebuild_to_end(&env, &config, &restart).await.unwrap();
    assert!(matches!(outcome, RebuildOutcome::Swapped(_)), "{outcome:?}");
    assert_new_fold(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_leases_a_rebuild_needs_the_operators_word_that_the_daemon_is_stopped() {
    let env = TestEnv::new("rebuild_offline").await;
    let mut config = env.config();
    config.leases.enabled = false;
    let options = leased_options();
    let Err(refused) = rebuild::handover_for(&config, &env.client, &options) else {
        panic!("a handover without leases and without --offline");
    };
    assert!(refused.to_string().contains("--offline"), "{refused}");
    let offline = RebuildOptions {
        offline: true,
        ..options
    };
    assert!(matches!(
        rebuild::handover_for(&config, &env.client, &offline),
        Ok(Handover::Offline)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_swap_keeps_the_read_models_indexes_and_moves_parked_entries() {
    let env = TestEnv::new("rebuild_indexes").await;
    old_read_model(&env, 2).await;
    env.db
        .run_command(doc! {"createIndexes": "accounts", "indexes": [
            {"key": {"owner": 1}, "name": "by_owner", "unique": true},
        ]})
        .await
        .unwrap();
    // An old parked entry of the projection, which the rebuilt read model does not have.
    env.parked()
        .insert_one(doc! {"_id": {"projection": "accounts", "aggregateId": "gone", "sequenceNumber": 9i64}, "projection": "accounts", "state": "dead", "firstParkedAt": bson::DateTime::now()})
        .await
        .unwrap();
    // A malformed event: the rebuilt read model's dead letter replaces the old entries.
    env.events()
        .insert_one(doc! {"aggregateId": "acc-00", "sequenceNumber": "three"})
        .await
        .unwrap();
    let config = new_config(&env);
    let outcome = rebuild_to_end(&env, &config, &options()).await.unwrap();
    let RebuildOutcome::Swapped(summary) = outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(summary.parked, 1);
    let indexes: Vec<String> = env.accounts().list_index_names().await.unwrap();
    assert!(indexes.contains(&"by_owner".to_string()), "{indexes:?}");
    let parked = documents(&env.parked(), doc! {}).await;
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0].get_str("reason").unwrap(), "malformed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_whose_position_left_the_oplog_scans_again_and_completes() {
    let Some(env) = TestEnv::with_small_oplog("rebuild_history_lost", 300).await else {
        return;
    };
    let mut heads = vec![0i64; ACCOUNTS];
    append(&env, &mut heads, 10).await;
    let config = new_config(&env);
    let outcome = rebuild_cut_during_scan(&env, &config).await;
    assert!(
        matches!(outcome, RebuildOutcome::Interrupted { .. }),
        "{outcome:?}"
    );
    // Enough other writes to push the rebuild's stream position out of the oplog.
    let filler: Vec<Document> = (0..400).map(|i| doc! {"i": i}).collect();
    env.db
        .collection::<Document>("filler")
        .insert_many(filler)
        .await
        .unwrap();
    let second = Arc::new(RebuildProgress::default());
    let outcome = rebuild_with(&env, &config, &options(), &second)
        .await
        .unwrap();
    assert!(matches!(outcome, RebuildOutcome::Swapped(_)), "{outcome:?}");
    // The rest of the first scan, then the whole collection again from a new position.
    assert!(
        second.scanned.load(Ordering::Relaxed) > 120,
        "scanned {}",
        second.scanned.load(Ordering::Relaxed)
    );
    assert_new_fold(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_worker_of_the_projection_is_handed_over_partitions_included() {
    let env = TestEnv::new("rebuild_workers").await;
    old_read_model(&env, 3).await;
    let config = new_config(&env);
    let checkpoints = CheckpointStore::new(&env.db, &config.checkpoints.collection);
    // A partition worker's checkpoint from an earlier partition count, and a partition worker
    // running elsewhere under its lease, which hands it over when asked.
    let old = checkpoints.load("accounts").await.unwrap().unwrap();
    checkpoints
        .save_unfenced("accounts/p0of2", &old)
        .await
        .unwrap();
    let leases = LeaseStore::new(&env.db, &config.leases.collection);
    let other = leases
        .try_acquire("accounts/p1of2", "other", config.leases.ttl)
        .await
        .unwrap()
        .unwrap();
    let holder = tokio::spawn({
        let leases = leases.clone();
        let ttl = config.leases.ttl;
        async move {
            loop {
                match leases.renewal(&other, ttl).await.unwrap() {
                    Renewal::Renewed => {}
                    Renewal::HandoverRequested => {
                        leases.release(&other).await.unwrap();
                        return true;
                    }
                    Renewal::Lost => return false,
                }
                // The holder's renewal period.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let outcome = rebuild_to_end(&env, &config, &leased_options())
        .await
        .unwrap();
    assert!(matches!(outcome, RebuildOutcome::Swapped(_)), "{outcome:?}");
    assert!(
        holder.await.unwrap(),
        "the partition's holder was asked to hand over"
    );
    let state = saved_state(&env).await.unwrap();
    let handed_over: mongodb::change_stream::event::ResumeToken =
        bson::from_bson(state.get("token").unwrap().clone()).unwrap();
    let at = token_cluster_time(&handed_over).expect("a token names its cluster time");
    let family = checkpoints.load_family("accounts").await.unwrap();
    for worker in ["accounts", "accounts/p0of2", "accounts/p1of2"] {
        let c = checkpoints.load(worker).await.unwrap().unwrap();
        assert_eq!(c.token, handed_over, "{worker}");
        // The rebuild's stream issued the token: each worker starts at its cluster time.
        assert_eq!(
            c.token_from.as_deref(),
            Some("accounts rebuild"),
            "{worker}"
        );
        assert_eq!(c.cluster_time, Some(at), "{worker}");
        let start = choose_start(worker, &family, StartFrom::Beginning);
        assert!(
            matches!(&start, Start::Inherited(i) if i.at == StreamStart::At(at)),
            "{worker}: {start:?}"
        );
    }
    // A worker of another count that never ran starts there too, vouched for by the
    // projection's own handed-over checkpoint.
    let start = choose_start("accounts/p2of3", &family, StartFrom::Now);
    assert!(
        matches!(&start, Start::Inherited(i) if i.at == StreamStart::At(at)),
        "{start:?}"
    );
    // Taken from "other" (epoch 1), the partition's lease was the rebuild's at epoch 2, which
    // fenced the checkpoint; released since.
    assert_eq!(checkpoints.epoch("accounts/p1of2").await.unwrap(), Some(2));
    let lease = leases.current("accounts/p1of2").await.unwrap().unwrap();
    assert_eq!((lease.holder, lease.handover_to), (None, None));
}

/// The swap relies on this: within a database, `renameCollection` with `dropTarget: true` is
/// atomic for readers (manual: "renameCollection": it holds an exclusive lock on both
/// collections, and operations on them wait until it completes), so a reader sees the old
/// collection or the new one, never none or a partial one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renaming_over_a_collection_never_shows_readers_a_missing_or_partial_one() {
    let env = TestEnv::new("rebuild_rename").await;
    let target = env.db.collection::<Document>("model");
    let docs = |round: i64| -> Vec<Document> {
        (0..50i64)
            .map(|i| doc! {"_id": i, "round": round})
            .collect()
    };
    target.insert_many(docs(0)).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = tokio::spawn({
        let (target, stop) = (target.clone(), stop.clone());
        async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let all: Vec<Document> = target
                    .find(doc! {})
                    .batch_size(1000)
                    .await
                    .unwrap()
                    .try_collect()
                    .await
                    .unwrap();
                let rounds: std::collections::BTreeSet<i64> =
                    all.iter().filter_map(|d| d.get_i64("round").ok()).collect();
                seen.push((all.len(), rounds.len()));
            }
            seen
        }
    });
    for round in 1..=20 {
        let shadow = env.db.collection::<Document>("model_rebuild");
        shadow.insert_many(docs(round)).await.unwrap();
        env.client
            .database("admin")
            .run_command(doc! {
                "renameCollection": format!("{}.model_rebuild", env.db.name()),
                "to": format!("{}.model", env.db.name()),
                "dropTarget": true,
            })
            .await
            .unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let seen = reader.await.unwrap();
    assert!(seen.len() > 5, "only {} reads", seen.len());
    let bad: Vec<_> = seen.iter().filter(|s| **s != (50, 1)).collect();
    assert!(bad.is_empty(), "reads of (documents, rounds) {bad:?}");
    let last = target.find_one(doc! {"_id": 0i64}).await.unwrap().unwrap();
    assert_eq!(last.get_i64("round").unwrap(), 20);
}
