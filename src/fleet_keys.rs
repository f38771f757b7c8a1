//! Idempotency keys shared by every device of an app, in Redis (README, "Fleet-wide
//! idempotency keys").
//!
//! Two Redis keys per idempotency key, under the configured prefix:
//! - `{prefix}lock:{key}` = the holder's token `device/logId`, with a PX TTL of
//!   `keys.lock_ttl_secs` that the run renews every third of it: a device that dies loses the
//!   lock when it runs out;
//! - `{prefix}done:{key}` = the token of the run that succeeded, with the handler's
//!   idempotency TTL.
//!
//! Every change goes through a Lua script that reads and writes in one step and touches a lock
//! only when its token is the caller's, so a device never releases another's lock.
//!
//! Which keys a run holds is written to the store ([`Store::hold_fleet_key`]) with the
//! run's "running" mark, before its handler starts; the entry is removed once the key is
//! settled in Redis. A settlement that fails (Redis down) or that a crash cut short is retried
//! until it succeeds, the success mark only once the outcome is on disk.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisResult, Script};
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::Instrument;

use crate::config::RedisKeysConfig;
use crate::job::{LogId, OutcomeKind, RunState};
use crate::store::{Store, StoreError};
use crate::telemetry::Metrics;

/// Takes the lock unless a success is recorded or another token holds it. The caller's own
/// token (a run re-run after a restart) takes it again.
const ACQUIRE: &str = r"
local done = redis.call('GET', KEYS[2])
if done then return {'done', done} end
local holder = redis.call('GET', KEYS[1])
if (not holder) or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {'taken', ARGV[1]}
end
return {'held', holder}
";

/// Extends the caller's lock; takes it back when it is gone (Redis restarted without the
/// data, or the lock ran out during an outage); 0 when another token holds it now.
const RENEW: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return 0
";

/// Records a success (`ARGV[2] = '1'`) and releases the lock if the caller still holds it.
const SETTLE: &str = r"
if ARGV[2] == '1' then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 1
";

/// A failed call to Redis. Its text never quotes the URL (it may carry a password).
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// No answer within `keys.call_timeout_secs`.
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    /// The connection or the command failed.
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis answered something the scripts never return.
    #[error("Redis answered {0:?}, which xxl-edge does not understand")]
    Answer(String),
    /// The store could not record the key.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Who a token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Holder {
    pub(crate) device: String,
    pub(crate) log_id: LogId,
}

impl Holder {
    fn parse(token: &str) -> Option<Self> {
        let (device, id) = token.rsplit_once('/')?;
        Some(Self {
            device: device.to_string(),
            log_id: LogId(id.parse().ok()?),
        })
    }
}

/// What the fleet says about a new run's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Take {
    /// The run holds the key now (its lock is renewed until it is settled).
    Taken,
    /// A run with this key succeeded within its TTL.
    Succeeded(Holder),
    /// Another run holds the key now.
    Held(Holder),
}

/// A key a run of this device holds (or held, and is still to settle).
struct Held {
    key: String,
    token: String,
    success_ttl: Duration,
    renewal: Option<AbortHandle>,
    /// One settlement at a time per run: the background task, the settling loop and a `take`
    /// that meets its own finished run can try at once, and the later ones must find it done.
    settling: Arc<tokio::sync::Mutex<()>>,
}

/// The Redis backend of idempotency keys; cheap to clone.
#[derive(Clone)]
pub(crate) struct FleetKeys {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: RedisKeysConfig,
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    device: OnceLock<String>,
    store: Store,
    metrics: Metrics,
    held: Mutex<HashMap<LogId, Held>>,
    /// Wakes the settling loop (a settlement just failed); outside `Inner` so that the loop
    /// can wait on it without keeping the backend alive.
    retry: Arc<Notify>,
    acquire: Script,
    renew: Script,
    settle: Script,
}

