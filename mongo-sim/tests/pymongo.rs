//! pymongo against an in-process mongo-sim (or MONGODB_URI): runs
//! `mongo-sim/tests/pymongo/check_pymongo.py` in the virtualenv `scripts/python-tools.sh`
//! prepares. Skipped only when python3 itself is missing; a failing pip install fails the test.

mod common;

use std::path::PathBuf;
use std::process::Output;
use tokio::process::Command;

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate lives in the workspace")
        .to_path_buf()
}

fn show(output: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

// PyMongo documentation (insert, update_one upsert, DuplicateKeyError, watch resume_after):
// the official Python driver works against the server as against mongod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pymongo_check_passes() {
    if Command::new("python3")
        .arg("--version")
        .output()
        .await
        .is_err()
    {
        println!("skipping pymongo check: python3 is not installed");
        return;
    }
    let root = workspace_root();
    let tools = Command::new("bash")
        .arg(root.join("scripts/python-tools.sh"))
        .current_dir(&root)
        .output()
        .await
        .expect("bash runs scripts/python-tools.sh");
    assert!(
        tools.status.success(),
        "python-tools.sh failed: {}",
        show(&tools)
    );

    let env = common::start("pymongo_check").await;
    let check = Command::new(root.join(".venv/bin/python"))
        .arg(root.join("mongo-sim/tests/pymongo/check_pymongo.py"))
        .arg(&env.uri)
        .current_dir(&root)
        .output()
        .await
        .expect("the virtualenv's python runs");
    assert!(
        check.status.success(),
        "check_pymongo.py failed: {}",
        show(&check)
    );
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(stdout.contains("all checks passed"), "{}", show(&check));
}
