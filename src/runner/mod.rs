//! Per-job queues: one worker task per jobId runs its triggers in order, different jobIds run in
//! parallel, with the reference's exact messages (protocol §2.3, §4.1–§4.4).
//!
//! - [`admission`]: what a trigger does to its job (queue, new worker, refusal), a pure function;
//! - `worker`: a job's queue and task, and the execution of one run (kill, timeout, panics);
//! - `recovery`: what the journal held at start, queued again or reported.
//!
//! Every trigger is in the journal and on disk before `/run` answers 200, and a worker starts a
//! run only once its acceptance is known to be durable; a run is marked running (durably)
//! before its handler starts, and any store error before that fails the run instead of running
//! it unprotected.

mod admission;
mod fleet;
mod recovery;
mod worker;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::config::RunnerConfig;
use crate::handler::{self, Handler, ScriptHandler};
use crate::job::{reason, Glue, GlueKind, JobId, LogId, Outcome, OutcomeKind, Trigger};
use crate::runlog::RunLogs;
use crate::store::{self, KeyCheck, Store, StoreError};
use crate::telemetry::events::{internal_error, Op};
use crate::telemetry::{Metrics, TriggerResult};

pub use admission::Refusal;
use admission::{Decision, Limits};
pub(crate) use recovery::Recovered;
use worker::{Queued, Worker};

/// What a trigger will run with, and what identifies "the same handler" for replacement.
#[derive(Clone)]
enum Resolved {
    Bean { handler: Handler },
    Script { kind: GlueKind, updated: i64 },
}

impl Resolved {
    fn same_as(&self, other: &Resolved) -> bool {
        match (self, other) {
            (Resolved::Bean { handler: a }, Resolved::Bean { handler: b }) => a.same_as(b),
            (
                Resolved::Script {
                    kind: k1,
                    updated: u1,
                },
                Resolved::Script {
                    kind: k2,
                    updated: u2,
                },
            ) => k1 == k2 && u1 == u2,
            _ => false,
        }
    }
}

/// Cheap handle to the runner.
#[derive(Clone)]
pub struct Runner {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: RunnerConfig,
    store: Store,
    logs: RunLogs,
    metrics: Metrics,
    handlers: handler::Registry,
    glue_enabled: Vec<GlueKind>,
    glue_dir: PathBuf,
    /// Never held across I/O or `.await`: admission decides under it, the journal and GLUE
    /// files are written outside it.
    jobs: Mutex<HashMap<JobId, Arc<Worker>>>,
    /// Jobs in the map that run or have queued triggers, kept by the workers, so that
    /// `runner.max_running` is checked without locking every worker.
    busy_jobs: Arc<AtomicUsize>,
    outbox_ready: Arc<Notify>,
    tracker: TaskTracker,
    accepting: AtomicBool,
    /// The latest triggers written to the journal and then refused (at most
    /// [`FORGOTTEN_KEPT`]): after a storage fault their removal may not have reached the disk
    /// while their record did, so the executor hands them to the next start to drop.
    forgotten: Mutex<std::collections::VecDeque<LogId>>,
    /// Idempotency keys in the fleet's Redis (`keys.backend = "redis"`), else the store's.
    fleet: std::sync::OnceLock<crate::fleet_keys::FleetKeys>,
    fleet_unreachable: std::sync::OnceLock<crate::config::Unreachable>,
}

/// How many refused logIds [`Runner::forgotten`] remembers.
const FORGOTTEN_KEPT: usize = 4096;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means another thread panicked while holding it; the state is plain
    // data that stays consistent at every await-free step, so carry on.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner").finish_non_exhaustive()
    }
}

