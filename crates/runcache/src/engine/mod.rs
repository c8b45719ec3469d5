//! The engine: stores, tasks, entries and the compute-once protocol, on top of any [`Backend`].
//!
//! [`Backend`]: crate::store::Backend

mod batch;
mod context;
mod entry;
mod maintenance;
mod map;
mod mapped;
mod mode;
mod store;
mod sweep;
mod task;

pub use context::Context;
pub use entry::Entry;
pub use maintenance::{
    GcOptions, GcReport, NamespaceUsage, Progress, Usage, VerifyProblem, VerifyReport, TEMP_GRACE,
};
pub use map::MapOptions;
pub use mapped::BlobData;
pub use mode::{Mode, Validator, LOG_ARTIFACT};
pub(crate) use store::unix_ms;
pub use store::{EntryInfo, Store, StoreOptions};
pub use sweep::{
    settles_item, ItemState, ItemStatus, SweepRecord, SweepRef, SweepStatus, MAX_SWEEP_ID,
    SWEEP_FORMAT,
};
pub use task::{Claim, Failure, ManifestRead, Task, ValueCodec};
