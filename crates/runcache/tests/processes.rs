//! Compute-once with real OS processes: racing, SIGKILL at random points, SIGTERM.
//!
//! The test binary re-executes itself: `child` below does nothing unless `RC_CHILD_ROLE` is set.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use runcache::lease::LeaseOptions;
use runcache::{Status, Store, StoreOptions};

const BIG: usize = 16 << 20;

fn options_from_env() -> StoreOptions {
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

fn big_value(round: u64) -> Vec<u8> {
    let mut v = vec![0u8; BIG];
    for (i, b) in v.iter_mut().enumerate().step_by(4096) {
        *b = (i as u64 ^ round) as u8;
    }
    v
}

/// The child side. Roles: `race` (wait for a start signal, then get_or_compute quickly) and
/// `slow` (a long computation with a big result, to be killed).
#[test]
fn child() {
    let Ok(role) = std::env::var("RC_CHILD_ROLE") else {
        return;
    };
    let store_path = std::env::var("RC_STORE").unwrap();
    let dir = PathBuf::from(std::env::var("RC_DIR").unwrap());
    let round: u64 = std::env::var("RC_ROUND").unwrap().parse().unwrap();
    let store = Store::open_with(&store_path, options_from_env()).unwrap();
    match role.as_str() {
        "race" => {
            let go = dir.join("go");
            while !go.exists() {
                std::thread::sleep(Duration::from_micros(200));
            }
            let task = store.task("proc.race");
            let v: u64 = task
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
            let task = store.task("proc.slow");
            let v = task
                .get_or_compute_bytes(&round, |_| {
                    fs::write(dir.join(format!("started-{round}")), b"").unwrap();
                    std::thread::sleep(Duration::from_millis(compute_ms));
                    Ok::<_, String>(big_value(round))
                })
                .unwrap();
            assert_eq!(v.len(), BIG);
            println!("DONE");
        }
        other => panic!("unknown role {other}"),
    }
}

fn append_line(path: &Path) {
    use std::io::Write;
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    writeln!(f, "{}", std::process::id()).unwrap();
}

fn spawn(role: &str, store: &str, dir: &Path, round: u64, env: &[(&str, String)]) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env("RC_CHILD_ROLE", role)
        .env("RC_STORE", store)
        .env("RC_DIR", dir)
        .env("RC_ROUND", round.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

fn wait_for(path: &Path, limit: Duration) {
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

fn signal(child: &Child, sig: i32) {
    // SAFETY: plain kill(2) on a child we spawned and have not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

/// A small deterministic generator for kill delays (no extra dependency).
fn next_rand(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn eight_processes_racing_compute_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let store = store.to_str().unwrap();
    Store::open(store).unwrap();
    for round in 0..20u64 {
        let rdir = dir.path().join(format!("r{round}"));
        fs::create_dir(&rdir).unwrap();
        let children: Vec<Child> = (0..8)
            .map(|_| spawn("race", store, &rdir, round, &[]))
            .collect();
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

/// Checks that the store holds a whole, correct entry for `round` (computing it if the killed
/// holder left none) and that `verify` finds nothing damaged.
fn check_whole(store: &Store, round: u64) {
    let task = store.task("proc.slow");
    let v = task
        .clone()
        .wait_timeout(Duration::from_secs(60))
        .get_or_compute_bytes(&round, |_| Ok::<_, String>(big_value(round)))
        .unwrap();
    assert!(v == big_value(round), "round {round}: wrong content");
    let status = task.entry(&round).unwrap().status().unwrap();
    assert_eq!(status, Some(Status::Completed));
    let report = store.verify(false, &|_, _, _| {}).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[test]
fn sigkill_of_the_holder_at_random_points_never_leaves_a_partial_entry() {
    let dir = tempfile::tempdir().unwrap();
    let store_path = dir.path().join("store");
    let store_loc = store_path.to_str().unwrap();
    let store = Store::open(store_loc).unwrap();
    let mut seed = 0x9E3779B97F4A7C15u64 ^ std::process::id() as u64;
    for round in 0..12u64 {
        let mut child = spawn(
            "slow",
            store_loc,
            dir.path(),
            round,
            &[("RC_COMPUTE_MS", "40".into())],
        );
        // Kill anywhere from before the lease to after the commit (the 16 MiB commit included).
        let delay = next_rand(&mut seed) % 400;
        std::thread::sleep(Duration::from_millis(delay));
        signal(&child, libc::SIGKILL);
        let _ = child.wait();
        check_whole(&store, round);
    }
}

#[test]
fn dead_holder_is_taken_over_after_the_lease_window_without_same_host_checks() {
    let dir = tempfile::tempdir().unwrap();
    let store_path = dir.path().join("store");
    let store_loc = store_path.to_str().unwrap();
    let env = [
        ("RC_COMPUTE_MS", "60000".to_string()),
        ("RC_TTL_MS", "600".to_string()),
        ("RC_SAME_HOST", "0".to_string()),
    ];
    let mut child = spawn("slow", store_loc, dir.path(), 1, &env);
    wait_for(&dir.path().join("started-1"), Duration::from_secs(30));
    signal(&child, libc::SIGKILL);
    let _ = child.wait();
    std::env::set_var("RC_TTL_MS", "600");
    std::env::set_var("RC_SAME_HOST", "0");
    let store = Store::open_with(store_loc, options_from_env()).unwrap();
    let t = Instant::now();
    check_whole(&store, 1);
    // The taker had to watch the dead holder's heartbeat stay still for a whole TTL.
    assert!(
        t.elapsed() >= Duration::from_millis(600),
        "took over before the lease window"
    );
}

#[test]
fn sigterm_records_interrupted_and_hands_over_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store_path = dir.path().join("store");
    let store_loc = store_path.to_str().unwrap();
    // A TTL far longer than the test's patience: only a release can explain a quick handover.
    let env = [
        ("RC_COMPUTE_MS", "60000".to_string()),
        ("RC_TTL_MS", "120000".to_string()),
        ("RC_SAME_HOST", "0".to_string()),
    ];
    let store = Store::open(store_loc).unwrap();

    // 1. SIGTERM alone: the entry is recorded as interrupted and the process dies of SIGTERM.
    let child = spawn("slow", store_loc, dir.path(), 7, &env);
    wait_for(&dir.path().join("started-7"), Duration::from_secs(30));
    signal(&child, libc::SIGTERM);
    let out = child.wait_with_output().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(libc::SIGTERM), "{out:?}");
    let m = store
        .task("proc.slow")
        .entry(&7u64)
        .unwrap()
        .info()
        .unwrap()
        .unwrap();
    assert_eq!(m.status, Status::Interrupted);

    // 2. A waiter gets the lease as soon as the holder is terminated, and recomputes.
    fs::remove_file(dir.path().join("started-7")).unwrap();
    let mut holder = spawn("slow", store_loc, dir.path(), 7, &env);
    wait_for(&dir.path().join("started-7"), Duration::from_secs(30));
    let waiter_env = [
        ("RC_COMPUTE_MS", "10".to_string()),
        ("RC_TTL_MS", "120000".to_string()),
        ("RC_SAME_HOST", "0".to_string()),
    ];
    fs::remove_file(dir.path().join("started-7")).unwrap();
    let waiter = spawn("slow", store_loc, dir.path(), 7, &waiter_env);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !dir.path().join("started-7").exists(),
        "the waiter must wait, not compute"
    );
    signal(&holder, libc::SIGTERM);
    let t = Instant::now();
    let out = waiter.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "handover waited for the TTL"
    );
    assert!(
        dir.path().join("started-7").exists(),
        "the waiter recomputed"
    );
    assert_eq!(holder.wait().unwrap().signal(), Some(libc::SIGTERM));
    check_whole(&store, 7);
}
