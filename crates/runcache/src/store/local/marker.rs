//! The store's format marker (`RUNCACHE-STORE.json`): created with a new store, checked on every
//! open (an older engine refuses a newer format), rewritten by `runcache init` when damaged.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{create_in, temp_path};
use crate::error::{Error, IoContext, Result};
use crate::store::sharing::{self, Sharing};
use crate::store::STORE_FORMAT;

/// Name of the format marker at the store root.
pub const MARKER_FILE: &str = "RUNCACHE-STORE.json";

/// The contents of the format marker. Fields added later are optional, so older engines (which
/// ignore unknown fields) and newer ones read each other's markers.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Marker {
    format: u32,
    created_by: String,
    /// Group of a shared store (`runcache init --shared GROUP`), for people reading the marker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shared_group: Option<String>,
    /// Its numeric id: what the engine applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shared_gid: Option<u32>,
    /// Permission bits of files, octal (`"0660"`); directories add `x` and setgid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    file_mode: Option<String>,
    /// Permission bits of directories, octal (`"2770"`), informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dir_mode: Option<String>,
}

impl Marker {
    fn new() -> Self {
        Marker {
            format: STORE_FORMAT,
            created_by: format!("runcache {}", env!("CARGO_PKG_VERSION")),
            shared_group: None,
            shared_gid: None,
            file_mode: None,
            dir_mode: None,
        }
    }

    pub(super) fn sharing(&self) -> Option<Sharing> {
        let gid = self.shared_gid?;
        let mode = self
            .file_mode
            .as_deref()
            .and_then(|m| u32::from_str_radix(m, 8).ok())
            .unwrap_or(0o660);
        Some(Sharing::new(gid, mode))
    }
}

/// Parses the marker of the store at `root`: a damaged one is [`Error::BadStore`] naming the
/// file and `runcache init` (which rewrites it), a newer format [`Error::NewerFormat`].
fn parse_marker(bytes: &[u8], root: &Path) -> Result<Marker> {
    let m: Marker = serde_json::from_slice(bytes).map_err(|e| Error::BadStore {
        location: root.display().to_string(),
        message: format!(
            "its format marker {} is damaged ({e}). If this directory is a runcache store, `runcache init {}` writes a new marker; entries are kept",
            root.join(MARKER_FILE).display(),
            root.display()
        ),
    })?;
    if m.format > STORE_FORMAT {
        return Err(Error::NewerFormat {
            path: root.display().to_string(),
            found: m.format,
            supported: STORE_FORMAT,
            engine: env!("CARGO_PKG_VERSION"),
        });
    }
    Ok(m)
}

/// Reads the store's marker, creating the store (and the marker) if the directory is new or
/// empty.
pub(super) fn check_or_create_marker(root: &Path) -> Result<Marker> {
    if root.exists() && !root.is_dir() {
        return Err(Error::BadStore {
            location: root.display().to_string(),
            message: "it exists and is not a directory; choose another path".into(),
        });
    }
    let marker = root.join(MARKER_FILE);
    match fs::read(&marker) {
        Ok(bytes) => parse_marker(&bytes, root),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // A directory holding anything but a store being created right now by another
            // process (its temp files and .gitignore) is someone else's: refuse it.
            let foreign = root.is_dir()
                && fs::read_dir(root).at(root)?.flatten().any(|e| {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    !(name.starts_with(".tmp-") || name == ".gitignore" || name == MARKER_FILE)
                });
            // ...unless that other process finished creating the store since we looked.
            if foreign && marker.exists() {
                return check_or_create_marker(root);
            }
            if foreign {
                return Err(Error::BadStore {
                    location: root.display().to_string(),
                    message: format!(
                        "the directory is not empty and has no {MARKER_FILE}; it is not a runcache store. Point the store at a new or empty directory"
                    ),
                });
            }
            fs::create_dir_all(root).at(root)?;
            let marker_body = Marker::new();
            let body = serde_json::to_vec_pretty(&marker_body).expect("marker serializes");
            let tmp = temp_path(root);
            fs::write(&tmp, body).at(&tmp)?;
            // Two processes creating the same store race here: the first link wins, the loser
            // reads the winner's (identical) marker next time.
            let linked = fs::hard_link(&tmp, &marker);
            let _ = fs::remove_file(&tmp);
            match linked {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(Error::io(&marker, e)),
                _ => {
                    let gitignore = root.join(".gitignore");
                    if !gitignore.exists() {
                        let _ = fs::write(
                            gitignore,
                            "# runcache store: results are never committed by accident\n*\n",
                        );
                    }
                    Ok(marker_body)
                }
            }
        }
        Err(e) => Err(Error::io(&marker, e)),
    }
}

