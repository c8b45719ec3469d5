//! Tiered stores: nearest tier read first and filled from farther ones, writes through to the
//! shared (farthest writable) tier, leases on it, read-only tiers never written, and a local hit
//! served while the remote is unreachable.
//!
//! The test binary re-executes itself for the multi-process test: `child` below does nothing
//! unless `RC_TIER_CHILD` is set.

mod conformance;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use runcache::{Error, Store};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn must_not_run<T>() -> Result<T, String> {
    panic!("expected a hit")
}

fn big(seed: u8) -> Vec<u8> {
    (0..300_000u32).map(|i| (i as u8) ^ seed).collect()
}

/// Every file under `root` with its content (for "never written" checks).
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), fs::read(&p).unwrap());
            }
        }
    }
    out
}

#[test]
fn tiered_store_conforms() {
    let dirs = std::sync::Mutex::new(Vec::new());
    conformance::run_all(&|| {
        let near = tempfile::tempdir().unwrap();
        let far = tempfile::tempdir().unwrap();
        let store = Store::open_tiered(&[s(near.path()), s(far.path())]).unwrap();
        dirs.lock().unwrap().push((near, far));
        store
    });
}

/// The conformance check for stray objects, planted in the far tier: reported through the
/// tiered store and removed from the tier that holds it.
#[test]
fn stray_object_in_a_far_tier_is_a_damaged_item() {
    let near = tempfile::tempdir().unwrap();
    let far = tempfile::tempdir().unwrap();
    let store = Store::open_tiered(&[s(near.path()), s(far.path())]).unwrap();
    let far_root = far.path().to_path_buf();
    conformance::damage::stray_object_is_one_damaged_item(store, &|_| {
        std::fs::write(far_root.join("manifests/stray"), b"x").unwrap();
        format!("{}/manifests/stray", far_root.display())
    });
}

#[test]
fn remote_hit_fills_local_then_serves_without_remote() {
    let local = tempfile::tempdir().unwrap();
    let remote_parent = tempfile::tempdir().unwrap();
    let remote = remote_parent.path().join("team");
    let shared = Store::open(s(&remote)).unwrap();
    let data = big(1);
    shared
        .task("tier.fill")
        .get_or_compute_bytes(&1, |_| Ok::<_, String>(data.clone()))
        .unwrap();

    let tiered = Store::open_tiered(&[s(local.path()), s(&remote)]).unwrap();
    assert!(tiered.location().starts_with("tiered["));
    let got = tiered
        .task("tier.fill")
        .get_or_compute_bytes(&1, |_| must_not_run())
        .unwrap();
    assert_eq!(got, data);

    // The local tier now holds the entry whole: it hits on its own.
    let alone = Store::open(s(local.path())).unwrap();
    assert_eq!(
        alone
            .task("tier.fill")
            .get_or_compute_bytes(&1, |_| must_not_run())
            .unwrap(),
        data
    );
    drop(alone);

    // The remote becomes unreachable (here: its path is no longer a directory).
    fs::rename(&remote, remote_parent.path().join("gone")).unwrap();
    fs::write(&remote, b"not a store").unwrap();
    let offline = Store::open_tiered(&[s(local.path()), s(&remote)]).unwrap();
    assert_eq!(
        offline
            .task("tier.fill")
            .get_or_compute_bytes(&1, |_| must_not_run())
            .unwrap(),
        data,
        "a local hit is served while the remote is unreachable"
    );
    // A miss needs the shared truth (its lease): an error naming it, nothing computed.
    let err = offline
        .task("tier.fill")
        .get_or_compute_bytes(&2, |_| must_not_run())
        .unwrap_err();
    assert!(err.to_string().contains("unreachable"), "{err}");
}

#[test]
fn writes_reach_the_remote_and_the_local_tier() {
    let local = tempfile::tempdir().unwrap();
    let remote = tempfile::tempdir().unwrap();
    let tiered = Store::open_tiered(&[s(local.path()), s(remote.path())]).unwrap();
    let data = big(2);
    tiered
        .task("tier.write")
        .get_or_compute_bytes(&1, |_| Ok::<_, String>(data.clone()))
        .unwrap();
    for dir in [remote.path(), local.path()] {
        let alone = Store::open(s(dir)).unwrap();
        assert_eq!(
            alone
                .task("tier.write")
                .get_or_compute_bytes(&1, |_| must_not_run())
                .unwrap(),
            data,
            "{}",
            dir.display()
        );
    }
    // Leases were taken on the remote, never in the local tier.
    assert!(remote.path().join("leases").exists());
    assert!(!local.path().join("leases").exists());
}

