//! The wire protocol and the handshake over a real socket: the official driver sees a
//! replica-set primary, defective messages close only their own connection, and the
//! `failCommand` fail point behaves as mongod's.

use bson::{Bson, Document, doc};
use mongo_sim::wire::{self, Request};
use mongo_sim::{MongoSim, ServerOptions};
use mongodb::Client;
use mongodb::error::ErrorKind;
use mongodb::options::ClientOptions;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;

use common::poll_until;

async fn server() -> MongoSim {
    mongo_sim::server::start_default()
        .await
        .expect("server starts")
}

async fn client(sim: &MongoSim, app_name: Option<&str>) -> Client {
    let mut options = ClientOptions::parse(sim.uri()).await.expect("uri parses");
    options.server_selection_timeout = Some(Duration::from_secs(10));
    // ShutdownInProgress (91, used below) marks the server Unknown. A 4.4+ server streams
    // hello, and the monitor may not check again before its awaitable hello is answered
    // (server monitoring spec, "Requesting an immediate check"), which mongod does after
    // maxAwaitTimeMS, that is heartbeatFrequencyMS: with the default 10 s, as long as the
    // selection timeout, the next command could time out. Keep the heartbeat well under it.
    options.heartbeat_freq = Some(Duration::from_millis(500));
    options.app_name = app_name.map(str::to_string);
    Client::with_options(options).expect("client")
}

async fn run(client: &Client, db: &str, cmd: Document) -> mongodb::error::Result<Document> {
    client.database(db).run_command(cmd).await
}

fn command_code(err: &mongodb::error::Error) -> Option<i32> {
    match &*err.kind {
        ErrorKind::Command(e) => Some(e.code),
        _ => None,
    }
}

async fn connect(sim: &MongoSim) -> TcpStream {
    TcpStream::connect(("127.0.0.1", sim.port()))
        .await
        .expect("connects")
}

/// Sends `bytes` and reads one reply; `None` when the server closed the connection.
async fn exchange(stream: &mut TcpStream, bytes: &[u8]) -> Option<Vec<u8>> {
    stream.write_all(bytes).await.ok()?;
    wire::read_message(stream).await.ok().flatten()
}

fn op_msg_body(reply: &[u8]) -> Document {
    match wire::decode(reply).expect("reply decodes") {
        Request::Msg(m) => m.body,
        other => panic!("unexpected reply {other:?}"),
    }
}

/// The next reply on `stream`, which must come within 30 s and not be a hang-up.
async fn read_reply(stream: &mut TcpStream) -> Document {
    let reply = tokio::time::timeout(Duration::from_secs(30), wire::read_message(stream))
        .await
        .expect("a reply in time")
        .unwrap()
        .expect("a reply, not a closed connection");
    op_msg_body(&reply)
}

async fn assert_closed(stream: &mut TcpStream) {
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("server closes the connection");
    assert!(matches!(read, Ok(0) | Err(_)), "expected EOF, got {read:?}");
}

async fn assert_driver_works(client: &Client) {
    let pong = run(client, "admin", doc! {"ping": 1}).await.expect("ping");
    assert_eq!(pong.get_f64("ok").unwrap(), 1.0);
    let hello = run(client, "admin", doc! {"hello": 1})
        .await
        .expect("hello");
    assert!(hello.get_bool("isWritablePrimary").unwrap());
}

#[tokio::test]
async fn driver_sees_a_replica_set_primary() {
    let sim = server().await;
    assert_eq!(
        sim.uri(),
        format!("mongodb://127.0.0.1:{}/?replicaSet=rs0", sim.port())
    );
    let client = client(&sim, None).await;
    let hello = run(&client, "admin", doc! {"hello": 1}).await.unwrap();
    assert_eq!(hello.get_str("setName").unwrap(), "rs0");
    assert_eq!(hello.get_str("primary").unwrap(), sim.host());
    assert_eq!(hello.get_str("me").unwrap(), sim.host());
    assert_eq!(
        hello.get_array("hosts").unwrap(),
        &vec![Bson::String(sim.host().to_string())]
    );
    assert!(hello.get_timestamp("operationTime").is_ok());
    let info = run(&client, "admin", doc! {"buildInfo": 1}).await.unwrap();
    assert_eq!(info.get_str("version").unwrap(), "7.0.14");
    let status = run(&client, "admin", doc! {"serverStatus": 1})
        .await
        .unwrap();
    assert_eq!(status.get_str("process").unwrap(), "mongod");
    assert!(
        status
            .get_document("connections")
            .unwrap()
            .get_i32("current")
            .unwrap()
            >= 1
    );
    let err = run(&client, "admin", doc! {"frobnicate": 1})
        .await
        .unwrap_err();
    assert_eq!(command_code(&err), Some(59));
    sim.shutdown().await;
}

