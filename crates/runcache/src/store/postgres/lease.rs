//! Leases as rows, judged on the server's clock.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use postgres::Row;

use crate::error::{Error, Result};
use crate::key::Key;
use crate::lease::{LeaseBackend, LeaseRecord, LeaseState};

use super::db::{key_from, to_i64, Db};

/// Leases as rows of the `leases` table, with heartbeat times from the server's clock.
pub struct PostgresLeases {
    pub(super) db: Arc<Db>,
    /// Per key, the (generation, beat) last read and whether the server judged it expired then.
    pub(super) expiry: Mutex<HashMap<Key, (u64, u64, bool)>>,
}

impl fmt::Debug for PostgresLeases {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresLeases")
            .field("location", &self.db.target.display)
            .finish_non_exhaustive()
    }
}

impl PostgresLeases {
    pub(super) fn parse_record(
        &self,
        key: &Key,
        generation: u64,
        bytes: &[u8],
    ) -> Result<LeaseRecord> {
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
    pub(super) fn state(&self, key: &Key, row: &Row, offset: usize) -> Result<LeaseState> {
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
