//! Handshake and topology: `hello`/`isMaster` as the primary of a single-node replica set,
//! `ping`, `buildInfo`, `hostInfo`, `serverStatus`, `endSessions`, `replSetGetStatus` (one
//! PRIMARY member with the oplog's optimes), and the test-only `replSetStepDown`.
//!
//! Replies follow mongod 7.0 and the Server Discovery and Monitoring specification: the
//! fields drivers use to classify the server (`setName`, `hosts`, `me`, `primary`,
//! `electionId`, `setVersion`, `topologyVersion`) are always consistent with the URI the
//! server announces.
//!
//! `topologyVersion` is `{processId, counter}`: the process id is fixed for the server's life
//! and the counter moves on every step-down and step-up. A hello carrying `topologyVersion`
//! and `maxAwaitTimeMS` (the SDAM "awaitable hello" of the streaming protocol) is held until
//! the counter moves or the time is up; it waits on a channel, not a thread. `exhaustAllowed`
//! is ignored: each reply comes without `moreToCome` and the driver asks again, as the SDAM
//! specification allows.
//!
//! `replSetStepDown` behaves as since mongod 4.2: connections stay open, commands in
//! progress on other connections fail with InterruptedDueToReplStateChange (11602), writes are
//! refused with NotWritablePrimary while the node is secondary, and awaitable hellos are
//! answered at once with the new topology. When the step-down runs out the node is elected
//! again with a larger `electionId` and the counter moves once more.

use crate::error::{self, CommandError, ErrorCode, Result};
use crate::state::{CommandContext, ConnectionState, Shared};
use bson::oid::ObjectId;
use bson::{Bson, Document, Timestamp, doc};
use std::time::Duration;

/// The server version announced by `buildInfo` and `serverStatus` by default; `ServerOptions`
/// may name another release ([`crate::profile`]).
pub const VERSION: &str = "7.0.14";
const GIT_VERSION: &str = "ce59cfc6a3c5e5c067dca0d30697edd68d4f5188";
/// The default release's `maxWireVersion`.
pub const MAX_WIRE_VERSION: i32 = 21;
pub const MAX_BSON_OBJECT_SIZE: i32 = 16 * 1024 * 1024;
pub const MAX_WRITE_BATCH_SIZE: i32 = 100_000;
pub const LOGICAL_SESSION_TIMEOUT_MINUTES: i32 = 30;
/// Connections mongod would still accept, as reported in `serverStatus.connections`.
const MAX_CONNECTIONS: i64 = 838_860;

/// Commands this module answers.
pub const COMMANDS: &[&str] = &[
    "hello",
    "isMaster",
    "ismaster",
    "ping",
    "buildInfo",
    "buildinfo",
    "hostInfo",
    "serverStatus",
    "endSessions",
    "killSessions",
    "connectionStatus",
    "whatsmyuri",
    "replSetStepDown",
    "replSetGetStatus",
];

/// Runs one of [`COMMANDS`]; only an awaitable hello ever waits.
pub async fn run(
    shared: &Shared,
    conn: &mut ConnectionState,
    ctx: &CommandContext,
    name: &str,
    cmd: &Document,
) -> Result<Document> {
    match name {
        "hello" | "isMaster" | "ismaster" => hello(shared, conn, name, cmd).await,
        "ping" => Ok(Document::new()),
        "buildInfo" | "buildinfo" => Ok(build_info(shared)),
        "hostInfo" => Ok(host_info(shared)),
        "serverStatus" => Ok(server_status(shared)),
        "endSessions" | "killSessions" => Ok(end_sessions(shared, name, cmd)),
        "connectionStatus" => Ok(crate::profile::connection_status(
            shared.options.user.as_ref(),
            cmd,
        )),
        "whatsmyuri" => Ok(doc! {"you": conn.peer.clone()}),
        "replSetStepDown" => repl_set_step_down(shared, ctx, cmd),
        "replSetGetStatus" => repl_set_get_status(shared, ctx, cmd),
        other => Err(CommandError::new(
            error::COMMAND_NOT_FOUND,
            format!("no such command: '{other}'"),
        )),
    }
}

