//! Parsing `s3://bucket/prefix?options` locations (secrets are never accepted in them).

use crate::error::{Error, Result};
use crate::store::location::{parse_bool, percent_decode};

/// Blobs larger than this many MiB are uploaded in parts, unless `?multipart_mib=` says otherwise.
pub const DEFAULT_MULTIPART_MIB: u64 = 64;

/// Settings taken from the location's query string. Secrets are never accepted here.
#[derive(Clone, Debug)]
pub(super) struct S3Options {
    pub(super) endpoint: Option<String>,
    pub(super) region: Option<String>,
    pub(super) allow_http: Option<bool>,
    pub(super) virtual_hosted: Option<bool>,
    pub(super) best_effort: bool,
    pub(super) multipart_mib: u64,
}

/// Drops any `user:password@` from a URL, for messages.
pub(super) fn without_userinfo(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            format!("{scheme}://{host}{path}")
        }
        None => url.to_string(),
    }
}

pub(super) const KNOWN_OPTIONS: &str =
    "endpoint, region, allow_http, virtual_hosted, multipart_mib, best_effort, sync";

/// Splits `s3://bucket/prefix?query` into bucket, prefix and options.
pub(super) fn parse_location(location: &str) -> Result<(String, String, S3Options)> {
    let bad = |message: String| Error::BadStore {
        location: without_userinfo(location),
        message,
    };
    let rest = location
        .strip_prefix("s3://")
        .ok_or_else(|| bad("an S3 store location starts with s3://".into()))?;
    let (target, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (bucket, prefix) = target.split_once('/').unwrap_or((target, ""));
    if bucket.is_empty() {
        return Err(bad(
            "no bucket name; write s3://BUCKET/PREFIX (e.g. s3://team-cache/runcache)".into(),
        ));
    }
    let prefix = prefix.trim_matches('/').to_string();
    if prefix.split('/').any(|s| s == "." || s == "..") || prefix.contains("//") {
        return Err(bad(format!(
            "the prefix `{prefix}` has empty, `.` or `..` segments; use a plain path"
        )));
    }
    let mut opts = S3Options {
        endpoint: None,
        region: None,
        allow_http: None,
        virtual_hosted: None,
        best_effort: false,
        multipart_mib: DEFAULT_MULTIPART_MIB,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, "true"));
        let v = percent_decode(v).map_err(|message| Error::BadStore {
            location: without_userinfo(location),
            message,
        })?;
        match k {
            "endpoint" => opts.endpoint = Some(v),
            "region" => opts.region = Some(v),
            "allow_http" => opts.allow_http = Some(parse_bool(location, k, &v)?),
            "virtual_hosted" => opts.virtual_hosted = Some(parse_bool(location, k, &v)?),
            "best_effort" => opts.best_effort = parse_bool(location, k, &v)?,
            // Acknowledged S3 writes are durable; there is nothing to fsync.
            "sync" => {
                parse_bool(location, k, &v)?;
            }
            "multipart_mib" => {
                opts.multipart_mib = v.parse().ok().filter(|n| *n >= 5).ok_or_else(|| {
                    bad(format!(
                        "option `multipart_mib` must be a whole number of MiB, at least 5 (S3's smallest part), not `{v}`"
                    ))
                })?
            }
            "access_key_id" | "secret_access_key" | "aws_access_key_id"
            | "aws_secret_access_key" | "token" | "session_token" | "password" | "secret" => {
                // Do not echo the location: it holds a secret.
                return Err(Error::BadStore {
                    location: format!("s3://{bucket}/{prefix}"),
                    message: format!(
                        "`{k}` is a secret and is never accepted in a store URL (URLs end up in logs and manifests). Set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN in the environment instead"
                    ),
                });
            }
            _ => {
                return Err(bad(format!(
                    "unknown option `{k}`; known options: {KNOWN_OPTIONS}"
                )))
            }
        }
    }
    Ok((bucket.to_string(), prefix, opts))
}
