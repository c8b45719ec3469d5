//! Where the PostgreSQL store is: parsing `postgres://` locations (never showing the password),
//! and the password from the URL, `PGPASSWORD` or the password file.

use std::path::Path;
use std::time::Duration;

use postgres::Config;

use crate::error::{Error, Result};
use crate::store::location::percent_decode;

/// The default schema when the location names none.
pub const DEFAULT_SCHEMA: &str = "runcache";

/// A parsed location. `password` is never shown.
pub(super) struct Target {
    pub(super) user: String,
    pub(super) password: Option<Vec<u8>>,
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) dbname: String,
    pub(super) schema: String,
    pub(super) connect_timeout: Duration,
    /// `postgres://user@host:port/db?schema=NAME`: the location without the password.
    pub(super) display: String,
}

/// The location with any password in its user-info part removed (for messages).
pub(super) fn redact(location: &str) -> String {
    let Some((scheme, rest)) = location.split_once("://") else {
        return location.to_string();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}@{host}{tail}")
        }
        None => location.to_string(),
    }
}

pub(super) fn valid_schema(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 63
}

impl Target {
    pub(super) fn parse(location: &str) -> Result<Target> {
        let shown = redact(location);
        let bad = |message: String| Error::BadStore {
            location: shown.clone(),
            message,
        };
        let rest = location
            .strip_prefix("postgres://")
            .or_else(|| location.strip_prefix("postgresql://"))
            .ok_or_else(|| bad("expected postgres://USER@HOST:PORT/DB?schema=NAME".into()))?;
        let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = main.split_once('/').unwrap_or((main, ""));
        let (userinfo, hostport) = authority.rsplit_once('@').unwrap_or(("", authority));
        let (user, url_password) =
            match userinfo.split_once(':') {
                Some((u, p)) => (
                    u,
                    Some(percent_decode(p).map_err(|_| {
                        bad("the password in the URL has a bad percent-escape".into())
                    })?),
                ),
                None => (userinfo, None),
            };
        let user = if user.is_empty() {
            std::env::var("PGUSER")
                .or_else(|_| std::env::var("USER"))
                .unwrap_or_else(|_| "postgres".into())
        } else {
            percent_decode(user).map_err(bad)?
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("unclosed `[` in the host".into()))?;
            (h.to_string(), after.strip_prefix(':').unwrap_or(""))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (percent_decode(h).map_err(bad)?, p),
                None => (percent_decode(hostport).map_err(bad)?, ""),
            }
        };
        let host = if host.is_empty() {
            "localhost".to_string()
        } else {
            host
        };
        let port: u16 = if port.is_empty() {
            5432
        } else {
            port.parse()
                .map_err(|_| bad(format!("bad port `{port}`: give a number, e.g. :5432")))?
        };
        let dbname = if path.is_empty() {
            user.clone()
        } else {
            percent_decode(path).map_err(bad)?
        };
        let mut schema = DEFAULT_SCHEMA.to_string();
        let mut connect_timeout = Duration::from_secs(10);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v).map_err(bad)?;
            match k {
                "schema" => {
                    if !valid_schema(&v) {
                        return Err(bad(format!(
                            "bad schema name `{v}`: use letters, digits and `_` (at most 63, not starting with a digit)"
                        )));
                    }
                    schema = v;
                }
                "connect_timeout" => {
                    let s: u64 = v.parse().map_err(|_| {
                        bad(format!("connect_timeout must be whole seconds, not `{v}`"))
                    })?;
                    connect_timeout = Duration::from_secs(s.max(1));
                }
                "sslmode" => match v.as_str() {
                    "disable" | "allow" | "prefer" => {}
                    _ => {
                        return Err(bad(format!(
                            "sslmode={v} is not supported: this build connects without TLS; use sslmode=disable, or reach the server through a TLS tunnel"
                        )))
                    }
                },
                _ => {
                    return Err(bad(format!(
                        "unknown option `{k}`; known options: schema, connect_timeout, sslmode"
                    )))
                }
            }
        }
        let host_shown = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        let display = format!(
            "postgres://{}@{host_shown}:{port}/{dbname}?schema={schema}",
            user
        );
        let password = match url_password {
            Some(p) => Some(p.into_bytes()),
            None => match std::env::var_os("PGPASSWORD") {
                Some(p) if !p.is_empty() => {
                    use std::os::unix::ffi::OsStrExt;
                    Some(p.as_bytes().to_vec())
                }
                _ => pgpass_lookup(&host, port, &dbname, &user).map(String::into_bytes),
            },
        };
        Ok(Target {
            user,
            password,
            host,
            port,
            dbname,
            schema,
            connect_timeout,
            display,
        })
    }

    /// `host:port/db`, for messages.
    pub(super) fn endpoint(&self) -> String {
        format!("{}:{}/{}", self.host, self.port, self.dbname)
    }

    pub(super) fn config(&self) -> Config {
        let mut c = Config::new();
        c.user(&self.user)
            .dbname(&self.dbname)
            .port(self.port)
            .connect_timeout(self.connect_timeout)
            .application_name("runcache")
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            // "schema already exists, skipping" and the like are not worth the user's attention.
            .notice_callback(|n| log::debug!("postgres notice: {}", n.message()));
        if self.host.starts_with('/') {
            c.host_path(&self.host);
        } else {
            c.host(&self.host);
        }
        if let Some(p) = &self.password {
            c.password(p);
        }
        c
    }
}

/// The password for (host, port, db, user) from `PGPASSFILE` or `~/.pgpass`, in libpq's format
/// (`host:port:db:user:password`, `*` matches anything, `\` escapes `:` and `\`).
pub(super) fn pgpass_lookup(host: &str, port: u16, db: &str, user: &str) -> Option<String> {
    let path = std::env::var_os("PGPASSFILE")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".pgpass")))?;
    let text = std::fs::read_to_string(path).ok()?;
    let port = port.to_string();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let mut fields = Vec::new();
        let mut cur = String::new();
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => cur.extend(chars.next()),
                ':' if fields.len() < 4 => fields.push(std::mem::take(&mut cur)),
                _ => cur.push(c),
            }
        }
        fields.push(cur);
        if fields.len() != 5 {
            continue;
        }
        let matches = |pattern: &str, value: &str| pattern == "*" || pattern == value;
        let host_ok = matches(&fields[0], host)
            || (fields[0] == "localhost" && (host.starts_with('/') || host == "127.0.0.1"));
        if host_ok
            && matches(&fields[1], &port)
            && matches(&fields[2], db)
            && matches(&fields[3], user)
        {
            return Some(fields.pop().unwrap_or_default());
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Connections
