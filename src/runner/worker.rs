//! A job's worker: its queue, its task, and the execution of one run under kill, timeout and
//! shutdown (protocol §4.1, §4.3, §4.4).

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::admission::JobView;
use super::{lock, Resolved, Runner};
use crate::handler::{Handler, JobContext, JobLog};
use crate::job::{reason, JobId, LogId, Outcome, OutcomeKind, Trigger, CODE_TIMEOUT};
use crate::store::StoreError;
use crate::telemetry::events::Op;

/// One job's worker. It lives in the runner's map until it is stopped or reclaimed.
pub(super) struct Worker {
    pub(super) job_id: JobId,
    pub(super) resolved: Resolved,
    handler: Handler,
    state: Mutex<WorkerState>,
    wake: Notify,
    pub(super) stop: CancellationToken,
    /// The runner's count of busy jobs in its map; this worker adds one while it is busy and
    /// in the map (`WorkerState::counted`).
    busy_jobs: Arc<AtomicUsize>,
}

#[derive(Default)]
struct WorkerState {
    queue: VecDeque<Queued>,
    queued_ids: HashSet<LogId>,
    running: Option<LogId>,
    stop_reason: Option<String>,
    /// This worker is counted in `busy_jobs`.
    counted: bool,
}

impl WorkerState {
    fn busy(&self) -> bool {
        self.running.is_some() || !self.queue.is_empty()
    }
}

/// A trigger waiting for its turn.
pub(super) struct Queued {
    pub(super) trigger: Trigger,
    /// `/run` says here whether the acceptance reached the disk; `None` for triggers that were
    /// accepted before (recovery). A trigger whose `/run` was refused is never run.
    admitted: Option<oneshot::Receiver<bool>>,
    /// `/run` wrote it to the journal as running already (it was to start at once): the
    /// acceptance and the "running" mark are one write and one flush.
    marked: bool,
    accepted_at: Instant,
    /// The `/run` request's span: the run's span is its child, so one trace per trigger.
    span: tracing::Span,
    /// Open while the trigger waits; closed when it starts.
    wait_span: tracing::Span,
}

impl Queued {
    pub(super) fn new(
        trigger: Trigger,
        admitted: Option<oneshot::Receiver<bool>>,
        marked: bool,
    ) -> Self {
        let span = tracing::Span::current();
        let wait_span = tracing::debug_span!(parent: &span, "job.queue", otel.kind = "internal");
        Self {
            trigger,
            admitted,
            marked,
            accepted_at: Instant::now(),
            span,
            wait_span,
        }
    }
}

impl Worker {
    pub(super) fn new(
        job_id: JobId,
        resolved: Resolved,
        handler: Handler,
        busy_jobs: Arc<AtomicUsize>,
    ) -> Arc<Self> {
        Arc::new(Self {
            job_id,
            resolved,
            handler,
            state: Mutex::new(WorkerState::default()),
            wake: Notify::new(),
            stop: CancellationToken::new(),
            busy_jobs,
        })
    }

