//! The PostgreSQL store: manifests, blobs (chunked `bytea`), usage stamps, leases and records in
//! tables of one schema, shared by every process and machine that can reach the server. Layout,
//! commit and lease protocols: `docs/store-postgres.md`.
//!
//! Location: `postgres://USER[:PASSWORD]@HOST[:PORT]/DB?schema=NAME` (or `postgresql://`). The
//! password comes from the URL, else `PGPASSWORD`, else the password file (`PGPASSFILE` or
//! `~/.pgpass`); it never appears in [`Backend::location`] or in any message.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use postgres::{Client, Config, GenericClient, NoTls, Row, Statement};

use super::{
    check_record_kind, check_record_name, Backend, BackendOptions, BlobInfo, BlobReader, Stray,
};

mod strays;
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::key::Key;
use crate::lease::{LeaseBackend, LeaseRecord, LeaseState};

/// Version of the table layout this engine writes (kept in `runcache_meta`). An engine refuses
/// a schema with a higher version.
pub const SCHEMA_VERSION: u32 = 1;

/// Blobs are stored in rows of at most this many bytes.
pub const CHUNK_SIZE: usize = 1 << 20;

/// Idle connections kept per store handle.
const MAX_IDLE: usize = 8;

/// The default schema when the location names none.
pub const DEFAULT_SCHEMA: &str = "runcache";

/// Opens the store named by a `postgres://` or `postgresql://` location.
pub fn open(location: &str, _options: &BackendOptions) -> Result<Arc<dyn Backend>> {
    Ok(Arc::new(PostgresBackend::open(location)?))
}

/// True if `location` names a PostgreSQL store.
pub fn is_postgres_location(location: &str) -> bool {
    location.starts_with("postgres://") || location.starts_with("postgresql://")
}

// ---------------------------------------------------------------------------------------------
// Locations

/// A parsed location. `password` is never shown.
struct Target {
    user: String,
    password: Option<Vec<u8>>,
    host: String,
    port: u16,
    dbname: String,
    schema: String,
    connect_timeout: Duration,
    /// `postgres://user@host:port/db?schema=NAME`: the location without the password.
    display: String,
}

/// The location with any password in its user-info part removed (for messages).
fn redact(location: &str) -> String {
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

fn percent_decode(s: &str) -> std::result::Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent-escape in `{s}`"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("`{s}` is not UTF-8 once decoded"))
}

fn valid_schema(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 63
}

impl Target {
    fn parse(location: &str) -> Result<Target> {
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
    fn endpoint(&self) -> String {
        format!("{}:{}/{}", self.host, self.port, self.dbname)
    }

    fn config(&self) -> Config {
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
fn pgpass_lookup(host: &str, port: u16, db: &str, user: &str) -> Option<String> {
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

/// One connection with its prepared statements.
struct Conn {
    client: Client,
    statements: HashMap<String, Statement>,
}

/// Prepares `sql` once per connection.
fn prepared(
    statements: &mut HashMap<String, Statement>,
    client: &mut impl GenericClient,
    sql: &str,
) -> std::result::Result<Statement, postgres::Error> {
    if let Some(s) = statements.get(sql) {
        return Ok(s.clone());
    }
    let s = client.prepare(sql)?;
    statements.insert(sql.to_string(), s.clone());
    Ok(s)
}

impl Conn {
    fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> std::result::Result<Vec<Row>, postgres::Error> {
        let st = prepared(&mut self.statements, &mut self.client, sql)?;
        self.client.query(&st, params)
    }

    fn execute(
        &mut self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> std::result::Result<u64, postgres::Error> {
        let st = prepared(&mut self.statements, &mut self.client, sql)?;
        self.client.execute(&st, params)
    }
}

/// The shared part of a store handle: where to connect, the SQL, a small pool of idle
/// connections (no background threads; a closed connection is dropped, never reused).
struct Db {
    target: Target,
    config: Config,
    sql: Sql,
    idle: Mutex<Vec<Conn>>,
}

/// A connection borrowed from the pool; returned on drop unless it is closed.
struct Pooled<'a> {
    db: &'a Db,
    conn: Option<Conn>,
}

impl std::ops::Deref for Pooled<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn.as_ref().expect("present until drop")
    }
}

impl std::ops::DerefMut for Pooled<'_> {
    fn deref_mut(&mut self) -> &mut Conn {
        self.conn.as_mut().expect("present until drop")
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            if !conn.client.is_closed() {
                let mut idle = self.db.idle_lock();
                if idle.len() < MAX_IDLE {
                    idle.push(conn);
                }
            }
        }
    }
}

