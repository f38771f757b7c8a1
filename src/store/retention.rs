//! Retention: the byte budget, the age limit, free space.

use std::time::Duration;

use super::records::{run_id, KeyRecord, RunRecord};
use super::{Result, Store, StoreError};
use crate::clock;
use crate::job::{LogId, RunState};

impl Store {
    /// Refuses new work when the file system is below `store.min_free_bytes`.
    ///
    /// # Errors
    /// [`StoreError::DiskFull`].
    pub fn check_space(&self) -> Result<()> {
        let min = self.inner.cfg.min_free_bytes;
        if min == 0 {
            return Ok(());
        }
        if let Ok(st) = nix::sys::statvfs::statvfs(&self.inner.dir) {
            // These are 32-bit on armv7 and 64-bit on aarch64, hence the conversion.
            #[allow(clippy::useless_conversion)]
            let free =
                u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size()));
            if free < min {
                return Err(StoreError::DiskFull {
                    path: self.inner.dir.display().to_string(),
                    free,
                    min,
                });
            }
        }
        Ok(())
    }

    /// sled's files on disk, in bytes.
    pub fn size_on_disk(&self) -> u64 {
        self.inner.db.size_on_disk().unwrap_or(0)
    }

    /// Prunes reported runs (and their logs) older than `max_age`, then the oldest reported runs
    /// while the store is over its byte budget. Unfinished runs and the outbox are never pruned.
    /// Expired idempotency keys go too, and the callback acknowledgements (`acks`) whose runs
    /// have all gone. Returns the number of runs removed.
    ///
    /// Before a run leaves the journal, the pruned watermark (see [`Store::pruned_watermark`])
    /// is raised over it, in the same sled log: a flush that makes the removal durable makes
    /// the watermark durable first, so a pruned logId can still be refused after a crash. Runs
    /// are removed in chunks, so memory stays bounded however many go.
    ///
    /// # Errors
    /// I/O or a corrupt record.
    pub fn prune(&self, max_age: Option<Duration>) -> Result<u64> {
        const CHUNK: usize = 1024;
        let now = clock::now_ms();
        let cutoff = max_age.map(|a| now - a.as_millis() as i64);
        let over_budget = self.size_on_disk() > self.inner.cfg.max_bytes;
        let mut removed = 0u64;
        // Over budget, free a tenth of the journal per pass (oldest first); sled reclaims the
        // space as it rewrites segments, so the effect on disk lags a little.
        let budget_quota = if over_budget {
            (self.inner.runs.len() as u64 / 10).max(1)
        } else {
            0
        };
        let mut budget_removed = 0u64;
        // Keys to remove, with the record when it names a large-trigger file.
        let mut chunk: Vec<(sled::IVec, LogId, Option<RunRecord>)> = Vec::new();
        let mut mark: Option<(LogId, i64)> = None;
        // Batches acknowledged from now on are kept whatever the scan finds.
        let mut acks_end = self.delivered_below();
        let mut iter = self.inner.runs.iter();
        loop {
            let item = iter.next();
            let done = item.is_none();
            if let Some(item) = item {
                let (k, v) = item?;
                let rec = RunRecord::decode(&v, &self.inner.names)?;
                let kept_place = rec.outbox_seq.unwrap_or(u64::MAX);
                if self.derived_state(&rec) != RunState::Reported {
                    acks_end = acks_end.min(kept_place);
                    continue;
                }
                let old = cutoff.is_some_and(|c| rec.finished_ms.unwrap_or(rec.accepted_ms) < c);
                let budget = budget_removed < budget_quota;
                if !(old || budget) {
                    acks_end = acks_end.min(kept_place);
                    continue;
                }
                if !old {
                    budget_removed += 1;
                }
                let Some(id) = run_id(&k) else { continue };
                let t = rec.trigger.log_date_time;
                mark = Some(mark.map_or((id, t), |(i, m)| (i.max(id), m.max(t))));
                chunk.push((k, id, rec.bulk.is_some().then_some(rec)));
                if chunk.len() < CHUNK {
                    continue;
                }
            }
            if let Some((id, t)) = mark.take() {
                self.raise_watermark(id, t)?;
            }
            for (k, id, rec) in chunk.drain(..) {
                self.remove_log(id)?;
                self.inner.runs.remove(k)?;
                self.inner.held.remove(id.0);
                // Normally gone since the run finished; a crash can have kept it.
                if let Some(rec) = rec {
                    self.remove_after_flush(&rec);
                }
                removed += 1;
            }
            if done {
                break;
            }
        }
        self.prune_acks(acks_end)?;
        for item in self.inner.keys.iter() {
            let (k, v) = item?;
            if KeyRecord::decode(&v).map_or(true, |kr| kr.expires_ms <= now) {
                self.inner.keys.remove(k)?;
            }
        }
        Ok(removed)
    }
}
