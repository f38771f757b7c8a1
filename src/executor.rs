//! Wiring: [`Executor::builder`] registers handlers and opens the store (recovering what a crash
//! left), [`Executor::run`] serves a listener the caller bound until the caller's shutdown future
//! completes, then stops in the reference's order: stop accepting, deregister, give running jobs
//! their grace, kill the rest, deliver callbacks, flush.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::admin::{AdminClient, AdminError};
use crate::api::{self, ApiState};
use crate::config::{Config, KeysConfig};
use crate::handler::{self, CommandHandler, Handler, JobHandler};
use crate::registry::{Registrar, BEAT_INTERVAL};
use crate::report::Reporter;
use crate::runlog::RunLogs;
use crate::runner::{Recovered, Runner};
use crate::store::{Store, StoreError};
use crate::telemetry::events::{internal_error, Op};
use crate::telemetry::Metrics;

/// An executor failure (not a job failure: those are outcomes).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store cannot be used.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The admin client could not be built.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// The TLS files of the executor port cannot be used.
    #[error("TLS (executor.tls_*): {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// A socket could not be bound or served.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A write to the store failed (disk full, data directory read-only, I/O error): sled cannot
    /// be used again in this process, and the failed database is never dropped (its destructor
    /// can hang, so its memory stays allocated). End the process: a restart recovers every
    /// accepted run. `serve` exits 75 for this.
    #[error("storage fault: {0}. The store cannot be written until the fault clears and xxl-edge restarts; the restart recovers every accepted run")]
    StoreFailed(String),
    /// The fleet's key backend could not be set up (`[keys]`).
    #[error("keys: {0}")]
    Keys(String),
}

/// What recovery found at start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Runs in the journal.
    pub runs: u64,
    /// Triggers queued again (never started, or re-run).
    pub requeued: usize,
    /// Runs reported as failed (interrupted, or their handler is gone).
    pub failed: usize,
    /// Interrupted runs that run again (handler declared safe to re-run).
    pub rerun: usize,
    /// Callbacks waiting in the outbox.
    pub outbox: u64,
}

/// Builds an [`Executor`].
#[derive(Debug, Default)]
pub struct ExecutorBuilder {
    config: Option<Config>,
    keys: Option<KeysConfig>,
    handlers: handler::Registry,
    metrics: Option<Metrics>,
}

impl ExecutorBuilder {
    /// Uses this configuration (default: [`Config::defaults`]).
    #[must_use]
    pub fn config(mut self, config: Config) -> Self {
        self.config = Some(config);
        self
    }

    /// Where idempotency keys live, instead of the configuration's `[keys]`: this device's
    /// store ([`KeysConfig::Local`]) or a Redis the app's fleet shares
    /// ([`KeysConfig::Redis`]).
    #[must_use]
    pub fn keys(mut self, keys: KeysConfig) -> Self {
        self.keys = Some(keys);
        self
    }

