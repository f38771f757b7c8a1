//! One home for a run's log: the line counter, the byte cap, the `yyyy-MM-dd HH:mm:ss [xxl-edge]`
//! prefix and every line the reference writes (start, end, timeout, stop, exception, callback).
//!
//! The runner, the reporter and recovery all write through [`RunLogs::open`], which hands out the
//! live log of a run when one exists, so a late handler write and the reporter's "callback finish"
//! share one counter and can never take the same line number. A log that nobody holds continues
//! after the last line in the store.
//!
//! Lines are buffered per run and written as chunks (one sled key for many lines): when the
//! last handle goes, when a chunk reaches [`CHUNK_BYTES`], before `/log` answers, and by the
//! executor's log flusher at most `store.log_flush_ms` after they were written. A line waits in
//! memory at most that long, which is the bound the README promises for a crash. The
//! reporter's "callback finish" lines are not written to the runs' logs: each run's line gets
//! its number here, and the store keeps the numbers of a whole batch in one write
//! ([`RunLogs::callback_finish`]).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::time::Instant;

use crate::clock;
use crate::handler::LogSink;
use crate::job::{LogId, Outcome};
use crate::store::{Store, StoreError};

/// Longest line kept as one line; longer ones are split, so that a `/log` page bounded in bytes
/// can always hold at least one line and a single write cannot make a page of megabytes.
pub(crate) const MAX_LINE_BYTES: usize = 16 * 1024;

/// How much of the params the start line shows. The reference prints all of it, but params of
/// megabytes (or of a million newlines) would then fill the run's log with the executor's own
/// line; the handler still gets them whole.
pub(crate) const START_LINE_PARAM_BYTES: usize = 4 * 1024;

/// What each stored line costs against the run's cap besides its text: the key and sled's
/// bookkeeping. Without it a flood of empty lines would be free.
const LINE_OVERHEAD: u64 = 16;

/// A run's buffered lines up to this many bytes are kept in its finished record when it ends
/// (see [`RunLog::save_with_outcome`]); more are written as a chunk of their own, so that a
/// record, which sled rewrites with its neighbours in the journal's leaves, stays small.
const TAIL_BYTES: usize = 2048;

/// A buffered chunk is written once it holds this many bytes, so a chatty handler makes values
/// of bounded size (sled keeps large values out of line, at a cost) and memory stays bounded.
const CHUNK_BYTES: usize = 32 * 1024;

/// How many ended logs' last line numbers are remembered (see `Shared::ended`): as many as the
/// waiting callbacks that memory holds (`store::outbox::KEPT`), whose "callback finish" lines
/// the reporter numbers; about 1 MiB at most, in a backlog of callbacks. Past it, or for logs
/// that ended long ago, the next open asks the store, which is slower, never wrong (4,096 were
/// outgrown by the e2e load's bursts: the store answered 2.3 % of the executor's samples).
const ENDED_KEPT: usize = 8192;

/// When [`ENDED_KEPT`] is reached, what was remembered longer ago than this is forgotten to
/// make room (a callback that an admin took this long to acknowledge is not on the fast path
/// anyway).
const ENDED_AGE: std::time::Duration = std::time::Duration::from_secs(60);

/// The logs of live runs; cheap to clone.
#[derive(Clone)]
pub(crate) struct RunLogs {
    inner: Arc<Shared>,
}

struct Shared {
    store: Store,
    cap: u64,
    live: Mutex<HashMap<LogId, Weak<LogInner>>>,
    /// The last line number of logs whose last handle went, taken by the next open: the
    /// reporter's "callback finish" follows each run's end, and finding the last line in the
    /// store (a reverse range scan in sled) was ~7 % of the executor's CPU under load.
    /// Lock order: `live`, then this.
    ended: Mutex<Ended>,
    unflushed_writes: Arc<Unflushed>,
    /// Called when a line cannot be written (counted and logged by the owner).
    on_error: Box<dyn Fn(&StoreError) + Send + Sync>,
}

impl std::fmt::Debug for RunLogs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunLogs").finish_non_exhaustive()
    }
}

/// One run's log. Clones share the counter.
#[derive(Clone)]
pub(crate) struct RunLog {
    inner: Arc<LogInner>,
}

struct LogInner {
    shared: Weak<Shared>,
    store: Store,
    log_id: LogId,
    /// Line numbers are taken under this lock together with the buffer, so a chunk always
    /// holds consecutive lines even with two writers (handler and reporter).
    pending: Mutex<Pending>,
    used: AtomicU64,
    cap: u64,
    truncated: AtomicBool,
    unflushed_writes: Arc<Unflushed>,
    /// Leave the last line number in `Shared::ended` when the last handle goes; off after
    /// "callback finish", after which a log is rarely opened again (it would only crowd out
    /// the runs whose callbacks are still on their way).
    remember_end: AtomicBool,
}