/// `endSessions`/`killSessions` (manual: "endSessions"): the sessions leave the session cache;
/// `killSessions` also forgets their retryable writes. Malformed entries are ignored, as
/// mongod ignores unknown sessions.
fn end_sessions(shared: &Shared, name: &str, cmd: &Document) -> Document {
    let Ok(ids) = cmd.get_array(name) else {
        return Document::new();
    };
    for lsid in ids.iter().filter_map(Bson::as_document) {
        shared.sessions.lock().end(lsid);
        if name == "killSessions" {
            let key = crate::retryable::session_key(lsid);
            shared.data.lock().transactions.forget(&key);
        }
    }
    Document::new()
}

fn last_write(shared: &Shared, term: i64) -> Document {
    let ts = shared.data.lock().oplog.last_ts();
    let date = bson::DateTime::from_millis(ts.time as i64 * 1000);
    let op_time = doc! {"ts": ts, "t": term};
    doc! {
        "opTime": op_time.clone(),
        "lastWriteDate": date,
        "majorityOpTime": op_time,
        "majorityWriteDate": date,
    }
}

/// The `topologyVersion` and `maxAwaitTimeMS` of an awaitable hello, validated as mongod does.
fn awaitable(cmd: &Document) -> Result<Option<(ObjectId, i64, Duration)>> {
    let topology_version = cmd.get("topologyVersion");
    let max_await = cmd.get("maxAwaitTimeMS");
    let (topology_version, max_await) = match (topology_version, max_await) {
        (None, None) => return Ok(None),
        (Some(tv), Some(ms)) => (tv, ms),
        (Some(_), None) => {
            return Err(CommandError::from_code(
                31368,
                "A request with a 'topologyVersion' must include 'maxAwaitTimeMS'",
            ));
        }
        (None, Some(_)) => {
            return Err(CommandError::from_code(
                31368,
                "A request with 'maxAwaitTimeMS' must include a 'topologyVersion'",
            ));
        }
    };
    let Bson::Document(tv) = topology_version else {
        return Err(crate::fields::wrong_type(
            "hello",
            "topologyVersion",
            topology_version,
            "object",
        ));
    };
    let process_id = match tv.get("processId") {
        Some(Bson::ObjectId(id)) => *id,
        Some(other) => {
            return Err(crate::fields::wrong_type(
                "TopologyVersion",
                "processId",
                other,
                "objectId",
            ));
        }
        None => return Err(crate::fields::missing("TopologyVersion", "processId")),
    };
    let counter = match tv.get("counter") {
        Some(v @ Bson::Int64(_)) | Some(v @ Bson::Int32(_)) | Some(v @ Bson::Double(_)) => {
            crate::bsontype::as_i64(v).unwrap_or(-1)
        }
        Some(other) => {
            return Err(crate::fields::wrong_type(
                "TopologyVersion",
                "counter",
                other,
                "long",
            ));
        }
        None => return Err(crate::fields::missing("TopologyVersion", "counter")),
    };
    if counter < 0 {
        return Err(CommandError::from_code(
            31372,
            "topologyVersion must have a non-negative counter",
        ));
    }
    let ms = match crate::bsontype::as_i64(max_await) {
        Some(ms) if ms >= 0 => ms as u64,
        Some(_) => {
            return Err(CommandError::from_code(
                31373,
                "maxAwaitTimeMS must be a non-negative integer",
            ));
        }
        None => {
            return Err(crate::fields::wrong_type(
                "hello",
                "maxAwaitTimeMS",
                max_await,
                "long",
            ));
        }
    };
    Ok(Some((process_id, counter, Duration::from_millis(ms))))
}