#[tokio::test]
async fn defective_messages_close_only_their_connection() {
    let sim = server().await;
    let client = client(&sim, None).await;
    assert_driver_works(&client).await;

    let mut garbage = connect(&sim).await;
    garbage
        .write_all(b"this is certainly not a mongodb message at all")
        .await
        .unwrap();
    assert_closed(&mut garbage).await;

    let mut unknown_opcode = connect(&sim).await;
    let mut bytes = wire::encode_op_msg(1, 0, 0, &doc! {"ping": 1, "$db": "admin"}, &[]);
    bytes[12..16].copy_from_slice(&2012i32.to_le_bytes());
    unknown_opcode.write_all(&bytes).await.unwrap();
    assert_closed(&mut unknown_opcode).await;

    // The length promises more than is ever sent.
    let mut truncated = connect(&sim).await;
    let bytes = wire::encode_op_msg(1, 0, 0, &doc! {"ping": 1, "$db": "admin"}, &[]);
    truncated
        .write_all(&bytes[..bytes.len() - 3])
        .await
        .unwrap();
    truncated.shutdown().await.unwrap();
    assert_closed(&mut truncated).await;

    // A section runs past the end of the message.
    let mut bad_section = connect(&sim).await;
    let mut bytes = wire::encode_op_msg(1, 0, 0, &doc! {"ping": 1, "$db": "admin"}, &[]);
    bytes[21..25].copy_from_slice(&1000i32.to_le_bytes());
    bad_section.write_all(&bytes).await.unwrap();
    assert_closed(&mut bad_section).await;

    let mut oversized = connect(&sim).await;
    let mut header = Vec::new();
    header.extend_from_slice(&48_000_001i32.to_le_bytes());
    header.extend_from_slice(&[0u8; 12]);
    oversized.write_all(&header).await.unwrap();
    assert_closed(&mut oversized).await;

    assert_driver_works(&client).await;
    sim.shutdown().await;
}

#[tokio::test]
async fn checksummed_op_msg_is_answered_with_a_checksum() {
    let sim = server().await;
    let mut stream = connect(&sim).await;
    let request = wire::encode_op_msg(
        42,
        0,
        wire::FLAG_CHECKSUM_PRESENT,
        &doc! {"ping": 1, "$db": "admin"},
        &[],
    );
    let reply = exchange(&mut stream, &request).await.expect("a reply");
    let Request::Msg(msg) = wire::decode(&reply).expect("reply checksum verifies") else {
        panic!("not an OP_MSG")
    };
    assert!(msg.checksum_present());
    assert_eq!(msg.header.response_to, 42);
    assert_eq!(msg.body.get_f64("ok").unwrap(), 1.0);

    // A wrong checksum closes the connection.
    let mut request = request;
    let n = request.len();
    request[n - 1] ^= 0x55;
    assert!(exchange(&mut stream, &request).await.is_none());
}

#[tokio::test]
async fn more_to_come_requests_get_no_reply() {
    let sim = server().await;
    let mut stream = connect(&sim).await;
    let silent = wire::encode_op_msg(
        1,
        0,
        wire::FLAG_MORE_TO_COME,
        &doc! {"ping": 1, "$db": "admin"},
        &[],
    );
    stream.write_all(&silent).await.unwrap();
    let answered = wire::encode_op_msg(2, 0, 0, &doc! {"ping": 1, "$db": "admin"}, &[]);
    let reply = exchange(&mut stream, &answered).await.expect("a reply");
    let header = wire::parse_header(&reply).unwrap();
    assert_eq!(
        header.response_to, 2,
        "the first reply answers the second request"
    );
}

