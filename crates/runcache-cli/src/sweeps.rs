//! Sweep subcommands: `status` (item counts and failures of one sweep, or a list of sweeps),
//! `logs` (an entry's captured output) and `worker` (hands over to the sweep's interpreter).

use std::io::Write;

use anyhow::{bail, Result};
use runcache::{ItemState, Store, SweepStatus, LOG_ARTIFACT};

use crate::format::{age, table};
use crate::Cli;

/// `runcache status [SWEEP]`: one sweep's counts and failures, or every sweep's counts.
pub fn status(cli: &Cli, store: &Store, sweep: Option<&str>) -> Result<i32> {
    crate::commands::damaged_objects(store)?;
    let Some(id) = sweep else {
        let records = store.sweeps()?;
        let mut all = Vec::with_capacity(records.len());
        for r in &records {
            // One sweep whose item list cannot be read is named, not a failed listing.
            match store.sweep_status(r, false) {
                Ok(s) => all.push((r, s)),
                Err(e) => eprintln!("runcache: damaged sweep {}: {e}", r.id),
            }
        }
        if cli.json {
            let v: Vec<_> = all.iter().map(|(_, s)| s).collect();
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(0);
        }
        if all.is_empty() {
            println!("no sweeps in {}", store.location());
            return Ok(0);
        }
        let rows: Vec<Vec<String>> = all
            .iter()
            .map(|(r, s)| {
                vec![
                    r.id.clone(),
                    r.namespace.clone(),
                    age(r.created_unix_ms),
                    format!("{}/{}", s.settled(), s.total),
                    counts(s),
                ]
            })
            .collect();
        table(&["SWEEP", "TASK", "SUBMITTED", "DONE", "COUNTS"], &rows);
        return Ok(0);
    };
    let record = store.sweep(id)?;
    let s = store.sweep_status(&record, false)?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(0);
    }
    println!(
        "sweep {} of {} (mode {}), submitted {} ago",
        record.id,
        record.namespace,
        record.mode,
        age(record.created_unix_ms)
    );
    println!("{}/{} done: {}", s.settled(), s.total, counts(&s));
    if let Some(dir) = record.executor.get("log_dir").and_then(|v| v.as_str()) {
        println!("worker logs: {dir}");
    }
    for item in &s.items {
        let what = match item.state {
            ItemState::Failed => "failed",
            _ => "interrupted",
        };
        println!(
            "  item {} ({}) {what}: {}",
            item.index,
            &item.key.to_hex()[..12],
            item.error.as_deref().unwrap_or("-")
        );
        if let Some(log) = &item.log {
            println!("    log: {log}");
        }
    }
    Ok(0)
}

fn counts(s: &SweepStatus) -> String {
    let cancelled = if s.cancelled > 0 {
        format!(", cancelled {}", s.cancelled)
    } else {
        String::new()
    };
    format!(
        "completed {}, cached {}, running {}, failed {}, queued {}{cancelled}",
        s.completed,
        s.cached,
        s.running,
        s.failed,
        s.pending + s.interrupted
    )
}

/// `runcache logs KEY`: prints the stdout/stderr a worker captured for an entry.
pub fn logs(store: &Store, key: &str) -> Result<i32> {
    let key = store.resolve_prefix(key)?;
    let Some(m) = store.manifest(&key)? else {
        bail!("no entry {key}");
    };
    if !m.artifacts.iter().any(|a| a.name == LOG_ARTIFACT) {
        eprintln!(
            "entry {} of {} has no captured output (it printed nothing, or was not computed by a worker)",
            &key.to_hex()[..12],
            m.namespace
        );
        return Ok(0);
    }
    let bytes = store.read_artifact(&key, LOG_ARTIFACT)?;
    std::io::stdout().write_all(&bytes)?;
    Ok(0)
}

/// `runcache worker --sweep ID …`: runs the sweep's worker in the interpreter that submitted it
/// (Python callables live there), with the submitter's import path.
pub fn worker(store_location: &str, args: &[String]) -> Result<i32> {
    let store = crate::commands::open(store_location)?;
    let Some(pos) = args.iter().position(|a| a == "--sweep") else {
        bail!("give --sweep ID (see `runcache status` for the sweeps of this store)");
    };
    let Some(id) = args.get(pos + 1) else {
        bail!("--sweep needs an id");
    };
    let record = store.sweep(id)?;
    let runner = &record.runner;
    if runner.get("kind").and_then(|v| v.as_str()) != Some("python") {
        bail!("sweep {id} was not submitted from Python; only Python sweeps have workers");
    }
    let python = runner
        .get("executable")
        .and_then(|v| v.as_str())
        .unwrap_or("python3");
    let mut cmd = std::process::Command::new(python);
    cmd.args(["-m", "runcache", "worker", "--store", store_location]);
    cmd.args(args);
    if let Some(paths) = runner.get("sys_path").and_then(|v| v.as_array()) {
        let joined: Vec<&str> = paths.iter().filter_map(|p| p.as_str()).collect();
        cmd.env("PYTHONPATH", joined.join(":"));
    }
    exec(cmd, python)
}

#[cfg(unix)]
fn exec(mut cmd: std::process::Command, python: &str) -> Result<i32> {
    use std::os::unix::process::CommandExt;
    let err = cmd.exec();
    bail!("cannot start the sweep's interpreter `{python}`: {err} (is the submitter's Python environment reachable from this machine?)")
}

#[cfg(not(unix))]
fn exec(mut cmd: std::process::Command, python: &str) -> Result<i32> {
    let status = cmd
        .status()
        .map_err(|e| anyhow::anyhow!("cannot start the sweep's interpreter `{python}`: {e}"))?;
    Ok(status.code().unwrap_or(1))
}
