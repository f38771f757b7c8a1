//! OTLP traces: a small OTLP/HTTP receiver on port 0 decodes what the exporter sends, and the
//! test checks one trace per trigger (request, queue wait, run), the callback span's link to the
//! run, client spans for admin calls, attributes, and the trace id in the run's log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyV;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;
use support::*;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::Layer;
use warp::Filter;
use xxl_edge::telemetry::{traces, Metrics};

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
    resources: Arc<Mutex<Vec<HashMap<String, String>>>>,
}

async fn receiver() -> (Receiver, SocketAddr) {
    let r = Receiver::default();
    let r2 = r.clone();
    let route = warp::post()
        .and(warp::path!("v1" / "traces"))
        .and(warp::body::bytes())
        .map(move |body: bytes::Bytes| {
            let req = ExportTraceServiceRequest::decode(body.as_ref()).unwrap();
            for rs in req.resource_spans {
                if let Some(res) = &rs.resource {
                    r2.resources.lock().unwrap().push(attrs(&res.attributes));
                }
                for ss in rs.scope_spans {
                    r2.spans.lock().unwrap().extend(ss.spans);
                }
            }
            warp::reply::with_header(Vec::<u8>::new(), "content-type", "application/x-protobuf")
        });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(warp::serve(route).incoming(l).run());
    (r, addr)
}

