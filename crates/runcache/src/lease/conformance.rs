//! The conformance suite every [`LeaseBackend`] must pass, plus the tests of the bundled
//! backends and of the manager. Future backends (S3, PostgreSQL) call [`check_backend`] and
//! [`check_create_race`] from their own tests.

use std::sync::{Arc, Barrier};
use std::time::Duration;

use super::*;
use crate::digest::Digest;
use crate::error::Error;

/// A test key.
pub(crate) fn key(name: &str) -> Key {
    Key(Digest::of(name.as_bytes()))
}

/// A record for `owner` at `generation` (a foreign host, so no same-host shortcut applies).
pub(crate) fn record(owner: &str, generation: u64) -> LeaseRecord {
    LeaseRecord {
        owner: owner.into(),
        generation,
        host: "elsewhere.invalid".into(),
        pid: 1,
        boot_id: "not-this-machine".into(),
        process_start: 1,
        ttl_ms: 60_000,
        acquired_unix_ms: 0,
        namespace: "tests.conformance".into(),
    }
}

fn held_by(backend: &dyn LeaseBackend, k: &Key) -> Option<(String, u64, u64)> {
    match backend.read(k).unwrap() {
        LeaseState::Held { record, beat } => Some((record.owner, record.generation, beat)),
        LeaseState::Free { .. } => None,
    }
}

/// What a backend under test can do to damage a generation record in place (`None` for
/// backends where a malformed record cannot exist).
pub(crate) type Corrupt<'a> = Option<&'a dyn Fn(&Key, u64, &[u8])>;

