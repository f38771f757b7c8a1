use std::path::Path;

use super::records::run_key;
use super::*;
use crate::job::{Callback, Glue, LogId, Outcome, OutcomeKind, RunState, Trigger};

fn cfg() -> StoreConfig {
    crate::config::Config::defaults().store
}

fn trig(id: i64) -> Trigger {
    Trigger::for_test(id)
}

#[tokio::test]
async fn journal_outbox_and_logs_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path(), cfg()).unwrap();
        s.insert_accepted(&trig(1)).unwrap();
        assert!(matches!(
            s.insert_accepted(&trig(1)),
            Err(StoreError::Duplicate(_))
        ));
        s.insert_accepted(&trig(2)).unwrap();
        s.insert_accepted(&trig(-3)).unwrap();
        s.mark_running(LogId(2), None).unwrap();
        s.insert_accepted(&trig(4)).unwrap();
        assert!(s
            .finish(&trig(4), &Outcome::success(), OutcomeKind::Success, None)
            .unwrap());
        assert!(!s
            .finish(&trig(4), &Outcome::fail("x"), OutcomeKind::Failed, None)
            .unwrap());
        for i in 1..=5 {
            s.append_log(LogId(4), i, &format!("line {i}")).unwrap();
        }
        s.durable().await.unwrap();
    }
    let s = Store::open(dir.path(), cfg()).unwrap();
    let r = s.recover().unwrap();
    let queued: Vec<_> = r.queued.iter().map(|r| r.trigger.log_id.0).collect();
    assert_eq!(queued, vec![-3, 1]);
    assert_eq!(r.interrupted.len(), 1);
    assert_eq!(s.outbox_len(), 1);
    let batch = s.outbox_batch(50).unwrap();
    assert_eq!(batch[0].1.callback.log_id, LogId(4));
    assert_eq!(s.recent_runs(10).unwrap()[0].state, RunState::Finished);
    s.ack(&batch).unwrap();
    assert_eq!(s.outbox_len(), 0);
    assert_eq!(s.recent_runs(10).unwrap()[0].state, RunState::Reported);
    let page = s.read_log(LogId(4), 2, 2, 1 << 20).unwrap().unwrap();
    assert_eq!(page.lines, vec!["line 2", "line 3"]);
    assert_eq!(page.to, 3);
    let page = s.read_log(LogId(4), 9, 10, 1 << 20).unwrap().unwrap();
    assert_eq!(page.to, 0);
    assert!(s.read_log(LogId(99), 1, 10, 1 << 20).unwrap().is_none());
    assert_eq!(s.last_log_line(LogId(4)).unwrap(), 5);
    // An old reported run is pruned with its log; unfinished ones stay.
    assert_eq!(s.prune(Some(Duration::from_secs(3600))).unwrap(), 0);
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(s.prune(Some(Duration::from_millis(1))).unwrap(), 1);
    assert!(s.read_log(LogId(4), 1, 10, 1 << 20).unwrap().is_none());
    assert!(s.has_run(LogId(1)).unwrap());
}

