//! Fault injection with mongod's `failCommand` fail point and the test-only step-down, and how
//! the driver reacts to them (manual: "failCommand" in the server's testing docs; drivers'
//! retryable-writes and SDAM specifications).
//!
//! mongod has fail points only when started with `--setParameter enableTestCommands=1`; a
//! deployment given in MONGODB_URI must be started that way. `failCommand` is one fail point
//! per server, so on a shared deployment these tests take turns ([`fail_point_turn`]) and scope
//! every configuration to their own `appName`.

mod common;

use common::{TestEnv, error_code, fail_point_turn, is_network_error, num, start};
use mongodb::bson::{Bson, doc};
use std::time::{Duration, Instant};

async fn find_result(env: &TestEnv) -> Result<(), Option<i32>> {
    env.db
        .run_command(doc! {"find": "c", "filter": {}})
        .await
        .map(|_| ())
        .map_err(|e| error_code(&e))
}

// failCommand mode {times: n}: the next n matching commands fail, then the fail point is off.
#[tokio::test]
async fn fail_command_times() {
    let env = start("fail_times").await;
    let _turn = fail_point_turn().await;
    env.fail_command(
        doc! {"times": 2}.into(),
        doc! {"failCommands": ["find"], "errorCode": 2},
    )
    .await;
    // Commands not listed are unaffected.
    env.admin(doc! {"ping": 1}).await;
    let err = env
        .db
        .run_command(doc! {"find": "c", "filter": {}})
        .await
        .expect_err("first find fails");
    assert_eq!(error_code(&err), Some(2));
    assert!(err.to_string().contains("failCommand"), "{err}");
    assert_eq!(find_result(&env).await, Err(Some(2)));
    assert_eq!(find_result(&env).await, Ok(()));
    assert_eq!(find_result(&env).await, Ok(()));
}

// failCommand mode {skip: n}: the first n matching commands pass, all later ones fail.
#[tokio::test]
async fn fail_command_skip() {
    let env = start("fail_skip").await;
    let _turn = fail_point_turn().await;
    env.fail_command(
        doc! {"skip": 1}.into(),
        doc! {"failCommands": ["find"], "errorCode": 2},
    )
    .await;
    assert_eq!(find_result(&env).await, Ok(()));
    assert_eq!(find_result(&env).await, Err(Some(2)));
    assert_eq!(find_result(&env).await, Err(Some(2)));
    env.fail_command_off().await;
    assert_eq!(find_result(&env).await, Ok(()));
}

// failCommand modes "alwaysOn" and "off"; configureFailPoint reports the previous count.
#[tokio::test]
async fn fail_command_always_on_then_off() {
    let env = start("fail_always_on").await;
    let _turn = fail_point_turn().await;
    let reply = env
        .admin(
            doc! {"configureFailPoint": "failCommand", "mode": "alwaysOn",
            "data": {"failCommands": ["find"], "errorCode": 2, "appName": &env.app_name}},
        )
        .await;
    assert!(reply.get("count").is_some(), "{reply}");
    for _ in 0..3 {
        assert_eq!(find_result(&env).await, Err(Some(2)));
    }
    env.fail_command_off().await;
    assert_eq!(find_result(&env).await, Ok(()));
}

// failCommand errorLabels: the labels given are attached to the error reply.
#[tokio::test]
async fn fail_command_error_labels() {
    let env = start("fail_error_labels").await;
    let _turn = fail_point_turn().await;
    env.fail_command(
        doc! {"times": 1}.into(),
        doc! {"failCommands": ["find"], "errorCode": 112, "errorLabels": ["TransientTransactionError"]},
    )
    .await;
    let err = env
        .db
        .run_command(doc! {"find": "c", "filter": {}})
        .await
        .expect_err("find fails");
    assert_eq!(error_code(&err), Some(112));
    assert!(err.contains_label("TransientTransactionError"), "{err}");
    let raw = common::server_response(&err).expect("raw reply");
    assert_eq!(
        raw.get_array("errorLabels").unwrap(),
        &vec![Bson::from("TransientTransactionError")]
    );
    assert_eq!(raw.get_str("codeName").unwrap(), "WriteConflict");
}

