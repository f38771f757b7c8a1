//! The executor's own telemetry on a real executor (port 0, real sled): request metrics and
//! refused tokens, the series that exist before any traffic, and the log lines of a run's life
//! in JSON (message at the top level, rate-limited refusals and failures).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{json, Value};
use support::*;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::Layer;
use xxl_edge::telemetry::traces;

/// JSON logs at DEBUG into a buffer, for this (current-thread) test.
fn capture() -> (Captured, tracing::subscriber::DefaultGuard) {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::registry().with(
        traces::log_layer(true, false, move || writer.clone())
            .with_filter(tracing_subscriber::filter::LevelFilter::DEBUG),
    );
    (logs, tracing::subscriber::set_default(subscriber))
}

/// The value of one sample line, `name{labels} value`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn series_exist_at_zero_before_any_traffic() {
    let (admin, ex, _probe, _dir) = setup("").await;
    let text = ex.metrics_text().await;
    let a = format!("http://{}/xxl-job-admin", admin.addr);
    for series in [
        "xxl_edge_runs_total{handler=\"demoJobHandler\",outcome=\"failed\"}".to_string(),
        "xxl_edge_runs_total{handler=\"failJobHandler\",outcome=\"success\"}".to_string(),
        "xxl_edge_triggers_total{handler=\"demoJobHandler\",result=\"queue_full\"}".to_string(),
        "xxl_edge_triggers_total{handler=\"unknown\",result=\"unknown_handler\"}".to_string(),
        "xxl_edge_run_duration_seconds_count{handler=\"gateJobHandler\"}".to_string(),
        format!("xxl_edge_admin_requests_total{{admin=\"{a}\",call=\"callback\",result=\"unreachable\"}}"),
        format!("xxl_edge_admin_requests_total{{admin=\"{a}\",call=\"registryRemove\",result=\"ok\"}}"),
        "xxl_edge_http_requests_total{code=\"500\",route=\"/run\"}".to_string(),
        "xxl_edge_http_token_refusals_total".to_string(),
        "xxl_edge_trace_spans_total{result=\"dropped\"}".to_string(),
    ] {
        assert_eq!(sample(&text, &series), Some(0.0), "{series} in\n{text}");
    }
    ex.shutdown().await;
}

#[tokio::test]
async fn requests_are_counted_per_route_and_wrong_tokens_are_seen() {
    let (logs, _guard) = capture();
    let (admin, ex, _probe, _dir) = setup("").await;
    admin.registrations(1).await;
    for _ in 0..3 {
        let r = ex.post_with("/beat", "", Some("wrong")).await;
        assert_eq!(r["code"], 500);
    }
    assert_eq!(ex.post_with("/run", "{}", None).await["code"], 500);
    assert_eq!(ex.post("/beat", "").await, ok());
    assert_eq!(ex.post("/no/such/thing", "").await["code"], 500);
    assert_eq!(ex.post("/idleBeat", "not json").await["code"], 500);
    let text = ex.metrics_text().await;
    let n = |s: &str| sample(&text, s).unwrap_or_else(|| panic!("no {s} in\n{text}"));
    assert_eq!(n("xxl_edge_http_token_refusals_total"), 4.0);
    assert_eq!(
        n("xxl_edge_http_requests_total{code=\"500\",route=\"/beat\"}"),
        3.0
    );
    assert_eq!(
        n("xxl_edge_http_requests_total{code=\"200\",route=\"/beat\"}"),
        1.0
    );
    assert_eq!(
        n("xxl_edge_http_requests_total{code=\"500\",route=\"/run\"}"),
        1.0
    );
    assert_eq!(
        n("xxl_edge_http_requests_total{code=\"500\",route=\"other\"}"),
        1.0
    );
    assert_eq!(
        n("xxl_edge_http_requests_total{code=\"500\",route=\"/idleBeat\"}"),
        1.0
    );
    assert_eq!(
        n("xxl_edge_http_request_duration_seconds_count{route=\"/beat\"}"),
        4.0
    );
    // No series per hostile path.
    assert!(!text.contains("/no/such/thing"), "{text}");

    // One WARN line for four refused tokens (the rest at DEBUG), with the route.
    let refused = logs.with_message(
        "Refused a request with a missing or wrong access token (xxl_edge_http_token_refusals_total).",
    );
    assert_eq!(refused.len(), 4, "{refused:?}");
    let warned: Vec<&Value> = refused.iter().filter(|l| l["level"] == "WARN").collect();
    assert_eq!(warned.len(), 1, "{refused:?}");
    assert_eq!(warned[0]["route"], "/beat");
    assert_eq!(warned[0]["held_back"], 0);
    let bad = logs.with_message("Refused a malformed request.");
    assert_eq!(bad.len(), 2, "{bad:?}");
    assert_eq!(bad[0]["level"], "INFO");
    ex.shutdown().await;
}

