//! The store conformance suite: every backend must pass every check here. A backend's test file
//! calls [`run_all`] with a factory that opens a fresh, empty store.
//!
//! Corruption is injected through the backend's own `put_blob` (backends never verify what they
//! store), so the same checks run against any backend.

#![allow(dead_code)]

pub mod batch;
pub mod damage;
pub mod pages;
pub mod processes;
pub mod run;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use runcache::lease::Acquire;
use std::borrow::Cow;

use runcache::manifest::Manifest;
use runcache::{
    Claim, Error, Failure, GcOptions, ItemState, Mode, Status, Store, SweepRecord, SweepRef,
    ValueCodec, LOG_ARTIFACT, SWEEP_FORMAT,
};

/// Opens a fresh, empty store.
pub type Factory<'a> = &'a dyn Fn() -> Store;

/// Runs every check against stores from `open`.
pub fn run_all(open: Factory<'_>) {
    hit_after_miss_typed_and_bytes(open());
    keys_distinguish_args_versions_and_namespaces(open());
    blobs_are_deduplicated(open());
    failures_are_recorded_and_retried(open());
    modes_behave(open());
    try_hit_settles_only_what_a_call_would_load(open());
    truncated_blob_is_a_miss(open());
    bit_flipped_blob_is_a_miss(open());
    missing_blob_is_a_miss(open());
    malformed_manifest_is_a_miss(open());
    artifacts_round_trip(open());
    dependencies_are_recorded(open());
    gc_evicts_lru_by_size_and_age(open());
    gc_spares_entries_under_lease(open());
    verify_reports_and_repairs(open());
    damage::verify_judges_each_entry_by_its_own_manifest(open());
    damage::unreadable_manifest_is_one_damaged_item(open());
    threads_compute_once(open());
    leases_are_exclusive(open());
    waiting_times_out_with_a_clear_error(open());
    waiter_loads_what_the_holder_commits(open());
    records_are_created_replaced_listed_and_deleted(open());
    records_of_different_kinds_never_mix(open());
    bad_record_names_are_refused(open());
    large_record_round_trips(open());
    sweep_items_are_claimed_and_reported(open());
    sweep_tells_its_own_work_by_id_not_by_clock(open());
    sweep_items_are_cancelled_only_before_they_start(open());
    pages::entries_are_listed_in_pages(open());
    run::commands_run_once_and_replay(open());
    run::a_damaged_output_is_noticed_not_restored(open());
    batch::run_all(open);
}

/// The location a test service exported in `var` (by `scripts/services/<script>`), or `None`
/// (skip, with a message) when it is not running. Under CI a missing service is a failure.
pub fn test_service(var: &str, script: &str, what: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(s) if !s.is_empty() => Some(s),
        _ => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("the {what} test service was not started: run via scripts/test");
            }
            eprintln!(
                "skipping {what} tests: {var} is not set. Start the service with: eval \"$(scripts/services/{script} start)\""
            );
            None
        }
    }
}

fn big(seed: u8) -> Vec<u8> {
    (0..20_000u32)
        .map(|i| (i as u8).wrapping_mul(seed))
        .collect()
}

fn no_compute<T>() -> Result<T, String> {
    Err("this computation must not run: the entry should be a hit".into())
}

pub fn hit_after_miss_typed_and_bytes(store: Store) {
    let task = store.task("conf.typed").version("1");
    let calls = AtomicUsize::new(0);
    let compute = || {
        calls.fetch_add(1, Ordering::SeqCst);
        Ok::<_, String>((vec![1.5f64, 2.5], "hello".to_string()))
    };
    let a: (Vec<f64>, String) = task.get_or_compute(&(1, "x"), compute).unwrap();
    let b: (Vec<f64>, String) = task.get_or_compute(&(1, "x"), compute).unwrap();
    assert_eq!(a, b);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "second call must be a hit");
    let entry = task.entry(&(1, "x")).unwrap();
    assert!(entry.exists().unwrap());
    let info = entry.info().unwrap().unwrap();
    assert_eq!(info.namespace, "conf.typed");
    assert_eq!(info.version, "1");
    assert_eq!(info.status, Status::Completed);
    assert_eq!(info.pid, std::process::id());
    assert!(info.key_doc.to_string().contains("conf.typed"));
    assert_eq!(entry.load::<(Vec<f64>, String)>().unwrap(), a);

    let raw = store.task("conf.bytes");
    let data = big(3);
    let got = raw
        .get_or_compute_bytes(&"blob", |_| Ok::<_, String>(data.clone()))
        .unwrap();
    assert_eq!(got, data);
    let again = raw
        .get_or_compute_bytes(&"blob", |_| no_compute::<Vec<u8>>())
        .unwrap();
    assert_eq!(again, data);
    assert_eq!(raw.entry(&"blob").unwrap().load_bytes().unwrap(), data);
}

pub fn keys_distinguish_args_versions_and_namespaces(store: Store) {
    let t1 = store.task("conf.keys").version("1");
    let t2 = store.task("conf.keys").version("2");
    let other = store.task("conf.other").version("1");
    let k = t1.key(&("1", "23")).unwrap();
    assert_ne!(k, t1.key(&("12", "3")).unwrap());
    assert_ne!(k, t2.key(&("1", "23")).unwrap());
    assert_ne!(k, other.key(&("1", "23")).unwrap());
    assert_eq!(k, t1.key(&("1", "23")).unwrap());
    let v1: u32 = t1.get_or_compute(&7, || Ok::<_, String>(1)).unwrap();
    let v2: u32 = t2.get_or_compute(&7, || Ok::<_, String>(2)).unwrap();
    assert_eq!((v1, v2), (1, 2), "a version bump must recompute");
}

