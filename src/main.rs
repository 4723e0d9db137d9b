//! The `mongo-projector` command: parse arguments, set up logging, hand over to the library.

use clap::{Parser, Subcommand, ValueEnum};
use mongo_projector::config::{Config, ProjectionConfig, redact_uri};
use mongo_projector::model::partition::Worker;
#[cfg(feature = "embedded")]
use mongo_projector::tools::demo::{DemoOptions, run_demo};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    version,
    about = "Keeps MongoDB read models in step with an event-sourced event collection"
)]
struct Cli {
    /// Log format: human-readable lines, or one JSON object per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (connection string from MONGODB_URI).
    Run {
        #[arg(long, env = "MONGO_PROJECTOR_CONFIG")]
        config: PathBuf,
    },
    /// Validate a configuration file and report every problem.
    CheckConfig {
        #[arg(long, env = "MONGO_PROJECTOR_CONFIG")]
        config: PathBuf,
    },
    /// Check that the server named by MONGODB_URI, and its user, can do what the
    /// configuration asks (README: "doctor"); exits 0 when nothing fails, 1 when something
    /// does, 2 on a bad configuration.
    Doctor {
        #[arg(long, env = "MONGO_PROJECTOR_CONFIG")]
        config: PathBuf,
        /// One JSON object instead of one line per check.
        #[arg(long)]
        json: bool,
        /// Rebuilds are expected: also check renameCollection and the rebuild's privileges.
        #[arg(long)]
        rebuild: bool,
    },
    /// Rebuild a projection's read model into a shadow collection while the daemon keeps
    /// serving, then swap it in atomically and hand the position over (README: "Live
    /// rebuild"). Interrupted, it resumes when run again.
    Rebuild {
        #[command(flatten)]
        args: RebuildArgs,
    },
    /// List, retry or skip parked and dead-lettered events.
    Parked {
        #[command(subcommand)]
        action: ParkedAction,
    },
    /// Compare the read model with the event collection: aggregates behind, ahead, missing or
    /// with a gap in their events; exits 0 when nothing is out of step, 1 when something is
    /// (and was not repaired), 2 on error.
    Audit {
        #[arg(long, env = "MONGO_PROJECTOR_CONFIG")]
        config: PathBuf,
        /// The projection to audit.
        #[arg(long)]
        projection: String,
        /// Heal what is found through the sequence guard (safe while the daemon runs): the
        /// audit runs first, shows what it would repair and asks (--dry-run, --yes).
        #[arg(long)]
        repair: bool,
        #[command(flatten)]
        confirm: Confirmation,
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// How many out-of-step aggregates to list (all are counted and repaired).
        #[arg(long, default_value_t = 20)]
        examples: usize,
        /// Look again after this long at aggregates that seem behind or missing, so that a
        /// running daemon's lag is not reported as drift (e.g. "30s").
        #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
        settle: std::time::Duration,
    },
    /// Run the example domain end to end on an embedded test server (or, with
    /// --uri-from-env, on the server named by MONGODB_URI).
    Demo {
        #[arg(long, default_value_t = 200)]
        accounts: u32,
        #[arg(long, default_value_t = 5_000)]
        events: u64,
        #[arg(long, default_value_t = 4)]
        writers: u32,
        /// Run against the server named by MONGODB_URI instead of an embedded one.
        #[arg(long)]
        uri_from_env: bool,
        /// The database the demo writes to; it must be empty or absent. Default: "bank" on
        /// the embedded server, "mongo_projector_demo" with --uri-from-env.
        #[arg(long)]
        database: Option<String>,
    },
    /// Measure throughput, lag, restart, catch-up and memory against one server (embedded
    /// mongo-sim, or MONGODB_URI when set); see BENCHMARKS.md.
    Bench {
        #[arg(long, default_value_t = 10_000)]
        accounts: u32,
        /// Events in the backlog the daemon drains (and guarded updates U runs).
        #[arg(long, default_value_t = 200_000)]
        backlog: u64,
        #[arg(long, default_value_t = 20_000)]
        naive_events: u64,
        #[arg(long, default_value_t = 20)]
        steady_seconds: u64,
        /// Events per second in steady state (0: half the measured backlog drain rate).
        #[arg(long, default_value_t = 0)]
        steady_rate: u64,
        #[arg(long, default_value_t = 100_000)]
        catch_up: u64,
        /// Backlogs drained for the peak-RSS figures (0 skips one).
        #[arg(long, default_value_t = 100_000)]
        memory_small: u64,
        #[arg(long, default_value_t = 1_000_000)]
        memory_large: u64,
        /// Apply lanes of the daemon under test (default: from the core count).
        #[arg(long)]
        lanes: Option<usize>,
        #[arg(long, default_value_t = 1000)]
        batch_size: usize,
        /// `checkpoints.every_events` of the daemon under test: at most this many events lie
        /// beyond its stored checkpoint (the `kill -9` bound).
        #[arg(long, default_value_t = mongo_projector::config::DEFAULT_EVERY_EVENTS)]
        checkpoint_events: u64,
        /// Only the scale-out section: the backlog drained by 1, 2 and 3 instances sharing
        /// a projection of 3 partitions (events/s and CPU time per event).
        #[arg(long)]
        scale_out: bool,
    },
}

