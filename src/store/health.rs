//! A failed store: once a write has failed (disk full, data directory turned read-only, I/O
//! error), sled 0.34 fails every later operation, reads included, until the database is opened
//! again, and its destructor can wait forever for a flush that cannot complete.
//!
//! Reopening in the same process is not possible either: sled's lock is an `flock` on
//! `store/db` held by the failed database's descriptor, which only its destructor closes (see
//! the test below). So a failed store stays failed until the process ends: the executor refuses
//! new runs, waits until the data directory is writable again and exits with a code that tells
//! its supervisor to restart it (README, "Storage faults"); the restart recovers the journal.
//!
//! This module holds the "failed" state that every part of the executor can see, and makes sure
//! that a failed database is never dropped.

use std::sync::{Arc, OnceLock};

use tokio::sync::{oneshot, Notify};

use super::{Inner, Result, Store, StoreError};

/// The store's fault, once there is one; never cleared (see the module doc).
#[derive(Default)]
pub(super) struct Health {
    fault: OnceLock<String>,
    failed: Notify,
}

/// Marks the store failed with `why` (the first fault wins) and keeps it from ever being
/// dropped: the failed database's destructor can hang, so its memory, flush thread and lock go
/// with the process instead.
pub(super) fn fail(inner: &Arc<Inner>, why: impl std::fmt::Display) {
    if inner.health.fault.set(why.to_string()).is_ok() {
        std::mem::forget(Arc::clone(inner));
        inner.health.failed.notify_waiters();
    }
}

/// The error that operations return once the store has failed.
fn failed_error(why: &str) -> StoreError {
    StoreError::Sled(sled::Error::Io(std::io::Error::other(why.to_string())))
}

impl Store {
    /// The storage fault, once one was seen: the store cannot be used again in this process.
    pub fn fault(&self) -> Option<&str> {
        self.inner.health.fault.get().map(String::as_str)
    }

    /// Waits until the store fails; returns its fault.
    pub async fn failed(&self) -> String {
        loop {
            let notified = self.inner.health.failed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(f) = self.fault() {
                return f.to_string();
            }
            notified.await;
        }
    }

    /// Declares the store failed from outside (a flush that does not complete): every waiter for
    /// a flush is released with an error.
    pub fn declare_failed(&self, why: impl std::fmt::Display) {
        fail(&self.inner, why);
    }

    /// Asks for a flush without waiting, in the relaxed mode too: after an operation failed,
    /// the flush tells whether sled has failed (a failed flush marks the store failed).
    pub fn check_health(&self) {
        if self.fault().is_none() {
            self.flush_in_background();
        }
    }

    /// Flushes begun and flushes completed successfully: a watchdog that sees the same begun
    /// count above the completed one for long knows that a flush is stuck.
    pub fn flush_progress(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering;
        (
            self.inner.flushes_begun.load(Ordering::Acquire),
            self.inner.flushes_done.load(Ordering::Acquire),
        )
    }

    /// Waits for a flush's answer, or fails at once when the store fails meanwhile (a flush
    /// stuck in sled would otherwise hold its waiters forever).
    pub(super) async fn flush_answer(
        &self,
        rx: oneshot::Receiver<Result<(), String>>,
    ) -> Result<()> {
        if let Some(f) = self.fault() {
            return Err(failed_error(f));
        }
        tokio::select! {
            r = rx => match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(msg)) => Err(failed_error(&msg)),
                Err(_) => Err(StoreError::Closed),
            },
            f = self.failed() => Err(failed_error(&f)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Why a failed store is not reopened in-process: sled's lock is an `flock`, which a second
    /// descriptor of the same process does not get while the first (held by a database that
    /// must never be dropped) is open.
    #[test]
    fn an_undropped_database_keeps_its_lock_from_a_reopen_in_the_same_process() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let again = sled::Config::new().path(dir.path()).open();
        let err = again.expect_err("a second open in the same process");
        assert!(err.to_string().contains("could not acquire lock"), "{err}");
        drop(db);
        assert!(sled::Config::new().path(dir.path()).open().is_ok());
    }

    /// A declared fault releases a waiter at once and is the error of every later flush.
    #[tokio::test]
    async fn a_fault_releases_flush_waiters_and_stays() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), crate::config::Config::defaults().store).unwrap();
        store.synced().await.unwrap();
        assert!(store.fault().is_none());
        // A flush whose answer never comes (as when sled hangs) is released by the fault.
        let (_tx, rx) = oneshot::channel();
        let s = store.clone();
        let waiter = tokio::spawn(async move { s.flush_answer(rx).await });
        store.declare_failed("stuck flush");
        let e = waiter.await.unwrap().unwrap_err();
        assert!(e.to_string().contains("stuck flush"), "{e}");
        assert_eq!(store.fault(), Some("stuck flush"));
        let e = store.synced().await.unwrap_err();
        assert!(e.to_string().contains("stuck flush"), "{e}");
        store.declare_failed("a second fault");
        assert_eq!(store.failed().await, "stuck flush");
    }
}
