//! A command's declared outputs: captured into the entry after it exits 0, and restored in place
//! on a hit, exactly (names, contents, modes, symbolic links) and atomically (each output is
//! built under a temporary name beside it, then swapped in with one rename).

use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::RunSpec;
use crate::engine::{Context, Store};
use crate::error::{Error, IoContext, Result};
use crate::manifest::Manifest;

/// One file, directory or symbolic link of a declared output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeEntry {
    /// Its path relative to the working directory.
    pub path: PathBuf,
    /// What it is.
    pub kind: EntryKind,
    /// Its permission bits (ignored for links).
    pub mode: u32,
    /// The artifact holding a file's content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<String>,
    /// A symbolic link's target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<PathBuf>,
}

/// The kind of a [`TreeEntry`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (stored as its target, never followed).
    Symlink,
}

/// Copies every declared output of `spec` into `ctx` as artifacts (`output/0`, `output/1`, ...)
/// and returns the tree, parents before children. A missing output is an error: the command
/// exited 0 without producing what it promised, and nothing may be committed.
pub(crate) fn capture(spec: &RunSpec, ctx: &mut Context) -> Result<Vec<TreeEntry>> {
    let mut tree = Vec::new();
    for rel in &spec.outputs {
        let path = spec.cwd.join(rel);
        if fs::symlink_metadata(&path).is_err() {
            return Err(Error::Invalid(format!(
                "`{}` exited 0 but did not write its declared output `{}`; nothing is stored \
                 (fix the command or the --output)",
                spec.argv[0].to_string_lossy(),
                rel.display()
            )));
        }
        walk(&spec.cwd, rel, ctx, &mut tree)?;
    }
    Ok(tree)
}

fn walk(cwd: &Path, rel: &Path, ctx: &mut Context, tree: &mut Vec<TreeEntry>) -> Result<()> {
    let path = cwd.join(rel);
    if rel.to_str().is_none() {
        return Err(Error::Invalid(format!(
            "the output `{}` has a name that is not UTF-8, which runcache cannot record",
            rel.display()
        )));
    }
    let meta = fs::symlink_metadata(&path).at(&path)?;
    let mode = meta.mode() & 0o7777;
    let ft = meta.file_type();
    if ft.is_symlink() {
        tree.push(TreeEntry {
            path: rel.into(),
            kind: EntryKind::Symlink,
            mode: 0,
            artifact: None,
            target: Some(fs::read_link(&path).at(&path)?),
        });
    } else if ft.is_dir() {
        tree.push(TreeEntry {
            path: rel.into(),
            kind: EntryKind::Dir,
            mode,
            artifact: None,
            target: None,
        });
        for name in super::key::sorted_names(&path)? {
            walk(cwd, &rel.join(name), ctx, tree)?;
        }
    } else if ft.is_file() {
        let name = format!("output/{}", tree.len());
        let copy = ctx.artifact_path(&name)?;
        // A copy: the store takes ownership of (and seals) the file it is given.
        fs::copy(&path, &copy).at(&path)?;
        tree.push(TreeEntry {
            path: rel.into(),
            kind: EntryKind::File,
            mode,
            artifact: Some(name),
            target: None,
        });
    } else {
        return Err(Error::Invalid(format!(
            "the output `{}` is neither a file, a directory nor a symbolic link; runcache cannot \
             store it",
            rel.display()
        )));
    }
    Ok(())
}

/// Restores the recorded outputs of `manifest` under `cwd`, replacing what is there.
pub(crate) fn restore(
    store: &Store,
    manifest: &Manifest,
    cwd: &Path,
    tree: &[TreeEntry],
) -> Result<()> {
    let mut i = 0;
    while i < tree.len() {
        let root = &tree[i];
        let n = 1 + tree[i + 1..]
            .iter()
            .take_while(|e| root.kind == EntryKind::Dir && e.path.starts_with(&root.path))
            .count();
        restore_one(store, manifest, cwd, &tree[i..i + n])?;
        i += n;
    }
    Ok(())
}

