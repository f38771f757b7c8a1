use std::path::Path;

use super::records::{run_key, AckRecord, LogTail};
use super::*;
use crate::job::{Callback, Glue, LogId, Outcome, OutcomeKind, RunState, Trigger};

fn cfg() -> StoreConfig {
    crate::config::Config::defaults().store
}

fn trig(id: i64) -> Trigger {
    Trigger::for_test(id)
}

/// `has_run` answers from memory for a logId above every one the journal held at open, and
/// stays exact: after a reopen (the highest is read back), for negative logIds, for logIds
/// that arrive out of order, for an outcome recorded for a run that had no record, and for a
/// run forgotten again.
#[tokio::test]
async fn has_run_answers_from_memory_only_what_memory_knows() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path(), cfg()).unwrap();
        assert!(!s.has_run(LogId(i64::MIN)).unwrap(), "empty");
        s.insert_accepted(&trig(-7), false).unwrap();
        assert!(s.has_run(LogId(-7)).unwrap());
        assert!(!s.has_run(LogId(-8)).unwrap() && !s.has_run(LogId(-6)).unwrap());
        s.insert_accepted(&trig(10), false).unwrap();
        // A recovered trigger whose record was lost gets one when its outcome is recorded.
        s.finish(&trig(20), &Outcome::success(), OutcomeKind::Success, None)
            .unwrap();
        assert!(s.has_run(LogId(20)).unwrap());
        s.synced().await.unwrap();
    }
    let s = Store::open(dir.path(), cfg()).unwrap();
    for (id, held) in [(-7, true), (10, true), (20, true), (15, false), (21, false)] {
        assert_eq!(s.has_run(LogId(id)).unwrap(), held, "{id}");
    }
    // Below the highest at open, a logId is looked up even when the journal forgot it.
    s.insert_accepted(&trig(5), false).unwrap();
    assert!(s.has_run(LogId(5)).unwrap());
    // Above it, out of order, and forgotten when `/run` fails after all.
    for id in [30, 25, 27] {
        s.insert_accepted(&trig(id), false).unwrap();
    }
    s.forget_accepted(LogId(27)).unwrap();
    for (id, held) in [
        (24, false),
        (25, true),
        (26, false),
        (27, false),
        (30, true),
    ] {
        assert_eq!(s.has_run(LogId(id)).unwrap(), held, "{id}");
    }
    s.insert_accepted(&trig(27), false).unwrap();
    assert!(s.has_run(LogId(27)).unwrap());
}

#[tokio::test]
async fn journal_outbox_and_logs_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path(), cfg()).unwrap();
        s.insert_accepted(&trig(1), false).unwrap();
        assert!(matches!(
            s.insert_accepted(&trig(1), false),
            Err(StoreError::Duplicate(_))
        ));
        s.insert_accepted(&trig(2), false).unwrap();
        s.insert_accepted(&trig(-3), false).unwrap();
        s.mark_running(LogId(2), None).unwrap();
        s.insert_accepted(&trig(4), false).unwrap();
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

/// Turns a schema-3 store back into what schema 2 wrote: each waiting callback an entry of the
/// `outbox` tree at its place, no delivered watermark.
fn back_to_schema_2(s: &Store) -> Vec<(u64, OutboxEntry)> {
    let waiting = s.outbox_batch(usize::MAX).unwrap();
    let outbox = s.inner.db.open_tree("outbox").unwrap();
    for (seq, e) in &waiting {
        outbox.insert(seq.to_be_bytes(), e.encode()).unwrap();
    }
    s.inner.meta.remove(super::outbox::META_DELIVERED).unwrap();
    s.inner.meta.insert("schema", &2u64.to_be_bytes()).unwrap();
    waiting
}