/// `finish` writes the outbox entry, then the run record, then the key: a crash after the
/// first write leaves a queued callback for a run that still says running.
#[tokio::test]
async fn a_crash_inside_finish_is_repaired_at_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let ttl = Duration::from_secs(3600);
    {
        let s = Store::open(dir.path(), cfg()).unwrap();
        for id in [1, 2] {
            s.insert_accepted(&trig(id)).unwrap();
        }
        assert_eq!(s.check_key("k", LogId(1), ttl).unwrap(), KeyCheck::Fresh);
        s.mark_running(LogId(1), Some("k".into())).unwrap();
        // Only the first write of `finish` for 1 (running) and 2 (still queued) landed.
        for (seq, id) in [(7u64, 1), (8, 2)] {
            let e = OutboxEntry {
                callback: Callback {
                    log_id: LogId(id),
                    log_date_time: 1,
                    outcome: Outcome::success(),
                },
                queued_ms: 5,
                trace: None,
                kind: Some(OutcomeKind::Success),
            };
            s.inner
                .outbox
                .insert(seq.to_be_bytes(), serde_json::to_vec(&e).unwrap())
                .unwrap();
        }
        s.durable().await.unwrap();
    }
    let s = Store::open(dir.path(), cfg()).unwrap();
    let r = s.recover().unwrap();
    assert!(r.queued.is_empty() && r.interrupted.is_empty(), "{r:?}");
    let rec = s.run(LogId(1)).unwrap().unwrap();
    assert_eq!(rec.state, RunState::Finished);
    assert_eq!(rec.outbox_seq, Some(7));
    assert_eq!(rec.kind, Some(OutcomeKind::Success));
    assert_eq!(s.outbox_len(), 2);
    // The key's holder succeeded: a new run with it is not executed.
    assert_eq!(
        s.check_key("k", LogId(3), ttl).unwrap(),
        KeyCheck::Succeeded(LogId(1))
    );
    // Nothing is repaired twice: the next start finds nothing to do.
    drop(s);
    let s = Store::open(dir.path(), cfg()).unwrap();
    let r = s.recover().unwrap();
    assert!(r.queued.is_empty() && r.interrupted.is_empty());
}

/// A restart right after a crash finds the lock still held for a moment (the dying process,
/// or a forked command before its `exec`): it waits; a lock that stays taken is named.
#[tokio::test]
async fn open_waits_for_a_lock_that_is_let_go_and_names_one_that_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let first = Store::open(dir.path(), cfg()).unwrap();
    let err = Store::open_waiting(dir.path(), cfg(), Duration::ZERO).unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("another xxl-edge"), "{err}");
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        // Let go once the second open is known to be waiting.
        rx.recv().unwrap();
        drop(first);
    });
    let path = dir.path().to_path_buf();
    let second = tokio::task::spawn_blocking(move || {
        let _ = tx.send(());
        Store::open_waiting(&path, cfg(), Duration::from_secs(10))
    });
    let second = second.await.unwrap();
    holder.join().unwrap();
    assert!(second.is_ok(), "{:?}", second.err());
}

#[tokio::test]
async fn over_budget_prunes_only_reported_runs_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg();
    c.max_bytes = 0; // always over budget
    let s = Store::open(dir.path(), c).unwrap();
    for id in 1..=20 {
        s.insert_accepted(&trig(id)).unwrap();
        s.append_log(LogId(id), 1, "line").unwrap();
        s.finish(&trig(id), &Outcome::success(), OutcomeKind::Success, None)
            .unwrap();
    }
    let all = s.outbox_batch(100).unwrap();
    s.ack(&all[..18]).unwrap(); // 19 and 20 still wait for the admin
    s.insert_accepted(&trig(21)).unwrap(); // never started
    s.insert_accepted(&trig(22)).unwrap();
    s.mark_running(LogId(22), None).unwrap(); // running
    s.flush_now().unwrap(); // so that sled's files have a size
    let first = s.prune(None).unwrap();
    assert!(
        (1..18).contains(&first),
        "a tenth per pass, not all: {first}"
    );
    assert!(!s.has_run(LogId(1)).unwrap(), "the oldest goes first");
    assert!(s.read_log(LogId(1), 1, 10, 1024).unwrap().is_none());
    for _ in 0..40 {
        s.prune(None).unwrap();
    }
    let left: Vec<i64> = s
        .recent_runs(100)
        .unwrap()
        .iter()
        .map(|r| r.trigger.log_id.0)
        .collect();
    assert_eq!(
        left,
        vec![22, 21, 20, 19],
        "unfinished and unreported runs stay"
    );
    assert_eq!(s.outbox_len(), 2);
}