fn attrs(kv: &[opentelemetry_proto::tonic::common::v1::KeyValue]) -> HashMap<String, String> {
    kv.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.clone()) {
                Some(AnyV::StringValue(s)) => s,
                Some(AnyV::IntValue(i)) => i.to_string(),
                Some(AnyV::BoolValue(b)) => b.to_string(),
                Some(AnyV::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

/// Exports this thread's spans to `addr` for the rest of the test. The tests use a
/// current-thread runtime, so every task of the executor runs on this thread.
fn export_to(
    addr: SocketAddr,
    service: &str,
    timeout: Duration,
) -> (
    opentelemetry_sdk::trace::SdkTracerProvider,
    tracing::subscriber::DefaultGuard,
    Metrics,
) {
    export_with(addr, Some(service), timeout, 1.0)
}

fn export_with(
    addr: SocketAddr,
    service: Option<&str>,
    timeout: Duration,
    sample_ratio: f64,
) -> (
    opentelemetry_sdk::trace::SdkTracerProvider,
    tracing::subscriber::DefaultGuard,
    Metrics,
) {
    let metrics = Metrics::new().unwrap();
    let provider = traces::provider(
        &traces::OtlpConfig {
            traces_url: format!("http://{addr}/v1/traces"),
            service_name: service.map(str::to_string),
            sample_ratio,
            timeout,
            details: false,
        },
        &metrics,
    )
    .unwrap();
    let subscriber = tracing_subscriber::registry().with(traces::layer(&provider, false));
    let guard = tracing::subscriber::set_default(subscriber);
    (provider, guard, metrics)
}

/// An executor whose metrics registry is `metrics` (the one the exporter counts spans in).
async fn setup_with(metrics: &Metrics) -> (FakeAdmin, TestExecutor, Probe, tempfile::TempDir) {
    let admin = FakeAdmin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let probe = Probe::new();
    let cfg = test_config(dir.path(), &admin.url(), "");
    let ex = TestExecutor::start(sample_handlers(
        xxl_edge::Executor::builder()
            .metrics(metrics.clone())
            .config(cfg),
        &probe,
    ))
    .await;
    (admin, ex, probe, dir)
}

fn spans_counted(m: &Metrics, result: &str) -> u64 {
    m.trace_spans.with_label_values(&[result]).get()
}

fn flush(
    provider: &opentelemetry_sdk::trace::SdkTracerProvider,
) -> impl std::future::Future<Output = ()> {
    let p = provider.clone();
    async move {
        tokio::task::spawn_blocking(move || {
            let _ = p.force_flush();
        })
        .await
        .unwrap();
    }
}

/// The value of an attribute with its OTLP type.
fn typed(s: &Span, key: &str) -> Option<AnyV> {
    s.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.clone())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test]
async fn one_trace_per_trigger_with_linked_callback() {
    let (rx, addr) = receiver().await;
    let (provider, _guard, metrics) = export_to(addr, "xxl-edge-test", Duration::from_secs(5));

    let (admin, ex, _probe, _dir) = setup_with(&metrics).await;
    admin.registrations(1).await;
    assert_eq!(
        ex.run(
            42,
            "demoJobHandler",
            4201,
            json!({"executorBlockStrategy":"COVER_EARLY"})
        )
        .await,
        ok()
    );
    admin.callback(4201).await;
    let log = ex.log_contains(4201, "callback finish.").await;
    assert_eq!(ex.run(43, "nope", 4301, json!({})).await["code"], 500);

    flush(&provider).await;
    let spans = rx.spans.lock().unwrap().clone();
    // Every span that arrived is counted as exported; none lost.
    assert_eq!(spans_counted(&metrics, "exported"), spans.len() as u64);
    assert_eq!(spans_counted(&metrics, "failed"), 0);
    assert_eq!(spans_counted(&metrics, "dropped"), 0);
    // The tracing bridge's extras are not sent unless asked for.
    for s in &spans {
        for kv in &s.attributes {
            assert!(
                !(kv.key.starts_with("code.")
                    || kv.key.starts_with("thread.")
                    || kv.key == "busy_ns"
                    || kv.key == "idle_ns"
                    || kv.key == "target"),
                "{} carries {}",
                s.name,
                kv.key
            );
        }
    }
    let by_name = |n: &str| -> Vec<&Span> { spans.iter().filter(|s| s.name == n).collect() };

    let req = by_name("POST /run")
        .into_iter()
        .find(|s| attrs(&s.attributes)["xxl.job.log_id"] == "4201")
        .expect("the /run span");
    let a = attrs(&req.attributes);
    assert_eq!(req.kind, 2, "server span");
    assert_eq!(a["xxl.job.id"], "42");
    assert_eq!(a["xxl.job.handler"], "demoJobHandler");
    assert_eq!(a["xxl.job.glue_type"], "BEAN");
    assert_eq!(a["xxl.job.block_strategy"], "COVER_EARLY");
    assert_eq!(a["xxl.trigger.code"], "200");
    assert_eq!(a["http.request.method"], "POST");

    let queue = by_name("job.queue")
        .into_iter()
        .find(|s| s.trace_id == req.trace_id)
        .expect("queue span in the same trace");
    assert_eq!(queue.parent_span_id, req.span_id);

    let run = by_name("job.run")
        .into_iter()
        .find(|s| s.trace_id == req.trace_id)
        .expect("run span in the same trace");
    assert_eq!(run.parent_span_id, req.span_id);
    let a = attrs(&run.attributes);
    assert_eq!(a["xxl.job.log_id"], "4201");
    assert_eq!(a["xxl.job.outcome.code"], "200");
    assert_eq!(a["xxl.job.outcome"], "success");

    let cb = by_name("callback.send")
        .into_iter()
        .find(|s| {
            s.links
                .iter()
                .any(|l| l.trace_id == run.trace_id && l.span_id == run.span_id)
        })
        .expect("a callback span linked to the run");
    assert_eq!(cb.kind, 3, "client span");
    let call = by_name("admin.call")
        .into_iter()
        .find(|s| s.parent_span_id == cb.span_id)
        .expect("the admin call under the callback span");
    let a = attrs(&call.attributes);
    assert_eq!(a["xxl.admin.call"], "callback");
    assert_eq!(a["http.response.status_code"], "200");
    // The conventions' types: integers, on every span.
    assert_eq!(
        typed(call, "http.response.status_code"),
        Some(AnyV::IntValue(200))
    );
    assert_eq!(
        typed(req, "http.response.status_code"),
        Some(AnyV::IntValue(200))
    );
    assert!(matches!(typed(cb, "xxl.callback.count"), Some(AnyV::IntValue(n)) if n >= 1));
    assert!(a["url.full"].ends_with("/xxl-job-admin/api/callback"));
    assert!(!by_name("registry.beat").is_empty());

    // A refused trigger is an error span.
    let refused = by_name("POST /run")
        .into_iter()
        .find(|s| attrs(&s.attributes)["xxl.job.log_id"] == "4301")
        .unwrap();
    assert_eq!(refused.status.as_ref().unwrap().code, 2);
    assert_eq!(
        refused.status.as_ref().unwrap().message,
        "job handler [nope] not found."
    );
    assert_eq!(attrs(&refused.attributes)["error.type"], "unknown_handler");
    assert_eq!(
        attrs(&refused.attributes)["xxl.trigger.msg"],
        "job handler [nope] not found."
    );

    // The trace id is the first line of the run's log.
    let first = log.lines().next().unwrap();
    assert!(
        first.ends_with(&format!("trace_id={}", hex(&req.trace_id))),
        "{first}"
    );
    let res = rx.resources.lock().unwrap()[0].clone();
    assert_eq!(res["service.name"], "xxl-edge-test");
    ex.shutdown().await;
    let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
}

#[tokio::test]
async fn a_dead_collector_does_not_touch_job_execution() {
    // Nothing listens here: every export fails, after its timeout, on the exporter's thread.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (provider, _guard, metrics) = export_to(closed, "x", Duration::from_secs(1));
    let (admin, ex, _probe, _dir) = setup_with(&metrics).await;
    run_demo_and_await_callbacks(&admin, &ex, 20).await;
    ex.shutdown().await;
    let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    // The lost spans are counted, none as exported.
    assert!(
        spans_counted(&metrics, "failed") >= 20 * 3,
        "{}",
        metrics.render()
    );
    assert_eq!(spans_counted(&metrics, "exported"), 0);
}

/// Accepts connections and never answers: every export waits for its timeout.
fn silent_collector() -> (SocketAddr, std::sync::mpsc::Sender<()>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        l.set_nonblocking(true).unwrap();
        // Bounded: until the test ends (its sender is dropped) or 60 s.
        let until = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < until {
            if let Ok((c, _)) = l.accept() {
                held.push(c);
            }
            match stop_rx.recv_timeout(Duration::from_millis(20)) {
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                _ => return,
            }
        }
    });
    (addr, stop_tx)
}

