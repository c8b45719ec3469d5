//! The local-directory store (the embedded default), also correct on shared filesystems such as
//! NFS: every write goes to a temporary file in the destination directory and is published by a
//! `rename` (replace) or a `link` (first writer wins). No SQLite, no flock.
//!
//! Layout under the root:
//! ```text
//! RUNCACHE-STORE.json     format marker
//! .gitignore              keeps results out of version control
//! blobs/ab/<64 hex>       content-addressed blobs (ab = first two hex digits)
//! manifests/ab/<64 hex>.json
//! used/ab/<64 hex>        last-use stamp (unix ms as text)
//! leases/ab/<64 hex>/     lease generation files (see docs/lease-protocol.md)
//! records/<kind>/<name>   small named documents (replaced by rename, like manifests)
//! tmp/                    scratch space for artifacts being produced
//! ```
//!
//! NFS notes (see docs/shared-filesystems.md): existence is decided by the result of `open`,
//! `link` or `rename`, which revalidate with the server (close-to-open), never by a cached
//! `stat` followed by an action. A store initialized with `runcache init --shared GROUP` gives
//! every file and directory it creates that group and group read/write ([`super::sharing`]).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::sharing::{self, Sharing};
use super::{
    check_record_kind, check_record_name, Backend, BlobInfo, BlobReader, PollWatch, Stray, Watch,
};
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::key::Key;
use crate::lease::FsLeases;
use crate::lease::LeaseBackend;

mod marker;
mod walk;

use marker::check_or_create_marker;
pub use marker::{init_store, MARKER_FILE};

use walk::list_sharded;
pub use walk::FOREIGN_GRACE_FACTOR;

/// Blobs at least this large are hashed while they are written.
const OVERLAP_THRESHOLD: usize = 8 << 20;

/// A store in a directory on a local or shared filesystem.
#[derive(Debug)]
pub struct LocalBackend {
    root: PathBuf,
    sync: bool,
    leases: Arc<FsLeases>,
    sharing: Option<Sharing>,
    /// Whether `blob_path` hands out the blob files (mapping, verify-once reads).
    files: bool,
    /// `<root>/manifests/` as bytes: the prefix of every manifest path, so that a hit's stat
    /// path is assembled on the stack without allocating (see `manifest_fingerprint`).
    manifests_prefix: Vec<u8>,
}

impl LocalBackend {
    /// Opens (creating if needed) the store at `root`. With `sync`, every file is fsynced before
    /// it is published and its directory after.
    pub fn open(root: impl Into<PathBuf>, sync: bool) -> Result<Self> {
        let root = root.into();
        let sharing = check_or_create_marker(&root)?.sharing();
        let leases = Arc::new(FsLeases::new(root.join("leases")).shared(sharing));
        let mut manifests_prefix = root.join("manifests").into_os_string().into_vec();
        manifests_prefix.push(b'/');
        Ok(LocalBackend {
            root,
            sync,
            leases,
            sharing,
            files: true,
            manifests_prefix,
        })
    }

    /// With `false` (`?mmap=false`), blobs are never handed out as files: nothing is
    /// memory-mapped and every read is a verified copy. For shared filesystems where not every
    /// writer can be trusted to leave blobs alone (a mapped blob edited in place changes under
    /// its reader; one truncated kills it with SIGBUS).
    pub fn mappable(mut self, files: bool) -> Self {
        self.files = files;
        self
    }

