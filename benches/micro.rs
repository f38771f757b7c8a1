#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Hot paths: parsing a trigger, a journal write with its flush, an outbox batch, a log page read.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use xxl_edge::admin::wire::TriggerParam;
use xxl_edge::job::{BlockStrategy, Glue, JobId, LogId, Outcome, OutcomeKind, Trigger};
use xxl_edge::store::Store;
use xxl_edge::Config;

const BODY: &str = r#"{"jobId":1,"executorHandler":"demoJobHandler","executorParams":"hello","executorBlockStrategy":"SERIAL_EXECUTION","executorTimeout":0,"logId":1001,"logDateTime":1717171717000,"glueType":"BEAN","glueSource":"","glueUpdatetime":1541254891000,"broadcastIndex":0,"broadcastTotal":1}"#;

fn trigger(id: i64) -> Trigger {
    Trigger {
        job_id: JobId((id % 64) as i32),
        log_id: LogId(id),
        log_date_time: 1_717_171_717_000,
        handler: "demoJobHandler".into(),
        params: Some("hello".into()),
        block: BlockStrategy::Serial,
        timeout: None,
        glue: Glue::Bean,
        shard_index: 0,
        shard_total: 1,
    }
}

fn benches(c: &mut Criterion) {
    c.bench_function("parse_trigger", |b| {
        b.iter(|| {
            let p: TriggerParam = serde_json::from_str(std::hint::black_box(BODY)).unwrap();
            Trigger::try_from(p).unwrap()
        })
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = rt.block_on(async { Store::open(dir.path(), Config::defaults().store).unwrap() });
    let mut id = 0i64;
    c.bench_function("journal_insert_and_flush", |b| {
        b.iter(|| {
            id += 1;
            store.insert_accepted(&trigger(id), false).unwrap();
            rt.block_on(store.durable()).unwrap();
        })
    });
    c.bench_function("journal_insert_no_flush", |b| {
        b.iter(|| {
            id += 1;
            store.insert_accepted(&trigger(id), false).unwrap();
        })
    });

    c.bench_function("outbox_batch_of_50", |b| {
        b.iter_batched(
            || {
                for _ in 0..50 {
                    id += 1;
                    let t = trigger(id);
                    store.insert_accepted(&t, false).unwrap();
                    store
                        .finish(&t, &Outcome::success(), OutcomeKind::Success, None)
                        .unwrap();
                }
            },
            |()| {
                let batch = store.outbox_batch(50).unwrap();
                assert_eq!(batch.len(), 50);
                store.ack(&batch).unwrap();
            },
            BatchSize::PerIteration,
        )
    });

    let log_id = LogId(-1);
    for line in 1..=2000u32 {
        store
            .append_log(
                log_id,
                line,
                &format!("2026-11-24 12:00:00 [xxl-edge] line {line} of some job output"),
            )
            .unwrap();
    }
    c.bench_function("log_page_1000_lines", |b| {
        b.iter(|| {
            let page = store.read_log(log_id, 500, 1000, 1 << 20).unwrap().unwrap();
            assert_eq!(page.lines.len(), 1000);
        })
    });
}

criterion_group! {
    name = micro;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = benches
}
criterion_main!(micro);