impl Runner {
    /// Creates the runner; `outbox_ready` is notified whenever a callback is queued.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        cfg: RunnerConfig,
        store: Store,
        logs: RunLogs,
        metrics: Metrics,
        handlers: handler::Registry,
        glue_enabled: Vec<GlueKind>,
        glue_dir: PathBuf,
        outbox_ready: Arc<Notify>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                cfg,
                store,
                logs,
                metrics,
                handlers,
                glue_enabled,
                glue_dir,
                jobs: Mutex::new(HashMap::new()),
                busy_jobs: Arc::new(AtomicUsize::new(0)),
                outbox_ready,
                tracker: TaskTracker::new(),
                accepting: AtomicBool::new(true),
                forgotten: Mutex::new(std::collections::VecDeque::new()),
                fleet: std::sync::OnceLock::new(),
                fleet_unreachable: std::sync::OnceLock::new(),
            }),
        }
    }

    /// The label for metrics: a registered name, a glue kind, or `unknown` (never a name from
    /// the network that is not registered).
    fn label(&self, t: &Trigger) -> String {
        match &t.glue {
            Glue::Bean if self.inner.handlers.get(&t.handler).is_some() => t.handler.clone(),
            Glue::Bean => "unknown".to_string(),
            Glue::Script { kind, .. } => kind.wire_name().to_string(),
        }
    }

    fn resolve(&self, t: &Trigger) -> Result<Resolved, Refusal> {
        match &t.glue {
            Glue::Bean => match self.inner.handlers.get(&t.handler) {
                Some(h) => Ok(Resolved::Bean { handler: h.clone() }),
                None => Err(Refusal::new(
                    TriggerResult::UnknownHandler,
                    format!(
                        "job handler [{}] not found.",
                        if t.handler.is_empty() {
                            "null"
                        } else {
                            &t.handler
                        }
                    ),
                )),
            },
            Glue::Script { kind, updated, .. } => {
                if !self.inner.glue_enabled.contains(kind) {
                    return Err(Refusal::new(
                        TriggerResult::GlueDisabled,
                        format!(
                            "glueType[{}] is disabled on this executor: running scripts sent by the admin is remote code execution, so xxl-edge runs them only when the operator allows it. Add \"{}\" to glue.enabled in the config file (or XXL_EDGE_GLUE_ENABLED={}) and restart.",
                            kind.wire_name(),
                            kind.config_name(),
                            kind.config_name()
                        ),
                    ));
                }
                Ok(Resolved::Script {
                    kind: *kind,
                    updated: *updated,
                })
            }
        }
    }

    /// The handler a new worker runs; for a GLUE script this writes the script file (I/O: never
    /// under the map lock).
    fn build_handler(&self, t: &Trigger, r: &Resolved) -> Result<Handler, Refusal> {
        match (r, &t.glue) {
            (Resolved::Bean { handler }, _) => Ok(handler.clone()),
            (Resolved::Script { kind, updated }, Glue::Script { source, .. }) => {
                ScriptHandler::prepare(
                    &self.inner.glue_dir,
                    t.job_id,
                    *kind,
                    source,
                    *updated,
                    self.inner.cfg.kill_grace,
                )
                .map(Handler::new)
                .map_err(|e| {
                    tracing::error!(error = %e, job_id = %t.job_id, "Cannot write a GLUE script file.");
                    Refusal::new(
                        TriggerResult::StoreError,
                        format!("cannot write the glue script for job {}: {e}", t.job_id),
                    )
                })
            }
            (Resolved::Script { .. }, Glue::Bean) => Err(Refusal::new(
                TriggerResult::Invalid,
                "glueType[BEAN] is not valid.",
            )),
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            max_queue_per_job: self.inner.cfg.max_queue_per_job,
            max_running: self.inner.cfg.max_running,
        }
    }

    /// Admission on the state under the lock: no I/O here.
    fn decide(
        &self,
        jobs: &HashMap<JobId, Arc<Worker>>,
        t: &Trigger,
        resolved: &Resolved,
    ) -> Decision {
        let view = jobs
            .get(&t.job_id)
            .map(|w| w.view(t.log_id, w.resolved.same_as(resolved)));
        let busy = self.inner.busy_jobs.load(Ordering::Acquire);
        let others = busy.saturating_sub(usize::from(view.is_some_and(|v| v.busy)));
        admission::decide(view, t, others, self.limits())
    }

    /// Accepts a trigger into its job's queue and the journal, or refuses it with the message
    /// the admin will show. Returns once the acceptance is durable.
    ///
    /// # Errors
    /// A [`Refusal`]: nothing was queued, nothing will run and no callback will follow.
    pub async fn submit(&self, t: Trigger) -> Result<(), Refusal> {
        let label = self.label(&t);
        let (job_id, log_id) = (t.job_id.0, t.log_id.0);
        // The handler name as sent, not the metric label.
        let handler = t.bean_handler().to_string();
        let res = self.submit_inner(t).await;
        let result = match &res {
            Ok(r) => *r,
            Err(e) => e.result,
        };
        self.inner.metrics.trigger(&label, result);
        crate::telemetry::runs::submitted(
            &self.inner.metrics,
            (job_id, log_id, &handler),
            result,
            res.as_ref().err().map(|e| e.msg.as_str()),
        );
        res.map(|_| ())
    }

    async fn submit_inner(&self, t: Trigger) -> Result<TriggerResult, Refusal> {
        let inner = &self.inner;
        if !inner.accepting.load(Ordering::Acquire) {
            return Err(Refusal::new(
                TriggerResult::ShuttingDown,
                "xxl-edge is shutting down and accepts no new runs.",
            ));
        }
        // Checked first: a failed store answers every trigger at once, without touching sled.
        if let Some(fault) = inner.store.fault() {
            return Err(fault_refusal(fault));
        }
        let resolved = self.resolve(&t)?;
        inner.store.check_space().map_err(store_refusal)?;
        if inner.store.has_run(t.log_id).map_err(store_refusal)? {
            return Err(Refusal::repeat(t.log_id));
        }
        // Pruned from the journal, it must still not run twice.
        if admission::pruned_repeat(inner.store.pruned_watermark(), &t) {
            return Err(Refusal::repeat(t.log_id));
        }
        if let Some(r) = self.duplicate_key(&t, &resolved).await? {
            return Ok(r);
        }

        // Decide first, so that a refusal costs no I/O.
        let (first, idle_worker) = {
            let jobs = lock(&inner.jobs);
            let d = self.decide(&jobs, &t, &resolved);
            let idle = matches!(d, Decision::Queue)
                && jobs.get(&t.job_id).is_some_and(|w| w.starts_at_once(&t));
            (d, idle)
        };
        let mut handler = match first {
            Decision::Refuse(r) => return Err(r),
            Decision::NewWorker { .. } => Some(self.build_handler(&t, &resolved)?),
            Decision::Queue => None,
        };
        // A trigger that starts at once is journaled as running in the same write as its
        // acceptance: one record write and one flush instead of two of each. (Should another
        // trigger slip in first, it waits marked running; a crash then reports it as
        // interrupted instead of running it again, never twice.)
        let marked = idle_worker
            || handler
                .as_ref()
                .is_some_and(|h: &Handler| h.key_for(&t).is_none());
        let t = self.insert_accepted_owned(t, marked).await?;
        let written = inner.store.flush_epoch();
        let (admitted_tx, admitted_rx) = oneshot::channel();
        // Commit on the state found now; the decision can have changed while the lock was
        // free. At most twice: a second pass only happens when a worker must now be built.
        // The queue takes the trigger itself, not a copy (params can be megabytes).
        let victim = loop {
            let mut jobs = lock(&inner.jobs);
            match self.decide(&jobs, &t, &resolved) {
                Decision::Refuse(r) => {
                    drop(jobs);
                    self.forget(t.log_id);
                    return Err(r);
                }
                // `decide` queues only on a worker it found in `jobs`, under this same lock.
                Decision::Queue => match jobs.get(&t.job_id) {
                    Some(w) => {
                        inner.metrics.queued.inc();
                        w.push(Queued::new(t, Some(admitted_rx), marked));
                        break None;
                    }
                    None => {
                        drop(jobs);
                        self.forget(t.log_id);
                        return Err(Refusal::new(
                            TriggerResult::StoreError,
                            "the job's worker went away during admission; the trigger was not accepted",
                        ));
                    }
                },
                Decision::NewWorker { replace } => {
                    let Some(h) = handler.take() else {
                        drop(jobs);
                        match self.build_handler(&t, &resolved) {
                            Ok(h) => handler = Some(h),
                            Err(r) => {
                                self.forget(t.log_id);
                                return Err(r);
                            }
                        }
                        continue;
                    };
                    let old = match replace {
                        Some(why) => jobs.remove(&t.job_id).map(|old| (old, why)),
                        None => None,
                    };
                    let w = Worker::new(t.job_id, resolved.clone(), h, inner.busy_jobs.clone());
                    jobs.insert(t.job_id, w.clone());
                    inner.metrics.queued.inc();
                    w.push(Queued::new(t, Some(admitted_rx), marked));
                    self.spawn_worker(w);
                    break old.map(|(old, why)| {
                        let queued = old.stop_with(why);
                        (old, queued)
                    });
                }
            }
        };
        if let Some((old, queued)) = victim {
            self.kill_queued(&old, queued);
        }
        match inner.store.durable_since(written).await {
            Ok(()) => {
                let _ = admitted_tx.send(true);
                Ok(TriggerResult::Accepted)
            }
            Err(e) => {
                // The worker drops it when its turn comes: a refused trigger never runs.
                let _ = admitted_tx.send(false);
                self.store_refused("flush the journal before answering /run", &e);
                Err(store_refusal(e))
            }
        }
    }

    fn insert_accepted(&self, t: &Trigger, running: bool) -> Result<(), Refusal> {
        self.inner
            .store
            .insert_accepted(t, running)
            .map_err(|e| self.insert_refusal(t.log_id, e))
    }

    fn insert_refusal(&self, id: LogId, e: StoreError) -> Refusal {
        match e {
            StoreError::Duplicate(_) => Refusal::repeat(id),
            e => {
                self.store_refused("write an accepted trigger to the journal", &e);
                store_refusal(e)
            }
        }
    }

    /// As [`Runner::insert_accepted`]; a large trigger (written to its own file and fsynced)
    /// goes through the blocking pool, off the runtime's few threads. The trigger is moved
    /// there and back, not copied.
    async fn insert_accepted_owned(&self, t: Trigger, running: bool) -> Result<Trigger, Refusal> {
        if store::bulk_bytes(&t) <= store::BULK_THRESHOLD {
            self.insert_accepted(&t, running)?;
            return Ok(t);
        }
        let s = self.inner.store.clone();
        let id = t.log_id;
        match tokio::task::spawn_blocking(move || {
            let r = s.insert_accepted(&t, running);
            (t, r)
        })
        .await
        {
            Ok((t, Ok(()))) => Ok(t),
            Ok((_, Err(e))) => Err(self.insert_refusal(id, e)),
            Err(e) => Err(Refusal::new(
                TriggerResult::StoreError,
                format!(
                    "the run journal could not be written, so the trigger was not accepted: {e}"
                ),
            )),
        }
    }

    /// Removes a trigger that was written to the journal but not accepted after all.
    fn forget(&self, id: LogId) {
        {
            let mut f = lock(&self.inner.forgotten);
            if f.len() >= FORGOTTEN_KEPT {
                f.pop_front();
            }
            f.push_back(id);
        }
        if let Err(e) = self.inner.store.forget_accepted(id) {
            self.store_failed(
                Op::JournalWrite,
                "remove a refused trigger from the journal",
                &e,
            );
        }
    }

    /// The latest triggers that were written to the journal and then refused (their `/run`
    /// answered an error): a start after a storage fault drops any of them it still finds.
    pub(crate) fn forgotten(&self) -> Vec<LogId> {
        lock(&self.inner.forgotten).iter().copied().collect()
    }

    /// Idempotency fast path: a key that already succeeded needs no queue at all. The
    /// acceptance is made durable before the outcome is recorded, so a flush that fails leaves
    /// no callback behind for a trigger the admin was told was refused.
    async fn duplicate_key(
        &self,
        t: &Trigger,
        resolved: &Resolved,
    ) -> Result<Option<TriggerResult>, Refusal> {
        let Resolved::Bean { handler } = resolved else {
            return Ok(None);
        };
        let Some((key, _)) = handler.key_for(t) else {
            return Ok(None);
        };
        let check = self.inner.store.check_key_readonly(&key).map_err(|e| {
            self.store_refused("check an idempotency key", &e);
            store_refusal(e)
        })?;
        let KeyCheck::Succeeded(prev) = check else {
            return Ok(None);
        };
        self.insert_accepted(t, false)?;
        if let Err(e) = self.inner.store.durable().await {
            self.forget(t.log_id);
            self.store_refused("flush the journal before answering /run", &e);
            return Err(store_refusal(e));
        }
        self.finish_duplicate(t, &key, prev);
        Ok(Some(TriggerResult::DuplicateKey))
    }

    fn finish_duplicate(&self, t: &Trigger, key: &str, prev: LogId) {
        let msg = format!(
            "skipped: idempotency key \"{key}\" matches logId:{prev}, which succeeded; nothing was run"
        );
        self.inner
            .logs
            .open(t.log_id)
            .note(&format!("xxl-edge: {msg}"));
        self.record(t, &Outcome::success_with(msg), OutcomeKind::Duplicate, None);
    }

    /// Queued triggers of a stopped worker are called back as killed.
    fn kill_queued(&self, w: &Worker, queued: Vec<Queued>) {
        let reason = w.reason();
        for q in queued {
            self.inner.metrics.queued.dec();
            self.inner.logs.open(q.trigger.log_id).stopped(&reason);
            self.record(
                &q.trigger,
                &Outcome::fail(format!("{reason}{}", reason::QUEUED_SUFFIX)),
                OutcomeKind::Killed,
                None,
            );
        }
    }

    /// Records an outcome with its callback and wakes the reporter.
    fn record(&self, t: &Trigger, outcome: &Outcome, kind: OutcomeKind, ran: Option<Duration>) {
        self.record_with_log(t, outcome, kind, ran, None);
    }

    /// [`Runner::record`]; given the run's log, what it buffered goes in the same write as the
    /// outcome (one sled write for a short run's end instead of two, see
    /// `RunLog::save_with_outcome`).
    fn record_with_log(
        &self,
        t: &Trigger,
        outcome: &Outcome,
        kind: OutcomeKind,
        ran: Option<Duration>,
        log: Option<&crate::runlog::RunLog>,
    ) {
        let label = self.label(t);
        let trace = crate::telemetry::traces::span_ref(&tracing::Span::current());
        self.inner.store.outcome_begins();
        let store = &self.inner.store;
        let finished = match log {
            Some(log) => log.save_with_outcome(|lines| {
                let taken = lines.is_some();
                let r = store.finish_with_log(t, outcome, kind, trace.clone(), lines);
                let taken = taken && matches!(r, Ok(true));
                (r, taken)
            }),
            None => store.finish(t, outcome, kind, trace.clone()),
        };
        // Flushed soon, not waited for: the reporter waits for this same flush before it
        // sends the callback, the log flusher within `store.log_flush_ms` if no callback can
        // go out, and a crash before then reports the run as interrupted, never as run twice.
        self.inner.store.outcome_written();
        if let Some(f) = self.inner.fleet.get() {
            f.finished(t.log_id);
        }
        match finished {
            Ok(true) => {
                crate::telemetry::runs::finished(
                    &self.inner.metrics,
                    (t.job_id.0, t.log_id.0, &label),
                    outcome,
                    kind,
                    ran,
                    trace.as_deref(),
                );
                self.inner
                    .metrics
                    .runs
                    .with_label_values(&[&label, kind.as_str()])
                    .inc();
                if let Some(d) = ran {
                    self.inner
                        .metrics
                        .run_duration
                        .with_label_values(&[&label])
                        .observe(d.as_secs_f64());
                }
                self.inner.outbox_ready.notify_one();
            }
            Ok(false) => {}
            Err(e) => self.store_failed(
                Op::RecordOutcome,
                "record a run's outcome (it will be reported as interrupted after a restart)",
                &e,
            ),
        }
    }

    /// A store error the admin hears of (a refused trigger, counted in
    /// `xxl_edge_triggers_total{result="store_error"}`): logged only.
    fn store_refused(&self, what: &str, e: &StoreError) {
        tracing::warn!(error = %e, what, "A store operation failed; the trigger is refused.");
        self.check_store(e);
    }

    /// After a sled error, a flush finds out whether sled has failed for good (a failed write
    /// fails every later operation, but only a flush marks the store failed): an insert can
    /// fail this way while no flush is pending.
    fn check_store(&self, e: &StoreError) {
        if matches!(e, StoreError::Sled(_)) {
            self.inner.store.check_health();
        }
    }

    /// A store error nobody is told of directly: logged and counted
    /// (`xxl_edge_internal_errors_total{op}`).
    fn store_failed(&self, op: Op, what: &str, e: &StoreError) {
        internal_error!(self.inner.metrics, op, e, "A store operation failed.", what);
        self.check_store(e);
    }

    /// `/idleBeat`: true when the job runs or has queued triggers.
    pub fn is_busy(&self, job: JobId) -> bool {
        let w = lock(&self.inner.jobs).get(&job).cloned();
        w.is_some_and(|w| w.busy())
    }

    /// `/kill`: stops the job's worker (its running and queued runs are called back as killed).
    /// Returns false when the job had no worker.
    pub fn kill(&self, job: JobId) -> bool {
        self.stop_job(job, reason::KILL)
    }

    fn stop_job(&self, job: JobId, why: &str) -> bool {
        let removed = lock(&self.inner.jobs).remove(&job);
        match removed {
            Some(w) => {
                let queued = w.stop_with(why);
                self.kill_queued(&w, queued);
                true
            }
            None => false,
        }
    }

    fn workers(&self) -> Vec<Arc<Worker>> {
        lock(&self.inner.jobs).values().cloned().collect()
    }

    /// Runs executing now.
    pub fn executing(&self) -> usize {
        self.workers().iter().filter(|w| w.is_running()).count()
    }

    /// Triggers queued now.
    pub fn queued(&self) -> usize {
        self.workers().iter().map(|w| w.queue_len()).sum()
    }

    /// Graceful stop: refuse new triggers, let running work finish for up to `grace`, then kill
    /// what is left with the reference's shutdown reason and wait for the workers to wind down.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.accepting.store(false, Ordering::Release);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && (self.executing() > 0 || self.queued() > 0) {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let jobs: Vec<JobId> = lock(&self.inner.jobs).keys().copied().collect();
        for job in jobs {
            self.stop_job(job, reason::SHUTDOWN);
        }
        self.inner.tracker.close();
        let bound = self.inner.cfg.kill_grace + Duration::from_secs(2);
        if tokio::time::timeout(bound, self.inner.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("Some runs did not stop within the kill grace; their outcomes are recorded as killed.");
        }
    }
}