#[derive(clap::Args)]
struct ParkedTarget {
    #[arg(long, env = "MONGO_PROJECTOR_CONFIG")]
    config: PathBuf,
    /// The projection whose parked events to act on.
    #[arg(long)]
    projection: String,
    /// Only this aggregate (a string id).
    #[arg(long)]
    aggregate: Option<String>,
}

/// For a command that changes data an operator cannot easily get back: `--dry-run` shows
/// what it would do; otherwise it asks on a terminal, and needs `--yes` elsewhere.
#[derive(clap::Args, Clone, Copy)]
struct Confirmation {
    /// Print what would be done, change nothing, exit 0.
    #[arg(long)]
    dry_run: bool,
    /// Do it without asking (required when standard input is not a terminal).
    #[arg(long, short = 'y')]
    yes: bool,
}

impl Confirmation {
    /// Called once the plan is printed: `Ok` to go ahead; otherwise the exit code (0 for a
    /// dry run, 1 when the operator declines, 2 when nobody could be asked).
    fn go_ahead(self, action: &str) -> Result<(), ExitCode> {
        use std::io::{BufRead, IsTerminal, Write};
        if self.dry_run {
            println!("dry run: nothing changed");
            return Err(ExitCode::SUCCESS);
        }
        if self.yes {
            return Ok(());
        }
        if !std::io::stdin().is_terminal() {
            eprintln!(
                "not confirmed: {action} needs --yes when standard input is not a terminal (--dry-run shows the plan)"
            );
            return Err(ExitCode::from(2));
        }
        eprint!("{action}? [y/N] ");
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        let _ = std::io::stdin().lock().read_line(&mut answer);
        if matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
            Ok(())
        } else {
            eprintln!("not done");
            Err(ExitCode::from(1))
        }
    }
}

#[derive(clap::Args)]
struct RebuildArgs {
    #[arg(long, env = "MONGO_PROJECTOR_CONFIG")]
    config: PathBuf,
    /// The projection to rebuild.
    #[arg(long)]
    projection: String,
    /// Discard an unfinished rebuild of this projection (and its shadow) and start over.
    #[arg(long)]
    restart: bool,
    /// No daemon runs this projection now: swap without asking one to hand it over
    /// (required when leases are not enabled).
    #[arg(long)]
    offline: bool,
    /// Swap even when the rebuilt read model is behind the live one for some aggregates.
    #[arg(long)]
    allow_behind: bool,
    /// Catching up ends once the rebuild is this close to the head of the stream.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    max_lag: std::time::Duration,
    /// Serve the rebuild's metrics on /metrics at this address while it runs.
    #[arg(long)]
    metrics_address: Option<std::net::SocketAddr>,
    #[command(flatten)]
    confirm: Confirmation,
}

#[derive(Subcommand)]
enum ParkedAction {
    /// Show parked and dead-lettered events, oldest first.
    List {
        #[command(flatten)]
        target: ParkedTarget,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Make them due for another attempt now (dead-lettered ones too); a running daemon
    /// retries them at its next sweep.
    Retry {
        #[command(flatten)]
        target: ParkedTarget,
    },
    /// Give up on them, for good: advance each aggregate's sequence past its entry without
    /// applying it. Needs --aggregate, or --all for every entry of the projection.
    Skip {
        #[command(flatten)]
        target: ParkedTarget,
        /// Only the entry with this sequence number (with --aggregate).
        #[arg(long, requires = "aggregate")]
        sequence: Option<i64>,
        /// Every parked and dead-lettered entry of the projection.
        #[arg(long, conflicts_with = "aggregate")]
        all: bool,
        #[command(flatten)]
        confirm: Confirmation,
    },
}

fn init_logging(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn load_config(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("{}: {e}", path.display());
        ExitCode::from(2)
    })
}

