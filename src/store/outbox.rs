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

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::records::{ack_key, run_key, AckRecord, OutboxEntry, RunRecord};
use super::{Result, Store};
use crate::clock;
use crate::job::{Callback, LogId, Outcome, RunState};

/// Waiting callbacks held in memory; more wait on disk only.
pub(super) const KEPT: usize = 8192;

/// Memory for waiting callbacks held whole (their messages and traces), so that a batch is
/// sent without reading the journal (a read and a decode per callback were 2 % of the
/// executor's CPU under load). Beyond it memory holds their places only.
const WHOLE_BYTES: usize = 1 << 20;

/// The `meta` key of the watermark: every callback whose place is below it was delivered.
pub(super) const META_DELIVERED: &[u8] = b"delivered_below";

/// The in-memory side of the waiting callbacks.
pub(super) struct Waiting {
    state: Mutex<State>,
    /// Places below this are delivered (a copy of `meta`'s, read without a lock).
    delivered_below: std::sync::atomic::AtomicU64,
}

/// A waiting callback in memory.
enum Held {
    Whole(OutboxEntry),
    /// Read from its run's record when it is sent.
    Place {
        log_id: LogId,
        queued_ms: i64,
    },
}

/// What a callback held whole costs against [`WHOLE_BYTES`].
fn weight(e: &OutboxEntry) -> usize {
    64 + e.callback.outcome.msg.as_ref().map_or(0, String::len)
        + e.trace.as_ref().map_or(0, String::len)
}

pub(super) struct State {
    /// How many waiting callbacks memory holds: [`KEPT`], fewer in a test that crosses the
    /// boundary.
    pub(super) kept: usize,
    /// How much of that memory holds callbacks whole: [`WHOLE_BYTES`], less in a test.
    pub(super) whole_max: usize,
    /// False until the journal was scanned for waiting callbacks (by `recover`, or by the
    /// first question about them).
    loaded: bool,
    /// The oldest waiting callbacks, by place.
    queue: BTreeMap<u64, Held>,
    /// What the callbacks held whole weigh.
    whole_bytes: usize,
    /// Waiting callbacks only on disk, every one placed after the last in `queue`.
    on_disk: u64,
    /// The lowest logId among those: a refill scans the journal from there (logIds grow, so
    /// that is usually its last few pages).
    on_disk_from: Option<LogId>,
    /// Places handed out whose record is still being written.
    writing: BTreeSet<u64>,
}

/// Collects the oldest waiting callbacks of a journal scan, and counts the rest.
pub(super) struct Collector {
    room: usize,
    delivered_below: u64,
    /// Places at or below this are in memory already.
    floor: Option<u64>,
    /// Places whose writers will count themselves (see [`Store::end_callback`]).
    writing: BTreeSet<u64>,
    kept: BTreeMap<u64, OutboxEntry>,
    total: u64,
    dropped_from: Option<LogId>,
}

/// The callback a finished record waits to send.
pub(super) fn entry_of(rec: &RunRecord, seq: u64) -> Option<OutboxEntry> {
    if rec.state != RunState::Finished || rec.outbox_seq != Some(seq) {
        return None;
    }
    Some(OutboxEntry {
        callback: Callback {
            log_id: rec.trigger.log_id,
            log_date_time: rec.trigger.log_date_time,
            // Never written so; a damaged record still gets its run a result.
            outcome: rec.outcome.clone().unwrap_or_else(|| {
                Outcome::fail("xxl-edge: the journal holds no outcome for this run")
            }),
        },
        queued_ms: rec.finished_ms.unwrap_or(rec.accepted_ms),
        trace: rec.trace.clone(),
        kind: rec.kind,
    })
}

fn lower(a: Option<LogId>, b: LogId) -> Option<LogId> {
    Some(a.map_or(b, |a| a.min(b)))
}

