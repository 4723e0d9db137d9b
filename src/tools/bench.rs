//! `mongo-projector bench`: how fast the daemon is, measured side by side with the server's
//! own ceiling and with the naive algorithm, in one run against one server.
//!
//! The server is `mongo-sim` on its own runtime inside this process (or the MongoDB named by
//! `MONGODB_URI`); the daemon under test is this same binary started as a child process
//! (`mongo-projector run`), so that its start-up time and its peak RSS (`VmHWM` in
//! `/proc/<pid>/status`) are its own. Every figure comes from the same run:
//! - **U**: batched guarded updates of the read-model shape from bare driver loops (one task
//!   per lane, one `update` command of `batch_size` statements per round trip): what the
//!   server can absorb for this write shape, with no daemon logic at all;
//! - **naive**: the seed's algorithm, one event at a time: find the document, then one guarded
//!   `updateOne`, sequentially;
//! - **projector**: the daemon draining a backlog of change events from a stored checkpoint;
//! - **steady state**: events written at a fixed rate while the daemon runs; lag from insert to
//!   the read-model write, observed through a change stream on the read model;
//! - **restart**: process start to the first applied event, with a stored checkpoint;
//! - **catch-up**: drain rate after a stop during which events accumulated;
//! - **fold**: a fresh projection with `start = "beginning"` folding the same number of stored
//!   events from the event collection (the path of a first start, of a recovery from a lost
//!   history and of the live rebuild);
//! - **memory**: peak RSS of the daemon while draining a small and a large backlog.
//!
//! The drain, the catch-up and the fold also report CPU time (user + system) per event, of the
//! daemon (its `/proc/<pid>/stat`) and of the embedded server (the `stat` of its runtime's
//! threads): less noisy than wall time on a shared machine, and on one machine the daemon's
//! CPU is taken from the server's share.
//!
//! The last line printed is `ratios: projector/U=<x> projector/naive=<y> fold/drain=<z>`.
//!
//! `--scale-out` runs a separate section instead ([`scale_out`]): one backlog drained by 1, 2
//! and 3 daemon instances inside this process sharing a projection split into 3 partitions.

use crate::cluster::daemon as cluster;
use crate::config::default_lanes;
use crate::tools::demo::EXAMPLE_CONFIG;
use bson::{Bson, Document, doc};
use futures_util::TryStreamExt;
use mongodb::options::WriteConcern;
use mongodb::{Client, Collection, Database};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Sizes of one benchmark run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub accounts: u32,
    /// Events in the backlog the projector drains (and guarded updates U runs).
    pub backlog: u64,
    /// Events the naive loop applies (it is slow; its rate does not depend on the count).
    pub naive_events: u64,
    /// How long events are written at a fixed rate for the steady-state lag.
    pub steady_seconds: u64,
    /// Events per second in steady state; 0: half the measured backlog drain rate.
    pub steady_rate: u64,
    /// Events accumulated while the daemon is stopped, for the catch-up rate.
    pub catch_up: u64,
    /// Backlogs drained for the memory figures (peak RSS of each).
    pub memory_small: u64,
    pub memory_large: u64,
    pub lanes: usize,
    pub batch_size: usize,
    /// `checkpoints.every_events` of the daemon under test.
    pub checkpoint_events: u64,
    /// The daemon binary (this executable unless told otherwise).
    pub daemon: PathBuf,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            accounts: 10_000,
            backlog: 200_000,
            naive_events: 20_000,
            steady_seconds: 20,
            steady_rate: 0,
            catch_up: 100_000,
            memory_small: 100_000,
            memory_large: 1_000_000,
            lanes: default_lanes(),
            batch_size: 1000,
            checkpoint_events: crate::config::DEFAULT_EVERY_EVENTS,
            daemon: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("mongo-projector")),
        }
    }
}

/// Everything measured, for printing and for `BENCHMARKS.md`.
#[derive(Debug, Clone, Default)]
pub struct BenchReport {
    pub server: String,
    pub(crate) u_rate: f64,
    pub(crate) naive_rate: f64,
    pub(crate) backlog_rate: f64,
    pub restart: Duration,
    pub steady_rate: f64,
    pub(crate) steady_events: u64,
    pub(crate) lag_p50: Duration,
    pub(crate) lag_p99: Duration,
    pub(crate) lag_max: Duration,
    pub(crate) catch_up_rate: f64,
    /// A fresh projection folding `backlog` stored events (`start = "beginning"`).
    pub(crate) fold_rate: f64,
    pub(crate) backlog_cpu: CpuPerEvent,
    pub(crate) catch_up_cpu: CpuPerEvent,
    pub(crate) fold_cpu: CpuPerEvent,
    /// kill -9 in the middle of a drain; `None` when not run.
    pub crash: Option<CrashReport>,
    pub memory: Vec<(u64, u64, f64)>,
}

type BenchResult<T> = Result<T, String>;

fn err<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// The example domain's events, generated per account in sequence order.
struct Workload {
    next: Vec<i64>,
    rng: StdRng,
}