#[test]
fn read_only_tier_is_never_written() {
    let local = tempfile::tempdir().unwrap();
    let team = tempfile::tempdir().unwrap();
    let data = big(3);
    {
        let t = Store::open(s(team.path())).unwrap();
        t.task("tier.ro")
            .get_or_compute_bytes(&1, |_| Ok::<_, String>(data.clone()))
            .unwrap();
    }
    let before = snapshot(team.path());
    let team_ro = format!("{}?readonly=true", s(team.path()));
    let tiered = Store::open_tiered(&[s(local.path()), &team_ro]).unwrap();
    assert!(tiered.location().contains("(read-only)"));
    let t = tiered.task("tier.ro");
    // A hit in the read-only tier (filled into the local one), a miss computed and stored
    // locally, a use stamp, a delete: none of it reaches the read-only tier.
    assert_eq!(
        t.get_or_compute_bytes(&1, |_| must_not_run()).unwrap(),
        data
    );
    t.get_or_compute_bytes(&2, |_| Ok::<_, String>(big(4)))
        .unwrap();
    tiered.backend().touch(&t.key(&1).unwrap(), 1).unwrap();
    tiered.delete(&t.key(&2).unwrap()).unwrap();
    assert_eq!(snapshot(team.path()), before, "the read-only tier changed");
    let alone = Store::open(s(local.path())).unwrap();
    assert_eq!(
        alone
            .task("tier.ro")
            .get_or_compute_bytes(&1, |_| must_not_run())
            .unwrap(),
        data
    );

    // A single read-only store refuses writes with a clear error, and still reads.
    let ro = Store::open(&team_ro).unwrap();
    assert_eq!(
        ro.task("tier.ro")
            .get_or_compute_bytes(&1, |_| must_not_run())
            .unwrap(),
        data
    );
    let err = ro
        .task("tier.ro")
        .get_or_compute_bytes(&9, |_| Ok::<_, String>(vec![1]))
        .unwrap_err();
    assert!(matches!(err, Error::ReadOnly { .. }), "{err}");
    assert_eq!(snapshot(team.path()), before, "the read-only store changed");
}

#[test]
fn records_live_on_the_tier_holding_the_leases() {
    let local = tempfile::tempdir().unwrap();
    let team = tempfile::tempdir().unwrap();
    let tiered = Store::open_tiered(&[s(local.path()), s(team.path())]).unwrap();
    let b = tiered.backend();
    b.put_record("sweep", "s1", b"one").unwrap();
    // Written to the shared (farthest writable) tier only, never copied into the local one.
    let team_alone = Store::open(s(team.path())).unwrap();
    let local_alone = Store::open(s(local.path())).unwrap();
    assert_eq!(
        team_alone.backend().get_record("sweep", "s1").unwrap(),
        Some(b"one".to_vec())
    );
    assert_eq!(
        local_alone.backend().get_record("sweep", "s1").unwrap(),
        None
    );
    // Reads go there too: a record another machine changed in the team store is seen, and a
    // stale copy in the local tier is never read.
    team_alone
        .backend()
        .put_record("sweep", "s1", b"two")
        .unwrap();
    local_alone
        .backend()
        .put_record("sweep", "s1", b"stale")
        .unwrap();
    local_alone
        .backend()
        .put_record("sweep", "local-only", b"x")
        .unwrap();
    assert_eq!(b.get_record("sweep", "s1").unwrap(), Some(b"two".to_vec()));
    assert_eq!(b.list_records("sweep").unwrap(), ["s1"]);
    assert!(b.delete_record("sweep", "s1").unwrap());
    assert_eq!(
        team_alone.backend().get_record("sweep", "s1").unwrap(),
        None
    );
    assert_eq!(
        local_alone.backend().get_record("sweep", "s1").unwrap(),
        Some(b"stale".to_vec())
    );

    // With a read-only team tier the local tier is the shared one and holds the records.
    team_alone
        .backend()
        .put_record("sweep", "t", b"team")
        .unwrap();
    let team_ro = format!("{}?readonly=true", s(team.path()));
    let ro_team = Store::open_tiered(&[s(local.path()), &team_ro]).unwrap();
    assert_eq!(ro_team.backend().get_record("sweep", "t").unwrap(), None);
    assert_eq!(
        ro_team.backend().list_records("sweep").unwrap(),
        ["local-only", "s1"]
    );
    ro_team.backend().put_record("sweep", "n", b"new").unwrap();
    assert_eq!(
        local_alone.backend().get_record("sweep", "n").unwrap(),
        Some(b"new".to_vec())
    );
    assert_eq!(team_alone.backend().get_record("sweep", "n").unwrap(), None);

    // Every tier read-only: records are read from the farthest tier, writes are refused.
    let local_ro = format!("{}?readonly=true", s(local.path()));
    let all_ro = Store::open_tiered(&[&local_ro, &team_ro]).unwrap();
    assert_eq!(
        all_ro.backend().get_record("sweep", "t").unwrap(),
        Some(b"team".to_vec())
    );
    let err = all_ro.backend().put_record("sweep", "t", b"x").unwrap_err();
    assert!(matches!(err, Error::ReadOnly { .. }), "{err}");
    let err = all_ro.backend().delete_record("sweep", "t").unwrap_err();
    assert!(matches!(err, Error::ReadOnly { .. }), "{err}");
}

