//! Handshake and topology: the driver must see the primary of replica set `rs0` and every
//! diagnostic command a driver or operator uses must be shaped as mongod's.

mod common;

use common::{num, start};
use mongodb::bson::{Bson, doc};

// Manual: "hello" (output fields of a replica set member) and the SDAM specification.
#[tokio::test]
async fn hello_describes_a_writable_primary_of_rs0() {
    let env = start("hello_describes_primary").await;
    let hello = env.admin(doc! {"hello": 1}).await;
    assert!(hello.get_bool("isWritablePrimary").unwrap(), "{hello}");
    assert!(!hello.get_bool("secondary").unwrap());
    let set_name = hello.get_str("setName").expect("setName");
    if common::real_uri().is_none() {
        assert_eq!(set_name, "rs0");
    }
    let me = hello.get_str("me").expect("me");
    assert_eq!(hello.get_str("primary").unwrap(), me);
    let hosts = hello.get_array("hosts").expect("hosts");
    assert!(hosts.contains(&Bson::String(me.to_string())), "{hello}");
    assert!(
        hello.get_object_id("electionId").is_ok(),
        "electionId: {hello}"
    );
    assert!(hello.get("setVersion").is_some());
    assert!(hello.get_document("topologyVersion").is_ok());
    assert!(
        hello.get_document("lastWrite").is_ok(),
        "lastWrite: {hello}"
    );
    // mongo-sim plays mongod 7.0, wire version 21; a real server of the supported range
    // (6.0 to 8.0) speaks 17 to 25 (specifications, "Server Wire version and Feature List").
    let wire = num(hello.get("maxWireVersion"));
    if common::real_uri().is_none() {
        assert_eq!(wire, 21.0, "{hello}");
    } else {
        assert!(wire >= 17.0, "{hello}");
    }
    assert_eq!(num(hello.get("minWireVersion")), 0.0);
    assert_eq!(num(hello.get("maxBsonObjectSize")), 16_777_216.0);
    assert_eq!(num(hello.get("maxMessageSizeBytes")), 48_000_000.0);
    assert_eq!(num(hello.get("maxWriteBatchSize")), 100_000.0);
    assert!(num(hello.get("logicalSessionTimeoutMinutes")) > 0.0);
    assert!(hello.get_datetime("localTime").is_ok());
    assert!(hello.get("connectionId").is_some());
    assert!(!hello.get_bool("readOnly").unwrap());
    assert_eq!(num(hello.get("ok")), 1.0);
}

// Manual: "hello" — the legacy `isMaster` command reports `ismaster` instead of
// `isWritablePrimary`.
#[tokio::test]
async fn legacy_is_master_reports_ismaster() {
    let env = start("legacy_is_master").await;
    let reply = env.admin(doc! {"isMaster": 1}).await;
    assert!(reply.get_bool("ismaster").unwrap(), "{reply}");
    assert!(reply.get_str("setName").is_ok());
    let reply = env.admin(doc! {"ismaster": 1}).await;
    assert!(reply.get_bool("ismaster").unwrap(), "{reply}");
}

// Manual: "ping".
#[tokio::test]
async fn ping_answers_ok() {
    let env = start("ping_answers_ok").await;
    let reply = env.admin(doc! {"ping": 1}).await;
    assert_eq!(num(reply.get("ok")), 1.0);
}

// Sessions specification: sessions are supported when hello reports
// logicalSessionTimeoutMinutes; change streams need a replica set (manual: "Change Streams").
#[tokio::test]
async fn sessions_and_change_streams_are_allowed() {
    let env = start("sessions_and_streams").await;
    let coll = env.coll("c");
    let mut session = env.client.start_session().await.expect("session starts");
    coll.insert_one(doc! {"_id": 1})
        .session(&mut session)
        .await
        .expect("insert in session");
    let found = coll
        .find_one(doc! {"_id": 1})
        .session(&mut session)
        .await
        .expect("find in session");
    assert_eq!(found, Some(doc! {"_id": 1}));
    assert!(session.operation_time().is_some(), "operationTime gossiped");
    assert!(session.cluster_time().is_some(), "$clusterTime gossiped");
    let stream = coll.watch().await.expect("change stream opens");
    assert!(stream.is_alive());
    env.admin(doc! {"endSessions": [session.id().clone()]})
        .await;
}

// Manual: "Read Isolation, Consistency, and Recency" — replies on a replica set carry
// `operationTime` and `$clusterTime`, and the cluster time advances with writes.
#[tokio::test]
async fn replies_carry_operation_and_cluster_time() {
    let env = start("replies_carry_times").await;
    let first = env
        .run(doc! {"insert": "c", "documents": [{"_id": 1}]})
        .await;
    let second = env
        .run(doc! {"insert": "c", "documents": [{"_id": 2}]})
        .await;
    let t1 = first.get_timestamp("operationTime").expect("operationTime");
    let t2 = second
        .get_timestamp("operationTime")
        .expect("operationTime");
    assert!(t2 > t1, "{t1:?} < {t2:?}");
    let cluster = second.get_document("$clusterTime").expect("$clusterTime");
    assert!(cluster.get_timestamp("clusterTime").unwrap() >= t2);
    assert!(cluster.get_document("signature").is_ok(), "{cluster}");
}