impl Collector {
    /// Notes a record, if it is a waiting callback.
    pub(super) fn add(&mut self, rec: &RunRecord) {
        let Some(seq) = rec.outbox_seq else {
            return;
        };
        if seq < self.delivered_below
            || self.floor.is_some_and(|f| seq <= f)
            || self.writing.contains(&seq)
        {
            return;
        }
        let Some(e) = entry_of(rec, seq) else {
            return;
        };
        self.total += 1;
        self.kept.insert(seq, e);
        if self.kept.len() > self.room {
            if let Some((_, e)) = self.kept.pop_last() {
                self.dropped_from = lower(self.dropped_from, e.callback.log_id);
            }
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
                whole_max: WHOLE_BYTES,
                loaded: false,
                queue: BTreeMap::new(),
                whole_bytes: 0,
                on_disk: 0,
                on_disk_from: None,
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

    /// A collector for a scan made while this lock is held: of the whole journal when
    /// nothing is loaded, else of what only the disk holds.
    pub(super) fn collector(&self, delivered_below: u64) -> Collector {
        Collector {
            room: self.kept.saturating_sub(self.queue.len()),
            delivered_below,
            floor: self.queue.last_key_value().map(|(&seq, _)| seq),
            writing: self.writing.clone(),
            kept: BTreeMap::new(),
            total: 0,
            dropped_from: None,
        }
    }

    /// Takes a scan's result.
    pub(super) fn absorb(&mut self, c: Collector) {
        let moved = c.kept.len() as u64;
        for (seq, e) in c.kept {
            self.hold(seq, e);
        }
        self.on_disk = c.total - moved;
        self.on_disk_from = c.dropped_from;
        self.loaded = true;
    }

    fn hold(&mut self, seq: u64, e: OutboxEntry) {
        let w = weight(&e);
        let held = if self.whole_bytes + w <= self.whole_max {
            self.whole_bytes += w;
            Held::Whole(e)
        } else {
            Held::Place {
                log_id: e.callback.log_id,
                queued_ms: e.queued_ms,
            }
        };
        self.queue.insert(seq, held);
    }

    fn release(&mut self, seq: u64) {
        if let Some(Held::Whole(e)) = self.queue.remove(&seq) {
            self.whole_bytes -= weight(&e);
        }
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

    /// The record placed at `seq` was written (`Some`, its callback) or not: from now on the
    /// callback waits.
    pub(super) fn end_callback(&self, seq: u64, written: Option<OutboxEntry>) {
        let mut st = self.inner.waiting.lock();
        st.writing.remove(&seq);
        let Some(e) = written else {
            return;
        };
        if !st.loaded {
            // The scan that loads memory will find the record.
            return;
        }
        let below_last = st.queue.last_key_value().is_some_and(|(&l, _)| seq < l);
        if below_last || (st.on_disk == 0 && st.queue.len() < st.kept) {
            st.hold(seq, e);
        } else {
            st.on_disk += 1;
            st.on_disk_from = lower(st.on_disk_from, e.callback.log_id);
        }
    }

    /// Scans the journal for waiting callbacks at the first question about them, and when
    /// memory holds fewer than `want` of a backlog that is longer (once per [`KEPT`]
    /// deliveries at most, and from the lowest logId only the disk holds).
    fn refill(&self, st: &mut State, want: usize) -> Result<()> {
        if st.loaded && (st.queue.len() >= want.max(1) || st.on_disk == 0) {
            return Ok(());
        }
        let mut c = st.collector(self.inner.waiting.delivered_below());
        if c.room == 0 {
            return Ok(());
        }
        let from = if st.loaded { st.on_disk_from } else { None };
        let scan = match from {
            Some(id) => self.inner.runs.range(run_key(id)..),
            None => self.inner.runs.iter(),
        };
        for item in scan {
            let (_, v) = item?;
            c.add(&RunRecord::decode(&v, &self.inner.names)?);
        }
        st.absorb(c);
        Ok(())
    }

    /// The oldest waiting callbacks, at most `max`, in the order they were queued.
    ///
    /// # Errors
    /// I/O or a corrupt record.
    pub fn outbox_batch(&self, max: usize) -> Result<Vec<(u64, OutboxEntry)>> {
        let mut batch = Vec::new();
        let mut places = Vec::new();
        {
            let mut st = self.inner.waiting.lock();
            self.refill(&mut st, max)?;
            // Never past a place whose record is still being written: it would be
            // acknowledged by the watermark without having been sent.
            let limit = st.writing.first().copied().unwrap_or(u64::MAX);
            for (&seq, held) in st.queue.range(..limit).take(max) {
                match held {
                    Held::Whole(e) => batch.push((seq, e.clone())),
                    Held::Place { log_id, .. } => places.push((seq, *log_id)),
                }
            }
        }
        if places.is_empty() {
            return Ok(batch);
        }
        let mut gone = Vec::new();
        for (seq, id) in places {
            match self.run(id)?.and_then(|r| entry_of(&r, seq)) {
                Some(e) => batch.push((seq, e)),
                None => gone.push(seq),
            }
        }
        batch.sort_unstable_by_key(|(seq, _)| *seq);
        if !gone.is_empty() {
            // Removed from the journal since (an operator's hand, a damaged store): nothing
            // to send. The watermark passes them with the next delivery.
            let mut st = self.inner.waiting.lock();
            for seq in gone {
                st.release(seq);
            }
        }
        Ok(batch)
    }

    /// The admin acknowledged these callbacks (the oldest, as [`Store::outbox_batch`] gave
    /// them): the watermark moves past them, in one write.
    ///
    /// # Errors
    /// I/O.
    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    pub fn ack(&self, batch: &[(u64, OutboxEntry)]) -> Result<()> {
        self.ack_with_lines(batch, &[])
    }

    /// [`Store::ack`], and each run's "callback finish" line (its number in the run's log) in
    /// one more write for the whole batch, an [`AckRecord`]: `/log` shows the line from it
    /// (see `logs`). Written after the watermark, and sled recovers a prefix of its writes,
    /// so a line that a flush made durable means a durable acknowledgement.
    ///
    /// # Errors
    /// I/O.
    pub fn ack_with_lines(
        &self,
        batch: &[(u64, OutboxEntry)],
        lines: &[(LogId, u32)],
    ) -> Result<()> {
        let Some(highest) = batch.iter().map(|(seq, _)| *seq).max() else {
            return Ok(());
        };
        let mut st = self.inner.waiting.lock();
        for (seq, _) in batch {
            st.release(*seq);
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
        drop(st);
        if !lines.is_empty() {
            let rec = AckRecord {
                at_ms: clock::now_ms(),
                lines: lines.to_vec(),
            };
            self.inner
                .acks
                .insert(ack_key(highest.saturating_add(1)), rec.encode())?;
        }
        Ok(())
    }

    /// A reported run's "callback finish" line: its number in the run's log and when the
    /// admin acknowledged the callback. `None` while the callback waits, and for runs whose
    /// acknowledgement has no line (an older release's, or pruned).
    ///
    /// # Errors
    /// I/O or a corrupt record.
    pub(super) fn callback_line(&self, rec: &RunRecord) -> Result<Option<(u32, i64)>> {
        let Some(seq) = rec.outbox_seq else {
            return Ok(None);
        };
        if self.derived_state(rec) != RunState::Reported {
            return Ok(None);
        }
        // The batch that carried it is the first above its place; one sent again after a
        // crash may be a later one.
        const LOOKED_AT: usize = 4;
        let id = rec.trigger.log_id;
        for item in self
            .inner
            .acks
            .range(ack_key(seq.saturating_add(1))..)
            .take(LOOKED_AT)
        {
            let (_, v) = item?;
            let a = AckRecord::decode(&v)?;
            if let Some(&(_, line)) = a.lines.iter().find(|(l, _)| *l == id) {
                return Ok(Some((line, a.at_ms)));
            }
        }
        Ok(None)
    }

    /// The watermark now: acknowledgements made from here on have keys above it (see
    /// [`Store::prune_acks`]).
    pub(super) fn delivered_below(&self) -> u64 {
        self.inner.waiting.delivered_below()
    }

    /// Removes the acknowledgements whose runs have all left the journal: those of places
    /// below `end`, which is at most the lowest place of a finished run still there and at
    /// most the watermark when that was looked at (so a batch acknowledged meanwhile stays).
    ///
    /// # Errors
    /// I/O.
    pub(super) fn prune_acks(&self, end: u64) -> Result<()> {
        // A key `k` covers places below `k`: all of them gone once `k <= end`.
        for item in self.inner.acks.range(..=ack_key(end)) {
            let (k, _) = item?;
            self.inner.acks.remove(k)?;
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
        st.queue.first_key_value().map(|(_, held)| match held {
            Held::Whole(e) => e.queued_ms,
            Held::Place { queued_ms, .. } => *queued_ms,
        })
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
