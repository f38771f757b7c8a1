//! The `xxl-edge` binary: `serve`, `check-config`, `trigger` and `state`.
//!
//! Exit codes: 0 success; 1 runtime failure (bind, I/O, a triggered run that failed);
//! 2 the store cannot be used; 64 bad configuration or usage (the argument parser's errors too);
//! 75 storage fault (restart once it clears).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use xxl_edge::client::{self, ExecutorAddress};
use xxl_edge::config::{Config, ConfigError, Env, Overrides};
use xxl_edge::job::{BlockStrategy, Glue, JobId, LogId, Trigger};
use xxl_edge::state::{self, State, StateError};
use xxl_edge::{telemetry, Executor};

mod cli;

use cli::{Cli, Cmd, ConfigArgs, ServeArgs, StateArgs, TriggerArgs};

/// glibc builds only (Cargo.toml says why): the musl device builds keep musl's allocator, which
/// fits their idle-memory budget.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EX_USAGE: u8 = 64;
/// The handler name of the admin's sample job.
const DEMO_HANDLER: &str = "demoJobHandler";
const EX_STORE: u8 = 2;
/// The store failed while serving (disk full, data directory read-only, I/O error): sysexits'
/// EX_TEMPFAIL. A restart recovers; systemd's `Restart=always` (or `on-failure`) does it.
const EX_STORE_FAILED: i32 = 75;

fn load_config(a: &ConfigArgs, log_json: bool) -> Result<Config, ConfigError> {
    let flags = Overrides {
        admin_addresses: (!a.admin.is_empty()).then(|| a.admin.clone()),
        access_token: a.token.clone(),
        app_name: a.app_name.clone(),
        address: a.address.clone(),
        ip: a.ip.clone(),
        port: a.port,
        listen: a.listen.clone(),
        data_dir: a.data_dir.clone(),
        log_json: log_json.then_some(true),
        tls_cert: a.tls_cert.clone(),
        tls_key: a.tls_key.clone(),
        tls_client_ca: a.tls_client_ca.clone(),
    };
    Config::load(a.config.as_deref(), &Env, &flags)
}

fn main() -> ExitCode {
    // clap exits 2 on a usage error, which here means "store unusable".
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EX_USAGE)
            } else {
                // --help, --version.
                ExitCode::SUCCESS
            };
        }
    };
    match cli.cmd {
        Cmd::Serve(a) => serve(a),
        Cmd::CheckConfig(a) => match load_config(&a, false) {
            Ok(c) => {
                print_config(&c);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("xxl-edge: configuration error: {e}");
                ExitCode::from(EX_USAGE)
            }
        },
        Cmd::Trigger(a) => runtime(1).map_or(ExitCode::FAILURE, |rt| rt.block_on(trigger(a))),
        Cmd::State(a) => state(a),
    }
}

fn runtime(threads: usize) -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .max_blocking_threads(8)
        .thread_stack_size(256 * 1024)
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("xxl-edge: cannot start the runtime: {e}");
            None
        }
    }
}