impl Db {
    fn idle_lock(&self) -> MutexGuard<'_, Vec<Conn>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn connect(&self) -> Result<Conn> {
        let client = self.config.connect(NoTls).map_err(|e| Error::BadStore {
            location: self.target.display.clone(),
            message: format!(
                "cannot connect to postgres at {}: {}; check the URL (host, port, database, user), that the server is running, and the password (in the URL, PGPASSWORD or ~/.pgpass)",
                self.target.endpoint(),
                describe(&e)
            ),
        })?;
        Ok(Conn {
            client,
            statements: HashMap::new(),
        })
    }

    fn conn(&self) -> Result<Pooled<'_>> {
        loop {
            let next = self.idle_lock().pop();
            match next {
                Some(c) if c.client.is_closed() => continue,
                Some(c) => {
                    return Ok(Pooled {
                        db: self,
                        conn: Some(c),
                    })
                }
                None => {
                    return Ok(Pooled {
                        db: self,
                        conn: Some(self.connect()?),
                    })
                }
            }
        }
    }

    /// Maps a failed statement to an error naming the operation, the server and the fix.
    fn err(&self, doing: &str, e: postgres::Error) -> Error {
        let lost = e.is_closed()
            || match e.as_db_error() {
                // FATAL/PANIC end the session: admin shutdown (57P01), crash, a killed backend.
                Some(d) => {
                    matches!(d.severity(), "FATAL" | "PANIC")
                        || d.code().code().starts_with("08")
                        || d.code().code().starts_with("57P")
                }
                None => is_io(&e),
            };
        let message = if lost {
            format!(
                "postgres: the connection to {} was lost while {doing} ({}); nothing partial was committed. Retry once the server is reachable",
                self.target.endpoint(),
                describe(&e)
            )
        } else {
            format!(
                "postgres at {}: {doing} failed: {}",
                self.target.endpoint(),
                describe(&e)
            )
        };
        Error::io(self.target.display.clone(), std::io::Error::other(message))
    }

    /// Runs one statement on a pooled connection, returning its rows.
    fn query(
        &self,
        doing: &str,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>> {
        let mut c = self.conn()?;
        c.query(sql, params).map_err(|e| self.err(doing, e))
    }

    /// Runs one statement on a pooled connection, returning the number of rows it changed.
    fn execute(
        &self,
        doing: &str,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<u64> {
        let mut c = self.conn()?;
        c.execute(sql, params).map_err(|e| self.err(doing, e))
    }

    /// Creates the schema or checks (and migrates) its version.
    fn migrate(&self) -> Result<()> {
        let s = &self.sql.schema;
        let mut c = self.conn()?;
        let doing = "checking the schema version";
        // Fast path: no DDL (and no CREATE privilege needed) when the schema is current and has
        // every table (`records` came later than version 1; see `records_table_sql`).
        let rows = c
            .client
            .query(
                "SELECT to_regclass($1) IS NOT NULL, to_regclass($2) IS NOT NULL",
                &[&format!("{s}.runcache_meta"), &format!("{s}.records")],
            )
            .map_err(|e| self.err(doing, e))?;
        let has_records = rows[0].get::<_, bool>(1);
        let mut current = false;
        if rows[0].get::<_, bool>(0) {
            if let Some(v) = self.read_version(&mut c.client)? {
                current = v == SCHEMA_VERSION;
                if current && has_records {
                    return Ok(());
                }
            }
        }
        if current {
            // A current schema made by an engine without records: only that table is missing.
            return self.add_records_table(&mut c.client);
        }
        let doing = "creating the store's tables";
        let mut tx = c.client.transaction().map_err(|e| self.err(doing, e))?;
        // Serialises concurrent creators; released at commit (a transaction lock, not a session one).
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext($1))",
            &[&format!("runcache schema {s}")],
        )
        .map_err(|e| self.err(doing, e))?;
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {s};
             CREATE TABLE IF NOT EXISTS {s}.runcache_meta (name text PRIMARY KEY, value text NOT NULL);"
        ))
        .map_err(|e| self.err(doing, e))?;
        match self.read_version(&mut tx)? {
            Some(v) if v == SCHEMA_VERSION => {}
            Some(v) if v > SCHEMA_VERSION => unreachable!("read_version refuses newer schemas"),
            Some(v) => {
                // No older layout has ever been released; a future version migrates here.
                return Err(Error::BadStore {
                    location: self.target.display.clone(),
                    message: format!(
                        "schema version {v} is older than any this engine can migrate (current {SCHEMA_VERSION})"
                    ),
                });
            }
            None => {
                tx.batch_execute(&create_tables_sql(s))
                    .map_err(|e| self.err(doing, e))?;
                tx.execute(
                    &format!(
                        "INSERT INTO {s}.runcache_meta (name, value) VALUES
                         ('schema_version', $1), ('created_by', $2)"
                    ),
                    &[
                        &SCHEMA_VERSION.to_string(),
                        &format!("runcache {}", env!("CARGO_PKG_VERSION")),
                    ],
                )
                .map_err(|e| self.err(doing, e))?;
            }
        }
        tx.batch_execute(&records_table_sql(s))
            .map_err(|e| self.err(doing, e))?;
        tx.commit().map_err(|e| self.err(doing, e))
    }

    /// Adds the `records` table to a schema at the current version that lacks it. A role without
    /// the right to create tables there still opens the store (with a warning): everything but
    /// records works, and record operations fail until someone who may create the table opens it.
    fn add_records_table(&self, client: &mut Client) -> Result<()> {
        let s = &self.sql.schema;
        let doing = "adding the records table";
        let mut tx = client.transaction().map_err(|e| self.err(doing, e))?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext($1))",
            &[&format!("runcache schema {s}")],
        )
        .map_err(|e| self.err(doing, e))?;
        match tx.batch_execute(&records_table_sql(s)) {
            Ok(()) => tx.commit().map_err(|e| self.err(doing, e)),
            Err(e) if e.code() == Some(&postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) => {
                log::warn!(
                    "runcache: the store {} has no records table and this role may not create it ({}); records are unavailable until a role with CREATE on the schema opens the store",
                    self.target.display,
                    describe(&e)
                );
                Ok(())
            }
            Err(e) => Err(self.err(doing, e)),
        }
    }

    /// The schema version recorded in `runcache_meta`; refuses a newer one.
    fn read_version(&self, client: &mut impl GenericClient) -> Result<Option<u32>> {
        let rows = client
            .query(
                &format!(
                    "SELECT value FROM {}.runcache_meta WHERE name = 'schema_version'",
                    self.sql.schema
                ),
                &[],
            )
            .map_err(|e| self.err("checking the schema version", e))?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let text: String = row.get(0);
        let v: u32 = text.trim().parse().map_err(|_| Error::Malformed {
            what: "schema version",
            path: format!("{} (table runcache_meta)", self.target.display),
            message: format!("`{text}` is not a number"),
        })?;
        if v > SCHEMA_VERSION {
            return Err(Error::NewerFormat {
                path: self.target.display.clone(),
                found: v,
                supported: SCHEMA_VERSION,
                engine: env!("CARGO_PKG_VERSION"),
            });
        }
        Ok(Some(v))
    }
}