    /// The group sharing recorded by `runcache init --shared`, if any.
    pub fn sharing(&self) -> Option<&Sharing> {
        self.sharing.as_ref()
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blob_file(&self, d: &Digest) -> PathBuf {
        sharded(&self.root.join("blobs"), &d.to_hex(), "")
    }

    fn manifest_file(&self, k: &Key) -> PathBuf {
        sharded(&self.root.join("manifests"), &k.to_hex(), ".json")
    }

    fn used_file(&self, k: &Key) -> PathBuf {
        sharded(&self.root.join("used"), &k.to_hex(), "")
    }

    /// [`Backend::manifest_fingerprint`] through `fs::metadata` (paths too long for the stack
    /// buffer).
    fn manifest_fingerprint_std(&self, key: &Key) -> Result<Option<[u64; 5]>> {
        let path = self.manifest_file(key);
        match fs::metadata(&path) {
            Ok(m) => Ok(Some(fingerprint(
                m.dev(),
                m.ino(),
                m.size(),
                (m.mtime(), m.mtime_nsec()),
                (m.ctime(), m.ctime_nsec()),
            ))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    /// `records/<kind>`; the caller has checked `kind`.
    fn records_dir(&self, kind: &str) -> PathBuf {
        self.root.join("records").join(kind)
    }

    /// Writes `data` to `dest` through a temp file in the same directory, then publishes it.
    /// Returns false when `replace` is false and `dest` already exists.
    /// With `read_only` (blobs) the file loses its write bits before it gets its name.
    fn publish(&self, dest: &Path, data: &[u8], replace: bool, read_only: bool) -> Result<bool> {
        let dir = dest.parent().expect("store paths have a parent");
        let tmp = temp_path(dir);
        let mut f = create_in(self.sharing.as_ref(), dir, &tmp)?;
        sharing::share_file(self.sharing.as_ref(), &f, &tmp);
        let written = f
            .write_all(data)
            .and_then(|()| if self.sync { f.sync_all() } else { Ok(()) })
            .and_then(|()| if read_only { seal(&f) } else { Ok(()) });
        drop(f);
        if let Err(e) = written {
            // A full disk, say: leave no temp file behind.
            let _ = fs::remove_file(&tmp);
            return Err(Error::io(&tmp, e));
        }
        self.publish_file(&tmp, dest, replace)
    }

    /// Publishes an already written temp file at `dest` (rename or link), removing the temp.
    fn publish_file(&self, tmp: &Path, dest: &Path, replace: bool) -> Result<bool> {
        let published = if replace {
            if let Err(e) = fs::rename(tmp, dest) {
                let _ = fs::remove_file(tmp);
                return Err(Error::io(dest, e));
            }
            true
        } else {
            let linked = match fs::hard_link(tmp, dest) {
                Ok(()) => true,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
                Err(e) => {
                    let _ = fs::remove_file(tmp);
                    return Err(Error::io(dest, e));
                }
            };
            let _ = fs::remove_file(tmp);
            linked
        };
        if self.sync && published {
            sync_dir(dest.parent().expect("store paths have a parent"))?;
        }
        Ok(published)
    }
}

/// Drops every write bit of an open file: blobs are immutable, and a read-only mode keeps tools
/// and people from editing one in place (0444 with the usual umask; 0440 in a group-shared
/// store). Root and the owner can still change it: this guards against accidents, not attacks.
fn seal(f: &File) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = f.metadata()?.permissions().mode();
    f.set_permissions(fs::Permissions::from_mode(mode & 0o7555 & !0o222))
}

/// The manifest path of `key` (`<prefix>ab/<64 hex>.json`, `prefix` ending in `/`) as a
/// NUL-terminated string in `buf`, or `None` if it does not fit or `prefix` holds a NUL.
fn manifest_c_path<'b>(prefix: &[u8], key: &Key, buf: &'b mut [u8]) -> Option<&'b std::ffi::CStr> {
    let n = prefix.len();
    let end = n + 3 + 64 + ".json".len();
    if end >= buf.len() || prefix.contains(&0) {
        return None;
    }
    buf[..n].copy_from_slice(prefix);
    hex::encode_to_slice(key.0.as_bytes(), &mut buf[n + 3..n + 67]).expect("64 digits fit");
    buf.copy_within(n + 3..n + 5, n);
    buf[n + 2] = b'/';
    buf[n + 67..end].copy_from_slice(b".json");
    buf[end] = 0;
    std::ffi::CStr::from_bytes_with_nul(&buf[..=end]).ok()
}

/// A manifest's fingerprint: device, inode, size, and the modification and change times
/// (seconds, nanoseconds) folded into one number each.
fn fingerprint(dev: u64, ino: u64, size: u64, mtime: (i64, i64), ctime: (i64, i64)) -> [u64; 5] {
    let time = |(s, ns): (i64, i64)| (s as u64).wrapping_mul(1_000_000_000) ^ ns as u64;
    [dev, ino, size, time(mtime), time(ctime)]
}

/// `base/ab/<hex><suffix>`.
fn sharded(base: &Path, hex: &str, suffix: &str) -> PathBuf {
    base.join(&hex[..2]).join(format!("{hex}{suffix}"))
}

/// A unique temp name in `dir` ([`walk::temp_name`]: it names this host and process); names
/// starting with `.tmp-` are never listed as content.
fn temp_path(dir: &Path) -> PathBuf {
    dir.join(walk::temp_name())
}

/// Creates `path` exclusively, creating `dir` first if needed.
fn create_in(share: Option<&Sharing>, dir: &Path, path: &Path) -> Result<File> {
    let open = || OpenOptions::new().write(true).create_new(true).open(path);
    match open() {
        Ok(f) => Ok(f),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            sharing::create_dir_all(share, dir).at(dir)?;
            open().at(path)
        }
        Err(e) => Err(Error::io(path, e)),
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// Reads a small file whole, or `None` if it does not exist. Unlike `fs::read` it does not stat
/// the file first (manifests are read on every hit: one syscall less).
fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    use std::io::Read;
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    let mut out = Vec::with_capacity(2048);
    file.take(MAX_DOCUMENT + 1).read_to_end(&mut out).at(path)?;
    if out.len() as u64 > MAX_DOCUMENT {
        return Err(Error::Malformed {
            what: "store file",
            path: path.display().to_string(),
            message: format!(
                "larger than {} MiB; manifests, stamps and records are small documents",
                MAX_DOCUMENT >> 20
            ),
        });
    }
    Ok(Some(out))
}

/// Writes a usage stamp: creates the file, or overwrites an existing one in place (shortening
/// it only if the old text was longer). Never truncates it to zero first, as `fs::write` does:
/// ext4 flushes a file truncated to zero when it is closed (`auto_da_alloc`), which made every
/// re-stamp of an entry used before (a fresh process's first hits) a disk write. A reader
/// racing the write may see a mix of old and new digits, as it could see an empty file before:
/// a garbled stamp only loses recency.
fn write_stamp(path: &Path, text: &[u8], share: Option<&Sharing>) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let old_len = f.metadata()?.len();
    f.write_all_at(text, 0)?;
    if old_len > text.len() as u64 {
        f.set_len(text.len() as u64)?;
    }
    if old_len == 0 {
        sharing::share_file(share, &f, path);
    }
    Ok(())
}

