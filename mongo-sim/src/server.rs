//! The TCP listener and the in-process API: [`MongoSim::start`] binds, serves connections
//! until shut down, and reports the URI drivers connect with.
//!
//! Each connection is one task that reads a message, runs it and writes the reply; idle
//! connections, and awaitable hellos waiting for a topology change, cost only a parked task.
//! A step-down closes no connection (as since mongod 4.2): it interrupts the commands in
//! progress, which dispatch answers with an error.

use crate::dispatch::{self, Outcome};
use crate::error::CommandError;
use crate::state::{ConnectionState, ServerOptions, Shared};
use crate::wire::{self, Request};
use bson::{Bson, Document};
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running server.
pub struct MongoSim {
    uri: String,
    host: String,
    port: u16,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    accept_task: Option<JoinHandle<()>>,
    /// The dedicated thread of [`MongoSim::start_on_own_runtime`].
    runtime_thread: Option<std::thread::JoinHandle<()>>,
}

/// Starts a server with [`ServerOptions::default`] (a free port on 127.0.0.1, set `rs0`).
pub async fn start_default() -> io::Result<MongoSim> {
    MongoSim::start(ServerOptions::default()).await
}

impl MongoSim {
    /// Starts a server with [`ServerOptions::default`] on the current tokio runtime.
    pub async fn start_default() -> io::Result<MongoSim> {
        MongoSim::start(ServerOptions::default()).await
    }

    /// Binds and starts serving on the current tokio runtime.
    pub async fn start(options: ServerOptions) -> std::io::Result<MongoSim> {
        let listener = TcpListener::bind((options.bind.as_str(), options.port)).await?;
        let port = listener.local_addr()?.port();
        let host = format!("{}:{port}", options.bind);
        let uri = format!("mongodb://{host}/?replicaSet={}", options.replica_set);
        let shared = Arc::new(Shared::new(options, host.clone()));
        // A fresh primary has written its election no-op: cluster time starts non-zero.
        shared.data.lock().oplog.tick();
        let (stop, stop_rx) = watch::channel(false);
        let accept_task = tokio::spawn(accept_loop(listener, shared.clone(), stop_rx));
        tracing::info!(%uri, "mongo-sim listening");
        Ok(MongoSim {
            uri,
            host,
            port,
            shared,
            stop,
            accept_task: Some(accept_task),
            runtime_thread: None,
        })
    }

    /// Starts the server on a thread with its own multi-thread runtime, for callers without
    /// one (synchronous tests, benchmarks). Shutdown or drop stops that runtime.
    pub fn start_on_own_runtime(options: ServerOptions) -> io::Result<MongoSim> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("mongo-sim".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .thread_name("mongo-sim-worker")
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                runtime.block_on(async move {
                    match MongoSim::start(options).await {
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                        Ok(mut sim) => {
                            let accept = sim.accept_task.take();
                            let mut stop_rx = sim.stop.subscribe();
                            let parts = (
                                sim.uri.clone(),
                                sim.host.clone(),
                                sim.port,
                                sim.shared.clone(),
                                sim.stop.clone(),
                            );
                            if ready_tx.send(Ok(parts)).is_err() {
                                return;
                            }
                            stopped_signal(&mut stop_rx).await;
                            if let Some(accept) = accept {
                                let _ = accept.await;
                            }
                            drop(sim);
                        }
                    }
                });
                runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            })?;
        match ready_rx.recv() {
            Ok(Ok((uri, host, port, shared, stop))) => Ok(MongoSim {
                uri,
                host,
                port,
                shared,
                stop,
                accept_task: None,
                runtime_thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(io::Error::other("mongo-sim runtime thread failed to start"))
            }
        }
    }

    /// `mongodb://HOST:PORT/?replicaSet=NAME`.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `BIND:PORT`, as announced in `hello`.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The server's state, for tests that inspect or prepare it directly.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stops accepting, closes every connection and waits for the listener to be released.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(accept) = self.accept_task.take() {
            let _ = accept.await;
        }
        if let Some(thread) = self.runtime_thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for MongoSim {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(accept) = self.accept_task.take() {
            accept.abort();
        }
        if let Some(thread) = self.runtime_thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let mut stopped = stop.clone();
    loop {
        tokio::select! {
            _ = stopped_signal(&mut stopped) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let shared = shared.clone();
                    let stop = stop.clone();
                    tokio::spawn(async move {
                        serve_connection(stream, peer.to_string(), shared, stop).await;
                    });
                }
                Err(e) => {
                    // Out of file descriptors and similar: keep serving the others.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::task::yield_now().await;
                }
            },
        }
    }
    tracing::info!("mongo-sim stopped accepting connections");
}

/// Resolves once the server is told to stop (the guard `wait_for` returns is not `Send`).
async fn stopped_signal(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

static NEXT_REQUEST_ID: AtomicI32 = AtomicI32::new(1);

fn next_request_id() -> i32 {
    NEXT_REQUEST_ID.fetch_add(1, Ordering::Relaxed)
}

struct ConnectionCount<'a>(&'a Shared);

impl<'a> ConnectionCount<'a> {
    fn open(shared: &'a Shared) -> Self {
        let mut t = shared.topology.lock();
        t.connections_current += 1;
        t.connections_total_created += 1;
        Self(shared)
    }
}

