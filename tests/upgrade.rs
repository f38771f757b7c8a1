//! Upgrading from schema 1: a data directory written by the previous release (the fixture in
//! `tests/fixtures/`, made by that release's own store code, see its README) is migrated at the
//! first start of this one, and the work it held goes on: queued runs run, the interrupted one
//! is called back as such, waiting callbacks are delivered, the idempotency key holds, old logs
//! are served.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use support::*;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/schema1-store.tar.gz"
);
const MIGRATED: &str = "Migrated the store from schema 1 to schema 2.";
const RESTARTED: &str = "xxl-edge restarted during the run: the executor stopped (crash, kill -9 or power loss) while this run was executing, so its result is unknown";

/// A temp dir holding `data/` (the fixture, extracted) and a config for the real binary.
struct Site {
    _tmp: tempfile::TempDir,
    data: PathBuf,
    config: PathBuf,
}

impl Site {
    fn new(admin_url: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let st = Command::new("tar")
            .arg("-xzf")
            .arg(FIXTURE)
            .arg("-C")
            .arg(&data)
            .status()
            .unwrap();
        assert!(st.success(), "tar failed");
        let config = tmp.path().join("xxl-edge.toml");
        std::fs::write(
            &config,
            format!(
                r#"{head}log_retention_days = 0
[runner]
kill_grace_secs = 0.5
shutdown_grace_secs = 1
[store]
min_free_bytes = 0
[glue]
enabled = ["shell"]
[handlers.keyedJobHandler]
command = ["sh", "-c", "echo keyed ran"]
idempotency_key = "order-{{params}}"
idempotency_ttl_secs = 86400
[handlers.lenJobHandler]
command = ["sh", "-c", "echo \"params bytes: $(wc -c < \"$XXL_JOB_PARAM_FILE\")\"; tail -n 1 \"$XXL_JOB_PARAM_FILE\""]
"#,
                head = child::config_head(admin_url, "upgrade-test", &data),
            ),
        )
        .unwrap();
        Self {
            _tmp: tmp,
            data,
            config,
        }
    }

    /// `xxl-edge state` on the data dir: its exit code and output.
    fn state(&self) -> (i32, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_xxl-edge"))
            .args(["state", "--data-dir"])
            .arg(&self.data)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }
}

/// The executor binary as a child process (`support::child`).
struct Proc(support::child::Child);

impl Proc {
    async fn start(config: &Path) -> Self {
        Self(support::child::Child::start(config).await)
    }

    /// The migration's log line (written before "started").
    fn migrated(&self) -> Option<Value> {
        self.0.find_line(|v| v["message"] == MIGRATED)
    }

    async fn post(&self, path: &str, body: String) -> Value {
        self.0.post(path, body).await.unwrap()
    }