// Manual: "buildInfo".
#[tokio::test]
async fn build_info_is_well_formed() {
    let env = start("build_info").await;
    let info = env.admin(doc! {"buildInfo": 1}).await;
    let version = info.get_str("version").expect("version");
    let parts = info.get_array("versionArray").expect("versionArray");
    assert_eq!(parts.len(), 4, "{info}");
    let major = num(parts.first()) as i64;
    let minor = num(parts.get(1)) as i64;
    assert!(
        version.starts_with(&format!("{major}.{minor}.")),
        "{version} vs {parts:?}"
    );
    assert!(
        major >= 6,
        "a server of the supported range (6.0 on): {version}"
    );
    if common::real_uri().is_none() {
        assert!(
            version.starts_with("7.0."),
            "mongo-sim is mongod 7.0: {version}"
        );
    }
    assert_eq!(num(info.get("maxBsonObjectSize")), 16_777_216.0);
    assert!(info.get_str("gitVersion").is_ok());
    assert_eq!(num(info.get("ok")), 1.0);
    // Drivers send it as buildinfo too.
    let lower = env.admin(doc! {"buildinfo": 1}).await;
    assert_eq!(lower.get_str("version").unwrap(), version);
}

// Manual: "serverStatus" (host, version, process, uptime, connections, repl sections).
#[tokio::test]
async fn server_status_is_well_formed() {
    let env = start("server_status").await;
    let status = env.admin(doc! {"serverStatus": 1}).await;
    assert!(status.get_str("host").is_ok(), "{status}");
    assert!(status.get_str("version").is_ok());
    assert_eq!(status.get_str("process").unwrap(), "mongod");
    assert!(num(status.get("uptime")) >= 0.0);
    assert!(status.get_datetime("localTime").is_ok());
    let connections = status.get_document("connections").expect("connections");
    assert!(num(connections.get("current")) >= 1.0);
    assert!(num(connections.get("available")) >= 0.0);
    assert!(num(connections.get("totalCreated")) >= 1.0);
    let repl = status.get_document("repl").expect("repl");
    assert!(repl.get_str("setName").is_ok());
    assert!(repl.get_bool("isWritablePrimary").unwrap(), "{repl}");
    assert_eq!(num(status.get("ok")), 1.0);
}

// Manual: "listDatabases" (databases[{name, sizeOnDisk, empty}], totalSize, nameOnly, filter).
#[tokio::test]
async fn list_databases_is_well_formed() {
    let env = start("list_databases").await;
    env.coll("c").insert_one(doc! {"x": 1}).await.unwrap();
    let reply = env.admin(doc! {"listDatabases": 1}).await;
    let dbs = reply.get_array("databases").expect("databases");
    let ours = dbs
        .iter()
        .filter_map(Bson::as_document)
        .find(|d| d.get_str("name").ok() == Some(env.db_name.as_str()))
        .unwrap_or_else(|| panic!("{} not listed in {reply}", env.db_name));
    assert!(num(ours.get("sizeOnDisk")) >= 0.0);
    assert!(!ours.get_bool("empty").unwrap());
    assert!(num(reply.get("totalSize")) >= 0.0);
    assert_eq!(num(reply.get("ok")), 1.0);

    let filtered = env
        .admin(doc! {"listDatabases": 1, "nameOnly": true, "filter": {"name": &env.db_name}})
        .await;
    assert_eq!(
        filtered.get_array("databases").unwrap(),
        &vec![Bson::Document(doc! {"name": &env.db_name})],
        "{filtered}"
    );
    let names = env.client.list_database_names().await.unwrap();
    assert!(names.contains(&env.db_name));
}

// Manual: "replSetGetStatus" (set, myState, members[] with stateStr, optime, self).
#[tokio::test]
async fn repl_set_get_status_is_well_formed() {
    let env = start("repl_set_get_status").await;
    env.coll("c").insert_one(doc! {"x": 1}).await.unwrap();
    let hello = env.admin(doc! {"hello": 1}).await;
    let status = env.admin(doc! {"replSetGetStatus": 1}).await;
    assert_eq!(
        status.get_str("set").unwrap(),
        hello.get_str("setName").unwrap()
    );
    assert_eq!(num(status.get("myState")), 1.0, "{status}");
    assert!(status.get_datetime("date").is_ok());
    let members = status.get_array("members").expect("members");
    let me = members
        .iter()
        .filter_map(Bson::as_document)
        .find(|m| m.get_bool("self").unwrap_or(false))
        .expect("a member with self: true");
    assert_eq!(me.get_str("name").unwrap(), hello.get_str("me").unwrap());
    assert_eq!(num(me.get("state")), 1.0);
    assert_eq!(me.get_str("stateStr").unwrap(), "PRIMARY");
    assert_eq!(num(me.get("health")), 1.0);
    let optime = me.get_document("optime").expect("optime");
    assert!(optime.get_timestamp("ts").is_ok(), "{optime}");
    assert!(me.get_datetime("optimeDate").is_ok());
    let optimes = status.get_document("optimes").expect("optimes");
    assert!(optimes.get_document("lastCommittedOpTime").is_ok());
    assert_eq!(num(status.get("ok")), 1.0);
}

// Manual: "Database Commands" — an unknown command fails with 59 CommandNotFound.
#[tokio::test]
async fn unknown_command_is_command_not_found() {
    let env = start("unknown_command").await;
    let (code, reply) = env.run_err(doc! {"noSuchCommandAnywhere": 1}).await;
    assert_eq!(code, 59);
    assert_eq!(reply.get_str("codeName").unwrap(), "CommandNotFound");
    assert!(
        reply
            .get_str("errmsg")
            .unwrap()
            .contains("no such command: 'noSuchCommandAnywhere'"),
        "{reply}"
    );
}

// Handshake specification ("helloOk"): a legacy isMaster sent with helloOk: true is answered
// with helloOk: true so the driver switches to hello.
#[tokio::test]
async fn is_master_with_hello_ok() {
    let env = start("is_master_hello_ok").await;
    let reply = env.admin(doc! {"isMaster": 1, "helloOk": true}).await;
    assert!(reply.get_bool("helloOk").unwrap_or(false), "{reply}");
    assert!(reply.get_bool("ismaster").unwrap());
}
