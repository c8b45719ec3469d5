//! Group sharing of a local (or NFS) store: `runcache init --shared GROUP PATH` records a group
//! and modes in the store marker; from then on every file and directory the local backend (and
//! its leases) creates is given that group and those modes explicitly, whatever the process's
//! umask. Directories also get the setgid bit, so files created by other tools inherit the group.
//!
//! Modes are applied with `fchmod`/`chmod` right after creation by the creating process (the
//! owner), before a file is published under its final name, so a teammate never sees an entry
//! file it cannot read. Failures to change a file someone else owns are ignored: its owner
//! already applied the modes when creating it.

use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, ErrorKind};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::error::{Error, Result};

/// How the files of a shared store are owned and protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sharing {
    /// Group of every file and directory.
    pub gid: u32,
    /// Permission bits of files (e.g. `0o660`).
    pub file_mode: u32,
    /// Permission bits of directories including setgid (e.g. `0o2770`).
    pub dir_mode: u32,
}

impl Sharing {
    /// Sharing with `gid` and `file_mode`; the directory mode adds `x` wherever `file_mode` has
    /// `r`, plus setgid (`0o660` -> `0o2770`, `0o664` -> `0o2775`). The owner and the group
    /// always get read and write.
    pub fn new(gid: u32, file_mode: u32) -> Self {
        let file_mode = (file_mode & 0o666) | 0o660;
        let x = (file_mode & 0o444) >> 2;
        Sharing {
            gid,
            file_mode,
            dir_mode: file_mode | x | 0o2000,
        }
    }

    /// Gives a file just created (and still open) the group and file mode.
    pub fn apply_file(&self, f: &File) -> io::Result<()> {
        let meta = f.metadata()?;
        if meta.gid() != self.gid {
            std::os::unix::fs::fchown(f, None, Some(self.gid))?;
        }
        if meta.mode() & 0o7777 != self.file_mode {
            f.set_permissions(fs::Permissions::from_mode(self.file_mode))?;
        }
        Ok(())
    }

    /// Gives the file or directory at `path` the group and mode (directory mode for
    /// directories). Symbolic links are left alone.
    pub fn apply_path(&self, path: &Path) -> io::Result<()> {
        let meta = fs::symlink_metadata(path)?;
        if meta.file_type().is_symlink() {
            return Ok(());
        }
        if meta.gid() != self.gid {
            std::os::unix::fs::lchown(path, None, Some(self.gid))?;
        }
        let mode = if meta.is_dir() {
            self.dir_mode
        } else {
            self.file_mode
        };
        if meta.mode() & 0o7777 != mode {
            fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
        }
        Ok(())
    }
}

/// Applies `sharing` (if any) to a file just created; errors are logged, not returned: a file
/// we cannot re-mode is still a correct file for us.
pub(crate) fn share_file(sharing: Option<&Sharing>, f: &File, path: &Path) {
    if let Some(s) = sharing {
        if let Err(e) = s.apply_file(f) {
            log::warn!(
                "could not give {} the store's group and mode: {e}",
                path.display()
            );
        }
    }
}

/// Applies `sharing` (if any) to `path`, ignoring "not the owner": a file another user created
/// was shared by its owner.
pub(crate) fn share_path(sharing: Option<&Sharing>, path: &Path) {
    if let Some(s) = sharing {
        match s.apply_path(path) {
            Ok(()) => {}
            Err(e)
                if e.kind() == ErrorKind::PermissionDenied || e.kind() == ErrorKind::NotFound =>
            {
                log::debug!("could not share {}: {e}", path.display())
            }
            Err(e) => log::warn!(
                "could not give {} the store's group and mode: {e}",
                path.display()
            ),
        }
    }
}

