//! The conformance suite against the local-directory store, plus local-only behaviour.

mod conformance;

use std::fs;

use runcache::{Error, Store, StoreOptions};

#[test]
fn local_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let n = std::sync::atomic::AtomicUsize::new(0);
    conformance::run_all(&|| {
        let i = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Store::open(dir.path().join(format!("s{i}")).to_str().unwrap()).unwrap()
    });
}

#[test]
fn local_store_with_sync_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let n = std::sync::atomic::AtomicUsize::new(0);
    conformance::run_all(&|| {
        let i = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path = dir.path().join(format!("s{i}"));
        Store::open(&format!("{}?sync=true", path.display())).unwrap()
    });
}

#[test]
fn default_store_honours_env_and_writes_gitignore() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("envstore");
    // Only this test in this binary touches RUNCACHE_STORE.
    std::env::set_var("RUNCACHE_STORE", &path);
    let store = Store::open_default().unwrap();
    std::env::remove_var("RUNCACHE_STORE");
    assert_eq!(store.location(), path.display().to_string());
    assert!(fs::read_to_string(path.join(".gitignore"))
        .unwrap()
        .contains('*'));
    assert!(path.join("RUNCACHE-STORE.json").exists());
}

#[test]
fn bad_locations_are_clear_errors() {
    let err = Store::open("gs://bucket/prefix").unwrap_err();
    assert!(
        err.to_string().contains("not supported by this build"),
        "{err}"
    );
    let err = Store::open("/tmp/x?colour=blue").unwrap_err();
    assert!(err.to_string().contains("unknown option `colour`"), "{err}");
    let err = Store::open("/tmp/x?sync=maybe").unwrap_err();
    assert!(err.to_string().contains("true or false"), "{err}");
    let file = tempfile::NamedTempFile::new().unwrap();
    let err = Store::open(file.path().to_str().unwrap()).unwrap_err();
    assert!(matches!(err, Error::BadStore { .. }), "{err}");
}

#[test]
fn blob_files_are_sharded_and_temp_files_never_linger() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(
        dir.path().join("s").to_str().unwrap(),
        StoreOptions::default(),
    )
    .unwrap();
    let t = store.task("layout");
    let data = vec![3u8; 100_000];
    t.get_or_compute_bytes(&1, |_| Ok::<_, String>(data.clone()))
        .unwrap();
    let m = t.entry(&1).unwrap().info().unwrap().unwrap();
    let hex = m.blobs[0].digest.to_hex();
    let blob = dir.path().join("s/blobs").join(&hex[..2]).join(&hex);
    assert_eq!(fs::metadata(&blob).unwrap().len(), 100_000);
    let key = m.key.to_hex();
    assert!(dir
        .path()
        .join("s/manifests")
        .join(&key[..2])
        .join(format!("{key}.json"))
        .exists());
    let leftovers = temporary_files(dir.path());
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn read_only_store_serves_hits_and_never_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let store = Store::open(path.to_str().unwrap()).unwrap();
    store
        .task("ro")
        .get_or_compute(&1, || Ok::<_, String>(5u8))
        .unwrap();
    let snapshot = || {
        let mut files: Vec<_> = walk(&path)
            .into_iter()
            .map(|p| (p.clone(), fs::metadata(&p).unwrap().modified().unwrap()))
            .collect();
        files.sort();
        files
    };
    let before = snapshot();
    let ro = Store::open(&format!("{}?readonly=true", path.display())).unwrap();
    let v: u8 = ro
        .task("ro")
        .get_or_compute(&1, || Err::<u8, _>("must hit"))
        .unwrap();
    assert_eq!(v, 5);
    ro.flush_usage();
    let err = ro
        .task("ro")
        .get_or_compute(&2, || Ok::<_, String>(6u8))
        .unwrap_err();
    assert!(matches!(err, Error::ReadOnly { .. }), "{err}");
    assert_eq!(snapshot(), before, "a read-only store was written");
}

/// The store's temporary files (`.tmp-*`) under `root`: a finished write leaves none.
fn temporary_files(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    walk(root)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".tmp-")
        })
        .collect()
}

fn walk(p: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(p) {
        for e in rd.flatten() {
            let path = e.path();
            if path.is_dir() {
                out.extend(walk(&path));
            }
            out.push(path);
        }
    }
    out
}