pub fn blobs_are_deduplicated(store: Store) {
    let t = store.task("conf.dedup");
    let data = big(5);
    t.get_or_compute_bytes(&1, |_| Ok::<_, String>(data.clone()))
        .unwrap();
    t.get_or_compute_bytes(&2, |_| Ok::<_, String>(data.clone()))
        .unwrap();
    let blobs = store.backend().list_blobs().unwrap();
    assert_eq!(blobs.len(), 1, "identical results share one blob");
    assert_eq!(blobs[0].size, data.len() as u64);
}

pub fn failures_are_recorded_and_retried(store: Store) {
    let t = store.task("conf.fail");
    let err = t
        .get_or_compute(&1, || Err::<u32, _>("boom: bad input"))
        .unwrap_err();
    assert!(matches!(err, Error::ComputeFailed { .. }), "{err}");
    let m = t.entry(&1).unwrap().info().unwrap().unwrap();
    assert_eq!(m.status, Status::Failed);
    assert_eq!(m.error.as_ref().unwrap().message, "boom: bad input");
    // A later plain call re-raises the recorded failure without recomputing.
    let err = t.get_or_compute(&1, no_compute::<u32>).unwrap_err();
    match err {
        Error::RecordedFailure { message, .. } => assert_eq!(message, "boom: bad input"),
        other => panic!("expected RecordedFailure, got {other}"),
    }
    // Retry recomputes it.
    let v: u32 = t
        .clone()
        .mode(Mode::Retry)
        .get_or_compute(&1, || Ok::<_, String>(9))
        .unwrap();
    assert_eq!(v, 9);
    assert_eq!(t.get_or_compute(&1, no_compute::<u32>).unwrap(), 9);
    // A panic is recorded as a failure and propagates.
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _: Result<u32, _> =
            t.get_or_compute(&2, || -> Result<u32, String> { panic!("kaboom") });
    }));
    assert!(r.is_err());
    let m = t.entry(&2).unwrap().info().unwrap().unwrap();
    assert_eq!(m.status, Status::Failed);
    assert!(m.error.unwrap().message.contains("kaboom"));
}

pub fn modes_behave(store: Store) {
    let t = store.task("conf.modes");
    let v: u32 = t.get_or_compute(&1, || Ok::<_, String>(1)).unwrap();
    assert_eq!(v, 1);
    let forced: u32 = t
        .clone()
        .mode(Mode::Force)
        .get_or_compute(&1, || Ok::<_, String>(2))
        .unwrap();
    assert_eq!(forced, 2);
    assert_eq!(
        t.get_or_compute(&1, no_compute::<u32>).unwrap(),
        2,
        "force replaced it"
    );
    // off: always computes, never reads or writes.
    let off = t.clone().mode(Mode::Off);
    assert_eq!(off.get_or_compute(&1, || Ok::<_, String>(3)).unwrap(), 3);
    assert_eq!(off.get_or_compute(&5, || Ok::<_, String>(5)).unwrap(), 5);
    assert!(t.entry(&5).unwrap().info().unwrap().is_none());
    // read-only: uses what exists; computes a miss without writing anything.
    let ro = t.clone().mode(Mode::ReadOnly);
    assert_eq!(ro.get_or_compute(&1, no_compute::<u32>).unwrap(), 2);
    assert_eq!(ro.get_or_compute(&6, || Ok::<_, String>(6)).unwrap(), 6);
    assert!(t.entry(&6).unwrap().info().unwrap().is_none());
    assert!(store
        .leases()
        .view(&t.key(&6).unwrap())
        .unwrap()
        .is_none_or(|v| v.record.is_none()));
    assert_eq!("read-only".parse::<Mode>().unwrap(), Mode::ReadOnly);
    assert!("sometimes"
        .parse::<Mode>()
        .unwrap_err()
        .to_string()
        .contains("cached, force"));
}

/// `try_hit_keyed` (the bindings' fast path) returns exactly the hits of `get_or_compute_keyed`
/// and leaves everything else (a miss, a failure, force, off, a damaged entry) to it, having
/// written nothing.
pub fn try_hit_settles_only_what_a_call_would_load(store: Store) {
    let t = store.task("conf.try_hit").mode(Mode::Retry);
    let key = |v: u32| t.key(&v).unwrap();
    let doc = || Ok(serde_json::json!({}));
    assert_eq!(t.try_hit_keyed(key(1), &Raw).unwrap(), None, "a miss");
    assert!(
        store.manifest(&key(1)).unwrap().is_none(),
        "nothing written"
    );
    let v = t
        .get_or_compute_keyed(key(1), &doc, &Raw, |_| Ok(b"one".to_vec()))
        .unwrap();
    assert_eq!(v, b"one");
    assert_eq!(
        t.try_hit_keyed(key(1), &Raw).unwrap().as_deref(),
        Some(&b"one"[..])
    );
    let read_only = t.clone().mode(Mode::ReadOnly);
    assert_eq!(
        read_only.try_hit_keyed(key(1), &Raw).unwrap().as_deref(),
        Some(&b"one"[..])
    );
    for mode in [Mode::Force, Mode::Off] {
        assert_eq!(
            t.clone().mode(mode).try_hit_keyed(key(1), &Raw).unwrap(),
            None
        );
    }
    let failed = t.get_or_compute_keyed(key(2), &doc, &Raw, |_| {
        Err(Failure {
            error_type: "E".into(),
            message: "no".into(),
            ..Default::default()
        })
    });
    assert!(failed.is_err());
    for mode in [Mode::Cached, Mode::Retry] {
        assert_eq!(
            t.clone().mode(mode).try_hit_keyed(key(2), &Raw).unwrap(),
            None,
            "{mode:?}"
        );
    }
    let stale = t
        .clone()
        .validator(std::sync::Arc::new(|_: &Manifest| Some("stale".into())));
    assert_eq!(
        stale.try_hit_keyed(key(1), &Raw).unwrap(),
        None,
        "a stale entry"
    );
    store
        .backend()
        .put_manifest(&key(1), b"{ not json", true)
        .unwrap();
    assert_eq!(
        t.try_hit_keyed(key(1), &Raw).unwrap(),
        None,
        "a damaged manifest"
    );
}

