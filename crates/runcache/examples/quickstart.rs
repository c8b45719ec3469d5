//! The README's quickstart, kept compiling. Run: `cargo run --example quickstart`.

use runcache::{Mode, Store};

fn expensive_fit() -> f64 {
    (0..1_000_000).map(|i| (i as f64).sqrt()).sum()
}

fn load_dataset() -> Vec<u8> {
    vec![7u8; 1 << 20]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = Store::open_default()?; // ./.runcache, or $RUNCACHE_STORE
    let fit = store.task("myproj.fit").version("2"); // bump the version when the code changes

    // Computes once; every later call with the same arguments loads the stored result.
    let score: f64 =
        fit.get_or_compute(&("ridge", 0.1, 42), || Ok::<_, String>(expensive_fit()))?;

    // Per-call modes: cached (default) | force | retry | read-only | off
    let again: f64 = fit
        .clone()
        .mode(Mode::Force)
        .get_or_compute(&("ridge", 0.1, 42), || Ok::<_, String>(expensive_fit()))?;
    assert_eq!(score, again);

    // Large inputs enter the key by digest, hashed on all cores without copying.
    let data: Vec<u8> = load_dataset();
    let key = fit.key(&(runcache::key::Buffer(&data), 0.1))?;
    println!("key of the dataset call: {key}");

    // Artifacts and metadata from inside a computation; dependencies are recorded automatically.
    let n: u64 = fit.get_or_compute_with(&"report", |ctx| {
        std::fs::write(ctx.artifact_path("report.txt")?, "side effect")?;
        ctx.set_metadata("rows", 1234)?;
        Ok::<_, Box<dyn std::error::Error>>(1234)
    })?;
    assert_eq!(n, 1234);

    // Inspect an entry; map over many items in parallel with a progress bar.
    let entry = fit.entry(&"report")?;
    println!("{:?} {:?}", entry.status()?, entry.artifacts()?);
    let squares: Vec<runcache::Result<u64>> = fit.map(&[1u64, 2, 3], |x| Ok::<_, String>(x * x));
    println!("{:?}", squares);
    Ok(())
}