// failCommand closeConnection: the server closes the socket without replying; the driver
// sees a network error and the next command works on a new connection.
#[tokio::test]
async fn fail_command_close_connection() {
    let env = start("fail_close_connection").await;
    let _turn = fail_point_turn().await;
    env.fail_command(
        doc! {"times": 1}.into(),
        doc! {"failCommands": ["find"], "closeConnection": true},
    )
    .await;
    let err = env
        .db
        .run_command(doc! {"find": "c", "filter": {}})
        .await
        .expect_err("find sees a closed connection");
    assert!(
        is_network_error(&err),
        "expected a network error, got {err}"
    );
    assert_eq!(error_code(&err), None);
    assert_eq!(find_result(&env).await, Ok(()));
}

// failCommand blockConnection/blockTimeMS: the command is delayed at least blockTimeMS, then
// runs (or fails with errorCode when one is given).
#[tokio::test]
async fn fail_command_block_connection() {
    let env = start("fail_block_connection").await;
    let _turn = fail_point_turn().await;
    env.fail_command(
        doc! {"times": 1}.into(),
        doc! {"failCommands": ["find"], "blockConnection": true, "blockTimeMS": 300},
    )
    .await;
    let started = Instant::now();
    assert_eq!(find_result(&env).await, Ok(()));
    assert!(started.elapsed() >= Duration::from_millis(300));

    env.fail_command(
        doc! {"times": 1}.into(),
        doc! {"failCommands": ["find"], "blockConnection": true, "blockTimeMS": 200, "errorCode": 2},
    )
    .await;
    let started = Instant::now();
    assert_eq!(find_result(&env).await, Err(Some(2)));
    assert!(started.elapsed() >= Duration::from_millis(200));
}

// failCommand writeConcernError: the write is applied and the reply (ok: 1) carries the
// writeConcernError, which the driver reports as a write-concern failure.
#[tokio::test]
async fn fail_command_write_concern_error() {
    let env = start("fail_write_concern").await;
    let _turn = fail_point_turn().await;
    let wce = doc! {"code": 64, "codeName": "WriteConcernFailed",
    "errmsg": "waiting for replication timed out", "errInfo": {"wtimeout": true}};
    env.fail_command(
        doc! {"times": 1}.into(),
        doc! {"failCommands": ["insert"], "writeConcernError": wce.clone()},
    )
    .await;
    let reply = env
        .run(doc! {"insert": "c", "documents": [{"_id": 1}]})
        .await;
    assert_eq!(num(reply.get("n")), 1.0, "{reply}");
    let got = reply
        .get_document("writeConcernError")
        .expect("writeConcernError");
    assert_eq!(num(got.get("code")), 64.0);
    assert_eq!(
        got.get_str("errmsg").unwrap(),
        "waiting for replication timed out"
    );

    env.fail_command(
        doc! {"times": 1}.into(),
        doc! {"failCommands": ["insert"], "writeConcernError": wce},
    )
    .await;
    let err = env
        .coll("c")
        .insert_one(doc! {"_id": 2})
        .await
        .expect_err("driver reports the write concern error");
    assert_eq!(error_code(&err), Some(64), "{err}");
    assert_eq!(env.coll("c").count_documents(doc! {}).await.unwrap(), 2);
}

