//! runcache: make every expensive computation run once and be reused everywhere after.
//!
//! ```no_run
//! # fn main() -> runcache::Result<()> {
//! let store = runcache::Store::open_default()?;            // ./.runcache or $RUNCACHE_STORE
//! let fit = store.task("demo.fit").version("1");
//! let score: f64 = fit.get_or_compute(&("ridge", 0.1), || -> Result<f64, String> {
//!     Ok(42.0) // expensive work runs once; later calls (any process) load the result
//! })?;
//! # Ok(()) }
//! ```
//!
//! Modules, from the bottom up: [`digest`] (BLAKE3 digests), [`key`] (canonical key encoding),
//! [`manifest`] (what an entry records), [`store`] (backends: local directory, memory),
//! [`lease`] (compute-once leases), [`file_digest`] (file contents by fingerprint), the engine
//! ([`Store`], [`Task`], [`Entry`]) and, on top of it, [`run`] (caching shell commands).

#![warn(missing_docs)]

pub mod digest;
mod engine;
pub mod error;
pub mod file_digest;
pub mod key;
pub mod lease;
pub mod manifest;
pub mod run;
pub mod signing;
pub mod store;

pub use digest::Digest;
pub use engine::{
    settles_item, BlobData, Claim, Context, Entry, EntryInfo, Failure, GcOptions, GcReport,
    ItemState, ItemStatus, ManifestRead, MapOptions, Mode, NamespaceUsage, Progress, Store,
    StoreOptions, SweepRecord, SweepRef, SweepStatus, Task, Usage, Validator, ValueCodec,
    VerifyProblem, VerifyReport, LOG_ARTIFACT, MAX_SWEEP_ID, SWEEP_FORMAT, TEMP_GRACE,
};
pub use error::{Error, Result};
pub use key::Key;
pub use manifest::{Manifest, Status};
pub use signing::SigningKey;

/// This machine's host name (used in manifests and lease records).
pub fn host_name() -> String {
    // Read once per process: it is written into every manifest and lease record.
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| gethostname::gethostname().to_string_lossy().into_owned())
        .clone()
}