#[tokio::test]
async fn document_sequences_arrive_as_arrays() {
    let sim = server().await;
    let mut stream = connect(&sim).await;
    let docs = [doc! {"a": 1}, doc! {"b": 2}];
    let ping = wire::encode_op_msg(
        1,
        0,
        0,
        &doc! {"ping": 1, "$db": "admin"},
        &[("documents", &docs)],
    );
    let body = op_msg_body(&exchange(&mut stream, &ping).await.expect("a reply"));
    assert_eq!(body.get_f64("ok").unwrap(), 1.0);

    // hello's `client` must be an object: the sequence shows up as an array.
    let hello = wire::encode_op_msg(
        2,
        0,
        0,
        &doc! {"hello": 1, "$db": "admin"},
        &[("client", &docs)],
    );
    let body = op_msg_body(&exchange(&mut stream, &hello).await.expect("a reply"));
    assert_eq!(body.get_i32("code").unwrap(), 14);
    assert!(
        body.get_str("errmsg").unwrap().contains("'array'"),
        "{body}"
    );

    // The same field in the body and a sequence is a protocol error.
    let duplicate = wire::encode_op_msg(
        3,
        0,
        0,
        &doc! {"ping": 1, "$db": "admin", "documents": []},
        &[("documents", &docs)],
    );
    assert!(exchange(&mut stream, &duplicate).await.is_none());
}

#[tokio::test]
async fn legacy_op_query_is_only_for_the_handshake() {
    let sim = server().await;
    let mut stream = connect(&sim).await;
    let query = wire::encode_op_query(9, "admin.$cmd", &doc! {"isMaster": 1, "helloOk": true});
    let reply = exchange(&mut stream, &query).await.expect("a reply");
    let (header, body) = wire::decode_op_reply(&reply).unwrap();
    assert_eq!(header.response_to, 9);
    assert!(body.get_bool("ismaster").unwrap());
    assert!(body.get_bool("helloOk").unwrap());
    assert_eq!(body.get_str("setName").unwrap(), "rs0");

    let query = wire::encode_op_query(10, "admin.$cmd", &doc! {"ping": 1});
    let reply = exchange(&mut stream, &query).await.expect("a reply");
    let (_, body) = wire::decode_op_reply(&reply).unwrap();
    assert_eq!(body.get_i32("code").unwrap(), 352);
    assert_eq!(
        body.get_str("codeName").unwrap(),
        "UnsupportedOpQueryCommand"
    );
    assert!(body.get_str("errmsg").unwrap().starts_with(
        "Unsupported OP_QUERY command: ping. The client driver may require an upgrade."
    ));
}

#[tokio::test]
async fn fail_point_modes_through_the_driver() {
    let sim = server().await;
    let client = client(&sim, None).await;
    let configure = |mode: Bson, data: Document| {
        doc! {"configureFailPoint": "failCommand", "mode": mode, "data": data}
    };

    let reply = run(
        &client,
        "admin",
        configure(
            doc! {"times": 2}.into(),
            doc! {"failCommands": ["ping"], "errorCode": 91},
        ),
    )
    .await
    .unwrap();
    assert_eq!(reply.get_i32("count").unwrap(), 0);
    // Unlisted commands pass and do not count down.
    run(&client, "admin", doc! {"buildInfo": 1}).await.unwrap();
    for _ in 0..2 {
        let err = run(&client, "admin", doc! {"ping": 1}).await.unwrap_err();
        assert_eq!(command_code(&err), Some(91));
        assert!(err.labels().is_empty());
    }
    run(&client, "admin", doc! {"ping": 1}).await.unwrap();

    run(
        &client,
        "admin",
        configure(
            doc! {"skip": 1}.into(),
            doc! {"failCommands": ["buildInfo"], "errorCode": 8, "errorLabels": ["Custom"]},
        ),
    )
    .await
    .unwrap();
    run(&client, "admin", doc! {"buildInfo": 1}).await.unwrap();
    for _ in 0..2 {
        let err = run(&client, "admin", doc! {"buildInfo": 1})
            .await
            .unwrap_err();
        assert_eq!(command_code(&err), Some(8));
        assert!(err.contains_label("Custom"));
    }

    let reply = run(&client, "admin", configure("off".into(), doc! {}))
        .await
        .unwrap();
    assert_eq!(reply.get_i32("count").unwrap(), 4);
    run(&client, "admin", doc! {"buildInfo": 1}).await.unwrap();

    // alwaysOn, narrowed to one application name.
    run(
        &client,
        "admin",
        configure(
            "alwaysOn".into(),
            doc! {"failCommands": ["ping"], "errorCode": 2, "appName": "victim"},
        ),
    )
    .await
    .unwrap();
    run(&client, "admin", doc! {"ping": 1}).await.unwrap();
    let victim = self::client(&sim, Some("victim")).await;
    for _ in 0..3 {
        let err = run(&victim, "admin", doc! {"ping": 1}).await.unwrap_err();
        assert_eq!(command_code(&err), Some(2));
    }

    // Only on admin, and only failCommand.
    let err = run(&client, "test", configure("off".into(), doc! {}))
        .await
        .unwrap_err();
    assert_eq!(command_code(&err), Some(13));
    let err = run(
        &client,
        "admin",
        doc! {"configureFailPoint": "somethingElse", "mode": "off"},
    )
    .await
    .unwrap_err();
    assert_eq!(command_code(&err), Some(115));
    sim.shutdown().await;
}

