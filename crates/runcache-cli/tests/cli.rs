//! The `runcache` command against real stores: output, JSON, exit codes.

use std::path::Path;
use std::process::Output;

use runcache::lease::Acquire;
use runcache::Store;

mod common;
use common::runcache;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// A store with 3 completed entries of `cli.fit` (one with an artifact), 1 failed entry of
/// `cli.flaky` and 20 KB results so blobs live outside the manifests.
fn populated() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("s").to_str().unwrap()).unwrap();
    let fit = store.task("cli.fit").version("2");
    for seed in 0..3u32 {
        fit.get_or_compute_bytes(&seed, |ctx| {
            if seed == 0 {
                std::fs::write(ctx.artifact_path("log.txt").unwrap(), b"fit log").unwrap();
            }
            Ok::<_, String>(vec![seed as u8; 20_000])
        })
        .unwrap();
    }
    let _ = store
        .task("cli.flaky")
        .get_or_compute(&1, || Err::<u8, _>("diverged at step 3"));
    (dir, store)
}

#[test]
fn ls_lists_entries_and_namespaces() {
    let (_dir, store) = populated();
    let path = Path::new(&store.location()).to_path_buf();
    let entries = json(&runcache(&path, &["ls", "--json"]));
    assert_eq!(entries.as_array().unwrap().len(), 4);
    let failed = json(&runcache(&path, &["ls", "--failed", "--json"]));
    assert_eq!(failed.as_array().unwrap().len(), 1);
    assert_eq!(failed[0]["namespace"], "cli.flaky");
    assert_eq!(failed[0]["status"], "failed");
    let ns = json(&runcache(&path, &["ls", "--namespaces", "--json"]));
    assert_eq!(ns[0]["namespace"], "cli.fit");
    assert_eq!(ns[0]["entries"], 3);
    let human = stdout(&runcache(&path, &["ls", "cli.fit"]));
    assert!(human.starts_with("KEY"), "{human}");
    assert_eq!(human.lines().count(), 4, "{human}");
}