/// Chunks written to the store that may not be on disk yet.
#[derive(Default)]
struct Unflushed {
    /// The flush epoch read after each write, with when its oldest bounded line was written
    /// (one entry per epoch; `None`: only lines that wait for the next flush, see
    /// [`RunLogs::callback_finish`]).
    writes: Mutex<VecDeque<(u64, Option<Instant>)>>,
    /// Writes between the store and their entry in `writes`. A reader that has already seen
    /// such a write in the store (a `/log` page) must count it as unflushed: the crash test
    /// saw `/log` serve a line unflushed (a handle dropped right after "callback finish"
    /// wrote it) and a restart take it back.
    in_flight: AtomicUsize,
}

impl Unflushed {
    /// Makes a store write of log lines that a `/log` reader may see before it is entered in
    /// `writes`: it counts as in flight while `write` runs, and when `write` returns
    /// `Some(since)` (it wrote; `since`: when its oldest bounded line was written) it is
    /// entered with the flush epoch read after it (a flush that began after it carries the
    /// write; one that began before may have missed it), before it leaves flight.
    fn write<T>(&self, store: &Store, write: impl FnOnce() -> (T, Option<Option<Instant>>)) -> T {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let (res, wrote) = write();
        if let Some(since) = wrote {
            let epoch = store.flush_epoch();
            let mut w = lock(&self.writes);
            match w.back_mut() {
                Some((e, t)) if *e == epoch => *t = (*t).into_iter().chain(since).min(),
                _ => w.push_back((epoch, since)),
            }
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        res
    }
}

/// The last line numbers of logs whose last handle went.
///
/// When full, the oldest are kept and the new are not remembered: the reporter asks for them
/// in the order their runs ended, so forgetting the oldest first made every lookup miss as
/// soon as more than [`ENDED_KEPT`] callbacks waited (measured in the e2e load: the store
/// answered every "callback finish" from then on, 4 % of the executor's CPU). What was
/// remembered longer than [`ENDED_AGE`] ago makes room.
#[derive(Default)]
struct Ended {
    /// The last line, and when it was remembered (which entry of `order` is current).
    last: HashMap<LogId, (u32, Instant)>,
    /// In the order remembered; may still name logs taken since (bounded all the same).
    order: VecDeque<(LogId, Instant)>,
}

impl Ended {
    fn take(&mut self, id: LogId) -> Option<u32> {
        self.last.remove(&id).map(|(line, _)| line)
    }

