//! Who may talk to the dashboard: the token check, the local-host check, the write gate and
//! the security headers every response carries.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::App;

/// Name of the cookie that carries the token after the first visit with `?token=`.
const COOKIE: &str = "runcache_token";
/// The header the page sends with writing requests (a cross-site form cannot set it).
pub(crate) const WRITE_HEADER: &str = "x-runcache-write";

/// A fresh random token (128 bits, hex).
pub(crate) fn new_token() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    hex::encode(bytes)
}

/// Equal strings, compared in time that does not depend on where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn query_token(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
}

fn cookie_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// True if the request names this server by a local-host name (refuses DNS rebinding: a
/// foreign site whose name resolves to 127.0.0.1 sends its own name as Host).
fn host_is_local(headers: &HeaderMap, app: &App) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let port = app.addr.port();
    [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
        app.addr.to_string(),
    ]
    .iter()
    .any(|h| h == host)
}

fn refuse(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{message}\n"),
    )
        .into_response()
}

/// The middleware in front of every route.
pub(crate) async fn check(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    if app.addr.ip().is_loopback() && !host_is_local(req.headers(), &app) {
        return refuse(
            StatusCode::FORBIDDEN,
            "refused: this dashboard answers only requests addressed to localhost",
        );
    }
    let mut set_cookie = None;
    if let Some(token) = &app.token {
        let from_query = query_token(req.uri().query());
        let given = from_query
            .or_else(|| cookie_token(req.headers()))
            .or_else(|| bearer_token(req.headers()));
        if !given.is_some_and(|g| same(g, token)) {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "refused: this dashboard needs its token; open the URL that `runcache ui` \
                 printed (it ends in ?token=...), or send `Authorization: Bearer TOKEN`",
            );
        }
        if from_query.is_some() {
            set_cookie = Some(format!(
                "{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/"
            ));
        }
    }
    let mut response = next.run(req).await;
    let h = response.headers_mut();
    if let Some(c) = set_cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        h.insert(header::SET_COOKIE, c);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ));
    response
}

/// The refusal of a writing request, unless the dashboard allows writes and the page sent the
/// write header (after the person confirmed): `None` lets it through.
pub(crate) fn refuse_write(app: &App, headers: &HeaderMap) -> Option<Response> {
    if !app.allow_write {
        return Some(refuse(
            StatusCode::FORBIDDEN,
            "refused: this dashboard is read-only; start it with `runcache ui --allow-write`",
        ));
    }
    if headers.get(WRITE_HEADER).and_then(|v| v.to_str().ok()) != Some("yes") {
        return Some(refuse(
            StatusCode::FORBIDDEN,
            "refused: a writing request must carry the header X-Runcache-Write: yes",
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_found_and_compared() {
        assert_eq!(query_token(Some("a=1&token=abc")), Some("abc"));
        assert_eq!(query_token(Some("tokens=abc")), None);
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, "x=1; runcache_token=t0k".parse().unwrap());
        assert_eq!(cookie_token(&h), Some("t0k"));
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
        assert_eq!(new_token().len(), 32);
    }
}
