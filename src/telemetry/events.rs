//! Internal events: errors the executor can only log (no caller to return them to) are also
//! counted, so an alert sees what otherwise only a log reader would. One call site does both,
//! as in Vector's `emit!`: a logged-only error cannot be added by forgetting the counter, and a
//! counted one always says why in the log.
//!
//! ```ignore
//! internal_error!(metrics, Op::MarkRunning, e, "Cannot mark the run started.", log_id = %t.log_id);
//! ```

use super::Metrics;

/// What the executor was doing when an error it could only log happened: the `op` label of
/// `xxl_edge_internal_errors_total`. A closed set, so the label stays bounded and every series
/// can exist (at 0) from the start, which `increase()` needs to see the first error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// Writing or taking back a run's journal record (`insert_accepted`, `forget_accepted`).
    JournalWrite,
    /// Checking or taking an idempotency key before a run.
    KeyCheck,
    /// Marking a run started in the journal.
    MarkRunning,
    /// A group commit (`durable`, `synced`): what was written is not known to be on disk.
    Flush,
    /// Recording a run's outcome and queueing its callback (`finish`).
    RecordOutcome,
    /// Storing a run-log line.
    LogWrite,
    /// Writing, listing or removing a GLUE script file.
    GlueWrite,
    /// Reading the callback outbox.
    OutboxRead,
    /// Removing delivered callbacks from the outbox.
    OutboxAck,
    /// Pruning finished runs (retention, byte budget).
    Prune,
    /// Writing the state snapshot that `xxl-edge state` reads.
    Snapshot,
    /// A background task (worker loop, maintenance, a blocking store job) panicked or was lost.
    TaskPanic,
}

impl Op {
    /// Every value, for pre-creating the series.
    pub const ALL: &'static [Op] = &[
        Op::JournalWrite,
        Op::KeyCheck,
        Op::MarkRunning,
        Op::Flush,
        Op::RecordOutcome,
        Op::LogWrite,
        Op::GlueWrite,
        Op::OutboxRead,
        Op::OutboxAck,
        Op::Prune,
        Op::Snapshot,
        Op::TaskPanic,
    ];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::JournalWrite => "journal_write",
            Self::KeyCheck => "key_check",
            Self::MarkRunning => "mark_running",
            Self::Flush => "flush",
            Self::RecordOutcome => "record_outcome",
            Self::LogWrite => "log_write",
            Self::GlueWrite => "glue_write",
            Self::OutboxRead => "outbox_read",
            Self::OutboxAck => "outbox_ack",
            Self::Prune => "prune",
            Self::Snapshot => "snapshot",
            Self::TaskPanic => "task_panic",
        }
    }
}

/// Counts one internal error: the counting half of the `internal_error!` macro, which callers
/// use instead so that the error is logged too.
pub(crate) fn count(metrics: &Metrics, op: Op) {
    metrics
        .internal_errors
        .with_label_values(&[op.as_str()])
        .inc();
}

/// Logs an error at ERROR level, with `op` and `error` as fields, and counts it in
/// `xxl_edge_internal_errors_total{op}`.
///
/// `internal_error!(metrics, op, error, "Message.")`, optionally followed by more `tracing`
/// fields: `internal_error!(metrics, Op::Flush, e, "Cannot flush.", log_id = %id)`.
/// `metrics` is a `Metrics` or a reference to one; `error` anything that is `Display`.
/// A macro rather than a function so the log line keeps the caller's module as its target
/// (`RUST_LOG=xxl_edge::report=...` still selects it) and its file and line.
macro_rules! internal_error {
    ($metrics:expr, $op:expr, $error:expr, $message:literal $(, $($field:tt)+)?) => {{
        let op: $crate::telemetry::events::Op = $op;
        $crate::telemetry::events::count(&$metrics, op);
        ::tracing::error!(op = op.as_str(), error = %$error, $($($field)+,)? $message);
    }};
}
pub(crate) use internal_error;

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::io;

    use super::*;

    fn counted(m: &Metrics, op: Op) -> u64 {
        m.internal_errors.with_label_values(&[op.as_str()]).get()
    }

    #[test]
    fn label_values_are_distinct_snake_case_and_all_listed() {
        let mut seen = HashSet::new();
        for op in Op::ALL {
            let s = op.as_str();
            assert!(seen.insert(s), "{s} twice");
            assert!(
                s.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{s} is not snake_case"
            );
        }
        // `ALL` lists every variant: adding one without listing it fails to compile here.
        for op in Op::ALL {
            match op {
                Op::JournalWrite
                | Op::KeyCheck
                | Op::MarkRunning
                | Op::Flush
                | Op::RecordOutcome
                | Op::LogWrite
                | Op::GlueWrite
                | Op::OutboxRead
                | Op::OutboxAck
                | Op::Prune
                | Op::Snapshot
                | Op::TaskPanic => {}
            }
        }
        assert_eq!(Op::ALL.len(), 12);
    }

    #[test]
    fn every_op_series_exists_at_zero_before_any_error() {
        let m = Metrics::new().unwrap();
        let out = m.render();
        for op in Op::ALL {
            let line = format!("xxl_edge_internal_errors_total{{op=\"{}\"}} 0", op.as_str());
            assert!(out.contains(&line), "missing {line}");
        }
    }

    #[test]
    fn the_macro_counts_under_its_op_only_and_takes_extra_fields() {
        let m = Metrics::new().unwrap();
        let e = io::Error::other("disk on fire");
        internal_error!(m, Op::Flush, e, "Cannot flush the journal.");
        internal_error!(&m, Op::Flush, &e, "Cannot flush the journal.", log_id = 7, n = %"x");
        internal_error!(m, Op::OutboxAck, "a plain message", "Cannot ack.");
        assert_eq!(counted(&m, Op::Flush), 2);
        assert_eq!(counted(&m, Op::OutboxAck), 1);
        let others: u64 = Op::ALL
            .iter()
            .filter(|o| !matches!(o, Op::Flush | Op::OutboxAck))
            .map(|o| counted(&m, *o))
            .sum();
        assert_eq!(others, 0);
    }

    /// Collects what a `fmt` subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_macro_logs_at_error_with_op_error_fields_and_the_callers_target() {
        let buf = Captured::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::TRACE)
            .finish();
        let m = Metrics::new().unwrap();
        tracing::subscriber::with_default(subscriber, || {
            let e = io::Error::other("disk on fire");
            internal_error!(
                m,
                Op::MarkRunning,
                e,
                "Cannot mark the run started.",
                log_id = 42
            );
        });
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(out.contains("ERROR"), "{out}");
        assert!(out.contains("xxl_edge::telemetry::events::tests"), "{out}");
        assert!(out.contains("Cannot mark the run started."), "{out}");
        assert!(out.contains("op=\"mark_running\""), "{out}");
        assert!(out.contains("error=disk on fire"), "{out}");
        assert!(out.contains("log_id=42"), "{out}");
        assert_eq!(counted(&m, Op::MarkRunning), 1);
    }
}
