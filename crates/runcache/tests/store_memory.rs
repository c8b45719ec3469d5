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

#[test]
fn validator_rejection_recomputes_and_replaces() {
    use std::sync::Arc;
    let store = runcache::Store::memory();
    let t = store.task("v");
    assert_eq!(t.get_or_compute(&1, || Ok::<_, String>(1u8)).unwrap(), 1);
    let strict = t.clone().validator(Arc::new(|m: &runcache::Manifest| {
        (!m.metadata.contains_key("schema")).then(|| "no schema recorded".to_string())
    }));
    let v: u8 = strict
        .get_or_compute_with(&1, |ctx| {
            ctx.set_metadata("schema", 2).unwrap();
            Ok::<_, String>(2)
        })
        .unwrap();
    assert_eq!(v, 2, "a rejected entry is recomputed");
    assert_eq!(
        strict
            .get_or_compute(&1, || Err::<u8, _>("must hit"))
            .unwrap(),
        2
    );
}
