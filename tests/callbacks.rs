#![allow(clippy::unwrap_used)]
//! Callback metrics as Prometheus users read them, against a real admin over HTTP: a callback
//! retried through an outage is delivered, and counted, once; the failed sends are counted as
//! attempts, one per batch the admin refused.

mod support;

use serde_json::json;
use support::{ok, setup, AdminMode};

fn counter(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

#[tokio::test]
async fn a_callback_retried_through_an_outage_is_delivered_once_and_each_send_is_one_attempt() {
    let (admin, ex, _probe, _d) = setup("").await;
    admin.set_mode(AdminMode::Code500);
    for id in 1..=3 {
        assert_eq!(
            ex.run(id as i32, "demoJobHandler", id, json!({})).await,
            ok()
        );
    }
    // Every callback refused at least twice: the old counter grew by 3 per refused batch.
    admin
        .wait_until("each callback refused twice", |a| {
            (1..=3).all(|id| a.callbacks_for(id).len() >= 2)
        })
        .await;
    admin.set_mode(AdminMode::Ok);
    admin
        .wait_until("3 callbacks delivered", |a| a.delivered().len() == 3)
        .await;
    // The "callback finish" line is written after the counters are updated.
    for id in 1..=3 {
        ex.log_contains(id, "callback finish.").await;
    }

    let calls = admin.calls("callback");
    let refused = calls.iter().filter(|c| !c.accepted).count() as u64;
    let accepted = calls.iter().filter(|c| c.accepted).count() as u64;
    assert!(refused >= 2, "{calls:?}");
    let text = ex.metrics_text().await;
    assert_eq!(
        counter(&text, r#"xxl_edge_callbacks_total{result="delivered"}"#),
        3
    );
    assert!(
        !text.contains(r#"xxl_edge_callbacks_total{result="failed"}"#),
        "{text}"
    );
    // One admin configured, so one reporter attempt is one admin call.
    assert_eq!(
        counter(
            &text,
            r#"xxl_edge_callback_attempts_total{result="failed"}"#
        ),
        refused
    );
    assert_eq!(
        counter(&text, r#"xxl_edge_callback_attempts_total{result="ok"}"#),
        accepted
    );
    // An admin's refusal is not an internal error.
    assert!(
        text.lines()
            .filter(|l| l.starts_with("xxl_edge_internal_errors_total{"))
            .all(|l| l.ends_with(" 0")),
        "{text}"
    );
    ex.shutdown().await;
}