fn is_io(e: &postgres::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if s.is::<std::io::Error>() {
            return true;
        }
        src = s.source();
    }
    false
}

/// A postgres error with its causes and, for server errors, detail and hint.
fn describe(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{}: {}", db.severity(), db.message());
        if let Some(d) = db.detail() {
            s.push_str(&format!(" ({d})"));
        }
        if let Some(h) = db.hint() {
            s.push_str(&format!("; hint: {h}"));
        }
        return s;
    }
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(cause) = src {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(&format!(": {c}"));
        }
        src = cause.source();
    }
    s
}

/// The `records` table (named, mutable documents; `Backend::put_record`). It came after stores
/// at schema version 1 were in use; older engines never touch it, so it is created with
/// `IF NOT EXISTS` both with a new schema and when a current one lacks it, without a version
/// bump (which would make older engines refuse the store).
fn records_table_sql(s: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {s}.records (
             kind text NOT NULL,
             name text NOT NULL,
             body bytea NOT NULL,
             updated_at timestamptz NOT NULL DEFAULT now(),
             PRIMARY KEY (kind, name));"
    )
}

fn create_tables_sql(s: &str) -> String {
    format!(
        "CREATE TABLE {s}.manifests (
             key bytea PRIMARY KEY,
             namespace text,
             status text,
             body bytea NOT NULL,
             created timestamptz NOT NULL DEFAULT now(),
             updated timestamptz NOT NULL DEFAULT now());
         CREATE INDEX ON {s}.manifests (namespace);
         CREATE TABLE {s}.blobs (
             digest bytea PRIMARY KEY,
             size bigint NOT NULL,
             chunks integer NOT NULL,
             written_at timestamptz NOT NULL DEFAULT now());
         CREATE TABLE {s}.blob_chunks (
             digest bytea NOT NULL,
             chunk_no integer NOT NULL,
             data bytea NOT NULL,
             PRIMARY KEY (digest, chunk_no));
         ALTER TABLE {s}.blob_chunks ALTER COLUMN data SET STORAGE EXTERNAL;
         CREATE TABLE {s}.used (
             key bytea PRIMARY KEY,
             unix_ms bigint NOT NULL);
         CREATE TABLE {s}.leases (
             key bytea PRIMARY KEY,
             generation bigint NOT NULL,
             owner text,
             record bytea,
             ttl_ms bigint NOT NULL,
             beat bigint NOT NULL DEFAULT 0,
             beat_at timestamptz NOT NULL DEFAULT now(),
             acquired_at timestamptz NOT NULL DEFAULT now(),
             released boolean NOT NULL DEFAULT false);
         CREATE TABLE {s}.queue (
             id bigserial PRIMARY KEY,
             kind text NOT NULL,
             key bytea,
             payload jsonb NOT NULL DEFAULT '{{}}',
             state text NOT NULL DEFAULT 'pending',
             not_before timestamptz NOT NULL DEFAULT now(),
             attempts integer NOT NULL DEFAULT 0,
             locked_by text,
             locked_at timestamptz,
             created timestamptz NOT NULL DEFAULT now());
         CREATE INDEX ON {s}.queue (state, not_before, id);"
    )
}

/// Every statement, with the schema filled in.
struct Sql {
    /// The quoted schema name.
    schema: String,
    has_blob: String,
    blob_insert_header: String,
    blob_refresh: String,
    blob_insert_chunk: String,
    blob_open: String,
    blob_chunk: String,
    blob_size: String,
    blob_delete: String,
    blob_list: String,
    manifest_insert: String,
    manifest_upsert: String,
    manifest_get: String,
    manifest_get_many: String,
    manifest_delete: String,
    manifest_list: String,
    touch: String,
    last_used: String,
    forget_usage: String,
    lease_read: String,
    lease_create: String,
    lease_beat: String,
    lease_release: String,
    lease_list: String,
    lease_clean: String,
    record_put: String,
    record_get: String,
    record_list: String,
    record_delete: String,
}