#[test]
fn show_resolves_prefixes() {
    let (_dir, store) = populated();
    let path = Path::new(&store.location()).to_path_buf();
    let key = store
        .task("cli.fit")
        .version("2")
        .key(&0u32)
        .unwrap()
        .to_hex();
    let out = runcache(&path, &["show", &key[..8]]);
    let text = stdout(&out);
    assert!(out.status.success());
    assert!(
        text.contains(&key) && text.contains("cli.fit") && text.contains("log.txt"),
        "{text}"
    );
    let m = json(&runcache(&path, &["show", &key[..10], "--json"]));
    assert_eq!(m["key"], key);
    assert_eq!(m["status"], "completed");
    // Too short and unknown prefixes are clear errors (exit 1).
    let bad = runcache(&path, &["show", "ab"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("at least 4"));
    let none = runcache(&path, &["show", "ffffffffff"]);
    assert_eq!(none.status.code(), Some(1));
}

#[test]
fn verify_reports_damage_with_exit_3_and_repairs() {
    let (_dir, store) = populated();
    let path = Path::new(&store.location()).to_path_buf();
    assert_eq!(runcache(&path, &["verify"]).status.code(), Some(0));
    let m = store
        .task("cli.fit")
        .version("2")
        .entry(&1u32)
        .unwrap()
        .info()
        .unwrap()
        .unwrap();
    let d = m.blobs[0].digest;
    store.backend().delete_blob(&d).unwrap();
    store.backend().put_blob(&d, &[9u8; 20_000]).unwrap();
    let out = runcache(&path, &["verify"]);
    assert_eq!(out.status.code(), Some(3), "{}", stdout(&out));
    assert!(stdout(&out).contains("DAMAGED"));
    let out = runcache(&path, &["verify", "--repair"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        json(&runcache(&path, &["verify", "--json"]))["problems"],
        serde_json::json!([])
    );
    assert!(!store
        .task("cli.fit")
        .version("2")
        .entry(&1u32)
        .unwrap()
        .exists()
        .unwrap());
}

#[test]
fn rm_by_key_namespace_and_failed() {
    let (_dir, store) = populated();
    let path = Path::new(&store.location()).to_path_buf();
    let out = json(&runcache(&path, &["rm", "--failed", "--json"]));
    assert_eq!(out["removed"].as_array().unwrap().len(), 1);
    let dry = json(&runcache(
        &path,
        &["rm", "--namespace", "cli.fit", "--dry-run", "--json"],
    ));
    assert_eq!(dry["removed"].as_array().unwrap().len(), 3);
    assert_eq!(store.entries().unwrap().len(), 3, "dry run removed nothing");
    let key = store
        .task("cli.fit")
        .version("2")
        .key(&2u32)
        .unwrap()
        .to_hex();
    assert!(runcache(&path, &["rm", &key[..12]]).status.success());
    assert_eq!(store.entries().unwrap().len(), 2);
    let usage = runcache(&path, &["rm"]);
    assert_eq!(usage.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&usage.stderr).contains("--failed"));
}

#[test]
fn gc_du_and_leases() {
    let (_dir, store) = populated();
    let path = Path::new(&store.location()).to_path_buf();
    let du = json(&runcache(&path, &["du", "--json"]));
    assert_eq!(du["entries"], 4);
    assert_eq!(du["namespaces"]["cli.fit"]["entries"], 3);
    // Everything was used just now: min-idle protects it.
    let gc = json(&runcache(&path, &["gc", "--max-size", "0", "--json"]));
    assert_eq!(gc["removed"], serde_json::json!([]));
    assert!(gc["protected"].as_u64().unwrap() > 0);
    let gc = json(&runcache(
        &path,
        &[
            "gc",
            "--max-size",
            "0",
            "--min-idle",
            "0s",
            "--dry-run",
            "--json",
        ],
    ));
    assert_eq!(gc["removed"].as_array().unwrap().len(), 4);
    assert_eq!(store.entries().unwrap().len(), 4);
    let gc = json(&runcache(
        &path,
        &["gc", "--max-size", "0", "--min-idle", "0s", "--json"],
    ));
    assert_eq!(gc["removed"].as_array().unwrap().len(), 4);
    assert_eq!(store.entries().unwrap().len(), 0);
    assert_eq!(
        runcache(&path, &["gc"]).status.code(),
        Some(1),
        "gc needs a limit"
    );

    let key = store.task("cli.lease").key(&1).unwrap();
    let Acquire::Won(guard) = store.leases().try_acquire(&key, "cli.lease").unwrap() else {
        panic!("free lease")
    };
    let leases = json(&runcache(&path, &["leases", "--json"]));
    assert_eq!(leases[0]["key"], key.to_hex());
    assert_eq!(leases[0]["namespace"], "cli.lease");
    assert_eq!(leases[0]["pid"], std::process::id());
    guard.release().unwrap();
}

#[test]
fn missing_store_and_bad_usage_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let out = runcache(&dir.path().join("nope"), &["ls"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains("no store at"), "{err}");
    // ... and says how to make one.
    assert!(
        err.contains("runcache init") && err.contains("first cached call"),
        "{err}"
    );
    assert!(
        !dir.path().join("nope").exists(),
        "reading must not create a store"
    );
    let out = runcache(dir.path(), &["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    let out = runcache(dir.path(), &["gc", "--max-size", "lots"]);
    assert_eq!(out.status.code(), Some(2));
}

/// A damaged entry's size and ages are `?` (not "20789d ago", the Unix epoch), and a size no
/// store can hold (a damaged manifest's claim) is `?`, not "16777216.0 TiB".
#[test]
fn damaged_entries_show_question_marks_not_epoch_ages_or_impossible_sizes() {
    let (_dir, store) = populated();
    let path = Path::new(&store.location()).to_path_buf();
    let garbled = runcache::Key(runcache::Digest::of(b"garbled"));
    store
        .backend()
        .put_manifest(&garbled, b"{\"format\": 1, \"ke", false)
        .unwrap();
    let out = runcache(&path, &["ls"]);
    assert!(out.status.success());
    let human = stdout(&out);
    let row = human
        .lines()
        .find(|l| l.starts_with(&garbled.to_hex()[..12]))
        .unwrap_or_else(|| panic!("{human}"));
    assert!(row.contains("damaged"), "{row}");
    assert!(
        !row.contains("d ago") && row.matches('?').count() == 3,
        "{row}"
    );

    let key = store.task("cli.fit").version("2").key(&1u32).unwrap();
    let mut liar = store.manifest(&key).unwrap().unwrap();
    liar.key = runcache::Key(runcache::Digest::of(b"liar"));
    liar.blobs[0].size = u64::MAX - 7;
    store
        .backend()
        .put_manifest(&liar.key, &liar.to_bytes(), false)
        .unwrap();
    let out = runcache(
        &path,
        &["gc", "--max-size", "1", "--min-idle", "0s", "--dry-run"],
    );
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    let row = text
        .lines()
        .find(|l| l.contains(&liar.key.to_hex()))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(row.ends_with(" ?"), "{row}");
    assert!(!text.contains("16777216"), "{text}");
}

/// A damaged store marker says how to fix it (`runcache init`, which rewrites it and keeps the
/// entries), not `verify --repair` (which cannot open the store either).
#[test]
fn a_damaged_marker_names_runcache_init_which_repairs_it() {
    let (_dir, store) = populated();
    let path = Path::new(&store.location()).to_path_buf();
    drop(store);
    std::fs::write(path.join("RUNCACHE-STORE.json"), b"{\"format\": ").unwrap();
    let out = runcache(&path, &["ls"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("RUNCACHE-STORE.json") && err.contains("runcache init"),
        "{err}"
    );
    assert!(!err.contains("verify --repair"), "{err}");
    let init = runcache(&path, &["init", path.to_str().unwrap()]);
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let entries = json(&runcache(&path, &["ls", "--json"]));
    assert_eq!(entries.as_array().unwrap().len(), 4);
}