#[test]
fn hits_record_use_at_most_once_per_granularity() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let store = Store::open(path.to_str().unwrap()).unwrap();
    let t = store.task("usage");
    t.get_or_compute(&1, || Ok::<_, String>(1u8)).unwrap();
    let key = t.key(&1).unwrap();
    // The committing process does not stamp on its own hits within the granularity.
    t.get_or_compute(&1, || Err::<u8, _>("hit")).unwrap();
    assert_eq!(store.backend().last_used(&key).unwrap(), None);
    // Another process (a fresh handle) stamps on its first hit, and only once.
    let other = Store::open_with(
        path.to_str().unwrap(),
        StoreOptions {
            usage_granularity: std::time::Duration::from_secs(3600),
            ..Default::default()
        },
    )
    .unwrap();
    other
        .task("usage")
        .get_or_compute(&1, || Err::<u8, _>("hit"))
        .unwrap();
    other.flush_usage();
    let stamp = store.backend().last_used(&key).unwrap().expect("stamped");
    store.backend().touch(&key, 5).unwrap();
    other
        .task("usage")
        .get_or_compute(&1, || Err::<u8, _>("hit"))
        .unwrap();
    other.flush_usage();
    assert_eq!(
        store.backend().last_used(&key).unwrap(),
        Some(5),
        "no second write within the granularity"
    );
    assert!(stamp > 5);
}

#[test]
fn large_blobs_are_mapped_verified_once_and_damage_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("s").to_str().unwrap()).unwrap();
    let t = store.task("mapped");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    t.get_or_compute_bytes(&1, |_| Ok::<_, String>(data.clone()))
        .unwrap();
    let m = t.entry(&1).unwrap().info().unwrap().unwrap();
    let blob = &m.blobs[0];
    let mapped = store.load_blob(&m.key, blob, 1 << 20).unwrap();
    assert!(mapped.is_mapped());
    assert!(*mapped == data[..]);
    // Below the threshold it is read instead.
    assert!(!store.load_blob(&m.key, blob, u64::MAX).unwrap().is_mapped());
    // The verification is remembered per file identity in a private tmpfs directory.
    if std::path::Path::new("/dev/shm").is_dir() {
        let remembered = fs::read_dir("/dev/shm")
            .unwrap()
            .flatten()
            .filter(|d| {
                d.file_name()
                    .to_string_lossy()
                    .starts_with("runcache-verified-")
            })
            .flat_map(|d| fs::read_dir(d.path()).unwrap().flatten())
            .any(|f| {
                f.file_name()
                    .to_string_lossy()
                    .starts_with(&blob.digest.to_hex()[..32])
            });
        assert!(remembered, "verification marker not recorded");
    }
    // Flip one byte in place: the file's identity (ctime) changes, so it is verified again.
    let path = store.backend().blob_path(&blob.digest).unwrap();
    drop(mapped);
    let mut bytes = fs::read(&path).unwrap();
    bytes[1_000_000] ^= 1;
    fs::write(&path, &bytes).unwrap();
    let err = store.load_blob(&m.key, blob, 1 << 20).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert!(!path.exists(), "the damaged blob is removed");
}

#[test]
fn many_threads_creating_one_store_all_succeed() {
    for round in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(format!("s{round}"));
        let loc = path.to_str().unwrap().to_string();
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let loc = loc.clone();
                std::thread::spawn(move || Store::open(&loc).map(|_| ()))
            })
            .collect();
        for h in handles {
            h.join().unwrap().unwrap();
        }
        assert!(path.join(".gitignore").exists());
    }
}

