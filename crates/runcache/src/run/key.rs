//! The key of one command: its argv, working directory, declared inputs (by content), named
//! environment variables, declared outputs and the content of its executable.
//!
//! File contents come from [`crate::file_digest`], which remembers each file's digest by its
//! (device, inode, size, mtime, ctime): an input or executable that has not changed since it was
//! last hashed, in this process or another one of this user, is not read again.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use super::RunSpec;
use crate::digest::{Digest, StreamHasher};
use crate::error::{Error, IoContext, Result};

/// Bytes that enter the key as text when they are UTF-8 and as bytes otherwise: argv items and
/// paths need not be UTF-8, and two different byte strings never share a key.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Bytes(Vec<u8>);

impl Bytes {
    fn of(s: &OsStr) -> Self {
        Bytes(s.as_bytes().to_vec())
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(text) => s.serialize_str(text),
            Err(_) => s.serialize_bytes(&self.0),
        }
    }
}

/// Pairs serialized as a map (readable in the key document: `inputs.data/x.csv`).
pub(crate) struct Named<V>(Vec<(Bytes, V)>);

impl<V: Serialize> Serialize for Named<V> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// Everything a command's result depends on, in the form that is hashed into its key.
#[derive(Serialize)]
pub(crate) struct CommandKey {
    argv: Vec<Bytes>,
    cwd: Option<Bytes>,
    executable: Option<Digest>,
    inputs: Named<Digest>,
    env: Named<Option<Bytes>>,
    outputs: Vec<Bytes>,
}

impl CommandKey {
    /// Builds the key material of a normalized `spec`, reading what it must of every declared
    /// input, the executable and the named environment variables.
    pub(crate) fn of(spec: &RunSpec) -> Result<Self> {
        let executable = if spec.hash_executable {
            let path = resolve_executable(&spec.argv[0], &spec.cwd)?;
            Some(digest_file(&path)?)
        } else {
            None
        };
        let mut inputs = Vec::new();
        for pattern in &spec.inputs {
            for rel in expand(&spec.cwd, pattern)? {
                let digest = digest_input(&spec.cwd.join(&rel))?;
                inputs.push((Bytes::of(rel.as_os_str()), digest));
            }
        }
        inputs.sort_by(|a, b| a.0.cmp(&b.0));
        inputs.dedup_by(|a, b| a.0 == b.0);
        let mut env: Vec<(Bytes, Option<Bytes>)> = spec
            .env
            .iter()
            .map(|n| {
                let value = std::env::var_os(n).map(|v| Bytes::of(&v));
                (Bytes(n.as_bytes().to_vec()), value)
            })
            .collect();
        env.sort_by(|a, b| a.0.cmp(&b.0));
        env.dedup_by(|a, b| a.0 == b.0);
        Ok(CommandKey {
            argv: spec.argv.iter().map(|a| Bytes::of(a)).collect(),
            cwd: (!spec.ignore_cwd).then(|| Bytes::of(spec.cwd.as_os_str())),
            executable,
            inputs: Named(inputs),
            env: Named(env),
            outputs: spec
                .outputs
                .iter()
                .map(|o| Bytes::of(o.as_os_str()))
                .collect(),
        })
    }
}

/// The paths (relative to `cwd`) that one `--input` names: itself, or the matches of a glob
/// pattern (`*`, `?`, `[...]`, `**`), sorted. A path or pattern that names nothing is an error.
fn expand(cwd: &Path, pattern: &str) -> Result<Vec<PathBuf>> {
    let missing = || {
        Error::Invalid(format!(
            "the input `{pattern}` does not exist in `{}` (create it, fix the path, or drop the --input)",
            cwd.display()
        ))
    };
    if !pattern.contains(['*', '?', '[']) {
        let path = Path::new(pattern);
        if std::fs::symlink_metadata(cwd.join(path)).is_err() {
            return Err(missing());
        }
        return Ok(vec![path.to_path_buf()]);
    }
    let full = cwd.join(pattern);
    let full = full.to_str().ok_or_else(|| {
        Error::Invalid(format!("the input pattern `{pattern}` is not valid UTF-8"))
    })?;
    let matches = glob::glob(full).map_err(|e| {
        Error::Invalid(format!(
            "the input pattern `{pattern}` is not a valid glob: {e}"
        ))
    })?;
    let mut out = Vec::new();
    for m in matches {
        let path = m.map_err(|e| {
            let at = e.path().to_path_buf();
            Error::io(at, e.into())
        })?;
        let rel = path
            .strip_prefix(cwd)
            .map(Path::to_path_buf)
            .unwrap_or(path);
        out.push(rel);
    }
    if out.is_empty() {
        return Err(Error::Invalid(format!(
            "the input pattern `{pattern}` matches nothing in `{}` (fix the pattern, or drop the --input)",
            cwd.display()
        )));
    }
    out.sort();
    Ok(out)
}

