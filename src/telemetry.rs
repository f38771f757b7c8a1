//! Metrics on an explicit Prometheus registry, and the executor's own log output.
//!
//! Labels are bounded by construction: handler names come from the fixed registry (unknown names
//! from the network are counted as `unknown`), outcomes and results are enums. Never a jobId,
//! logId, parameter or error text.

use std::time::Duration;

use std::sync::Arc;

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, Opts, Registry, TextEncoder,
};

#[cfg(target_os = "linux")]
pub mod cpu;
pub mod events;
pub mod export;
pub mod redact;
pub(crate) mod runs;
pub mod throttle;

pub use redact::redact_url;
pub use throttle::LogKind;

/// Why `/run` refused a trigger, or that it accepted it: the `result` label of
/// `xxl_edge_triggers_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TriggerResult {
    /// Accepted into the queue (and the journal).
    Accepted,
    /// An idempotency key matched a successful run: called back without running.
    DuplicateKey,
    /// The logId was already in the journal.
    DuplicateLogId,
    /// DISCARD_LATER while busy.
    Discarded,
    /// The job's queue is at `runner.max_queue_per_job`.
    QueueFull,
    /// `runner.max_running` jobs are executing.
    RunningLimit,
    /// The handler name is not registered.
    UnknownHandler,
    /// The GLUE kind is not in `glue.enabled`.
    GlueDisabled,
    /// The body did not parse or the glue type is invalid.
    Invalid,
    /// The disk is below `store.min_free_bytes`.
    DiskFull,
    /// The journal could not be written.
    StoreError,
    /// The executor is shutting down.
    ShuttingDown,
}

/// Every run outcome, for the series created at start. `outcomes_are_all_listed` fails to
/// compile when a kind is added and not listed here.
const OUTCOMES: [crate::job::OutcomeKind; 6] = {
    use crate::job::OutcomeKind as K;
    [
        K::Success,
        K::Failed,
        K::Timeout,
        K::Killed,
        K::Interrupted,
        K::Duplicate,
    ]
};

impl TriggerResult {
    /// Every value, for the series created at start.
    pub const ALL: [TriggerResult; 12] = [
        Self::Accepted,
        Self::DuplicateKey,
        Self::DuplicateLogId,
        Self::Discarded,
        Self::QueueFull,
        Self::RunningLimit,
        Self::UnknownHandler,
        Self::GlueDisabled,
        Self::Invalid,
        Self::DiskFull,
        Self::StoreError,
        Self::ShuttingDown,
    ];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::DuplicateKey => "duplicate_key",
            Self::DuplicateLogId => "duplicate_log_id",
            Self::Discarded => "discarded",
            Self::QueueFull => "queue_full",
            Self::RunningLimit => "running_limit",
            Self::UnknownHandler => "unknown_handler",
            Self::GlueDisabled => "glue_disabled",
            Self::Invalid => "invalid",
            Self::DiskFull => "disk_full",
            Self::StoreError => "store_error",
            Self::ShuttingDown => "shutting_down",
        }
    }
}

/// Every metric family the executor exports (histograms add `_bucket`, `_sum`, `_count`).
/// Dashboards and alert rules are checked against this list, so a rename breaks a test.
pub const METRIC_NAMES: &[&str] = &[
    "xxl_edge_build_info",
    "xxl_edge_triggers_total",
    "xxl_edge_runs_total",
    "xxl_edge_run_duration_seconds",
    "xxl_edge_queue_wait_seconds",
    "xxl_edge_runs_executing",
    "xxl_edge_triggers_queued",
    "xxl_edge_callbacks_total",
    "xxl_edge_callback_attempts_total",
    "xxl_edge_outbox_entries",
    "xxl_edge_outbox_oldest_age_seconds",
    "xxl_edge_admin_requests_total",
    "xxl_edge_admin_request_duration_seconds",
    "xxl_edge_registration_age_seconds",
    "xxl_edge_store_size_bytes",
    "xxl_edge_store_budget_bytes",
    "xxl_edge_store_flush_duration_seconds",
    "xxl_edge_internal_errors_total",
    "xxl_edge_http_requests_total",
    "xxl_edge_http_request_duration_seconds",
    "xxl_edge_http_token_refusals_total",
    "xxl_edge_trace_spans_total",
    "xxl_edge_keys_redis_calls_total",
    "xxl_edge_keys_redis_call_duration_seconds",
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_start_time_seconds",
    "process_threads",
];