#[tokio::test]
async fn close_connection_fail_point_drops_the_socket_and_the_server_keeps_serving() {
    let sim = server().await;
    let client = client(&sim, None).await;
    run(
        &client,
        "admin",
        doc! {"configureFailPoint": "failCommand", "mode": {"times": 1},
        "data": {"failCommands": ["ping"], "closeConnection": true}},
    )
    .await
    .unwrap();
    let err = run(&client, "admin", doc! {"ping": 1}).await.unwrap_err();
    assert!(
        matches!(&*err.kind, ErrorKind::Io(_)),
        "expected a network error, got {err:?}"
    );
    assert_driver_works(&client).await;
    sim.shutdown().await;
}

#[tokio::test]
async fn block_connection_does_not_block_other_connections() {
    let sim = server().await;
    let admin = client(&sim, None).await;
    run(
        &admin,
        "admin",
        doc! {"configureFailPoint": "failCommand", "mode": {"times": 1},
        "data": {"failCommands": ["ping"], "blockConnection": true,
                 "blockTimeMS": 3000, "appName": "slow"}},
    )
    .await
    .unwrap();
    let mut slow = connect(&sim).await;
    let hello = wire::encode_op_msg(
        1,
        0,
        0,
        &doc! {"hello": 1, "$db": "admin", "client": {"application": {"name": "slow"}}},
        &[],
    );
    exchange(&mut slow, &hello).await.expect("a reply");
    let started = Instant::now();
    let ping = wire::encode_op_msg(2, 0, 0, &doc! {"ping": 1, "$db": "admin"}, &[]);
    slow.write_all(&ping).await.unwrap();

    let mut other = connect(&sim).await;
    let body = op_msg_body(&exchange(&mut other, &ping).await.expect("a reply"));
    assert_eq!(body.get_f64("ok").unwrap(), 1.0);
    // The other connection was answered while the slow one is still blocked: its reply is
    // not there yet.
    let pending = tokio::time::timeout(Duration::ZERO, wire::read_message(&mut slow)).await;
    assert!(pending.is_err(), "the blocked connection answered first");
    run(&admin, "admin", doc! {"ping": 1}).await.unwrap();

    let reply = wire::read_message(&mut slow)
        .await
        .unwrap()
        .expect("a reply");
    assert_eq!(op_msg_body(&reply).get_f64("ok").unwrap(), 1.0);
    assert!(started.elapsed() >= Duration::from_millis(3000));
    sim.shutdown().await;
}

