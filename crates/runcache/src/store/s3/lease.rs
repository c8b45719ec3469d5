//! Leases on S3: one lock object per key, `leases/ab/<64 hex>.json`, changed only by
//! conditional writes — put-if-absent (`If-None-Match: *`) for the first generation, and
//! compare-and-swap on the etag that was read (`If-Match`) for every later change. See
//! `docs/store-s3.md`.
//!
//! The object holds a [`LockBody`]: the current generation, its state (held, released, or
//! cleaned), the holder's [`LeaseRecord`], the heartbeat counter, and a random nonce. S3 etags
//! are the MD5 of the content, so the nonce makes every write's etag new even when the rest of
//! the body repeats; a stale etag can therefore never match a later write.
//!
//! Every mutation is: GET (body + etag) → decide from the body → PUT `If-Match: etag`. When the
//! condition fails, someone else changed the object in between, and the loop reads again. The
//! decision and the write are thus one atomic step as far as the server is concerned: there is
//! no check-then-write window. Exactly one claimant wins each generation, a beat or release by
//! anyone but the current holder is refused, and `clean` never touches a held lease.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{random_hex, Client, Put};
use crate::error::{Error, Result};
use crate::key::Key;
use crate::lease::{LeaseBackend, LeaseRecord, LeaseState};

/// How many compare-and-swap attempts one call makes before reporting contention as an error.
/// Every failed attempt means another writer succeeded, so this is never reached in practice.
const CAS_ATTEMPTS: usize = 200;

/// The state of a generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Phase {
    /// The holder in `record` owns it.
    Held,
    /// Its owner released it; the record is kept for `list` until gc cleans it.
    Released,
    /// Released and cleaned by gc: only the generation number is kept (generations never go
    /// back), and the key is no longer listed.
    Cleaned,
}

/// The body of a lock object.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct LockBody {
    generation: u64,
    phase: Phase,
    record: Option<LeaseRecord>,
    beat: u64,
    /// Random per write: makes every write's etag distinct.
    nonce: String,
}

impl LockBody {
    fn to_bytes(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self)
            .map_err(|e| Error::Invalid(format!("cannot encode a lease record: {e}")))
    }

    fn held_by(&self, generation: u64, owner: &str) -> bool {
        self.phase == Phase::Held
            && self.generation == generation
            && self.record.as_ref().is_some_and(|r| r.owner == owner)
    }

    fn state(&self) -> LeaseState {
        match (&self.record, self.phase) {
            (Some(record), Phase::Held) => LeaseState::Held {
                record: record.clone(),
                beat: self.beat,
            },
            _ => LeaseState::Free {
                next_generation: self.generation + 1,
            },
        }
    }
}

/// The [`LeaseBackend`] of the S3 store.
#[derive(Debug)]
pub struct S3Leases {
    client: Arc<Client>,
}

impl S3Leases {
    pub(crate) fn new(client: Arc<Client>) -> Self {
        S3Leases { client }
    }

    fn rel(key: &Key) -> String {
        let hex = key.to_hex();
        format!("leases/{}/{hex}.json", &hex[..2])
    }

    /// Where `key`'s lock object lives, for messages.
    pub fn lock_location(&self, key: &Key) -> String {
        self.client.url(&Self::rel(key))
    }

    /// Whether `key`'s lock object (if any) can be read: the error says what is wrong.
    pub(super) fn check(&self, key: &Key) -> Result<()> {
        self.load(key).map(|_| ())
    }