/// Every metric the executor exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `xxl_edge_triggers_total{handler,result}`.
    pub triggers: IntCounterVec,
    /// `xxl_edge_runs_total{handler,outcome}`.
    pub runs: IntCounterVec,
    /// `xxl_edge_run_duration_seconds{handler}`.
    pub run_duration: HistogramVec,
    /// `xxl_edge_queue_wait_seconds{handler}`.
    pub queue_wait: HistogramVec,
    /// `xxl_edge_runs_executing`.
    pub executing: IntGauge,
    /// `xxl_edge_triggers_queued`.
    pub queued: IntGauge,
    /// `xxl_edge_callbacks_total{result}`: callbacks delivered, each counted once.
    pub callbacks: IntCounterVec,
    /// `xxl_edge_callback_attempts_total{result}`: batch sends, `ok` or `failed`.
    pub callback_attempts: IntCounterVec,
    /// `xxl_edge_outbox_entries`.
    pub outbox_entries: IntGauge,
    /// `xxl_edge_outbox_oldest_age_seconds`.
    pub outbox_oldest_age: Gauge,
    /// `xxl_edge_admin_requests_total{admin,call,result}`.
    pub admin_requests: IntCounterVec,
    /// `xxl_edge_admin_request_duration_seconds{admin,call}`.
    pub admin_latency: HistogramVec,
    /// `xxl_edge_registration_age_seconds{admin}`.
    pub registration_age: GaugeVec,
    /// `xxl_edge_store_size_bytes`.
    pub store_size: IntGauge,
    /// `xxl_edge_store_budget_bytes`: `store.max_bytes`, so alerts can compare.
    pub store_budget: IntGauge,
    /// `xxl_edge_store_flush_duration_seconds`.
    pub flush_duration: Histogram,
    /// `xxl_edge_internal_errors_total{op}`: see [`events`].
    pub internal_errors: IntCounterVec,
    /// `xxl_edge_keys_redis_calls_total{call,result}`: the fleet's key backend.
    pub keys_redis_calls: IntCounterVec,
    /// `xxl_edge_keys_redis_call_duration_seconds{call}`.
    pub keys_redis_latency: HistogramVec,
    /// `xxl_edge_http_requests_total{route,code}`: `route` is one of [`HTTP_ROUTES`].
    pub http_requests: IntCounterVec,
    /// `xxl_edge_http_request_duration_seconds{route}`.
    pub http_latency: HistogramVec,
    /// `xxl_edge_http_token_refusals_total`: requests refused for a missing or wrong token.
    pub token_refusals: IntCounter,
    /// `xxl_edge_trace_spans_total{result}`: `exported`, `failed` or `dropped`.
    pub trace_spans: IntCounterVec,
    /// Rate limits of the log lines a peer or a fault can repeat (one set per executor).
    pub throttle: Arc<throttle::Throttle>,
}

/// The `route` label values of the HTTP metrics: the executor's endpoints, and `other` for any
/// other request target (which is answered "not found"), so hostile paths add no series.
pub const HTTP_ROUTES: &[&str] = &[
    "/beat",
    "/idleBeat",
    "/run",
    "/trigger",
    "/kill",
    "/log",
    "other",
];

/// The `route` label of a request target.
pub fn http_route(target: &str) -> &'static str {
    HTTP_ROUTES
        .iter()
        .find(|r| **r == target)
        .copied()
        .unwrap_or("other")
}