/// Schema 2 wrote an outcome as two keys, the outbox entry first: a crash between them left a
/// queued callback for a run that still said running. The migration to schema 3 finishes such
/// a run from its entry, keeps reported runs reported, and a migration cut short (the
/// watermark written, one callback already moved) is finished by the next open.
#[tokio::test]
async fn schema_2_is_migrated_repairing_a_crash_inside_finish_and_a_migration_cut_short() {
    let dir = tempfile::tempdir().unwrap();
    let ttl = Duration::from_secs(3600);
    {
        let s = Store::open(dir.path(), cfg()).unwrap();
        for id in 1..=4 {
            s.insert_accepted(&trig(id), false).unwrap();
        }
        assert_eq!(s.check_key("k", LogId(1), ttl).unwrap(), KeyCheck::Fresh);
        s.mark_running(LogId(1), Some("k".into())).unwrap();
        // 3 is reported, 4 waits, as schema 2 would have them.
        for id in [3, 4] {
            s.finish(&trig(id), &Outcome::success(), OutcomeKind::Success, None)
                .unwrap();
        }
        let three = s.outbox_batch(1).unwrap();
        assert_eq!(three[0].1.callback.log_id, LogId(3));
        s.ack(&three).unwrap();
        back_to_schema_2(&s);
        // Only the first write of `finish` for 1 (running) and 2 (still queued) landed.
        let outbox = s.inner.db.open_tree("outbox").unwrap();
        for id in [1, 2] {
            let e = OutboxEntry {
                callback: Callback {
                    log_id: LogId(id),
                    log_date_time: 1,
                    outcome: Outcome::fail("from the entry"),
                },
                queued_ms: 5,
                trace: Some(format!("trace-{id}")),
                kind: Some(OutcomeKind::Failed),
            };
            let seq = s.inner.db.generate_id().unwrap();
            outbox.insert(seq.to_be_bytes(), e.encode()).unwrap();
        }
        s.durable().await.unwrap();
    }
    let s = Store::open(dir.path(), cfg()).unwrap();
    assert_eq!(schema_of(&s), SCHEMA_VERSION.to_be_bytes());
    assert!(raw_tree(&s, "outbox").is_empty());
    let r = s.recover().unwrap();
    assert!(r.queued.is_empty() && r.interrupted.is_empty(), "{r:?}");
    let rec = s.run(LogId(1)).unwrap().unwrap();
    assert_eq!(rec.state, RunState::Finished);
    assert_eq!(rec.kind, Some(OutcomeKind::Failed));
    assert_eq!(rec.trace.as_deref(), Some("trace-1"));
    let states: Vec<_> = s.recent_runs(10).unwrap().iter().map(|r| r.state).collect();
    assert_eq!(
        states,
        [
            RunState::Finished,
            RunState::Reported,
            RunState::Finished,
            RunState::Finished
        ]
    );
    // In the order schema 2 queued them.
    let waiting = s.outbox_batch(50).unwrap();
    let ids: Vec<_> = waiting.iter().map(|(_, e)| e.callback.log_id.0).collect();
    assert_eq!(ids, [4, 1, 2]);
    assert_eq!(
        waiting[1].1.callback.outcome,
        Outcome::fail("from the entry")
    );
    // The key's holder failed: the key is free again.
    assert_eq!(s.check_key("k", LogId(9), ttl).unwrap(), KeyCheck::Fresh);

    // Cut short: back to schema 2, then the watermark written and 4's callback moved.
    back_to_schema_2(&s);
    let below = s.inner.db.generate_id().unwrap();
    s.inner
        .meta
        .insert(super::outbox::META_DELIVERED, &below.to_be_bytes())
        .unwrap();
    let mut four = s.run(LogId(4)).unwrap().unwrap();
    four.outbox_seq = Some(s.inner.db.generate_id().unwrap());
    s.inner
        .runs
        .insert(run_key(LogId(4)), four.encode(&s.inner.names).unwrap())
        .unwrap();
    let outbox = s.inner.db.open_tree("outbox").unwrap();
    outbox.remove(waiting[0].0.to_be_bytes()).unwrap();
    s.durable().await.unwrap();
    drop((s, outbox));
    let s = Store::open(dir.path(), cfg()).unwrap();
    assert_eq!(schema_of(&s), SCHEMA_VERSION.to_be_bytes());
    let again = s.outbox_batch(50).unwrap();
    let mut ids: Vec<_> = again.iter().map(|(_, e)| e.callback.log_id.0).collect();
    ids.sort_unstable();
    assert_eq!(ids, [1, 2, 4], "nothing lost, nothing delivered twice");
    s.ack(&again).unwrap();
    assert_eq!(s.outbox_len(), 0);
    drop(s);
    let s = Store::open(dir.path(), cfg()).unwrap();
    assert_eq!(s.outbox_len(), 0, "the watermark is on disk");
    assert!(s
        .recent_runs(10)
        .unwrap()
        .iter()
        .all(|r| r.state == RunState::Reported));
}

/// A place is handed out before its record is written, so a record written later may have an
/// earlier place: the batch waits for it instead of letting the watermark pass it.
#[tokio::test]
async fn a_batch_never_reaches_past_a_callback_still_being_written() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), cfg()).unwrap();
    assert_eq!(s.outbox_len(), 0);
    let finished = |id: i64, seq: u64| {
        let mut r = RunRecord::accepted(trig(id), 1);
        r.state = RunState::Finished;
        r.finished_ms = Some(2);
        r.outcome = Some(Outcome::success());
        r.outbox_seq = Some(seq);
        s.inner
            .runs
            .insert(run_key(LogId(id)), r.encode(&s.inner.names).unwrap())
            .unwrap();
        OutboxEntry {
            callback: Callback {
                log_id: LogId(id),
                log_date_time: r.trigger.log_date_time,
                outcome: Outcome::success(),
            },
            queued_ms: 2,
            trace: None,
            kind: None,
        }
    };
    let a = s.begin_callback().unwrap();
    let b = s.begin_callback().unwrap();
    assert!(a < b);
    let e = finished(2, b);
    s.end_callback(b, Some(e));
    assert!(s.outbox_batch(50).unwrap().is_empty(), "2 waits behind 1");
    assert_eq!(s.outbox_len(), 1);
    let e = finished(1, a);
    s.end_callback(a, Some(e));
    let batch = s.outbox_batch(50).unwrap();
    let ids: Vec<_> = batch.iter().map(|(_, e)| e.callback.log_id.0).collect();
    assert_eq!(ids, [1, 2]);
    // A place whose write failed holds nothing up.
    let c = s.begin_callback().unwrap();
    s.end_callback(c, None);
    s.ack(&batch).unwrap();
    assert_eq!(s.outbox_len(), 0);
    assert!(s.outbox_batch(50).unwrap().is_empty());
}

