//! Large local blobs, verified once per machine.
//!
//! A large blob on a local filesystem is mapped read-only (or read whole). Its digest is checked
//! the first time this machine maps or reads that file; the check is remembered by the file's identity
//! (device, inode, size, mtime, ctime) as an empty marker file under `/dev/shm` (a tmpfs: the
//! memory does not survive a reboot, and the directory name carries the boot id as well). Later
//! maps of the same unchanged file, in any process of the same user, cost one `stat`; later full
//! reads cost the copy alone. Any change to the file changes its ctime, hence its identity.

use std::fs::{self, File};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use memmap2::Mmap;

use crate::digest::Digest;
use crate::error::{IoContext, Result};

/// Bytes of a blob: owned (read and verified) or mapped (verified once per machine).
#[derive(Debug)]
pub enum BlobData {
    /// Read into memory.
    Owned(Vec<u8>),
    /// Mapped read-only from the store's file.
    Mapped(Mmap),
}

impl std::ops::Deref for BlobData {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            BlobData::Owned(v) => v,
            BlobData::Mapped(m) => m,
        }
    }
}

impl BlobData {
    /// True if the bytes are a read-only mapping of the store's file.
    pub fn is_mapped(&self) -> bool {
        matches!(self, BlobData::Mapped(_))
    }
}

/// What a mapped file turned out to be.
pub(crate) enum MapOutcome {
    /// Mapped and verified (now or earlier on this machine).
    Ok(Mmap),
    /// The file is missing.
    Missing,
    /// The file is there but damaged.
    Damaged(String),
}

/// Maps `path` read-only and verifies it against `digest`/`size` unless this machine already did.
pub(crate) fn map_verified(path: &Path, digest: &Digest, size: u64) -> Result<MapOutcome> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(MapOutcome::Missing),
        Err(e) => return Err(crate::Error::io(path, e)),
    };
    let meta = file.metadata().at(path)?;
    if meta.len() != size {
        return Ok(MapOutcome::Damaged(format!(
            "size is {} bytes, the manifest says {size}",
            meta.len()
        )));
    }
    // SAFETY: blobs are immutable once published (a new version is a new file by rename), so
    // the mapping's content does not change under us; it is only read.
    let map = unsafe { Mmap::map(&file) }.at(path)?;
    let marker = marker_path(digest, &meta);
    if marker.as_ref().is_some_and(|m| m.exists()) {
        return Ok(MapOutcome::Ok(map));
    }
    if Digest::of(&map) != *digest {
        return Ok(MapOutcome::Damaged(
            "content does not match its digest".into(),
        ));
    }
    if let Some(m) = marker {
        let _ = File::create(m);
    }
    Ok(MapOutcome::Ok(map))
}

/// Reads `path` whole. Its digest is checked while it is read unless this machine already
/// verified this file identity (mapped or read earlier); a successful check is remembered.
pub(crate) fn read_verified(
    path: &Path,
    digest: &Digest,
    size: u64,
    read_and_hash: impl FnOnce(File, u64) -> std::io::Result<(Vec<u8>, Digest)>,
) -> Result<ReadOutcome> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ReadOutcome::Missing),
        Err(e) => return Err(crate::Error::io(path, e)),
    };
    let meta = file.metadata().at(path)?;
    if meta.len() != size {
        return Ok(ReadOutcome::Damaged(format!(
            "size is {} bytes, the manifest says {size}",
            meta.len()
        )));
    }
    advise_sequential(&file, size);
    let marker = marker_path(digest, &meta);
    if marker.as_ref().is_some_and(|m| m.exists()) {
        use std::io::Read;
        let mut data = vec![0u8; size as usize];
        let complete =
            file.read_exact(&mut data).is_ok() && file.read(&mut [0u8; 1]).at(path)? == 0;
        if !complete {
            return Ok(ReadOutcome::Damaged(
                "the file changed while it was read".into(),
            ));
        }
        return Ok(ReadOutcome::Ok(data));
    }
    let (data, found) = read_and_hash(file, size).at(path)?;
    if data.len() as u64 != size {
        return Ok(ReadOutcome::Damaged(format!(
            "size is {} bytes, the manifest says {size}",
            data.len()
        )));
    }
    if found != *digest {
        return Ok(ReadOutcome::Damaged(
            "content does not match its digest".into(),
        ));
    }
    if let Some(m) = marker {
        let _ = File::create(m);
    }
    Ok(ReadOutcome::Ok(data))
}

/// What a verified read found.
pub(crate) enum ReadOutcome {
    /// The bytes, verified (now or earlier on this machine).
    Ok(Vec<u8>),
    /// The file is missing.
    Missing,
    /// The file is there but damaged.
    Damaged(String),
}

/// The marker recording that this file identity was verified, if a private tmpfs dir exists.
fn marker_path(digest: &Digest, meta: &fs::Metadata) -> Option<PathBuf> {
    let dir = verified_dir()?;
    Some(dir.join(format!(
        "{}-{}-{}-{}-{}.{}-{}.{}",
        &digest.to_hex()[..32],
        meta.dev(),
        meta.ino(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec()
    )))
}

/// `/dev/shm/runcache-verified-<uid>-<boot id>`, created private to this user; `None` if there
/// is no tmpfs or the directory is not ours (then every map is verified).
fn verified_dir() -> Option<&'static Path> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        if !shm.is_dir() {
            return None;
        }
        let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        let dir = shm.join(format!("runcache-verified-{uid}-{}", boot.trim()));
        let _ = fs::DirBuilder::new().mode(0o700).create(&dir);
        let meta = fs::symlink_metadata(&dir).ok()?;
        let private = meta.is_dir() && meta.uid() == uid && meta.mode() & 0o077 == 0;
        private.then_some(dir)
    })
    .as_deref()
}

/// Tells the kernel that `file` is about to be read once, start to end: a doubled readahead
/// window, and the first [`WILLNEED_BYTES`] queued for reading at once (a cold read starts with
/// the disk already busy instead of one small synchronous readahead).
///
/// The buffer a large blob is read into is deliberately *not* given `MADV_HUGEPAGE`: a huge-page
/// fault zeroes 2 MiB at a time from free memory the allocator may first have to compact or
/// (in a VM that returns free memory to its host) have the host back again, and on this bench
/// machine that made a 1 GiB read 2-3x slower than plain 4 KiB faults (bench/README.md,
/// "Large-blob I/O").
pub(crate) fn advise_sequential(file: &File, size: u64) {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let ahead = size.min(WILLNEED_BYTES) as libc::off_t;
    // SAFETY: a valid open descriptor; posix_fadvise only changes caching hints.
    unsafe {
        libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_SEQUENTIAL);
        libc::posix_fadvise(fd, 0, ahead, libc::POSIX_FADV_WILLNEED);
    }
}

/// How much of a large blob [`advise_sequential`] asks the kernel to start reading at once.
const WILLNEED_BYTES: u64 = 32 << 20;
