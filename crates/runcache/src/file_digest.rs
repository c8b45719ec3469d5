//! Content digests of files, remembered by (device, inode, size, mtime, ctime) so an unchanged
//! file is not re-read: in this process (a map) and across processes of this user on this boot
//! (small files under `/dev/shm/runcache-files-<uid>-<boot_id>/`, a private 0700 directory).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::digest::{Digest, StreamHasher, PARALLEL_HASH_THRESHOLD};

/// What identifies one version of a file's content without reading it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct Fingerprint {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Fingerprint {
    fn of(m: &fs::Metadata) -> Self {
        Fingerprint {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        }
    }

    fn file_name(&self) -> String {
        format!(
            "{}-{}-{}-{}-{}",
            self.dev, self.ino, self.size, self.mtime_ns, self.ctime_ns
        )
    }

    /// A file changed less than this long ago may change again within the same timestamp
    /// granularity without its fingerprint changing ("racy" fingerprint): its digest is used
    /// but not remembered.
    fn is_racy(&self) -> bool {
        const RACY_NS: i128 = 1_000_000_000;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        now - self.mtime_ns.max(self.ctime_ns) < RACY_NS
    }
}

static MEMORY: OnceLock<Mutex<HashMap<Fingerprint, Digest>>> = OnceLock::new();
static HITS: AtomicU64 = AtomicU64::new(0);
static DISK_HITS: AtomicU64 = AtomicU64::new(0);
static MISSES: AtomicU64 = AtomicU64::new(0);

fn memory() -> &'static Mutex<HashMap<Fingerprint, Digest>> {
    MEMORY.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Counters since the process started: `(memory hits, disk hits, files read)`.
pub fn stats() -> (u64, u64, u64) {
    (
        HITS.load(Ordering::Relaxed),
        DISK_HITS.load(Ordering::Relaxed),
        MISSES.load(Ordering::Relaxed),
    )
}

/// Forgets the in-process digests (tests use it to exercise the on-disk cache).
pub fn clear_memory() {
    memory().lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// The private on-disk cache directory, if it can be used safely.
fn disk_dir() -> Option<&'static Path> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        let dir = PathBuf::from(format!("/dev/shm/runcache-files-{uid}-{}", boot.trim()));
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(_) => return None,
        }
        // Only a directory we own, private to us, is trusted (no symlink, no other writer).
        let m = fs::symlink_metadata(&dir).ok()?;
        if !m.is_dir() || m.uid() != uid || m.permissions().mode() & 0o077 != 0 {
            return None;
        }
        Some(dir)
    })
    .as_deref()
}

fn disk_get(fp: &Fingerprint) -> Option<Digest> {
    let path = disk_dir()?.join(fp.file_name());
    let mut buf = [0u8; 33];
    let mut f = File::open(path).ok()?;
    let n = f.read(&mut buf).ok()?;
    (n == 32).then(|| Digest::from_bytes(buf[..32].try_into().expect("32 bytes")))
}

fn disk_put(fp: &Fingerprint, digest: &Digest) {
    let Some(dir) = disk_dir() else { return };
    let name = fp.file_name();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let write = || -> io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(digest.as_bytes())?;
        fs::rename(&tmp, dir.join(&name))
    };
    if write().is_err() {
        let _ = fs::remove_file(&tmp);
    }
}

/// Streams the file's content through BLAKE3 (memory-mapped and multi-threaded when large).
fn hash_open_file(f: &File, size: u64) -> io::Result<(Digest, u64)> {
    if size >= PARALLEL_HASH_THRESHOLD as u64 {
        // SAFETY: the map is read-only and dropped before returning; a concurrent writer can
        // only make the digest stale, which the fingerprint re-check below detects.
        let map = unsafe { memmap2::Mmap::map(f)? };
        return Ok((Digest::of(&map), map.len() as u64));
    }
    StreamHasher::digest_reader(f)
}

/// The BLAKE3 digest and length of the file's content, from the caches when its fingerprint
/// is known. It may read a large file (hosts with a global lock should release it first).
pub fn file_digest(path: &Path) -> io::Result<(Digest, u64)> {
    let f = File::open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ));
    }
    let fp = Fingerprint::of(&meta);
    if let Some(d) = memory().lock().unwrap_or_else(|e| e.into_inner()).get(&fp) {
        HITS.fetch_add(1, Ordering::Relaxed);
        return Ok((*d, fp.size));
    }
    if let Some(d) = disk_get(&fp) {
        DISK_HITS.fetch_add(1, Ordering::Relaxed);
        memory()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(fp, d);
        return Ok((d, fp.size));
    }
    MISSES.fetch_add(1, Ordering::Relaxed);
    let (digest, len) = hash_open_file(&f, fp.size)?;
    // Remember only if the file did not change while it was read and is not "racy".
    let after = Fingerprint::of(&f.metadata()?);
    if after == fp && len == fp.size && !fp.is_racy() {
        memory()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(fp, digest);
        disk_put(&fp, &digest);
    }
    Ok((digest, len))
}
