//! Helpers shared by the CLI integration tests.

use std::path::Path;
use std::process::{Command, Output};

/// Runs the `runcache` binary on `store` with `args` (ignoring any RUNCACHE_STORE of the caller).
pub fn runcache(store: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_runcache"))
        .arg("--store")
        .arg(store)
        .args(args)
        .env_remove("RUNCACHE_STORE")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}
