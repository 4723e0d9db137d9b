//! The server's shared state: data, cursors, fail points and topology, each behind its own
//! lock, plus the notification that wakes change-stream `getMore`s waiting for new writes; and
//! what one connection and one command carry to the handlers.

use crate::cursor::Cursors;
use crate::failpoint::FailPoints;
use crate::storage::Data;
use crate::topology::Topology;
use parking_lot::Mutex;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Instant;
use tokio::sync::watch;

/// How the server was asked to run.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Address to bind (`127.0.0.1`).
    pub bind: String,
    /// Port to bind; 0 picks a free one.
    pub port: u16,
    /// Replica set name announced in `hello` (`rs0`).
    pub replica_set: String,
    /// How many oplog entries are retained before the oldest are dropped. Small values let
    /// tests provoke `ChangeStreamHistoryLost`.
    pub oplog_capacity: usize,
    /// The release announced (`buildInfo`, `hello`) and the aggregation operators refused
    /// ([`crate::profile`]); a current mongod by default.
    pub release: crate::profile::Release,
    /// The user every connection is authenticated as, with access control on; `None`: access
    /// control off, as a mongod without `--auth`.
    pub user: Option<crate::profile::SimulatedUser>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1".to_string(),
            port: 0,
            replica_set: "rs0".to_string(),
            oplog_capacity: 1_000_000,
            release: crate::profile::Release::default(),
            user: None,
        }
    }
}

/// Everything the connection tasks share.
pub struct Shared {
    pub options: ServerOptions,
    /// `host:port` as announced in `hello` (`hosts`, `me`, `primary`).
    pub host: String,
    pub data: Mutex<Data>,
    pub cursors: Mutex<Cursors>,
    pub failpoints: Mutex<FailPoints>,
    pub topology: Mutex<Topology>,
    /// Sessions commands used (`$listLocalSessions`).
    pub sessions: Mutex<crate::sessions::SessionCache>,
    /// The open cursors that are change streams, so that a failed `getMore` on one is labelled
    /// `ResumableChangeStreamError` where mongod labels it.
    pub(crate) change_stream_cursors: Mutex<HashSet<i64>>,
    /// The oplog's newest sequence number; change-stream getMores wait on changes.
    oplog_head: watch::Sender<u64>,
    next_connection_id: AtomicI64,
    pub started: Instant,
}

impl Shared {
    pub fn new(options: ServerOptions, host: String) -> Self {
        let data = Data::new(options.oplog_capacity);
        Self {
            options,
            host,
            data: Mutex::new(data),
            cursors: Mutex::new(Cursors::default()),
            failpoints: Mutex::new(FailPoints::default()),
            topology: Mutex::new(Topology::new()),
            sessions: Mutex::new(crate::sessions::SessionCache::default()),
            change_stream_cursors: Mutex::new(HashSet::new()),
            oplog_head: watch::channel(0).0,
            next_connection_id: AtomicI64::new(1),
            started: Instant::now(),
        }
    }

    pub fn next_connection_id(&self) -> i64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Wakes waiting change streams if the oplog grew. Called after every command.
    pub fn publish_oplog_head(&self) {
        let head = self.data.lock().oplog.head_seq();
        self.oplog_head.send_if_modified(|cur| {
            if *cur != head {
                *cur = head;
                true
            } else {
                false
            }
        });
    }

    /// A receiver that sees every later change of the oplog head.
    pub fn subscribe_oplog(&self) -> watch::Receiver<u64> {
        self.oplog_head.subscribe()
    }
}

/// What the connection learned about its client, kept across commands.
#[derive(Debug, Clone)]
pub struct ConnectionState {
    pub id: i64,
    /// `client.application.name` from the handshake (matched by `failCommand`'s `appName`).
    pub app_name: Option<String>,
    /// The client's address, for `whatsmyuri`.
    pub peer: String,
    /// A `hello` has been answered; client metadata may not be sent again.
    pub handshake_done: bool,
}

impl ConnectionState {
    pub fn new(id: i64, peer: String) -> Self {
        Self {
            id,
            app_name: None,
            peer,
            handshake_done: false,
        }
    }
}

/// Facts about the command being run that handlers may need.
#[derive(Debug, Clone, Default)]
pub struct CommandContext {
    /// The `$db` of the command.
    pub db: String,
    pub connection_id: i64,
    /// `client.application.name` from this connection's handshake.
    pub app_name: Option<String>,
    /// The session id (`lsid`), when the driver sent one.
    pub lsid: Option<bson::Document>,
    /// `txnNumber` of a retryable write.
    pub txn_number: Option<i64>,
    /// Set for a retryable write command (`insert`, `update`, `delete`, `findAndModify` with
    /// `lsid` and `txnNumber`): its statements are recorded and replayed.
    pub retryable: Option<crate::retryable::RetryableWrite>,
    /// A fail point asked for the connection to be closed once the command has run.
    pub hang_up: Arc<AtomicBool>,
}

impl CommandContext {
    /// Asks for the connection to be closed, without a reply, once the command has run.
    pub fn request_hang_up(&self) {
        self.hang_up.store(true, Ordering::Relaxed);
    }

    /// Whether something asked for the connection to be closed.
    pub fn hang_up_requested(&self) -> bool {
        self.hang_up.load(Ordering::Relaxed)
    }
}
