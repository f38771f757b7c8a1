//! The executor's HTTP face: `/beat`, `/idleBeat`, `/run` (and `/trigger`), `/kill`, `/log`,
//! plus `GET /metrics` and `GET /healthz`.
//!
//! Requests are checked in the reference's order (protocol §1.1): method, token (constant-time),
//! exact request target (no prefix stripping, no trailing slash, a query string is part of the
//! target), then the body, read up to a limit whether or not a Content-Length came with it.
//! Every answer is HTTP 200 with the JSON envelope; [`ApiError`] is the one mapping from a failure
//! to that envelope. [`serve`] is the accept loop that runs these routes on a listener.

mod budget;
pub mod serve;

use std::sync::Arc;

use bytes::Buf;
use futures_util::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use std::convert::Infallible;
use warp::http::{HeaderValue, Method, StatusCode};
use warp::reply::Response;
use warp::Filter;

use crate::admin::wire::{
    self, AdminClient, JobIdParam, LogParam, LogResult, ReturnT, RunResult, TriggerParam,
};
use crate::config::{Secret, ServerConfig};
use crate::job::{JobId, LogId, Trigger};
use crate::registry::RegistrationStatus;
use crate::runner::{Refusal, Runner};
use crate::store::Store;
use crate::telemetry::{Metrics, TriggerResult};

/// Everything the routes need.
#[derive(Clone)]
pub struct ApiState {
    /// The runner.
    pub runner: Runner,
    /// The store (read-only here: logs and gauges).
    pub store: Store,
    /// Run logs: `/log` serves only lines that are on disk.
    pub(crate) logs: crate::runlog::RunLogs,
    /// Metrics.
    pub metrics: Metrics,
    /// Expected token; empty disables the check.
    pub token: Secret,
    /// Limits.
    pub limits: ServerConfig,
    /// Serve `/metrics` on this port.
    pub serve_metrics: bool,
    /// Registration ages, for the gauge.
    pub registration: RegistrationStatus,
    /// Admin addresses, for the gauge's label.
    pub admins: Vec<String>,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState").finish_non_exhaustive()
    }
}

/// Every way a request fails, mapped to the reference's envelope in one place.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Not POST.
    #[error("invalid request, HttpMethod not support.")]
    Method,
    /// Missing or wrong token.
    #[error("The access token is wrong.")]
    Token,
    /// Unknown request target.
    #[error("invalid request, uri-mapping({0}) not found.")]
    NotFound(String),
    /// Body over the limit.
    #[error("request error:request body exceeds the limit of {0} bytes (server.body_limit_bytes)")]
    TooLarge(usize),
    /// The body did not arrive whole in time.
    #[error("request error:request body not received within {} s (server.body_read_timeout_secs)", .0.as_secs_f64())]
    BodyTimeout(std::time::Duration),
    /// Unreadable or malformed body.
    #[error("request error:{0}")]
    Malformed(String),
    /// The trigger is not valid (the reference's message, verbatim).
    #[error("{0}")]
    Invalid(String),
    /// The runner refused the trigger.
    #[error("{0}")]
    Refused(#[from] Refusal),
}

fn json_reply<T: serde::Serialize>(body: &T) -> Response {
    text_reply(
        serde_json::to_string(body)
            .unwrap_or_else(|_| r#"{"code":500,"msg":"response encoding failed"}"#.to_string()),
    )
}

fn text_reply(text: String) -> Response {
    let mut resp = Response::new(text.into());
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/json;charset=UTF-8"),
    );
    resp
}

impl ApiError {
    fn into_response(self) -> Response {
        json_reply(&ReturnT::fail(self.to_string()))
    }
}