#[test]
fn large_blobs_round_trip_and_damage_is_caught_while_streaming() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("s").to_str().unwrap()).unwrap();
    let t = store.task("large");
    let data: Vec<u8> = (0..20_000_000u32).map(|i| (i % 253) as u8).collect();
    let got = t
        .get_or_compute_bytes(&1, |_| Ok::<_, String>(data.clone()))
        .unwrap();
    assert!(got == data);
    let m = t.entry(&1).unwrap().info().unwrap().unwrap();
    let path = store.backend().blob_path(&m.blobs[0].digest).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().len(), data.len() as u64);
    assert!(t.entry(&1).unwrap().load_bytes().unwrap() == data);
    assert!(
        !dir.path().join("s/tmp").exists()
            || fs::read_dir(dir.path().join("s/tmp")).unwrap().count() == 0,
        "no temp file left"
    );
    type Damage = fn(&mut Vec<u8>);
    let damages: [(&str, Damage); 3] = [
        ("truncated", |b| b.truncate(b.len() - 5)),
        ("extended", |b| b.extend_from_slice(b"xx")),
        ("bit-flipped", |b| b[12_345_678] ^= 4),
    ];
    for (what, damage) in damages {
        let mut bytes = data.clone();
        damage(&mut bytes);
        fs::write(&path, &bytes).unwrap();
        let err = t.entry(&1).unwrap().load_bytes().unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{what}: {err}");
        assert!(!path.exists(), "{what}: damaged blob removed");
        // A get_or_compute recomputes it and the entry is whole again.
        let again = t
            .get_or_compute_bytes(&1, |_| Ok::<_, String>(data.clone()))
            .unwrap();
        assert!(again == data, "{what}");
        assert!(t.entry(&1).unwrap().load_bytes().unwrap() == data, "{what}");
    }
}

#[test]
fn parsed_manifest_cache_sees_replacement_and_deletion_by_others() {
    let dir = tempfile::tempdir().unwrap();
    let loc = dir.path().join("s");
    let a = Store::open(loc.to_str().unwrap()).unwrap();
    let b = Store::open(loc.to_str().unwrap()).unwrap();
    let ta = a.task("cache");
    let tb = b.task("cache").mode(runcache::Mode::Force);
    assert_eq!(ta.get_or_compute(&1, || Ok::<_, String>(1u32)).unwrap(), 1);
    for i in 0..3 {
        // a's handle has parsed the manifest; b replaces it (as another process would).
        assert_eq!(
            ta.get_or_compute(&1, || Err::<u32, _>("hit")).unwrap(),
            1 + i
        );
        tb.get_or_compute(&1, || Ok::<_, String>(2 + i)).unwrap();
        assert_eq!(
            ta.get_or_compute(&1, || Err::<u32, _>("must see b's entry"))
                .unwrap(),
            2 + i
        );
    }
    b.delete(&ta.key(&1).unwrap()).unwrap();
    assert!(ta.entry(&1).unwrap().info().unwrap().is_none());
    assert_eq!(ta.get_or_compute(&1, || Ok::<_, String>(9u32)).unwrap(), 9);
}

#[test]
fn records_are_files_under_records_and_leave_no_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s");
    for sync in [false, true] {
        let store = Store::open(&format!("{}?sync={sync}", root.display())).unwrap();
        let b = store.backend();
        for i in 0..20u32 {
            b.put_record("sweep", "run-1", format!("version {i}").as_bytes())
                .unwrap();
            b.put_record("sweep", &format!("r{i}"), b"x").unwrap();
        }
        assert_eq!(
            fs::read(root.join("records/sweep/run-1")).unwrap(),
            b"version 19"
        );
        // A temp file of a writer still at work (or killed) is not a record.
        fs::write(root.join("records/sweep/.tmp-1-abc"), b"partial").unwrap();
        assert_eq!(b.list_records("sweep").unwrap().len(), 21);
        fs::remove_file(root.join("records/sweep/.tmp-1-abc")).unwrap();
        for i in 0..20u32 {
            assert!(b.delete_record("sweep", &format!("r{i}")).unwrap());
        }
        assert_eq!(b.list_records("sweep").unwrap(), ["run-1"]);
        let leftovers = temporary_files(&root);
        assert!(leftovers.is_empty(), "sync={sync}: {leftovers:?}");
        assert_eq!(
            fs::read_dir(root.join("records/sweep")).unwrap().count(),
            1,
            "sync={sync}"
        );
    }
}