    fn remember(&mut self, id: LogId, line: u32) {
        let now = Instant::now();
        while let Some(&(old, at)) = self.order.front() {
            let current = self.last.get(&old).is_some_and(|e| e.1 == at);
            if current {
                let expired = now.saturating_duration_since(at) > ENDED_AGE;
                if !(expired && self.last.len() >= ENDED_KEPT) {
                    break;
                }
                self.last.remove(&old);
            }
            self.order.pop_front();
        }
        if self.last.len() >= ENDED_KEPT && !self.last.contains_key(&id) {
            return;
        }
        self.last.insert(id, (line, now));
        self.order.push_back((id, now));
        // Logs taken out of order leave their names behind the front.
        if self.order.len() > 2 * ENDED_KEPT {
            let last = &self.last;
            self.order
                .retain(|(id, at)| last.get(id).is_some_and(|e| e.1 == *at));
        }
    }
}

/// Lines written but not yet in the store.
struct Pending {
    /// The number the next line gets.
    next: u32,
    lines: Vec<String>,
    /// When the oldest buffered line that the flush bound covers was written.
    since: Option<Instant>,
    bytes: usize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl RunLogs {
    /// Logs in `store`, each run's handler output capped at `cap` bytes.
    pub(crate) fn new(
        store: Store,
        cap: u64,
        on_error: impl Fn(&StoreError) + Send + Sync + 'static,
    ) -> Self {
        Self {
            inner: Arc::new(Shared {
                store,
                cap,
                live: Mutex::new(HashMap::new()),
                ended: Mutex::new(Ended::default()),
                unflushed_writes: Arc::default(),
                on_error: Box::new(on_error),
            }),
        }
    }

    /// The run's live log, or a new handle that continues after its last stored line.
    pub(crate) fn open(&self, log_id: LogId) -> RunLog {
        self.open_with(log_id, None)
    }

    /// The log of a run that `/run` accepted in this process and that starts now: it has no
    /// line yet (the logId had no journal record, and logs leave the store before their
    /// record does), so the store is not asked.
    pub(crate) fn open_new(&self, log_id: LogId) -> RunLog {
        self.open_with(log_id, Some(0))
    }

    fn open_with(&self, log_id: LogId, known_last: Option<u32>) -> RunLog {
        let mut live = lock(&self.inner.live);
        if let Some(l) = live.get(&log_id).and_then(Weak::upgrade) {
            return RunLog { inner: l };
        }
        // Nobody writes this log now: every earlier line is in the store (appends are
        // synchronous), so the store's last line is the truth, and so is what the last
        // handle left (it wrote its lines before it left it).
        let ended = lock(&self.inner.ended).take(log_id);
        let last = match known_last.or(ended) {
            Some(n) => n,
            None => match self.inner.store.last_log_line(log_id) {
                Ok(n) => n,
                Err(e) => {
                    (self.inner.on_error)(&e);
                    0
                }
            },
        };
        let inner = Arc::new(LogInner {
            shared: Arc::downgrade(&self.inner),
            store: self.inner.store.clone(),
            log_id,
            pending: Mutex::new(Pending {
                next: last.saturating_add(1),
                lines: Vec::new(),
                since: None,
                bytes: 0,
            }),
            used: AtomicU64::new(0),
            cap: self.inner.cap,
            unflushed_writes: self.inner.unflushed_writes.clone(),
            truncated: AtomicBool::new(false),
            remember_end: AtomicBool::new(true),
        });
        live.insert(log_id, Arc::downgrade(&inner));
        RunLog { inner }
    }

    /// The admin acknowledged these callbacks: each run's log takes a line number for its
    /// "callback finish", and the store keeps the numbers of the whole batch with the
    /// watermark ([`Store::ack_with_lines`]), where `/log` finds them. One write per batch:
    /// a line written to each run's log was a sled write per run, as costly as its outcome.
    ///
    /// Like the line it stands for, the acknowledgement rides the next flush, and the log
    /// flusher does not flush for it (at a run a minute, that flush was a third of what each
    /// run wrote); `/log` flushes before it shows the line, so a crash cannot take it back.
    ///
    /// # Errors
    /// The store's, when the acknowledgement cannot be written.
    pub(crate) fn callback_finish(
        &self,
        batch: &[(u64, crate::store::OutboxEntry)],
    ) -> Result<(), StoreError> {
        let lines: Vec<(LogId, u32)> = batch
            .iter()
            .map(|(_, e)| (e.callback.log_id, self.take_line(e.callback.log_id)))
            .collect();
        let store = &self.inner.store;
        self.inner
            .unflushed_writes
            .write(store, || (store.ack_with_lines(batch, &lines), Some(None)))
    }

    /// The next line number of a run's log, taken for a line that the store makes (the
    /// "callback finish"): later lines come after it.
    fn take_line(&self, log_id: LogId) -> u32 {
        let log = self.open(log_id);
        // After "callback finish" a log is rarely opened again: its end is not remembered
        // (it would only crowd out the runs whose callbacks are still on their way).
        log.inner.remember_end.store(false, Ordering::Relaxed);
        let mut p = lock(&log.inner.pending);
        // Buffered lines are numbered up to `next`: they go first, so the number taken
        // cannot fall among them.
        log.inner.write_locked(&mut p);
        let n = p.next;
        p.next = p.next.saturating_add(1);
        n
    }

    /// Writes the buffered lines of every live log to the store.
    pub(crate) fn save_all(&self) {
        for l in self.live_logs() {
            l.save();
        }
    }

    /// The logs someone still writes to (taken out of the map's lock before they are used).
    fn live_logs(&self) -> Vec<Arc<LogInner>> {
        lock(&self.inner.live)
            .values()
            .filter_map(Weak::upgrade)
            .collect()
    }

    /// Writes the buffered lines of one run's log to the store, if it is live.
    pub(crate) fn save(&self, log_id: LogId) {
        let l = lock(&self.inner.live).get(&log_id).and_then(Weak::upgrade);
        if let Some(l) = l {
            l.save();
        }
    }

    /// True when a line written at least `age` ago may not be on disk yet: the log flusher
    /// then flushes. Lines buffered that long are written to the store first. Lines that a
    /// flush since then carried (a `/run`'s, an outcome's) do not count, so a busy executor
    /// adds no flush of its own, and an idle one none at all.
    pub(crate) fn due(&self, age: std::time::Duration) -> bool {
        for l in self.live_logs() {
            let mut p = lock(&l.pending);
            if p.since.is_some_and(|t| t.elapsed() >= age) {
                l.write_locked(&mut p);
            }
        }
        // Entries are in epoch order; their times need not be (a chunk buffered long is
        // written late), so every waiting one is looked at.
        self.waiting_writes()
            .iter()
            .any(|(_, t)| t.is_some_and(|t| t.elapsed() >= age))
    }

    /// True when a line was written that no completed flush has put on disk yet (call
    /// [`RunLogs::save_all`] first: lines still buffered are not counted). A reader that must
    /// not show an unflushed line reads first and asks this after: a chunk it saw is then
    /// either counted here or still being written (also counted).
    pub(crate) fn unflushed(&self) -> bool {
        // Before the list: a write that leaves `in_flight` has entered the list already.
        self.inner.unflushed_writes.in_flight.load(Ordering::SeqCst) > 0
            || !self.waiting_writes().is_empty()
    }

    /// The written chunks no completed flush has carried yet: those that one has carried
    /// are dropped first (flush epochs only grow, so they are at the front).
    fn waiting_writes(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, Option<Instant>)>> {
        let mut w = lock(&self.inner.unflushed_writes.writes);
        while w
            .front()
            .is_some_and(|(e, _)| self.inner.store.is_flushed(*e))
        {
            w.pop_front();
        }
        w
    }

    /// Runs with a live log (for tests and the state view).
    #[cfg(test)]
    fn live(&self) -> usize {
        lock(&self.inner.live).len()
    }
}

impl LogInner {
    /// Writes the buffered lines as one chunk.
    fn save(&self) {
        let mut p = lock(&self.pending);
        self.write_locked(&mut p);
    }