/// Holds an awaitable hello until the topology differs from the client's `topologyVersion`
/// or `max_await` has passed (SDAM, "Streaming Protocol"). A step-down that runs out during
/// the wait is a change: the wait ends then, when the new election happens.
async fn await_topology_change(
    shared: &Shared,
    process_id: ObjectId,
    counter: i64,
    max_await: Duration,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + max_await;
    loop {
        let (mut changes, stepped_down_until) = {
            let mut topology = shared.topology.lock();
            // Applies an election that is due, which moves the counter.
            topology.is_primary();
            let current = topology.counter();
            if process_id != topology.process_id || counter < current {
                return Ok(());
            }
            if counter > current {
                return Err(CommandError::from_code(
                    31382,
                    format!(
                        "Received a topology version with the same process ID and larger counter than the server's topology version ({counter} > {current})"
                    ),
                ));
            }
            (topology.subscribe_changes(), topology.stepped_down_until)
        };
        if tokio::time::Instant::now() >= deadline {
            return Ok(());
        }
        let wake = match stepped_down_until {
            Some(until) => deadline.min(tokio::time::Instant::from_std(until)),
            None => deadline,
        };
        // Woken by a change, the election time or the deadline: the loop decides which.
        let _ = tokio::time::timeout_at(wake, changes.changed()).await;
    }
}

/// `hello` (manual: "hello"); `isMaster` answers the same with `ismaster` in place of
/// `isWritablePrimary`.
async fn hello(
    shared: &Shared,
    conn: &mut ConnectionState,
    name: &str,
    cmd: &Document,
) -> Result<Document> {
    if let Some(client) = cmd.get("client") {
        // The metadata may only be given once per connection (handshake spec, "client").
        if conn.handshake_done {
            return Err(CommandError::from_code(
                186,
                "The client metadata document may only be sent in the first hello",
            )
            .with_code_name("ClientMetadataCannotBeMutated"));
        }
        let Bson::Document(client) = client else {
            return Err(crate::fields::wrong_type(name, "client", client, "object"));
        };
        conn.app_name = client
            .get_document("application")
            .ok()
            .and_then(|a| a.get_str("name").ok())
            .map(str::to_string);
    }
    conn.handshake_done = true;
    if let Some((process_id, counter, max_await)) = awaitable(cmd)? {
        await_topology_change(shared, process_id, counter, max_await).await?;
    }
    let (primary, set_version, election_id, term, topology_version) = {
        let mut topology = shared.topology.lock();
        (
            topology.is_primary(),
            topology.set_version,
            topology.election_id,
            topology.term,
            topology.topology_version(),
        )
    };
    let mut reply = Document::new();
    if matches!(cmd.get("helloOk"), Some(v) if crate::bsontype::as_bool(v) == Some(true)) {
        reply.insert("helloOk", true);
    }
    reply.insert("hosts", vec![shared.host.clone()]);
    reply.insert("setName", shared.options.replica_set.clone());
    reply.insert("setVersion", set_version);
    reply.insert("topologyVersion", topology_version);
    let writable_field = if name == "hello" {
        "isWritablePrimary"
    } else {
        "ismaster"
    };
    reply.insert(writable_field, primary);
    reply.insert("secondary", !primary);
    if primary {
        reply.insert("primary", shared.host.clone());
    }
    reply.insert("me", shared.host.clone());
    if primary {
        reply.insert("electionId", election_id);
    }
    reply.insert("lastWrite", last_write(shared, term));
    reply.insert("maxBsonObjectSize", MAX_BSON_OBJECT_SIZE);
    reply.insert("maxMessageSizeBytes", crate::wire::MAX_MESSAGE_SIZE as i32);
    reply.insert("maxWriteBatchSize", MAX_WRITE_BATCH_SIZE);
    reply.insert("localTime", bson::DateTime::now());
    reply.insert(
        "logicalSessionTimeoutMinutes",
        LOGICAL_SESSION_TIMEOUT_MINUTES,
    );
    reply.insert("connectionId", conn.id);
    reply.insert("minWireVersion", 0);
    reply.insert(
        "maxWireVersion",
        shared.options.release.version.max_wire_version(),
    );
    reply.insert("readOnly", false);
    Ok(reply)
}

