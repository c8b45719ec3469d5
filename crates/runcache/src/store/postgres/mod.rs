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
use std::sync::{Arc, Mutex};

use super::{
    check_record_kind, check_record_name, Backend, BackendOptions, BlobInfo, BlobReader, Stray,
};

mod db;
mod lease;
mod sql;
mod strays;
mod target;

use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::key::Key;
use crate::lease::LeaseBackend;
use db::{digest_from, key_from, prepared, to_i64, Conn, Db};
pub use lease::PostgresLeases;
use sql::Sql;
pub use sql::SCHEMA_VERSION;
use target::Target;
pub use target::DEFAULT_SCHEMA;

/// Blobs are stored in rows of at most this many bytes.
pub const CHUNK_SIZE: usize = 1 << 20;

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

    fn list_manifests_page(&self, after: Option<&Key>, limit: usize) -> Result<Vec<Key>> {
        // The empty byte string sorts before every key.
        let after: &[u8] = after.map_or(&[], |k| k.0.as_bytes());
        let limit = to_i64(limit as u64);
        let rows = self.db.query(
            "listing a page of manifests",
            &self.db.sql.manifest_page,
            &[&after, &limit],
        )?;
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

#[cfg(test)]
mod tests {
    use super::target::{pgpass_lookup, redact};
    use super::*;
    use crate::lease::LeaseState;
    use std::time::Duration;

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
