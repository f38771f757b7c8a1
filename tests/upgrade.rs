//! Upgrades keep data: a data directory written by a previous release (the fixtures in
//! `tests/fixtures/`, made by that release's own store code, see their README) is read by this
//! one, and the work it held goes on: queued runs run, the interrupted one is called back as
//! such, waiting callbacks are delivered, the idempotency key holds, old logs are served.
//! - schema 1 (JSON records) is migrated to schema 2, then 3, then 4, at the first start;
//! - schema 2 as its first releases wrote it (run records in format 0x02, log chunks in format
//!   0x00) is migrated to schema 3: its waiting callbacks move from the outbox tree into their
//!   runs' records; its other records and chunks are read as they are, beside the records and
//!   chunks this release writes (0x03, 0x01). Then to 4, which rewrites nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use support::*;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/schema1-store.tar.gz"
);
const FIXTURE_V2_V0: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/schema2-v0-store.tar.gz"
);
const MIGRATED: &str = "Migrated the store from schema 1 to schema 2.";
const MIGRATED_3: &str = "Migrated the store from schema 2 to schema 3.";
const MIGRATED_4: &str = "Migrated the store from schema 3 to schema 4.";
const RESTARTED: &str = "xxl-edge restarted during the run: the executor stopped (crash, kill -9 or power loss) while this run was executing, so its result is unknown";

/// A temp dir holding `data/` (the fixture, extracted) and a config for the real binary.
struct Site {
    _tmp: tempfile::TempDir,
    data: PathBuf,
    config: PathBuf,
}

