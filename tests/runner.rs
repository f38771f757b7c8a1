//! Runner behaviour beyond the vectors: process-group kill and timeout for commands, limits,
//! handler replacement, idle reclaim, graceful shutdown, and the metrics a scrape shows.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use support::*;
use xxl_edge::Executor;

/// True while `pid` is a live (non-zombie) process.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state follows the parenthesised command name.
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        }
        Err(_) => false,
    }
}

fn read_pids(dir: &Path) -> Vec<i32> {
    ["child.pid", "orphan.pid"]
        .iter()
        .map(|f| {
            std::fs::read_to_string(dir.join(f))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        })
        .collect()
}

async fn all_gone(pids: &[i32]) {
    let deadline = tokio::time::Instant::now() + GUARD;
    while pids.iter().any(|p| alive(*p)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "processes survived: {:?}",
            pids.iter().filter(|p| alive(**p)).collect::<Vec<_>>()
        );
        // Bounded wait for init to reap the SIGKILLed orphans.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A command that ignores SIGTERM everywhere and leaves a child and a double-forked orphan in
/// its process group, recording their pids.
fn forker_config(pid_dir: &Path) -> String {
    let d = pid_dir.display();
    format!(
        r#"[handlers.forker]
command = ["sh", "-c", "trap '' TERM; sleep 300 & echo $! > {d}/child.pid; (sleep 300 & echo $! > {d}/orphan.pid); echo started; wait"]
"#
    )
}

#[tokio::test]
async fn kill_stops_every_process_of_a_command_group() {
    let pids = tempfile::tempdir().unwrap();
    let (admin, ex, _p, _d) = setup(&forker_config(pids.path())).await;
    assert_eq!(ex.run(1, "forker", 101, json!({})).await, ok());
    ex.log_contains(101, "started").await;
    let procs = read_pids(pids.path());
    assert!(procs.iter().all(|p| alive(*p)));
    assert_eq!(ex.post("/kill", r#"{"jobId":1}"#).await, ok());
    let c = admin.callback(101).await;
    assert_eq!(
        c["handleMsg"],
        "scheduling center kill job. [job running, killed]"
    );
    all_gone(&procs).await;
    ex.shutdown().await;
}

#[tokio::test]
async fn timeout_stops_every_process_of_a_command_group() {
    let pids = tempfile::tempdir().unwrap();
    let (admin, ex, _p, _d) = setup(&forker_config(pids.path())).await;
    assert_eq!(
        ex.run(1, "forker", 102, json!({"executorTimeout": 1}))
            .await,
        ok()
    );
    ex.log_contains(102, "started").await;
    let procs = read_pids(pids.path());
    let c = admin.callback(102).await;
    assert_eq!(c["handleCode"], 502);
    assert_eq!(c["handleMsg"], "job execute timeout ");
    all_gone(&procs).await;
    let log = ex.log_text(102).await;
    assert!(log.contains("xxl-job job execute timeout"), "{log}");
    ex.shutdown().await;
}

#[tokio::test]
async fn commands_get_the_trigger_and_report_exit_values_and_signals() {
    let extra = r#"
[handlers.env]
command = ["sh", "-c", "echo \"$XXL_JOB_ID $XXL_JOB_LOG_ID [$XXL_JOB_PARAM] $XXL_JOB_SHARD_INDEX/$XXL_JOB_SHARD_TOTAL argv=$0\"", "{params}"]
[handlers.exit7]
command = ["sh", "-c", "echo out; echo oops >&2; exit 7"]
[handlers.selfkill]
command = ["sh", "-c", "kill -9 $$"]
[handlers.missing]
command = ["/nonexistent/program"]
"#;
    let (admin, ex, _p, _d) = setup(extra).await;
    assert_eq!(
        ex.run(
            31,
            "env",
            301,
            json!({"executorParams":"p q","broadcastIndex":1,"broadcastTotal":3})
        )
        .await,
        ok()
    );
    assert_eq!(admin.callback(301).await["handleCode"], 200);
    let log = ex.log_text(301).await;
    assert!(log.contains("31 301 [p q] 1/3 argv=p q\n"), "{log}");

    assert_eq!(ex.run(32, "exit7", 302, json!({})).await, ok());
    let c = admin.callback(302).await;
    assert_eq!(c["handleMsg"], "command exit value(7) is failed");
    let log = ex.log_text(302).await;
    assert!(log.contains("\nout\n") && log.contains("\noops\n"), "{log}");

    assert_eq!(ex.run(33, "selfkill", 303, json!({})).await, ok());
    assert_eq!(
        admin.callback(303).await["handleMsg"],
        "command killed by signal 9 (SIGKILL)"
    );

    assert_eq!(ex.run(34, "missing", 304, json!({})).await, ok());
    let c = admin.callback(304).await;
    assert_eq!(c["handleCode"], 500);
    assert!(c["handleMsg"]
        .as_str()
        .unwrap()
        .contains("/nonexistent/program"));
    ex.shutdown().await;
}

#[tokio::test]
async fn limits_refuse_and_accept_nothing() {
    let (admin, ex, probe, _d) =
        setup("[runner]\nmax_running = 1\nmax_queue_per_job = 2\nkill_grace_secs = 0.5\nshutdown_grace_secs = 1\n")
            .await;
    assert_eq!(ex.run(1, "gateJobHandler", 1, json!({})).await, ok());
    probe.started(1).await;
    assert_eq!(ex.run(1, "gateJobHandler", 2, json!({})).await, ok());
    assert_eq!(ex.run(1, "gateJobHandler", 3, json!({})).await, ok());
    let r = ex.run(1, "gateJobHandler", 4, json!({})).await;
    assert_eq!(r["code"], 500);
    assert!(
        r["msg"]
            .as_str()
            .unwrap()
            .contains("runner.max_queue_per_job"),
        "{r}"
    );
    let r = ex.run(2, "demoJobHandler", 5, json!({})).await;
    assert_eq!(r["code"], 500);
    assert!(
        r["msg"].as_str().unwrap().contains("runner.max_running"),
        "{r}"
    );
    for id in 1..=3 {
        if id > 1 {
            probe.started(id).await;
        }
        probe.gate.notify_one();
        assert_eq!(admin.callback(id).await["handleCode"], 200);
    }
    // The callback can arrive a moment before the worker is idle: wait on the admin's own
    // busy signal, then retry. Refused triggers were never accepted, so the same logId runs.
    let deadline = tokio::time::Instant::now() + GUARD;
    while ex.post("/idleBeat", r#"{"jobId":1}"#).await["code"] != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "job 1 never went idle"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(ex.run(2, "demoJobHandler", 5, json!({})).await, ok());
    assert_eq!(admin.callback(5).await["handleCode"], 200);
    assert!(admin.callbacks_for(4).is_empty());
    ex.shutdown().await;
}

#[tokio::test]
async fn a_changed_handler_replaces_the_worker() {
    let (admin, ex, probe, _d) = setup("").await;
    assert_eq!(ex.run(5, "gateJobHandler", 51, json!({})).await, ok());
    probe.started(51).await;
    assert_eq!(ex.run(5, "demoJobHandler", 52, json!({})).await, ok());
    assert_eq!(
        admin.callback(51).await["handleMsg"],
        "change jobhandler or glue type, and terminate the old job thread. [job running, killed]"
    );
    assert_eq!(admin.callback(52).await["handleCode"], 200);
    ex.shutdown().await;
}

#[tokio::test]
async fn idle_workers_are_reclaimed() {
    let (admin, ex, _p, _d) = setup(
        "[runner]\nidle_reclaim_secs = 0.1\nkill_grace_secs = 0.5\nshutdown_grace_secs = 1\n",
    )
    .await;
    assert_eq!(ex.run(6, "demoJobHandler", 61, json!({})).await, ok());
    admin.callback(61).await;
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let r = ex.post("/kill", r#"{"jobId":6}"#).await;
        if r["data"] == "job thread already killed." {
            break;
        }
        // The kill itself may have removed a worker that was still there; run again and retry.
        assert!(
            tokio::time::Instant::now() < deadline,
            "worker never reclaimed"
        );
        assert_eq!(
            ex.run(
                6,
                "demoJobHandler",
                62 + deadline.elapsed().as_millis() as i64,
                json!({})
            )
            .await["code"],
            200
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    ex.shutdown().await;
}

#[tokio::test]
async fn shutdown_deregisters_then_kills_and_delivers() {
    let (admin, ex, probe, _d) = setup("").await;
    admin.registrations(1).await;
    assert_eq!(ex.run(1, "gateJobHandler", 11, json!({})).await, ok());
    probe.started(11).await;
    assert_eq!(ex.run(1, "gateJobHandler", 12, json!({})).await, ok());
    assert_eq!(ex.run(2, "stubbornJobHandler", 21, json!({})).await, ok());
    probe.started(21).await;
    ex.shutdown().await;
    let calls: Vec<String> = admin
        .calls("registryRemove")
        .iter()
        .map(|c| c.uri.clone())
        .collect();
    assert_eq!(calls, vec!["registryRemove"]);
    // Queued 12 never started, 11 and 21 were running: the reference's shutdown reasons.
    // 11 may have been released by nothing, so it is killed too.
    assert_eq!(
        admin.callbacks_for(11)[0]["handleMsg"],
        "web container destroy and kill the job. [job running, killed]"
    );
    assert_eq!(
        admin.callbacks_for(12)[0]["handleMsg"],
        "web container destroy and kill the job. [job not executed, in the job queue, killed.]"
    );
    assert_eq!(
        admin.callbacks_for(21)[0]["handleMsg"],
        "web container destroy and kill the job. [job running, killed]"
    );
    // registryRemove came before the kill callbacks (R2).
    let order = admin.uris_in_order();
    let rm = order.iter().position(|u| u == "registryRemove").unwrap();
    let cb = order.iter().position(|u| u == "callback").unwrap();
    assert!(rm < cb, "{order:?}");
}

#[tokio::test]
async fn short_jobs_finish_during_the_shutdown_grace() {
    let (admin, ex, probe, _d) =
        setup("[runner]\nshutdown_grace_secs = 10\nkill_grace_secs = 0.5\n").await;
    assert_eq!(ex.run(1, "gateJobHandler", 11, json!({})).await, ok());
    probe.started(11).await;
    let stopper = tokio::spawn(ex.shutdown());
    admin
        .wait_until("registryRemove", |a| !a.calls("registryRemove").is_empty())
        .await;
    probe.gate.notify_one();
    stopper.await.unwrap();
    assert_eq!(admin.callbacks_for(11)[0]["handleCode"], 200);
}

#[tokio::test]
async fn a_scrape_shows_exact_series_after_real_runs() {
    let (admin, ex, probe, _d) = setup("").await;
    assert_eq!(ex.run(1, "demoJobHandler", 1, json!({})).await, ok());
    assert_eq!(
        ex.run(2, "failJobHandler", 2, json!({"executorParams":"x"}))
            .await,
        ok()
    );
    assert_eq!(ex.run(3, "nope", 3, json!({})).await["code"], 500);
    assert_eq!(
        ex.run(4, "gateJobHandler", 4, json!({"executorTimeout":1}))
            .await,
        ok()
    );
    probe.started(4).await;
    for id in [1, 2, 4] {
        admin.callback(id).await;
    }
    ex.log_contains(4, "callback finish.").await;
    let text = ex.metrics_text().await;
    for line in [
        r#"xxl_edge_triggers_total{handler="demoJobHandler",result="accepted"} 1"#,
        r#"xxl_edge_triggers_total{handler="unknown",result="unknown_handler"} 1"#,
        r#"xxl_edge_runs_total{handler="demoJobHandler",outcome="success"} 1"#,
        r#"xxl_edge_runs_total{handler="failJobHandler",outcome="failed"} 1"#,
        r#"xxl_edge_runs_total{handler="gateJobHandler",outcome="timeout"} 1"#,
        r#"xxl_edge_run_duration_seconds_count{handler="demoJobHandler"} 1"#,
        r#"xxl_edge_queue_wait_seconds_count{handler="failJobHandler"} 1"#,
        "xxl_edge_runs_executing 0",
        "xxl_edge_triggers_queued 0",
        "xxl_edge_outbox_entries 0",
        "xxl_edge_store_budget_bytes 268435456",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
    for name in [
        "xxl_edge_build_info{version=",
        "xxl_edge_callbacks_total{result=\"delivered\"}",
        "xxl_edge_admin_requests_total{admin=",
        "xxl_edge_registration_age_seconds{admin=",
        "xxl_edge_store_size_bytes ",
        "xxl_edge_store_flush_duration_seconds_count ",
        "process_resident_memory_bytes ",
        "process_open_fds ",
    ] {
        assert!(text.contains(name), "missing {name} in:\n{text}");
    }
    // Never a logId, jobId or error text in a label.
    assert!(!text.contains("logId") && !text.contains("x\"}"));
    // Keep the exposition for `promtool check metrics` in CI.
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("metrics.prom");
    std::fs::write(out, &text).unwrap();
    ex.shutdown().await;
}

#[tokio::test]
async fn a_full_disk_refuses_runs_with_a_clear_message() {
    let (admin, ex, _p, _d) = setup("").await;
    ex.shutdown().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = test_config(dir.path(), &admin.url(), "");
    let mut cfg = cfg;
    cfg.store.min_free_bytes = u64::MAX / 2;
    let ex = TestExecutor::start(
        Executor::builder()
            .config(cfg)
            .handler("demoJobHandler", |_c: xxl_edge::JobContext| async {
                xxl_edge::Outcome::success()
            }),
    )
    .await;
    let r = ex.run(1, "demoJobHandler", 1, json!({})).await;
    assert_eq!(r["code"], 500);
    let msg = r["msg"].as_str().unwrap();
    assert!(
        msg.starts_with("disk full:") && msg.contains("store.min_free_bytes"),
        "{msg}"
    );
    assert!(ex
        .metrics_text()
        .await
        .contains(r#"xxl_edge_triggers_total{handler="demoJobHandler",result="disk_full"} 1"#));
    ex.shutdown().await;
}

#[tokio::test]
async fn metrics_can_move_to_their_own_listener() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (_admin, ex, _p, _d) = setup(&format!(
        "[telemetry]\nmetrics_listen = \"127.0.0.1:{port}\"\n"
    ))
    .await;
    // Not on the executor port any more: a GET there is just a wrong method.
    let r: serde_json::Value = ex
        .client
        .get(ex.url("/metrics"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["msg"], "invalid request, HttpMethod not support.");
    let deadline = tokio::time::Instant::now() + GUARD;
    let text = loop {
        if let Ok(r) = ex
            .client
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
        {
            break r.text().await.unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "metrics listener never came up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(text.contains("xxl_edge_build_info"));
    ex.shutdown().await;
}

#[tokio::test]
async fn registers_with_every_admin_and_fails_callbacks_over() {
    let a1 = FakeAdmin::start().await;
    let a2 = FakeAdmin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let probe = Probe::new();
    let mut cfg = test_config(dir.path(), &a1.url(), "");
    // The second admin is given without its context path and with a trailing slash: the
    // client finds /xxl-job-admin on the 404.
    cfg.admin.addresses = vec![a1.url(), format!("http://{}", a2.addr)];
    let ex = TestExecutor::start(sample_handlers(
        xxl_edge::Executor::builder().config(cfg),
        &probe,
    ))
    .await;
    a1.registrations(1).await;
    a2.registrations(1).await;
    // The first admin answers 500: the batch goes to the second.
    a1.set_mode(AdminMode::Code500);
    assert_eq!(ex.run(1, "demoJobHandler", 1, json!({})).await, ok());
    a2.wait_until("callback at the second admin", |a| {
        a.delivered().contains_key(&1)
    })
    .await;
    assert!(a1.delivered().is_empty());
    ex.shutdown().await;
    assert_eq!(a1.calls("registryRemove").len(), 1);
    assert_eq!(a2.calls("registryRemove").len(), 1);
}
