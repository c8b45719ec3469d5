//! `runcache ui`: a light, local, read-mostly web dashboard of one store — its namespaces,
//! entries, failures, leases and sweeps — served from the `runcache` binary.
//!
//! Every page is drawn by one embedded script ([`assets`]) from JSON endpoints ([`api`]) that
//! read the store through the engine's own APIs (no second reader of the layout). The page
//! never shows an unpickled value: manifests, key documents, logs and artifacts only, and the
//! script puts every text from the store on screen as text, never as markup.
//!
//! Security ([`guard`]): bound to 127.0.0.1 by default, where requests must name the local
//! host (no DNS rebinding); bound elsewhere a token is required (generated when not given) and
//! every request without it is refused. Read-only unless started with `allow_write`; the two
//! writing actions (delete an entry, cancel a sweep) also need a header a cross-site form
//! cannot send.

#![warn(missing_docs)]

mod api;
mod assets;
mod guard;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use runcache::Store;

/// How the dashboard is served.
#[derive(Clone, Debug)]
pub struct UiOptions {
    /// Address to listen on (default 127.0.0.1).
    pub bind: IpAddr,
    /// Port (0: any free port).
    pub port: u16,
    /// Token every request must carry (`?token=`, then a cookie; or `Authorization: Bearer`).
    /// Required when `bind` is not a loopback address: one is generated if `None`.
    pub token: Option<String>,
    /// Allow the writing actions (delete an entry, cancel a sweep).
    pub allow_write: bool,
}

impl Default for UiOptions {
    fn default() -> Self {
        UiOptions {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 8321,
            token: None,
            allow_write: false,
        }
    }
}

/// A dashboard that is listening.
#[derive(Clone, Debug)]
pub struct Listening {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The URL to open (with the token, if one is required).
    pub url: String,
    /// The token requests must carry, if any.
    pub token: Option<String>,
}

/// Shared by every request.
pub(crate) struct App {
    pub(crate) store: Store,
    pub(crate) allow_write: bool,
    pub(crate) token: Option<String>,
    pub(crate) addr: SocketAddr,
    pub(crate) overview: api::OverviewCache,
}

/// Serves the dashboard of `store` until the process ends (or the listener fails). Calls
/// `ready` once it listens (e.g. to print or open the URL). Errors: the address is in use or
/// cannot be bound, with what to do.
pub fn serve(
    store: Store,
    options: UiOptions,
    ready: impl FnOnce(&Listening),
) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| format!("cannot start the web server's runtime: {e}"))?;
    runtime.block_on(async move {
        let wanted = SocketAddr::new(options.bind, options.port);
        let listener = tokio::net::TcpListener::bind(wanted).await.map_err(|e| {
            format!("cannot listen on {wanted}: {e} (give another --port, or 0 for any free port)")
        })?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("cannot read the bound address: {e}"))?;
        let token = match options.token {
            Some(t) if t.is_empty() => return Err("--token must not be empty".into()),
            Some(t) => Some(t),
            None if !options.bind.is_loopback() => Some(guard::new_token()),
            None => None,
        };
        let url = match &token {
            Some(t) => format!("http://{addr}/?token={t}"),
            None => format!("http://{addr}/"),
        };
        let app = Arc::new(App {
            store,
            allow_write: options.allow_write,
            token: token.clone(),
            addr,
            overview: Default::default(),
        });
        ready(&Listening { addr, url, token });
        axum::serve(listener, api::router(app))
            .await
            .map_err(|e| format!("the web server stopped: {e}"))
    })
}
