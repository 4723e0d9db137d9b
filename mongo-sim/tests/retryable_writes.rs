//! Retryable writes as mongod executes them (retryable-writes specification; manual:
//! "Retryable Writes"): a statement retried with the same `lsid` and `txnNumber` is answered
//! from its first execution and never applied twice; an older `txnNumber` is refused; the
//! `onPrimaryTransactionalWrite` fail point closes the connection after a statement, or fails
//! the statement so that nothing of it is applied.
//!
//! The commands go over a raw connection, so that the session fields are exactly the test's
//! and a closed connection is seen as such.

use bson::{Binary, Bson, Document, doc, spec::BinarySubtype};
use mongo_sim::MongoSim;
use mongo_sim::wire::{self, Request};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

async fn connect(sim: &MongoSim) -> TcpStream {
    TcpStream::connect(("127.0.0.1", sim.port()))
        .await
        .expect("connects")
}

/// Sends `cmd` on `stream`; the reply, or `None` when the server closed the connection.
async fn send(stream: &mut TcpStream, cmd: Document) -> Option<Document> {
    let bytes = wire::encode_op_msg(1, 0, 0, &cmd, &[]);
    stream.write_all(&bytes).await.ok()?;
    let reply = wire::read_message(stream).await.ok().flatten()?;
    match wire::decode(&reply).expect("reply decodes") {
        Request::Msg(m) => Some(m.body),
        other => panic!("unexpected reply {other:?}"),
    }
}

async fn run(sim: &MongoSim, cmd: Document) -> Document {
    let mut stream = connect(sim).await;
    send(&mut stream, cmd).await.expect("a reply")
}

fn lsid(byte: u8) -> Document {
    doc! {"id": Binary { subtype: BinarySubtype::Uuid, bytes: vec![byte; 16] }}
}

fn with_session(mut cmd: Document, session: &Document, txn: i64) -> Document {
    cmd.insert("$db", "db");
    cmd.insert("lsid", session.clone());
    cmd.insert("txnNumber", txn);
    cmd
}

async fn documents(sim: &MongoSim) -> Vec<Document> {
    let reply = run(sim, doc! {"find": "c", "sort": {"_id": 1}, "$db": "db"}).await;
    reply
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap()
        .iter()
        .map(|d| d.as_document().unwrap().clone())
        .collect()
}

async fn fail_point(sim: &MongoSim, mode: Bson, data: Document) {
    let reply = run(
        sim,
        doc! {"configureFailPoint": "onPrimaryTransactionalWrite", "mode": mode, "data": data,
        "$db": "admin"},
    )
    .await;
    assert_eq!(reply.get_f64("ok").unwrap(), 1.0, "{reply}");
}

// Retryable-writes spec, "How will retrying a write statement affect the result": a retried
// `update` with the same txnNumber returns the first reply and leaves the document as the
// first execution left it.
#[tokio::test]
async fn a_retried_update_returns_its_first_reply_and_applies_once() {
    let sim = MongoSim::start_default().await.unwrap();
    run(
        &sim,
        doc! {"insert": "c", "documents": [{"_id": 1, "n": 0}], "$db": "db"},
    )
    .await;
    let session = lsid(1);
    let update = with_session(
        doc! {"update": "c", "updates": [
            {"q": {"_id": 1}, "u": {"$inc": {"n": 1}}},
            {"q": {"_id": 2}, "u": {"$set": {"n": 5}}, "upsert": true},
        ]},
        &session,
        7,
    );
    let first = run(&sim, update.clone()).await;
    assert_eq!(first.get_i32("n").unwrap(), 2);
    assert_eq!(first.get_i32("nModified").unwrap(), 1);
    let retry = run(&sim, update.clone()).await;
    assert_eq!(retry.get_i32("n").unwrap(), 2);
    assert_eq!(retry.get_i32("nModified").unwrap(), 1);
    assert_eq!(
        retry.get_array("upserted").unwrap(),
        first.get_array("upserted").unwrap()
    );
    assert_eq!(
        documents(&sim).await,
        vec![doc! {"_id": 1, "n": 1}, doc! {"_id": 2, "n": 5}]
    );
    // A new txnNumber is a new write; an older one than the newest is refused.
    let again = with_session(
        doc! {"update": "c", "updates": [{"q": {"_id": 1}, "u": {"$inc": {"n": 1}}}]},
        &session,
        8,
    );
    assert_eq!(run(&sim, again).await.get_i32("nModified").unwrap(), 1);
    let old = run(&sim, update).await;
    assert_eq!(old.get_i32("code").unwrap(), 225);
    assert_eq!(documents(&sim).await[0], doc! {"_id": 1, "n": 2});
}

