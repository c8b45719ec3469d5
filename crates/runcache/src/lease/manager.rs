//! The generic lease manager: acquire, liveness judged on the observer's monotonic clock,
//! takeover, guards that heartbeat in the background.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::heartbeat::Held;
use super::identity::{self, random_hex};
use super::{LeaseBackend, LeaseRecord, LeaseState};
use crate::error::Result;
use crate::key::Key;

/// How leases are taken and judged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseOptions {
    /// How long an observer waits without seeing a heartbeat change before judging the holder
    /// dead. Written into the record: observers use the holder's value. Default 30 s.
    pub ttl: Duration,
    /// How often the holder heartbeats. Default `ttl / 4`.
    pub heartbeat_every: Duration,
    /// Judge a holder on this same machine (same host name and boot id) dead at once when its
    /// process (pid + start time) is gone, instead of waiting a TTL. Default true.
    pub same_host_liveness: bool,
}

impl Default for LeaseOptions {
    fn default() -> Self {
        Self::with_ttl(Duration::from_secs(30))
    }
}

impl LeaseOptions {
    /// Options with this TTL, heartbeats every `ttl / 4` and same-host liveness on.
    pub fn with_ttl(ttl: Duration) -> Self {
        LeaseOptions {
            ttl,
            heartbeat_every: ttl / 4,
            same_host_liveness: true,
        }
    }
}

/// The outcome of [`Leases::try_acquire`].
#[derive(Debug)]
pub enum Acquire {
    /// We hold the lease: compute, commit, then drop or release the guard.
    Won(LeaseGuard),
    /// A live holder has it: wait for its entry (or for the lease to become free).
    Busy(LeaseRecord),
}

/// What an observer knows about one key's lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseView {
    /// The key.
    pub key: Key,
    /// The holder's record; `None` if the lease is free (released, not yet cleaned).
    pub record: Option<LeaseRecord>,
    /// Whether the holder is judged alive by this observer; `None` if free.
    pub alive: Option<bool>,
    /// The holder's heartbeat counter; `None` if free.
    pub beat: Option<u64>,
    /// How long this observer has seen the same heartbeat (its own monotonic clock). The first
    /// observation starts at zero. `None` if free.
    pub beat_unchanged_for: Option<Duration>,
    /// Wall-clock time since acquisition, for display only (it compares the holder's clock with
    /// ours, so it may be off by their skew; never used for liveness). `None` if free.
    pub held_for: Option<Duration>,
    /// If free, the generation the next claimant will create.
    pub next_generation: Option<u64>,
}

/// What we last saw of a key's holder, and when (our monotonic clock).
#[derive(Clone, Debug)]
struct Observation {
    owner: String,
    generation: u64,
    beat: u64,
    first_seen: Instant,
}

/// The lease manager over one backend. `Send + Sync`; share it behind an `Arc` or a reference.
pub struct Leases {
    backend: Arc<dyn LeaseBackend>,
    options: LeaseOptions,
    observations: Mutex<HashMap<Key, Observation>>,
}