#[tokio::test]
async fn idempotency_keys_hold_release_and_remember_success() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), cfg()).unwrap();
    let ttl = Duration::from_secs(60);
    assert_eq!(s.check_key("k", LogId(1), ttl).unwrap(), KeyCheck::Fresh);
    s.insert_accepted(&trig(1)).unwrap();
    s.mark_running(LogId(1), Some("k".into())).unwrap();
    assert_eq!(
        s.check_key("k", LogId(2), ttl).unwrap(),
        KeyCheck::InFlight(LogId(1))
    );
    s.finish(&trig(1), &Outcome::fail("no"), OutcomeKind::Failed, None)
        .unwrap();
    assert_eq!(s.check_key("k", LogId(3), ttl).unwrap(), KeyCheck::Fresh);
    s.insert_accepted(&trig(3)).unwrap();
    s.mark_running(LogId(3), Some("k".into())).unwrap();
    s.finish(&trig(3), &Outcome::success(), OutcomeKind::Success, None)
        .unwrap();
    assert_eq!(
        s.check_key("k", LogId(4), ttl).unwrap(),
        KeyCheck::Succeeded(LogId(3))
    );
}

fn bulk_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("store").join(BULK_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn raw_len(s: &Store, id: i64) -> usize {
    s.inner.runs.get(run_key(LogId(id))).unwrap().unwrap().len()
}

fn big(id: i64, bytes: usize) -> Trigger {
    let mut t = trig(id);
    t.params = Some("p".repeat(bytes));
    t
}

/// Issue 9 #16: sled kept every version of a record holding 4 MiB params in memory. Large
/// params live in a file from acceptance to the durable end of the run; the records stay
/// small through every write.
#[tokio::test]
async fn large_params_live_in_a_file_until_the_run_ends_durably() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), cfg()).unwrap();
    let bulk_dir = dir.path().join("store").join(BULK_DIR);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&bulk_dir), 0o700);

    // Small params (up to the threshold) stay in the record, as before: no file.
    s.insert_accepted(&big(1, BULK_THRESHOLD)).unwrap();
    assert!(bulk_files(dir.path()).is_empty());
    assert_eq!(
        s.run(LogId(1))
            .unwrap()
            .unwrap()
            .trigger
            .params
            .unwrap()
            .len(),
        BULK_THRESHOLD
    );

    let t = big(2, 4 << 20);
    s.insert_accepted(&t).unwrap();
    let files = bulk_files(dir.path());
    assert_eq!(files.len(), 1);
    assert!(files[0].starts_with("2."), "{files:?}");
    assert_eq!(mode(&bulk_dir.join(&files[0])), 0o600);
    let rec = s.run(LogId(2)).unwrap().unwrap();
    assert_eq!(rec.trigger.params, None);
    assert_eq!(rec.bulk.as_ref().unwrap().bytes, 4 << 20);
    assert!(raw_len(&s, 2) < 1024, "{}", raw_len(&s, 2));
    s.mark_running(LogId(2), None).unwrap();
    assert!(raw_len(&s, 2) < 1024);
    assert!(s
        .finish(&t, &Outcome::success(), OutcomeKind::Success, None)
        .unwrap());
    let rec = s.run(LogId(2)).unwrap().unwrap();
    assert_eq!(rec.state, RunState::Finished);
    assert!(raw_len(&s, 2) < 1024);
    // The file outlives the finished record until that record is on disk.
    assert_eq!(bulk_files(dir.path()), files);
    s.durable().await.unwrap();
    assert!(bulk_files(dir.path()).is_empty());

    // A run finished without a record (recovered from an older journal) keeps no text.
    s.finish(
        &big(3, 1 << 20),
        &Outcome::success(),
        OutcomeKind::Success,
        None,
    )
    .unwrap();
    assert!(raw_len(&s, 3) < 1024);

    // A refused trigger's file goes with its record; a racing duplicate removes only its own.
    s.insert_accepted(&big(4, 1 << 20)).unwrap();
    assert!(matches!(
        s.insert_accepted(&big(4, 1 << 20)),
        Err(StoreError::Duplicate(_))
    ));
    assert_eq!(bulk_files(dir.path()).len(), 1);
    s.forget_accepted(LogId(4)).unwrap();
    s.durable().await.unwrap();
    assert!(bulk_files(dir.path()).is_empty());

    // A GLUE source counts too.
    let mut g = trig(5);
    g.glue = Glue::Script {
        kind: crate::job::GlueKind::Shell,
        source: "#".repeat(1 << 20),
        updated: 9,
    };
    s.insert_accepted(&g).unwrap();
    assert!(raw_len(&s, 5) < 1024);
    assert_eq!(bulk_files(dir.path()).len(), 1);
}