// failCommand data.appName: only connections whose handshake named that application fail.
#[tokio::test]
async fn fail_command_app_name_filter() {
    let env = start("fail_app_name").await;
    let _turn = fail_point_turn().await;
    env.fail_command(
        "alwaysOn".into(),
        doc! {"failCommands": ["find"], "errorCode": 2, "appName": format!("{}_other", env.app_name)},
    )
    .await;
    assert_eq!(find_result(&env).await, Ok(()));
    env.fail_command(
        "alwaysOn".into(),
        doc! {"failCommands": ["find"], "errorCode": 2},
    )
    .await;
    assert_eq!(find_result(&env).await, Err(Some(2)));
    env.fail_command_off().await;
    assert_eq!(find_result(&env).await, Ok(()));
}

// Retryable-writes specification: after a network error the driver retries the insert once
// with the same txnNumber; failCommand closes the connection before the command runs, so
// exactly one document is inserted. Without retryable writes the error surfaces.
#[tokio::test]
async fn retryable_write_survives_closed_connection() {
    let env = start("fail_retryable_write").await;
    let _turn = fail_point_turn().await;
    env.fail_command(
        doc! {"times": 1}.into(),
        doc! {"failCommands": ["insert"], "closeConnection": true},
    )
    .await;
    env.coll("c")
        .insert_one(doc! {"_id": 1})
        .await
        .expect("insert retried by the driver");
    assert_eq!(env.coll("c").count_documents(doc! {}).await.unwrap(), 1);

    let no_retry = env.other_client(|o| o.retry_writes = Some(false)).await;
    env.fail_command(
        doc! {"times": 1}.into(),
        doc! {"failCommands": ["insert"], "closeConnection": true},
    )
    .await;
    let err = no_retry
        .database(&env.db_name)
        .collection::<mongodb::bson::Document>("c")
        .insert_one(doc! {"_id": 2})
        .await
        .expect_err("no retry without retryable writes");
    assert!(is_network_error(&err), "{err}");
    assert_eq!(env.coll("c").count_documents(doc! {}).await.unwrap(), 1);
}