/// A collector that takes connections and never answers: exports fail at their timeout, the
/// spans ended meanwhile beyond the queue are dropped, and every span is counted once as
/// exported, failed or dropped.
#[test]
fn spans_lost_to_a_silent_collector_are_counted() {
    let (addr, _stop) = silent_collector();
    // The exporter logs from the SDK's own thread, which sees only the global subscriber. This
    // is the only test of this binary that sets one; lines of other tests' exporters are told
    // apart by their endpoint.
    let logs = Captured::default();
    let writer = logs.clone();
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(
            traces::log_layer(false, false, move || writer.clone()).with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target("xxl_edge", tracing_subscriber::filter::LevelFilter::DEBUG),
            ),
        ),
    )
    .unwrap();
    let metrics = Metrics::new().unwrap();
    let provider = traces::provider(
        &traces::OtlpConfig {
            traces_url: format!("http://{addr}/v1/traces"),
            service_name: None,
            sample_ratio: 1.0,
            timeout: Duration::from_millis(200),
            details: false,
        },
        &metrics,
    )
    .unwrap();
    let subscriber = tracing_subscriber::registry().with(traces::layer(&provider, false));
    let total = traces::MAX_QUEUE as u64 + 1000;
    tracing::subscriber::with_default(subscriber, || {
        for i in 0..total {
            // The exporter's filter takes xxl-edge's own targets only.
            let _s = tracing::debug_span!(target: "xxl_edge::test", "burst", i).entered();
        }
    });
    let _ = provider.shutdown();
    let (exported, failed, dropped) = (
        spans_counted(&metrics, "exported"),
        spans_counted(&metrics, "failed"),
        spans_counted(&metrics, "dropped"),
    );
    assert_eq!(exported, 0);
    // About 1000: fewer when an export fails (and frees its batch) while the spans end.
    assert!(dropped > 0, "dropped {dropped}");
    assert!(failed >= 1, "failed {failed}");
    assert_eq!(
        exported + failed + dropped,
        total,
        "{exported} + {failed} + {dropped}"
    );
    // Every failed batch is logged, one a minute at WARN, the others at DEBUG.
    let text = logs.text();
    let ours: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("Cannot export spans") && l.contains(&addr.to_string()))
        .collect();
    assert!(ours.len() >= 2, "{text}");
    let warned: Vec<&&str> = ours.iter().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warned.len(), 1, "{ours:?}");
    assert!(warned[0].contains("held_back=0"), "{}", warned[0]);
}

