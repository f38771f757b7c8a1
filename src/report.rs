//! Durable callback delivery: waiting callbacks are sent to the admins oldest first in batches
//! of at most 50, and marked delivered only when an admin answers `code == 200`. While no admin
//! does, delivery backs off (capped, jittered) and the backlog keeps growing on disk; nothing is
//! dropped.

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
use crate::telemetry::events::{internal_error, Op};
use crate::telemetry::Metrics;

/// Most callbacks in one request, as the 3.4.1+ reference sends them.
pub const MAX_BATCH: usize = 50;

/// Retry delays: a nominal delay doubling from `initial` up to `max`, each delay drawn at random
/// between half the nominal delay and all of it ("equal jitter").
///
/// Without jitter every executor that saw the same admin outage retries at the same instants,
/// so the admin comes back to a wave of callbacks each time; with it the fleet spreads over half
/// the delay. Equal rather than full jitter (0 to the nominal delay) so that no executor retries
/// a failing admin sooner than half the nominal delay.
///
/// The generator lives in the value (no global state), seeded from the OS's hash keys, the time
/// and the pid; [`Backoff::seeded`] makes it deterministic for tests. Not `Copy`: a copy would
/// repeat the same draws.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
    rng: SplitMix64,
}

impl Backoff {
    /// A backoff seeded differently in every process; `max` is at least `initial`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self::seeded(initial, max, entropy())
    }

    /// A backoff whose delays are a function of `seed`.
    pub fn seeded(initial: Duration, max: Duration, seed: u64) -> Self {
        Self {
            initial,
            max: max.max(initial),
            current: initial,
            rng: SplitMix64(seed),
        }
    }

    /// The next delay: whole milliseconds in `[nominal / 2, nominal]`, the nominal delay
    /// doubling up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let nominal = ms(self.current);
        self.current = (self.current * 2).min(self.max);
        let low = nominal / 2;
        let spread = nominal - low;
        // The modulo's bias is below 2^-30 for any spread under 2^34 ms (six months).
        let jitter = match spread.checked_add(1) {
            Some(n) => self.rng.next_u64() % n,
            None => self.rng.next_u64(),
        };
        Duration::from_millis(low + jitter)
    }

    /// Back to the initial delay after a success.
    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// SplitMix64 (Steele, Lea, Flood 2014): a few lines, statistically good enough to spread