/// `fs::create_dir_all`, giving every directory it creates the store's group and mode.
pub(crate) fn create_dir_all(sharing: Option<&Sharing>, dir: &Path) -> io::Result<()> {
    let Some(s) = sharing else {
        return fs::create_dir_all(dir);
    };
    match fs::create_dir(dir) {
        Ok(()) => {
            share_path(Some(s), dir);
            Ok(())
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let Some(parent) = dir.parent() else {
                return Err(e);
            };
            create_dir_all(sharing, parent)?;
            match fs::create_dir(dir) {
                Ok(()) => {
                    share_path(Some(s), dir);
                    Ok(())
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// Looks up a group by name or number.
pub fn resolve_group(group: &str) -> Result<u32> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let name =
        CString::new(group).map_err(|_| Error::Invalid(format!("bad group name {group:?}")))?;
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::group = std::ptr::null_mut();
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    loop {
        // SAFETY: every pointer is valid for the call; `buf` outlives the use of `grp`.
        let rc = unsafe {
            libc::getgrnam_r(
                name.as_ptr(),
                &mut grp,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < (1 << 24) {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 {
            return Err(Error::Invalid(format!(
                "cannot look up group `{group}`: {}",
                io::Error::from_raw_os_error(rc)
            )));
        }
        if result.is_null() {
            return Err(Error::Invalid(format!(
                "no group named `{group}` (see `getent group`); create it or give its number"
            )));
        }
        return Ok(grp.gr_gid);
    }
}

/// What [`apply_to_tree`] did.
#[derive(Debug, Default)]
pub struct TreeReport {
    /// Paths whose group and mode are now right.
    pub changed: u64,
    /// Paths that could not be changed (owned by another user), with the reason.
    pub failed: Vec<(String, String)>,
}

/// Gives every file and directory under `root` (and `root` itself) the group and modes; blob
/// files keep no write bit (blobs are immutable: group-read). Does not follow symbolic links.
pub fn apply_to_tree(root: &Path, sharing: &Sharing) -> TreeReport {
    use std::os::unix::fs::PermissionsExt;
    let mut report = TreeReport::default();
    let mut stack = vec![root.to_path_buf()];
    let blobs = root.join("blobs");
    while let Some(path) = stack.pop() {
        let applied = sharing.apply_path(&path).and_then(|()| {
            let blob = path.starts_with(&blobs) && fs::symlink_metadata(&path)?.is_file();
            if blob {
                let mode = fs::Permissions::from_mode(sharing.file_mode & !0o222);
                fs::set_permissions(&path, mode)?;
            }
            Ok(())
        });
        match applied {
            Ok(()) => report.changed += 1,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => report
                .failed
                .push((path.display().to_string(), e.to_string())),
        }
        let is_dir = fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
        if is_dir {
            match fs::read_dir(&path) {
                Ok(rd) => stack.extend(rd.flatten().map(|e| e.path())),
                Err(e) => report
                    .failed
                    .push((path.display().to_string(), e.to_string())),
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_derive_from_the_file_mode() {
        assert_eq!(Sharing::new(5, 0o660).dir_mode, 0o2770);
        assert_eq!(Sharing::new(5, 0o664).dir_mode, 0o2775);
        // Owner and group always read and write; execute bits are dropped from files.
        assert_eq!(Sharing::new(5, 0o604).file_mode, 0o664);
        assert_eq!(Sharing::new(5, 0o777).file_mode, 0o666);
    }

    #[test]
    fn resolves_groups_by_name_and_number() {
        assert_eq!(resolve_group("0").unwrap(), 0);
        assert_eq!(resolve_group("root").unwrap(), 0);
        let err = resolve_group("no-such-group-runcache").unwrap_err();
        assert!(err.to_string().contains("no group named"), "{err}");
    }

    #[test]
    fn creates_directories_with_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let gid = fs::metadata(dir.path()).unwrap().gid();
        let s = Sharing::new(gid, 0o660);
        let deep = dir.path().join("a/b/c");
        create_dir_all(Some(&s), &deep).unwrap();
        for d in ["a", "a/b", "a/b/c"] {
            let m = fs::metadata(dir.path().join(d)).unwrap();
            assert_eq!(m.mode() & 0o7777, 0o2770, "{d}");
        }
        create_dir_all(Some(&s), &deep).unwrap();
    }
}