/// A failing run's span says why (status message, `error.type`), a failed admin call too;
/// an unsampled run prints no trace id into its log.
#[tokio::test]
async fn error_spans_carry_their_reason() {
    let (rx, addr) = receiver().await;
    let (provider, _guard, metrics) = export_to(addr, "t", Duration::from_secs(5));
    let (admin, ex, _probe, _dir) = setup_with(&metrics).await;
    admin.registrations(1).await;
    assert_eq!(
        ex.run(
            7,
            "failJobHandler",
            701,
            json!({"executorParams": "disk on fire"})
        )
        .await,
        ok()
    );
    admin.callback(701).await;
    admin.set_mode(AdminMode::Http503);
    assert_eq!(ex.run(8, "demoJobHandler", 801, json!({})).await, ok());
    // Written once the admin call (and its span) has ended.
    ex.log_contains(801, "callback error").await;
    flush(&provider).await;
    let spans = rx.spans.lock().unwrap().clone();
    let run = spans
        .iter()
        .find(|s| s.name == "job.run" && attrs(&s.attributes)["xxl.job.log_id"] == "701")
        .expect("the failed run's span");
    let st = run.status.as_ref().unwrap();
    assert_eq!(st.code, 2);
    assert_eq!(st.message, "disk on fire");
    assert_eq!(attrs(&run.attributes)["error.type"], "failed");
    let call = spans
        .iter()
        .find(|s| s.name == "admin.call" && s.status.as_ref().is_some_and(|st| st.code == 2))
        .expect("a failed admin call");
    let a = attrs(&call.attributes);
    assert_eq!(a["error.type"], "503");
    assert_eq!(
        typed(call, "http.response.status_code"),
        Some(AnyV::IntValue(503))
    );
    assert!(
        call.status
            .as_ref()
            .unwrap()
            .message
            .contains("statusCode(503)"),
        "{:?}",
        call.status
    );
    ex.shutdown().await;
    let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
}

#[tokio::test]
async fn an_unsampled_run_prints_no_trace_id() {
    let (rx, addr) = receiver().await;
    let (provider, _guard, metrics) = export_with(addr, Some("t"), Duration::from_secs(5), 0.0);
    let (admin, ex, _probe, _dir) = setup_with(&metrics).await;
    assert_eq!(ex.run(9, "demoJobHandler", 901, json!({})).await, ok());
    admin.callback(901).await;
    let log = ex.log_contains(901, "callback finish.").await;
    assert!(!log.contains("trace_id="), "{log}");
    flush(&provider).await;
    assert!(rx.spans.lock().unwrap().is_empty());
    ex.shutdown().await;
    let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
}