impl std::fmt::Debug for FleetKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetKeys")
            .field("prefix", &self.inner.cfg.prefix)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain data, consistent at every step: a panic elsewhere leaves nothing half-done.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl FleetKeys {
    /// Reads the keys the store says are still to settle (a crash or an outage left them) and
    /// starts the loop that settles them. Needs a Tokio runtime.
    ///
    /// # Errors
    /// A URL the client refuses, or the store.
    pub(crate) fn new(
        cfg: RedisKeysConfig,
        store: Store,
        metrics: Metrics,
    ) -> Result<Self, FleetError> {
        let client = redis::Client::open(cfg.url.expose())?;
        let mut held = HashMap::new();
        for (key, log_id, success_ttl, token) in store.fleet_keys_held()? {
            held.insert(
                log_id,
                Held {
                    key,
                    token,
                    success_ttl,
                    renewal: None,
                    settling: Arc::default(),
                },
            );
        }
        let device = OnceLock::new();
        if let Some(d) = &cfg.device {
            let _ = device.set(d.clone());
        }
        let me = Self {
            inner: Arc::new(Inner {
                cfg,
                client,
                conn: tokio::sync::Mutex::new(None),
                device,
                store,
                metrics,
                held: Mutex::new(held),
                retry: Arc::new(Notify::new()),
                acquire: Script::new(ACQUIRE),
                renew: Script::new(RENEW),
                settle: Script::new(SETTLE),
            }),
        };
        tokio::spawn(settle_loop(Arc::downgrade(&me.inner)));
        Ok(me)
    }

    /// Names this device after the address it registers, unless `keys.device` named it.
    pub(crate) fn set_device(&self, registered_address: &str) {
        let name = registered_address
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .trim_end_matches('/')
            .replace('/', "_");
        let _ = self.inner.device.set(name);
    }

    /// This device's name in tokens and messages.
    pub(crate) fn device(&self) -> &str {
        self.inner.device.get().map_or("unnamed", String::as_str)
    }

    fn lock_key(&self, key: &str) -> String {
        format!("{}lock:{key}", self.inner.cfg.prefix)
    }

    fn done_key(&self, key: &str) -> String {
        format!("{}done:{key}", self.inner.cfg.prefix)
    }

    /// Takes `key` for `log_id`, or says who succeeded with it or holds it. A key held by a run
    /// of this device that has finished (its settlement still under way) is settled first.
    ///
    /// # Errors
    /// Redis unreachable or slow, or the store could not record the key.
    pub(crate) async fn take(
        &self,
        key: &str,
        log_id: LogId,
        success_ttl: Duration,
    ) -> Result<Take, FleetError> {
        // A run re-run after a restart keeps the token it held the key with (the device's
        // address can have changed since).
        let token = lock(&self.inner.held)
            .get(&log_id)
            .map(|h| h.token.clone())
            .unwrap_or_else(|| format!("{}/{}", self.device(), log_id.0));
        let ttl_ms = millis(self.inner.cfg.lock_ttl);
        let (lock_key, done_key) = (self.lock_key(key), self.done_key(key));
        let mut settled_once = false;
        loop {
            let (state, token_found): (String, String) = self
                .call("acquire", |mut c| {
                    let s = &self.inner.acquire;
                    let mut inv = s.key(&lock_key);
                    inv.key(&done_key).arg(&token).arg(ttl_ms);
                    async move { inv.invoke_async(&mut c).await }
                })
                .await?;
            let holder = || {
                Holder::parse(&token_found).ok_or_else(|| FleetError::Answer(token_found.clone()))
            };
            match state.as_str() {
                "taken" => {
                    self.count("acquire", "taken");
                    self.hold(key, log_id, success_ttl, &token)?;
                    return Ok(Take::Taken);
                }
                "done" => {
                    self.count("acquire", "succeeded");
                    return Ok(Take::Succeeded(holder()?));
                }
                "held" => {
                    let h = holder()?;
                    if !settled_once && h.device == self.device() && self.finished_here(h.log_id) {
                        // Settled in the background a moment from now; the same job's next
                        // run must not be told that its predecessor still holds the key.
                        settled_once = true;
                        self.settle(h.log_id).await?;
                        continue;
                    }
                    self.count("acquire", "held");
                    return Ok(Take::Held(h));
                }
                other => return Err(FleetError::Answer(other.to_string())),
            }
        }
    }

    fn finished_here(&self, id: LogId) -> bool {
        lock(&self.inner.held).contains_key(&id)
            && self
                .inner
                .store
                .run(id)
                .ok()
                .flatten()
                .is_some_and(|r| matches!(r.state, RunState::Finished | RunState::Reported))
    }

    /// Records the key as held (in memory and in the store, flushed with the "running" mark)
    /// and starts renewing its lock.
    fn hold(
        &self,
        key: &str,
        log_id: LogId,
        success_ttl: Duration,
        token: &str,
    ) -> Result<(), FleetError> {
        let renewal = tokio::spawn(renew_loop(
            Arc::downgrade(&self.inner),
            self.lock_key(key),
            token.to_string(),
        ))
        .abort_handle();
        let old = lock(&self.inner.held).insert(
            log_id,
            Held {
                key: key.to_string(),
                token: token.to_string(),
                success_ttl,
                renewal: Some(renewal),
                settling: Arc::default(),
            },
        );
        if let Some(r) = old.and_then(|o| o.renewal) {
            r.abort();
        }
        self.inner
            .store
            .hold_fleet_key(key, log_id, success_ttl, token)?;
        Ok(())
    }

    /// A run's outcome was recorded: settles its key (if it held one) once that outcome is on
    /// disk, in the background; a failure is retried by the settling loop.
    pub(crate) fn finished(&self, log_id: LogId) {
        if !lock(&self.inner.held).contains_key(&log_id) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.settle(log_id).await {
                tracing::warn!(error = %e, log_id = %log_id, "Cannot settle an idempotency key in Redis yet; retrying.");
                me.inner.retry.notify_one();
            }
        });
    }

    /// Settles the key `log_id` holds from its journal record: a success is recorded in Redis,
    /// any other end releases the lock. Does nothing while the run is unfinished.
    ///
    /// # Errors
    /// Redis, or the store.
    async fn settle(&self, log_id: LogId) -> Result<(), FleetError> {
        let Some(gate) = lock(&self.inner.held)
            .get(&log_id)
            .map(|h| h.settling.clone())
        else {
            return Ok(());
        };
        let _settling = gate.lock().await;
        // Read again under the gate: whoever held it before may have settled it.
        let Some((key, token, success_ttl)) = lock(&self.inner.held)
            .get(&log_id)
            .map(|h| (h.key.clone(), h.token.clone(), h.success_ttl))
        else {
            return Ok(());
        };
        let success = match self.inner.store.run(log_id)? {
            Some(r) if matches!(r.state, RunState::Accepted | RunState::Running) => return Ok(()),
            Some(r) => {
                r.outcome
                    .as_ref()
                    .is_some_and(crate::job::Outcome::is_success)
                    && r.kind != Some(OutcomeKind::Duplicate)
            }
            // Pruned or never journaled: nothing says it succeeded.
            None => false,
        };
        if success {
            // The success mark must not outrun the outcome: a crash before the flush makes
            // the run "interrupted", and then the fleet must let it run again.
            self.inner.store.durable().await?;
        }
        let (lock_key, done_key) = (self.lock_key(&key), self.done_key(&key));
        let ttl_ms = millis(success_ttl);
        let _: i64 = self
            .call("settle", |mut c| {
                let s = &self.inner.settle;
                let mut inv = s.key(&lock_key);
                inv.key(&done_key)
                    .arg(&token)
                    .arg(if success { "1" } else { "0" })
                    .arg(ttl_ms);
                async move { inv.invoke_async(&mut c).await }
            })
            .await?;
        self.count("settle", if success { "succeeded" } else { "released" });
        let removed = lock(&self.inner.held).remove(&log_id);
        if let Some(r) = removed.and_then(|h| h.renewal) {
            r.abort();
        }
        self.inner.store.fleet_key_settled(&key, log_id)?;
        Ok(())
    }

    /// One call to Redis under `keys.call_timeout_secs`, in its own span, counted and timed. A
    /// failed call drops the connection, so the next one opens a fresh one.
    async fn call<T, F, Fut>(&self, call: &'static str, f: F) -> Result<T, FleetError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        call_on(&self.inner, call, f).await
    }

    fn count(&self, call: &str, result: &str) {
        count(&self.inner, call, result);
    }
}