    async fn log(&self, log_id: i64) -> String {
        let r = self
            .post(
                "/log",
                format!(r#"{{"logId":{log_id},"logDateTim":0,"fromLineNum":1}}"#),
            )
            .await;
        r["data"]["logContent"].as_str().unwrap_or("").to_string()
    }

    async fn sigterm(self) -> std::process::ExitStatus {
        self.0.signal(nix::sys::signal::Signal::SIGTERM);
        self.0.exited_within(GUARD).await.expect("serve stopped")
    }
}

/// Reads the stopped store's meta schema and the first byte of every record, with sled itself.
fn schema_and_formats(data: &Path) -> (Vec<u8>, Vec<u8>) {
    let db = sled::open(data.join("store")).unwrap();
    let schema = db
        .open_tree("meta")
        .unwrap()
        .get("schema")
        .unwrap()
        .unwrap()
        .to_vec();
    let mut formats = Vec::new();
    for t in ["runs", "outbox", "keys"] {
        for item in db.open_tree(t).unwrap().iter() {
            formats.push(item.unwrap().1[0]);
        }
    }
    (schema, formats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_1_store_is_migrated_and_its_work_goes_on() {
    let admin = FakeAdmin::start().await;
    let site = Site::new(&admin.url());
    assert_eq!(schema_and_formats(&site.data).0, 1u64.to_be_bytes());

    let p = Proc::start(&site.config).await;
    let m = p.migrated().expect("the migration's log line");
    assert_eq!(m["runs"], 9, "{m}");
    assert_eq!(m["outbox"], 3, "{m}");
    assert_eq!(m["keys"], 1, "{m}");
    assert!(m["elapsed_ms"].is_u64(), "{m}");

    // Queued (two small, one large), interrupted, and the three waiting callbacks; the two
    // runs reported before the upgrade are not called back again.
    let expect: [(i64, i64, Option<&str>); 7] = [
        (101, 200, None),
        (102, 200, None),
        (103, 500, Some(RESTARTED)),
        (104, 200, None),
        (105, 500, Some("boom from schema 1")),
        (106, 200, Some("done with a message")),
        (110, 200, None),
    ];
    for (id, code, msg) in expect {
        let cb = admin.callback(id).await;
        assert_eq!(cb["handleCode"], code, "logId {id}: {cb}");
        if let Some(msg) = msg {
            assert_eq!(cb["handleMsg"], msg, "logId {id}: {cb}");
        }
    }

    // Logs written by the old release are served, and the runs' new lines after them.
    let log103 = p.log(103).await;
    assert!(log103.contains("tick 1 before the upgrade"), "{log103}");
    assert!(log103.contains(RESTARTED), "{log103}");
    for (id, needle) in [
        (104, "old line 2 of 104"),
        (107, "XXL-JOB, Hello World."),
        (108, "keyed run output"),
        (101, "XXL-JOB, Hello World."),
        (102, "glue from schema 1"),
        // The large trigger ran with its params from the schema-1 file.
        (110, "params bytes: 70000"),
        (110, "000006999"),
    ] {
        let log = p.log(id).await;
        assert!(log.contains(needle), "logId {id} lacks {needle:?}:\n{log}");
    }

    // The idempotency key of logId 108 (succeeded before the upgrade) still holds.
    let r = p
        .post(
            "/run",
            json!({"jobId": 6, "executorHandler": "keyedJobHandler", "executorParams": "42",
                   "logId": 200, "logDateTime": 1717171717000i64, "glueType": "BEAN",
                   "executorBlockStrategy": "SERIAL_EXECUTION"})
            .to_string(),
        )
        .await;
    assert_eq!(r["code"], 200, "{r}");
    let cb = admin.callback(200).await;
    assert_eq!(cb["handleCode"], 200, "{cb}");
    assert_eq!(
        cb["handleMsg"],
        "skipped: idempotency key \"order-42\" matches logId:108, which succeeded; nothing was run",
        "{cb}"
    );
    // Old logIds are still known: sent again, they are refused.
    let r = p
        .post(
            "/run",
            json!({"jobId": 5, "executorHandler": "demoJobHandler", "logId": 107,
                   "logDateTime": 1717171717000i64, "glueType": "BEAN"})
            .to_string(),
        )
        .await;
    assert_eq!(r["code"], 500, "{r}");
    assert_eq!(r["msg"], "repeat trigger job, logId:107", "{r}");

    admin
        .wait_until("every callback delivered", |a| a.delivered().len() == 8)
        .await;
    let delivered = admin.delivered();
    assert!(delivered.values().all(|v| v.len() == 1), "{delivered:?}");
    assert!(!delivered.contains_key(&107) && !delivered.contains_key(&108));
    assert!(p.sigterm().await.success());

    // Stopped: the store is schema 2 through and through, and `state` reads it.
    let (schema, formats) = schema_and_formats(&site.data);
    assert_eq!(schema, 2u64.to_be_bytes());
    assert_eq!(formats.len(), 10 + 1, "10 runs and one key, no outbox left");
    // Run records name their handler by number (format 0x03); the key stays 0x02.
    assert!(formats[..10].iter().all(|&f| f == 0x03), "{formats:?}");
    assert_eq!(formats[10], 0x02, "{formats:?}");
    let (code, out) = site.state();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("runs in journal      10"), "{out}");
    assert!(out.contains("reported           10"), "{out}");
    assert!(out.contains("outbox backlog       0"), "{out}");

    // A second start has nothing to migrate and nothing to redo.
    let p = Proc::start(&site.config).await;
    assert!(p.migrated().is_none(), "{}", p.0.log_text());
    assert!(p.log(110).await.contains("params bytes: 70000"));
    assert!(p.sigterm().await.success());
    assert_eq!(admin.delivered().len(), 8);
}

/// `xxl-edge state` reads a schema-1 store as it finds it, counts and all.
#[tokio::test]
async fn state_reads_a_schema_1_store() {
    let site = Site::new("http://127.0.0.1:9/xxl-job-admin");
    let (code, out) = site.state();
    assert_eq!(code, 0, "{out}");
    for line in [
        "runs in journal      9",
        "queued (accepted)  3",
        "running            1",
        "finished           3",
        "reported           2",
        "outbox backlog       3",
    ] {
        assert!(out.contains(line), "{line:?} not in:\n{out}");
    }
}
