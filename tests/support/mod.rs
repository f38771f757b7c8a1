//! Test support: a fake XXL-JOB admin (the peer) and an executor on port 0.
//!
//! Tests synchronise on events (a callback arrived, a handler started), with timeouts only as
//! guards against hanging.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use warp::Filter;

use xxl_edge::{Config, ExecutorBuilder, JobContext, Outcome};

pub mod child;

/// How long any single wait in a test may take before the test fails.
pub const GUARD: Duration = Duration::from_secs(20);

/// How the fake admin answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminMode {
    /// `{"code":200}`.
    Ok,
    /// HTTP 200 with `{"code":500,"msg":"fake admin fail"}`.
    Code500,
    /// HTTP 503.
    Http503,
    /// Takes the call (recorded as accepted) but answers only after `GUARD`: the admin has the
    /// callback, the executor does not know yet, as when it dies in between.
    Hang,
}

/// One request the executor made to the admin.
#[derive(Debug, Clone)]
pub struct AdminCall {
    pub uri: String,
    pub token: Option<String>,
    pub content_type: Option<String>,
    pub body: Value,
    /// The admin answered `code == 200` (the executor may consider it delivered).
    pub accepted: bool,
}

#[derive(Default)]
struct AdminState {
    calls: Vec<AdminCall>,
}

/// A fake admin on 127.0.0.1:0 that records every call.
#[derive(Clone)]
pub struct FakeAdmin {
    pub addr: SocketAddr,
    state: Arc<Mutex<AdminState>>,
    mode: Arc<Mutex<AdminMode>>,
    changed: Arc<Notify>,
    stop: Arc<Notify>,
}

impl FakeAdmin {
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// Starts on a given address (to bring an admin "back" on the same port).
    pub async fn start_on(addr: SocketAddr) -> Self {
        let state = Arc::new(Mutex::new(AdminState::default()));
        let mode = Arc::new(Mutex::new(AdminMode::Ok));
        let changed = Arc::new(Notify::new());
        let stop = Arc::new(Notify::new());
        let (s, m, c) = (state.clone(), mode.clone(), changed.clone());
        let route = warp::post()
            .and(warp::path("xxl-job-admin"))
            .and(warp::path("api"))
            .and(warp::path::param::<String>())
            .and(warp::path::end())
            .and(warp::header::optional::<String>("xxl-job-access-token"))
            .and(warp::header::optional::<String>("content-type"))
            .and(warp::body::bytes())
            .then(
                move |uri: String,
                      token: Option<String>,
                      ct: Option<String>,
                      body: bytes::Bytes| {
                    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let mode = *m.lock().unwrap();
                    s.lock().unwrap().calls.push(AdminCall {
                        uri,
                        token,
                        content_type: ct,
                        body,
                        accepted: matches!(mode, AdminMode::Ok | AdminMode::Hang),
                    });
                    c.notify_waiters();
                    async move {
                        if mode == AdminMode::Hang {
                            tokio::time::sleep(GUARD).await;
                        }
                        match mode {
                            AdminMode::Ok | AdminMode::Hang => warp::reply::with_status(
                                r#"{"code":200,"msg":null,"content":null}"#.to_string(),
                                warp::http::StatusCode::OK,
                            ),
                            AdminMode::Code500 => warp::reply::with_status(
                                r#"{"code":500,"msg":"fake admin fail"}"#.to_string(),
                                warp::http::StatusCode::OK,
                            ),
                            AdminMode::Http503 => warp::reply::with_status(
                                "unavailable".to_string(),
                                warp::http::StatusCode::SERVICE_UNAVAILABLE,
                            ),
                        }
                    }
                },
            );
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let st = stop.clone();
        tokio::spawn(
            warp::serve(route)
                .incoming(listener)
                .graceful(async move { st.notified().await })
                .run(),
        );
        Self {
            addr,
            state,
            mode,
            changed,
            stop,
        }
    }

    /// The admin URL the executor is configured with.
    pub fn url(&self) -> String {
        format!("http://{}/xxl-job-admin", self.addr)
    }

    pub fn set_mode(&self, m: AdminMode) {
        *self.mode.lock().unwrap() = m;
    }

    pub fn shutdown(&self) {
        self.stop.notify_one();
    }

    pub fn calls(&self, uri: &str) -> Vec<AdminCall> {
        self.state
            .lock()
            .unwrap()
            .calls
            .iter()
            .filter(|c| c.uri == uri)
            .cloned()
            .collect()
    }