#[test]
fn a_farther_completed_entry_beats_a_nearer_failed_one() {
    let local = tempfile::tempdir().unwrap();
    let remote = tempfile::tempdir().unwrap();
    Store::open(s(local.path()))
        .unwrap()
        .task("tier.retry")
        .get_or_compute(&1, || Err::<u32, _>("flaky"))
        .unwrap_err();
    Store::open(s(remote.path()))
        .unwrap()
        .task("tier.retry")
        .get_or_compute(&1, || Ok::<_, String>(7u32))
        .unwrap();
    let tiered = Store::open_tiered(&[s(local.path()), s(remote.path())]).unwrap();
    assert_eq!(
        tiered
            .task("tier.retry")
            .get_or_compute(&1, must_not_run::<u32>)
            .unwrap(),
        7
    );
}

#[test]
fn a_batch_call_finds_far_entries_and_fills_the_near_tier() {
    let local = tempfile::tempdir().unwrap();
    let remote = tempfile::tempdir().unwrap();
    let shared = Store::open(s(remote.path())).unwrap().task("tier.batch");
    shared
        .get_or_compute_batch(&[1u32, 2], 8, |b: &[&u32]| {
            Ok::<_, String>(b.iter().map(|&&i| i * 10).collect::<Vec<u32>>())
        })
        .unwrap();
    // A failed entry of item 3 in the near tier, a completed one in the far tier.
    Store::open(s(local.path()))
        .unwrap()
        .task("tier.batch")
        .get_or_compute(&3u32, || Err::<u32, _>("flaky"))
        .unwrap_err();
    shared
        .get_or_compute(&3u32, || Ok::<_, String>(30u32))
        .unwrap();

    let tiered = Store::open_tiered(&[s(local.path()), s(remote.path())]).unwrap();
    let mut computed = Vec::new();
    let got = tiered
        .task("tier.batch")
        .get_or_compute_batch(&[1u32, 2, 3, 4], 8, |b: &[&u32]| {
            computed.extend(b.iter().map(|i| **i));
            Ok::<_, String>(b.iter().map(|&&i| i * 10).collect::<Vec<u32>>())
        })
        .unwrap();
    assert_eq!(got, [10, 20, 30, 40]);
    assert_eq!(
        computed,
        [4],
        "far entries are hits, the far completed 3 beats the near failure"
    );
    let near = Store::open(s(local.path())).unwrap().task("tier.batch");
    for i in [1u32, 2, 3, 4] {
        assert_eq!(
            near.entry(&i).unwrap().load::<u32>().unwrap(),
            i * 10,
            "near tier filled"
        );
    }
}

/// The child side of `processes_with_separate_local_tiers_compute_once`.
#[test]
fn child() {
    let Ok(local) = std::env::var("RC_TIER_CHILD") else {
        return;
    };
    let remote = std::env::var("RC_REMOTE").unwrap();
    let dir = PathBuf::from(std::env::var("RC_DIR").unwrap());
    let store = Store::open_tiered(&[&local, &remote]).unwrap();
    while !dir.join("go").exists() {
        std::thread::sleep(Duration::from_micros(200));
    }
    let v = store
        .task("tier.race")
        .get_or_compute_bytes(&1, |_| {
            let mut log = fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(dir.join("computed"))
                .unwrap();
            std::io::Write::write_all(&mut log, b"x\n").unwrap();
            std::thread::sleep(Duration::from_millis(300));
            Ok::<_, String>(big(5))
        })
        .unwrap();
    assert_eq!(v, big(5));
    println!("DONE");
}

