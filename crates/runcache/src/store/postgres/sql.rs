//! The SQL of the store: table layout and every statement, for one schema.

/// Version of the table layout this engine writes (kept in `runcache_meta`). An engine refuses
/// a schema with a higher version.
pub const SCHEMA_VERSION: u32 = 1;

/// The `records` table (named, mutable documents; `Backend::put_record`). It came after stores
/// at schema version 1 were in use; older engines never touch it, so it is created with
/// `IF NOT EXISTS` both with a new schema and when a current one lacks it, without a version
/// bump (which would make older engines refuse the store).
pub(super) fn records_table_sql(s: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {s}.records (
             kind text NOT NULL,
             name text NOT NULL,
             body bytea NOT NULL,
             updated_at timestamptz NOT NULL DEFAULT now(),
             PRIMARY KEY (kind, name));"
    )
}

pub(super) fn create_tables_sql(s: &str) -> String {
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
pub(super) struct Sql {
    /// The quoted schema name.
    pub(super) schema: String,
    pub(super) has_blob: String,
    pub(super) blob_insert_header: String,
    pub(super) blob_refresh: String,
    pub(super) blob_insert_chunk: String,
    pub(super) blob_open: String,
    pub(super) blob_chunk: String,
    pub(super) blob_size: String,
    pub(super) blob_delete: String,
    pub(super) blob_list: String,
    pub(super) manifest_insert: String,
    pub(super) manifest_upsert: String,
    pub(super) manifest_get: String,
    pub(super) manifest_get_many: String,
    pub(super) manifest_delete: String,
    pub(super) manifest_list: String,
    pub(super) manifest_page: String,
    pub(super) touch: String,
    pub(super) last_used: String,
    pub(super) forget_usage: String,
    pub(super) lease_read: String,
    pub(super) lease_create: String,
    pub(super) lease_beat: String,
    pub(super) lease_release: String,
    pub(super) lease_list: String,
    pub(super) lease_clean: String,
    pub(super) record_put: String,
    pub(super) record_get: String,
    pub(super) record_list: String,
    pub(super) record_delete: String,
}

impl Sql {
    pub(super) fn new(schema: &str) -> Sql {
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
            // bytea orders byte by byte: the order of the keys' hex names.
            manifest_page: format!(
                "SELECT key FROM {s}.manifests WHERE key > $1 ORDER BY key LIMIT $2"
            ),
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