impl Sql {
    fn new(schema: &str) -> Sql {
        let s = format!("\"{schema}\"");
        let lease_cols = "generation, record, beat, released, \
             now() - beat_at > ttl_ms * interval '1 millisecond'";
        Sql {
            has_blob: format!("SELECT 1 FROM {s}.blobs WHERE digest = $1"),
            blob_insert_header: format!(
                "INSERT INTO {s}.blobs (digest, size, chunks) VALUES ($1, $2, $3)
                 ON CONFLICT (digest) DO NOTHING"
            ),
            blob_refresh: format!("UPDATE {s}.blobs SET written_at = now() WHERE digest = $1"),
            blob_insert_chunk: format!(
                "INSERT INTO {s}.blob_chunks (digest, chunk_no, data) VALUES ($1, $2, $3)"
            ),
            blob_open: format!(
                "SELECT b.chunks, c.data FROM {s}.blobs b
                 LEFT JOIN {s}.blob_chunks c ON c.digest = b.digest AND c.chunk_no = 0
                 WHERE b.digest = $1"
            ),
            blob_chunk: format!(
                "SELECT data FROM {s}.blob_chunks WHERE digest = $1 AND chunk_no = $2"
            ),
            blob_size: format!("SELECT size FROM {s}.blobs WHERE digest = $1"),
            blob_delete: format!(
                "WITH header AS (DELETE FROM {s}.blobs WHERE digest = $1)
                 DELETE FROM {s}.blob_chunks WHERE digest = $1"
            ),
            blob_list: format!(
                "SELECT digest, size, GREATEST(0, EXTRACT(EPOCH FROM now() - written_at))::bigint
                 FROM {s}.blobs"
            ),
            manifest_insert: format!(
                "INSERT INTO {s}.manifests (key, namespace, status, body) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (key) DO NOTHING"
            ),
            manifest_upsert: format!(
                "INSERT INTO {s}.manifests (key, namespace, status, body) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (key) DO UPDATE SET namespace = EXCLUDED.namespace,
                     status = EXCLUDED.status, body = EXCLUDED.body, updated = now()"
            ),
            manifest_get: format!("SELECT body FROM {s}.manifests WHERE key = $1"),
            manifest_get_many: format!("SELECT key, body FROM {s}.manifests WHERE key = ANY($1)"),
            manifest_delete: format!("DELETE FROM {s}.manifests WHERE key = $1"),
            manifest_list: format!("SELECT key FROM {s}.manifests"),
            touch: format!(
                "INSERT INTO {s}.used (key, unix_ms) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET unix_ms = EXCLUDED.unix_ms"
            ),
            last_used: format!("SELECT unix_ms FROM {s}.used WHERE key = $1"),
            forget_usage: format!("DELETE FROM {s}.used WHERE key = $1"),
            lease_read: format!("SELECT {lease_cols} FROM {s}.leases WHERE key = $1"),
            // Wins iff the key has no lease row or a lower generation: one atomic statement, so
            // exactly one of any number of racing claimants of a generation wins it.
            lease_create: format!(
                "INSERT INTO {s}.leases AS l (key, generation, owner, record, ttl_ms)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (key) DO UPDATE SET generation = EXCLUDED.generation,
                     owner = EXCLUDED.owner, record = EXCLUDED.record, ttl_ms = EXCLUDED.ttl_ms,
                     beat = 0, beat_at = now(), acquired_at = now(), released = false
                 WHERE l.generation < EXCLUDED.generation
                 RETURNING l.generation"
            ),
            lease_beat: format!(
                "UPDATE {s}.leases SET beat = $4, beat_at = now()
                 WHERE key = $1 AND generation = $2 AND owner = $3 AND NOT released
                 RETURNING record"
            ),
            lease_release: format!(
                "UPDATE {s}.leases SET released = true, beat_at = now()
                 WHERE key = $1 AND generation = $2 AND owner = $3 AND NOT released"
            ),
            lease_list: format!(
                "SELECT key, {lease_cols} FROM {s}.leases WHERE record IS NOT NULL ORDER BY key"
            ),
            lease_clean: format!(
                "UPDATE {s}.leases SET record = NULL, owner = NULL WHERE key = $1 AND released"
            ),
            record_put: format!(
                "INSERT INTO {s}.records (kind, name, body) VALUES ($1, $2, $3)
                 ON CONFLICT (kind, name) DO UPDATE SET body = EXCLUDED.body, updated_at = now()"
            ),
            record_get: format!("SELECT body FROM {s}.records WHERE kind = $1 AND name = $2"),
            record_list: format!("SELECT name FROM {s}.records WHERE kind = $1"),
            record_delete: format!("DELETE FROM {s}.records WHERE kind = $1 AND name = $2"),
            schema: s,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The backend

/// A store in a PostgreSQL database (one schema per store).
pub struct PostgresBackend {
    db: Arc<Db>,
    leases: Arc<PostgresLeases>,
}

impl fmt::Debug for PostgresBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresBackend")
            .field("location", &self.db.target.display)
            .finish_non_exhaustive()
    }
}

fn key_from(bytes: &[u8], db: &Db, what: &'static str) -> Result<Key> {
    let arr: [u8; 32] = bytes.try_into().map_err(|_| Error::Malformed {
        what,
        path: format!(
            "{} ({what} key of {} bytes)",
            db.target.display,
            bytes.len()
        ),
        message: "keys are 32 bytes".into(),
    })?;
    Ok(Key(Digest::from_bytes(arr)))
}

fn digest_from(bytes: &[u8], db: &Db) -> Result<Digest> {
    key_from(bytes, db, "blob digest").map(|k| k.0)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl PostgresBackend {
    /// Connects to the server named by `location`, creating the schema and its tables (or
    /// checking their version) on first use.
    pub fn open(location: &str) -> Result<PostgresBackend> {
        let target = Target::parse(location)?;
        let sql = Sql::new(&target.schema);
        let db = Arc::new(Db {
            config: target.config(),
            target,
            sql,
            idle: Mutex::new(Vec::new()),
        });
        db.migrate()?;
        Ok(PostgresBackend {
            leases: Arc::new(PostgresLeases {
                db: db.clone(),
                expiry: Mutex::new(HashMap::new()),
            }),
            db,
        })
    }

    /// The schema this store lives in (unquoted).
    pub fn schema(&self) -> &str {
        &self.db.target.schema
    }

    /// Stores a blob from `reader` (`size` bytes) in one transaction: the header row and every
    /// chunk become visible together at commit, or not at all.
    fn upload(
        &self,
        digest: &Digest,
        size: u64,
        reader: &mut dyn Read,
        origin: &str,
    ) -> Result<()> {
        let db = &*self.db;
        let doing = format!("storing blob {digest}");
        let chunks = size.div_ceil(CHUNK_SIZE as u64);
        let chunks = i32::try_from(chunks).map_err(|_| {
            Error::Invalid(format!(
                "blob {digest} of {size} bytes is too large for the postgres store"
            ))
        })?;
        let d = &digest.as_bytes()[..];
        let mut pooled = db.conn()?;
        let Conn { client, statements } = &mut *pooled;
        let mut tx = client.transaction().map_err(|e| db.err(&doing, e))?;
        let header = prepared(statements, &mut tx, &db.sql.blob_insert_header)
            .map_err(|e| db.err(&doing, e))?;
        // Waits for a concurrent uploader of the same digest to commit or roll back.
        let inserted = tx
            .execute(&header, &[&d, &to_i64(size), &chunks])
            .map_err(|e| db.err(&doing, e))?;
        if inserted == 0 {
            // Already stored: refresh its age (gc's grace period) and keep it.
            let refresh = prepared(statements, &mut tx, &db.sql.blob_refresh)
                .map_err(|e| db.err(&doing, e))?;
            tx.execute(&refresh, &[&d]).map_err(|e| db.err(&doing, e))?;
            return tx.commit().map_err(|e| db.err(&doing, e));
        }
        let insert = prepared(statements, &mut tx, &db.sql.blob_insert_chunk)
            .map_err(|e| db.err(&doing, e))?;
        let mut buf = vec![0u8; CHUNK_SIZE.min(size as usize)];
        let mut left = size;
        for chunk_no in 0..chunks {
            let n = (left.min(CHUNK_SIZE as u64)) as usize;
            reader.read_exact(&mut buf[..n]).at(origin)?;
            tx.execute(&insert, &[&d, &chunk_no, &&buf[..n]])
                .map_err(|e| db.err(&doing, e))?;
            left -= n as u64;
        }
        tx.commit().map_err(|e| db.err(&doing, e))
    }
}

/// Namespace and status of a manifest, for the indexed columns (the body is authoritative;
/// a manifest that does not parse gets NULLs).
fn manifest_columns(bytes: &[u8]) -> (Option<String>, Option<String>) {
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(v) => (
            v.get("namespace")
                .and_then(|x| x.as_str())
                .map(String::from),
            v.get("status").and_then(|x| x.as_str()).map(String::from),
        ),
        Err(_) => (None, None),
    }
}

impl Backend for PostgresBackend {
    fn location(&self) -> String {
        self.db.target.display.clone()
    }

