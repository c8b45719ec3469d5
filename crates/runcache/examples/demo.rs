//! The README demo: an expensive computation runs once; every later call, in this process or
//! any other, loads the result from the store.
//!
//! Run it twice to see the second run load everything from the cache:
//! `cargo run --release --example demo`

use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Parameters of a Monte-Carlo estimate; they are the cache key.
#[derive(Serialize)]
struct Estimate {
    samples: u64,
    seed: u64,
}

#[derive(Serialize, Deserialize, Debug)]
struct Result {
    pi: f64,
    samples: u64,
}

/// Deliberately expensive: estimates pi from `samples` pseudo-random points.
fn estimate_pi(p: &Estimate) -> Result {
    let mut state = p.seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let inside = (0..p.samples)
        .filter(|_| {
            let (x, y) = (next(), next());
            x * x + y * y <= 1.0
        })
        .count() as u64;
    Result {
        pi: 4.0 * inside as f64 / p.samples as f64,
        samples: p.samples,
    }
}

fn main() -> runcache::Result<()> {
    env_logger_lite();
    let store = runcache::Store::open_default()?;
    println!("store: {}", store.location());
    let task = store.task("demo.estimate_pi").version("1");

    let params = Estimate {
        samples: 300_000_000,
        seed: 7,
    };
    let entry = task.entry(&params)?;
    let first_was_cached = entry.exists()?;

    let t = Instant::now();
    let r: Result = task.get_or_compute(&params, || {
        println!(
            "computing pi from {} samples (expensive)...",
            params.samples
        );
        Ok::<_, String>(estimate_pi(&params))
    })?;
    let first = t.elapsed();
    println!(
        "first call:  pi = {:.6}  in {:>10.3} ms  ({})",
        r.pi,
        first.as_secs_f64() * 1e3,
        if first_was_cached {
            "loaded from the store: an earlier run computed it"
        } else {
            "computed and stored"
        }
    );

    let t = Instant::now();
    let n = 1000;
    for _ in 0..n {
        let again: Result = task.get_or_compute(&params, || {
            Err::<Result, _>("never runs: the entry is stored")
        })?;
        assert_eq!(again.pi, r.pi);
    }
    let hit = t.elapsed() / n;
    println!(
        "cached call: pi = {:.6}  in {:>10.3} ms  (hit, mean of {n})",
        r.pi,
        hit.as_secs_f64() * 1e3
    );
    if !first_was_cached {
        println!(
            "speed-up: {:.0}x. Run the demo again: the first call is now a hit too.",
            first.as_secs_f64() / hit.as_secs_f64()
        );
    }
    println!(
        "key {}; inspect it with `runcache show {}`",
        entry.key(),
        &entry.key().to_hex()[..12]
    );
    Ok(())
}

/// Prints the engine's warnings (e.g. a damaged entry being recomputed) without a logger crate.
fn env_logger_lite() {
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, m: &log::Metadata) -> bool {
            m.level() <= log::Level::Warn
        }
        fn log(&self, r: &log::Record) {
            if self.enabled(r.metadata()) {
                eprintln!("{}: {}", r.level(), r.args());
            }
        }
        fn flush(&self) {}
    }
    static LOGGER: Stderr = Stderr;
    let _ = log::set_logger(&LOGGER).map(|()| log::set_max_level(log::LevelFilter::Warn));
}
