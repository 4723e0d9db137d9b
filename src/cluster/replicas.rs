//! Running as one of several replicas: each worker waits in standby until its lease
//! ([`crate::store::lease`]) is free, then runs under a child stop token while a renewal task keeps
//! the lease; a lost lease, a renewal that fails for a whole ttl, a handover request or a
//! fair-share yield stops the run gracefully (its final checkpoint fenced by the epoch) and
//! the worker goes back to standby. Daemon shutdown stops the run and releases the lease so
//! that another replica takes over at once instead of after the ttl.
//!
//! Fair share: every instance renews a heartbeat; an instance holds at most
//! `ceil(workers / live instances)` leases and gives up the extra ones when more instances
//! appear.

use crate::config::{Config, INSTANCES_COLLECTION, LeaseConfig};
use crate::error::{Failures, StoreError};
use crate::ops::stats::ProjectionStats;
use crate::pipeline::worker::{ProjectionStopped, ProjectionWorker};
use crate::store::checkpoint::CheckpointStore;
use crate::store::lease::{InstanceStore, Lease, LeaseStore, Renewal};
use mongodb::Client;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// This instance among the replicas: its holder id, the stores, and its share of leases.
pub struct Instance {
    pub holder: String,
    pub leases: LeaseStore,
    instances: InstanceStore,
    checkpoints: CheckpointStore,
    config: LeaseConfig,
    pub share: FairShare,
}

/// How many leases one instance may hold: an equal share of its workers among the live
/// instances, rounded up so that every worker has a place. Every instance runs the same
/// workers, so the shares add up to at least the number of workers.
#[derive(Debug)]
pub struct FairShare {
    workers: usize,
    /// Leases held or being acquired, kept within [`FairShare::limit`].
    held: AtomicUsize,
    /// Live instances at the last heartbeat, this one included.
    live: AtomicUsize,
}

impl FairShare {
    pub fn new(workers: usize) -> Self {
        FairShare {
            workers,
            held: AtomicUsize::new(0),
            live: AtomicUsize::new(1),
        }
    }

    /// Most leases this instance may hold now.
    pub fn limit(&self) -> usize {
        self.workers
            .div_ceil(self.live.load(Ordering::Relaxed).max(1))
            .max(1)
    }

    /// Leases held (or being acquired) now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Records the number of live instances; returns the previous one.
    pub(crate) fn set_live(&self, live: usize) -> usize {
        self.live.swap(live.max(1), Ordering::Relaxed)
    }

    /// Takes a place for one more lease, if within the limit.
    pub(crate) fn reserve(&self) -> bool {
        self.held
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |h| {
                (h < self.limit()).then_some(h + 1)
            })
            .is_ok()
    }

    /// Gives a place back (the lease was not acquired, or is no longer held).
    pub(crate) fn unreserve(&self) {
        let _ = self
            .held
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |h| h.checked_sub(1));
    }

    /// Gives up a place when over the limit: true for exactly as many callers as there are
    /// places too many, each of which then releases its lease.
    pub(crate) fn yield_one(&self) -> bool {
        self.held
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |h| {
                (h > self.limit()).then(|| h - 1)
            })
            .is_ok()
    }
}

/// How an active period ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RenewalEnd {
    /// The run stopped by itself (shutdown, or a failure of the worker).
    RunStopped,
    /// Another holder has the lease, or it could not be renewed within the ttl.
    Lost,
    /// Another instance asked for the lease.
    HandoverRequested,
    /// More instances are alive now: this one gives up a lease so that they can share.
    Yielded,
}

impl Instance {
    pub fn new(
        config: &Config,
        client: &Client,
        checkpoints: CheckpointStore,
        workers: usize,
    ) -> Arc<Self> {
        let db = client.database(config.checkpoint_database());
        Arc::new(Instance {
            holder: config.leases.holder_id(),
            leases: LeaseStore::new(&db, &config.leases.collection),
            instances: InstanceStore::new(&db, INSTANCES_COLLECTION),
            checkpoints,
            config: config.leases.clone(),
            share: FairShare::new(workers),
        })
    }