/// Builds one output (`group[0]` and what is under it) beside its place, then swaps it in.
fn restore_one(store: &Store, manifest: &Manifest, cwd: &Path, group: &[TreeEntry]) -> Result<()> {
    let root = &group[0];
    let dest = cwd.join(&root.path);
    let parent = dest
        .parent()
        .expect("an output is below the working directory");
    fs::create_dir_all(parent).at(parent)?;
    let tmp = temp_sibling(&dest, "new");
    let built = build(store, manifest, &tmp, group);
    if let Err(e) = built {
        remove_tree(&tmp);
        return Err(e);
    }
    if fs::symlink_metadata(&dest).is_err() {
        return fs::rename(&tmp, &dest).at(&dest);
    }
    if exchange(&tmp, &dest).is_err() {
        // No atomic exchange on this filesystem: move the old one aside first.
        let old = temp_sibling(&dest, "old");
        fs::rename(&dest, &old).at(&dest)?;
        if let Err(e) = fs::rename(&tmp, &dest) {
            let _ = fs::rename(&old, &dest);
            remove_tree(&tmp);
            return Err(Error::io(&dest, e));
        }
        remove_tree(&old);
        return Ok(());
    }
    // `tmp` now holds what was there before.
    remove_tree(&tmp);
    Ok(())
}

fn build(store: &Store, manifest: &Manifest, tmp: &Path, group: &[TreeEntry]) -> Result<()> {
    let root = &group[0].path;
    let mut dirs = Vec::new();
    for e in group {
        let rel = e.path.strip_prefix(root).expect("grouped under the root");
        let target = if rel.as_os_str().is_empty() {
            tmp.to_path_buf()
        } else {
            tmp.join(rel)
        };
        match e.kind {
            EntryKind::Dir => {
                fs::create_dir(&target).at(&target)?;
                dirs.push((target, e.mode));
            }
            EntryKind::Symlink => {
                let link = e.target.as_ref().ok_or_else(|| damaged(manifest, e))?;
                std::os::unix::fs::symlink(link, &target).at(&target)?;
            }
            EntryKind::File => {
                let name = e.artifact.as_deref().ok_or_else(|| damaged(manifest, e))?;
                let artifact = manifest
                    .artifacts
                    .iter()
                    .find(|a| a.name == name)
                    .ok_or_else(|| damaged(manifest, e))?;
                let mut file = File::create(&target).at(&target)?;
                store.copy_artifact(manifest, artifact, &mut file)?;
                file.sync_all().at(&target)?;
                fs::set_permissions(&target, fs::Permissions::from_mode(e.mode)).at(&target)?;
            }
        }
    }
    // Directory modes last, deepest first: a read-only directory must be filled before.
    for (dir, mode) in dirs.iter().rev() {
        fs::set_permissions(dir, fs::Permissions::from_mode(*mode)).at(dir)?;
    }
    Ok(())
}

fn damaged(manifest: &Manifest, e: &TreeEntry) -> Error {
    Error::Invalid(format!(
        "entry {} records the output `{}` without its content; delete the entry \
         (`runcache rm {}`) and run again",
        manifest.key,
        e.path.display(),
        manifest.key
    ))
}

/// A fresh name beside `dest`, hidden, naming this process (`.NAME.runcache-new-PID-RANDOM`).
fn temp_sibling(dest: &Path, what: &str) -> PathBuf {
    let mut r = [0u8; 6];
    getrandom::fill(&mut r).expect("the OS random source works");
    let name = dest.file_name().expect("an output has a name").as_bytes();
    let mut tmp = Vec::from(&b"."[..]);
    tmp.extend_from_slice(name);
    tmp.extend_from_slice(
        format!(".runcache-{what}-{}-{}", std::process::id(), hex::encode(r)).as_bytes(),
    );
    dest.with_file_name(std::ffi::OsStr::from_bytes(&tmp))
}

/// Swaps two paths atomically (Linux `renameat2(RENAME_EXCHANGE)`).
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    let a = CString::new(a.as_os_str().as_bytes())?;
    let b = CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: both are valid NUL-terminated paths; AT_FDCWD resolves them like rename(2).
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Removes a file or tree, making read-only directories writable first (best effort).
fn remove_tree(path: &Path) {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
    };
    if meta.is_dir() {
        let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o700));
        if let Ok(entries) = fs::read_dir(path) {
            for e in entries.flatten() {
                remove_tree(&e.path());
            }
        }
        let _ = fs::remove_dir(path);
    } else {
        let _ = fs::remove_file(path);
    }
}
