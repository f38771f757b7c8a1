#![allow(clippy::unwrap_used, clippy::expect_used)]
//! How long a restart takes with a journal of 100,000 runs: opening the store and recovering
//! (90,000 reported runs with logs, 10,000 accepted triggers to queue again across 100 jobs).
//! Prints the figures; run with `cargo bench --bench recovery`.

use std::time::Instant;

use xxl_edge::job::{BlockStrategy, Glue, JobId, LogId, Outcome, OutcomeKind, Trigger};
use xxl_edge::store::Store;
use xxl_edge::{Config, Executor, JobContext, Outcome as O};

fn trigger(id: i64) -> Trigger {
    Trigger {
        job_id: JobId((id % 100) as i32),
        log_id: LogId(id),
        log_date_time: 1_717_171_717_000,
        handler: "demoJobHandler".into(),
        params: Some("p".into()),
        block: BlockStrategy::Serial,
        timeout: None,
        glue: Glue::Bean,
        shard_index: 0,
        shard_total: 1,
    }
}

fn main() {
    let total: i64 = std::env::var("RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let queued = total / 10;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    rt.block_on(async {
        let store = Store::open(dir.path(), Config::defaults().store).unwrap();
        for id in 1..=total {
            let t = trigger(id);
            store.insert_accepted(&t, false).unwrap();
            if id > queued {
                store.mark_running(t.log_id, None).unwrap();
                store.append_log(t.log_id, 1, "start").unwrap();
                store.append_log(t.log_id, 2, "end").unwrap();
                store
                    .finish(&t, &Outcome::success(), OutcomeKind::Success, None)
                    .unwrap();
            }
        }
        loop {
            let b = store.outbox_batch(10_000).unwrap();
            if b.is_empty() {
                break;
            }
            store.ack(&b).unwrap();
        }
        store.flush_now().unwrap();
    });
    let build = t0.elapsed();
    let size = dir_size(dir.path());
    // Restart: open + scan + requeue, as `serve` does before it binds.
    let mut cfg = Config::defaults();
    cfg.executor.data_dir = dir.path().to_path_buf();
    cfg.runner.max_queue_per_job = 1_000_000;
    let t1 = Instant::now();
    let report = rt.block_on(async {
        let ex = Executor::builder()
            .config(cfg)
            // A handler that never finishes keeps the requeued runs queued while we measure.
            .handler("demoJobHandler", |ctx: JobContext| async move {
                ctx.cancelled().await;
                O::success()
            })
            .build()
            .await
            .unwrap();
        ex.recovery()
    });
    let recover = t1.elapsed();
    println!("journal: {total} runs ({queued} accepted, {} reported), {size} bytes on disk, built in {:.1} s", total - queued, build.as_secs_f64());
    println!(
        "recovery (open + scan + requeue): {:.3} s  -> {:?}",
        recover.as_secs_f64(),
        report
    );
    rt.shutdown_background();
}

fn dir_size(p: &std::path::Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    let m = e.metadata().unwrap();
                    if m.is_dir() {
                        dir_size(&e.path())
                    } else {
                        m.len()
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}
