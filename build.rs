//! Records the git commit the binary is built from (`FERROTRON_GIT_COMMIT`, shown in every
//! run's `run.json`): `git rev-parse --short=12 HEAD`, or "unknown" outside a git checkout.
//! Uncommitted changes are not detected (they would need a rebuild check on every file).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let o = Command::new("git").args(args).output().ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=FERROTRON_GIT_COMMIT={commit}");
    // Rebuild the constant when HEAD moves (a commit, a checkout).
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={dir}/{r}");
        }
    }
}
