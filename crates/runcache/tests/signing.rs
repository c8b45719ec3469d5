//! Signed entries: with a signing key, every entry written is signed and every entry read must
//! carry a valid signature; anything else is a hard `Error::Signature`, never a miss.
//!
//! `RUNCACHE_SIGNING_KEY` is only set in child processes (this binary re-executes itself:
//! `child` does nothing unless `RC_SIGN_CHILD` is set), so tests in this process never see it.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use runcache::{Error, Key, Mode, SigningKey, Store, StoreOptions};

const TEAM_KEY: &str = "team-secret-0123456789abcdef";

fn keyed(material: &str) -> StoreOptions {
    StoreOptions {
        signing_key: Some(SigningKey::new(material).unwrap()),
        ..Default::default()
    }
}

fn open(path: &Path, key: Option<&str>) -> Store {
    let options = key.map(keyed).unwrap_or_default();
    Store::open_with(path.to_str().unwrap(), options).unwrap()
}

fn must_not_run<T>() -> Result<T, String> {
    panic!("a refused entry must not be recomputed")
}

fn raw_manifest(store: &Store, key: &Key) -> Vec<u8> {
    store.backend().get_manifest(key).unwrap().unwrap()
}

fn assert_signature_error(err: Error, key: &Key) {
    let msg = err.to_string();
    assert!(matches!(err, Error::Signature { .. }), "{msg}");
    assert!(msg.contains("signature"), "{msg}");
    assert!(msg.contains(&key.to_hex()), "names the entry: {msg}");
    assert!(msg.contains("runcache rm"), "says how to fix it: {msg}");
}

#[test]
fn signed_entries_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), Some(TEAM_KEY));
    let t = store.task("sig.ok");
    assert_eq!(t.get_or_compute(&1, || Ok::<_, String>(41u32)).unwrap(), 41);
    let key = t.key(&1).unwrap();
    let m: serde_json::Value = serde_json::from_slice(&raw_manifest(&store, &key)).unwrap();
    assert!(m["signature"].as_str().unwrap().starts_with("v1."), "{m}");

    // Another process-like handle with the same key hits.
    let again = open(dir.path(), Some(TEAM_KEY));
    let t = again.task("sig.ok");
    assert_eq!(t.get_or_compute(&1, must_not_run::<u32>).unwrap(), 41);
    assert_eq!(t.entry(&1).unwrap().load::<u32>().unwrap(), 41);
    assert!(again.entries().unwrap()[0].damage.is_none());
}

#[test]
fn unsigned_entry_is_refused_never_recomputed_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let plain = open(dir.path(), None);
    plain
        .task("sig.unsigned")
        .get_or_compute_bytes(&1, |_| Ok::<_, String>(vec![7u8; 100_000]))
        .unwrap();
    let key = plain.task("sig.unsigned").key(&1).unwrap();
    let before = raw_manifest(&plain, &key);

    let signed = open(dir.path(), Some(TEAM_KEY));
    let t = signed.task("sig.unsigned");
    for mode in [Mode::Cached, Mode::Retry, Mode::ReadOnly, Mode::Force] {
        let err = t
            .clone()
            .mode(mode)
            .get_or_compute_bytes(&1, |_| must_not_run())
            .unwrap_err();
        assert_signature_error(err, &key);
    }
    let err = t.entry(&1).unwrap().load_bytes().unwrap_err();
    assert_signature_error(err, &key);
    assert!(err_contains(t.entry(&1).unwrap().info(), "not signed"));
    assert_eq!(raw_manifest(&signed, &key), before, "never overwritten");

    // Listed as damage, so `runcache ls` / `verify` show it.
    let entries = signed.entries().unwrap();
    assert!(entries[0].damage.as_deref().unwrap().contains("signature"));
    // `runcache rm` (delete) is the way out; then it is recomputed and signed.
    assert!(signed.delete(&key).unwrap());
    let v = t
        .get_or_compute_bytes(&1, |_| Ok::<_, String>(vec![8u8; 10]))
        .unwrap();
    assert_eq!(v, vec![8u8; 10]);
}

fn err_contains<T: std::fmt::Debug>(r: runcache::Result<T>, needle: &str) -> bool {
    r.unwrap_err().to_string().contains(needle)
}

#[test]
fn tampered_manifest_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), Some(TEAM_KEY));
    let t = store.task("sig.tamper");
    t.get_or_compute_with(&1, |ctx| {
        ctx.set_metadata("approved_by", "alice").unwrap();
        Ok::<_, String>(5u32)
    })
    .unwrap();
    let key = t.key(&1).unwrap();
    let text = String::from_utf8(raw_manifest(&store, &key)).unwrap();
    assert!(text.contains("\"alice\""));
    let tampered = text.replace("\"alice\"", "\"mallory\"");
    store
        .backend()
        .put_manifest(&key, tampered.as_bytes(), true)
        .unwrap();
    let err = t.get_or_compute(&1, must_not_run::<u32>).unwrap_err();
    assert!(err.to_string().contains("modified"), "{err}");
    assert_signature_error(err, &key);
}

