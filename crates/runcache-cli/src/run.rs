//! `runcache run -- CMD ARGS...` and `runcache explain -- CMD ARGS...`: the command-line face
//! of [`runcache::run`].

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::AsFd;
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use runcache::run::{RunSpec, Streams};
use runcache::{Mode, Store};
use serde_json::json;

/// How a command is keyed and cached (shared by `run` and `explain`).
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// A file, directory or glob pattern (`data/*.csv`, `src/**/*.c`) whose content is part of
    /// the key; repeatable. Unchanged files are not re-read (remembered by inode and mtime).
    #[arg(long = "input", short = 'i', value_name = "PATH")]
    pub inputs: Vec<String>,
    /// A file or directory the command writes, inside the working directory: stored, and
    /// restored in place on a hit; repeatable. Missing after exit 0 is an error.
    #[arg(long = "output", short = 'o', value_name = "PATH")]
    pub outputs: Vec<PathBuf>,
    /// An environment variable whose value is part of the key; repeatable (the rest of the
    /// environment never is).
    #[arg(long = "env", short = 'e', value_name = "NAME")]
    pub env: Vec<String>,
    /// A version of your choosing: a new one gives new entries.
    #[arg(long, value_name = "V", default_value = "0")]
    pub version: String,
    /// The namespace of the entries (default: the program's file name).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Leave the working directory out of the key (the same command anywhere is one entry).
    #[arg(long)]
    pub ignore_cwd: bool,
    /// Leave the content of the executable out of the key (by default a rebuilt program misses).
    #[arg(long)]
    pub no_hash_executable: bool,
    /// How the store is used: cached, retry (rerun a recorded failure), force (always rerun),
    /// read-only, off.
    #[arg(long, default_value = "cached", value_parser = parse_mode)]
    pub mode: Mode,
    /// Run again a command whose failure (non-zero exit) is recorded (same as --mode retry).
    #[arg(long)]
    pub retry_failed: bool,
    /// Record a non-zero exit and replay it later without rerunning (yes), or store nothing
    /// for a failing command (no).
    #[arg(long, value_name = "yes|no", default_value = "yes", value_parser = parse_yes_no, action = clap::ArgAction::Set)]
    pub cache_failures: bool,
    /// An entry older than this is run again and replaced (e.g. 30s, 1h, 7d).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub ttl: Option<std::time::Duration>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    s.parse().map_err(|e: runcache::Error| e.to_string())
}

fn parse_yes_no(s: &str) -> Result<bool, String> {
    match s {
        "yes" | "true" | "1" => Ok(true),
        "no" | "false" | "0" => Ok(false),
        _ => Err(format!("`{s}` is not yes or no")),
    }
}

impl RunArgs {
    fn spec(&self) -> Result<RunSpec> {
        let mut spec = RunSpec::new(self.command.iter().cloned())?;
        spec.inputs = self.inputs.clone();
        spec.outputs = self.outputs.clone();
        spec.env = self.env.clone();
        spec.version = self.version.clone();
        spec.name = self.name.clone();
        spec.ignore_cwd = self.ignore_cwd;
        spec.hash_executable = !self.no_hash_executable;
        spec.mode = if self.retry_failed && self.mode == Mode::Cached {
            Mode::Retry
        } else {
            self.mode
        };
        spec.cache_failures = self.cache_failures;
        spec.ttl = self.ttl;
        Ok(spec)
    }
}

fn open(location: &str) -> Result<Store> {
    // Like a cached call, the first run creates a missing local store.
    Store::open(location).with_context(|| format!("opening store `{location}`"))
}

/// `runcache run`: returns the command's exit status (run now or replayed).
pub fn run(store: &str, args: &RunArgs) -> Result<i32> {
    let spec = args.spec()?;
    let store = open(store)?;
    // Unbuffered writes straight to descriptors 1 and 2: bytes reach the terminal or pipe in
    // the order the command wrote them, and binary output is not scanned for newlines.
    let mut stdout = File::from(std::io::stdout().as_fd().try_clone_to_owned()?);
    let mut stderr = File::from(std::io::stderr().as_fd().try_clone_to_owned()?);
    let result = runcache::run::run(
        &store,
        &spec,
        Streams {
            stdout: &mut stdout,
            stderr: &mut stderr,
        },
    )?;
    store.flush_usage();
    log::info!(
        "runcache: {} {} (exit status {})",
        if result.replayed { "replayed" } else { "ran" },
        result.key,
        result.exit.exit_code()
    );
    Ok(result.exit.exit_code())
}

/// `runcache explain -- CMD`: why the command hits or misses; runs nothing.
pub fn explain(store: &str, json_output: bool, args: &RunArgs) -> Result<i32> {
    let spec = args.spec()?;
    let store = open(store)?;
    let e = runcache::run::explain(&store, &spec)?;
    if json_output {
        let nearest: Vec<_> = e
            .nearest
            .iter()
            .map(|(key, status, diffs)| {
                json!({
                    "key": key.to_hex(),
                    "status": status.as_str(),
                    "differences": diffs.iter().map(|d| json!({
                        "path": d.path, "stored": d.stored, "now": d.now,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let doc = json!({
            "namespace": e.namespace,
            "key": e.key.to_hex(),
            "status": e.status.map(|s| s.as_str()),
            "reason": e.reason,
            "nearest": nearest,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(0);
    }
    println!("{} {}", e.namespace, e.key);
    println!("{}", e.reason);
    for (key, status, diffs) in &e.nearest {
        println!("  nearest {} ({}):", &key.to_hex()[..12], status.as_str());
        for d in diffs {
            let show = |v: &Option<serde_json::Value>| match v {
                None => "(absent)".to_string(),
                Some(v) => v.to_string(),
            };
            println!(
                "    {}: stored {} -> now {}",
                d.path,
                show(&d.stored),
                show(&d.now)
            );
        }
    }
    Ok(0)
}
