//! `demo`: the example domain end to end, on the embedded server or the one named by
//! `MONGODB_URI`.

use crate::cli::args::*;
use crate::cli::*;
use crate::config::redact_uri;
use crate::tools::demo::{DemoOptions, run_demo};
use std::process::ExitCode;

/// `demo` with its arguments: on the embedded server, or (`--uri-from-env`) on the one
/// `MONGODB_URI` (or `MONGODB_URI_FILE`) names, in a database of its own.
pub(crate) fn demo(args: DemoArgs) -> ExitCode {
    let uri = if args.uri_from_env {
        match crate::config::env::connection_string(|n| std::env::var(n).ok()) {
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
        accounts: args.accounts,
        events: args.events,
        writers: args.writers,
        database: Some(
            args.database
                .unwrap_or_else(|| default_database.to_string()),
        ),
        ..DemoOptions::default()
    };
    runtime().block_on(run(options, uri))
}

/// The demo's server: an embedded mongo-sim, or the one `uri` names.
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

async fn run(options: DemoOptions, uri: Option<String>) -> ExitCode {
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
