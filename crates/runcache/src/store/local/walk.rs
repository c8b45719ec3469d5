//! Walking a local store's directories: listing content files, reporting stray objects (one
//! damaged item each, never a failure of the whole walk) and collecting the temporary files of
//! killed writers.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::error::{Error, Result};
use crate::lease::FsLeases;
use crate::store::{check_record_name, Stray};

/// Prefix of every temporary file the local store writes (never listed as content).
pub(super) const TEMP_PREFIX: &str = ".tmp-";

/// Prefix of the scratch directories computations write artifacts into (under `tmp/`).
pub(crate) const ARTIFACTS_PREFIX: &str = "artifacts-";

/// Longest usage stamp (a decimal unix time in ms, 13 digits today).
const MAX_STAMP: u64 = 32;

/// The sharded areas: directory name and the suffix of the files in its shards.
const SHARDED: [(&str, &str); 3] = [("blobs", ""), ("manifests", ".json"), ("used", "")];

/// Temp files and scratch directories whose writer runs on another host (or whose name does not
/// say) are kept this many times the grace period: their writer cannot be asked whether it lives.
pub const FOREIGN_GRACE_FACTOR: u32 = 24;

/// True if `name` is `<64 lowercase hex><suffix>` and starts with `shard`.
fn is_content_name(name: &str, shard: &str, suffix: &str) -> bool {
    name.strip_suffix(suffix).is_some_and(|hex| {
        hex.len() == 64
            && hex.starts_with(shard)
            && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

fn is_shard_name(name: &str) -> bool {
    name.len() == 2 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// True if the entry is a directory itself (a symlink to one is not).
fn is_dir(entry: &fs::DirEntry) -> bool {
    entry.file_type().is_ok_and(|t| t.is_dir())
}

fn is_file(entry: &fs::DirEntry) -> bool {
    entry.file_type().is_ok_and(|t| t.is_file())
}

/// The content files of one shard directory, as (hex, path), unsorted.
fn shard_contents(dir: &Path, shard_name: &str, suffix: &str) -> Vec<(String, PathBuf)> {
    let Ok(files) = fs::read_dir(dir) else {
        return Vec::new();
    };
    files
        .flatten()
        .filter_map(|f| {
            let name = f.file_name();
            let name = name.to_str()?;
            (is_content_name(name, shard_name, suffix) && is_file(&f))
                .then(|| (name[..64].to_string(), f.path()))
        })
        .collect()
}

/// Up to `limit` hex names of `base/<shard>/<64 hex><suffix>` files in key order, the first
/// after `after`: reads only the shard directories it needs (one page of a 10^6-entry store
/// reads one or two directories of ~4 000 names, not the whole store).
pub(super) fn list_sharded_page(
    base: &Path,
    suffix: &str,
    after: Option<&str>,
    limit: usize,
) -> Vec<String> {
    let first_shard = after.map_or(0, |a| u8::from_str_radix(&a[..2], 16).unwrap_or(0));
    let mut out = Vec::new();
    for shard in first_shard..=255 {
        let shard_name = format!("{shard:02x}");
        let mut names: Vec<String> = shard_contents(&base.join(&shard_name), &shard_name, suffix)
            .into_iter()
            .map(|(hex, _)| hex)
            .filter(|hex| after.is_none_or(|a| hex.as_str() > a))
            .collect();
        names.sort_unstable();
        out.extend(names.into_iter().take(limit - out.len()));
        if out.len() >= limit {
            break;
        }
    }
    out
}

/// Lists `base/<shard>/<64 hex><suffix>` regular files, as (hex, path). Anything else (a plain
/// file where a shard belongs, a directory named like a content file, a bad name) is skipped
/// here and reported by [`strays`].
pub(super) fn list_sharded(base: &Path, suffix: &str) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let shards = match fs::read_dir(base) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => return Ok(out),
        Err(e) => return Err(Error::io(base, e)),
    };
    for shard in shards.flatten() {
        let shard_name = shard.file_name();
        let Some(shard_name) = shard_name.to_str().filter(|n| is_shard_name(n)) else {
            continue;
        };
        if !is_dir(&shard) {
            continue;
        }
        out.extend(shard_contents(&shard.path(), shard_name, suffix));
    }
    Ok(out)
}

/// Every object under `root`'s blobs, manifests, usage stamps, leases and records that is not a
/// readable part of the store, with what is wrong with it.
pub(super) fn strays(root: &Path, leases: &FsLeases) -> Vec<Stray> {
    let mut out = Vec::new();
    let mut stray = |path: &Path, problem: &str| {
        out.push(Stray {
            location: path.display().to_string(),
            problem: problem.to_string(),
            id: relative_id(root, path),
        })
    };
    for (area, suffix) in SHARDED {
        let base = root.join(area);
        let Some(shards) = read_area(&base, &mut stray) else {
            continue;
        };
        for shard in shards {
            let name = shard.file_name();
            let shard_name = name.to_str().filter(|n| is_shard_name(n));
            let Some(shard_name) = shard_name.filter(|_| is_dir(&shard)) else {
                stray(
                    &shard.path(),
                    &format!("not a shard directory (two lowercase hex digits) of {area}/"),
                );
                continue;
            };
            let files = match fs::read_dir(shard.path()) {
                Ok(files) => files,
                Err(e) => {
                    stray(&shard.path(), &format!("cannot be listed: {e}"));
                    continue;
                }
            };
            for f in files.flatten() {
                let name = f.file_name();
                if name.as_bytes().starts_with(TEMP_PREFIX.as_bytes()) {
                    continue; // a write in flight, or one collected by gc
                }
                let named = name
                    .to_str()
                    .is_some_and(|n| is_content_name(n, shard_name, suffix));
                if !named {
                    stray(
                        &f.path(),
                        &format!(
                            "not a {} name (64 lowercase hex digits{suffix} starting with its shard)",
                            &area[..area.len() - 1]
                        ),
                    );
                } else if !is_file(&f) {
                    stray(
                        &f.path(),
                        "named like store content but not a regular file (a directory or symlink)",
                    );
                } else if area == "used" && f.metadata().is_ok_and(|m| m.len() > MAX_STAMP) {
                    stray(&f.path(), "too large for a usage stamp (a decimal time)");
                }
            }
        }
    }
    lease_strays(leases, &mut stray);
    let records = root.join("records");
    if let Some(kinds) = read_area(&records, &mut stray) {
        for kind in kinds {
            let kind_name = kind.file_name();
            let ok_kind = kind_name
                .to_str()
                .is_some_and(|k| check_record_name(k, "x").is_ok());
            if !ok_kind || !is_dir(&kind) {
                stray(&kind.path(), "not a record kind directory");
                continue;
            }
            let Ok(names) = fs::read_dir(kind.path()) else {
                continue;
            };
            for r in names.flatten() {
                let name = r.file_name();
                if name.as_bytes().starts_with(TEMP_PREFIX.as_bytes()) {
                    continue;
                }
                let ok_name = name
                    .to_str()
                    .is_some_and(|n| check_record_name("k", n).is_ok());
                if !ok_name || !is_file(&r) {
                    stray(
                        &r.path(),
                        "not a record (a regular file with a record name)",
                    );
                }
            }
        }
    }
    out
}

/// The entries of one area directory; a non-directory at its place is reported.
fn read_area(base: &Path, stray: &mut impl FnMut(&Path, &str)) -> Option<Vec<fs::DirEntry>> {
    match fs::read_dir(base) {
        Ok(rd) => Some(rd.flatten().collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => {
            stray(base, &format!("cannot be listed as a directory: {e}"));
            None
        }
    }
}

fn lease_strays(leases: &FsLeases, stray: &mut impl FnMut(&Path, &str)) {
    let base = leases.dir();
    let Some(shards) = read_area(base, stray) else {
        return;
    };
    let keyed: std::collections::HashSet<PathBuf> = leases
        .key_dirs()
        .unwrap_or_default()
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    for shard in shards {
        let ok = shard.file_name().to_str().is_some_and(is_shard_name) && is_dir(&shard);
        if !ok {
            stray(&shard.path(), "not a shard directory of leases/");
            continue;
        }
        let Ok(dirs) = fs::read_dir(shard.path()) else {
            continue;
        };
        for d in dirs.flatten() {
            if d.file_name().as_bytes().starts_with(TEMP_PREFIX.as_bytes()) {
                continue;
            }
            if !keyed.contains(&d.path()) {
                stray(&d.path(), "not a lease directory (64 lowercase hex digits)");
                continue;
            }
            for (path, problem) in FsLeases::damaged_files(&d.path()) {
                stray(&path, &problem);
            }
        }
    }
}

/// A stray's id: its path relative to the root, as hex of the bytes (names need not be UTF-8).
fn relative_id(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    hex::encode(rel.as_os_str().as_bytes())
}

/// Removes the stray named by `id` (a directory with its content); refuses anything outside the
/// store's content areas.
pub(super) fn remove_stray(root: &Path, id: &str) -> Result<()> {
    let bytes = hex::decode(id).map_err(|_| Error::Invalid(format!("bad stray id `{id}`")))?;
    let rel = Path::new(OsStr::from_bytes(&bytes));
    let mut parts = rel.components();
    let inside = matches!(parts.next(), Some(Component::Normal(a))
        if ["blobs", "manifests", "used", "leases", "records"].contains(&a.to_str().unwrap_or("")))
        && rel.components().all(|c| matches!(c, Component::Normal(_)));
    if !inside {
        return Err(Error::Invalid(format!(
            "refusing to remove {}: not inside the store's content directories",
            rel.display()
        )));
    }
    let path = root.join(rel);
    let removed = match fs::symlink_metadata(&path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(&path),
        Ok(_) => fs::remove_file(&path),
        Err(e) => Err(e),
    };
    match removed {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io(path, e)),
        _ => Ok(()),
    }
}

/// A temp name for a file written by this process: `.tmp-<host>-<pid>-<random hex>`.
pub(super) fn temp_name() -> String {
    let mut r = [0u8; 8];
    getrandom::fill(&mut r).expect("the OS random source works");
    format!(
        "{TEMP_PREFIX}{}-{}-{}",
        crate::host_name(),
        std::process::id(),
        hex::encode(r)
    )
}

/// The writer named by a temp or scratch name `<prefix><host>-<pid>-<hex>` (older engines wrote
/// `<prefix><pid>-<hex>`: host unknown).
fn writer_of(name: &str) -> Option<(Option<&str>, u32)> {
    let rest = name
        .strip_prefix(TEMP_PREFIX)
        .or_else(|| name.strip_prefix(ARTIFACTS_PREFIX))?;
    let (head, _random) = rest.rsplit_once('-')?;
    match head.rsplit_once('-') {
        Some((host, pid)) => Some((Some(host), pid.parse().ok()?)),
        None => Some((None, head.parse().ok()?)),
    }
}

/// Whether a temp item may be removed: older than the grace (by its newest write) and, when its
/// writer is on this host, that process is gone. Writers elsewhere get the longer grace.
fn collectable(name: &str, newest_write: Option<SystemTime>, grace: Duration) -> bool {
    let age = newest_write
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .unwrap_or_default();
    match writer_of(name) {
        Some((Some(host), pid)) if host == crate::host_name() => {
            age > grace && !crate::lease::pid_running(pid)
        }
        _ => age > grace * FOREIGN_GRACE_FACTOR,
    }
}

/// The newest mtime of `path` and, for a directory, of everything under it (symlinks are not
/// followed).
fn newest_write(path: &Path) -> Option<SystemTime> {
    let meta = fs::symlink_metadata(path).ok()?;
    let mut newest = meta.modified().ok()?;
    if meta.is_dir() {
        for e in fs::read_dir(path).ok()?.flatten() {
            if let Some(t) = newest_write(&e.path()) {
                newest = newest.max(t);
            }
        }
    }
    Some(newest)
}

/// Bytes used by `path` (recursively, not following symlinks).
fn size_of(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    fs::read_dir(path)
        .map(|rd| rd.flatten().map(|e| size_of(&e.path())).sum())
        .unwrap_or(0)
}

/// Removes the temp files and scratch directories of killed writers under `root` (see
/// [`collectable`]): in `tmp/`, in the shards of blobs, manifests and usage stamps, in record
/// kinds and at the root. Returns (items removed, bytes freed).
pub(super) fn collect_temp_files(root: &Path, grace: Duration) -> (u64, u64) {
    let mut dirs = vec![root.to_path_buf(), root.join("tmp")];
    for area in ["blobs", "manifests", "used", "records"] {
        if let Ok(rd) = fs::read_dir(root.join(area)) {
            dirs.extend(rd.flatten().filter(is_dir).map(|e| e.path()));
        }
    }
    let (mut n, mut bytes) = (0, 0);
    for dir in dirs {
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            let in_tmp = dir.ends_with("tmp");
            let temp = name.starts_with(TEMP_PREFIX)
                || (in_tmp && name.starts_with(ARTIFACTS_PREFIX) && is_dir(&e));
            if !temp || !collectable(name, newest_write(&e.path()), grace) {
                continue;
            }
            let size = size_of(&e.path());
            let removed = if is_dir(&e) {
                fs::remove_dir_all(e.path())
            } else {
                fs::remove_file(e.path())
            };
            match removed {
                Ok(()) => {
                    n += 1;
                    bytes += size;
                }
                Err(err) => log::warn!("could not remove {}: {err}", e.path().display()),
            }
        }
    }
    (n, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_say_who_wrote_them() {
        let name = temp_name();
        let (host, pid) = writer_of(&name).unwrap();
        assert_eq!(host, Some(crate::host_name().as_str()));
        assert_eq!(pid, std::process::id());
        assert_eq!(writer_of(".tmp-123-abcd"), Some((None, 123)));
        assert_eq!(
            writer_of(".tmp-my-host.lan-42-ab"),
            Some((Some("my-host.lan"), 42))
        );
        assert_eq!(writer_of("artifacts-h-7-00"), Some((Some("h"), 7)));
        assert_eq!(writer_of(".tmp-garbage"), None);
    }
}