/// Builds all routes. Tests call this with `warp::test`, the binary serves it.
pub fn routes(
    state: Arc<ApiState>,
) -> impl Filter<Extract = (Response,), Error = std::convert::Infallible> + Clone {
    let with_state = {
        let s = state.clone();
        warp::any().map(move || s.clone())
    };
    let metrics = warp::get()
        .and(warp::path("metrics"))
        .and(warp::path::end())
        .and(with_state.clone())
        .and_then(|s: Arc<ApiState>| async move {
            if s.serve_metrics {
                Ok(metrics_response(&s))
            } else {
                Err(warp::reject::not_found())
            }
        });
    let healthz = warp::get()
        .and(warp::path("healthz"))
        .and(warp::path::end())
        .map(|| {
            let mut r = Response::new("ok\n".into());
            r.headers_mut()
                .insert("content-type", HeaderValue::from_static("text/plain"));
            r
        });
    let query = warp::query::raw().or(warp::any().map(String::new)).unify();
    let budget = Arc::new(budget::TokenBudget::default());
    let rpc = warp::method()
        .and(warp::path::full())
        .and(query)
        .and(warp::header::optional::<String>("xxl-job-access-token"))
        .and(warp::header::optional::<String>("accept-charset"))
        // hyper has already refused a Content-Length that is not a number.
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream())
        .and(with_state)
        .and(warp::ext::optional::<serve::PeerAddr>())
        .and(warp::any().map(move || budget.clone()))
        .then(
            |method: Method,
             path: warp::path::FullPath,
             query: String,
             token: Option<String>,
             accept_charset: Option<String>,
             content_length: Option<u64>,
             body,
             s: Arc<ApiState>,
             peer: Option<serve::PeerAddr>,
             budget: Arc<budget::TokenBudget>| async move {
                let target = if query.is_empty() {
                    path.as_str().to_string()
                } else {
                    format!("{}?{query}", path.as_str())
                };
                let req = Request {
                    method: &method,
                    target: &target,
                    token: token.as_deref(),
                    client: AdminClient::from_accept_charset(accept_charset.as_deref()),
                    content_length,
                    peer: peer.map(|p| p.0.ip()),
                };
                let started = std::time::Instant::now();
                let route = crate::telemetry::http_route(&target);
                let res = dispatch(&s, req, body, &budget).await;
                observe(&s.metrics, route, &res, started.elapsed());
                match res {
                    Ok(r) => r,
                    Err(e) => e.into_response(),
                }
            },
        );
    metrics
        .or(healthz)
        .unify()
        .or(rpc)
        .unify()
        .recover(|r: warp::Rejection| async move {
            // Anything warp refused by itself (an unreadable header, say) still gets the
            // envelope: a 2.4 admin mishandles anything but JSON (protocol §5.4).
            Ok::<_, std::convert::Infallible>(
                ApiError::Malformed(format!("invalid request ({r:?})")).into_response(),
            )
        })
        .unify()
}

/// The routes as a hyper service, for [`serve::serve`].
pub fn service(
    state: Arc<ApiState>,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = Response,
    Error = Infallible,
    Future: Send + 'static,
> + Clone
       + Send
       + Sync
       + 'static {
    hyper_util::service::TowerToHyperService::new(warp::service(routes(state)))
}

/// [`metrics_routes`] as a hyper service, for [`serve::serve`] on `telemetry.metrics_listen`.
pub fn metrics_service(
    state: Arc<ApiState>,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = Response,
    Error = Infallible,
    Future: Send + 'static,
> + Clone
       + Send
       + Sync
       + 'static {
    hyper_util::service::TowerToHyperService::new(warp::service(metrics_routes(state)))
}

/// Only the `/metrics` route, for a separate listen address.
pub fn metrics_routes(
    state: Arc<ApiState>,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    warp::get()
        .and(warp::path("metrics"))
        .and(warp::path::end())
        .map(move || metrics_response(&state))
}

