//! Metrics on an explicit Prometheus registry, and the executor's own log output.
//!
//! Labels are bounded by construction: handler names come from the fixed registry (unknown names
//! from the network are counted as `unknown`), outcomes and results are enums. Never a jobId,
//! logId, parameter or error text.

use std::time::Duration;

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    Opts, Registry, TextEncoder,
};

pub mod events;

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

impl TriggerResult {
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
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0, 7200.0,
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
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
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
        self
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
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        /// `service.name` (also `OTEL_SERVICE_NAME`).
        pub service_name: String,
        /// Share of traces kept, 0.0 to 1.0 (parent-based).
        pub sample_ratio: f64,
        /// Export timeout per batch.
        pub timeout: Duration,
    }

    /// The exporter could not be built.
    #[derive(Debug, thiserror::Error)]
    #[error("OTLP exporter: {0}")]
    pub struct TraceError(String);

    /// Builds a tracer provider exporting OTLP/HTTP protobuf in batches. Memory is bounded by the
    /// batch queue (2048 spans; spans beyond it are dropped, never waited for).
    ///
    /// # Errors
    /// The exporter could not be built.
    pub fn provider(cfg: &OtlpConfig) -> Result<SdkTracerProvider, TraceError> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(cfg.traces_url.clone())
            .with_timeout(cfg.timeout)
            .build()
            .map_err(|e| TraceError(e.to_string()))?;
        let batch = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(2048)
                    .with_max_export_batch_size(256)
                    .with_scheduled_delay(Duration::from_secs(2))
                    .build(),
            )
            .build();
        // `Resource::builder()` also reads OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME.
        let resource = Resource::builder()
            .with_service_name(cfg.service_name.clone())
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            ))
            .build();
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
    pub fn layer<S>(provider: &SdkTracerProvider) -> impl Layer<S> + Send + Sync
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a> + Send + Sync,
    {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("xxl-edge"))
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
    /// filtered by `RUST_LOG` (else `level`), and OTLP with its own filter.
    ///
    /// # Errors
    /// The exporter could not be built.
    pub fn init(level: &str, json: bool, otlp: Option<&OtlpConfig>) -> Result<Guard, TraceError> {
        // `Targets` reads the usual `RUST_LOG` syntax (`info,xxl_edge=debug`) without the regex
        // engine `EnvFilter` brings, which is worth its flash only for span-field filters.
        let filter = std::env::var("RUST_LOG")
            .ok()
            .and_then(|v| v.parse::<Targets>().ok())
            .or_else(|| level.parse::<Targets>().ok())
            .unwrap_or_else(|| Targets::new().with_default(LevelFilter::INFO));
        // No colour codes when stderr is a pipe or journald, only on a terminal.
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let fmt = tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr);
        let fmt = if json {
            fmt.json().with_filter(filter).boxed()
        } else {
            fmt.with_filter(filter).boxed()
        };
        let provider = otlp.map(provider).transpose()?;
        let otel = provider.as_ref().map(layer);
        // Already initialised (a library user set up tracing first): keep theirs.
        let _ = tracing_subscriber::registry()
            .with(fmt)
            .with(otel)
            .try_init();
        Ok(Guard(provider))
    }

    /// `traceid-spanid` of a span when it is recorded by OpenTelemetry, for the run log and for
    /// linking the callback span to the run it reports.
    pub fn span_ref(span: &tracing::Span) -> Option<String> {
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        sc.is_valid()
            .then(|| format!("{}-{}", sc.trace_id(), sc.span_id()))
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