    /// Uses this metrics registry (default: a new one), e.g. the one the trace exporter already
    /// counts its spans in.
    #[must_use]
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Registers an async handler under `name` (the admin's `executorHandler`).
    #[must_use]
    pub fn handler(mut self, name: impl Into<String>, h: impl JobHandler) -> Self {
        self.handlers.insert(name, Handler::new(h));
        self
    }

    /// Registers a handler with options (re-run safety, idempotency key).
    #[must_use]
    pub fn register(mut self, name: impl Into<String>, h: Handler) -> Self {
        self.handlers.insert(name, h);
        self
    }

    /// Opens the store, recovers the journal and prepares everything but the sockets.
    ///
    /// # Errors
    /// An unusable store (corrupt, locked, wrong schema) or a failed client setup.
    pub async fn build(self) -> Result<Executor, Error> {
        let mut config = self.config.unwrap_or_else(Config::defaults);
        if let Some(keys) = self.keys {
            config.keys = keys;
        }
        // Before the store: unusable TLS files stop the start before any run is recovered.
        let tls = match &config.executor.tls {
            Some(files) => Some(crate::tls::ServerTls::load(files)?),
            None => None,
        };
        let mut handlers = self.handlers;
        for (name, cmd) in &config.handlers {
            let mut h = Handler::new(CommandHandler::new(cmd.clone(), config.runner.kill_grace))
                .rerun_safe(cmd.rerun_safe);
            if let Some((tpl, ttl)) = cmd.idempotency.clone() {
                h = h.idempotency_key(move |t| Some(handler::render_template(&tpl, t)), ttl);
            }
            handlers.insert(name.clone(), h);
        }
        let metrics = match self.metrics {
            Some(m) => m,
            None => Metrics::new()?,
        };
        {
            let mut known = handlers.names();
            known.extend(
                config
                    .glue_enabled
                    .iter()
                    .map(|k| k.wire_name().to_string()),
            );
            let admins: Vec<String> = config
                .admin
                .addresses
                .iter()
                .map(|a| crate::telemetry::redact_url(a))
                .collect();
            metrics.known(&known, &admins);
        }
        crate::private_file::create_dir(&config.executor.data_dir)?;
        // Opening can wait seconds for the lock (a restart right after a crash): not on the
        // runtime's few worker threads.
        let store = {
            let (dir, cfg) = (config.executor.data_dir.clone(), config.store.clone());
            tokio::task::spawn_blocking(move || {
                // Params directories of runs a crash cut short (in the temp dir, not the store).
                let swept = handler::sweep_stale_param_dirs();
                if swept > 0 {
                    tracing::info!(
                        swept,
                        "Removed params directories left by a previous crash."
                    );
                }
                // A data directory that is full or read-only now is a storage fault that
                // clears, not a damaged store: sled would call it a store it cannot use, with
                // the advice to move it aside.
                if let Err(e) = probe_write(&dir) {
                    if is_storage_fault(&e) {
                        return Err(Error::StoreFailed(format!(
                            "the data directory {} cannot be written: {e}",
                            dir.display()
                        )));
                    }
                }
                Store::open(&dir, cfg).map_err(Error::Store)
            })
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))??
        };
        metrics.store_budget.set(config.store.max_bytes as i64);
        {
            let m = metrics.clone();
            store.set_flush_observer(Arc::new(move |d| m.flushed(d)));
        }
        let logs = {
            let m = metrics.clone();
            RunLogs::new(
                store.clone(),
                config.store.max_log_bytes_per_run,
                move |e: &StoreError| {
                    internal_error!(m, Op::LogWrite, e, "Cannot write a run log line.")
                },
            )
        };
        let outbox_ready = Arc::new(Notify::new());
        let runner = Runner::new(
            config.runner.clone(),
            store.clone(),
            logs.clone(),
            metrics.clone(),
            handlers,
            config.glue_enabled.clone(),
            config.executor.data_dir.join("gluesource"),
            outbox_ready.clone(),
        );
        // Before recovery, which settles the keys of the runs a crash interrupted.
        let fleet_keys = match &config.keys {
            KeysConfig::Local => None,
            KeysConfig::Redis(rc) => {
                let f =
                    crate::fleet_keys::FleetKeys::new(rc.clone(), store.clone(), metrics.clone())
                        .map_err(|e| Error::Keys(e.to_string()))?;
                runner.set_fleet_keys(f.clone(), rc.unreachable);
                Some(f)
            }
        };
        drop_refused(&store, &config.executor.data_dir)?;
        let recovery = store.recover()?;
        let runs = recovery.runs;
        // Interrupted runs are reported now; nothing starts before `run` has bound its sockets.
        let (recovered, counts) = runner.recover(recovery);
        // A full or read-only disk at start: a storage fault (a restart once it clears
        // recovers), not a damaged store.
        store.durable().await.map_err(|e| match store.fault() {
            Some(f) => Error::StoreFailed(f.to_string()),
            None => Error::Store(e),
        })?;
        let report = RecoveryReport {
            runs,
            requeued: recovered.len(),
            failed: counts.failed,
            rerun: counts.rerun,
            outbox: store.outbox_len(),
        };
        if report.requeued + report.failed > 0 || report.outbox > 0 {
            tracing::info!(
                runs = report.runs,
                requeued = report.requeued,
                interrupted_failed = report.failed,
                rerun = report.rerun,
                outbox = report.outbox,
                "Recovered the run journal."
            );
        }
        let admin = AdminClient::new(&config.admin, metrics.clone())?;
        Ok(Executor {
            config,
            tls,
            store,
            logs,
            runner,
            metrics,
            admin,
            outbox_ready,
            recovery: report,
            recovered,
            fleet_keys,
        })
    }
}

