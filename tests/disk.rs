//! A really full disk: the data directory lives on a small tmpfs that the test fills. Needs root
//! to mount (as on the project's machines and CI); elsewhere it says so and does nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;
use support::*;

struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Self> {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Self(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn free_bytes(p: &Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(p).unwrap();
    #[allow(clippy::useless_conversion)]
    let free = u64::from(st.blocks_available()) * u64::from(st.fragment_size());
    free
}

#[tokio::test]
async fn a_full_disk_refuses_new_runs_keeps_accepted_ones_and_recovers() {
    let mnt = tempfile::tempdir().unwrap();
    let Some(_fs) = Tmpfs::mount(mnt.path(), "64m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root); the refusal message itself is covered by runner::a_full_disk_refuses_runs_with_a_clear_message");
        return;
    };
    let admin = FakeAdmin::start().await;
    let probe = Probe::new();
    let data = mnt.path().join("data");
    let min_free: u64 = 24 << 20;
    let mut cfg = test_config(&data, &admin.url(), "cache_bytes = 1048576\n");
    cfg.store.min_free_bytes = min_free;
    let ex = TestExecutor::start(sample_handlers(
        xxl_edge::Executor::builder().config(cfg),
        &probe,
    ))
    .await;
    assert_eq!(ex.run(1, "gateJobHandler", 1, json!({})).await, ok());
    probe.started(1).await;
    assert_eq!(ex.run(1, "gateJobHandler", 2, json!({})).await, ok());

    // Fill the disk to just under the threshold.
    let filler = mnt.path().join("filler");
    let fill = free_bytes(mnt.path()) - (min_free - (4 << 20));
    std::fs::write(&filler, vec![0u8; fill as usize]).unwrap();
    let r = ex.run(3, "demoJobHandler", 3, json!({})).await;
    assert_eq!(r["code"], 500);
    let msg = r["msg"].as_str().unwrap();
    assert!(
        msg.starts_with("disk full:") && msg.contains("free some space"),
        "{msg}"
    );

    // What was accepted before still runs and is called back.
    probe.gate.notify_one();
    probe.started(2).await;
    probe.gate.notify_one();
    assert_eq!(admin.callback(1).await["handleCode"], 200);
    assert_eq!(admin.callback(2).await["handleCode"], 200);
    assert!(admin.callbacks_for(3).is_empty());

    // Space returns: accepted again, by itself.
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(ex.run(3, "demoJobHandler", 3, json!({})).await, ok());
    assert_eq!(admin.callback(3).await["handleCode"], 200);
    ex.shutdown().await;
}

/// An executor whose data directory is on a 32 MiB tmpfs, with the executor's own free-space
/// threshold off, so that the store itself meets the full disk.
async fn on_a_small_tmpfs() -> (tempfile::TempDir, Tmpfs, FakeAdmin, Probe, TestExecutor) {
    let mnt = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(mnt.path(), "32m") else {
        panic!(
            "cannot mount a tmpfs here: this test needs root, as on the project's machines and CI"
        );
    };
    let admin = FakeAdmin::start().await;
    let probe = Probe::new();
    let data = mnt.path().join("data");
    let mut cfg = test_config(&data, &admin.url(), "cache_bytes = 1048576\n");
    cfg.store.min_free_bytes = 0;
    // sled sometimes hangs in a flush after a failed write instead of failing it: the stall
    // bound then declares the fault, well within the tests' guard.
    cfg.store.flush_stall = std::time::Duration::from_secs(5);
    let ex = TestExecutor::start(sample_handlers(
        xxl_edge::Executor::builder().config(cfg),
        &probe,
    ))
    .await;
    (mnt, fs, admin, probe, ex)
}

/// Fills the file system to the last byte (the executor's own threshold is off in these tests,
/// so that the store itself meets the full disk).
fn fill_up(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..1024 {
        if f.write_all(&chunk).is_err() {
            break;
        }
    }
    // The last partial chunk, byte-sized pieces.
    for _ in 0..(1 << 20) {
        if f.write_all(&[0u8; 512]).is_err() {
            break;
        }
    }
    path
}

/// Issue 9 #1: marking a run started (or flushing that mark) failed, and the handler ran anyway,
/// unprotected; a crash then ran it twice. A store error before a run now fails the run.
#[tokio::test]
async fn a_store_error_before_a_run_fails_it_instead_of_running_it() {
    let (mnt, _fs, _admin, probe, ex) = on_a_small_tmpfs().await;
    // Run 1 writes 300 kB of output (less than one of sled's 512 KiB I/O buffers, so it stays in memory until a flush) once released, after the disk is full: the flush that
    // must put run 2's "running" mark on disk has to write it too, and fails.
    let flood = json!({ "executorParams": "300000" });
    assert_eq!(ex.run(1, "floodJobHandler", 1, flood).await, ok());
    probe.started(1).await;
    // Accepted (on disk) while the disk still had room; it waits behind run 1.
    let small = json!({ "executorParams": "0" });
    assert_eq!(ex.run(1, "floodJobHandler", 2, small).await, ok());
    let _filler = fill_up(mnt.path());
    probe.gate.notify_one();
    // sled fails every operation once a write has failed (reads too), so the run's log
    // cannot show it: run 2's end is seen in the metrics. Either its "running" mark or the
    // flush of that mark fails (which one depends on when sled meets the full disk), and
    // the runner records run 2 as failed without starting it.
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let m = ex.metrics_text().await;
        let failed_before_start = m.lines().any(|l| {
            l.starts_with("xxl_edge_runs_total{handler=\"floodJobHandler\",outcome=\"failed\"}")
                && !l.ends_with(" 0")
        });
        if failed_before_start {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no store error before run 2 was counted:\n{m}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The handler of run 2 never started.
    assert!(!probe.started_so_far().contains(&2), "run 2 must not start");
}

/// Issue 9 #12: the first /run of a new jobId while the journal flush failed was answered 500
/// "not accepted", but its worker had already taken it and ran it.
#[tokio::test]
async fn a_trigger_refused_because_the_flush_failed_never_runs() {
    let (mnt, _fs, _admin, probe, ex) = on_a_small_tmpfs().await;
    let _filler = fill_up(mnt.path());
    let big = "p".repeat(2 << 20);
    let r = ex
        .run(5, "gateJobHandler", 50, json!({ "executorParams": big }))
        .await;
    assert_eq!(r["code"], 500, "{r}");
    let msg = r["msg"].as_str().unwrap();
    assert!(msg.contains("not accepted"), "{msg}");
    // The job's worker has let go of it once the job is idle again.
    let deadline = tokio::time::Instant::now() + GUARD;
    while ex.post("/idleBeat", r#"{"jobId":5}"#).await["code"] != 200 {
        assert!(tokio::time::Instant::now() < deadline, "job 5 stays busy");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        !probe.started_so_far().contains(&50),
        "a refused trigger must not run"
    );
}

/// A config file for the binary (kept off the tmpfs), with its data directory on the tmpfs and
/// the executor's own free-space threshold off, so that the store itself meets the full disk.
fn binary_config(cfg_dir: &Path, data: &Path, admin: &str) -> PathBuf {
    let config = cfg_dir.join("xxl-edge.toml");
    std::fs::write(
        &config,
        format!(
            r#"{head}[runner]
kill_grace_secs = 0.5
shutdown_grace_secs = 1
max_queue_per_job = 100000
[store]
min_free_bytes = 0
cache_bytes = 1048576
flush_stall_secs = 5
"#,
            head = child::config_head(admin, "disk-test", data),
        ),
    )
    .unwrap();
    config
}

/// What `/run` answers while the store has failed (README, "Storage faults").
const FAULT: &str = "store failed";

/// Sends triggers (a few jobs, `demoJobHandler`) until one is refused for the storage fault;
/// returns that answer's message. Triggers answered 200 go into `accepted`.
async fn run_until_the_store_fails(
    ex: &child::Child,
    next_id: &mut i64,
    accepted: &mut std::collections::BTreeSet<i64>,
) -> String {
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the store never reported its fault; log:\n{}",
            ex.log_text()
        );
        *next_id += 1;
        let id = *next_id;
        let r = ex
            .run((id % 8) as i32 + 1, "demoJobHandler", id)
            .await
            .unwrap_or_else(|| panic!("no answer to /run {id}; log:\n{}", ex.log_text()));
        if r == ok() {
            accepted.insert(id);
            continue;
        }
        assert_eq!(r["code"], 500, "{r}");
        let msg = r["msg"].as_str().unwrap().to_string();
        if msg.contains(FAULT) {
            return msg;
        }
    }
}

