//! `runcache init --shared GROUP PATH`: the existing tree and everything the engine creates
//! afterwards (blobs, manifests, used stamps, lease files and their directories) belong to the
//! group with group read/write (directories also x and setgid), whatever the umask.
//!
//! Needs root (to create a test group and give files to it). Skipped with a message otherwise,
//! except under CI=true where it must run. Its own test binary, since it sets the process umask.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use runcache::lease::{Acquire, LeaseOptions};
use runcache::{Store, StoreOptions};

const GROUP: &str = "runcache-test-shared";

fn runcache(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_runcache"))
        .args(args)
        .env_remove("RUNCACHE_STORE")
        .output()
        .unwrap()
}

/// The test group's gid, creating the group; None (after saying why) if that is impossible.
fn test_group() -> Option<u32> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(!ci, "CI must run the group-sharing test as root");
        eprintln!("SKIPPED: init --shared test needs root (to create a group and chgrp to it)");
        return None;
    }
    match Command::new("groupadd").args(["-f", GROUP]).status() {
        Ok(s) if s.success() => {}
        other => {
            assert!(!ci, "groupadd failed: {other:?}");
            eprintln!("SKIPPED: cannot create group {GROUP} with groupadd: {other:?}");
            return None;
        }
    }
    Some(runcache::store::sharing::resolve_group(GROUP).unwrap())
}

/// Every path under `root/sub` (and `root/sub` itself) has `gid` and the shared modes.
fn assert_shared(root: &Path, sub: &str, gid: u32) -> usize {
    let mut n = 0;
    let mut stack = vec![root.join(sub)];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        assert_eq!(m.gid(), gid, "group of {}", p.display());
        if m.is_dir() {
            assert_eq!(m.mode() & 0o7777, 0o2770, "mode of {}", p.display());
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else {
            // Blobs are immutable: group-read only.
            let want = if p.starts_with(root.join("blobs")) {
                0o440
            } else {
                0o660
            };
            assert_eq!(m.mode() & 0o7777, want, "mode of {}", p.display());
        }
        n += 1;
    }
    n
}

#[test]
fn init_shared_gives_the_group_to_existing_and_later_files() {
    let Some(gid) = test_group() else { return };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let loc = root.to_str().unwrap();

    // An existing, unshared store with one entry, made under a restrictive umask.
    // SAFETY: umask has no preconditions. The other test here does not depend on it.
    unsafe { libc::umask(0o077) };
    let before = Store::open(loc).unwrap();
    before
        .task("shared.old")
        .get_or_compute_bytes(&1u32, |_| Ok::<_, String>(vec![1u8; 20_000]))
        .unwrap();
    drop(before);

    let out = runcache(&["init", "--shared", GROUP, loc]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("shared with group {GROUP}")),
        "{text}"
    );
    let marker: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("RUNCACHE-STORE.json")).unwrap()).unwrap();
    assert_eq!(marker["shared_group"], GROUP);
    assert_eq!(marker["shared_gid"], gid);
    assert_eq!(marker["file_mode"], "0660");
    assert_eq!(marker["format"], 1);
    assert_shared(&root, "", gid);

    // Everything created from now on, by a new handle, under umask 077.
    let store = Store::open_with(
        loc,
        StoreOptions {
            usage_granularity: Duration::ZERO,
            lease: LeaseOptions::with_ttl(Duration::from_millis(200)),
            ..Default::default()
        },
    )
    .unwrap();
    let task = store.task("shared.new");
    for seed in 0..3u32 {
        task.get_or_compute_bytes(&seed, |ctx| {
            // An artifact written by user code: moved into the store as a blob.
            std::fs::write(ctx.artifact_path("log.txt").unwrap(), [seed as u8; 100]).unwrap();
            Ok::<_, String>(vec![seed as u8; 20_000])
        })
        .unwrap();
        // A hit writes the used stamp.
        task.get_or_compute_bytes(&seed, |_| Ok::<_, String>(vec![]))
            .unwrap();
    }
    let key = store.task("shared.lease").key(&1u32).unwrap();
    let Acquire::Won(guard) = store.leases().try_acquire(&key, "shared.lease").unwrap() else {
        panic!("free lease")
    };
    std::thread::sleep(Duration::from_millis(300)); // a few heartbeats (h.1)
    guard.release().unwrap(); // r.1
    let _ = store.backend().scratch_dir();

    let blobs = assert_shared(&root, "blobs", gid);
    let manifests = assert_shared(&root, "manifests", gid);
    let used = assert_shared(&root, "used", gid);
    let leases = assert_shared(&root, "leases", gid);
    assert_shared(&root, "tmp", gid);
    // Each subtree: its directory, shard directories and files.
    assert!(
        blobs >= 3 && manifests >= 3 && used >= 3,
        "{blobs} {manifests} {used}"
    );
    assert!(leases >= 6, "leases: {leases}");
    let lease_dir = root
        .join("leases")
        .join(&key.to_hex()[..2])
        .join(key.to_hex());
    let names: Vec<String> = std::fs::read_dir(&lease_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for f in ["g.1", "h.1", "r.1"] {
        assert!(names.iter().any(|n| n == f), "{f} in {names:?}");
    }
    assert_shared(&root, "RUNCACHE-STORE.json", gid);

    // Upgrading again is idempotent; a store that is not local is refused.
    assert!(runcache(&["init", "--shared", GROUP, loc]).status.success());
    let out = runcache(&["--store", "memory://x", "init"]);
    assert_eq!(out.status.code(), Some(1));
    let out = runcache(&["init", "--shared", "no-such-group-runcache", loc]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no group named"));
}

#[test]
fn init_creates_a_plain_store() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("plain");
    let out = runcache(&["init", root.to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["created"], true);
    assert_eq!(v["shared_group"], serde_json::Value::Null);
    let marker = std::fs::read_to_string(root.join("RUNCACHE-STORE.json")).unwrap();
    assert!(!marker.contains("shared"), "{marker}");
    let out = runcache(&["init", "--file-mode", "664", root.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "--file-mode needs --shared");
}