/// Memory holds the oldest waiting callbacks (16 here, 5 of them whole, the others read from
/// their records when sent); a longer backlog waits on disk and is read back when memory runs
/// short, still oldest first, across a restart, while new runs keep finishing.
#[tokio::test]
async fn a_backlog_longer_than_memory_is_delivered_oldest_first_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut delivered = Vec::new();
    let mut next = 1;
    let mut finish_some = |s: &Store, n: i64| {
        for _ in 0..n {
            s.insert_accepted(&trig(next), false).unwrap();
            s.finish(&trig(next), &Outcome::success(), OutcomeKind::Success, None)
                .unwrap();
            next += 1;
        }
    };
    {
        let s = Store::open(dir.path(), cfg()).unwrap();
        s.inner.waiting.lock().kept = 16;
        s.inner.waiting.lock().whole_max = 5 * 64;
        s.recover().unwrap();
        finish_some(&s, 40);
        assert_eq!(s.outbox_len(), 40);
        for _ in 0..3 {
            let b = s.outbox_batch(10).unwrap();
            assert_eq!(b.len(), 10);
            delivered.extend(b.iter().map(|(_, e)| e.callback.log_id.0));
            s.ack(&b).unwrap();
            finish_some(&s, 5);
        }
        assert_eq!(s.outbox_len(), 25);
        s.durable().await.unwrap();
    }
    let s = Store::open(dir.path(), cfg()).unwrap();
    s.inner.waiting.lock().kept = 16;
    s.inner.waiting.lock().whole_max = 5 * 64;
    s.recover().unwrap();
    assert_eq!(s.outbox_len(), 25);
    assert!(s.outbox_oldest_queued_ms().is_some());
    for round in 0..20 {
        let b = s.outbox_batch(7).unwrap();
        if b.is_empty() {
            break;
        }
        delivered.extend(b.iter().map(|(_, e)| e.callback.log_id.0));
        s.ack(&b).unwrap();
        if round < 3 {
            finish_some(&s, 3);
        }
    }
    assert_eq!(s.outbox_len(), 0);
    assert_eq!(delivered, (1..next).collect::<Vec<_>>());
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
        s.insert_accepted(&trig(id), false).unwrap();
        s.append_log(LogId(id), 1, "line").unwrap();
        s.finish(&trig(id), &Outcome::success(), OutcomeKind::Success, None)
            .unwrap();
    }
    let all = s.outbox_batch(100).unwrap();
    // 19 and 20 still wait for the admin; 1 to 18 went in three batches, whose
    // acknowledgements number each run's "callback finish" line.
    for b in all[..18].chunks(6) {
        let lines: Vec<_> = b.iter().map(|(_, e)| (e.callback.log_id, 2)).collect();
        s.ack_with_lines(b, &lines).unwrap();
    }
    assert_eq!(raw_tree(&s, "acks").len(), 3);
    let p = s.read_log(LogId(18), 1, 10, 1024).unwrap().unwrap();
    assert_eq!(p.to, 2);
    assert!(p.lines[1].ends_with("callback finish."), "{:?}", p.lines);
    s.insert_accepted(&trig(21), false).unwrap(); // never started
    s.insert_accepted(&trig(22), false).unwrap();
    s.mark_running(LogId(22), None).unwrap(); // running
    s.flush_now().unwrap(); // so that sled's files have a size
    let first = s.prune(None).unwrap();
    assert!(
        (1..18).contains(&first),
        "a tenth per pass, not all: {first}"
    );
    assert!(!s.has_run(LogId(1)).unwrap(), "the oldest goes first");
    assert!(s.read_log(LogId(1), 1, 10, 1024).unwrap().is_none());
    // A batch's acknowledgement goes with the last of its runs.
    let batches_left = 3 - first as usize / 6;
    assert_eq!(raw_tree(&s, "acks").len(), batches_left, "{first} pruned");
    for _ in 0..40 {
        s.prune(None).unwrap();
    }
    assert!(raw_tree(&s, "acks").is_empty());
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
    s.insert_accepted(&trig(1), false).unwrap();
    s.mark_running(LogId(1), Some("k".into())).unwrap();
    assert_eq!(
        s.check_key("k", LogId(2), ttl).unwrap(),
        KeyCheck::InFlight(LogId(1))
    );
    s.finish(&trig(1), &Outcome::fail("no"), OutcomeKind::Failed, None)
        .unwrap();
    assert_eq!(s.check_key("k", LogId(3), ttl).unwrap(), KeyCheck::Fresh);
    s.insert_accepted(&trig(3), false).unwrap();
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
    s.insert_accepted(&big(1, BULK_THRESHOLD), false).unwrap();
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
    s.insert_accepted(&t, false).unwrap();
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
    s.insert_accepted(&big(4, 1 << 20), false).unwrap();
    assert!(matches!(
        s.insert_accepted(&big(4, 1 << 20), false),
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
    s.insert_accepted(&g, false).unwrap();
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
        s.insert_accepted(&t, false).unwrap();
        s.insert_accepted(&g, false).unwrap();
        s.insert_accepted(&big(3, 1 << 20), false).unwrap();
        s.mark_running(LogId(3), None).unwrap();
        s.insert_accepted(&big(4, 1 << 20), false).unwrap();
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
        s.insert_accepted(&big(1, 1 << 20), false).unwrap(); // stays queued
        s.insert_accepted(&big(2, 1 << 20), false).unwrap();
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
            s.insert_accepted(&trig(i), false).unwrap();
            s.durable().await.unwrap();
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    assert_eq!(s.recover().unwrap().queued.len(), 64);
}

// Schema 2 and the migration from schema 1.

use super::records::names::HandlerNames;
use super::records::{is_v1, v1, v2, Bulk, KeyRecord, OutboxEntry, RunRecord};
use crate::job::{BlockStrategy, GlueKind, JobId};

/// What the admin sends for its sample job: `demoJobHandler`, empty params, no timeout.
fn demo_trigger() -> Trigger {
    Trigger {
        job_id: JobId(1),
        log_id: LogId(1_234_567),
        log_date_time: 1_717_171_717_000,
        handler: "demoJobHandler".into(),
        params: Some(String::new()),
        block: BlockStrategy::Serial,
        timeout: None,
        glue: Glue::Bean,
        shard_index: 0,
        shard_total: 1,
    }
}

/// Every field set, odd values included, so a round trip covers every branch of the codec.
fn full_record() -> RunRecord {
    RunRecord {
        trigger: Trigger {
            job_id: JobId(i32::MIN),
            log_id: LogId(i64::MIN),
            log_date_time: -1,
            handler: "h\u{e9}".into(),
            params: Some("p".into()),
            block: BlockStrategy::CoverEarly,
            timeout: Some(Duration::new(u64::MAX, 999_999_999)),
            glue: Glue::Script {
                kind: GlueKind::PowerShell,
                source: "Write-Host \u{4f60}\u{597d}".into(),
                updated: i64::MAX,
            },
            shard_index: i32::MAX,
            shard_total: -1,
        },
        state: RunState::Finished,
        accepted_ms: i64::MAX,
        started_ms: Some(i64::MIN),
        finished_ms: Some(0),
        outcome: Some(Outcome::code(-7, Some("m".into()))),
        kind: Some(OutcomeKind::Duplicate),
        idempotency_key: Some("k".into()),
        outbox_seq: Some(u64::MAX),
        trace: Some("0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331".into()),
        bulk: Some(Bulk {
            file: "1.2".into(),
            bytes: 70_000,
        }),
        log: Some(LogTail {
            first: u32::MAX,
            chunk: b"\x01a\n\x00b".to_vec(),
        }),
    }
}

/// The three records of a typical run, as the journal writes them.
fn demo_records() -> [RunRecord; 3] {
    let accepted = RunRecord::accepted(demo_trigger(), 1_795_897_761_150);
    let mut running = accepted.clone();
    running.state = RunState::Running;
    running.started_ms = Some(accepted.accepted_ms + 3);
    let mut finished = running.clone();
    finished.state = RunState::Finished;
    finished.finished_ms = Some(accepted.accepted_ms + 40);
    finished.outcome = Some(Outcome::success());
    finished.kind = Some(OutcomeKind::Success);
    finished.outbox_seq = Some(81_234);
    [accepted, running, finished]
}

fn demo_entry() -> OutboxEntry {
    OutboxEntry {
        callback: Callback {
            log_id: LogId(1_234_567),
            log_date_time: 1_717_171_717_000,
            outcome: Outcome::success(),
        },
        queued_ms: 1_795_897_761_190,
        trace: None,
        kind: Some(OutcomeKind::Success),
    }
}

/// Schema 1's JSON of a record, built as the previous release's serde derives wrote it (the
/// domain types still serialize the same way; `v1` must read it).
fn v1_json(r: &RunRecord) -> Vec<u8> {
    let mut v = serde_json::json!({
        "trigger": r.trigger, "state": r.state, "accepted_ms": r.accepted_ms,
        "started_ms": r.started_ms, "finished_ms": r.finished_ms, "outcome": r.outcome,
        "kind": r.kind, "idempotency_key": r.idempotency_key, "outbox_seq": r.outbox_seq,
    });
    if let Some(b) = &r.bulk {
        v["bulk"] = serde_json::json!({"file": b.file, "bytes": b.bytes});
    }
    serde_json::to_vec(&v).unwrap()
}

fn v1_entry_json(e: &OutboxEntry) -> Vec<u8> {
    let mut v = serde_json::json!({"callback": e.callback, "queued_ms": e.queued_ms});
    if let Some(t) = &e.trace {
        v["trace"] = serde_json::json!(t);
    }
    if let Some(k) = e.kind {
        v["kind"] = serde_json::json!(k);
    }
    serde_json::to_vec(&v).unwrap()
}

/// A names table in a throwaway sled.
fn names() -> (sled::Db, HandlerNames) {
    let db = sled::Config::new().temporary(true).open().unwrap();
    let names = HandlerNames::open(db.open_tree("meta").unwrap()).unwrap();
    (db, names)
}

#[test]
fn v2_records_round_trip_and_are_small() {
    let (_db, n) = names();
    for r in demo_records().into_iter().chain([full_record()]) {
        let b = r.encode(&n).unwrap();
        assert_eq!(b[0], v2::FORMAT_NAMED);
        assert!(!is_v1(&b));
        assert_eq!(RunRecord::decode(&b, &n).unwrap(), r);
        // The handler as text (a full names table, or a record of the first schema-2 builds).
        let text = v2::run_record(&r, None);
        assert!(text.len() >= b.len() + r.trigger.handler.len());
        assert_eq!(RunRecord::decode(&text, &n).unwrap(), r);
    }
    // A number the table lacks is damage, not a panic or an empty name.
    let (_db2, empty) = names();
    assert!(matches!(
        RunRecord::decode(&full_record().encode(&n).unwrap(), &empty),
        Err(StoreError::Corrupt(_))
    ));
    let mut absent = full_record();
    absent.trigger.params = None;
    absent.trigger.timeout = None;
    absent.trigger.glue = Glue::Bean;
    absent.outcome = Some(Outcome::code(200, None));
    assert_eq!(
        RunRecord::decode(&absent.encode(&n).unwrap(), &n).unwrap(),
        absent
    );
    for e in [
        demo_entry(),
        OutboxEntry {
            trace: Some("0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331".into()),
            kind: None,
            callback: Callback {
                log_id: LogId(-1),
                log_date_time: 0,
                outcome: Outcome::fail("boom"),
            },
            ..demo_entry()
        },
    ] {
        assert_eq!(OutboxEntry::decode(&e.encode()).unwrap(), e);
    }
    let k = KeyRecord {
        log_id: LogId(7),
        succeeded: true,
        expires_ms: i64::MIN,
    };
    assert_eq!(KeyRecord::decode(&k.encode()).unwrap(), k);
    // A batch's acknowledgement: logIds as differences, negative and far apart too.
    let a = AckRecord {
        at_ms: 1_717_171_717_000,
        lines: (0..50)
            .map(|i| (LogId(1_000_000 + i), 4))
            .chain([
                (LogId(-5), 1),
                (LogId(i64::MAX), u32::MAX),
                (LogId(i64::MIN), 0),
            ])
            .collect(),
    };
    let b = a.encode();
    assert_eq!(AckRecord::decode(&b).unwrap(), a);
    assert!(b.len() < 12 + 50 * 2 + 3 * 16, "{} bytes", b.len());
    let empty = AckRecord {
        at_ms: 0,
        lines: vec![],
    };
    assert_eq!(AckRecord::decode(&empty.encode()).unwrap(), empty);
    let t = full_record().trigger;
    let mut file = Vec::new();
    v2::put_bulk_trigger(&mut file, &t);
    assert_eq!(super::records::decode_bulk_trigger(&file).unwrap(), t);

    // The sizes the commit message quotes (schema 1's JSON against schema 2).
    let [accepted, running, finished] = demo_records();
    let mut sizes = Vec::new();
    for (name, r) in [
        ("accepted", &accepted),
        ("running", &running),
        ("finished", &finished),
    ] {
        let (json, v2) = (v1_json(r).len(), r.encode(&n).unwrap().len());
        assert!(v2 <= 60, "{name}: {v2} bytes");
        assert!(v2 * 5 < json, "{name}: {v2} bytes against {json}");
        sizes.push(format!("{name} {json} -> {v2}"));
    }
    let e = demo_entry();
    let (json, v2) = (v1_entry_json(&e).len(), e.encode().len());
    assert!(v2 <= 24, "outbox entry: {v2} bytes");
    sizes.push(format!("outbox entry {json} -> {v2}"));
    println!(
        "record sizes, schema 1 JSON -> schema 2: {}",
        sizes.join(", ")
    );
}

#[test]
fn damaged_values_are_errors_never_panics() {
    let (_db, n) = names();
    let mut values = vec![
        full_record().encode(&n).unwrap(),
        // The handler as text: the bytes changed below are at fixed places.
        v2::run_record(&demo_records()[2], None),
        demo_entry().encode(),
        KeyRecord {
            log_id: LogId(7),
            succeeded: true,
            expires_ms: 1,
        }
        .encode(),
        AckRecord {
            at_ms: 1,
            lines: vec![(LogId(7), 3), (LogId(9), 4)],
        }
        .encode(),
    ];
    let mut file = vec![];
    v2::put_bulk_trigger(&mut file, &full_record().trigger);
    values.push(file);
    let decode_all = |b: &[u8]| {
        let _ = RunRecord::decode(b, &n);
        let _ = OutboxEntry::decode(b);
        let _ = KeyRecord::decode(b);
        let _ = AckRecord::decode(b);
        let _ = super::records::decode_bulk_trigger(b);
    };
    // Every truncation of a valid value is refused with a store error.
    for v in &values {
        for len in 0..v.len() {
            let cut = &v[..len];
            assert!(RunRecord::decode(cut, &n).is_err() || len == v.len());
            decode_all(cut);
        }
    }
    for cut in 0..values[0].len() {
        assert!(matches!(
            RunRecord::decode(&values[0][..cut], &n),
            Err(StoreError::Corrupt(_))
        ));
    }
    // A trailing byte, an unknown state, an unknown flag, a huge string length, a bad format.
    let mut long = values[1].clone();
    long.push(0);
    assert!(RunRecord::decode(&long, &n).is_err());
    let mut bad_state = values[1].clone();
    bad_state[2] = 9;
    assert!(RunRecord::decode(&bad_state, &n).is_err());
    let mut bad_flag = values[1].clone();
    bad_flag[1] |= 0x7f;
    bad_flag.splice(2..2, [0x7f]);
    assert!(RunRecord::decode(&bad_flag, &n).is_err());
    let huge = [
        v2::FORMAT,
        0,
        0,
        0,
        2,
        2,
        0xff,
        0xff,
        0xff,
        0xff,
        0xff,
        0xff,
        0xff,
        0x7f,
    ];
    assert!(RunRecord::decode(&huge, &n).is_err());
    let overflow = [
        v2::FORMAT,
        0xff,
        0xff,
        0xff,
        0xff,
        0xff,
        0xff,
        0xff,
        0xff,
        0xff,
        0x7f,
    ];
    assert!(KeyRecord::decode(&overflow).is_err());
    assert!(RunRecord::decode(b"{\"trigger\":1}", &n).is_err());
    assert!(RunRecord::decode(&[0x03], &n).is_err());
    // Random bytes and single-byte flips of valid values: bounded, deterministic.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..20_000 {
        let len = (next() % 80) as usize;
        let mut b: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if let Some(f) = b.first_mut() {
            if next() % 2 == 0 {
                *f = v2::FORMAT;
            }
        }
        decode_all(&b);
    }
    for v in &values {
        for i in 0..v.len() {
            for bit in 0..8 {
                let mut b = v.clone();
                b[i] ^= 1 << bit;
                decode_all(&b);
            }
        }
    }
}

