//! Capacity of the test server: idle connections held, and single-document inserts per second
//! from a batched driver loop. Run with `cargo bench -p mongo-sim --bench server`
//! (`-- --connections N --inserts N --batch N` to change the sizes).
//!
//! Both figures are recorded, with the machine and the command, in BENCHMARKS.md.

use bson::{Document, doc};
use mongo_sim::{MongoSim, ServerOptions};
use mongodb::{Client, IndexModel};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

struct Args {
    connections: usize,
    inserts: usize,
    batch: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        connections: 2_000,
        inserts: 200_000,
        batch: 1_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .and_then(|v| v.parse().ok())
                .expect("a number after the option")
        };
        match a.as_str() {
            "--connections" => args.connections = value(),
            "--inserts" => args.inserts = value(),
            "--batch" => args.batch = value(),
            _ => {} // cargo bench passes --bench
        }
    }
    args
}

/// One OP_MSG with a kind-0 body.
fn op_msg(request_id: i32, body: &Document) -> Vec<u8> {
    let mut bson = Vec::new();
    body.to_writer(&mut bson).unwrap();
    let len = 16 + 4 + 1 + bson.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as i32).to_le_bytes());
    m.extend_from_slice(&request_id.to_le_bytes());
    m.extend_from_slice(&0i32.to_le_bytes());
    m.extend_from_slice(&2013i32.to_le_bytes());
    m.extend_from_slice(&0u32.to_le_bytes());
    m.push(0);
    m.extend_from_slice(&bson);
    m
}

/// Sends a command on a raw connection and returns the reply body.
fn roundtrip(
    stream: &mut TcpStream,
    request_id: i32,
    body: &Document,
) -> std::io::Result<Document> {
    stream.write_all(&op_msg(request_id, body))?;
    let mut header = [0u8; 16];
    stream.read_exact(&mut header)?;
    let len = i32::from_le_bytes(header[0..4].try_into().unwrap()) as usize;
    let mut rest = vec![0u8; len - 16];
    stream.read_exact(&mut rest)?;
    // flags (4) + section kind (1) + body
    Document::from_reader(&rest[5..]).map_err(std::io::Error::other)
}

fn idle_connections(sim: &MongoSim, n: usize) {
    let addr = sim.host().to_string();
    let start = Instant::now();
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = TcpStream::connect(&addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let reply = roundtrip(&mut s, i as i32, &doc! {"hello": 1, "$db": "admin"}).expect("hello");
        assert_eq!(reply.get_bool("isWritablePrimary"), Ok(true));
        held.push(s);
    }
    let opened = start.elapsed();
    // Every one of them is still served after all are open.
    let start = Instant::now();
    let mut answered = 0;
    for (i, s) in held.iter_mut().enumerate() {
        let reply = roundtrip(s, (n + i) as i32, &doc! {"ping": 1, "$db": "admin"}).expect("ping");
        if reply.get_f64("ok") == Ok(1.0) {
            answered += 1;
        }
    }
    println!(
        "idle connections: {n} opened with a hello in {:.2?}; {answered}/{n} answered a ping afterwards in {:.2?}",
        opened,
        start.elapsed()
    );
}

fn inserts(sim: &MongoSim, total: usize, batch: usize) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = Client::with_uri_str(sim.uri()).await.unwrap();
        let events = client.database("bench").collection::<Document>("events");
        events
            .create_index(
                IndexModel::builder()
                    .keys(doc! {"aggregateId": 1, "sequenceNumber": 1})
                    .options(mongodb::options::IndexOptions::builder().unique(true).build())
                    .build(),
            )
            .await
            .unwrap();
        let start = Instant::now();
        let mut written = 0;
        while written < total {
            let docs: Vec<Document> = (written..(written + batch).min(total))
                .map(|i| {
                    doc! {
                        "aggregateId": format!("acc-{:05}", i % 10_000),
                        "sequenceNumber": (i / 10_000 + 1) as i64,
                        "eventType": "Deposited",
                        "data": {"amount": (i % 500) as i64},
                        "timestamp": bson::DateTime::now(),
                    }
                })
                .collect();
            written += docs.len();
            events.insert_many(docs).await.unwrap();
        }
        let elapsed = start.elapsed();
        let stored = events.estimated_document_count().await.unwrap();
        assert_eq!(stored as usize, total);
        println!(
            "inserts: {total} single-document inserts in batches of {batch} (unique index on aggregateId+sequenceNumber) in {:.2?} = {:.0} inserts/s",
            elapsed,
            total as f64 / elapsed.as_secs_f64()
        );
    });
}

fn main() {
    let args = parse_args();
    let sim = MongoSim::start_on_own_runtime(ServerOptions::default()).expect("start mongo-sim");
    idle_connections(&sim, args.connections);
    inserts(&sim, args.inserts, args.batch);
}