impl Workload {
    fn new(accounts: u32, seed: u64) -> Self {
        Self {
            next: vec![1; accounts as usize],
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// The next `n` events over random accounts (each account's own events in order).
    fn take(&mut self, n: usize) -> Vec<Document> {
        (0..n)
            .map(|_| {
                let a = self.rng.random_range(0..self.next.len());
                let seq = self.next[a];
                self.next[a] += 1;
                let amount: i64 = self.rng.random_range(1..100);
                let (event_type, data) = if seq == 1 {
                    (
                        "AccountOpened",
                        doc! {"owner": format!("owner-{a}"), "currency": "EUR"},
                    )
                } else if self.rng.random_bool(0.7) {
                    ("Deposited", doc! {"amount": amount})
                } else {
                    ("Withdrawn", doc! {"amount": amount})
                };
                doc! {
                    "aggregateId": format!("acc-{a}"),
                    "sequenceNumber": seq,
                    "eventType": event_type,
                    "data": data,
                    "timestamp": bson::DateTime::now(),
                }
            })
            .collect()
    }
}

/// Appends `n` events in batches of 1,000 from one writer (so every account's events reach
/// the stream in order). Returns the first event written.
async fn append(events: &Collection<Document>, w: &mut Workload, n: u64) -> BenchResult<Document> {
    let mut first = None;
    let mut left = n;
    while left > 0 {
        let chunk = left.min(1000) as usize;
        let docs = w.take(chunk);
        if first.is_none() {
            first = docs.first().cloned();
        }
        events
            .insert_many(docs)
            .await
            .map_err(err("writing events"))?;
        left -= chunk as u64;
    }
    first.ok_or_else(|| "no events to write".to_string())
}

/// A daemon under test, as a child process.
struct Daemon {
    child: Child,
    started: Instant,
}

impl Daemon {
    fn spawn(exe: &Path, config: &Path, uri: &str) -> BenchResult<Daemon> {
        let started = Instant::now();
        let child = Command::new(exe)
            .args(["run", "--config"])
            .arg(config)
            .env("MONGODB_URI", uri)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(err("starting the daemon"))?;
        Ok(Daemon { child, started })
    }

    /// CPU time (user + system) the daemon has used so far.
    fn cpu(&self) -> Option<Duration> {
        stat_cpu(&std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?)
    }

    /// Peak resident set size so far, in bytes (`VmHWM`).
    fn peak_rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// SIGTERM, then waits for a graceful exit.
    async fn stop(mut self) -> BenchResult<()> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self
                .child
                .try_wait()
                .map_err(err("waiting for the daemon"))?
            {
                return if status.success() {
                    Ok(())
                } else {
                    Err(format!("the daemon exited with {status}"))
                };
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return Err("the daemon did not stop within 30 s of SIGTERM".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One database with the example projection, and the daemon's configuration file for it.
struct Setup {
    db: Database,
    config: PathBuf,
    workload: Workload,
    /// `checkpoints.every_events` of the daemon's configuration.
    checkpoint_events: i64,
}

impl Setup {
    /// The example projection starting from "now": every figure but the fold resumes from a
    /// stored checkpoint.
    fn new(client: &Client, name: &str, o: &BenchOptions, dir: &Path) -> BenchResult<Setup> {
        Self::with_start(client, name, o, dir, "now")
    }

    /// The example projection as shipped, folding the event collection on its first start.
    fn starting_from_the_beginning(
        client: &Client,
        name: &str,
        o: &BenchOptions,
        dir: &Path,
    ) -> BenchResult<Setup> {
        Self::with_start(client, name, o, dir, "beginning")
    }

    fn with_start(
        client: &Client,
        name: &str,
        o: &BenchOptions,
        dir: &Path,
        start: &str,
    ) -> BenchResult<Setup> {
        let mut text = EXAMPLE_CONFIG
            .replace("database = \"bank\"", &format!("database = \"{name}\""))
            .replace("start = \"beginning\"", &format!("start = \"{start}\""))
            .replace("every = \"1s\"", "every = \"100ms\"")
            .replace(
                "every_events = 10000 ",
                &format!("every_events = {} ", o.checkpoint_events),
            );
        text = text.replacen(
            "[shutdown]",
            &format!(
                "[source]\nlanes = {}\nbatch_size = {}\n\n[shutdown]",
                o.lanes, o.batch_size
            ),
            1,
        );
        let parsed = crate::config::Config::parse(&text).map_err(err("bench configuration"))?;
        if parsed.checkpoints.every_events != o.checkpoint_events {
            return Err(
                "bench configuration: the example's checkpoints.every_events line was not found"
                    .into(),
            );
        }
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, text).map_err(err("writing the bench configuration"))?;
        Ok(Setup {
            db: client.database(name),
            config,
            workload: Workload::new(o.accounts, name.len() as u64 * 7919),
            checkpoint_events: parsed.checkpoints.every_events as i64,
        })
    }

    fn events(&self) -> Collection<Document> {
        self.db.collection("events")
    }

    async fn events_handled(&self) -> BenchResult<Option<i64>> {
        let c = self
            .db
            .collection::<Document>("projector_checkpoints")
            .find_one(doc! {"_id": "accounts"})
            .await
            .map_err(err("reading the checkpoint"))?;
        Ok(c.and_then(|d| d.get("eventsHandled").and_then(Bson::as_i64)))
    }

    /// Starts the daemon once on the empty collection so that a checkpoint exists, then
    /// stops it: later runs resume from a stored position, as a restarted daemon does.
    async fn with_checkpoint(&self, o: &BenchOptions, uri: &str) -> BenchResult<()> {
        let daemon = Daemon::spawn(&o.daemon, &self.config, uri)?;
        self.wait_until("the first checkpoint", Duration::from_secs(60), |h| {
            h.is_some()
        })
        .await?;
        daemon.stop().await
    }

    async fn wait_until(
        &self,
        what: &str,
        within: Duration,
        done: impl Fn(Option<i64>) -> bool,
    ) -> BenchResult<Instant> {
        let deadline = Instant::now() + within;
        loop {
            if done(self.events_handled().await?) {
                return Ok(Instant::now());
            }
            if Instant::now() > deadline {
                return Err(format!("timed out waiting for {what}"));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Starts the daemon on a backlog and waits until its checkpoint covers `expected`
    /// events: the daemon (still running), the drain rate, the restart time (to the first event
    /// of the backlog applied) and the CPU per event.
    async fn drain(
        &self,
        o: &BenchOptions,
        uri: &str,
        first: &Document,
        backlog: u64,
        expected: i64,
    ) -> BenchResult<Drain> {
        let accounts = self.db.collection::<Document>("accounts");
        let id = first.get("aggregateId").cloned().unwrap_or(Bson::Null);
        let seq = first.get_i64("sequenceNumber").unwrap_or(1);
        let server = server_cpu();
        let daemon = Daemon::spawn(&o.daemon, &self.config, uri)?;
        let restart = loop {
            let applied = accounts
                .find_one(doc! {"_id": id.clone(), "lastSequenceNumber": {"$gte": seq}})
                .await
                .map_err(err("polling the read model"))?;
            if applied.is_some() {
                break daemon.started.elapsed();
            }
            if daemon.started.elapsed() > Duration::from_secs(60) {
                return Err("no event applied within 60 s of start".into());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let done = self
            .wait_until("the backlog to drain", Duration::from_secs(1800), |h| {
                h.unwrap_or(0) >= expected
            })
            .await?;
        let rate = backlog as f64 / (done - daemon.started).as_secs_f64();
        let cpu = CpuPerEvent::since(&daemon, server, backlog);
        Ok(Drain {
            daemon,
            rate,
            restart,
            cpu,
        })
    }
}

/// A daemon that has drained a backlog, still running, and what the drain measured.
struct Drain {
    daemon: Daemon,
    rate: f64,
    restart: Duration,
    cpu: CpuPerEvent,
}

/// CPU time (user + system) per event of the daemon and of the embedded server over one
/// measured stretch; `None` where it cannot be read (a server named by `MONGODB_URI`).
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuPerEvent {
    pub daemon: Option<Duration>,
    pub server: Option<Duration>,
}

impl CpuPerEvent {
    /// From the daemon's start (its whole CPU time so far) and the server's CPU time then.
    fn since(daemon: &Daemon, server_then: Option<Duration>, events: u64) -> CpuPerEvent {
        let per = |d: Duration| d / events.max(1) as u32;
        CpuPerEvent {
            daemon: daemon.cpu().map(per),
            server: server_cpu()
                .zip(server_then)
                .map(|(now, then)| per(now.saturating_sub(then))),
        }
    }

    fn describe(&self) -> String {
        let us = |d: Option<Duration>| match d {
            Some(d) => format!("{:.1} µs", d.as_secs_f64() * 1e6),
            None => "n/a".into(),
        };
        format!(
            "CPU per event: daemon {}, server {}",
            us(self.daemon),
            us(self.server)
        )
    }
}

/// CPU time (user + system) from a `/proc/.../stat` line: fields 14 and 15 (`utime`,
/// `stime`), counted after the parenthesised command name, which may hold spaces.
fn stat_cpu(stat: &str) -> Option<Duration> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| Duration::from_secs_f64((utime + stime) as f64 / ticks as f64))
}

/// CPU time of the embedded server so far: the threads of its runtime (named `mongo-sim...`)
/// in this process; `None` when there are none (the server is `MONGODB_URI`).
fn server_cpu() -> Option<Duration> {
    let mut total = None;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("mongo-sim") {
            continue;
        }
        if let Some(cpu) = std::fs::read_to_string(task.path().join("stat"))
            .ok()
            .and_then(|s| stat_cpu(&s))
        {
            total = Some(total.unwrap_or(Duration::ZERO) + cpu);
        }
    }
    total
}

/// U: `lanes` bare driver loops, each sending `update` commands of `batch_size` guarded
/// statements (`$inc` plus the sequence, as the example's `Deposited`) over its share of
/// the accounts. Statements per second.
async fn measure_u(client: &Client, o: &BenchOptions) -> BenchResult<f64> {
    let db = client.database("bench_u");
    let _ = db.drop().await;
    let coll = db.collection::<Document>("accounts");
    let docs: Vec<Document> = (0..o.accounts)
        .map(|a| doc! {"_id": format!("acc-{a}"), "owner": format!("owner-{a}"), "currency": "EUR", "balance": 0i64, "status": "open", "lastSequenceNumber": 1i64})
        .collect();
    for chunk in docs.chunks(1000) {
        coll.insert_many(chunk.to_vec())
            .await
            .map_err(err("preparing U"))?;
    }
    let lanes = o.lanes.max(1);
    let per_lane = o.backlog / lanes as u64;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for lane in 0..lanes {
        let db = db.clone();
        let accounts: Vec<u32> = (0..o.accounts)
            .filter(|a| *a as usize % lanes == lane)
            .collect();
        let batch = o.batch_size.min(accounts.len()).max(1);
        tasks.push(tokio::spawn(async move {
            let mut seq: HashMap<u32, i64> = accounts.iter().map(|a| (*a, 1)).collect();
            let mut cursor = 0usize;
            let mut sent = 0u64;
            while sent < per_lane {
                let n = (batch as u64).min(per_lane - sent) as usize;
                let mut statements = Vec::with_capacity(n);
                for _ in 0..n {
                    let a = accounts[cursor % accounts.len()];
                    cursor += 1;
                    let s = seq.get_mut(&a).expect("account");
                    statements.push(doc! {
                        "q": {"_id": format!("acc-{a}"), "lastSequenceNumber": *s},
                        "u": {"$inc": {"balance": 7i64}, "$set": {"lastSequenceNumber": *s + 1}},
                        "upsert": false,
                    });
                    *s += 1;
                }
                let reply = db
                    .run_command(doc! {"update": "accounts", "updates": statements, "ordered": false, "writeConcern": {"w": "majority"}})
                    .await
                    .map_err(|e| e.to_string())?;
                let matched = reply.get("n").and_then(Bson::as_i32).map(i64::from).or_else(|| reply.get("n").and_then(Bson::as_i64)).unwrap_or(0);
                if matched != n as i64 {
                    return Err(format!("U: {matched} of {n} statements matched"));
                }
                sent += n as u64;
            }
            Ok::<u64, String>(sent)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.map_err(err("U task"))??;
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    let _ = db.drop().await;
    Ok(rate)
}

/// naive: the seed's algorithm, one event at a time and sequentially: find the read-model
/// document, then one guarded `updateOne` (upsert for the first event). Events per second.
async fn measure_naive(client: &Client, o: &BenchOptions) -> BenchResult<f64> {
    let db = client.database("bench_naive");
    let _ = db.drop().await;
    let majority = mongodb::options::CollectionOptions::builder()
        .write_concern(WriteConcern::majority())
        .build();
    let coll = db.collection_with_options::<Document>("accounts", majority);
    let mut w = Workload::new(o.accounts, 99);
    let events = w.take(o.naive_events as usize);
    let started = Instant::now();
    for e in &events {
        let id = e.get("aggregateId").cloned().unwrap_or(Bson::Null);
        let seq = e.get_i64("sequenceNumber").unwrap_or(1);
        let current = coll
            .find_one(doc! {"_id": id.clone()})
            .await
            .map_err(err("naive find"))?;
        let stored = current
            .as_ref()
            .and_then(|d| d.get("lastSequenceNumber").and_then(Bson::as_i64))
            .unwrap_or(0);
        if stored != seq - 1 {
            continue;
        }
        let data = e.get_document("data").cloned().unwrap_or_default();
        let amount = data.get_i64("amount").unwrap_or(0);
        let update = match e.get_str("eventType").unwrap_or("") {
            "AccountOpened" => {
                doc! {"$set": {"owner": data.get_str("owner").unwrap_or(""), "currency": "EUR", "balance": 0i64, "status": "open", "lastSequenceNumber": seq}}
            }
            "Withdrawn" => doc! {"$inc": {"balance": -amount}, "$set": {"lastSequenceNumber": seq}},
            _ => doc! {"$inc": {"balance": amount}, "$set": {"lastSequenceNumber": seq}},
        };
        let filter = if seq == 1 {
            doc! {"_id": id, "lastSequenceNumber": {"$exists": false}}
        } else {
            doc! {"_id": id, "lastSequenceNumber": seq - 1}
        };
        coll.update_one(filter, update)
            .upsert(seq == 1)
            .await
            .map_err(err("naive update"))?;
    }
    let rate = events.len() as f64 / started.elapsed().as_secs_f64();
    let _ = db.drop().await;
    Ok(rate)
}

/// Insert instants of steady-state events, keyed by (account, sequence).
type Inserted = Arc<Mutex<HashMap<(String, i64), Instant>>>;

/// Steady state: writes `rate` events per second for `seconds` while the daemon runs, and
/// measures each event's lag from its insert to the read-model write that applies it, seen
/// through a change stream on the read model. Returns (events, lags sorted).
async fn steady_state(
    setup: &mut Setup,
    rate: u64,
    seconds: u64,
) -> BenchResult<(u64, Vec<Duration>)> {
    let inserted: Inserted = Arc::new(Mutex::new(HashMap::new()));
    let mut watch = setup
        .db
        .collection::<Document>("accounts")
        .watch()
        .await
        .map_err(err("watching the read model"))?;
    let stop = tokio_util::sync::CancellationToken::new();
    let observer = {
        let inserted = inserted.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut lags = Vec::new();
            loop {
                let change = tokio::select! {
                    _ = stop.cancelled() => break,
                    next = watch.try_next() => match next {
                        Ok(Some(change)) => change,
                        _ => break,
                    },
                };
                let seen = Instant::now();
                let id = change
                    .document_key
                    .as_ref()
                    .and_then(|k| k.get_str("_id").ok())
                    .map(str::to_string);
                let seq = change
                    .update_description
                    .as_ref()
                    .and_then(|u| u.updated_fields.get("lastSequenceNumber"))
                    .or_else(|| {
                        change
                            .full_document
                            .as_ref()
                            .and_then(|d| d.get("lastSequenceNumber"))
                    })
                    .and_then(Bson::as_i64);
                if let (Some(id), Some(seq)) = (id, seq)
                    && let Some(at) = inserted.lock().expect("lock").remove(&(id, seq))
                {
                    lags.push(seen - at);
                }
            }
            lags
        })
    };
    let events = setup.events();
    let per_tick = (rate / 100).max(1);
    let ticks = seconds * 100;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut written = 0u64;
    for _ in 0..ticks {
        tick.tick().await;
        let docs = setup.workload.take(per_tick as usize);
        let now = Instant::now();
        {
            let mut map = inserted.lock().expect("lock");
            for d in &docs {
                map.insert(
                    (
                        d.get_str("aggregateId").unwrap_or("").to_string(),
                        d.get_i64("sequenceNumber").unwrap_or(0),
                    ),
                    now,
                );
            }
        }
        events
            .insert_many(docs)
            .await
            .map_err(err("writing steady-state events"))?;
        written += per_tick;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !inserted.lock().expect("lock").is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let missing = inserted.lock().expect("lock").len();
    stop.cancel();
    let mut lags = observer.await.unwrap_or_default();
    if lags.is_empty() {
        return Err(format!(
            "steady state: no lag observed ({missing} events not seen in the read model)"
        ));
    }
    lags.sort();
    Ok((written, lags))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Peak RSS of the daemon draining `n` events from a stored checkpoint: (events, bytes, rate).
async fn memory(
    client: &Client,
    o: &BenchOptions,
    uri: &str,
    dir: &Path,
    n: u64,
) -> BenchResult<(u64, u64, f64)> {
    let name = format!("bench_mem_{n}");
    let _ = client.database(&name).drop().await;
    let mut setup = Setup::new(client, &name, o, dir)?;
    setup.with_checkpoint(o, uri).await?;
    let before = setup.events_handled().await?.unwrap_or(0);
    let first = append(&setup.events(), &mut setup.workload, n).await?;
    let drained = setup.drain(o, uri, &first, n, before + n as i64).await?;
    let rss = drained.daemon.peak_rss().unwrap_or(0);
    let rate = drained.rate;
    drained.daemon.stop().await?;
    let _ = client.database(&name).drop().await;
    Ok((n, rss, rate))
}

/// What a `kill -9` in the middle of a drain costs.
#[derive(Debug, Clone, Default)]
pub struct CrashReport {
    /// Events the killed daemon had applied after its last checkpoint: the restart reads them
    /// again and the guard counts them as duplicates.
    pub redelivered: i64,
    /// The checkpoint interval (`checkpoints.every_events`): the daemon keeps no more events
    /// than this beyond its stored checkpoint, so this is the bound.
    pub checkpoint_events: i64,
}

/// The sum of every read-model document's `lastSequenceNumber`: the events applied (or
/// skipped) so far, each counted once whatever the redelivery.
async fn applied_total(db: &Database) -> BenchResult<i64> {
    let mut cursor = db
        .collection::<Document>("accounts")
        .aggregate(vec![
            doc! {"$group": {"_id": null, "n": {"$sum": "$lastSequenceNumber"}}},
        ])
        .await
        .map_err(err("summing the read model"))?;
    let total = match cursor
        .try_next()
        .await
        .map_err(err("summing the read model"))?
    {
        Some(d) => d.get("n").and_then(Bson::as_i64).unwrap_or(0),
        None => 0,
    };
    Ok(total)
}

/// `kill -9` halfway through a drain, then a restart: how many already-applied events the
/// restart reads again, and a check that in the end every event is applied exactly once
/// (the read model's sequences add up to the events written).
async fn crash(
    setup: &mut Setup,
    o: &BenchOptions,
    uri: &str,
    handled: i64,
) -> BenchResult<CrashReport> {
    let n = o.catch_up.max(2) as i64;
    let before = applied_total(&setup.db).await?;
    if before != handled {
        return Err(format!(
            "before the crash the read model holds {before} events, the checkpoint {handled}"
        ));
    }
    append(&setup.events(), &mut setup.workload, n as u64).await?;
    let mut daemon = Daemon::spawn(&o.daemon, &setup.config, uri)?;
    setup
        .wait_until(
            "half the events before the kill",
            Duration::from_secs(600),
            |h| h.unwrap_or(0) >= handled + n / 2,
        )
        .await?;
    daemon.child.kill().map_err(err("kill -9"))?;
    daemon
        .child
        .wait()
        .map_err(err("waiting for the killed daemon"))?;
    let checkpoint = setup.events_handled().await?.unwrap_or(0);
    let applied = applied_total(&setup.db).await?;
    let restarted = Daemon::spawn(&o.daemon, &setup.config, uri)?;
    setup
        .wait_until(
            "the rest after the restart",
            Duration::from_secs(1800),
            |h| h.unwrap_or(0) >= handled + n,
        )
        .await?;
    restarted.stop().await?;
    let after = applied_total(&setup.db).await?;
    if after != handled + n {
        return Err(format!(
            "after the crash the read model holds {after} events, {} were written",
            handled + n
        ));
    }
    Ok(CrashReport {
        redelivered: applied - checkpoint,
        checkpoint_events: setup.checkpoint_events,
    })
}

/// Runs the whole benchmark, printing as it goes.
pub async fn run(o: BenchOptions) -> BenchResult<BenchReport> {
    // The memory run stops the daemon while a million events are written: its stored token
    // must still be in the oplog afterwards.
    let oplog_capacity = (o.memory_large.max(o.backlog) as usize).saturating_mul(2) + 1_000_000;
    let (uri, _server, _) = start_server(oplog_capacity).await?;
    println!(
        "daemon: {} (child process), lanes={}, batch_size={}, checkpoints.every_events={}; {} accounts",
        o.daemon.display(),
        o.lanes,
        o.batch_size,
        o.checkpoint_events,
        o.accounts
    );
    let client = Client::with_uri_str(&uri)
        .await
        .map_err(err("connecting"))?;
    let dir = std::env::temp_dir().join(format!("mongo-projector-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(err("temporary directory"))?;
    let mut report = BenchReport {
        server: uri.clone(),
        ..BenchReport::default()
    };
    measure_baselines(&client, &o, &mut report).await?;
    let _ = client.database("bench_projector").drop().await;
    let setup = Setup::new(&client, "bench_projector", &o, &dir)?;
    ProjectorRun::start(setup, &o, &uri)
        .await?
        .measure(&mut report)
        .await?;
    let _ = client.database("bench_projector").drop().await;
    fold(&client, &o, &uri, &dir, &mut report).await?;
    for n in [o.memory_small, o.memory_large] {
        if n == 0 {
            continue;
        }
        let m = memory(&client, &o, &uri, &dir, n).await?;
        println!(
            "memory (draining {} events): peak RSS {:.1} MiB, {:.0} events/s",
            m.0,
            m.1 as f64 / (1024.0 * 1024.0),
            m.2
        );
        report.memory.push(m);
    }
    let _ = std::fs::remove_dir_all(&dir);
    print_summary(&report);
    Ok(report)
}

/// A fresh projection (`start = "beginning"`, no checkpoint) folding `backlog` stored events:
/// timed from the daemon's start to its first checkpoint, which it writes only once the whole
/// scan is applied; then the read model is checked to hold every event exactly once.
async fn fold(
    client: &Client,
    o: &BenchOptions,
    uri: &str,
    dir: &Path,
    report: &mut BenchReport,
) -> BenchResult<()> {
    let name = "bench_fold";
    let _ = client.database(name).drop().await;
    let mut setup = Setup::starting_from_the_beginning(client, name, o, dir)?;
    append(&setup.events(), &mut setup.workload, o.backlog).await?;
    let server = server_cpu();
    let daemon = Daemon::spawn(&o.daemon, &setup.config, uri)?;
    let done = setup
        .wait_until("the fold", Duration::from_secs(1800), |h| h.is_some())
        .await?;
    report.fold_rate = o.backlog as f64 / (done - daemon.started).as_secs_f64();
    report.fold_cpu = CpuPerEvent::since(&daemon, server, o.backlog);
    daemon.stop().await?;
    let applied = applied_total(&setup.db).await?;
    if applied != o.backlog as i64 {
        return Err(format!(
            "the fold applied {applied} events of {} stored",
            o.backlog
        ));
    }
    let _ = client.database(name).drop().await;
    println!(
        "fold (fresh projection, start = \"beginning\", {} stored events): {:.0} events/s ({:.2} x the backlog drain); {}",
        o.backlog,
        report.fold_rate,
        report.fold_rate / report.backlog_rate.max(1e-9),
        report.fold_cpu.describe()
    );
    Ok(())
}

/// U and naive, the two figures the projector is compared with.
async fn measure_baselines(
    client: &Client,
    o: &BenchOptions,
    report: &mut BenchReport,
) -> BenchResult<()> {
    report.u_rate = measure_u(client, o).await?;
    println!(
        "U (server ceiling, batched guarded updates): {:.0} updates/s",
        report.u_rate
    );
    report.naive_rate = measure_naive(client, o).await?;
    println!(
        "naive (find + guarded updateOne per event):  {:.0} events/s",
        report.naive_rate
    );
    Ok(())
}

/// The projector's own figures, measured one after the other on one database: backlog drain
/// and restart, steady-state lag, catch-up, and a kill -9.
struct ProjectorRun<'a> {
    setup: Setup,
    o: &'a BenchOptions,
    uri: &'a str,
    /// Events written so far, which the checkpoint covers once the daemon has caught up.
    handled: i64,
}

impl<'a> ProjectorRun<'a> {
    /// Stores a first checkpoint, so that every drain resumes from a stored position.
    async fn start(setup: Setup, o: &'a BenchOptions, uri: &'a str) -> BenchResult<Self> {
        setup.with_checkpoint(o, uri).await?;
        let handled = setup.events_handled().await?.unwrap_or(0);
        Ok(Self {
            setup,
            o,
            uri,
            handled,
        })
    }

    /// Every figure in turn; the daemon that drained the backlog stays up for the steady state.
    async fn measure(mut self, report: &mut BenchReport) -> BenchResult<()> {
        let daemon = self.drain_backlog(report).await?;
        self.steady_lag(report).await?;
        daemon.stop().await?;
        self.catch_up(report).await?;
        self.kill_and_restart(report).await
    }

    /// Appends `n` events while no daemon runs, then starts one and waits until it has
    /// drained them: the daemon (still running), the drain rate and the restart time.
    async fn append_and_drain(&mut self, n: u64) -> BenchResult<Drain> {
        let setup = &mut self.setup;
        let first = append(&setup.events(), &mut setup.workload, n).await?;
        self.handled += n as i64;
        setup.drain(self.o, self.uri, &first, n, self.handled).await
    }

    /// Drains a backlog; returns the daemon still running, for the steady state.
    async fn drain_backlog(&mut self, report: &mut BenchReport) -> BenchResult<Daemon> {
        let o = self.o;
        let drained = self.append_and_drain(o.backlog).await?;
        report.backlog_rate = drained.rate;
        report.restart = drained.restart;
        report.backlog_cpu = drained.cpu;
        println!(
            "projector (backlog of {} events): {:.0} events/s; restart to first applied event {:.0} ms; {}",
            o.backlog,
            drained.rate,
            drained.restart.as_secs_f64() * 1e3,
            drained.cpu.describe()
        );
        Ok(drained.daemon)
    }

    /// Writes at a fixed rate (by default half the backlog drain) while the daemon runs, and
    /// waits until it has handled every event.
    async fn steady_lag(&mut self, report: &mut BenchReport) -> BenchResult<()> {
        let o = self.o;
        let steady_rate = if o.steady_rate > 0 {
            o.steady_rate
        } else {
            ((report.backlog_rate / 2.0) as u64).max(100)
        };
        let (written, lags) = steady_state(&mut self.setup, steady_rate, o.steady_seconds).await?;
        self.handled += written as i64;
        report.steady_rate = steady_rate as f64;
        report.steady_events = written;
        report.lag_p50 = percentile(&lags, 0.50);
        report.lag_p99 = percentile(&lags, 0.99);
        report.lag_max = lags.last().copied().unwrap_or_default();
        println!(
            "steady state ({} events/s for {} s, {} events): lag p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            steady_rate,
            o.steady_seconds,
            lags.len(),
            report.lag_p50.as_secs_f64() * 1e3,
            report.lag_p99.as_secs_f64() * 1e3,
            report.lag_max.as_secs_f64() * 1e3
        );
        let handled = self.handled;
        self.setup
            .wait_until("the steady-state events", Duration::from_secs(120), |h| {
                h.unwrap_or(0) >= handled
            })
            .await?;
        Ok(())
    }

    /// Drains the events written while the daemon was stopped.
    async fn catch_up(&mut self, report: &mut BenchReport) -> BenchResult<()> {
        let o = self.o;
        let drained = self.append_and_drain(o.catch_up).await?;
        report.catch_up_rate = drained.rate;
        report.catch_up_cpu = drained.cpu;
        drained.daemon.stop().await?;
        println!(
            "catch-up (after a stop during which {} events accumulated): {:.0} events/s ({:.0}% of the backlog drain); {}",
            o.catch_up,
            drained.rate,
            100.0 * drained.rate / report.backlog_rate,
            drained.cpu.describe()
        );
        Ok(())
    }

    /// kill -9 in the middle of a drain ([`crash`]).
    async fn kill_and_restart(&mut self, report: &mut BenchReport) -> BenchResult<()> {
        let c = crash(&mut self.setup, self.o, self.uri, self.handled).await?;
        println!(
            "kill -9 halfway through a drain of {} events: {} applied events redelivered after the restart (checkpoint interval {} events), all absorbed by the guard",
            self.o.catch_up.max(2),
            c.redelivered,
            c.checkpoint_events
        );
        report.crash = Some(c);
        Ok(())
    }
}

fn print_summary(r: &BenchReport) {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!();
    println!("{:<44} {:>16}   target", "figure", "result");
    println!(
        "{:<44} {:>12.0} /s",
        "U: server ceiling (guarded updates)", r.u_rate
    );
    println!(
        "{:<44} {:>12.0} /s",
        "naive: find + updateOne per event", r.naive_rate
    );
    println!(
        "{:<44} {:>12.0} /s   >= {:.0} (0.5 x U), >= {:.0} (10 x naive)",
        "projector: backlog drain",
        r.backlog_rate,
        0.5 * r.u_rate,
        10.0 * r.naive_rate
    );
    println!(
        "{:<44} {:>9.1} ms p50, {:.1} ms p99",
        format!("steady state lag at {:.0} events/s", r.steady_rate),
        r.lag_p50.as_secs_f64() * 1e3,
        r.lag_p99.as_secs_f64() * 1e3
    );
    println!(
        "{:<44} {:>12.0} ms   < 1000",
        "restart to first applied event",
        r.restart.as_secs_f64() * 1e3
    );
    println!(
        "{:<44} {:>12.0} /s   >= 80% of backlog drain ({:.0}%)",
        "catch-up drain",
        r.catch_up_rate,
        100.0 * r.catch_up_rate / r.backlog_rate.max(1e-9)
    );
    println!(
        "{:<44} {:>12.0} /s   >= backlog drain ({:.2} x)",
        "fold from the event collection",
        r.fold_rate,
        r.fold_rate / r.backlog_rate.max(1e-9)
    );
    for (what, cpu) in [
        ("backlog drain", r.backlog_cpu),
        ("catch-up", r.catch_up_cpu),
        ("fold", r.fold_cpu),
    ] {
        let us = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e6);
        println!(
            "{:<44} {:>9.1} µs daemon, {:.1} µs server   daemon <= 6",
            format!("CPU per event, {what}"),
            us(cpu.daemon),
            us(cpu.server)
        );
    }
    if let Some(c) = &r.crash {
        println!(
            "{:<44} {:>12} ev   <= {} (one checkpoint interval)",
            "kill -9: applied events redelivered", c.redelivered, c.checkpoint_events
        );
    }
    for (n, rss, _) in &r.memory {
        println!(
            "{:<44} {:>10.1} MiB   < 150, flat",
            format!("peak RSS draining {n} events"),
            mib(*rss)
        );
    }
    println!(
        "ratios: projector/U={:.2} projector/naive={:.1} fold/drain={:.2}",
        r.backlog_rate / r.u_rate.max(1e-9),
        r.backlog_rate / r.naive_rate.max(1e-9),
        r.fold_rate / r.backlog_rate.max(1e-9)
    );
}

/// One row of the scale-out table.
#[derive(Debug, Clone)]
pub struct ScaleOutRow {
    /// Partitions of the projection (1: the unpartitioned baseline).
    pub partitions: u32,
    pub instances: usize,
    /// Partition workers per instance, e.g. "2+1".
    pub split: String,
    pub events: u64,
    pub rate: f64,
    /// Process CPU time (user + system) per event.
    pub(crate) cpu_per_event: Duration,
}

/// Partitions of the projection in the scale-out section.
const SCALE_OUT_PARTITIONS: u32 = 3;

/// CPU time (user + system) of this whole process so far, from `getrusage(RUSAGE_SELF)`.
fn process_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// `mongo-projector bench --scale-out`: the example projection with 3 partitions; the same
/// backlog (`backlog` events over `accounts`) drained by 1 instance running the 3 workers, by 2
/// running 2 + 1, and by 3 running one each, after a baseline of the unpartitioned projection
/// in 1 instance. The instances are [`crate::cluster::daemon::Daemon`]s in this process, each with its
/// own client (connection pool); partition `i` goes to instance `i mod n`. Each run starts from
/// stored checkpoints on a fresh database (and a fresh embedded server) and ends when every
/// event is handled. CPU time is the whole process's: with the embedded server that includes
/// mongo-sim, which shares the process.
pub async fn scale_out(o: BenchOptions) -> BenchResult<Vec<ScaleOutRow>> {
    println!(
        "scale-out: {SCALE_OUT_PARTITIONS} partitions, backlog of {} events over {} accounts, lanes={} per worker, batch_size={}",
        o.backlog, o.accounts, o.lanes, o.batch_size
    );
    let mut rows = Vec::new();
    let mut embedded = false;
    let plan = std::iter::once((1, 1))
        .chain((1..=SCALE_OUT_PARTITIONS as usize).map(|n| (SCALE_OUT_PARTITIONS, n)));
    for (partitions, instances) in plan {
        // A fresh embedded server per row, so that no row runs on a server the previous rows
        // filled (its oplog and memory); a MONGODB_URI server is shared by all of them.
        let (uri, server, is_embedded) = start_server(o.backlog as usize * 2 + 100_000).await?;
        embedded = is_embedded;
        let row = scale_out_run(&uri, &o, partitions, instances).await?;
        drop(server);
        println!(
            "{} partition(s), {} instance(s) ({} workers): {:.0} events/s, {:.1} µs CPU per event",
            row.partitions,
            row.instances,
            row.split,
            row.rate,
            row.cpu_per_event.as_secs_f64() * 1e6
        );
        rows.push(row);
    }
    println!();
    println!(
        "CPU time is this process's{}",
        if embedded {
            ", which includes the embedded mongo-sim serving every instance"
        } else {
            " (the daemons only; the server is MONGODB_URI)"
        }
    );
    println!(
        "{:<11} {:<10} {:<10} {:>12} {:>22}",
        "partitions", "instances", "workers", "events/s", "CPU µs per event"
    );
    for r in &rows {
        println!(
            "{:<11} {:<10} {:<10} {:>12.0} {:>22.1}",
            r.partitions,
            r.instances,
            r.split,
            r.rate,
            r.cpu_per_event.as_secs_f64() * 1e6
        );
    }
    Ok(rows)
}

/// The embedded mongo-sim on its own runtime (unless `MONGODB_URI` is set): its URI, the
/// server to keep alive, and whether it is embedded.
async fn start_server(
    oplog_capacity: usize,
) -> BenchResult<(String, Option<mongo_sim::MongoSim>, bool)> {
    if let Ok(uri) = std::env::var("MONGODB_URI") {
        println!("server: MONGODB_URI ({})", crate::config::redact_uri(&uri));
        return Ok((uri, None, false));
    }
    let options = mongo_sim::ServerOptions {
        oplog_capacity,
        ..mongo_sim::ServerOptions::default()
    };
    let sim =
        tokio::task::spawn_blocking(move || mongo_sim::MongoSim::start_on_own_runtime(options))
            .await
            .map_err(err("starting mongo-sim"))?
            .map_err(err("starting mongo-sim"))?;
    let uri = sim.uri().to_string();
    println!("server: embedded mongo-sim on its own runtime at {uri}");
    Ok((uri, Some(sim), true))
}

/// One row of the scale-out section: a first start that stores every worker's checkpoint,
/// the backlog written while nothing runs, then the timed drain from those checkpoints.
async fn scale_out_run(
    uri: &str,
    o: &BenchOptions,
    partitions: u32,
    instances: usize,
) -> BenchResult<ScaleOutRow> {
    let name = format!("bench_scale_out_{partitions}_{instances}");
    let config = scale_out_config(&name, o, partitions)?;
    let setup_client = Client::with_uri_str(uri).await.map_err(err("connecting"))?;
    let db = setup_client.database(&name);
    let _ = db.drop().await;
    let cluster = ScaleOutCluster::connect(uri, config, instances).await?;
    let shutdown = CancellationToken::new();
    let running = cluster.start(&shutdown);
    wait_for_checkpoints(&db, partitions).await?;
    stop_instances(shutdown, running).await?;
    let mut workload = Workload::new(o.accounts, 7919);
    append(&db.collection("events"), &mut workload, o.backlog).await?;

    let shutdown = CancellationToken::new();
    let (started, cpu_before) = (Instant::now(), process_cpu());
    let running = cluster.start(&shutdown);
    wait_for_drain(&running, o.backlog, started + Duration::from_secs(600)).await?;
    let (elapsed, cpu) = (started.elapsed(), process_cpu().saturating_sub(cpu_before));
    let split = running
        .iter()
        .map(|i| i.daemon.stats().len().to_string())
        .collect::<Vec<_>>()
        .join("+");
    stop_instances(shutdown, running).await?;
    let _ = db.drop().await;
    Ok(ScaleOutRow {
        partitions,
        instances,
        split,
        events: o.backlog,
        rate: o.backlog as f64 / elapsed.as_secs_f64().max(1e-9),
        cpu_per_event: cpu / o.backlog.max(1) as u32,
    })
}

/// The example configuration on database `name`, split into `partitions`, with leases off:
/// the instances split the workers between them here, and leases would share them out again
/// (each instance's fair share counts only the workers it was given).
fn scale_out_config(
    name: &str,
    o: &BenchOptions,
    partitions: u32,
) -> BenchResult<crate::config::Config> {
    let text = EXAMPLE_CONFIG
        .replace("database = \"bank\"", &format!("database = \"{name}\""))
        .replace("start = \"beginning\"", "start = \"now\"")
        .replace(
            "[[projections]]",
            &format!(
                "[source]\nlanes = {}\nbatch_size = {}\n\n[[projections]]\npartitions = {partitions}",
                o.lanes, o.batch_size
            ),
        );
    let mut config = crate::config::Config::parse(&text).map_err(err("scale-out configuration"))?;
    config.leases.enabled = false;
    Ok(config)
}

/// The daemon instances of one scale-out row, each with its own client (connection pool).
struct ScaleOutCluster {
    config: crate::config::Config,
    clients: Vec<Client>,
}

/// One instance started in this process, and the task running it.
struct RunningInstance {
    daemon: Arc<cluster::Daemon>,
    task: tokio::task::JoinHandle<cluster::DaemonReport>,
}

impl ScaleOutCluster {
    async fn connect(
        uri: &str,
        config: crate::config::Config,
        instances: usize,
    ) -> BenchResult<Self> {
        let mut clients = Vec::new();
        for _ in 0..instances {
            clients.push(Client::with_uri_str(uri).await.map_err(err("connecting"))?);
        }
        Ok(Self { config, clients })
    }

    /// Starts every instance; partition `i` runs in instance `i mod n`.
    fn start(&self, shutdown: &CancellationToken) -> Vec<RunningInstance> {
        let instances = self.clients.len();
        self.clients
            .iter()
            .enumerate()
            .map(|(n, client)| {
                let daemon = Arc::new(cluster::Daemon::with_workers(
                    &self.config,
                    client,
                    shutdown,
                    |w| w.partition.map_or(0, |p| p.index as usize) % instances == n,
                ));
                let running = daemon.clone();
                let task = tokio::spawn(async move { running.run().await });
                RunningInstance { daemon, task }
            })
            .collect()
    }
}

/// Stops every instance and waits for each to report a clean stop.
async fn stop_instances(
    shutdown: CancellationToken,
    running: Vec<RunningInstance>,
) -> BenchResult<()> {
    shutdown.cancel();
    for instance in running {
        let report = instance.task.await.map_err(err("a daemon instance"))?;
        if !report.all_ok() {
            return Err(format!("a daemon instance failed: {:?}", report.results));
        }
    }
    Ok(())
}

/// Waits until each of the `partitions` workers has stored its first checkpoint.
async fn wait_for_checkpoints(db: &Database, partitions: u32) -> BenchResult<()> {
    let checkpoints = db.collection::<Document>("projector_checkpoints");
    let deadline = Instant::now() + Duration::from_secs(60);
    while checkpoints
        .count_documents(doc! {})
        .await
        .map_err(err("reading checkpoints"))?
        < u64::from(partitions)
    {
        if Instant::now() > deadline {
            return Err("timed out waiting for the workers' first checkpoints".into());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Ok(())
}

/// Waits until the instances together have handled `backlog` events, by their counters.
async fn wait_for_drain(
    running: &[RunningInstance],
    backlog: u64,
    deadline: Instant,
) -> BenchResult<()> {
    loop {
        let handled: u64 = running
            .iter()
            .map(|i| {
                let t = i.daemon.total();
                t.applied + t.skipped + t.duplicates + t.parked + t.dead_lettered
            })
            .sum();
        if handled >= backlog {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("timed out draining: {handled} of {backlog} events"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_read_after_the_command_name_even_when_it_holds_spaces() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        // utime stime ...
        let line = "4242 (tokio (worker) 1) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0";
        // SAFETY: sysconf only reads a configuration value.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let cpu = stat_cpu(line).unwrap();
        assert!((cpu.as_secs_f64() - 300.0 / ticks).abs() < 1e-9, "{cpu:?}");
        assert_eq!(stat_cpu("4242 (cut short) S 1"), None);
    }

    #[test]
    fn this_process_can_read_its_own_cpu() {
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(stat_cpu(&own).is_some());
    }
}