/// Overwrites the value blob of `task`'s entry for `arg` with `bytes`; returns the digest.
fn damage_value_blob(store: &Store, task: &runcache::Task, arg: u32, bytes: Option<Vec<u8>>) {
    let m = task.entry(&arg).unwrap().info().unwrap().unwrap();
    let blob = m.blob("value").unwrap();
    assert!(blob.inline.is_none(), "test needs an external blob");
    store.backend().delete_blob(&blob.digest).unwrap();
    if let Some(b) = bytes {
        store.backend().put_blob(&blob.digest, &b).unwrap();
    }
}

fn damaged_then_recomputed(store: Store, damage: Option<fn(Vec<u8>) -> Vec<u8>>) {
    let t = store.task("conf.damage");
    let data = big(7);
    t.get_or_compute_bytes(&1u32, |_| Ok::<_, String>(data.clone()))
        .unwrap();
    damage_value_blob(&store, &t, 1, damage.map(|f| f(data.clone())));
    let calls = AtomicUsize::new(0);
    let got = t
        .get_or_compute_bytes(&1u32, |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, String>(data.clone())
        })
        .unwrap();
    assert_eq!(got, data, "damaged data must never be returned");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "a damaged entry is a miss");
    // The recomputed entry is whole again.
    assert_eq!(t.entry(&1u32).unwrap().load_bytes().unwrap(), data);
    let report = store.verify(false, &|_, _, _| {}).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

pub fn truncated_blob_is_a_miss(store: Store) {
    damaged_then_recomputed(
        store,
        Some(|mut d| {
            d.truncate(d.len() / 2);
            d
        }),
    );
}

pub fn bit_flipped_blob_is_a_miss(store: Store) {
    damaged_then_recomputed(
        store,
        Some(|mut d| {
            d[1234] ^= 0x10;
            d
        }),
    );
}

pub fn missing_blob_is_a_miss(store: Store) {
    damaged_then_recomputed(store, None);
}

pub fn malformed_manifest_is_a_miss(store: Store) {
    let t = store.task("conf.malformed");
    t.get_or_compute(&1u32, || Ok::<_, String>(1u32)).unwrap();
    let key = t.key(&1u32).unwrap();
    store
        .backend()
        .put_manifest(&key, b"{\"format\": 1, \"key\": tru", true)
        .unwrap();
    let err = t.entry(&1u32).unwrap().info().unwrap_err();
    assert!(matches!(err, Error::Malformed { .. }), "{err}");
    let v: u32 = t.get_or_compute(&1u32, || Ok::<_, String>(2)).unwrap();
    assert_eq!(v, 2, "a malformed manifest is a miss and is replaced");
    assert_eq!(t.entry(&1u32).unwrap().load::<u32>().unwrap(), 2);
}

pub fn artifacts_round_trip(store: Store) {
    let t = store.task("conf.artifacts");
    let v: u32 = t
        .get_or_compute_with(&1, |ctx| {
            std::fs::write(ctx.artifact_path("report.txt").unwrap(), b"side effect").unwrap();
            std::fs::write(ctx.artifact_path("plots/a.bin").unwrap(), big(9)).unwrap();
            ctx.set_metadata("rows", 42).unwrap();
            Ok::<_, String>(5)
        })
        .unwrap();
    assert_eq!(v, 5);
    let e = t.entry(&1).unwrap();
    let mut names: Vec<String> = e.artifacts().unwrap().into_iter().map(|a| a.name).collect();
    names.sort();
    assert_eq!(names, ["plots/a.bin", "report.txt"]);
    assert_eq!(e.read_artifact("report.txt").unwrap(), b"side effect");
    assert_eq!(e.read_artifact("plots/a.bin").unwrap(), big(9));
    assert!(e
        .read_artifact("nope")
        .unwrap_err()
        .to_string()
        .contains("report.txt"));
    assert_eq!(e.info().unwrap().unwrap().metadata["rows"], 42);
}

pub fn dependencies_are_recorded(store: Store) {
    let inner = store.task("conf.inner").version("3");
    let outer = store.task("conf.outer");
    let v: u32 = outer
        .get_or_compute(&1, || {
            let a: u32 = inner.get_or_compute(&10, || Ok::<_, String>(10)).unwrap();
            Ok::<_, String>(a + 1)
        })
        .unwrap();
    assert_eq!(v, 11);
    let deps = outer
        .entry(&1)
        .unwrap()
        .info()
        .unwrap()
        .unwrap()
        .dependencies;
    assert_eq!(deps.len(), 1);
    assert_eq!(deps[0].namespace, "conf.inner");
    assert_eq!(deps[0].version, "3");
    assert_eq!(deps[0].key, inner.key(&10).unwrap());
    // The inner entry records no dependency of its own.
    assert!(inner
        .entry(&10)
        .unwrap()
        .info()
        .unwrap()
        .unwrap()
        .dependencies
        .is_empty());
}

fn gc_now() -> GcOptions {
    GcOptions {
        min_idle: Duration::ZERO,
        blob_grace: Duration::ZERO,
        ..GcOptions::default()
    }
}

