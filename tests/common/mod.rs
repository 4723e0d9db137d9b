//! Shared set-up for the daemon's integration tests: a server (the embedded `mongo-sim`, or the
//! replica set named by `MONGODB_URI`), a fresh database per test, and polling helpers.

#![allow(dead_code)]

use bson::{Document, doc};
use mongo_projector::checkpoint::CheckpointStore;
use mongo_projector::config::{Config, Handler, ProjectionConfig};
use mongodb::{Client, Collection, Database};
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

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
        Self::with_oplog(name, None).await
    }

    /// An embedded server with a small oplog. `None` when running against a real MongoDB
    /// (whose oplog a test cannot shrink); the caller skips.
    pub async fn with_small_oplog(name: &str, capacity: usize) -> Option<TestEnv> {
        if real_mongodb() {
            eprintln!("skipped against MONGODB_URI: needs the test server's --oplog-capacity");
            return None;
        }
        Some(Self::with_oplog(name, Some(capacity)).await)
    }

    async fn with_oplog(name: &str, capacity: Option<usize>) -> TestEnv {
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
                let mut options = mongo_sim::ServerOptions::default();
                if let Some(c) = capacity {
                    options.oplog_capacity = c;
                }
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

/// The read model's `lastSequenceNumber` for an aggregate.
pub async fn stored_sequence(env: &TestEnv, aggregate: &str) -> Option<i64> {
    env.accounts()
        .find_one(doc! {"_id": aggregate})
        .await
        .unwrap()
        .and_then(|d| d.get("lastSequenceNumber").and_then(bson::Bson::as_i64))
}
