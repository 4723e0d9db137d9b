//! The `mongo-projector` command: parses its arguments and hands over to the library's
//! command line ([`mongo_projector::cli`]).

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    mongo_projector::ops::metrics::set_revision(env!("PROJECTOR_REVISION"));
    mongo_projector::cli::execute(mongo_projector::cli::args::Cli::parse())
}
