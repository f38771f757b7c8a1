//! Group commit: one flush serves every writer that waited for it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::bulk::remove_bulk_file;
use super::{FlushObserver, Inner, Result, Store, StoreError};

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

    /// Waits until everything written so far is on disk, in the relaxed mode too. For writes
    /// whose effect leaves the process before the timer flush would come: a callback sent for
    /// an outcome that a crash then loses would be followed by a second, contradicting one.
    ///
    /// # Errors
    /// The flush failed (I/O error, disk full).
    pub async fn synced(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .flush_tx
            .send(tx)
            .map_err(|_| StoreError::Closed)?;
        self.flush_answer(rx).await
    }

    /// Sets the observer of flush durations (once).
    pub fn set_flush_observer(&self, f: FlushObserver) {
        let _ = self.inner.on_flush.set(f);
    }

    /// Asks for a flush without waiting for it: the outcome rides the next group commit.
    pub fn flush_soon(&self) {
        if self.inner.cfg.flush_every.is_none() {
            let (tx, _rx) = oneshot::channel();
            let _ = self.inner.flush_tx.send(tx);
        }
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

/// Group commit on its own thread: every waiter that arrived while a flush ran is served by the
/// next one. A plain thread (not `spawn_blocking`) because it lives as long as the store and a
/// hand-off per flush costs more than the flush's bookkeeping.
/// Under load (the last flush had company), flushes start at most this often, so each one
/// serves more waiters. Every sled
/// flush seals an I/O buffer and wakes sled's whole I/O thread pool; back-to-back flushes spent
/// more CPU on that than on the writes. An idle store flushes at once.
const GROUP_COMMIT_MIN_GAP: Duration = Duration::from_millis(1);

pub(super) fn group_commit(
    inner: std::sync::Weak<Inner>,
    mut rx: mpsc::UnboundedReceiver<oneshot::Sender<Result<(), String>>>,
) {
    // Set when the last flush served more than one waiter: a sign of load. A lone writer
    // (one request at a time) never waits for the gap.
    let mut last_start: Option<std::time::Instant> = None;
    while let Some(first) = rx.blocking_recv() {
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
            waiters.push(w);
        }
        last_start = (waiters.len() > 1).then_some(began);
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let res = flush_and_remove(&strong).map_err(|e| e.to_string());
        if let Err(e) = &res {
            super::health::fail(&strong, e);
        }
        drop(strong);
        for w in waiters {
            let _ = w.send(res.clone());
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