impl fmt::Debug for Leases {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leases")
            .field("backend", &self.backend)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Leases {
    /// A manager over `backend`.
    pub fn new(backend: Arc<dyn LeaseBackend>, options: LeaseOptions) -> Self {
        Leases {
            backend,
            options,
            observations: Mutex::new(HashMap::new()),
        }
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn LeaseBackend> {
        &self.backend
    }

    /// The options.
    pub fn options(&self) -> &LeaseOptions {
        &self.options
    }

    fn observations(&self) -> MutexGuard<'_, HashMap<Key, Observation>> {
        self.observations.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tries once to take `key`'s lease for a computation of task `namespace`.
    ///
    /// Free ⇒ create the next generation. Held by a holder judged dead ⇒ take over by creating
    /// generation + 1 (atomic: exactly one taker wins). Held by a live holder ⇒ `Busy`.
    /// Losing a creation race re-reads the state, so the result is `Won` or `Busy` of the
    /// actual winner.
    pub fn try_acquire(&self, key: &Key, namespace: &str) -> Result<Acquire> {
        loop {
            let generation = match self.backend.read(key)? {
                LeaseState::Free { next_generation } => next_generation,
                LeaseState::Held { record, beat } => {
                    if self.judge(key, &record, beat).0 {
                        return Ok(Acquire::Busy(record));
                    }
                    log::info!(
                        "taking over the lease on {key}: holder {} (pid {}, generation {}) \
                         judged dead",
                        record.host,
                        record.pid,
                        record.generation
                    );
                    record.generation + 1
                }
            };
            let record = self.new_record(generation, namespace)?;
            if self.backend.try_create(key, &record)? {
                self.observations().remove(key);
                let held = Held::register(
                    *key,
                    record,
                    self.backend.clone(),
                    self.options.heartbeat_every,
                );
                return Ok(Acquire::Won(LeaseGuard { held }));
            }
        }
    }

    fn new_record(&self, generation: u64, namespace: &str) -> Result<LeaseRecord> {
        let me = identity::current();
        Ok(LeaseRecord {
            owner: random_hex(16)?,
            generation,
            host: me.host.clone(),
            pid: me.pid,
            boot_id: me.boot_id.clone(),
            process_start: me.process_start,
            ttl_ms: self.options.ttl.as_millis().try_into().unwrap_or(u64::MAX),
            acquired_unix_ms: unix_ms_now(),
            namespace: namespace.to_string(),
        })
    }

    /// Judges a holder: (alive, how long its beat has been unchanged on our clock).
    ///
    /// Never compares clocks across hosts: we remember (owner, generation, beat) and the
    /// `Instant` we first saw it; the holder is dead once that beat has stayed the same for
    /// longer than the record's TTL. A first observation therefore always waits a full TTL.
    /// On the same machine (host and boot id match), a holder whose process is gone is dead at
    /// once, when `same_host_liveness` is on. A backend with a shared clock (PostgreSQL's
    /// `now()`) may also report the holder expired ([`LeaseBackend::expired`]).
    fn judge(&self, key: &Key, record: &LeaseRecord, beat: u64) -> (bool, Duration) {
        let now = Instant::now();
        let unchanged_for = {
            let mut observations = self.observations();
            let same = observations.get(key).is_some_and(|o| {
                o.owner == record.owner && o.generation == record.generation && o.beat == beat
            });
            if !same {
                observations.insert(
                    *key,
                    Observation {
                        owner: record.owner.clone(),
                        generation: record.generation,
                        beat,
                        first_seen: now,
                    },
                );
            }
            now.saturating_duration_since(observations[key].first_seen)
        };
        if self.options.same_host_liveness {
            let me = identity::current();
            if !record.boot_id.is_empty()
                && record.boot_id == me.boot_id
                && record.host == me.host
                && identity::process_alive(record.pid, record.process_start) == Some(false)
            {
                return (false, unchanged_for);
            }
        }
        if let Ok(Some(true)) = self.backend.expired(key, record.generation, beat) {
            return (false, unchanged_for);
        }
        let ttl = Duration::from_millis(record.ttl_ms);
        (unchanged_for <= ttl, unchanged_for)
    }

    fn make_view(&self, key: Key, state: LeaseState) -> LeaseView {
        match state {
            LeaseState::Free { next_generation } => {
                self.observations().remove(&key);
                LeaseView {
                    key,
                    record: None,
                    alive: None,
                    beat: None,
                    beat_unchanged_for: None,
                    held_for: None,
                    next_generation: Some(next_generation),
                }
            }
            LeaseState::Held { record, beat } => {
                let (alive, unchanged) = self.judge(&key, &record, beat);
                LeaseView {
                    key,
                    alive: Some(alive),
                    beat: Some(beat),
                    beat_unchanged_for: Some(unchanged),
                    held_for: Some(Duration::from_millis(
                        unix_ms_now().saturating_sub(record.acquired_unix_ms),
                    )),
                    record: Some(record),
                    next_generation: None,
                }
            }
        }
    }

    /// The lease on `key` as this observer sees it; `None` if nobody holds it. Calling it
    /// repeatedly (as waiters do) feeds the same observations `try_acquire` judges by.
    pub fn view(&self, key: &Key) -> Result<Option<LeaseView>> {
        let view = self.make_view(*key, self.backend.read(key)?);
        Ok(view.record.is_some().then_some(view))
    }

    /// Every lease with state in the backend (held, or released but not yet cleaned), for
    /// `runcache leases`.
    pub fn list(&self) -> Result<Vec<LeaseView>> {
        Ok(self
            .backend
            .list()?
            .into_iter()
            .map(|(key, state)| self.make_view(key, state))
            .collect())
    }
}

/// A held lease. A single process-wide thread heartbeats it while the guard lives; dropping the
/// guard releases it (errors are logged). On SIGINT/SIGTERM the interrupt hook runs and the
/// lease is released before the process dies.
pub struct LeaseGuard {
    held: Arc<Held>,
}

impl fmt::Debug for LeaseGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseGuard")
            .field("key", &self.held.key)
            .field("generation", &self.held.record.generation)
            .field("lost", &self.held.is_lost())
            .finish()
    }
}

impl LeaseGuard {
    /// The key this lease is on.
    pub fn key(&self) -> &Key {
        &self.held.key
    }

    /// The fencing generation we won.
    pub fn generation(&self) -> u64 {
        self.held.record.generation
    }

    /// The record we wrote.
    pub fn record(&self) -> &LeaseRecord {
        &self.held.record
    }

    /// True once a heartbeat (or the release) found that we no longer own the lease (it was
    /// taken over). The computation may then be duplicated; the commit stays correct.
    pub fn is_lost(&self) -> bool {
        self.held.is_lost()
    }

    /// Sets the hook run on SIGINT/SIGTERM before the lease is released (replacing any earlier
    /// one). The engine uses it to record the entry as interrupted.
    pub fn set_interrupt_hook(&self, hook: Box<dyn FnOnce() + Send>) {
        self.held.set_hook(hook);
    }

    /// Releases the lease if we still own it and stops heartbeating. If it had been taken over,
    /// nothing is deleted, [`is_lost`](Self::is_lost) becomes true and `Ok(())` is returned.
    pub fn release(self) -> Result<()> {
        if !self.held.release()? {
            log::warn!(
                "the lease on {} (generation {}) had been taken over before release",
                self.held.key,
                self.held.record.generation
            );
        }
        Ok(())
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if let Err(e) = self.held.release() {
            log::warn!("could not release the lease on {}: {e}", self.held.key);
        }
    }
}
