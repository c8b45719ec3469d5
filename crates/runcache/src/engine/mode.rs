//! The vocabulary shared by the engine's upper layers: lookup [`Mode`]s, the entry
//! [`Validator`] type and the name of the captured-log artifact. It sits at the bottom of the
//! engine so that `sweep` and `task` can both use it without importing each other.

use std::str::FromStr;

use crate::error::{Error, Result};
use crate::manifest::Manifest;

/// How a lookup treats the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Load a completed entry; compute and store a missing one; re-raise a recorded failure.
    #[default]
    Cached,
    /// Recompute and replace whatever is stored.
    Force,
    /// Like `Cached`, but recompute an entry that failed.
    Retry,
    /// Load what exists; on a miss compute without writing anything (no entry, no lease).
    ReadOnly,
    /// Bypass the store entirely: always compute, never read or write.
    Off,
}

impl Mode {
    /// The mode's name as used by the CLI and the Python API.
    pub fn as_str(&self) -> &'static str {
        match self {
            Mode::Cached => "cached",
            Mode::Force => "force",
            Mode::Retry => "retry",
            Mode::ReadOnly => "read-only",
            Mode::Off => "off",
        }
    }
}

impl FromStr for Mode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "cached" => Mode::Cached,
            "force" => Mode::Force,
            "retry" => Mode::Retry,
            "read-only" | "readonly" => Mode::ReadOnly,
            "off" => Mode::Off,
            _ => {
                return Err(Error::Invalid(format!(
                    "unknown mode `{s}`; use one of: cached, force, retry, read-only, off"
                )))
            }
        })
    }
}

/// Decides whether a completed entry may still be used; `Some(reason)` makes it a miss that is
/// recomputed and replaced (e.g. a dependency's version changed).
pub type Validator = std::sync::Arc<dyn Fn(&Manifest) -> Option<String> + Send + Sync>;

/// Name of the artifact holding a worker's captured stdout/stderr of one item.
pub const LOG_ARTIFACT: &str = "runcache.log";
