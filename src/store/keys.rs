//! Idempotency keys.

use std::time::Duration;

use super::records::KeyRecord;
use super::{Result, Store};
use crate::clock;
use crate::job::{LogId, Outcome, RunState};

/// What an idempotency key says about a new trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyCheck {
    /// No live run holds it: go ahead (the key is now held by the new run).
    Fresh,
    /// A run with this key succeeded within the TTL.
    Succeeded(LogId),
    /// A run with this key is accepted or running.
    InFlight(LogId),
}

impl Store {
    /// A succeeded run marks its key; a failed one releases it so a retry can run.
    pub(super) fn settle_key(&self, key: &str, log_id: LogId, succeeded: bool) -> Result<()> {
        let Some(v) = self.inner.keys.get(key.as_bytes())? else {
            return Ok(());
        };
        let Ok(mut kr) = KeyRecord::decode(&v) else {
            return Ok(());
        };
        if kr.log_id != log_id {
            return Ok(());
        }
        if succeeded {
            kr.succeeded = true;
            let nv = kr.encode();
            // A key taken over meanwhile by another run stays that run's.
            let _ = self
                .inner
                .keys
                .compare_and_swap(key.as_bytes(), Some(v), Some(nv))?;
        } else {
            let _ = self
                .inner
                .keys
                .compare_and_swap(key.as_bytes(), Some(v), None::<&[u8]>)?;
        }
        Ok(())
    }

    /// Checks and takes an idempotency key for a new run.
    ///
    /// # Errors
    /// I/O.
    pub fn check_key(&self, key: &str, log_id: LogId, ttl: Duration) -> Result<KeyCheck> {
        let now = clock::now_ms();
        let rec = KeyRecord {
            log_id,
            succeeded: false,
            expires_ms: now.saturating_add(ttl.as_millis() as i64),
        };
        let new = rec.encode();
        loop {
            let cur = self.inner.keys.get(key.as_bytes())?;
            if let Some(v) = &cur {
                if let Ok(kr) = KeyRecord::decode(v) {
                    if kr.expires_ms > now {
                        if kr.succeeded {
                            return Ok(KeyCheck::Succeeded(kr.log_id));
                        }
                        // The holder's own record is the truth: the `succeeded` mark is
                        // written after it and a crash can lose it (see `finish`).
                        match self.run(kr.log_id)? {
                            Some(r)
                                if matches!(r.state, RunState::Accepted | RunState::Running) =>
                            {
                                return Ok(KeyCheck::InFlight(kr.log_id));
                            }
                            Some(r)
                                if kr.log_id != log_id
                                    && r.outcome.as_ref().is_some_and(Outcome::is_success) =>
                            {
                                return Ok(KeyCheck::Succeeded(kr.log_id));
                            }
                            _ => {}
                        }
                    }
                }
            }
            if self
                .inner
                .keys
                .compare_and_swap(key.as_bytes(), cur, Some(new.clone()))?
                .is_ok()
            {
                return Ok(KeyCheck::Fresh);
            }
        }
    }

    /// Whether a key's run already succeeded within its TTL, without taking the key.
    ///
    /// # Errors
    /// I/O.
    pub fn check_key_readonly(&self, key: &str) -> Result<KeyCheck> {
        if let Some(v) = self.inner.keys.get(key.as_bytes())? {
            if let Ok(kr) = KeyRecord::decode(&v) {
                if kr.succeeded && kr.expires_ms > clock::now_ms() {
                    return Ok(KeyCheck::Succeeded(kr.log_id));
                }
            }
        }
        Ok(KeyCheck::Fresh)
    }

    /// Lets go of a key this run took (its trigger was refused after all).
    ///
    /// # Errors
    /// I/O.
    pub fn release_key(&self, key: &str, log_id: LogId) -> Result<()> {
        if let Some(v) = self.inner.keys.get(key.as_bytes())? {
            if KeyRecord::decode(&v).is_ok_and(|k| k.log_id == log_id) {
                self.inner.keys.remove(key.as_bytes())?;
            }
        }
        Ok(())
    }
}