#[test]
fn read_only_store_reads_records_and_refuses_to_change_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let store = Store::open(path.to_str().unwrap()).unwrap();
    store.backend().put_record("sweep", "a", b"one").unwrap();
    let sorted_walk = |p: &std::path::Path| {
        let mut files = walk(p);
        files.sort();
        files
    };
    let files_before = sorted_walk(&path);
    let ro = Store::open(&format!("{}?readonly=true", path.display())).unwrap();
    let b = ro.backend();
    assert_eq!(b.get_record("sweep", "a").unwrap().unwrap(), b"one");
    assert_eq!(b.list_records("sweep").unwrap(), ["a"]);
    let err = b.put_record("sweep", "a", b"two").unwrap_err();
    assert!(matches!(err, Error::ReadOnly { .. }), "{err}");
    let err = b.put_record("sweep", "new", b"two").unwrap_err();
    assert!(matches!(err, Error::ReadOnly { .. }), "{err}");
    let err = b.delete_record("sweep", "a").unwrap_err();
    assert!(matches!(err, Error::ReadOnly { .. }), "{err}");
    // A bad name is still a bad name, even on a read-only store.
    let err = b.put_record("sweep", "../a", b"x").unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err}");
    assert_eq!(fs::read(path.join("records/sweep/a")).unwrap(), b"one");
    assert_eq!(
        sorted_walk(&path),
        files_before,
        "a read-only store was written"
    );
}

/// Stray objects of the local store, each a damaged item for every walking operation (the
/// conformance check, once per kind): a plain file where a shard belongs, a directory named like
/// a manifest, an empty lease record, a blob name that is not a digest.
#[test]
fn local_stray_objects_are_damaged_items() {
    let dir = tempfile::tempdir().unwrap();
    let hex = |c: char| format!("ab{}", c.to_string().repeat(62));
    type Plant = Box<dyn Fn(&std::path::Path) -> String>;
    let plants: Vec<Plant> = vec![
        Box::new(|root| {
            fs::write(root.join("manifests/stray"), b"x").unwrap();
            "manifests/stray".into()
        }),
        Box::new(move |root| {
            let p = format!("manifests/ab/{}.json", hex('a'));
            fs::create_dir_all(root.join(&p)).unwrap();
            p
        }),
        Box::new(move |root| {
            let d = format!("leases/ab/{}", hex('c'));
            fs::create_dir_all(root.join(&d)).unwrap();
            fs::write(root.join(&d).join("g.1"), b"").unwrap();
            format!("{d}/g.1")
        }),
        Box::new(|root| {
            fs::create_dir_all(root.join("blobs/ab")).unwrap();
            fs::write(root.join("blobs/ab/not-a-digest"), b"x").unwrap();
            "blobs/ab/not-a-digest".into()
        }),
    ];
    for (i, plant) in plants.iter().enumerate() {
        let root = dir.path().join(format!("s{i}"));
        let store = Store::open(root.to_str().unwrap()).unwrap();
        conformance::damage::stray_object_is_one_damaged_item(store, &|_| plant(&root));
    }
}

/// Sets the mtime of a file or directory `ago` in the past.
fn age_path(path: &std::path::Path, ago: std::time::Duration) {
    let t = std::time::SystemTime::now() - ago;
    fs::File::open(path).unwrap().set_modified(t).unwrap();
}