    /// Reads the lock object: `None` if absent, else its body and etag.
    fn load(&self, key: &Key) -> Result<Option<(LockBody, String)>> {
        let rel = Self::rel(key);
        let Some((bytes, etag)) = self.client.get(&rel)? else {
            return Ok(None);
        };
        let malformed = |message: String| Error::Malformed {
            what: "lease record",
            path: self.client.url(&rel),
            message,
        };
        let body: LockBody =
            serde_json::from_slice(&bytes).map_err(|e| malformed(e.to_string()))?;
        if body.phase != Phase::Cleaned
            && body
                .record
                .as_ref()
                .is_none_or(|r| r.generation != body.generation)
        {
            return Err(malformed(format!(
                "the lock says generation {} but its record does not match",
                body.generation
            )));
        }
        let etag = etag.ok_or_else(|| {
            Error::io(
                self.client.url(&rel),
                std::io::Error::other(
                    "the S3 server returned no ETag; runcache needs etags for compare-and-swap",
                ),
            )
        })?;
        Ok(Some((body, etag)))
    }

    /// Read-decide-write with compare-and-swap. `decide` returns the new body to write, or
    /// `Err(result)` to stop without writing. Returns `Ok(true)` once a write succeeded.
    fn update(
        &self,
        key: &Key,
        mut decide: impl FnMut(Option<&LockBody>) -> std::result::Result<LockBody, bool>,
    ) -> Result<bool> {
        let rel = Self::rel(key);
        for _ in 0..CAS_ATTEMPTS {
            let current = self.load(key)?;
            let mut next = match decide(current.as_ref().map(|(b, _)| b)) {
                Ok(next) => next,
                Err(outcome) => return Ok(outcome),
            };
            next.nonce = random_hex(16)?;
            let bytes = next.to_bytes()?;
            let put = match &current {
                None => self.client.put_if_absent(&rel, bytes)?,
                Some((_, etag)) => self.client.put_if_match(&rel, bytes, etag)?,
            };
            match put {
                Put::Done => return Ok(true),
                Put::Conflict => continue, // someone else wrote in between: decide again
            }
        }
        Err(Error::io(
            self.client.url(&rel),
            std::io::Error::other(format!(
                "the lease object kept changing during {CAS_ATTEMPTS} compare-and-swap attempts"
            )),
        ))
    }
}

impl LeaseBackend for S3Leases {
    fn read(&self, key: &Key) -> Result<LeaseState> {
        Ok(match self.load(key)? {
            None => LeaseState::Free { next_generation: 1 },
            Some((body, _)) => body.state(),
        })
    }

    fn try_create(&self, key: &Key, record: &LeaseRecord) -> Result<bool> {
        let n = record.generation;
        if n == 0 {
            return Err(Error::Invalid("lease generations start at 1".into()));
        }
        // Wins iff, at the moment of the conditional write, the stored generation is below n.
        // A takeover (the manager judged the holder dead) is the same step from a held lock.
        self.update(key, |current| {
            if current.is_some_and(|b| b.generation >= n) {
                return Err(false);
            }
            Ok(LockBody {
                generation: n,
                phase: Phase::Held,
                record: Some(record.clone()),
                beat: 0,
                nonce: String::new(),
            })
        })
    }

    fn beat(&self, key: &Key, generation: u64, owner: &str, beat: u64) -> Result<bool> {
        self.update(key, |current| match current {
            Some(b) if b.held_by(generation, owner) => Ok(LockBody { beat, ..b.clone() }),
            _ => Err(false),
        })
    }

    fn release(&self, key: &Key, generation: u64, owner: &str) -> Result<bool> {
        self.update(key, |current| match current {
            Some(b) if b.held_by(generation, owner) => Ok(LockBody {
                phase: Phase::Released,
                ..b.clone()
            }),
            _ => Err(false),
        })
    }

    fn list(&self) -> Result<Vec<(Key, LeaseState)>> {
        let mut out = Vec::new();
        for meta in self.client.list("leases")? {
            let rel = self.client.relative(&meta.location);
            let Some(hex) = rel.rsplit('/').next().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            let Ok(key) = hex.parse::<Key>() else {
                continue;
            };
            // Vanished since the listing (never happens today: lock objects are not deleted).
            // One that does not parse is a stray of the store, not a failed listing.
            let (body, _) = match self.load(&key) {
                Ok(Some(found)) => found,
                Ok(None) => continue,
                Err(e) if e.is_object_damage() => {
                    log::debug!("skipping lease {key}: {e}");
                    continue;
                }
                Err(e) => return Err(e),
            };
            if body.phase != Phase::Cleaned {
                out.push((key, body.state()));
            }
        }
        out.sort_by_key(|a| a.0);
        Ok(out)
    }

