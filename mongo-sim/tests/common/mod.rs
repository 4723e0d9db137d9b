//! Shared harness for the integration tests: each test gets its own in-process mongo-sim (or,
//! when `MONGODB_URI` is set, a connection to that real replica set) and a database name no
//! other test uses, so the same assertions prove mongo-sim and mongod agree.
#![allow(dead_code)]

use mongo_sim::{MongoSim, ServerOptions};
use mongodb::bson::{Bson, Document, doc, oid::ObjectId};
use mongodb::error::{Error, ErrorKind, WriteFailure};
use mongodb::options::ClientOptions;
use mongodb::{Client, Collection, Database};
use std::future::Future;
use std::time::{Duration, Instant};

/// One test's server, client and private database.
pub struct TestEnv {
    pub client: Client,
    pub db: Database,
    pub db_name: String,
    /// The URI the client connected with (mongo-sim's or `MONGODB_URI`).
    pub uri: String,
    /// The client's `appName`, unique per test so `failCommand` can be scoped to it.
    pub app_name: String,
    /// Keeps the in-process server alive for the test's duration.
    pub sim: Option<MongoSim>,
}

/// The real deployment to test against instead of mongo-sim, if any.
pub fn real_uri() -> Option<String> {
    std::env::var("MONGODB_URI")
        .ok()
        .filter(|s| !s.trim().is_empty())
}

/// A name unique across tests and test processes (database names are limited to 63 bytes).
pub fn unique_name(test: &str) -> String {
    let short: String = test
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(30)
        .collect();
    format!("{short}_{}", ObjectId::new().to_hex())
}

/// Starts a mongo-sim with default options (or uses `MONGODB_URI`) for `test`.
pub async fn start(test: &str) -> TestEnv {
    start_with(test, ServerOptions::default()).await
}

/// Starts a mongo-sim with `options` (or uses `MONGODB_URI`, where the options do not apply).
pub async fn start_with(test: &str, options: ServerOptions) -> TestEnv {
    let (uri, sim) = match real_uri() {
        Some(uri) => (uri, None),
        None => {
            let sim = MongoSim::start(options)
                .await
                .expect("mongo-sim starts in process");
            (sim.uri().to_string(), Some(sim))
        }
    };
    let name = unique_name(test);
    let app_name = format!("app_{name}");
    let client = client_for(&uri, &app_name, |_| {}).await;
    let db = client.database(&name);
    TestEnv {
        client,
        db,
        db_name: name,
        uri,
        app_name,
        sim,
    }
}

/// For tests that need a mongo-sim-only knob: `None` (after printing why) against a real
/// deployment.
pub async fn start_sim_only(test: &str, options: ServerOptions, reason: &str) -> Option<TestEnv> {
    if real_uri().is_some() {
        println!("skipping {test} against MONGODB_URI: {reason}");
        return None;
    }
    Some(start_with(test, options).await)
}

/// A client for `uri` with `appName` set and a short server selection timeout, so a broken
/// server fails a test in seconds rather than thirty.
pub async fn client_for(
    uri: &str,
    app_name: &str,
    adjust: impl FnOnce(&mut ClientOptions),
) -> Client {
    let mut options = ClientOptions::parse(uri).await.expect("URI parses");
    options.app_name = Some(app_name.to_string());
    options.server_selection_timeout = Some(Duration::from_secs(10));
    // A state-change error (ShutdownInProgress from a fail point, say) marks the server
    // Unknown. A 4.4+ server streams hello, and the monitor may not check again before its
    // awaitable hello is answered (server monitoring spec, "Requesting an immediate check"),
    // which mongod does after maxAwaitTimeMS, that is heartbeatFrequencyMS: at the default
    // 10 s, as long as the selection timeout, the next operation could time out first.
    options.heartbeat_freq = Some(Duration::from_millis(500));
    adjust(&mut options);
    Client::with_options(options).expect("client builds")
}

impl TestEnv {
    pub fn coll(&self, name: &str) -> Collection<Document> {
        self.db.collection(name)
    }

    /// Another client on the same deployment with the same `appName`.
    pub async fn other_client(&self, adjust: impl FnOnce(&mut ClientOptions)) -> Client {
        client_for(&self.uri, &self.app_name, adjust).await
    }

    /// Runs `cmd` on this test's database and expects success.
    pub async fn run(&self, cmd: Document) -> Document {
        let shown = format!("{cmd}");
        match self.db.run_command(cmd).await {
            Ok(reply) => reply,
            Err(e) => panic!("command {shown} failed: {e}"),
        }
    }