/// Issue 8: after a write failed (disk full with `store.min_free_bytes = 0`), the executor
/// answered "No space left on device" or hung after the space was back, and the runs accepted
/// just before were never called back. Now it refuses runs promptly while the store is failed,
/// exits 75 once the data directory is writable again, and the restart (here by the test, as
/// systemd's `Restart=always` would) calls back every accepted run exactly once.
#[tokio::test]
async fn a_storage_fault_ends_in_a_restart_that_calls_back_every_accepted_run_once() {
    let mnt = tempfile::tempdir().unwrap();
    let _fs = Tmpfs::mount(mnt.path(), "32m").expect(
        "cannot mount a tmpfs here: this test needs root, as on the project's machines and CI",
    );
    let admin = FakeAdmin::start().await;
    // Nothing is acknowledged while the store fails: an admin's 200 whose removal from the
    // outbox cannot be written is sent once more after the restart (README, "At most one extra
    // delivery"); this test counts exactly one.
    admin.set_mode(AdminMode::Http503);
    let cfg_dir = tempfile::tempdir().unwrap();
    let config = binary_config(cfg_dir.path(), &mnt.path().join("data"), &admin.url());
    let ex = child::Child::start(&config).await;
    let mut accepted = std::collections::BTreeSet::new();
    let mut next_id = 0;
    for _ in 0..5 {
        next_id += 1;
        assert_eq!(ex.run(1, "demoJobHandler", next_id).await, Some(ok()));
        accepted.insert(next_id);
    }

    // The file system fills up while triggers keep coming.
    let filling = tokio::task::spawn_blocking({
        let dir = mnt.path().to_path_buf();
        move || fill_up(&dir)
    });
    let msg = run_until_the_store_fails(&ex, &mut next_id, &mut accepted).await;
    let filler = filling.await.unwrap();
    assert!(msg.contains("not accepted"), "{msg}");
    // While failed, /run answers at once.
    let began = tokio::time::Instant::now();
    next_id += 1;
    let r = ex.run(1, "demoJobHandler", next_id).await.unwrap();
    assert_eq!(r["code"], 500, "{r}");
    assert!(r["msg"].as_str().unwrap().contains(FAULT), "{r}");
    assert!(began.elapsed() < std::time::Duration::from_secs(2));
    ex.wait_line("the fault's log line", |v| {
        v["level"] == "ERROR"
            && v["message"]
                .as_str()
                .is_some_and(|m| m.contains("The store failed"))
    })
    .await;

    // Space returns: the executor exits 75 by itself, and its restart recovers.
    std::fs::remove_file(&filler).unwrap();
    let status = ex.exited_within(GUARD).await.unwrap_or_else(|| {
        panic!(
            "the executor did not exit once space returned; log:\n{}",
            ex.log_text()
        )
    });
    assert_eq!(status.code(), Some(75), "log:\n{}", ex.log_text());
    let ex = child::Child::start(&config).await;
    admin.set_mode(AdminMode::Ok);
    admin
        .wait_until("a callback for every accepted trigger", |a| {
            let d = a.delivered();
            accepted.iter().all(|id| d.contains_key(id))
        })
        .await;
    for (id, items) in admin.delivered() {
        assert!(
            accepted.contains(&id),
            "logId {id} was refused but called back: {items:?}"
        );
        assert_eq!(
            items.len(),
            1,
            "logId {id} called back {} times: {items:?}",
            items.len()
        );
        // Finished before the fault, run after the restart, or (its "running" mark on disk, its
        // outcome not) reported as interrupted.
        let msg = items[0]["handleMsg"].as_str().unwrap_or("");
        assert!(
            items[0]["handleCode"] == 200 || msg.starts_with("xxl-edge restarted during the run"),
            "logId {id}: {items:?}"
        );
    }
    next_id += 1;
    assert_eq!(ex.run(1, "demoJobHandler", next_id).await, Some(ok()));
    assert_eq!(admin.callback(next_id).await["handleCode"], 200);
    assert_eq!(ex.sigterm().await.code(), Some(0));
}

