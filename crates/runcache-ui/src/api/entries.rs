//! `/api/entries`: the entry list (filtered, in pages read from the engine page by page), one
//! entry in full (manifest, key document, artifacts, captured log, failure, explain), its
//! artifacts, and deleting it.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use runcache::key::diff_documents;
use runcache::{EntryInfo, Key, Manifest, Store, LOG_ARTIFACT};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{blocking, json, now_ms, ApiError};
use crate::{guard, App};

/// Entries read from the engine per page.
const ENGINE_PAGE: usize = 200;
/// At most this many entries are examined per request: a filter that matches few entries of a
/// huge store answers in bounded time with a cursor to continue from.
const SCAN_BUDGET: usize = 5_000;
/// How many stored entries `explain` compares with at most.
const EXPLAIN_BUDGET: usize = 20_000;
/// Captured logs shown on the page are cut to this many bytes (the whole log downloads).
const LOG_SHOWN: usize = 1 << 20;
/// Artifacts larger than this are not served (read them with `runcache show`/the APIs).
const ARTIFACT_SERVED: u64 = 256 << 20;

/// Filters and cursor of `/api/entries`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ListQuery {
    namespace: Option<String>,
    /// `completed`, `failed`, `interrupted` or `damaged`.
    status: Option<String>,
    min_size: Option<u64>,
    max_size: Option<u64>,
    /// Only entries created at least this many seconds ago.
    older_than_s: Option<u64>,
    /// Only entries created at most this many seconds ago.
    newer_than_s: Option<u64>,
    /// Continue after this key (the `next` of the previous answer).
    after: Option<String>,
    limit: Option<usize>,
}

/// The bytes an entry references (value blobs and artifacts).
pub(crate) fn size_of(m: &Manifest) -> u64 {
    m.blobs.iter().map(|b| b.size).sum::<u64>() + m.artifacts.iter().map(|a| a.size).sum::<u64>()
}

fn status_of(e: &EntryInfo) -> &'static str {
    e.manifest.as_ref().map_or("damaged", |m| m.status.as_str())
}

/// One row of the entry list.
pub(crate) fn summary(e: &EntryInfo) -> Value {
    let Some(m) = &e.manifest else {
        return json!({
            "key": e.key.to_hex(), "status": "damaged", "damage": e.damage,
            "last_used_unix_ms": e.last_used_unix_ms,
        });
    };
    json!({
        "key": e.key.to_hex(),
        "namespace": m.namespace,
        "version": m.version,
        "status": m.status.as_str(),
        "size": size_of(m),
        "created_unix_ms": m.created_unix_ms,
        "last_used_unix_ms": e.last_used_unix_ms,
        "duration_s": m.duration_s,
        "host": m.host,
        "sweep": m.sweep,
        "error": m.error.as_ref().map(|x| format!("{}: {}", x.error_type, x.message)),
    })
}

fn matches(q: &ListQuery, e: &EntryInfo, now: u64) -> bool {
    if q.status.as_deref().is_some_and(|s| s != status_of(e)) {
        return false;
    }
    let Some(m) = &e.manifest else {
        // A damaged entry has no namespace, size or age: it matches only a status filter.
        return q.namespace.is_none()
            && q.min_size.is_none()
            && q.max_size.is_none()
            && q.older_than_s.is_none()
            && q.newer_than_s.is_none();
    };
    let age_s = now.saturating_sub(m.created_unix_ms) / 1000;
    let size = size_of(m);
    q.namespace.as_ref().is_none_or(|n| *n == m.namespace)
        && q.min_size.is_none_or(|s| size >= s)
        && q.max_size.is_none_or(|s| size <= s)
        && q.older_than_s.is_none_or(|s| age_s >= s)
        && q.newer_than_s.is_none_or(|s| age_s <= s)
}

fn parse_key(text: &str) -> Result<Key, ApiError> {
    text.parse::<runcache::Digest>()
        .map(Key)
        .map_err(|_| ApiError::bad_request(format!("`{text}` is not a key (64 hex digits)")))
}

/// `GET /api/entries`: `{"entries": [...], "next": KEY|null, "scanned": N}`.
pub(crate) async fn list(
    State(app): State<Arc<App>>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let mut after = q.after.as_deref().map(parse_key).transpose()?;
    blocking(move || {
        let now = now_ms();
        let mut rows = Vec::new();
        let mut scanned = 0;
        let mut exhausted = false;
        while rows.len() < limit && scanned < SCAN_BUDGET {
            let page = app.store.entries_page(after.as_ref(), ENGINE_PAGE)?;
            if page.is_empty() {
                exhausted = true;
                break;
            }
            for e in &page {
                scanned += 1;
                after = Some(e.key);
                if matches(&q, e, now) {
                    rows.push(summary(e));
                    if rows.len() == limit {
                        break;
                    }
                }
            }
        }
        let next = (!exhausted).then(|| after.map(|k| k.to_hex())).flatten();
        Ok(json(
            json!({ "entries": rows, "next": next, "scanned": scanned }),
        ))
    })
    .await
}

/// How an artifact is shown: inline image, inline text, or download only.
fn kind_of(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("png" | "jpg" | "jpeg" | "gif" | "webp") => "image",
        Some("txt" | "log" | "json" | "csv" | "tsv" | "md" | "yaml" | "yml" | "toml" | "py") => {
            "text"
        }
        _ if matches!(name, "stdout" | "stderr") || name == LOG_ARTIFACT => "text",
        _ => "other",
    }
}

