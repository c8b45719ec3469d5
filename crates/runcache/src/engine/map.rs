//! Parallel map over local threads with compute-once per item and a progress bar.

use std::fmt::Display;
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::task::Task;
use crate::error::Result;

/// Options of [`Task::map_with`].
#[derive(Clone, Debug)]
pub struct MapOptions {
    /// Worker threads (default: number of cores).
    pub threads: Option<usize>,
    /// Show a progress bar on stderr (hidden automatically when stderr is not a terminal).
    pub progress: bool,
}

impl Default for MapOptions {
    fn default() -> Self {
        MapOptions {
            threads: None,
            progress: true,
        }
    }
}

impl Task {
    /// Computes (or loads) `f(item)` for every item, in parallel on local threads, and returns
    /// the results in the order of `items`. Each item is its own entry keyed by the item; among
    /// all threads and processes, each missing entry is computed once.
    pub fn map<I, T, E, F>(&self, items: &[I], f: F) -> Vec<Result<T>>
    where
        I: Serialize + Sync,
        T: Serialize + DeserializeOwned + Send,
        E: Display,
        F: Fn(&I) -> std::result::Result<T, E> + Sync,
    {
        self.map_with(items, &MapOptions::default(), f)
    }

    /// [`Task::map`] with options.
    pub fn map_with<I, T, E, F>(&self, items: &[I], options: &MapOptions, f: F) -> Vec<Result<T>>
    where
        I: Serialize + Sync,
        T: Serialize + DeserializeOwned + Send,
        E: Display,
        F: Fn(&I) -> std::result::Result<T, E> + Sync,
    {
        let bar = if options.progress {
            indicatif::ProgressBar::new(items.len() as u64)
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} {msg} ({eta} left)",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(self.namespace.clone());
        let started = std::time::Instant::now();
        let computed = AtomicU64::new(0);
        let running = AtomicU64::new(0);
        let failed = AtomicU64::new(0);
        let run = || {
            items
                .par_iter()
                .map(|item| {
                    let r = self.get_or_compute(item, || {
                        running.fetch_add(1, Ordering::Relaxed);
                        let out = f(item);
                        running.fetch_sub(1, Ordering::Relaxed);
                        if out.is_ok() {
                            computed.fetch_add(1, Ordering::Relaxed);
                        }
                        out
                    });
                    let failures = failed.load(Ordering::Relaxed) + u64::from(r.is_err());
                    if r.is_err() {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    bar.inc(1);
                    let done = bar.position();
                    let c = computed.load(Ordering::Relaxed);
                    bar.set_message(format!(
                        "completed {c}, cached {}, running {}, failed {failures}, queued {}",
                        done.saturating_sub(c).saturating_sub(failures),
                        running.load(Ordering::Relaxed),
                        items.len() as u64 - done
                    ));
                    r
                })
                .collect::<Vec<_>>()
        };
        let out = match options.threads {
            Some(n) => match rayon::ThreadPoolBuilder::new().num_threads(n).build() {
                Ok(pool) => pool.install(run),
                Err(_) => run(),
            },
            None => run(),
        };
        bar.finish_and_clear();
        if options.progress {
            let c = computed.load(Ordering::Relaxed);
            let k = failed.load(Ordering::Relaxed);
            eprintln!(
                "runcache: {}: computed {c}, loaded {} from cache, failed {k} in {:.1} s",
                self.namespace,
                (items.len() as u64).saturating_sub(c).saturating_sub(k),
                started.elapsed().as_secs_f64()
            );
        }
        out
    }
}
