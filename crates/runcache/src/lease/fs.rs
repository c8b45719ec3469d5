//! Leases on a local or shared (NFS) directory, with nothing but `link()`, `rename()` and
//! `O_EXCL` — no `flock`, no SQLite. See `docs/lease-protocol.md`.
//!
//! One directory per key, `<dir>/<first 2 hex>/<64 hex>/`, holding:
//!
//! - `g.<n>`: the JSON [`LeaseRecord`] of generation `n`. Written to a unique temp file first and
//!   then `link()`ed to its name, so it appears whole or not at all (never an empty or partial
//!   file), and `link()` fails with `EEXIST` for every claimant but one.
//! - `h.<n>`: the heartbeat counter of generation `n` (decimal), replaced by temp + `rename()`.
//! - `r.<n>`: marker that generation `n` was released by its owner.
//! - `t.<random>`: temp files in flight.
//!
//! The highest `n` among `g.*`/`r.*` is the current generation; it is free if `r.<n>` exists.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, ErrorKind, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use super::identity::random_hex;
use super::{LeaseBackend, LeaseRecord, LeaseState};
use crate::error::{Error, IoContext, Result};
use crate::key::Key;
use crate::store::sharing::{self, Sharing};

/// How often a read retries when the files it listed vanish under it (a concurrent takeover or
/// clean) before giving up with an error.
const READ_RETRIES: usize = 100;

/// Temp files older than this are garbage left by killed processes; [`FsLeases::clean`] removes
/// them. Far longer than any in-flight write.
const STALE_TEMP_AGE: Duration = Duration::from_secs(3600);

/// Longest lease record (or heartbeat) file read; anything longer is damage.
const MAX_RECORD_BYTES: u64 = 64 << 10;

/// The [`LeaseBackend`] of the local and shared-filesystem stores.
#[derive(Clone, Debug)]
pub struct FsLeases {
    dir: PathBuf,
    sharing: Option<Sharing>,
}

/// What one listing of a key directory found.
#[derive(Debug, Default)]
struct Listing {
    gens: BTreeSet<u64>,
    beats: BTreeSet<u64>,
    releases: BTreeSet<u64>,
    temps: Vec<String>,
}

impl Listing {
    /// The current generation: highest `g.n` or `r.n` (0 if none).
    fn current(&self) -> u64 {
        let g = self.gens.last().copied().unwrap_or(0);
        let r = self.releases.last().copied().unwrap_or(0);
        g.max(r)
    }
}

enum Name {
    Gen(u64),
    Beat(u64),
    Release(u64),
    Temp,
}

fn parse_name(name: &str) -> Option<Name> {
    if name.starts_with("t.") {
        return Some(Name::Temp);
    }
    let (kind, num) = name.split_once('.')?;
    let n: u64 = num.parse().ok()?;
    if n.to_string() != num {
        return None;
    }
    match kind {
        "g" => Some(Name::Gen(n)),
        "h" => Some(Name::Beat(n)),
        "r" => Some(Name::Release(n)),
        _ => None,
    }
}

/// Parses the bytes of `g.<n>` (read from `path`, named in errors).
fn parse_record(bytes: &[u8], path: &Path, n: u64) -> Result<LeaseRecord> {
    let malformed = |message: String| Error::Malformed {
        what: "lease record",
        path: path.display().to_string(),
        message,
    };
    if bytes.len() as u64 > MAX_RECORD_BYTES {
        return Err(malformed(format!(
            "larger than {MAX_RECORD_BYTES} bytes; a lease record is a small JSON document"
        )));
    }
    let record: LeaseRecord =
        serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string()))?;
    if record.generation != n {
        return Err(malformed(format!(
            "the record says generation {} but the file is generation {n}",
            record.generation
        )));
    }
    Ok(record)
}

/// What is wrong with a lease file, without its path (the caller names it).
fn short(e: Error) -> String {
    match e {
        Error::Malformed { what, message, .. } => format!("malformed {what}: {message}"),
        other => other.to_string(),
    }
}

/// Removes `path`, ignoring "already gone".
fn remove_quietly(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != ErrorKind::NotFound {
            log::debug!("could not remove {}: {e}", path.display());
        }
    }
}

impl FsLeases {
    /// Leases under `dir`, normally `<store root>/leases`. Nothing is created until a lease is.
    pub fn new(dir: PathBuf) -> Self {
        FsLeases { dir, sharing: None }
    }

    /// These leases with every directory and file created given a group and modes (a store
    /// shared with `runcache init --shared`).
    pub fn shared(mut self, sharing: Option<Sharing>) -> Self {
        self.sharing = sharing;
        self
    }

