//! Leases between REAL processes: this test binary re-executes itself (`current_exe()`) with a
//! filter naming `child_helper`, which acts only when `RUNCACHE_LEASE_TEST_ROLE` is set.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use runcache::lease::{Acquire, FsLeases, LeaseBackend, LeaseOptions, LeaseState, Leases};
use runcache::{Digest, Key};

const ROLE: &str = "RUNCACHE_LEASE_TEST_ROLE";
const DIR: &str = "RUNCACHE_LEASE_TEST_DIR";
const SYNC: &str = "RUNCACHE_LEASE_TEST_SYNC";
const KEY: &str = "RUNCACHE_LEASE_TEST_KEY";
const TTL: &str = "RUNCACHE_LEASE_TEST_TTL_MS";
const BEAT: &str = "RUNCACHE_LEASE_TEST_BEAT_MS";
const INDEX: &str = "RUNCACHE_LEASE_TEST_INDEX";

/// Failure guard only: no test asserts speed.
const PATIENCE: Duration = Duration::from_secs(60);

fn test_key(name: &str) -> Key {
    Key(Digest::of(name.as_bytes()))
}

fn options(ttl_ms: u64, beat_ms: u64, same_host: bool) -> LeaseOptions {
    LeaseOptions {
        ttl: Duration::from_millis(ttl_ms),
        heartbeat_every: Duration::from_millis(beat_ms),
        same_host_liveness: same_host,
    }
}

fn env_u64(name: &str) -> u64 {
    std::env::var(name).unwrap().parse().unwrap()
}

