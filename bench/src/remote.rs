//! Section 6, remote stores: small-argument hit latency and storing/loading a large result
//! against the loopback S3 server (moto) and PostgreSQL, next to the local store, in one run.
//! A remote store whose test service is not running (`RUNCACHE_TEST_S3`,
//! `RUNCACHE_TEST_POSTGRES`, exported by `scripts/services/*`) is skipped with a note.

use std::path::Path;
use std::time::Instant;

use runcache::Store;

use crate::{gbs, median, size_str, Report, Res};

/// A unique suffix for prefixes and schemas.
fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("bench_{}_{nanos}", std::process::id())
}

/// The stores to compare: name and location.
fn locations(local_dir: &Path) -> Vec<(&'static str, Option<String>)> {
    let s3 = std::env::var("RUNCACHE_TEST_S3").ok().map(|base| {
        let (target, query) = base.split_once('?').unwrap_or((&base, ""));
        format!("{}/{}?{query}", target.trim_end_matches('/'), unique())
    });
    let pg = std::env::var("RUNCACHE_TEST_POSTGRES").ok().map(|base| {
        let sep = if base.contains('?') { '&' } else { '?' };
        format!("{base}{sep}schema={}", unique())
    });
    vec![
        (
            "local",
            Some(local_dir.join("remote-local").display().to_string()),
        ),
        ("s3 (moto, loopback)", s3),
        ("postgres (loopback)", pg),
    ]
}

/// Runs the remote rows; `size` is the large result's size.
pub fn bench_remote(size: usize, hit_calls: usize, local_dir: &Path, rep: &mut Report) -> Res<()> {
    println!(
        "\n== 6. remote stores: hit latency (small args) and a {} result, next to local",
        size_str(size)
    );
    let big: Vec<u8> = (0..size)
        .map(|i| (i as u32).wrapping_mul(2654435761) as u8)
        .collect();
    let mut local: Option<(f64, f64, f64)> = None;
    for (name, loc) in locations(local_dir) {
        let Some(loc) = loc else {
            println!(
                "   {name:<22} skipped: its test service is not running (scripts/bench starts it)"
            );
            continue;
        };
        let store = Store::open(&loc)?;
        let task = store.task("bench.remote");
        let _: u64 = task.get_or_compute(&(1u64, "small"), || Ok::<_, String>(1))?;
        let calls = hit_calls.min(5_000);
        let mut hits = Vec::with_capacity(calls);
        for _ in 0..calls {
            let t = Instant::now();
            let _: u64 = task.get_or_compute(&(1u64, "small"), || Err::<u64, _>("a hit"))?;
            hits.push(t.elapsed().as_secs_f64());
        }
        let hit = median(&mut hits);
        let t = Instant::now();
        let stored = task.get_or_compute_bytes(&("big", name), |_| Ok::<_, String>(big.clone()))?;
        let store_s = t.elapsed().as_secs_f64();
        drop(stored);
        // A fresh handle: the load reads the store, not anything this handle remembers.
        let reader = Store::open(&loc)?;
        let t = Instant::now();
        let loaded = reader
            .task("bench.remote")
            .entry(&("big", name))?
            .load_bytes()?;
        let load_s = t.elapsed().as_secs_f64();
        assert!(loaded == big, "{name}: the loaded result differs");
        println!(
            "   {name:<22} hit {:>9.1} µs   store {:>6.2} GB/s ({:.2} s)   load {:>6.2} GB/s ({:.2} s)",
            hit * 1e6,
            gbs(size, store_s),
            store_s,
            gbs(size, load_s),
            load_s
        );
        match local {
            None => {
                local = Some((hit, store_s, load_s));
                rep.info(
                    format!("6. hit, small args, {name}"),
                    format!("{:.1} µs", hit * 1e6),
                );
                rep.info(
                    format!("6. store {}, {name}", size_str(size)),
                    format!("{:.2} GB/s", gbs(size, store_s)),
                );
                rep.info(
                    format!("6. load {}, {name}", size_str(size)),
                    format!("{:.2} GB/s", gbs(size, load_s)),
                );
            }
            Some((lh, ls, ll)) => {
                rep.ratio(
                    format!("6. hit, small args, {name}"),
                    format!("{:.1} µs", hit * 1e6),
                    format!("local {:.1} µs", lh * 1e6),
                    hit / lh,
                    "(info)",
                    None,
                );
                rep.ratio(
                    format!("6. store {}, {name}", size_str(size)),
                    format!("{:.2} GB/s", gbs(size, store_s)),
                    format!("local {:.2} GB/s", gbs(size, ls)),
                    ls / store_s,
                    "(info)",
                    None,
                );
                rep.ratio(
                    format!("6. load {}, {name}", size_str(size)),
                    format!("{:.2} GB/s", gbs(size, load_s)),
                    format!("local {:.2} GB/s", gbs(size, ll)),
                    ll / load_s,
                    "(info)",
                    None,
                );
            }
        }
    }
    Ok(())
}
