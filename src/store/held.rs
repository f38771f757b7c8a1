//! Which logIds the journal holds, answered from memory for the triggers of this process.
//!
//! `/run` asks [`Store::has_run`](super::Store::has_run) before every trigger (a repeat is
//! refused before it can cover or discard a running one). Admins count logIds up, but 64
//! concurrent `/run`s arrive a few places out of order, so "above the highest logId held"
//! alone sent about one lookup in two to sled (3.8 % of the executor's CPU under load). Here
//! every logId written since the store was opened above its highest logId then is kept, the
//! latest [`HELD_KEPT`] of them: above the floor, memory has the whole answer.

use std::collections::BTreeSet;
use std::sync::Mutex;

/// How many logIds are kept (about 100 KiB). The floor rises past the ones forgotten.
pub(super) const HELD_KEPT: usize = 8192;

pub(super) struct Held {
    inner: Mutex<Inner>,
}

struct Inner {
    /// Every logId above it that the journal holds is in `ids`.
    floor: i64,
    ids: BTreeSet<i64>,
}

impl Held {
    /// `highest`: the largest logId in the journal at open (`i64::MIN` when it is empty).
    pub(super) fn new(highest: i64) -> Self {
        Self {
            inner: Mutex::new(Inner {
                floor: highest,
                ids: BTreeSet::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `Some(held)` when memory knows; `None`: ask the journal.
    pub(super) fn knows(&self, id: i64) -> Option<bool> {
        let g = self.lock();
        (id > g.floor).then(|| g.ids.contains(&id))
    }

    /// Called before a record for `id` is written (so a racing repeat is refused here, or
    /// by the write's compare-and-swap). True when `id` was not kept before.
    pub(super) fn add(&self, id: i64) -> bool {
        let mut g = self.lock();
        if id <= g.floor || !g.ids.insert(id) {
            return false;
        }
        if g.ids.len() > HELD_KEPT {
            if let Some(oldest) = g.ids.pop_first() {
                g.floor = oldest;
            }
        }
        true
    }

    /// The record of `id` was removed, or its write failed.
    pub(super) fn remove(&self, id: i64) {
        self.lock().ids.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn above_the_floor_memory_answers_below_it_the_journal_does() {
        let h = Held::new(10);
        assert_eq!(h.knows(10), None);
        assert_eq!(h.knows(11), Some(false));
        assert!(!h.add(5));
        assert_eq!(h.knows(5), None, "below the floor: not kept");
        assert!(h.add(13) && h.add(12) && !h.add(12));
        assert_eq!(
            (h.knows(12), h.knows(13), h.knows(14)),
            (Some(true), Some(true), Some(false))
        );
        h.remove(12);
        assert_eq!(h.knows(12), Some(false));
        // Past HELD_KEPT the oldest go, and the floor rises to the last one forgotten.
        for id in 100..100 + HELD_KEPT as i64 {
            h.add(id);
        }
        assert_eq!(h.knows(13), None);
        assert_eq!(h.knows(99), Some(false));
        assert_eq!(h.knows(100), Some(true));
        h.add(100 + HELD_KEPT as i64);
        assert_eq!((h.knows(100), h.knows(101)), (None, Some(true)));
        assert_eq!(h.lock().ids.len(), HELD_KEPT);
    }
}