/// The `code` label values of `xxl_edge_http_requests_total`: the envelope's code, 200 when the
/// request was served, 500 when it was refused (wrong token, unknown target, bad body, refused
/// trigger).
pub const HTTP_CODES: &[&str] = &["200", "500"];

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Run durations and queue waits, from milliseconds to 8 hours: at most 2 between bounds
/// from 1 s up (2.5 below), so a quantile read from them is off by less than half a bucket (a
/// 1 s timeout reads as p50 1.25 s, not 3 s as with a 1 to 5 s bucket). 28 buckets: the
/// exposition stays small on a slow uplink.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0,
    15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0,
];
const LATENCY_BUCKETS: &[f64] = &[0.001, 0.005, 0.025, 0.1, 0.5, 1.0, 3.0, 10.0];

impl Metrics {
    /// Creates every metric on a fresh registry.
    ///
    /// # Errors
    /// Only if two metrics had the same name (a programming error caught by tests).
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let r = &registry;
        let counter = |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<_> {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            r.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let hist = |name: &str, help: &str, labels: &[&str], b: &[f64]| -> prometheus::Result<_> {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(b.to_vec()), labels)?;
            r.register(Box::new(h.clone()))?;
            Ok(h)
        };
        let gauge = |name: &str, help: &str| -> prometheus::Result<_> {
            let g = IntGauge::new(name, help)?;
            r.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let flush_duration = Histogram::with_opts(
            HistogramOpts::new(
                "xxl_edge_store_flush_duration_seconds",
                "Duration of store flushes (group commits).",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        r.register(Box::new(flush_duration.clone()))?;
        let info = GaugeVec::new(
            Opts::new("xxl_edge_build_info", "Build information; always 1."),
            &["version"],
        )?;
        info.with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1.0);
        r.register(Box::new(info))?;
        let outbox_oldest_age = Gauge::new(
            "xxl_edge_outbox_oldest_age_seconds",
            "Age of the oldest callback waiting for an admin's acknowledgement.",
        )?;
        r.register(Box::new(outbox_oldest_age.clone()))?;
        let registration_age = GaugeVec::new(
            Opts::new(
                "xxl_edge_registration_age_seconds",
                "Seconds since the last successful registration with each admin.",
            ),
            &["admin"],
        )?;
        r.register(Box::new(registration_age.clone()))?;
        #[cfg(target_os = "linux")]
        r.register(Box::new(cpu::ProcessCollector::for_self()?))?;
        let token_refusals = IntCounter::new(
            "xxl_edge_http_token_refusals_total",
            "Requests refused because their access token was missing or wrong.",
        )?;
        r.register(Box::new(token_refusals.clone()))?;
        Ok(Self {
            triggers: counter(
                "xxl_edge_triggers_total",
                "Triggers received on /run, by handler and result (accepted or why refused).",
                &["handler", "result"],
            )?,
            runs: counter(
                "xxl_edge_runs_total",
                "Runs finished, by handler and outcome.",
                &["handler", "outcome"],
            )?,
            run_duration: hist(
                "xxl_edge_run_duration_seconds",
                "Time from handler start to outcome.",
                &["handler"],
                DURATION_BUCKETS,
            )?,
            queue_wait: hist(
                "xxl_edge_queue_wait_seconds",
                "Time from acceptance to handler start.",
                &["handler"],
                DURATION_BUCKETS,
            )?,
            executing: gauge("xxl_edge_runs_executing", "Runs executing now.")?,
            queued: gauge(
                "xxl_edge_triggers_queued",
                "Accepted triggers waiting to start.",
            )?,
            callbacks: counter(
                "xxl_edge_callbacks_total",
                "Callbacks an admin acknowledged (result=delivered), each counted once however many attempts it took.",
                &["result"],
            )?,
            callback_attempts: counter(
                "xxl_edge_callback_attempts_total",
                "Callback batch sends (up to 50 callbacks each, every admin tried in turn): ok or failed.",
                &["result"],
            )?,
            outbox_entries: gauge(
                "xxl_edge_outbox_entries",
                "Callbacks waiting in the durable outbox.",
            )?,
            outbox_oldest_age,
            admin_requests: counter(
                "xxl_edge_admin_requests_total",
                "Calls to admins, by admin, call and result.",
                &["admin", "call", "result"],
            )?,
            admin_latency: hist(
                "xxl_edge_admin_request_duration_seconds",
                "Latency of calls to admins.",
                &["admin", "call"],
                LATENCY_BUCKETS,
            )?,
            registration_age,
            store_size: gauge(
                "xxl_edge_store_size_bytes",
                "Size of the sled store on disk.",
            )?,
            store_budget: gauge(
                "xxl_edge_store_budget_bytes",
                "The store's byte budget (store.max_bytes); finished runs are pruned beyond it.",
            )?,
            flush_duration,
            internal_errors: counter(
                "xxl_edge_internal_errors_total",
                "Errors the executor could only log (store, worker), by operation.",
                &["op"],
            )?,
            keys_redis_calls: counter(
                "xxl_edge_keys_redis_calls_total",
                "Calls to the fleet's Redis for idempotency keys, by call (acquire, renew, settle) and result.",
                &["call", "result"],
            )?,
            keys_redis_latency: hist(
                "xxl_edge_keys_redis_call_duration_seconds",
                "Latency of calls to the fleet's Redis for idempotency keys, connection included.",
                &["call"],
                LATENCY_BUCKETS,
            )?,
            http_requests: counter(
                "xxl_edge_http_requests_total",
                "Requests to the executor's endpoints, by route and envelope code (500: refused).",
                &["route", "code"],
            )?,
            http_latency: hist(
                "xxl_edge_http_request_duration_seconds",
                "Time to answer a request, by route (/run includes the journal flush).",
                &["route"],
                LATENCY_BUCKETS,
            )?,
            token_refusals,
            trace_spans: counter(
                "xxl_edge_trace_spans_total",
                "Spans ended, by what became of them: exported, failed (the collector did not take them) or dropped (export queue full).",
                &["result"],
            )?,
            throttle: Arc::default(),
            registry,
        }
        .with_zero_series())
    }

    /// Creates the series of every bounded label value at 0. A counter series that first
    /// appears with value 1 hides that first event from `rate()` and `increase()`, so an
    /// alert on the very first internal error or failed callback would never fire.
    fn with_zero_series(self) -> Self {
        self.callbacks.with_label_values(&["delivered"]);
        for result in ["ok", "failed"] {
            self.callback_attempts.with_label_values(&[result]);
        }
        for op in events::Op::ALL {
            self.internal_errors.with_label_values(&[op.as_str()]);
        }
        for route in HTTP_ROUTES {
            for code in HTTP_CODES {
                self.http_requests.with_label_values(&[route, code]);
            }
            self.http_latency.with_label_values(&[route]);
        }
        for result in ["exported", "failed", "dropped"] {
            self.trace_spans.with_label_values(&[result]);
        }
        // Refused before any handler is known.
        for result in [TriggerResult::UnknownHandler, TriggerResult::Invalid] {
            self.triggers
                .with_label_values(&["unknown", result.as_str()]);
        }
        self
    }

    /// Creates at 0 the series of the handlers and admins this executor knows, so that panels
    /// and ratios have data and an alert sees the first failure (a series that appears at 1
    /// shows no increase).
    ///
    /// `handlers` are the `handler` label values (registered names and enabled GLUE kinds),
    /// `admins` the `admin` label values (redacted addresses).
    pub fn known(&self, handlers: &[String], admins: &[String]) {
        for h in handlers {
            for result in TriggerResult::ALL {
                self.triggers.with_label_values(&[h, result.as_str()]);
            }
            for outcome in OUTCOMES {
                self.runs.with_label_values(&[h, outcome.as_str()]);
            }
            self.run_duration.with_label_values(&[h]);
            self.queue_wait.with_label_values(&[h]);
        }
        for a in admins {
            for call in ["registry", "registryRemove", "callback"] {
                for result in crate::admin::ADMIN_RESULTS {
                    self.admin_requests.with_label_values(&[a, call, result]);
                }
                self.admin_latency.with_label_values(&[a, call]);
            }
        }
    }

    /// `Some(held_back)` when a line of `kind` may be logged now: see [`throttle`].
    pub fn log_allowed(&self, kind: LogKind) -> Option<u64> {
        self.throttle.allow(kind, std::time::Instant::now())
    }

    /// Counts one trigger.
    pub fn trigger(&self, handler: &str, result: TriggerResult) {
        self.triggers
            .with_label_values(&[handler, result.as_str()])
            .inc();
    }

    /// Records a flush's duration.
    pub fn flushed(&self, d: Duration) {
        self.flush_duration.observe(d.as_secs_f64());
    }

    /// Renders the registry in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let enc = TextEncoder::new();
        if enc.encode(&self.registry.gather(), &mut buf).is_err() {
            return String::new();
        }
        canonical_infinities(&String::from_utf8(buf).unwrap_or_default())
    }
}