impl Site {
    /// `fixture`: the tarball of a `store/` directory.
    fn new(fixture: &str, admin_url: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let st = Command::new("tar")
            .arg("-xzf")
            .arg(fixture)
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

/// Each (logId, handleCode, handleMsg if given) was called back so.
async fn called_back(admin: &FakeAdmin, expect: &[(i64, i64, Option<&str>)]) {
    for &(id, code, msg) in expect {
        let cb = admin.callback(id).await;
        assert_eq!(cb["handleCode"], code, "logId {id}: {cb}");
        if let Some(msg) = msg {
            assert_eq!(cb["handleMsg"], msg, "logId {id}: {cb}");
        }
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

    /// The log line of the migration from schema 2 to 3.
    fn migrated_to_3(&self) -> Option<Value> {
        self.0.find_line(|v| v["message"] == MIGRATED_3)
    }

    /// The log line of the migration from schema 3 to 4.
    fn migrated_to_4(&self) -> Option<Value> {
        self.0.find_line(|v| v["message"] == MIGRATED_4)
    }

    async fn post(&self, path: &str, body: String) -> Value {
        self.0.post(path, body).await.unwrap()
    }

    /// A trigger (job, logId) keyed `order-42` is skipped because `holder` succeeded with that
    /// key before the upgrade; an old (job, logId) sent again is refused as a repeat.
    async fn old_key_and_log_id_hold(
        &self,
        admin: &FakeAdmin,
        (job, log_id, holder): (i32, i64, i64),
        (old_job, old_id): (i32, i64),
    ) {
        let r = self
            .post(
                "/run",
                json!({"jobId": job, "executorHandler": "keyedJobHandler", "executorParams": "42",
                       "logId": log_id, "logDateTime": 1717171717000i64, "glueType": "BEAN",
                       "executorBlockStrategy": "SERIAL_EXECUTION"})
                .to_string(),
            )
            .await;
        assert_eq!(r["code"], 200, "{r}");
        let cb = admin.callback(log_id).await;
        assert_eq!(cb["handleCode"], 200, "{cb}");
        assert_eq!(
            cb["handleMsg"],
            format!("skipped: idempotency key \"order-42\" matches logId:{holder}, which succeeded; nothing was run"),
            "{cb}"
        );
        let r = self
            .post(
                "/run",
                json!({"jobId": old_job, "executorHandler": "demoJobHandler", "logId": old_id,
                       "logDateTime": 1717171717000i64, "glueType": "BEAN"})
                .to_string(),
            )
            .await;
        assert_eq!(r["code"], 500, "{r}");
        assert_eq!(
            r["msg"],
            format!("repeat trigger job, logId:{old_id}"),
            "{r}"
        );
    }

    async fn log(&self, log_id: i64) -> String {
        self.0.log(log_id).await
    }

    /// The lines of a run's log (its first page: every log here is short).
    async fn log_lines(&self, log_id: i64) -> Vec<String> {
        self.log(log_id).await.lines().map(str::to_string).collect()
    }

    /// The log's lines once its last line satisfies `pred`. Polls (bounded by [`GUARD`]): the
    /// "callback finish" line is written right after the admin's answer, which the test cannot
    /// observe directly.
    async fn log_lines_until(&self, log_id: i64, pred: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + GUARD;
        loop {
            let lines = self.log_lines(log_id).await;
            if lines.last().is_some_and(|l| pred(l)) {
                return lines;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "log of {log_id} never got there:\n{}",
                lines.join("\n")
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    async fn sigterm(self) -> std::process::ExitStatus {
        self.0.sigterm().await
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

type RawTree = BTreeMap<Vec<u8>, Vec<u8>>;

/// A stopped store's trees, read with sled itself (in one open: sled lets go of its lock
/// only some time after a close).
fn raw_trees(data: &Path) -> BTreeMap<&'static str, RawTree> {
    let db = sled::open(data.join("store")).unwrap();
    ["runs", "outbox", "keys", "logs", "meta", "acks"]
        .into_iter()
        .map(|name| {
            let t = db.open_tree(name).unwrap();
            let kv = t
                .iter()
                .map(|kv| {
                    let (k, v) = kv.unwrap();
                    (k.to_vec(), v.to_vec())
                })
                .collect();
            (name, kv)
        })
        .collect()
}

/// The logId of a `runs` or `logs` key (big-endian, sign bit flipped).
fn key_log_id(k: &[u8]) -> i64 {
    (u64::from_be_bytes(k[..8].try_into().unwrap()) ^ (1 << 63)) as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_1_store_is_migrated_and_its_work_goes_on() {
    let admin = FakeAdmin::start().await;
    let site = Site::new(FIXTURE, &admin.url());
    assert_eq!(schema_and_formats(&site.data).0, 1u64.to_be_bytes());

    let p = Proc::start(&site.config).await;
    let m = p.migrated().expect("the migration's log line");
    assert_eq!(m["runs"], 9, "{m}");
    assert_eq!(m["outbox"], 3, "{m}");
    assert_eq!(m["keys"], 1, "{m}");
    assert!(m["elapsed_ms"].is_u64(), "{m}");
    // Then on to schema 3: the three waiting callbacks move into their runs' records.
    let m = p.migrated_to_3().expect("the second migration's log line");
    assert_eq!(m["callbacks"], 3, "{m}");
    assert!(p.migrated_to_4().is_some(), "{}", p.0.log_text());

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
    called_back(&admin, &expect).await;

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

    // The idempotency key of logId 108 (succeeded before the upgrade) still holds, and old
    // logIds are still known.
    p.old_key_and_log_id_hold(&admin, (6, 200, 108), (5, 107))
        .await;

    admin
        .wait_until("every callback delivered", |a| a.delivered().len() == 8)
        .await;
    let delivered = admin.delivered();
    assert!(delivered.values().all(|v| v.len() == 1), "{delivered:?}");
    assert!(!delivered.contains_key(&107) && !delivered.contains_key(&108));
    assert!(p.sigterm().await.success());

    // Stopped: the store is schema 4 through and through, and `state` reads it.
    let (schema, formats) = schema_and_formats(&site.data);
    assert_eq!(schema, 4u64.to_be_bytes());
    assert_eq!(formats.len(), 10 + 1, "10 runs and one key, no outbox left");
    // Runs name their handler by number (0x03), the key record is plain schema 2 (0x02).
    assert_eq!(formats[..10], [0x03; 10], "{formats:?}");
    assert_eq!(formats[10], 0x02, "{formats:?}");
    let (code, out) = site.state();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("runs in journal      10"), "{out}");
    assert!(out.contains("reported           10"), "{out}");
    assert!(out.contains("outbox backlog       0"), "{out}");

    // A second start has nothing to migrate and nothing to redo.
    let p = Proc::start(&site.config).await;
    assert!(p.migrated().is_none(), "{}", p.0.log_text());
    assert!(p.migrated_to_3().is_none(), "{}", p.0.log_text());
    assert!(p.log(110).await.contains("params bytes: 70000"));
    assert!(p.sigterm().await.success());
    assert_eq!(admin.delivered().len(), 8);
}

// The schema-2 fixture's content (see tests/fixtures/README.md): its reference lines as
// runlog.rs wrote them, byte for byte.
const CALLBACK_FINISH: &str = " [xxl-edge] <br>----------- xxl-job job callback finish.";
const CHECKED_ON_A_COPY: &str =
    "The store's files changed since the last clean stop; checking it on a private copy first.";

fn start_line(params: &str) -> String {
    format!("2024-05-31 16:08:38 [xxl-edge] <br>----------- xxl-job job execute start -----------<br>----------- Param:{params}")
}

fn end_line(code: i32, msg: &str) -> String {
    format!("2024-05-31 16:08:39 [xxl-edge] <br>----------- xxl-job job execute end(finish) -----------<br>----------- Result: handleCode={code}, handleMsg = {msg}")
}

/// The log of each run of the fixture as the previous release wrote it (chunks in format
/// 0x00, with handler output that format escapes).
fn v0_logs() -> Vec<(i64, Vec<String>)> {
    let finish = format!("2024-05-31 16:08:40{CALLBACK_FINISH}");
    vec![
        (203, vec![start_line("null"), "tick 1 before the upgrade".into()]),
        (
            204,
            vec![
                "2024-05-31 16:08:38 [xxl-edge] <br>----------- xxl-edge trace_id=0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331".into(),
                start_line("p"),
                "\u{1b}[32mgreen output of 204\u{1b}[0m".into(),
                end_line(200, "null"),
            ],
        ),
        (
            205,
            vec![
                start_line("p"),
                "out of 205: \u{1}\u{11}\u{1e}\u{1f} é 中, handleMsg = not a phrase end".into(),
                end_line(500, "boom from schema 2 v0"),
            ],
        ),
        (
            206,
            vec![
                start_line("p"),
                "2024-05-31 16:08:38 a handler line with its own time".into(),
                end_line(200, "done with a message"),
            ],
        ),
        (
            207,
            vec![
                start_line("null"),
                "XXL-JOB, Hello World.".into(),
                end_line(200, "null"),
                finish.clone(),
            ],
        ),
        (
            208,
            vec![
                start_line("42"),
                "keyed run output".into(),
                end_line(200, "null"),
                finish,
            ],
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_2_store_of_the_first_formats_is_read_and_its_work_goes_on() {
    // The fixture as the previous release left it, read raw on a copy of its own (opening it
    // with sled would change the files the executor's open compares with the anchor).
    let pristine = Site::new(FIXTURE_V2_V0, "http://127.0.0.1:9/xxl-job-admin");
    let mut old = raw_trees(&pristine.data);
    let (old_runs, old_logs, old_keys, old_meta) = (
        old.remove("runs").unwrap(),
        old.remove("logs").unwrap(),
        old.remove("keys").unwrap(),
        old.remove("meta").unwrap(),
    );
    assert_eq!(old_meta[&b"schema"[..]], 2u64.to_be_bytes());
    assert!(!old_meta.contains_key(&b"handler_names"[..]));
    assert_eq!(old_runs.len(), 9);
    assert!(old_runs.values().all(|v| v[0] == 0x02), "{old_runs:?}");
    assert_eq!(old_logs.len(), 8);
    assert!(old_logs.values().all(|v| v[0] == 0x00), "{old_logs:?}");
    assert_eq!(old["outbox"].len(), 3);
    assert_eq!(old_keys.len(), 1);

    let admin = FakeAdmin::start().await;
    let site = Site::new(FIXTURE_V2_V0, &admin.url());
    let p = Proc::start(&site.config).await;
    // Schema 2: its three waiting callbacks move into their runs' records; the previous
    // release's clean stop is recognised (its anchor matches the files, so no check on a copy).
    assert!(p.migrated().is_none(), "{}", p.0.log_text());
    let m = p.migrated_to_3().expect("the migration's log line");
    assert_eq!(m["callbacks"], 3, "{m}");
    assert!(p.migrated_to_4().is_some(), "{}", p.0.log_text());
    assert!(
        p.0.find_line(|v| v["message"] == CHECKED_ON_A_COPY)
            .is_none(),
        "the fixture's anchor should match its files (extracted with their mtimes):\n{}",
        p.0.log_text()
    );

    // Queued (two small, one large), interrupted, and the three waiting callbacks.
    let expect: [(i64, i64, Option<&str>); 7] = [
        (201, 200, None),
        (202, 200, None),
        (203, 500, Some(RESTARTED)),
        (204, 200, None),
        (205, 500, Some("boom from schema 2 v0")),
        (206, 200, Some("done with a message")),
        (210, 200, None),
    ];
    called_back(&admin, &expect).await;

    // The old logs, line for line, then what this release appended to them (format 0x01
    // chunks after format 0x00 ones): the restart note, and "callback finish" once the
    // waiting callback is delivered.
    for (id, old) in v0_logs() {
        let lines = if matches!(id, 207 | 208) {
            p.log_lines(id).await
        } else {
            p.log_lines_until(id, |l| l.ends_with(CALLBACK_FINISH))
                .await
        };
        assert_eq!(lines[..old.len().min(lines.len())], old[..], "logId {id}");
        let new = &lines[old.len()..];
        let is_finish =
            |l: &String| l.len() == 19 + CALLBACK_FINISH.len() && l.ends_with(CALLBACK_FINISH);
        match id {
            203 => {
                assert_eq!(new.len(), 2, "logId 203: {lines:#?}");
                assert!(
                    new[0].ends_with(&format!(" [xxl-edge] <br>----------- {RESTARTED}")),
                    "{lines:#?}"
                );
                assert!(is_finish(&new[1]), "{lines:#?}");
            }
            207 | 208 => assert!(new.is_empty(), "logId {id}: {lines:#?}"),
            _ => assert!(
                new.len() == 1 && is_finish(&new[0]),
                "logId {id}: {lines:#?}"
            ),
        }
    }
    // The queued runs ran with their triggers as the old records held them.
    let log201 = p
        .log_lines_until(201, |l| l.ends_with(CALLBACK_FINISH))
        .await;
    assert!(log201[0].ends_with("Param:queued one"), "{log201:#?}");
    assert!(
        log201
            .iter()
            .any(|l| l.ends_with(" [xxl-edge] XXL-JOB, Hello World.")),
        "{log201:#?}"
    );
    let log202 = p.log(202).await;
    assert!(log202.contains("\nglue from schema 2 v0\n"), "{log202}");
    let log210 = p.log(210).await;
    assert!(log210.contains("\nparams bytes: 70000\n"), "{log210}");
    assert!(log210.contains("\n000006999\n"), "{log210}");

    // The idempotency key of logId 208 (succeeded before the upgrade) still holds, and old
    // logIds are still known.
    p.old_key_and_log_id_hold(&admin, (18, 220, 208), (17, 207))
        .await;
    // A new run after the upgrade.
    let r = p.0.run(21, "demoJobHandler", 221).await.unwrap();
    assert_eq!(r["code"], 200, "{r}");
    assert_eq!(admin.callback(221).await["handleCode"], 200);
    let log221 = p
        .log_lines_until(221, |l| l.ends_with(CALLBACK_FINISH))
        .await;
    assert!(log221[0].ends_with("Param:null"), "{log221:#?}");

    admin
        .wait_until("every callback delivered", |a| a.delivered().len() == 9)
        .await;
    let delivered = admin.delivered();
    assert!(delivered.values().all(|v| v.len() == 1), "{delivered:?}");
    assert!(!delivered.contains_key(&207) && !delivered.contains_key(&208));
    // Every log as served now, each ended by its "callback finish".
    let mut served = BTreeMap::new();
    for id in [201, 202, 203, 204, 205, 206, 207, 208, 210, 221] {
        let lines = p
            .log_lines_until(id, |l| l.ends_with(CALLBACK_FINISH))
            .await;
        served.insert(id, lines);
    }
    // Nothing in the old formats made the executor complain (the interrupted run's failure
    // is the one warning).
    let complaint = p.0.find_line(|v| {
        v["level"] == "ERROR"
            || (v["level"] == "WARN" && !(v["message"] == "Run failed." && v["log_id"] == 203))
    });
    assert!(complaint.is_none(), "{}", p.0.log_text());
    assert!(p.sigterm().await.success());

    // Stopped: schema 4. What this release wrote is in its formats, beside what it left as
    // the old one wrote it.
    let now = raw_trees(&site.data);
    let meta = &now["meta"];
    assert_eq!(meta[&b"schema"[..]], 4u64.to_be_bytes());
    assert!(meta.contains_key(&b"handler_names"[..]), "{meta:?}");
    let runs: BTreeMap<i64, u8> = now["runs"]
        .iter()
        .map(|(k, v)| (key_log_id(k), v[0]))
        .collect();
    // Every run record this release wrote is in 0x03: the runs it ran (queued, interrupted),
    // the new ones, and those whose callback the migration moved into their record. Those
    // reported before the upgrade keep their 0x02 records, and `state` below still counts
    // them reported.
    let want: BTreeMap<i64, u8> = [201, 202, 203, 204, 205, 206, 207, 208, 210, 220, 221]
        .into_iter()
        .map(|id| {
            (
                id,
                if (207..=208).contains(&id) {
                    0x02
                } else {
                    0x03
                },
            )
        })
        .collect();
    assert_eq!(runs, want);
    let logs = &now["logs"];
    for (k, v) in &old_logs {
        assert_eq!(
            logs.get(k),
            Some(v),
            "an old chunk of logId {} changed",
            key_log_id(k)
        );
    }
    let new_chunks: BTreeMap<i64, Vec<u8>> = logs
        .iter()
        .filter(|(k, _)| !old_logs.contains_key(*k))
        .fold(BTreeMap::new(), |mut m, (k, v)| {
            m.entry(key_log_id(k)).or_insert_with(Vec::new).push(v[0]);
            m
        });
    // Chunks of their own: 203's restart note, the large trigger's long output (210) and the
    // skipped duplicate's line (220). The short runs that ran after the upgrade (201, 202,
    // 221) keep their lines in their finished records, and 204 to 206 only got their
    // "callback finish", which is kept with the acknowledgements.
    assert_eq!(
        new_chunks.keys().copied().collect::<Vec<_>>(),
        [203, 210, 220],
        "{new_chunks:?}"
    );
    assert!(!now["acks"].is_empty());
    assert!(
        new_chunks.values().flatten().all(|&f| f == 0x01),
        "{new_chunks:?}"
    );
    assert!(now["outbox"].is_empty());
    assert_eq!(now["keys"], old_keys);
    drop(now);
    let (code, out) = site.state();
    assert_eq!(code, 0, "{out}");
    for line in [
        "runs in journal      11",
        "reported           11",
        "outbox backlog       0",
    ] {
        assert!(out.contains(line), "{line:?} not in:\n{out}");
    }

    // A second start has nothing to redo and serves the mixed logs as the first did.
    let p = Proc::start(&site.config).await;
    assert!(p.migrated_to_3().is_none(), "{}", p.0.log_text());
    assert!(p.migrated_to_4().is_none(), "{}", p.0.log_text());
    for (id, lines) in served {
        assert_eq!(p.log_lines(id).await, lines, "logId {id}");
    }
    assert!(p.sigterm().await.success());
    assert_eq!(admin.delivered().len(), 9);
}

/// `xxl-edge state` reads both fixtures as it finds them (a schema-1 store, a schema-2 store of
/// the first formats), counts and all: the two hold the same mix of runs.
#[tokio::test]
async fn state_reads_the_old_stores() {
    for fixture in [FIXTURE, FIXTURE_V2_V0] {
        let site = Site::new(fixture, "http://127.0.0.1:9/xxl-job-admin");
        let (code, out) = site.state();
        assert_eq!(code, 0, "{fixture}: {out}");
        for line in [
            "runs in journal      9",
            "queued (accepted)  3",
            "running            1",
            "finished           3",
            "reported           2",
            "outbox backlog       3",
        ] {
            assert!(out.contains(line), "{fixture}: {line:?} not in:\n{out}");
        }
    }
}
