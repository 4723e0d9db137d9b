//! Records the source revision the binary is built from, for `mongo_projector_build_info`:
//! `PROJECTOR_BUILD_REVISION` when the build sets it (the image build, whose context has no
//! `.git`), else what `git rev-parse` says, else "unknown".

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=PROJECTOR_BUILD_REVISION");
    for tracked in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        if Path::new(tracked).exists() {
            println!("cargo:rerun-if-changed={tracked}");
        }
    }
    let revision = std::env::var("PROJECTOR_BUILD_REVISION")
        .ok()
        .filter(|r| !r.trim().is_empty())
        .or_else(|| {
            let out = Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=PROJECTOR_REVISION={revision}");
}
