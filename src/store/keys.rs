//! Idempotency keys.

use std::time::Duration;

use super::records::KeyRecord;
use super::{Result, Store, StoreError};
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

impl Store {
    /// Records that `log_id` holds `key` in the fleet's Redis under `token`, so that a restart
    /// knows to settle it. Written before the run is marked running, it reaches the disk with
    /// that mark's flush, before the handler starts.
    ///
    /// # Errors
    /// I/O.
    pub fn hold_fleet_key(
        &self,
        key: &str,
        log_id: LogId,
        success_ttl: Duration,
        token: &str,
    ) -> Result<()> {
        let tree = &self.inner.fleet_keys;
        let mut v = log_id.0.to_be_bytes().to_vec();
        v.extend_from_slice(&(success_ttl.as_millis() as u64).to_be_bytes());
        v.extend_from_slice(token.as_bytes());
        tree.insert(fleet_entry(key, log_id), v)?;
        Ok(())
    }

    /// Every fleet key still to settle: (key, logId, success TTL, token).
    ///
    /// # Errors
    /// I/O.
    pub fn fleet_keys_held(&self) -> Result<Vec<(String, LogId, Duration, String)>> {
        let mut out = Vec::new();
        for item in self.inner.fleet_keys.iter() {
            let (k, v) = item?;
            let (Some(id), Some(ttl), Some(token), Some(key)) = (
                v.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()),
                v.get(8..16).and_then(|b| <[u8; 8]>::try_from(b).ok()),
                v.get(16..),
                k.len().checked_sub(8).and_then(|n| k.get(..n)),
            ) else {
                return Err(StoreError::Corrupt(format!(
                    "fleet key entry of {} key bytes and {} value bytes",
                    k.len(),
                    v.len()
                )));
            };
            out.push((
                String::from_utf8_lossy(key).into_owned(),
                LogId(i64::from_be_bytes(id)),
                Duration::from_millis(u64::from_be_bytes(ttl)),
                String::from_utf8_lossy(token).into_owned(),
            ));
        }
        Ok(out)
    }

    /// The fleet key of `log_id` is settled in Redis: nothing left to do after a restart.
    ///
    /// # Errors
    /// I/O.
    pub fn fleet_key_settled(&self, key: &str, log_id: LogId) -> Result<()> {
        self.inner.fleet_keys.remove(fleet_entry(key, log_id))?;
        Ok(())
    }
}

/// One entry per (key, run): the key's bytes then the logId, so two runs that held the same
/// key one after the other (the first not yet settled) keep an entry each.
fn fleet_entry(key: &str, log_id: LogId) -> Vec<u8> {
    let mut k = key.as_bytes().to_vec();
    k.extend_from_slice(&log_id.0.to_be_bytes());
    k
}