/// The file `program` runs: a path (with a `/`) relative to `cwd`, else the first executable
/// file of that name on `PATH`.
pub(crate) fn resolve_executable(program: &OsStr, cwd: &Path) -> Result<PathBuf> {
    if program.as_bytes().contains(&b'/') {
        let p = cwd.join(program);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(Error::Invalid(format!(
                "the command `{}` does not exist (give an existing program)",
                p.display()
            )))
        };
    }
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path_var) {
        let p = cwd.join(dir).join(program);
        let executable = p
            .metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
        if executable {
            return Ok(p);
        }
    }
    Err(Error::Invalid(format!(
        "the command `{}` is not found on PATH (give its path, or fix PATH)",
        program.to_string_lossy()
    )))
}

/// The content digest of one file, from the file digest memory when it is unchanged.
fn digest_file(path: &Path) -> Result<Digest> {
    crate::file_digest::file_digest(path)
        .map(|(d, _)| d)
        .at(path)
}

/// The digest of a declared input: a file's content, or for a directory the names, kinds,
/// executable bits and contents of everything under it (symbolic links by their target).
pub(crate) fn digest_input(path: &Path) -> Result<Digest> {
    let meta = std::fs::metadata(path).at(path)?;
    if !meta.is_dir() {
        return digest_file(path);
    }
    let mut listing = StreamHasher::new();
    hash_tree(path, Path::new(""), &mut listing)?;
    Ok(listing.finish())
}

/// The names in directory `dir`, sorted (so trees are walked in one order everywhere).
pub(crate) fn sorted_names(dir: &Path) -> Result<Vec<std::ffi::OsString>> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .at(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()
        .at(dir)?;
    names.sort();
    Ok(names)
}

fn hash_tree(root: &Path, rel: &Path, out: &mut StreamHasher) -> Result<()> {
    let dir = root.join(rel);
    for name in sorted_names(&dir)? {
        let rel = rel.join(&name);
        let path = root.join(&rel);
        let meta = std::fs::symlink_metadata(&path).at(&path)?;
        let name = rel.as_os_str().as_bytes();
        out.update(&(name.len() as u64).to_le_bytes());
        out.update(name);
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path).at(&path)?;
            out.update(b"l");
            out.update(&(target.as_os_str().len() as u64).to_le_bytes());
            out.update(target.as_os_str().as_bytes());
        } else if meta.is_dir() {
            out.update(b"d");
            hash_tree(root, &rel, out)?;
            out.update(b"e");
        } else {
            let kind: &[u8] = if meta.permissions().mode() & 0o111 != 0 {
                b"x"
            } else {
                b"f"
            };
            out.update(kind);
            out.update(digest_file(&path)?.as_bytes());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_digest_follows_names_and_contents() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("in");
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/a"), b"1").unwrap();
        let first = digest_input(&d).unwrap();
        std::fs::write(d.join("sub/a"), b"2").unwrap();
        let changed = digest_input(&d).unwrap();
        assert_ne!(first, changed);
        std::fs::rename(d.join("sub/a"), d.join("sub/b")).unwrap();
        assert_ne!(digest_input(&d).unwrap(), changed);
    }

    #[test]
    fn globs_expand_sorted_and_must_match() {
        let dir = tempfile::tempdir().unwrap();
        for n in ["b.csv", "a.csv", "c.txt"] {
            std::fs::write(dir.path().join(n), n).unwrap();
        }
        let got = expand(dir.path(), "*.csv").unwrap();
        assert_eq!(got, vec![PathBuf::from("a.csv"), PathBuf::from("b.csv")]);
        let e = expand(dir.path(), "*.json").unwrap_err().to_string();
        assert!(e.contains("matches nothing"), "{e}");
        let e = expand(dir.path(), "missing.txt").unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
    }
}