    fn write_locked(&self, p: &mut Pending) {
        if p.lines.is_empty() {
            return;
        }
        let first = p.next - p.lines.len() as u32;
        let res = self.unflushed_writes.write(&self.store, || {
            let res = self.store.append_log_chunk(self.log_id, first, &p.lines);
            (res, Some(p.since.take()))
        });
        p.lines.clear();
        p.bytes = 0;
        if let Err(e) = res {
            if let Some(shared) = self.shared.upgrade() {
                (shared.on_error)(&e);
            }
        }
    }
}

impl Drop for LogInner {
    fn drop(&mut self) {
        // Nobody can write to this log any more: what it buffered goes to the store now.
        self.save();
        if let Some(shared) = self.shared.upgrade() {
            let mut live = lock(&shared.live);
            // A newer handle may have replaced this one after the last strong reference went.
            if live
                .get(&self.log_id)
                .is_some_and(|w| w.strong_count() == 0)
            {
                live.remove(&self.log_id);
                if self.remember_end.load(Ordering::Relaxed) {
                    let last = lock(&self.pending).next.saturating_sub(1);
                    lock(&shared.ended).remember(self.log_id, last);
                }
            }
        }
    }
}

impl RunLog {
    /// Buffers `text` as one line or more: split at newlines (a stored line never holds one)
    /// and at [`MAX_LINE_BYTES`].
    fn append(&self, text: &str) {
        self.append_with(text, true);
    }

    /// [`RunLog::append`]; `bounded`: the line is on disk within `store.log_flush_ms`
    /// (otherwise it rides the next flush, whenever one comes).
    fn append_with(&self, text: &str, bounded: bool) {
        let mut p = lock(&self.inner.pending);
        if bounded {
            p.since.get_or_insert_with(Instant::now);
        }
        for part in text.split('\n') {
            let mut rest = part;
            loop {
                let cut = split_at_most(rest, MAX_LINE_BYTES);
                let (line, tail) = rest.split_at(cut);
                self.inner
                    .used
                    .fetch_add(line.len() as u64 + LINE_OVERHEAD, Ordering::Relaxed);
                p.next = p.next.saturating_add(1);
                p.bytes += line.len() + 1;
                p.lines.push(line.to_owned());
                if p.bytes >= CHUNK_BYTES {
                    self.inner.write_locked(&mut p);
                }
                if tail.is_empty() {
                    break;
                }
                rest = tail;
            }
        }
    }

    /// Writes what this run's log buffered to the store (riding the next flush).
    #[cfg(test)]
    pub(crate) fn save(&self) {
        self.inner.save();
    }

