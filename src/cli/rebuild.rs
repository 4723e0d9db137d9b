//! `rebuild`: the live rebuild of one projection, after its plan is confirmed.

use crate::cli::args::*;
use crate::cli::*;
use crate::config::Config;
use std::process::ExitCode;

pub(crate) async fn rebuild(config: Config, uri: String, args: RebuildArgs) -> ExitCode {
    use crate::tools::rebuild::{self, RebuildError, RebuildOptions, RebuildOutcome};
    let (shutdown, client) = match signals_and_client(&uri).await {
        Ok(both) => both,
        Err(code) => return code,
    };
    let options = RebuildOptions {
        restart: args.restart,
        offline: args.offline,
        allow_behind: args.allow_behind,
        max_lag: args.max_lag,
        lanes: config.source.lanes,
        ..RebuildOptions::default()
    };
    match rebuild::plan(&config, &client, &args.projection, &options).await {
        Ok(plan) => println!("{plan}"),
        Err(e) => {
            eprintln!("rebuild of {}: {e}", args.projection);
            return ExitCode::FAILURE;
        }
    }
    if let Err(code) = args
        .confirm
        .go_ahead(&format!("rebuild {} and swap it in", args.projection))
    {
        return code;
    }
    let progress = std::sync::Arc::new(rebuild::RebuildProgress::default());
    let monitoring = tokio_util::sync::CancellationToken::new();
    let _stop_monitoring = monitoring.clone().drop_guard();
    if let Some(address) = args.metrics_address {
        let monitor = crate::ops::metrics::Monitor::new(&config, &client, Vec::new());
        monitor.watch_rebuild(&args.projection, progress.figures());
        match crate::ops::http::bind(address, monitor, monitoring.clone()).await {
            Ok((bound, serve)) => {
                tokio::spawn(serve);
                tracing::info!(address = %bound, "serving the rebuild's /metrics");
            }
            Err(e) => {
                eprintln!("cannot serve metrics on {address}: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let result = match rebuild::handover_for(&config, &client, &options) {
        Ok(handover) => {
            rebuild::run(
                &config,
                &client,
                &args.projection,
                &options,
                &handover,
                &progress,
                &shutdown,
            )
            .await
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(RebuildOutcome::Swapped(s)) => {
            println!(
                "rebuilt {}: {} events scanned, {} streamed, {} documents swapped in, {} parked or dead-lettered",
                args.projection, s.scanned, s.streamed, s.documents, s.parked
            );
            ExitCode::SUCCESS
        }
        Ok(RebuildOutcome::Interrupted { phase }) => {
            eprintln!(
                "rebuild of {} interrupted while {}; run the same command again to resume",
                args.projection,
                phase.as_str()
            );
            ExitCode::FAILURE
        }
        Err(RebuildError::Refused(why)) => {
            eprintln!("rebuild of {} refused: {why}", args.projection);
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("rebuild of {} failed: {e}", args.projection);
            ExitCode::FAILURE
        }
    }
}