/// Issue 8: SIGTERM no longer finished once the store had failed. It now ends the process within
/// seconds, with exit 75 (the store failed; the next start recovers), and the next start works.
#[tokio::test]
async fn sigterm_while_the_store_is_failed_exits_within_seconds() {
    let mnt = tempfile::tempdir().unwrap();
    let _fs = Tmpfs::mount(mnt.path(), "32m").expect(
        "cannot mount a tmpfs here: this test needs root, as on the project's machines and CI",
    );
    let admin = FakeAdmin::start().await;
    let cfg_dir = tempfile::tempdir().unwrap();
    let config = binary_config(cfg_dir.path(), &mnt.path().join("data"), &admin.url());
    let ex = child::Child::start(&config).await;
    let filler = fill_up(mnt.path());
    let (mut next_id, mut accepted) = (0, std::collections::BTreeSet::new());
    run_until_the_store_fails(&ex, &mut next_id, &mut accepted).await;

    ex.signal(nix::sys::signal::Signal::SIGTERM);
    let status = ex
        .exited_within(std::time::Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("SIGTERM did not end the process; log:\n{}", ex.log_text()));
    assert_eq!(status.code(), Some(75), "log:\n{}", ex.log_text());

    std::fs::remove_file(&filler).unwrap();
    let ex = child::Child::start(&config).await;
    next_id += 1;
    assert_eq!(ex.run(1, "demoJobHandler", next_id).await, Some(ok()));
    assert_eq!(admin.callback(next_id).await["handleCode"], 200);
    for id in accepted {
        admin.callback(id).await;
    }
}

