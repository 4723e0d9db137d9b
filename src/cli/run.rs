//! `run`: the daemon until SIGTERM, within the shutdown deadline.

use crate::cli::*;
use crate::config::{Config, redact_uri};
use std::process::ExitCode;

pub(crate) async fn run_daemon(config: Config, uri: String) -> ExitCode {
    use crate::app::{App, ServerChecked};
    let (shutdown, client) = match signals_and_client(&uri).await {
        Ok(both) => both,
        Err(code) => return code,
    };
    tracing::info!(uri = %redact_uri(&uri), projections = config.projections.len(), "starting");
    // The endpoint outlives the drain, so that probes keep answering while the daemon stops.
    let monitoring = tokio_util::sync::CancellationToken::new();
    let _stop_monitoring = monitoring.clone().drop_guard();
    let mut app = match App::start(&config, &client, &shutdown, &monitoring).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("cannot serve metrics on {}: {e}", config.http.address);
            return ExitCode::from(2);
        }
    };
    match app.check_server(&config, &client, &shutdown).await {
        ServerChecked::Ready => {}
        ServerChecked::ShutDown => return ExitCode::SUCCESS,
        ServerChecked::NothingCanRun(failed) => {
            eprintln!(
                "no projection can run on this server (mongo-projector doctor --config FILE checks everything):"
            );
            for line in failed {
                eprintln!("  {line}");
            }
            return ExitCode::FAILURE;
        }
    }
    let deadline = config.shutdown.deadline;
    let run = app.run();
    tokio::pin!(run);
    let report = tokio::select! {
        report = &mut run => report,
        _ = async { shutdown.cancelled().await; tokio::time::sleep(deadline).await } => {
            eprintln!("shutdown deadline of {} passed; exiting without a final checkpoint (restart is safe)", humantime::format_duration(deadline));
            return ExitCode::FAILURE;
        }
    };
    if report.all_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
