//! Shared set-up for the daemon's integration tests: a server (the embedded `mongo-sim`, or the
//! replica set named by `MONGODB_URI`), a fresh database per test, and polling helpers.

#![allow(dead_code)]

pub mod fold;
pub mod process;
pub mod replica;

use bson::{Bson, Document, doc};
use futures_util::TryStreamExt;
use mongo_projector::app::App;
use mongo_projector::cluster::daemon::DaemonReport;
use mongo_projector::config::{Config, Handler, ProjectionConfig};
use mongo_projector::store::checkpoint::CheckpointStore;
use mongodb::{Client, Collection, Database};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

pub const EXAMPLE: &str = include_str!("../../config/example.toml");

/// A server for one test and a database no other test uses.
pub struct TestEnv {
    pub client: Client,
    pub db: Database,
    pub uri: String,
    /// Keeps the embedded server alive for the test's duration.
    pub server: Option<mongo_sim::MongoSim>,
}

static NEXT_DB: AtomicU32 = AtomicU32::new(0);

/// True when the tests run against a real MongoDB named by `MONGODB_URI`.
pub fn real_mongodb() -> bool {
    std::env::var("MONGODB_URI").is_ok()
}

impl TestEnv {
    pub async fn new(name: &str) -> TestEnv {
        Self::with_options(name, None).await
    }

    /// An embedded server with a small oplog. `None` when running against a real MongoDB
    /// (whose oplog a test cannot shrink); the caller skips.
    pub async fn with_small_oplog(name: &str, capacity: usize) -> Option<TestEnv> {
        let options = mongo_sim::ServerOptions {
            oplog_capacity: capacity,
            ..mongo_sim::ServerOptions::default()
        };
        Self::simulating(name, options, "the test server's --oplog-capacity").await
    }

    /// An embedded server started with `options` (another release, a restricted user...).
    /// `None` when running against a real MongoDB, after printing that the test needs
    /// `what`; the caller skips.
    pub async fn simulating(
        name: &str,
        options: mongo_sim::ServerOptions,
        what: &str,
    ) -> Option<TestEnv> {
        if real_mongodb() {
            eprintln!("skipped against MONGODB_URI: needs {what}");
            return None;
        }
        Some(Self::with_options(name, Some(options)).await)
    }

    async fn with_options(name: &str, options: Option<mongo_sim::ServerOptions>) -> TestEnv {
        if std::env::var("RUST_LOG").is_ok() {
            let _ = tracing_subscriber::fmt().with_test_writer().try_init();
        }
        let n = NEXT_DB.fetch_add(1, Ordering::Relaxed);
        let db_name = format!(
            "t_{}_{}_{n}",
            name.chars().take(30).collect::<String>(),
            std::process::id()
        );
        let (uri, server) = match std::env::var("MONGODB_URI") {
            Ok(uri) => (uri, None),
            Err(_) => {
                let options = options.unwrap_or_default();
                let server = mongo_sim::MongoSim::start(options)
                    .await
                    .expect("start mongo-sim");
                (server.uri().to_string(), Some(server))
            }
        };
        let client = Client::with_uri_str(&uri).await.expect("client");
        let db = client.database(&db_name);
        TestEnv {
            client,
            db,
            uri,
            server,
        }
    }

    /// The example configuration pointed at this test's database.
    pub fn config(&self) -> Config {
        let mut config = Config::parse(EXAMPLE).expect("example config");
        for p in &mut config.projections {
            p.database = self.db.name().to_string();
            p.start = mongo_projector::config::StartFrom::Beginning;
        }
        config.checkpoints.database = Some(self.db.name().to_string());
        config.checkpoints.every = Duration::from_millis(50);
        config.source.max_await = Duration::from_millis(100);
        config.source.reopen_backoff_initial = Duration::from_millis(20);
        config.source.reopen_backoff_max = Duration::from_millis(200);
        // One holder for every daemon of a test: a daemon started after a simulated crash
        // takes over its predecessor's lease at once instead of after the ttl. Tests of
        // several instances give each its own holder.
        config.leases.holder = Some(format!("test-{}", self.db.name()));
        config
    }

    /// The example configuration file's text pointed at this test's database, for the
    /// binary's `--config`.
    pub fn example_text(&self) -> String {
        EXAMPLE.replace(
            "database = \"bank\"",
            &format!("database = \"{}\"", self.db.name()),
        )
    }

    pub fn events(&self) -> Collection<Document> {
        self.db.collection("events")
    }

    pub fn accounts(&self) -> Collection<Document> {
        self.db.collection("accounts")
    }

    pub fn parked(&self) -> Collection<Document> {
        self.db.collection("accounts_parked")
    }
}

