//! Why a command misses: its key, whether an entry is stored, and otherwise the stored entries
//! of the same namespace nearest to it with the parts of the key document that differ (an input
//! whose content changed, an environment variable, an argument).

use serde_json::Value;

use super::{prepare, RunSpec};
use crate::engine::Store;
use crate::error::Result;
use crate::key::Key;
use crate::manifest::Status;

/// One part of the key document that differs from a stored entry's.
#[derive(Clone, Debug, PartialEq)]
pub struct Difference {
    /// Where in the key document, e.g. `args.inputs.data.csv` or `args.env.SEED`.
    pub path: String,
    /// The stored entry's value there (`None`: absent).
    pub stored: Option<Value>,
    /// This command's value there (`None`: absent).
    pub now: Option<Value>,
}

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
            let mut diffs = Vec::new();
            diff("", &m.key_doc, &p.doc, &mut diffs);
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

/// Collects the paths where `a` (stored) and `b` (now) differ, descending into objects.
fn diff(path: &str, a: &Value, b: &Value, out: &mut Vec<Difference>) {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, va) in x {
                match y.get(k) {
                    Some(vb) => diff(&join(k), va, vb, out),
                    None => out.push(Difference {
                        path: join(k),
                        stored: Some(va.clone()),
                        now: None,
                    }),
                }
            }
            for (k, vb) in y {
                if !x.contains_key(k) {
                    out.push(Difference {
                        path: join(k),
                        stored: None,
                        now: Some(vb.clone()),
                    });
                }
            }
        }
        _ if a == b => {}
        _ => out.push(Difference {
            path: path.to_string(),
            stored: Some(a.clone()),
            now: Some(b.clone()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_their_path() {
        let a = serde_json::json!({"args": {"env": {"SEED": "1"}, "argv": ["x"]}});
        let b = serde_json::json!({"args": {"env": {"SEED": "2", "N": "3"}, "argv": ["x"]}});
        let mut d = Vec::new();
        diff("", &a, &b, &mut d);
        let paths: Vec<_> = d.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(paths, ["args.env.SEED", "args.env.N"]);
    }
}
