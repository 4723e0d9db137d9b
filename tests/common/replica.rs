//! Daemon instances sharing one server, as replicas of one deployment: each with its own
//! client (and `appName`, so that a fail point can single one out), stopped gracefully or
//! killed.

use super::{TestEnv, eventually};
use mongo_projector::cluster::daemon::{Daemon, DaemonReport};
use mongo_projector::config::Config;
use mongo_projector::model::partition::Worker;
use mongo_projector::ops::stats::ProjectionStats;
use mongodb::options::ClientOptions;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// One daemon instance running in the background of a test.
pub struct Replica {
    pub holder: String,
    pub client: mongodb::Client,
    pub shutdown: CancellationToken,
    pub handle: tokio::task::JoinHandle<DaemonReport>,
    pub stats: Vec<(String, Arc<ProjectionStats>)>,
}

/// The test configuration with the recording projection and leases short enough for
/// takeovers to be quick.
pub fn leased_config(env: &TestEnv) -> Config {
    let mut config = env.config();
    super::recording_projection(&mut config);
    config.leases.ttl = Duration::from_secs(2);
    config.leases.renew_every = Duration::from_millis(400);
    config
}

/// An instance running every worker of `config` (under leases when they are on).
pub async fn start_replica(env: &TestEnv, config: &Config, holder: &str) -> Replica {
    start_instance(env, config, holder, |_| true).await
}

/// An instance running only the workers `select` accepts: a fixed split, meant with leases
/// off ([`Daemon::with_workers`]).
pub async fn start_instance(
    env: &TestEnv,
    config: &Config,
    holder: &str,
    select: impl Fn(&Worker) -> bool,
) -> Replica {
    let mut options = ClientOptions::parse(&env.uri).await.unwrap();
    options.app_name = Some(holder.to_string());
    let client = mongodb::Client::with_options(options).unwrap();
    let mut config = config.clone();
    config.leases.holder = Some(holder.to_string());
    let shutdown = CancellationToken::new();
    let daemon = Daemon::with_workers(&config, &client, &shutdown, select);
    let stats = daemon.stats();
    let handle = tokio::spawn(async move { daemon.run().await });
    Replica {
        holder: holder.to_string(),
        client,
        shutdown,
        handle,
        stats,
    }
}

impl Replica {
    pub fn worker(&self, name: &str) -> &Arc<ProjectionStats> {
        &self.stats.iter().find(|(n, _)| n == name).unwrap().1
    }

    pub fn holds(&self, name: &str) -> bool {
        self.worker(name).lease.held.load(Ordering::Relaxed)
    }

    pub fn held(&self) -> usize {
        self.stats
            .iter()
            .filter(|(_, s)| s.lease.held.load(Ordering::Relaxed))
            .count()
    }

    /// Graceful stop (SIGTERM): final checkpoint, lease released.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let report = self.handle.await.expect("daemon task");
        assert!(report.all_ok(), "{:?}", report.results);
    }

    /// Graceful stop of a daemon some of whose workers stopped for good; its report.
    pub async fn stop_allowing_failures(self) -> DaemonReport {
        self.shutdown.cancel();
        self.handle.await.expect("daemon task")
    }

    /// A crash: the task is aborted, nothing is written on the way out.
    pub async fn kill(self) {
        self.handle.abort();
        let _ = self.handle.await;
    }
}

/// Waits until every worker named is running somewhere among `replicas` (holds its lease).
pub async fn wait_until_held(replicas: &[&Replica], workers: &[String], within: Duration) {
    for w in workers {
        eventually(&format!("{w} held"), within, || async {
            replicas.iter().any(|r| r.holds(w))
        })
        .await;
    }
}