fn build_info(shared: &Shared) -> Document {
    let version = shared.options.release.version;
    doc! {
        "version": version.to_string(),
        "gitVersion": GIT_VERSION,
        "modules": [],
        "allocator": "tcmalloc",
        "javascriptEngine": "mozjs",
        "sysInfo": "deprecated",
        "versionArray": version.version_array(),
        "openssl": {"running": "disabled", "compiled": "disabled"},
        "buildEnvironment": {},
        "bits": 64,
        "debug": false,
        "maxBsonObjectSize": MAX_BSON_OBJECT_SIZE,
        "storageEngines": ["devnull", "inMemory", "wiredTiger"],
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".to_string())
}

fn host_info(shared: &Shared) -> Document {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get() as i32)
        .unwrap_or(1);
    doc! {
        "system": {
            "currentTime": bson::DateTime::now(),
            "hostname": host_name(),
            "cpuAddrSize": 64,
            "memSizeMB": 0i64,
            "memLimitMB": 0i64,
            "numCores": cores,
            "cpuArch": std::env::consts::ARCH,
            "numaEnabled": false,
        },
        "os": {"type": std::env::consts::OS, "name": std::env::consts::OS, "version": ""},
        "extra": {"host": shared.host.clone()},
    }
}

fn server_status(shared: &Shared) -> Document {
    let uptime = shared.started.elapsed();
    let (current, total, primary, ops) = {
        let mut t = shared.topology.lock();
        (
            t.connections_current,
            t.connections_total_created,
            t.is_primary(),
            t.opcounters,
        )
    };
    let mut repl = doc! {
        "setName": shared.options.replica_set.clone(),
        "isWritablePrimary": primary,
        "secondary": !primary,
        "hosts": [shared.host.clone()],
    };
    if primary {
        repl.insert("primary", shared.host.clone());
    }
    repl.insert("me", shared.host.clone());
    doc! {
        "host": shared.host.clone(),
        "version": shared.options.release.version.to_string(),
        "process": "mongod",
        "pid": std::process::id() as i64,
        "uptime": uptime.as_secs_f64().floor(),
        "uptimeMillis": uptime.as_millis() as i64,
        "uptimeEstimate": uptime.as_secs() as i64,
        "localTime": bson::DateTime::now(),
        "connections": {
            "current": current as i32,
            "available": (MAX_CONNECTIONS - current) as i32,
            "totalCreated": total as i32,
        },
        "opcounters": {
            "insert": ops[0], "query": ops[1], "update": ops[2],
            "delete": ops[3], "getmore": ops[4], "command": ops[5],
        },
        "repl": repl,
        "storageEngine": {"name": "inMemory", "supportsCommittedReads": true, "persistent": false},
    }
}

/// `replSetStepDown: <secs>` (manual: "replSetStepDown"): the node becomes a secondary for
/// that many seconds, commands in progress elsewhere are interrupted (connections stay open,
/// as since mongod 4.2), then it is elected again.
fn repl_set_step_down(shared: &Shared, ctx: &CommandContext, cmd: &Document) -> Result<Document> {
    if ctx.db != "admin" {
        return Err(CommandError::from_code(
            13,
            "replSetStepDown may only be run against the admin database.",
        )
        .with_code_name("Unauthorized"));
    }
    let secs = match cmd.get("replSetStepDown") {
        Some(v) => match crate::bsontype::as_i64(v) {
            Some(n) if n >= 0 => n as u64,
            _ => {
                return Err(crate::fields::wrong_type(
                    "replSetStepDown",
                    "stepDownSecs",
                    v,
                    "long",
                ));
            }
        },
        None => 60,
    };
    let mut topology = shared.topology.lock();
    if !topology.is_primary() {
        return Err(CommandError::new(
            error::NOT_WRITABLE_PRIMARY,
            "not primary so can't step down",
        ));
    }
    topology.step_down(secs);
    Ok(Document::new())
}

