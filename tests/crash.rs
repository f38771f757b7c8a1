//! Nothing lost: the real binary is started, `kill -9`ed and restarted on the same data
//! directory, and the fake admin counts what it received per logId.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use support::child::Child;
use support::*;

/// A data dir, a config pointing at `admin_url`, and the handlers the scenarios use:
/// `gate` runs until the file `go` exists; `fast` appends its logId to `ran.txt`.
struct Site {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    config: PathBuf,
}

impl Site {
    fn new(admin_url: &str, extra: &str) -> Self {
        Self::with_store(admin_url, "", extra)
    }

    /// `store` goes into the `[store]` table, `extra` at the end.
    fn with_store(admin_url: &str, store: &str, extra: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let d = dir.display();
        let config = dir.join("xxl-edge.toml");
        std::fs::write(
            &config,
            format!(
                r#"{head}[runner]
kill_grace_secs = 0.5
shutdown_grace_secs = 1
max_queue_per_job = 100000
[store]
min_free_bytes = 0
{store}
[handlers.gate]
command = ["sh", "-c", "echo started; while [ ! -f {d}/go ] && [ -d {d} ]; do sleep 0.02; done"]
[handlers.fast]
command = ["sh", "-c", "echo $XXL_JOB_LOG_ID >> {d}/ran.txt"]
[handlers.gate_size]
command = ["sh", "-c", "echo started; while [ ! -f {d}/go ] && [ -d {d} ]; do sleep 0.02; done; wc -c < \"$XXL_JOB_PARAM_FILE\" >> {d}/psize.txt"]
[handlers.safe_gate]
command = ["sh", "-c", "echo started; echo $XXL_JOB_LOG_ID >> {d}/safe.txt; while [ ! -f {d}/go ] && [ -d {d} ]; do sleep 0.02; done"]
rerun_safe = true
{extra}
"#,
                head = child::config_head(admin_url, "crash-test", &dir.join("data")),
            ),
        )
        .unwrap();
        Self {
            _tmp: tmp,
            dir,
            config,
        }
    }

    fn open_gate(&self) {
        std::fs::write(self.dir.join("go"), "").unwrap();
    }

    /// How often each logId was executed by `fast`.
    fn executions(&self) -> BTreeMap<i64, usize> {
        let mut m = BTreeMap::new();
        if let Ok(s) = std::fs::read_to_string(self.dir.join("ran.txt")) {
            for l in s.lines().filter(|l| !l.is_empty()) {
                *m.entry(l.trim().parse().unwrap()).or_default() += 1;
            }
        }
        m
    }
}

fn code_of(items: &[Value]) -> i64 {
    items[0]["handleCode"].as_i64().unwrap()
}

#[tokio::test]
async fn kill9_while_queued_and_running_then_restart() {
    let admin = FakeAdmin::start().await;
    let site = Site::new(&admin.url(), "");
    let p = Child::start(&site.config).await;
    assert_eq!(p.run(1, "gate", 1).await.unwrap()["code"], 200);
    p.wait_log(1, "started").await;
    for id in 2..=4 {
        assert_eq!(p.run(1, "gate", id).await.unwrap()["code"], 200);
    }
    // A handler declared safe to re-run runs again after the crash instead of failing.
    assert_eq!(p.run(3, "safe_gate", 30).await.unwrap()["code"], 200);
    p.wait_log(30, "started").await;
    assert_eq!(p.run(2, "fast", 10).await.unwrap()["code"], 200);
    admin
        .wait_until("callback 10", |a| a.delivered().contains_key(&10))
        .await;
    // The finish line is written once the acknowledgement is on disk.
    p.wait_log(10, "callback finish.").await;
    p.kill9().await;
    // Let the orphaned command of run 1 (its own process group) and the queued ones finish.
    site.open_gate();

    let p = Child::start(&site.config).await;
    admin
        .wait_until("every callback", |a| {
            let d = a.delivered();
            (1..=4).chain([30]).all(|id| d.contains_key(&id))
        })
        .await;
    // A logId already in the journal is never run again, also after a restart.
    let r = p.run(2, "fast", 10).await.unwrap();
    assert_eq!(r["msg"], "repeat trigger job, logId:10");
    assert_eq!(p.sigterm().await.code(), Some(0));

    let d = admin.delivered();
    for id in [1, 2, 3, 4, 10] {
        assert_eq!(d[&id].len(), 1, "logId {id}: {:?}", d[&id]);
    }
    assert_eq!(code_of(&d[&1]), 500);
    assert!(d[&1][0]["handleMsg"]
        .as_str()
        .unwrap()
        .contains("restarted during the run"));
    for id in 2..=4 {
        assert_eq!(code_of(&d[&id]), 200, "queued {id} ran after the restart");
    }
    assert_eq!(site.executions().get(&10), Some(&1));
    assert_eq!(code_of(&d[&30]), 200);
    let safe = std::fs::read_to_string(site.dir.join("safe.txt")).unwrap();
    assert_eq!(safe.lines().count(), 2, "ran before and after the crash");
}