/// The shared conformance checks.
pub(crate) fn check_backend(backend: &dyn LeaseBackend, corrupt: Corrupt<'_>) {
    let k = key("conformance-main");

    // Acquire on free.
    assert_eq!(
        backend.read(&k).unwrap(),
        LeaseState::Free { next_generation: 1 }
    );
    assert!(backend.list().unwrap().is_empty());
    assert!(backend.try_create(&k, &record("a", 1)).unwrap());
    assert_eq!(held_by(backend, &k), Some(("a".into(), 1, 0)));
    // The record reads back exactly.
    match backend.read(&k).unwrap() {
        LeaseState::Held { record: r, .. } => assert_eq!(r, record("a", 1)),
        other => panic!("expected held, got {other:?}"),
    }

    // Second acquire of the same generation loses; the holder is unchanged.
    assert!(!backend.try_create(&k, &record("b", 1)).unwrap());
    assert_eq!(held_by(backend, &k), Some(("a".into(), 1, 0)));

    // Heartbeats by the owner are published; by anyone else refused.
    assert!(backend.beat(&k, 1, "a", 1).unwrap());
    assert!(backend.beat(&k, 1, "a", 2).unwrap());
    assert_eq!(held_by(backend, &k), Some(("a".into(), 1, 2)));
    assert!(!backend.beat(&k, 1, "b", 3).unwrap());
    assert!(!backend.beat(&k, 2, "a", 3).unwrap());
    assert_eq!(held_by(backend, &k), Some(("a".into(), 1, 2)));

    // Release by a non-owner is refused and the lease stays.
    assert!(!backend.release(&k, 1, "b").unwrap());
    assert!(!backend.release(&k, 2, "a").unwrap());
    assert_eq!(held_by(backend, &k), Some(("a".into(), 1, 2)));
    // Clean never touches a held lease.
    backend.clean(&k).unwrap();
    assert_eq!(held_by(backend, &k), Some(("a".into(), 1, 2)));
    assert_eq!(backend.list().unwrap().len(), 1);

    // Release by the owner frees it; a second release and a beat after release are refused.
    assert!(backend.release(&k, 1, "a").unwrap());
    assert_eq!(
        backend.read(&k).unwrap(),
        LeaseState::Free { next_generation: 2 }
    );
    assert!(!backend.release(&k, 1, "a").unwrap());
    assert!(!backend.beat(&k, 1, "a", 3).unwrap());
    // Released but not cleaned: listed as free.
    assert_eq!(
        backend.list().unwrap(),
        vec![(k, LeaseState::Free { next_generation: 2 })]
    );

    // Re-acquire gives a higher generation; an old generation cannot be re-created.
    assert!(!backend.try_create(&k, &record("c", 1)).unwrap());
    assert!(backend.try_create(&k, &record("c", 2)).unwrap());
    assert_eq!(held_by(backend, &k), Some(("c".into(), 2, 0)));

    // Takeover of a (dead) holder creates generation + 1, exactly once; the old holder's beat
    // and release are then refused and change nothing.
    assert!(backend.try_create(&k, &record("d", 3)).unwrap());
    assert!(!backend.try_create(&k, &record("e", 3)).unwrap());
    assert!(!backend.beat(&k, 2, "c", 1).unwrap());
    assert!(!backend.release(&k, 2, "c").unwrap());
    assert_eq!(held_by(backend, &k), Some(("d".into(), 3, 0)));
    assert!(backend.beat(&k, 3, "d", 1).unwrap());
    assert_eq!(held_by(backend, &k), Some(("d".into(), 3, 1)));

    // Clean after release removes it from the list, and generations never go back.
    assert!(backend.release(&k, 3, "d").unwrap());
    backend.clean(&k).unwrap();
    assert!(backend.list().unwrap().is_empty());
    assert_eq!(
        backend.read(&k).unwrap(),
        LeaseState::Free { next_generation: 4 }
    );
    assert!(!backend.try_create(&k, &record("f", 3)).unwrap());
    assert!(backend.try_create(&k, &record("f", 4)).unwrap());
    assert_eq!(held_by(backend, &k), Some(("f".into(), 4, 0)));

    // Keys are independent.
    let other = key("conformance-other");
    assert_eq!(
        backend.read(&other).unwrap(),
        LeaseState::Free { next_generation: 1 }
    );
    assert!(backend.try_create(&other, &record("g", 1)).unwrap());
    let listed: Vec<Key> = backend.list().unwrap().into_iter().map(|e| e.0).collect();
    assert_eq!(listed.len(), 2);
    assert!(listed.contains(&k) && listed.contains(&other));

    // A damaged record is an error naming it, never "free" or "stale".
    if let Some(corrupt) = corrupt {
        for (i, bytes) in [&b""[..], b"{\"owner\": \"x\", \"gener", b"\x00\xffgarbage"]
            .iter()
            .enumerate()
        {
            let bad = key(&format!("conformance-corrupt-{i}"));
            assert!(backend.try_create(&bad, &record("h", 1)).unwrap());
            corrupt(&bad, 1, bytes);
            match backend.read(&bad) {
                Err(Error::Malformed { what, path, .. }) => {
                    assert_eq!(what, "lease record");
                    assert!(!path.is_empty());
                }
                other => panic!("a damaged record must be Malformed, got {other:?}"),
            }
            assert!(matches!(
                backend.beat(&bad, 1, "h", 1),
                Err(Error::Malformed { .. })
            ));
        }
    }
}

/// `threads` threads race `try_create` of the same generation, `rounds` times: exactly one wins
/// each round.
pub(crate) fn check_create_race(backend: Arc<dyn LeaseBackend>, threads: usize, rounds: u64) {
    let k = key("conformance-race");
    for generation in 1..=rounds {
        let barrier = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let backend = backend.clone();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    backend
                        .try_create(&k, &record(&format!("t{t}"), generation))
                        .unwrap()
                })
            })
            .collect();
        let wins = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|&won| won)
            .count();
        assert_eq!(wins, 1, "round {generation}: {wins} winners");
        match backend.read(&k).unwrap() {
            LeaseState::Held { record, .. } => assert_eq!(record.generation, generation),
            other => panic!("expected held, got {other:?}"),
        }
    }
}

mod memory_backend {
    use super::*;

    #[test]
    fn conformance() {
        check_backend(&MemoryLeases::new(), None);
    }

    #[test]
    fn create_race() {
        check_create_race(Arc::new(MemoryLeases::new()), 16, 200);
    }
}

mod fs_backend {
    use super::*;
    use std::path::Path;

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn conformance() {
        let tmp = tempfile::tempdir().unwrap();
        let leases = FsLeases::new(tmp.path().join("leases"));
        let corrupt = |k: &Key, n: u64, bytes: &[u8]| {
            std::fs::write(leases.key_dir(k).join(format!("g.{n}")), bytes).unwrap();
        };
        check_backend(&leases, Some(&corrupt));
    }

