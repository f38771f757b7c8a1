//! The conformance vectors of protocol.md §7 (T01–T31, R1–R4) against a real server on port 0
//! and a fake admin, compared as parsed JSON.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{json, Value};
use support::*;

#[tokio::test]
async fn t01_to_t08_transport_checks() {
    let (_admin, ex, _p, _d) = setup("").await;
    // T01, T02: body "", empty body, and no body at all.
    assert_eq!(ex.post("/beat", "\"\"").await, ok());
    assert_eq!(ex.post("/beat", "").await, ok());
    let r = ex
        .client
        .post(ex.url("/beat"))
        .header("XXL-JOB-ACCESS-TOKEN", "default_token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), ok());
    // T03, T04: token.
    let wrong = json!({"code":500,"msg":"The access token is wrong."});
    assert_eq!(ex.post_with("/beat", "", None).await, wrong);
    assert_eq!(ex.post_with("/beat", "", Some("wrong_token")).await, wrong);
    // The header name is case-insensitive, as with Netty.
    let r = ex
        .client
        .post(ex.url("/beat"))
        .header("xxl-job-access-token", "default_token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), ok());
    // A header warp cannot read as text still gets the envelope, not a bare 400.
    let r = raw_request(
        ex.addr,
        b"POST /beat HTTP/1.1\r\nHost: x\r\nXXL-JOB-ACCESS-TOKEN: \xff\xfe\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r["code"], 500, "{r}");
    // T05: GET.
    let r = ex.client.get(ex.url("/beat")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"code":500,"msg":"invalid request, HttpMethod not support."})
    );
    // T06–T08: exact request target.
    for (target, shown) in [
        ("/foo", "/foo"),
        ("/beat?x=1", "/beat?x=1"),
        ("/beat/", "/beat/"),
    ] {
        assert_eq!(
            ex.post(target, "{}").await,
            json!({"code":500,"msg":format!("invalid request, uri-mapping({shown}) not found.")})
        );
    }
    ex.shutdown().await;
}

#[tokio::test]
async fn t09_t10_t11_idle_beat_and_kill_without_a_worker() {
    let (_admin, ex, _p, _d) = setup("").await;
    assert_eq!(ex.post("/idleBeat", r#"{"jobId":1}"#).await, ok());
    let r = ex.post("/idleBeat", "").await;
    assert_eq!(r["code"], 500);
    assert!(r["msg"].as_str().unwrap().starts_with("request error:"));
    let r = ex.post("/kill", r#"{"jobId":99}"#).await;
    assert_eq!(
        r,
        json!({"code":200,"msg":"Success","content":"job thread already killed.","data":"job thread already killed."})
    );
    ex.shutdown().await;
}

/// `/kill` of a job without a worker, byte for byte, per admin generation (issue 9 #17). Every
/// admin stores the reply's `msg` as the run's handle message (`JobLogController.logKill`,
/// 2.4.2 – 3.4.2); admins up to 3.2.0 post with `XxlJobRemotingUtil`, recognisable by its
/// `Accept-Charset: application/json;charset=UTF-8`, and get the text in `msg` as their own
/// executors (up to 3.1.1) gave it; 3.3+ admins (`Accept-Charset: UTF-8`) and other clients get
/// the 3.2+ form unchanged.
#[tokio::test]
async fn t11_kill_without_a_worker_puts_the_text_in_msg_for_remoting_util_admins() {
    let (_admin, ex, _p, _d) = setup("").await;
    let kill = |accept_charset: Option<&'static str>| {
        let ex = &ex;
        async move {
            // The headers `XxlJobRemotingUtil.postBody` (2.4.x – 3.2.0) or xxl-tool's HttpTool
            // (3.3.0+) send.
            let mut req = ex
                .client
                .post(ex.url("/kill"))
                .header("XXL-JOB-ACCESS-TOKEN", "default_token")
                .header("Content-Type", "application/json;charset=UTF-8")
                .body(r#"{"jobId":99}"#);
            if let Some(v) = accept_charset {
                req = req.header("Accept-Charset", v);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.text().await.unwrap()
        }
    };
    assert_eq!(
        kill(Some("application/json;charset=UTF-8")).await,
        r#"{"code":200,"msg":"job thread already killed.","content":"job thread already killed.","data":"job thread already killed."}"#
    );
    let modern = r#"{"code":200,"msg":"Success","content":"job thread already killed.","data":"job thread already killed."}"#;
    assert_eq!(kill(Some("UTF-8")).await, modern);
    assert_eq!(kill(None).await, modern);
    ex.shutdown().await;
}

/// Gson parses a body into a request class only from a JSON object; anything else is an
/// exception, answered `request error:…` (protocol §1.1 step 5). serde's derived structs would
/// read an array as fields by position, so `[]` used to pass as an object of defaults
/// (issue 9 #6). `/beat` never parses its body, as in the reference.
#[tokio::test]
async fn bodies_that_are_not_a_json_object_are_request_errors() {
    let (admin, ex, _p, _d) = setup("").await;
    for body in [
        "[]",
        "[1]",
        r#"[{"jobId":1}]"#,
        r#""""#,
        "7",
        "null",
        "true",
    ] {
        for path in ["/idleBeat", "/kill", "/log", "/run", "/trigger"] {
            let r = ex.post(path, body).await;
            assert_eq!(r["code"], 500, "{path} {body}: {r}");
            let msg = r["msg"].as_str().unwrap();
            assert!(msg.starts_with("request error:"), "{path} {body}: {msg}");
            assert!(r.get("content").is_none() && r.get("data").is_none(), "{r}");
        }
        assert_eq!(ex.post("/beat", body).await, ok(), "/beat ignores {body}");
    }
    let r = ex.post("/idleBeat", "[]").await;
    assert!(
        r["msg"]
            .as_str()
            .unwrap()
            .contains("expected a JSON object"),
        "{r}"
    );
    // Nothing was run: the next run's callback is the only one.
    assert_eq!(ex.run(9, "demoJobHandler", 9001, json!({})).await, ok());
    admin.callback(9001).await;
    assert_eq!(
        admin.callback_items().len(),
        1,
        "{:?}",
        admin.callback_items()
    );
    ex.shutdown().await;
}

#[tokio::test]
async fn t12_t17_t18_t19_t20_run_callback_and_log_paging() {
    let (admin, ex, _p, _d) = setup("").await;
    let r = ex
        .post(
            "/run",
            r#"{"jobId":1,"executorHandler":"demoJobHandler","executorParams":"hello","executorBlockStrategy":"SERIAL_EXECUTION","executorTimeout":0,"logId":1001,"logDateTime":1717171717000,"glueType":"BEAN","glueSource":"","glueUpdatetime":1541254891000,"broadcastIndex":0,"broadcastTotal":1}"#,
        )
        .await;
    assert_eq!(r, ok());
    let cb = admin.callback(1001).await;
    assert_eq!(
        cb,
        json!({"logId":1001,"logDateTim":1717171717000i64,"handleCode":200})
    );
    // R1: the callback request carries the token and the JSON content type.
    let call = admin.calls("callback").remove(0);
    assert_eq!(call.token.as_deref(), Some("default_token"));
    assert_eq!(
        call.content_type.as_deref(),
        Some("application/json;charset=UTF-8")
    );
    ex.log_contains(1001, "callback finish.").await;
    // T17: start line, handler line, end line, callback line.
    let page = |from: i64| {
        let ex = &ex;
        async move {
            ex.post(
                "/log",
                &format!(r#"{{"logDateTim":1717171717000,"logId":1001,"fromLineNum":{from}}}"#),
            )
            .await
        }
    };
    let r = page(1).await;
    assert_eq!(r["code"], 200);
    assert_eq!(r["msg"], "Success");
    assert_eq!(r["content"], r["data"]);
    let d = &r["data"];
    assert_eq!(d["fromLineNum"], 1);
    assert_eq!(d["toLineNum"], 4);
    assert_eq!(d["isEnd"], false);
    let text = d["logContent"].as_str().unwrap();
    let lines: Vec<&str> = text.split_terminator('\n').collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[0].ends_with(
        "<br>----------- xxl-job job execute start -----------<br>----------- Param:hello"
    ));
    assert!(lines[1].ends_with("XXL-JOB, Hello World."));
    assert!(lines[2].ends_with(
        "<br>----------- xxl-job job execute end(finish) -----------<br>----------- Result: handleCode=200, handleMsg = null"
    ));
    assert!(lines[3].ends_with("<br>----------- xxl-job job callback finish."));
    // T18.
    let d = page(3).await["data"].clone();
    assert_eq!(
        (d["fromLineNum"].clone(), d["toLineNum"].clone()),
        (json!(3), json!(4))
    );
    assert_eq!(d["logContent"].as_str().unwrap().lines().count(), 2);
    // T19: past the end.
    let d = page(10).await["data"].clone();
    assert_eq!(
        d,
        json!({"fromLineNum":10,"toLineNum":0,"logContent":"","isEnd":false})
    );
    // T20: unknown log.
    let r = ex
        .post(
            "/log",
            r#"{"logDateTim":1717171717000,"logId":999999,"fromLineNum":1}"#,
        )
        .await;
    assert_eq!(
        r["data"],
        json!({"fromLineNum":1,"toLineNum":0,"logContent":"readLog fail, logFile not exists","isEnd":true})
    );
    // 3.5 spelling logDateTime is accepted too.
    let r = ex
        .post(
            "/log",
            r#"{"logDateTime":1717171717000,"logId":1001,"fromLineNum":1}"#,
        )
        .await;
    assert_eq!(r["data"]["toLineNum"], 4);
    ex.shutdown().await;
}

#[tokio::test]
async fn log_pages_are_bounded_in_lines_and_bytes() {
    let (admin, ex, _p, _d) = setup(
        "[server]\nlog_page_max_lines = 3\nlog_page_max_bytes = 1024\n[handlers.chatty]\ncommand = [\"sh\", \"-c\", \"for i in $(seq 1 40); do echo line-$i; done\"]\n",
    )
    .await;
    assert_eq!(ex.run(1, "chatty", 77, json!({})).await, ok());
    admin.callback(77).await;
    let r = ex
        .post("/log", r#"{"logDateTim":0,"logId":77,"fromLineNum":1}"#)
        .await;
    assert_eq!(r["data"]["toLineNum"], 3, "a page holds at most 3 lines");
    let all = ex.log_text(77).await;
    for i in 1..=40 {
        assert!(all.contains(&format!("line-{i}\n")), "line-{i} missing");
    }
    ex.shutdown().await;
}

/// The admin pulls the log of a finished run once and stops (2.4.2
/// `static/js/joblog.detail.1.js`, 3.4.2 `templates/business/log.detail.ftl`: `pullLog()` then
/// `if (handleCode > 0) logRunStop(...)`), so with the default bounds a single `/log` page must
/// hold a whole log that filled the per-run cap (issue 9 #11).
#[tokio::test]
async fn with_the_defaults_one_page_holds_a_finished_run_whose_output_filled_its_cap() {
    let probe = tempfile::tempdir().unwrap();
    let defaults = test_config(probe.path(), "http://127.0.0.1:9", "");
    // 99-byte lines up to the cap, where each line costs its bytes plus 16 (README,
    // `store.max_log_bytes_per_run`), less a little for the start line: nothing is truncated.
    let line = "x".repeat(99);
    let n = defaults.store.max_log_bytes_per_run / (99 + 16) - 8;
    let (admin, ex, _p, _d) = setup(&format!(
        "[handlers.fill]\ncommand = [\"sh\", \"-c\", \"yes {line} | head -n {n}\"]\n"
    ))
    .await;
    assert_eq!(ex.run(1, "fill", 88, json!({})).await, ok());
    assert_eq!(admin.callback(88).await["handleCode"], 200);
    ex.log_contains(88, "callback finish.").await;
    let r = ex
        .post(
            "/log",
            r#"{"logDateTim":1717171717000,"logId":88,"fromLineNum":1}"#,
        )
        .await;
    let d = &r["data"];
    assert_eq!(d, &r["content"]);
    let text = d["logContent"].as_str().unwrap();
    let lines: Vec<&str> = text.split_terminator('\n').collect();
    assert_eq!(
        lines.iter().filter(|l| **l == line).count() as u64,
        n,
        "every output line is on the first page (page bounds: {} lines, {} bytes)",
        defaults.server.log_page_max_lines,
        defaults.server.log_page_max_bytes
    );
    assert!(
        lines[0].contains("xxl-job job execute start"),
        "{}",
        lines[0]
    );
    assert!(
        lines
            .last()
            .unwrap()
            .ends_with("xxl-job job callback finish."),
        "the page ends with the log's last line"
    );
    assert_eq!(d["toLineNum"].as_u64().unwrap(), lines.len() as u64);
    assert!(!text.contains("log truncated"));
    ex.shutdown().await;
}

#[tokio::test]
async fn t13_t14_t15_t16_t31_refused_triggers_get_no_callback() {
    let (admin, ex, _p, _d) = setup("").await;
    let r = ex
        .run(3, "noSuchHandler", 3001, json!({"executorParams": ""}))
        .await;
    assert_eq!(
        r,
        json!({"code":500,"msg":"job handler [noSuchHandler] not found."})
    );
    let r = ex
        .post(
            "/run",
            r#"{"jobId":4,"executorHandler":"demoJobHandler","logId":4001,"logDateTime":1717171717000,"glueType":"GLUE_XYZ","glueUpdatetime":1541254891000,"broadcastIndex":0,"broadcastTotal":1}"#,
        )
        .await;
    assert_eq!(
        r,
        json!({"code":500,"msg":"glueType[GLUE_XYZ] is not valid."})
    );
    let r = ex
        .post(
            "/run",
            r#"{"jobId":5,"executorHandler":"demoJobHandler","logId":5001,"logDateTime":1717171717000}"#,
        )
        .await;
    assert_eq!(r, json!({"code":500,"msg":"glueType[null] is not valid."}));
    let r = ex.post("/run", r#"{"jobId":6,"#).await;
    assert_eq!(r["code"], 500);
    assert!(r["msg"].as_str().unwrap().starts_with("request error:"));
    let r = ex
        .run(
            7,
            "",
            7001,
            json!({"glueType":"GLUE_GROOVY","glueSource":"this is not groovy {"}),
        )
        .await;
    assert_eq!(
        r,
        json!({"code":500,"msg":"glueType[GLUE_GROOVY] is not valid."})
    );
    // A disabled GLUE kind says how to enable it.
    let r = ex
        .run(
            8,
            "",
            8001,
            json!({"glueType":"GLUE_SHELL","glueSource":"echo hi"}),
        )
        .await;
    assert_eq!(r["code"], 500);
    let msg = r["msg"].as_str().unwrap();
    assert!(
        msg.contains("glue.enabled") && msg.contains("\"shell\""),
        "{msg}"
    );
    // Nothing was accepted, so nothing is called back: prove it with a later run's callback.
    assert_eq!(ex.run(9, "demoJobHandler", 9001, json!({})).await, ok());
    admin.callback(9001).await;
    assert_eq!(
        admin.callback_items().len(),
        1,
        "{:?}",
        admin.callback_items()
    );
    ex.shutdown().await;
}

#[tokio::test]
async fn lenient_bodies_and_oversized_bodies() {
    let (admin, ex, _p, _d) = setup("[server]\nbody_limit_bytes = 2048\n").await;
    // Numbers as strings, unknown keys, nulls: as lenient as Gson.
    let r = ex
        .post(
            "/run",
            r#"{"jobId":"11","executorHandler":"shardJobHandler","logId":"1101","logDateTime":1717171717000,"glueType":"BEAN","broadcastIndex":2.0,"broadcastTotal":"5","executorTimeout":null,"whatever":{"x":[1,2]}}"#,
        )
        .await;
    assert_eq!(r, ok());
    let cb = admin.callback(1101).await;
    assert_eq!(cb["handleMsg"], "shard 2/5");
    // Over the limit: a clear error in the envelope, with and without Content-Length.
    let big = format!(r#"{{"jobId":1,"pad":"{}"}}"#, "x".repeat(4096));
    let r = ex.post("/run", &big).await;
    assert_eq!(r["code"], 500);
    assert!(r["msg"]
        .as_str()
        .unwrap()
        .contains("exceeds the limit of 2048 bytes"));
    // Chunked, no Content-Length: the limit still holds while reading.
    let r = raw_chunked_post(ex.addr, "/run", &big).await;
    assert_eq!(r["code"], 500);
    assert!(r["msg"].as_str().unwrap().contains("exceeds the limit"));
    // /trigger is /run under its 3.5 name.
    let r = ex
        .post(
            "/trigger",
            r#"{"jobId":12,"executorHandler":"demoJobHandler","logId":1201,"logDateTime":1,"glueType":"BEAN"}"#,
        )
        .await;
    assert_eq!(r, ok());
    admin.callback(1201).await;
    ex.shutdown().await;
}

#[tokio::test]
async fn t21_to_t26_serial_duplicate_discard_cover() {
    let (admin, ex, probe, _d) = setup("").await;
    assert_eq!(ex.run(2, "gateJobHandler", 2001, json!({})).await, ok());
    probe.started(2001).await;
    // T22.
    assert_eq!(
        ex.post("/idleBeat", r#"{"jobId":2}"#).await,
        json!({"code":500,"msg":"job thread is running or has trigger queue."})
    );
    // T23, T24.
    assert_eq!(ex.run(2, "gateJobHandler", 2002, json!({})).await, ok());
    assert_eq!(
        ex.run(2, "gateJobHandler", 2002, json!({})).await,
        json!({"code":500,"msg":"repeat trigger job, logId:2002"})
    );
    // T25.
    assert_eq!(
        ex.run(
            2,
            "gateJobHandler",
            2003,
            json!({"executorBlockStrategy":"DISCARD_LATER"})
        )
        .await,
        json!({"code":500,"msg":"block strategy effect：Discard Later"})
    );
    // T26.
    assert_eq!(
        ex.run(
            2,
            "gateJobHandler",
            2004,
            json!({"executorBlockStrategy":"COVER_EARLY","executorParams":"1"})
        )
        .await,
        ok()
    );
    let c1 = admin.callback(2001).await;
    assert_eq!(
        c1["handleMsg"],
        "block strategy effect：Cover Early [job running, killed]"
    );
    assert_eq!(c1["handleCode"], 500);
    let c2 = admin.callback(2002).await;
    assert_eq!(
        c2["handleMsg"],
        "block strategy effect：Cover Early [job not executed, in the job queue, killed.]"
    );
    probe.started(2004).await;
    probe.gate.notify_one();
    assert_eq!(admin.callback(2004).await["handleCode"], 200);
    assert!(admin.callbacks_for(2003).is_empty());
    // A logId that already ran is never run again (journal), not only while queued.
    assert_eq!(
        ex.run(2, "gateJobHandler", 2004, json!({})).await,
        json!({"code":500,"msg":"repeat trigger job, logId:2004"})
    );
    ex.shutdown().await;
}

#[tokio::test]
async fn t27_kill_reports_running_and_queued() {
    let (admin, ex, probe, _d) = setup("").await;
    assert_eq!(ex.run(7, "gateJobHandler", 7001, json!({})).await, ok());
    probe.started(7001).await;
    assert_eq!(ex.run(7, "gateJobHandler", 7002, json!({})).await, ok());
    assert_eq!(ex.post("/kill", r#"{"jobId":7}"#).await, ok());
    let c1 = admin.callback(7001).await;
    assert_eq!(
        (c1["handleCode"].clone(), c1["handleMsg"].clone()),
        (
            json!(500),
            json!("scheduling center kill job. [job running, killed]")
        )
    );
    let c2 = admin.callback(7002).await;
    assert_eq!(
        c2["handleMsg"],
        "scheduling center kill job. [job not executed, in the job queue, killed.]"
    );
    // A run after the kill starts a fresh worker at once.
    assert_eq!(ex.run(7, "demoJobHandler", 7003, json!({})).await, ok());
    assert_eq!(admin.callback(7003).await["handleCode"], 200);
    // A handler that ignores cancellation is aborted after the grace.
    assert_eq!(
        ex.run(17, "stubbornJobHandler", 17001, json!({})).await,
        ok()
    );
    probe.started(17001).await;
    assert_eq!(ex.post("/kill", r#"{"jobId":17}"#).await, ok());
    assert_eq!(admin.callback(17001).await["handleCode"], 500);
    ex.shutdown().await;
}

#[tokio::test]
async fn t28_timeout_failures_panics_shards_and_codes() {
    let (admin, ex, probe, _d) = setup("").await;
    // T28a: timeout with the reference's trailing space.
    assert_eq!(
        ex.run(8, "gateJobHandler", 8001, json!({"executorTimeout":1}))
            .await,
        ok()
    );
    probe.started(8001).await;
    let c = admin.callback(8001).await;
    assert_eq!(
        (c["handleCode"].clone(), c["handleMsg"].clone()),
        (json!(502), json!("job execute timeout "))
    );
    // T28b: the message is passed verbatim (no HTML escaping needed in JSON).
    let msg = "custom fail msg <b>x</b> & 'q'";
    assert_eq!(
        ex.run(9, "failJobHandler", 8002, json!({"executorParams": msg}))
            .await,
        ok()
    );
    let c = admin.callback(8002).await;
    assert_eq!(
        (c["handleCode"].clone(), c["handleMsg"].clone()),
        (json!(500), json!(msg))
    );
    // T28c: a panic fails the run; the worker and the executor live on.
    assert_eq!(ex.run(10, "panicJobHandler", 8003, json!({})).await, ok());
    let c = admin.callback(8003).await;
    assert_eq!(c["handleCode"], 500);
    assert!(c["handleMsg"].as_str().unwrap().contains("boom in handler"));
    assert_eq!(ex.run(10, "panicJobHandler", 8013, json!({})).await, ok());
    assert_eq!(admin.callback(8013).await["handleCode"], 500);
    // An Err from a handler is a failure with its text.
    assert_eq!(
        ex.run(
            11,
            "resultJobHandler",
            8014,
            json!({"executorParams":"err"})
        )
        .await,
        ok()
    );
    assert_eq!(
        admin.callback(8014).await["handleMsg"],
        "handler returned an error"
    );
    // T28d.
    assert_eq!(
        ex.run(
            12,
            "shardJobHandler",
            8004,
            json!({"broadcastIndex":2,"broadcastTotal":5})
        )
        .await,
        ok()
    );
    assert_eq!(admin.callback(8004).await["handleMsg"], "shard 2/5");
    // T28e.
    assert_eq!(
        ex.run(13, "codeJobHandler", 8005, json!({"executorParams":"201"}))
            .await,
        ok()
    );
    let c = admin.callback(8005).await;
    assert_eq!(
        (c["handleCode"].clone(), c["handleMsg"].clone()),
        (json!(201), json!("custom code"))
    );
    assert_eq!(
        ex.run(13, "codeJobHandler", 8006, json!({"executorParams":"0"}))
            .await,
        ok()
    );
    let c = admin.callback(8006).await;
    assert_eq!(
        (c["handleCode"].clone(), c["handleMsg"].clone()),
        (json!(500), json!("job handle result lost."))
    );
    ex.shutdown().await;
}

#[tokio::test]
async fn t29_t30_glue_shell_when_enabled() {
    let (admin, ex, _p, dir) = setup("[glue]\nenabled = [\"shell\"]\n").await;
    let src = "#!/bin/bash\necho \"args: $1|$2|$3|$#\"\necho err 1>&2\nexit 3\n";
    let r = ex
        .run(
            20,
            "",
            2901,
            json!({"glueType":"GLUE_SHELL","glueSource":src,"glueUpdatetime":1700000000000i64,
                   "executorParams":"a b","broadcastIndex":1,"broadcastTotal":4}),
        )
        .await;
    assert_eq!(r, ok());
    let c = admin.callback(2901).await;
    assert_eq!(
        (c["handleCode"].clone(), c["handleMsg"].clone()),
        (json!(500), json!("script exit value(3) is failed"))
    );
    let glue = dir.path().join("gluesource");
    assert!(glue.join("20_1700000000000.sh").exists());
    let log = ex.log_text(2901).await;
    assert!(log.contains("args: a b|1|4|3\n"), "{log}");
    assert!(log.contains("\nerr\n"), "{log}");
    // T30: a new version, no params: the 3.3+ behaviour ("" as $1), old file removed, and the
    // worker is replaced.
    let r = ex
        .post(
            "/run",
            &json!({"jobId":20,"executorHandler":"","logId":3001,"logDateTime":1,
                    "glueType":"GLUE_SHELL","glueSource":"#!/bin/bash\necho \"[$1]\"\nexit 0\n",
                    "glueUpdatetime":1700000001000i64,"broadcastIndex":0,"broadcastTotal":1})
            .to_string(),
        )
        .await;
    assert_eq!(r, ok());
    assert_eq!(admin.callback(3001).await["handleCode"], 200);
    assert!(!glue.join("20_1700000000000.sh").exists());
    assert!(glue.join("20_1700000001000.sh").exists());
    assert!(ex.log_text(3001).await.contains("[]\n"));
    ex.shutdown().await;
}

#[tokio::test]
async fn r1_r2_registration_and_deregistration() {
    let (admin, ex, _p, _d) = setup("").await;
    admin.registrations(1).await;
    let reg = admin.calls("registry").remove(0);
    assert_eq!(reg.token.as_deref(), Some("default_token"));
    assert_eq!(
        reg.body,
        json!({"registryGroup":"EXECUTOR","registryKey":"xxl-job-executor-sample",
               "registryValue":format!("http://127.0.0.1:{}/", ex.addr.port())})
    );
    let addr = ex.addr.port();
    ex.shutdown().await;
    let rm = admin.calls("registryRemove");
    assert_eq!(rm.len(), 1);
    assert_eq!(
        rm[0].body["registryValue"],
        format!("http://127.0.0.1:{addr}/")
    );
}

#[tokio::test]
async fn r3_r4_admin_failures_are_retried_and_logged() {
    let (admin, ex, _p, _d) = setup("").await;
    admin.set_mode(AdminMode::Code500);
    assert_eq!(ex.run(1, "demoJobHandler", 1002, json!({})).await, ok());
    admin
        .wait_until("a rejected callback", |a| !a.callbacks_for(1002).is_empty())
        .await;
    admin.set_mode(AdminMode::Http503);
    let n = admin.callbacks_for(1002).len();
    admin
        .wait_until("a retry", |a| a.callbacks_for(1002).len() > n)
        .await;
    admin.set_mode(AdminMode::Ok);
    let before = admin.callbacks_for(1002).len();
    admin
        .wait_until("a delivered retry", |a| {
            a.callbacks_for(1002).len() > before
        })
        .await;
    let log = ex.log_text(1002).await;
    assert!(
        log.contains("xxl-job job callback fail, callbackResult: code=500, msg=fake admin fail"),
        "{log}"
    );
    // Once delivered, the finish line follows.
    ex.log_contains(1002, "callback finish.").await;
    ex.shutdown().await;
}

/// Sends raw bytes and parses the JSON answer (which must be HTTP 200).
async fn raw_request(addr: std::net::SocketAddr, req: &[u8]) -> Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(req).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(GUARD, s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// POSTs a chunked body over a raw socket (no Content-Length) and parses the JSON answer.
async fn raw_chunked_post(addr: std::net::SocketAddr, path: &str, body: &str) -> Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nXXL-JOB-ACCESS-TOKEN: default_token\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    for chunk in body.as_bytes().chunks(1000) {
        req.push_str(&format!(
            "{:x}\r\n{}\r\n",
            chunk.len(),
            String::from_utf8_lossy(chunk)
        ));
    }
    req.push_str("0\r\n\r\n");
    // The server may answer and close before the whole body is written.
    let _ = s.write_all(req.as_bytes()).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(GUARD, s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[tokio::test]
async fn glue_python_runs_with_python3() {
    let (admin, ex, _p, dir) = setup("[glue]\nenabled = [\"python\"]\n").await;
    let src =
        "import sys\nprint('argv', sys.argv[1:])\nsys.exit(0 if sys.argv[1] == 'ok' else 5)\n";
    for (log_id, param, code) in [(501, "ok", 200), (502, "no", 500)] {
        let r = ex
            .run(
                50,
                "",
                log_id,
                json!({"glueType":"GLUE_PYTHON","glueSource":src,"glueUpdatetime":1,
                       "executorParams":param,"broadcastIndex":0,"broadcastTotal":2}),
            )
            .await;
        assert_eq!(r, ok());
        let c = admin.callback(log_id).await;
        assert_eq!(c["handleCode"], code, "{c}");
        let log = ex.log_text(log_id).await;
        assert!(
            log.contains(&format!("argv ['{param}', '0', '2']")),
            "{log}"
        );
    }
    assert_eq!(
        admin.callback(502).await["handleMsg"],
        "script exit value(5) is failed"
    );
    assert!(dir.path().join("gluesource/50_1.py").exists());
    ex.shutdown().await;
}
