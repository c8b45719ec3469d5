//! Batched lookups (`Backend::get_manifests`) and batch tasks (`Task::get_or_compute_batch`):
//! per-item entries computed in batches, on every backend.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runcache::lease::Acquire;
use runcache::{Error, Mode, Store};

/// Runs every batch check against stores from `open`.
pub fn run_all(open: super::Factory<'_>) {
    manifests_are_read_in_one_batch_in_order(open());
    only_missing_items_are_computed_in_batches(open());
    a_failed_batch_stores_nothing_and_keeps_earlier_batches(open());
    a_wrong_number_of_results_is_refused(open());
    a_panicking_batch_stores_nothing_and_releases_its_leases(open());
    equal_items_are_computed_once_and_modes_apply(open());
    racing_threads_compute_each_item_once(open());
    items_held_elsewhere_are_waited_for(open());
}

/// Squares `items`, recording every batch it is called with.
fn squares(batches: &Mutex<Vec<Vec<u32>>>) -> impl FnMut(&[&u32]) -> Result<Vec<u64>, String> + '_ {
    move |items| {
        batches
            .lock()
            .unwrap()
            .push(items.iter().map(|i| **i).collect());
        Ok(items
            .iter()
            .map(|&&i| u64::from(i) * u64::from(i))
            .collect())
    }
}

fn sizes(batches: &Mutex<Vec<Vec<u32>>>) -> Vec<usize> {
    batches.lock().unwrap().iter().map(Vec::len).collect()
}

pub fn manifests_are_read_in_one_batch_in_order(store: Store) {
    let t = store.task("conf.batch.lookup");
    for i in [1u32, 3] {
        t.get_or_compute(&i, || Ok::<_, String>(i)).unwrap();
    }
    let keys: Vec<_> = (0..5u32).map(|i| t.key(&i).unwrap()).collect();
    let read = store.backend().get_manifests(&keys).unwrap();
    assert_eq!(read.len(), 5, "one answer per key");
    for (i, bytes) in read.iter().enumerate() {
        match (i, bytes) {
            (1 | 3, Some(bytes)) => {
                assert_eq!(
                    Some(bytes),
                    store.backend().get_manifest(&keys[i]).unwrap().as_ref(),
                    "the batched read of key {i} is its manifest"
                );
            }
            (1 | 3, None) => panic!("the manifest of {i} was not found"),
            (_, found) => assert!(found.is_none(), "key {i} has no entry"),
        }
    }
    assert!(store.backend().get_manifests(&[]).unwrap().is_empty());
}

pub fn only_missing_items_are_computed_in_batches(store: Store) {
    let t = store.task("conf.batch").version("1");
    let batches = Mutex::new(Vec::new());
    let items: Vec<u32> = (0..10).collect();
    let out = t
        .get_or_compute_batch(&items, 4, squares(&batches))
        .unwrap();
    assert_eq!(
        out,
        items.iter().map(|&i| u64::from(i * i)).collect::<Vec<_>>()
    );
    assert_eq!(sizes(&batches), [4, 4, 2], "missing items in batches of 4");
    for i in &items {
        let entry = t.entry(i).unwrap();
        assert_eq!(
            entry.load::<u64>().unwrap(),
            u64::from(i * i),
            "item {i} has its own entry"
        );
        // The same entry a single call of the item reads.
        let one: u64 = t.get_or_compute(i, super::no_compute::<u64>).unwrap();
        assert_eq!(one, u64::from(i * i));
    }

    batches.lock().unwrap().clear();
    let again = t
        .get_or_compute_batch(&items, 4, squares(&batches))
        .unwrap();
    assert_eq!(again, out);
    assert!(
        batches.lock().unwrap().is_empty(),
        "an all-cached call computes nothing"
    );

    // New items among old ones: only the new are computed, in input order.
    let mixed: Vec<u32> = vec![20, 0, 21, 5, 22, 9, 23, 24, 25];
    let got = t
        .get_or_compute_batch(&mixed, 4, squares(&batches))
        .unwrap();
    assert_eq!(
        got,
        mixed.iter().map(|&i| u64::from(i * i)).collect::<Vec<_>>()
    );
    assert_eq!(
        *batches.lock().unwrap(),
        [vec![20, 21, 22, 23], vec![24, 25]],
        "only the 6 new items, in order"
    );
    let err = t
        .get_or_compute_batch(&items, 0, squares(&batches))
        .unwrap_err();
    assert!(err.to_string().contains("batch_size is 0"), "{err}");
}