    #[test]
    fn create_race() {
        let tmp = tempfile::tempdir().unwrap();
        check_create_race(Arc::new(FsLeases::new(tmp.path().join("leases"))), 16, 100);
    }

    #[test]
    fn layout_and_cleanup_of_older_generations() {
        let tmp = tempfile::tempdir().unwrap();
        let leases = FsLeases::new(tmp.path().join("leases"));
        let k = key("layout");
        let hex = k.to_hex();
        let dir = leases.key_dir(&k);
        assert_eq!(dir, tmp.path().join("leases").join(&hex[..2]).join(&hex));

        assert!(leases.try_create(&k, &record("a", 1)).unwrap());
        assert!(leases.beat(&k, 1, "a", 7).unwrap());
        assert_eq!(files(&dir), ["g.1", "h.1"]);
        assert_eq!(std::fs::read_to_string(dir.join("h.1")).unwrap(), "7\n");
        let stored: LeaseRecord =
            serde_json::from_slice(&std::fs::read(dir.join("g.1")).unwrap()).unwrap();
        assert_eq!(stored, record("a", 1));

        assert!(leases.release(&k, 1, "a").unwrap());
        assert_eq!(files(&dir), ["g.1", "h.1", "r.1"]);
        // The winner of generation 2 removes generation 1's files; no temp file is left.
        assert!(leases.try_create(&k, &record("b", 2)).unwrap());
        assert_eq!(files(&dir), ["g.2"]);
        assert!(leases.release(&k, 2, "b").unwrap());
        leases.clean(&k).unwrap();
        assert_eq!(files(&dir), ["r.2"]);
    }

    #[test]
    fn a_slow_claimant_cannot_resurrect_a_cleaned_generation() {
        let tmp = tempfile::tempdir().unwrap();
        let leases = FsLeases::new(tmp.path().join("leases"));
        let k = key("resurrect");
        assert!(leases.try_create(&k, &record("a", 1)).unwrap());
        assert!(leases.try_create(&k, &record("b", 2)).unwrap());
        assert!(leases.try_create(&k, &record("c", 3)).unwrap()); // removes g.1 and g.2
                                                                  // Someone who read the state long ago now tries to take over generation 2.
        assert!(!leases.try_create(&k, &record("late", 2)).unwrap());
        assert!(!leases.try_create(&k, &record("late", 1)).unwrap());
        assert_eq!(held_by(&leases, &k), Some(("c".into(), 3, 0)));
        assert_eq!(files(&leases.key_dir(&k)), ["g.3"]);
    }

    #[test]
    fn malformed_heartbeat_and_wrong_generation_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let leases = FsLeases::new(tmp.path().join("leases"));
        let k = key("bad-beat");
        assert!(leases.try_create(&k, &record("a", 1)).unwrap());
        let dir = leases.key_dir(&k);
        std::fs::write(dir.join("h.1"), "12x").unwrap();
        assert!(matches!(
            leases.read(&k),
            Err(Error::Malformed {
                what: "lease heartbeat",
                ..
            })
        ));
        let k2 = key("wrong-gen");
        assert!(leases.try_create(&k2, &record("a", 1)).unwrap());
        let dir2 = leases.key_dir(&k2);
        std::fs::write(
            dir2.join("g.1"),
            serde_json::to_vec(&record("a", 5)).unwrap(),
        )
        .unwrap();
        assert!(matches!(
            leases.read(&k2),
            Err(Error::Malformed {
                what: "lease record",
                ..
            })
        ));
    }

    #[test]
    fn readers_survive_concurrent_takeovers() {
        // One thread keeps taking over (which deletes older generations) while others read and
        // list: readers must never see an error, only a consistent state.
        let tmp = tempfile::tempdir().unwrap();
        let leases = Arc::new(FsLeases::new(tmp.path().join("leases")));
        let k = key("churn");
        assert!(leases.try_create(&k, &record("w", 1)).unwrap());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let leases = leases.clone();
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut reads = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        match leases.read(&k).unwrap() {
                            LeaseState::Held { record, .. } => assert!(record.generation >= 1),
                            other => panic!("never free here, got {other:?}"),
                        }
                        assert_eq!(leases.list().unwrap().len(), 1);
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        for generation in 2..=300 {
            assert!(leases.try_create(&k, &record("w", generation)).unwrap());
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for r in readers {
            assert!(r.join().unwrap() > 0);
        }
    }
}