/// Issue 9 #16: params over 64 KiB are kept in a file under `store/params/`, not in the
/// journal's record. A run queued with 1 MiB params survives a `kill -9` whole, and its file
/// is gone once the run has ended.
#[tokio::test]
async fn kill9_while_queued_with_large_params_then_restart() {
    let admin = FakeAdmin::start().await;
    let site = Site::new(&admin.url(), "");
    let params_dir = site.dir.join("data/store/params");
    let files = || std::fs::read_dir(&params_dir).unwrap().count();
    let big = "x".repeat(1 << 20);
    let p = Child::start(&site.config).await;
    let run = |id: i64, params: &str| {
        json!({"jobId": 1, "executorHandler": "gate_size", "logId": id,
               "executorParams": params, "logDateTime": 1717171717000i64, "glueType": "BEAN",
               "executorBlockStrategy": "SERIAL_EXECUTION"})
        .to_string()
    };
    assert_eq!(p.post("/run", run(1, "small")).await.unwrap()["code"], 200);
    p.wait_log(1, "started").await;
    assert_eq!(files(), 0, "small params stay in the journal");
    assert_eq!(p.post("/run", run(2, &big)).await.unwrap()["code"], 200);
    assert_eq!(files(), 1, "1 MiB params are in a file");
    p.kill9().await;
    site.open_gate();

    let p = Child::start(&site.config).await;
    admin
        .wait_until("callbacks 1 and 2", |a| {
            let d = a.delivered();
            d.contains_key(&1) && d.contains_key(&2)
        })
        .await;
    p.wait_log(2, "callback finish.").await;
    assert_eq!(p.sigterm().await.code(), Some(0));
    let d = admin.delivered();
    assert_eq!(code_of(&d[&1]), 500, "interrupted");
    assert_eq!(code_of(&d[&2]), 200, "{:?}", d[&2]);
    let sizes = std::fs::read_to_string(site.dir.join("psize.txt")).unwrap();
    assert!(
        sizes.lines().any(|l| l.trim() == (1 << 20).to_string()),
        "the queued run got its whole params after the restart: {sizes:?}"
    );
    assert_eq!(files(), 0, "the file went with the finished run");
}