// Manual: "replSetStepDown" — since 4.2 the step-down closes no connection; the node is a
// secondary for the period, then the single node is elected again with a larger electionId
// and a new topologyVersion.
#[tokio::test]
async fn step_down_keeps_connections_and_a_new_primary_is_elected() {
    let sim = server().await;
    let client = client(&sim, None).await;
    let before = run(&client, "admin", doc! {"hello": 1}).await.unwrap();
    let version_before = before.get_document("topologyVersion").unwrap().clone();
    let mut idle = connect(&sim).await;

    let reply = run(&client, "admin", doc! {"replSetStepDown": 2})
        .await
        .unwrap();
    assert_eq!(reply.get_f64("ok").unwrap(), 1.0);

    // The connection opened before the step-down still answers, now as a secondary.
    let hello = wire::encode_op_msg(1, 0, 0, &doc! {"hello": 1, "$db": "admin"}, &[]);
    let body = op_msg_body(&exchange(&mut idle, &hello).await.expect("a reply"));
    assert!(!body.get_bool("isWritablePrimary").unwrap());
    assert!(body.get_bool("secondary").unwrap());
    assert!(!body.contains_key("primary"));
    assert!(!body.contains_key("electionId"));
    let during = body.get_document("topologyVersion").unwrap();
    assert_eq!(
        during.get_object_id("processId").unwrap(),
        version_before.get_object_id("processId").unwrap()
    );
    assert!(during.get_i64("counter").unwrap() > version_before.get_i64("counter").unwrap());
    let insert = wire::encode_op_msg(
        2,
        0,
        0,
        &doc! {"insert": "c", "documents": [{"_id": 1}], "$db": "test"},
        &[],
    );
    let body = op_msg_body(&exchange(&mut idle, &insert).await.expect("a reply"));
    assert_eq!(body.get_i32("code").unwrap(), 10107, "{body}");

    // The driver's pooled connection is still good; it waits in server selection until the
    // node is primary again.
    let after = run(&client, "admin", doc! {"hello": 1}).await.unwrap();
    assert!(after.get_bool("isWritablePrimary").unwrap());
    assert!(
        after.get_object_id("electionId").unwrap() > before.get_object_id("electionId").unwrap()
    );
    let version_after = after.get_document("topologyVersion").unwrap();
    assert!(version_after.get_i64("counter").unwrap() > during.get_i64("counter").unwrap());
    let status = run(&client, "admin", doc! {"serverStatus": 1})
        .await
        .unwrap();
    let created = status
        .get_document("connections")
        .unwrap()
        .get_i32("totalCreated")
        .unwrap();
    let body = op_msg_body(&exchange(&mut idle, &hello).await.expect("a reply"));
    assert!(body.get_bool("isWritablePrimary").unwrap());
    // No connection was replaced: the driver's monitors, its pool and the raw one.
    let again = run(&client, "admin", doc! {"serverStatus": 1})
        .await
        .unwrap();
    assert_eq!(
        again
            .get_document("connections")
            .unwrap()
            .get_i32("totalCreated")
            .unwrap(),
        created
    );
    sim.shutdown().await;
}

/// `serverStatus.opcounters.getmore`: the getMores the server has begun.
fn get_mores(status: &Document) -> i64 {
    status
        .get_document("opcounters")
        .unwrap()
        .get_i64("getmore")
        .unwrap()
}

/// One check of the driver's server monitor, as its SDAM events report it.
#[derive(Debug, Clone)]
enum Heartbeat {
    Started { awaited: bool },
    Succeeded { awaited: bool, reply: Document },
    Failed,
}

/// The monitor's checks so far, in order.
type Heartbeats = std::sync::Arc<std::sync::Mutex<Vec<Heartbeat>>>;

fn topology_version(reply: &Document) -> Option<&Document> {
    reply.get_document("topologyVersion").ok()
}

/// Whether the reply to a monitor's check says the server is the primary.
fn says_primary(beat: &Heartbeat) -> Option<bool> {
    match beat {
        Heartbeat::Succeeded { reply, .. } => reply.get_bool("isWritablePrimary").ok(),
        _ => None,
    }
}

/// Awaitable hellos answered with nothing new: each awaitable hello carries the
/// `topologyVersion` of the reply before it, and the server must hold it until that changes
/// (or `maxAwaitTimeMS`, far beyond a test, passes). An answer that changes nothing has the
/// driver ask again at once, in a tight loop.
fn answered_without_a_change(beats: &[Heartbeat]) -> Vec<Document> {
    let mut asked_with: Option<Document> = None;
    let mut wrong = Vec::new();
    for beat in beats {
        match beat {
            Heartbeat::Succeeded { awaited, reply } => {
                let answered = topology_version(reply).cloned();
                if *awaited && answered.is_some() && answered == asked_with {
                    wrong.push(reply.clone());
                }
                asked_with = answered;
            }
            Heartbeat::Failed => asked_with = None,
            Heartbeat::Started { .. } => {}
        }
    }
    wrong
}

