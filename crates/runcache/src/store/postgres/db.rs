//! Connections: a small pool of clients with prepared statements, and errors that name the
//! server and what to do.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use postgres::{Client, Config, GenericClient, NoTls, Row, Statement};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::key::Key;

use super::sql::{create_tables_sql, records_table_sql, Sql, SCHEMA_VERSION};
use super::target::Target;

/// Idle connections kept per store handle.
pub(super) const MAX_IDLE: usize = 8;
pub(super) fn key_from(bytes: &[u8], db: &Db, what: &'static str) -> Result<Key> {
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
pub(super) fn digest_from(bytes: &[u8], db: &Db) -> Result<Digest> {
    key_from(bytes, db, "blob digest").map(|k| k.0)
}
pub(super) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// One connection with its prepared statements.
pub(super) struct Conn {
    pub(super) client: Client,
    pub(super) statements: HashMap<String, Statement>,
}

/// Prepares `sql` once per connection.
pub(super) fn prepared(
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
    pub(super) fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> std::result::Result<Vec<Row>, postgres::Error> {
        let st = prepared(&mut self.statements, &mut self.client, sql)?;
        self.client.query(&st, params)
    }

    pub(super) fn execute(
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
pub(super) struct Db {
    pub(super) target: Target,
    pub(super) config: Config,
    pub(super) sql: Sql,
    pub(super) idle: Mutex<Vec<Conn>>,
}

/// A connection borrowed from the pool; returned on drop unless it is closed.
pub(super) struct Pooled<'a> {
    pub(super) db: &'a Db,
    pub(super) conn: Option<Conn>,
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
    pub(super) fn idle_lock(&self) -> MutexGuard<'_, Vec<Conn>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn connect(&self) -> Result<Conn> {
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

    pub(super) fn conn(&self) -> Result<Pooled<'_>> {
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
    pub(super) fn err(&self, doing: &str, e: postgres::Error) -> Error {
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
    pub(super) fn query(
        &self,
        doing: &str,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>> {
        let mut c = self.conn()?;
        c.query(sql, params).map_err(|e| self.err(doing, e))
    }

    /// Runs one statement on a pooled connection, returning the number of rows it changed.
    pub(super) fn execute(
        &self,
        doing: &str,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<u64> {
        let mut c = self.conn()?;
        c.execute(sql, params).map_err(|e| self.err(doing, e))
    }

    /// Creates the schema or checks (and migrates) its version.
    pub(super) fn migrate(&self) -> Result<()> {
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
    pub(super) fn add_records_table(&self, client: &mut Client) -> Result<()> {
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
    pub(super) fn read_version(&self, client: &mut impl GenericClient) -> Result<Option<u32>> {
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

pub(super) fn is_io(e: &postgres::Error) -> bool {
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
pub(super) fn describe(e: &postgres::Error) -> String {
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