fn metrics_response(s: &ApiState) -> Response {
    s.metrics.outbox_entries.set(s.store.outbox_len() as i64);
    s.metrics
        .outbox_oldest_age
        .set(s.store.outbox_oldest_age().map_or(0.0, |d| d.as_secs_f64()));
    for (admin, age) in s.admins.iter().zip(s.registration.ages()) {
        // Never registered: report the age as +Inf so "no registration for N minutes" fires.
        s.metrics
            .registration_age
            .with_label_values(&[admin])
            .set(age.map_or(f64::INFINITY, |d| d.as_secs_f64()));
    }
    let mut r = Response::new(s.metrics.render().into());
    r.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

/// Counts a request (`xxl_edge_http_requests_total`, its latency, refused tokens) and logs
/// refusals a peer can repeat at will, rate-limited.
fn observe(
    m: &Metrics,
    route: &'static str,
    res: &Result<Response, ApiError>,
    took: std::time::Duration,
) {
    let code = if res.is_ok() { "200" } else { "500" };
    m.http_requests.with_label_values(&[route, code]).inc();
    m.http_latency
        .with_label_values(&[route])
        .observe(took.as_secs_f64());
    match res {
        Err(ApiError::Token) => {
            m.token_refusals.inc();
            crate::telemetry::throttle::throttled!(
                m,
                crate::telemetry::LogKind::TokenRefused,
                warn,
                route,
                "Refused a request with a missing or wrong access token (xxl_edge_http_token_refusals_total)."
            );
        }
        Err(
            e @ (ApiError::Method
            | ApiError::NotFound(_)
            | ApiError::TooLarge(_)
            | ApiError::BodyTimeout(_)
            | ApiError::Malformed(_)
            | ApiError::Invalid(_)),
        ) => {
            // The peer's text (an unknown target) is cut: it can be of any length.
            let error = e.to_string();
            let error = crate::telemetry::throttle::cut(&error, 200);
            crate::telemetry::throttle::throttled!(
                m,
                crate::telemetry::LogKind::BadRequest,
                info,
                route,
                error,
                "Refused a malformed request."
            );
        }
        // Refused triggers are logged by the runner, with the run's fields.
        Ok(_) | Err(ApiError::Refused(_)) => {}
    }
}

fn token_ok(expected: &str, got: Option<&str>) -> bool {
    if expected.trim().is_empty() {
        return true;
    }
    let Some(got) = got else {
        return false;
    };
    // Constant time in the token's content: every byte is compared whatever the first mismatch.
    let (a, b) = (expected.as_bytes(), got.as_bytes());
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

/// Reads the whole body, refusing it once it passes `limit`. With a Content-Length the buffer is
/// sized once (never above `limit`): growing by doubling would hold up to twice a large body.
async fn read_body<S, B>(
    body: S,
    content_length: Option<u64>,
    limit: usize,
) -> Result<Vec<u8>, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let mut body = body;
    let expected = content_length.map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX));
    let mut out = Vec::with_capacity(expected.min(limit));
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|e| ApiError::Malformed(e.to_string()))?;
        if out.len() + chunk.remaining() > limit {
            return Err(ApiError::TooLarge(limit));
        }
        while chunk.has_remaining() {
            let c = chunk.chunk();
            out.extend_from_slice(c);
            let n = c.len();
            chunk.advance(n);
        }
    }
    Ok(out)
}

/// [`read_body`] within `timeout`: a client that sends its head and trickles (or withholds) the
/// body would otherwise hold the request, and its connection, for as long as it likes.
async fn read_body_within<S, B>(
    body: S,
    content_length: Option<u64>,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Vec<u8>, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    tokio::time::timeout(timeout, read_body(body, content_length, limit))
        .await
        .map_err(|_| ApiError::BodyTimeout(timeout))?
}

/// Every endpoint that reads its body reads one JSON object, as Gson does (protocol §1.1 step 5).
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    wire::from_json_object(body).map_err(|e| ApiError::Malformed(e.to_string()))
}

/// What [`dispatch`] needs of a request besides its body.
struct Request<'a> {
    method: &'a Method,
    target: &'a str,
    token: Option<&'a str>,
    client: AdminClient,
    content_length: Option<u64>,
    peer: Option<std::net::IpAddr>,
}

