//! Child-process handlers end to end: how a trigger's params reach a configured command and a
//! GLUE script (placeholders, `XXL_JOB_PARAM`, the params file), through a real executor, a fake
//! admin and real child processes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::json;
use support::*;

/// 1 MiB: eight times what Linux takes in one argv or environment string.
const LARGE: usize = 1024 * 1024;

/// The largest params that still travel in `XXL_JOB_PARAM` (and a GLUE script's `$1`):
/// `XXL_JOB_PARAM=<value>` plus its NUL is exactly Linux's `MAX_ARG_STRLEN` (128 KiB).
const INLINE_MAX: usize = 128 * 1024 - "XXL_JOB_PARAM=".len() - 1;

/// Params of `n` bytes that are not all one character (so a cut would show).
fn params_of(n: usize) -> String {
    "0123456789abcdef".chars().cycle().take(n).collect()
}

/// The lines of a run log that a command printed with the `out:` marker.
fn marked(log: &str) -> Vec<&str> {
    log.lines().filter_map(|l| l.strip_prefix("out:")).collect()
}

#[tokio::test]
async fn params_that_look_like_placeholders_reach_argv_unexpanded() {
    let extra = r#"
[handlers.echo]
command = ["sh", "-c", "echo \"out:[$0] $1\"", "{params}", "{shardIndex}/{shardTotal}"]
"#;
    let (admin, ex, _p, _d) = setup(extra).await;
    for (log_id, params) in [
        (1, "{shardIndex}"),
        (2, "{params}{jobId}"),
        (3, "{{logId}}"),
    ] {
        assert_eq!(
            ex.run(
                9,
                "echo",
                log_id,
                json!({"executorParams": params, "broadcastIndex": 3, "broadcastTotal": 4})
            )
            .await,
            ok()
        );
        assert_eq!(admin.callback(log_id).await["handleCode"], 200);
        let log = ex.log_text(log_id).await;
        assert_eq!(marked(&log), vec![format!("[{params}] 3/4")], "{log}");
    }
    ex.shutdown().await;
}

#[tokio::test]
async fn an_idempotency_key_of_placeholder_params_is_its_own_key() {
    // Before the one-pass expansion, params `{shardIndex}` rendered the key `k:0`, the key of
    // params `0`: the second run was skipped as a duplicate of the first.
    let extra = r#"
[handlers.once]
command = ["sh", "-c", "echo \"out:ran $XXL_JOB_PARAM\""]
idempotency_key = "k:{params}"
idempotency_ttl_secs = 600
"#;
    let (admin, ex, _p, _d) = setup(extra).await;
    assert_eq!(
        ex.run(5, "once", 51, json!({"executorParams": "0"})).await,
        ok()
    );
    assert_eq!(admin.callback(51).await["handleCode"], 200);
    assert_eq!(
        ex.run(5, "once", 52, json!({"executorParams": "{shardIndex}"}))
            .await,
        ok()
    );
    let c = admin.callback(52).await;
    assert_eq!(c["handleCode"], 200);
    assert!(
        !c["handleMsg"].as_str().unwrap_or("").contains("skipped"),
        "{c}"
    );
    let log = ex.log_text(52).await;
    assert_eq!(marked(&log), vec!["ran {shardIndex}"], "{log}");
    // The same params again is a duplicate: the key still works as a key.
    assert_eq!(
        ex.run(5, "once", 53, json!({"executorParams": "{shardIndex}"}))
            .await,
        ok()
    );
    let c = admin.callback(53).await;
    assert!(
        c["handleMsg"]
            .as_str()
            .unwrap()
            .contains("matches logId:52"),
        "{c}"
    );
    ex.shutdown().await;
}

/// Prints what a child got: the params file's size, mode and directory mode, the size of
/// `XXL_JOB_PARAM`, the truncation flag, and the file's path (to check it is removed).
const REPORT: &str = r#"f="$XXL_JOB_PARAM_FILE"; echo "out:file=$(wc -c < "$f") mode=$(stat -c %a "$f") dir=$(stat -c %a "$(dirname "$f")") env=${#XXL_JOB_PARAM} truncated=$XXL_JOB_PARAM_TRUNCATED"; echo "out:same=$(printf %s "$XXL_JOB_PARAM" | cmp -s - "$f" && echo yes || echo no)"; echo "out:path=$f""#;

fn report_command() -> String {
    format!(
        "[handlers.report]\ncommand = [\"sh\", \"-c\", {}]\n",
        toml_string(REPORT)
    )
}

fn toml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// Runs `report` with params of `n` bytes and returns its `out:` lines.
async fn report_for(
    admin: &FakeAdmin,
    ex: &TestExecutor,
    log_id: i64,
    params: &str,
) -> Vec<String> {
    assert_eq!(
        ex.run(7, "report", log_id, json!({"executorParams": params}))
            .await,
        ok()
    );
    let c = admin.callback(log_id).await;
    assert_eq!(c["handleCode"], 200, "{c}");
    let log = ex.log_text(log_id).await;
    marked(&log).into_iter().map(str::to_string).collect()
}

fn path_line_gone(lines: &[String]) {
    let path = lines
        .iter()
        .find_map(|l| l.strip_prefix("path="))
        .expect("the command printed the file's path");
    assert!(path.contains("xxl-edge-"), "{path}");
    let p = std::path::Path::new(path);
    assert!(!p.exists(), "params file left behind: {path}");
    assert!(!p.parent().unwrap().exists(), "params dir left behind");
}