    /// Keeps `busy_jobs` in step with this worker's state; `in_map` is false once it has been
    /// taken out of the runner's map (stopped or reclaimed).
    fn recount(&self, st: &mut WorkerState, in_map: bool) {
        let busy = in_map && st.busy();
        if busy != st.counted {
            st.counted = busy;
            if busy {
                self.busy_jobs.fetch_add(1, Ordering::AcqRel);
            } else {
                self.busy_jobs.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// True when a trigger pushed now would start at once, with no idempotency key to check
    /// first: `/run` then journals it as running in the same write as its acceptance.
    pub(super) fn starts_at_once(&self, t: &Trigger) -> bool {
        !lock(&self.state).busy() && self.handler.key_for(t).is_none()
    }

    /// Admission's view of this worker.
    pub(super) fn view(&self, log_id: LogId, same_handler: bool) -> JobView {
        let st = lock(&self.state);
        JobView {
            same_handler,
            busy: st.busy(),
            queued: st.queue.len(),
            holds_log_id: st.queued_ids.contains(&log_id),
        }
    }

    /// Called under the runner's map lock with this worker in the map.
    pub(super) fn push(&self, q: Queued) {
        let mut st = lock(&self.state);
        st.queued_ids.insert(q.trigger.log_id);
        st.queue.push_back(q);
        self.recount(&mut st, true);
        drop(st);
        self.wake.notify_one();
    }

    /// Stops the worker and hands back its queued triggers (to be called back as killed).
    /// Called once the worker is out of the runner's map.
    pub(super) fn stop_with(&self, why: &str) -> Vec<Queued> {
        let mut st = lock(&self.state);
        if st.stop_reason.is_none() {
            st.stop_reason = Some(why.to_string());
        }
        st.queued_ids.clear();
        let q: Vec<Queued> = st.queue.drain(..).collect();
        self.recount(&mut st, false);
        drop(st);
        self.stop.cancel();
        q
    }

    pub(super) fn reason(&self) -> String {
        lock(&self.state).stop_reason.clone().unwrap_or_default()
    }

    pub(super) fn busy(&self) -> bool {
        lock(&self.state).busy()
    }

    pub(super) fn is_running(&self) -> bool {
        lock(&self.state).running.is_some()
    }

    pub(super) fn queue_len(&self) -> usize {
        lock(&self.state).queue.len()
    }
}

/// What [`Runner::prepare_run`] found.
enum Prep {
    /// Start the handler.
    Run,
    /// The idempotency key matched a success (recorded as a duplicate), or the fleet's Redis
    /// said another device holds it or could not be reached (recorded as failed).
    Duplicate,
    /// `/run` refused the trigger after all: it never runs and leaves no callback.
    Refused,
    /// A store error: the run fails without starting.
    Failed(Op, &'static str, StoreError),
}

enum End {
    Done(Result<Outcome, Panic>),
    Timeout,
    /// Done, but after its timeout (see `run_traced`).
    Overran,
    Stopped,
}

impl Runner {
    pub(super) fn spawn_worker(&self, w: Arc<Worker>) {
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
                    let jobs = lock(&self.inner.jobs);
                    let in_map = jobs.get(&w.job_id).is_some_and(|cur| Arc::ptr_eq(cur, &w));
                    let mut st = lock(&w.state);
                    st.running = None;
                    w.recount(&mut st, in_map);
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

    /// Waits for `/run` to know whether the acceptance is on disk. A refused trigger is dropped
    /// (and taken out of the journal); one whose request went away before it knew is run only
    /// once a flush has succeeded.
    async fn admitted(&self, admitted: Option<oneshot::Receiver<bool>>, id: LogId) -> bool {
        let Some(rx) = admitted else {
            return true;
        };
        let ok = match rx.await {
            Ok(ok) => ok,
            Err(_) => self.inner.store.durable().await.is_ok(),
        };
        if !ok {
            self.forget(id);
        }
        ok
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
            admitted,
            marked,
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
            otel.status_description = tracing::field::Empty,
            error.type = tracing::field::Empty,
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
        self.run_traced(
            w,
            trigger,
            (admitted, marked),
            accepted_at,
            run_span.clone(),
        )
        .instrument(run_span)
        .await;
    }

    /// Everything the journal needs before a handler may start: the trigger's admission, the
    /// idempotency key, the "running" mark, and all of it on disk.
    ///
    /// The "running" mark is written before the admission is known so that its flush is the
    /// same group commit as the one `/run` waits for (one flush per run, not two in a row); a
    /// refused trigger is then taken out of the journal before anything ran. A handler with an
    /// idempotency key waits for the admission first: a refused trigger must leave no
    /// "duplicate" callback behind.
    async fn prepare_run(
        &self,
        w: &Worker,
        t: &Trigger,
        (admitted, marked): (Option<oneshot::Receiver<bool>>, bool),
    ) -> Prep {
        let store = &self.inner.store;
        let key = w.handler.key_for(t);
        if marked && key.is_none() {
            // Journaled as running by `/run`, in the write its flush carries.
            return if self.admitted(admitted, t.log_id).await {
                Prep::Run
            } else {
                Prep::Refused
            };
        }
        let mut admitted = Some(admitted);
        if let Some((k, ttl)) = &key {
            if !self.admitted(admitted.take().flatten(), t.log_id).await {
                return Prep::Refused;
            }
            match self.take_key(t, k, *ttl).await {
                Ok(true) => {}
                Ok(false) => return Prep::Duplicate,
                Err(e) => return Prep::Failed(Op::KeyCheck, "check its idempotency key", e),
            }
        }
        if let Err(e) = store.mark_running(t.log_id, key.map(|(k, _)| k)) {
            return Prep::Failed(Op::MarkRunning, "mark it started", e);
        }
        let written = store.flush_epoch();
        // "Running" must be on disk before the handler starts: that is what makes a crash
        // during the run end in an "interrupted" callback instead of a second execution.
        if let Err(e) = store.durable_since(written).await {
            if let Some(a) = admitted.take() {
                if !self.admitted(a, t.log_id).await {
                    return Prep::Refused;
                }
            }
            return Prep::Failed(Op::Flush, "flush its start to disk", e);
        }
        if let Some(a) = admitted.take() {
            if !self.admitted(a, t.log_id).await {
                return Prep::Refused;
            }
        }
        Prep::Run
    }

    async fn run_traced(
        &self,
        w: &Worker,
        t: Trigger,
        admitted: (Option<oneshot::Receiver<bool>>, bool),
        accepted_at: Instant,
        span: tracing::Span,
    ) {
        let inner = &self.inner;
        let label = self.label(&t);
        inner
            .metrics
            .queue_wait
            .with_label_values(&[&label])
            .observe(accepted_at.elapsed().as_secs_f64());
        // Accepted by this process's `/run` (not recovered): its log is new.
        let log = if admitted.0.is_some() {
            inner.logs.open_new(t.log_id)
        } else {
            inner.logs.open(t.log_id)
        };
        match self.prepare_run(w, &t, admitted).await {
            Prep::Run => {}
            Prep::Duplicate | Prep::Refused => return,
            Prep::Failed(op, what, e) => {
                self.store_failed(op, what, &e);
                let msg = format!(
                    "xxl-edge could not {what} in its run journal, so the handler was not run: {e}"
                );
                log.note(&msg);
                let outcome = Outcome::fail(msg);
                log.end(&outcome);
                self.record_with_log(&t, &outcome, OutcomeKind::Failed, None, Some(&log));
                return;
            }
        }
        if w.stop.is_cancelled() {
            // Stopped while its acceptance was being flushed: it was taken, so it is the
            // "running" one of the stopped worker; the handler is not started.
            let reason = w.reason();
            log.stopped(&reason);
            let outcome = Outcome::fail(format!("{reason}{}", reason::RUNNING_SUFFIX));
            log.end(&outcome);
            self.record_with_log(&t, &outcome, OutcomeKind::Killed, None, Some(&log));
            return;
        }
        inner.metrics.executing.inc();
        // The trace id first, so the admin's log view leads to the trace (only when the trace
        // is exported: an unsampled one would be a dead link).
        let trace_id = crate::telemetry::traces::trace_id(&span);
        if let Some(id) = &trace_id {
            log.trace_id(id);
        }
        crate::telemetry::runs::started((t.job_id.0, t.log_id.0, &label), trace_id.as_deref());
        log.start(t.params.as_deref());
        let started = Instant::now();
        let cancel = w.stop.child_token();
        let ctx = JobContext::new(&t, JobLog::new(Arc::new(log.clone())), cancel.clone());
        let mut task = handler_run(&w.handler, ctx, span.clone());

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
        // A handler that blocked its thread past its timeout returns before the timer could
        // fire: it timed out all the same, as the reference's `FutureTask.get(timeout)` says.
        let end = match end {
            End::Done(_) if timeout.is_some_and(|d| started.elapsed() >= d) => End::Overran,
            end => end,
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
                log.exception(&msg);
                (Outcome::fail(msg), OutcomeKind::Failed)
            }
            end @ (End::Timeout | End::Overran) => {
                log.timeout();
                if matches!(end, End::Timeout) {
                    cancel.cancel();
                    wind_down(task, grace).await;
                }
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
            log.stopped(&reason);
            outcome = Outcome::fail(format!("{reason}{}", reason::RUNNING_SUFFIX));
            kind = OutcomeKind::Killed;
        }
        log.end(&outcome);
        inner.metrics.executing.dec();
        span.record("xxl.job.outcome.code", outcome.code);
        span.record("xxl.job.outcome", kind.as_str());
        if !outcome.is_success() {
            span.record("otel.status_code", "ERROR");
            span.record("error.type", kind.as_str());
            // The run's message is the reason; recorded last, it also makes the status ERROR.
            let why = outcome.msg.as_deref().unwrap_or(kind.as_str());
            span.record(
                "otel.status_description",
                crate::telemetry::throttle::cut(why, 1024),
            );
        }
        // The log goes with the outcome, so that the flush of the outcome carries it (its
        // "callback finish" line is kept with the acknowledgement, see
        // `RunLogs::callback_finish`).
        self.record_with_log(&t, &outcome, kind, Some(started.elapsed()), Some(&log));
    }
}

/// A handler's run as the worker polls it, with its panic caught.
type HandlerRun = Pin<Box<dyn Future<Output = Result<Outcome, Panic>> + Send>>;

/// What a panicking handler left.
type Panic = Box<dyn std::any::Any + Send>;

/// The handler's run, polled by its worker instead of spawned as a task of its own: a task per
/// run cost an allocation, a hand-off to the runtime's queue and a wake-up of the worker at its
/// end, for a future the worker only waits on. A panic is caught here as the task's join did,
/// including one raised by the handler function before it returns its future.
fn handler_run(handler: &Handler, ctx: JobContext, span: tracing::Span) -> HandlerRun {
    use futures_util::FutureExt;
    use std::panic::AssertUnwindSafe;
    match std::panic::catch_unwind(AssertUnwindSafe(|| handler.call(ctx))) {
        Ok(fut) => {
            Box::pin(AssertUnwindSafe(tracing::Instrument::instrument(fut, span)).catch_unwind())
        }
        Err(p) => Box::pin(std::future::ready(Err(p))),
    }
}

/// Gives a cancelled handler the kill grace (plus a margin for a command's SIGKILL) to return,
/// then drops it; a dropped command's process group is killed by its drop guard.
async fn wind_down(task: HandlerRun, grace: Duration) {
    let bound = grace + Duration::from_secs(1);
    let _ = tokio::time::timeout(bound, task).await;
}

fn panic_message(payload: Panic) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-text panic payload".into());
    format!("job handler panicked: {text}")
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::handler::Registry;
    use crate::runlog::RunLogs;
    use crate::store::Store;

    /// Polls a condition of the worker's state (bounded): the worker reports no event of its own.
    async fn until(what: &str, cond: impl Fn() -> bool) {
        for _ in 0..2_000 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("never: {what}");
    }

    /// Issue 9 #12, deterministically: the worker has already taken the trigger when `/run`
    /// learns that its flush failed and refuses it. The handler must not run, and the trigger
    /// leaves the journal (so a restart does not run it either).
    #[tokio::test]
    async fn a_trigger_refused_after_its_worker_took_it_never_runs() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::config::Config::defaults();
        let store = Store::open(dir.path(), cfg.store.clone()).unwrap();
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        let handler = Handler::new(move |_ctx: JobContext| {
            let flag = flag.clone();
            async move {
                flag.store(true, Ordering::SeqCst);
                Outcome::success()
            }
        });
        let mut handlers = Registry::default();
        handlers.insert("h", handler.clone());
        let runner = super::super::tests::runner_for_test(
            &store,
            RunLogs::new(store.clone(), 1 << 20, |_| {}),
            handlers,
            dir.path(),
        );
        let t = Trigger::for_test(10);
        store.insert_accepted(&t, false).unwrap();
        let w = Worker::new(
            t.job_id,
            Resolved::Bean {
                handler: handler.clone(),
            },
            handler,
            runner.inner.busy_jobs.clone(),
        );
        let (admitted_tx, admitted_rx) = oneshot::channel();
        lock(&runner.inner.jobs).insert(t.job_id, w.clone());
        w.push(Queued::new(t.clone(), Some(admitted_rx), false));
        runner.spawn_worker(w.clone());
        until("the worker took the trigger", || w.is_running()).await;
        admitted_tx.send(false).unwrap();
        until("the worker let go of it", || !w.busy()).await;
        assert!(!ran.load(Ordering::SeqCst), "a refused trigger ran");
        assert!(!store.has_run(t.log_id).unwrap(), "still in the journal");
        assert_eq!(runner.inner.busy_jobs.load(Ordering::SeqCst), 0);
    }

    /// Runs each (logId, jobId, handler, timeout) through a runner on a new store; the runs'
    /// records once every callback waits.
    async fn records_after(
        handlers: Registry,
        runs: &[(i64, i32, &str, Option<Duration>)],
    ) -> Vec<crate::store::RunRecord> {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), crate::config::Config::defaults().store).unwrap();
        let runner = super::super::tests::runner_for_test(
            &store,
            RunLogs::new(store.clone(), 1 << 20, |_| {}),
            handlers,
            dir.path(),
        );
        store.recover().unwrap();
        for &(id, job, handler, timeout) in runs {
            let mut t = Trigger::for_test(id);
            t.job_id = JobId(job);
            t.handler = handler.into();
            t.timeout = timeout;
            runner.submit(t).await.unwrap();
        }
        until("every callback waits", || {
            store.outbox_len() == runs.len() as u64
        })
        .await;
        runs.iter()
            .map(|r| store.run(LogId(r.0)).unwrap().unwrap())
            .collect()
    }

    /// A handler that panics, in its future or before it returns one, fails its run with the
    /// panic's text, and its worker goes on with the job's next trigger.
    #[tokio::test]
    async fn a_panicking_handler_fails_its_run_and_its_worker_goes_on() {
        let mut handlers = Registry::default();
        handlers.insert(
            "later",
            Handler::new(|_ctx: JobContext| async {
                if std::hint::black_box(true) {
                    panic!("in its future");
                }
                Outcome::success()
            }),
        );
        handlers.insert(
            "at_once",
            Handler::new(|_ctx: JobContext| -> std::future::Ready<Outcome> {
                panic!("before its future")
            }),
        );
        let runs = [
            (1, 1, "later", None),
            (2, 2, "at_once", None),
            (3, 1, "later", None),
        ];
        let outcomes: Vec<_> = records_after(handlers, &runs)
            .await
            .into_iter()
            .map(|r| r.outcome.unwrap())
            .collect();
        let failed = |msg: &str| Outcome::fail(format!("job handler panicked: {msg}"));
        assert_eq!(
            outcomes,
            [
                failed("in its future"),
                failed("before its future"),
                // Job 1's worker ran its next trigger.
                failed("in its future"),
            ]
        );
    }

    /// A handler that blocks its thread past the trigger's timeout (no await for the timer to
    /// fire in) is reported as timed out when it returns, as the reference reports it; one that
    /// awaits is stopped at its timeout.
    #[tokio::test]
    async fn a_handler_that_overruns_its_timeout_times_out_blocking_or_not() {
        let mut handlers = Registry::default();
        handlers.insert(
            "blocks",
            Handler::new(|_ctx: JobContext| async {
                std::thread::sleep(Duration::from_millis(60));
                Outcome::success()
            }),
        );
        handlers.insert(
            "awaits",
            Handler::new(|ctx: JobContext| async move {
                ctx.cancelled().await;
                Outcome::success()
            }),
        );
        let timeout = Some(Duration::from_millis(20));
        let runs = [(1, 1, "blocks", timeout), (2, 2, "awaits", timeout)];
        for rec in records_after(handlers, &runs).await {
            let id = rec.trigger.log_id;
            assert_eq!(rec.kind, Some(OutcomeKind::Timeout), "{id}");
            assert_eq!(
                rec.outcome.unwrap(),
                Outcome::code(CODE_TIMEOUT, Some(reason::TIMEOUT.into())),
                "{id}"
            );
        }
    }

    /// A run's log goes to the store when the run ends, so the flush of its outcome carries
    /// it, whether it ran alone or beside another job.
    #[tokio::test]
    async fn a_runs_log_is_written_at_its_end_alone_or_not() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::config::Config::defaults();
        let store = Store::open(dir.path(), cfg.store.clone()).unwrap();
        let release = Arc::new(tokio::sync::Notify::new());
        let gate = release.clone();
        let mut handlers = Registry::default();
        handlers.insert(
            "h",
            Handler::new(|_ctx: JobContext| async { Outcome::success() }),
        );
        handlers.insert(
            "block",
            Handler::new(move |_ctx: JobContext| {
                let gate = gate.clone();
                async move {
                    gate.notified().await;
                    Outcome::success()
                }
            }),
        );
        let logs = RunLogs::new(store.clone(), 1 << 20, |_| {});
        let runner =
            super::super::tests::runner_for_test(&store, logs.clone(), handlers, dir.path());
        store.recover().unwrap();
        runner.submit(Trigger::for_test(1)).await.unwrap();
        until("run 1's callback waits", || store.outbox_len() == 1).await;
        assert_eq!(
            store.last_log_line(LogId(1)).unwrap(),
            2,
            "start and end lines"
        );

        let mut blocking = Trigger::for_test(2);
        blocking.job_id = crate::job::JobId(2);
        blocking.handler = "block".into();
        runner.submit(blocking).await.unwrap();
        until("job 2 runs", || {
            runner.inner.busy_jobs.load(Ordering::SeqCst) == 1
                && store.run(LogId(2)).unwrap().is_some()
        })
        .await;
        runner.submit(Trigger::for_test(3)).await.unwrap();
        until("run 3's callback waits", || store.outbox_len() == 2).await;
        assert_eq!(
            store.last_log_line(LogId(3)).unwrap(),
            2,
            "written beside job 2"
        );
        release.notify_one();
        until("job 2 ends", || store.outbox_len() == 3).await;
    }
}
