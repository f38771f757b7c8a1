//! `[telemetry]`: logs, metrics listener and trace export.

use std::net::SocketAddr;

use serde::Deserialize;
use tracing_subscriber::filter::{LevelFilter, Targets};

use super::check::Check;
use super::layers::{EnvVar, Kind};

pub(super) const ENV: &[EnvVar] = &[
    EnvVar::new(
        "XXL_EDGE_METRICS_LISTEN",
        "telemetry.metrics_listen",
        Kind::Text,
    ),
    EnvVar::new("XXL_EDGE_LOG_FORMAT", "telemetry.log_format", Kind::Text),
    // The standard OpenTelemetry variables.
    EnvVar::new(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "telemetry.otlp_endpoint",
        Kind::Text,
    ),
    EnvVar::new(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "telemetry.otlp_traces_endpoint",
        Kind::Text,
    ),
    EnvVar::new("OTEL_SERVICE_NAME", "telemetry.service_name", Kind::Text),
];

/// `[telemetry]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Raw {
    metrics_listen: Option<String>,
    log_level: Option<String>,
    /// `text` or `json`.
    log_format: Option<String>,
    /// OTLP/HTTP base URL (`…/v1/traces` is appended).
    otlp_endpoint: Option<String>,
    /// Full traces URL (used as is).
    otlp_traces_endpoint: Option<String>,
    service_name: Option<String>,
    trace_sample_ratio: Option<f64>,
    /// Export the tracing bridge's extras (`code.*`, `thread.*`, `busy_ns`, `idle_ns`).
    trace_details: Option<bool>,
}

/// Telemetry settings.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// Serve `/metrics` here instead of on the executor port.
    pub metrics_listen: Option<SocketAddr>,
    /// Default log filter when `RUST_LOG` is unset: `level` or `target=level`, comma-separated.
    pub log_level: String,
    /// JSON logs instead of text.
    pub log_json: bool,
    /// Full OTLP/HTTP traces URL; `None` keeps trace export off.
    pub otlp_traces_url: Option<String>,
    /// `service.name` of the traces.
    pub service_name: String,
    /// `service_name` was given (file or `OTEL_SERVICE_NAME`); otherwise a `service.name` in
    /// `OTEL_RESOURCE_ATTRIBUTES` is used before the default.
    pub service_name_set: bool,
    /// Spans carry the tracing bridge's extras: source location, thread, busy and idle time.
    pub trace_details: bool,
    /// Share of traces kept (parent-based ratio sampler).
    pub trace_sample_ratio: f64,
}

/// Checks a log filter in `RUST_LOG` syntax (`info`, `warn,xxl_edge=debug`) with the parser the
/// logger uses (`Targets`), and returns it without blanks around directives.
///
/// The parser takes a bare word that is not a level as a target to log at `trace`, and with no
/// default level everything else is silenced: a typo such as `debgu` would turn the executor's
/// logs off. So a bare word must be a level here; a target needs `target=level`.
fn log_filter(given: &str) -> Result<String, String> {
    let mut directives = Vec::new();
    for d in given.split(',').map(str::trim) {
        if d.is_empty() {
            return Err(format!("\"{given}\" has an empty directive"));
        }
        match d.split_once('=') {
            None if d.parse::<LevelFilter>().is_err() => {
                return Err(format!(
                    "\"{d}\" is not a level (trace, debug, info, warn, error, off); \
                     a target is written target=level"
                ))
            }
            None => {}
            // The parser takes anything before `=` as a target, and a target that is no
            // module path (`[[[`) matches nothing: every other line would be silenced.
            Some((target, level)) => {
                let path_like = !target.is_empty()
                    && target
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '-' | '.'));
                if !path_like {
                    return Err(format!(
                        "\"{d}\": \"{target}\" is not a target (a module path such as xxl_edge::api)"
                    ));
                }
                // An empty level parses (as ERROR): say what was meant.
                if level.trim().is_empty() || level.parse::<LevelFilter>().is_err() {
                    return Err(format!(
                        "\"{d}\": \"{level}\" is not a level (trace, debug, info, warn, error, off)"
                    ));
                }
            }
        }
        directives.push(d);
    }
    let filter = directives.join(",");
    filter
        .parse::<Targets>()
        .map_err(|e| format!("\"{given}\": {e}"))?;
    Ok(filter)
}

impl Raw {
    pub(super) fn convert(self, c: &mut Check) -> TelemetryConfig {
        let metrics_listen = self
            .metrics_listen
            .filter(|s| !s.trim().is_empty())
            .and_then(|s| match s.trim().parse::<SocketAddr>() {
                Ok(a) => {
                    c.show("telemetry.metrics_listen", a);
                    Some(a)
                }
                Err(_) => {
                    c.problem(
                        "telemetry.metrics_listen",
                        format!("\"{s}\" is not an address like 127.0.0.1:9100"),
                    );
                    None
                }
            });

        let given = self.log_level.unwrap_or_else(|| "info".to_string());
        let log_level = log_filter(&given).unwrap_or_else(|problem| {
            c.problem("telemetry.log_level", problem);
            given
        });
        c.show("telemetry.log_level", &log_level);

        let log_json = match self.log_format.as_deref().map(str::trim) {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => {
                c.problem(
                    "telemetry.log_format",
                    format!("\"{other}\" is neither \"text\" nor \"json\""),
                );
                false
            }
        };
        c.show(
            "telemetry.log_format",
            if log_json { "json" } else { "text" },
        );

        // The signal-specific URL is used as is; the base URL gets `/v1/traces`.
        let traces = c.url("telemetry.otlp_traces_endpoint", self.otlp_traces_endpoint);
        let base = c.url("telemetry.otlp_endpoint", self.otlp_endpoint);
        let otlp_traces_url =
            traces.or_else(|| base.map(|b| format!("{}/v1/traces", b.trim_end_matches('/'))));

        let given_name = self.service_name.filter(|s| !s.trim().is_empty());
        let service_name_set = given_name.is_some();
        let service_name = given_name.unwrap_or_else(|| "xxl-edge".to_string());
        c.show("telemetry.service_name", &service_name);

        let trace_sample_ratio = self.trace_sample_ratio.unwrap_or(1.0);
        if (0.0..=1.0).contains(&trace_sample_ratio) {
            c.show("telemetry.trace_sample_ratio", trace_sample_ratio);
        } else {
            c.problem(
                "telemetry.trace_sample_ratio",
                format!("{trace_sample_ratio} is not in 0.0..=1.0"),
            );
        }

        let trace_details = self.trace_details.unwrap_or(false);
        c.show("telemetry.trace_details", trace_details);

        TelemetryConfig {
            service_name_set,
            trace_details,
            metrics_listen,
            log_level,
            log_json,
            otlp_traces_url,
            service_name,
            trace_sample_ratio,
        }
    }
}
