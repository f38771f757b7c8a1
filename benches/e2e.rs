#![allow(clippy::unwrap_used, clippy::expect_used)]
//! End to end, against the physical limit: the release binary as a child process with a fake
//! admin, `/run` over many keep-alive connections across many jobIds, runs counted from accepted
//! to callback acknowledged; then the same client against a bare warp server that only answers
//! `{"code":200}` (the ceiling on this machine). Also the footprint: start to first `/beat`,
//! resident memory idle and with 10,000 triggers queued, threads. With the throughput, what else
//! spent the two cores (this process's client and fake admin, the hypervisor's steal, idle
//! time), since on a shared VM they move runs/s more than a build does.
//!
//! `cargo bench --bench e2e` (env: `E2E_RUNS`, `E2E_CONNS`, `E2E_JOBS`, `E2E_STEADY_SECS`;
//! `E2E_BIN` runs another build of the binary, for A/B comparisons of two builds on one day).
//! Traffic goes to 127.0.0.1 only; every loop is bounded in count and time.

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use warp::Filter;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Counts callback items; notifies on each batch.
#[derive(Clone)]
struct Admin {
    addr: SocketAddr,
    items: Arc<AtomicU64>,
    notify: Arc<Notify>,
}

async fn fake_admin() -> Admin {
    let items = Arc::new(AtomicU64::new(0));
    let notify = Arc::new(Notify::new());
    let (i, n) = (items.clone(), notify.clone());
    let route = warp::post()
        .and(warp::path!("xxl-job-admin" / "api" / String))
        .and(warp::body::bytes())
        .map(move |call: String, body: bytes::Bytes| {
            if call == "callback" {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let k = v.as_array().map_or(0, |a| a.len()) as u64;
                i.fetch_add(k, Ordering::SeqCst);
                n.notify_waiters();
            }
            r#"{"code":200}"#
        });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(warp::serve(route).incoming(l).run());
    Admin {
        addr,
        items,
        notify,
    }
}

async fn bare_server() -> SocketAddr {
    let route = warp::post()
        .and(warp::path("run"))
        .and(warp::body::bytes())
        .map(|_b: bytes::Bytes| r#"{"code":200}"#);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(warp::serve(route).incoming(l).run());
    addr
}

struct Exec {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Exec {
    /// Bytes the store's files take on disk (allocated blocks, so sparse files count for
    /// what they use).
    fn store_bytes(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        fn walk(p: &std::path::Path) -> u64 {
            let Ok(entries) = std::fs::read_dir(p) else {
                return 0;
            };
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => walk(&e.path()),
                    Ok(m) => m.blocks() * 512,
                    Err(_) => 0,
                })
                .sum()
        }
        walk(&self._dir.path().join("data").join("store"))
    }
}

impl Drop for Exec {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_exec(admin: SocketAddr, extra: &str) -> (Exec, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[admin]
addresses = ["http://{admin}/xxl-job-admin"]
[executor]
listen = "127.0.0.1"
ip = "127.0.0.1"
port = 0
data_dir = "{}/data"
[runner]
max_running = 1024
max_queue_per_job = 100000
[store]
min_free_bytes = 0
{extra}
"#,
            dir.path().display()
        ),
    )
    .unwrap();
    let started = Instant::now();
    let bin = std::env::var_os("E2E_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_xxl-edge").into());
    let mut child = Command::new(bin)
        .args(["serve", "--log-json", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                // Builds before the telemetry issue (`E2E_BIN`) nest the event under "fields".
                let e = if v["fields"].is_object() {
                    &v["fields"]
                } else {
                    &v
                };
                if e["message"] == "xxl-edge executor started." {
                    let _ = tx.send(e["listen"].as_str().unwrap_or("").to_string());
                }
            }
        }
    });
    let addr: SocketAddr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("executor started")
        .parse()
        .unwrap();
    (
        Exec {
            child,
            addr,
            _dir: dir,
        },
        started.elapsed(),
    )
}

/// A numeric field of `/proc/PID/status`.
fn proc_status(pid: u32, key: &str) -> u64 {
    proc_field(pid, "status", key)
}