/// `replSetGetStatus`: one PRIMARY member, with the oplog's first and last optimes.
///
/// The oldest retained entry is not part of mongod's reply; clients read it from
/// `local.oplog.rs`.
fn repl_set_get_status(shared: &Shared, ctx: &CommandContext, cmd: &Document) -> Result<Document> {
    let _ = cmd;
    if ctx.db != "admin" {
        return Err(CommandError::new(
            ErrorCode {
                code: 13,
                name: "Unauthorized",
            },
            "replSetGetStatus may only be run against the admin database",
        ));
    }
    let (last_ts, last_wall) = {
        let data = shared.data.lock();
        let oplog = &data.oplog;
        let wall = oplog
            .entries()
            .back()
            .map_or_else(bson::DateTime::now, |e| e.wall);
        (oplog.last_ts(), wall)
    };
    let now = std::time::SystemTime::now();
    let uptime = shared.started.elapsed();
    let elected = now.checked_sub(uptime).unwrap_or(now);
    let elected_secs = elected
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let election_time = Timestamp {
        time: u32::try_from(elected_secs).unwrap_or(u32::MAX),
        increment: 1,
    };
    let optime = doc! {"ts": last_ts, "t": 1i64};
    let optime_date = bson::DateTime::from_millis(i64::from(last_ts.time) * 1000);
    Ok(doc! {
        "set": shared.options.replica_set.clone(),
        "date": bson::DateTime::from_system_time(now),
        "myState": 1,
        "term": 1i64,
        "syncSourceHost": "",
        "syncSourceId": -1,
        "heartbeatIntervalMillis": 2000i64,
        "majorityVoteCount": 1,
        "writeMajorityCount": 1,
        "votingMembersCount": 1,
        "writableVotingMembersCount": 1,
        "optimes": {
            "lastCommittedOpTime": optime.clone(),
            "lastCommittedWallTime": last_wall,
            "readConcernMajorityOpTime": optime.clone(),
            "appliedOpTime": optime.clone(),
            "durableOpTime": optime.clone(),
            "lastAppliedWallTime": last_wall,
            "lastDurableWallTime": last_wall,
        },
        "members": [{
            "_id": 0,
            "name": shared.host.clone(),
            "health": 1.0,
            "state": 1,
            "stateStr": "PRIMARY",
            "uptime": i32::try_from(uptime.as_secs()).unwrap_or(i32::MAX),
            "optime": optime,
            "optimeDate": optime_date,
            "lastAppliedWallTime": last_wall,
            "lastDurableWallTime": last_wall,
            "syncSourceHost": "",
            "syncSourceId": -1,
            "infoMessage": "",
            "electionTime": election_time,
            "electionDate": bson::DateTime::from_system_time(elected),
            "configVersion": 1,
            "configTerm": 1,
            "self": true,
            "lastHeartbeatMessage": "",
        }],
    })
}

trait WithCodeName {
    fn with_code_name(self, name: &str) -> Self;
}