/// The configuration at `path` and the connection string from `MONGODB_URI`, which every
/// subcommand that talks to MongoDB needs; a clear message and exit code 2 when either is
/// missing or wrong.
fn config_and_uri(path: &std::path::Path) -> Result<(Config, String), ExitCode> {
    let config = load_config(path)?;
    let uri = mongo_projector::config::env::connection_string(|name| std::env::var(name).ok())
        .map_err(|message| {
            eprintln!("{message}");
            ExitCode::from(2)
        })?;
    Ok((config, uri))
}

/// A client for `uri` (redacted in the message when it is unusable).
async fn connect(uri: &str) -> Result<mongodb::Client, ExitCode> {
    mongodb::Client::with_uri_str(uri).await.map_err(|e| {
        eprintln!("cannot use MONGODB_URI {}: {e}", redact_uri(uri));
        ExitCode::from(2)
    })
}

/// For a command that runs until stopped: the cancellation token that SIGTERM and SIGINT
/// trigger, and a client for `uri`.
async fn signals_and_client(
    uri: &str,
) -> Result<(tokio_util::sync::CancellationToken, mongodb::Client), ExitCode> {
    let shutdown = mongo_projector::ops::shutdown::install().map_err(|e| {
        eprintln!("cannot install signal handlers: {e}");
        ExitCode::FAILURE
    })?;
    Ok((shutdown, connect(uri).await?))
}

