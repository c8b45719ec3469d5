//! Compute-once leases: a claim on one key with an owner token, a fencing generation, a TTL and a
//! background heartbeat (DESIGN.md §5).
//!
//! Backends implement the small atomic primitives of [`LeaseBackend`]; everything else (liveness
//! judged on the observer's monotonic clock, takeover, heartbeat thread, signal handling) is
//! generic and lives in this module.

use std::fmt::Debug;

mod fs;
mod heartbeat;
mod identity;
mod manager;
mod memory;
mod signals;

#[cfg(test)]
pub(crate) mod conformance;

pub use fs::FsLeases;
pub use manager::{Acquire, LeaseGuard, LeaseOptions, LeaseView, Leases};
pub use memory::MemoryLeases;
pub use signals::disable_signal_handling;

pub(crate) use identity::pid_running;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::key::Key;

/// What a lease holder writes when it claims a key. Immutable for the life of the generation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// Random 128-bit owner token (hex); release and heartbeat check it.
    pub owner: String,
    /// Fencing generation: strictly increasing per key; exactly one claimant wins each.
    pub generation: u64,
    /// Host name of the holder.
    pub host: String,
    /// Process id of the holder.
    pub pid: u32,
    /// Linux boot id of the holder's machine ("" if unknown); guards same-host pid checks.
    pub boot_id: String,
    /// Start time of the holder process in clock ticks since boot (0 if unknown); guards pid reuse.
    pub process_start: u64,
    /// How long an observer waits without seeing a heartbeat before judging the holder dead.
    pub ttl_ms: u64,
    /// Wall-clock time of acquisition (display only; never compared across hosts).
    pub acquired_unix_ms: u64,
    /// Namespace of the task (display only).
    pub namespace: String,
}

/// The state of one key's lease as a backend reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseState {
    /// Nobody holds it; a claimant must create `next_generation`.
    Free {
        /// The generation the next claimant must create.
        next_generation: u64,
    },
    /// Someone holds it.
    Held {
        /// The holder's record.
        record: LeaseRecord,
        /// The holder's heartbeat counter; observers watch it change.
        beat: u64,
    },
}

/// The atomic primitives a store backend provides for leases.
pub trait LeaseBackend: Send + Sync + Debug {
    /// Reads the current state of `key`'s lease.
    fn read(&self, key: &Key) -> Result<LeaseState>;
    /// Atomically creates generation `record.generation` for `key`. Returns false if that
    /// generation already exists (someone else won). Must never overwrite.
    fn try_create(&self, key: &Key, record: &LeaseRecord) -> Result<bool>;
    /// Publishes heartbeat `beat` for the holder. Returns false if `owner` no longer holds
    /// `generation` (taken over or released).
    fn beat(&self, key: &Key, generation: u64, owner: &str, beat: u64) -> Result<bool>;
    /// Releases `generation` if `owner` still holds it. Returns false if it did not.
    fn release(&self, key: &Key, generation: u64, owner: &str) -> Result<bool>;
    /// All keys with lease state (held or released-but-not-cleaned).
    fn list(&self) -> Result<Vec<(Key, LeaseState)>>;
    /// Removes the bookkeeping of a released lease (used by gc). Never touches a held lease.
    fn clean(&self, key: &Key) -> Result<()>;
    /// Whether the holder of `generation`, last read at heartbeat `beat`, had been silent for
    /// longer than its TTL by a single clock every observer shares (a database server's
    /// `now()`), as of the last `read`. `None` (the default) when the backend has no such clock
    /// or no judgement for that exact (generation, beat): the manager then relies on its own
    /// monotonic clock alone. A holder is judged dead if either says so.
    fn expired(&self, key: &Key, generation: u64, beat: u64) -> Result<Option<bool>> {
        let _ = (key, generation, beat);
        Ok(None)
    }
}