#[test]
fn processes_with_separate_local_tiers_compute_once() {
    let dir = tempfile::tempdir().unwrap();
    let remote = dir.path().join("remote");
    let children: Vec<_> = (0..3)
        .map(|i| {
            Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "child", "--nocapture", "--test-threads=1"])
                .env("RC_TIER_CHILD", dir.path().join(format!("local-{i}")))
                .env("RC_REMOTE", &remote)
                .env("RC_DIR", dir.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    fs::write(dir.path().join("go"), b"").unwrap();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("DONE"));
    }
    let computed = fs::read_to_string(dir.path().join("computed")).unwrap();
    assert_eq!(
        computed.lines().count(),
        1,
        "computed once across processes"
    );
    for i in 0..3 {
        let alone = Store::open(s(&dir.path().join(format!("local-{i}")))).unwrap();
        assert_eq!(
            alone
                .task("tier.race")
                .get_or_compute_bytes(&1, |_| must_not_run())
                .unwrap(),
            big(5),
            "local tier {i} was filled"
        );
    }
}

// --- Against the real S3 service -------------------------------------------------------------

#[cfg(feature = "s3")]
mod s3 {
    use super::*;

    fn service() -> Option<String> {
        conformance::test_service("RUNCACHE_TEST_S3", "s3", "tiered S3")
    }

    fn fresh(base: &str, name: &str) -> String {
        let (target, query) = base.split_once('?').unwrap_or((base, ""));
        let unique = format!(
            "{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        format!("{}/{unique}?{query}", target.trim_end_matches('/'))
    }

    fn objects(store: &Store) -> (Vec<runcache::Key>, Vec<runcache::Digest>) {
        let mut m = store.backend().list_manifests().unwrap();
        m.sort();
        let mut b: Vec<_> = store
            .backend()
            .list_blobs()
            .unwrap()
            .into_iter()
            .map(|b| b.digest)
            .collect();
        b.sort_by_key(|d| d.to_hex());
        (m, b)
    }

    #[test]
    fn local_over_s3() {
        let Some(base) = service() else { return };
        let remote = fresh(&base, "tiered");
        let data = big(6);

        // Writes go through to S3.
        let a = tempfile::tempdir().unwrap();
        let tiered = Store::open_tiered(&[s(a.path()), &remote]).unwrap();
        tiered
            .task("tier.s3")
            .get_or_compute_bytes(&1, |_| Ok::<_, String>(data.clone()))
            .unwrap();
        let plain = Store::open(&remote).unwrap();
        assert_eq!(
            plain
                .task("tier.s3")
                .get_or_compute_bytes(&1, |_| must_not_run())
                .unwrap(),
            data
        );

        // Another machine's empty local tier is filled from S3.
        let b = tempfile::tempdir().unwrap();
        let other = Store::open_tiered(&[s(b.path()), &remote]).unwrap();
        assert_eq!(
            other
                .task("tier.s3")
                .get_or_compute_bytes(&1, |_| must_not_run())
                .unwrap(),
            data
        );
        let alone = Store::open(s(b.path())).unwrap();
        assert_eq!(
            alone
                .task("tier.s3")
                .get_or_compute_bytes(&1, |_| must_not_run())
                .unwrap(),
            data
        );

        // S3 as a read-only team tier: a newcomer reads it and never writes it.
        let before = objects(&plain);
        let c = tempfile::tempdir().unwrap();
        let remote_ro = format!("{remote}&readonly=true");
        let newcomer = Store::open_tiered(&[s(c.path()), &remote_ro]).unwrap();
        let t = newcomer.task("tier.s3");
        assert_eq!(
            t.get_or_compute_bytes(&1, |_| must_not_run()).unwrap(),
            data
        );
        t.get_or_compute_bytes(&2, |_| Ok::<_, String>(big(7)))
            .unwrap();
        assert_eq!(objects(&plain), before, "the read-only S3 tier changed");
        assert!(plain.backend().last_used(&t.key(&1).unwrap()).unwrap() != Some(1));
    }

    #[test]
    fn unreachable_s3_still_serves_local_hits() {
        if service().is_none() {
            return;
        }
        let local = tempfile::tempdir().unwrap();
        Store::open(s(local.path()))
            .unwrap()
            .task("tier.down")
            .get_or_compute_bytes(&1, |_| Ok::<_, String>(big(8)))
            .unwrap();
        // A closed port: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let down =
            format!("s3://runcache-test/down?endpoint=http://127.0.0.1:{port}&allow_http=true");
        let started = std::time::Instant::now();
        let tiered = Store::open_tiered(&[s(local.path()), &down]).unwrap();
        assert_eq!(
            tiered
                .task("tier.down")
                .get_or_compute_bytes(&1, |_| must_not_run())
                .unwrap(),
            big(8)
        );
        assert!(started.elapsed() < Duration::from_secs(30));
        let err = tiered
            .task("tier.down")
            .get_or_compute_bytes(&2, |_| must_not_run())
            .unwrap_err();
        assert!(err.to_string().contains("unreachable"), "{err}");
    }
}