#[tokio::test]
async fn kill9_with_callbacks_pending_and_the_admin_down() {
    // Learn a free port for the admin, then keep it down.
    let probe = FakeAdmin::start().await;
    let admin_addr = probe.addr;
    probe.shutdown();
    let url = format!("http://{admin_addr}/xxl-job-admin");
    let site = Site::new(&url, "");
    let p = Child::start(&site.config).await;
    for id in 1..=120 {
        assert_eq!(p.run(id as i32 % 7, "fast", id).await.unwrap()["code"], 200);
    }
    p.wait_log(120, "execute end").await;
    p.kill9().await;
    let p = Child::start(&site.config).await;
    // More work while the admin is still away.
    for id in 121..=130 {
        assert_eq!(p.run(3, "fast", id).await.unwrap()["code"], 200);
    }
    p.wait_log(130, "execute end").await;
    // The admin comes back on its address: everything arrives, in order, once, in batches ≤ 50.
    let admin = loop {
        if let Ok(l) = std::net::TcpListener::bind(admin_addr) {
            drop(l);
            break FakeAdmin::start_on(admin_addr).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    admin
        .wait_until("all 130 callbacks", |a| a.delivered().len() == 130)
        .await;
    assert_eq!(p.sigterm().await.code(), Some(0));
    let d = admin.delivered();
    for id in 1..=130 {
        assert_eq!(d[&id].len(), 1, "logId {id}");
        assert_eq!(code_of(&d[&id]), 200);
    }
    let batches: Vec<usize> = admin
        .calls("callback")
        .iter()
        .filter(|c| c.accepted)
        .map(|c| c.body.as_array().unwrap().len())
        .collect();
    assert!(batches.iter().all(|n| *n <= 50), "{batches:?}");
    // FIFO: logIds arrive in the order the runs finished (here: ascending per job, and the
    // first 120 before the last 10).
    let order: Vec<i64> = admin
        .calls("callback")
        .iter()
        .filter(|c| c.accepted)
        .flat_map(|c| c.body.as_array().unwrap().clone())
        .map(|v| v["logId"].as_i64().unwrap())
        .collect();
    let first_late = order.iter().position(|id| *id > 120).unwrap();
    assert!(order[..first_late].iter().all(|id| *id <= 120));
    assert!(site.executions().values().all(|n| *n == 1));
}

#[tokio::test]
async fn state_reads_the_store_while_stopped_and_a_corrupt_store_refuses_to_start() {
    let admin = FakeAdmin::start().await;
    let site = Site::new(&admin.url(), "");
    let p = Child::start(&site.config).await;
    assert_eq!(p.run(1, "fast", 1).await.unwrap()["code"], 200);
    admin
        .wait_until("callback", |a| a.delivered().contains_key(&1))
        .await;
    // While running: asked on its socket, which answers with the run it has just reported;
    // nothing is written to the data directory for it.
    let out = Command::new(env!("CARGO_BIN_EXE_xxl-edge"))
        .args(["state", "--data-dir"])
        .arg(site.dir.join("data"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("executor is running"), "{text}");
    assert!(text.contains("\"log_id\": 1"), "{text}");
    assert!(!site.dir.join("data/state.json").exists());
    assert_eq!(p.sigterm().await.code(), Some(0));
    // Stopped: straight from the store.
    let out = Command::new(env!("CARGO_BIN_EXE_xxl-edge"))
        .args(["state", "--data-dir"])
        .arg(site.dir.join("data"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("outbox backlog       0"), "{text}");
    assert!(text.contains("runs in journal      1"), "{text}");

    // Corrupt the store: serve must refuse, naming what to do.
    let store = site.dir.join("data/store");
    for entry in walk(&store) {
        if entry.is_file() {
            let mut bytes = std::fs::read(&entry).unwrap();
            for b in bytes.iter_mut() {
                *b ^= 0x5a;
            }
            std::fs::write(&entry, bytes).unwrap();
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_xxl-edge"))
        .args(["serve", "--config"])
        .arg(&site.config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot be used") && err.contains("Move the directory aside"),
        "{err}"
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn bad_config_exits_before_binding_and_names_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("bad.toml");
    std::fs::write(&cfg, "[executor]\nport = 99999\n").unwrap();
    for sub in ["serve", "check-config"] {
        let out = Command::new(env!("CARGO_BIN_EXE_xxl-edge"))
            .args([sub, "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("executor.port"), "{err}");
    }
    std::fs::write(&cfg, "[executor]\nport = 9999\ncolour = 1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_xxl-edge"))
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("colour"));
}

/// The relaxed mode may lose the last writes on a crash, but never one the admin has seen: a
/// callback whose outcome a crash then loses would be followed by a second, contradicting one
/// (the run reported as interrupted), or its logId accepted and run again; and an acknowledged
/// callback is not sent again.
#[tokio::test]
async fn relaxed_mode_never_calls_back_what_a_crash_can_lose() {
    let admin = FakeAdmin::start().await;
    // A minute between timer flushes: only the flushes around a callback can save the run.
    let site = Site::with_store(&admin.url(), "flush_every_ms = 60000", "");

    // The admin takes the callback but the executor dies before it hears the answer.
    admin.set_mode(AdminMode::Hang);
    let p = Child::start(&site.config).await;
    assert_eq!(p.run(1, "fast", 1).await.unwrap()["code"], 200);
    admin
        .wait_until("callback 1", |a| a.delivered().contains_key(&1))
        .await;
    p.kill9().await;
    admin.set_mode(AdminMode::Ok);
    let p = Child::start(&site.config).await;
    let r = p.run(1, "fast", 1).await.unwrap();
    assert_eq!(r["msg"], "repeat trigger job, logId:1");
    // Acknowledged and flushed: a crash now must not send it again.
    assert_eq!(p.run(1, "fast", 2).await.unwrap()["code"], 200);
    p.wait_log(2, "callback finish.").await;
    p.kill9().await;

    let p = Child::start(&site.config).await;
    // The outbox is FIFO: anything left for 1 or 2 would come before the result of 3.
    assert_eq!(p.run(1, "fast", 3).await.unwrap()["code"], 200);
    admin
        .wait_until("callback 3", |a| a.delivered().contains_key(&3))
        .await;
    assert_eq!(p.sigterm().await.code(), Some(0));
    let d = admin.delivered();
    // Sent once more after the restart (its acknowledgement never arrived), the same result.
    assert_eq!(d[&1].len(), 2, "{:?}", d[&1]);
    assert_eq!(d[&1][0], d[&1][1]);
    assert_eq!(code_of(&d[&1]), 200);
    assert_eq!(d[&2].len(), 1, "{:?}", d[&2]);
    assert_eq!(site.executions(), BTreeMap::from([(1, 1), (2, 1), (3, 1)]));
}

#[tokio::test]
async fn trigger_command_runs_a_handler_and_reports_its_result() {
    let admin = FakeAdmin::start().await;
    let site = Site::new(
        &admin.url(),
        "[handlers.bad]\ncommand = [\"sh\", \"-c\", \"echo nope; exit 4\"]\n",
    );
    let p = Child::start(&site.config).await;
    let url = format!("http://{}", p.addr);
    let run = |name: &'static str| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_xxl-edge"))
                .args([
                    "trigger",
                    name,
                    "--param",
                    "x",
                    "--executor",
                    &url,
                    "--token",
                    "default_token",
                    "--wait",
                    "20",
                ])
                .output()
                .unwrap()
        })
    };
    let ok = run("fast").await.unwrap();
    assert!(ok.status.success(), "{ok:?}");
    assert!(String::from_utf8_lossy(&ok.stdout).contains("handleCode=200"));
    let bad = run("bad").await.unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stdout).contains("nope"));
    let unknown = run("nothere").await.unwrap();
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("job handler [nothere] not found."));
    assert_eq!(p.sigterm().await.code(), Some(0));
}

/// Kills and restarts the executor several times while four senders keep triggering, then checks
/// that every accepted logId got exactly one result and ran at most once.
#[tokio::test]
async fn soak_kill_restart_under_load() {
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::sync::{Arc, Mutex};
    let admin = FakeAdmin::start().await;
    let site = Site::new(&admin.url(), "");
    let target: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));
    let next_id = Arc::new(AtomicI64::new(1));
    let accepted = Arc::new(Mutex::new(BTreeSet::new()));
    // Requests that got no answer: the executor may have accepted them just before it died.
    let unanswered = Arc::new(Mutex::new(BTreeSet::new()));
    let total: i64 = std::env::var("XXL_EDGE_SOAK_TRIGGERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12_000);
    let rounds = 9;
    let mut senders = Vec::new();
    for _ in 0..4 {
        let (target, next_id, accepted, unanswered) = (
            target.clone(),
            next_id.clone(),
            accepted.clone(),
            unanswered.clone(),
        );
        senders.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(3))
                .build()
                .unwrap();
            loop {
                let Some(addr) = *target.lock().unwrap() else {
                    // Executor down (restarting): wait for it rather than spend logIds, so a
                    // slow restart does not shrink the run.
                    if next_id.load(Ordering::SeqCst) > total {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                let id = next_id.fetch_add(1, Ordering::SeqCst);
                if id > total {
                    return;
                }
                let body = json!({"jobId": id % 8, "executorHandler": "fast", "logId": id,
                                  "logDateTime": 1717171717000i64, "glueType": "BEAN"});
                let r = client
                    .post(format!("http://{addr}/run"))
                    .header("XXL-JOB-ACCESS-TOKEN", "default_token")
                    .body(body.to_string())
                    .send()
                    .await;
                match r {
                    Ok(r) => match r.json::<Value>().await {
                        Ok(v) if v["code"] == 200 => {
                            accepted.lock().unwrap().insert(id);
                        }
                        Ok(_) => {}
                        Err(_) => {
                            unanswered.lock().unwrap().insert(id);
                        }
                    },
                    Err(_) => {
                        unanswered.lock().unwrap().insert(id);
                    }
                }
            }
        }));
    }
    for round in 0..rounds {
        let p = Child::start(&site.config).await;
        *target.lock().unwrap() = Some(p.addr);
        if round + 1 < rounds {
            // Kill in the middle of the stream, after this round accepted some triggers.
            let before = accepted.lock().unwrap().len();
            let deadline = tokio::time::Instant::now() + GUARD;
            while accepted.lock().unwrap().len() < before + 1000
                && next_id.load(Ordering::SeqCst) <= total
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            *target.lock().unwrap() = None;
            p.kill9().await;
        } else {
            for s in senders.drain(..) {
                s.await.unwrap();
            }
            let accepted = accepted.lock().unwrap().clone();
            admin
                .wait_until("every accepted logId called back", |a| {
                    let d = a.delivered();
                    accepted.iter().all(|id| d.contains_key(id))
                })
                .await;
            assert_eq!(p.sigterm().await.code(), Some(0));
        }
    }
    let accepted = accepted.lock().unwrap().clone();
    let d = admin.delivered();
    let mut interrupted = 0;
    for id in &accepted {
        let items = &d[id];
        // A second delivery is possible only if a crash fell between the admin's answer and the
        // outbox flush; it must then carry the same result.
        assert!(items.len() <= 2, "logId {id}: {items:?}");
        assert!(
            items.iter().all(|i| i == &items[0]),
            "logId {id}: {items:?}"
        );
        if code_of(items) != 200 {
            assert!(items[0]["handleMsg"]
                .as_str()
                .unwrap()
                .contains("restarted"));
            interrupted += 1;
        }
    }
    let dupes = accepted.iter().filter(|id| d[id].len() > 1).count();
    let unanswered = unanswered.lock().unwrap().clone();
    let ran = site.executions();
    assert!(ran.values().all(|n| *n == 1), "a logId ran twice");
    // A trigger the executor refused (answered 500) never runs and is never called back.
    let maybe = |id: &i64| accepted.contains(id) || unanswered.contains(id);
    assert!(ran.keys().all(maybe), "a refused trigger ran");
    assert!(d.keys().all(maybe), "a callback for a refused trigger");
    // One accepted just before a kill, whose answer was lost, still gets exactly one result.
    let late: Vec<_> = d.keys().filter(|id| unanswered.contains(id)).collect();
    for id in &late {
        assert!(d[id].len() <= 2 && d[id].iter().all(|i| i == &d[id][0]));
    }
    eprintln!(
        "soak: {} sent, {} accepted, {} unanswered ({} of them accepted after all), {} interrupted by kill -9, {} delivered twice",
        total,
        accepted.len(),
        unanswered.len(),
        late.len(),
        interrupted,
        dupes
    );
    assert!(accepted.len() >= 8000, "{}", accepted.len());
}

