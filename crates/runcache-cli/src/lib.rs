//! `runcache`: inspect, verify and govern a runcache store from the shell.
//!
//! Exit codes: 0 success; 1 error (the message says what and how to fix it); 2 bad usage;
//! 3 `verify` found damaged entries (and `--repair` was not given).

#![warn(missing_docs)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod commands;
mod format;

/// Make every expensive computation run once: inspect and govern a runcache store.
#[derive(Parser, Debug)]
#[command(name = "runcache", version, about, long_about = None)]
pub struct Cli {
    /// Store to use: a directory, file:///path or memory://NAME.
    #[arg(
        long,
        global = true,
        env = "RUNCACHE_STORE",
        default_value = ".runcache"
    )]
    pub store: String,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// List entries (or, with --namespaces, one line per namespace).
    Ls {
        /// Only entries of this namespace.
        namespace: Option<String>,
        /// Summarize per namespace instead of listing entries.
        #[arg(long, short = 'n')]
        namespaces: bool,
        /// Only failed or interrupted entries.
        #[arg(long)]
        failed: bool,
    },
    /// Show one entry: manifest, key document, blobs, artifacts, dependencies.
    Show {
        /// Full key or a unique prefix of at least 4 hex digits.
        key: String,
    },
    /// Remove entries by key, by namespace, or all failed ones.
    Rm {
        /// Keys or unique prefixes.
        keys: Vec<String>,
        /// Remove every entry of this namespace.
        #[arg(long)]
        namespace: Option<String>,
        /// Remove every failed or interrupted entry.
        #[arg(long)]
        failed: bool,
        /// Show what would be removed without removing it.
        #[arg(long)]
        dry_run: bool,
    },
    /// Evict least-recently-used entries by total size and/or age.
    Gc {
        /// Keep at most this much blob data (e.g. 500M, 20G).
        #[arg(long, value_parser = format::parse_size)]
        max_size: Option<u64>,
        /// Evict entries not used for this long (e.g. 30d, 12h).
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Option<std::time::Duration>,
        /// Never evict entries used more recently than this.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
        min_idle: std::time::Duration,
        /// Show what would be removed without removing it.
        #[arg(long)]
        dry_run: bool,
    },
    /// Re-hash every blob of every entry; report (and with --repair remove) damaged entries.
    Verify {
        /// Remove damaged entries so that the next call recomputes them.
        #[arg(long)]
        repair: bool,
    },
    /// Space used, per namespace.
    Du,
    /// Who holds which lease, since when, and whether the holder is alive.
    Leases,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    match commands::run(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("runcache: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