mod manager {
    use super::*;

    fn memory() -> Arc<dyn LeaseBackend> {
        Arc::new(MemoryLeases::new())
    }

    fn options(ttl_ms: u64, same_host: bool) -> LeaseOptions {
        LeaseOptions {
            ttl: Duration::from_millis(ttl_ms),
            heartbeat_every: Duration::from_millis(ttl_ms / 4),
            same_host_liveness: same_host,
        }
    }

    fn won(a: Acquire) -> LeaseGuard {
        match a {
            Acquire::Won(g) => g,
            Acquire::Busy(r) => panic!("expected to win, busy with {r:?}"),
        }
    }

    #[test]
    fn leases_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Leases>();
        check::<LeaseGuard>();
    }

    #[test]
    fn defaults() {
        let o = LeaseOptions::default();
        assert_eq!(o.ttl, Duration::from_secs(30));
        assert_eq!(o.heartbeat_every, Duration::from_millis(7500));
        assert!(o.same_host_liveness);
    }

    #[test]
    fn acquire_busy_release_reacquire() {
        let backend = memory();
        let a = Leases::new(backend.clone(), options(60_000, true));
        let b = Leases::new(backend.clone(), options(60_000, true));
        let k = key("mgr-basic");
        assert!(a.view(&k).unwrap().is_none());
        let guard = won(a.try_acquire(&k, "ns").unwrap());
        assert_eq!(guard.generation(), 1);
        assert_eq!(guard.key(), &k);
        assert_eq!(guard.record().owner.len(), 32);
        assert_eq!(guard.record().pid, std::process::id());
        assert_eq!(guard.record().ttl_ms, 60_000);
        match b.try_acquire(&k, "ns").unwrap() {
            Acquire::Busy(r) => assert_eq!(&r, guard.record()),
            Acquire::Won(_) => panic!("two winners"),
        }
        let view = b.view(&k).unwrap().unwrap();
        assert_eq!(view.alive, Some(true));
        assert_eq!(view.record.as_ref(), Some(guard.record()));
        guard.release().unwrap();
        assert!(b.view(&k).unwrap().is_none());
        let listed = b.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].next_generation, Some(2));
        let again = won(b.try_acquire(&k, "ns").unwrap());
        assert_eq!(again.generation(), 2);
        drop(again); // Drop releases too.
        assert_eq!(
            backend.read(&k).unwrap(),
            LeaseState::Free { next_generation: 3 }
        );
    }

    #[test]
    fn owner_tokens_differ() {
        let leases = Leases::new(memory(), options(60_000, true));
        let g1 = won(leases.try_acquire(&key("tok1"), "ns").unwrap());
        let g2 = won(leases.try_acquire(&key("tok2"), "ns").unwrap());
        assert_ne!(g1.record().owner, g2.record().owner);
    }

    #[test]
    fn a_silent_foreign_holder_is_dead_only_after_a_full_ttl_on_our_clock() {
        let backend = memory();
        let k = key("mgr-foreign");
        let mut r = record("ghost", 1);
        r.ttl_ms = 300;
        r.acquired_unix_ms = 0; // a clock from 1970: must not matter
        assert!(backend.try_create(&k, &r).unwrap());
        let leases = Leases::new(backend.clone(), options(60_000, true));
        // First observation: alive, however old the record claims to be.
        assert!(matches!(
            leases.try_acquire(&k, "ns").unwrap(),
            Acquire::Busy(_)
        ));
        std::thread::sleep(Duration::from_millis(100));
        assert!(matches!(
            leases.try_acquire(&k, "ns").unwrap(),
            Acquire::Busy(_)
        ));
        std::thread::sleep(Duration::from_millis(300));
        let view = leases.view(&k).unwrap().unwrap();
        assert_eq!(view.alive, Some(false));
        assert!(view.beat_unchanged_for.unwrap() > Duration::from_millis(300));
        let guard = won(leases.try_acquire(&k, "ns").unwrap());
        assert_eq!(guard.generation(), 2);
        // The old holder's token no longer works.
        assert!(!backend.beat(&k, 1, "ghost", 1).unwrap());
        assert!(!backend.release(&k, 1, "ghost").unwrap());
    }

    #[test]
    fn heartbeats_keep_a_lease_far_past_its_ttl() {
        let backend = memory();
        let k = key("mgr-long");
        let holder = Leases::new(backend.clone(), options(200, false));
        let observer = Leases::new(backend.clone(), options(200, false));
        let guard = won(holder.try_acquire(&k, "ns").unwrap());
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(1000) {
            assert!(matches!(
                observer.try_acquire(&k, "ns").unwrap(),
                Acquire::Busy(_)
            ));
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!guard.is_lost());
        match backend.read(&k).unwrap() {
            LeaseState::Held { beat, .. } => assert!(beat >= 2, "beat {beat}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn same_host_dead_process_is_taken_over_at_once_unless_disabled() {
        let backend = memory();
        let k = key("mgr-same-host");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let start = identity::read_stat(pid).unwrap().map(|s| s.start);
        child.wait().unwrap();
        let me = identity::current();
        let mut r = record("dead-child", 1);
        r.host = me.host.clone();
        r.boot_id = me.boot_id.clone();
        r.pid = pid;
        r.process_start = start.unwrap_or(me.process_start + 1);
        assert!(backend.try_create(&k, &r).unwrap());

        let patient = Leases::new(backend.clone(), options(60_000, false));
        assert!(matches!(
            patient.try_acquire(&k, "ns").unwrap(),
            Acquire::Busy(_)
        ));
        let quick = Leases::new(backend.clone(), options(60_000, true));
        assert_eq!(won(quick.try_acquire(&k, "ns").unwrap()).generation(), 2);
    }

    #[test]
    fn a_live_same_host_holder_is_not_taken_over() {
        let backend = memory();
        let k = key("mgr-self");
        let a = Leases::new(backend.clone(), options(60_000, true));
        let _guard = won(a.try_acquire(&k, "ns").unwrap());
        assert!(matches!(a.try_acquire(&k, "ns").unwrap(), Acquire::Busy(_)));
    }

    #[test]
    fn a_taken_over_guard_learns_it_is_lost_and_does_not_release_the_new_holder() {
        let backend = memory();
        let k = key("mgr-lost");
        let leases = Leases::new(backend.clone(), options(100, false));
        let guard = won(leases.try_acquire(&k, "ns").unwrap());
        // Someone takes over behind its back.
        assert!(backend.try_create(&k, &record("thief", 2)).unwrap());
        let start = std::time::Instant::now();
        while !guard.is_lost() {
            assert!(start.elapsed() < Duration::from_secs(30), "never noticed");
            std::thread::sleep(Duration::from_millis(10));
        }
        guard.release().unwrap();
        assert_eq!(held_by(&*backend, &k), Some(("thief".into(), 2, 0)));
    }

    #[test]
    fn losing_a_creation_race_gives_busy_of_the_winner() {
        let backend = memory();
        let k = key("mgr-race");
        let leases: Vec<Arc<Leases>> = (0..16)
            .map(|_| Arc::new(Leases::new(backend.clone(), options(60_000, true))))
            .collect();
        for round in 0..20 {
            let barrier = Arc::new(Barrier::new(leases.len()));
            let handles: Vec<_> = leases
                .iter()
                .map(|l| {
                    let (l, barrier) = (l.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        l.try_acquire(&k, "ns").unwrap()
                    })
                })
                .collect();
            let results: Vec<Acquire> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            let won: Vec<&LeaseGuard> = results
                .iter()
                .filter_map(|a| match a {
                    Acquire::Won(g) => Some(g),
                    Acquire::Busy(_) => None,
                })
                .collect();
            assert_eq!(won.len(), 1, "round {round}");
            assert_eq!(won[0].generation(), round + 1);
            for a in &results {
                if let Acquire::Busy(r) = a {
                    assert_eq!(r, won[0].record());
                }
            }
            drop(results);
        }
    }
}