/// Issue 9 #3: a taken port (here `telemetry.metrics_listen`) ended the process after recovery
/// had already started the journal's runs, so the next start reported them as interrupted.
/// Every listener is bound before any recovered run starts.
#[tokio::test]
async fn a_taken_port_stops_the_process_before_any_recovered_run_starts() {
    let admin = FakeAdmin::start().await;
    let site = Site::new(&admin.url(), "");
    let p = Child::start(&site.config).await;
    assert_eq!(p.run(1, "gate", 1).await.unwrap()["code"], 200);
    p.wait_log(1, "started").await;
    assert_eq!(p.run(1, "gate", 2).await.unwrap()["code"], 200);
    p.kill9().await;

    // The next start finds its metrics port taken and must stop without running run 2.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let plain = std::fs::read_to_string(&site.config).unwrap();
    std::fs::write(
        &site.config,
        format!("{plain}\n[telemetry]\nmetrics_listen = \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    let config = site.config.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_xxl-edge"))
            .args(["serve", "--config"])
            .arg(&config)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!out.status.success(), "started although its port is taken");
    drop(holder);

    // Back on a free port: run 1 was interrupted by the kill -9, run 2 never started, so it
    // runs now and succeeds.
    std::fs::write(&site.config, plain).unwrap();
    site.open_gate();
    let p = Child::start(&site.config).await;
    admin
        .wait_until("callbacks 1 and 2", |a| {
            let d = a.delivered();
            d.contains_key(&1) && d.contains_key(&2)
        })
        .await;
    assert_eq!(p.sigterm().await.code(), Some(0));
    let d = admin.delivered();
    assert_eq!(code_of(&d[&1]), 500, "{:?}", d[&1]);
    assert_eq!(
        code_of(&d[&2]),
        200,
        "run 2 was started by the failed start: {:?}",
        d[&2]
    );
}