/// `/run` while the store is failed (README, "Storage faults").
fn fault_refusal(fault: &str) -> Refusal {
    Refusal::new(
        TriggerResult::StoreError,
        format!(
            "xxl-edge's store failed ({fault}) and cannot be written again until xxl-edge restarts, which it does by itself once its data directory is writable again; the trigger was not accepted"
        ),
    )
}

fn store_refusal(e: StoreError) -> Refusal {
    match e {
        StoreError::DiskFull { .. } => Refusal::new(TriggerResult::DiskFull, e.to_string()),
        e => Refusal::new(
            TriggerResult::StoreError,
            format!("the run journal could not be written, so the trigger was not accepted: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A runner on the default settings over `store`, for the runner's own tests.
    pub(super) fn runner_for_test(
        store: &Store,
        logs: RunLogs,
        handlers: handler::Registry,
        dir: &std::path::Path,
    ) -> Runner {
        Runner::new(
            crate::config::Config::defaults().runner,
            store.clone(),
            logs,
            Metrics::new().unwrap(),
            handlers,
            vec![],
            dir.join("gluesource"),
            Arc::default(),
        )
    }

    /// Issue 8: once the store has failed, `/run` is refused at once with the fault named, and
    /// nothing is queued (a failed sled would otherwise fail or hang each step of admission).
    #[tokio::test]
    async fn a_failed_store_refuses_triggers_at_once_naming_the_fault() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::config::Config::defaults();
        let store = Store::open(dir.path(), cfg.store.clone()).unwrap();
        let mut handlers = handler::Registry::default();
        handlers.insert(
            "h",
            Handler::new(|_ctx: handler::JobContext| async { Outcome::success() }),
        );
        let runner = runner_for_test(
            &store,
            RunLogs::new(store.clone(), 1 << 20, |_| {}),
            handlers,
            dir.path(),
        );
        let mut t = Trigger::for_test(1);
        t.handler = "h".into();
        store.declare_failed("No space left on device (os error 28)");
        let r = runner.submit(t).await.unwrap_err();
        assert_eq!(r.result, TriggerResult::StoreError);
        assert!(
            r.msg
                .starts_with("xxl-edge's store failed (No space left on device (os error 28))")
                && r.msg.ends_with("the trigger was not accepted"),
            "{}",
            r.msg
        );
        assert_eq!(runner.queued() + runner.executing(), 0);
    }
}
