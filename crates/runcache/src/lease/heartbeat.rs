//! The process-wide registry of held leases and the ONE heartbeat thread that serves them all.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once, OnceLock};
use std::time::{Duration, Instant};

use super::{LeaseBackend, LeaseRecord};
use crate::error::Result;
use crate::key::Key;

/// A hook run on SIGINT/SIGTERM before the lease is released.
pub(crate) type InterruptHook = Box<dyn FnOnce() + Send>;

/// The shared state of one held lease (owned by its `LeaseGuard`, the registry and, while it
/// beats, the heartbeat thread).
pub(crate) struct Held {
    pub key: Key,
    pub record: LeaseRecord,
    backend: Arc<dyn LeaseBackend>,
    interval: Duration,
    lost: AtomicBool,
    /// When the next beat is due, in nanoseconds since [`epoch`].
    next_due: AtomicU64,
    /// Serializes beats and the release; `true` once released.
    state: Mutex<HeldState>,
    hook: Mutex<Option<InterruptHook>>,
}

struct HeldState {
    released: bool,
    beat: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fixed origin for the `next_due` atomics.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn nanos_since_epoch(t: Instant) -> u64 {
    t.saturating_duration_since(epoch()).as_nanos() as u64
}

impl Held {
    /// Wraps a freshly won lease and registers it with the heartbeat thread (and, through
    /// [`super::signals::install`], with the SIGINT/SIGTERM handling).
    pub(crate) fn register(
        key: Key,
        record: LeaseRecord,
        backend: Arc<dyn LeaseBackend>,
        interval: Duration,
    ) -> Arc<Held> {
        let interval = interval.max(Duration::from_millis(1));
        let held = Arc::new(Held {
            key,
            record,
            backend,
            interval,
            lost: AtomicBool::new(false),
            next_due: AtomicU64::new(nanos_since_epoch(Instant::now() + interval)),
            state: Mutex::new(HeldState {
                released: false,
                beat: 0,
            }),
            hook: Mutex::new(None),
        });
        super::signals::install();
        let reg = registry();
        lock(&reg.held).push(held.clone());
        ensure_thread();
        reg.wake.notify_all();
        held
    }

    pub(crate) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    pub(crate) fn set_hook(&self, hook: InterruptHook) {
        *lock(&self.hook) = Some(hook);
    }

    /// Runs the interrupt hook if one is set (at most once), containing any panic.
    pub(crate) fn run_hook(&self) {
        let hook = lock(&self.hook).take();
        if let Some(hook) = hook {
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(hook)).is_err() {
                log::error!("the interrupt hook of the lease on {} panicked", self.key);
            }
        }
    }

    /// Publishes one heartbeat. On "not ours any more" marks the lease lost and stops beating.
    fn beat_once(&self) {
        let mut state = lock(&self.state);
        if state.released {
            return;
        }
        let next = state.beat + 1;
        match self
            .backend
            .beat(&self.key, self.record.generation, &self.record.owner, next)
        {
            Ok(true) => state.beat = next,
            Ok(false) => {
                self.lost.store(true, Ordering::SeqCst);
                log::warn!(
                    "lost the lease on {} (generation {}): another process took it over; \
                     this computation may be duplicated",
                    self.key,
                    self.record.generation
                );
            }
            Err(e) => log::warn!(
                "could not heartbeat the lease on {}: {e}; will retry",
                self.key
            ),
        }
        drop(state);
        self.next_due.store(
            nanos_since_epoch(Instant::now() + self.interval),
            Ordering::SeqCst,
        );
        if self.is_lost() {
            unregister(self);
        }
    }

    /// Releases the lease (once; later calls are no-ops returning `Ok(true)`). Returns whether
    /// we still held it. Stops the heartbeat in any case.
    pub(crate) fn release(&self) -> Result<bool> {
        let mut state = lock(&self.state);
        let result = if state.released {
            Ok(true)
        } else {
            state.released = true;
            if self.is_lost() {
                Ok(false)
            } else {
                self.backend
                    .release(&self.key, self.record.generation, &self.record.owner)
            }
        };
        drop(state);
        if matches!(result, Ok(false)) {
            self.lost.store(true, Ordering::SeqCst);
        }
        unregister(self);
        result
    }
}

struct Registry {
    held: Mutex<Vec<Arc<Held>>>,
    wake: Condvar,
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| Registry {
        held: Mutex::new(Vec::new()),
        wake: Condvar::new(),
    })
}

fn unregister(held: &Held) {
    lock(&registry().held).retain(|h| !std::ptr::eq(Arc::as_ptr(h), held));
}

/// The leases this process currently holds (for the signal handler).
pub(crate) fn live() -> Vec<Arc<Held>> {
    lock(&registry().held).clone()
}

/// Starts the heartbeat thread once per process.
fn ensure_thread() {
    static STARTED: Once = Once::new();
    STARTED.call_once(|| {
        std::thread::Builder::new()
            .name("runcache-heartbeat".into())
            .spawn(heartbeat_loop)
            .expect("cannot start the runcache heartbeat thread");
    });
}

fn heartbeat_loop() {
    let reg = registry();
    let mut held = lock(&reg.held);
    loop {
        if held.is_empty() {
            held = reg.wake.wait(held).unwrap_or_else(|e| e.into_inner());
            continue;
        }
        let now = nanos_since_epoch(Instant::now());
        let due: Vec<Arc<Held>> = held
            .iter()
            .filter(|h| h.next_due.load(Ordering::SeqCst) <= now)
            .cloned()
            .collect();
        if due.is_empty() {
            let earliest = held
                .iter()
                .map(|h| h.next_due.load(Ordering::SeqCst))
                .min()
                .unwrap_or(now);
            let wait = Duration::from_nanos(earliest.saturating_sub(now));
            held = reg
                .wake
                .wait_timeout(held, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            continue;
        }
        drop(held);
        for h in due {
            h.beat_once();
        }
        held = lock(&reg.held);
    }
}
