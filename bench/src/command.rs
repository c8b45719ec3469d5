//! Section 7, `runcache run`: the cost of a hit of `runcache run -- true` (process start, store
//! open, key of argv + cwd + the executable's digest, manifest lookup, replay of empty
//! output) next to running `true` itself and, when installed, bkt's cached `bkt -- true`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::{median, Report, Res};

/// Median wall time in seconds of `n` runs of `cmd` (after one warm-up run).
fn per_call(n: usize, mut cmd: impl FnMut() -> Command) -> Res<f64> {
    let status = cmd().stdout(Stdio::null()).status()?;
    if !status.success() {
        return Err(format!("{:?} failed: {status}", cmd()).into());
    }
    let mut t: Vec<f64> = (0..n)
        .map(|_| {
            let t0 = Instant::now();
            let _ = cmd().stdout(Stdio::null()).status();
            t0.elapsed().as_secs_f64()
        })
        .collect();
    Ok(median(&mut t))
}

/// The `runcache` binary built next to this bench (scripts/bench builds both), or `$RUNCACHE_BIN`.
fn runcache_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("RUNCACHE_BIN") {
        return Some(p.into());
    }
    let p = std::env::current_exe().ok()?.with_file_name("runcache");
    p.exists().then_some(p)
}

/// `bkt` on PATH or where scripts/bench installs it.
fn bkt_bin() -> Option<PathBuf> {
    let local = PathBuf::from("target/bench-tools/bin/bkt");
    if local.exists() {
        return Some(local);
    }
    let found = Command::new("sh")
        .args(["-c", "command -v bkt"])
        .output()
        .ok()?;
    let path = String::from_utf8(found.stdout).ok()?;
    let path = path.trim();
    (!path.is_empty()).then(|| PathBuf::from(path))
}

/// Adds the `runcache run` rows.
pub fn bench_command(dir: &Path, quick: bool, rep: &mut Report) -> Res<()> {
    let n = if quick { 30 } else { 200 };
    let Some(runcache) = runcache_bin() else {
        rep.info(
            "run: hit of `runcache run -- true`",
            "skipped: no runcache binary (build runcache-cli --release)",
        );
        return Ok(());
    };
    let store = dir.join("run-store");
    let plain = per_call(n, || Command::new("true"))?;
    let hit = per_call(n, || {
        let mut c = Command::new(&runcache);
        c.arg("--store").arg(&store).args(["run", "--", "true"]);
        c
    })?;
    rep.ratio(
        "run: hit of `runcache run -- true`",
        format!("{:.2} ms", hit * 1e3),
        format!("`true` alone {:.2} ms", plain * 1e3),
        plain / hit,
        "< 5 ms",
        Some(hit < 5e-3),
    );
    match bkt_bin() {
        Some(bkt) => {
            let cache = dir.join("bkt-cache");
            let bkt_hit = per_call(n, || {
                let mut c = Command::new(&bkt);
                c.arg(format!("--cache-dir={}", cache.display()))
                    .args(["--ttl=1h", "--", "true"]);
                c
            })?;
            rep.ratio(
                "run: hit vs bkt's cached `bkt -- true`",
                format!("{:.2} ms", hit * 1e3),
                format!("bkt {:.2} ms", bkt_hit * 1e3),
                bkt_hit / hit,
                "",
                None,
            );
        }
        None => rep.info(
            "run: hit vs bkt",
            "skipped: bkt not installed (scripts/bench installs it with cargo)",
        ),
    }
    Ok(())
}
