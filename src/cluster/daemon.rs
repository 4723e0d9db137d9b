//! The daemon: one worker per projection (one per partition of a partitioned projection), all
//! sharing one client and one shutdown token. A worker that stops for good (its event
//! collection dropped, say) is reported while the others go on.
//!
//! With `[leases] enabled` (the default), each worker runs only while this instance holds its
//! lease ([`crate::cluster::replicas`]), so that several replicas can run side by side.

use crate::cluster::replicas::{FIRST_HEARTBEAT_WAIT, Instance, run_leased};
use crate::config::Config;
use crate::error::StopReason;
use crate::model::partition::Worker;
use crate::ops::stats::{ProjectionStats, StatsSnapshot};
use crate::pipeline::worker::{ProjectionStopped, ProjectionWorker};
use crate::store::checkpoint::CheckpointStore;
use mongodb::Client;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

/// A running set of projection workers.
pub struct Daemon {
    workers: Vec<Arc<ProjectionWorker>>,
    /// Projections refused before the start ([`Daemon::refuse`]), with the reason.
    refused: Vec<(String, String)>,
    /// This instance among the replicas; `None` with leases disabled.
    instance: Option<Arc<Instance>>,
    shutdown: CancellationToken,
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
    /// (one per partition: [`crate::model::partition::workers`]): a fixed split between instances,
    /// for tests and benchmarks, meant with leases off (leases share the workers out at run
    /// time, and an instance's fair share counts only the workers it was given).
    pub fn with_workers(
        config: &Config,
        client: &Client,
        shutdown: &CancellationToken,
        select: impl Fn(&Worker) -> bool,
    ) -> Self {
        let checkpoints = CheckpointStore::new(
            &client.database(config.checkpoint_database()),
            &config.checkpoints.collection,
        );
        let workers: Vec<Arc<ProjectionWorker>> = crate::model::partition::all_workers(config)
            .into_iter()
            .filter(|w| select(w))
            .map(|w| {
                let db = client.database(&w.projection.database);
                Arc::new(ProjectionWorker::new(
                    w,
                    config.source.clone(),
                    config.checkpoints.clone(),
                    db,
                    checkpoints.clone(),
                    shutdown.child_token(),
                ))
            })
            .collect();
        let instance = config
            .leases
            .enabled
            .then(|| Instance::new(config, client, checkpoints, workers.len()));
        if let Some(instance) = &instance {
            // Standby from the start: a monitor built before `run` already sees leases.
            for w in &workers {
                w.stats.lease.enable(&instance.holder);
            }
        }
        Self {
            workers,
            refused: Vec::new(),
            instance,
            shutdown: shutdown.clone(),
        }
    }

    /// This instance among the replicas (its holder id, its share of leases); `None` with
    /// leases disabled.
    pub fn instance(&self) -> Option<&Arc<Instance>> {
        self.instance.as_ref()
    }

    /// Every worker with its counters, for the tools that run beside the daemon (the
    /// background audit).
    pub fn workers(&self) -> Vec<(Worker, Arc<ProjectionStats>)> {
        self.workers
            .iter()
            .map(|w| (w.worker.clone(), w.stats.clone()))
            .collect()
    }

    /// Counters per projection, for reporting while running.
    pub fn stats(&self) -> Vec<(String, Arc<ProjectionStats>)> {
        self.workers
            .iter()
            .map(|w| (w.worker.name.clone(), w.stats.clone()))
            .collect()
    }

    /// The sum of all projections' counters.
    pub fn total(&self) -> StatsSnapshot {
        self.workers
            .iter()
            .map(|w| w.stats.snapshot())
            .fold(StatsSnapshot::default(), |a, b| a + b)
    }

    /// Does not start `projection`'s workers: the server lacks what they need (`message`, the
    /// failed checks). They report as stopped for that reason in `/status`, the metrics and
    /// the run's report, and the other projections run.
    pub(crate) fn refuse(&mut self, projection: &str, message: &str) {
        for w in self.workers.iter().filter(|w| w.config.name == projection) {
            w.stats.set_stopped(StopReason::Unsupported);
            w.stats
                .set_last_error(format!("projection stopped: {message}"));
        }
        self.refused
            .push((projection.to_string(), message.to_string()));
    }

    fn is_refused(&self, w: &ProjectionWorker) -> Option<&str> {
        self.refused
            .iter()
            .find(|(p, _)| *p == w.config.name)
            .map(|(_, m)| m.as_str())
    }

    /// Runs every projection until shutdown or until each has stopped.
    ///
    /// Dropping this future (a crash of the task running it) aborts every worker at once,
    /// without final checkpoints or lease releases.
    pub async fn run(&self) -> DaemonReport {
        let mut heartbeat = None;
        let heartbeat_stop = self.shutdown.child_token();
        if let Some(instance) = &self.instance {
            tracing::info!(holder = %instance.holder, workers = self.workers.len(), "leases enabled: each worker runs while this instance holds its lease");
            // Count the live instances before taking leases, so that a new instance does not
            // take every lease only to give most back a moment later.
            let _ = tokio::time::timeout(FIRST_HEARTBEAT_WAIT, instance.heartbeat()).await;
            heartbeat = Some(AbortOnDropHandle::new(tokio::spawn(
                instance.clone().announce(heartbeat_stop.clone()),
            )));
        }
        let mut handles = Vec::new();
        let mut results = Vec::new();
        for w in &self.workers {
            let name = w.worker.name.clone();
            if let Some(message) = self.is_refused(w) {
                results.push((
                    name.clone(),
                    Err(ProjectionStopped {
                        projection: name,
                        reason: StopReason::Unsupported,
                        message: message.to_string(),
                    }),
                ));
                continue;
            }
            let stats = w.stats.clone();
            let w = w.clone();
            let task = match &self.instance {
                Some(instance) => tokio::spawn(run_leased(w, instance.clone())),
                None => tokio::spawn(async move { w.run().await }),
            };
            handles.push((name, stats, AbortOnDropHandle::new(task)));
        }
        for (name, stats, handle) in handles {
            let result = match handle.await {
                Ok(r) => r,
                Err(e) => {
                    // The worker's task panicked: a fault of the daemon, reported like a stop.
                    let message = format!("worker task failed: {e}");
                    tracing::error!(projection = %name, error = %message, "projection stopped");
                    stats.set_stopped(StopReason::Internal);
                    stats.set_last_error(format!("projection stopped: {message}"));
                    Err(ProjectionStopped {
                        projection: name.clone(),
                        reason: StopReason::Internal,
                        message,
                    })
                }
            };
            results.push((name, result));
        }
        heartbeat_stop.cancel();
        if let Some(heartbeat) = heartbeat {
            // The heartbeat is removed on shutdown, so that others count this instance gone.
            let _ = heartbeat.await;
        }
        DaemonReport { results }
    }
}