    /// The root directory of all leases.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory holding `key`'s lease files: `<dir>/<first 2 hex>/<64 hex>/`. The engine
    /// watches it (inotify) to learn promptly that a lease was released or taken over.
    pub fn key_dir(&self, key: &Key) -> PathBuf {
        let hex = key.to_hex();
        self.dir.join(&hex[..2]).join(&hex)
    }

    /// Every `<shard>/<64 hex>` key directory under the lease root; anything else is skipped
    /// here (the local store reports it as a stray).
    pub(crate) fn key_dirs(&self) -> Result<Vec<(Key, PathBuf)>> {
        let mut out = Vec::new();
        let shards = match fs::read_dir(&self.dir) {
            Ok(shards) => shards,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(Error::io(&self.dir, e)),
        };
        for shard in shards.flatten() {
            let shard_name = shard.file_name();
            let Some(shard_name) = shard_name.to_str() else {
                continue;
            };
            if shard_name.len() != 2 || !shard.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let Ok(keys) = fs::read_dir(shard.path()) else {
                continue;
            };
            for entry in keys.flatten() {
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                if !name.starts_with(shard_name) || !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                if let Ok(key) = Key::from_str(name) {
                    if key.to_hex() == name {
                        out.push((key, entry.path()));
                    }
                }
            }
        }
        Ok(out)
    }

    /// The files of one key directory that cannot be read as lease files (an unparsable record
    /// or heartbeat, a name the protocol does not use, a directory), with what is wrong.
    pub(crate) fn damaged_files(dir: &Path) -> Vec<(PathBuf, String)> {
        let mut out = Vec::new();
        let Ok(entries) = fs::read_dir(dir) else {
            return out;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let is_file = entry.file_type().is_ok_and(|t| t.is_file());
            let name = entry.file_name();
            let parsed = name.to_str().and_then(parse_name);
            let problem = match parsed {
                _ if !is_file => {
                    Some("not a regular file; a lease directory holds only lease files".to_string())
                }
                None => Some("not a lease file name (g.N, h.N, r.N or t.*)".to_string()),
                Some(Name::Gen(n)) => Self::read_record(dir, n).err().map(short),
                Some(Name::Beat(n)) => Self::read_beat(dir, n).err().map(short),
                Some(Name::Release(_) | Name::Temp) => None,
            };
            if let Some(p) = problem {
                out.push((path, p));
            }
        }
        out
    }