    /// Renews this instance's heartbeat once and counts the live instances.
    pub async fn heartbeat(&self) {
        match self
            .instances
            .heartbeat(&self.holder, self.config.ttl)
            .await
        {
            Ok(live) => {
                if self.share.set_live(live) != live {
                    tracing::info!(holder = %self.holder, live, share = self.share.limit(), "live instances changed");
                }
            }
            Err(e) => {
                tracing::warn!(holder = %self.holder, error = %e, "instance heartbeat failed; will retry")
            }
        }
    }

    /// Renews the heartbeat every `renew_every` until `shutdown`, then removes it.
    pub(crate) async fn announce(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.config.renew_every) => {}
                _ = shutdown.cancelled() => break,
            }
            self.heartbeat().await;
        }
        if let Err(e) = self.instances.leave(&self.holder).await {
            tracing::warn!(holder = %self.holder, error = %e, "cannot remove the instance heartbeat");
        }
    }
}

/// Runs `worker` under its lease until the worker's stop token is cancelled (Ok) or the
/// projection cannot go on (Err). `worker` is a template: each active period runs a fresh
/// copy ([`ProjectionWorker::for_run`]) sharing its counters.
pub(crate) async fn run_leased(
    worker: Arc<ProjectionWorker>,
    instance: Arc<Instance>,
) -> Result<(), ProjectionStopped> {
    let name = worker.worker.name.clone();
    let stop = worker.shutdown.clone();
    let lease_stats = &worker.stats.lease;
    lease_stats.enable(&instance.holder);
    let ttl = instance.config.ttl;
    // Failures of this worker's lease path (acquire, claim): paused by the worker's backoff,
    // and stopping it when retrying cannot help ([`crate::error`]).
    let mut failures = Failures::new(&worker.source);
    while !stop.is_cancelled() {
        let mut waiting = true;
        let mut failure = None;
        if instance.share.reserve() {
            let asked_at = Instant::now();
            match instance
                .leases
                .try_acquire(&name, &instance.holder, ttl)
                .await
            {
                Ok(Some(lease)) => {
                    lease_stats.standby.store(false, Ordering::Relaxed);
                    match active(&worker, &instance, lease, asked_at).await? {
                        None => {
                            failures.progress();
                            continue;
                        }
                        Some(e) => failure = Some(e),
                    }
                }
                Ok(None) => instance.share.unreserve(),
                Err(e) => {
                    waiting = false;
                    instance.share.unreserve();
                    failure = Some(e);
                }
            }
        }
        let pause = match failure {
            Some(e) => {
                if let Some(reason) = failures.count(&e) {
                    return Err(worker.stopped(reason, format!("lease or checkpoint claim: {e}")));
                }
                let pause = failures.backoff.next_pause();
                worker.stats.set_last_error(e.to_string());
                tracing::warn!(worker = %name, holder = %instance.holder, error = %e, retry_in = ?pause, "cannot take the lease and its checkpoint; will retry");
                pause
            }
            None => instance.config.renew_every,
        };
        lease_stats.standby.store(waiting, Ordering::Relaxed);
        if let Ok(Some(state)) = instance.leases.current(&name).await {
            lease_stats.set_view(state.holder, state.epoch);
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.cancelled() => {}
        }
    }
    Ok(())
}

