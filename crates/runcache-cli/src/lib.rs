//! `runcache`: inspect, verify and govern a runcache store from the shell.
//!
//! A library with one entry point, [`run`], used by the `runcache` binary of this crate and by
//! the Python package (`runcache._core.cli_main`, the `runcache` console script and
//! `python -m runcache`), so both install the same command.
//!
//! Exit codes: 0 success; 1 error (the message says what and how to fix it); 2 bad usage;
//! 3 damage found: `verify` found damaged entries or objects (and `--repair` was not given), or
//! `show` was asked for a damaged entry. The other store-walking commands (`ls`, `du`, `gc`,
//! `leases`, `status`) list what they can read, name each damaged object on stderr (and in
//! `--json` reports) and exit 0: one stray object never fails a whole command.

#![warn(missing_docs)]

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

mod commands;
mod format;
mod run;
mod sweeps;

/// The exit codes, as `--help` shows them.
const EXIT_CODES: &str = "Exit codes: 0 ok (damaged objects found by ls, du, gc, leases and status are named on stderr); 1 error; 2 bad usage; 3 damage found (verify without --repair, show of a damaged entry).";

/// Make every expensive computation run once: inspect and govern a runcache store.
#[derive(Parser, Debug)]
#[command(name = "runcache", version, about, long_about = None, after_help = EXIT_CODES)]
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
    /// Create a local store (or upgrade an existing one); with --shared, share it with a group.
    ///
    /// `runcache init --shared GROUP PATH` gives the whole tree to GROUP, sets the setgid bit
    /// and group read/write(/execute) on it, and records the group in the store's marker, so
    /// that every file and directory runcache creates later gets them too, whatever the umask.
    Init {
        /// The store directory (default: --store).
        path: Option<PathBuf>,
        /// Group (name or number) whose members read and write each other's entries.
        #[arg(long, value_name = "GROUP")]
        shared: Option<String>,
        /// Permission bits of files in a shared store (octal): 660 (group only) or 664 (also
        /// world-readable). Directories get the same plus x and setgid (2770, 2775).
        #[arg(long, value_name = "OCTAL", default_value = "660", value_parser = parse_mode, requires = "shared")]
        file_mode: u32,
    },
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
    /// Item counts of a sweep (completed, cached, running, failed, queued) and its failures
    /// with their logs; without SWEEP, every sweep of the store.
    Status {
        /// The sweep id (as printed when it was submitted).
        sweep: Option<String>,
    },
    /// Print the stdout/stderr a worker captured while computing an entry.
    Logs {
        /// The entry's key (or a unique prefix of it).
        key: String,
    },
    /// Run a shell command through the cache: a hit replays its stdout, stderr, outputs and
    /// exit status without running it; concurrent identical runs (any machine sharing the
    /// store) run it once.
    ///
    /// The key covers the argv, the working directory, the content of each --input, the
    /// values of each --env variable, the --output paths, --version and the executable's
    /// content. The exit status is the command's (run now or replayed); runcache's own errors
    /// exit 1. Example: `runcache run -i data.csv -o plot.png -- Rscript plot.R data.csv`.
    Run(run::RunArgs),
    /// Why `runcache run` would replay or run a command (which input, variable or argument
    /// differs from the nearest stored entry); runs nothing.
    Explain(run::RunArgs),
    /// Serve a web dashboard of the store and its sweeps (read-only unless --allow-write).
    ///
    /// Bound to 127.0.0.1 by default. Binding to another address requires a token (given with
    /// --token or generated and printed in the URL); every request without it is refused.
    Ui {
        /// Port to listen on (0: any free port).
        #[arg(long, default_value = "8321")]
        port: u16,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        bind: std::net::IpAddr,
        /// Token every request must carry (generated when binding beyond loopback).
        #[arg(long, env = "RUNCACHE_UI_TOKEN")]
        token: Option<String>,
        /// Allow deleting entries and cancelling sweeps from the page (each asks to confirm).
        #[arg(long)]
        allow_write: bool,
        /// Open the page in the default browser.
        #[arg(long)]
        open: bool,
    },
    /// Compute the items of a sweep until it is drained (runs the sweep's Python worker:
    /// `--sweep ID [--max-items N] [--idle-exit SECONDS]`).
    #[command(disable_help_flag = true)]
    Worker {
        /// Worker options, passed on: --sweep ID [--max-items N] [--idle-exit SECONDS].
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn parse_mode(s: &str) -> Result<u32, String> {
    let t = s.trim_start_matches("0o");
    match u32::from_str_radix(t, 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(format!(
            "`{s}` is not an octal permission mode like 660 or 664"
        )),
    }
}

/// Runs the command line `args` (the first item is the program name, as in
/// `std::env::args_os()`) and returns the process exit code. Usage errors print clap's message
/// and return 2; `--help` and `--version` print and return 0. Never exits the process.
pub fn run<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    // Tolerates a logger installed earlier (a second call, or the Python extension's logger).
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .try_init();
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    match commands::run(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("runcache: error: {}", message(&e));
            1
        }
    }
}

/// The error and its causes, each cause only once: engine errors already include their source
/// in their own message (an I/O error names the OS error), which `{:#}` would repeat.
fn message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn each_cause_is_printed_once() {
        let io = std::io::Error::from_raw_os_error(20); // ENOTDIR
        let e = anyhow::Error::from(runcache::Error::io("/s/manifests/stray", io))
            .context("opening store `/s`");
        let text = super::message(&e);
        assert_eq!(text.matches("Not a directory").count(), 1, "{text}");
        assert!(text.starts_with("opening store `/s`: I/O error on /s/manifests/stray"));
    }
}