fn count(inner: &Inner, call: &str, result: &str) {
    inner
        .metrics
        .keys_redis_calls
        .with_label_values(&[call, result])
        .inc();
}

async fn call_on<T, F, Fut>(inner: &Inner, call: &'static str, f: F) -> Result<T, FleetError>
where
    F: FnOnce(MultiplexedConnection) -> Fut,
    Fut: Future<Output = RedisResult<T>>,
{
    let span = tracing::debug_span!(
        "redis",
        otel.name = call,
        otel.kind = "client",
        db.system = "redis",
        db.operation.name = call,
        otel.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
    );
    let started = Instant::now();
    let limit = inner.cfg.call_timeout;
    let r = tokio::time::timeout(limit, async {
        let c = connection(inner).await?;
        f(c).await.map_err(FleetError::from)
    })
    .instrument(span.clone())
    .await
    .unwrap_or(Err(FleetError::Timeout(limit)));
    inner
        .metrics
        .keys_redis_latency
        .with_label_values(&[call])
        .observe(started.elapsed().as_secs_f64());
    if let Err(e) = &r {
        *inner.conn.lock().await = None;
        span.record("otel.status_code", "ERROR");
        let kind = if matches!(e, FleetError::Timeout(_)) {
            "timeout"
        } else {
            "error"
        };
        span.record("error.type", kind);
        count(inner, call, kind);
    }
    r
}

async fn connection(inner: &Inner) -> Result<MultiplexedConnection, FleetError> {
    let mut g = inner.conn.lock().await;
    if let Some(c) = g.as_ref() {
        return Ok(c.clone());
    }
    let cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(inner.cfg.connect_timeout))
        .set_response_timeout(Some(inner.cfg.call_timeout));
    let c = inner
        .client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await?;
    *g = Some(c.clone());
    Ok(c)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Renews a run's lock every third of its TTL until the key is settled (which aborts it).
async fn renew_loop(inner: Weak<Inner>, lock_key: String, token: String) {
    let Some(every) = inner.upgrade().map(|i| i.cfg.lock_ttl / 3) else {
        return;
    };
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let ttl_ms = millis(inner.cfg.lock_ttl);
        let r: Result<i64, FleetError> = call_on(&inner, "renew", |mut c| {
            let mut inv = inner.renew.key(&lock_key);
            inv.arg(&token).arg(ttl_ms);
            async move { inv.invoke_async(&mut c).await }
        })
        .await;
        match r {
            Ok(1) => count(&inner, "renew", "renewed"),
            Ok(2) => {
                count(&inner, "renew", "retaken");
                tracing::warn!(lock = %lock_key, "An idempotency key's lock was gone from Redis during its run (Redis restarted, or an outage outlasted the lock); taken again.");
            }
            Ok(_) => {
                count(&inner, "renew", "lost");
                tracing::warn!(lock = %lock_key, "Another device holds this run's idempotency key now: Redis lost the lock during the run (restart or outage) and another run took it.");
                // Its lock is the other run's now: renewing it would extend theirs.
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, lock = %lock_key, "Cannot renew an idempotency key's lock in Redis.");
            }
        }
    }
}