fn serve(a: ServeArgs) -> ExitCode {
    let config = match load_config(&a.config, a.log_json) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("xxl-edge: configuration error: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let otlp = config
        .telemetry
        .otlp_traces_url
        .clone()
        .map(|url| telemetry::traces::OtlpConfig {
            traces_url: url,
            service_name: config
                .telemetry
                .service_name_set
                .then(|| config.telemetry.service_name.clone()),
            sample_ratio: config.telemetry.trace_sample_ratio,
            timeout: Duration::from_secs(10),
            details: config.telemetry.trace_details,
        });
    // Created before the trace exporter, which counts its spans in it.
    let metrics = match telemetry::Metrics::new() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("xxl-edge: metrics: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _trace_guard = match telemetry::traces::init(
        &config.telemetry.log_level,
        config.telemetry.log_json,
        otlp.as_ref(),
        &metrics,
    ) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("xxl-edge: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    if let Some(o) = &otlp {
        tracing::info!(endpoint = %telemetry::redact_url(&o.traces_url), service = ?o.service_name, "Exporting traces over OTLP/HTTP.");
    }
    raise_open_files(config.open_files_wanted());
    let threads = a
        .worker_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(2)));
    let Some(rt) = runtime(threads) else {
        return ExitCode::FAILURE;
    };
    let served = rt.block_on(async move {
        let addr = std::net::SocketAddr::new(config.executor.listen, config.executor.port);
        // The admin's sample job calls `demoJobHandler`; answering it out of the box lets an
        // operator check the whole path from the admin. A configured handler of that name wins.
        let mut builder = Executor::builder().metrics(metrics);
        if !config.handlers.contains_key(DEMO_HANDLER) {
            builder = builder.handler(DEMO_HANDLER, |ctx: xxl_edge::JobContext| async move {
                ctx.log("XXL-JOB, Hello World.");
                xxl_edge::Outcome::success()
            });
        }
        // Bound before the store is opened and recovered, so a taken port stops the process
        // before it has started any run.
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("xxl-edge: cannot listen on {addr}: {e}");
                return Served::Exit(ExitCode::FAILURE);
            }
        };
        let executor = match builder.config(config).build().await {
            Ok(e) => e,
            Err(e @ xxl_edge::executor::Error::StoreFailed(_)) => return Served::StoreFailed(e),
            Err(xxl_edge::executor::Error::Store(e)) => {
                eprintln!("xxl-edge: {e}");
                return Served::Exit(ExitCode::from(EX_STORE));
            }
            Err(e) => {
                eprintln!("xxl-edge: cannot start: {e}");
                return Served::Exit(ExitCode::FAILURE);
            }
        };
        match executor.run(listener, shutdown_signal()).await {
            Ok(()) => Served::Exit(ExitCode::SUCCESS),
            Err(e @ xxl_edge::executor::Error::StoreFailed(_)) => Served::StoreFailed(e),
            Err(e) => {
                eprintln!("xxl-edge: {e}");
                Served::Exit(ExitCode::FAILURE)
            }
        }
    });
    match served {
        Served::Exit(code) => code,
        Served::StoreFailed(e) => {
            eprintln!(
                "xxl-edge: {e}. Exiting with code {EX_STORE_FAILED} so that the supervisor restarts xxl-edge."
            );
            drop(_trace_guard);
            // Not a return: that would drop the runtime, which waits for blocking tasks that may
            // be inside the failed sled, and sled's destructors can hang (`store::health`). The
            // store's flush thread and lock end with the process.
            std::process::exit(EX_STORE_FAILED)
        }
    }
}

/// Raises the soft open-file limit to `wanted` (every connection of `server.max_connections`
/// plus room for the store and the jobs), as far as the hard limit allows. The common soft limit
/// of 1024 is less than the defaults want, and each connection holds a descriptor; it is raised
/// no further than needed, since the job commands inherit it. When the hard limit is lower, the
/// connection cap is lowered at start instead (and that is logged).
fn raise_open_files(wanted: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft == RLIM_INFINITY || soft >= wanted {
        return;
    }
    let to = if hard == RLIM_INFINITY {
        wanted
    } else {
        wanted.min(hard)
    };
    if to <= soft {
        return;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, to, hard) {
        Ok(()) => tracing::info!(from = soft, to, "Raised the soft open-file limit."),
        Err(e) => {
            tracing::warn!(error = %e, soft, wanted, "Cannot raise the soft open-file limit.")
        }
    }
}

/// How `serve` ends.
enum Served {
    Exit(ExitCode),
    /// The store failed: exit without running the store's destructors.
    StoreFailed(xxl_edge::executor::Error),
}

