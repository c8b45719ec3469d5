//! Turning a store location (a path or a URL) into a backend.

use std::path::PathBuf;
use std::sync::Arc;

use super::{Backend, LocalBackend, MemoryBackend};
use crate::error::{Error, Result};

/// Environment variable naming the default store.
pub const STORE_ENV: &str = "RUNCACHE_STORE";

/// The default store location when nothing else is given.
pub const DEFAULT_STORE: &str = ".runcache";

/// Options that a location's query string (`?sync=true`) or the API can set.
#[derive(Clone, Debug, Default)]
pub struct BackendOptions {
    /// fsync files before publishing them and directories after (local stores).
    pub sync: bool,
    /// Never memory-map blobs nor read them as trusted files (`?mmap=false`, local stores).
    pub no_mmap: bool,
}

/// `RUNCACHE_STORE` if set and non-empty, else `./.runcache`.
pub fn default_location() -> String {
    match std::env::var(STORE_ENV) {
        Ok(s) if !s.trim().is_empty() => s,
        _ => DEFAULT_STORE.to_string(),
    }
}

/// Opens the backend named by `location`:
/// - a filesystem path, or `file:///abs/path` — the local-directory store;
/// - `memory://` (private) or `memory://NAME` (shared by name within this process);
/// - `postgres://USER@HOST:PORT/DB?schema=NAME` (or `postgresql://`) — the PostgreSQL store.
///
/// Query parameters: `sync=true|false`, `mmap=true|false` (local stores: `false` never maps
/// blobs and verifies every read, for shared filesystems with writers you cannot trust); on any
/// location, `readonly=true` opens it read-only
/// (see [`super::tiered`]).
pub fn open_backend(location: &str, base: &BackendOptions) -> Result<Arc<dyn Backend>> {
    let (location, read_only) = super::tiered::split_read_only(location)?;
    if read_only {
        return super::tiered::read_only(open_backend(&location, base)?);
    }
    let location = location.as_str();
    #[cfg(feature = "s3")]
    if location.starts_with("s3://") {
        return Ok(Arc::new(super::s3::S3Backend::open(location)?));
    }
    #[cfg(feature = "postgres")]
    if super::postgres::is_postgres_location(location) {
        return super::postgres::open(location, base);
    }
    let (target, query) = match location.split_once('?') {
        Some((t, q)) => (t, q),
        None => (location, ""),
    };
    let mut opts = base.clone();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, "true"));
        match k {
            "sync" => opts.sync = parse_bool(location, k, v)?,
            "mmap" => opts.no_mmap = !parse_bool(location, k, v)?,
            _ => {
                return Err(Error::BadStore {
                    location: location.into(),
                    message: format!("unknown option `{k}`; known options: sync, mmap"),
                })
            }
        }
    }
    if let Some(name) = target.strip_prefix("memory://") {
        return Ok(if name.is_empty() {
            Arc::new(MemoryBackend::new())
        } else {
            MemoryBackend::named(name)
        });
    }
    let path = if let Some(p) = target.strip_prefix("file://") {
        PathBuf::from(p)
    } else if let Some((scheme, _)) = target.split_once("://") {
        return Err(Error::BadStore {
            location: location.into(),
            message: format!(
                "`{scheme}://` stores are not supported by this build; supported: a directory path, file:///path, memory://[NAME]"
            ),
        });
    } else {
        PathBuf::from(target)
    };
    if path.as_os_str().is_empty() {
        return Err(Error::BadStore {
            location: location.into(),
            message: "empty path; give a directory, e.g. ./.runcache".into(),
        });
    }
    Ok(Arc::new(
        LocalBackend::open(path, opts.sync)?.mappable(!opts.no_mmap),
    ))
}

/// A boolean query option (`1`/`true`/`yes`/`on` or `0`/`false`/`no`/`off`).
pub(crate) fn parse_bool(location: &str, key: &str, v: &str) -> Result<bool> {
    match v {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(Error::BadStore {
            location: location.into(),
            message: format!("option `{key}` must be true or false, not `{v}`"),
        }),
    }
}

/// Decodes `%XX` escapes (`+` stays `+`); a bad escape or non-UTF-8 result is an error.
pub(crate) fn percent_decode(s: &str) -> std::result::Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent-escape in `{s}`"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("`{s}` is not UTF-8 once decoded"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_escapes_decode_or_are_refused() {
        assert_eq!(percent_decode("a%41%2Fb+c").unwrap(), "aA/b+c");
        assert!(percent_decode("100%").is_err());
        assert!(percent_decode("%zz").is_err());
        assert!(percent_decode("%ff").is_err(), "not UTF-8 once decoded");
    }
}
