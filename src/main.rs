//! The `mongo-projector` command: parses its arguments and hands over to the library's
//! command line ([`mongo_projector::cli`]).

use clap::Parser;
use std::process::ExitCode;

// The daemon allocates and frees many small BSON values per event; glibc's allocator spent
// more time consolidating its free lists than the daemon spent on events (BENCHMARKS.md,
// "CPU per event").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    mongo_projector::ops::metrics::set_revision(env!("PROJECTOR_REVISION"));
    mongo_projector::cli::execute(mongo_projector::cli::args::Cli::parse())
}