/// `service.name` given only in `OTEL_RESOURCE_ATTRIBUTES` is the one exported; a configured
/// one still wins. The real binary as a child process, so the variable is set for it alone.
#[tokio::test]
async fn service_name_from_otel_resource_attributes() {
    let admin = FakeAdmin::start().await;
    for (configured, want) in [
        ("", "from-env"),
        ("service_name = \"configured\"", "configured"),
    ] {
        let (rx, addr) = receiver().await;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("xxl-edge.toml");
        std::fs::write(
            &config,
            format!(
                r#"{head}[store]
min_free_bytes = 0
[telemetry]
otlp_traces_endpoint = "http://{addr}/v1/traces"
{configured}
"#,
                head = child::config_head(
                    &admin.url(),
                    "xxl-job-executor-sample",
                    &dir.path().join("data")
                ),
            ),
        )
        .unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_xxl-edge"))
            .args(["serve", "--config"])
            .arg(&config)
            .env(
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.name=from-env,deployment.environment=test",
            )
            .env_remove("OTEL_SERVICE_NAME")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // The registration beat's span is exported within the batch delay (2 s).
        let mut res = None;
        for _ in 0..1000 {
            if let Some(r) = rx.resources.lock().unwrap().first().cloned() {
                res = Some(r);
                break;
            }
            // Polling a condition: the export happens in another process.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap();
        let res = res.expect("the child exported spans");
        assert_eq!(res["service.name"], want, "{res:?}");
        assert_eq!(res["deployment.environment"], "test");
        assert!(status.success(), "{status}");
    }
}

/// An admin URL with credentials is shown without them on `/metrics`, in spans and in log
/// lines (a live admin and a dead one, so that errors are logged too); the run's log lines
/// carry the trace id of its exported trace.
#[tokio::test]
async fn admin_credentials_never_leave_the_client() {
    const SECRET: &str = "s3cret";
    let (rx, addr) = receiver().await;
    let metrics = Metrics::new().unwrap();
    let provider = traces::provider(
        &traces::OtlpConfig {
            traces_url: format!("http://{addr}/v1/traces"),
            service_name: Some("t".into()),
            sample_ratio: 1.0,
            timeout: Duration::from_secs(5),
            details: false,
        },
        &metrics,
    )
    .unwrap();
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::registry()
        .with(traces::layer(&provider, false))
        .with(
            traces::log_layer(false, false, move || writer.clone())
                .with_filter(tracing_subscriber::filter::LevelFilter::DEBUG),
        );
    let _guard = tracing::subscriber::set_default(subscriber);

    let admin = FakeAdmin::start().await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let live_url = format!("http://user:{SECRET}@{}/xxl-job-admin", admin.addr);
    let dead_url = format!("http://other:{SECRET}@{dead}/xxl-job-admin");
    let dir = tempfile::tempdir().unwrap();
    let probe = Probe::new();
    // Two admins: `test_config` quotes the string into `addresses = ["..."]`.
    let cfg = test_config(dir.path(), &format!("{live_url}\", \"{dead_url}"), "");
    assert_eq!(cfg.admin.addresses.len(), 2);
    let ex = TestExecutor::start(sample_handlers(
        xxl_edge::Executor::builder()
            .metrics(metrics.clone())
            .config(cfg),
        &probe,
    ))
    .await;
    admin.registrations(1).await;
    logs.wait_for("Registration failed").await;
    assert_eq!(ex.run(5, "demoJobHandler", 501, json!({})).await, ok());
    admin.callback(501).await;
    ex.log_contains(501, "callback finish.").await;
    let scraped = ex.metrics_text().await;
    flush(&provider).await;

    assert!(!scraped.contains(SECRET), "{scraped}");
    assert!(
        scraped.contains(&format!(
            "admin=\"http://REDACTED:REDACTED@{}/xxl-job-admin\"",
            admin.addr
        )),
        "{scraped}"
    );
    let text = logs.text();
    assert!(!text.contains(SECRET), "{text}");
    assert!(text.contains("REDACTED:REDACTED@"), "{text}");
    let spans = rx.spans.lock().unwrap().clone();
    let calls: Vec<&Span> = spans.iter().filter(|s| s.name == "admin.call").collect();
    assert!(calls.len() >= 3, "registry x2 and callback");
    for s in &spans {
        let a = attrs(&s.attributes);
        for (k, v) in &a {
            assert!(!v.contains(SECRET), "{}: {k}={v}", s.name);
        }
        let msg = s
            .status
            .as_ref()
            .map(|st| st.message.clone())
            .unwrap_or_default();
        assert!(!msg.contains(SECRET), "{}: {msg}", s.name);
    }
    assert!(calls
        .iter()
        .all(|c| attrs(&c.attributes)["url.full"].starts_with("http://REDACTED:REDACTED@")));
    // A failed call to the dead admin says why, without the password.
    assert!(calls.iter().any(|c| attrs(&c.attributes)
        .get("error.type")
        .is_some_and(|e| e == "unreachable")));

    // The run's lines lead to its trace.
    let run = spans
        .iter()
        .find(|s| s.name == "job.run" && attrs(&s.attributes)["xxl.job.log_id"] == "501")
        .unwrap();
    let started = text
        .lines()
        .find(|l| l.contains("Run started.") && l.contains("log_id=501"))
        .expect("a line for the run's start");
    assert!(started.contains(&hex(&run.trace_id)), "{started}");
    assert!(started.contains("handler=\"demoJobHandler\""), "{started}");
    let finished = text
        .lines()
        .find(|l| l.contains("Run finished.") && l.contains("log_id=501"))
        .expect("a line for the run's end");
    assert!(finished.contains(&hex(&run.trace_id)), "{finished}");
    ex.shutdown().await;
    let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
}