/// A pid that no process has now (a child that has exited and been reaped).
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// gc and verify --repair remove the temporary files and artifact scratch directories of killed
/// writers once they are older than the grace period (1 h; 24 h for another host's), and keep
/// fresh ones, those of live processes, and scratch directories written to recently.
#[test]
fn temp_files_of_killed_writers_are_collected_after_the_grace_period() {
    use std::time::Duration;
    const H: Duration = Duration::from_secs(3600);
    let host = runcache::host_name();
    let (me, dead) = (std::process::id(), dead_pid());
    for repair in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s");
        let store = Store::open(root.to_str().unwrap()).unwrap();
        let t = store.task("tmp.keep");
        t.get_or_compute_bytes(&1u32, |_| Ok::<_, String>(vec![7u8; 10_000]))
            .unwrap();
        fs::create_dir_all(root.join("tmp")).unwrap();
        fs::create_dir_all(root.join("blobs/ab")).unwrap();
        // (path, age, expected to be removed)
        let files = [
            (format!("tmp/.tmp-{host}-{dead}-01"), 2 * H, true),
            (format!("tmp/.tmp-{host}-{me}-02"), 2 * H, false),
            (format!("tmp/.tmp-{host}-{dead}-03"), Duration::ZERO, false),
            (format!("tmp/.tmp-elsewhere.lan-{dead}-04"), 2 * H, false),
            (format!("tmp/.tmp-elsewhere.lan-{dead}-05"), 30 * H, true),
            (format!("tmp/.tmp-{dead}-06"), 30 * H, true),
            (format!("blobs/ab/.tmp-{host}-{dead}-07"), 2 * H, true),
            (format!("records/sweep/.tmp-{host}-{dead}-08"), 2 * H, true),
        ];
        fs::create_dir_all(root.join("records/sweep")).unwrap();
        for (p, ago, _) in &files {
            fs::write(root.join(p), vec![1u8; 4096]).unwrap();
            age_path(&root.join(p), *ago);
        }
        // Scratch directories: one all old, one with a file written just now.
        let old_dir = root.join(format!("tmp/artifacts-{host}-{dead}-09"));
        let busy_dir = root.join(format!("tmp/artifacts-{host}-{dead}-10"));
        for (d, file_ago) in [(&old_dir, 2 * H), (&busy_dir, Duration::ZERO)] {
            fs::create_dir_all(d.join("plots")).unwrap();
            fs::write(d.join("plots/a.png"), b"png").unwrap();
            age_path(&d.join("plots/a.png"), file_ago);
            age_path(&d.join("plots"), 2 * H);
            age_path(d, 2 * H);
        }

        let removed = if repair {
            store
                .verify(true, &|_, _, _| {})
                .unwrap()
                .temp_files_removed
        } else {
            let report = store
                .gc(
                    &runcache::GcOptions {
                        older_than: Some(H),
                        ..Default::default()
                    },
                    &|_, _, _| {},
                )
                .unwrap();
            assert!(report.temp_bytes_freed >= 4 * 4096, "{report:?}");
            report.temp_files_removed
        };
        assert_eq!(removed, 6, "repair={repair}");
        for (p, _, gone) in &files {
            assert_eq!(!root.join(p).exists(), *gone, "{p} (repair={repair})");
        }
        assert!(!old_dir.exists());
        assert!(busy_dir.join("plots/a.png").exists());
        assert_eq!(
            t.get_or_compute_bytes(&1u32, |_| Err::<Vec<u8>, _>("must hit"))
                .unwrap(),
            vec![7u8; 10_000]
        );
    }
}

/// Blob files are read-only (no write bit: blobs are immutable), and `?mmap=false` makes a store
/// never map a blob: every load is a verified copy, so an edit made in place by another writer
/// is caught instead of changing an array under its reader.
#[test]
fn blobs_are_read_only_and_mmap_false_never_maps() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..(2u32 << 20)).map(|i| (i % 251) as u8).collect();
    for mmap in [true, false] {
        let root = dir.path().join(format!("s-{mmap}"));
        let store = Store::open(&format!("{}?mmap={mmap}", root.display())).unwrap();
        let t = store.task("ro.big");
        t.get_or_compute_bytes(&1u32, |_| Ok::<_, String>(big.clone()))
            .unwrap();
        let key = t.key(&1u32).unwrap();
        let m = store.manifest(&key).unwrap().unwrap();
        let blob = &m.blobs[0];
        let file = root
            .join("blobs")
            .join(&blob.digest.to_hex()[..2])
            .join(blob.digest.to_hex());
        let mode = fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o222, 0, "blob mode {mode:o}");
        assert_eq!(store.backend().blob_path(&blob.digest).is_some(), mmap);
        let data = store.load_blob(&key, blob, 0).unwrap();
        assert_eq!(data.is_mapped(), mmap);
        assert_eq!(&data[..], &big[..]);
        drop(data);
        if !mmap {
            // Edited in place (same size): the next load is refused, never returned.
            let mut edited = big.clone();
            edited[12345] ^= 1;
            fs::write(&file, &edited).unwrap();
            let err = store.load_blob(&key, blob, 0).unwrap_err();
            assert!(matches!(err, Error::Corrupt { .. }), "{err}");
        }
    }
    let err = Store::open(&format!("{}?mmap=maybe", dir.path().join("x").display())).unwrap_err();
    assert!(err.to_string().contains("true or false"), "{err}");
}
