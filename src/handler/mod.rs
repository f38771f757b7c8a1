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

pub use process::CommandHandler;
pub(crate) use process::{sweep_stale_param_dirs, ScriptHandler};

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
///
/// One pass over the template: a value that itself looks like a placeholder (params
/// `{shardIndex}`) is data the admin sent and is copied as it is, never expanded again, so two
/// different params can never render to the same key. Anything in braces that is not one of the
/// five names stays literal.
pub(crate) fn render_template(tpl: &str, t: &Trigger) -> String {
    Placeholders {
        job_id: t.job_id,
        log_id: t.log_id,
        params: t.params.as_deref().unwrap_or(""),
        shard_index: t.shard_index,
        shard_total: t.shard_total,
    }
    .render(tpl)
}

/// The values a template may name, borrowed from a trigger or a [`JobContext`] (so rendering
/// an argv does not copy the params once more).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Placeholders<'a> {
    pub(crate) job_id: JobId,
    pub(crate) log_id: LogId,
    pub(crate) params: &'a str,
    pub(crate) shard_index: i32,
    pub(crate) shard_total: i32,
}

impl<'a> Placeholders<'a> {
    /// The values of one run.
    pub(crate) fn of(ctx: &'a JobContext) -> Self {
        Self {
            job_id: ctx.job_id,
            log_id: ctx.log_id,
            params: ctx.param(),
            shard_index: ctx.shard_index,
            shard_total: ctx.shard_total,
        }
    }

    /// Expands the template in a single left-to-right scan; expanded text is never rescanned.
    pub(crate) fn render(&self, tpl: &str) -> String {
        use std::fmt::Write as _;
        let mut out = String::with_capacity(tpl.len());
        let mut rest = tpl;
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let after = &rest[open..];
            let name_end = after.find('}').map(|i| i + 1);
            let expanded = name_end.and_then(|end| {
                let v = match &after[..end] {
                    "{jobId}" => Value::Int(i64::from(self.job_id.0)),
                    "{logId}" => Value::Int(self.log_id.0),
                    "{params}" => Value::Str(self.params),
                    "{shardIndex}" => Value::Int(i64::from(self.shard_index)),
                    "{shardTotal}" => Value::Int(i64::from(self.shard_total)),
                    _ => return None,
                };
                Some((v, end))
            });
            match expanded {
                Some((Value::Str(s), end)) => {
                    out.push_str(s);
                    rest = &after[end..];
                }
                Some((Value::Int(n), end)) => {
                    // Writing into a String cannot fail.
                    let _ = write!(out, "{n}");
                    rest = &after[end..];
                }
                None => {
                    // Not a placeholder: keep the brace and scan on after it, so `{{params}`
                    // still finds the `{params}` inside.
                    out.push('{');
                    rest = &after[1..];
                }
            }
        }
        out.push_str(rest);
        out
    }

    /// Whether rendering `tpl` copies the params into it.
    pub(crate) fn names_params(tpl: &str) -> bool {
        tpl.contains("{params}")
    }
}

enum Value<'a> {
    Int(i64),
    Str(&'a str),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{BlockStrategy, Glue};

    fn trigger(params: Option<&str>, shard_index: i32) -> Trigger {
        Trigger {
            job_id: JobId(7),
            log_id: LogId(4001),
            log_date_time: 0,
            handler: "h".into(),
            params: params.map(str::to_string),
            block: BlockStrategy::Serial,
            timeout: None,
            glue: Glue::Bean,
            shard_index,
            shard_total: 5,
        }
    }

    #[test]
    fn every_placeholder_is_expanded() {
        let t = trigger(Some("p q"), 3);
        assert_eq!(
            render_template("{jobId}/{logId}/{params}/{shardIndex}/{shardTotal}", &t),
            "7/4001/p q/3/5"
        );
        assert_eq!(render_template("{params}{params}", &t), "p qp q");
        assert_eq!(render_template("no placeholders", &t), "no placeholders");
        assert_eq!(render_template("", &t), "");
    }

    #[test]
    fn null_params_render_empty() {
        assert_eq!(render_template("k:{params}:", &trigger(None, 0)), "k::");
    }

    #[test]
    fn params_that_look_like_placeholders_are_data() {
        for p in [
            "{shardIndex}",
            "{jobId}",
            "{logId}",
            "{shardTotal}",
            "{params}",
        ] {
            assert_eq!(render_template("{params}", &trigger(Some(p), 3)), p);
        }
        assert_eq!(
            render_template("a {params} b", &trigger(Some("{shardIndex}{jobId}"), 3)),
            "a {shardIndex}{jobId} b"
        );
    }

    #[test]
    fn keys_of_different_params_never_collide() {
        let tpl = "k:{params}";
        let literal = render_template(tpl, &trigger(Some("{shardIndex}"), 0));
        let zero = render_template(tpl, &trigger(Some("0"), 0));
        assert_eq!(literal, "k:{shardIndex}");
        assert_ne!(literal, zero);
    }

    #[test]
    fn unknown_and_unbalanced_braces_stay_literal() {
        let t = trigger(Some("P"), 1);
        assert_eq!(render_template("{nope}{params}", &t), "{nope}P");
        assert_eq!(render_template("{{params}}", &t), "{P}");
        assert_eq!(render_template("{params", &t), "{params");
        assert_eq!(render_template("}{", &t), "}{");
        assert_eq!(render_template("{ü}{jobId}€", &t), "{ü}7€");
    }
}