/// The exact JSON the previous release wrote (copied from the fixture's generator output),
/// read by the frozen schema-1 structs into today's types.
#[test]
fn v1_json_as_written_by_schema_1_decodes() {
    let glue = br#"{"trigger":{"job_id":2,"log_id":102,"log_date_time":1717171717000,"handler":"","params":null,"block":"Serial","timeout":null,"glue":{"Script":{"kind":"Shell","source":"echo \"glue from schema 1\"\n","updated":1541254891000}},"shard_index":0,"shard_total":1},"state":"Accepted","accepted_ms":1795897761150,"started_ms":null,"finished_ms":null,"outcome":null,"kind":null,"idempotency_key":null,"outbox_seq":null}"#;
    let r = v1::run_record(glue).unwrap();
    assert_eq!(r.state, RunState::Accepted);
    assert_eq!(
        r.trigger.glue,
        Glue::Script {
            kind: GlueKind::Shell,
            source: "echo \"glue from schema 1\"\n".into(),
            updated: 1_541_254_891_000
        }
    );
    assert!(r.bulk.is_none());
    let timed = br#"{"trigger":{"job_id":1,"log_id":101,"log_date_time":1717171717000,"handler":"demoJobHandler","params":"queued one","block":"DiscardLater","timeout":{"secs":30,"nanos":0},"glue":"Bean","shard_index":0,"shard_total":1},"state":"Accepted","accepted_ms":1795897761150,"started_ms":null,"finished_ms":null,"outcome":null,"kind":null,"idempotency_key":null,"outbox_seq":null}"#;
    let r = v1::run_record(timed).unwrap();
    assert_eq!(r.trigger.timeout, Some(Duration::from_secs(30)));
    assert_eq!(r.trigger.block, BlockStrategy::DiscardLater);
    assert_eq!(r.trigger.params.as_deref(), Some("queued one"));
    let keyed = br#"{"trigger":{"job_id":6,"log_id":108,"log_date_time":1717171717000,"handler":"keyedJobHandler","params":"42","block":"Serial","timeout":null,"glue":"Bean","shard_index":0,"shard_total":1},"state":"Reported","accepted_ms":1795897761151,"started_ms":1795897761160,"finished_ms":1795897761160,"outcome":{"code":200,"msg":null},"kind":"Success","idempotency_key":"order-42","outbox_seq":4}"#;
    let r = v1::run_record(keyed).unwrap();
    assert_eq!(r.idempotency_key.as_deref(), Some("order-42"));
    assert_eq!(r.outbox_seq, Some(4));
    assert_eq!(r.kind, Some(OutcomeKind::Success));
    assert_eq!(r.started_ms, Some(1_795_897_761_160));
    let large = br#"{"trigger":{"job_id":7,"log_id":110,"log_date_time":1717171717000,"handler":"lenJobHandler","params":null,"block":"Serial","timeout":null,"glue":"Bean","shard_index":0,"shard_total":1},"state":"Accepted","accepted_ms":1795897761162,"started_ms":null,"finished_ms":null,"outcome":null,"kind":null,"idempotency_key":null,"outbox_seq":null,"bulk":{"file":"110.5","bytes":70000}}"#;
    let r = v1::run_record(large).unwrap();
    assert_eq!(
        r.bulk,
        Some(Bulk {
            file: "110.5".into(),
            bytes: 70_000
        })
    );
    // Records of releases before `idempotency_key` and `outbox_seq` existed.
    let oldest = br#"{"trigger":{"job_id":3,"log_id":103,"log_date_time":1,"handler":"h","params":null,"block":"Serial","timeout":null,"glue":"Bean","shard_index":0,"shard_total":1},"state":"Running","accepted_ms":1,"started_ms":2,"finished_ms":null,"outcome":null,"kind":null}"#;
    assert_eq!(v1::run_record(oldest).unwrap().state, RunState::Running);
    let e = v1::outbox_entry(br#"{"callback":{"log_id":104,"log_date_time":1717171717000,"outcome":{"code":200,"msg":null}},"queued_ms":1795897761151,"trace":"0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331","kind":"Success"}"#).unwrap();
    assert_eq!(e.callback.log_id, LogId(104));
    assert_eq!(e.kind, Some(OutcomeKind::Success));
    assert!(e.trace.is_some());
    let e = v1::outbox_entry(br#"{"callback":{"log_id":105,"log_date_time":1717171717000,"outcome":{"code":500,"msg":"boom from schema 1"}},"queued_ms":1795897761151}"#).unwrap();
    assert_eq!(e.callback.outcome, Outcome::fail("boom from schema 1"));
    assert_eq!((e.trace, e.kind), (None, None));
    let k =
        v1::key_record(br#"{"log_id":108,"succeeded":true,"expires_ms":2111257761160}"#).unwrap();
    assert_eq!((k.log_id, k.succeeded), (LogId(108), true));
    // The domain types' serde still writes what schema 1 wrote: the test helpers rely on it.
    for r in demo_records().into_iter().chain([full_record()]) {
        if r.trigger.timeout.is_some_and(|d| d.as_secs() == u64::MAX) {
            continue;
        }
        assert_eq!(v1::run_record(&v1_json(&r)).unwrap(), r);
    }
    assert!(v1::run_record(b"{\"trigger\":{}}").is_err());
}

fn raw_tree(s: &Store, name: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let t = match name {
        "runs" => &s.inner.runs,
        "outbox" => &s.inner.db.open_tree("outbox").unwrap(),
        "acks" => &s.inner.acks,
        "keys" => &s.inner.keys,
        _ => panic!("no tree {name}"),
    };
    t.iter()
        .map(|i| {
            let (k, v) = i.unwrap();
            (k.to_vec(), v.to_vec())
        })
        .collect()
}

fn schema_of(s: &Store) -> Vec<u8> {
    s.inner
        .db
        .open_tree("meta")
        .unwrap()
        .get("schema")
        .unwrap()
        .unwrap()
        .to_vec()
}

/// A migration cut short by a crash: some values already schema 2, the rest JSON, the schema
/// still 1. The next open finishes it and every record reads back as it was.
#[tokio::test]
async fn a_half_migrated_store_migrates_again_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let ttl = Duration::from_secs(3600);
    let (before_runs, before_outbox);
    {
        let s = Store::open(dir.path(), cfg()).unwrap();
        assert_eq!(schema_of(&s), SCHEMA_VERSION.to_be_bytes());
        for id in 1..=6 {
            s.insert_accepted(&trig(id), false).unwrap();
        }
        s.mark_running(LogId(2), None).unwrap();
        for id in 3..=5 {
            s.mark_running(LogId(id), None).unwrap();
            s.finish(&trig(id), &Outcome::fail("f"), OutcomeKind::Failed, None)
                .unwrap();
        }
        assert_eq!(s.check_key("k", LogId(6), ttl).unwrap(), KeyCheck::Fresh);
        s.mark_running(LogId(6), Some("k".into())).unwrap();
        s.finish(&trig(6), &Outcome::success(), OutcomeKind::Success, None)
            .unwrap();
        s.append_log(LogId(3), 1, "kept").unwrap();
        before_runs = (1..=6)
            .map(|id| s.run(LogId(id)).unwrap().unwrap())
            .collect::<Vec<_>>();
        before_outbox = back_to_schema_2(&s);
        // Back to schema 1 for every other value of each tree, as a crash mid-migration leaves it.
        let (seq, e) = &before_outbox[0];
        s.inner
            .db
            .open_tree("outbox")
            .unwrap()
            .insert(seq.to_be_bytes(), v1_entry_json(e))
            .unwrap();
        for (i, r) in before_runs.iter().enumerate() {
            if i % 2 == 0 {
                s.inner
                    .runs
                    .insert(run_key(r.trigger.log_id), v1_json(r))
                    .unwrap();
            }
        }
        s.inner
            .keys
            .insert(
                "k",
                format!(
                    r#"{{"log_id":6,"succeeded":true,"expires_ms":{}}}"#,
                    crate::clock::now_ms() + 3_600_000
                )
                .as_bytes(),
            )
            .unwrap();
        s.inner
            .db
            .open_tree("meta")
            .unwrap()
            .insert("schema", &1u64.to_be_bytes())
            .unwrap();
        assert!(raw_tree(&s, "runs").iter().any(|(_, v)| is_v1(v)));
        assert!(raw_tree(&s, "runs").iter().any(|(_, v)| !is_v1(v)));
        s.durable().await.unwrap();
    }
    let s = Store::open(dir.path(), cfg()).unwrap();
    assert_eq!(schema_of(&s), SCHEMA_VERSION.to_be_bytes());
    assert!(raw_tree(&s, "outbox").is_empty());
    for t in ["runs", "keys"] {
        let format = if t == "runs" {
            v2::FORMAT_NAMED
        } else {
            v2::FORMAT
        };
        for (_, v) in raw_tree(&s, t) {
            assert_eq!(v[0], format, "{t}");
        }
    }
    // The same, but for the new places in the delivery order of the waiting callbacks.
    let unplaced = |mut r: RunRecord| {
        r.outbox_seq = r.outbox_seq.map(|_| 0);
        r
    };
    let after: Vec<_> = (1..=6)
        .map(|id| unplaced(s.run(LogId(id)).unwrap().unwrap()))
        .collect();
    assert_eq!(
        after,
        before_runs
            .iter()
            .cloned()
            .map(unplaced)
            .collect::<Vec<_>>()
    );
    let entries = |b: Vec<(u64, OutboxEntry)>| b.into_iter().map(|(_, e)| e).collect::<Vec<_>>();
    assert_eq!(entries(s.outbox_batch(50).unwrap()), entries(before_outbox));
    assert_eq!(
        s.check_key("k", LogId(7), ttl).unwrap(),
        KeyCheck::Succeeded(LogId(6))
    );
    let r = s.recover().unwrap();
    assert_eq!(r.queued.len(), 1);
    assert_eq!(r.interrupted.len(), 1);
    assert_eq!(
        s.read_log(LogId(3), 1, 10, 1 << 20).unwrap().unwrap().lines,
        ["kept"]
    );
    drop(s);
    // A second open finds nothing to do.
    let s = Store::open(dir.path(), cfg()).unwrap();
    assert_eq!(s.run(LogId(1)).unwrap().unwrap(), before_runs[0]);
}

/// A value that does not decode stops the migration: the store is refused, not half-read.
#[tokio::test]
async fn a_schema_1_value_that_does_not_decode_makes_the_store_unusable() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path(), cfg()).unwrap();
        s.inner
            .runs
            .insert(run_key(LogId(1)), &b"{\"trigger\":"[..])
            .unwrap();
        s.inner
            .db
            .open_tree("meta")
            .unwrap()
            .insert("schema", &1u64.to_be_bytes())
            .unwrap();
        s.durable().await.unwrap();
    }
    let e = Store::open(dir.path(), cfg()).unwrap_err();
    assert!(matches!(e, StoreError::Unusable { .. }), "{e}");
    assert!(e.to_string().contains("schema 1 to 2"), "{e}");
}