/// Longest manifest, usage stamp or record read (a huge file at such a name is damage, never
/// read whole).
const MAX_DOCUMENT: u64 = 256 << 20;

fn remove_optional(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}

fn age_seconds(meta: &fs::Metadata) -> Option<u64> {
    let mtime = SystemTime::UNIX_EPOCH + Duration::new(meta.mtime().max(0) as u64, 0);
    SystemTime::now()
        .duration_since(mtime)
        .ok()
        .map(|d| d.as_secs())
}

impl Backend for LocalBackend {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn has_blob(&self, digest: &Digest) -> Result<bool> {
        // open() revalidates with an NFS server (close-to-open); a stat() may answer from an
        // attribute cache seconds old, e.g. for a blob another host's gc just removed.
        Ok(self.blob_size(digest)?.is_some())
    }

    fn put_blob(&self, digest: &Digest, data: &[u8]) -> Result<()> {
        let dest = self.blob_file(digest);
        if reuse_existing(&dest, data.len() as u64) {
            return Ok(());
        }
        self.publish(&dest, data, true, true).map(|_| ())
    }

    fn put_blob_hashing(&self, data: &[u8]) -> Result<Digest> {
        if data.len() < OVERLAP_THRESHOLD {
            let digest = Digest::of(data);
            self.put_blob(&digest, data)?;
            return Ok(digest);
        }
        // Hash on one core while this thread writes the temp file; name it when both are done.
        let dir = self.root.join("tmp");
        let tmp = temp_path(&dir);
        let (digest, written) = std::thread::scope(|s| {
            let hasher = s.spawn(|| Digest::of_single_threaded(data));
            let written = (|| -> Result<()> {
                let mut f = create_in(self.sharing.as_ref(), &dir, &tmp)?;
                sharing::share_file(self.sharing.as_ref(), &f, &tmp);
                f.write_all(data).at(&tmp)?;
                if self.sync {
                    f.sync_all().at(&tmp)?;
                }
                seal(&f).at(&tmp)
            })();
            (hasher.join().expect("hashing does not panic"), written)
        });
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        let dest = self.blob_file(&digest);
        if reuse_existing(&dest, data.len() as u64) {
            let _ = fs::remove_file(&tmp);
            return Ok(digest);
        }
        let shard = dest.parent().expect("sharded");
        sharing::create_dir_all(self.sharing.as_ref(), shard).at(shard)?;
        self.publish_file(&tmp, &dest, true)?;
        Ok(digest)
    }

