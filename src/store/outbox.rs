//! Callbacks waiting for an admin's acknowledgement.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::records::OutboxEntry;
use super::{Result, Store};
use crate::clock;

impl Store {
    /// The oldest waiting callbacks, at most `max`, in the order they were queued.
    ///
    /// # Errors
    /// I/O or a corrupt record.
    pub fn outbox_batch(&self, max: usize) -> Result<Vec<(u64, OutboxEntry)>> {
        self.outbox_entries().take(max).collect()
    }

    /// The outbox in queue order, decoded.
    pub(super) fn outbox_entries(&self) -> impl Iterator<Item = Result<(u64, OutboxEntry)>> + '_ {
        self.inner.outbox.iter().map(|item| {
            let (k, v) = item?;
            let seq = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8]));
            Ok((seq, OutboxEntry::decode(&v)?))
        })
    }

    /// The admin acknowledged these callbacks: drop them from the outbox. A run
    /// counts as reported once it is finished and no longer in the outbox, so the run records are
    /// not rewritten here (that rewrite was most of a delivery's cost).
    ///
    /// # Errors
    /// I/O.
    pub fn ack(&self, batch: &[(u64, OutboxEntry)]) -> Result<()> {
        // Key by key, not a sled batch (see `finish`): a crash half-way re-sends the rest,
        // identical, which the admin ignores.
        for (seq, _) in batch {
            if self.inner.outbox.remove(seq.to_be_bytes())?.is_some() {
                self.inner.outbox_len.fetch_sub(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Callbacks waiting.
    pub fn outbox_len(&self) -> u64 {
        self.inner.outbox_len.load(Ordering::Relaxed)
    }

    /// Age of the oldest waiting callback.
    pub fn outbox_oldest_age(&self) -> Option<Duration> {
        let queued = self.outbox_oldest_queued_ms()?;
        let age = clock::now_ms().saturating_sub(queued).max(0);
        Some(Duration::from_millis(age as u64))
    }

    /// When the oldest waiting callback was queued (epoch ms).
    pub fn outbox_oldest_queued_ms(&self) -> Option<i64> {
        let (_, v) = self.inner.outbox.first().ok()??;
        let e = OutboxEntry::decode(&v).ok()?;
        Some(e.queued_ms)
    }
}