    /// Writes what this run's log buffered together with the run's outcome: `finish` records
    /// the outcome and, given the lines (the number of the first, and the lines), keeps them
    /// in the same write (`Store::finish_with_log`). It returns its result and whether it took
    /// the lines; lines it did not take, or more than [`TAIL_BYTES`], are written as a chunk
    /// of their own. The lock is held throughout, so a line written meanwhile (a
    /// late handler write, the reporter) waits and comes after them.
    pub(crate) fn save_with_outcome<T>(
        &self,
        finish: impl FnOnce(Option<(u32, &[String])>) -> (T, bool),
    ) -> T {
        let inner = &self.inner;
        let mut p = lock(&inner.pending);
        if p.lines.is_empty() || p.bytes > TAIL_BYTES {
            inner.write_locked(&mut p);
            return finish(None).0;
        }
        let first = p.next - p.lines.len() as u32;
        let (res, taken) = inner.unflushed_writes.write(&inner.store, || {
            let (res, taken) = finish(Some((first, &p.lines)));
            ((res, taken), taken.then(|| p.since.take()))
        });
        if taken {
            p.lines.clear();
            p.bytes = 0;
        } else {
            inner.write_locked(&mut p);
        }
        res
    }

    /// The executor's own line: prefixed, split on newlines, never dropped by the cap (each
    /// kind is written a bounded number of times per run), but counted against it.
    fn system(&self, text: &str) {
        self.system_with(text, true);
    }

    fn system_with(&self, text: &str, bounded: bool) {
        let now = clock::now_ms();
        for (i, l) in text.split('\n').enumerate() {
            if i == 0 {
                let mut line = String::with_capacity(31 + l.len());
                clock::push_ts(&mut line, now);
                line.push_str(" [xxl-edge] ");
                line.push_str(l);
                self.append_with(&line, bounded);
            } else {
                self.append_with(l, bounded);
            }
        }
    }

    /// `<br>----------- xxl-edge trace_id=…`: first, so the admin's log view leads to the trace.
    pub(crate) fn trace_id(&self, trace_id: &str) {
        self.system(&format!("<br>----------- xxl-edge trace_id={trace_id}"));
    }

    /// The reference's start line, with the params cut to [`START_LINE_PARAM_BYTES`].
    pub(crate) fn start(&self, params: Option<&str>) {
        let shown = match params {
            None => "null".to_string(),
            Some(p) if p.len() <= START_LINE_PARAM_BYTES => p.to_string(),
            Some(p) => format!(
                "{}... ({} bytes in all; the handler gets them whole)",
                &p[..split_at_most(p, START_LINE_PARAM_BYTES)],
                p.len()
            ),
        };
        self.system(&format!(
            "<br>----------- xxl-job job execute start -----------<br>----------- Param:{shown}"
        ));
    }

    /// The reference's end line with the result the admin will get.
    pub(crate) fn end(&self, outcome: &Outcome) {
        self.system(&format!(
            "<br>----------- xxl-job job execute end(finish) -----------<br>----------- Result: handleCode={}, handleMsg = {}",
            outcome.code,
            outcome.msg.as_deref().unwrap_or("null")
        ));
    }

    /// A handler that panicked (the reference's exception lines).
    pub(crate) fn exception(&self, msg: &str) {
        self.system(&format!(
            "<br>----------- JobThread Exception:{msg}<br>----------- xxl-job job execute end(error) -----------"
        ));
    }

    /// `executorTimeout` elapsed.
    pub(crate) fn timeout(&self) {
        self.system("<br>----------- xxl-job job execute timeout");
    }

    /// The job's worker was stopped (kill, replacement, shutdown).
    pub(crate) fn stopped(&self, reason: &str) {
        self.system(&format!(
            "<br>----------- JobThread toStop, stopReason:{reason}"
        ));
    }

    /// An xxl-edge line of its own (restart, skipped duplicate, store failure).
    pub(crate) fn note(&self, msg: &str) {
        self.system(&format!("<br>----------- {msg}"));
    }

    /// No admin took the callback (yet); `rejected` when one answered with an error code.
    pub(crate) fn callback_failed(&self, rejected: bool, error: &str) {
        if rejected {
            self.system(&format!(
                "<br>----------- xxl-job job callback fail, {error}"
            ));
        } else {
            self.system(&format!(
                "<br>----------- xxl-job job callback error, errorMsg:{error}"
            ));
        }
    }
}

impl LogSink for RunLog {
    /// Handler output: dropped after one marker line once the run's cap is reached.
    fn write_line(&self, line: &str) {
        let cost = line.len() as u64 + LINE_OVERHEAD;
        if self.inner.used.load(Ordering::Relaxed) + cost > self.inner.cap {
            if !self.inner.truncated.swap(true, Ordering::Relaxed) {
                self.append(&format!(
                    "[xxl-edge] log truncated: this run wrote more than {} bytes (store.max_log_bytes_per_run); further output is dropped",
                    self.inner.cap
                ));
            }
            return;
        }
        self.append(line);
    }
}

/// The largest index ≤ `max` that is a char boundary of `s` (at least one char, so progress is
/// always made).
fn split_at_most(s: &str, max: usize) -> usize {
    if s.len() <= max {
        return s.len();
    }
    let mut i = max;
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    if i == 0 {
        s.char_indices().nth(1).map_or(s.len(), |(i, _)| i)
    } else {
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn logs(cap: u64) -> (tempfile::TempDir, Store, RunLogs) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), crate::config::Config::defaults().store).unwrap();
        store.recover().unwrap();
        let logs = RunLogs::new(store.clone(), cap, |_| {});
        (dir, store, logs)
    }