/// Issue 8: a running job's output is on disk at most `store.log_flush_ms` after it was written,
/// so a `kill -9` keeps it (it used to show only "restarted during the run").
#[tokio::test]
async fn a_running_jobs_output_survives_kill9() {
    let admin = FakeAdmin::start().await;
    let tmp_marker = "ticked";
    let site = Site::with_store(&admin.url(), "log_flush_ms = 100", "");
    let d = site.dir.display().to_string();
    let plain = std::fs::read_to_string(&site.config).unwrap();
    // Prints, then (well past the 100 ms bound) says so in a file, then waits for the gate.
    std::fs::write(
        &site.config,
        format!(
            "{plain}\n[handlers.tick]\ncommand = [\"sh\", \"-c\", \"echo tick 1; sleep 1.5; touch {d}/{tmp_marker}; while [ ! -f {d}/go ] && [ -d {d} ]; do sleep 0.02; done\"]\n"
        ),
    )
    .unwrap();
    let p = Child::start(&site.config).await;
    assert_eq!(p.run(1, "tick", 1).await.unwrap()["code"], 200);
    let marker = site.dir.join(tmp_marker);
    let deadline = tokio::time::Instant::now() + GUARD;
    while !marker.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the job never got past its print"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Not one `/log` before the crash: that would flush by itself.
    p.kill9().await;
    site.open_gate();
    let p = Child::start(&site.config).await;
    admin
        .wait_until("callback 1", |a| a.delivered().contains_key(&1))
        .await;
    let log = p.log(1).await;
    assert!(log.contains("tick 1"), "the output was lost:\n{log}");
    assert!(log.contains("restarted during the run"), "{log}");
    assert_eq!(p.sigterm().await.code(), Some(0));
}

/// Issue 8: a line `/log` has shown is never taken back by a crash (`/log` flushes first).
#[tokio::test]
async fn a_line_log_has_shown_survives_kill9() {
    let admin = FakeAdmin::start().await;
    // The periodic flush is out of the way: only `/log`'s own flush can keep the line.
    let site = Site::with_store(&admin.url(), "log_flush_ms = 3600000", "");
    let p = Child::start(&site.config).await;
    assert_eq!(p.run(1, "gate", 1).await.unwrap()["code"], 200);
    p.wait_log(1, "started").await;
    p.kill9().await;
    site.open_gate();
    let p = Child::start(&site.config).await;
    admin
        .wait_until("callback 1", |a| a.delivered().contains_key(&1))
        .await;
    let log = p.log(1).await;
    assert!(
        log.contains("started"),
        "a line /log showed was lost:\n{log}"
    );
    assert_eq!(p.sigterm().await.code(), Some(0));
}