pub fn gc_evicts_lru_by_size_and_age(store: Store) {
    let t = store.task("conf.gc");
    for i in 0..4u32 {
        t.get_or_compute_bytes(&i, |_| Ok::<_, String>(big(i as u8 + 11)))
            .unwrap();
        // Distinct last-use stamps, oldest first: 0, 1, 2, 3.
        store
            .backend()
            .touch(&t.key(&i).unwrap(), 1_000 + i as u64)
            .unwrap();
    }
    let key_of = |i: u32| t.key(&i).unwrap();
    let created = t
        .entry(&0)
        .unwrap()
        .info()
        .unwrap()
        .unwrap()
        .created_unix_ms;
    // Created times dominate the tiny stamps; give each entry an order via its manifest time.
    for i in 0..4u32 {
        let mut m = store.manifest(&key_of(i)).unwrap().unwrap();
        m.created_unix_ms = created - 100_000 + i as u64 * 1000;
        store
            .backend()
            .put_manifest(&key_of(i), &m.to_bytes(), true)
            .unwrap();
    }
    let one = big(1).len() as u64;
    let dry = store
        .gc(
            &GcOptions {
                max_size: Some(2 * one + 4096),
                dry_run: true,
                ..gc_now()
            },
            &|_, _, _| {},
        )
        .unwrap();
    assert_eq!(dry.removed.len(), 2);
    assert_eq!(store.entries().unwrap().len(), 4, "dry run removes nothing");
    let report = store
        .gc(
            &GcOptions {
                max_size: Some(2 * one + 4096),
                ..gc_now()
            },
            &|_, _, _| {},
        )
        .unwrap();
    let removed: Vec<_> = report.removed.iter().map(|r| r.0).collect();
    assert_eq!(
        removed,
        [key_of(0), key_of(1)],
        "least recently used go first"
    );
    assert_eq!(report.blobs_removed, 2);
    assert!(t.entry(&2).unwrap().exists().unwrap() && t.entry(&3).unwrap().exists().unwrap());
    assert_eq!(
        store.backend().list_blobs().unwrap().len(),
        2,
        "unreferenced blobs removed"
    );
    // Age: everything older than a second goes, but recent use protects an entry.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    store.backend().touch(&key_of(3), now_ms).unwrap();
    let report = store
        .gc(
            &GcOptions {
                older_than: Some(Duration::from_secs(1)),
                ..gc_now()
            },
            &|_, _, _| {},
        )
        .unwrap();
    assert_eq!(report.removed.len(), 1, "{report:?}");
    assert_eq!(report.removed[0].0, key_of(2));
}

pub fn gc_spares_entries_under_lease(store: Store) {
    let t = store.task("conf.gclease");
    t.get_or_compute_bytes(&1u32, |_| Ok::<_, String>(big(2)))
        .unwrap();
    let key = t.key(&1u32).unwrap();
    let Acquire::Won(guard) = store.leases().try_acquire(&key, "conf.gclease").unwrap() else {
        panic!("lease should be free");
    };
    let report = store
        .gc(
            &GcOptions {
                max_size: Some(0),
                ..gc_now()
            },
            &|_, _, _| {},
        )
        .unwrap();
    assert!(report.removed.is_empty());
    assert_eq!(report.protected, 1);
    assert!(t.entry(&1u32).unwrap().exists().unwrap());
    guard.release().unwrap();
    let report = store
        .gc(
            &GcOptions {
                max_size: Some(0),
                ..gc_now()
            },
            &|_, _, _| {},
        )
        .unwrap();
    assert_eq!(report.removed.len(), 1);
    assert!(!t.entry(&1u32).unwrap().exists().unwrap());
}

pub fn verify_reports_and_repairs(store: Store) {
    let t = store.task("conf.verify");
    for i in 0..3u32 {
        t.get_or_compute_bytes(&i, |_| Ok::<_, String>(big(i as u8 + 20)))
            .unwrap();
    }
    let clean = store.verify(false, &|_, _, _| {}).unwrap();
    assert!(clean.problems.is_empty());
    assert_eq!(clean.entries, 3);
    damage_value_blob(&store, &t, 1, Some(vec![0u8; 20_000]));
    let report = store.verify(false, &|_, _, _| {}).unwrap();
    assert_eq!(report.problems.len(), 1);
    assert_eq!(report.problems[0].key, t.key(&1u32).unwrap());
    assert!(
        report.problems[0].problem.contains("digest"),
        "{:?}",
        report.problems
    );
    let repaired = store.verify(true, &|_, _, _| {}).unwrap();
    assert_eq!(repaired.removed, 1);
    assert!(store
        .verify(false, &|_, _, _| {})
        .unwrap()
        .problems
        .is_empty());
    assert!(t.entry(&1u32).unwrap().info().unwrap().is_none());
    assert!(t.entry(&0u32).unwrap().exists().unwrap());
}

pub fn threads_compute_once(store: Store) {
    let t = store.task("conf.threads");
    let calls = AtomicUsize::new(0);
    let items: Vec<u32> = (0..40).map(|i| i % 10).collect();
    let out = t.map_with(
        &items,
        &runcache::MapOptions {
            threads: Some(8),
            progress: false,
        },
        |i| {
            calls.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(5));
            Ok::<_, String>(i * 2)
        },
    );
    let values: Vec<u32> = out.into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(
        values,
        items.iter().map(|i| i * 2).collect::<Vec<_>>(),
        "results in order"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        10,
        "each distinct item computed once"
    );
}