/// A newer release's store is refused as before, its schema is not downgraded.
#[tokio::test]
async fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path(), cfg()).unwrap();
        s.inner
            .db
            .open_tree("meta")
            .unwrap()
            .insert("schema", &(SCHEMA_VERSION + 1).to_be_bytes())
            .unwrap();
        s.durable().await.unwrap();
    }
    let e = Store::open(dir.path(), cfg()).unwrap_err();
    assert!(matches!(e, StoreError::Unusable { .. }), "{e}");
}

/// Schema 3 becomes 4 with nothing rewritten: its records read as they are, and records
/// written from then on keep their runs' last lines, which `/log` serves with the rest.
#[tokio::test]
async fn schema_3_becomes_4_and_finished_records_keep_their_last_lines() {
    let dir = tempfile::tempdir().unwrap();
    let before;
    {
        let s = Store::open(dir.path(), cfg()).unwrap();
        s.insert_accepted(&trig(1), true).unwrap();
        s.append_log_chunk(LogId(1), 1, &["first"]).unwrap();
        s.finish(&trig(1), &Outcome::success(), OutcomeKind::Success, None)
            .unwrap();
        s.inner.meta.insert("schema", &3u64.to_be_bytes()).unwrap();
        s.durable().await.unwrap();
        before = raw_tree(&s, "runs");
    }
    let s = Store::open(dir.path(), cfg()).unwrap();
    assert_eq!(schema_of(&s), 4u64.to_be_bytes());
    assert_eq!(raw_tree(&s, "runs"), before, "nothing rewritten");
    s.recover().unwrap();
    // A run whose log is in three places: a chunk written while it ran, the lines kept in
    // its finished record, a line written after its end; and its callback's line.
    s.insert_accepted(&trig(2), true).unwrap();
    s.append_log_chunk(LogId(2), 1, &["a", "b"]).unwrap();
    let tail = ["c".to_string(), "d".to_string()];
    let kind = OutcomeKind::Success;
    assert!(s
        .finish_with_log(&trig(2), &Outcome::success(), kind, None, Some((3, &tail)))
        .unwrap());
    assert!(
        !s.finish_with_log(&trig(2), &Outcome::success(), kind, None, Some((5, &tail)))
            .unwrap(),
        "one outcome per run: the caller keeps its lines"
    );
    assert_eq!(s.run(LogId(2)).unwrap().unwrap().log.unwrap().first, 3);
    assert_eq!(s.last_log_line(LogId(2)).unwrap(), 4);
    s.append_log_chunk(LogId(2), 6, &["f"]).unwrap();
    let batch = s.outbox_batch(10).unwrap();
    let lines: Vec<_> = batch.iter().map(|(_, e)| (e.callback.log_id, 5)).collect();
    s.ack_with_lines(&batch, &lines).unwrap();
    let page = s.read_log(LogId(2), 1, 100, 1 << 20).unwrap().unwrap();
    assert_eq!(page.to, 6);
    assert_eq!(page.lines[..4], ["a", "b", "c", "d"]);
    assert!(
        page.lines[4].ends_with("callback finish."),
        "{:?}",
        page.lines
    );
    assert_eq!(page.lines[5], "f");
    assert_eq!(s.last_log_line(LogId(2)).unwrap(), 6);
    // Pages that start and end inside the kept lines.
    let page = s.read_log(LogId(2), 4, 2, 1 << 20).unwrap().unwrap();
    assert_eq!((page.to, &page.lines[0][..]), (5, "d"));
    let page = s.read_log(LogId(2), 2, 2, 1 << 20).unwrap().unwrap();
    assert_eq!(
        (page.to, &page.lines[..]),
        (3, &["b".to_string(), "c".to_string()][..])
    );
    // A record with kept lines reads back after a restart.
    drop(s);
    let s = Store::open(dir.path(), cfg()).unwrap();
    let page = s.read_log(LogId(2), 3, 2, 1 << 20).unwrap().unwrap();
    assert_eq!(page.lines, ["c", "d"]);
}

