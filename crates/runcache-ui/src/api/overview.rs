//! `/api/overview`: the store at a glance — its location and format, entries, size and last use
//! per namespace, leases alive and dead, sweeps, recent failures. Reading every manifest costs
//! what `runcache du` costs, so the answer is kept for [`FRESH_FOR`] and shared by all pages.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::Response;
use runcache::store::STORE_FORMAT;
use runcache::Status;
use serde_json::{json, Value};

use super::entries::{size_of, summary};
use super::{blocking, json, ApiError};
use crate::App;

/// How long a computed overview is served before it is computed again.
const FRESH_FOR: Duration = Duration::from_secs(10);
/// Failures listed.
const RECENT_FAILURES: usize = 10;

/// The last overview and when it was computed (computed by one request at a time).
#[derive(Default)]
pub(crate) struct OverviewCache(Mutex<Option<(Instant, Value)>>);

#[derive(Default)]
struct Namespace {
    entries: u64,
    bytes: u64,
    failed: u64,
    interrupted: u64,
    last_used_unix_ms: u64,
}

fn compute(app: &App) -> runcache::Result<Value> {
    let store = &app.store;
    let entries = store.entries()?;
    let mut namespaces: BTreeMap<String, Namespace> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut damaged = 0;
    for e in &entries {
        let Some(m) = &e.manifest else {
            damaged += 1;
            continue;
        };
        let n = namespaces.entry(m.namespace.clone()).or_default();
        n.entries += 1;
        n.bytes += size_of(m);
        n.last_used_unix_ms = n.last_used_unix_ms.max(e.last_used_unix_ms);
        match m.status {
            Status::Completed => {}
            Status::Failed => n.failed += 1,
            Status::Interrupted => n.interrupted += 1,
        }
        if m.status != Status::Completed {
            failures.push((m.created_unix_ms, e));
        }
    }
    failures.sort_by_key(|(created, _)| std::cmp::Reverse(*created));
    let leases = store.leases().list()?;
    let held: Vec<_> = leases.iter().filter(|v| v.record.is_some()).collect();
    let alive = held.iter().filter(|v| v.alive == Some(true)).count();
    let dead = held.iter().filter(|v| v.alive == Some(false)).count();
    let sweeps = store.sweeps()?.len();
    Ok(json!({
        "location": store.location(),
        "format": STORE_FORMAT,
        "writable": app.allow_write,
        "entries": entries.len(),
        "damaged": damaged,
        "namespaces": namespaces.iter().map(|(name, n)| json!({
            "name": name, "entries": n.entries, "bytes": n.bytes, "failed": n.failed,
            "interrupted": n.interrupted, "last_used_unix_ms": n.last_used_unix_ms,
        })).collect::<Vec<_>>(),
        "leases": { "alive": alive, "dead": dead, "unknown": held.len() - alive - dead },
        "sweeps": sweeps,
        "recent_failures": failures.iter().take(RECENT_FAILURES)
            .map(|(_, e)| summary(e)).collect::<Vec<_>>(),
    }))
}

/// `GET /api/overview`.
pub(crate) async fn overview(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    blocking(move || {
        let mut cached = app.overview.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, value)) = cached.as_ref() {
            if at.elapsed() < FRESH_FOR {
                return Ok(json(value.clone()));
            }
        }
        let value = compute(&app)?;
        *cached = Some((Instant::now(), value.clone()));
        Ok(json(value))
    })
    .await
}

/// `GET /api/info`: what every page's header needs, without reading the store.
pub(crate) async fn info(State(app): State<Arc<App>>) -> Response {
    json(json!({
        "location": app.store.location(),
        "format": STORE_FORMAT,
        "writable": app.allow_write,
    }))
}
