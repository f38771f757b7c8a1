//! A client of a running executor, as the admin would call it: send one trigger, follow its log
//! page by page, and learn its result as data (what `xxl-edge trigger` does on a device).

use std::time::Duration;

use crate::admin::wire::{ExecutorReply, LogParam, LogResult, TriggerParam};
use crate::admin::TOKEN_HEADER;
use crate::config::Secret;
use crate::job::{Outcome, Trigger};

/// Why a triggered run could not be followed to its end.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Setup(String),
    /// The executor could not be reached.
    #[error("cannot reach {url}: {reason}")]
    Unreachable {
        /// What was called.
        url: String,
        /// Why.
        reason: String,
    },
    /// The answer was not the XXL-JOB envelope.
    #[error("{url} answered something that is not the XXL-JOB envelope: {reason}")]
    NotEnvelope {
        /// What was called.
        url: String,
        /// The parser's message.
        reason: String,
    },
    /// `/run` refused the trigger.
    #[error("trigger refused (code {code}): {msg}")]
    Refused {
        /// The envelope's code.
        code: i32,
        /// The executor's message.
        msg: String,
    },
    /// The run did not finish in time.
    #[error("gave up waiting for the run to finish after {} s", .0.as_secs())]
    GaveUp(Duration),
}

/// Where and how to reach the executor.
#[derive(Debug, Clone)]
pub struct ExecutorAddress {
    /// Base URL, e.g. `http://127.0.0.1:9999`.
    pub url: String,
    /// The access token.
    pub token: Secret,
}

/// Sends `trigger` to `/run`, then follows `/log` until the run has a result and no new line
/// came, passing each page's text to `out`. Gives up after `wait`.
///
/// # Errors
/// [`ClientError`]: unreachable, refused, not an envelope, or no result within `wait`.
pub async fn trigger_and_follow(
    to: &ExecutorAddress,
    trigger: &Trigger,
    wait: Duration,
    mut out: impl FnMut(&str),
) -> Result<Outcome, ClientError> {
    let base = to.url.trim_end_matches('/').to_string();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| ClientError::Setup(e.to_string()))?;
    let post = |path: &str, body: String| {
        http.post(format!("{base}{path}"))
            .header(TOKEN_HEADER, to.token.expose())
            .header("Content-Type", "application/json;charset=UTF-8")
            .body(body)
            .send()
    };
    let run_url = format!("{base}/run");
    let body = serde_json::to_string(&TriggerParam::from(trigger)).unwrap_or_default();
    let resp = post("/run", body)
        .await
        .map_err(|e| ClientError::Unreachable {
            url: run_url.clone(),
            reason: e.to_string(),
        })?;
    let reply: ExecutorReply<serde_json::Value> =
        resp.json().await.map_err(|e| ClientError::NotEnvelope {
            url: run_url,
            reason: e.to_string(),
        })?;
    if reply.code != 200 {
        return Err(ClientError::Refused {
            code: reply.code,
            msg: reply.msg.unwrap_or_default(),
        });
    }
    let deadline = tokio::time::Instant::now() + wait;
    let mut from = 1;
    let mut result: Option<Outcome> = None;
    while tokio::time::Instant::now() < deadline {
        let p = LogParam {
            log_date_tim: trigger.log_date_time,
            log_date_time: trigger.log_date_time,
            log_id: trigger.log_id.0,
            from_line_num: from,
            xxl_edge_result: true,
        };
        let body = serde_json::to_string(&p).unwrap_or_default();
        let page: Option<LogResult> = match post("/log", body).await {
            Ok(r) => r
                .json::<ExecutorReply<LogResult>>()
                .await
                .ok()
                .and_then(ExecutorReply::payload),
            Err(_) => None,
        };
        let mut progressed = false;
        if let Some(page) = page {
            if page.to_line_num >= from && !page.is_end {
                out(&page.log_content);
                from = page.to_line_num + 1;
                progressed = true;
            }
            if let Some(r) = page.xxl_edge_result {
                result = Some(Outcome::code(r.handle_code, r.handle_msg));
            }
        }
        match (&result, progressed) {
            // Finished, and the lines written after the end line (the callback's) are shown.
            (Some(_), false) => break,
            (_, true) => {}
            (None, false) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
    result.ok_or(ClientError::GaveUp(wait))
}
