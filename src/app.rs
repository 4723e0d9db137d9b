//! The daemon as `mongo-projector run` runs it: its workers ([`Daemon`]), its HTTP endpoint,
//! the server's checks at start-up ([`doctor::preflight`]) and the background drift audit, put
//! together in one place, which the binary and the tests start alike.

use crate::backoff::Backoff;
use crate::cluster::daemon::{Daemon, DaemonReport};
use crate::config::Config;
use crate::ops::metrics::Monitor;
use crate::tools::audit::BackgroundAudit;
use crate::tools::doctor::{self, Status};
use mongodb::Client;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// A daemon with what runs beside it.
pub struct App {
    pub daemon: Daemon,
    /// The endpoint's monitor and bound address; `None` with `http.enabled = false`.
    pub endpoint: Option<(Arc<Monitor>, SocketAddr)>,
    audit: Option<BackgroundAudit>,
}

/// What the server's checks at start-up left to run.
#[derive(Debug)]
pub enum ServerChecked {
    /// Every projection the server can serve will run; the others were refused.
    Ready,
    /// No projection can run on this server: the failed checks, one line each.
    NothingCanRun(Vec<String>),
    /// Shut down while waiting for the server to answer.
    ShutDown,
}

impl App {
    /// Builds the daemon and serves its endpoint at once (until `monitoring` is cancelled),
    /// so that the probes answer while the server is being checked.
    pub async fn start(
        config: &Config,
        client: &Client,
        shutdown: &CancellationToken,
        monitoring: &CancellationToken,
    ) -> std::io::Result<App> {
        let daemon = Daemon::new(config, client, shutdown);
        let endpoint = if config.http.enabled {
            Some(crate::ops::http::serve(config, client, daemon.stats(), monitoring).await?)
        } else {
            None
        };
        let audit = BackgroundAudit::new(config, client, shutdown, daemon.workers());
        Ok(App {
            daemon,
            endpoint,
            audit,
        })
    }

    /// Checks what the server can do, as `doctor` does for start-up, retrying with the
    /// workers' backoff while it does not answer; logs each check, and refuses the projections
    /// it cannot serve (they report as stopped, reason `unsupported`).
    pub async fn check_server(
        &mut self,
        config: &Config,
        client: &Client,
        shutdown: &CancellationToken,
    ) -> ServerChecked {
        let mut backoff = Backoff::new(
            config.source.reopen_backoff_initial,
            config.source.reopen_backoff_max,
        );
        let preflight = loop {
            match doctor::preflight(config, client).await {
                Ok(p) => break p,
                Err(e) => {
                    let pause = backoff.next_pause();
                    tracing::warn!(error = %e, retry_in = ?pause, "cannot check the server yet");
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = shutdown.cancelled() => return ServerChecked::ShutDown,
                    }
                }
            }
        };
        for check in &preflight.checks {
            match check.status {
                Status::Ok => tracing::info!("{}", check.to_line()),
                Status::Warn => tracing::warn!("{}", check.to_line()),
                Status::Fail => tracing::error!("{}", check.to_line()),
            }
        }
        let blocked = preflight.blocked(config);
        if blocked.len() == config.projections.len() {
            return ServerChecked::NothingCanRun(
                preflight
                    .checks
                    .iter()
                    .filter(|c| c.status == Status::Fail)
                    .map(|c| c.to_line())
                    .collect(),
            );
        }
        for b in &blocked {
            let names: Vec<&str> = b.checks.iter().map(|c| c.name.as_str()).collect();
            tracing::error!(projection = %b.projection, failed = %names.join(", "), "projection not started: the server lacks what it needs");
            let failed: Vec<String> = b.checks.iter().map(|c| c.to_line()).collect();
            self.daemon.refuse(&b.projection, &failed.join("; "));
        }
        ServerChecked::Ready
    }

    /// Runs the workers until shutdown or until each has stopped, with the background audit
    /// beside them.
    pub async fn run(&self) -> DaemonReport {
        let _audit = self.audit.clone().map(BackgroundAudit::spawn);
        self.daemon.run().await
    }
}
