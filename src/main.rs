//! The `mongo-projector` command: parse arguments, set up logging, hand over to the library.

use clap::{Parser, Subcommand, ValueEnum};
use mongo_projector::config::{Config, redact_uri};
use mongo_projector::daemon::Daemon;
use mongo_projector::demo::{DemoOptions, run_demo};
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
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate a configuration file and report every problem.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the example domain end to end on an embedded test server.
    Demo {
        #[arg(long, default_value_t = 200)]
        accounts: u32,
        #[arg(long, default_value_t = 5_000)]
        events: u64,
        #[arg(long, default_value_t = 4)]
        writers: u32,
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

fn main() -> ExitCode {
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
                    ExitCode::SUCCESS
                }
                Err(code) => code,
            }
        }
        Command::Run { config } => {
            init_logging(cli.log_format, "info");
            let config = match load_config(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let Ok(uri) = std::env::var("MONGODB_URI") else {
                eprintln!(
                    "MONGODB_URI is not set: it must hold the connection string (it is never read from the config file)"
                );
                return ExitCode::from(2);
            };
            runtime().block_on(run_daemon(config, uri))
        }
        Command::Demo {
            accounts,
            events,
            writers,
        } => {
            init_logging(cli.log_format, "warn");
            let options = DemoOptions {
                accounts,
                events,
                writers,
                ..DemoOptions::default()
            };
            runtime().block_on(demo(options))
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

async fn run_daemon(config: Config, uri: String) -> ExitCode {
    let shutdown = match mongo_projector::shutdown::install() {
        Ok(token) => token,
        Err(e) => {
            eprintln!("cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let client = match mongodb::Client::with_uri_str(&uri).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot use MONGODB_URI {}: {e}", redact_uri(&uri));
            return ExitCode::from(2);
        }
    };
    tracing::info!(uri = %redact_uri(&uri), projections = config.projections.len(), "starting");
    let daemon = Daemon::new(&config, &client, &shutdown);
    let deadline = config.shutdown.deadline;
    let run = daemon.run();
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

async fn demo(options: DemoOptions) -> ExitCode {
    let server = match mongo_sim::MongoSim::start(mongo_sim::ServerOptions::default()).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot start the embedded test server: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("embedded test server at {}", server.uri());
    let client = match mongodb::Client::with_uri_str(server.uri()).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot connect to the embedded test server: {e}");
            return ExitCode::FAILURE;
        }
    };
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
