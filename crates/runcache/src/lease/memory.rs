//! Leases in process memory: the backend of the in-memory store and of fast unit tests. Same
//! semantics as the filesystem backend, with a mutex as the atomic primitive.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use super::{LeaseBackend, LeaseRecord, LeaseState};
use crate::error::{Error, Result};
use crate::key::Key;

/// The in-memory [`LeaseBackend`].
#[derive(Debug, Default)]
pub struct MemoryLeases {
    slots: Mutex<HashMap<Key, Slot>>,
}

#[derive(Debug)]
struct Slot {
    /// Current (highest) generation; kept after clean so generations never go back.
    generation: u64,
    /// The record of `generation`; `None` once cleaned.
    record: Option<LeaseRecord>,
    beat: u64,
    released: bool,
}

impl Slot {
    fn held_by(&self, generation: u64, owner: &str) -> bool {
        self.generation == generation
            && !self.released
            && self.record.as_ref().is_some_and(|r| r.owner == owner)
    }
}

impl MemoryLeases {
    /// An empty lease table.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl LeaseBackend for MemoryLeases {
    fn read(&self, key: &Key) -> Result<LeaseState> {
        Ok(match self.lock().get(key) {
            None => LeaseState::Free { next_generation: 1 },
            Some(slot) => match (&slot.record, slot.released) {
                (Some(record), false) => LeaseState::Held {
                    record: record.clone(),
                    beat: slot.beat,
                },
                _ => LeaseState::Free {
                    next_generation: slot.generation + 1,
                },
            },
        })
    }

    fn try_create(&self, key: &Key, record: &LeaseRecord) -> Result<bool> {
        if record.generation == 0 {
            return Err(Error::Invalid("lease generations start at 1".into()));
        }
        let mut slots = self.lock();
        if slots
            .get(key)
            .is_some_and(|slot| slot.generation >= record.generation)
        {
            return Ok(false);
        }
        slots.insert(
            *key,
            Slot {
                generation: record.generation,
                record: Some(record.clone()),
                beat: 0,
                released: false,
            },
        );
        Ok(true)
    }

    fn beat(&self, key: &Key, generation: u64, owner: &str, beat: u64) -> Result<bool> {
        match self.lock().get_mut(key) {
            Some(slot) if slot.held_by(generation, owner) => {
                slot.beat = beat;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn release(&self, key: &Key, generation: u64, owner: &str) -> Result<bool> {
        match self.lock().get_mut(key) {
            Some(slot) if slot.held_by(generation, owner) => {
                slot.released = true;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn list(&self) -> Result<Vec<(Key, LeaseState)>> {
        let keys: Vec<Key> = {
            let slots = self.lock();
            slots
                .iter()
                .filter(|(_, slot)| slot.record.is_some())
                .map(|(key, _)| *key)
                .collect()
        };
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push((key, self.read(&key)?));
        }
        out.sort_by_key(|a| a.0);
        Ok(out)
    }

    fn clean(&self, key: &Key) -> Result<()> {
        if let Some(slot) = self.lock().get_mut(key) {
            if slot.released {
                slot.record = None;
            }
        }
        Ok(())
    }
}
