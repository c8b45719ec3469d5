//! Where two key documents differ: what `explain` shows for the nearest stored entries.

use serde_json::Value;

/// One part of the key document that differs from a stored entry's.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Difference {
    /// Where in the key document, e.g. `args.inputs.data.csv` or `args.env.SEED`.
    pub path: String,
    /// The stored entry's value there (`None`: absent).
    pub stored: Option<Value>,
    /// The compared (current) document's value there (`None`: absent).
    pub now: Option<Value>,
}

/// The paths (`args.env.SEED`, `args.inputs.data.csv`) where the key document `stored` and
/// `now` differ, descending into objects; a changed array or scalar is one difference.
pub fn diff_documents(stored: &Value, now: &Value) -> Vec<Difference> {
    let mut out = Vec::new();
    diff("", stored, now, &mut out);
    out
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
        let d = diff_documents(&a, &b);
        let paths: Vec<_> = d.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(paths, ["args.env.SEED", "args.env.N"]);
    }
}
