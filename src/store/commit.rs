//! Group commit: one flush serves every writer that waited for it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::bulk::remove_bulk_file;
use super::{FlushObserver, Inner, Result, Store, StoreError};

/// A wait for a flush. `since`: the caller's writes are on disk once a flush that began after
/// that epoch has completed, so the flush thread answers at once if one has; `None` always
/// gets a new flush.
pub(super) struct FlushRequest {
    since: Option<u64>,
    reply: oneshot::Sender<Result<(), String>>,
}

impl Store {
    /// Waits until everything written so far is on disk (shared with concurrent callers).
    ///
    /// # Errors
    /// The flush failed (I/O error, disk full).
    pub async fn durable(&self) -> Result<()> {
        if self.inner.cfg.flush_every.is_some() {
            return Ok(());
        }
        self.synced().await
    }

    /// Waits until writes made before `epoch` was read ([`Store::flush_epoch`], read after
    /// the writes) are on disk: answered by a flush that began after it, so two writers whose
    /// writes one flush carried do not pay for two.
    ///
    /// # Errors
    /// The flush failed (I/O error, disk full).
    pub async fn durable_since(&self, epoch: u64) -> Result<()> {
        if self.inner.cfg.flush_every.is_some() || self.is_flushed(epoch) {
            return Ok(());
        }
        self.request_flush(Some(epoch)).await
    }

    /// Waits until everything written so far is on disk, in the relaxed mode too. For writes
    /// whose effect leaves the process before the timer flush would come: a callback sent for
    /// an outcome that a crash then loses would be followed by a second, contradicting one.
    ///
    /// # Errors
    /// The flush failed (I/O error, disk full).
    pub async fn synced(&self) -> Result<()> {
        self.request_flush(None).await
    }

    /// Records that a run's outcome was just written, and starts a flush for it without
    /// waiting. [`Store::outcomes_synced`] then waits for that same flush instead of asking for
    /// a second one: a lone run paid two flushes for its outcome, one here and one when the
    /// reporter asked, because a request that arrives during a flush waits for the next.
    ///
    /// Call [`Store::outcome_begins`] before the write: while an outcome is between the two,
    /// the reporter may already see its callback but not yet its epoch, so it flushes anew.
    pub fn outcome_written(&self) {
        // Read after the write: any flush that begins later carries it.
        let epoch = self.flush_epoch();
        self.inner.outcomes_epoch.fetch_max(epoch, Ordering::SeqCst);
        self.inner.outcomes_writing.fetch_sub(1, Ordering::SeqCst);
        if self.inner.cfg.flush_every.is_none() {
            self.flush_in_background();
        }
    }

    /// Starts a flush and does not wait for it. Under load a background request is usually
    /// already waiting for the flush thread, and that one carries this caller's writes too:
    /// then nothing is sent. Each send woke the flush thread, which on two cores preempted the
    /// runtime's worker (a quarter of the workers' context switches in the durable e2e load).
    pub(super) fn flush_in_background(&self) {
        if self
            .inner
            .background_flush_queued
            .swap(true, Ordering::SeqCst)
        {
            return;
        }
        let (reply, _rx) = oneshot::channel();
        let _ = self
            .inner
            .flush_tx
            .send(FlushRequest { since: None, reply });
    }

    /// An outcome is about to be written; [`Store::outcome_written`] must follow.
    pub fn outcome_begins(&self) {
        self.inner.outcomes_writing.fetch_add(1, Ordering::SeqCst);
    }

    /// Waits until every outcome recorded so far (see [`Store::outcome_written`]) is on disk,
    /// in the relaxed mode too: the reporter's wait before it sends callbacks.
    ///
    /// # Errors
    /// The flush failed (I/O error, disk full).
    pub async fn outcomes_synced(&self) -> Result<()> {
        // Every outcome the caller has seen was written before this point; if none is
        // between its write and its epoch now, the epoch covers them all.
        let settled = self.inner.outcomes_writing.load(Ordering::SeqCst) == 0;
        let since = self.inner.outcomes_epoch.load(Ordering::SeqCst);
        // In the relaxed mode sled's own timer flushes are not counted in the epochs: flush.
        let since = (settled && self.inner.cfg.flush_every.is_none()).then_some(since);
        if since.is_some_and(|e| self.is_flushed(e)) {
            return Ok(());
        }
        self.request_flush(since).await
    }

