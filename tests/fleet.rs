//! Fleet-wide idempotency keys (issue 12): two executor processes of one app, each with its own
//! data directory, share a real `redis-server` started here on 127.0.0.1 with a free port.
//!
//! Every handler appends its logId to one file shared by both devices, so "exactly one
//! execution" is read off that file. Waits are on callbacks at the fake admin and on log lines;
//! the only polling is of external state (Redis keys, the shared file), bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use support::child::{self, Child};
use support::{FakeAdmin, GUARD};

/// A port nothing listens on (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `cond` every 20 ms, at most [`GUARD`]: for state outside the executors (Redis keys,
/// the shared file), which tells no one when it changes.
async fn until<F, Fut>(what: &str, cond: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + GUARD;
    while tokio::time::Instant::now() < deadline {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A real `redis-server`, without persistence (a restart loses every key, as a Redis without
/// AOF or RDB does).
struct Redis {
    proc: Option<std::process::Child>,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    async fn start() -> Self {
        Self::start_on(free_port()).await
    }

    async fn start_on(port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let proc = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}): tests/fleet.rs needs Debian's redis-server \
                     on PATH (apt-get install redis-server; .ci/test installs it)"
                )
            });
        let me = Self {
            proc: Some(proc),
            port,
            _dir: dir,
        };
        until("redis-server to answer PING", || async {
            me.try_query::<String>(redis::cmd("PING")).await.is_ok()
        })
        .await;
        me
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    async fn try_query<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> redis::RedisResult<T> {
        let client = redis::Client::open(self.url())?;
        let mut c = client.get_multiplexed_async_connection().await?;
        cmd.query_async(&mut c).await
    }

    async fn get(&self, key: &str) -> Option<String> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(key);
        self.try_query(cmd).await.unwrap()
    }

    /// Milliseconds left on `key` (-2: no such key).
    async fn pttl(&self, key: &str) -> i64 {
        let mut cmd = redis::cmd("PTTL");
        cmd.arg(key);
        self.try_query(cmd).await.unwrap()
    }

    /// Kills the server (its keys are gone with it).
    fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

const PREFIX: &str = "xxl-edge:fleet-test:";

/// A device's config (its own data directory) and the directory both devices share.
struct Device {
    _tmp: tempfile::TempDir,
    config: PathBuf,
}

/// `keys` is the body of the `[keys]` table.
fn device(admin: &FakeAdmin, shared: &Path, keys: &str) -> Device {
    let tmp = tempfile::tempdir().unwrap();
    let s = shared.display();
    let config = tmp.path().join("xxl-edge.toml");
    let admin_url = admin.url();
    std::fs::write(
        &config,
        format!(
            r#"{head}[runner]
kill_grace_secs = 0.5
shutdown_grace_secs = 1
[store]
min_free_bytes = 0
[keys]
{keys}
[handlers.work]
command = ["sh", "-c", "echo $XXL_JOB_LOG_ID >> {s}/ran.txt"]
idempotency_key = "order-{{params}}"
idempotency_ttl_secs = 60
[handlers.gate]
command = ["sh", "-c", "echo $XXL_JOB_LOG_ID >> {s}/ran.txt; while [ ! -f {s}/go ] && [ -d {s} ]; do sleep 0.02; done"]
idempotency_key = "order-{{params}}"
idempotency_ttl_secs = 60
[handlers.fail]
command = ["sh", "-c", "echo $XXL_JOB_LOG_ID >> {s}/ran.txt; exit 3"]
idempotency_key = "order-{{params}}"
idempotency_ttl_secs = 60
[handlers.short]
command = ["sh", "-c", "echo $XXL_JOB_LOG_ID >> {s}/ran.txt"]
idempotency_key = "order-{{params}}"
idempotency_ttl_secs = 3
"#,
            head = child::config_head(&admin_url, "fleet-test", &tmp.path().join("data")),
        ),
    )
    .unwrap();
    Device { _tmp: tmp, config }
}

