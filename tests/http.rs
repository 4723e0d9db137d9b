//! The HTTP endpoint during a run: `/metrics` counts what happened, `/healthz` turns unhealthy
//! while the stream is blocked and MongoDB answers (and stays healthy while MongoDB is away),
//! `/readyz` says why MongoDB or a projection is not ready and follows lag when asked to (a
//! first start's scan of the event collection included), `/startupz` waits for every worker to
//! begin, `/status` reports each projection.

mod common;

use bson::doc;
use common::{
    Monitored, TestEnv, event, eventually, fail_point, http_get as get, metric_sample,
    recording_projection, start_monitored, stored_sequence, wait_until_tailing,
};
use mongo_projector::config::Config;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

/// The label of the example projection's series.
const ACCOUNTS: &str = "projection=\"accounts\"";

/// Appends the first event of an account.
async fn open_account(env: &TestEnv, id: &str) {
    env.events()
        .insert_one(event(
            id,
            1,
            "AccountOpened",
            doc! {"owner": id, "currency": "EUR"},
        ))
        .await
        .unwrap();
}

/// The next `update` of the read model hangs for 4 s.
async fn block_next_read_model_write(env: &TestEnv) {
    let ns = format!("{}.accounts", env.db.name());
    fail_point(
        env,
        doc! {"times": 1}.into(),
        doc! {"failCommands": ["update"], "blockConnection": true, "blockTimeMS": 4000, "namespace": ns},
    )
    .await;
}

