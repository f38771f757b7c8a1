//! Integrity, with the real binary: a damaged store is refused (exit 2) with its files left as
//! they were, `xxl-edge state` never modifies the data directory, and a logId that retention
//! pruned from the journal is still refused as a repeat.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_xxl-edge");
/// The `logDateTime` the scenarios' triggers were first sent with.
const OLD_TIME: i64 = 1_717_171_717_000;

/// `xxl-edge serve` as a child process (`support::child`), with this file's triggers.
struct Proc(support::child::Child);

impl Proc {
    async fn start(config: &Path) -> Self {
        Self::start_checked(config, None).await
    }

    /// `tmpdir`: the TMPDIR of a start that is expected to check the store on a private copy
    /// first (files changed since the last clean stop).
    async fn start_checked(config: &Path, tmpdir: Option<&Path>) -> Self {
        let mut cmd = Command::new(BIN);
        if let Some(t) = tmpdir {
            cmd.env("TMPDIR", t);
        }
        cmd.args(["serve", "--log-json", "--config"]).arg(config);
        let child = support::child::Child::start_command(cmd).await;
        // A start after a clean stop or a crash never copies the store to check it: only
        // files changed while no executor ran are checked on a copy.
        if tmpdir.is_none() {
            let log = child.log_text();
            assert!(!log.contains("private copy"), "{log}");
        }
        Self(child)
    }

    async fn kill9(self) {
        self.0.kill9().await;
    }

    async fn sigterm(self) {
        let st = self.0.sigterm().await;
        assert!(st.success(), "serve stopped with {st:?}");
    }

    async fn run(&self, log_id: i64, log_date_time: i64) -> Value {
        self.0
            .post(
                "/run",
                json!({"jobId": 1, "executorHandler": "fast", "logId": log_id,
                       "logDateTime": log_date_time, "glueType": "BEAN",
                       "executorBlockStrategy": "SERIAL_EXECUTION"})
                .to_string(),
            )
            .await
            .unwrap()
    }
}

/// A data dir and a config; handler `fast` prints 20 kB (so a small store fills) and appends
/// its logId to `ran.txt`.
struct Site {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    config: PathBuf,
}

impl Site {
    fn new(admin_url: &str, store: &str) -> Self {
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
[handlers.fast]
command = ["sh", "-c", "head -c 20000 /dev/zero | tr '\\000' x; echo; echo $XXL_JOB_LOG_ID >> {d}/ran.txt"]
"#,
                head = child::config_head(admin_url, "integrity-test", &dir.join("data")),
            ),
        )
        .unwrap();
        Self {
            _tmp: tmp,
            dir,
            config,
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn ran(&self) -> Vec<i64> {
        std::fs::read_to_string(self.dir.join("ran.txt"))
            .unwrap_or_default()
            .lines()
            .map(|l| l.trim().parse().unwrap())
            .collect()
    }

    fn state(&self) -> Output {
        Command::new(BIN)
            .args(["state", "--data-dir"])
            .arg(self.data())
            .env("TMPDIR", self.dir.join("tmp"))
            .output()
            .unwrap()
    }

    fn serve_output(&self) -> Output {
        Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("TMPDIR", self.dir.join("tmp"))
            .output()
            .unwrap()
    }

    /// Flips the first byte of sled's log, as a bad block or a stray write would.
    fn damage(&self) {
        let db = self.data().join("store/db");
        let mut bytes = std::fs::read(&db).unwrap();
        bytes[0] ^= 0xff;
        std::fs::write(&db, bytes).unwrap();
    }
}

/// Every file under `dir`, with its bytes (a file that appears, vanishes or changes shows).
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut walk = vec![dir.to_path_buf()];
    while let Some(d) = walk.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk.push(p);
            } else if std::fs::symlink_metadata(&p)
                .unwrap()
                .file_type()
                .is_socket()
            {
                // The running executor's `state.sock`, left by `kill -9`: no bytes to read.
                out.insert(p.clone(), Vec::new());
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

fn assert_same(before: &BTreeMap<PathBuf, Vec<u8>>, after: &BTreeMap<PathBuf, Vec<u8>>) {
    let names = |m: &BTreeMap<PathBuf, Vec<u8>>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(before), names(after), "files appeared or vanished");
    for (p, b) in before {
        assert!(after[p] == *b, "{} changed", p.display());
    }
}

async fn runs(admin: &FakeAdmin, p: &Proc, ids: std::ops::RangeInclusive<i64>) {
    let last = *ids.end();
    for id in ids {
        assert_eq!(p.run(id, OLD_TIME).await["code"], 200, "logId {id}");
    }
    admin
        .wait_until("the callbacks", |a| a.delivered().contains_key(&last))
        .await;
}