    /// Runs `ids` finish and the admin acknowledges their callbacks, as the reporter does.
    fn deliver(store: &Store, logs: &RunLogs, ids: &[i64]) {
        for &id in ids {
            let t = crate::job::Trigger::for_test(id);
            store.insert_accepted(&t, true).unwrap();
            let kind = crate::job::OutcomeKind::Success;
            assert!(store.finish(&t, &Outcome::success(), kind, None).unwrap());
        }
        let batch = store.outbox_batch(50).unwrap();
        assert_eq!(batch.len(), ids.len());
        logs.callback_finish(&batch).unwrap();
    }

    fn lines(store: &Store, logs: &RunLogs, id: i64) -> Vec<String> {
        logs.save_all();
        store
            .read_log(LogId(id), 1, usize::MAX, usize::MAX)
            .unwrap()
            .map(|p| p.lines)
            .unwrap_or_default()
    }

    /// A delivered batch gives each run's log its "callback finish" line without a write to
    /// any log: the number is taken here, the store keeps the batch's numbers in one write,
    /// and `/log` shows the line at its number, before any line written after it.
    #[tokio::test]
    async fn a_delivered_batch_numbers_each_runs_callback_line_in_one_write() {
        let (_d, store, logs) = logs(1 << 20).await;
        for id in [5, 6] {
            let log = logs.open_new(LogId(id));
            log.start(Some("p"));
            log.write_line("out");
            log.end(&Outcome::success());
        }
        logs.save_all();
        let written = store.last_log_line(LogId(5)).unwrap();
        assert_eq!(written, 3);
        deliver(&store, &logs, &[5, 6]);
        for id in [5, 6] {
            let got = lines(&store, &logs, id);
            assert_eq!(got.len(), 4, "{got:?}");
            assert!(
                got[1] == "out"
                    && got[3].ends_with(" [xxl-edge] <br>----------- xxl-job job callback finish."),
                "{got:?}"
            );
            assert_eq!(store.last_log_line(LogId(id)).unwrap(), 4, "it counts");
        }
        // A later line (a late handler write, a reopened log) comes after it.
        logs.open(LogId(5)).note("late");
        let got = lines(&store, &logs, 5);
        assert!(
            got[3].ends_with("callback finish.") && got[4].ends_with("late"),
            "{got:?}"
        );
        // Pages still cut at their bounds around it.
        let page = store.read_log(LogId(5), 4, 1, usize::MAX).unwrap().unwrap();
        assert_eq!((page.to, page.lines.len()), (4, 1));
        assert!(page.lines[0].ends_with("callback finish."));
        let page = store.read_log(LogId(5), 2, 2, usize::MAX).unwrap().unwrap();
        assert_eq!(page.to, 3);
        let page = store
            .read_log(LogId(5), 5, 10, usize::MAX)
            .unwrap()
            .unwrap();
        assert_eq!((page.to, page.lines.len()), (5, 1));
        // A run with no line of its own yet: its callback line is line 1.
        deliver(&store, &logs, &[7]);
        let got = lines(&store, &logs, 7);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(logs.live(), 0, "no longer held");
    }

