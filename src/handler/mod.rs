//! What runs a trigger: the [`JobHandler`] trait, the [`JobContext`] a handler gets, and the
//! registry of named handlers. Rust closures, configured commands and GLUE scripts all end up
//! as a `JobHandler`, so the runner treats them alike.
//!
//! This module knows nothing of HTTP or sled: the run log is a [`LogSink`] the runner provides.

mod process;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock;
use crate::job::{JobId, LogId, Outcome, Trigger};

pub use process::{CommandHandler, ScriptHandler};

/// A boxed future, as handlers return it.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Where a run's log lines go. The runner implements it on top of the store.
pub trait LogSink: Send + Sync {
    /// Appends one line (no terminator).
    fn write_line(&self, line: &str);
}

/// A writer into one run's log; cheap to clone into spawned tasks.
#[derive(Clone)]
pub struct JobLog {
    sink: Arc<dyn LogSink>,
}

impl fmt::Debug for JobLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JobLog")
    }
}

impl JobLog {
    /// Wraps a sink.
    pub fn new(sink: Arc<dyn LogSink>) -> Self {
        Self { sink }
    }

    /// Logs a message with the reference's timestamp prefix; each line of a multi-line message
    /// becomes its own log line, so `/log` line numbers match what a reader sees.
    pub fn log(&self, msg: impl AsRef<str>) {
        let ts = clock::format_ts(clock::now_ms());
        let mut lines = msg.as_ref().split('\n');
        let first = lines.next().unwrap_or("");
        self.sink
            .write_line(&format!("{ts} [xxl-edge] {}", first.trim_end_matches('\r')));
        for l in lines {
            self.sink.write_line(l.trim_end_matches('\r'));
        }
    }

    /// Appends output as it is (command and script output, like the reference).
    pub fn raw(&self, line: &str) {
        self.sink.write_line(line);
    }
}

/// Everything a handler gets for one run.
#[derive(Debug, Clone)]
pub struct JobContext {
    /// The job.
    pub job_id: JobId,
    /// The run.
    pub log_id: LogId,
    /// `executorParams`; `None` when the admin sent null.
    pub params: Option<String>,
    /// Shard index (`broadcastIndex`).
    pub shard_index: i32,
    /// Shard total (`broadcastTotal`).
    pub shard_total: i32,
    /// The admin's trigger time, epoch ms.
    pub log_date_time: i64,
    log: JobLog,
    cancel: CancellationToken,
}

impl JobContext {
    /// Builds a context; the runner does this, and so can tests of a handler.
    pub fn new(trigger: &Trigger, log: JobLog, cancel: CancellationToken) -> Self {
        Self {
            job_id: trigger.job_id,
            log_id: trigger.log_id,
            params: trigger.params.clone(),
            shard_index: trigger.shard_index,
            shard_total: trigger.shard_total,
            log_date_time: trigger.log_date_time,
            log,
            cancel,
        }
    }

    /// The parameter, `""` when absent.
    pub fn param(&self) -> &str {
        self.params.as_deref().unwrap_or("")
    }

    /// Writes a line into this run's log (visible in the admin's log view).
    pub fn log(&self, msg: impl AsRef<str>) {
        self.log.log(msg);
    }

    /// The log writer, for tasks the handler spawns.
    pub fn logger(&self) -> JobLog {
        self.log.clone()
    }

    /// Cancelled on kill, timeout or shutdown. A handler that ignores it is aborted at its next
    /// `.await` once the kill grace has passed.
    pub fn cancel_token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Completes when the run is cancelled.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }

    /// True once the run is cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

/// What a handler's future may return: an [`Outcome`], `()`, or a `Result` of either.
pub trait IntoOutcome {
    /// Converts into the admin's result.
    fn into_outcome(self) -> Outcome;
}

impl IntoOutcome for Outcome {
    fn into_outcome(self) -> Outcome {
        self
    }
}

impl IntoOutcome for () {
    fn into_outcome(self) -> Outcome {
        Outcome::success()
    }
}

impl<T: IntoOutcome, E: fmt::Display> IntoOutcome for Result<T, E> {
    fn into_outcome(self) -> Outcome {
        match self {
            Ok(t) => t.into_outcome(),
            Err(e) => Outcome::fail(e.to_string()),
        }
    }
}

