//! Where a run's idempotency key is taken: the store's keys, or the fleet's Redis
//! (`crate::fleet_keys`) with its policy for an unreachable Redis.

use std::time::Duration;

use super::Runner;
use crate::config::Unreachable;
use crate::fleet_keys::{FleetError, FleetKeys, Take};
use crate::job::{Outcome, OutcomeKind, Trigger};
use crate::store::{KeyCheck, StoreError};

impl Runner {
    /// Keys go to the fleet's Redis from now on; set once, before any run starts.
    pub(crate) fn set_fleet_keys(&self, f: FleetKeys, unreachable: Unreachable) {
        let _ = self.inner.fleet.set(f);
        let _ = self.inner.fleet_unreachable.set(unreachable);
    }

    /// Takes the run's key. `Ok(true)`: run it; `Ok(false)`: its outcome is recorded (a
    /// duplicate, a key another device holds, Redis unreachable with `keys.unreachable =
    /// "fail"`) and it does not run.
    pub(super) async fn take_key(
        &self,
        t: &Trigger,
        key: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let Some(fleet) = self.inner.fleet.get() else {
            return self.take_local_key(t, key, ttl);
        };
        let log = self.inner.logs.open(t.log_id);
        match fleet.take(key, t.log_id, ttl).await {
            Ok(Take::Taken) => Ok(true),
            Ok(Take::Succeeded(h)) => {
                let msg = format!(
                    "skipped: idempotency key \"{key}\" matches logId:{} on {}, which succeeded; nothing was run",
                    h.log_id, h.device
                );
                log.note(&format!("xxl-edge: {msg}"));
                self.record(t, &Outcome::success_with(msg), OutcomeKind::Duplicate, None);
                Ok(false)
            }
            Ok(Take::Held(h)) => {
                let msg = format!(
                    "not run: idempotency key \"{key}\" is held by logId:{} on {}, which is running it now; nothing was run",
                    h.log_id, h.device
                );
                log.note(&format!("xxl-edge: {msg}"));
                self.record(t, &Outcome::fail(msg), OutcomeKind::Failed, None);
                Ok(false)
            }
            // The store could not record the key: the run fails as after any store error (its
            // outcome then releases the lock it took).
            Err(FleetError::Store(e)) => Err(e),
            Err(e) => match self.inner.fleet_unreachable.get() {
                Some(Unreachable::Local) => {
                    log.note(&format!(
                        "xxl-edge: the fleet's Redis could not check idempotency key \"{key}\" ({e}); keys.unreachable is \"local\", so this device's own keys decide: the key holds on this device only"
                    ));
                    self.take_local_key(t, key, ttl)
                }
                _ => {
                    let msg = format!(
                        "not run: the fleet's Redis could not check idempotency key \"{key}\" ({e}); keys.unreachable is \"fail\", so the handler was not run"
                    );
                    log.note(&format!("xxl-edge: {msg}"));
                    self.record(t, &Outcome::fail(msg), OutcomeKind::Failed, None);
                    Ok(false)
                }
            },
        }
    }

    fn take_local_key(&self, t: &Trigger, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        match self.inner.store.check_key(key, t.log_id, ttl)? {
            KeyCheck::Succeeded(prev) => {
                self.finish_duplicate(t, key, prev);
                Ok(false)
            }
            KeyCheck::Fresh | KeyCheck::InFlight(_) => Ok(true),
        }
    }
}
