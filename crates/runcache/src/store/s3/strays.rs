//! Objects under an S3 store's prefix that are not a readable part of it: reported one by one
//! ([`Backend::strays`](crate::store::Backend::strays)), never a failed listing.

use super::lease::S3Leases;
use super::Client;
use crate::error::Result;
use crate::key::Key;
use crate::store::Stray;

/// The sharded areas: prefix and the suffix of the object names in its shards.
const SHARDED: [(&str, &str); 4] = [
    ("blobs", ""),
    ("manifests", ".json"),
    ("used", ""),
    ("leases", ".json"),
];

/// True if `rel` is `<area>/<ab>/<64 lowercase hex starting with ab><suffix>`.
fn well_named(rel: &str, area: &str, suffix: &str) -> bool {
    let Some(rest) = rel.strip_prefix(area).and_then(|r| r.strip_prefix('/')) else {
        return false;
    };
    let Some((shard, name)) = rest.split_once('/') else {
        return false;
    };
    let lower_hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    name.strip_suffix(suffix).is_some_and(|hex| {
        shard.len() == 2 && hex.len() == 64 && hex.starts_with(shard) && lower_hex(hex)
    })
}

/// Every misnamed object in the sharded areas and every lock object that does not parse.
pub(super) fn strays(client: &Client, leases: &S3Leases) -> Result<Vec<Stray>> {
    let mut out = Vec::new();
    for (area, suffix) in SHARDED {
        for meta in client.list(area)? {
            let rel = client.relative(&meta.location).to_string();
            let problem = if !well_named(&rel, area, suffix) {
                format!("not a {area} object name ({area}/ab/<64 lowercase hex>{suffix})")
            } else if area == "leases" {
                let hex = &rel[rel.len() - 64 - suffix.len()..rel.len() - suffix.len()];
                let key: Key = hex.parse()?;
                match leases.check(&key) {
                    Ok(()) => continue,
                    Err(e) => e.to_string(),
                }
            } else {
                continue;
            };
            out.push(Stray {
                location: client.url(&rel),
                problem,
                id: rel,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_layout() {
        let hex = format!("ab{}", "0".repeat(62));
        assert!(well_named(&format!("blobs/ab/{hex}"), "blobs", ""));
        assert!(well_named(
            &format!("manifests/ab/{hex}.json"),
            "manifests",
            ".json"
        ));
        assert!(!well_named(
            &format!("manifests/cd/{hex}.json"),
            "manifests",
            ".json"
        ));
        assert!(!well_named("manifests/stray", "manifests", ".json"));
        assert!(!well_named(
            &format!("blobs/ab/{}", hex.to_uppercase()),
            "blobs",
            ""
        ));
        assert!(!well_named(&format!("blobs/ab/x/{hex}"), "blobs", ""));
    }
}