    /// A run's end writes its buffered lines with its outcome when they are few and the
    /// outcome takes them; otherwise as a chunk of their own. Either way they are counted as
    /// unflushed until a flush, and numbered as if written one by one.
    #[tokio::test]
    async fn an_ends_lines_go_with_the_outcome_or_on_their_own() {
        let (_d, store, logs) = logs(1 << 20).await;
        let finish = |id: i64, lines: Option<(u32, &[String])>| {
            let t = crate::job::Trigger::for_test(id);
            let kind = crate::job::OutcomeKind::Success;
            let r = store.finish_with_log(&t, &Outcome::success(), kind, None, lines);
            let taken = lines.is_some() && matches!(r, Ok(true));
            (r, taken)
        };
        for id in [1, 2, 3] {
            store
                .insert_accepted(&crate::job::Trigger::for_test(id), true)
                .unwrap();
        }
        // Few lines: kept in the record, nothing in the logs tree.
        let log = logs.open_new(LogId(1));
        log.start(None);
        log.end(&Outcome::success());
        assert!(log.save_with_outcome(|l| finish(1, l)).unwrap());
        assert!(logs.unflushed());
        assert_eq!(store.run(LogId(1)).unwrap().unwrap().log.unwrap().first, 1);
        assert_eq!(lines(&store, &logs, 1).len(), 2);
        log.note("late");
        assert!(lines(&store, &logs, 1)[2].ends_with("late"));
        // Too many bytes: a chunk of their own, and the record keeps none.
        let log = logs.open_new(LogId(2));
        log.write_line(&"x".repeat(TAIL_BYTES));
        assert!(log.save_with_outcome(|l| finish(2, l)).unwrap());
        assert!(store.run(LogId(2)).unwrap().unwrap().log.is_none());
        assert_eq!(lines(&store, &logs, 2).len(), 1);
        // An outcome already recorded does not take them: written on their own.
        let log = logs.open_new(LogId(3));
        log.write_line("first outcome");
        assert!(log.save_with_outcome(|l| finish(3, l)).unwrap());
        log.write_line("second");
        assert!(!log.save_with_outcome(|l| finish(3, l)).unwrap());
        assert_eq!(lines(&store, &logs, 3), ["first outcome", "second"]);
        store.synced().await.unwrap();
        assert!(!logs.unflushed());
    }

    /// The log flusher's clock: a line is due once it has waited, and only once.
    #[tokio::test(start_paused = true)]
    async fn a_line_is_due_once_it_has_waited() {
        let (_d, store, logs) = logs(1 << 20).await;
        let wait = std::time::Duration::from_millis(750);
        assert!(!logs.due(std::time::Duration::ZERO), "nothing written");
        // A line of a run that goes on (buffered), and one of a log nobody holds (written).
        let running = logs.open(LogId(8));
        running.write_line("buffered");
        logs.open(LogId(9)).note("x");
        assert!(!logs.due(wait), "nothing has waited yet");
        tokio::time::advance(wait).await;
        assert!(logs.due(wait), "both have waited");
        assert!(logs.unflushed());
        store.synced().await.unwrap();
        assert!(!logs.due(std::time::Duration::ZERO), "a flush carried them");
        // A flush that some other writer asks for takes the flusher's work away.
        running.write_line("more");
        running.save();
        store.synced().await.unwrap();
        tokio::time::advance(wait).await;
        assert!(!logs.due(wait), "carried by another flush");
        let got = lines(&store, &logs, 8);
        assert_eq!(got, ["buffered", "more"]);
    }

    /// The "callback finish" lines wait for the next flush like the watermark they are kept
    /// with: alone they never make the log flusher flush (a third 4 KiB flush per run at low
    /// rates), yet `/log` sees them as unflushed and flushes before showing them.
    #[tokio::test(start_paused = true)]
    async fn the_callback_finish_lines_ride_the_next_flush() {
        let (_d, store, logs) = logs(1 << 20).await;
        let wait = std::time::Duration::from_millis(1000);
        let log = logs.open(LogId(3));
        log.end(&Outcome::success());
        log.save();
        store.synced().await.unwrap();
        drop(log);
        deliver(&store, &logs, &[3]);
        tokio::time::advance(wait * 10).await;
        assert!(!logs.due(wait), "the flusher does not flush for it");
        assert!(logs.unflushed(), "a /log reader flushes for it");
        assert!(lines(&store, &logs, 3)[1].ends_with("callback finish."));
        store.synced().await.unwrap();
        assert!(!logs.unflushed());
        // A bounded line after it brings the bound back.
        logs.open(LogId(3)).note("after");
        tokio::time::advance(wait).await;
        assert!(logs.due(wait));
        store.synced().await.unwrap();
        assert!(!logs.unflushed());
    }