// SDAM "Streaming Protocol": the driver streams hello once it sees topologyVersion; the
// server holds each awaitable hello until the topology changes, so an idle or stepped-down
// server is not asked in a tight loop, and a step-down, and the election that ends it, reach
// the driver without waiting for the next heartbeat.
#[tokio::test]
async fn awaitable_hellos_do_not_spin_and_report_a_step_down_at_once() {
    use mongodb::event::EventHandler;
    use mongodb::event::sdam::SdamEvent;

    let sim = server().await;
    let heartbeats = Heartbeats::default();
    let mut options = ClientOptions::parse(sim.uri()).await.expect("uri parses");
    options.server_selection_timeout = Some(Duration::from_secs(10));
    // Far beyond the test: only streaming can report the step-down in time.
    options.heartbeat_freq = Some(Duration::from_secs(60));
    options.sdam_event_handler = Some(EventHandler::callback({
        let heartbeats = heartbeats.clone();
        move |event: SdamEvent| {
            let beat = match event {
                SdamEvent::ServerHeartbeatStarted(e) => Heartbeat::Started { awaited: e.awaited },
                SdamEvent::ServerHeartbeatSucceeded(e) => Heartbeat::Succeeded {
                    awaited: e.awaited,
                    reply: e.reply,
                },
                SdamEvent::ServerHeartbeatFailed(_) => Heartbeat::Failed,
                _ => return,
            };
            heartbeats.lock().unwrap().push(beat);
        }
    }));
    let client = Client::with_options(options).expect("client");
    assert_driver_works(&client).await;
    let beats = || heartbeats.lock().unwrap().clone();

    // Idle: the monitor's awaitable hello stays unanswered while other commands come and go.
    let limit = Duration::from_secs(30);
    let streaming = poll_until(limit, "an awaitable hello", || async {
        beats()
            .iter()
            .rposition(|b| matches!(b, Heartbeat::Started { awaited: true }))
    })
    .await;
    for _ in 0..10 {
        run(&client, "admin", doc! {"serverStatus": 1})
            .await
            .unwrap();
    }
    let answered = beats()[streaming + 1..].to_vec();
    assert!(
        answered.is_empty(),
        "an awaitable hello was answered although nothing changed: {:?}",
        answered.first()
    );

    // The step-down answers it at once: the driver learns of it from the held hello.
    run(&client, "admin", doc! {"replSetStepDown": 3})
        .await
        .unwrap();
    let secondary = poll_until(limit, "the driver to see the step-down", || async {
        beats().into_iter().find(|b| says_primary(b) == Some(false))
    })
    .await;
    assert!(
        matches!(secondary, Heartbeat::Succeeded { awaited: true, .. }),
        "{secondary:?}"
    );
    // Writes work again after the election, which the held hello reports too.
    run(&client, "admin", doc! {"ping": 1}).await.unwrap();
    client
        .database("test")
        .collection::<Document>("c")
        .insert_one(doc! {"_id": 1})
        .await
        .expect("a write after the election");
    let beats = beats();
    let stepped_down = beats
        .iter()
        .position(|b| says_primary(b) == Some(false))
        .unwrap();
    let elected = beats[stepped_down..]
        .iter()
        .find(|b| says_primary(b) == Some(true));
    assert!(
        matches!(elected, Some(Heartbeat::Succeeded { awaited: true, .. })),
        "the election reached the driver through an awaitable hello: {elected:?}"
    );
    // Neither while primary nor while stepped down was an awaitable hello answered early.
    let early = answered_without_a_change(&beats);
    assert!(
        early.is_empty(),
        "{} awaitable hellos answered with nothing new, the first: {:?}",
        early.len(),
        early.first()
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn many_idle_connections_do_not_starve_the_driver() {
    let sim = server().await;
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(connect(&sim).await);
    }
    let client = client(&sim, None).await;
    assert_driver_works(&client).await;
    let status = run(&client, "admin", doc! {"serverStatus": 1})
        .await
        .unwrap();
    let current = status
        .get_document("connections")
        .unwrap()
        .get_i32("current")
        .unwrap();
    assert!(current >= 1000, "{current}");
    drop(idle);
    sim.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_connections_and_releases_the_port() {
    let sim = mongo_sim::server::start_default().await.unwrap();
    let port = sim.port();
    let mut stream = connect(&sim).await;
    sim.shutdown().await;
    assert_closed(&mut stream).await;
    assert!(TcpStream::connect(("127.0.0.1", port)).await.is_err());
}

#[test]
fn own_runtime_serves_synchronous_callers() {
    let sim = MongoSim::start_on_own_runtime(ServerOptions::default()).unwrap();
    let port = sim.port();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = client(&sim, None).await;
        assert_driver_works(&client).await;
    });
    drop(sim);
    runtime.block_on(async {
        assert!(TcpStream::connect(("127.0.0.1", port)).await.is_err());
    });
}