async fn dispatch<S, B>(
    s: &ApiState,
    req: Request<'_>,
    body: S,
    budget: &budget::TokenBudget,
) -> Result<Response, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    if req.method != Method::POST {
        return Err(ApiError::Method);
    }
    // A peer out of wrong-token budget is refused without a look at its token (`budget`).
    if !s.token.expose().trim().is_empty() && budget.exhausted(req.peer) {
        return Err(ApiError::Token);
    }
    if !token_ok(s.token.expose(), req.token) {
        budget.spend(req.peer);
        return Err(ApiError::Token);
    }
    let route = match req.target {
        "/beat" | "/idleBeat" | "/run" | "/trigger" | "/kill" | "/log" => req.target,
        other => return Err(ApiError::NotFound(other.to_string())),
    };
    let body = read_body_within(
        body,
        req.content_length,
        s.limits.body_limit_bytes,
        s.limits.body_read_timeout,
    )
    .await?;
    match route {
        // The reference never parses `/beat`'s body (2.4.x sends `""`, 3.3+ none).
        "/beat" => Ok(json_reply(&ReturnT::success())),
        "/idleBeat" => {
            let p: JobIdParam = parse(&body)?;
            if s.runner.is_busy(JobId(p.job_id)) {
                Ok(json_reply(&ReturnT::fail(
                    "job thread is running or has trigger queue.",
                )))
            } else {
                Ok(json_reply(&ReturnT::success()))
            }
        }
        "/kill" => {
            let p: JobIdParam = parse(&body)?;
            if s.runner.kill(JobId(p.job_id)) {
                Ok(json_reply(&ReturnT::success()))
            } else {
                Ok(json_reply(&wire::kill_without_worker(req.client)))
            }
        }
        "/log" => {
            let p: LogParam = parse(&body)?;
            drop(body);
            // A line `/log` shows is never taken back by a crash: lines not yet on disk are
            // flushed before the answer (one group commit shared with everything else
            // waiting). The page is read first, then the check: a chunk written between a
            // check and a read would be served unflushed.
            s.logs.save(LogId(p.log_id));
            let page = read_log(s, &p);
            if s.logs.unflushed() {
                if let Err(e) = s.store.synced().await {
                    tracing::warn!(error = %e, "Cannot flush run logs before serving /log.");
                }
            }
            let size = page.log_content.len();
            Ok(match wire::success_json(&page, size) {
                Ok(text) => text_reply(text),
                Err(e) => json_reply(&ReturnT::fail(format!("response encoding failed: {e}"))),
            })
        }
        // "/run" and the 3.5 name "/trigger".
        _ => {
            let p: TriggerParam = match parse(&body) {
                Ok(p) => p,
                Err(e) => {
                    s.metrics.trigger("unknown", TriggerResult::Invalid);
                    return Err(e);
                }
            };
            let t = match Trigger::try_from(p) {
                Ok(t) => t,
                Err(e) => {
                    s.metrics.trigger("unknown", TriggerResult::Invalid);
                    return Err(ApiError::Invalid(e.to_string()));
                }
            };
            // One trace per trigger starts here; the queue wait and the run are its children.
            let span = tracing::debug_span!(
                "POST /run",
                otel.kind = "server",
                otel.status_code = tracing::field::Empty,
                otel.status_description = tracing::field::Empty,
                error.type = tracing::field::Empty,
                http.request.method = "POST",
                http.route = route,
                http.response.status_code = 200,
                xxl.job.id = t.job_id.0,
                xxl.job.log_id = t.log_id.0,
                xxl.job.handler = t.bean_handler(),
                xxl.job.glue_type = t.glue.type_name(),
                xxl.job.block_strategy = t.block.as_str(),
                xxl.trigger.code = tracing::field::Empty,
                xxl.trigger.msg = tracing::field::Empty,
            );
            let res = tracing::Instrument::instrument(s.runner.submit(t), span.clone()).await;
            match &res {
                Ok(()) => span.record("xxl.trigger.code", 200),
                Err(r) => {
                    span.record("otel.status_code", "ERROR");
                    span.record("error.type", r.result.as_str());
                    span.record("otel.status_description", r.msg.as_str());
                    span.record("xxl.trigger.msg", r.msg.as_str());
                    span.record("xxl.trigger.code", 500)
                }
            };
            res?;
            Ok(json_reply(&ReturnT::success()))
        }
    }
}