/// The projection named `name`, or a message listing the configured ones.
fn find_projection<'a>(config: &'a Config, name: &str) -> Result<&'a ProjectionConfig, ExitCode> {
    config.projection(name).ok_or_else(|| {
        let names: Vec<&str> = config.projections.iter().map(|p| p.name.as_str()).collect();
        eprintln!(
            "no projection {name:?} in the configuration (known: {})",
            names.join(", ")
        );
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    mongo_projector::ops::metrics::set_revision(env!("PROJECTOR_REVISION"));
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => {
            init_logging(cli.log_format, "warn");
            match load_config(&config) {
                Ok(c) => {
                    println!(
                        "{}: valid ({} projection(s))",
                        config.display(),
                        c.projections.len()
                    );
                    for o in &c.overrides {
                        println!("  {} overrides {}", o.variable, o.path);
                    }
                    ExitCode::SUCCESS
                }
                Err(code) => code,
            }
        }
        Command::Doctor {
            config,
            json,
            rebuild,
        } => {
            init_logging(cli.log_format, "warn");
            let (config, uri) = match config_and_uri(&config) {
                Ok(found) => found,
                Err(code) => return code,
            };
            let options = mongo_projector::tools::doctor::DoctorOptions { rebuild };
            runtime().block_on(doctor(config, uri, options, json))
        }
        Command::Run { config } => {
            init_logging(cli.log_format, "info");
            let (config, uri) = match config_and_uri(&config) {
                Ok(found) => found,
                Err(code) => return code,
            };
            runtime().block_on(run_daemon(config, uri))
        }
        Command::Rebuild { args } => {
            init_logging(cli.log_format, "info");
            let (config, uri) = match config_and_uri(&args.config) {
                Ok(found) => found,
                Err(code) => return code,
            };
            runtime().block_on(rebuild(config, uri, args))
        }
        Command::Parked { action } => {
            init_logging(cli.log_format, "warn");
            let path = match &action {
                ParkedAction::List { target, .. }
                | ParkedAction::Retry { target }
                | ParkedAction::Skip { target, .. } => target.config.clone(),
            };
            let (config, uri) = match config_and_uri(&path) {
                Ok(found) => found,
                Err(code) => return code,
            };
            runtime().block_on(parked(config, uri, action))
        }
        Command::Audit {
            config,
            projection,
            repair,
            confirm,
            json,
            examples,
            settle,
        } => {
            init_logging(cli.log_format, "warn");
            let (config, uri) = match config_and_uri(&config) {
                Ok(found) => found,
                Err(code) => return code,
            };
            let options = mongo_projector::tools::audit::AuditOptions {
                examples,
                repair: false,
                settle,
            };
            let repair = repair.then_some(confirm);
            runtime().block_on(audit(config, uri, projection, options, json, repair))
        }
        #[cfg(feature = "embedded")]
        Command::Demo {
            accounts,
            events,
            writers,
            uri_from_env,
            database,
        } => {
            init_logging(cli.log_format, "warn");
            let uri = if uri_from_env {
                match mongo_projector::config::env::connection_string(|n| std::env::var(n).ok()) {
                    Ok(uri) => Some(uri),
                    Err(message) => {
                        eprintln!("--uri-from-env: {message}");
                        return ExitCode::from(2);
                    }
                }
            } else {
                None
            };
            let default_database = if uri.is_some() {
                "mongo_projector_demo"
            } else {
                "bank"
            };
            let options = DemoOptions {
                accounts,
                events,
                writers,
                database: Some(database.unwrap_or_else(|| default_database.to_string())),
                ..DemoOptions::default()
            };
            runtime().block_on(demo(options, uri))
        }
        #[cfg(not(feature = "embedded"))]
        Command::Demo { .. } => without_embedded("demo"),
        #[cfg(feature = "embedded")]
        Command::Bench {
            accounts,
            backlog,
            naive_events,
            steady_seconds,
            steady_rate,
            catch_up,
            memory_small,
            memory_large,
            lanes,
            batch_size,
            checkpoint_events,
            scale_out,
        } => {
            // The embedded server logs every connection a stopped daemon leaves behind.
            init_logging(cli.log_format, "warn,mongo_sim=error");
            let defaults = mongo_projector::tools::bench::BenchOptions::default();
            let options = mongo_projector::tools::bench::BenchOptions {
                accounts,
                backlog,
                naive_events,
                steady_seconds,
                steady_rate,
                catch_up,
                memory_small,
                memory_large,
                lanes: lanes.unwrap_or(defaults.lanes),
                batch_size,
                checkpoint_events,
                ..defaults
            };
            if scale_out {
                return match runtime().block_on(mongo_projector::tools::bench::scale_out(options)) {
                    Ok(_) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("bench failed: {e}");
                        ExitCode::FAILURE
                    }
                };
            }
            match runtime().block_on(mongo_projector::tools::bench::run(options)) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("bench failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        #[cfg(not(feature = "embedded"))]
        Command::Bench { .. } => without_embedded("bench"),
    }
}

/// `demo` and `bench` in a build without the embedded test server (the production image).
#[cfg(not(feature = "embedded"))]
fn without_embedded(command: &str) -> ExitCode {
    eprintln!(
        "`{command}` needs the embedded test server, which this build leaves out (the production \
         image is built with --no-default-features); build with the default `embedded` feature: \
         cargo run --release -- {command}"
    );
    ExitCode::from(2)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

async fn run_daemon(config: Config, uri: String) -> ExitCode {
    use mongo_projector::app::{App, ServerChecked};
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

async fn doctor(
    config: Config,
    uri: String,
    options: mongo_projector::tools::doctor::DoctorOptions,
    json: bool,
) -> ExitCode {
    let client = match mongodb::options::ClientOptions::parse(&uri).await {
        Ok(mut o) => {
            // An unreachable server is one failed check, reported within seconds.
            o.server_selection_timeout
                .get_or_insert(std::time::Duration::from_secs(10));
            match mongodb::Client::with_options(o) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("cannot use MONGODB_URI {}: {e}", redact_uri(&uri));
                    return ExitCode::from(2);
                }
            }
        }
        Err(e) => {
            eprintln!("cannot use MONGODB_URI {}: {e}", redact_uri(&uri));
            return ExitCode::from(2);
        }
    };
    let report = mongo_projector::tools::doctor::run(&config, &client, &uri, &options).await;
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    if report.failed() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The demo's server: an embedded mongo-sim, or the one `uri` names.
#[cfg(feature = "embedded")]
async fn demo_client(
    uri: Option<&str>,
) -> Result<(mongodb::Client, Option<mongo_sim::MongoSim>), ExitCode> {
    let (uri, server) = match uri {
        Some(uri) => {
            println!("server: MONGODB_URI ({})", redact_uri(uri));
            (uri.to_string(), None)
        }
        None => match mongo_sim::MongoSim::start(mongo_sim::ServerOptions::default()).await {
            Ok(s) => {
                println!("embedded test server at {}", s.uri());
                (s.uri().to_string(), Some(s))
            }
            Err(e) => {
                eprintln!("cannot start the embedded test server: {e}");
                return Err(ExitCode::FAILURE);
            }
        },
    };
    match mongodb::Client::with_uri_str(&uri).await {
        Ok(c) => Ok((c, server)),
        Err(e) => {
            eprintln!("cannot connect to {}: {e}", redact_uri(&uri));
            Err(ExitCode::from(2))
        }
    }
}

#[cfg(feature = "embedded")]
async fn demo(options: DemoOptions, uri: Option<String>) -> ExitCode {
    let (client, _server) = match demo_client(uri.as_deref()).await {
        Ok(found) => found,
        Err(code) => return code,
    };
    if let Some(db) = &options.database {
        match client.database(db).list_collection_names().await {
            Ok(names) if names.is_empty() => {}
            Ok(names) => {
                eprintln!(
                    "database {db} is not empty ({}): the demo needs a fresh one; pass --database with another name",
                    names.join(", ")
                );
                return ExitCode::from(2);
            }
            Err(e) => {
                eprintln!("cannot list the collections of {db}: {e}");
                return ExitCode::FAILURE;
            }
        }
        println!("database: {db}");
    }
    println!(
        "writing {} events over {} accounts with {} concurrent writers; the daemon is stopped and restarted half-way",
        options.events, options.accounts, options.writers
    );
    let report = match run_demo(&client, &options).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("demo failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let s = report.first_run + report.second_run;
    println!("events written:        {}", report.events_written);
    println!("applied:               {}", s.applied);
    println!("skipped (no handler):  {}", s.skipped);
    println!("duplicates absorbed:   {}", s.duplicates);
    println!("healed from the store: {}", s.healed);
    println!("parked:                {}", s.parked);
    println!("released from parking: {}", s.released);
    println!(
        "dead-lettered:         {} (malformed: {})",
        report.dead_lettered_entries, s.malformed
    );
    println!("checkpoints written:   {}", s.checkpoints);
    println!("elapsed:               {:.1?}", report.elapsed);
    if report.passed() {
        println!(
            "OK: all {} accounts equal the in-order fold of their events",
            report.accounts_checked
        );
        ExitCode::SUCCESS
    } else {
        println!(
            "FAILED: {} account(s) differ from the in-order fold:",
            report.mismatches.len()
        );
        for m in report.mismatches.iter().take(20) {
            println!("  {m}");
        }
        ExitCode::FAILURE
    }
}

async fn rebuild(config: Config, uri: String, args: RebuildArgs) -> ExitCode {
    use mongo_projector::tools::rebuild::{self, RebuildError, RebuildOptions, RebuildOutcome};
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
        let monitor = mongo_projector::ops::metrics::Monitor::new(&config, &client, Vec::new());
        monitor.watch_rebuild(&args.projection, progress.figures());
        match mongo_projector::ops::http::bind(address, monitor, monitoring.clone()).await {
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

async fn parked(config: Config, uri: String, action: ParkedAction) -> ExitCode {
    use mongo_projector::pipeline::apply::Applier;
    let target = match &action {
        ParkedAction::List { target, .. }
        | ParkedAction::Retry { target }
        | ParkedAction::Skip { target, .. } => target,
    };
    let projection = match find_projection(&config, &target.projection) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let client = match connect(&uri).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let stats = std::sync::Arc::new(mongo_projector::ops::stats::ProjectionStats::default());
    let applier = Applier::new(
        &Worker::whole(std::sync::Arc::new(projection.clone())),
        &client.database(&projection.database),
        stats,
    );
    let aggregate = target.aggregate.clone().map(bson::Bson::String);
    let result: Result<ExitCode, mongo_projector::error::StoreError> = async {
        match &action {
            ParkedAction::List { limit, .. } => {
                let entries = applier.parked.list(aggregate.as_ref(), *limit).await?;
                for e in &entries {
                    println!(
                        "{}\t{}\t{}\tattempts={}\tparked={}\t{}",
                        e.state,
                        e.reason,
                        bson::Bson::Document(e.id.clone()),
                        e.attempts,
                        e.first_parked_at
                            .try_to_rfc3339_string()
                            .unwrap_or_default(),
                        e.detail
                    );
                }
                println!(
                    "{} entr{}",
                    entries.len(),
                    if entries.len() == 1 { "y" } else { "ies" }
                );
                Ok(ExitCode::SUCCESS)
            }
            ParkedAction::Retry { .. } => {
                let n = applier.parked.retry_now(aggregate.as_ref()).await?;
                println!(
                    "{n} entr{} due for retry now",
                    if n == 1 { "y is" } else { "ies are" }
                );
                Ok(ExitCode::SUCCESS)
            }
            ParkedAction::Skip {
                sequence,
                all,
                confirm,
                ..
            } => {
                if aggregate.is_none() && !all {
                    eprintln!(
                        "parked skip gives events up for good: name the aggregate (--aggregate A), or pass --all for every entry of {}",
                        target.projection
                    );
                    return Ok(ExitCode::from(2));
                }
                let mut entries = applier.parked.list(aggregate.as_ref(), i64::MAX).await?;
                if let Some(seq) = sequence {
                    entries.retain(|e| {
                        e.id.get("sequenceNumber").and_then(bson::Bson::as_i64) == Some(*seq)
                    });
                }
                entries.sort_by_key(|e| {
                    e.id.get("sequenceNumber")
                        .and_then(bson::Bson::as_i64)
                        .unwrap_or(0)
                });
                if entries.is_empty() {
                    println!("no entry to skip");
                    return Ok(ExitCode::SUCCESS);
                }
                println!("would skip, without applying them:");
                for e in &entries {
                    println!("  {}\t{}\t{}", e.state, e.reason, bson::Bson::Document(e.id.clone()));
                }
                let action = format!("skip these {} entr{} for good", entries.len(), if entries.len() == 1 { "y" } else { "ies" });
                if let Err(code) = confirm.go_ahead(&action) {
                    return Ok(code);
                }
                let mut failed = false;
                for e in &entries {
                    match applier.skip_parked(e).await? {
                        Ok(()) => println!("skipped {}", bson::Bson::Document(e.id.clone())),
                        Err(why) => {
                            failed = true;
                            eprintln!("not skipped {}: {why}", bson::Bson::Document(e.id.clone()));
                        }
                    }
                }
                Ok(if failed {
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                })
            }
        }
    }
    .await;
    result.unwrap_or_else(|e| {
        eprintln!("error: {e}");
        ExitCode::FAILURE
    })
}

/// The drift audit; with `repair`, the audit runs first, its findings are the plan, and the
/// repair runs once confirmed.
async fn audit(
    config: Config,
    uri: String,
    projection: String,
    options: mongo_projector::tools::audit::AuditOptions,
    json: bool,
    repair: Option<Confirmation>,
) -> ExitCode {
    let p = match find_projection(&config, &projection) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let client = match connect(&uri).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let audit = mongo_projector::tools::audit::Audit::new(
        Worker::whole(std::sync::Arc::new(p.clone())),
        &client.database(&p.database),
    );
    let show = |report: &mongo_projector::tools::audit::AuditReport| {
        if json {
            println!("{}", report.to_json());
        } else {
            print!("{}", report.to_table());
        }
    };
    let report = match audit.run(options).await {
        Ok(report) => report,
        Err(e) => {
            eprintln!("audit of {projection} failed: {e}");
            return ExitCode::from(2);
        }
    };
    show(&report);
    if let Some(confirm) = repair
        && report.drifted() > 0
    {
        let action = format!(
            "repair {} aggregate(s) of {projection} through the sequence guard",
            report.drifted()
        );
        if let Err(code) = confirm.go_ahead(&action) {
            return code;
        }
        let repaired = audit
            .run(mongo_projector::tools::audit::AuditOptions {
                repair: true,
                ..options
            })
            .await;
        return match repaired {
            Ok(report) => {
                show(&report);
                if report.unresolved() {
                    ExitCode::from(1)
                } else {
                    ExitCode::SUCCESS
                }
            }
            Err(e) => {
                eprintln!("repair of {projection} failed: {e}");
                ExitCode::from(2)
            }
        };
    }
    if report.unresolved() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