#[test]
fn swapped_blobs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), Some(TEAM_KEY));
    let t = store.task("sig.swap");
    let good = vec![1u8; 200_000];
    let evil = vec![2u8; 200_000];
    t.get_or_compute_bytes(&1, |_| Ok::<_, String>(good.clone()))
        .unwrap();
    t.get_or_compute_bytes(&2, |_| Ok::<_, String>(evil.clone()))
        .unwrap();
    let key1 = t.key(&1).unwrap();
    let m1 = t.entry(&1).unwrap().info().unwrap().unwrap();
    let m2 = t.entry(&2).unwrap().info().unwrap().unwrap();
    let (d1, d2) = (
        m1.blob("value").unwrap().digest,
        m2.blob("value").unwrap().digest,
    );

    // 1. Other bytes under the blob's name: caught by the digest check (Corrupt, naming the
    //    entry); the swapped bytes are never returned.
    store.backend().delete_blob(&d1).unwrap();
    store.backend().put_blob(&d1, &evil).unwrap();
    let err = t.entry(&1).unwrap().load_bytes().unwrap_err();
    assert!(
        matches!(&err, Error::Corrupt { key, .. } if *key == key1.to_hex()),
        "{err}"
    );

    // 2. The manifest pointed at another blob: the manifest changed, so its signature fails.
    let text = String::from_utf8(raw_manifest(&store, &key1)).unwrap();
    let swapped = text.replace(&d1.to_hex(), &d2.to_hex());
    assert_ne!(swapped, text);
    store
        .backend()
        .put_manifest(&key1, swapped.as_bytes(), true)
        .unwrap();
    let err = t.get_or_compute_bytes(&1, |_| must_not_run()).unwrap_err();
    assert_signature_error(err, &key1);
}

#[test]
fn wrong_key_is_refused_and_no_key_still_reads() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), Some(TEAM_KEY));
    let t = store.task("sig.wrong");
    t.get_or_compute(&1, || Ok::<_, String>(3u8)).unwrap();
    let key = t.key(&1).unwrap();

    let other = open(dir.path(), Some("some-other-team-key-0123456"));
    let err = other
        .task("sig.wrong")
        .get_or_compute(&1, must_not_run::<u8>)
        .unwrap_err();
    assert!(err.to_string().contains("another key"), "{err}");
    assert_signature_error(err, &key);

    // Without a key nothing is checked: signed entries read like any other.
    let plain = open(dir.path(), None);
    assert_eq!(
        plain
            .task("sig.wrong")
            .get_or_compute(&1, must_not_run::<u8>)
            .unwrap(),
        3
    );
}

#[test]
fn failed_entries_are_signed_too() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), Some(TEAM_KEY));
    let t = store.task("sig.failed");
    let calls = AtomicUsize::new(0);
    let fail = || {
        calls.fetch_add(1, Ordering::SeqCst);
        Err::<u8, _>("boom")
    };
    assert!(matches!(
        t.get_or_compute(&1, fail),
        Err(Error::ComputeFailed { .. })
    ));
    assert!(matches!(
        t.get_or_compute(&1, fail),
        Err(Error::RecordedFailure { .. })
    ));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// The child side: opens the store with `RUNCACHE_SIGNING_KEY` from its environment.
#[test]
fn child() {
    let Ok(store) = std::env::var("RC_SIGN_CHILD") else {
        return;
    };
    match Store::open(&store) {
        Err(e) => println!("OPEN-ERROR {e}"),
        Ok(s) => match s
            .task("sig.env")
            .get_or_compute(&1, || Ok::<_, String>(2u8))
        {
            Ok(v) => println!("VALUE {v}"),
            Err(e) => println!("ERROR {e}"),
        },
    }
}

fn run_child(store: &Path, key: Option<&str>) -> String {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env("RC_SIGN_CHILD", store)
        .env_remove("RUNCACHE_SIGNING_KEY");
    if let Some(k) = key {
        cmd.env("RUNCACHE_SIGNING_KEY", k);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn key_from_environment() {
    let dir = tempfile::tempdir().unwrap();
    let plain = open(dir.path(), None);
    plain
        .task("sig.env")
        .get_or_compute(&1, || Ok::<_, String>(1u8))
        .unwrap();
    // The environment's key applies: the unsigned entry is refused.
    let out = run_child(dir.path(), Some(TEAM_KEY));
    assert!(
        out.contains("ERROR signature check failed"),
        "child output: {out}"
    );
    // An entry the environment's key signed reads with the same key given in the API.
    let fresh = tempfile::tempdir().unwrap();
    let out = run_child(fresh.path(), Some(TEAM_KEY));
    assert!(out.contains("VALUE 2"), "child output: {out}");
    let keyed_store = open(fresh.path(), Some(TEAM_KEY));
    assert_eq!(
        keyed_store
            .task("sig.env")
            .get_or_compute(&1, must_not_run::<u8>)
            .unwrap(),
        2
    );
    // Set but empty is a configuration mistake, not "no key".
    let out = run_child(fresh.path(), Some(""));
    assert!(
        out.contains("OPEN-ERROR") && out.contains("empty"),
        "child output: {out}"
    );
}