    fn has_blob(&self, digest: &Digest) -> Result<bool> {
        let d = &digest.as_bytes()[..];
        Ok(!self
            .db
            .query("looking up a blob", &self.db.sql.has_blob, &[&d])?
            .is_empty())
    }

    fn put_blob(&self, digest: &Digest, data: &[u8]) -> Result<()> {
        let mut reader = data;
        self.upload(digest, data.len() as u64, &mut reader, "<memory>")
    }

    fn put_blob_file(&self, digest: &Digest, path: &Path) -> Result<()> {
        let mut file = std::fs::File::open(path).at(path)?;
        let size = file.metadata().at(path)?.len();
        self.upload(digest, size, &mut file, &path.display().to_string())
    }

    fn open_blob(&self, digest: &Digest) -> Result<Option<BlobReader>> {
        let d = &digest.as_bytes()[..];
        let rows = self
            .db
            .query("opening a blob", &self.db.sql.blob_open, &[&d])?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let chunks: i32 = row.get(0);
        let first: Option<Vec<u8>> = row.get(1);
        Ok(Some(Box::new(ChunkReader {
            db: self.db.clone(),
            digest: *digest,
            chunks,
            next: 1,
            buf: first.unwrap_or_default(),
            pos: 0,
        })))
    }

    fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        let d = &digest.as_bytes()[..];
        let rows = self
            .db
            .query("reading a blob's size", &self.db.sql.blob_size, &[&d])?;
        Ok(rows.first().map(|r| r.get::<_, i64>(0).max(0) as u64))
    }

    fn delete_blob(&self, digest: &Digest) -> Result<()> {
        let d = &digest.as_bytes()[..];
        self.db
            .execute("deleting a blob", &self.db.sql.blob_delete, &[&d])?;
        Ok(())
    }