    fn put_blob_file(&self, digest: &Digest, path: &Path) -> Result<()> {
        let size = fs::metadata(path).at(path)?.len();
        let dest = self.blob_file(digest);
        if reuse_existing(&dest, size) {
            return Ok(());
        }
        let dir = dest.parent().expect("sharded");
        sharing::create_dir_all(self.sharing.as_ref(), dir).at(dir)?;
        let tmp = temp_path(dir);
        // Prefer moving the scratch file (same filesystem); copy otherwise.
        if fs::rename(path, &tmp).is_err() {
            fs::copy(path, &tmp).at(&tmp)?;
        }
        // The scratch file has its creator's umask mode: share it before it gets its name.
        sharing::share_path(self.sharing.as_ref(), &tmp);
        let f = File::open(&tmp).at(&tmp)?;
        if self.sync {
            f.sync_all().at(&tmp)?;
        }
        seal(&f).at(&tmp)?;
        drop(f);
        self.publish_file(&tmp, &dest, true).map(|_| ())
    }

    fn open_blob(&self, digest: &Digest) -> Result<Option<BlobReader>> {
        let path = self.blob_file(digest);
        match File::open(&path) {
            Ok(f) => Ok(Some(Box::new(f))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        let path = self.blob_file(digest);
        match File::open(&path).and_then(|f| f.metadata()) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    fn blob_path(&self, digest: &Digest) -> Option<PathBuf> {
        self.files.then(|| self.blob_file(digest))
    }

    fn delete_blob(&self, digest: &Digest) -> Result<()> {
        remove_optional(&self.blob_file(digest))
    }

    fn list_blobs(&self) -> Result<Vec<BlobInfo>> {
        let mut out = Vec::new();
        for (hex, path) in list_sharded(&self.root.join("blobs"), "")? {
            let Ok(meta) = fs::metadata(&path) else {
                continue;
            };
            out.push(BlobInfo {
                digest: Digest::from_hex(&hex)?,
                size: meta.len(),
                age_s: age_seconds(&meta),
            });
        }
        Ok(out)
    }

    fn put_manifest(&self, key: &Key, bytes: &[u8], replace: bool) -> Result<bool> {
        self.publish(&self.manifest_file(key), bytes, replace, false)
    }

    fn get_manifest(&self, key: &Key) -> Result<Option<Vec<u8>>> {
        read_optional(&self.manifest_file(key))
    }

    fn manifest_fingerprint(&self, key: &Key) -> Result<Option<[u64; 5]>> {
        // Called on every hit: the path is built in a stack buffer (no PathBuf, no hex String)
        // and handed to stat(2) directly. The same fields as the `fs::metadata` fallback.
        let mut buf = [0u8; 512];
        let Some(path) = manifest_c_path(&self.manifests_prefix, key, &mut buf) else {
            return self.manifest_fingerprint_std(key);
        };
        // SAFETY: `path` is NUL-terminated; `st` is a valid out-parameter for the call.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::stat(path.as_ptr(), &mut st) } != 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::NotFound {
                return Ok(None);
            }
            return Err(Error::io(self.manifest_file(key), e));
        }
        Ok(Some(fingerprint(
            st.st_dev as u64,
            st.st_ino as u64,
            st.st_size as u64,
            (st.st_mtime as i64, st.st_mtime_nsec as i64),
            (st.st_ctime as i64, st.st_ctime_nsec as i64),
        )))
    }

    fn delete_manifest(&self, key: &Key) -> Result<()> {
        remove_optional(&self.manifest_file(key))
    }

    fn list_manifests(&self) -> Result<Vec<Key>> {
        list_sharded(&self.root.join("manifests"), ".json")?
            .into_iter()
            .map(|(hex, _)| hex.parse())
            .collect()
    }

    fn list_manifests_page(&self, after: Option<&Key>, limit: usize) -> Result<Vec<Key>> {
        let after = after.map(Key::to_hex);
        walk::list_sharded_page(
            &self.root.join("manifests"),
            ".json",
            after.as_deref(),
            limit,
        )
        .into_iter()
        .map(|hex| hex.parse())
        .collect()
    }

    fn manifest_location(&self, key: &Key) -> String {
        self.manifest_file(key).display().to_string()
    }

    fn touch(&self, key: &Key, unix_ms: u64) -> Result<()> {
        let path = self.used_file(key);
        let dir = path.parent().expect("sharded");
        let write = || write_stamp(&path, unix_ms.to_string().as_bytes(), self.sharing.as_ref());
        match write() {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                sharing::create_dir_all(self.sharing.as_ref(), dir).at(dir)?;
                write().at(&path)
            }
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    fn last_used(&self, key: &Key) -> Result<Option<u64>> {
        // A torn or garbled stamp only loses recency information; treat it as absent.
        Ok(read_optional(&self.used_file(key))?
            .and_then(|b| std::str::from_utf8(&b).ok()?.trim().parse().ok()))
    }

    fn forget_usage(&self, key: &Key) -> Result<()> {
        remove_optional(&self.used_file(key))
    }

    fn leases(&self) -> Arc<dyn LeaseBackend> {
        self.leases.clone()
    }

    fn watch(&self, key: &Key) -> Result<Box<dyn Watch>> {
        let manifest_dir = self.manifest_file(key).parent().unwrap().to_path_buf();
        let lease_dir = self.leases.key_dir(key);
        Ok(
            match InotifyWatch::new(self.sharing.as_ref(), &[manifest_dir, lease_dir]) {
                Some(w) => Box::new(w),
                None => Box::new(PollWatch::default()),
            },
        )
    }

    fn put_record(&self, kind: &str, name: &str, bytes: &[u8]) -> Result<()> {
        check_record_name(kind, name)?;
        // A temp file in the record's directory, renamed over the old record (fsynced, with its
        // directory, when `sync` is on; given the shared group's modes before it is renamed).
        self.publish(&self.records_dir(kind).join(name), bytes, true, false)
            .map(|_| ())
    }

    fn get_record(&self, kind: &str, name: &str) -> Result<Option<Vec<u8>>> {
        check_record_name(kind, name)?;
        read_optional(&self.records_dir(kind).join(name))
    }

    fn list_records(&self, kind: &str) -> Result<Vec<String>> {
        check_record_kind(kind)?;
        let dir = self.records_dir(kind);
        let entries = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            // Something else at the kind's place: reported as a stray, holds no records.
            Err(e) if e.kind() == io::ErrorKind::NotADirectory => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(&dir, e)),
        };
        let mut names = Vec::new();
        for entry in entries.flatten() {
            // Temp files (`.tmp-…`) and anything else that is not a valid record name are not
            // records.
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if check_record_name(kind, &name).is_err() {
                continue;
            }
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    fn delete_record(&self, kind: &str, name: &str) -> Result<bool> {
        check_record_name(kind, name)?;
        let path = self.records_dir(kind).join(name);
        match fs::remove_file(&path) {
            Ok(()) => {
                if self.sync {
                    sync_dir(&self.records_dir(kind))?;
                }
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    fn strays(&self) -> Result<Vec<Stray>> {
        Ok(walk::strays(&self.root, &self.leases))
    }

    fn remove_stray(&self, stray: &Stray) -> Result<()> {
        walk::remove_stray(&self.root, &stray.id)
    }

    fn collect_temp_files(&self, grace: Duration) -> Result<(u64, u64)> {
        Ok(walk::collect_temp_files(&self.root, grace))
    }

    fn scratch_dir(&self) -> PathBuf {
        let dir = self.root.join("tmp");
        if self.sharing.is_some() {
            // Created with the group's modes, so every teammate can make scratch dirs in it.
            let _ = sharing::create_dir_all(self.sharing.as_ref(), &dir);
        }
        dir
    }
}

/// True if `dest` already holds a blob of `size` bytes; refreshes its mtime so that gc's grace
/// period protects a blob that a new entry is about to reference.
///
/// Decided by opening the file, not by a `stat`: on NFS open() revalidates with the server
/// (close-to-open), while a stat may answer from a cache that still shows a blob another host
/// has just removed. The mtime is set to "now" with `UTIME_NOW`, which any user with write
/// access may do (an explicit time needs the owner: a teammate's blob in a shared store would
/// silently keep its old mtime) and which NFS evaluates on the server's clock, the clock gc's
/// ages are measured against. A blob whose times we may not set (a teammate's, in a shared
/// store) is rewritten (same content).
fn reuse_existing(dest: &Path, size: u64) -> bool {
    use std::os::fd::AsRawFd;
    // Blobs are read-only files: opened for reading, their times set as their owner (or root).
    let Ok(f) = File::open(dest) else {
        return false;
    };
    match f.metadata() {
        Ok(m) if m.len() == size => {
            // SAFETY: a valid open descriptor; a null `times` means "both to the current time".
            unsafe { libc::futimens(f.as_raw_fd(), std::ptr::null()) == 0 }
        }
        _ => false,
    }
}

/// Wakes waiters through inotify on the manifest shard and the lease directory. Changes made by
/// other machines on NFS do not raise events; the caller's bounded wait covers that case.
struct InotifyWatch {
    inotify: inotify::Inotify,
}

impl InotifyWatch {
    fn new(share: Option<&Sharing>, dirs: &[PathBuf]) -> Option<Self> {
        use inotify::WatchMask;
        let inotify = inotify::Inotify::init().ok()?;
        let mask = WatchMask::CREATE
            | WatchMask::MOVED_TO
            | WatchMask::DELETE
            | WatchMask::CLOSE_WRITE
            | WatchMask::DELETE_SELF;
        let mut any = false;
        for d in dirs {
            if inotify.watches().add(d, mask).is_err() {
                // The directory may not exist yet: create it so that we can watch it.
                if sharing::create_dir_all(share, d).is_ok()
                    && inotify.watches().add(d, mask).is_ok()
                {
                    any = true;
                }
            } else {
                any = true;
            }
        }
        any.then_some(InotifyWatch { inotify })
    }
}

impl Watch for InotifyWatch {
    fn wait(&mut self, max: Duration) {
        use std::os::fd::AsRawFd;
        let mut pfd = libc::pollfd {
            fd: self.inotify.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = max.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `pfd` is a valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, ms) };
        let mut buf = [0u8; 4096];
        while let Ok(events) = self.inotify.read_events(&mut buf) {
            if events.count() == 0 {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn reusing_a_blob_refreshes_its_mtime_and_a_vanished_one_is_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::open(dir.path().join("s"), false).unwrap();
        let d = Digest::of(b"blob");
        b.put_blob(&d, b"blob").unwrap();
        let path = b.blob_file(&d);
        let old = SystemTime::now() - Duration::from_secs(86_400);
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        b.put_blob(&d, b"blob").unwrap();
        let age = SystemTime::now()
            .duration_since(fs::metadata(&path).unwrap().modified().unwrap())
            .unwrap_or_default();
        assert!(age < Duration::from_secs(60), "mtime refreshed: {age:?}");
        fs::remove_file(&path).unwrap();
        assert!(!b.has_blob(&d).unwrap());
        assert_eq!(b.blob_size(&d).unwrap(), None);
        b.put_blob(&d, b"blob").unwrap();
        assert_eq!(b.blob_size(&d).unwrap(), Some(4));
    }

    #[test]
    fn records_get_the_shared_group_modes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s");
        let gid = fs::metadata(dir.path()).unwrap().gid();
        let s = Sharing::new(gid, 0o664);
        init_store(&root, Some(("test-group", s))).unwrap();
        for sync in [false, true] {
            let b = LocalBackend::open(&root, sync).unwrap();
            assert_eq!(b.sharing(), Some(&s));
            let kind = format!("kind-{sync}");
            b.put_record(&kind, "r", b"one").unwrap();
            b.put_record(&kind, "r", b"two").unwrap();
            let records = root.join("records");
            let dir_meta = fs::metadata(records.join(&kind)).unwrap();
            assert_eq!(dir_meta.mode() & 0o7777, s.dir_mode, "{kind}");
            assert_eq!(dir_meta.gid(), gid);
            let file_meta = fs::metadata(records.join(&kind).join("r")).unwrap();
            assert_eq!(file_meta.mode() & 0o7777, s.file_mode, "{kind}");
            assert_eq!(file_meta.gid(), gid);
            assert_eq!(
                fs::metadata(&records).unwrap().mode() & 0o7777,
                s.dir_mode,
                "created by init"
            );
        }
    }

    #[test]
    fn a_usage_stamp_is_rewritten_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::open(dir.path().join("s"), false).unwrap();
        let k = Key(Digest::of(b"k"));
        assert_eq!(b.last_used(&k).unwrap(), None);
        b.touch(&k, 1_700_000_000_000).unwrap();
        assert_eq!(b.last_used(&k).unwrap(), Some(1_700_000_000_000));
        let ino = fs::metadata(b.used_file(&k)).unwrap().ino();
        b.touch(&k, 1_800_000_000_001).unwrap();
        assert_eq!(b.last_used(&k).unwrap(), Some(1_800_000_000_001));
        b.touch(&k, 42).unwrap();
        assert_eq!(
            b.last_used(&k).unwrap(),
            Some(42),
            "a shorter stamp leaves no old digits"
        );
        assert_eq!(
            fs::metadata(b.used_file(&k)).unwrap().ino(),
            ino,
            "the same file"
        );
    }

    #[test]
    fn the_stack_built_manifest_path_is_the_manifest_file() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::open(dir.path().join("s"), false).unwrap();
        let k = Key(Digest::of(b"k"));
        let mut buf = [0u8; 512];
        let c = manifest_c_path(&b.manifests_prefix, &k, &mut buf).unwrap();
        assert_eq!(c.to_str().unwrap(), b.manifest_file(&k).to_str().unwrap());
        assert!(manifest_c_path(&[b'x'; 600], &k, &mut buf).is_none());
        assert_eq!(b.manifest_fingerprint(&k).unwrap(), None);
        b.put_manifest(&k, b"one", true).unwrap();
        let fp = b.manifest_fingerprint(&k).unwrap();
        assert_eq!(fp, b.manifest_fingerprint_std(&k).unwrap());
        assert!(fp.is_some());
        b.put_manifest(&k, b"two!", true).unwrap();
        assert_ne!(
            b.manifest_fingerprint(&k).unwrap(),
            fp,
            "a replaced file is noticed"
        );
    }

    #[test]
    fn first_manifest_writer_wins_unless_replacing() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::open(dir.path().join("s"), true).unwrap();
        let k = Key(Digest::of(b"k"));
        assert!(b.put_manifest(&k, b"one", false).unwrap());
        assert!(!b.put_manifest(&k, b"two", false).unwrap());
        assert_eq!(b.get_manifest(&k).unwrap().unwrap(), b"one");
        assert!(b.put_manifest(&k, b"three", true).unwrap());
        assert_eq!(b.get_manifest(&k).unwrap().unwrap(), b"three");
        // No temp files are left behind.
        let shard = b.manifest_file(&k).parent().unwrap().to_path_buf();
        assert_eq!(fs::read_dir(shard).unwrap().count(), 1);
    }
}
