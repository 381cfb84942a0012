//! Stamps the commit into `toronto --version`: `TORONTO_BUILD_GIT_SHA` when the build
//! sets it (the Dockerfile does), else `git rev-parse HEAD` of the source tree, else
//! nothing (the version then says `commit unknown`).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn main() {
    println!("cargo:rerun-if-env-changed=TORONTO_BUILD_GIT_SHA");
    if std::env::var_os("TORONTO_BUILD_GIT_SHA").is_some() {
        return;
    }
    if let Some(sha) = git(&["rev-parse", "HEAD"]) {
        println!("cargo:rustc-env=TORONTO_BUILD_GIT_SHA={sha}");
    }
    // A commit or checkout appends to the HEAD log: build again to stamp the new commit.
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/logs/HEAD");
    }
}
