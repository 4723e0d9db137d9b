//! The `mongo-projector` command line: its arguments ([`args`]) and what each subcommand
//! does, on the library's stages and tools. The binary only parses and calls [`execute`].

pub mod args;
mod audit;
mod confirm;
#[cfg(feature = "embedded")]
mod demo;
mod doctor;
mod parked;
mod rebuild;
mod run;

use crate::cli::args::{Cli, Command, LogFormat, ParkedAction};
use crate::config::{Config, ProjectionConfig, redact_uri};
use std::path::Path;
use std::process::ExitCode;

/// Runs the command `cli` names; its exit code.
pub fn execute(cli: Cli) -> ExitCode {
    let format = cli.log_format;
    match cli.command {
        Command::CheckConfig { config } => check_config(format, &config),
        Command::Doctor {
            config,
            json,
            rebuild,
        } => with_server(format, "warn", &config, |config, uri| {
            let options = crate::tools::doctor::DoctorOptions { rebuild };
            runtime().block_on(doctor::doctor(config, uri, options, json))
        }),
        Command::Run { config } => with_server(format, "info", &config, |config, uri| {
            runtime().block_on(run::run_daemon(config, uri))
        }),
        Command::Rebuild { args } => {
            let path = args.config.clone();
            with_server(format, "info", &path, |config, uri| {
                runtime().block_on(rebuild::rebuild(config, uri, args))
            })
        }
        Command::Parked { action } => {
            let path = match &action {
                ParkedAction::List { target, .. }
                | ParkedAction::Retry { target }
                | ParkedAction::Skip { target, .. } => target.config.clone(),
            };
            with_server(format, "warn", &path, |config, uri| {
                runtime().block_on(parked::parked(config, uri, action))
            })
        }
        Command::Audit {
            config,
            projection,
            repair,
            confirm,
            json,
            examples,
            settle,
        } => with_server(format, "warn", &config, |config, uri| {
            let options = crate::tools::audit::AuditOptions {
                examples,
                repair: false,
                settle,
            };
            let repair = repair.then_some(confirm);
            runtime().block_on(audit::audit(config, uri, projection, options, json, repair))
        }),
        #[cfg(feature = "embedded")]
        Command::Demo { args } => {
            init_logging(format, "warn");
            demo::demo(args)
        }
        #[cfg(not(feature = "embedded"))]
        Command::Demo { .. } => without_embedded("demo"),
        #[cfg(feature = "embedded")]
        Command::Bench { args } => {
            // The embedded server logs every connection a stopped daemon leaves behind.
            init_logging(format, "warn,mongo_sim=error");
            bench(args)
        }
        #[cfg(not(feature = "embedded"))]
        Command::Bench { .. } => without_embedded("bench"),
    }
}

/// `bench`: the benchmark, or its scale-out section.
#[cfg(feature = "embedded")]
fn bench(args: args::BenchArgs) -> ExitCode {
    use crate::tools::bench;
    let defaults = bench::BenchOptions::default();
    let scale_out = args.scale_out;
    let options = bench::BenchOptions {
        accounts: args.accounts,
        backlog: args.backlog,
        naive_events: args.naive_events,
        steady_seconds: args.steady_seconds,
        steady_rate: args.steady_rate,
        catch_up: args.catch_up,
        memory_small: args.memory_small,
        memory_large: args.memory_large,
        lanes: args.lanes.unwrap_or(defaults.lanes),
        batch_size: args.batch_size,
        checkpoint_events: args.checkpoint_events,
        ..defaults
    };
    let result = if scale_out {
        runtime().block_on(bench::scale_out(options)).map(|_| ())
    } else {
        runtime().block_on(bench::run(options)).map(|_| ())
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `check-config`: validates the file (and the environment's overrides), listing every
/// problem, or the overrides in force.
fn check_config(format: LogFormat, path: &Path) -> ExitCode {
    init_logging(format, "warn");
    match load_config(path) {
        Ok(c) => {
            println!(
                "{}: valid ({} projection(s))",
                path.display(),
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

/// A command that talks to MongoDB: logging at `level`, then `command` with the configuration
/// and the connection string.
fn with_server(
    format: LogFormat,
    level: &str,
    path: &Path,
    command: impl FnOnce(Config, String) -> ExitCode,
) -> ExitCode {
    init_logging(format, level);
    match config_and_uri(path) {
        Ok((config, uri)) => command(config, uri),
        Err(code) => code,
    }
}

pub fn init_logging(format: LogFormat, default_filter: &str) {
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

pub(crate) fn load_config(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("{}: {e}", path.display());
        ExitCode::from(2)
    })
}

/// The configuration at `path` and the connection string from `MONGODB_URI`, which every
/// subcommand that talks to MongoDB needs; a clear message and exit code 2 when either is
/// missing or wrong.
pub(crate) fn config_and_uri(path: &std::path::Path) -> Result<(Config, String), ExitCode> {
    let config = load_config(path)?;
    let uri = crate::config::env::connection_string(|name| std::env::var(name).ok()).map_err(
        |message| {
            eprintln!("{message}");
            ExitCode::from(2)
        },
    )?;
    Ok((config, uri))
}

/// A client for `uri` (redacted in the message when it is unusable).
pub(crate) async fn connect(uri: &str) -> Result<mongodb::Client, ExitCode> {
    mongodb::Client::with_uri_str(uri).await.map_err(|e| {
        eprintln!("cannot use MONGODB_URI {}: {e}", redact_uri(uri));
        ExitCode::from(2)
    })
}

/// For a command that runs until stopped: the cancellation token that SIGTERM and SIGINT
/// trigger, and a client for `uri`.
pub(crate) async fn signals_and_client(
    uri: &str,
) -> Result<(tokio_util::sync::CancellationToken, mongodb::Client), ExitCode> {
    let shutdown = crate::ops::shutdown::install().map_err(|e| {
        eprintln!("cannot install signal handlers: {e}");
        ExitCode::FAILURE
    })?;
    Ok((shutdown, connect(uri).await?))
}

/// The projection named `name`, or a message listing the configured ones.
pub(crate) fn find_projection<'a>(
    config: &'a Config,
    name: &str,
) -> Result<&'a ProjectionConfig, ExitCode> {
    config.projection(name).ok_or_else(|| {
        let names: Vec<&str> = config.projections.iter().map(|p| p.name.as_str()).collect();
        eprintln!(
            "no projection {name:?} in the configuration (known: {})",
            names.join(", ")
        );
        ExitCode::from(2)
    })
}

/// `demo` and `bench` in a build without the embedded test server (the production image).
#[cfg(not(feature = "embedded"))]
pub(crate) fn without_embedded(command: &str) -> ExitCode {
    eprintln!(
        "`{command}` needs the embedded test server, which this build leaves out (the production \
         image is built with --no-default-features); build with the default `embedded` feature: \
         cargo run --release -- {command}"
    );
    ExitCode::from(2)
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}
