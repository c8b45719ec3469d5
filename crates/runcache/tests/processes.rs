//! Compute-once with real OS processes: racing, SIGKILL at random points, SIGTERM.
//!
//! The test binary re-executes itself: `child` below does nothing unless `RC_CHILD_ROLE` is set.

mod conformance;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use conformance::processes::{options_from_env, signal, wait_for, Procs};
use runcache::{Status, Store};

const BIG: usize = 16 << 20;

/// Processes on a local store under `dir`.
fn local(dir: &Path) -> Procs {
    Procs::new(dir.join("store").to_str().unwrap(), BIG)
}

#[test]
fn child() {
    conformance::processes::child();
}

#[test]
fn eight_processes_racing_compute_once() {
    let dir = tempfile::tempdir().unwrap();
    conformance::processes::racing_rounds(&local(dir.path()), 20);
}

#[test]
fn sigkill_of_the_holder_at_random_points_never_leaves_a_partial_entry() {
    // Kill anywhere from before the lease to after the commit (the 16 MiB commit included).
    let dir = tempfile::tempdir().unwrap();
    conformance::processes::sigkill_rounds(&local(dir.path()), 12, 400);
}

#[test]
fn dead_holder_is_taken_over_after_the_lease_window_without_same_host_checks() {
    let dir = tempfile::tempdir().unwrap();
    let p = local(dir.path());
    let store_loc = p.location.as_str();
    let env = [
        ("RC_COMPUTE_MS", "60000".to_string()),
        ("RC_TTL_MS", "600".to_string()),
        ("RC_SAME_HOST", "0".to_string()),
    ];
    let mut child = p.spawn("slow", dir.path(), 1, &env);
    wait_for(&dir.path().join("started-1"), Duration::from_secs(30));
    signal(&child, libc::SIGKILL);
    let _ = child.wait();
    std::env::set_var("RC_TTL_MS", "600");
    std::env::set_var("RC_SAME_HOST", "0");
    let store = Store::open_with(store_loc, options_from_env()).unwrap();
    let t = Instant::now();
    p.check_whole(&store, 1);
    // The taker had to watch the dead holder's heartbeat stay still for a whole TTL.
    assert!(
        t.elapsed() >= Duration::from_millis(600),
        "took over before the lease window"
    );
}

#[test]
fn sigterm_records_interrupted_and_hands_over_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let p = local(dir.path());
    let store_loc = p.location.as_str();
    // A TTL far longer than the test's patience: only a release can explain a quick handover.
    let env = [
        ("RC_COMPUTE_MS", "60000".to_string()),
        ("RC_TTL_MS", "120000".to_string()),
        ("RC_SAME_HOST", "0".to_string()),
    ];
    let store = Store::open(store_loc).unwrap();

    // 1. SIGTERM alone: the entry is recorded as interrupted and the process dies of SIGTERM.
    let child = p.spawn("slow", dir.path(), 7, &env);
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
    let mut holder = p.spawn("slow", dir.path(), 7, &env);
    wait_for(&dir.path().join("started-7"), Duration::from_secs(30));
    let waiter_env = [
        ("RC_COMPUTE_MS", "10".to_string()),
        ("RC_TTL_MS", "120000".to_string()),
        ("RC_SAME_HOST", "0".to_string()),
    ];
    fs::remove_file(dir.path().join("started-7")).unwrap();
    let waiter = p.spawn("slow", dir.path(), 7, &waiter_env);
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
    p.check_whole(&store, 7);
}