    /// Issue 9 #5: a handler's late write and the reporter's "callback finish" used two
    /// counters and could take the same line number.
    #[tokio::test]
    async fn a_live_log_is_shared_so_lines_never_collide() {
        let (_d, store, logs) = logs(1 << 20).await;
        let runner_side = logs.open(LogId(1));
        runner_side.start(Some("p"));
        deliver(&store, &logs, &[1]);
        runner_side.write_line("late handler line");
        let got = lines(&store, &logs, 1);
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got[1].ends_with("callback finish."));
        assert_eq!(got[2], "late handler line");
        drop(runner_side);
        assert_eq!(logs.live(), 0, "dropped logs leave the map");
        // Nobody holds it: a new handle continues after the stored lines.
        logs.open(LogId(1)).note("after");
        assert_eq!(lines(&store, &logs, 1).len(), 4);
    }

    /// A log reopened after its last handle went continues after its last line, whether
    /// the line number is remembered from that handle or, once it was forgotten, found in the
    /// store.
    #[tokio::test]
    async fn a_reopened_log_continues_after_its_last_line_remembered_or_not() {
        let (_d, store, logs) = logs(1 << 20).await;
        let page = |id: i64| {
            logs.save_all();
            store
                .read_log(LogId(id), 1, usize::MAX, usize::MAX)
                .unwrap()
                .unwrap()
        };
        let remembered = |id: i64| lock(&logs.inner.ended).last.contains_key(&LogId(id));
        let log = logs.open_new(LogId(5));
        log.start(None);
        log.write_line("a\nb");
        drop(log);
        assert!(remembered(5));
        deliver(&store, &logs, &[5]);
        let p = page(5);
        assert_eq!(p.to, 4);
        assert!(p.lines[3].ends_with("callback finish."), "{:?}", p.lines);
        assert!(
            !remembered(5),
            "taken, and not left again after the callback's line"
        );
        // Remembered again. When full, the oldest stay (the reporter asks for them first) and
        // a new one is not remembered: the store answers for it.
        drop(logs.open(LogId(5)));
        assert!(remembered(5));
        let newest = 100 + ENDED_KEPT as i64 - 1;
        for id in 100..=newest {
            let l = logs.open_new(LogId(id));
            if id == newest {
                l.write_line("x");
            }
        }
        assert!(remembered(5) && remembered(newest - 1) && !remembered(newest));
        logs.open(LogId(newest)).note("after");
        let p = page(newest);
        assert_eq!((p.to, p.lines.len()), (2, 2), "{:?}", p.lines);
        // A log taken again, for good after a callback's line, leaves room.
        assert_eq!(logs.take_line(LogId(5)), 5);
        assert!(!remembered(5));
        drop(logs.open_new(LogId(50_000)));
        assert!(remembered(50_000));
        // Full, and the oldest were remembered long ago: one goes for each new one.
        tokio::time::pause();
        tokio::time::advance(ENDED_AGE + std::time::Duration::from_secs(1)).await;
        drop(logs.open_new(LogId(60_000)));
        assert!(remembered(60_000) && !remembered(100) && remembered(101));
        // Logs that come and go keep `order` bounded.
        for id in 70_000..70_000 + 3 * ENDED_KEPT as i64 {
            drop(logs.open_new(LogId(id)));
            logs.take_line(LogId(id));
        }
        let e = lock(&logs.inner.ended);
        assert!(e.last.len() <= ENDED_KEPT && e.order.len() <= 2 * ENDED_KEPT);
    }

    /// Issue 9 #14: params of newlines were a system line outside the cap.
    #[tokio::test]
    async fn the_start_line_is_bounded_and_every_line_counts() {
        let cap = 256 * 1024;
        let (_d, store, logs) = logs(cap).await;
        let log = logs.open(LogId(2));
        log.start(Some(&"\n".repeat(1 << 20)));
        let start_lines = lines(&store, &logs, 2).len();
        assert!(start_lines <= START_LINE_PARAM_BYTES + 2, "{start_lines}");
        // Empty lines cost too, and the start line used part of the cap.
        for _ in 0..20_000 {
            log.write_line("");
        }
        let n = lines(&store, &logs, 2).len();
        assert!(n <= (cap / LINE_OVERHEAD) as usize + 1, "{n} lines");
        assert!(lines(&store, &logs, 2)
            .last()
            .unwrap()
            .contains("log truncated"));
        // The essential lines still come after the cap.
        log.end(&Outcome::success());
        assert!(lines(&store, &logs, 2)
            .last()
            .unwrap()
            .contains("Result: handleCode=200"));
    }

    #[tokio::test]
    async fn a_long_line_is_split_on_char_boundaries() {
        let (_d, store, logs) = logs(1 << 24).await;
        let log = logs.open(LogId(3));
        let text = "é".repeat(MAX_LINE_BYTES); // 2 bytes each
        log.write_line(&text);
        let got = lines(&store, &logs, 3);
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|l| l.len() <= MAX_LINE_BYTES));
        assert_eq!(got.concat(), text);
    }
}
