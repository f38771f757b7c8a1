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
use warp::Filter;
use xxl_edge::telemetry::traces;

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
) {
    let provider = traces::provider(&traces::OtlpConfig {
        traces_url: format!("http://{addr}/v1/traces"),
        service_name: service.into(),
        sample_ratio: 1.0,
        timeout,
    })
    .unwrap();
    let subscriber = tracing_subscriber::registry().with(traces::layer(&provider));
    let guard = tracing::subscriber::set_default(subscriber);
    (provider, guard)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test]
async fn one_trace_per_trigger_with_linked_callback() {
    let (rx, addr) = receiver().await;
    let (provider, _guard) = export_to(addr, "xxl-edge-test", Duration::from_secs(5));

    let (admin, ex, _probe, _dir) = setup("").await;
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

    let p = provider.clone();
    tokio::task::spawn_blocking(move || p.force_flush().unwrap())
        .await
        .unwrap();
    let spans = rx.spans.lock().unwrap().clone();
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
    assert!(a["url.full"].ends_with("/xxl-job-admin/api/callback"));
    assert!(!by_name("registry.beat").is_empty());

    // A refused trigger is an error span.
    let refused = by_name("POST /run")
        .into_iter()
        .find(|s| attrs(&s.attributes)["xxl.job.log_id"] == "4301")
        .unwrap();
    assert_eq!(refused.status.as_ref().unwrap().code, 2);
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
    let (provider, _guard) = export_to(closed, "x", Duration::from_secs(1));
    let (admin, ex, _probe, _dir) = setup("").await;
    run_demo_and_await_callbacks(&admin, &ex, 20).await;
    ex.shutdown().await;
    let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
}