    /// Runs `cmd` on the admin database and expects success.
    pub async fn admin(&self, cmd: Document) -> Document {
        let shown = format!("{cmd}");
        match self.client.database("admin").run_command(cmd).await {
            Ok(reply) => reply,
            Err(e) => panic!("admin command {shown} failed: {e}"),
        }
    }

    /// Runs `cmd` on this test's database and expects a command error; returns the code and
    /// the server's raw reply.
    pub async fn run_err(&self, cmd: Document) -> (i32, Document) {
        let shown = format!("{cmd}");
        match self.db.run_command(cmd).await {
            Ok(reply) => panic!("command {shown} succeeded with {reply}, expected an error"),
            Err(e) => (
                error_code(&e).unwrap_or_else(|| panic!("{shown}: error without a code: {e}")),
                server_response(&e).unwrap_or_default(),
            ),
        }
    }

    /// Turns on `failCommand` scoped to this test's `appName` (unless `data` names another).
    ///
    /// mongod offers fail points only when started with `--setParameter
    /// enableTestCommands=1`; a real deployment used through `MONGODB_URI` must have it.
    pub async fn fail_command(&self, mode: Bson, mut data: Document) {
        if !data.contains_key("appName") {
            data.insert("appName", self.app_name.clone());
        }
        self.admin(doc! {"configureFailPoint": "failCommand", "mode": mode, "data": data})
            .await;
    }

    pub async fn fail_command_off(&self) {
        self.admin(doc! {"configureFailPoint": "failCommand", "mode": "off"})
            .await;
    }
}

/// `failCommand` is one fail point per server: against a shared real deployment, tests that
/// configure it must take turns. Each in-process mongo-sim has its own, so no turn is needed.
pub async fn fail_point_turn() -> Option<tokio::sync::MutexGuard<'static, ()>> {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    match real_uri() {
        Some(_) => Some(TURN.lock().await),
        None => None,
    }
}

/// The server's error code carried by a driver error, whatever shape the driver gave it.
pub fn error_code(err: &Error) -> Option<i32> {
    match err.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => Some(w.code),
        ErrorKind::InsertMany(e) => e
            .write_errors
            .as_ref()
            .and_then(|errs| errs.first())
            .map(|w| w.code)
            .or_else(|| e.write_concern_error.as_ref().map(|w| w.code)),
        _ => None,
    }
}

/// Whether the driver saw the connection fail rather than a server reply.
pub fn is_network_error(err: &Error) -> bool {
    matches!(
        err.kind.as_ref(),
        ErrorKind::Io(_) | ErrorKind::ConnectionPoolCleared { .. }
    )
}

/// The server's whole reply behind a driver error, for fields the driver does not model.
pub fn server_response(err: &Error) -> Option<Document> {
    err.server_response()
        .and_then(|raw| Document::try_from(raw.as_ref()).ok())
}

/// Asserts `result` failed with server error `code`; returns the error.
#[track_caller]
pub fn expect_code<T: std::fmt::Debug>(result: mongodb::error::Result<T>, code: i32) -> Error {
    match result {
        Ok(v) => panic!("expected error {code}, got success {v:?}"),
        Err(e) => {
            assert_eq!(error_code(&e), Some(code), "unexpected error: {e}");
            e
        }
    }
}

/// Polls `probe` until it yields a value or `limit` passes.
pub async fn poll_until<T, F, Fut>(limit: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A numeric BSON value as f64 (int32, int64 or double), for fields whose exact numeric type
/// mongod does not document.
pub fn num(v: Option<&Bson>) -> f64 {
    match v {
        Some(Bson::Int32(n)) => f64::from(*n),
        Some(Bson::Int64(n)) => *n as f64,
        Some(Bson::Double(n)) => *n,
        other => panic!("expected a number, got {other:?}"),
    }
}

/// Collects a cursor into a vector, failing the test on any error.
pub async fn collect(cursor: mongodb::Cursor<Document>) -> Vec<Document> {
    use futures_util::TryStreamExt;
    cursor.try_collect().await.expect("cursor iterates")
}

/// Runs `pipeline` with `aggregate` on `coll` and returns every result document.
pub async fn aggregate(coll: &Collection<Document>, pipeline: Vec<Document>) -> Vec<Document> {
    let cursor = coll.aggregate(pipeline).await.expect("aggregate runs");
    collect(cursor).await
}
