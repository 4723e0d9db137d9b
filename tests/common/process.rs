//! The `mongo-projector` binary as a child process, and the files it is given.

use std::path::PathBuf;
use std::process::Command;

/// The binary cargo built for these tests.
pub fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mongo-projector"))
}

/// Writes `contents` to a file `name` in a directory of this test process, and returns its path.
pub fn temp_file(name: &str, contents: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mongo-projector-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}