/// A queued run with 1 MiB params (and one with a 1 MiB GLUE source) comes back whole after
/// a restart; a file that vanished makes its run lost (reported, not run without params).
#[tokio::test]
async fn large_triggers_survive_a_restart_while_queued() {
    let dir = tempfile::tempdir().unwrap();
    let t = big(1, 1 << 20);
    let mut g = trig(2);
    g.glue = Glue::Script {
        kind: crate::job::GlueKind::Python,
        source: "#".repeat(1 << 20),
        updated: 9,
    };
    {
        let s = Store::open(dir.path(), cfg()).unwrap();
        s.insert_accepted(&t).unwrap();
        s.insert_accepted(&g).unwrap();
        s.insert_accepted(&big(3, 1 << 20)).unwrap();
        s.mark_running(LogId(3), None).unwrap();
        s.insert_accepted(&big(4, 1 << 20)).unwrap();
        s.durable().await.unwrap();
    }
    let gone = bulk_files(dir.path())
        .into_iter()
        .find(|f| f.starts_with("4."))
        .unwrap();
    std::fs::remove_file(dir.path().join("store").join(BULK_DIR).join(gone)).unwrap();
    let s = Store::open(dir.path(), cfg()).unwrap();
    let r = s.recover().unwrap();
    assert_eq!(r.queued.len(), 2);
    assert_eq!(r.queued[0].trigger, t);
    assert_eq!(r.queued[1].trigger, g);
    assert_eq!(r.interrupted.len(), 1);
    assert_eq!(r.interrupted[0].trigger, big(3, 1 << 20));
    assert_eq!(r.lost.len(), 1);
    assert_eq!(r.lost[0].0.trigger.log_id, LogId(4));
    assert!(r.lost[0].1.contains("cannot read"), "{}", r.lost[0].1);
}

/// A crash between the file and its record leaves a file no record names; a crash before a
/// finished run's file was removed leaves one too. Both go at the next open; the file of an
/// unfinished run stays.
#[tokio::test]
async fn orphan_params_files_are_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let bulk_dir = dir.path().join("store").join(BULK_DIR);
    {
        let s = Store::open(dir.path(), cfg()).unwrap();
        s.insert_accepted(&big(1, 1 << 20)).unwrap(); // stays queued
        s.insert_accepted(&big(2, 1 << 20)).unwrap();
        s.finish(
            &big(2, 1 << 20),
            &Outcome::success(),
            OutcomeKind::Success,
            None,
        )
        .unwrap();
        // Written straight to disk: no group commit, so 2's file is not removed.
        s.inner.db.flush().unwrap();
        assert_eq!(bulk_files(dir.path()).len(), 2);
    }
    // A file whose record never landed, one for an unknown name, and a stale one for 1.
    for name in ["7.99", "junk", "1.999999"] {
        std::fs::write(bulk_dir.join(name), b"x").unwrap();
    }
    let s = Store::open(dir.path(), cfg()).unwrap();
    let files = bulk_files(dir.path());
    assert_eq!(files.len(), 1, "{files:?}");
    let rec = s.run(LogId(1)).unwrap().unwrap();
    assert_eq!(files[0], rec.bulk.unwrap().file);
    assert_eq!(s.recover().unwrap().queued[0].trigger, big(1, 1 << 20));
}

#[tokio::test]
async fn concurrent_durable_calls_share_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), cfg()).unwrap();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..64 {
        let s = s.clone();
        set.spawn(async move {
            s.insert_accepted(&trig(i)).unwrap();
            s.durable().await.unwrap();
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    assert_eq!(s.recover().unwrap().queued.len(), 64);
}
