//! The multi-process half of the conformance suite: compute-once with real OS processes racing
//! and being SIGKILLed, against any store location.
//!
//! A test binary using it re-executes itself: it declares
//! `#[test] fn child() { conformance::processes::child(); }`, which does nothing unless
//! `RC_CHILD_ROLE` is set, and [`Procs::spawn`] runs `current_exe() --exact child`.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use runcache::lease::LeaseOptions;
use runcache::{Status, Store, StoreOptions};

/// Store options for a child (or a parent imitating one): `RC_TTL_MS` sets the lease TTL (with
/// a heartbeat every quarter of it), `RC_SAME_HOST=0` turns off the same-host liveness check.
pub fn options_from_env() -> StoreOptions {
    let mut lease = LeaseOptions::default();
    if let Ok(ms) = std::env::var("RC_TTL_MS") {
        lease.ttl = Duration::from_millis(ms.parse().unwrap());
        lease.heartbeat_every = lease.ttl / 4;
    }
    if std::env::var("RC_SAME_HOST").as_deref() == Ok("0") {
        lease.same_host_liveness = false;
    }
    StoreOptions {
        lease,
        ..Default::default()
    }
}

/// The `big`-byte result of round `round`.
pub fn big_value(big: usize, round: u64) -> Vec<u8> {
    let mut v = vec![0u8; big];
    for (i, b) in v.iter_mut().enumerate().step_by(4096) {
        *b = (i as u64 ^ round) as u8;
    }
    v
}

/// The child side (call it from a `#[test] fn child()`). Roles: `race` (wait for a start file,
/// then get_or_compute quickly), `slow` (a computation with a big result, to be killed) and
/// `upload` (a big result whose upload the parent interrupts; prints the error and exits 3
/// instead of panicking).
pub fn child() {
    let Ok(role) = std::env::var("RC_CHILD_ROLE") else {
        return;
    };
    let store_loc = std::env::var("RC_STORE").unwrap();
    let dir = PathBuf::from(std::env::var("RC_DIR").unwrap());
    let round: u64 = std::env::var("RC_ROUND").unwrap().parse().unwrap();
    let big: usize = std::env::var("RC_BIG").unwrap().parse().unwrap();
    let store = Store::open_with(&store_loc, options_from_env()).unwrap();
    match role.as_str() {
        "race" => {
            let go = dir.join("go");
            while !go.exists() {
                std::thread::sleep(Duration::from_micros(200));
            }
            let v: u64 = store
                .task("proc.race")
                .get_or_compute(&round, || {
                    append_line(&dir.join(format!("computed-{round}")));
                    std::thread::sleep(Duration::from_millis(30));
                    Ok::<_, String>(round * 10 + 1)
                })
                .unwrap();
            println!("VALUE {v}");
        }
        "slow" => {
            let compute_ms: u64 = std::env::var("RC_COMPUTE_MS").unwrap().parse().unwrap();
            let v = store
                .task("proc.slow")
                .get_or_compute_bytes(&round, |_| {
                    fs::write(dir.join(format!("started-{round}")), b"").unwrap();
                    std::thread::sleep(Duration::from_millis(compute_ms));
                    Ok::<_, String>(big_value(big, round))
                })
                .unwrap();
            assert_eq!(v.len(), big);
            println!("DONE");
        }
        "upload" => {
            match store
                .task("proc.upload")
                .get_or_compute_bytes(&round, |_| Ok::<_, String>(big_value(big, round)))
            {
                Ok(_) => println!("DONE"),
                Err(e) => {
                    println!("ERROR: {e}");
                    std::process::exit(3);
                }
            }
        }
        other => panic!("unknown role {other}"),
    }
}

/// Appends this process's pid as a line to `path`.
pub fn append_line(path: &Path) {
    use std::io::Write;
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    writeln!(f, "{}", std::process::id()).unwrap();
}