/// Runs one trigger. Implemented for async closures `Fn(JobContext) -> impl Future`.
pub trait JobHandler: Send + Sync + 'static {
    /// Runs the work; the outcome is what the admin is told.
    fn call(&self, ctx: JobContext) -> BoxFuture<Outcome>;
}

impl<F, Fut, R> JobHandler for F
where
    F: Fn(JobContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: IntoOutcome,
{
    fn call(&self, ctx: JobContext) -> BoxFuture<Outcome> {
        let fut = (self)(ctx);
        Box::pin(async move { fut.await.into_outcome() })
    }
}

/// Derives an idempotency key from a trigger; `None` means "no key for this one".
pub type KeyFn = Arc<dyn Fn(&Trigger) -> Option<String> + Send + Sync>;

/// A registered handler with its durability options.
#[derive(Clone)]
pub struct Handler {
    run: Arc<dyn JobHandler>,
    rerun_safe: bool,
    key: Option<(KeyFn, Duration)>,
}

impl fmt::Debug for Handler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handler")
            .field("rerun_safe", &self.rerun_safe)
            .field("idempotent", &self.key.is_some())
            .finish()
    }
}

impl Handler {
    /// Wraps a handler with default options (not re-run after a crash, no idempotency key).
    pub fn new(h: impl JobHandler) -> Self {
        Self {
            run: Arc::new(h),
            rerun_safe: false,
            key: None,
        }
    }

    /// Declares the handler safe to run again when a crash interrupted it: after a restart the
    /// interrupted run executes again instead of being reported as failed.
    #[must_use]
    pub fn rerun_safe(mut self, yes: bool) -> Self {
        self.rerun_safe = yes;
        self
    }

    /// Gives triggers a business key: a second trigger with the key of a run that succeeded
    /// within `ttl` is not executed but called back as success.
    #[must_use]
    pub fn idempotency_key(
        mut self,
        f: impl Fn(&Trigger) -> Option<String> + Send + Sync + 'static,
        ttl: Duration,
    ) -> Self {
        self.key = Some((Arc::new(f), ttl));
        self
    }

    /// Runs the handler.
    pub fn call(&self, ctx: JobContext) -> BoxFuture<Outcome> {
        self.run.call(ctx)
    }

    /// Whether an interrupted run may run again.
    pub fn is_rerun_safe(&self) -> bool {
        self.rerun_safe
    }

    /// The trigger's idempotency key and its time-to-live, if the handler has one.
    pub fn key_for(&self, t: &Trigger) -> Option<(String, Duration)> {
        let (f, ttl) = self.key.as_ref()?;
        f(t).map(|k| (k, *ttl))
    }

    /// Identity for "the job now names another handler" (protocol §4.2).
    pub fn same_as(&self, other: &Handler) -> bool {
        Arc::ptr_eq(&self.run, &other.run)
    }
}

/// Named handlers, fixed once the executor is built (so metric labels stay bounded).
#[derive(Debug, Clone, Default)]
pub struct Registry {
    handlers: HashMap<String, Handler>,
}

impl Registry {
    /// Adds or replaces a handler.
    pub fn insert(&mut self, name: impl Into<String>, h: Handler) {
        self.handlers.insert(name.into(), h);
    }

    /// Looks a handler up.
    pub fn get(&self, name: &str) -> Option<&Handler> {
        self.handlers.get(name)
    }

    /// Handler names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<_> = self.handlers.keys().cloned().collect();
        v.sort();
        v
    }
}

/// Renders a key or argv template: `{jobId}`, `{logId}`, `{params}`, `{shardIndex}`,
/// `{shardTotal}`.
pub fn render_template(tpl: &str, t: &Trigger) -> String {
    tpl.replace("{jobId}", &t.job_id.to_string())
        .replace("{logId}", &t.log_id.to_string())
        .replace("{params}", t.params.as_deref().unwrap_or(""))
        .replace("{shardIndex}", &t.shard_index.to_string())
        .replace("{shardTotal}", &t.shard_total.to_string())
}
