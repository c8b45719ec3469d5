//! runcache: make every expensive computation run once and be reused everywhere after.

pub mod digest;
pub mod error;
pub mod key;
pub mod lease;

pub use digest::Digest;
pub use error::{Error, Result};
pub use key::Key;
