//! Counts what becomes of every span, so a dead, slow or silent collector is seen on
//! `/metrics` (`xxl_edge_trace_spans_total{result}`) and in the log, rate-limited.
//!
//! The SDK's batch processor drops spans silently when its queue is full (it says so once, on
//! shutdown, through a logger this build does not enable). So the queue bound is kept here:
//! [`CountingProcessor`] admits at most `max_queue` spans that are not yet through an export,
//! counts the rest as `dropped` itself, and the batch queue (of the same size) therefore never
//! overflows. [`CountingExporter`] counts each batch as `exported` or `failed` and logs
//! failures.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use opentelemetry_sdk::Resource;
use prometheus::IntCounter;

use super::throttle::{LogKind, Throttle};
use super::Metrics;

/// The three counters of `xxl_edge_trace_spans_total`.
#[derive(Debug, Clone)]
pub struct SpanCounts {
    exported: IntCounter,
    failed: IntCounter,
    dropped: IntCounter,
    throttle: Arc<Throttle>,
}

impl SpanCounts {
    /// The counters of `metrics`.
    pub fn new(metrics: &Metrics) -> Self {
        let c = |r: &str| metrics.trace_spans.with_label_values(&[r]);
        Self {
            exported: c("exported"),
            failed: c("failed"),
            dropped: c("dropped"),
            throttle: metrics.throttle.clone(),
        }
    }
}

/// Spans handed to the batch processor and not yet through an export.
#[derive(Debug, Clone, Default)]
struct InFlight(Arc<AtomicUsize>);

/// Wraps the OTLP exporter.
#[derive(Debug)]
pub struct CountingExporter<E> {
    inner: E,
    counts: SpanCounts,
    in_flight: InFlight,
    url: String,
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let res = self.inner.export(batch).await;
        match &res {
            Ok(()) => self.counts.exported.inc_by(n as u64),
            Err(e) => {
                self.counts.failed.inc_by(n as u64);
                let error = super::redact::redact_in(&e.to_string(), &self.url);
                super::throttle::throttled!(
                    self.counts.throttle,
                    LogKind::TraceExport,
                    warn,
                    endpoint = %super::redact::redact_url(&self.url),
                    spans = n,
                    error,
                    "Cannot export spans; they are lost (xxl_edge_trace_spans_total{{result=\"failed\"}})."
                );
            }
        }
        self.in_flight.0.fetch_sub(n, Ordering::AcqRel);
        res
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Wraps the batch processor; see the module's documentation.
#[derive(Debug)]
pub struct CountingProcessor<P> {
    inner: P,
    counts: SpanCounts,
    in_flight: InFlight,
    max_queue: usize,
}

impl<P: SpanProcessor> SpanProcessor for CountingProcessor<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.in_flight.0.fetch_add(1, Ordering::AcqRel) >= self.max_queue {
            self.in_flight.0.fetch_sub(1, Ordering::AcqRel);
            self.counts.dropped.inc();
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// A processor that counts every span: `build` makes the batch processor (with a queue of
/// `max_queue`) around the counting exporter.
pub fn counting<E: SpanExporter, P: SpanProcessor>(
    exporter: E,
    counts: SpanCounts,
    url: &str,
    max_queue: usize,
    build: impl FnOnce(CountingExporter<E>) -> P,
) -> CountingProcessor<P> {
    let in_flight = InFlight::default();
    let inner = build(CountingExporter {
        inner: exporter,
        counts: counts.clone(),
        in_flight: in_flight.clone(),
        url: url.to_string(),
    });
    CountingProcessor {
        inner,
        counts,
        in_flight,
        max_queue,
    }
}
