//! Callbacks waiting for an admin's acknowledgement.
//!
//! Schema 3 keeps no outbox of its own: a finished run's record is its callback, with a place
//! in the delivery order (`RunRecord::outbox_seq`, from sled's id generator), and one watermark
//! in `meta` says which places are delivered. Finishing a run is then one write instead of
//! two (the record and an outbox entry), delivering a batch of 50 is one write instead of 50
//! removals, and a crash can no longer fall between a run's outcome and its callback. Schema
//! 2's separate outbox tree cost a third of a run's sled writes and the splits and merges of
//! a tree that grows at one end while it is emptied at the other.
//!
//! A watermark only works if callbacks are acknowledged in order. The reporter sends the
//! oldest first, and [`Waiting`] makes sure "oldest" is exact: a place is handed out under its
//! lock and stays in `writing` until its record is written, and a batch never reaches past a
//! place still being written. So every waiting callback below the highest one delivered has
//! been delivered, and the watermark can say so.
//!
//! Memory holds the oldest [`KEPT`] waiting callbacks (logId and time, about 40 bytes each); a
//! longer backlog (a week-long admin outage) stays on disk only, and is read back by a scan of
//! the journal whenever memory has sent all it held. Every callback that only the disk holds
//! has a later place than every one in memory, so the order holds across that boundary too.

use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::records::{run_key, OutboxEntry, RunRecord};
use super::{Result, Store, StoreError};
use crate::clock;
use crate::job::{Callback, LogId, RunState};

/// Waiting callbacks held in memory; more wait on disk only.
pub(super) const KEPT: usize = 8192;

/// The `meta` key of the watermark: every callback whose place is below it was delivered.
pub(super) const META_DELIVERED: &[u8] = b"delivered_below";

/// The in-memory side of the waiting callbacks.
pub(super) struct Waiting {
    state: Mutex<State>,
    /// Places below this are delivered (a copy of `meta`'s, read without a lock).
    delivered_below: std::sync::atomic::AtomicU64,
}

pub(super) struct State {
    /// How many waiting callbacks memory holds: [`KEPT`], fewer in a test that crosses the
    /// boundary.
    pub(super) kept: usize,
    /// False until the journal was scanned for waiting callbacks (by `recover`, or by the
    /// first question about them).
    loaded: bool,
    /// The oldest waiting callbacks: place → (logId, when queued).
    queue: BTreeMap<u64, (LogId, i64)>,
    /// Waiting callbacks only on disk, every one placed after the last in `queue`.
    on_disk: u64,
    /// Places handed out whose record is still being written.
    writing: BTreeSet<u64>,
}

/// Collects the oldest waiting callbacks of a journal scan, and counts the rest.
pub(super) struct Collector {
    kept_max: usize,
    delivered_below: u64,
    /// Places whose writers will count themselves (see [`Store::end_callback`]).
    writing: BTreeSet<u64>,
    /// A max-heap: the latest of the kept goes first when an older one comes.
    kept: BinaryHeap<(u64, LogId, i64)>,
    total: u64,
}