    /// Lists a key directory. `Ok(None)` if it does not exist. Names only: files that vanish
    /// during the listing are simply missing or present; readers re-list on `ENOENT`.
    fn listing(dir: &Path) -> Result<Option<Listing>> {
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(dir, e)),
        };
        let mut listing = Listing::default();
        for entry in entries {
            let entry = entry.at(dir)?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            match parse_name(name) {
                Some(Name::Gen(n)) => {
                    listing.gens.insert(n);
                }
                Some(Name::Beat(n)) => {
                    listing.beats.insert(n);
                }
                Some(Name::Release(n)) => {
                    listing.releases.insert(n);
                }
                Some(Name::Temp) => listing.temps.push(name.to_string()),
                None => {}
            }
        }
        Ok(Some(listing))
    }

    /// Reads and parses `g.<n>`. `Ok(None)` if it does not exist (any more).
    fn read_record(dir: &Path, n: u64) -> Result<Option<LeaseRecord>> {
        let path = dir.join(format!("g.{n}"));
        // A record is a few hundred bytes: a huge file at its name is damage, not read whole.
        let bytes = match fs::File::open(&path).and_then(|f| {
            use std::io::Read;
            let mut bytes = Vec::new();
            f.take(MAX_RECORD_BYTES + 1).read_to_end(&mut bytes)?;
            Ok(bytes)
        }) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(path, e)),
        };
        parse_record(&bytes, &path, n).map(Some)
    }

    /// Reads `h.<n>`. `Ok(None)` if it does not exist.
    fn read_beat(dir: &Path, n: u64) -> Result<Option<u64>> {
        let path = dir.join(format!("h.{n}"));
        let read = fs::File::open(&path).and_then(|f| {
            use std::io::Read;
            let mut text = String::new();
            f.take(MAX_RECORD_BYTES).read_to_string(&mut text)?;
            Ok(text)
        });
        match read {
            Ok(text) => text.trim().parse().map(Some).map_err(|e| Error::Malformed {
                what: "lease heartbeat",
                path: path.display().to_string(),
                message: format!("{e} (content {text:?})"),
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) if e.kind() == ErrorKind::InvalidData => Err(Error::Malformed {
                what: "lease heartbeat",
                path: path.display().to_string(),
                message: e.to_string(),
            }),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    /// Writes `bytes` to a fresh, uniquely named temp file in `dir` and returns its path.
    fn write_temp(&self, dir: &Path, bytes: &[u8]) -> Result<PathBuf> {
        let path = dir.join(format!("t.{}", random_hex(12)?));
        let result = (|| -> io::Result<()> {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)?;
            sharing::share_file(self.sharing.as_ref(), &file, &path);
            file.write_all(bytes)
        })();
        if let Err(e) = result {
            remove_quietly(&path);
            return Err(Error::io(path, e));
        }
        Ok(path)
    }

    /// Whether the caller still holds generation `n` as `owner`: nothing newer exists, `n` is not
    /// released, and `g.<n>` carries `owner`'s token.
    fn still_owner(dir: &Path, n: u64, owner: &str) -> Result<bool> {
        let Some(listing) = Self::listing(dir)? else {
            return Ok(false);
        };
        if listing.current() > n || listing.releases.contains(&n) {
            return Ok(false);
        }
        Ok(Self::read_record(dir, n)?.is_some_and(|r| r.owner == owner))
    }

    /// Reads the state of the lease in `dir`, and whether any generation file is present
    /// (false once cleaned).
    fn read_dir_state(dir: &Path) -> Result<(LeaseState, bool)> {
        for _ in 0..READ_RETRIES {
            let Some(listing) = Self::listing(dir)? else {
                return Ok((LeaseState::Free { next_generation: 1 }, false));
            };
            let n = listing.current();
            let has_gens = !listing.gens.is_empty();
            if n == 0 || listing.releases.contains(&n) {
                return Ok((
                    LeaseState::Free {
                        next_generation: n + 1,
                    },
                    has_gens,
                ));
            }
            // g.<n> was listed; if it is gone now, a takeover or clean raced us: look again.
            let Some(record) = Self::read_record(dir, n)? else {
                continue;
            };
            let beat = Self::read_beat(dir, n)?.unwrap_or(0);
            return Ok((LeaseState::Held { record, beat }, true));
        }
        Err(Error::io(
            dir,
            io::Error::other("the lease files kept changing while being read"),
        ))
    }
}

impl LeaseBackend for FsLeases {
    fn read(&self, key: &Key) -> Result<LeaseState> {
        Ok(Self::read_dir_state(&self.key_dir(key))?.0)
    }

    fn try_create(&self, key: &Key, record: &LeaseRecord) -> Result<bool> {
        let n = record.generation;
        if n == 0 {
            return Err(Error::Invalid("lease generations start at 1".into()));
        }
        let dir = self.key_dir(key);
        // create_dir_all tolerates concurrent creators (EEXIST on any component is fine).
        sharing::create_dir_all(self.sharing.as_ref(), &dir).at(&dir)?;
        let json = serde_json::to_vec_pretty(record)
            .map_err(|e| Error::Invalid(format!("cannot encode a lease record: {e}")))?;
        let temp = self.write_temp(&dir, &json)?;
        let target = dir.join(format!("g.{n}"));
        let linked = match fs::hard_link(&temp, &target) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                // On NFS a retransmitted LINK can report EEXIST although the first one worked:
                // the temp file's link count tells the truth (see open(2), O_EXCL).
                Ok(fs::metadata(&temp).is_ok_and(|m| m.nlink() == 2))
            }
            Err(e) => match fs::metadata(&temp) {
                Ok(m) if m.nlink() == 2 => Ok(true),
                _ => Err(Error::io(&target, e)),
            },
        };
        remove_quietly(&temp);
        if !linked? {
            return Ok(false);
        }
        // We created g.<n>. If a newer generation (or a release of one) already exists, or n was
        // already released, a slow claimant re-created a generation that a later winner or
        // `clean` had removed: we did not win.
        let listing = Self::listing(&dir)?.unwrap_or_default();
        if listing.current() > n || listing.releases.contains(&n) {
            remove_quietly(&target);
            return Ok(false);
        }
        // The winner of generation n removes everything of older generations.
        let older = |set: &BTreeSet<u64>| set.range(..n).copied().collect::<Vec<_>>();
        for k in older(&listing.gens) {
            remove_quietly(&dir.join(format!("g.{k}")));
        }
        for k in older(&listing.beats) {
            remove_quietly(&dir.join(format!("h.{k}")));
        }
        for k in older(&listing.releases) {
            remove_quietly(&dir.join(format!("r.{k}")));
        }
        Ok(true)
    }

    fn beat(&self, key: &Key, generation: u64, owner: &str, beat: u64) -> Result<bool> {
        let dir = self.key_dir(key);
        if !Self::still_owner(&dir, generation, owner)? {
            return Ok(false);
        }
        let temp = self.write_temp(&dir, format!("{beat}\n").as_bytes())?;
        let target = dir.join(format!("h.{generation}"));
        if let Err(e) = fs::rename(&temp, &target) {
            remove_quietly(&temp);
            return Err(Error::io(target, e));
        }
        Ok(true)
    }

    fn release(&self, key: &Key, generation: u64, owner: &str) -> Result<bool> {
        let dir = self.key_dir(key);
        if !Self::still_owner(&dir, generation, owner)? {
            return Ok(false);
        }
        let marker = dir.join(format!("r.{generation}"));
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&marker)
        {
            Ok(mut file) => {
                sharing::share_file(self.sharing.as_ref(), &file, &marker);
                // Content is informational only; the marker's existence is what counts.
                let _ = file.write_all(owner.as_bytes());
                Ok(true)
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(Error::io(marker, e)),
        }
    }

    fn list(&self) -> Result<Vec<(Key, LeaseState)>> {
        // One unreadable key directory is reported by `damaged_files` (the store's strays),
        // never a failure of the whole listing.
        let mut out = Vec::new();
        for (key, dir) in self.key_dirs()? {
            match Self::read_dir_state(&dir) {
                Ok((state, true)) => out.push((key, state)),
                Ok((_, false)) => {}
                Err(e) => log::debug!("skipping lease {}: {e}", dir.display()),
            }
        }
        out.sort_by_key(|a| a.0);
        Ok(out)
    }

    fn clean(&self, key: &Key) -> Result<()> {
        let dir = self.key_dir(key);
        let Some(listing) = Self::listing(&dir)? else {
            return Ok(());
        };
        for temp in &listing.temps {
            let path = dir.join(temp);
            let stale = fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age > STALE_TEMP_AGE);
            if stale {
                remove_quietly(&path);
            }
        }
        let n = listing.current();
        if n == 0 || !listing.releases.contains(&n) {
            return Ok(()); // held (or nothing): never touch
        }
        // Keep only r.<n>, so the next claimant still creates n+1 (generations never go back).
        // A concurrent claimant creates n+1 or later, which we do not touch.
        for k in listing.gens.range(..=n) {
            remove_quietly(&dir.join(format!("g.{k}")));
        }
        for k in listing.beats.range(..=n) {
            remove_quietly(&dir.join(format!("h.{k}")));
        }
        for k in listing.releases.range(..n) {
            remove_quietly(&dir.join(format!("r.{k}")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> LeaseRecord {
        LeaseRecord {
            owner: "0123456789abcdef0123456789abcdef".into(),
            generation: 3,
            host: "node-7".into(),
            pid: 4242,
            boot_id: "b".into(),
            process_start: 99,
            ttl_ms: 30_000,
            acquired_unix_ms: 1_700_000_000_000,
            namespace: "fit".into(),
        }
    }

    proptest! {
        // Bounded (256 cases per property): part of every `cargo test` run.
        #[test]
        fn any_record_bytes_parse_or_name_the_file(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Err(e) = parse_record(&bytes, Path::new("/l/g.3"), 3) {
                let malformed = matches!(e, Error::Malformed { .. });
                prop_assert!(malformed, "{}", e);
                prop_assert!(e.to_string().contains("/l/g.3"));
            }
        }

        #[test]
        fn mutated_records_parse_whole_or_not_at_all(pos in 0usize..400, byte in any::<u8>(), cut in 0usize..400) {
            let mut bytes = serde_json::to_vec_pretty(&sample()).unwrap();
            let p = pos % bytes.len();
            bytes[p] = byte;
            bytes.truncate(bytes.len() - cut % bytes.len());
            match parse_record(&bytes, Path::new("/l/g.3"), 3) {
                Ok(r) => prop_assert_eq!(r.generation, 3),
                Err(e) => prop_assert!(e.to_string().contains("/l/g.3")),
            }
        }
    }

    #[test]
    fn a_record_of_another_generation_is_refused() {
        let bytes = serde_json::to_vec(&sample()).unwrap();
        assert!(parse_record(&bytes, Path::new("g.3"), 3).is_ok());
        let err = parse_record(&bytes, Path::new("g.4"), 4).unwrap_err();
        assert!(err.to_string().contains("generation 3"), "{err}");
        let huge = vec![b' '; MAX_RECORD_BYTES as usize + 1];
        let err = parse_record(&huge, Path::new("g.3"), 3).unwrap_err();
        assert!(err.to_string().contains("larger than"), "{err}");
    }
}