impl Drop for ConnectionCount<'_> {
    fn drop(&mut self) {
        self.0.topology.lock().connections_current -= 1;
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: String,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let _count = ConnectionCount::open(&shared);
    let _ = stream.set_nodelay(true);
    let conn = ConnectionState::new(shared.next_connection_id(), peer);
    let id = conn.id;
    tokio::select! {
        _ = stopped_signal(&mut stop) => {}
        _ = connection_loop(stream, conn, &shared) => {}
    }
    tracing::debug!(connection = id, "connection closed");
}

async fn connection_loop(stream: TcpStream, mut conn: ConnectionState, shared: &Arc<Shared>) {
    let (read_half, mut write_half) = stream.into_split();
    let mut reader = BufReader::new(read_half);
    loop {
        let message = match wire::read_message(&mut reader).await {
            Ok(Some(m)) => m,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(connection = conn.id, error = %e, "closing connection");
                return;
            }
        };
        let request = match wire::decode(&message) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(connection = conn.id, error = %e, "closing connection");
                return;
            }
        };
        let bytes = match request {
            Request::Msg(msg)
                if msg.flags & wire::FLAG_EXHAUST_ALLOWED != 0 && is_get_more(&msg) =>
            {
                if stream_get_more(shared, &mut conn, msg, &mut write_half).await {
                    continue;
                }
                return;
            }
            Request::Msg(msg) => {
                let more_to_come = msg.more_to_come();
                let checksum = msg.checksum_present();
                let request_id = msg.header.request_id;
                // exhaustAllowed on a hello is not honoured: each reply is a single one,
                // without moreToCome, and the client sends its next awaitable hello itself.
                match dispatch::run_command(shared, &mut conn, msg.body).await {
                    Outcome::CloseConnection => {
                        tracing::info!(connection = conn.id, "closing connection (fail point)");
                        return;
                    }
                    // moreToCome: the client expects no reply.
                    Outcome::Reply(_) if more_to_come => continue,
                    Outcome::Reply(reply) => {
                        // mongod checksums its reply when the request carried one.
                        let flags = if checksum {
                            wire::FLAG_CHECKSUM_PRESENT
                        } else {
                            0
                        };
                        wire::encode_op_msg(next_request_id(), request_id, flags, &reply, &[])
                    }
                }
            }
            Request::Query(query) => {
                let request_id = query.header.request_id;
                match legacy_query(shared, &mut conn, query).await {
                    Some(reply) => wire::encode_op_reply(next_request_id(), request_id, &reply),
                    None => return,
                }
            }
        };
        if let Err(e) = write_half.write_all(&bytes).await {
            tracing::debug!(connection = conn.id, error = %e, "write failed");
            return;
        }
    }
}

fn is_get_more(msg: &wire::OpMsg) -> bool {
    msg.body.keys().next().is_some_and(|k| k == "getMore")
}

/// An exhaust getMore (OP_MSG spec, `exhaustAllowed`): while the cursor stays open, each
/// reply goes with `moreToCome` and the server runs the same getMore again, answering to its
/// own previous reply, until a batch closes the cursor or a command fails. False when the
/// connection must close.
async fn stream_get_more(
    shared: &Arc<Shared>,
    conn: &mut ConnectionState,
    msg: wire::OpMsg,
    write_half: &mut tokio::net::tcp::OwnedWriteHalf,
) -> bool {
    let checksum = if msg.checksum_present() {
        wire::FLAG_CHECKSUM_PRESENT
    } else {
        0
    };
    let mut response_to = msg.header.request_id;
    loop {
        let reply = match dispatch::run_command(shared, conn, msg.body.clone()).await {
            Outcome::Reply(reply) => reply,
            Outcome::CloseConnection => return false,
        };
        let open = reply
            .get_document("cursor")
            .ok()
            .and_then(|c| c.get("id"))
            .and_then(crate::bsontype::as_i64)
            .is_some_and(|id| id != 0);
        let flags = checksum | if open { wire::FLAG_MORE_TO_COME } else { 0 };
        let request_id = next_request_id();
        let bytes = wire::encode_op_msg(request_id, response_to, flags, &reply, &[]);
        if write_half.write_all(&bytes).await.is_err() {
            return false;
        }
        if !open {
            return true;
        }
        response_to = request_id;
    }
}

/// OP_QUERY is answered only for the handshake on `<db>.$cmd` (manual: "Legacy Opcodes");
/// anything else fails as mongod 7.0 fails it. `None` closes the connection.
async fn legacy_query(
    shared: &Arc<Shared>,
    conn: &mut ConnectionState,
    query: wire::OpQuery,
) -> Option<Document> {
    let mut cmd = match query.query.get("$query") {
        Some(Bson::Document(inner)) => inner.clone(),
        _ => query.query.clone(),
    };
    let name = cmd.keys().next().cloned().unwrap_or_default();
    let db = query.full_collection_name.strip_suffix(".$cmd");
    let handshake = matches!(name.as_str(), "hello" | "isMaster" | "ismaster");
    match db {
        Some(db) if handshake => {
            cmd.insert("$db", db);
            match dispatch::run_command(shared, conn, cmd).await {
                Outcome::Reply(reply) => Some(reply),
                Outcome::CloseConnection => None,
            }
        }
        _ => {
            let shown = if db.is_some() {
                name
            } else {
                "find".to_string()
            };
            let mut e = CommandError::from_code(
                352,
                format!(
                    "Unsupported OP_QUERY command: {shown}. The client driver may require an upgrade. For more details see https://dochub.mongodb.org/core/legacy-opcode-removal"
                ),
            );
            e.code_name = "UnsupportedOpQueryCommand".to_string();
            Some(e.to_reply())
        }
    }
}