    fn list_blobs(&self) -> Result<Vec<BlobInfo>> {
        let rows = self
            .db
            .query("listing blobs", &self.db.sql.blob_list, &[])?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                Some(BlobInfo {
                    digest: digest_from(r.get(0), &self.db).ok()?,
                    size: r.get::<_, i64>(1).max(0) as u64,
                    age_s: Some(r.get::<_, i64>(2).max(0) as u64),
                })
            })
            .collect())
    }

    fn put_manifest(&self, key: &Key, bytes: &[u8], replace: bool) -> Result<bool> {
        let (namespace, status) = manifest_columns(bytes);
        let k = &key.0.as_bytes()[..];
        let sql = if replace {
            &self.db.sql.manifest_upsert
        } else {
            &self.db.sql.manifest_insert
        };
        let n = self.db.execute(
            "committing a manifest",
            sql,
            &[&k, &namespace, &status, &bytes],
        )?;
        Ok(n == 1)
    }

    fn get_manifest(&self, key: &Key) -> Result<Option<Vec<u8>>> {
        let k = &key.0.as_bytes()[..];
        let rows = self
            .db
            .query("reading a manifest", &self.db.sql.manifest_get, &[&k])?;
        // A NULL body (a table altered by hand) reads as empty: a damaged entry.
        Ok(rows
            .first()
            .map(|r| r.get::<_, Option<Vec<u8>>>(0).unwrap_or_default()))
    }

    fn get_manifests(&self, keys: &[Key]) -> Result<Vec<Option<Vec<u8>>>> {
        // One query for the whole list: a batch of N lookups is one round trip, not N.
        let wanted: Vec<&[u8]> = keys.iter().map(|k| &k.0.as_bytes()[..]).collect();
        let rows = self.db.query(
            "reading manifests",
            &self.db.sql.manifest_get_many,
            &[&wanted],
        )?;
        let mut found: HashMap<Key, Vec<u8>> = HashMap::with_capacity(rows.len());
        for r in &rows {
            // A row with a bad key is a stray (`strays`), never one of the keys asked for.
            if let Ok(key) = key_from(r.get(0), &self.db, "manifest") {
                found.insert(key, r.get::<_, Option<Vec<u8>>>(1).unwrap_or_default());
            }
        }
        Ok(keys.iter().map(|k| found.get(k).cloned()).collect())
    }

    fn delete_manifest(&self, key: &Key) -> Result<()> {
        let k = &key.0.as_bytes()[..];
        self.db
            .execute("deleting a manifest", &self.db.sql.manifest_delete, &[&k])?;
        Ok(())
    }

    fn list_manifests(&self) -> Result<Vec<Key>> {
        let rows = self
            .db
            .query("listing manifests", &self.db.sql.manifest_list, &[])?;
        // A row with a bad key is a stray (`strays`), not a failed listing.
        Ok(rows
            .iter()
            .filter_map(|r| key_from(r.get(0), &self.db, "manifest").ok())
            .collect())
    }

    fn strays(&self) -> Result<Vec<Stray>> {
        self.find_strays()
    }

    fn remove_stray(&self, stray: &Stray) -> Result<()> {
        self.delete_stray(&stray.id)
    }

    fn manifest_location(&self, key: &Key) -> String {
        format!("{} (table manifests, key {key})", self.db.target.display)
    }

    fn touch(&self, key: &Key, unix_ms: u64) -> Result<()> {
        let k = &key.0.as_bytes()[..];
        self.db.execute(
            "recording a use",
            &self.db.sql.touch,
            &[&k, &to_i64(unix_ms)],
        )?;
        Ok(())
    }

    fn last_used(&self, key: &Key) -> Result<Option<u64>> {
        let k = &key.0.as_bytes()[..];
        let rows = self
            .db
            .query("reading a use record", &self.db.sql.last_used, &[&k])?;
        Ok(rows.first().map(|r| r.get::<_, i64>(0).max(0) as u64))
    }

    fn forget_usage(&self, key: &Key) -> Result<()> {
        let k = &key.0.as_bytes()[..];
        self.db
            .execute("forgetting a use record", &self.db.sql.forget_usage, &[&k])?;
        Ok(())
    }

    fn leases(&self) -> Arc<dyn LeaseBackend> {
        self.leases.clone()
    }

    fn put_record(&self, kind: &str, name: &str, bytes: &[u8]) -> Result<()> {
        check_record_name(kind, name)?;
        // One statement: readers see the old row or the new one.
        self.db.execute(
            "writing a record",
            &self.db.sql.record_put,
            &[&kind, &name, &bytes],
        )?;
        Ok(())
    }

    fn get_record(&self, kind: &str, name: &str) -> Result<Option<Vec<u8>>> {
        check_record_name(kind, name)?;
        let rows = self
            .db
            .query("reading a record", &self.db.sql.record_get, &[&kind, &name])?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    fn list_records(&self, kind: &str) -> Result<Vec<String>> {
        check_record_kind(kind)?;
        let rows = self
            .db
            .query("listing records", &self.db.sql.record_list, &[&kind])?;
        // Sorted here: `ORDER BY` would follow the database's collation, not byte order.
        let mut names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        names.sort();
        Ok(names)
    }

    fn delete_record(&self, kind: &str, name: &str) -> Result<bool> {
        check_record_name(kind, name)?;
        let n = self.db.execute(
            "deleting a record",
            &self.db.sql.record_delete,
            &[&kind, &name],
        )?;
        Ok(n == 1)
    }
}