/// The encoder writes an infinite sample value as Rust prints it (`inf`); the exposition format
/// spells it `+Inf` (`-Inf`). A sample line ends with its value (no timestamps here), and only
/// a label value can contain a space, inside quotes, before the closing brace.
fn canonical_infinities(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let body = line.strip_suffix('\n').unwrap_or(line);
        let fixed = if body.starts_with('#') {
            None
        } else if let Some(stem) = body.strip_suffix(" inf") {
            Some(format!("{stem} +Inf"))
        } else {
            body.strip_suffix(" -inf")
                .map(|stem| format!("{stem} -Inf"))
        };
        match fixed {
            Some(f) => {
                out.push_str(&f);
                if line.ends_with('\n') {
                    out.push('\n');
                }
            }
            None => out.push_str(line),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infinite_values_are_spelled_as_the_exposition_format_does() {
        let m = Metrics::new().unwrap();
        m.registration_age
            .with_label_values(&["a"])
            .set(f64::INFINITY);
        m.registration_age
            .with_label_values(&["b inf"])
            .set(f64::NEG_INFINITY);
        let out = m.render();
        assert!(
            out.contains("xxl_edge_registration_age_seconds{admin=\"a\"} +Inf\n"),
            "{out}"
        );
        assert!(
            out.contains("xxl_edge_registration_age_seconds{admin=\"b inf\"} -Inf\n"),
            "{out}"
        );
        assert!(!out.contains(" inf\n"), "{out}");
        assert!(out.contains("le=\"+Inf\""), "{out}");
    }

    /// Prometheus' `histogram_quantile`: linear interpolation inside the bucket.
    fn quantile(q: f64, bounds: &[f64], counts: &[u64]) -> f64 {
        let total = *counts.last().unwrap() as f64;
        let rank = q * total;
        let mut prev_bound = 0.0;
        let mut prev_count = 0.0;
        for (b, c) in bounds.iter().zip(counts) {
            let c = *c as f64;
            if c >= rank {
                return prev_bound + (b - prev_bound) * (rank - prev_count) / (c - prev_count);
            }
            prev_bound = *b;
            prev_count = c;
        }
        *bounds.last().unwrap()
    }

    #[test]
    fn run_duration_quantiles_are_close_from_milliseconds_to_hours() {
        for d in [
            0.003, 0.04, 0.2, 1.0005, 2.001, 5.01, 45.0, 610.0, 3700.0, 10800.0,
        ] {
            let m = Metrics::new().unwrap();
            let h = m.run_duration.with_label_values(&["h"]);
            for _ in 0..10 {
                h.observe(d);
            }
            let mut bounds = Vec::new();
            let mut counts = Vec::new();
            for f in m.registry.gather() {
                if f.name() == "xxl_edge_run_duration_seconds" {
                    for b in f.get_metric()[0].get_histogram().get_bucket() {
                        bounds.push(b.upper_bound());
                        counts.push(b.cumulative_count());
                    }
                }
            }
            let p50 = quantile(0.5, &bounds, &counts);
            let ratio = if p50 > d { p50 / d } else { d / p50 };
            assert!(ratio <= 1.5, "{d} s reads as p50 {p50} s");
        }
    }

    #[test]
    fn outcomes_and_results_are_all_listed() {
        use crate::job::OutcomeKind as K;
        for k in OUTCOMES {
            match k {
                K::Success | K::Failed | K::Timeout | K::Killed | K::Interrupted | K::Duplicate => {
                }
            }
        }
        for r in TriggerResult::ALL {
            match r {
                TriggerResult::Accepted
                | TriggerResult::DuplicateKey
                | TriggerResult::DuplicateLogId
                | TriggerResult::Discarded
                | TriggerResult::QueueFull
                | TriggerResult::RunningLimit
                | TriggerResult::UnknownHandler
                | TriggerResult::GlueDisabled
                | TriggerResult::Invalid
                | TriggerResult::DiskFull
                | TriggerResult::StoreError
                | TriggerResult::ShuttingDown => {}
            }
        }
    }

    #[test]
    fn known_handlers_and_admins_have_series_at_zero() {
        let m = Metrics::new().unwrap();
        m.known(&["demo".into()], &["http://REDACTED:REDACTED@h/x".into()]);
        let out = m.render();
        for line in [
            "xxl_edge_runs_total{handler=\"demo\",outcome=\"failed\"} 0",
            "xxl_edge_runs_total{handler=\"demo\",outcome=\"success\"} 0",
            "xxl_edge_triggers_total{handler=\"demo\",result=\"accepted\"} 0",
            "xxl_edge_triggers_total{handler=\"unknown\",result=\"unknown_handler\"} 0",
            "xxl_edge_run_duration_seconds_count{handler=\"demo\"} 0",
            "xxl_edge_queue_wait_seconds_count{handler=\"demo\"} 0",
            "xxl_edge_admin_requests_total{admin=\"http://REDACTED:REDACTED@h/x\",call=\"callback\",result=\"ok\"} 0",
            "xxl_edge_admin_requests_total{admin=\"http://REDACTED:REDACTED@h/x\",call=\"registry\",result=\"unreachable\"} 0",
            "xxl_edge_admin_request_duration_seconds_count{admin=\"http://REDACTED:REDACTED@h/x\",call=\"registry\"} 0",
            "xxl_edge_http_requests_total{code=\"200\",route=\"/run\"} 0",
            "xxl_edge_http_requests_total{code=\"500\",route=\"other\"} 0",
            "xxl_edge_http_token_refusals_total 0",
            "xxl_edge_trace_spans_total{result=\"dropped\"} 0",
        ] {
            assert!(out.contains(&format!("{line}\n")), "missing {line}");
        }
        assert_eq!(http_route("/run"), "/run");
        assert_eq!(http_route("/run/"), "other");
        assert_eq!(http_route("/../etc/passwd"), "other");
    }

    #[test]
    fn metric_names_list_matches_the_registry() {
        let m = Metrics::new().unwrap();
        m.trigger("h", TriggerResult::Accepted);
        m.runs.with_label_values(&["h", "success"]).inc();
        m.run_duration.with_label_values(&["h"]).observe(1.0);
        m.queue_wait.with_label_values(&["h"]).observe(1.0);
        m.callbacks.with_label_values(&["delivered"]).inc();
        m.callback_attempts.with_label_values(&["ok"]).inc();
        events::count(&m, events::Op::Flush);
        m.admin_requests
            .with_label_values(&["a", "registry", "ok"])
            .inc();
        m.admin_latency
            .with_label_values(&["a", "registry"])
            .observe(0.1);
        m.registration_age.with_label_values(&["a"]).set(1.0);
        m.flushed(Duration::from_millis(1));
        m.keys_redis_calls
            .with_label_values(&["acquire", "taken"])
            .inc();
        m.keys_redis_latency
            .with_label_values(&["acquire"])
            .observe(0.001);
        let mut got: Vec<String> = m
            .registry
            .gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        got.sort();
        let mut want: Vec<String> = METRIC_NAMES.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn metrics_register_and_render() {
        let m = Metrics::new().unwrap();
        m.trigger("demo", TriggerResult::Accepted);
        let out = m.render();
        assert!(out.contains("xxl_edge_triggers_total{handler=\"demo\",result=\"accepted\"} 1"));
        assert!(out.contains("xxl_edge_build_info{version="));
    }
}

/// OTLP trace export: off unless an endpoint is configured.
pub mod traces {
    use std::time::Duration;

    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
    };
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    use opentelemetry_sdk::trace::{
        BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
    };
    use opentelemetry_sdk::Resource;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;

    /// Where and how traces go.
    #[derive(Debug, Clone, PartialEq)]
    pub struct OtlpConfig {
        /// The full traces URL, e.g. `http://collector:4318/v1/traces`.
        pub traces_url: String,
        /// `service.name` when configured (`telemetry.service_name` or `OTEL_SERVICE_NAME`);
        /// `None` takes it from `OTEL_RESOURCE_ATTRIBUTES`, else `xxl-edge`.
        pub service_name: Option<String>,
        /// Share of traces kept, 0.0 to 1.0 (parent-based).
        pub sample_ratio: f64,
        /// Export timeout per batch.
        pub timeout: Duration,
        /// Also export the tracing bridge's extras: `code.*` (source location and module),
        /// `thread.*`, `busy_ns` and `idle_ns`. Bytes on a slow uplink; off unless asked for
        /// (`telemetry.trace_details`).
        pub details: bool,
    }

    /// Spans the export queue holds; beyond it they are dropped and counted, never waited for.
    pub const MAX_QUEUE: usize = 2048;

    /// The default `service.name`.
    pub const SERVICE_NAME: &str = "xxl-edge";

    /// The exporter could not be built.
    #[derive(Debug, thiserror::Error)]
    #[error("OTLP exporter: {0}")]
    pub struct TraceError(String);

    /// Builds a tracer provider exporting OTLP/HTTP protobuf in batches. Memory is bounded by the
    /// batch queue ([`MAX_QUEUE`] spans; spans beyond it are dropped, never waited for). What
    /// becomes of every span is counted in `metrics` (`xxl_edge_trace_spans_total`).
    ///
    /// # Errors
    /// The exporter could not be built.
    pub fn provider(
        cfg: &OtlpConfig,
        metrics: &super::Metrics,
    ) -> Result<SdkTracerProvider, TraceError> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(cfg.traces_url.clone())
            .with_timeout(cfg.timeout)
            .build()
            .map_err(|e| TraceError(e.to_string()))?;
        let batch = super::export::counting(
            exporter,
            super::export::SpanCounts::new(metrics),
            &cfg.traces_url,
            MAX_QUEUE,
            |exporter| {
                BatchSpanProcessor::builder(exporter)
                    .with_batch_config(
                        BatchConfigBuilder::default()
                            .with_max_queue_size(MAX_QUEUE)
                            .with_max_export_batch_size(256)
                            .with_scheduled_delay(Duration::from_secs(2))
                            .build(),
                    )
                    .build()
            },
        );
        // `Resource::builder()` reads OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME; a
        // configured name wins, then theirs, then ours (the SDK's own default would be
        // `unknown_service`).
        let builder = Resource::builder().with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ));
        let from_env = Resource::builder()
            .build()
            .get(&opentelemetry::Key::new("service.name"))
            .map(|v| v.to_string())
            .filter(|n| !n.starts_with("unknown_service"));
        let name = cfg
            .service_name
            .clone()
            .or(from_env)
            .unwrap_or_else(|| SERVICE_NAME.to_string());
        let resource = builder.with_service_name(name).build();
        Ok(SdkTracerProvider::builder()
            .with_span_processor(batch)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                cfg.sample_ratio,
            ))))
            .with_resource(resource)
            .build())
    }

    /// A layer that turns xxl-edge's spans into OpenTelemetry spans. Its own filter keeps the
    /// per-trigger spans (debug level) whatever `RUST_LOG` says about the text logs.
    ///
    /// `details` adds the bridge's extras (see [`OtlpConfig::details`]).
    pub fn layer<S>(provider: &SdkTracerProvider, details: bool) -> impl Layer<S> + Send + Sync
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a> + Send + Sync,
    {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("xxl-edge"))
            .with_location(details)
            .with_target(details)
            .with_threads(details)
            .with_tracked_inactivity(details)
            .with_filter(Targets::new().with_target("xxl_edge", LevelFilter::DEBUG))
    }

    /// Keeps the exporter alive; flushes what is buffered when dropped.
    #[derive(Debug)]
    pub struct Guard(Option<SdkTracerProvider>);

    impl Drop for Guard {
        fn drop(&mut self) {
            if let Some(p) = self.0.take() {
                let _ = p.shutdown();
            }
        }
    }

    /// Sets up the process's logging and, when configured, trace export: text or JSON logs
    /// filtered by `RUST_LOG` (else `level`), and OTLP with its own filter, counting spans in
    /// `metrics`.
    ///
    /// # Errors
    /// The exporter could not be built.
    pub fn init(
        level: &str,
        json: bool,
        otlp: Option<&OtlpConfig>,
        metrics: &super::Metrics,
    ) -> Result<Guard, TraceError> {
        // `Targets` reads the usual `RUST_LOG` syntax (`info,xxl_edge=debug`) without the regex
        // engine `EnvFilter` brings, which is worth its flash only for span-field filters.
        let filter = std::env::var("RUST_LOG")
            .ok()
            .and_then(|v| v.parse::<Targets>().ok())
            .or_else(|| level.parse::<Targets>().ok())
            .unwrap_or_else(|| Targets::new().with_default(LevelFilter::INFO));
        // No colour codes when stderr is a pipe or journald, only on a terminal.
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let fmt = log_layer(json, ansi, std::io::stderr).with_filter(filter);
        let provider = otlp.map(|o| provider(o, metrics)).transpose()?;
        let details = otlp.is_some_and(|o| o.details);
        let otel = provider.as_ref().map(|p| layer(p, details));
        // Already initialised (a library user set up tracing first): keep theirs.
        let _ = tracing_subscriber::registry()
            .with(fmt)
            .with(otel)
            .try_init();
        Ok(Guard(provider))
    }

    /// The executor's log output: text, or JSON (one object per line) with the message and the
    /// event's fields at the top level (`message`, not `fields.message`), as log shippers and
    /// `jq .message` expect.
    pub fn log_layer<S, W>(
        json: bool,
        ansi: bool,
        writer: W,
    ) -> Box<dyn Layer<S> + Send + Sync + 'static>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a> + Send + Sync,
        W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
    {
        let fmt = tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(writer);
        if json {
            fmt.json().flatten_event(true).boxed()
        } else {
            fmt.boxed()
        }
    }

    /// `traceid-spanid` of a span when it is exported (valid and sampled), for the run log and
    /// for linking the callback span to the run it reports. An unsampled span has ids too, but
    /// they lead nowhere: a trace id printed for it would be a dead link in the admin's log view.
    pub fn span_ref(span: &tracing::Span) -> Option<String> {
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        (sc.is_valid() && sc.is_sampled()).then(|| format!("{}-{}", sc.trace_id(), sc.span_id()))
    }

    /// The trace id of `span` when it is exported, for log lines (`trace_id` field).
    pub fn trace_id(span: &tracing::Span) -> Option<String> {
        span_ref(span).and_then(|r| r.split('-').next().map(str::to_string))
    }

    /// Adds a link from `span` to the span named by a [`span_ref`] string.
    pub fn link(span: &tracing::Span, reference: &str) {
        let Some((t, s)) = reference.split_once('-') else {
            return;
        };
        if let (Ok(t), Ok(s)) = (TraceId::from_hex(t), SpanId::from_hex(s)) {
            span.add_link(SpanContext::new(
                t,
                s,
                TraceFlags::SAMPLED,
                true,
                TraceState::default(),
            ));
        }
    }
}