    fn clean(&self, key: &Key) -> Result<()> {
        self.update(key, |current| match current {
            Some(b) if b.phase == Phase::Released => Ok(LockBody {
                phase: Phase::Cleaned,
                record: None,
                beat: 0,
                ..b.clone()
            }),
            _ => Err(false), // absent, held, or already cleaned: never touch
        })
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    //! The shared lease conformance checks against a real S3 server (`RUNCACHE_TEST_S3`, set by
    //! `scripts/services/s3 start`); skipped without one, except on CI where that is an error.

    use super::*;
    use crate::lease::conformance::{check_backend, check_create_race};
    use crate::store::s3::S3Backend;

    fn fresh_backend() -> Option<S3Backend> {
        let Ok(base) = std::env::var("RUNCACHE_TEST_S3") else {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("the S3 test service was not started: run via scripts/test");
            }
            eprintln!(
                "skipping: RUNCACHE_TEST_S3 is not set (eval \"$(scripts/services/s3 start)\")"
            );
            return None;
        };
        let (target, query) = base.split_once('?').unwrap_or((&base, ""));
        let unique = random_hex(8).unwrap();
        let loc = format!(
            "{}/lease-unit-{unique}?{query}",
            target.trim_end_matches('/')
        );
        Some(S3Backend::open(&loc).unwrap())
    }

    #[test]
    fn s3_leases_conform() {
        let Some(backend) = fresh_backend() else {
            return;
        };
        let leases = backend.leases.clone();
        let client = backend.client.clone();
        let corrupt = |k: &Key, _n: u64, bytes: &[u8]| {
            client
                .put_overwrite(&S3Leases::rel(k), bytes.to_vec())
                .unwrap();
        };
        check_backend(&*leases, Some(&corrupt));
        // Layout: one lock object per key, under leases/ab/.
        let k = crate::lease::conformance::key("conformance-main");
        let hex = k.to_hex();
        assert!(leases
            .lock_location(&k)
            .ends_with(&format!("/leases/{}/{hex}.json", &hex[..2])));
        assert!(backend.client.get(&S3Leases::rel(&k)).unwrap().is_some());
    }

    #[test]
    fn s3_lease_creation_races_have_one_winner() {
        let Some(backend) = fresh_backend() else {
            return;
        };
        check_create_race(backend.leases.clone(), 8, 20);
    }

    #[test]
    fn rewrites_change_the_etag_even_with_identical_content() {
        let Some(backend) = fresh_backend() else {
            return;
        };
        let leases = &backend.leases;
        let k = crate::lease::conformance::key("nonce");
        assert!(leases
            .try_create(&k, &crate::lease::conformance::record("a", 1))
            .unwrap());
        let (_, e1) = leases.load(&k).unwrap().unwrap();
        // The same beat value twice: identical fields, yet a new etag each time.
        assert!(leases.beat(&k, 1, "a", 5).unwrap());
        let (_, e2) = leases.load(&k).unwrap().unwrap();
        assert!(leases.beat(&k, 1, "a", 5).unwrap());
        let (_, e3) = leases.load(&k).unwrap().unwrap();
        assert!(e1 != e2 && e2 != e3, "{e1} {e2} {e3}");
        // A write conditional on a stale etag is refused by the server.
        let stale = backend
            .client
            .put_if_match(&S3Leases::rel(&k), b"{}".to_vec(), &e2)
            .unwrap();
        assert!(matches!(stale, Put::Conflict));
    }
}