/// Waits until `path` exists, failing after `limit`.
pub fn wait_for(path: &Path, limit: Duration) {
    let t = Instant::now();
    while !path.exists() {
        assert!(
            t.elapsed() < limit,
            "timed out waiting for {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Sends `sig` to a child.
pub fn signal(child: &Child, sig: i32) {
    // SAFETY: plain kill(2) on a child we spawned and have not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

pub fn sigkill(child: &Child) {
    signal(child, libc::SIGKILL);
}

/// A small deterministic generator for kill delays (no extra dependency).
pub fn next_rand(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// One store location and what its multi-process tests need to know about it.
pub struct Procs {
    /// The store's location, as given to `Store::open`.
    pub location: String,
    /// Size in bytes of the `slow` and `upload` roles' results.
    pub big: usize,
    /// How long [`Procs::check_whole`] waits for a lease held by someone else.
    pub wait: Duration,
}

impl Procs {
    /// `big`-byte results, a 60 s wait.
    pub fn new(location: &str, big: usize) -> Procs {
        Procs {
            location: location.to_string(),
            big,
            wait: Duration::from_secs(60),
        }
    }

    pub fn wait(mut self, wait: Duration) -> Procs {
        self.wait = wait;
        self
    }

    /// The `slow` and `upload` roles' result for `round`.
    pub fn big_value(&self, round: u64) -> Vec<u8> {
        big_value(self.big, round)
    }

    /// Re-executes this test binary as a child in `role` on this store, with `dir` for its
    /// files and extra `env`.
    pub fn spawn(&self, role: &str, dir: &Path, round: u64, env: &[(&str, String)]) -> Child {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", "child", "--nocapture", "--test-threads=1"])
            .env("RC_CHILD_ROLE", role)
            .env("RC_STORE", &self.location)
            .env("RC_DIR", dir)
            .env("RC_ROUND", round.to_string())
            .env("RC_BIG", self.big.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.spawn().unwrap()
    }

    /// Checks that `store` holds a whole, correct `slow` entry for `round` (computing it if the
    /// killed holder left none) and that `verify` finds nothing damaged.
    pub fn check_whole(&self, store: &Store, round: u64) {
        let task = store.task("proc.slow");
        let v = task
            .clone()
            .wait_timeout(self.wait)
            .get_or_compute_bytes(&round, |_| Ok::<_, String>(self.big_value(round)))
            .unwrap();
        assert!(v == self.big_value(round), "round {round}: wrong content");
        let status = task.entry(&round).unwrap().status().unwrap();
        assert_eq!(status, Some(Status::Completed));
        let report = store.verify(false, &|_, _, _| {}).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    }
}

/// `rounds` rounds of 8 processes racing for one entry: each gets the value, exactly one
/// computes it.
pub fn racing_rounds(p: &Procs, rounds: u64) {
    Store::open(&p.location).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for round in 0..rounds {
        let rdir = dir.path().join(format!("r{round}"));
        fs::create_dir(&rdir).unwrap();
        let children: Vec<Child> = (0..8).map(|_| p.spawn("race", &rdir, round, &[])).collect();
        fs::write(rdir.join("go"), b"").unwrap();
        for c in children {
            let out = c.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "child failed: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                stdout.contains(&format!("VALUE {}", round * 10 + 1)),
                "{stdout}"
            );
        }
        let computed = fs::read_to_string(rdir.join(format!("computed-{round}"))).unwrap();
        assert_eq!(
            computed.lines().count(),
            1,
            "round {round}: computed by {computed:?}"
        );
    }
}

/// `rounds` rounds of a `slow` holder SIGKILLed after a random delay below `max_delay_ms`
/// (anywhere from before the lease to after the commit, the big result's upload included):
/// the entry is then taken over or already whole, and `verify` finds nothing damaged.
pub fn sigkill_rounds(p: &Procs, rounds: u64, max_delay_ms: u64) {
    let store = Store::open(&p.location).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut seed = 0x9E3779B97F4A7C15u64 ^ std::process::id() as u64;
    for round in 0..rounds {
        let mut child = p.spawn("slow", dir.path(), round, &[("RC_COMPUTE_MS", "40".into())]);
        let delay = next_rand(&mut seed) % max_delay_ms;
        std::thread::sleep(Duration::from_millis(delay));
        sigkill(&child);
        let _ = child.wait();
        p.check_whole(&store, round);
    }
}

/// A `slow` holder SIGKILLed for certain mid-computation (lease held, nothing committed): the
/// taker (same host, dead pid) recomputes at once and the entry is whole.
pub fn sigkill_mid_computation(p: &Procs, round: u64) {
    let store = Store::open(&p.location).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut child = p.spawn(
        "slow",
        dir.path(),
        round,
        &[("RC_COMPUTE_MS", "60000".into())],
    );
    wait_for(
        &dir.path().join(format!("started-{round}")),
        Duration::from_secs(60),
    );
    sigkill(&child);
    let _ = child.wait();
    p.check_whole(&store, round);
}
