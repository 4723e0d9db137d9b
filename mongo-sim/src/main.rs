//! The `mongo-sim` binary: serves one simulated replica-set primary until SIGTERM or SIGINT.
//! The first line of stdout is the connection URI, so scripts can wait for it.

use clap::Parser;
use mongo_sim::profile::{Privilege, Release, ServerVersion, SimulatedUser};
use mongo_sim::{MongoSim, ServerOptions};
use std::io::{IsTerminal, Write};

// A server of owned document trees allocates and frees small values all the time; mimalloc
// does that at a fraction of glibc's cost (BENCHMARKS.md, "CPU per event").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(name = "mongo-sim", version, about)]
struct Args {
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "MONGO_SIM_PORT", default_value_t = 27017)]
    port: u16,
    /// Address to bind.
    #[arg(long, env = "MONGO_SIM_BIND", default_value_t = ServerOptions::default().bind)]
    bind: String,
    /// Replica set name announced to drivers.
    #[arg(long, env = "MONGO_SIM_REPLICA_SET", default_value_t = ServerOptions::default().replica_set)]
    replica_set: String,
    /// Oplog entries retained before the oldest are dropped.
    #[arg(long, env = "MONGO_SIM_OPLOG_CAPACITY", default_value_t = ServerOptions::default().oplog_capacity)]
    oplog_capacity: usize,
    /// The MongoDB release to play (`buildInfo`, `hello`'s wire version; aggregation operators
    /// introduced later are refused), e.g. 6.0.19.
    #[arg(long, env = "MONGO_SIM_SERVER_VERSION", default_value_t = ServerVersion::default())]
    server_version: ServerVersion,
    /// An aggregation operator to refuse as unknown although the release has it (repeat for
    /// more), e.g. '$toHashedIndexKey'.
    #[arg(long, value_name = "OPERATOR")]
    without_operator: Vec<String>,
    /// Turn access control on: every connection is authenticated as this user (NAME@DB), with
    /// only the privileges given by --privilege.
    #[arg(long, value_name = "NAME@DB", value_parser = user_and_db)]
    user: Option<(String, String)>,
    /// A privilege of --user: RESOURCE=ACTION[,ACTION...], RESOURCE being db.collection ("*"
    /// for any part), cluster or anyResource (repeat for more), e.g. 'bank.*=find,insert'.
    #[arg(long, value_name = "PRIVILEGE", requires = "user")]
    privilege: Vec<Privilege>,
    /// A role --user is reported to have in connectionStatus (ROLE@DB; repeat for more).
    #[arg(long, value_name = "ROLE@DB", value_parser = user_and_db, requires = "user")]
    role: Vec<(String, String)>,
}

/// `NAME@DB`.
fn user_and_db(s: &str) -> Result<(String, String), String> {
    match s.rsplit_once('@') {
        Some((name, db)) if !name.is_empty() && !db.is_empty() => {
            Ok((name.to_string(), db.to_string()))
        }
        _ => Err(format!("{s:?}: expected NAME@DB, e.g. projector@admin")),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let args = Args::parse();
    let options = ServerOptions {
        bind: args.bind,
        port: args.port,
        replica_set: args.replica_set,
        oplog_capacity: args.oplog_capacity,
        release: Release {
            version: args.server_version,
            missing_operators: args.without_operator,
        },
        user: args.user.map(|(name, db)| SimulatedUser {
            roles: args.role,
            privileges: args.privilege,
            ..SimulatedUser::new(&name, &db)
        }),
    };
    // Handlers are installed before the URI is printed, so a script may signal right away.
    let signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install signal handlers");
            return std::process::ExitCode::FAILURE;
        }
    };
    let sim = match MongoSim::start(options).await {
        Ok(sim) => sim,
        Err(e) => {
            tracing::error!(error = %e, "failed to start");
            return std::process::ExitCode::FAILURE;
        }
    };
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", sim.uri());
        let _ = out.flush();
    }
    signals.wait().await;
    tracing::info!("shutting down");
    sim.shutdown().await;
    std::process::ExitCode::SUCCESS
}

/// SIGTERM and SIGINT (Ctrl-C elsewhere).
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Self {})
        }
    }

    async fn wait(mut self) {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => {}
                _ = self.int.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
