//! Damage that maintenance must judge one item at a time: a manifest that lies about a blob
//! other entries share, an unreadable manifest, and (per backend, planted by the caller) a stray
//! object under the store. Every store-walking operation reports such an item and goes on; none
//! fails as a whole, and `verify --repair` never removes a sound entry.

use runcache::key::Key;
use runcache::manifest::Manifest;
use runcache::{Digest, GcOptions, Store};

use super::{big, no_compute};

/// A key that sorts before (or after) `than`.
fn key_beside(than: &Key, before: bool) -> Key {
    (0u32..)
        .map(|i| Key(Digest::of(format!("runcache-conformance-{i}").as_bytes())))
        .find(|k| (k < than) == before)
        .expect("some digest sorts on either side")
}

/// A healthy entry with two external blobs (value and artifact), its manifest, and the task.
fn healthy(store: &Store, ns: &str) -> (runcache::Task, Manifest) {
    let t = store.task(ns);
    t.get_or_compute_bytes(&1u32, |ctx| {
        std::fs::write(ctx.artifact_path("array.bin").unwrap(), big(5)).unwrap();
        Ok::<_, String>(big(3))
    })
    .unwrap();
    let m = store.manifest(&t.key(&1u32).unwrap()).unwrap().unwrap();
    assert!(m.external_digests().count() >= 2, "{m:?}");
    (t, m)
}

/// The reproduction: a copy of a healthy manifest under another key, claiming its last
/// blob is 8 bytes longer. `verify` reports the copy alone (whether it sorts before or after the
/// healthy entry), reading the copy never deletes the shared blob, and `verify --repair` removes
/// the copy and leaves the healthy entry loadable.
pub fn verify_judges_each_entry_by_its_own_manifest(store: Store) {
    for (ns, before) in [("conf.lie.first", true), ("conf.lie.last", false)] {
        let (t, m) = healthy(&store, ns);
        let bad_key = key_beside(&m.key, before);
        let mut bad = m.clone();
        bad.key = bad_key;
        let last = bad.blobs.len() - 1;
        assert!(bad.blobs[last].inline.is_none());
        bad.blobs[last].size += 8;
        assert!(store
            .backend()
            .put_manifest(&bad_key, &bad.to_bytes(), false)
            .unwrap());

        // Reading the lying entry fails, and leaves the shared blob alone.
        let err = store.read_blob(&bad_key, &bad.blobs[last]).unwrap_err();
        assert!(err.to_string().contains("manifest says"), "{err}");
        let v = t.get_or_compute_bytes(&1u32, |_| no_compute()).unwrap();
        assert_eq!(v, big(3), "{ns}: the healthy entry still loads");

        let report = store.verify(false, &|_, _, _| {}).unwrap();
        let keys: Vec<Key> = report.problems.iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            vec![bad_key],
            "{ns}: only the lying entry: {report:?}"
        );
        assert!(
            report.problems[0].problem.contains("the manifest says"),
            "{:?}",
            report.problems
        );

        let repaired = store.verify(true, &|_, _, _| {}).unwrap();
        assert_eq!(repaired.removed, 1, "{ns}");
        assert!(store.backend().get_manifest(&bad_key).unwrap().is_none());
        let v = t.get_or_compute_bytes(&1u32, |_| no_compute()).unwrap();
        assert_eq!(v, big(3), "{ns}: the healthy entry survives --repair");
        assert_eq!(
            t.entry(&1u32).unwrap().read_artifact("array.bin").unwrap(),
            big(5)
        );
        assert!(!store.verify(false, &|_, _, _| {}).unwrap().found_damage());
    }
}

/// A manifest cut short is one damaged entry for every walking operation: listed, counted,
/// skipped by gc, reported and removed by verify; the sound entry beside it is untouched.
pub fn unreadable_manifest_is_one_damaged_item(store: Store) {
    let (t, m) = healthy(&store, "conf.truncated");
    let bad_key = key_beside(&m.key, true);
    let bytes = m.to_bytes();
    store
        .backend()
        .put_manifest(&bad_key, &bytes[..bytes.len() / 2], false)
        .unwrap();
    let entries = store.entries().unwrap();
    assert_eq!(entries.len(), 2);
    let damaged: Vec<_> = entries.iter().filter(|e| e.manifest.is_none()).collect();
    assert_eq!(damaged.len(), 1);
    assert_eq!(damaged[0].key, bad_key);
    assert!(damaged[0].damage.as_deref().unwrap().contains("manifest"));
    assert_eq!(store.usage().unwrap().entries, 2);
    store.leases().list().unwrap();
    let gc = store
        .gc(
            &GcOptions {
                max_size: Some(u64::MAX),
                ..GcOptions::default()
            },
            &|_, _, _| {},
        )
        .unwrap();
    assert!(gc.removed.is_empty() && gc.errors.is_empty(), "{gc:?}");
    let report = store.verify(false, &|_, _, _| {}).unwrap();
    assert_eq!(report.problems.len(), 1);
    assert_eq!(report.problems[0].key, bad_key);
    assert_eq!(store.verify(true, &|_, _, _| {}).unwrap().removed, 1);
    assert_eq!(
        t.get_or_compute_bytes(&1u32, |_| no_compute()).unwrap(),
        big(3)
    );
}

/// A stray object planted by `plant` (which returns a fragment of its location) is reported by
/// `strays`, `usage`, `gc` and `verify`, never fails any of them, and `verify --repair` removes
/// it; the sound entry beside it still loads.
pub fn stray_object_is_one_damaged_item(store: Store, plant: &dyn Fn(&Store) -> String) {
    let (t, _) = healthy(&store, "conf.stray");
    let fragment = plant(&store);
    let named =
        |objects: &[runcache::store::Stray]| objects.iter().any(|o| o.location.contains(&fragment));
    let strays = store.backend().strays().unwrap();
    assert!(named(&strays), "{fragment} in {strays:?}");
    assert_eq!(store.entries().unwrap().len(), 1);
    assert!(named(&store.usage().unwrap().damaged_objects));
    store.leases().list().unwrap();
    let gc = store
        .gc(
            &GcOptions {
                max_size: Some(u64::MAX),
                ..GcOptions::default()
            },
            &|_, _, _| {},
        )
        .unwrap();
    assert!(named(&gc.damaged_objects), "{gc:?}");
    let report = store.verify(false, &|_, _, _| {}).unwrap();
    assert!(report.found_damage() && named(&report.damaged_objects));
    assert!(report.problems.is_empty(), "{report:?}");
    let repaired = store.verify(true, &|_, _, _| {}).unwrap();
    assert!(repaired.damaged_objects_removed >= 1, "{repaired:?}");
    let left = store.backend().strays().unwrap();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(
        t.get_or_compute_bytes(&1u32, |_| no_compute()).unwrap(),
        big(3)
    );
}