/// A ready executor.
#[derive(Debug)]
pub struct Executor {
    config: Config,
    /// TLS on the API port (`/metrics` there included); `telemetry.metrics_listen` stays plain.
    tls: Option<Arc<crate::tls::ServerTls>>,
    store: Store,
    logs: RunLogs,
    runner: Runner,
    metrics: Metrics,
    admin: AdminClient,
    outbox_ready: Arc<Notify>,
    recovery: RecoveryReport,
    /// Triggers the journal held, queued once `run` has bound its sockets.
    recovered: Recovered,
    /// Named after the registered address once it is known.
    fleet_keys: Option<crate::fleet_keys::FleetKeys>,
}

impl std::fmt::Debug for Recovered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Recovered({})", self.len())
    }
}

impl Executor {
    /// Starts a builder.
    pub fn builder() -> ExecutorBuilder {
        ExecutorBuilder::default()
    }

    /// The metrics registry wrapper (render it, or add your own metrics to a scrape).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// What recovery found at start.
    pub fn recovery(&self) -> RecoveryReport {
        self.recovery
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Serves `listener` until `shutdown` completes, then stops gracefully.
    ///
    /// # Errors
    /// The metrics listener could not be bound.
    pub async fn run(
        mut self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let local = listener.local_addr()?;
        let address = self.config.executor.registered_address(local.port());
        // Every listener is bound before any run starts (linkerd2-proxy's order): a taken port
        // ends the process before it has begun work that a restart would report as interrupted.
        let metrics_listener = match self.config.telemetry.metrics_listen {
            Some(addr) => Some((TcpListener::bind(addr).await?, addr)),
            None => None,
        };
        let stop_http = CancellationToken::new();
        {
            let t = stop_http.clone();
            tokio::spawn(async move {
                shutdown.await;
                t.cancel();
            });
        }
        let background = CancellationToken::new();
        if let Some(f) = &self.fleet_keys {
            f.set_device(&address);
        }
        let not_requeued = self
            .runner
            .start_recovered(std::mem::take(&mut self.recovered));
        if not_requeued > 0 {
            tracing::warn!(
                failed = not_requeued,
                "Some recovered triggers could not be queued again; they are reported as failed."
            );
        }

        let registrar = Registrar::new(
            self.admin.clone(),
            &self.config.executor.app_name,
            &address,
            BEAT_INTERVAL,
        );
        let state = Arc::new(ApiState {
            runner: self.runner.clone(),
            store: self.store.clone(),
            logs: self.logs.clone(),
            metrics: self.metrics.clone(),
            token: self.config.admin.access_token.clone(),
            limits: self.config.server.clone(),
            serve_metrics: self.config.telemetry.metrics_listen.is_none(),
            registration: registrar.status(),
            admins: self.admin.shown_addresses(),
        });

        let reporter = tokio::spawn(
            Reporter::new(
                self.store.clone(),
                self.logs.clone(),
                self.admin.clone(),
                self.metrics.clone(),
                self.outbox_ready.clone(),
            )
            .run(background.clone()),
        );
        let log_flusher = tokio::spawn(flush_logs(
            self.store.clone(),
            self.logs.clone(),
            self.metrics.clone(),
            self.config.store.log_flush_every,
            background.clone(),
        ));
        let maintenance = tokio::spawn(maintain(
            self.store.clone(),
            self.metrics.clone(),
            self.config.clone(),
            background.clone(),
        ));
        let state_server = bind_state_socket(&self.config.executor.data_dir).map(|l| {
            tokio::spawn(serve_state(
                l,
                self.store.clone(),
                self.runner.clone(),
                background.clone(),
            ))
        });

        // One cap over both listeners; the shutdown deadline bounds how long a client can hold
        // up the steps below.
        let conn_limits = api::serve::ConnLimits::for_executor(&self.config);
        let metrics_server = match metrics_listener {
            Some((l, addr)) => {
                tracing::info!(listen = %addr, "Serving /metrics.");
                Some(tokio::spawn(api::serve::serve(
                    l,
                    api::metrics_service(state.clone()),
                    stop_http.clone(),
                    conn_limits.clone(),
                    None,
                )))
            }
            None => None,
        };

        // Taken before "started" is logged: a SIGHUP sent once the executor says it runs must
        // find the handler, not the signal's default action (the process would end).
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "Cannot listen for SIGHUP: it would stop the executor, and TLS files are reloaded only when they change.");
                None
            }
        };
        tracing::info!(
            listen = %local,
            address = %address,
            app_name = %self.config.executor.app_name,
            admins = ?self.admin.shown_addresses(),
            "xxl-edge executor started."
        );
        for note in self.config.notes() {
            tracing::warn!("{note}");
        }
        let reg_stop = CancellationToken::new();
        let reg_task = tokio::spawn(registrar.clone().run(reg_stop.clone()));
        let watchdog = {
            let s = self.store.clone();
            let progress = move || s.flush_progress();
            let s = self.store.clone();
            let declare = move |why: String| s.declare_failed(why);
            tokio::spawn(watch_flushes(
                progress,
                declare,
                self.config.store.flush_stall,
                background.clone(),
            ))
        };

        let tls_watch = self.tls.clone().map(|t| {
            let hangup = hangup.take();
            let files = self.config.executor.tls.as_ref();
            tracing::info!(
                client_ca = files.is_some_and(|f| f.client_ca.is_some()),
                reload_secs = files.and_then(|f| f.reload_every).map_or(0.0, |d| d.as_secs_f64()),
                "The executor port speaks TLS; SIGHUP reloads its files, and so does a change of them every reload_secs (0: SIGHUP only)."
            );
            tokio::spawn(t.watch(stop_http.clone(), hangup))
        });
        // Without TLS there is nothing to reload, but SIGHUP must not stop the executor (its
        // default action): `systemctl reload` and habit send it to daemons.
        let hangup_watch = hangup.map(|h| tokio::spawn(log_hangups(h, stop_http.clone())));
        // Served in its own task: while the store is failed, `/run` still answers (500).
        let http = tokio::spawn(api::serve::serve(
            listener,
            api::service(state),
            stop_http.clone(),
            conn_limits,
            self.tls.clone(),
        ));
        let fault = tokio::select! {
            () = stop_http.cancelled() => None,
            f = self.store.failed() => Some(f),
        };
        if let Some(fault) = fault {
            tracing::error!(
                error = %fault,
                data_dir = %self.config.executor.data_dir.display(),
                "The store failed: new runs are refused and the admins no longer route here. xxl-edge exits with code 75 as soon as the data directory is writable again, so that its supervisor restarts it; the restart recovers every accepted run."
            );
            reg_stop.cancel();
            let _ = reg_task.await;
            registrar.deregister().await;
            return Err(self
                .stop_after_a_fault(fault, &stop_http, &background, http)
                .await);
        }
        let _ = http.await;
        for t in [tls_watch, hangup_watch].into_iter().flatten() {
            let _ = t.await;
        }
        tracing::info!("Shutting down: no new triggers are accepted.");

        reg_stop.cancel();
        let _ = reg_task.await;
        registrar.deregister().await;
        self.runner
            .shutdown(self.config.runner.shutdown_grace)
            .await;
        background.cancel();
        let _ = reporter.await;
        let _ = maintenance.await;
        if let Some(t) = state_server {
            let _ = t.await;
        }
        let _ = std::fs::remove_file(self.config.executor.data_dir.join(STATE_SOCKET));
        let _ = log_flusher.await;
        let _ = watchdog.await;
        let deadline = Instant::now() + self.config.admin.timeout * 2 + Duration::from_secs(1);
        let left = Reporter::new(
            self.store.clone(),
            self.logs.clone(),
            self.admin.clone(),
            self.metrics.clone(),
            self.outbox_ready.clone(),
        )
        .drain(deadline)
        .await;
        if left > 0 {
            tracing::warn!(
                outbox = left,
                "Callbacks not yet delivered stay in the outbox and are sent after the next start."
            );
        }
        if let Some(m) = metrics_server {
            let _ = m.await;
        }
        // Lines still buffered (a handler that outlived the shutdown grace writes no more).
        self.logs.save_all();
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.flush_now().and_then(|()| store.seal_anchor()))
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))?
            .map_err(|e| match self.store.fault() {
                Some(f) => Error::StoreFailed(f.to_string()),
                None => Error::Store(e),
            })?;
        tracing::info!("xxl-edge stopped.");
        Ok(())
    }

    /// The store has failed: `/run` refuses at once (the runner checks the fault first) and the
    /// admins have been told to stop routing here (`registryRemove`). Waits until the data directory
    /// is writable again, or for the shutdown signal, then stops what runs and returns, so that
    /// the process exits and its supervisor restarts it: an in-process reopen is impossible
    /// (`store::health`), and the restart's recovery calls back every accepted run.
    async fn stop_after_a_fault(
        &self,
        fault: String,
        stop_http: &CancellationToken,
        background: &CancellationToken,
        http: tokio::task::JoinHandle<()>,
    ) -> Error {
        let dir = self.config.executor.data_dir.clone();
        let signalled = tokio::select! {
            () = stop_http.cancelled() => true,
            () = writable_again(&self.store, &dir) => false,
        };
        if signalled {
            tracing::warn!(
                "Stopping while the store is failed; the next start recovers every accepted run."
            );
        } else {
            tracing::warn!("The data directory is writable again: exiting with code 75 so that the supervisor restarts xxl-edge.");
        }
        stop_http.cancel();
        // Outcomes cannot be recorded any more: running jobs are stopped without a grace and
        // are reported as interrupted after the restart (or run again if re-run safe).
        self.runner.shutdown(Duration::ZERO).await;
        // Triggers refused after their journal write: the failed store may have put the record
        // on disk and not its removal. The next start drops them (a refused trigger must not
        // run, nor be called back). Written only now that the data directory takes writes.
        let refused = self.runner.forgotten();
        if !refused.is_empty() {
            let dir = dir.clone();
            let written = tokio::task::spawn_blocking(move || write_refused(&dir, &refused)).await;
            if !matches!(written, Ok(Ok(()))) {
                tracing::error!(?written, "Cannot write the refused logIds for the next start; a trigger refused just before the fault may be reported after it.");
            }
        }
        background.cancel();
        // In-flight requests end at once (the store answers every flush with its fault); the
        // bound is for one stuck in a sled call, which the process exit then ends.
        let _ = tokio::time::timeout(Duration::from_secs(2), http).await;
        Error::StoreFailed(fault)
    }
}

