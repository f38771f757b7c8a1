//! Per-job queues: one worker task per jobId runs its triggers in order, different jobIds run in
//! parallel. Block strategies, kill, timeout, handler replacement, idle reclaim and recovery after
//! a restart live here, with the reference's exact messages (protocol §2.3, §4.1–§4.4).
//!
//! Every trigger is written to the journal before `/run` answers 200, marked running (durably)
//! before its handler starts, and finished together with its outbox entry, so each accepted
//! trigger ends in exactly one callback.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::RunnerConfig;
use crate::handler::{self, Handler, JobContext, JobLog, LogSink, ScriptHandler};
use crate::job::{
    reason, BlockStrategy, Glue, GlueKind, JobId, LogId, Outcome, OutcomeKind, Trigger,
    CODE_TIMEOUT,
};
use crate::store::{KeyCheck, Recovery, Store, StoreError};
use crate::telemetry::{Metrics, TriggerResult};

/// Why `/run` refused a trigger. The message is what the admin shows; nothing was accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}")]
pub struct Refusal {
    /// For the metric label.
    pub result: TriggerResult,
    /// For the admin.
    pub msg: String,
}

impl Refusal {
    fn new(result: TriggerResult, msg: impl Into<String>) -> Self {
        Self {
            result,
            msg: msg.into(),
        }
    }
}

/// What a trigger will run with, and what identifies "the same handler" for replacement.
#[derive(Clone)]
enum Resolved {
    Bean { handler: Handler },
    Script { kind: GlueKind, updated: i64 },
}