    /// The uri of every call, in arrival order.
    pub fn uris_in_order(&self) -> Vec<String> {
        self.state
            .lock()
            .unwrap()
            .calls
            .iter()
            .map(|c| c.uri.clone())
            .collect()
    }

    /// Every callback item received, in arrival order (batches flattened).
    pub fn callback_items(&self) -> Vec<Value> {
        self.calls("callback")
            .into_iter()
            .flat_map(|c| c.body.as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// Callback items the admin accepted (answered 200), per logId.
    pub fn delivered(&self) -> std::collections::BTreeMap<i64, Vec<Value>> {
        let mut m = std::collections::BTreeMap::<i64, Vec<Value>>::new();
        for c in self.calls("callback").into_iter().filter(|c| c.accepted) {
            for item in c.body.as_array().cloned().unwrap_or_default() {
                m.entry(item["logId"].as_i64().unwrap())
                    .or_default()
                    .push(item);
            }
        }
        m
    }

    /// Callback items received for one logId.
    pub fn callbacks_for(&self, log_id: i64) -> Vec<Value> {
        self.callback_items()
            .into_iter()
            .filter(|v| v["logId"].as_i64() == Some(log_id))
            .collect()
    }

    /// Waits until `pred` holds for the admin's state.
    pub async fn wait_until(&self, what: &str, pred: impl Fn(&FakeAdmin) -> bool) {
        let fut = async {
            loop {
                let notified = self.changed.notified();
                if pred(self) {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(GUARD, fut).await.is_err() {
            panic!(
                "timed out waiting for {what}; calls so far: {:?}",
                self.state.lock().unwrap().calls
            );
        }
    }

    /// Waits for the callback of `log_id` and returns it.
    pub async fn callback(&self, log_id: i64) -> Value {
        self.wait_until(&format!("callback for logId {log_id}"), |a| {
            !a.callbacks_for(log_id).is_empty()
        })
        .await;
        self.callbacks_for(log_id).remove(0)
    }

    pub async fn registrations(&self, n: usize) {
        self.wait_until(&format!("{n} registrations"), |a| {
            a.calls("registry").len() >= n
        })
        .await;
    }
}

/// Handler events the tests wait on.
#[derive(Clone)]
pub struct Probe {
    started_tx: mpsc::UnboundedSender<i64>,
    started_rx: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<i64>>>,
    pub gate: Arc<Notify>,
}

impl Probe {
    pub fn new() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            started_tx: tx,
            started_rx: Arc::new(tokio::sync::Mutex::new(rx)),
            gate: Arc::new(Notify::new()),
        }
    }

    /// The runs whose gated handler has started and that no test awaited yet (no waiting).
    pub fn started_so_far(&self) -> Vec<i64> {
        let mut out = Vec::new();
        if let Ok(mut rx) = self.started_rx.try_lock() {
            while let Ok(id) = rx.try_recv() {
                out.push(id);
            }
        }
        out
    }

    /// Waits until a gated handler started the run `log_id`.
    pub async fn started(&self, log_id: i64) {
        let mut rx = self.started_rx.lock().await;
        let fut = async {
            while let Some(id) = rx.recv().await {
                if id == log_id {
                    return;
                }
            }
        };
        tokio::time::timeout(GUARD, fut)
            .await
            .unwrap_or_else(|_| panic!("handler never started logId {log_id}"));
    }
}

/// The handlers of the reference sample executor, plus a gated one for ordering tests.
pub fn sample_handlers(b: ExecutorBuilder, probe: &Probe) -> ExecutorBuilder {
    let p = probe.clone();
    let p2 = probe.clone();
    b.handler("demoJobHandler", |ctx: JobContext| async move {
        ctx.log("XXL-JOB, Hello World.");
        Outcome::success()
    })
    // Blocks until the test opens the gate or the run is cancelled.
    .handler("gateJobHandler", move |ctx: JobContext| {
        let p = p.clone();
        async move {
            let _ = p.started_tx.send(ctx.log_id.0);
            tokio::select! {
                () = p.gate.notified() => Outcome::success(),
                () = ctx.cancelled() => Outcome::fail("cancelled"),
            }
        }
    })
    // Waits for the gate, then writes `params` bytes of output (1,000-byte lines): dirty data
    // that the next flush must write, for the full-disk tests.
    .handler("floodJobHandler", {
        let p = probe.clone();
        move |ctx: JobContext| {
            let p = p.clone();
            async move {
                let _ = p.started_tx.send(ctx.log_id.0);
                tokio::select! {
                    () = p.gate.notified() => {}
                    () = ctx.cancelled() => return Outcome::fail("cancelled"),
                }
                let bytes: usize = ctx.param().parse().unwrap_or(0);
                let line = "f".repeat(999);
                for _ in 0..bytes / 1000 {
                    ctx.log(&line);
                }
                Outcome::success()
            }
        }
    })
    // Ignores cancellation entirely: the runner must abort it.
    .handler("stubbornJobHandler", move |ctx: JobContext| {
        let p = p2.clone();
        async move {
            let _ = p.started_tx.send(ctx.log_id.0);
            std::future::pending::<()>().await;
            Outcome::success()
        }
    })
    .handler("failJobHandler", |ctx: JobContext| async move {
        Outcome::fail(ctx.param().to_string())
    })
    .handler("panicJobHandler", |_ctx: JobContext| async move {
        if true {
            panic!("boom in handler");
        }
        Outcome::success()
    })
    .handler("shardJobHandler", |ctx: JobContext| async move {
        Outcome::success_with(format!("shard {}/{}", ctx.shard_index, ctx.shard_total))
    })
    .handler("codeJobHandler", |ctx: JobContext| async move {
        let code: i32 = ctx.param().parse().unwrap_or(0);
        Outcome::code(code, (code == 201).then(|| "custom code".to_string()))
    })
    .handler("resultJobHandler", |ctx: JobContext| async move {
        if ctx.param() == "err" {
            Err::<(), String>("handler returned an error".into())
        } else {
            Ok(())
        }
    })
}

/// A test config: token `default_token`, data in `dir`, admin at `admin`.
pub fn test_config(dir: &std::path::Path, admin: &str, extra_toml: &str) -> Config {
    let toml = test_config_toml(dir, admin, "", "", extra_toml);
    Config::validate(Config::parse_toml(&toml).unwrap()).unwrap()
}

/// [`test_config`]'s TOML, with `admin_extra` keys in `[admin]` and `executor_extra` keys in
/// `[executor]`.
pub fn test_config_toml(
    dir: &std::path::Path,
    admin: &str,
    admin_extra: &str,
    executor_extra: &str,
    extra_toml: &str,
) -> String {
    // Fast kill grace and shutdown for tests, unless the test sets its own [runner].
    let runner = if extra_toml.contains("[runner]") {
        ""
    } else {
        "[runner]\nkill_grace_secs = 0.5\nshutdown_grace_secs = 1\n"
    };
    format!(
        r#"
[admin]
addresses = ["{admin}"]
access_token = "default_token"
timeout_secs = 2
{admin_extra}
[executor]
app_name = "xxl-job-executor-sample"
ip = "127.0.0.1"
listen = "127.0.0.1"
port = 0
data_dir = "{}"
{executor_extra}
{runner}
[store]
min_free_bytes = 0
{extra_toml}
"#,
        dir.display()
    )
}

/// An executor serving on 127.0.0.1:0.
pub struct TestExecutor {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub dir: PathBuf,
    stop: Arc<Notify>,
    task: JoinHandle<()>,
    pub metrics: xxl_edge::telemetry::Metrics,
}

impl TestExecutor {
    pub async fn start(builder: ExecutorBuilder) -> Self {
        let exec = builder.build().await.expect("executor builds");
        let dir = exec.config().executor.data_dir.clone();
        let metrics = exec.metrics().clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(Notify::new());
        let s = stop.clone();
        let task = tokio::spawn(async move {
            exec.run(listener, async move { s.notified().await })
                .await
                .expect("executor runs");
        });
        Self {
            addr,
            client: reqwest::Client::new(),
            dir,
            stop,
            task,
            metrics,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// POSTs with the right token and returns the parsed envelope.
    pub async fn post(&self, path: &str, body: &str) -> Value {
        self.post_with(path, body, Some("default_token")).await
    }

    pub async fn post_with(&self, path: &str, body: &str, token: Option<&str>) -> Value {
        let mut req = self.client.post(self.url(path)).body(body.to_string());
        if let Some(t) = token {
            req = req.header("XXL-JOB-ACCESS-TOKEN", t);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200, "every answer is HTTP 200");
        let text = resp.text().await.unwrap();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }

    /// `/run` with the reference's field layout.
    pub async fn run(&self, job: i32, handler: &str, log_id: i64, extra: Value) -> Value {
        let mut body = serde_json::json!({
            "jobId": job, "executorHandler": handler, "executorParams": "",
            "executorBlockStrategy": "SERIAL_EXECUTION", "executorTimeout": 0,
            "logId": log_id, "logDateTime": 1717171717000i64, "glueType": "BEAN",
            "glueSource": "", "glueUpdatetime": 1541254891000i64,
            "broadcastIndex": 0, "broadcastTotal": 1
        });
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        self.post("/run", &body.to_string()).await
    }

    /// The whole log of a run, read page by page like the admin's browser does.
    pub async fn log_text(&self, log_id: i64) -> String {
        let mut from = 1;
        let mut out = String::new();
        for _ in 0..10_000 {
            let r = self
                .post(
                    "/log",
                    &format!(
                        r#"{{"logDateTim":1717171717000,"logId":{log_id},"fromLineNum":{from}}}"#
                    ),
                )
                .await;
            let d = &r["data"];
            assert_eq!(d, &r["content"], "both payload keys carry the same page");
            let to = d["toLineNum"].as_i64().unwrap();
            if d["isEnd"].as_bool().unwrap() || to < from {
                break;
            }
            out.push_str(d["logContent"].as_str().unwrap());
            from = to + 1;
        }
        out
    }

    /// Waits (bounded) until the run's log contains `needle`; returns the log.
    pub async fn log_contains(&self, log_id: i64, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + GUARD;
        loop {
            let log = self.log_text(log_id).await;
            if log.contains(needle) {
                return log;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "log of {log_id} never contained {needle:?}:\n{log}"
            );
            // Polling a condition, not sleeping for an outcome: the line is written by the
            // executor right after the admin's answer, which the test cannot observe directly.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    pub async fn metrics_text(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Graceful shutdown; waits for `run` to return.
    pub async fn shutdown(self) {
        self.stop.notify_one();
        tokio::time::timeout(GUARD, self.task)
            .await
            .expect("shutdown finishes")
            .expect("executor task ok");
    }
}

pub fn ok() -> Value {
    serde_json::json!({"code": 200, "msg": "Success"})
}

/// A fake admin, an executor with the sample handlers and `extra` config, its probe and data dir.
pub async fn setup(extra: &str) -> (FakeAdmin, TestExecutor, Probe, tempfile::TempDir) {
    let admin = FakeAdmin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let probe = Probe::new();
    let cfg = test_config(dir.path(), &admin.url(), extra);
    let exec = TestExecutor::start(sample_handlers(
        xxl_edge::Executor::builder().config(cfg),
        &probe,
    ))
    .await;
    (admin, exec, probe, dir)
}

/// Triggers `demoJobHandler` for logIds `1..=n` (one job each) and waits until the admin has
/// every callback: "nothing is lost" under a given setting.
pub async fn run_demo_and_await_callbacks(admin: &FakeAdmin, ex: &TestExecutor, n: i64) {
    for id in 1..=n {
        assert_eq!(
            ex.run(id as i32, "demoJobHandler", id, serde_json::json!({}))
                .await,
            ok()
        );
    }
    admin
        .wait_until(&format!("{n} callbacks"), |a| {
            a.delivered().len() == n as usize
        })
        .await;
}

/// What the executor's log layer writes, for a test to read (a `tracing` writer).
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Waits (bounded) until the log holds `needle`.
    pub async fn wait_for(&self, needle: &str) -> String {
        for _ in 0..1000 {
            let t = self.text();
            if t.contains(needle) {
                return t;
            }
            // Polling a condition: the line is written by a task the test cannot await.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no {needle:?} in the log:\n{}", self.text());
    }

    /// Every JSON line written so far, as written.
    pub fn raw_lines(&self) -> Vec<Value> {
        self.text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    /// Every JSON line written so far, with the event's fields at the top level whether or not
    /// the format nests them under `fields`.
    pub fn lines(&self) -> Vec<Value> {
        self.raw_lines()
            .into_iter()
            .map(|mut l| {
                if let Some(Value::Object(fields)) =
                    l.as_object_mut().and_then(|o| o.remove("fields"))
                {
                    for (k, v) in fields {
                        l[k] = v;
                    }
                }
                l
            })
            .collect()
    }

    /// The lines (see [`Captured::lines`]) whose message is `message`.
    pub fn with_message(&self, message: &str) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|l| l["message"] == message)
            .collect()
    }

    /// Waits (bounded) for a line with this message and `log_id`.
    pub async fn wait_for_run_line(&self, message: &str, log_id: i64) -> Value {
        for _ in 0..1000 {
            if let Some(l) = self
                .with_message(message)
                .into_iter()
                .find(|l| l["log_id"] == log_id)
            {
                return l;
            }
            // Polling a condition: the line is written by a task the test cannot await.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no {message:?} for logId {log_id}: {:?}", self.lines());
    }
}