/// The number after `key` in `/proc/PID/FILE`, 0 if absent.
fn proc_field(pid: u32, file: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Group-commit flushes so far, from the executor's own `/metrics`.
async fn flushes(addr: SocketAddr) -> u64 {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with("xxl_edge_store_flush_duration_seconds_count"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Bytes the process caused to be written to storage (`/proc/PID/io`).
fn write_bytes(pid: u32) -> u64 {
    proc_field(pid, "io", "write_bytes:")
}

/// CPU time the process has used (user + system, all threads), in clock ticks: per run, a
/// figure that a busy VM disturbs less than runs/s.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)
}

/// Time the hypervisor ran something else while this VM's CPUs wanted to run (`steal` in the
/// first line of `/proc/stat`, all CPUs), in clock ticks: printed with the steady-rate tail,
/// which on a shared VM moves with it more than with the build.
fn steal_ticks() -> u64 {
    vm_ticks().1
}

/// (idle, steal) of all CPUs from the first line of `/proc/stat`, in clock ticks. Printed with
/// the throughput: the executor shares the VM with this process's client and fake admin, and
/// the hypervisor takes a varying share; both bound runs/s more than the build does from one
/// run to the next.
fn vm_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu = stat.lines().next().unwrap_or_default();
    // "cpu  user nice system idle iowait irq softirq steal ..."
    let f: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    (
        f.get(3).copied().unwrap_or(0),
        f.get(7).copied().unwrap_or(0),
    )
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux whatever the kernel's HZ).
const CLK_TCK: f64 = 100.0;

fn body(job: u64, log: u64, handler: &str) -> String {
    format!(
        r#"{{"jobId":{job},"executorHandler":"{handler}","executorParams":"","executorBlockStrategy":"SERIAL_EXECUTION","executorTimeout":0,"logId":{log},"logDateTime":1717171717000,"glueType":"BEAN","glueSource":"","glueUpdatetime":0,"broadcastIndex":0,"broadcastTotal":1}}"#
    )
}

struct Load {
    rate: f64,
    p50: Duration,
    p99: Duration,
    accepted: u64,
}

/// `runs` POSTs to `addr/run` over `conns` keep-alive connections across `jobs` jobIds.
async fn drive(addr: SocketAddr, runs: u64, conns: u64, jobs: u64, first_log: u64) -> Load {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            let url = format!("http://{addr}/run");
            let mut lat = Vec::new();
            let mut ok = 0u64;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= runs {
                    return (lat, ok);
                }
                let t = Instant::now();
                let r = client
                    .post(&url)
                    .body(body(i % jobs, first_log + i, "demoJobHandler"))
                    .send()
                    .await;
                if let Ok(r) = r {
                    if r.bytes()
                        .await
                        .is_ok_and(|b| b.starts_with(br#"{"code":200"#))
                    {
                        ok += 1;
                    }
                }
                lat.push(t.elapsed());
            }
        }));
    }
    let mut lat = Vec::new();
    let mut accepted = 0;
    for t in tasks {
        let (l, ok) = t.await.unwrap();
        lat.extend(l);
        accepted += ok;
    }
    let elapsed = started.elapsed();
    lat.sort();
    Load {
        rate: runs as f64 / elapsed.as_secs_f64(),
        p50: lat[lat.len() / 2],
        p99: lat[lat.len() * 99 / 100],
        accepted,
    }
}

/// A steady rate (e.g. 1,000/s) for `secs`: latency under normal load, not saturation.
async fn steady(addr: SocketAddr, per_sec: u64, secs: u64, first_log: u64) -> (Duration, Duration) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_sec as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::new();
    for i in 0..per_sec * secs {
        tick.tick().await;
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let _ = c
                .post(format!("http://{addr}/run"))
                .body(body(i % 200, first_log + i, "demoJobHandler"))
                .send()
                .await
                .map(|r| r.bytes());
            t.elapsed()
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.push(t.await.unwrap());
    }
    lat.sort();
    (lat[lat.len() / 2], lat[lat.len() * 99 / 100])
}