impl WithCodeName for CommandError {
    fn with_code_name(mut self, name: &str) -> Self {
        self.code_name = name.to_string();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ServerOptions;
    use std::time::Instant;

    fn shared() -> Shared {
        Shared::new(ServerOptions::default(), "127.0.0.1:4000".to_string())
    }

    fn conn() -> ConnectionState {
        ConnectionState::new(5, "127.0.0.1:5555".to_string())
    }

    fn ctx(db: &str) -> CommandContext {
        CommandContext {
            db: db.to_string(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn hello_describes_a_writable_primary_of_the_named_set() {
        let s = shared();
        let mut c = conn();
        let cmd = doc! {"hello": 1, "helloOk": true, "client": {"application": {"name": "app"}}};
        let r = run(&s, &mut c, &ctx("admin"), "hello", &cmd).await.unwrap();
        assert!(r.get_bool("helloOk").unwrap());
        assert!(r.get_bool("isWritablePrimary").unwrap());
        assert!(!r.contains_key("ismaster"));
        assert!(!r.get_bool("secondary").unwrap());
        assert_eq!(r.get_str("setName").unwrap(), "rs0");
        assert_eq!(r.get_str("primary").unwrap(), "127.0.0.1:4000");
        assert_eq!(r.get_str("me").unwrap(), "127.0.0.1:4000");
        assert_eq!(r.get_i32("maxWireVersion").unwrap(), 21);
        assert_eq!(r.get_i32("logicalSessionTimeoutMinutes").unwrap(), 30);
        assert_eq!(r.get_i64("connectionId").unwrap(), 5);
        let tv = r.get_document("topologyVersion").unwrap();
        assert_eq!(
            tv.get_object_id("processId").unwrap(),
            s.topology.lock().process_id
        );
        assert_eq!(tv.get_i64("counter").unwrap(), 0);
        assert_eq!(
            r.get_object_id("electionId").unwrap().to_hex(),
            "7fffffff0000000000000001"
        );
        assert_eq!(c.app_name.as_deref(), Some("app"));
        // Metadata may not be sent again.
        let err = run(&s, &mut c, &ctx("admin"), "hello", &cmd)
            .await
            .unwrap_err();
        assert_eq!(err.code, 186);
    }

    #[tokio::test]
    async fn is_master_uses_the_legacy_field_and_no_hello_ok_unless_asked() {
        let s = shared();
        let r = run(
            &s,
            &mut conn(),
            &ctx("admin"),
            "isMaster",
            &doc! {"isMaster": 1},
        )
        .await
        .unwrap();
        assert!(r.get_bool("ismaster").unwrap());
        assert!(!r.contains_key("isWritablePrimary"));
        assert!(!r.contains_key("helloOk"));
    }

    #[tokio::test]
    async fn step_down_makes_a_secondary_without_primary_then_a_new_election() {
        let s = shared();
        let mut rx = s.topology.lock().subscribe_interrupts();
        let err = run(
            &s,
            &mut conn(),
            &ctx("test"),
            "replSetStepDown",
            &doc! {"replSetStepDown": 1},
        )
        .await
        .unwrap_err();
        assert_eq!((err.code, err.code_name.as_str()), (13, "Unauthorized"));
        run(
            &s,
            &mut conn(),
            &ctx("admin"),
            "replSetStepDown",
            &doc! {"replSetStepDown": 60},
        )
        .await
        .unwrap();
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        let r = run(&s, &mut conn(), &ctx("admin"), "hello", &doc! {"hello": 1})
            .await
            .unwrap();
        assert!(!r.get_bool("isWritablePrimary").unwrap());
        assert!(r.get_bool("secondary").unwrap());
        assert!(!r.contains_key("primary"));
        let counter = |r: &Document| {
            r.get_document("topologyVersion")
                .unwrap()
                .get_i64("counter")
                .unwrap()
        };
        assert_eq!(counter(&r), 1);
        // Time passes: the step-down runs out and a new term begins.
        s.topology.lock().stepped_down_until = Some(Instant::now());
        let r = run(&s, &mut conn(), &ctx("admin"), "hello", &doc! {"hello": 1})
            .await
            .unwrap();
        assert!(r.get_bool("isWritablePrimary").unwrap());
        assert_eq!(
            r.get_object_id("electionId").unwrap().to_hex(),
            "7fffffff0000000000000002"
        );
        assert_eq!(counter(&r), 2);
    }

    fn awaitable(tv: &Document, ms: i64) -> Document {
        doc! {"hello": 1, "topologyVersion": tv.clone(), "maxAwaitTimeMS": ms}
    }

    async fn hello_cmd(s: &Shared, cmd: &Document) -> Result<Document> {
        run(s, &mut conn(), &ctx("admin"), "hello", cmd).await
    }

    #[tokio::test]
    async fn awaitable_hello_waits_for_a_topology_change_or_its_time_limit() {
        let s = shared();
        let tv = s.topology.lock().topology_version();
        // Nothing changes: answered once maxAwaitTimeMS has passed, with the same version.
        let started = Instant::now();
        let r = hello_cmd(&s, &awaitable(&tv, 100)).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert_eq!(r.get_document("topologyVersion").unwrap(), &tv);
        // Another process's version, or an older counter: answered at once.
        let other = doc! {"processId": ObjectId::new(), "counter": 0i64};
        let limit = Duration::from_secs(30);
        tokio::time::timeout(limit, hello_cmd(&s, &awaitable(&other, 600_000)))
            .await
            .expect("answered at once")
            .unwrap();
        // A step-down answers a waiting hello with the new topology.
        let cmd = awaitable(&tv, 600_000);
        let mut waiting = std::pin::pin!(hello_cmd(&s, &cmd));
        assert!(
            futures_util::poll!(waiting.as_mut()).is_pending(),
            "the hello waits for a change"
        );
        s.topology.lock().step_down(1);
        let r = tokio::time::timeout(limit, waiting).await.unwrap().unwrap();
        assert!(!r.get_bool("isWritablePrimary").unwrap());
        assert!(!r.contains_key("primary"));
        let tv1 = r.get_document("topologyVersion").unwrap().clone();
        assert_eq!(tv1.get_i64("counter").unwrap(), 1);
        // The election that ends the step-down answers the next one.
        let r = tokio::time::timeout(limit, hello_cmd(&s, &awaitable(&tv1, 600_000)))
            .await
            .expect("answered at the election")
            .unwrap();
        assert!(r.get_bool("isWritablePrimary").unwrap());
        let tv2 = r.get_document("topologyVersion").unwrap();
        assert_eq!(tv2.get_i64("counter").unwrap(), 2);
        assert_eq!(
            tv2.get_object_id("processId").unwrap(),
            s.topology.lock().process_id
        );
    }

    #[tokio::test]
    async fn awaitable_hello_arguments_are_checked() {
        let s = shared();
        let tv = s.topology.lock().topology_version();
        let err = hello_cmd(&s, &doc! {"hello": 1, "topologyVersion": tv.clone()})
            .await
            .unwrap_err();
        assert_eq!(err.code, 31368);
        let err = hello_cmd(&s, &doc! {"hello": 1, "maxAwaitTimeMS": 10})
            .await
            .unwrap_err();
        assert_eq!(err.code, 31368);
        let err = hello_cmd(&s, &awaitable(&tv, -1)).await.unwrap_err();
        assert_eq!(err.code, 31373);
        let ahead = doc! {"processId": s.topology.lock().process_id, "counter": 5i64};
        let err = hello_cmd(&s, &awaitable(&ahead, 10)).await.unwrap_err();
        assert_eq!(err.code, 31382);
    }

    #[test]
    fn build_info_reports_mongod_7() {
        let r = build_info(&shared());
        assert_eq!(r.get_str("version").unwrap(), "7.0.14");
        assert_eq!(
            r.get_array("versionArray").unwrap(),
            &vec![
                Bson::Int32(7),
                Bson::Int32(0),
                Bson::Int32(14),
                Bson::Int32(0)
            ]
        );
    }

    #[test]
    fn repl_set_get_status_reports_one_primary_on_admin_only() {
        let s = shared();
        let insert = crate::oplog::OplogOp::Insert {
            ns: crate::oplog::Namespace::new("db", "c"),
            document: std::sync::Arc::new(doc! {"_id": 1}),
        };
        let last = s.data.lock().oplog.record(insert, None);
        let cmd = doc! {"replSetGetStatus": 1};
        let err = repl_set_get_status(&s, &ctx("db"), &cmd).unwrap_err();
        assert_eq!(err.code, 13);
        assert_eq!(err.code_name, "Unauthorized");
        let reply = repl_set_get_status(&s, &ctx("admin"), &cmd).unwrap();
        assert_eq!(reply.get_str("set").unwrap(), "rs0");
        assert_eq!(reply.get_i32("myState").unwrap(), 1);
        let optimes = reply.get_document("optimes").unwrap();
        assert_eq!(
            optimes.get_document("appliedOpTime").unwrap(),
            &doc! {"ts": last, "t": 1i64}
        );
        let members = reply.get_array("members").unwrap();
        assert_eq!(members.len(), 1);
        let Bson::Document(me) = &members[0] else {
            panic!("member is a document")
        };
        assert_eq!(me.get_str("stateStr").unwrap(), "PRIMARY");
        assert_eq!(me.get_str("name").unwrap(), "127.0.0.1:4000");
        assert!(me.get_bool("self").unwrap());
    }
}
