//! The JSON endpoints the page uses (documented in docs/ui.md) and the routes that serve the
//! page itself. Engine calls block, so each runs on tokio's blocking pool.

mod entries;
mod overview;
mod sweeps;

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

pub(crate) use overview::OverviewCache;

use crate::{assets, guard, App};

/// Every route, behind the guard.
pub(crate) fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(assets::index))
        .route("/app.js", get(assets::script))
        .route("/app.css", get(assets::style))
        .route(
            "/favicon.ico",
            get(|| async { axum::http::StatusCode::NO_CONTENT }),
        )
        .route("/api/info", get(overview::info))
        .route("/api/overview", get(overview::overview))
        .route("/api/entries", get(entries::list))
        .route(
            "/api/entries/{key}",
            get(entries::detail).delete(entries::delete),
        )
        .route(
            "/api/entries/{key}/artifacts/{*name}",
            get(entries::artifact),
        )
        .route("/api/sweeps", get(sweeps::list))
        .route("/api/sweeps/{id}", get(sweeps::detail))
        .route("/api/sweeps/{id}/events", get(sweeps::events))
        .route("/api/sweeps/{id}/cancel", post(sweeps::cancel))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            guard::check,
        ))
        .with_state(app)
}

/// An error answered as `{"error": "..."}` with a status code.
pub(crate) struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<runcache::Error> for ApiError {
    fn from(e: runcache::Error) -> Self {
        let status = match e {
            runcache::Error::NotFound { .. } => StatusCode::NOT_FOUND,
            runcache::Error::Invalid(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

impl ApiError {
    pub(crate) fn not_found(what: impl Into<String>) -> Self {
        ApiError(StatusCode::NOT_FOUND, what.into())
    }
    pub(crate) fn bad_request(what: impl Into<String>) -> Self {
        ApiError(StatusCode::BAD_REQUEST, what.into())
    }
}

/// Runs blocking engine work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal error: {e}"),
        ))
    })
}

/// A JSON body (the guard marks every response `Cache-Control: no-store`).
pub(crate) fn json(value: serde_json::Value) -> Response {
    Json(value).into_response()
}

/// Milliseconds since the epoch, now.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