async fn wait_callbacks(admin: &Admin, n: u64, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    while admin.items.load(Ordering::SeqCst) < n {
        if start.elapsed() > limit {
            return None;
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), admin.notify.notified()).await;
    }
    Some(start.elapsed())
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let runs = env("E2E_RUNS", 50_000);
    let conns = env("E2E_CONNS", 64);
    let jobs = env("E2E_JOBS", 256);
    let steady_secs = env("E2E_STEADY_SECS", 5);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("machine: {cores} cores; xxl-edge release binary; loopback only");

    // Footprint.
    let admin = fake_admin().await;
    let (ex, boot) = start_exec(admin.addr, "");
    let pid = ex.child.id();
    let client = reqwest::Client::new();
    let t = Instant::now();
    // `boot` already includes the "started" event; the first /beat follows.
    let beat = client
        .post(format!("http://{}/beat", ex.addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(beat.contains("200"));
    let first_beat = boot + t.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss = proc_status(pid, "VmRSS:");
    let threads = proc_status(pid, "Threads:");
    println!("start to first /beat answered: {}", ms(first_beat));
    println!("idle: RSS {idle_rss} kB, {threads} threads");
    drop(ex);

    // 10,000 triggers queued behind one blocked run.
    let (ex, _) = start_exec(
        admin.addr,
        "[handlers.block]\ncommand = [\"sleep\", \"600\"]\n",
    );
    let pid = ex.child.id();
    let c = reqwest::Client::new();
    for i in 0..10_001u64 {
        let r = c
            .post(format!("http://{}/run", ex.addr))
            .body(body(1, 1_000_000 + i, "block"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(r.starts_with(r#"{"code":200"#), "{r}");
    }
    println!(
        "10,000 triggers queued: RSS {} kB (peak {} kB), {} threads",
        proc_status(pid, "VmRSS:"),
        proc_status(pid, "VmHWM:"),
        proc_status(pid, "Threads:")
    );
    drop(ex);

    // Throughput, durable (default) and relaxed, then the bare ceiling.
    let mut results = Vec::new();
    for (name, extra) in [
        ("durable (default)", ""),
        ("relaxed (flush_every_ms = 100)", "flush_every_ms = 100\n"),
    ] {
        let admin = fake_admin().await;
        let (ex, _) = start_exec(admin.addr, extra);
        let pid = ex.child.id();
        let (flushes0, written0, size0, cpu0) = (
            flushes(ex.addr).await,
            write_bytes(pid),
            ex.store_bytes(),
            cpu_ticks(pid),
        );
        let (own0, (idle0, steal0)) = (cpu_ticks(std::process::id()), vm_ticks());
        let start = Instant::now();
        let load = drive(ex.addr, runs, conns, jobs, 1).await;
        let done = wait_callbacks(&admin, load.accepted, Duration::from_secs(300)).await;
        let total = start.elapsed();
        let cpu = cpu_ticks(pid).saturating_sub(cpu0) as f64 / CLK_TCK;
        let own = cpu_ticks(std::process::id()).saturating_sub(own0) as f64 / CLK_TCK;
        let (idle1, steal1) = vm_ticks();
        let e2e = load.accepted as f64 / total.as_secs_f64();
        // What the store cost per run: the figures behind "what bounds the throughput".
        let per_run = |a: u64, b: u64| b.saturating_sub(a) as f64 / load.accepted.max(1) as f64;
        println!(
            "{name}: {:.2} flushes and {:.0} bytes written to disk per run; store {:.0} bytes on disk per run (before retention)",
            per_run(flushes0, flushes(ex.addr).await),
            per_run(written0, write_bytes(pid)),
            per_run(size0, ex.store_bytes()),
        );
        println!(
            "{name}: executor CPU {:.0} µs per run ({:.2} of {} cores busy)",
            cpu * 1e6 / load.accepted.max(1) as f64,
            cpu / total.as_secs_f64(),
            cores
        );
        println!(
            "{name}: this process (client and fake admin) CPU {:.0} µs per run; the VM meanwhile: {:.0} ms stolen by the hypervisor and {:.0} ms idle, of {:.0} ms",
            own * 1e6 / load.accepted.max(1) as f64,
            steal1.saturating_sub(steal0) as f64 * 1000.0 / CLK_TCK,
            idle1.saturating_sub(idle0) as f64 * 1000.0 / CLK_TCK,
            total.as_secs_f64() * 1000.0 * cores as f64,
        );
        // The VM's speed moves both processes' CPU per run together (the same executor build
        // measured 41-61 µs per run while this process measured 29-41 µs, correlated 0.91), so
        // their ratio compares two builds better than runs/s or either figure alone.
        println!(
            "{name}: executor CPU per run relative to this process's: {:.2} (for A/B of builds: the VM's speed cancels out)",
            cpu / own.max(f64::MIN_POSITIVE)
        );
        println!(
            "{name}: /run {:.0}/s (p50 {}, p99 {}), {} accepted; end to end (accepted -> callback acknowledged) {:.0} runs/s{}; peak RSS {} kB",
            load.rate,
            ms(load.p50),
            ms(load.p99),
            load.accepted,
            e2e,
            if done.is_none() { " (callbacks incomplete!)" } else { "" },
            proc_status(pid, "VmHWM:")
        );
        let steal0 = steal_ticks();
        let (p50, p99) = steady(ex.addr, 1000, steady_secs, 10_000_000).await;
        println!(
            "{name}: steady 1,000 triggers/s for {steady_secs} s: /run p50 {}, p99 {} (the VM's steal time meanwhile: {:.0} ms)",
            ms(p50),
            ms(p99),
            steal_ticks().saturating_sub(steal0) as f64 * 1000.0 / CLK_TCK
        );
        results.push((name, e2e, load.rate));
        drop(ex);
    }
    let bare = bare_server().await;
    let ceiling = drive(bare, runs, conns, jobs, 1).await;
    println!(
        "bare warp ceiling (same client): {:.0}/s (p50 {}, p99 {})",
        ceiling.rate,
        ms(ceiling.p50),
        ms(ceiling.p99)
    );
    for (name, e2e, rate) in results {
        println!(
            "{name}: end to end at {:.0} % of the ceiling (/run alone {:.0} %)",
            100.0 * e2e / ceiling.rate,
            100.0 * rate / ceiling.rate
        );
    }
}