pub fn leases_are_exclusive(store: Store) {
    let key = store.task("conf.lease").key(&1).unwrap();
    let Acquire::Won(g) = store.leases().try_acquire(&key, "conf.lease").unwrap() else {
        panic!("free lease not acquired");
    };
    assert!(matches!(
        store.leases().try_acquire(&key, "conf.lease").unwrap(),
        Acquire::Busy(_)
    ));
    let listed = store.leases().list().unwrap();
    assert!(listed.iter().any(|v| v.key == key && v.record.is_some()));
    g.release().unwrap();
    assert!(matches!(
        store.leases().try_acquire(&key, "conf.lease").unwrap(),
        Acquire::Won(_)
    ));
}

pub fn waiting_times_out_with_a_clear_error(store: Store) {
    let t = store.task("conf.timeout");
    let key = t.key(&1).unwrap();
    let Acquire::Won(guard) = store.leases().try_acquire(&key, "conf.timeout").unwrap() else {
        panic!("free lease not acquired");
    };
    let err = t
        .clone()
        .wait_timeout(Duration::from_millis(150))
        .get_or_compute(&1, || Ok::<_, String>(1u8))
        .unwrap_err();
    assert!(matches!(err, Error::WaitTimeout { .. }), "{err}");
    assert!(err.to_string().contains("runcache leases"), "{err}");
    guard.release().unwrap();
    assert_eq!(t.get_or_compute(&1, || Ok::<_, String>(1u8)).unwrap(), 1);
}

pub fn waiter_loads_what_the_holder_commits(store: Store) {
    let t = store.task("conf.handoff");
    let key = t.key(&1).unwrap();
    let Acquire::Won(guard) = store.leases().try_acquire(&key, "conf.handoff").unwrap() else {
        panic!("free lease not acquired");
    };
    std::thread::scope(|s| {
        let waiter = s.spawn(|| t.get_or_compute(&1, no_compute::<u32>));
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            store.manifest(&key).unwrap().is_none(),
            "nothing committed yet"
        );
        // While holding the lease, commit exactly what a holder would: a completed manifest.
        let bytes = postcard_u32(77);
        let m = runcache::Manifest {
            format: runcache::manifest::MANIFEST_FORMAT,
            key,
            namespace: "conf.handoff".into(),
            version: "0".into(),
            key_doc: runcache::key::key_document("conf.handoff", "0", &1).unwrap(),
            status: Status::Completed,
            blobs: vec![runcache::manifest::BlobRef {
                role: "value".into(),
                digest: runcache::Digest::of(&bytes),
                size: bytes.len() as u64,
                inline: Some(runcache::manifest::encode_inline(&bytes)),
            }],
            artifacts: vec![],
            dependencies: vec![],
            error: None,
            created_unix_ms: 1,
            duration_s: 0.0,
            host: "h".into(),
            pid: 1,
            encoding: "postcard".into(),
            metadata: Default::default(),
            sweep: None,
            signature: None,
        };
        assert!(store
            .backend()
            .put_manifest(&key, &m.to_bytes(), false)
            .unwrap());
        let got = waiter.join().unwrap().unwrap();
        assert_eq!(
            got, 77,
            "the waiter loads the holder's commit without computing"
        );
    });
    guard.release().unwrap();
}

/// postcard's encoding of a small u32 (a varint).
fn postcard_u32(mut v: u32) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

// --- Records ---------------------------------------------------------------------------------

