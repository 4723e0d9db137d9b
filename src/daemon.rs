//! The daemon: one worker per projection (one per partition of a partitioned projection), all
//! sharing one client and one shutdown token. A worker that stops for good (its event
//! collection dropped, say) is reported while the others go on.

use crate::checkpoint::CheckpointStore;
use crate::config::{Config, ProjectionConfig};
use crate::source::{ProjectionStopped, ProjectionWorker};
use crate::stats::{ProjectionStats, StatsSnapshot};
use mongodb::Client;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// A running set of projection workers.
pub struct Daemon {
    workers: Vec<Arc<ProjectionWorker>>,
}

/// How each projection ended.
#[derive(Debug)]
pub struct DaemonReport {
    pub results: Vec<(String, Result<(), ProjectionStopped>)>,
}

impl DaemonReport {
    pub fn all_ok(&self) -> bool {
        self.results.iter().all(|(_, r)| r.is_ok())
    }
}

impl Daemon {
    pub fn new(config: &Config, client: &Client, shutdown: &CancellationToken) -> Self {
        Self::with_workers(config, client, shutdown, |_| true)
    }

    /// A daemon running only the workers `select` accepts, among every projection's workers
    /// (one per partition: [`crate::partition::workers`]). Until workers are shared out by
    /// leases, this is how instances split a partitioned projection between them.
    pub fn with_workers(
        config: &Config,
        client: &Client,
        shutdown: &CancellationToken,
        select: impl Fn(&ProjectionConfig) -> bool,
    ) -> Self {
        let checkpoints = CheckpointStore::new(
            &client.database(config.checkpoint_database()),
            &config.checkpoints.collection,
        );
        let workers = config
            .projections
            .iter()
            .flat_map(crate::partition::workers)
            .filter(|w| select(w))
            .map(|p| {
                let db = client.database(&p.database);
                Arc::new(ProjectionWorker::new(
                    Arc::new(p),
                    config.source.clone(),
                    config.checkpoints.clone(),
                    db,
                    checkpoints.clone(),
                    shutdown.child_token(),
                ))
            })
            .collect();
        Self { workers }
    }

    /// Counters per projection, for reporting while running.
    pub fn stats(&self) -> Vec<(String, Arc<ProjectionStats>)> {
        self.workers
            .iter()
            .map(|w| (w.config.name.clone(), w.stats.clone()))
            .collect()
    }

    /// The sum of all projections' counters.
    pub fn total(&self) -> StatsSnapshot {
        self.workers
            .iter()
            .map(|w| w.stats.snapshot())
            .fold(StatsSnapshot::default(), |a, b| a + b)
    }

    /// Runs every projection until shutdown or until each has stopped.
    pub async fn run(&self) -> DaemonReport {
        let mut handles = Vec::new();
        for w in &self.workers {
            let w = w.clone();
            handles.push((
                w.config.name.clone(),
                tokio::spawn(async move { w.run().await }),
            ));
        }
        let mut results = Vec::new();
        for (name, handle) in handles {
            let result = match handle.await {
                Ok(r) => r,
                Err(e) => Err(ProjectionStopped {
                    projection: name.clone(),
                    message: format!("worker task failed: {e}"),
                }),
            };
            if let Err(e) = &result {
                tracing::error!(projection = %name, error = %e.message, "projection stopped");
            }
            results.push((name, result));
        }
        DaemonReport { results }
    }
}

impl Daemon {
    /// Starts the HTTP endpoint and its background poll for this daemon's projections; both
    /// stop with `shutdown`. Returns the monitor and the bound address.
    pub async fn start_monitoring(
        &self,
        config: &Config,
        client: &Client,
        shutdown: &CancellationToken,
    ) -> std::io::Result<(Arc<crate::metrics::Monitor>, std::net::SocketAddr)> {
        let monitor = crate::metrics::Monitor::new(config, client, self.stats());
        let (address, serve) =
            crate::http::bind(config.http.address, monitor.clone(), shutdown.clone()).await?;
        tokio::spawn(serve);
        tokio::spawn(monitor.clone().poll(client.clone(), shutdown.clone()));
        tracing::info!(%address, "serving /metrics, /healthz, /readyz and /status");
        Ok((monitor, address))
    }
}