pub fn a_failed_batch_stores_nothing_and_keeps_earlier_batches(store: Store) {
    let t = store.task("conf.batch.fail");
    let items: Vec<u32> = (0..10).collect();
    let calls = AtomicUsize::new(0);
    let err = t
        .get_or_compute_batch(&items, 4, |batch: &[&u32]| {
            if calls.fetch_add(1, Ordering::SeqCst) == 1 {
                return Err("out of GPU memory".to_string());
            }
            Ok(batch.iter().map(|&&i| i).collect())
        })
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::ComputeFailed { .. }), "{msg}");
    assert!(msg.contains("out of GPU memory"), "{msg}");
    assert!(
        msg.contains("batch of 4 item(s) at position(s) 4, 5, 6, 7 of 10"),
        "{msg}"
    );
    for i in 0..4u32 {
        assert!(
            t.entry(&i).unwrap().exists().unwrap(),
            "item {i} of the first batch stays"
        );
    }
    for i in 4..10u32 {
        assert!(
            !t.entry(&i).unwrap().exists().unwrap(),
            "item {i} has no entry"
        );
    }
    // Nothing was recorded as failed: the rerun computes the 6 missing items, and no more.
    let batches = Mutex::new(Vec::new());
    let out = t
        .get_or_compute_batch(&items, 4, |batch: &[&u32]| {
            batches
                .lock()
                .unwrap()
                .push(batch.iter().map(|i| **i).collect::<Vec<_>>());
            Ok::<_, String>(batch.iter().map(|&&i| i).collect())
        })
        .unwrap();
    assert_eq!(out, items);
    assert_eq!(*batches.lock().unwrap(), [vec![4, 5, 6, 7], vec![8, 9]]);
}

pub fn a_wrong_number_of_results_is_refused(store: Store) {
    let t = store.task("conf.batch.length");
    let items: Vec<u32> = (0..5).collect();
    let err = t
        .get_or_compute_batch(&items, 8, |batch: &[&u32]| {
            Ok::<_, String>(batch.iter().skip(1).map(|&&i| i).collect::<Vec<u32>>())
        })
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Invalid(_)), "{msg}");
    assert!(
        msg.contains("returned 4 results for the batch of 5 item(s)"),
        "{msg}"
    );
    assert!(msg.contains("exactly one result per item"), "{msg}");
    for i in &items {
        assert!(
            !t.entry(i).unwrap().exists().unwrap(),
            "nothing committed for {i}"
        );
    }
}

pub fn equal_items_are_computed_once_and_modes_apply(store: Store) {
    let t = store.task("conf.batch.modes");
    let batches = Mutex::new(Vec::new());
    let items = [3u32, 1, 3, 3, 2, 1];
    let out = t
        .get_or_compute_batch(&items, 10, squares(&batches))
        .unwrap();
    assert_eq!(out, [9, 1, 9, 9, 4, 1]);
    assert_eq!(
        *batches.lock().unwrap(),
        [vec![3, 1, 2]],
        "each distinct item once"
    );

    batches.lock().unwrap().clear();
    let forced = t.clone().mode(Mode::Force);
    forced
        .get_or_compute_batch(&items, 2, squares(&batches))
        .unwrap();
    assert_eq!(sizes(&batches), [2, 1], "force recomputes every item");

    batches.lock().unwrap().clear();
    let read_only = t.clone().mode(Mode::ReadOnly);
    let got = read_only
        .get_or_compute_batch(&[1u32, 7, 8], 10, squares(&batches))
        .unwrap();
    assert_eq!(got, [1, 49, 64]);
    assert_eq!(
        *batches.lock().unwrap(),
        [vec![7, 8]],
        "read-only computes misses"
    );
    assert!(
        !t.entry(&7u32).unwrap().exists().unwrap(),
        "and stores nothing"
    );

    batches.lock().unwrap().clear();
    let off = t.clone().mode(Mode::Off);
    off.get_or_compute_batch(&[1u32, 7], 10, squares(&batches))
        .unwrap();
    assert_eq!(
        *batches.lock().unwrap(),
        [vec![1, 7]],
        "off computes everything"
    );
    assert!(!t.entry(&7u32).unwrap().exists().unwrap());
}