/// The daemon with its endpoint on a free port, polling often.
async fn serve(env: &TestEnv, mut config: Config) -> Monitored {
    config.http.address = "127.0.0.1:0".parse().unwrap();
    config.http.poll_every = Duration::from_millis(50);
    start_monitored(env, &config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_happened() {
    let env = TestEnv::new("metrics").await;
    let mut config = env.config();
    recording_projection(&mut config);
    // A read model already past sequence 1: the first event arrives as a duplicate.
    env.accounts()
        .insert_one(doc! {"_id": "dup", "lastSequenceNumber": 4i64})
        .await
        .unwrap();
    let served = serve(&env, config).await;
    eventually("the stream is open and caught up", WAIT, || async {
        let (_, scrape) = get(served.address, "/metrics").await;
        metric_sample(&scrape, "mongo_projector_caught_up", &[ACCOUNTS]) == Some(1.0)
    })
    .await;
    env.events()
        .insert_one(event("dup", 1, "A", doc! {}))
        .await
        .unwrap();
    env.events()
        .insert_one(event("m", 1, "A", doc! {}))
        .await
        .unwrap();
    env.events()
        .insert_one(event("m", 3, "A", doc! {}))
        .await
        .unwrap(); // parked: 2 is missing
    eventually("one parked event shows in the metrics", WAIT, || async {
        let (_, scrape) = get(served.address, "/metrics").await;
        metric_sample(&scrape, "mongo_projector_events_parked", &[ACCOUNTS]) == Some(1.0)
    })
    .await;
    let (code, scrape) = get(served.address, "/metrics").await;
    assert_eq!(code, 200);
    assert_eq!(
        metric_sample(&scrape, "mongo_projector_events_applied_total", &[ACCOUNTS]),
        Some(1.0),
        "{scrape}"
    );
    assert_eq!(
        metric_sample(
            &scrape,
            "mongo_projector_events_duplicate_total",
            &[ACCOUNTS]
        ),
        Some(1.0),
        "{scrape}"
    );
    assert_eq!(
        metric_sample(
            &scrape,
            "mongo_projector_events_received_total",
            &[ACCOUNTS]
        ),
        Some(3.0)
    );
    assert!(scrape.contains("# TYPE mongo_projector_apply_duration_seconds histogram"));
    // The process-wide metrics carry no projection label.
    assert_eq!(
        metric_sample(&scrape, "mongo_projector_connected", &[]),
        Some(1.0),
        "{scrape}"
    );
    assert!(
        scrape.contains(&format!(
            "mongo_projector_build_info{{version=\"{}\",revision=\"unknown\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{scrape}"
    );
    // The crash window: the parked event (handled) may still lie beyond the stored checkpoint.
    let beyond = metric_sample(
        &scrape,
        "mongo_projector_events_beyond_checkpoint",
        &[ACCOUNTS],
    );
    assert!(beyond.is_some_and(|n| n <= 3.0), "{scrape}");
    let answered = metric_sample(
        &scrape,
        "mongo_projector_stream_answer_timestamp_seconds",
        &[ACCOUNTS],
    );
    let now = bson::DateTime::now().timestamp_millis() as f64 / 1000.0;
    assert!(
        answered.is_some_and(|t| t <= now && t > now - 60.0),
        "{scrape}"
    );
    assert!(
        scrape.contains("process_resident_memory_bytes"),
        "process metrics are exported"
    );

    env.events()
        .insert_one(event("m", 2, "A", doc! {}))
        .await
        .unwrap();
    eventually("the parked event is released", WAIT, || async {
        let (_, scrape) = get(served.address, "/metrics").await;
        metric_sample(&scrape, "mongo_projector_events_parked", &[ACCOUNTS]) == Some(0.0)
            && metric_sample(&scrape, "mongo_projector_events_applied_total", &[ACCOUNTS])
                == Some(3.0)
    })
    .await;
    let (code, body) = get(served.address, "/status").await;
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["projections"][0]["name"], "accounts");
    assert_eq!(status["projections"][0]["eventsApplied"], 3);
    assert_eq!(stored_sequence(&env, "m").await, Some(3));
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_fails_while_the_stream_is_blocked() {
    let env = TestEnv::new("healthz").await;
    let mut config = env.config();
    config.http.liveness_timeout = Duration::from_millis(700);
    let served = serve(&env, config).await;
    eventually("healthy once the stream answers", WAIT, || async {
        get(served.address, "/healthz").await.0 == 200
    })
    .await;
    wait_until_tailing(&env, "accounts").await;
    // Every getMore now hangs for 3 s, far longer than the liveness timeout.
    fail_point(
        &env,
        "alwaysOn".into(),
        doc! {"failCommands": ["getMore"], "blockConnection": true, "blockTimeMS": 3000},
    )
    .await;
    eventually("unhealthy while getMore is blocked", WAIT, || async {
        get(served.address, "/healthz").await.0 == 503
    })
    .await;
    let (_, body) = get(served.address, "/healthz").await;
    assert!(body.contains("no answer from its change stream"), "{body}");
    fail_point(&env, "off".into(), doc! {}).await;
    eventually("healthy again once getMore answers", WAIT, || async {
        get(served.address, "/healthz").await.0 == 200
    })
    .await;
    served.stop().await;
}

// A first start from the beginning folds the stored events before it tails: until that scan
// is over the read model is behind, and /readyz says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_waits_for_the_first_scan_of_the_collection() {
    let env = TestEnv::new("readyz_scan").await;
    open_account(&env, "s").await;
    // The scan's guarded write of that event hangs for 4 s.
    block_next_read_model_write(&env).await;
    let mut config = env.config();
    config.http.readiness_max_lag = Some(Duration::from_secs(1));
    let served = serve(&env, config).await;
    eventually(
        "not ready for lag while the scan is behind",
        WAIT,
        || async {
            let (code, body) = get(served.address, "/readyz").await;
            code == 503 && body.contains("accounts: lag")
        },
    )
    .await;
    assert_eq!(
        stored_sequence(&env, "s").await,
        None,
        "still being written"
    );
    eventually("ready once the scan is done", WAIT, || async {
        get(served.address, "/readyz").await.0 == 200
    })
    .await;
    assert_eq!(stored_sequence(&env, "s").await, Some(1));
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_lag() {
    let env = TestEnv::new("readyz").await;
    let mut config = env.config();
    config.http.readiness_max_lag = Some(Duration::from_secs(1));
    let served = serve(&env, config).await;
    eventually("ready once connected and caught up", WAIT, || async {
        get(served.address, "/readyz").await.0 == 200
    })
    .await;
    // The event below comes through the stream, not through the first start's scan.
    wait_until_tailing(&env, "accounts").await;
    // The guarded write to the read model hangs for 4 s: the daemon falls behind its stream.
    block_next_read_model_write(&env).await;
    open_account(&env, "r").await;
    eventually("not ready while lagging", WAIT, || async {
        get(served.address, "/readyz").await.0 == 503
    })
    .await;
    let (_, body) = get(served.address, "/readyz").await;
    assert!(body.contains("lag"), "{body}");
    eventually("ready again once caught up", WAIT, || async {
        get(served.address, "/readyz").await.0 == 200
    })
    .await;
    assert_eq!(stored_sequence(&env, "r").await, Some(1));
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_mongodb_gone_healthz_stays_200_and_readyz_and_status_say_why() {
    let mut env = TestEnv::new("mongodb_gone").await;
    let Some(server) = env.server.take() else {
        eprintln!("skipped against MONGODB_URI: needs to stop the embedded server");
        return;
    };
    // Operations give up quickly once the server is gone, so that the stop below is prompt.
    let mut options = mongodb::options::ClientOptions::parse(&env.uri)
        .await
        .unwrap();
    options.server_selection_timeout = Some(Duration::from_millis(300));
    env.client = mongodb::Client::with_options(options).unwrap();
    let mut config = env.config();
    config.http.liveness_timeout = Duration::from_millis(700);
    config.leases.enabled = false;
    let served = serve(&env, config).await;
    eventually("healthy and ready", WAIT, || async {
        get(served.address, "/healthz").await.0 == 200
            && get(served.address, "/readyz").await.0 == 200
    })
    .await;
    server.shutdown().await;
    eventually("not ready, saying why", WAIT, || async {
        let (code, body) = get(served.address, "/readyz").await;
        code == 503 && body.contains("MongoDB does not answer")
    })
    .await;
    let status = || async {
        let (_, body) = get(served.address, "/status").await;
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    };
    assert_eq!(status().await["connected"], false);
    // Past the liveness timeout without an answer from the stream: still live, since a
    // restart cannot bring MongoDB back.
    eventually("silent past the liveness timeout", WAIT, || async {
        status().await["projections"][0]["secondsSinceProgress"]
            .as_f64()
            .is_some_and(|s| s > 1.5)
    })
    .await;
    let (code, body) = get(served.address, "/healthz").await;
    assert_eq!(code, 200, "{body}");
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startupz_waits_until_every_worker_has_begun() {
    let env = TestEnv::new("startupz").await;
    let mut config = env.config();
    config.audit.every = None;
    // The change stream's `aggregate` (the daemon's first) hangs for 3 s: the worker cannot
    // begin until it answers.
    fail_point(
        &env,
        doc! {"times": 1}.into(),
        doc! {"failCommands": ["aggregate"], "blockConnection": true, "blockTimeMS": 3000,
        "namespace": format!("{}.events", env.db.name())},
    )
    .await;
    let served = serve(&env, config).await;
    let (code, body) = get(served.address, "/startupz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("accounts: not started yet"), "{body}");
    eventually("started once the stream opened", WAIT, || async {
        get(served.address, "/startupz").await.0 == 200
    })
    .await;
    served.stop().await;
}