#[tokio::test]
async fn a_runs_life_is_in_the_executors_log() {
    let (logs, _guard) = capture();
    let (admin, ex, probe, _dir) = setup("").await;
    admin.registrations(1).await;

    // Accepted, started, finished (DEBUG), with the run's fields at the top level.
    assert_eq!(ex.run(1, "demoJobHandler", 101, json!({})).await, ok());
    admin.callback(101).await;
    for message in ["Trigger accepted.", "Run started.", "Run finished."] {
        let l = logs.wait_for_run_line(message, 101).await;
        // As written, not only as read back: the message and fields are at the top level.
        let raw = logs
            .raw_lines()
            .into_iter()
            .find(|r| r["message"] == message && r["log_id"] == 101)
            .unwrap_or_else(|| panic!("{message:?} is not at the top level: {l}"));
        assert!(raw.get("fields").is_none(), "{raw}");
        assert_eq!(l["level"], "DEBUG", "{l}");
        assert_eq!(l["job_id"], 1, "{l}");
        assert_eq!(l["handler"], "demoJobHandler", "{l}");
    }
    assert_eq!(
        logs.wait_for_run_line("Run finished.", 101).await["outcome"],
        "success"
    );

    // Refused: unknown handler, at INFO.
    assert_eq!(ex.run(2, "nope", 201, json!({})).await["code"], 500);
    let l = logs.wait_for_run_line("Trigger refused.", 201).await;
    assert_eq!(l["level"], "INFO", "{l}");
    assert_eq!(l["handler"], "nope");
    assert_eq!(l["result"], "unknown_handler");
    assert_eq!(l["msg"], "job handler [nope] not found.");

    // Failed at WARN, with the handler's message.
    assert_eq!(
        ex.run(
            3,
            "failJobHandler",
            301,
            json!({"executorParams": "no disk"})
        )
        .await,
        ok()
    );
    let l = logs.wait_for_run_line("Run failed.", 301).await;
    assert_eq!(l["level"], "WARN", "{l}");
    assert_eq!(l["msg"], "no disk");
    assert_eq!(l["outcome"], "failed");

    // Timed out: the same budget as failures, so this one is held back to DEBUG.
    assert_eq!(
        ex.run(4, "gateJobHandler", 401, json!({"executorTimeout": 1}))
            .await,
        ok()
    );
    let l = logs.wait_for_run_line("Run timed out.", 401).await;
    assert_eq!(l["outcome"], "timeout");
    assert_eq!(l["level"], "DEBUG", "{l}");

    // Killed.
    assert_eq!(ex.run(5, "gateJobHandler", 501, json!({})).await, ok());
    probe.started(501).await;
    assert_eq!(ex.post("/kill", r#"{"jobId":5}"#).await, ok());
    let l = logs.wait_for_run_line("Run killed.", 501).await;
    assert_eq!(l["outcome"], "killed");
    assert_eq!(l["job_id"], 5);
    // No exporter here: no trace id is claimed.
    assert!(l.get("trace_id").is_none(), "{l}");
    ex.shutdown().await;
}
