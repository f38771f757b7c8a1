//! Durable callback delivery: the outbox is sent to the admins in FIFO batches of at most 50, and
//! an entry is deleted only when an admin answers `code == 200`. While no admin does, delivery
//! backs off (capped) and the outbox keeps growing on disk; nothing is dropped.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::admin::wire::HandleCallbackParam;
use crate::admin::AdminClient;
use crate::runlog::RunLogs;
use crate::store::Store;
use crate::telemetry::Metrics;

/// Most callbacks in one request, as the 3.4.1+ reference sends them.
pub const MAX_BATCH: usize = 50;

/// Retry delays: doubling from `initial` up to `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// A backoff; `max` is at least `initial`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            current: initial,
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.current;
        self.current = (self.current * 2).min(self.max);
        d
    }

    /// Back to the initial delay after a success.
    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

/// Sends the outbox until cancelled.
pub struct Reporter {
    store: Store,
    admin: AdminClient,
    metrics: Metrics,
    ready: Arc<Notify>,
    logs: RunLogs,
    backoff: Backoff,
    /// Runs whose log already says the callback failed, so a long outage adds one line per run,
    /// not one per retry.
    noted: HashSet<i64>,
    failing_since: Option<Instant>,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter").finish_non_exhaustive()
    }
}

impl Reporter {
    /// A reporter woken by `ready` whenever a callback is queued.
    pub(crate) fn new(
        store: Store,
        logs: RunLogs,
        admin: AdminClient,
        metrics: Metrics,
        ready: Arc<Notify>,
    ) -> Self {
        Self {
            logs,
            store,
            admin,
            metrics,
            ready,
            backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
            noted: HashSet::new(),
            failing_since: None,
        }
    }

    /// Delivers until `stop` is cancelled.
    pub async fn run(mut self, stop: CancellationToken) {
        loop {
            if stop.is_cancelled() {
                return;
            }
            match self.send_one_batch().await {
                Some(true) => continue,
                Some(false) => {
                    let delay = self.backoff.next_delay();
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = stop.cancelled() => return,
                    }
                }
                None => {
                    tokio::select! {
                        () = self.ready.notified() => {}
                        () = stop.cancelled() => return,
                    }
                }
            }
        }
    }

    /// Tries to empty the outbox before `deadline` (shutdown). What is left stays on disk and is
    /// sent after the next start.
    pub async fn drain(mut self, deadline: Instant) -> u64 {
        while Instant::now() < deadline {
            match tokio::time::timeout_at(deadline, self.send_one_batch()).await {
                Ok(Some(true)) => {}
                Ok(None) => break,
                Ok(Some(false)) => {
                    let d = self.backoff.next_delay();
                    if tokio::time::timeout_at(deadline, tokio::time::sleep(d))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        self.store.outbox_len()
    }

    /// One batch: `None` when the outbox is empty, `Some(delivered)` otherwise.
    async fn send_one_batch(&mut self) -> Option<bool> {
        let batch = match self.store.outbox_batch(MAX_BATCH) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "Cannot read the callback outbox.");
                return Some(false);
            }
        };
        if batch.is_empty() {
            return None;
        }
        // What the batch reports must be on disk before the admin sees it: a crash between
        // the send and the flush would otherwise lose the outcome, and the recovery would
        // report the run a second time as interrupted (the soak test caught exactly this).
        // The flush is shared with concurrent `/run`s, so it costs one per batch at most.
        if let Err(e) = self.store.synced().await {
            tracing::error!(error = %e, "Cannot flush the journal; callbacks wait until it can be flushed.");
            return Some(false);
        }
        let params: Vec<HandleCallbackParam> = batch
            .iter()
            .map(|(_, e)| HandleCallbackParam::from(&e.callback))
            .collect();
        let n = batch.len() as u64;
        // Sent in a batch: linked to each run it reports rather than parented by one.
        let span = tracing::debug_span!(
            "callback.send",
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            xxl.callback.count = n,
        );
        for (_, e) in &batch {
            if let Some(r) = &e.trace {
                crate::telemetry::traces::link(&span, r);
            }
        }
        let res = tracing::Instrument::instrument(self.admin.callback(&params), span.clone()).await;
        if res.is_err() {
            span.record("otel.status_code", "ERROR");
        }
        match res {
            Ok(_) => {
                // Flushed before anything else, in the relaxed mode too (one flush per batch):
                // an acknowledged callback must not come back after a crash (the "finish" log
                // line below means "durably acknowledged").
                if let Err(e) = self.store.ack(&batch) {
                    tracing::error!(error = %e, "Callbacks were delivered but cannot be removed from the outbox; they may be sent once more.");
                } else if let Err(e) = self.store.synced().await {
                    tracing::warn!(error = %e, "Cannot flush the outbox after a delivery; a crash now may send these callbacks once more.");
                }
                self.metrics
                    .callbacks
                    .with_label_values(&["delivered"])
                    .inc_by(n);
                for (_, e) in &batch {
                    self.logs.open(e.callback.log_id).callback_finish();
                }
                for (_, e) in &batch {
                    self.noted.remove(&e.callback.log_id.0);
                }
                if let Some(since) = self.failing_since.take() {
                    tracing::info!(
                        outage_secs = since.elapsed().as_secs(),
                        backlog = self.store.outbox_len(),
                        "Callback delivery recovered."
                    );
                }
                self.backoff.reset();
                Some(true)
            }
            Err(e) => {
                self.metrics
                    .callbacks
                    .with_label_values(&["failed"])
                    .inc_by(n);
                if self.failing_since.is_none() {
                    self.failing_since = Some(Instant::now());
                    tracing::warn!(error = %e, backlog = self.store.outbox_len(), "Callback delivery failed; retrying with backoff, the outbox keeps every callback on disk.");
                }
                let rejected = matches!(e, crate::admin::AdminError::Rejected(..));
                let error = e.to_string();
                for (_, en) in &batch {
                    // One line per run for the whole outage, not one per retry.
                    if self.noted.insert(en.callback.log_id.0) {
                        self.logs
                            .open(en.callback.log_id)
                            .callback_failed(rejected, &error);
                    }
                }
                if self.noted.len() > 100_000 {
                    self.noted.clear();
                }
                Some(false)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(2));
        let d: Vec<_> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(d, vec![500, 1000, 2000, 2000, 2000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(500));
    }
}