/// A projection whose read model records every applied sequence number in order
/// (`seen: [1, 2, ...]`) and counts applications: exactly-once and in-order become visible.
pub fn recording_projection(config: &mut Config) {
    let p: &mut ProjectionConfig = &mut config.projections[0];
    p.handlers.clear();
    for t in ["A", "B"] {
        p.handlers.insert(
            t.to_string(),
            Handler::Operators(
                doc! {"$push": {"seen": "${sequenceNumber}"}, "$inc": {"applications": 1i64}},
            ),
        );
    }
}

pub fn event(aggregate: &str, seq: i64, event_type: &str, data: Document) -> Document {
    doc! {"aggregateId": aggregate, "sequenceNumber": seq, "eventType": event_type, "data": data, "timestamp": bson::DateTime::now()}
}

/// Polls `check` until it returns true or `within` passes; panics with `what` on timeout.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the projection has stored its first checkpoint: its change stream is open and
/// any catch-up from the collection is over, so events inserted from now on reach it through
/// the stream alone. Without this, a test that inserts right after start cannot tell whether
/// the catch-up scan or the stream applied an event.
pub async fn wait_until_tailing(env: &TestEnv, projection: &str) {
    let store = CheckpointStore::new(&env.db, "projector_checkpoints");
    eventually(
        &format!("{projection} tailing"),
        Duration::from_secs(30),
        || async { matches!(store.load(projection).await, Ok(Some(_))) },
    )
    .await;
}

/// Sets mongod's `failCommand` fail point (manual: "failCommand"; a real mongod needs
/// `--setParameter enableTestCommands=1`); mode `"off"` clears it.
pub async fn fail_point(env: &TestEnv, mode: Bson, data: Document) {
    env.client
        .database("admin")
        .run_command(doc! {"configureFailPoint": "failCommand", "mode": mode, "data": data})
        .await
        .expect("configureFailPoint (needs enableTestCommands on a real mongod)");
}

/// The read model's document for an aggregate.
pub async fn stored_document(env: &TestEnv, aggregate: &str) -> Option<Document> {
    env.accounts()
        .find_one(doc! {"_id": aggregate})
        .await
        .unwrap()
}

/// The read model's `lastSequenceNumber` for an aggregate.
pub async fn stored_sequence(env: &TestEnv, aggregate: &str) -> Option<i64> {
    stored_document(env, aggregate)
        .await
        .and_then(|d| d.get("lastSequenceNumber").and_then(Bson::as_i64))
}

/// How long a helper here waits for the daemon before it fails the test: only a bound on a
/// failure, never a measure of speed.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Waits until the read model holds `aggregate` at sequence `seq`.
pub async fn wait_for_sequence(env: &TestEnv, aggregate: &str, seq: i64) {
    eventually(
        &format!("{aggregate} at sequence {seq}"),
        PATIENCE,
        || async { stored_sequence(env, aggregate).await == Some(seq) },
    )
    .await;
}

/// The value of the sample of metric `name` in a Prometheus scrape whose labels include every
/// one of `labels` (`projection="accounts"`); with no labels, the unlabelled sample.
pub fn metric_sample(scrape: &str, name: &str, labels: &[&str]) -> Option<f64> {
    scrape.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (set, value) = match rest.strip_prefix('{') {
            Some(labelled) => labelled.split_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        labels
            .iter()
            .all(|want| set.split(',').any(|have| have == *want))
            .then(|| value.trim().parse().ok())?
    })
}

/// The sequences that [`recording_projection`] recorded for an aggregate, in the order applied.
pub async fn seen(env: &TestEnv, aggregate: &str) -> Vec<i64> {
    stored_document(env, aggregate)
        .await
        .and_then(|d| d.get_array("seen").ok().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(Bson::as_i64)
        .collect()
}

/// Every document of `collection` that matches `filter`.
pub async fn documents(collection: &Collection<Document>, filter: Document) -> Vec<Document> {
    collection
        .find(filter)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

/// A plain HTTP/1.1 GET of `path`: (status code, body).
pub async fn http_get(address: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(address).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, body.to_string())
}

/// A daemon running in the background with its HTTP endpoint (on `config.http.address`).
pub struct Monitored {
    pub address: SocketAddr,
    shutdown: CancellationToken,
    monitoring: CancellationToken,
    handle: tokio::task::JoinHandle<DaemonReport>,
}

/// The daemon as `run` starts it ([`App`]), without the server's checks at start-up.
pub async fn start_monitored(env: &TestEnv, config: &Config) -> Monitored {
    let shutdown = CancellationToken::new();
    let monitoring = CancellationToken::new();
    let app = App::start(config, &env.client, &shutdown, &monitoring)
        .await
        .unwrap();
    let (_, address) = app.endpoint.clone().expect("http enabled");
    let handle = tokio::spawn(async move { app.run().await });
    Monitored {
        address,
        shutdown,
        monitoring,
        handle,
    }
}

impl Monitored {
    /// Graceful stop: every worker must have ended well; then the endpoint stops.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let report = self.handle.await.expect("daemon task");
        assert!(report.all_ok(), "{:?}", report.results);
        self.monitoring.cancel();
    }
}