// Manual: "replSetStepDown" — commands in progress are killed with
// InterruptedDueToReplStateChange (11602); their connections stay open.
#[tokio::test]
async fn step_down_interrupts_commands_still_waiting() {
    let sim = server().await;
    let admin = client(&sim, None).await;
    let blocking = doc! {"configureFailPoint": "failCommand", "mode": "alwaysOn",
    "data": {"failCommands": ["ping"], "blockConnection": true,
             "blockTimeMS": 60_000, "appName": "waiting"}};
    run(&admin, "admin", blocking.clone()).await.unwrap();
    let mut waiting = connect(&sim).await;
    let hello = wire::encode_op_msg(
        1,
        0,
        0,
        &doc! {"hello": 1, "$db": "admin", "client": {"application": {"name": "waiting"}}},
        &[],
    );
    exchange(&mut waiting, &hello).await.expect("a reply");
    let ping = wire::encode_op_msg(2, 0, 0, &doc! {"ping": 1, "$db": "admin"}, &[]);
    waiting.write_all(&ping).await.unwrap();

    // A change stream's getMore waiting for events.
    let mut stream = connect(&sim).await;
    let open = wire::encode_op_msg(
        1,
        0,
        0,
        &doc! {"aggregate": "c", "pipeline": [{"$changeStream": {}}], "cursor": {}, "$db": "test"},
        &[],
    );
    let body = op_msg_body(&exchange(&mut stream, &open).await.expect("a reply"));
    let id = body.get_document("cursor").unwrap().get_i64("id").unwrap();
    let get_more = wire::encode_op_msg(
        2,
        0,
        0,
        &doc! {"getMore": id, "collection": "c", "maxTimeMS": 60_000, "$db": "test"},
        &[],
    );
    stream.write_all(&get_more).await.unwrap();
    // Both wait in the server before the step-down: the ping has hit its fail point, which
    // fires after the command listens for step-downs (setting the fail point again, as it is,
    // reports how often it fired), and the getMore is counted, in the same step in which it
    // starts listening.
    poll_until(
        Duration::from_secs(30),
        "the ping and the getMore",
        || async {
            let fired = run(&admin, "admin", blocking.clone()).await.unwrap();
            let status = run(&admin, "admin", doc! {"serverStatus": 1})
                .await
                .unwrap();
            let pings = fired.get_i32("count").unwrap();
            let get_mores = get_mores(&status);
            (pings == 1 && get_mores == 1).then_some(())
        },
    )
    .await;

    let mut other = connect(&sim).await;
    let step_down = wire::encode_op_msg(3, 0, 0, &doc! {"replSetStepDown": 1, "$db": "admin"}, &[]);
    let body = op_msg_body(&exchange(&mut other, &step_down).await.expect("a reply"));
    assert_eq!(body.get_f64("ok").unwrap(), 1.0);

    let body = read_reply(&mut waiting).await;
    assert_eq!(body.get_i32("code").unwrap(), 11602, "{body}");
    assert_eq!(
        body.get_str("codeName").unwrap(),
        "InterruptedDueToReplStateChange"
    );
    let body = read_reply(&mut stream).await;
    assert_eq!(body.get_i32("code").unwrap(), 11602, "{body}");
    assert_eq!(
        body.get_array("errorLabels").unwrap(),
        &vec![Bson::String("ResumableChangeStreamError".into())]
    );
    // The interrupted getMore destroyed its cursor, as in mongod.
    let kill = wire::encode_op_msg(
        3,
        0,
        0,
        &doc! {"killCursors": "c", "cursors": [id], "$db": "test"},
        &[],
    );
    let body = op_msg_body(&exchange(&mut stream, &kill).await.expect("a reply"));
    assert_eq!(
        body.get_array("cursorsNotFound").unwrap(),
        &vec![Bson::Int64(id)],
        "{body}"
    );

    // Every connection is still open.
    run(
        &admin,
        "admin",
        doc! {"configureFailPoint": "failCommand", "mode": "off"},
    )
    .await
    .unwrap();
    for conn in [&mut waiting, &mut stream, &mut other] {
        let body = op_msg_body(&exchange(conn, &ping).await.expect("still open"));
        assert_eq!(body.get_f64("ok").unwrap(), 1.0);
    }
    sim.shutdown().await;
}