#[tokio::test]
async fn a_command_gets_large_params_in_a_private_file() {
    let (admin, ex, _p, _d) = setup(&report_command()).await;

    // Small params: everywhere, and the file holds the same bytes.
    let lines = report_for(&admin, &ex, 71, "p q").await;
    assert_eq!(lines[0], "file=3 mode=600 dir=700 env=3 truncated=0");
    assert_eq!(lines[1], "same=yes");
    path_line_gone(&lines);

    // The largest params that fit in XXL_JOB_PARAM still start the command with them in it.
    let lines = report_for(&admin, &ex, 72, &params_of(INLINE_MAX)).await;
    assert_eq!(
        lines[0],
        format!("file={INLINE_MAX} mode=600 dir=700 env={INLINE_MAX} truncated=0")
    );
    assert_eq!(lines[1], "same=yes");

    // One byte more, and 1 MiB: the command starts (it used to fail with `Argument list too
    // long`), XXL_JOB_PARAM is empty and flagged, the file has every byte.
    for (log_id, n) in [(73, INLINE_MAX + 1), (74, LARGE)] {
        let params = params_of(n);
        let lines = report_for(&admin, &ex, log_id, &params).await;
        assert_eq!(
            lines[0],
            format!("file={n} mode=600 dir=700 env=0 truncated=1")
        );
        path_line_gone(&lines);
        let log = ex.log_text(log_id).await;
        assert!(
            log.contains(&format!(
                "params are {n} bytes, more than fit in one argument or environment variable"
            )),
            "the run log says where the params went"
        );
    }
    ex.shutdown().await;
}

#[tokio::test]
async fn a_command_reads_one_mib_of_params_from_the_file() {
    let extra = r#"
[handlers.count]
command = ["sh", "-c", "echo \"out:$(wc -c < \"$XXL_JOB_PARAM_FILE\") $(md5sum < \"$XXL_JOB_PARAM_FILE\" | cut -c1-32)\""]
"#;
    let (admin, ex, _p, _d) = setup(extra).await;
    let params = params_of(LARGE);
    assert_eq!(
        ex.run(8, "count", 81, json!({"executorParams": params}))
            .await,
        ok()
    );
    assert_eq!(admin.callback(81).await["handleCode"], 200);
    let log = ex.log_text(81).await;
    // The reference digest, by the same tool, of the params as the test wrote them.
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("p");
    std::fs::write(&f, &params).unwrap();
    let o = std::process::Command::new("sh")
        .args(["-c", "md5sum < \"$0\" | cut -c1-32"])
        .arg(&f)
        .output()
        .unwrap();
    let digest = String::from_utf8(o.stdout).unwrap();
    assert_eq!(
        marked(&log),
        vec![format!("{LARGE} {}", digest.trim())],
        "{}",
        &log[log.len().saturating_sub(2000)..]
    );
    ex.shutdown().await;
}

#[tokio::test]
async fn large_params_in_a_configured_argv_fail_the_run_naming_the_fix() {
    let extra = r#"
[handlers.argv]
command = ["sh", "-c", "echo \"out:started\"", "{params}"]
"#;
    let (admin, ex, _p, _d) = setup(extra).await;
    assert_eq!(
        ex.run(9, "argv", 91, json!({"executorParams": params_of(LARGE)}))
            .await,
        ok()
    );
    let c = admin.callback(91).await;
    assert_eq!(c["handleCode"], 500);
    let msg = c["handleMsg"].as_str().unwrap();
    assert!(
        msg.contains(&format!("params are {LARGE} bytes")) && msg.contains("XXL_JOB_PARAM_FILE"),
        "{msg}"
    );
    assert!(!msg.contains("Argument list too long"), "{msg}");
    let log = ex.log_text(91).await;
    assert!(marked(&log).is_empty(), "the command must not start");
    // Small params through the same argv still work.
    assert_eq!(
        ex.run(9, "argv", 92, json!({"executorParams": "x"})).await,
        ok()
    );
    assert_eq!(admin.callback(92).await["handleCode"], 200);
    ex.shutdown().await;
}

#[tokio::test]
async fn a_glue_script_gets_large_params_in_the_file_and_an_empty_argument() {
    let (admin, ex, _p, _d) = setup("[glue]\nenabled = [\"shell\"]\n").await;
    let src = "#!/bin/bash\necho \"out:arg=${#1} file=$(wc -c < \"$XXL_JOB_PARAM_FILE\") env=${#XXL_JOB_PARAM} truncated=$XXL_JOB_PARAM_TRUNCATED shard=$2/$3\"\n";
    let glue = |log_id: i64, params: &str| {
        json!({"glueType":"GLUE_SHELL","glueSource":src,"glueUpdatetime":1700000000000i64,
               "executorParams":params,"broadcastIndex":1,"broadcastTotal":2,"logId":log_id})
    };
    for (log_id, n, inline) in [(101, 5, true), (102, INLINE_MAX, true), (103, LARGE, false)] {
        assert_eq!(
            ex.run(10, "", log_id, glue(log_id, &params_of(n))).await,
            ok()
        );
        let c = admin.callback(log_id).await;
        assert_eq!(c["handleCode"], 200, "{c}");
        let log = ex.log_text(log_id).await;
        let (arg, t) = if inline { (n, 0) } else { (0, 1) };
        assert_eq!(
            marked(&log),
            vec![format!(
                "arg={arg} file={n} env={arg} truncated={t} shard=1/2"
            )],
            "{}",
            &log[log.len().saturating_sub(2000)..]
        );
    }
    ex.shutdown().await;
}
