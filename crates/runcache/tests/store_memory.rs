//! The conformance suite against the in-memory store.

mod conformance;

#[test]
fn memory_store_conforms() {
    conformance::run_all(&runcache::Store::memory);
}

#[test]
fn named_memory_stores_are_shared_in_process() {
    let a = runcache::Store::open("memory://shared-test").unwrap();
    let b = runcache::Store::open("memory://shared-test").unwrap();
    let v: u32 = a
        .task("t")
        .get_or_compute(&1, || Ok::<_, String>(7))
        .unwrap();
    assert_eq!(v, 7);
    assert!(b.task("t").entry(&1).unwrap().exists().unwrap());
}
