//! Idempotency keys, re-run-safe handlers, relaxed durability and retention, through the library
//! API with a real store that is reopened across restarts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use support::*;
use xxl_edge::{Executor, Handler, JobContext, Outcome};

fn counting(count: Arc<AtomicUsize>) -> Handler {
    Handler::new(move |ctx: JobContext| {
        let count = count.clone();
        async move {
            count.fetch_add(1, Ordering::SeqCst);
            if ctx.param() == "fail" {
                Outcome::fail("asked to fail")
            } else {
                Outcome::success()
            }
        }
    })
    // Same job and same parameter = same business work.
    .idempotency_key(
        |t| {
            Some(format!(
                "{}:{}",
                t.job_id,
                t.params.as_deref().unwrap_or("")
            ))
        },
        Duration::from_secs(3600),
    )
}

#[tokio::test]
async fn idempotency_keys_skip_repeats_and_survive_restarts() {
    let admin = FakeAdmin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let start = || {
        let cfg = test_config(dir.path(), &admin.url(), "");
        TestExecutor::start(
            Executor::builder()
                .config(cfg)
                .register("pay", counting(count.clone())),
        )
    };
    let ex = start().await;
    assert_eq!(
        ex.run(1, "pay", 1, json!({"executorParams":"order-7"}))
            .await,
        ok()
    );
    assert_eq!(admin.callback(1).await["handleCode"], 200);
    // Same key, new logId: not executed, called back as success naming the earlier run.
    assert_eq!(
        ex.run(1, "pay", 2, json!({"executorParams":"order-7"}))
            .await,
        ok()
    );
    let c = admin.callback(2).await;
    assert_eq!(c["handleCode"], 200);
    assert!(c["handleMsg"].as_str().unwrap().contains("logId:1"), "{c}");
    assert_eq!(count.load(Ordering::SeqCst), 1);
    // A failed run does not hold its key: the retry runs.
    assert_eq!(
        ex.run(1, "pay", 3, json!({"executorParams":"fail"})).await,
        ok()
    );
    assert_eq!(admin.callback(3).await["handleCode"], 500);
    assert_eq!(
        ex.run(1, "pay", 4, json!({"executorParams":"fail"})).await,
        ok()
    );
    assert_eq!(admin.callback(4).await["handleCode"], 500);
    assert_eq!(count.load(Ordering::SeqCst), 3);
    ex.shutdown().await;

    // Keys survive a restart.
    let ex = start().await;
    assert_eq!(
        ex.run(1, "pay", 5, json!({"executorParams":"order-7"}))
            .await,
        ok()
    );
    assert!(admin.callback(5).await["handleMsg"]
        .as_str()
        .unwrap()
        .contains("logId:1"));
    assert_eq!(count.load(Ordering::SeqCst), 3);
    let m = ex.metrics_text().await;
    assert!(
        m.contains(r#"xxl_edge_runs_total{handler="pay",outcome="duplicate"} 1"#),
        "{m}"
    );
    ex.shutdown().await;
}

#[tokio::test]
async fn a_key_queued_behind_its_first_run_follows_the_block_strategy() {
    let admin = FakeAdmin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let probe = Probe::new();
    let p = probe.clone();
    let gated = Handler::new(move |ctx: JobContext| {
        let p = p.clone();
        async move {
            let _ = ctx.log_id;
            p.gate.notified().await;
            Outcome::success()
        }
    })
    .idempotency_key(|t| Some(format!("k{}", t.job_id)), Duration::from_secs(60));
    let cfg = test_config(dir.path(), &admin.url(), "");
    let ex = TestExecutor::start(Executor::builder().config(cfg).register("g", gated)).await;
    assert_eq!(ex.run(1, "g", 1, json!({})).await, ok());
    // Serial: the second one queues; when its turn comes the first has succeeded, so it is skipped.
    assert_eq!(ex.run(1, "g", 2, json!({})).await, ok());
    // DISCARD_LATER: refused while the first runs.
    assert_eq!(
        ex.run(1, "g", 3, json!({"executorBlockStrategy":"DISCARD_LATER"}))
            .await["msg"],
        "block strategy effect：Discard Later"
    );
    probe.gate.notify_one();
    assert_eq!(admin.callback(1).await["handleCode"], 200);
    let c = admin.callback(2).await;
    assert!(
        c["handleMsg"].as_str().unwrap().starts_with("skipped"),
        "{c}"
    );
    ex.shutdown().await;
}

#[tokio::test]
async fn command_handlers_take_keys_from_the_config() {
    let admin = FakeAdmin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = test_config(
        dir.path(),
        &admin.url(),
        "[handlers.sync]\ncommand = [\"true\"]\nidempotency_key = \"sync:{params}\"\nidempotency_ttl_secs = 600\n",
    );
    let ex = TestExecutor::start(Executor::builder().config(cfg)).await;
    assert_eq!(
        ex.run(1, "sync", 1, json!({"executorParams":"a"})).await,
        ok()
    );
    admin.callback(1).await;
    assert_eq!(
        ex.run(2, "sync", 2, json!({"executorParams":"a"})).await,
        ok()
    );
    assert!(admin.callback(2).await["handleMsg"]
        .as_str()
        .unwrap()
        .contains("sync:a"));
    assert_eq!(
        ex.run(2, "sync", 3, json!({"executorParams":"b"})).await,
        ok()
    );
    assert_eq!(
        admin.callback(3).await["handleMsg"],
        serde_json::Value::Null
    );
    ex.shutdown().await;
}

#[tokio::test]
async fn relaxed_durability_still_delivers_everything() {
    let (admin, ex, _probe, _dir) = setup("flush_every_ms = 50\n").await;
    run_demo_and_await_callbacks(&admin, &ex, 20).await;
    ex.shutdown().await;
}

/// Issue 8: the data directory holds job parameters, logs and GLUE scripts: it is created for the
/// executor's user alone (0700), and so are the files in it (0600).
#[tokio::test]
async fn the_data_directory_is_private_to_the_executors_user() {
    use std::os::unix::fs::PermissionsExt;
    let admin = FakeAdmin::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let probe = Probe::new();
    let cfg = test_config(&data, &admin.url(), "[glue]\nenabled = [\"shell\"]\n");
    let ex = TestExecutor::start(sample_handlers(Executor::builder().config(cfg), &probe)).await;
    assert_eq!(ex.run(1, "demoJobHandler", 1, json!({})).await, ok());
    let glue = json!({"glueType": "GLUE_SHELL", "glueSource": "echo hi", "glueUpdatetime": 7});
    assert_eq!(ex.run(2, "", 2, glue).await, ok());
    admin.callback(1).await;
    admin.callback(2).await;
    ex.shutdown().await;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    for dir in [data.clone(), data.join("store"), data.join("gluesource")] {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    }
    assert_eq!(mode(&data.join("store").join("db")), 0o600);
    for f in std::fs::read_dir(data.join("gluesource"))
        .unwrap()
        .flatten()
    {
        assert_eq!(mode(&f.path()), 0o600, "{}", f.path().display());
    }
}