// A retried insert batch inserts only the statements the first attempt did not apply, and
// reports every statement as done, without a duplicate key error.
#[tokio::test]
async fn a_retried_insert_applies_only_the_missing_statements() {
    let sim = MongoSim::start_default().await.unwrap();
    let session = lsid(2);
    let cmd = |docs: Vec<Document>, stmt_ids: Vec<i32>| {
        with_session(
            doc! {"insert": "c", "documents": docs, "stmtIds": stmt_ids, "ordered": false},
            &session,
            3,
        )
    };
    run(&sim, cmd(vec![doc! {"_id": 1}], vec![0])).await;
    let reply = run(
        &sim,
        cmd(vec![doc! {"_id": 1}, doc! {"_id": 2}], vec![0, 1]),
    )
    .await;
    assert_eq!(reply.get_i32("n").unwrap(), 2);
    assert!(!reply.contains_key("writeErrors"), "{reply}");
    assert_eq!(
        documents(&sim).await,
        vec![doc! {"_id": 1}, doc! {"_id": 2}]
    );
}

// mongod's `onPrimaryTransactionalWrite`: after the statement the connection closes (the
// write stays applied); the retry is answered from the record. With
// `failBeforeCommitExceptionCode` the statement is undone as well, and its retry applies it.
#[tokio::test]
async fn on_primary_transactional_write_closes_after_or_undoes_the_statement() {
    let sim = MongoSim::start_default().await.unwrap();
    let session = lsid(3);
    let inc = |txn: i64| {
        with_session(
            doc! {"update": "c", "updates": [{"q": {"_id": 1}, "u": {"$inc": {"n": 1}}, "upsert": true}]},
            &session,
            txn,
        )
    };
    fail_point(&sim, doc! {"times": 1}.into(), doc! {}).await;
    let mut stream = connect(&sim).await;
    assert!(
        send(&mut stream, inc(1)).await.is_none(),
        "connection closed"
    );
    assert_eq!(documents(&sim).await, vec![doc! {"_id": 1, "n": 1}]);
    let retry = run(&sim, inc(1)).await;
    assert_eq!(retry.get_i32("n").unwrap(), 1);
    assert_eq!(documents(&sim).await, vec![doc! {"_id": 1, "n": 1}]);

    fail_point(
        &sim,
        doc! {"times": 1}.into(),
        doc! {"failBeforeCommitExceptionCode": 1},
    )
    .await;
    let mut stream = connect(&sim).await;
    assert!(
        send(&mut stream, inc(2)).await.is_none(),
        "connection closed"
    );
    assert_eq!(documents(&sim).await, vec![doc! {"_id": 1, "n": 1}]);
    run(&sim, inc(2)).await;
    assert_eq!(documents(&sim).await, vec![doc! {"_id": 1, "n": 2}]);

    // Without closing the connection, the undone statement is a write error.
    fail_point(
        &sim,
        doc! {"times": 1}.into(),
        doc! {"closeConnection": false, "failBeforeCommitExceptionCode": 1},
    )
    .await;
    let reply = run(&sim, inc(3)).await;
    let errors = reply.get_array("writeErrors").unwrap();
    assert_eq!(errors[0].as_document().unwrap().get_i32("code").unwrap(), 1);
    assert_eq!(documents(&sim).await, vec![doc! {"_id": 1, "n": 2}]);
}

// A retried findAndModify returns the document of its first execution.
#[tokio::test]
async fn a_retried_find_and_modify_returns_its_first_value() {
    let sim = MongoSim::start_default().await.unwrap();
    run(
        &sim,
        doc! {"insert": "c", "documents": [{"_id": 1, "n": 0}], "$db": "db"},
    )
    .await;
    let cmd = with_session(
        doc! {"findAndModify": "c", "query": {"_id": 1}, "update": {"$inc": {"n": 1}}, "new": true},
        &lsid(4),
        1,
    );
    let first = run(&sim, cmd.clone()).await;
    let retry = run(&sim, cmd).await;
    assert_eq!(
        first.get_document("value").unwrap(),
        &doc! {"_id": 1, "n": 1}
    );
    assert_eq!(
        retry.get_document("value").unwrap(),
        &doc! {"_id": 1, "n": 1}
    );
    assert_eq!(documents(&sim).await, vec![doc! {"_id": 1, "n": 1}]);
}