/// Large-trigger files written by schema 1 (JSON) are still read after the upgrade.
#[tokio::test]
async fn a_schema_1_params_file_is_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let t = big(5, BULK_THRESHOLD + 1);
    {
        let s = Store::open(dir.path(), cfg()).unwrap();
        s.insert_accepted(&t, false).unwrap();
        s.durable().await.unwrap();
        let files = bulk_files(dir.path());
        let path = dir.path().join("store").join(BULK_DIR).join(&files[0]);
        assert_eq!(std::fs::read(&path).unwrap()[0], v2::FORMAT);
        std::fs::write(&path, serde_json::to_vec(&t).unwrap()).unwrap();
    }
    let s = Store::open(dir.path(), cfg()).unwrap();
    let r = s.recover().unwrap();
    assert!(r.lost.is_empty(), "{:?}", r.lost);
    assert_eq!(r.queued[0].trigger, t);
}

/// A run's end keeps what its start wrote (acceptance and start times, idempotency key),
/// whether this process accepted it (its record is kept in memory, see `inflight`) or found it
/// in the journal at open; and a run removed while its start was being written is not brought
/// back by its end.
#[tokio::test]
async fn a_runs_end_keeps_what_its_start_wrote_remembered_or_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let ended = |s: &Store, id: i64| {
        assert!(s
            .finish(&trig(id), &Outcome::success(), OutcomeKind::Success, None)
            .unwrap());
        s.run(LogId(id)).unwrap().unwrap()
    };
    let started;
    {
        let s = Store::open(dir.path(), cfg()).unwrap();
        s.insert_accepted(&trig(1), false).unwrap();
        s.mark_running(LogId(1), Some("k1".into())).unwrap();
        let before = s.run(LogId(1)).unwrap().unwrap();
        let rec = ended(&s, 1);
        assert_eq!(rec.state, RunState::Finished);
        assert_eq!(rec.accepted_ms, before.accepted_ms);
        assert_eq!(rec.started_ms, before.started_ms);
        assert_eq!(rec.idempotency_key.as_deref(), Some("k1"));

        // Written as running at acceptance, then its `/run` failed: forgotten.
        s.insert_accepted(&trig(2), true).unwrap();
        s.forget_accepted(LogId(2)).unwrap();
        s.mark_running(LogId(2), None).unwrap();
        assert!(s.run(LogId(2)).unwrap().is_none(), "an update adds nothing");

        s.insert_accepted(&trig(3), true).unwrap();
        s.mark_running(LogId(3), Some("k3".into())).unwrap();
        started = s.run(LogId(3)).unwrap().unwrap();
        s.synced().await.unwrap();
    }
    let s = Store::open(dir.path(), cfg()).unwrap();
    let rec = ended(&s, 3);
    assert_eq!(rec.accepted_ms, started.accepted_ms);
    assert_eq!(rec.started_ms, started.started_ms);
    assert_eq!(rec.idempotency_key.as_deref(), Some("k3"));
    assert!(
        !s.finish(&trig(3), &Outcome::fail("again"), OutcomeKind::Failed, None)
            .unwrap(),
        "one outcome per run"
    );
}