/// retries, and no dependency. Not for anything secret.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// A seed that differs between processes and between executors started at the same instant:
/// std's `RandomState` keys come from the OS's random source; the time and pid are mixed in
/// for platforms where they do not.
fn entropy() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    h.write_u128(now.as_nanos());
    h.write_u32(std::process::id());
    h.finish()
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

    /// Replaces the default backoff (500 ms doubling to 30 s, randomly seeded).
    #[cfg(test)]
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
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
                internal_error!(
                    self.metrics,
                    Op::OutboxRead,
                    e,
                    "Cannot read the callback outbox."
                );
                return Some(false);
            }
        };
        if batch.is_empty() {
            return None;
        }
        // What the batch reports must be on disk before the admin sees it: a crash between
        // the send and the flush would otherwise lose the outcome, and the recovery would
        // report the run a second time as interrupted (the soak test caught exactly this).
        // The flush is the one the runner started when it recorded the outcome, shared with
        // concurrent `/run`s, so it costs one per batch at most.
        if let Err(e) = self.store.outcomes_synced().await {
            internal_error!(
                self.metrics,
                Op::Flush,
                e,
                "Cannot flush the journal; callbacks wait until it can be flushed."
            );
            return Some(false);
        }
        let params: Vec<HandleCallbackParam> = batch
            .iter()
            .map(|(_, e)| HandleCallbackParam::from(&e.callback))
            .collect();
        let n = batch.len() as u64;
        // Sent in a batch: linked to each run it reports rather than parented by one. The
        // count as an i64: the tracing bridge records unsigned values as text.
        let span = tracing::debug_span!(
            "callback.send",
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
            error.type = tracing::field::Empty,
            xxl.callback.count = batch.len() as i64,
        );
        for (_, e) in &batch {
            if let Some(r) = &e.trace {
                crate::telemetry::traces::link(&span, r);
            }
        }
        let res = tracing::Instrument::instrument(self.admin.callback(&params), span.clone()).await;
        if let Err(e) = &res {
            span.record("otel.status_code", "ERROR");
            span.record("error.type", e.kind());
            span.record("otel.status_description", e.to_string());
        }
        match res {
            Ok(_) => {
                // Not flushed on its own: the delivered watermark and the "callback finish"
                // lines (kept with it, one write per batch) ride the next group commit,
                // whenever one comes (the next `/run`'s or outcome's). A crash before then
                // sends these callbacks once more, identical, and the admin ignores a repeated
                // one; a flush per delivery was a third of a lone run's writes.
                if let Err(e) = self.logs.callback_finish(&batch) {
                    internal_error!(
                        self.metrics,
                        Op::OutboxAck,
                        e,
                        "Callbacks were delivered but cannot be marked so; they may be sent once more."
                    );
                }
                self.metrics
                    .callback_attempts
                    .with_label_values(&["ok"])
                    .inc();
                self.metrics
                    .callbacks
                    .with_label_values(&["delivered"])
                    .inc_by(n);
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
                // Per batch, not per callback: a retried callback is not a new failure, and
                // `callbacks_total` counts it once when it is delivered.
                self.metrics
                    .callback_attempts
                    .with_label_values(&["failed"])
                    .inc();
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
    use crate::job::{Outcome, OutcomeKind, Trigger};

    const MS: Duration = Duration::from_millis(1);

    fn delays(b: &mut Backoff, n: usize) -> Vec<u64> {
        (0..n).map(|_| ms(b.next_delay())).collect()
    }

    #[test]
    fn backoff_draws_within_half_to_all_of_a_doubling_nominal_delay_and_resets() {
        for seed in 0..200 {
            let mut b = Backoff::seeded(Duration::from_millis(500), Duration::from_secs(4), seed);
            let d = delays(&mut b, 7);
            let nominal = [500, 1000, 2000, 4000, 4000, 4000, 4000];
            for (got, n) in d.iter().zip(nominal) {
                assert!(
                    (n / 2..=n).contains(got),
                    "seed {seed}: {got} ms for {n}: {d:?}"
                );
            }
            b.reset();
            assert!((250..=500).contains(&ms(b.next_delay())), "seed {seed}");
        }
        // `max` below `initial` is raised to it; a zero delay stays zero.
        let mut b = Backoff::seeded(Duration::from_secs(2), Duration::from_secs(1), 1);
        assert!(delays(&mut b, 3).iter().all(|d| (1000..=2000).contains(d)));
        let mut b = Backoff::seeded(Duration::ZERO, Duration::ZERO, 1);
        assert_eq!(delays(&mut b, 3), vec![0, 0, 0]);
    }

    #[test]
    fn backoff_is_a_function_of_its_seed() {
        let a = delays(&mut Backoff::seeded(MS * 500, MS * 30_000, 42), 20);
        let b = delays(&mut Backoff::seeded(MS * 500, MS * 30_000, 42), 20);
        assert_eq!(a, b);
        // The seed from the OS differs between backoffs made one after the other.
        let c = delays(&mut Backoff::new(MS * 500, MS * 30_000), 20);
        let d = delays(&mut Backoff::new(MS * 500, MS * 30_000), 20);
        assert_ne!(c, d);
    }

    #[test]
    fn differently_seeded_backoffs_do_not_retry_in_lockstep() {
        // Two executors that saw the same outage start: their retry instants (the running sums
        // of the delays) drift apart instead of coinciding.
        let at = |seed| {
            let mut b = Backoff::seeded(MS * 500, MS * 30_000, seed);
            let mut t = 0;
            (0..20)
                .map(|_| {
                    t += ms(b.next_delay());
                    t
                })
                .collect::<Vec<u64>>()
        };
        let (a, b) = (at(1), at(2));
        let apart = a
            .iter()
            .zip(&b)
            .filter(|(x, y)| x.abs_diff(**y) >= 50)
            .count();
        assert!(apart >= 18, "{a:?}\n{b:?}");

        // A fleet of 100 executors retrying at the cap spreads over the jitter window
        // [15 s, 30 s] rather than bunching: every 1.5 s tenth of it is hit.
        let mut tenths = [0u32; 10];
        for seed in 0..100 {
            let mut b = Backoff::seeded(MS * 30_000, MS * 30_000, seed);
            let d = ms(b.next_delay());
            tenths[(((d - 15_000) * 10 / 15_001) as usize).min(9)] += 1;
        }
        assert!(tenths.iter().all(|&n| n > 0), "{tenths:?}");
        assert!(tenths.iter().all(|&n| n < 30), "{tenths:?}");
    }

    /// Yields to the reporter (without moving the paused clock) until `done`, for at most 10 s
    /// of real time: the reporter waits for the store's flush thread, which runs in real time.
    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let limit = std::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(
                std::time::Instant::now() < limit,
                "timed out waiting for {what}"
            );
            tokio::task::yield_now().await;
        }
    }

    /// Lets the reporter run for a while (20 ms of real time) without moving the paused clock.
    async fn settle() {
        let limit = std::time::Instant::now() + Duration::from_millis(20);
        while std::time::Instant::now() < limit {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_reporter_retries_after_each_jittered_delay_and_counts_attempts_not_callbacks(
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), crate::config::Config::defaults().store).unwrap();
        for id in [1, 2, 3] {
            let t = Trigger::for_test(id);
            store
                .finish(&t, &Outcome::success(), OutcomeKind::Success, None)
                .unwrap();
        }
        let metrics = Metrics::new().unwrap();
        // No admin configured: every send fails at once, without I/O that the paused clock
        // would race with.
        let mut admin_cfg = crate::config::Config::defaults().admin;
        admin_cfg.addresses.clear();
        let admin = AdminClient::new(&admin_cfg, metrics.clone()).unwrap();
        let backoff = || Backoff::seeded(MS * 500, MS * 4_000, 9);
        let logs = RunLogs::new(store.clone(), 1 << 20, |_| {});
        let reporter = Reporter::new(store.clone(), logs, admin, metrics.clone(), Arc::default())
            .with_backoff(backoff());
        let stop = CancellationToken::new();
        let task = tokio::spawn(reporter.run(stop.clone()));
        let attempts = |r: &str| metrics.callback_attempts.with_label_values(&[r]).get();

        until("the first attempt", || attempts("failed") == 1).await;
        let mut expected = backoff();
        for k in 1..=7 {
            let d = expected.next_delay();
            tokio::time::advance(d - MS).await;
            settle().await;
            assert_eq!(attempts("failed"), k, "retry {k} came before its {d:?}");
            tokio::time::advance(MS).await;
            until(&format!("retry {k} after {d:?}"), || {
                attempts("failed") == k + 1
            })
            .await;
        }
        // Eight failed sends of a batch of three: eight attempts, no callback counted, and
        // each callback still waiting.
        assert_eq!(attempts("ok"), 0);
        assert_eq!(metrics.callbacks.with_label_values(&["delivered"]).get(), 0);
        assert_eq!(store.outbox_len(), 3);
        assert!(!metrics
            .render()
            .contains("xxl_edge_callbacks_total{result=\"failed\"}"));
        stop.cancel();
        task.await.unwrap();
    }
}