// Change-streams spec, "Resumable Error": a change stream survives a step-down; the driver
// resumes it once the node is primary again and sees the writes made after.
#[tokio::test]
async fn a_change_stream_resumes_across_a_step_down() {
    use futures_util::StreamExt;
    let sim = server().await;
    let client = client(&sim, None).await;
    let coll = client.database("test").collection::<Document>("c");
    let mut stream = coll.watch().await.expect("change stream opens");
    coll.insert_one(doc! {"_id": 1}).await.unwrap();
    let event = stream.next().await.expect("an event").expect("no error");
    assert_eq!(event.document_key, Some(doc! {"_id": 1}));
    let status = || run(&client, "admin", doc! {"serverStatus": 1});
    let before = get_mores(&status().await.unwrap());
    let next = tokio::spawn(async move { stream.next().await.map(|e| e.map(|e| e.document_key)) });
    // The stream's next getMore waits in the server before the step-down.
    poll_until(Duration::from_secs(30), "the stream's getMore", || async {
        (get_mores(&status().await.unwrap()) > before).then_some(())
    })
    .await;
    run(&client, "admin", doc! {"replSetStepDown": 1})
        .await
        .unwrap();
    coll.insert_one(doc! {"_id": 2})
        .await
        .expect("the write waits for the election");
    let key = tokio::time::timeout(Duration::from_secs(30), next)
        .await
        .expect("the stream resumed")
        .unwrap()
        .expect("an event")
        .expect("no error");
    assert_eq!(key, Some(doc! {"_id": 2}));
    sim.shutdown().await;
}

// OP_MSG spec, `exhaustAllowed`: a getMore so flagged is answered with a stream of replies,
// each with `moreToCome` and answering the previous one, until the cursor is exhausted.
#[tokio::test]
async fn exhaust_get_more_streams_the_rest_of_the_cursor() {
    let sim = server().await;
    let mut stream = connect(&sim).await;
    let docs: Vec<Document> = (0..25).map(|i| doc! {"_id": i}).collect();
    let insert = wire::encode_op_msg(
        1,
        0,
        0,
        &doc! {"insert": "c", "documents": docs, "$db": "db"},
        &[],
    );
    exchange(&mut stream, &insert).await.expect("a reply");
    let find = wire::encode_op_msg(
        2,
        0,
        0,
        &doc! {"find": "c", "batchSize": 10, "$db": "db"},
        &[],
    );
    let reply = op_msg_body(&exchange(&mut stream, &find).await.expect("a reply"));
    let id = reply.get_document("cursor").unwrap().get_i64("id").unwrap();
    let get_more = wire::encode_op_msg(
        3,
        0,
        wire::FLAG_EXHAUST_ALLOWED,
        &doc! {"getMore": id, "collection": "c", "batchSize": 10, "$db": "db"},
        &[],
    );
    stream.write_all(&get_more).await.unwrap();
    let mut response_to = 3;
    let mut seen = 10;
    loop {
        let bytes = wire::read_message(&mut stream)
            .await
            .unwrap()
            .expect("a reply");
        let Request::Msg(msg) = wire::decode(&bytes).unwrap() else {
            panic!("not an OP_MSG");
        };
        assert_eq!(msg.header.response_to, response_to);
        response_to = msg.header.request_id;
        let cursor = msg.body.get_document("cursor").unwrap();
        seen += cursor.get_array("nextBatch").unwrap().len();
        let open = cursor.get_i64("id").unwrap() != 0;
        assert_eq!(msg.more_to_come(), open);
        if !open {
            break;
        }
    }
    assert_eq!(seen, 25);
    // The connection serves ordinary commands afterwards.
    let ping = wire::encode_op_msg(4, 0, 0, &doc! {"ping": 1, "$db": "admin"}, &[]);
    assert!(exchange(&mut stream, &ping).await.is_some());
}
