//! Why a command misses: its key, whether an entry is stored, and otherwise the stored entries
//! of the same namespace nearest to it with the parts of the key document that differ (an input
//! whose content changed, an environment variable, an argument).

use super::{prepare, RunSpec};
use crate::engine::Store;
use crate::error::Result;
use crate::key::{diff_documents, Difference, Key};
use crate::manifest::Status;

/// What [`explain`] found.
#[derive(Clone, Debug)]
pub struct Explanation {
    /// The command's namespace.
    pub namespace: String,
    /// Its key.
    pub key: Key,
    /// The status of its stored entry, if one is stored.
    pub status: Option<Status>,
    /// One sentence: hit, recorded failure, or miss and why.
    pub reason: String,
    /// On a miss, up to three stored entries of the namespace, nearest first, each with its
    /// differences.
    pub nearest: Vec<(Key, Status, Vec<Difference>)>,
}

/// Explains what `runcache run` would do with `spec`, without running anything.
pub fn explain(store: &Store, spec: &RunSpec) -> Result<Explanation> {
    let p = prepare(spec)?;
    let doc = p.doc()?;
    let mut out = Explanation {
        namespace: p.namespace.clone(),
        key: p.key,
        status: None,
        reason: String::new(),
        nearest: Vec::new(),
    };
    if let Some(m) = store.manifest(&p.key)? {
        out.status = Some(m.status);
        out.reason = match m.status {
            Status::Completed => "hit: a completed entry is stored; it is replayed".into(),
            Status::Failed => "a failure is recorded: it is replayed with its exit status \
                               (--retry-failed runs the command again)"
                .into(),
            Status::Interrupted => "stored as interrupted: the next run runs it again".into(),
        };
        return Ok(out);
    }
    let mut nearest: Vec<_> = store
        .entries()?
        .into_iter()
        .filter_map(|e| e.manifest)
        .filter(|m| m.namespace == p.namespace)
        .map(|m| {
            let diffs = diff_documents(&m.key_doc, &doc);
            (m.key, m.status, diffs)
        })
        .collect();
    nearest.sort_by_key(|(_, _, d)| d.len());
    nearest.truncate(3);
    out.reason = match nearest.first() {
        None => format!("miss: no entry of {} is stored", p.namespace),
        Some((_, _, d)) => {
            let names: Vec<&str> = d.iter().map(|d| d.path.as_str()).collect();
            format!(
                "miss: the nearest stored entry of {} differs in {}",
                p.namespace,
                if names.is_empty() {
                    "nothing visible in the key document".into()
                } else {
                    names.join(", ")
                }
            )
        }
    };
    out.nearest = nearest;
    Ok(out)
}