/// Streams a blob one chunk (one row) at a time.
struct ChunkReader {
    db: Arc<Db>,
    digest: Digest,
    chunks: i32,
    next: i32,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos >= self.buf.len() {
            if self.next >= self.chunks {
                return Ok(0);
            }
            let d = &self.digest.as_bytes()[..];
            let rows = self
                .db
                .query("reading a blob", &self.db.sql.blob_chunk, &[&d, &self.next])
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let Some(row) = rows.first() else {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "chunk {} of blob {} is missing in {} (deleted while being read?)",
                        self.next, self.digest, self.db.target.display
                    ),
                ));
            };
            self.buf = row.get(0);
            self.pos = 0;
            self.next += 1;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

// ---------------------------------------------------------------------------------------------
// Leases

/// Leases as rows of the `leases` table, with heartbeat times from the server's clock.
pub struct PostgresLeases {
    db: Arc<Db>,
    /// Per key, the (generation, beat) last read and whether the server judged it expired then.
    expiry: Mutex<HashMap<Key, (u64, u64, bool)>>,
}

impl fmt::Debug for PostgresLeases {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresLeases")
            .field("location", &self.db.target.display)
            .finish_non_exhaustive()
    }
}

impl PostgresLeases {
    fn parse_record(&self, key: &Key, generation: u64, bytes: &[u8]) -> Result<LeaseRecord> {
        serde_json::from_slice(bytes).map_err(|e| Error::Malformed {
            what: "lease record",
            path: format!(
                "{} (table leases, key {key}, generation {generation})",
                self.db.target.display
            ),
            message: e.to_string(),
        })
    }

    /// Turns a row of `generation, record, beat, released, expired` (from `offset`) into a state.
    fn state(&self, key: &Key, row: &Row, offset: usize) -> Result<LeaseState> {
        let generation = row.get::<_, i64>(offset).max(0) as u64;
        let record: Option<Vec<u8>> = row.get(offset + 1);
        let beat = row.get::<_, i64>(offset + 2).max(0) as u64;
        let released: bool = row.get(offset + 3);
        let expired: bool = row.get::<_, Option<bool>>(offset + 4).unwrap_or(false);
        let mut cache = self.expiry.lock().unwrap_or_else(|e| e.into_inner());
        match record {
            Some(bytes) if !released => {
                let record = self.parse_record(key, generation, &bytes)?;
                cache.insert(*key, (generation, beat, expired));
                Ok(LeaseState::Held { record, beat })
            }
            _ => {
                cache.remove(key);
                Ok(LeaseState::Free {
                    next_generation: generation + 1,
                })
            }
        }
    }
}

impl LeaseBackend for PostgresLeases {
    fn read(&self, key: &Key) -> Result<LeaseState> {
        let k = &key.0.as_bytes()[..];
        let rows = self
            .db
            .query("reading a lease", &self.db.sql.lease_read, &[&k])?;
        match rows.first() {
            None => {
                self.expiry
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(key);
                Ok(LeaseState::Free { next_generation: 1 })
            }
            Some(row) => self.state(key, row, 0),
        }
    }

    fn try_create(&self, key: &Key, record: &LeaseRecord) -> Result<bool> {
        if record.generation == 0 {
            return Err(Error::Invalid("lease generations start at 1".into()));
        }
        let k = &key.0.as_bytes()[..];
        let body = serde_json::to_vec(record)
            .map_err(|e| Error::Invalid(format!("cannot encode a lease record: {e}")))?;
        let rows = self.db.query(
            "acquiring a lease",
            &self.db.sql.lease_create,
            &[
                &k,
                &to_i64(record.generation),
                &record.owner,
                &body,
                &to_i64(record.ttl_ms),
            ],
        )?;
        Ok(!rows.is_empty())
    }

    fn beat(&self, key: &Key, generation: u64, owner: &str, beat: u64) -> Result<bool> {
        let k = &key.0.as_bytes()[..];
        let rows = self.db.query(
            "publishing a heartbeat",
            &self.db.sql.lease_beat,
            &[&k, &to_i64(generation), &owner, &to_i64(beat)],
        )?;
        match rows.first() {
            None => Ok(false),
            Some(row) => {
                // The ownership columns matched; a damaged record is still reported as damage.
                let bytes: Option<Vec<u8>> = row.get(0);
                self.parse_record(key, generation, bytes.as_deref().unwrap_or_default())?;
                Ok(true)
            }
        }
    }

    fn release(&self, key: &Key, generation: u64, owner: &str) -> Result<bool> {
        let k = &key.0.as_bytes()[..];
        let n = self.db.execute(
            "releasing a lease",
            &self.db.sql.lease_release,
            &[&k, &to_i64(generation), &owner],
        )?;
        Ok(n == 1)
    }

    fn list(&self) -> Result<Vec<(Key, LeaseState)>> {
        let rows = self
            .db
            .query("listing leases", &self.db.sql.lease_list, &[])?;
        // A row with a bad key or an unparsable record is a stray of the store.
        Ok(rows
            .iter()
            .filter_map(|row| {
                let key = key_from(row.get(0), &self.db, "lease").ok()?;
                Some((key, self.state(&key, row, 1).ok()?))
            })
            .collect())
    }

    fn clean(&self, key: &Key) -> Result<()> {
        let k = &key.0.as_bytes()[..];
        self.db
            .execute("cleaning a lease", &self.db.sql.lease_clean, &[&k])?;
        Ok(())
    }