pub fn racing_threads_compute_each_item_once(store: Store) {
    let t = store.task("conf.batch.race");
    let computed: Mutex<HashMap<u32, usize>> = Mutex::new(HashMap::new());
    let lists: [Vec<u32>; 3] = [
        (0..60).collect(),
        (30..90).collect(),
        (0..90).rev().collect(),
    ];
    std::thread::scope(|s| {
        for list in &lists {
            let (t, computed) = (&t, &computed);
            s.spawn(move || {
                let out = t
                    .get_or_compute_batch(list, 8, |batch: &[&u32]| {
                        let mut c = computed.lock().unwrap();
                        for i in batch {
                            *c.entry(**i).or_default() += 1;
                        }
                        drop(c);
                        std::thread::sleep(Duration::from_millis(2));
                        Ok::<_, String>(batch.iter().map(|&&i| i + 1000).collect::<Vec<u32>>())
                    })
                    .unwrap();
                assert_eq!(out, list.iter().map(|i| i + 1000).collect::<Vec<_>>());
            });
        }
    });
    let computed = computed.into_inner().unwrap();
    assert_eq!(computed.len(), 90, "every item computed");
    let twice: Vec<_> = computed.iter().filter(|(_, &n)| n != 1).collect();
    assert!(twice.is_empty(), "items computed more than once: {twice:?}");
}

pub fn items_held_elsewhere_are_waited_for(store: Store) {
    let t = store.task("conf.batch.wait");
    let held = t.key(&2u32).unwrap();
    let Acquire::Won(guard) = store
        .leases()
        .try_acquire(&held, "conf.batch.wait")
        .unwrap()
    else {
        panic!("free lease not acquired");
    };
    let released = Arc::new(AtomicBool::new(false));
    let batches: Mutex<Vec<(Vec<u32>, bool)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            t.get_or_compute_batch(&[1u32, 2, 3], 10, |batch: &[&u32]| {
                batches.lock().unwrap().push((
                    batch.iter().map(|i| **i).collect(),
                    released.load(Ordering::SeqCst),
                ));
                Ok::<_, String>(batch.iter().map(|&&i| i * 10).collect::<Vec<u32>>())
            })
        });
        // The other items are computed while item 2 is held.
        while batches.lock().unwrap().is_empty() {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(100));
        released.store(true, Ordering::SeqCst);
        guard.release().unwrap();
        assert_eq!(waiter.join().unwrap().unwrap(), [10, 20, 30]);
    });
    assert_eq!(
        *batches.lock().unwrap(),
        [(vec![1, 3], false), (vec![2], true)],
        "the held item is computed only once its holder let go"
    );
    let timeout = store
        .task("conf.batch.wait")
        .wait_timeout(Duration::from_millis(50));
    let Acquire::Won(_guard) = store
        .leases()
        .try_acquire(&t.key(&9u32).unwrap(), "x")
        .unwrap()
    else {
        panic!("free lease not acquired");
    };
    let err = timeout
        .get_or_compute_batch(&[9u32], 10, |b: &[&u32]| {
            Ok::<_, String>(b.iter().copied().copied().collect::<Vec<u32>>())
        })
        .unwrap_err();
    assert!(matches!(err, Error::WaitTimeout { .. }), "{err}");
}

pub fn a_panicking_batch_stores_nothing_and_releases_its_leases(store: Store) {
    let t = store.task("conf.batch.panic");
    let items: Vec<u32> = (0..6).collect();
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        t.get_or_compute_batch(&items, 3, |batch: &[&u32]| {
            if *batch[0] == 3 {
                panic!("the model crashed");
            }
            Ok::<_, String>(batch.iter().map(|&&i| i).collect::<Vec<u32>>())
        })
    }));
    assert!(out.is_err(), "the panic reaches the caller");
    let stored: Vec<bool> = items
        .iter()
        .map(|i| t.entry(i).unwrap().exists().unwrap())
        .collect();
    assert_eq!(stored, [true, true, true, false, false, false]);
    for i in &items {
        let key = t.key(i).unwrap();
        let Acquire::Won(g) = store
            .leases()
            .try_acquire(&key, "conf.batch.panic")
            .unwrap()
        else {
            panic!("the lease of item {i} was not released");
        };
        g.release().unwrap();
    }
}