/// Declares the store failed when a flush has been under way for `stall` without completing.
/// Looks at the store's flush counters once a second (no I/O).
/// Answers SIGHUP with a log line until `stop`, so the signal does not end a plain-HTTP
/// executor; the configuration is read once, at start.
async fn log_hangups(mut hangup: tokio::signal::unix::Signal, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            got = hangup.recv() => {
                if got.is_none() {
                    return;
                }
                tracing::info!("SIGHUP: nothing to reload (the port has no TLS files; the configuration is read at start: restart to change it).");
            }
        }
    }
}

async fn watch_flushes(
    progress: impl Fn() -> (u64, u64),
    declare: impl Fn(String),
    stall: Duration,
    stop: CancellationToken,
) {
    let mut seen = progress();
    let mut since = Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = stop.cancelled() => return,
        }
        let now = progress();
        let (begun, done) = now;
        if now != seen || done >= begun {
            seen = now;
            since = Instant::now();
        } else if since.elapsed() >= stall {
            declare(format!(
                "a flush of the store has not completed in {} s",
                stall.as_secs()
            ));
            return;
        }
    }
}

/// Resolves once the data directory takes a write again: the executor's free-space threshold
/// is met and a 64 KiB probe file can be written, synced and removed. Checked every second;
/// the probe writes nothing while the file system refuses it.
async fn writable_again(store: &Store, dir: &std::path::Path) {
    loop {
        if store.check_space().is_ok() {
            let d = dir.to_path_buf();
            let wrote = tokio::task::spawn_blocking(move || probe_write(&d).is_ok());
            if let Ok(Ok(true)) = tokio::time::timeout(Duration::from_secs(5), wrote).await {
                return;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Writes, syncs and removes a 64 KiB file in `dir`: whether the data directory takes a write.
/// Nothing is written when the file system refuses it.
fn probe_write(dir: &std::path::Path) -> std::io::Result<()> {
    use std::io::Write;
    let p = dir.join(".xxl-edge-write-probe");
    let res = std::fs::File::create(&p)
        .and_then(|mut f| f.write_all(&[0u8; 64 * 1024]).and_then(|()| f.sync_all()));
    let _ = std::fs::remove_file(&p);
    res
}

/// A data directory that cannot take a write for now (full, over quota, mounted read-only):
/// a fault that clears, after which a restart works.
fn is_storage_fault(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        e.kind(),
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded | ErrorKind::ReadOnlyFilesystem
    )
}

/// Puts a run's output on disk at most `every` after it was written, so that a crash keeps it
/// (the Java executor's log file outlives its process too). Flushes only when a line has waited
/// that long and no other flush (a `/run`'s, an outcome's) has carried it meanwhile: an idle
/// executor writes nothing, and a busy one adds no flush of its own. Looks four times per
/// period, so a line waits at most `every`.
async fn flush_logs(
    store: Store,
    logs: RunLogs,
    metrics: Metrics,
    every: Duration,
    stop: CancellationToken,
) {
    let tick = (every / 4).max(Duration::from_millis(1));
    loop {
        tokio::select! {
            () = tokio::time::sleep(tick) => {}
            () = stop.cancelled() => return,
        }
        if logs.due(every.saturating_sub(tick)) {
            if let Err(e) = store.synced().await {
                internal_error!(metrics, Op::Flush, e, "Cannot flush run logs.");
            }
        }
    }
}

/// Retention (hourly), the store's size for `/metrics`, free space, and the integrity anchor.
/// Everything that touches files runs on the blocking pool: a device runtime has one or two
/// worker threads.
async fn maintain(store: Store, metrics: Metrics, config: Config, stop: CancellationToken) {
    let retention = (config.executor.log_retention_days > 0)
        .then(|| Duration::from_secs(u64::from(config.executor.log_retention_days) * 86_400));
    let mut last_prune: Option<Instant> = None;
    let mut over_budget = false;
    let mut disk_low = false;
    loop {
        let s = store.clone();
        let size = tokio::task::spawn_blocking(move || s.size_on_disk())
            .await
            .unwrap_or(0);
        metrics
            .store_size
            .set(i64::try_from(size).unwrap_or(i64::MAX));
        if (size > config.store.max_bytes) != over_budget {
            over_budget = !over_budget;
            if over_budget {
                tracing::warn!(size, budget = config.store.max_bytes, "Store over its byte budget (store.max_bytes); pruning the oldest reported runs.");
            } else {
                tracing::info!(
                    size,
                    budget = config.store.max_bytes,
                    "Store back within its byte budget."
                );
            }
        }
        let low = store.check_space().is_err();
        if low != disk_low {
            disk_low = low;
            if low {
                tracing::warn!(
                    min_free = config.store.min_free_bytes,
                    "Disk nearly full: /run refuses new triggers until space returns."
                );
            } else {
                tracing::info!("Disk space is back: /run accepts triggers again.");
            }
        }
        if last_prune.is_none_or(|t| t.elapsed() >= Duration::from_secs(3600)) || over_budget {
            let s = store.clone();
            match tokio::task::spawn_blocking(move || s.prune(retention)).await {
                Ok(Ok(n)) if n > 0 => tracing::info!(pruned = n, "Pruned finished runs."),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => internal_error!(metrics, Op::Prune, e, "Pruning failed."),
                Err(e) => internal_error!(metrics, Op::TaskPanic, e, "The pruning task failed."),
            }
            last_prune = Some(Instant::now());
        }
        if let Err(e) = store.keep_anchor().await {
            internal_error!(
                metrics,
                Op::Snapshot,
                e,
                "Cannot write the store's integrity anchor."
            );
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// The Unix socket in the data directory on which a running executor tells `xxl-edge state`
/// what it is doing. Asked, not written: a snapshot file rewritten every few seconds was a
/// steady trickle of flash writes while runs came in.
pub const STATE_SOCKET: &str = "state.sock";

/// What earlier releases wrote instead of answering on [`STATE_SOCKET`]; removed at start so
/// that nobody reads a stale one.
const OLD_SNAPSHOT_FILE: &str = "state.json";

/// Binds [`STATE_SOCKET`] (owner only: it shows job ids and outcomes). The executor holds the
/// store's lock, so a socket file left by a killed executor is stale and replaced. Without it
/// the executor runs on and `state` says it cannot ask.
fn bind_state_socket(data_dir: &std::path::Path) -> Option<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let path = data_dir.join(STATE_SOCKET);
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(data_dir.join(OLD_SNAPSHOT_FILE));
    let bound = tokio::net::UnixListener::bind(&path).and_then(|l| {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        Ok(l)
    });
    match bound {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "Cannot listen for `xxl-edge state`; it will not see this executor's runs.");
            None
        }
    }
}

/// Answers each connection with a [`Snapshot`] as one JSON document, one connection at a time
/// (a local, owner-only socket: nobody else can knock).
async fn serve_state(
    listener: tokio::net::UnixListener,
    store: Store,
    runner: Runner,
    stop: CancellationToken,
) {
    use tokio::io::AsyncWriteExt;
    loop {
        let mut conn = tokio::select! {
            r = listener.accept() => match r {
                Ok((c, _)) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "The state socket failed; `xxl-edge state` will not see this executor's runs.");
                    return;
                }
            },
            () = stop.cancelled() => return,
        };
        let (s, r) = (store.clone(), runner.clone());
        let Ok(snap) = tokio::task::spawn_blocking(move || {
            let size = s.size_on_disk();
            Snapshot::take(&s, &r, size)
        })
        .await
        else {
            continue;
        };
        let mut text = snap.0.to_string();
        text.push('\n');
        // Bounded: a reader that does not read is dropped.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            conn.write_all(text.as_bytes()).await?;
            conn.shutdown().await
        })
        .await;
    }
}