/// Before: `state` after a crash opened sled on the data dir, whose recovery rewrote `db` and
/// made a snapshot file. Now it reads a private copy: not one byte of the data dir changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_after_kill_9_leaves_the_data_dir_byte_identical() {
    let admin = FakeAdmin::start().await;
    let site = Site::new(&admin.url(), "");
    let p = Proc::start(&site.config).await;
    runs(&admin, &p, 1..=10).await;
    p.kill9().await;
    std::fs::create_dir(site.dir.join("tmp")).unwrap();
    let before = files(&site.data());
    let out = site.state();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("runs in journal      10"), "{stdout}");
    assert_same(&before, &files(&site.data()));
    // The private copy is gone too.
    assert_eq!(std::fs::read_dir(site.dir.join("tmp")).unwrap().count(), 0);
    // And the executor still recovers from it.
    let p = Proc::start(&site.config).await;
    assert_eq!(p.run(5, OLD_TIME).await["code"], 500);
    p.sigterm().await;
}

/// Before: `serve` and `state` opened the damaged store as an empty one (exit 0, 0 runs) and
/// sled zeroed the log after the damage. Now both exit 2 with the README's advice, and after
/// a clean stop the files stay exactly as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_is_refused_and_left_untouched() {
    let admin = FakeAdmin::start().await;
    let site = Site::new(&admin.url(), "");
    let p = Proc::start(&site.config).await;
    runs(&admin, &p, 1..=10).await;
    p.sigterm().await;
    site.damage();
    std::fs::create_dir(site.dir.join("tmp")).unwrap();
    let before = files(&site.data());
    let out = site.serve_output();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("cannot be used") && err.contains(".broken"),
        "{err}"
    );
    assert_same(&before, &files(&site.data()));
    let out = site.state();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("cannot be used"), "{err}");
    assert_same(&before, &files(&site.data()));
    assert_eq!(std::fs::read_dir(site.dir.join("tmp")).unwrap().count(), 0);
}

/// After a crash the check runs once sled has recovered the files (no copy at every restart):
/// the damage is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_damaged_after_a_crash_is_refused() {
    let admin = FakeAdmin::start().await;
    let site = Site::new(&admin.url(), "");
    let p = Proc::start(&site.config).await;
    runs(&admin, &p, 1..=10).await;
    p.kill9().await;
    site.damage();
    let out = site.serve_output();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("cannot be used"), "{err}");
}

/// Before: with a small `store.max_bytes`, most old logIds sent again ran a second time. Now
/// the pruned watermark refuses them, also after a restart, while an admin whose database was
/// rebuilt (logId 1 again, with a current logDateTime) is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruned_log_ids_are_refused_and_a_rebuilt_admin_is_served() {
    let admin = FakeAdmin::start().await;
    let site = Site::new(&admin.url(), "max_bytes = 1048576");
    let p = Proc::start(&site.config).await;
    runs(&admin, &p, 1..=100).await;
    admin
        .wait_until("100 callbacks", |a| a.delivered().len() == 100)
        .await;
    // Retention runs every 5 s while over budget.
    p.0.wait_line("pruned", |v| v["message"] == "Pruned finished runs.")
        .await;
    for id in 1..=100 {
        let r = p.run(id, OLD_TIME).await;
        assert_eq!(r["code"], 500, "logId {id}: {r}");
        assert_eq!(r["msg"], format!("repeat trigger job, logId:{id}"));
    }
    assert_eq!(site.ran().len(), 100, "no old logId ran again");
    p.sigterm().await;

    let p = Proc::start(&site.config).await;
    for id in [1, 2, 3] {
        assert_eq!(p.run(id, OLD_TIME).await["code"], 500, "after a restart");
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert_eq!(p.run(1, now).await["code"], 200);
    admin
        .wait_until("the rebuilt admin's callback", |a| {
            a.callbacks_for(1).len() == 2
        })
        .await;
    assert_eq!(site.ran().len(), 101);
    p.sigterm().await;
}

/// A store whose files changed while no executor ran is checked on a private copy first; when
/// that copy cannot be made (TMPDIR missing or full: a small tmpfs on a device), it is checked
/// as it opens instead. Before, the failed copy made `serve` exit 2 with the advice to move the
/// (healthy) store aside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_be_copied_for_its_check_still_opens() {
    let admin = FakeAdmin::start().await;
    let site = Site::new(&admin.url(), "");
    let p = Proc::start(&site.config).await;
    runs(&admin, &p, 1..=3).await;
    p.sigterm().await;
    // Files "changed" since the clean stop (a restore from a backup would do that).
    let db = site.data().join("store/db");
    let f = std::fs::OpenOptions::new().append(true).open(&db).unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
        .unwrap();
    drop(f);
    let p = Proc::start_checked(&site.config, Some(&site.dir.join("no-such-dir"))).await;
    // The journal is all there: an old logId is a repeat.
    assert_eq!(p.run(2, OLD_TIME).await["code"], 500);
    assert_eq!(p.run(4, OLD_TIME).await["code"], 200);
    p.sigterm().await;
}
