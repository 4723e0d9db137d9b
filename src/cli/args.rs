//! The command line's arguments: every subcommand and its flags (clap).

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    version,
    about = "Keeps MongoDB read models in step with an event-sourced event collection"
)]
pub struct Cli {
    /// Log format: human-readable lines, or one JSON object per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
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
        #[command(flatten)]
        args: DemoArgs,
    },
    /// Measure throughput, lag, restart, catch-up and memory against one server (embedded
    /// mongo-sim, or MONGODB_URI when set); see BENCHMARKS.md.
    Bench {
        #[command(flatten)]
        args: BenchArgs,
    },
}

#[derive(clap::Args)]
pub struct ParkedTarget {
    #[arg(long, env = "MONGO_PROJECTOR_CONFIG")]
    pub config: PathBuf,
    /// The projection whose parked events to act on.
    #[arg(long)]
    pub projection: String,
    /// Only this aggregate (a string id).
    #[arg(long)]
    pub aggregate: Option<String>,
}

/// For a command that changes data an operator cannot easily get back: `--dry-run` shows
/// what it would do; otherwise it asks on a terminal, and needs `--yes` elsewhere.
#[derive(clap::Args, Clone, Copy)]
pub struct Confirmation {
    /// Print what would be done, change nothing, exit 0.
    #[arg(long)]
    pub dry_run: bool,
    /// Do it without asking (required when standard input is not a terminal).
    #[arg(long, short = 'y')]
    pub yes: bool,
}

#[derive(clap::Args)]
pub struct RebuildArgs {
    #[arg(long, env = "MONGO_PROJECTOR_CONFIG")]
    pub config: PathBuf,
    /// The projection to rebuild.
    #[arg(long)]
    pub projection: String,
    /// Discard an unfinished rebuild of this projection (and its shadow) and start over.
    #[arg(long)]
    pub restart: bool,
    /// No daemon runs this projection now: swap without asking one to hand it over
    /// (required when leases are not enabled).
    #[arg(long)]
    pub offline: bool,
    /// Swap even when the rebuilt read model is behind the live one for some aggregates.
    #[arg(long)]
    pub allow_behind: bool,
    /// Catching up ends once the rebuild is this close to the head of the stream.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub max_lag: std::time::Duration,
    /// Serve the rebuild's metrics on /metrics at this address while it runs.
    #[arg(long)]
    pub metrics_address: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub confirm: Confirmation,
}

#[derive(Subcommand)]
pub enum ParkedAction {
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

/// `demo`'s size and server.
#[derive(clap::Args)]
pub struct DemoArgs {
    #[arg(long, default_value_t = 200)]
    pub accounts: u32,
    #[arg(long, default_value_t = 5_000)]
    pub events: u64,
    #[arg(long, default_value_t = 4)]
    pub writers: u32,
    /// Run against the server named by MONGODB_URI instead of an embedded one.
    #[arg(long)]
    pub uri_from_env: bool,
    /// The database the demo writes to; it must be empty or absent. Default: "bank" on
    /// the embedded server, "mongo_projector_demo" with --uri-from-env.
    #[arg(long)]
    pub database: Option<String>,
}

/// `bench`'s sizes and the daemon's settings under test.
#[derive(clap::Args)]
pub struct BenchArgs {
    #[arg(long, default_value_t = 10_000)]
    pub accounts: u32,
    /// Events in the backlog the daemon drains (and guarded updates U runs).
    #[arg(long, default_value_t = 200_000)]
    pub backlog: u64,
    #[arg(long, default_value_t = 20_000)]
    pub naive_events: u64,
    #[arg(long, default_value_t = 20)]
    pub steady_seconds: u64,
    /// Events per second in steady state (0: half the measured backlog drain rate).
    #[arg(long, default_value_t = 0)]
    pub steady_rate: u64,
    #[arg(long, default_value_t = 100_000)]
    pub catch_up: u64,
    /// Backlogs drained for the peak-RSS figures (0 skips one).
    #[arg(long, default_value_t = 100_000)]
    pub memory_small: u64,
    #[arg(long, default_value_t = 1_000_000)]
    pub memory_large: u64,
    /// Apply lanes of the daemon under test (default: from the core count).
    #[arg(long)]
    pub lanes: Option<usize>,
    #[arg(long, default_value_t = 1000)]
    pub batch_size: usize,
    /// `checkpoints.every_events` of the daemon under test: at most this many events lie
    /// beyond its stored checkpoint (the `kill -9` bound).
    #[arg(long, default_value_t = crate::config::DEFAULT_EVERY_EVENTS)]
    pub checkpoint_events: u64,
    /// Only the scale-out section: the backlog drained by 1, 2 and 3 instances sharing
    /// a projection of 3 partitions (events/s and CPU time per event).
    #[arg(long)]
    pub scale_out: bool,
}