/// What `xxl-edge state` shows of a running executor.
struct Snapshot(serde_json::Value);

impl Snapshot {
    /// Reads counters and the 20 most recent runs (a short, bounded scan of the journal).
    fn take(store: &Store, runner: &Runner, store_bytes: u64) -> Self {
        Self(serde_json::json!({
            "now_ms": crate::clock::now_ms(),
            "store_bytes": store_bytes,
            "pid": std::process::id(),
            "executing": runner.executing(),
            "queued": runner.queued(),
            "outbox_entries": store.outbox_len(),
            "outbox_oldest_queued_ms": store.outbox_oldest_queued_ms(),
            "recent": store.recent_runs(20).unwrap_or_default().iter().map(|r| serde_json::json!({
                "log_id": r.trigger.log_id.0,
                "job_id": r.trigger.job_id.0,
                "handler": r.trigger.handler_label(),
                "state": r.state.as_str(),
                "code": r.outcome.as_ref().map(|o| o.code),
                "accepted_ms": r.accepted_ms,
            })).collect::<Vec<_>>(),
        }))
    }
}

/// Where a storage fault leaves the logIds refused after their journal write (see
/// [`Runner::forgotten`]), for the next start to drop.
const REFUSED_FILE: &str = "refused-log-ids";

/// Writes [`REFUSED_FILE`] (one logId per line), synced with its directory: the restart that
/// reads it follows at once.
fn write_refused(dir: &std::path::Path, ids: &[crate::job::LogId]) -> std::io::Result<()> {
    let text: String = ids.iter().map(|id| format!("{}\n", id.0)).collect();
    crate::private_file::replace_durably(
        &dir.join(format!(".{REFUSED_FILE}.tmp")),
        &dir.join(REFUSED_FILE),
        text.as_bytes(),
    )
}