    fn expired(&self, key: &Key, generation: u64, beat: u64) -> Result<Option<bool>> {
        let cache = self.expiry.lock().unwrap_or_else(|e| e.into_inner());
        Ok(match cache.get(key) {
            Some(&(g, b, expired)) if g == generation && b == beat => Some(expired),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_and_never_show_the_password() {
        let t = Target::parse("postgresql://me:s%40cret@db.example:6543/prod?schema=rc_1").unwrap();
        assert_eq!(t.user, "me");
        assert_eq!(t.password.as_deref(), Some(&b"s@cret"[..]));
        assert_eq!((t.host.as_str(), t.port), ("db.example", 6543));
        assert_eq!(t.dbname, "prod");
        assert_eq!(t.schema, "rc_1");
        assert_eq!(t.display, "postgres://me@db.example:6543/prod?schema=rc_1");
        assert!(!format!("{:?}", t.config()).contains("s@cret"));
        let t = Target::parse("postgres://u@[::1]/d").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.schema.as_str()),
            ("::1", 5432, "runcache")
        );
        for (bad, needle) in [
            ("postgres://u:pw@h/d?schema=1x", "bad schema name"),
            ("postgres://u:pw@h/d?schema=a;drop", "bad schema name"),
            ("postgres://u:pw@h:port/d", "bad port"),
            ("postgres://u:pw@h/d?colour=blue", "unknown option `colour`"),
            ("postgres://u:pw@h/d?sslmode=require", "TLS"),
        ] {
            let e = Target::parse(bad).err().expect(bad).to_string();
            assert!(e.contains(needle), "{bad}: {e}");
            assert!(!e.contains("pw"), "password leaked: {e}");
        }
        assert_eq!(
            redact("postgres://u:secret@h:1/d?schema=x"),
            "postgres://u@h:1/d?schema=x"
        );
    }

    #[test]
    fn pgpass_lines_match_like_libpq() {
        let dir = std::env::temp_dir().join(format!("rc-pgpass-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pgpass");
        std::fs::write(
            &file,
            "# comment\nother:5432:*:u:nope\nh:*:d:u:pa\\:ss\n*:*:*:*:fallback\n",
        )
        .unwrap();
        // Only this test in the crate's unit tests sets PGPASSFILE.
        std::env::set_var("PGPASSFILE", &file);
        assert_eq!(pgpass_lookup("h", 5432, "d", "u").as_deref(), Some("pa:ss"));
        assert_eq!(pgpass_lookup("x", 1, "y", "z").as_deref(), Some("fallback"));
        std::env::remove_var("PGPASSFILE");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A fresh store in its own schema on the test server, or `None` when no server is set.
    fn test_store(tag: &str) -> Option<PostgresBackend> {
        let Ok(base) = std::env::var("RUNCACHE_TEST_POSTGRES") else {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "the PostgreSQL test service was not started: run via scripts/test"
            );
            eprintln!(
                "skipping: RUNCACHE_TEST_POSTGRES is not set (scripts/services/postgres start)"
            );
            return None;
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let schema = format!("u_{tag}_{}_{nanos}", std::process::id());
        Some(PostgresBackend::open(&format!("{base}?schema={schema}")).unwrap())
    }

    fn drop_schema(store: &PostgresBackend) {
        let mut c = store.db.conn().unwrap();
        c.client
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", store.db.sql.schema))
            .unwrap();
    }

    #[test]
    fn lease_conformance() {
        let Some(store) = test_store("lease") else {
            return;
        };
        let db = store.db.clone();
        let corrupt = move |key: &Key, generation: u64, bytes: &[u8]| {
            let k = &key.0.as_bytes()[..];
            db.execute(
                "damaging a lease record",
                &format!(
                    "UPDATE {}.leases SET record = $3 WHERE key = $1 AND generation = $2",
                    db.sql.schema
                ),
                &[&k, &to_i64(generation), &bytes],
            )
            .unwrap();
        };
        crate::lease::conformance::check_backend(&*store.leases(), Some(&corrupt));
        drop_schema(&store);
    }

    #[test]
    fn lease_create_race() {
        let Some(store) = test_store("race") else {
            return;
        };
        crate::lease::conformance::check_create_race(store.leases(), 8, 40);
        drop_schema(&store);
    }

    #[test]
    fn server_clock_expiry_is_reported_for_the_observed_beat_only() {
        let Some(store) = test_store("expiry") else {
            return;
        };
        let leases = store.leases();
        let k = crate::lease::conformance::key("expiry");
        let mut r = crate::lease::conformance::record("a", 1);
        r.ttl_ms = 1;
        assert!(leases.try_create(&k, &r).unwrap());
        std::thread::sleep(Duration::from_millis(20));
        assert!(matches!(
            leases.read(&k).unwrap(),
            LeaseState::Held { beat: 0, .. }
        ));
        assert_eq!(leases.expired(&k, 1, 0).unwrap(), Some(true));
        // Another beat or generation than the one read: unknown, the manager's clock decides.
        assert_eq!(leases.expired(&k, 1, 1).unwrap(), None);
        assert_eq!(leases.expired(&k, 2, 0).unwrap(), None);
        let k2 = crate::lease::conformance::key("fresh");
        assert!(leases
            .try_create(&k2, &crate::lease::conformance::record("b", 1))
            .unwrap());
        leases.read(&k2).unwrap();
        assert_eq!(leases.expired(&k2, 1, 0).unwrap(), Some(false));
        drop_schema(&store);
    }
}