impl Collector {
    /// Notes a record, if it is a waiting callback.
    pub(super) fn add(&mut self, rec: &RunRecord) {
        let (RunState::Finished, Some(seq)) = (rec.state, rec.outbox_seq) else {
            return;
        };
        if seq < self.delivered_below || self.writing.contains(&seq) {
            return;
        }
        self.total += 1;
        self.kept.push((
            seq,
            rec.trigger.log_id,
            rec.finished_ms.unwrap_or(rec.accepted_ms),
        ));
        if self.kept.len() > self.kept_max {
            self.kept.pop();
        }
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Waiting {
    pub(super) fn new(delivered_below: u64) -> Self {
        Self {
            state: Mutex::new(State {
                kept: KEPT,
                loaded: false,
                queue: BTreeMap::new(),
                on_disk: 0,
                writing: BTreeSet::new(),
            }),
            delivered_below: delivered_below.into(),
        }
    }

    pub(super) fn delivered_below(&self) -> u64 {
        self.delivered_below.load(Ordering::Acquire)
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

impl State {
    pub(super) fn is_loaded(&self) -> bool {
        self.loaded
    }

    /// A collector for a scan made while this lock is held.
    pub(super) fn collector(&self, delivered_below: u64) -> Collector {
        Collector {
            kept_max: self.kept,
            delivered_below,
            writing: self.writing.clone(),
            kept: BinaryHeap::new(),
            total: 0,
        }
    }

    /// Takes a scan's result.
    pub(super) fn install(&mut self, c: Collector) {
        self.queue = c
            .kept
            .into_iter()
            .map(|(seq, id, at)| (seq, (id, at)))
            .collect();
        self.on_disk = c.total - self.queue.len() as u64;
        self.loaded = true;
    }

    fn len(&self) -> u64 {
        self.queue.len() as u64 + self.on_disk
    }
}

impl Store {
    /// Hands out the next place in the delivery order, for a record about to be written.
    pub(super) fn begin_callback(&self) -> Result<u64> {
        let mut st = self.inner.waiting.lock();
        // Under the lock: a place handed out later is always higher (sled's ids only grow).
        let seq = self.inner.db.generate_id()?;
        st.writing.insert(seq);
        Ok(seq)
    }

    /// The record placed at `seq` was written (or not): from now on its callback waits.
    pub(super) fn end_callback(&self, seq: u64, log_id: LogId, queued_ms: i64, written: bool) {
        let mut st = self.inner.waiting.lock();
        st.writing.remove(&seq);
        if !written || !st.loaded {
            // Not loaded: the scan that loads the index will find the record.
            return;
        }
        let below_last = st.queue.last_key_value().is_some_and(|(&l, _)| seq < l);
        if below_last || (st.on_disk == 0 && st.queue.len() < st.kept) {
            st.queue.insert(seq, (log_id, queued_ms));
        } else {
            st.on_disk += 1;
        }
    }

    /// Scans the journal for waiting callbacks at the first question about them, and when
    /// memory holds fewer than `want` of a backlog that is longer (once per [`KEPT`]
    /// deliveries at most).
    fn refill(&self, st: &mut State, want: usize) -> Result<()> {
        if st.loaded && (st.queue.len() >= want.max(1) || st.on_disk == 0) {
            return Ok(());
        }
        let mut c = st.collector(self.inner.waiting.delivered_below());
        for item in self.inner.runs.iter() {
            let (_, v) = item?;
            c.add(&RunRecord::decode(&v, &self.inner.names)?);
        }
        st.install(c);
        Ok(())
    }

    /// The oldest waiting callbacks, at most `max`, in the order they were queued.
    ///
    /// # Errors
    /// I/O or a corrupt record.
    pub fn outbox_batch(&self, max: usize) -> Result<Vec<(u64, OutboxEntry)>> {
        let places: Vec<(u64, LogId)> = {
            let mut st = self.inner.waiting.lock();
            self.refill(&mut st, max)?;
            // Never past a place whose record is still being written: it would be
            // acknowledged by the watermark without having been sent.
            let limit = st.writing.first().copied().unwrap_or(u64::MAX);
            st.queue
                .range(..limit)
                .take(max)
                .map(|(&seq, &(id, _))| (seq, id))
                .collect()
        };
        let mut batch = Vec::with_capacity(places.len());
        let mut gone = Vec::new();
        for (seq, id) in places {
            match self.callback_of(seq, id)? {
                Some(e) => batch.push((seq, e)),
                None => gone.push(seq),
            }
        }
        if !gone.is_empty() {
            // Removed from the journal since (an operator's hand, a damaged store): nothing
            // to send. The watermark passes them with the next delivery.
            let mut st = self.inner.waiting.lock();
            for seq in gone {
                st.queue.remove(&seq);
            }
        }
        Ok(batch)
    }

    /// The callback of the run at `id`, if its record still waits at `seq`.
    fn callback_of(&self, seq: u64, id: LogId) -> Result<Option<OutboxEntry>> {
        let Some(v) = self.inner.runs.get(run_key(id))? else {
            return Ok(None);
        };
        let rec = RunRecord::decode(&v, &self.inner.names)?;
        if rec.state != RunState::Finished || rec.outbox_seq != Some(seq) {
            return Ok(None);
        }
        let Some(outcome) = rec.outcome else {
            return Err(StoreError::Corrupt(format!(
                "run record {}: finished without an outcome",
                id.0
            )));
        };
        Ok(Some(OutboxEntry {
            callback: Callback {
                log_id: id,
                log_date_time: rec.trigger.log_date_time,
                outcome,
            },
            queued_ms: rec.finished_ms.unwrap_or(rec.accepted_ms),
            trace: rec.trace,
            kind: rec.kind,
        }))
    }

    /// The admin acknowledged these callbacks (the oldest, as [`Store::outbox_batch`] gave
    /// them): the watermark moves past them, in one write.
    ///
    /// # Errors
    /// I/O.
    pub fn ack(&self, batch: &[(u64, OutboxEntry)]) -> Result<()> {
        let Some(highest) = batch.iter().map(|(seq, _)| *seq).max() else {
            return Ok(());
        };
        let mut st = self.inner.waiting.lock();
        for (seq, _) in batch {
            st.queue.remove(seq);
        }
        // Never past a callback that still waits (a batch that was not the oldest): it
        // would count as delivered.
        let mut below = highest.saturating_add(1);
        if let Some(&first) = st.queue.keys().next() {
            below = below.min(first);
        }
        if let Some(&first) = st.writing.first() {
            below = below.min(first);
        }
        if below > self.inner.waiting.delivered_below() {
            // Not flushed here: it rides the next group commit. A crash before then sends
            // these callbacks once more, identical, which the admin ignores.
            self.inner
                .meta
                .insert(META_DELIVERED, &below.to_be_bytes())?;
            self.inner
                .waiting
                .delivered_below
                .store(below, Ordering::Release);
        }
        Ok(())
    }

    /// Callbacks waiting.
    pub fn outbox_len(&self) -> u64 {
        let mut st = self.inner.waiting.lock();
        // A journal that cannot be read counts what memory holds.
        let _ = self.refill(&mut st, 1);
        st.len()
    }

    /// Age of the oldest waiting callback.
    pub fn outbox_oldest_age(&self) -> Option<Duration> {
        let queued = self.outbox_oldest_queued_ms()?;
        let age = clock::now_ms().saturating_sub(queued).max(0);
        Some(Duration::from_millis(age as u64))
    }

    /// When the oldest waiting callback was queued (epoch ms).
    pub fn outbox_oldest_queued_ms(&self) -> Option<i64> {
        let mut st = self.inner.waiting.lock();
        self.refill(&mut st, 1).ok()?;
        st.queue.first_key_value().map(|(_, &(_, at))| at)
    }

    /// A finished run is reported once the watermark passed its callback's place.
    pub(super) fn derived_state(&self, rec: &RunRecord) -> RunState {
        match (rec.state, rec.outbox_seq) {
            (RunState::Finished, Some(seq)) if seq >= self.inner.waiting.delivered_below() => {
                RunState::Finished
            }
            (RunState::Finished, _) => RunState::Reported,
            (other, _) => other,
        }
    }
}
