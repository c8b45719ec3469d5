//! `/api/sweeps`: every sweep with its counts; one sweep with every item (state, host, log,
//! error), its executor's record (SLURM job ids) and an ETA; a server-sent event stream of its
//! counts while the page is open; and cancelling the rest of a sweep.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use runcache::{ItemState, Store, SweepRecord, SweepStatus};
use serde_json::{json, Value};

use super::{blocking, json, now_ms, ApiError};
use crate::{guard, App};

/// How often an open sweep page's counts are read from the store.
pub(crate) const POLL: Duration = Duration::from_secs(1);

/// The counts of a sweep, and an ETA from its pace so far (items this sweep settled per
/// second since it was submitted).
fn counts(record: &SweepRecord, s: &SweepStatus) -> Value {
    let elapsed_s = now_ms().saturating_sub(record.created_unix_ms) as f64 / 1000.0;
    let done_here = s.completed + s.failed;
    let left = s.total - s.settled();
    let eta_s = (left > 0 && done_here > 0 && elapsed_s > 0.0)
        .then(|| left as f64 * elapsed_s / done_here as f64);
    json!({
        "total": s.total,
        "completed": s.completed,
        "cached": s.cached,
        "running": s.running,
        "failed": s.failed,
        "queued": s.pending + s.interrupted,
        "cancelled": s.cancelled,
        "settled": s.settled(),
        "drained": s.drained(),
        "eta_s": eta_s,
    })
}

fn header_of(r: &SweepRecord) -> Value {
    json!({
        "id": r.id,
        "namespace": r.namespace,
        "version": r.version,
        "mode": r.mode,
        "count": r.count,
        "created_unix_ms": r.created_unix_ms,
        "executor": r.executor,
    })
}

/// `GET /api/sweeps`: `{"sweeps": [{..., "counts": {...}} | {..., "error": "..."}]}`.
pub(crate) async fn list(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    blocking(move || {
        let mut records = app.store.sweeps()?;
        records.sort_by_key(|r| std::cmp::Reverse(r.created_unix_ms));
        let rows: Vec<Value> = records
            .iter()
            .map(|r| {
                let mut row = header_of(r);
                match app.store.sweep_status(r, false) {
                    Ok(s) => row["counts"] = counts(r, &s),
                    // One sweep whose item list cannot be read is named, not a failed page.
                    Err(e) => row["error"] = json!(e.to_string()),
                }
                row
            })
            .collect();
        Ok(json(json!({ "sweeps": rows })))
    })
    .await
}

/// `GET /api/sweeps/{id}`: the sweep, its counts and every item.
pub(crate) async fn detail(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    blocking(move || {
        let record = app.store.sweep(&id)?;
        let s = app.store.sweep_status(&record, true)?;
        let mut out = header_of(&record);
        out["counts"] = counts(&record, &s);
        out["items"] = serde_json::to_value(&s.items).unwrap_or(Value::Null);
        Ok(json(out))
    })
    .await
}

fn read_counts(store: &Store, id: &str) -> runcache::Result<Value> {
    let record = store.sweep(id)?;
    let s = store.sweep_status(&record, false)?;
    Ok(counts(&record, &s))
}

/// `GET /api/sweeps/{id}/events`: server-sent events, one `counts` event each time the counts
/// change (read every [`POLL`]), until the page closes.
pub(crate) async fn events(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    // State: the last counts sent (none yet: the first read is sent at once).
    let state = (app, id, None::<Value>);
    let stream = stream::unfold(state, |(app, id, last)| async move {
        loop {
            if last.is_some() {
                tokio::time::sleep(POLL).await;
            }
            let (store, sweep) = (app.store.clone(), id.clone());
            let read = tokio::task::spawn_blocking(move || read_counts(&store, &sweep)).await;
            let now = match read {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => json!({ "error": e.to_string() }),
                Err(e) => json!({ "error": e.to_string() }),
            };
            if last.as_ref() != Some(&now) {
                let event = Event::default().event("counts").data(now.to_string());
                return Some((Ok(event), (app, id, Some(now))));
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// `POST /api/sweeps/{id}/cancel` (needs `--allow-write`): cancels every item no worker has
/// started; running items finish (their workers are not the dashboard's to stop).
pub(crate) async fn cancel(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(refused) = guard::refuse_write(&app, &headers) {
        return Ok(refused);
    }
    blocking(move || {
        let store = &app.store;
        let record = store.sweep(&id)?;
        let mode = record.mode()?;
        let sweep = record.sweep_ref();
        let keys = store.sweep_keys(&record)?;
        let states = store.item_states(&keys, mode, &sweep)?;
        let mut cancelled = 0;
        for (key, state) in keys.iter().zip(states) {
            if matches!(state, ItemState::Pending | ItemState::Interrupted)
                && store.cancel_item(&sweep, mode, key)?
            {
                cancelled += 1;
            }
        }
        Ok(json(json!({ "cancelled": cancelled })).into_response())
    })
    .await
}
