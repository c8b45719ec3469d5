//! Rows of a PostgreSQL store that are not a readable part of it (a key or digest that is not
//! 32 bytes, a lease record that does not parse): reported one by one
//! ([`Backend::strays`](crate::store::Backend::strays)), never a failed listing. A manifest
//! whose body is NULL or cut short is a damaged entry instead (its key is sound).

use super::{key_from, PostgresBackend};
use crate::error::{Error, Result};
use crate::store::Stray;

/// The keyed tables and their key column.
const TABLES: [(&str, &str); 4] = [
    ("manifests", "key"),
    ("blobs", "digest"),
    ("used", "key"),
    ("leases", "key"),
];

impl PostgresBackend {
    /// Every row with a bad key, and every held lease whose record does not parse.
    pub(super) fn find_strays(&self) -> Result<Vec<Stray>> {
        let s = format!("\"{}\"", self.db.target.schema);
        let display = &self.db.target.display;
        let mut out = Vec::new();
        for (table, col) in TABLES {
            let sql = format!("SELECT {col} FROM {s}.{table} WHERE length({col}) <> 32");
            for row in self.db.query("listing damaged rows", &sql, &[])? {
                let raw: Vec<u8> = row.get(0);
                let hex = hex::encode(&raw);
                out.push(Stray {
                    location: format!("{display} (table {table}, {col} {hex})"),
                    problem: format!("a {col} of {} bytes; keys are 32 bytes", raw.len()),
                    id: format!("{table}:{hex}"),
                });
            }
        }
        let sql = format!(
            "SELECT key, generation, record FROM {s}.leases
             WHERE record IS NOT NULL AND NOT released AND length(key) = 32"
        );
        for row in self.db.query("listing leases", &sql, &[])? {
            let key = key_from(row.get(0), &self.db, "lease")?;
            let generation = row.get::<_, i64>(1).max(0) as u64;
            let record: Vec<u8> = row.get(2);
            if let Err(e) = self.leases.parse_record(&key, generation, &record) {
                out.push(Stray {
                    location: format!("{display} (table leases, key {key})"),
                    problem: e.to_string(),
                    id: format!("leases:{}", key.to_hex()),
                });
            }
        }
        Ok(out)
    }

    /// Deletes the row named by a stray's id (`table:hex key`).
    pub(super) fn delete_stray(&self, id: &str) -> Result<()> {
        let bad = || Error::Invalid(format!("bad stray id `{id}`"));
        let (table, hex) = id.split_once(':').ok_or_else(bad)?;
        let (_, col) = TABLES.iter().find(|(t, _)| *t == table).ok_or_else(bad)?;
        let raw = hex::decode(hex).map_err(|_| bad())?;
        let s = format!("\"{}\"", self.db.target.schema);
        let sql = format!("DELETE FROM {s}.{table} WHERE {col} = $1");
        self.db.execute("removing a damaged row", &sql, &[&raw])?;
        Ok(())
    }
}