/// The stored entries of `m`'s namespace nearest to it (fewest differences in the key
/// document), at most three, among the first [`EXPLAIN_BUDGET`] entries of the store.
fn nearest(store: &Store, m: &Manifest) -> runcache::Result<Vec<Value>> {
    let mut found = Vec::new();
    let mut after = None;
    let mut scanned = 0;
    while scanned < EXPLAIN_BUDGET {
        let page = store.entries_page(after.as_ref(), ENGINE_PAGE)?;
        let Some(last) = page.last() else { break };
        after = Some(last.key);
        scanned += page.len();
        for other in page.iter().filter_map(|e| e.manifest.as_ref()) {
            if other.namespace == m.namespace && other.key != m.key {
                let diffs = diff_documents(&other.key_doc, &m.key_doc);
                found.push((diffs.len(), other.key, other.status, diffs));
            }
        }
    }
    found.sort_by_key(|(n, key, _, _)| (*n, *key));
    Ok(found
        .into_iter()
        .take(3)
        .map(|(_, key, status, diffs)| {
            json!({ "key": key.to_hex(), "status": status.as_str(), "differences": diffs })
        })
        .collect())
}

/// `GET /api/entries/{key}`: the whole entry as the page shows it.
pub(crate) async fn detail(
    State(app): State<Arc<App>>,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    blocking(move || {
        let store = &app.store;
        let key = store.resolve_prefix(&key)?;
        let m = store
            .manifest(&key)?
            .ok_or_else(|| ApiError::not_found(format!("no entry {key}")))?;
        let mut doc = serde_json::to_value(&m).map_err(|e| ApiError::bad_request(e.to_string()))?;
        // The value itself is never shown (nor unpickled): only its blobs' names and sizes.
        if let Some(blobs) = doc.get_mut("blobs").and_then(Value::as_array_mut) {
            for b in blobs {
                if let Some(b) = b.as_object_mut() {
                    b.remove("inline");
                }
            }
        }
        let artifacts: Vec<Value> = m
            .artifacts
            .iter()
            .map(|a| json!({ "name": a.name, "size": a.size, "kind": kind_of(&a.name) }))
            .collect();
        let log = match m.artifacts.iter().any(|a| a.name == LOG_ARTIFACT) {
            true => store.read_artifact(&key, LOG_ARTIFACT).ok().map(|bytes| {
                let cut = &bytes[..bytes.len().min(LOG_SHOWN)];
                String::from_utf8_lossy(cut).into_owned()
            }),
            false => None,
        };
        Ok(json(json!({
            "key": key.to_hex(),
            "manifest": doc,
            "size": size_of(&m),
            "artifacts": artifacts,
            "log": log,
            "nearest": nearest(store, &m)?,
        })))
    })
    .await
}

/// Query of an artifact download.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ArtifactQuery {
    /// Show in the browser (images, text) instead of downloading.
    inline: Option<u8>,
}

/// `GET /api/entries/{key}/artifacts/{name}`: the verified bytes of one artifact.
pub(crate) async fn artifact(
    State(app): State<Arc<App>>,
    Path((key, name)): Path<(String, String)>,
    Query(q): Query<ArtifactQuery>,
) -> Result<Response, ApiError> {
    let kind = kind_of(&name);
    let bytes = blocking(move || {
        let key = parse_key(&key)?;
        let m = app
            .store
            .manifest(&key)?
            .ok_or_else(|| ApiError::not_found(format!("no entry {key}")))?;
        let a =
            m.artifacts.iter().find(|a| a.name == name).ok_or_else(|| {
                ApiError::not_found(format!("entry {key} has no artifact `{name}`"))
            })?;
        if a.size > ARTIFACT_SERVED {
            return Err(ApiError::bad_request(format!(
                "artifact `{name}` is {} bytes, more than the dashboard serves; read it with \
                 Entry.read_artifact or `runcache show`",
                a.size
            )));
        }
        Ok((app.store.read_artifact(&key, &name)?, name))
    })
    .await?;
    let (bytes, name) = bytes;
    let content_type = match (kind, name.rsplit_once('.').map(|(_, e)| e)) {
        ("image", Some("png")) => "image/png",
        ("image", Some("gif")) => "image/gif",
        ("image", Some("webp")) => "image/webp",
        ("image", _) => "image/jpeg",
        ("text", _) => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    };
    let inline = q.inline == Some(1) && kind != "other";
    let file_name = name
        .rsplit('/')
        .next()
        .unwrap_or("artifact")
        .replace('"', "");
    let disposition = if inline {
        "inline".to_string()
    } else {
        format!("attachment; filename=\"{file_name}\"")
    };
    let mut response = bytes.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    // Opened on its own, an artifact can never run script.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox; default-src 'none'"),
    );
    Ok(response)
}

/// `DELETE /api/entries/{key}` (needs `--allow-write`): removes the entry.
pub(crate) async fn delete(
    State(app): State<Arc<App>>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(refused) = guard::refuse_write(&app, &headers) {
        return Ok(refused);
    }
    blocking(move || {
        let key = parse_key(&key)?;
        let deleted = app.store.delete(&key)?;
        Ok(json(json!({ "deleted": deleted, "key": key.to_hex() })))
    })
    .await
}
