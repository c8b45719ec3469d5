//! [`Context`]: what a running computation can tell the engine (artifacts, metadata), plus the
//! per-thread stack that records which entries a computation used (its dependencies).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::manifest::Dependency;

/// Handed to a computation: lets it produce artifact files and attach metadata to its entry.
#[derive(Debug)]
pub struct Context {
    scratch_root: PathBuf,
    dir: Option<PathBuf>,
    pub(crate) artifacts: Vec<(String, PathBuf)>,
    pub(crate) metadata: BTreeMap<String, serde_json::Value>,
}

impl Context {
    pub(crate) fn new(scratch_root: PathBuf) -> Self {
        Context {
            scratch_root,
            dir: None,
            artifacts: Vec::new(),
            metadata: BTreeMap::new(),
        }
    }

    /// A path where the computation writes the artifact `name` (e.g. `"plots/loss.png"`). The
    /// file is stored with the entry when the computation succeeds, and is readable later with
    /// [`Entry::read_artifact`](crate::Entry::read_artifact).
    pub fn artifact_path(&mut self, name: &str) -> Result<PathBuf> {
        validate_artifact_name(name)?;
        if let Some((_, p)) = self.artifacts.iter().find(|(n, _)| n == name) {
            return Ok(p.clone());
        }
        let dir = match &self.dir {
            Some(d) => d.clone(),
            None => {
                let mut r = [0u8; 8];
                getrandom::fill(&mut r).expect("the OS random source works");
                // Names its host and process, so gc can tell a live writer's scratch from a
                // killed one's (store::local::walk).
                let d = self.scratch_root.join(format!(
                    "artifacts-{}-{}-{}",
                    crate::host_name(),
                    std::process::id(),
                    hex::encode(r)
                ));
                std::fs::create_dir_all(&d).at(&d)?;
                self.dir = Some(d.clone());
                d
            }
        };
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).at(parent)?;
        }
        self.artifacts.push((name.to_string(), path.clone()));
        Ok(path)
    }

    /// Registers an existing file as the artifact `name` (stored with the entry on success; the
    /// file may be moved into the store).
    pub fn add_artifact_file(&mut self, name: &str, path: PathBuf) -> Result<()> {
        validate_artifact_name(name)?;
        self.artifacts.retain(|(n, _)| n != name);
        self.artifacts.push((name.to_string(), path));
        Ok(())
    }

    /// Attaches a metadata value to the entry (shown by `runcache show`).
    pub fn set_metadata(&mut self, name: &str, value: impl serde::Serialize) -> Result<()> {
        let v = serde_json::to_value(value)
            .map_err(|e| Error::Invalid(format!("metadata `{name}` is not serializable: {e}")))?;
        self.metadata.insert(name.to_string(), v);
        Ok(())
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn validate_artifact_name(name: &str) -> Result<()> {
    let p = Path::new(name);
    let ok = !name.is_empty()
        && p.components().all(|c| matches!(c, Component::Normal(_)))
        && !name.contains('\\');
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "artifact name `{name}` must be a relative path without `..` (e.g. `plots/loss.png`)"
        )))
    }
}

thread_local! {
    /// One frame per computation running on this thread; inner task calls record themselves in
    /// the top frame as dependencies of the outer entry.
    static DEPENDENCY_FRAMES: RefCell<Vec<Vec<Dependency>>> = const { RefCell::new(Vec::new()) };
}

/// Starts collecting dependencies for a computation on this thread.
pub(crate) fn push_frame() {
    DEPENDENCY_FRAMES.with(|f| f.borrow_mut().push(Vec::new()));
}

/// Ends the current computation's frame and returns what it used.
pub(crate) fn pop_frame() -> Vec<Dependency> {
    DEPENDENCY_FRAMES.with(|f| f.borrow_mut().pop().unwrap_or_default())
}

/// Records that the running computation (if any) used the entry `dep()` names; `dep` is only
/// called when a computation is running (a hit outside one allocates nothing).
pub(crate) fn record_dependency(dep: impl FnOnce() -> Dependency) {
    DEPENDENCY_FRAMES.with(|f| {
        if let Some(top) = f.borrow_mut().last_mut() {
            let dep = dep();
            if !top.contains(&dep) {
                top.push(dep);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_names_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let mut ctx = Context::new(dir.path().to_path_buf());
        for bad in ["", "../x", "/etc/passwd", "a/../../b", "a\\b"] {
            assert!(ctx.artifact_path(bad).is_err(), "{bad} accepted");
        }
        let p = ctx.artifact_path("plots/loss.png").unwrap();
        assert!(p.parent().unwrap().is_dir());
        assert_eq!(ctx.artifact_path("plots/loss.png").unwrap(), p);
    }
}
