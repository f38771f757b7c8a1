//! The records of runs between their acceptance and their end, kept in memory so that a run's
//! end does not read back from sled the record this process wrote for it.
//!
//! Recording an outcome replaces the run's record, which takes the fields of the record it
//! replaces (acceptance and start times, idempotency key, large-trigger file). Reading that
//! record back walked sled's tree once more per run, beside the walk of the write itself: 3.4 %
//! of the executor's CPU under the e2e load. A record kept here is the very value sled holds
//! (a shared [`sled::IVec`], so it costs no copy of its bytes).
//!
//! It stays exact because every write of an unfinished run's record goes through the journal,
//! which keeps this in step:
//! - acceptance keeps the record it wrote ([`InFlight::keep`]);
//! - a later update replaces a kept record, and never adds one ([`InFlight::replace`]), so an
//!   update that races with a removal cannot bring back a run that left the journal;
//! - the run's end takes it ([`InFlight::take`]), a removal drops it ([`InFlight::drop_run`]).
//!
//! Anything else (a run recovered at start, more than [`INFLIGHT_KEPT`] unfinished runs) is
//! not here, and its end reads sled as before.

use std::collections::HashMap;
use std::sync::Mutex;

/// How many records are kept at most: the runs that start at once under load are far fewer
/// (one per busy job); triggers queued beyond them end by reading sled.
pub(super) const INFLIGHT_KEPT: usize = 1024;

#[derive(Default)]
pub(super) struct InFlight {
    records: Mutex<HashMap<i64, sled::IVec>>,
}

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, sled::IVec>> {
        self.records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The record of a run just accepted, as written.
    pub(super) fn keep(&self, id: i64, record: sled::IVec) {
        let mut m = self.lock();
        if m.len() < INFLIGHT_KEPT {
            m.insert(id, record);
        }
    }

    /// The run's record was rewritten: a kept record follows, an absent one stays absent.
    pub(super) fn replace(&self, id: i64, record: sled::IVec) {
        if let Some(kept) = self.lock().get_mut(&id) {
            *kept = record;
        }
    }

    /// The record as the journal holds it, if kept; it is no longer kept.
    pub(super) fn take(&self, id: i64) -> Option<sled::IVec> {
        self.lock().remove(&id)
    }

    /// The run left the journal, or its record could not be rewritten.
    pub(super) fn drop_run(&self, id: i64) {
        self.lock().remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_records_follow_their_updates_and_an_update_adds_nothing() {
        let f = InFlight::default();
        f.replace(1, sled::IVec::from(&b"late update"[..]));
        assert_eq!(
            f.take(1),
            None,
            "an update after the removal brings nothing back"
        );
        f.keep(1, sled::IVec::from(&b"accepted"[..]));
        f.replace(1, sled::IVec::from(&b"running"[..]));
        assert_eq!(f.take(1).as_deref(), Some(&b"running"[..]));
        assert_eq!(f.take(1), None, "taken once");
        f.keep(2, sled::IVec::from(&b"accepted"[..]));
        f.drop_run(2);
        assert_eq!(f.take(2), None);
    }

    #[test]
    fn at_most_inflight_kept_records_are_kept() {
        let f = InFlight::default();
        for id in 0..=INFLIGHT_KEPT as i64 {
            f.keep(id, sled::IVec::from(&b"r"[..]));
        }
        assert!(f.take(INFLIGHT_KEPT as i64).is_none(), "over the bound");
        assert!(f.take(0).is_some());
    }
}