/// Settles what is left to settle: at start (what a crash left) and whenever a settlement
/// failed, every third of the lock TTL (at most every 5 s) until each succeeds.
async fn settle_loop(inner: Weak<Inner>) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let me = FleetKeys { inner: strong };
        let ids: Vec<LogId> = lock(&me.inner.held).keys().copied().collect();
        for id in ids {
            if let Err(e) = me.settle(id).await {
                tracing::debug!(error = %e, log_id = %id, "Settling an idempotency key in Redis failed; retrying later.");
            }
        }
        let pause = (me.inner.cfg.lock_ttl / 3).min(Duration::from_secs(5));
        let retry = me.inner.retry.clone();
        drop(me);
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = retry.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};
    use std::sync::Arc;

    use tracing_subscriber::layer::{Context, SubscriberExt};
    use tracing_subscriber::Layer;

    use super::*;
    use crate::config::{Config, Secret, Unreachable};
    use crate::job::{Outcome, Trigger};

    /// A real `redis-server` on a free port, killed on drop (its directory removed after).
    struct Server(
        std::process::Child,
        u16,
        #[allow(dead_code)] tempfile::TempDir,
    );

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    async fn server() -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (apt-get install redis-server; .ci/test installs it)");
        let s = Server(child, port, dir);
        for _ in 0..500 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("redis-server did not listen on {port}");
    }

    fn cfg(port: u16) -> RedisKeysConfig {
        RedisKeysConfig {
            url: Secret::new(format!("redis://127.0.0.1:{port}/")),
            prefix: "t:".into(),
            device: Some("me".into()),
            connect_timeout: Duration::from_secs(2),
            call_timeout: Duration::from_secs(2),
            lock_ttl: Duration::from_secs(30),
            unreachable: Unreachable::Fail,
        }
    }

    async fn redis_cmd<T: redis::FromRedisValue>(port: u16, args: &[&str]) -> T {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query_async(&mut c).await.unwrap()
    }

    /// Span names and their `db.operation.name`, as the OTLP layer would see them.
    #[derive(Clone, Default)]
    struct Spans(Arc<Mutex<Vec<(String, String)>>>);

    impl<S: tracing::Subscriber> Layer<S> for Spans {
        fn on_new_span(
            &self,
            attrs: &tracing::span::Attributes<'_>,
            _: &tracing::span::Id,
            _: Context<'_, S>,
        ) {
            struct Op(String);
            impl tracing::field::Visit for Op {
                fn record_str(&mut self, f: &tracing::field::Field, v: &str) {
                    if f.name() == "db.operation.name" {
                        self.0 = v.to_string();
                    }
                }
                fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
            }
            let mut op = Op(String::new());
            attrs.record(&mut op);
            lock(&self.0).push((attrs.metadata().name().to_string(), op.0));
        }
    }

    /// The scripts never change a lock that holds another token, and every call has its span.
    #[tokio::test]
    async fn a_lock_with_another_token_is_never_released_and_every_call_has_a_span() {
        let spans = Spans::default();
        let _guard =
            tracing::subscriber::set_default(tracing_subscriber::registry().with(spans.clone()));
        let s = server().await;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Config::defaults().store).unwrap();
        let metrics = Metrics::new().unwrap();
        let keys = FleetKeys::new(cfg(s.1), store.clone(), metrics.clone()).unwrap();
        let ttl = Duration::from_secs(60);

        // Another device holds "k": taking it says so, and leaves its lock alone.
        let _: () = redis_cmd(s.1, &["SET", "t:lock:k", "other/9", "PX", "30000"]).await;
        let held = keys.take("k", LogId(1), ttl).await.unwrap();
        assert_eq!(
            held,
            Take::Held(Holder {
                device: "other".into(),
                log_id: LogId(9)
            })
        );

        // This device takes "j"; the lock then passes to another device (say ours ran out);
        // our failed run settles without touching theirs.
        let t = Trigger::for_test(2);
        store.insert_accepted(&t, false).unwrap();
        assert_eq!(keys.take("j", LogId(2), ttl).await.unwrap(), Take::Taken);
        assert_eq!(store.fleet_keys_held().unwrap().len(), 1);
        let _: () = redis_cmd(s.1, &["SET", "t:lock:j", "other/10", "PX", "30000"]).await;
        store
            .finish(&t, &Outcome::fail("x"), OutcomeKind::Failed, None)
            .unwrap();
        keys.settle(LogId(2)).await.unwrap();
        let lock_j: Option<String> = redis_cmd(s.1, &["GET", "t:lock:j"]).await;
        assert_eq!(lock_j.as_deref(), Some("other/10"));
        assert!(store.fleet_keys_held().unwrap().is_empty(), "settled");

        // A success is recorded with its TTL, and the caller's own lock released.
        let t = Trigger::for_test(3);
        store.insert_accepted(&t, false).unwrap();
        assert_eq!(keys.take("i", LogId(3), ttl).await.unwrap(), Take::Taken);
        store
            .finish(&t, &Outcome::success(), OutcomeKind::Success, None)
            .unwrap();
        keys.settle(LogId(3)).await.unwrap();
        let done: Option<String> = redis_cmd(s.1, &["GET", "t:done:i"]).await;
        assert_eq!(done.as_deref(), Some("me/3"));
        let pttl: i64 = redis_cmd(s.1, &["PTTL", "t:done:i"]).await;
        assert!((50_000..=60_000).contains(&pttl), "{pttl}");
        let lock_i: Option<String> = redis_cmd(s.1, &["GET", "t:lock:i"]).await;
        assert_eq!(lock_i, None);

        let ops: Vec<String> = lock(&spans.0)
            .iter()
            .filter(|(name, _)| name == "redis")
            .map(|(_, op)| op.clone())
            .collect();
        assert_eq!(ops, ["acquire", "acquire", "settle", "acquire", "settle"]);
        let calls = metrics
            .keys_redis_calls
            .with_label_values(&["acquire", "held"])
            .get();
        assert_eq!(calls, 1);
    }
}