    async fn request_flush(&self, since: Option<u64>) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .flush_tx
            .send(FlushRequest { since, reply })
            .map_err(|_| StoreError::Closed)?;
        self.flush_answer(rx).await
    }

    /// Sets the observer of flush durations (once).
    pub fn set_flush_observer(&self, f: FlushObserver) {
        let _ = self.inner.on_flush.set(f);
    }

    /// Flushes synchronously; for shutdown and tools.
    ///
    /// # Errors
    /// The flush failed.
    pub fn flush_now(&self) -> Result<()> {
        flush_and_remove(&self.inner).map_err(|e| {
            super::health::fail(&self.inner, &e);
            StoreError::Sled(sled::Error::Io(e))
        })
    }

    /// The number of flushes begun so far: what is written now is on disk once
    /// [`Store::is_flushed`] says so for this value.
    pub fn flush_epoch(&self) -> u64 {
        self.inner.flushes_begun.load(Ordering::Acquire)
    }

    /// True once a flush that began after `epoch` was taken (see [`Store::flush_epoch`]) has
    /// completed: everything written before then is on disk.
    pub fn is_flushed(&self, epoch: u64) -> bool {
        self.inner.flushes_done.load(Ordering::Acquire) > epoch
    }
}

/// Under load (the last flush had company), flushes start at most this often, so each one
/// serves more waiters. Every sled flush seals an I/O buffer and writes it; back-to-back
/// flushes spent more CPU on that than on the writes. An idle store (a lone writer) flushes at
/// once. 2 ms was measured again (sessions 4 and 11): 8-9 % fewer bytes written and 5 % less
/// CPU per run under load, end to end within the noise, the steady-1,000/s `/run` p50
/// 1.1 -> 1.8-2.0 ms.
const GROUP_COMMIT_MIN_GAP: Duration = Duration::from_millis(1);

/// Group commit on its own thread: every waiter that arrived while a flush ran is served by the
/// next one. A plain thread (not `spawn_blocking`) because it lives as long as the store and a
/// hand-off per flush costs more than the flush's bookkeeping.
pub(super) fn group_commit(
    inner: std::sync::Weak<Inner>,
    mut rx: mpsc::UnboundedReceiver<FlushRequest>,
) {
    // Set when the last flush served more than one waiter: a sign of load. A lone writer
    // (one request at a time) never waits for the gap.
    let mut last_start: Option<std::time::Instant> = None;
    while let Some(first) = rx.blocking_recv() {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        // Waits that a completed flush already covers are answered without another.
        let done = strong.flushes_done.load(Ordering::Acquire);
        drop(strong);
        let covered = |r: &FlushRequest| r.since.is_some_and(|e| done > e);
        if covered(&first) {
            let _ = first.reply.send(Ok(()));
            continue;
        }
        if let Some(t) = last_start {
            let gap =
                (t + GROUP_COMMIT_MIN_GAP).saturating_duration_since(std::time::Instant::now());
            if !gap.is_zero() {
                std::thread::sleep(gap);
            }
        }
        let began = std::time::Instant::now();
        let mut waiters = vec![first];
        while let Ok(w) = rx.try_recv() {
            if covered(&w) {
                let _ = w.reply.send(Ok(()));
            } else {
                waiters.push(w);
            }
        }
        last_start = (waiters.len() > 1).then_some(began);
        let Some(strong) = inner.upgrade() else {
            return;
        };
        // Before the flush begins: a background request made after this is sent anew and
        // served by the next flush; one made before is carried by this one (while the flag
        // was set, no other was sent).
        strong
            .background_flush_queued
            .store(false, Ordering::SeqCst);
        let res = flush_and_remove(&strong).map_err(|e| e.to_string());
        if let Err(e) = &res {
            super::health::fail(&strong, e);
        }
        drop(strong);
        for w in waiters {
            let _ = w.reply.send(res.clone());
        }
    }
}

/// Flushes, then removes the large-trigger files whose records' ends were written before the
/// flush began (they are on disk now). On a failed flush they wait for the next one.
pub(super) fn flush_and_remove(inner: &Inner) -> std::io::Result<()> {
    let removals = std::mem::take(
        &mut *inner
            .pending_removals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    let started = std::time::Instant::now();
    let epoch = inner.flushes_begun.fetch_add(1, Ordering::AcqRel) + 1;
    if let Err(e) = inner.db.flush() {
        inner
            .pending_removals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(removals);
        return Err(match e {
            sled::Error::Io(io) => io,
            other => std::io::Error::other(other.to_string()),
        });
    }
    inner.flushes_done.fetch_max(epoch, Ordering::AcqRel);
    if let Some(f) = inner.on_flush.get() {
        f(started.elapsed());
    }
    for path in removals {
        remove_bulk_file(&path);
    }
    Ok(())
}