/// One period as lease holder: claim the checkpoint, run, renew; then release. `Ok(Some)`
/// with the error when the checkpoint could not be claimed (a newer holder's claim is no
/// error: back to standby).
async fn active(
    template: &ProjectionWorker,
    instance: &Arc<Instance>,
    lease: Lease,
    asked_at: Instant,
) -> Result<Option<StoreError>, ProjectionStopped> {
    let name = &lease.name;
    let stats = &template.stats;
    tracing::info!(worker = %name, holder = %lease.holder, epoch = lease.epoch, "lease acquired: active");
    ProjectionStats::add(&stats.lease.acquisitions, 1);
    stats.lease.held.store(true, Ordering::Relaxed);
    stats
        .lease
        .set_view(Some(lease.holder.clone()), lease.epoch);
    // Liveness counts from now: the time in standby was no stall of this worker's stream.
    stats.record_progress(false);

    // From here on, every checkpoint write of an older holder is refused.
    let (lease, claimed) = match claim(instance, &lease).await {
        Ok(claimed) => (claimed.clone(), Ok(claimed)),
        Err(e) => (lease, Err(e)),
    };
    let name = &lease.name;
    let (result, ending) = match claimed {
        Err(e @ StoreError::Fenced(_)) => {
            tracing::warn!(worker = %name, holder = %lease.holder, epoch = lease.epoch, error = %e, "a newer holder claimed the checkpoint; back to standby");
            ProjectionStats::add(&stats.checkpoint_fenced, 1);
            (Ok(None), RenewalEnd::Lost)
        }
        Err(e) => (Ok(Some(e)), RenewalEnd::RunStopped),
        Ok(_) => {
            stats
                .lease
                .set_view(Some(lease.holder.clone()), lease.epoch);
            let child = template.shutdown.child_token();
            let run = template.for_run(child.clone(), lease.epoch);
            let renewer = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(keep_renewed(
                instance.clone(),
                lease.clone(),
                child.clone(),
                asked_at,
            )));
            let result = run.run().await;
            child.cancel();
            let ending = renewer.await.unwrap_or(RenewalEnd::RunStopped);
            match result {
                Err(_) if run.was_fenced() => {
                    tracing::warn!(worker = %name, holder = %lease.holder, epoch = lease.epoch, "a newer holder fenced this run's checkpoint: lease lost");
                    (Ok(None), RenewalEnd::Lost)
                }
                other => (other.map(|()| None), ending),
            }
        }
    };
    stats.lease.held.store(false, Ordering::Relaxed);
    if ending != RenewalEnd::Yielded {
        instance.share.unreserve();
    }
    match ending {
        RenewalEnd::Lost => {
            ProjectionStats::add(&stats.lease.losses, 1);
            tracing::warn!(worker = %name, holder = %lease.holder, epoch = lease.epoch, "lease lost: standby");
        }
        RenewalEnd::HandoverRequested => {
            tracing::info!(worker = %name, holder = %lease.holder, epoch = lease.epoch, "handing the lease over on request: standby");
        }
        RenewalEnd::Yielded => {
            tracing::info!(worker = %name, holder = %lease.holder, epoch = lease.epoch, "more instances are alive: yielding the lease");
        }
        RenewalEnd::RunStopped => {}
    }
    // Conditional on holder and epoch: harmless when the lease is no longer ours.
    match instance.leases.release(&lease).await {
        Ok(()) => {
            tracing::info!(worker = %name, holder = %lease.holder, epoch = lease.epoch, "lease released")
        }
        Err(e) => {
            tracing::warn!(worker = %name, holder = %lease.holder, epoch = lease.epoch, error = %e, "cannot release the lease; it expires after the ttl")
        }
    }
    result
}

/// Raises the checkpoint's epoch to the lease's. A checkpoint with a newer epoch than the
/// lease still held by us means the lease documents were lost while the checkpoints were
/// kept: the lease's epoch is then raised above it (conditional on still holding the lease).
async fn claim(instance: &Instance, lease: &Lease) -> Result<Lease, StoreError> {
    let checkpoints = &instance.checkpoints;
    match checkpoints.claim(&lease.name, lease.epoch).await {
        Ok(()) => Ok(lease.clone()),
        Err(StoreError::Fenced(_)) => {
            let stored = checkpoints.epoch(&lease.name).await?.unwrap_or(0);
            let Some(raised) = instance.leases.raise_epoch(lease, stored).await? else {
                return Err(StoreError::Fenced(format!(
                    "lease {} was taken while claiming its checkpoint",
                    lease.name
                )));
            };
            tracing::warn!(worker = %lease.name, holder = %lease.holder, epoch = raised.epoch, checkpoint_epoch = stored, "the checkpoint had a newer epoch than the lease (lease documents lost?): epoch raised");
            checkpoints.claim(&raised.name, raised.epoch).await?;
            Ok(raised)
        }
        Err(e) => Err(e),
    }
}