/// SIGTERM is what systemd and `kill` send; SIGINT is Ctrl-C on a console. Both stop gracefully.
///
/// The handlers are installed here, when it is called, not when the future is first polled:
/// the executor polls it from a task of its own, which under load ran after "started" was
/// logged, and a SIGTERM in between met the default action and ended the process at once
/// (found by `tests/network.rs` in a full `.ci/test` run).
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut t), Ok(mut i)) => {
                tokio::select! {
                    _ = t.recv() => {}
                    _ = i.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

fn print_config(c: &Config) {
    println!("configuration is valid");
    for (key, value) in c.summary() {
        println!("{key} = {value}");
    }
    println!(
        "registered address = {}",
        c.executor.registered_address(c.executor.port)
    );
    println!(
        "store durability = {}",
        match c.store.flush_every {
            None => "safe (every acknowledgement is flushed, group commit)".to_string(),
            Some(d) => format!("relaxed (flush every {} ms)", d.as_millis()),
        }
    );
    for note in c.notes() {
        println!("note: {note}");
    }
}

async fn trigger(a: TriggerArgs) -> ExitCode {
    let (shard_index, shard_total) = match a.shard.split_once('/') {
        Some((i, n)) => match (i.trim().parse(), n.trim().parse()) {
            (Ok(i), Ok(n)) => (i, n),
            _ => {
                eprintln!("xxl-edge: --shard takes I/N, e.g. 0/1");
                return ExitCode::from(EX_USAGE);
            }
        },
        None => {
            eprintln!("xxl-edge: --shard takes I/N, e.g. 0/1");
            return ExitCode::from(EX_USAGE);
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let t = Trigger {
        job_id: JobId(a.job_id),
        log_id: LogId(a.log_id.unwrap_or(now)),
        log_date_time: now,
        handler: a.name.clone(),
        params: a.param.clone(),
        block: BlockStrategy::Serial,
        timeout: (a.timeout > 0).then(|| Duration::from_secs(a.timeout.unsigned_abs().into())),
        glue: Glue::Bean,
        shard_index,
        shard_total,
    };
    let to = ExecutorAddress {
        url: a.executor.clone(),
        token: a.token.clone().unwrap_or_default(),
    };
    let shown = std::cell::Cell::new(false);
    let res = client::trigger_and_follow(&to, &t, Duration::from_secs(a.wait), |page| {
        if !shown.replace(true) {
            eprintln!("accepted: jobId {} logId {}", t.job_id, t.log_id);
        }
        print!("{page}");
    })
    .await;
    match res {
        Ok(o) if o.is_success() => ExitCode::SUCCESS,
        Ok(o) => {
            eprintln!("run failed with handleCode={}", o.code);
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("xxl-edge: {e}");
            ExitCode::FAILURE
        }
    }
}

fn state(a: StateArgs) -> ExitCode {
    let dir = match (&a.data_dir, &a.config) {
        (Some(d), _) => d.clone(),
        (None, Some(_)) => match load_config(
            &ConfigArgs {
                config: a.config.clone(),
                admin: vec![],
                token: None,
                app_name: None,
                address: None,
                ip: None,
                port: None,
                listen: None,
                data_dir: None,
                tls_cert: None,
                tls_key: None,
                tls_client_ca: None,
            },
            false,
        ) {
            Ok(c) => c.executor.data_dir,
            Err(e) => {
                eprintln!("xxl-edge: configuration error: {e}");
                return ExitCode::from(EX_USAGE);
            }
        },
        (None, None) => PathBuf::from("./data"),
    };
    let Some(rt) = runtime(1) else {
        return ExitCode::FAILURE;
    };
    match rt.block_on(async move { state::read(&dir, a.recent) }) {
        Ok(s) => {
            print_state(&s);
            ExitCode::SUCCESS
        }
        Err(e @ (StateError::NoStore(_) | StateError::Snapshot(_) | StateError::Copy(_))) => {
            eprintln!("xxl-edge: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("xxl-edge: {e}");
            ExitCode::from(EX_STORE)
        }
    }
}

fn print_state(s: &State) {
    match s {
        State::Running { path, snapshot } => {
            println!("executor is running; it answered on {}:", path.display());
            println!(
                "{}",
                serde_json::to_string_pretty(snapshot).unwrap_or_default()
            );
        }
        State::Stopped { counts, recent } => {
            println!("executor is stopped; read from the store:");
            println!("runs in journal      {}", counts.runs);
            println!("  queued (accepted)  {}", counts.accepted);
            println!("  running            {}", counts.running);
            println!("  finished           {}", counts.finished);
            println!("  reported           {}", counts.reported);
            println!("outbox backlog       {}", counts.outbox_len);
            println!(
                "outbox oldest age    {}",
                counts
                    .outbox_oldest_age
                    .map_or("-".to_string(), |d| format!("{} s", d.as_secs()))
            );
            println!("store size on disk   {} bytes", counts.disk_bytes);
            println!("recent runs (newest first):");
            println!(
                "  {:>14} {:>8} {:<24} {:<9} {:>5}  accepted",
                "logId", "jobId", "handler", "state", "code"
            );
            for r in recent {
                println!(
                    "  {:>14} {:>8} {:<24} {:<9} {:>5}  {}",
                    r.log_id,
                    r.job_id,
                    r.handler,
                    r.state,
                    r.code.map_or("-".to_string(), |c| c.to_string()),
                    r.accepted_at
                );
            }
        }
        _ => {}
    }
}