/// `xxl-edge serve` expected to exit before it serves: its exit status and stderr (bounded).
async fn a_start_that_fails(config: &Path) -> std::process::Output {
    let start = Command::new(env!("CARGO_BIN_EXE_xxl-edge"))
        .args(["serve", "--config"])
        .arg(config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(start.id() as i32);
    let waited = tokio::task::spawn_blocking(move || start.wait_with_output().unwrap());
    match tokio::time::timeout(GUARD, waited).await {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            panic!("the start did not end");
        }
    }
}

/// Issue 8: a start on a full data directory exited 2 with the advice to move the store aside
/// and start empty (sled reports the full disk as a store it cannot open). It is a storage fault:
/// exit 75, the store untouched, and the start after the space returns recovers.
#[tokio::test]
async fn a_start_on_a_full_disk_is_a_storage_fault_not_a_damaged_store() {
    let mnt = tempfile::tempdir().unwrap();
    let _fs = Tmpfs::mount(mnt.path(), "32m").expect(
        "cannot mount a tmpfs here: this test needs root, as on the project's machines and CI",
    );
    let admin = FakeAdmin::start().await;
    let cfg_dir = tempfile::tempdir().unwrap();
    let config = binary_config(cfg_dir.path(), &mnt.path().join("data"), &admin.url());
    let ex = child::Child::start(&config).await;
    assert_eq!(ex.run(1, "demoJobHandler", 1).await, Some(ok()));
    admin.callback(1).await;
    assert_eq!(ex.sigterm().await.code(), Some(0));

    let filler = fill_up(mnt.path());
    let out = a_start_that_fails(&config).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{stderr}");
    assert!(
        stderr.contains("storage fault") && stderr.contains("No space left on device"),
        "{stderr}"
    );
    assert!(!stderr.contains("Move the directory aside"), "{stderr}");

    std::fs::remove_file(&filler).unwrap();
    let ex = child::Child::start(&config).await;
    assert_eq!(
        ex.run(1, "demoJobHandler", 1).await.unwrap()["msg"],
        "repeat trigger job, logId:1",
        "the journal is kept"
    );
    assert_eq!(ex.run(1, "demoJobHandler", 2).await, Some(ok()));
    admin.callback(2).await;
}

/// The same for a data directory mounted read-only (a tmpfs cannot be remounted read-only while
/// the executor holds files open for writing, so this is the start; a running executor meets it
/// as a failed write, as with the full disk above).
#[tokio::test]
async fn a_start_on_a_read_only_data_dir_is_a_storage_fault() {
    let mnt = tempfile::tempdir().unwrap();
    let _fs = Tmpfs::mount(mnt.path(), "32m").expect(
        "cannot mount a tmpfs here: this test needs root, as on the project's machines and CI",
    );
    let admin = FakeAdmin::start().await;
    let cfg_dir = tempfile::tempdir().unwrap();
    let config = binary_config(cfg_dir.path(), &mnt.path().join("data"), &admin.url());
    let ex = child::Child::start(&config).await;
    assert_eq!(ex.run(1, "demoJobHandler", 1).await, Some(ok()));
    admin.callback(1).await;
    assert_eq!(ex.sigterm().await.code(), Some(0));

    let remount = |mode: &str| {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(mnt.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "remount {mode}");
    };
    remount("ro");
    let out = a_start_that_fails(&config).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{stderr}");
    assert!(stderr.contains("Read-only file system"), "{stderr}");

    remount("rw");
    let ex = child::Child::start(&config).await;
    assert_eq!(ex.run(1, "demoJobHandler", 2).await, Some(ok()));
    admin.callback(2).await;
}