/// At start, before recovery: drops from the journal the triggers a storage fault left there
/// after they were refused (still accepted or running: a finished one was not refused), makes
/// that durable, then removes the file.
fn drop_refused(store: &Store, dir: &std::path::Path) -> Result<(), Error> {
    let path = dir.join(REFUSED_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::Io(e)),
    };
    let ids: Vec<crate::job::LogId> = text
        .lines()
        .filter_map(|l| l.trim().parse().ok().map(crate::job::LogId))
        .collect();
    for id in &ids {
        store.forget_accepted(*id)?;
    }
    store.flush_now()?;
    std::fs::remove_file(&path).map_err(Error::Io)?;
    tracing::info!(
        refused = ids.len(),
        "Dropped the triggers refused just before the last storage fault."
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;

    use super::*;

    /// The watchdog declares a fault only for a flush that stays under way for the whole stall
    /// bound: not while flushes complete, not while the store is idle.
    #[tokio::test(start_paused = true)]
    async fn the_watchdog_declares_a_fault_only_for_a_flush_that_stalls() {
        let begun = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicU64::new(0));
        let declared = Arc::new(Mutex::new(None::<String>));
        let stop = CancellationToken::new();
        let task = {
            let (b, d, decl) = (begun.clone(), done.clone(), declared.clone());
            tokio::spawn(watch_flushes(
                move || (b.load(Ordering::SeqCst), d.load(Ordering::SeqCst)),
                move |why| *decl.lock().unwrap() = Some(why),
                Duration::from_secs(10),
                stop.clone(),
            ))
        };
        // Idle for a minute, then busy with flushes that each take 5 s.
        tokio::time::sleep(Duration::from_secs(60)).await;
        for _ in 0..6 {
            begun.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(5)).await;
            done.fetch_add(1, Ordering::SeqCst);
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(declared.lock().unwrap().is_none());
        // One flush that never completes: declared after the bound (checked every second).
        begun.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(declared.lock().unwrap().is_none());
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(
            declared.lock().unwrap().as_deref(),
            Some("a flush of the store has not completed in 10 s")
        );
        assert!(task.is_finished());
        stop.cancel();
    }
}