/// Writes `text` to `path` atomically (temp + rename), so pollers never see a partial file.
fn publish(path: &Path, text: &str) {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn wait_for_file(path: &Path) -> String {
    let start = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            return text;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "gave up waiting for {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn wait_child(child: &mut Child) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > PATIENCE {
            let _ = child.kill();
            panic!("child {} did not exit", child.id());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Not a test of its own: the body of the child processes.
#[test]
fn child_helper() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let leases_dir = PathBuf::from(std::env::var(DIR).unwrap());
    let sync = PathBuf::from(std::env::var(SYNC).unwrap());
    let key: Key = std::env::var(KEY).unwrap().parse().unwrap();
    let leases = Leases::new(
        Arc::new(FsLeases::new(leases_dir)),
        options(env_u64(TTL), env_u64(BEAT), true),
    );
    match role.as_str() {
        "race" => {
            let index = env_u64(INDEX);
            wait_for_file(&sync.join("go"));
            match leases.try_acquire(&key, "tests.race").unwrap() {
                Acquire::Won(guard) => {
                    publish(
                        &sync.join(format!("result.{index}")),
                        &format!("won {}", guard.generation()),
                    );
                    // Hold it until every racer has reported.
                    wait_for_file(&sync.join("done"));
                    guard.release().unwrap();
                }
                Acquire::Busy(record) => publish(
                    &sync.join(format!("result.{index}")),
                    &format!("busy {}", record.generation),
                ),
            }
        }
        "hold" => {
            let guard = match leases.try_acquire(&key, "tests.hold").unwrap() {
                Acquire::Won(guard) => guard,
                Acquire::Busy(record) => panic!("holder found the lease busy: {record:?}"),
            };
            let marker = sync.join("hook-ran");
            guard.set_interrupt_hook(Box::new(move || publish(&marker, "interrupted")));
            publish(&sync.join("acquired"), &guard.generation().to_string());
            // Hold (heartbeating in the background) until told to stop, or until killed.
            wait_for_file(&sync.join("done"));
            assert!(!guard.is_lost());
            guard.release().unwrap();
        }
        other => panic!("unknown role {other}"),
    }
}

struct Scene {
    _tmp: tempfile::TempDir,
    leases_dir: PathBuf,
    key: Key,
}

impl Scene {
    fn new(name: &str) -> Scene {
        let tmp = tempfile::tempdir().unwrap();
        Scene {
            leases_dir: tmp.path().join("leases"),
            _tmp: tmp,
            key: test_key(name),
        }
    }

    fn sync_dir(&self, name: &str) -> PathBuf {
        let dir = self.leases_dir.parent().unwrap().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn spawn(&self, role: &str, sync: &Path, index: usize, ttl_ms: u64, beat_ms: u64) -> Child {
        let log = std::fs::File::create(sync.join(format!("child.{index}.log"))).unwrap();
        Command::new(std::env::current_exe().unwrap())
            .args(["child_helper", "--exact", "--nocapture", "--test-threads=1"])
            .env(ROLE, role)
            .env(DIR, &self.leases_dir)
            .env(SYNC, sync)
            .env(KEY, self.key.to_hex())
            .env(TTL, ttl_ms.to_string())
            .env(BEAT, beat_ms.to_string())
            .env(INDEX, index.to_string())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    fn backend(&self) -> Arc<dyn LeaseBackend> {
        Arc::new(FsLeases::new(self.leases_dir.clone()))
    }

    /// Starts a holder and waits until it has the lease; returns it and its generation.
    fn holder(&self, sync: &Path, ttl_ms: u64, beat_ms: u64) -> (Child, u64) {
        let child = self.spawn("hold", sync, 0, ttl_ms, beat_ms);
        let generation = wait_for_file(&sync.join("acquired")).parse().unwrap();
        (child, generation)
    }
}

#[test]
fn eight_processes_race_and_exactly_one_wins_each_round() {
    let scene = Scene::new("race");
    const PROCS: usize = 8;
    for round in 0..20u64 {
        let sync = scene.sync_dir(&format!("round{round}"));
        let mut children: Vec<Child> = (0..PROCS)
            .map(|i| scene.spawn("race", &sync, i, 60_000, 15_000))
            .collect();
        publish(&sync.join("go"), "go");
        let results: Vec<String> = (0..PROCS)
            .map(|i| wait_for_file(&sync.join(format!("result.{i}"))))
            .collect();
        publish(&sync.join("done"), "done");
        for child in &mut children {
            assert!(wait_child(child).success());
        }
        let winners: Vec<&String> = results.iter().filter(|r| r.starts_with("won")).collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        // Generations only grow: round r is won at generation r + 1.
        assert_eq!(winners[0], &format!("won {}", round + 1), "{results:?}");
        for r in &results {
            assert!(
                r == winners[0] || r == &format!("busy {}", round + 1),
                "{r}"
            );
        }
        assert_eq!(
            scene.backend().read(&scene.key).unwrap(),
            LeaseState::Free {
                next_generation: round + 2
            }
        );
    }
}

#[test]
fn a_sigkilled_holder_is_taken_over_only_after_a_silent_ttl_elsewhere() {
    let scene = Scene::new("sigkill-remote");
    let sync = scene.sync_dir("sync");
    let ttl = Duration::from_millis(600);
    let (mut child, generation) = scene.holder(&sync, 600, 100);
    // An observer that may not use the same-host shortcut: it must watch heartbeats.
    let observer = Leases::new(scene.backend(), options(600, 150, false));
    let mut last_beat = None;
    let mut last_change = Instant::now();
    let mut observe = || {
        let before = Instant::now();
        if let Some(view) = observer.view(&scene.key).unwrap() {
            let seen = (view.record.unwrap().generation, view.beat.unwrap());
            if last_beat != Some(seen) {
                last_beat = Some(seen);
                last_change = before;
            }
        }
        last_change
    };
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(400) {
        observe();
        match observer.try_acquire(&scene.key, "tests").unwrap() {
            Acquire::Busy(r) => assert_eq!(r.generation, generation),
            Acquire::Won(_) => panic!("took over a live holder"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL: no chance to release
    assert_eq!(wait_child(&mut child).signal(), Some(libc::SIGKILL));
    let mut busy_after_kill = 0;
    let guard = loop {
        let last_change = observe();
        match observer.try_acquire(&scene.key, "tests").unwrap() {
            Acquire::Won(guard) => {
                assert!(
                    last_change.elapsed() > ttl,
                    "took over after seeing no beat for only {:?}",
                    last_change.elapsed()
                );
                break guard;
            }
            Acquire::Busy(r) => {
                assert_eq!(r.generation, generation);
                busy_after_kill += 1;
            }
        }
        assert!(start.elapsed() < PATIENCE, "never took over");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(busy_after_kill > 0);
    assert!(guard.generation() > generation);
    guard.release().unwrap();
}

#[test]
fn a_sigkilled_holder_on_this_machine_is_taken_over_at_once() {
    let scene = Scene::new("sigkill-local");
    let sync = scene.sync_dir("sync");
    // A TTL far longer than any test: only the same-host check can free it.
    let (mut child, generation) = scene.holder(&sync, 600_000, 100);
    let observer = Leases::new(scene.backend(), options(600_000, 150_000, true));
    assert!(matches!(
        observer.try_acquire(&scene.key, "tests").unwrap(),
        Acquire::Busy(_)
    ));
    child.kill().unwrap();
    wait_child(&mut child);
    match observer.try_acquire(&scene.key, "tests").unwrap() {
        Acquire::Won(guard) => assert_eq!(guard.generation(), generation + 1),
        Acquire::Busy(r) => panic!("a dead same-host holder still counts as alive: {r:?}"),
    }
}

#[test]
fn a_heartbeating_holder_keeps_its_lease_for_many_ttls() {
    let scene = Scene::new("long-holder");
    let sync = scene.sync_dir("sync");
    let ttl_ms = 400;
    let (mut child, generation) = scene.holder(&sync, ttl_ms, 50);
    let observer = Leases::new(scene.backend(), options(ttl_ms, 100, false));
    let start = Instant::now();
    let mut beats = Vec::new();
    while start.elapsed() < Duration::from_millis(6 * ttl_ms) {
        match observer.try_acquire(&scene.key, "tests").unwrap() {
            Acquire::Busy(r) => assert_eq!(r.generation, generation),
            Acquire::Won(_) => panic!("took over a holder that heartbeats"),
        }
        beats.push(observer.view(&scene.key).unwrap().unwrap().beat.unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(beats.windows(2).all(|w| w[0] <= w[1]));
    assert!(beats.last() > beats.first(), "no heartbeat seen: {beats:?}");
    publish(&sync.join("done"), "done");
    assert!(wait_child(&mut child).success());
    match observer.try_acquire(&scene.key, "tests").unwrap() {
        Acquire::Won(guard) => assert_eq!(guard.generation(), generation + 1),
        Acquire::Busy(r) => panic!("released lease still busy: {r:?}"),
    }
}

#[test]
fn sigterm_runs_the_hook_releases_and_dies_of_the_signal() {
    let scene = Scene::new("sigterm");
    let sync = scene.sync_dir("sync");
    let (mut child, generation) = scene.holder(&sync, 600_000, 100);
    assert!(matches!(
        scene.backend().read(&scene.key).unwrap(),
        LeaseState::Held { .. }
    ));
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = wait_child(&mut child);
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
    assert_eq!(
        std::fs::read_to_string(sync.join("hook-ran")).unwrap(),
        "interrupted"
    );
    // Released before the process died: free right now, no TTL to wait out.
    assert_eq!(
        scene.backend().read(&scene.key).unwrap(),
        LeaseState::Free {
            next_generation: generation + 1
        }
    );
}