pub fn records_are_created_replaced_listed_and_deleted(store: Store) {
    let b = store.backend();
    assert_eq!(b.get_record("sweep", "a").unwrap(), None);
    assert!(b.list_records("sweep").unwrap().is_empty());
    assert!(!b.delete_record("sweep", "a").unwrap(), "nothing to delete");

    b.put_record("sweep", "a", br#"{"v":1}"#).unwrap();
    assert_eq!(b.get_record("sweep", "a").unwrap().unwrap(), br#"{"v":1}"#);
    b.put_record("sweep", "a", br#"{"v":2,"longer":true}"#)
        .unwrap();
    assert_eq!(
        b.get_record("sweep", "a").unwrap().unwrap(),
        br#"{"v":2,"longer":true}"#,
        "a put replaces the record"
    );
    b.put_record("sweep", "a", b"3").unwrap();
    assert_eq!(
        b.get_record("sweep", "a").unwrap().unwrap(),
        b"3",
        "shorter"
    );
    b.put_record("sweep", "empty", b"").unwrap();
    assert_eq!(b.get_record("sweep", "empty").unwrap().unwrap(), b"");

    // Names come back sorted in byte order whatever the order of creation.
    for name in ["zeta", "B-2", "b_1", "a.json", "10", "9", "A"] {
        b.put_record("sweep", name, name.as_bytes()).unwrap();
    }
    let mut expected = vec!["10", "9", "A", "B-2", "a", "a.json", "b_1", "empty", "zeta"];
    assert_eq!(b.list_records("sweep").unwrap(), expected);
    assert_eq!(b.get_record("sweep", "B-2").unwrap().unwrap(), b"B-2");

    assert!(b.delete_record("sweep", "a").unwrap());
    assert!(!b.delete_record("sweep", "a").unwrap(), "already deleted");
    assert_eq!(b.get_record("sweep", "a").unwrap(), None);
    expected.retain(|n| *n != "a");
    assert_eq!(b.list_records("sweep").unwrap(), expected);
    // A deleted record can be created again.
    b.put_record("sweep", "a", b"again").unwrap();
    assert_eq!(b.get_record("sweep", "a").unwrap().unwrap(), b"again");
}

pub fn records_of_different_kinds_never_mix(store: Store) {
    let b = store.backend();
    // `sweep` is a prefix of the other kinds: listing one must not return the others' records.
    b.put_record("sweep", "x", b"sweep x").unwrap();
    b.put_record("sweeps", "x", b"sweeps x").unwrap();
    b.put_record("sweeps", "y", b"sweeps y").unwrap();
    b.put_record("sweep-old", "z", b"old z").unwrap();
    assert_eq!(b.list_records("sweep").unwrap(), ["x"]);
    assert_eq!(b.list_records("sweeps").unwrap(), ["x", "y"]);
    assert_eq!(b.list_records("sweep-old").unwrap(), ["z"]);
    assert!(b.list_records("other").unwrap().is_empty());
    assert_eq!(b.get_record("sweep", "x").unwrap().unwrap(), b"sweep x");
    assert_eq!(b.get_record("sweeps", "x").unwrap().unwrap(), b"sweeps x");
    assert_eq!(b.get_record("sweep", "y").unwrap(), None);
    assert!(b.delete_record("sweeps", "x").unwrap());
    assert_eq!(b.get_record("sweep", "x").unwrap().unwrap(), b"sweep x");
    assert_eq!(b.list_records("sweeps").unwrap(), ["y"]);
    // Records are not entries: they do not show up as manifests or blobs.
    assert!(b.list_manifests().unwrap().is_empty());
    assert!(b.list_blobs().unwrap().is_empty());
}

pub fn bad_record_names_are_refused(store: Store) {
    let b = store.backend();
    let too_long = "n".repeat(129);
    let bad = [
        "",
        ".",
        "..",
        ".hidden",
        "a/b",
        "../up",
        "a b",
        "tab\t",
        "caf\u{e9}",
        "a\\b",
        "x?y",
        too_long.as_str(),
    ];
    let invalid = |r: runcache::Result<()>, what: &str| match r {
        Err(e @ Error::Invalid(_)) => assert!(e.to_string().contains("bad record"), "{what}: {e}"),
        Err(e) => panic!("{what}: expected Error::Invalid, got {e}"),
        Ok(()) => panic!("{what}: accepted"),
    };
    for name in bad {
        for (kind, n) in [("sweep", name), (name, "ok")] {
            let what = format!("kind {kind:?}, name {n:?}");
            invalid(b.put_record(kind, n, b"x"), &format!("put {what}"));
            invalid(b.get_record(kind, n).map(|_| ()), &format!("get {what}"));
            invalid(
                b.delete_record(kind, n).map(|_| ()),
                &format!("delete {what}"),
            );
        }
        invalid(b.list_records(name).map(|_| ()), &format!("list {name:?}"));
    }
    // Nothing was stored by the refused calls; the longest valid name works.
    assert!(b.list_records("sweep").unwrap().is_empty());
    let longest = "n".repeat(128);
    b.put_record(&longest, &longest, b"long").unwrap();
    assert_eq!(b.list_records(&longest).unwrap(), [longest.as_str()]);
    assert_eq!(b.get_record(&longest, &longest).unwrap().unwrap(), b"long");
}

pub fn large_record_round_trips(store: Store) {
    let b = store.backend();
    let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    b.put_record("big", "one-mib", &data).unwrap();
    assert!(b.get_record("big", "one-mib").unwrap().unwrap() == data);
    let mut other = data.clone();
    other.reverse();
    b.put_record("big", "one-mib", &other).unwrap();
    assert!(b.get_record("big", "one-mib").unwrap().unwrap() == other);
    assert_eq!(b.list_records("big").unwrap(), ["one-mib"]);
}

/// Raw bytes as a sweep item's value (the tests' own codec).
struct Raw;

impl ValueCodec<Vec<u8>> for Raw {
    fn name(&self) -> &str {
        "raw"
    }
    fn encode<'v>(&self, v: &'v Vec<u8>) -> runcache::Result<Vec<(String, Cow<'v, [u8]>)>> {
        Ok(vec![("value".into(), Cow::Borrowed(v.as_slice()))])
    }
    fn decode(&self, store: &Store, m: &Manifest) -> runcache::Result<Vec<u8>> {
        store.read_role(m, "value", "raw", "bytes")
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

pub fn sweep_items_are_claimed_and_reported(store: Store) {
    let task = store.task("conf.sweep").version("1");
    let keys: Vec<_> = (0..4u32).map(|i| task.key(&i).unwrap()).collect();
    // Item 3 was computed before the sweep: it counts as cached.
    task.get_or_compute(&3u32, || Ok::<_, String>(30u32))
        .unwrap();
    std::thread::sleep(Duration::from_millis(5));
    let payload = b"how to compute each item".to_vec();
    let payload_digest = store.backend().put_blob_hashing(&payload).unwrap();
    let record = SweepRecord {
        format: SWEEP_FORMAT,
        id: "conf-sweep-1".into(),
        created_unix_ms: now_ms(),
        namespace: "conf.sweep".into(),
        version: "1".into(),
        mode: "cached".into(),
        count: keys.len() as u64,
        keys: store.save_sweep_keys(&keys).unwrap(),
        payload: vec![(payload_digest, payload.len() as u64)],
        runner: serde_json::json!({"kind": "test"}),
        resources: Default::default(),
        executor: serde_json::Value::Null,
    };
    store.save_sweep(&record).unwrap();
    assert_eq!(store.sweep("conf-sweep-1").unwrap(), record);
    assert!(store.sweep("nope").is_err());
    let status = store.sweep_status(&record, true).unwrap();
    assert_eq!((status.pending, status.cached, status.total), (3, 1, 4));

    let sweep = record.sweep_ref();
    let doc = || Ok(serde_json::json!({"test": true}));
    let claim = |key, f: &dyn Fn() -> Result<Vec<u8>, Failure>, log: Option<&std::path::Path>| {
        task.claim_keyed(key, &sweep, &doc, &Raw, log, |_| f())
            .unwrap()
    };
    // Item 0 computes once, with its captured output kept as an artifact.
    let scratch = tempfile::tempdir().unwrap();
    let log = scratch.path().join("item.log");
    std::fs::write(&log, b"hello from item 0\n").unwrap();
    assert_eq!(
        claim(keys[0], &|| Ok(b"zero".to_vec()), Some(&log)),
        Claim::Computed(Status::Completed)
    );
    assert_eq!(
        claim(keys[0], &|| panic!("settled items are not computed"), None),
        Claim::Done(Status::Completed)
    );
    assert_eq!(
        store.read_artifact(&keys[0], LOG_ARTIFACT).unwrap(),
        b"hello from item 0\n"
    );
    // Item 1 fails: recorded, settled, and its log kept too.
    std::fs::write(&log, b"about to fail\n").unwrap();
    let failing = || {
        Err(Failure {
            error_type: "ValueError".into(),
            message: "bad item".into(),
            ..Default::default()
        })
    };
    assert_eq!(
        claim(keys[1], &failing, Some(&log)),
        Claim::Computed(Status::Failed)
    );
    assert_eq!(
        store.read_artifact(&keys[1], LOG_ARTIFACT).unwrap(),
        b"about to fail\n"
    );
    assert_eq!(claim(keys[1], &failing, None), Claim::Done(Status::Failed));
    // A retry sweep submitted later redoes the failure; the sweep that recorded it does not.
    let retry = task.clone().mode(Mode::Retry);
    let later = SweepRef::new("conf-sweep-2", now_ms() + 1_000);
    assert_eq!(
        retry
            .claim_keyed(keys[1], &sweep, &doc, &Raw, None, |_| failing())
            .unwrap(),
        Claim::Done(Status::Failed)
    );
    // Item 2 is held by someone else: busy, and reported running.
    let held = match store.leases().try_acquire(&keys[2], "conf.sweep").unwrap() {
        runcache::lease::Acquire::Won(g) => g,
        runcache::lease::Acquire::Busy(_) => panic!("nobody else holds it"),
    };
    assert_eq!(
        claim(keys[2], &|| panic!("a held item is not computed"), None),
        Claim::Busy
    );
    let status = store.sweep_status(&record, false).unwrap();
    assert_eq!(
        (
            status.completed,
            status.failed,
            status.running,
            status.cached,
            status.pending
        ),
        (1, 1, 1, 1, 0)
    );
    assert!(!status.drained());
    assert_eq!(status.items.len(), 1, "only the failed item is listed");
    assert_eq!(status.items[0].state, ItemState::Failed);
    assert_eq!(
        status.items[0].error.as_deref(),
        Some("ValueError: bad item")
    );
    assert!(status.items[0].log.is_some());
    held.release().unwrap();
    assert_eq!(
        store
            .item_states(&keys[2..=2], Mode::Cached, &sweep)
            .unwrap()[0],
        ItemState::Pending
    );
    assert_eq!(
        claim(keys[2], &|| Ok(b"two".to_vec()), None),
        Claim::Computed(Status::Completed)
    );
    assert!(store.sweep_status(&record, false).unwrap().drained());
    assert_eq!(
        retry
            .claim_keyed(keys[1], &later, &doc, &Raw, None, |_| Ok(b"one".to_vec()))
            .unwrap(),
        Claim::Computed(Status::Completed)
    );
    // gc keeps the sweep's key list and payload while the record exists; the record can be
    // deleted, and then they go.
    store.remove_unreferenced_blobs(Duration::ZERO).unwrap();
    assert_eq!(store.sweep_keys(&record).unwrap(), keys);
    assert!(store.backend().has_blob(&payload_digest).unwrap());
    assert_eq!(store.sweeps().unwrap().len(), 1);
    assert!(store.delete_sweep("conf-sweep-1").unwrap());
    assert!(store.sweeps().unwrap().is_empty());
    store.remove_unreferenced_blobs(Duration::ZERO).unwrap();
    assert!(!store.backend().has_blob(&payload_digest).unwrap());
    // Workers never run in modes that do not write.
    let ro = task.clone().mode(Mode::ReadOnly);
    assert!(ro
        .claim_keyed(keys[0], &sweep, &doc, &Raw, None, |_| Ok(Vec::new()))
        .is_err());
}

/// A sweep record over `keys` of task `namespace` (version 1, mode cached), saved in `store`.
fn saved_sweep(
    store: &Store,
    id: &str,
    namespace: &str,
    keys: &[runcache::Key],
    created_unix_ms: u64,
) -> SweepRecord {
    let record = SweepRecord {
        format: SWEEP_FORMAT,
        id: id.into(),
        created_unix_ms,
        namespace: namespace.into(),
        version: "1".into(),
        mode: "cached".into(),
        count: keys.len() as u64,
        keys: store.save_sweep_keys(keys).unwrap(),
        payload: Vec::new(),
        runner: serde_json::Value::Null,
        resources: Default::default(),
        executor: serde_json::Value::Null,
    };
    store.save_sweep(&record).unwrap();
    record
}

/// What a sweep counts as its own work is told by the id its workers record, not by clocks: an
/// entry recorded in the very millisecond of the submission by someone else is cached, and a
/// force sweep whose submitter's clock runs ahead of its workers' never redoes its own items.
pub fn sweep_tells_its_own_work_by_id_not_by_clock(store: Store) {
    let task = store.task("conf.sweep.clock").version("1");
    let keys: Vec<_> = (0..2u32).map(|i| task.key(&i).unwrap()).collect();
    task.get_or_compute(&0u32, || Ok::<_, String>(0u32))
        .unwrap();
    let before = store.manifest(&keys[0]).unwrap().unwrap();
    assert_eq!(before.sweep, None, "an ordinary call names no sweep");
    // Submitted in the same millisecond the entry of item 0 was recorded.
    let record = saved_sweep(
        &store,
        "conf-clock-1",
        "conf.sweep.clock",
        &keys,
        before.created_unix_ms,
    );
    let doc = || Ok(serde_json::json!({"test": true}));
    let sweep = record.sweep_ref();
    assert_eq!(
        task.claim_keyed(keys[1], &sweep, &doc, &Raw, None, |_| Ok(b"one".to_vec()))
            .unwrap(),
        Claim::Computed(Status::Completed)
    );
    assert_eq!(
        store.manifest(&keys[1]).unwrap().unwrap().sweep.as_deref(),
        Some("conf-clock-1")
    );
    let status = store.sweep_status(&record, false).unwrap();
    assert_eq!((status.cached, status.completed), (1, 1));
    // A completed entry the sweep's validator rejects (stale, as a call would judge it) does
    // not settle its item: readers see it pending, as the worker that recomputes it does.
    let strict = sweep
        .clone()
        .with_validator(std::sync::Arc::new(|_: &Manifest| {
            Some("stale".to_string())
        }));
    assert!(!store.settles(&keys[1], Mode::Cached, &strict).unwrap());
    assert_eq!(
        store.item_states(&keys, Mode::Cached, &strict).unwrap(),
        vec![ItemState::Pending, ItemState::Pending]
    );

    // A force sweep submitted "an hour from now" by a machine whose clock runs ahead.
    let force = task.clone().mode(Mode::Force);
    let ahead = SweepRef::new("conf-clock-2", now_ms() + 3_600_000);
    let computed = AtomicUsize::new(0);
    for _ in 0..3 {
        force
            .claim_keyed(keys[0], &ahead, &doc, &Raw, None, |_| {
                computed.fetch_add(1, Ordering::SeqCst);
                Ok(b"zero again".to_vec())
            })
            .unwrap();
    }
    assert_eq!(
        computed.load(Ordering::SeqCst),
        1,
        "computed once, then settled"
    );
    assert_eq!(
        store
            .item_states(&keys[0..=0], Mode::Force, &ahead)
            .unwrap()[0],
        ItemState::Completed
    );
    assert_eq!(
        store
            .item_states(&keys[1..=1], Mode::Force, &ahead)
            .unwrap()[0],
        ItemState::Pending,
        "force redoes what another sweep computed before it"
    );
}

/// An item can be cancelled while no one computes it: then no worker starts it, and it counts
/// as cancelled. A running or settled item cannot be; deleting the sweep removes the marks.
pub fn sweep_items_are_cancelled_only_before_they_start(store: Store) {
    let task = store.task("conf.sweep.cancel").version("1");
    let keys: Vec<_> = (0..4u32).map(|i| task.key(&i).unwrap()).collect();
    let record = saved_sweep(
        &store,
        "conf-cancel-1",
        "conf.sweep.cancel",
        &keys,
        now_ms(),
    );
    let sweep = record.sweep_ref();
    let doc = || Ok(serde_json::json!({"test": true}));
    let claim = |key| {
        task.claim_keyed(key, &sweep, &doc, &Raw, None, |_| Ok(b"x".to_vec()))
            .unwrap()
    };
    assert_eq!(claim(keys[0]), Claim::Computed(Status::Completed));
    let held = match store.leases().try_acquire(&keys[1], "someone").unwrap() {
        Acquire::Won(g) => g,
        Acquire::Busy(_) => panic!("nobody else holds it"),
    };
    let cancel = |key| store.cancel_item(&sweep, Mode::Cached, key).unwrap();
    assert!(!cancel(&keys[0]), "a completed item is not cancelled");
    assert!(!cancel(&keys[1]), "a running item is not cancelled");
    assert!(cancel(&keys[2]));
    assert!(cancel(&keys[2]), "cancelling twice is harmless");
    assert_eq!(claim(keys[2]), Claim::Cancelled);
    assert!(
        store.manifest(&keys[2]).unwrap().is_none(),
        "nothing was computed"
    );
    held.release().unwrap();
    let states = store.item_states(&keys, Mode::Cached, &sweep).unwrap();
    assert_eq!(
        states,
        vec![
            ItemState::Completed,
            ItemState::Pending,
            ItemState::Cancelled,
            ItemState::Pending
        ]
    );
    assert!(cancel(&keys[3]));
    assert_eq!(claim(keys[1]), Claim::Computed(Status::Completed));
    let status = store.sweep_status(&record, false).unwrap();
    assert_eq!((status.completed, status.cancelled), (2, 2));
    assert!(status.drained());
    // Another sweep over the same keys is not affected by these cancellations.
    let other = SweepRef::new("conf-cancel-2", now_ms());
    assert!(!store.is_cancelled(&other, &keys[2]).unwrap());
    assert!(store.delete_sweep("conf-cancel-1").unwrap());
    assert!(store.cancelled_items(&sweep).unwrap().is_empty());
    // A key list that does not match its record is reported, with what to do.
    let damaged = SweepRecord {
        count: 5,
        ..record.clone()
    };
    match store.sweep_keys(&damaged) {
        Err(Error::Invalid(m)) => assert!(m.contains("resubmit the sweep"), "{m}"),
        other => panic!("a damaged key list must be refused: {other:?}"),
    }
    assert_eq!(
        store.sweep_keys(&record).unwrap(),
        keys,
        "and the good list is kept"
    );
    let long = SweepRecord {
        id: "x".repeat(runcache::MAX_SWEEP_ID + 1),
        ..record
    };
    assert!(matches!(store.save_sweep(&long), Err(Error::Invalid(_))));
}
