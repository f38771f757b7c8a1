//! The run journal: one record per logId, from accepted to finished.

use std::time::Duration;

use super::bulk::{bulk_bytes, stripped, write_bulk};
use super::logs::encode_chunk;
use super::outbox::entry_of;
use super::records::{run_key, Bulk, LogTail, RunRecord};
use super::{Result, Store, StoreError, BULK_THRESHOLD};
use crate::clock;
use crate::job::{LogId, Outcome, OutcomeKind, RunState, Trigger};

/// What the journal held at start.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Accepted, never started: run them again, in logId order.
    pub queued: Vec<RunRecord>,
    /// Started but not finished: the process died during the run.
    pub interrupted: Vec<RunRecord>,
    /// Unfinished runs whose large trigger file could not be read back, with the reason: they
    /// cannot run and are reported as failed.
    pub lost: Vec<(RunRecord, String)>,
    /// Runs in the journal.
    pub runs: u64,
}

/// Sizes and counts for `xxl-edge state` and metrics.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Callbacks waiting.
    pub outbox_len: u64,
    /// Age of the oldest waiting callback.
    pub outbox_oldest_age: Option<Duration>,
    /// sled's size on disk.
    pub disk_bytes: u64,
    /// Runs in the journal.
    pub runs: u64,
    /// Runs by state.
    pub accepted: u64,
    /// Runs running.
    pub running: u64,
    /// Runs finished, not yet reported.
    pub finished: u64,
    /// Runs reported.
    pub reported: u64,
}

impl Store {
    /// True if the journal holds this logId.
    ///
    /// # Errors
    /// I/O.
    pub fn has_run(&self, id: LogId) -> Result<bool> {
        // Admins count logIds up (a database sequence), so a new trigger's is above every
        // one the journal held at open, where memory knows the answer (see `held`).
        if let Some(held) = self.inner.held.knows(id.0) {
            return Ok(held);
        }
        Ok(self.inner.runs.contains_key(run_key(id))?)
    }

    /// Called before a run's record is written: [`Store::has_run`] says yes from now on.
    /// False when memory already said so (another writer of this logId came first).
    fn holds_run(&self, id: LogId) -> bool {
        self.inner.held.add(id.0)
    }

    /// Reads one run, as the journal holds it: a large trigger (see [`RunRecord::bulk`]) comes
    /// without its params and GLUE source; [`Store::recover`] reads those back.
    ///
    /// # Errors
    /// I/O or a corrupt record.
    pub fn run(&self, id: LogId) -> Result<Option<RunRecord>> {
        match self.inner.runs.get(run_key(id))? {
            Some(v) => Ok(Some(RunRecord::decode(&v, &self.inner.names)?)),
            None => Ok(None),
        }
    }

    /// Records an accepted trigger; fails if the logId is already known (never run twice).
    ///
    /// # Errors
    /// [`StoreError::Duplicate`], I/O.
    ///
    /// A trigger whose params and GLUE source exceed [`BULK_THRESHOLD`] is first written to its
    /// own file and fsynced (file and directory), and the record names the file: the file is
    /// on disk before the record can be, so the record's flush makes both durable.
    ///
    /// `running`: the trigger starts at once, so its record says so from the first write
    /// (one write and one flush instead of two; the handler still starts only after the flush).
    pub fn insert_accepted(&self, trigger: &Trigger, running: bool) -> Result<()> {
        let now = clock::now_ms();
        let bytes = bulk_bytes(trigger);
        let (rec, file) = if bytes > BULK_THRESHOLD {
            let file = format!("{}.{}", trigger.log_id.0, self.inner.db.generate_id()?);
            let path = self.inner.bulk_dir.join(&file);
            write_bulk(&self.inner.bulk_dir, &path, trigger)?;
            let mut rec = RunRecord::accepted(stripped(trigger), now);
            rec.bulk = Some(Bulk {
                file,
                bytes: bytes as u64,
            });
            (rec, Some(path))
        } else {
            (RunRecord::accepted(trigger.clone(), now), None)
        };
        let mut rec = rec;
        if running {
            rec.state = RunState::Running;
            rec.started_ms = Some(now);
        }
        let encoded = match rec.encode(&self.inner.names) {
            Ok(v) => v,
            Err(e) => {
                if let Some(path) = file {
                    let _ = std::fs::remove_file(path);
                }
                return Err(e);
            }
        };
        let added = self.holds_run(trigger.log_id);
        let encoded = sled::IVec::from(encoded);
        let inserted = self
            .inner
            .runs
            .compare_and_swap(
                run_key(trigger.log_id),
                None::<&[u8]>,
                Some(encoded.clone()),
            )
            .map_err(StoreError::from);
        match inserted {
            Ok(Ok(())) => {
                self.inner.inflight.keep(trigger.log_id.0, encoded);
                Ok(())
            }
            Ok(Err(_)) => {
                // No record names the file; if this removal fails, the next open removes it.
                if let Some(path) = file {
                    let _ = std::fs::remove_file(path);
                }
                Err(StoreError::Duplicate(trigger.log_id))
            }
            Err(e) => {
                // Only what this call added: a racing duplicate's record may be written.
                if added {
                    self.inner.held.remove(trigger.log_id.0);
                }
                if let Some(path) = file {
                    let _ = std::fs::remove_file(path);
                }
                Err(e)
            }
        }
    }