/// Renews `lease` every `renew_every` until `run` is cancelled; cancels it when the lease is
/// lost, not renewed within the ttl, asked for, or to be yielded.
async fn keep_renewed(
    instance: Arc<Instance>,
    lease: Lease,
    run: CancellationToken,
    asked_at: Instant,
) -> RenewalEnd {
    let ttl = instance.config.ttl;
    // The server counts the ttl from when it received the request, which is after this.
    let mut renewed_at = asked_at;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(instance.config.renew_every) => {}
            _ = run.cancelled() => return RenewalEnd::RunStopped,
        }
        let sent = Instant::now();
        let deadline = renewed_at + ttl;
        let ending = tokio::select! {
            _ = run.cancelled() => return RenewalEnd::RunStopped,
            attempt = tokio::time::timeout_at(deadline, instance.leases.renewal(&lease, ttl)) => match attempt {
                Ok(Ok(Renewal::Renewed)) => {
                    renewed_at = sent;
                    if instance.share.yield_one() {
                        RenewalEnd::Yielded
                    } else {
                        continue;
                    }
                }
                Ok(Ok(Renewal::Lost)) => RenewalEnd::Lost,
                Ok(Ok(Renewal::HandoverRequested)) => RenewalEnd::HandoverRequested,
                Ok(Err(e)) if Instant::now() < deadline => {
                    tracing::warn!(worker = %lease.name, holder = %lease.holder, epoch = lease.epoch, error = %e, "lease renewal failed; will retry within the ttl");
                    continue;
                }
                Ok(Err(_)) | Err(_) => {
                    tracing::warn!(worker = %lease.name, holder = %lease.holder, epoch = lease.epoch, ttl = ?ttl, "lease not renewed within its ttl: stopping");
                    RenewalEnd::Lost
                }
            },
        };
        run.cancel();
        return ending;
    }
}

/// How long to wait for the first heartbeat before workers start: a short bound, so that an
/// unreachable server delays nothing more than it would anyway.
pub(crate) const FIRST_HEARTBEAT_WAIT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_instance_may_hold_every_lease() {
        let share = FairShare::new(3);
        assert!(share.reserve() && share.reserve() && share.reserve());
        assert!(!share.reserve());
        assert!(!share.yield_one());
        assert_eq!(share.held(), 3);
    }

    #[test]
    fn more_instances_make_the_holder_yield_the_extra_leases() {
        let share = FairShare::new(3);
        for _ in 0..3 {
            assert!(share.reserve());
        }
        share.set_live(2); // ceil(3 / 2) = 2: exactly one lease too many
        assert_eq!(share.limit(), 2);
        assert!(share.yield_one());
        assert!(!share.yield_one());
        assert!(!share.reserve());
        share.set_live(3);
        assert!(share.yield_one());
        assert_eq!(share.held(), 1);
        // Fewer instances again: room to take leases back.
        share.set_live(1);
        assert!(share.reserve() && share.reserve());
        assert_eq!(share.held(), 3);
    }

    #[test]
    fn a_worker_always_has_a_place_somewhere() {
        let share = FairShare::new(1);
        share.set_live(5);
        assert_eq!(share.limit(), 1);
        share.set_live(0); // never below this instance itself
        assert_eq!(share.limit(), 1);
        share.unreserve(); // nothing held: stays at zero
        assert_eq!(share.held(), 0);
    }
}