fn redis_keys(r: &Redis, name: &str, extra: &str) -> String {
    format!(
        "backend = \"redis\"\nredis_url = \"{}\"\ndevice = \"{name}\"\nlock_ttl_secs = 1\n\
         call_timeout_secs = 0.5\nconnect_timeout_secs = 0.5\n{extra}",
        r.url()
    )
}

/// The logIds that ran, in the order they started, on either device.
fn ran(shared: &Path) -> Vec<i64> {
    std::fs::read_to_string(shared.join("ran.txt"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect()
}

async fn trigger(dev: &Child, handler: &str, log_id: i64, params: &str) {
    let r = dev
        .post(
            "/run",
            json!({"jobId": 1, "executorHandler": handler, "logId": log_id,
                   "executorParams": params, "logDateTime": 1717171717000i64,
                   "glueType": "BEAN", "executorBlockStrategy": "SERIAL_EXECUTION"})
            .to_string(),
        )
        .await
        .unwrap();
    assert_eq!(r["code"], 200, "/run of logId {log_id}: {r}");
}

/// Waits until the holder's key is settled in Redis: that happens once its outcome is on
/// disk, the moment its callback may leave too, so a callback can arrive first.
async fn settled(redis: &Redis, key: &str) {
    let lock = format!("{PREFIX}lock:{key}");
    until(&format!("{key} to be settled in Redis"), || async {
        redis.get(&lock).await.is_none()
    })
    .await;
}

fn code(cb: &Value) -> i64 {
    cb["handleCode"].as_i64().unwrap()
}

fn msg(cb: &Value) -> String {
    cb["handleMsg"].as_str().unwrap_or("").to_string()
}

struct Fleet {
    admin: FakeAdmin,
    shared: tempfile::TempDir,
    a: Child,
    b: Child,
    _devs: (Device, Device),
}

async fn fleet(r: &Redis) -> Fleet {
    let admin = FakeAdmin::start().await;
    let shared = tempfile::tempdir().unwrap();
    let da = device(&admin, shared.path(), &redis_keys(r, "dev-a", ""));
    let db = device(&admin, shared.path(), &redis_keys(r, "dev-b", ""));
    let (a, b) = tokio::join!(Child::start(&da.config), Child::start(&db.config));
    Fleet {
        admin,
        shared,
        a,
        b,
        _devs: (da, db),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_runs_once_across_the_fleet_one_after_the_other() {
    let redis = Redis::start().await;
    let f = fleet(&redis).await;
    trigger(&f.a, "work", 1, "seq").await;
    let first = f.admin.callback(1).await;
    assert_eq!(code(&first), 200, "{first}");
    settled(&redis, "order-seq").await;
    assert_eq!(
        redis
            .get(&format!("{PREFIX}done:order-seq"))
            .await
            .as_deref(),
        Some("dev-a/1")
    );
    assert_eq!(redis.get(&format!("{PREFIX}lock:order-seq")).await, None);

    trigger(&f.b, "work", 2, "seq").await;
    let second = f.admin.callback(2).await;
    assert_eq!(code(&second), 200, "{second}");
    assert_eq!(
        msg(&second),
        "skipped: idempotency key \"order-seq\" matches logId:1 on dev-a, which succeeded; nothing was run"
    );
    // And on the device that ran it, through Redis as well.
    trigger(&f.a, "work", 3, "seq").await;
    assert!(msg(&f.admin.callback(3).await).contains("matches logId:1 on dev-a"));
    assert_eq!(ran(f.shared.path()), vec![1]);
    assert!(f.b.log(2).await.contains("matches logId:1 on dev-a"));

    // Calls by result, and their latency, with bounded labels only.
    let metrics = |c: &Child| {
        let url = format!("http://{}/metrics", c.addr);
        async move { reqwest::get(url).await.unwrap().text().await.unwrap() }
    };
    let (ma, mb) = (metrics(&f.a).await, metrics(&f.b).await);
    for line in [
        "xxl_edge_keys_redis_calls_total{call=\"acquire\",result=\"taken\"} 1",
        "xxl_edge_keys_redis_calls_total{call=\"acquire\",result=\"succeeded\"} 1",
        "xxl_edge_keys_redis_calls_total{call=\"settle\",result=\"succeeded\"} 1",
        "xxl_edge_keys_redis_call_duration_seconds_count{call=\"acquire\"} 2",
    ] {
        assert!(ma.contains(line), "dev-a lacks {line}:\n{ma}");
    }
    assert!(
        mb.contains("xxl_edge_keys_redis_calls_total{call=\"acquire\",result=\"succeeded\"} 1"),
        "{mb}"
    );
    assert!(!mb.contains("result=\"taken\""), "{mb}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_runs_once_when_both_devices_get_it_at_once() {
    let redis = Redis::start().await;
    let f = fleet(&redis).await;
    // Both at the same moment: one runs, the other is told who has it (or that it succeeded).
    tokio::join!(
        trigger(&f.a, "work", 1, "both"),
        trigger(&f.b, "work", 2, "both")
    );
    let (c1, c2) = (f.admin.callback(1).await, f.admin.callback(2).await);
    let ran_now = ran(f.shared.path());
    assert_eq!(ran_now.len(), 1, "ran: {ran_now:?}; {c1} {c2}");
    let (winner, loser) = if ran_now[0] == 1 { (c1, c2) } else { (c2, c1) };
    assert_eq!(code(&winner), 200, "{winner}");
    let m = msg(&loser);
    assert!(
        (code(&loser) == 200 && m.contains("which succeeded; nothing was run"))
            || (code(&loser) == 500 && m.contains("which is running it now; nothing was run")),
        "{loser}"
    );

    // While one device runs it, the other is called back naming the holder.
    trigger(&f.a, "gate", 3, "long").await;
    until("logId 3 to start", || async {
        ran(f.shared.path()).contains(&3)
    })
    .await;
    trigger(&f.b, "work", 4, "long").await;
    let held = f.admin.callback(4).await;
    assert_eq!(code(&held), 500, "{held}");
    assert_eq!(
        msg(&held),
        "not run: idempotency key \"order-long\" is held by logId:3 on dev-a, which is running it now; nothing was run"
    );
    std::fs::write(f.shared.path().join("go"), "").unwrap();
    assert_eq!(code(&f.admin.callback(3).await), 200);
    settled(&redis, "order-long").await;
    trigger(&f.b, "work", 5, "long").await;
    assert!(msg(&f.admin.callback(5).await).contains("matches logId:3 on dev-a"));
    assert_eq!(ran(f.shared.path()).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_releases_its_key_for_the_fleet() {
    let redis = Redis::start().await;
    let f = fleet(&redis).await;
    trigger(&f.a, "fail", 1, "f").await;
    assert_eq!(code(&f.admin.callback(1).await), 500);
    settled(&redis, "order-f").await;
    assert_eq!(redis.get(&format!("{PREFIX}done:order-f")).await, None);
    trigger(&f.b, "work", 2, "f").await;
    assert_eq!(code(&f.admin.callback(2).await), 200);
    assert_eq!(ran(f.shared.path()), vec![1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_holds_for_its_ttl_then_the_key_runs_again() {
    let redis = Redis::start().await;
    let f = fleet(&redis).await;
    trigger(&f.a, "short", 1, "t").await;
    assert_eq!(code(&f.admin.callback(1).await), 200);
    settled(&redis, "order-t").await;
    trigger(&f.b, "short", 2, "t").await;
    assert!(msg(&f.admin.callback(2).await).contains("matches logId:1 on dev-a"));
    let done = format!("{PREFIX}done:order-t");
    until("the success mark to expire", || async {
        redis.get(&done).await.is_none()
    })
    .await;
    trigger(&f.b, "short", 3, "t").await;
    assert_eq!(code(&f.admin.callback(3).await), 200);
    assert_eq!(ran(f.shared.path()), vec![1, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holder_loses_its_lock_when_the_lock_ttl_ends() {
    let redis = Redis::start().await;
    let admin = FakeAdmin::start().await;
    let shared = tempfile::tempdir().unwrap();
    let da = device(&admin, shared.path(), &redis_keys(&redis, "dev-a", ""));
    let db = device(&admin, shared.path(), &redis_keys(&redis, "dev-b", ""));
    let a = Child::start(&da.config).await;
    let b = Child::start(&db.config).await;
    trigger(&a, "gate", 1, "k").await;
    until("logId 1 to start", || async {
        ran(shared.path()).contains(&1)
    })
    .await;
    let lock = format!("{PREFIX}lock:order-k");
    assert_eq!(redis.get(&lock).await.as_deref(), Some("dev-a/1"));
    // The run renews its lock (TTL 1 s, renewed every third): its time left goes back up, and
    // it outlives its first TTL.
    let first = redis.pttl(&lock).await;
    let taken = tokio::time::Instant::now();
    until("a renewal", || async { redis.pttl(&lock).await > first }).await;
    until("the lock to outlive two TTLs", || async {
        assert_eq!(redis.get(&lock).await.as_deref(), Some("dev-a/1"));
        taken.elapsed() > Duration::from_secs(2)
    })
    .await;
    a.signal(nix::sys::signal::Signal::SIGKILL);
    assert!(a.exited_within(GUARD).await.is_some());
    until("the dead device's lock to expire", || async {
        redis.get(&lock).await.is_none()
    })
    .await;
    trigger(&b, "work", 2, "k").await;
    assert_eq!(code(&admin.callback(2).await), 200);
    settled(&redis, "order-k").await;
    assert_eq!(ran(shared.path()), vec![1, 2]);

    // The restart reports the interrupted run and settles what it held: it releases nothing
    // of dev-b's, and dev-b's success stands.
    drop(a);
    let a = Child::start(&da.config).await;
    let interrupted = admin.callback(1).await;
    assert_eq!(code(&interrupted), 500, "{interrupted}");
    trigger(&a, "work", 3, "k").await;
    assert!(msg(&admin.callback(3).await).contains("matches logId:2 on dev-b"));
    assert_eq!(
        redis.get(&format!("{PREFIX}done:order-k")).await.as_deref(),
        Some("dev-b/2")
    );
    assert_eq!(ran(shared.path()), vec![1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_with_unreachable_fail_fails_the_run_naming_redis() {
    let admin = FakeAdmin::start().await;
    let shared = tempfile::tempdir().unwrap();
    let keys = format!(
        "backend = \"redis\"\nredis_url = \"redis://127.0.0.1:{}/\"\ndevice = \"dev-a\"\n\
         connect_timeout_secs = 0.5\ncall_timeout_secs = 0.5\n",
        free_port()
    );
    let d = device(&admin, shared.path(), &keys);
    let a = Child::start(&d.config).await;
    trigger(&a, "work", 1, "down").await;
    let cb = admin.callback(1).await;
    assert_eq!(code(&cb), 500, "{cb}");
    assert!(
        msg(&cb).starts_with(
            "not run: the fleet's Redis could not check idempotency key \"order-down\" (Redis:"
        ) && msg(&cb).ends_with("keys.unreachable is \"fail\", so the handler was not run"),
        "{cb}"
    );
    assert!(ran(shared.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_with_unreachable_local_uses_the_device_keys_and_says_so() {
    let admin = FakeAdmin::start().await;
    let shared = tempfile::tempdir().unwrap();
    let keys = format!(
        "backend = \"redis\"\nredis_url = \"redis://127.0.0.1:{}/\"\ndevice = \"dev-a\"\n\
         connect_timeout_secs = 0.5\ncall_timeout_secs = 0.5\nunreachable = \"local\"\n",
        free_port()
    );
    let d = device(&admin, shared.path(), &keys);
    let a = Child::start(&d.config).await;
    trigger(&a, "work", 1, "down").await;
    assert_eq!(code(&admin.callback(1).await), 200);
    assert!(a
        .log(1)
        .await
        .contains("keys.unreachable is \"local\", so this device's own keys decide"));
    trigger(&a, "work", 2, "down").await;
    let cb = admin.callback(2).await;
    assert_eq!(
        msg(&cb),
        "skipped: idempotency key \"order-down\" matches logId:1, which succeeded; nothing was run"
    );
    assert_eq!(ran(shared.path()), vec![1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_during_a_run_keeps_the_key_held_and_its_success_recorded() {
    let mut redis = Redis::start().await;
    let f = fleet(&redis).await;
    trigger(&f.a, "gate", 1, "r").await;
    until("logId 1 to start", || async {
        ran(f.shared.path()).contains(&1)
    })
    .await;
    let lock = format!("{PREFIX}lock:order-r");
    assert_eq!(redis.get(&lock).await.as_deref(), Some("dev-a/1"));
    let port = redis.port;
    redis.stop();
    let redis = Redis::start_on(port).await;
    assert_eq!(
        redis.get(&lock).await,
        None,
        "a restart without persistence"
    );
    // The run's next renewal takes its lock again.
    until("the running device to take its lock again", || async {
        redis.get(&lock).await.as_deref() == Some("dev-a/1")
    })
    .await;
    trigger(&f.b, "work", 2, "r").await;
    assert!(msg(&f.admin.callback(2).await).contains("is held by logId:1 on dev-a"));
    std::fs::write(f.shared.path().join("go"), "").unwrap();
    assert_eq!(code(&f.admin.callback(1).await), 200);
    let done = format!("{PREFIX}done:order-r");
    until("the success to be recorded in Redis", || async {
        redis.get(&done).await.is_some()
    })
    .await;
    trigger(&f.b, "work", 3, "r").await;
    assert!(msg(&f.admin.callback(3).await).contains("matches logId:1 on dev-a"));
    assert_eq!(ran(f.shared.path()), vec![1]);
    f.a.wait_line("the renewal's warning", |v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("An idempotency key's lock was gone from Redis"))
    })
    .await;
}

/// Recovery settles what the dead process held: restarted long before its lock would expire
/// (lock TTL 30 s, beyond the test's guard), it reports the run as interrupted and releases
/// the key, and the other device runs the work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_kill_9_releases_the_key_its_interrupted_run_held() {
    let redis = Redis::start().await;
    let admin = FakeAdmin::start().await;
    let shared = tempfile::tempdir().unwrap();
    let long = |name: &str| {
        redis_keys(&redis, name, "").replace("lock_ttl_secs = 1", "lock_ttl_secs = 30")
    };
    let da = device(&admin, shared.path(), &long("dev-a"));
    let db = device(&admin, shared.path(), &long("dev-b"));
    let a = Child::start(&da.config).await;
    let b = Child::start(&db.config).await;
    trigger(&a, "gate", 1, "rec").await;
    until("logId 1 to start", || async {
        ran(shared.path()).contains(&1)
    })
    .await;
    let lock = format!("{PREFIX}lock:order-rec");
    assert_eq!(redis.get(&lock).await.as_deref(), Some("dev-a/1"));
    a.signal(nix::sys::signal::Signal::SIGKILL);
    assert!(a.exited_within(GUARD).await.is_some());
    drop(a);
    let a = Child::start(&da.config).await;
    assert_eq!(code(&admin.callback(1).await), 500);
    until("the restarted device to release its lock", || async {
        redis.get(&lock).await.is_none()
    })
    .await;
    assert!(redis.pttl(&lock).await < 0);
    trigger(&b, "work", 2, "rec").await;
    assert_eq!(code(&admin.callback(2).await), 200);
    settled(&redis, "order-rec").await;
    trigger(&a, "work", 3, "rec").await;
    assert!(msg(&admin.callback(3).await).contains("matches logId:2 on dev-b"));
    assert_eq!(ran(shared.path()), vec![1, 2]);
}

/// `rediss://`: the client speaks TLS (rustls) to a `redis-server` with a certificate of a test
/// CA, which the executor trusts through `SSL_CERT_FILE` (read with the system's CA store).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_urls_speak_tls_and_check_the_certificate() {
    let tls = tempfile::tempdir().unwrap();
    let t = tls.path();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(t)
            .output()
            .expect("openssl (to make the test's certificates)");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=xxl-edge test CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(t.join("ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "srv.crt",
        "-days",
        "2",
        "-extfile",
        "ext",
    ]);
    // The plain port is the test's view of the data; the executors get the TLS one only.
    let plain = free_port();
    let tls_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let server = Command::new("redis-server")
        .args([
            "--port",
            &plain.to_string(),
            "--tls-port",
            &tls_port.to_string(),
        ])
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(["--tls-auth-clients", "no"])
        .arg("--tls-cert-file")
        .arg(t.join("srv.crt"))
        .arg("--tls-key-file")
        .arg(t.join("srv.key"))
        .arg("--tls-ca-cert-file")
        .arg(t.join("ca.crt"))
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server on PATH (apt-get install redis-server)");
    let redis = Redis {
        proc: Some(server),
        port: plain,
        _dir: dir,
    };
    until("redis-server to answer PING", || async {
        redis.try_query::<String>(redis::cmd("PING")).await.is_ok()
    })
    .await;

    let admin = FakeAdmin::start().await;
    let shared = tempfile::tempdir().unwrap();
    // No keys.device: each device is named after the address it registers.
    let keys = |_: &str| {
        format!(
            "backend = \"redis\"\nredis_url = \"rediss://127.0.0.1:{tls_port}/\"\n\
             connect_timeout_secs = 2\ncall_timeout_secs = 2\n"
        )
    };
    let start = |config: &Path, trusted: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_xxl-edge"));
        cmd.args(["serve", "--log-json", "--config"]).arg(config);
        // Trusting the test CA, or only an unrelated CA (its own certificate as a CA file).
        cmd.env(
            "SSL_CERT_FILE",
            if trusted {
                t.join("ca.crt")
            } else {
                t.join("srv.crt")
            },
        );
        Child::start_command(cmd)
    };
    let da = device(&admin, shared.path(), &keys("dev-a"));
    let db = device(&admin, shared.path(), &keys("dev-b"));
    let a = start(&da.config, true).await;
    let b = start(&db.config, false).await;
    trigger(&a, "work", 1, "tls").await;
    assert_eq!(code(&admin.callback(1).await), 200);
    settled(&redis, "order-tls").await;
    assert_eq!(
        redis.get(&format!("{PREFIX}done:order-tls")).await,
        Some(format!("127.0.0.1:{}/1", a.addr.port()))
    );
    // A device that does not trust the server's certificate never talks to it.
    trigger(&b, "work", 2, "tls").await;
    let refused = admin.callback(2).await;
    assert_eq!(code(&refused), 500, "{refused}");
    assert!(
        msg(&refused).contains("the fleet's Redis could not check"),
        "{refused}"
    );
    assert_eq!(ran(shared.path()), vec![1]);
}

/// On one device, a job's triggers follow its block strategy first: one queued (SERIAL) behind
/// the run holding its key is skipped when its turn comes, not told that its predecessor holds
/// the key (whose settlement in Redis may still be under way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_queued_behind_its_key_on_the_same_device_is_skipped_in_turn() {
    let redis = Redis::start().await;
    let f = fleet(&redis).await;
    trigger(&f.a, "gate", 1, "q").await;
    until("logId 1 to start", || async {
        ran(f.shared.path()).contains(&1)
    })
    .await;
    trigger(&f.a, "gate", 2, "q").await;
    std::fs::write(f.shared.path().join("go"), "").unwrap();
    assert_eq!(code(&f.admin.callback(1).await), 200);
    let second = f.admin.callback(2).await;
    assert_eq!(
        msg(&second),
        "skipped: idempotency key \"order-q\" matches logId:1 on dev-a, which succeeded; nothing was run"
    );
    assert_eq!(ran(f.shared.path()), vec![1]);
}