impl Resolved {
    fn same_as(&self, other: &Resolved) -> bool {
        match (self, other) {
            (Resolved::Bean { handler: a, .. }, Resolved::Bean { handler: b, .. }) => a.same_as(b),
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
    metrics: Metrics,
    handlers: handler::Registry,
    glue_enabled: Vec<GlueKind>,
    glue_dir: PathBuf,
    jobs: Mutex<HashMap<JobId, Arc<Worker>>>,
    outbox_ready: Arc<Notify>,
    tracker: TaskTracker,
    accepting: AtomicBool,
}

struct Worker {
    job_id: JobId,
    resolved: Resolved,
    handler: Handler,
    state: Mutex<WorkerState>,
    wake: Notify,
    stop: CancellationToken,
}

#[derive(Default)]
struct WorkerState {
    queue: VecDeque<Queued>,
    queued_ids: HashSet<LogId>,
    running: Option<LogId>,
    stop_reason: Option<String>,
}

struct Queued {
    trigger: Trigger,
    accepted_at: Instant,
    /// The `/run` request's span: the run's span is its child, so one trace per trigger.
    span: tracing::Span,
    /// Open while the trigger waits; closed when it starts.
    wait_span: tracing::Span,
}

impl Queued {
    fn new(trigger: Trigger) -> Self {
        let span = tracing::Span::current();
        let wait_span = tracing::debug_span!(parent: &span, "job.queue", otel.kind = "internal");
        Self {
            trigger,
            accepted_at: Instant::now(),
            span,
            wait_span,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means another thread panicked while holding it; the state is plain
    // data that stays consistent at every await-free step, so carry on.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl WorkerState {
    fn busy(&self) -> bool {
        self.running.is_some() || !self.queue.is_empty()
    }
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner").finish_non_exhaustive()
    }
}

impl Runner {
    /// Creates the runner; `outbox_ready` is notified whenever a callback is queued.
    pub fn new(
        cfg: RunnerConfig,
        store: Store,
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
                metrics,
                handlers,
                glue_enabled,
                glue_dir,
                jobs: Mutex::new(HashMap::new()),
                outbox_ready,
                tracker: TaskTracker::new(),
                accepting: AtomicBool::new(true),
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

    fn build_handler(&self, t: &Trigger, r: &Resolved) -> Result<Handler, Refusal> {
        match (r, &t.glue) {
            (Resolved::Bean { handler, .. }, _) => Ok(handler.clone()),
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

    /// Accepts a trigger into its job's queue and the journal, or refuses it with the message
    /// the admin will show. Returns once the acceptance is durable.
    ///
    /// # Errors
    /// A [`Refusal`]: nothing was queued and no callback will follow.
    pub async fn submit(&self, t: Trigger) -> Result<(), Refusal> {
        let label = self.label(&t);
        let res = self.submit_inner(t).await;
        let result = match &res {
            Ok(r) => *r,
            Err(e) => e.result,
        };
        self.inner.metrics.trigger(&label, result);
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
        let resolved = self.resolve(&t)?;
        inner.store.check_space().map_err(store_refusal)?;
        let repeat = || {
            Refusal::new(
                TriggerResult::DuplicateLogId,
                format!("repeat trigger job, logId:{}", t.log_id),
            )
        };
        if inner.store.has_run(t.log_id).map_err(store_refusal)? {
            return Err(repeat());
        }
        // Fast path for idempotency: a key that already succeeded needs no queue at all.
        if let Resolved::Bean { handler, .. } = &resolved {
            if let Some((key, _)) = handler.key_for(&t) {
                if let KeyCheck::Succeeded(prev) = inner
                    .store
                    .check_key_readonly(&key)
                    .map_err(store_refusal)?
                {
                    inner.store.insert_accepted(&t).map_err(|e| match e {
                        StoreError::Duplicate(_) => repeat(),
                        e => store_refusal(e),
                    })?;
                    self.finish_duplicate(&t, &key, prev);
                    inner.store.durable().await.map_err(store_refusal)?;
                    return Ok(TriggerResult::DuplicateKey);
                }
            }
        }

        let mut victims = Vec::new();
        {
            let mut jobs = lock(&inner.jobs);
            let mut replace_reason = None;
            if let Some(w) = jobs.get(&t.job_id) {
                if !w.resolved.same_as(&resolved) {
                    replace_reason = Some(match t.glue {
                        Glue::Bean => reason::CHANGE_HANDLER,
                        Glue::Script { .. } => reason::CHANGE_SOURCE,
                    });
                } else {
                    let st = lock(&w.state);
                    if st.queued_ids.contains(&t.log_id) {
                        return Err(repeat());
                    }
                    match t.block {
                        BlockStrategy::DiscardLater if st.busy() => {
                            return Err(Refusal::new(
                                TriggerResult::Discarded,
                                "block strategy effect：Discard Later",
                            ));
                        }
                        BlockStrategy::CoverEarly if st.busy() => {
                            replace_reason = Some(reason::COVER_EARLY);
                        }
                        _ => {
                            if st.queue.len() >= inner.cfg.max_queue_per_job {
                                return Err(Refusal::new(
                                    TriggerResult::QueueFull,
                                    format!(
                                        "job queue full: {} triggers are already queued for jobId {} (limit runner.max_queue_per_job = {}); the trigger was not accepted",
                                        st.queue.len(),
                                        t.job_id,
                                        inner.cfg.max_queue_per_job
                                    ),
                                ));
                            }
                        }
                    }
                }
            }
            let needs_worker = replace_reason.is_some() || !jobs.contains_key(&t.job_id);
            if needs_worker {
                let busy = jobs
                    .iter()
                    .filter(|(id, w)| **id != t.job_id && lock(&w.state).busy())
                    .count();
                if busy >= inner.cfg.max_running {
                    return Err(Refusal::new(
                        TriggerResult::RunningLimit,
                        format!(
                            "executor busy: {busy} jobs are running or queued (limit runner.max_running = {}); the trigger was not accepted",
                            inner.cfg.max_running
                        ),
                    ));
                }
            }
            let handler = if needs_worker {
                Some(self.build_handler(&t, &resolved)?)
            } else {
                None
            };
            inner.store.insert_accepted(&t).map_err(|e| match e {
                StoreError::Duplicate(_) => repeat(),
                e => store_refusal(e),
            })?;
            if let Some(reason) = replace_reason {
                if let Some(old) = jobs.remove(&t.job_id) {
                    victims.push((old.clone(), old.stop_with(reason)));
                }
            }
            let w = match (handler, jobs.get(&t.job_id)) {
                (None, Some(w)) => w.clone(),
                (h, _) => {
                    let handler = match h {
                        Some(h) => h,
                        None => self.build_handler(&t, &resolved)?,
                    };
                    let w = Worker::new(t.job_id, resolved.clone(), handler);
                    jobs.insert(t.job_id, w.clone());
                    self.spawn_worker(w.clone());
                    w
                }
            };
            w.push(Queued::new(t.clone()));
            inner.metrics.queued.inc();
        }
        for (w, queued) in victims {
            self.kill_queued(&w, queued);
        }
        if let Err(e) = inner.store.durable().await {
            // The acceptance is not on disk: take the trigger back if it has not started.
            if let Some(w) = lock(&inner.jobs).get(&t.job_id) {
                if w.take_back(t.log_id) {
                    inner.metrics.queued.dec();
                    let _ = inner.store.forget_accepted(t.log_id);
                }
            }
            return Err(store_refusal(e));
        }
        Ok(TriggerResult::Accepted)
    }

    fn finish_duplicate(&self, t: &Trigger, key: &str, prev: LogId) {
        let log = RunLog::open(&self.inner.store, t.log_id, u64::MAX);
        let msg = format!(
            "skipped: idempotency key \"{key}\" matches logId:{prev}, which succeeded; nothing was run"
        );
        log.system(&format!("<br>----------- xxl-edge: {msg}"));
        self.record(t, &Outcome::success_with(msg), OutcomeKind::Duplicate, None);
    }

    /// Queued triggers of a stopped worker are called back as killed.
    fn kill_queued(&self, w: &Worker, queued: Vec<Queued>) {
        let reason = w.reason();
        for q in queued {
            self.inner.metrics.queued.dec();
            let log = RunLog::open(&self.inner.store, q.trigger.log_id, u64::MAX);
            log.system(&format!(
                "<br>----------- JobThread toStop, stopReason:{reason}"
            ));
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
        let label = self.label(t);
        let trace = crate::telemetry::traces::span_ref(&tracing::Span::current());
        match self.inner.store.finish(t, outcome, kind, trace) {
            Ok(true) => {
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
            Err(e) => tracing::error!(
                error = %e,
                log_id = %t.log_id,
                "Cannot record a run's outcome; it will be reported as interrupted after a restart."
            ),
        }
    }

    /// `/idleBeat`: true when the job runs or has queued triggers.
    pub fn is_busy(&self, job: JobId) -> bool {
        lock(&self.inner.jobs)
            .get(&job)
            .is_some_and(|w| lock(&w.state).busy())
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

    /// Runs executing now.
    pub fn executing(&self) -> usize {
        lock(&self.inner.jobs)
            .values()
            .filter(|w| lock(&w.state).running.is_some())
            .count()
    }

    /// Triggers queued now.
    pub fn queued(&self) -> usize {
        lock(&self.inner.jobs)
            .values()
            .map(|w| lock(&w.state).queue.len())
            .sum()
    }

    /// Re-queues what the journal held at start: interrupted runs are reported as failed (or run
    /// again when their handler is declared safe to re-run), accepted ones are queued again.
    pub fn recover(&self, r: Recovery) -> (usize, usize, usize) {
        let (mut requeued, mut failed, mut rerun) = (0, 0, 0);
        let mut again = Vec::new();
        for rec in r.interrupted {
            let t = rec.trigger;
            let safe = matches!(&t.glue, Glue::Bean)
                && self
                    .inner
                    .handlers
                    .get(&t.handler)
                    .is_some_and(Handler::is_rerun_safe);
            let log = RunLog::open(&self.inner.store, t.log_id, u64::MAX);
            if safe {
                log.system("<br>----------- xxl-edge restarted during the run; the handler is declared safe to re-run, so it runs again");
                rerun += 1;
                again.push(t);
            } else {
                log.system(&format!("<br>----------- {}", reason::RESTARTED));
                self.record(
                    &t,
                    &Outcome::fail(reason::RESTARTED),
                    OutcomeKind::Interrupted,
                    None,
                );
                failed += 1;
            }
        }
        again.extend(r.queued.into_iter().map(|rec| rec.trigger));
        again.sort_by_key(|t| t.log_id);
        for t in again {
            match self.requeue(&t) {
                Ok(()) => requeued += 1,
                Err(refusal) => {
                    let log = RunLog::open(&self.inner.store, t.log_id, u64::MAX);
                    log.system(&format!(
                        "<br>----------- xxl-edge could not run this trigger after a restart: {}",
                        refusal.msg
                    ));
                    self.record(&t, &Outcome::fail(refusal.msg), OutcomeKind::Failed, None);
                    failed += 1;
                }
            }
        }
        (requeued, failed, rerun)
    }

    fn requeue(&self, t: &Trigger) -> Result<(), Refusal> {
        let resolved = self.resolve(t)?;
        let mut jobs = lock(&self.inner.jobs);
        let w = match jobs.get(&t.job_id) {
            Some(w) if w.resolved.same_as(&resolved) => w.clone(),
            _ => {
                let handler = self.build_handler(t, &resolved)?;
                let w = Worker::new(t.job_id, resolved, handler);
                if let Some(old) = jobs.insert(t.job_id, w.clone()) {
                    let q = old.stop_with(reason::CHANGE_SOURCE);
                    drop(jobs);
                    self.kill_queued(&old, q);
                    jobs = lock(&self.inner.jobs);
                }
                self.spawn_worker(w.clone());
                w
            }
        };
        drop(jobs);
        let _recovery = tracing::debug_span!("job.recover", otel.kind = "internal").entered();
        w.push(Queued::new(t.clone()));
        self.inner.metrics.queued.inc();
        Ok(())
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

    fn spawn_worker(&self, w: Arc<Worker>) {
        let me = self.clone();
        self.inner.tracker.spawn(async move { me.work(w).await });
    }

    async fn work(self, w: Arc<Worker>) {
        let idle = self.inner.cfg.idle_reclaim;
        loop {
            let next = {
                let mut st = lock(&w.state);
                if st.stop_reason.is_some() {
                    break;
                }
                let q = st.queue.pop_front();
                if let Some(q) = &q {
                    st.queued_ids.remove(&q.trigger.log_id);
                    st.running = Some(q.trigger.log_id);
                }
                q
            };
            match next {
                Some(q) => {
                    self.inner.metrics.queued.dec();
                    self.run_one(&w, q).await;
                    lock(&w.state).running = None;
                }
                None => {
                    tokio::select! {
                        () = w.wake.notified() => {}
                        () = w.stop.cancelled() => {}
                        () = tokio::time::sleep(idle) => {
                            if self.reclaim(&w) {
                                break;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Removes an idle worker from the map; false when a trigger raced in.
    fn reclaim(&self, w: &Arc<Worker>) -> bool {
        let mut jobs = lock(&self.inner.jobs);
        let mut st = lock(&w.state);
        if st.busy() {
            return false;
        }
        if jobs.get(&w.job_id).is_some_and(|cur| Arc::ptr_eq(cur, w)) {
            jobs.remove(&w.job_id);
        }
        st.stop_reason = Some("excutor idle times over limit.".into());
        true
    }

    async fn run_one(&self, w: &Worker, q: Queued) {
        use tracing::Instrument;
        let Queued {
            trigger,
            accepted_at,
            span,
            wait_span,
        } = q;
        drop(wait_span);
        let run_span = tracing::debug_span!(
            parent: &span,
            "job.run",
            otel.kind = "internal",
            otel.status_code = tracing::field::Empty,
            xxl.job.id = trigger.job_id.0,
            xxl.job.log_id = trigger.log_id.0,
            xxl.job.handler = trigger.bean_handler(),
            xxl.job.glue_type = trigger.glue.type_name(),
            xxl.job.block_strategy = trigger.block.as_str(),
            xxl.job.shard_index = trigger.shard_index,
            xxl.job.shard_total = trigger.shard_total,
            xxl.job.outcome.code = tracing::field::Empty,
            xxl.job.outcome = tracing::field::Empty,
        );
        self.run_traced(w, trigger, accepted_at, run_span.clone())
            .instrument(run_span)
            .await;
    }

    async fn run_traced(&self, w: &Worker, t: Trigger, accepted_at: Instant, span: tracing::Span) {
        let inner = &self.inner;
        let label = self.label(&t);
        inner
            .metrics
            .queue_wait
            .with_label_values(&[&label])
            .observe(accepted_at.elapsed().as_secs_f64());
        let key = w.handler.key_for(&t);
        if let Some((k, ttl)) = &key {
            match inner.store.check_key(k, t.log_id, *ttl) {
                Ok(KeyCheck::Succeeded(prev)) => {
                    self.finish_duplicate(&t, k, prev);
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "Idempotency key check failed; running anyway.")
                }
            }
        }
        if let Err(e) = inner.store.mark_running(t.log_id, key.map(|(k, _)| k)) {
            tracing::error!(error = %e, log_id = %t.log_id, "Cannot mark the run started.");
        }
        // "Running" must be on disk before the handler starts: that is what makes a crash
        // during the run end in an "interrupted" callback instead of a second execution.
        if let Err(e) = inner.store.durable().await {
            tracing::error!(error = %e, log_id = %t.log_id, "Cannot flush the journal before a run.");
        }
        inner.metrics.executing.inc();
        let log = RunLog::open(&inner.store, t.log_id, inner.store.max_log_bytes_per_run());
        // The trace id first, so the admin's log view leads to the trace.
        if let Some(r) = crate::telemetry::traces::span_ref(&span) {
            let trace_id = r.split('-').next().unwrap_or("");
            log.system(&format!("<br>----------- xxl-edge trace_id={trace_id}"));
        }
        log.system(&format!(
            "<br>----------- xxl-job job execute start -----------<br>----------- Param:{}",
            t.params.as_deref().unwrap_or("null")
        ));
        let started = Instant::now();
        let cancel = w.stop.child_token();
        let ctx = JobContext::new(&t, JobLog::new(Arc::new(log.clone())), cancel.clone());
        let mut task: JoinHandle<Outcome> = tokio::spawn(tracing::Instrument::instrument(
            w.handler.call(ctx),
            span.clone(),
        ));

        enum End {
            Done(Result<Outcome, tokio::task::JoinError>),
            Timeout,
            Stopped,
        }
        let timeout = t.timeout;
        let end = tokio::select! {
            r = &mut task => End::Done(r),
            () = async {
                match timeout {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            } => End::Timeout,
            () = w.stop.cancelled() => End::Stopped,
        };
        let grace = inner.cfg.kill_grace;
        let (mut outcome, mut kind) = match end {
            End::Done(Ok(o)) => {
                let o = o.normalized();
                let k = if o.is_success() {
                    OutcomeKind::Success
                } else {
                    OutcomeKind::Failed
                };
                (o, k)
            }
            End::Done(Err(e)) => {
                let msg = panic_message(e);
                log.system(&format!(
                    "<br>----------- JobThread Exception:{msg}<br>----------- xxl-job job execute end(error) -----------"
                ));
                (Outcome::fail(msg), OutcomeKind::Failed)
            }
            End::Timeout => {
                log.system("<br>----------- xxl-job job execute timeout");
                cancel.cancel();
                wind_down(task, grace).await;
                (
                    Outcome::code(CODE_TIMEOUT, Some(reason::TIMEOUT.into())),
                    OutcomeKind::Timeout,
                )
            }
            End::Stopped => {
                wind_down(task, grace).await;
                (Outcome::success(), OutcomeKind::Killed)
            }
        };
        if w.stop.is_cancelled() {
            // Killed or replaced: the reference reports the stop reason even if the handler
            // happened to finish at the same moment.
            let reason = w.reason();
            log.system(&format!(
                "<br>----------- JobThread toStop, stopReason:{reason}"
            ));
            outcome = Outcome::fail(format!("{reason}{}", reason::RUNNING_SUFFIX));
            kind = OutcomeKind::Killed;
        }
        log.system(&format!(
            "<br>----------- xxl-job job execute end(finish) -----------<br>----------- Result: handleCode={}, handleMsg = {}",
            outcome.code,
            outcome.msg.as_deref().unwrap_or("null")
        ));
        inner.metrics.executing.dec();
        span.record("xxl.job.outcome.code", outcome.code);
        span.record("xxl.job.outcome", kind.as_str());
        if !outcome.is_success() {
            span.record("otel.status_code", "ERROR");
        }
        self.record(&t, &outcome, kind, Some(started.elapsed()));
        // Not waited for: the next group commit carries it (the reporter waits for one before
        // it sends the callback), and a crash before then reports the run as interrupted,
        // never as run twice.
        inner.store.flush_soon();
    }
}

/// Gives a cancelled handler the kill grace (plus a margin for a command's SIGKILL) to return,
/// then aborts it; an aborted command's process group is killed by its drop guard.
async fn wind_down(mut task: JoinHandle<Outcome>, grace: Duration) {
    let bound = grace + Duration::from_secs(1);
    if tokio::time::timeout(bound, &mut task).await.is_err() {
        task.abort();
        let _ = task.await;
    }
}

fn panic_message(e: tokio::task::JoinError) -> String {
    if e.is_cancelled() {
        return "job handler was cancelled".into();
    }
    let payload = e.into_panic();
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-text panic payload".into());
    format!("job handler panicked: {text}")
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

impl Worker {
    fn new(job_id: JobId, resolved: Resolved, handler: Handler) -> Arc<Self> {
        Arc::new(Self {
            job_id,
            resolved,
            handler,
            state: Mutex::new(WorkerState::default()),
            wake: Notify::new(),
            stop: CancellationToken::new(),
        })
    }

    fn push(&self, q: Queued) {
        let mut st = lock(&self.state);
        st.queued_ids.insert(q.trigger.log_id);
        st.queue.push_back(q);
        drop(st);
        self.wake.notify_one();
    }

    fn take_back(&self, id: LogId) -> bool {
        let mut st = lock(&self.state);
        if let Some(pos) = st.queue.iter().position(|q| q.trigger.log_id == id) {
            st.queue.remove(pos);
            st.queued_ids.remove(&id);
            return true;
        }
        false
    }

    /// Stops the worker and hands back its queued triggers (to be called back as killed).
    fn stop_with(&self, why: &str) -> Vec<Queued> {
        let mut st = lock(&self.state);
        if st.stop_reason.is_none() {
            st.stop_reason = Some(why.to_string());
        }
        st.queued_ids.clear();
        let q: Vec<Queued> = st.queue.drain(..).collect();
        drop(st);
        self.stop.cancel();
        q
    }

    fn reason(&self) -> String {
        lock(&self.state).stop_reason.clone().unwrap_or_default()
    }
}

/// A run's log in the store, line-numbered, with a byte cap for handler output.
#[derive(Clone)]
pub(crate) struct RunLog {
    inner: Arc<RunLogInner>,
}

struct RunLogInner {
    store: Store,
    log_id: LogId,
    next: AtomicU32,
    bytes: AtomicU64,
    cap: u64,
    truncated: AtomicBool,
}

impl RunLog {
    /// Continues a run's log after its last line (a re-run or recovery appends).
    pub(crate) fn open(store: &Store, log_id: LogId, cap: u64) -> Self {
        let last = store.last_log_line(log_id).unwrap_or(0);
        Self {
            inner: Arc::new(RunLogInner {
                store: store.clone(),
                log_id,
                next: AtomicU32::new(last + 1),
                bytes: AtomicU64::new(0),
                cap,
                truncated: AtomicBool::new(false),
            }),
        }
    }

    fn append(&self, text: &str) {
        let n = self.inner.next.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.inner.store.append_log(self.inner.log_id, n, text) {
            tracing::warn!(error = %e, log_id = %self.inner.log_id, "Cannot write a run log line.");
        }
    }

    /// The executor's own lines (start, end, kill): never dropped by the cap.
    pub(crate) fn system(&self, text: &str) {
        let ts = crate::clock::format_ts(crate::clock::now_ms());
        for (i, l) in text.split('\n').enumerate() {
            if i == 0 {
                self.append(&format!("{ts} [xxl-edge] {l}"));
            } else {
                self.append(l);
            }
        }
    }
}

impl LogSink for RunLog {
    fn write_line(&self, line: &str) {
        let used = self
            .inner
            .bytes
            .fetch_add(line.len() as u64 + 1, Ordering::Relaxed);
        if used + line.len() as u64 + 1 > self.inner.cap {
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
