//! The executor's own log lines of a run's life, in one place so that every line has the
//! same fields (`job_id`, `log_id`, `handler`, `trace_id` when the trace is exported) and the
//! same levels: DEBUG for what happens on every run, INFO for refusals and kills, WARN for
//! failures and timeouts; lines a peer or a fault can repeat go through [`throttled!`].

use std::time::Duration;

use super::throttle::{cut, throttled};
use super::{LogKind, Metrics, TriggerResult};
use crate::job::{Outcome, OutcomeKind};

/// `(job_id, log_id, handler)` of a run.
pub(crate) type RunIds<'a> = (i32, i64, &'a str);

/// `/run` accepted the trigger (DEBUG) or refused it (INFO, rate-limited), in the request's
/// span. `refused` is the refusal's message.
pub(crate) fn submitted(
    metrics: &Metrics,
    (job_id, log_id, handler): RunIds<'_>,
    result: TriggerResult,
    refused: Option<&str>,
) {
    let trace_id = super::traces::trace_id(&tracing::Span::current());
    let trace_id = trace_id.as_deref();
    // The handler name is the admin's text: bounded in the line.
    let handler = cut(handler, 100);
    let result = result.as_str();
    match refused {
        None => tracing::debug!(
            job_id,
            log_id,
            handler,
            trace_id,
            result,
            "Trigger accepted."
        ),
        Some(msg) => throttled!(
            metrics,
            LogKind::TriggerRefused,
            info,
            job_id,
            log_id,
            handler,
            trace_id,
            result,
            msg = cut(msg, 300),
            "Trigger refused."
        ),
    }
}

/// A run's outcome was recorded: DEBUG for a success or a duplicate, INFO for a kill, WARN for
/// a failure, a timeout or an interrupted run (all but successes rate-limited together).
/// `trace` is the run's [`super::traces::span_ref`].
pub(crate) fn finished(
    metrics: &Metrics,
    (job_id, log_id, handler): RunIds<'_>,
    outcome: &Outcome,
    kind: OutcomeKind,
    ran: Option<Duration>,
    trace: Option<&str>,
) {
    let trace_id = trace.and_then(|r| r.split('-').next());
    let duration_ms = ran.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let code = outcome.code;
    let msg = cut(outcome.msg.as_deref().unwrap_or(""), 300);
    let outcome = kind.as_str();
    match kind {
        OutcomeKind::Success | OutcomeKind::Duplicate => tracing::debug!(
            job_id,
            log_id,
            handler,
            trace_id,
            outcome,
            code,
            duration_ms,
            "Run finished."
        ),
        OutcomeKind::Killed => throttled!(
            metrics,
            LogKind::RunFailed,
            info,
            job_id,
            log_id,
            handler,
            trace_id,
            outcome,
            code,
            duration_ms,
            msg,
            "Run killed."
        ),
        _ => throttled!(
            metrics,
            LogKind::RunFailed,
            warn,
            job_id,
            log_id,
            handler,
            trace_id,
            outcome,
            code,
            duration_ms,
            msg,
            "{}",
            if matches!(kind, OutcomeKind::Timeout) {
                "Run timed out."
            } else {
                "Run failed."
            }
        ),
    }
}

/// The handler's run started (DEBUG), in the run's span.
pub(crate) fn started((job_id, log_id, handler): RunIds<'_>, trace_id: Option<&str>) {
    tracing::debug!(job_id, log_id, handler, trace_id, "Run started.");
}