/// Creates the store at `root` (or opens an existing one) and, with `share`, records the group
/// sharing in its marker (replaced atomically; older engines ignore the new fields). The caller
/// applies the group and modes to existing files ([`sharing::apply_to_tree`]).
pub fn init_store(root: &Path, share: Option<(&str, Sharing)>) -> Result<()> {
    let mut m = match check_or_create_marker(root) {
        Ok(m) => m,
        // A damaged marker (the store's only metadata) is replaced by a fresh one.
        Err(Error::BadStore { .. }) if root.join(MARKER_FILE).is_file() => {
            let body = serde_json::to_vec_pretty(&Marker::new()).expect("marker serializes");
            let tmp = temp_path(root);
            fs::write(&tmp, body).at(&tmp)?;
            fs::rename(&tmp, root.join(MARKER_FILE)).at(root.join(MARKER_FILE))?;
            check_or_create_marker(root)?
        }
        Err(e) => return Err(e),
    };
    let Some((group, s)) = share else {
        return Ok(());
    };
    m.shared_group = Some(group.to_string());
    m.shared_gid = Some(s.gid);
    m.file_mode = Some(format!("{:04o}", s.file_mode));
    m.dir_mode = Some(format!("{:04o}", s.dir_mode));
    let body = serde_json::to_vec_pretty(&m).expect("marker serializes");
    let tmp = temp_path(root);
    let mut f = create_in(None, root, &tmp)?;
    sharing::share_file(Some(&s), &f, &tmp);
    f.write_all(&body).at(&tmp)?;
    f.sync_all().at(&tmp)?;
    drop(f);
    let marker = root.join(MARKER_FILE);
    if let Err(e) = fs::rename(&tmp, &marker) {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(marker, e));
    }
    // The directories every process writes into, so that nobody creates them with its umask.
    for d in ["blobs", "manifests", "used", "leases", "records", "tmp"] {
        sharing::create_dir_all(Some(&s), &root.join(d)).at(root.join(d))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LocalBackend;
    use proptest::prelude::*;

    proptest! {
        // Bounded (proptest's default 256 cases per property, a fraction of a second) so it
        // runs in every `cargo test`; see docs/reliability.md for why proptest, not cargo fuzz.
        #[test]
        fn any_marker_bytes_parse_or_name_the_fix(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Err(e) = parse_marker(&bytes, Path::new("/st")) {
                let msg = e.to_string();
                prop_assert!(
                    msg.contains("runcache init /st") || msg.contains("Upgrade runcache"),
                    "{}", msg
                );
            }
        }

        #[test]
        fn mutated_markers_parse_or_name_the_fix(pos in 0usize..200, byte in any::<u8>(), cut in 0usize..200) {
            let mut bytes = serde_json::to_vec_pretty(&Marker::new()).unwrap();
            let p = pos % bytes.len();
            bytes[p] = byte;
            bytes.truncate(bytes.len() - cut % bytes.len());
            match parse_marker(&bytes, Path::new("/st")) {
                Ok(m) => prop_assert!(m.format <= STORE_FORMAT),
                Err(e) => {
                    let named = matches!(e, Error::BadStore { .. } | Error::NewerFormat { .. });
                    prop_assert!(named, "{}", e);
                }
            }
        }
    }

    #[test]
    fn refuses_newer_format_and_foreign_directories() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s");
        LocalBackend::open(&root, false).unwrap();
        assert!(root.join(".gitignore").exists());
        fs::write(
            root.join(MARKER_FILE),
            br#"{"format": 99, "created_by": "runcache 9"}"#,
        )
        .unwrap();
        let err = LocalBackend::open(&root, false).unwrap_err();
        assert!(matches!(err, Error::NewerFormat { found: 99, .. }), "{err}");
        assert!(err.to_string().contains("Upgrade runcache"));

        let foreign = dir.path().join("f");
        fs::create_dir(&foreign).unwrap();
        fs::write(foreign.join("thesis.tex"), b"x").unwrap();
        let err = LocalBackend::open(&foreign, false).unwrap_err();
        assert!(err.to_string().contains("not a runcache store"), "{err}");
    }

    #[test]
    fn markers_with_and_without_sharing_read_both_ways() {
        // A marker of an older engine has no sharing fields; a shared marker's new fields are
        // optional (older engines ignore them: serde keeps unknown fields by default).
        let old: Marker =
            serde_json::from_str(r#"{"format": 1, "created_by": "runcache 0.0.9"}"#).unwrap();
        assert!(old.sharing().is_none());
        let shared: Marker = serde_json::from_str(
            r#"{"format": 1, "created_by": "x", "shared_group": "ml", "shared_gid": 4242,
                "file_mode": "0664", "dir_mode": "2775", "future_field": true}"#,
        )
        .unwrap();
        assert_eq!(shared.sharing(), Some(Sharing::new(4242, 0o664)));
        let text = serde_json::to_string(&Marker::new()).unwrap();
        assert!(!text.contains("shared"), "{text}");
    }
}