// Manual: "replSetStepDown" — during the step-down period the node is a secondary and
// writes fail with NotWritablePrimary (10107); afterwards the single node is elected again
// with a new electionId.
#[tokio::test]
async fn step_down_rejects_writes_then_recovers() {
    let env = start("fail_step_down").await;
    let _turn = fail_point_turn().await;
    let hello = env.admin(doc! {"hello": 1}).await;
    if hello.get_array("hosts").map(|h| h.len()).unwrap_or(0) > 1 {
        println!("skipping step-down test: the deployment has more than one member");
        return;
    }
    let election_before = hello.get_object_id("electionId").expect("electionId");
    let direct = env
        .other_client(|o| {
            o.direct_connection = Some(true);
            o.retry_writes = Some(false);
        })
        .await;
    let coll = direct
        .database(&env.db_name)
        .collection::<mongodb::bson::Document>("c");
    coll.insert_one(doc! {"_id": 0}).await.unwrap();

    // mongod keeps client connections open across a step-down since 4.2 (manual:
    // "replSetStepDown", Behavior); a closed one is retried here and reported at the end so the
    // step-down semantics are checked either way.
    let mut closed_connections = 0;
    let stepped = direct
        .database("admin")
        .run_command(doc! {"replSetStepDown": 2, "secondaryCatchUpPeriodSecs": 0, "force": true})
        .await;
    if let Err(e) = &stepped {
        assert!(is_network_error(e), "replSetStepDown failed: {e}");
        closed_connections += 1;
    }

    let during = match direct
        .database("admin")
        .run_command(doc! {"hello": 1})
        .await
    {
        Ok(reply) => reply,
        Err(e) if is_network_error(&e) => {
            closed_connections += 1;
            direct
                .database("admin")
                .run_command(doc! {"hello": 1})
                .await
                .unwrap()
        }
        Err(e) => panic!("hello during the step-down: {e}"),
    };
    assert!(!during.get_bool("isWritablePrimary").unwrap(), "{during}");
    assert!(during.get_bool("secondary").unwrap(), "{during}");

    let err = match coll.insert_one(doc! {"_id": 1}).await {
        Err(e) if is_network_error(&e) => {
            closed_connections += 1;
            coll.insert_one(doc! {"_id": 1})
                .await
                .expect_err("a write during the step-down fails")
        }
        other => other.expect_err("a write during the step-down fails"),
    };
    assert_eq!(error_code(&err), Some(10107), "{err}");
    assert!(err.to_string().contains("not primary"), "{err}");

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match coll.insert_one(doc! {"_id": 1}).await {
            Ok(_) => break,
            Err(e) => {
                assert!(
                    is_network_error(&e) || error_code(&e) == Some(10107),
                    "unexpected error while stepped down: {e}"
                );
                assert!(Instant::now() < deadline, "no primary again within 30s");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let after = direct
        .database("admin")
        .run_command(doc! {"hello": 1})
        .await
        .unwrap();
    assert!(after.get_bool("isWritablePrimary").unwrap());
    let election_after = after.get_object_id("electionId").expect("electionId");
    assert_ne!(election_before, election_after, "a new election");
    // The replica-set client rediscovers the primary and writes again.
    env.coll("c").insert_one(doc! {"_id": 2}).await.unwrap();
    assert_eq!(env.coll("c").count_documents(doc! {}).await.unwrap(), 3);
    assert_eq!(
        closed_connections, 0,
        "replSetStepDown closed client connections; mongod 4.2+ keeps them open"
    );
}

// Retryable-writes specification: since 4.4 the server labels retryable errors of a retryable
// write with RetryableWriteError (ShutdownInProgress 91 here) and the driver retries once;
// reads are retried on the same codes without a label.
#[tokio::test]
async fn retryable_error_codes_are_retried() {
    let env = start("fail_retryable_codes").await;
    let _turn = fail_point_turn().await;
    // ShutdownInProgress marks the server Unknown until the monitor's next hello, which the
    // short heartbeat of the tests' clients keeps well inside the selection timeout.
    let coll = env
        .client
        .database(&env.db_name)
        .collection::<mongodb::bson::Document>("c");
    env.fail_command(
        doc! {"times": 1}.into(),
        doc! {"failCommands": ["insert"], "errorCode": 91},
    )
    .await;
    coll.insert_one(doc! {"_id": 1})
        .await
        .expect("insert retried after ShutdownInProgress");
    assert_eq!(env.coll("c").count_documents(doc! {}).await.unwrap(), 1);

    let no_retry = env.other_client(|o| o.retry_writes = Some(false)).await;
    env.fail_command(
        doc! {"times": 1}.into(),
        doc! {"failCommands": ["insert"], "errorCode": 91},
    )
    .await;
    let err = no_retry
        .database(&env.db_name)
        .collection::<mongodb::bson::Document>("c")
        .insert_one(doc! {"_id": 2})
        .await
        .expect_err("not retried without retryable writes");
    assert_eq!(error_code(&err), Some(91));

    env.fail_command(
        doc! {"times": 1}.into(),
        doc! {"failCommands": ["find"], "errorCode": 91},
    )
    .await;
    let found = coll.find_one(doc! {"_id": 1}).await;
    assert_eq!(found.expect("find retried"), Some(doc! {"_id": 1}));
}

// mongod's `maxTimeAlwaysTimeOut`: an operation with maxTimeMS exceeds it (50); one without
// runs. Server-wide, so against a shared deployment it takes the fail-point turn.
#[tokio::test]
async fn max_time_always_time_out_fails_timed_operations() {
    let env = start("max_time_always").await;
    let _turn = fail_point_turn().await;
    env.admin(doc! {"configureFailPoint": "maxTimeAlwaysTimeOut", "mode": {"times": 1}})
        .await;
    let err = env
        .db
        .run_command(doc! {"find": "c", "maxTimeMS": 5000})
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), Some(50));
    env.db
        .run_command(doc! {"find": "c", "maxTimeMS": 5000})
        .await
        .expect("the fail point fired once");
}