fn read_log(s: &ApiState, p: &LogParam) -> LogResult {
    let from = p.from_line_num;
    let id = LogId(p.log_id);
    let page = s.store.read_log(
        id,
        u32::try_from(from.max(1)).unwrap_or(1),
        s.limits.log_page_max_lines,
        s.limits.log_page_max_bytes,
    );
    match page {
        Ok(Some(page)) => {
            let mut content = String::with_capacity(page.lines.iter().map(|l| l.len() + 1).sum());
            for l in page.lines {
                content.push_str(&l);
                content.push('\n');
            }
            // Asked for by xxl-edge's own `trigger` command only: the result as data, so it
            // never has to find it in the log text.
            let result = p
                .xxl_edge_result
                .then(|| s.store.run(id).ok().flatten())
                .flatten()
                .and_then(|r| r.outcome)
                .map(|o| RunResult {
                    handle_code: o.code,
                    handle_msg: o.msg,
                });
            LogResult {
                from_line_num: from,
                to_line_num: i32::try_from(page.to).unwrap_or(i32::MAX),
                log_content: content,
                is_end: false,
                xxl_edge_result: result,
            }
        }
        Ok(None) => LogResult {
            from_line_num: from,
            to_line_num: 0,
            log_content: "readLog fail, logFile not exists".into(),
            is_end: true,
            xxl_edge_result: None,
        },
        Err(e) => LogResult {
            from_line_num: from,
            to_line_num: 0,
            log_content: format!("readLog fail, {e}"),
            is_end: false,
            xxl_edge_result: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::{read_body, read_body_within, token_ok, ApiError};
    use bytes::Bytes;
    use futures_util::StreamExt;
    use std::time::Duration;

    fn chunks(
        n: usize,
        size: usize,
    ) -> impl futures_util::Stream<Item = Result<Bytes, warp::Error>> + Unpin {
        futures_util::stream::iter((0..n).map(move |_| Ok(Bytes::from(vec![b'x'; size]))))
    }

    #[tokio::test]
    async fn a_body_with_a_content_length_is_read_into_one_buffer_of_that_size() {
        // Grown by doubling, 10 chunks of 100 bytes end in a buffer of 1600.
        let body = read_body(chunks(10, 100), Some(1000), 4096).await.unwrap();
        assert_eq!((body.len(), body.capacity()), (1000, 1000));
        // A Content-Length over the limit never sizes the buffer past the limit.
        let e = read_body(chunks(10, 100), Some(1 << 40), 512)
            .await
            .unwrap_err();
        assert!(matches!(e, ApiError::TooLarge(512)));
        let body = read_body(chunks(5, 100), Some(u64::MAX), 512)
            .await
            .unwrap();
        assert!(body.capacity() <= 512);
        // Without one (chunked), the body is still read whole.
        assert_eq!(read_body(chunks(3, 7), None, 512).await.unwrap().len(), 21);
    }

    /// A body that stops coming fails the request at the timeout, not later, not sooner.
    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_coming_times_out() {
        let started = tokio::time::Instant::now();
        let stalled = chunks(1, 10).chain(futures_util::stream::pending());
        let e = read_body_within(Box::pin(stalled), Some(100), 4096, Duration::from_secs(30))
            .await
            .unwrap_err();
        assert!(matches!(e, ApiError::BodyTimeout(_)), "{e:?}");
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        assert_eq!(
            e.to_string(),
            "request error:request body not received within 30 s (server.body_read_timeout_secs)"
        );
        // A body that arrives in time is read whole.
        let body = read_body_within(chunks(3, 7), None, 512, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(body.len(), 21);
    }

    #[test]
    fn token_check_matches_the_reference() {
        assert!(token_ok("", None));
        assert!(token_ok("  ", Some("x")));
        assert!(token_ok("default_token", Some("default_token")));
        assert!(!token_ok("default_token", None));
        assert!(!token_ok("default_token", Some("default_toke")));
        assert!(!token_ok("default_token", Some("default_tokenx")));
        assert!(!token_ok("default_token", Some("wrong_token")));
    }
}
