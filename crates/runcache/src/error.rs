//! The engine's error type. Every variant says what went wrong and what to do about it.

use std::path::PathBuf;

/// Result alias used throughout the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in runcache.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O operation on the store failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// An argument could not be encoded into a key.
    #[error("cannot build a key from argument `{path}`: {message}. Fix: leave this argument out of the key (ignore it) or wrap it in a type that serializes deterministically")]
    Unhashable {
        /// Where in the arguments the problem is, e.g. `args.train[3]`.
        path: String,
        /// What went wrong.
        message: String,
    },

    /// A stored file (manifest, key document, marker, lease record) could not be parsed.
    #[error("malformed {what} in {path}: {message}. The file is damaged or was written by another program; `runcache verify --repair` removes damaged entries")]
    Malformed {
        /// What kind of file it is ("manifest", "lease record", ...).
        what: &'static str,
        /// Where it is.
        path: String,
        /// The parser's message.
        message: String,
    },

    /// The store was written by a newer runcache with a format this engine does not know.
    #[error("the store at {path} has format {found}, but this runcache (v{engine}) understands formats up to {supported}. Upgrade runcache to use this store")]
    NewerFormat {
        /// Store root.
        path: String,
        /// Format found in the marker.
        found: u32,
        /// Highest format this engine supports.
        supported: u32,
        /// This engine's version.
        engine: &'static str,
    },

    /// A store location could not be understood or opened.
    #[error("cannot open store `{location}`: {message}")]
    BadStore {
        /// The path or URL given.
        location: String,
        /// Why it failed and what to do.
        message: String,
    },

    /// A blob's content does not match its digest or size.
    #[error("corrupt blob {digest} in entry {key}: {message}. The entry is treated as missing and will be recomputed; `runcache verify --repair` cleans it up")]
    Corrupt {
        /// The entry whose blob is damaged.
        key: String,
        /// The blob's expected digest.
        digest: String,
        /// What was found.
        message: String,
    },

    /// The computation recorded in the store failed earlier.
    #[error("task {namespace} failed earlier for key {key}: {error_type}: {message}. Use mode `retry` (or `force`) to recompute it")]
    RecordedFailure {
        /// Task namespace.
        namespace: String,
        /// Entry key (hex).
        key: String,
        /// Type of the original error.
        error_type: String,
        /// Its message.
        message: String,
    },

    /// The user's computation returned an error.
    #[error("task {namespace} failed: {message}")]
    ComputeFailed {
        /// Task namespace.
        namespace: String,
        /// The error's message.
        message: String,
    },

    /// Waiting for another process to finish the same computation took too long.
    #[error("timed out after {waited:?} waiting for key {key} (held by {holder}). Raise the wait timeout, or check that the holder is still making progress (`runcache leases`)")]
    WaitTimeout {
        /// The entry being waited for.
        key: String,
        /// Who holds the lease.
        holder: String,
        /// How long we waited.
        waited: std::time::Duration,
    },

    /// The entry is not in the store (and the mode forbids computing it).
    #[error("no entry for key {key} in {namespace}{hint}")]
    NotFound {
        /// Task namespace.
        namespace: String,
        /// The key looked up.
        key: String,
        /// Extra advice.
        hint: String,
    },

    /// The store is read-only for this operation.
    #[error("the store {location} is read-only ({reason}); use a writable store or mode `read-only` to only read")]
    ReadOnly {
        /// The store.
        location: String,
        /// Why.
        reason: String,
    },

    /// A stored value could not be decoded into the requested type.
    #[error("cannot decode the value of entry {key} as {type_name}: {message}. The task's result type changed: bump the task's version")]
    Decode {
        /// Entry key (hex).
        key: String,
        /// Requested Rust type.
        type_name: &'static str,
        /// Decoder message.
        message: String,
    },

    /// A signing key is configured and an entry's signature is missing or wrong. A hard error:
    /// the entry is never loaded, never treated as a miss and never overwritten.
    #[error("signature check failed for entry {key} ({location}): {reason}. The entry is refused: it was written without the team key or was modified; delete it with `runcache rm {key}` if you trust nothing in it, or configure the right RUNCACHE_SIGNING_KEY")]
    Signature {
        /// Entry key (hex).
        key: String,
        /// Where its manifest is.
        location: String,
        /// What is wrong with the signature.
        reason: String,
    },

    /// Invalid user input (bad option, bad key prefix, ...).
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// True if the error concerns one stored object that cannot be read as what its name says
    /// (unparsable, too large, a directory or a symlink loop at a file's place): the object is
    /// damaged, the store as a whole is fine. Network and permission errors are not damage.
    pub fn is_object_damage(&self) -> bool {
        match self {
            Error::Malformed { .. } => true,
            Error::Io { source, .. } => {
                matches!(
                    source.raw_os_error(),
                    Some(libc::EISDIR | libc::ENOTDIR | libc::ELOOP | libc::ENAMETOOLONG)
                ) || source.kind() == std::io::ErrorKind::InvalidData
            }
            _ => false,
        }
    }

    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Extension to attach a path to `std::io::Result`.
pub(crate) trait IoContext<T> {
    /// Converts the I/O error into [`Error::Io`] naming `path`.
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