    /// Removes a run that was never acknowledged to the admin (its `/run` failed after all). It
    /// may already be marked running: its worker marks it while `/run` waits for the same flush,
    /// and starts nothing before it knows the answer.
    ///
    /// # Errors
    /// I/O.
    pub fn forget_accepted(&self, id: LogId) -> Result<()> {
        if let Some(rec) = self.run(id)? {
            if matches!(rec.state, RunState::Accepted | RunState::Running) {
                self.inner.inflight.drop_run(id.0);
                self.inner.runs.remove(run_key(id))?;
                self.inner.held.remove(id.0);
                self.remove_after_flush(&rec);
                if let Some(k) = rec.idempotency_key {
                    self.release_key(&k, id)?;
                }
            }
        }
        Ok(())
    }

    /// Marks a run started, holding its idempotency key if it has one.
    ///
    /// # Errors
    /// I/O or a corrupt record.
    pub fn mark_running(&self, id: LogId, key: Option<String>) -> Result<()> {
        self.update_run(id, |r| {
            r.state = RunState::Running;
            r.started_ms = Some(clock::now_ms());
            r.idempotency_key.clone_from(&key);
        })
    }

    pub(super) fn update_run(&self, id: LogId, f: impl Fn(&mut RunRecord)) -> Result<()> {
        let key = run_key(id);
        let mut err = None;
        // The value of the closure's last call is the one written.
        let mut written = None;
        let fetched = self.inner.runs.fetch_and_update(key, |old| {
            let old = old?;
            let updated = RunRecord::decode(old, &self.inner.names).and_then(|mut r| {
                f(&mut r);
                r.encode(&self.inner.names)
            });
            match updated {
                Ok(v) => {
                    let v = sled::IVec::from(v);
                    written = Some(v.clone());
                    Some(v)
                }
                Err(e) => {
                    err = Some(e);
                    written = None;
                    Some(sled::IVec::from(old))
                }
            }
        });
        match (&fetched, written) {
            (Ok(_), Some(v)) if err.is_none() => self.inner.inflight.replace(id.0, v),
            _ => self.inner.inflight.drop_run(id.0),
        }
        fetched?;
        match err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Records a run's outcome, which queues its callback: one write of the run's record,
    /// with its place in the delivery order (see `outbox`). A run already finished keeps its
    /// first outcome (one result per trigger).
    ///
    /// The idempotency key is written after it, a hint only: [`Store::check_key`] reads the
    /// holder's record. The finished record keeps no large params or source; their file goes
    /// after the next flush.
    ///
    /// # Errors
    /// I/O or a corrupt record.
    pub fn finish(
        &self,
        trigger: &Trigger,
        outcome: &Outcome,
        kind: OutcomeKind,
        trace: Option<String>,
    ) -> Result<bool> {
        self.finish_with_log(trigger, outcome, kind, trace, None)
    }

    /// [`Store::finish`], keeping `log` (the number of its first line, and the lines) in the
    /// record: the run's last lines and its outcome in one write. True when the outcome was
    /// recorded, and with it the lines; false when the run had finished already, and the
    /// caller writes the lines to the log itself.
    ///
    /// # Errors
    /// I/O or a corrupt record.
    pub fn finish_with_log(
        &self,
        trigger: &Trigger,
        outcome: &Outcome,
        kind: OutcomeKind,
        trace: Option<String>,
        log: Option<(u32, &[String])>,
    ) -> Result<bool> {
        let key = run_key(trigger.log_id);
        let now = clock::now_ms();
        let old = match self.inner.inflight.take(trigger.log_id.0) {
            Some(v) => Some(RunRecord::decode(&v, &self.inner.names)?),
            None => self.run(trigger.log_id)?,
        };
        if old
            .as_ref()
            .is_some_and(|r| matches!(r.state, RunState::Finished | RunState::Reported))
        {
            return Ok(false);
        }
        // Rejected before acceptance never reaches here; a missing record means the trigger
        // was recovered from an older journal. Recreate it.
        let mut rec = old
            .unwrap_or_else(|| {
                let t = if bulk_bytes(trigger) > BULK_THRESHOLD {
                    stripped(trigger)
                } else {
                    trigger.clone()
                };
                RunRecord::accepted(t, now)
            })
            .without_bulk_text();
        rec.state = RunState::Finished;
        rec.finished_ms = Some(now);
        rec.outcome = Some(outcome.clone());
        rec.kind = Some(kind);
        rec.trace = trace;
        rec.log = log.map(|(first, lines)| LogTail {
            first,
            chunk: encode_chunk(lines),
        });
        let seq = self.begin_callback()?;
        rec.outbox_seq = Some(seq);
        self.holds_run(trigger.log_id);
        let written = rec
            .encode(&self.inner.names)
            .and_then(|v| Ok(self.inner.runs.insert(key, v)?));
        let callback = written.as_ref().ok().and_then(|_| entry_of(&rec, seq));
        self.end_callback(seq, callback);
        written?;
        self.remove_after_flush(&rec);
        if let Some(k) = &rec.idempotency_key {
            self.settle_key(k, trigger.log_id, outcome.is_success())?;
        }
        Ok(true)
    }

    /// Scans the journal at start; the same pass finds the waiting callbacks (see `outbox`).
    ///
    /// # Errors
    /// I/O or a corrupt record.
    pub fn recover(&self) -> Result<Recovery> {
        let mut r = Recovery {
            ..Default::default()
        };
        let mut waiting = self.inner.waiting.lock();
        let mut callbacks =
            (!waiting.is_loaded()).then(|| waiting.collector(self.inner.waiting.delivered_below()));
        for item in self.inner.runs.iter() {
            let (_, v) = item?;
            r.runs += 1;
            let rec = RunRecord::decode(&v, &self.inner.names)?;
            match rec.state {
                RunState::Accepted => r.queued.push(rec),
                RunState::Running => r.interrupted.push(rec),
                RunState::Finished | RunState::Reported => {
                    if let Some(c) = &mut callbacks {
                        c.add(&rec);
                    }
                }
            }
        }
        if let Some(c) = callbacks {
            waiting.absorb(c);
        }
        drop(waiting);
        // Only what may still run gets its large text back.
        let mut lost = Vec::new();
        for runs in [&mut r.queued, &mut r.interrupted] {
            let mut kept = Vec::with_capacity(runs.len());
            for mut rec in runs.drain(..) {
                let Some(b) = &rec.bulk else {
                    kept.push(rec);
                    continue;
                };
                match self.read_bulk(b, rec.trigger.log_id) {
                    Ok(t) => {
                        rec.trigger = t;
                        kept.push(rec);
                    }
                    Err(why) => lost.push((rec, why)),
                }
            }
            *runs = kept;
        }
        r.lost = lost;
        Ok(r)
    }

    /// Counts for the `state` command and metrics (scans the journal).
    ///
    /// # Errors
    /// I/O or a corrupt record.
    pub fn stats(&self) -> Result<Stats> {
        let mut s = Stats {
            outbox_len: self.outbox_len(),
            outbox_oldest_age: self.outbox_oldest_age(),
            disk_bytes: self.size_on_disk(),
            ..Default::default()
        };
        for item in self.inner.runs.iter() {
            let (_, v) = item?;
            let rec = RunRecord::decode(&v, &self.inner.names)?;
            s.runs += 1;
            match self.derived_state(&rec) {
                RunState::Accepted => s.accepted += 1,
                RunState::Running => s.running += 1,
                RunState::Finished => s.finished += 1,
                RunState::Reported => s.reported += 1,
            }
        }
        Ok(s)
    }

    /// The most recent runs, newest first.
    ///
    /// # Errors
    /// I/O or a corrupt record.
    pub fn recent_runs(&self, n: usize) -> Result<Vec<RunRecord>> {
        let mut v = Vec::new();
        for item in self.inner.runs.iter().rev().take(n) {
            let (_, val) = item?;
            let mut rec = RunRecord::decode(&val, &self.inner.names)?;
            rec.state = self.derived_state(&rec);
            v.push(rec);
        }
        Ok(v)
    }
}
