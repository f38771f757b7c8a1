#![allow(clippy::unwrap_used)]
//! The Grafana dashboard and the Prometheus alert rules in `dashboards/` name only metrics the
//! executor exports: every `xxl_edge_*` and `process_*` token in them must be a family in
//! `xxl_edge::telemetry::METRIC_NAMES` (histogram series `_bucket`, `_sum`, `_count` map to their
//! family). A renamed or dropped metric therefore fails this test instead of leaving a blank
//! panel or an alert that can never fire.
//!
//! The YAML is read as plain text (no YAML crate): every token anywhere in the file counts,
//! comments and annotations included, which is stricter than parsing would be.

use std::collections::BTreeSet;
use std::path::PathBuf;

use xxl_edge::telemetry::METRIC_NAMES;

fn read(rel: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Every maximal `[a-z0-9_]` word in `text` that starts with `xxl_edge_` or `process_` and has
/// at least one `[a-z_]` character after the prefix (as the regexes `xxl_edge_[a-z_]+` and
/// `process_[a-z_]+` would, anchored at a word start so `subprocess_x` is not a hit).
fn metric_tokens(text: &str) -> BTreeSet<String> {
    let is_word = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
    let mut out = BTreeSet::new();
    let bytes: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let at_word_start = i == 0 || !(is_word(bytes[i - 1]) || bytes[i - 1].is_ascii_uppercase());
        if at_word_start && is_word(bytes[i]) {
            let start = i;
            while i < bytes.len() && is_word(bytes[i]) {
                i += 1;
            }
            let word: String = bytes[start..i].iter().collect();
            for prefix in ["xxl_edge_", "process_"] {
                if let Some(rest) = word.strip_prefix(prefix) {
                    // The regex `PREFIX[a-z_]+` stops at the first digit; so does this.
                    let tail: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                        .collect();
                    if !tail.is_empty() {
                        out.insert(format!("{prefix}{tail}"));
                    }
                }
            }
        } else {
            i += 1;
        }
    }
    out
}

/// Maps a series name to its family: `X_bucket`, `X_sum` and `X_count` become `X` when `X` is a
/// family in the list and `X_...` itself is not (so a counter named `..._count` would stay).
fn family(token: &str) -> &str {
    if METRIC_NAMES.contains(&token) {
        return token;
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(stem) = token.strip_suffix(suffix) {
            if METRIC_NAMES.contains(&stem) && is_histogram(stem) {
                return stem;
            }
        }
    }
    token
}

/// The histogram families: the ones whose `_bucket` series the dashboard and rules may use.
fn is_histogram(stem: &str) -> bool {
    matches!(
        stem,
        "xxl_edge_run_duration_seconds"
            | "xxl_edge_queue_wait_seconds"
            | "xxl_edge_admin_request_duration_seconds"
            | "xxl_edge_store_flush_duration_seconds"
            | "xxl_edge_http_request_duration_seconds"
            | "xxl_edge_keys_redis_call_duration_seconds"
    )
}

fn assert_known(file: &str, tokens: &BTreeSet<String>) {
    let unknown: Vec<&String> = tokens
        .iter()
        .filter(|t| !METRIC_NAMES.contains(&family(t)))
        .collect();
    assert!(
        unknown.is_empty(),
        "{file} names metrics the executor does not export (not in telemetry::METRIC_NAMES): {unknown:?}"
    );
}

/// Every `expr` of every panel target, recursively (rows may nest panels).
fn exprs(panel: &serde_json::Value, out: &mut Vec<String>) {
    if let Some(targets) = panel.get("targets").and_then(|t| t.as_array()) {
        for t in targets {
            if let Some(e) = t.get("expr").and_then(|e| e.as_str()) {
                out.push(e.to_string());
            }
        }
    }
    if let Some(children) = panel.get("panels").and_then(|p| p.as_array()) {
        for c in children {
            exprs(c, out);
        }
    }
}

#[test]
fn tokenizer_finds_series_and_maps_histograms() {
    let t = metric_tokens(
        "rate(xxl_edge_run_duration_seconds_bucket{a=\"b\"}[5m]) + process_open_fds \
         subprocess_x Xxl_edge_nope xxl_edge_ process_9",
    );
    let want: BTreeSet<String> = ["process_open_fds", "xxl_edge_run_duration_seconds_bucket"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(t, want);
    assert_eq!(
        family("xxl_edge_run_duration_seconds_bucket"),
        "xxl_edge_run_duration_seconds"
    );
    assert_eq!(
        family("xxl_edge_store_flush_duration_seconds_count"),
        "xxl_edge_store_flush_duration_seconds"
    );
    // Not a histogram: the suffix is not stripped, so the token stays unknown.
    assert_eq!(
        family("xxl_edge_outbox_entries_sum"),
        "xxl_edge_outbox_entries_sum"
    );
    assert_eq!(family("xxl_edge_runs_total"), "xxl_edge_runs_total");
    // The histogram list here must stay a subset of the exported families.
    for h in [
        "xxl_edge_run_duration_seconds",
        "xxl_edge_queue_wait_seconds",
        "xxl_edge_admin_request_duration_seconds",
        "xxl_edge_store_flush_duration_seconds",
        "xxl_edge_http_request_duration_seconds",
    ] {
        assert!(METRIC_NAMES.contains(&h), "{h} is no longer exported");
    }
}

#[test]
fn dashboard_parses_and_names_only_exported_metrics() {
    let text = read("dashboards/xxl-edge.json");
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let panels = dash["panels"]
        .as_array()
        .expect("dashboard has a panels array");
    assert!(!panels.is_empty(), "dashboard has no panels");

    let mut all = Vec::new();
    for p in panels {
        exprs(p, &mut all);
    }
    assert!(
        all.len() >= 10,
        "expected the dashboard's panels to carry queries, found {}",
        all.len()
    );
    // Every query names at least one executor metric.
    for e in &all {
        assert!(
            !metric_tokens(e).is_empty(),
            "a panel query names no xxl_edge_ or process_ metric: {e}"
        );
    }

    // Templating: a Prometheus datasource variable and the instance variable.
    let vars = dash["templating"]["list"].as_array().unwrap();
    let var = |name: &str| vars.iter().find(|v| v["name"] == name);
    let ds = var("datasource").expect("datasource variable");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    let inst = var("instance").expect("instance variable");
    assert!(
        inst.to_string()
            .contains("label_values(xxl_edge_build_info, instance)"),
        "{inst}"
    );

    // Panel ids are unique (Grafana misbehaves otherwise).
    let mut ids = BTreeSet::new();
    for p in panels {
        let id = p["id"].as_i64().unwrap();
        assert!(ids.insert(id), "duplicate panel id {id}");
    }

    let tokens = metric_tokens(&text);
    assert!(tokens.len() >= 10, "too few metric names found: {tokens:?}");
    assert_known("dashboards/xxl-edge.json", &tokens);
}

#[test]
fn alert_rules_name_only_exported_metrics() {
    let text = read("dashboards/alerts.yml");
    for alert in [
        "XxlEdgeDown",
        "XxlEdgeNotRegistered",
        "XxlEdgeOutboxGrowing",
        "XxlEdgeOutboxStale",
        "XxlEdgeHandlerFailureRatio",
        "XxlEdgeStoreNearBudget",
        "XxlEdgeInternalErrors",
        "XxlEdgeSpansLost",
        "XxlEdgeTokenRefused",
    ] {
        assert!(
            text.contains(&format!("alert: {alert}\n")),
            "alerts.yml has no rule {alert}"
        );
    }
    let tokens = metric_tokens(&text);
    assert!(tokens.len() >= 5, "too few metric names found: {tokens:?}");
    assert_known("dashboards/alerts.yml", &tokens);
    // Errors the executor only logs are alerted on.
    assert!(
        tokens.contains("xxl_edge_internal_errors_total"),
        "{tokens:?}"
    );
    // Lost spans and wrong tokens are alerted on.
    for m in [
        "xxl_edge_trace_spans_total",
        "xxl_edge_http_token_refusals_total",
    ] {
        assert!(tokens.contains(m), "no alert uses {m}: {tokens:?}");
    }
}

#[test]
fn every_executor_metric_family_has_a_panel() {
    let dash: serde_json::Value = serde_json::from_str(&read("dashboards/xxl-edge.json")).unwrap();
    let mut all = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        exprs(p, &mut all);
    }
    let shown: BTreeSet<String> = all
        .iter()
        .flat_map(|e| metric_tokens(e))
        .map(|t| family(&t).to_string())
        .collect();
    let missing: Vec<&&str> = METRIC_NAMES
        .iter()
        .filter(|m| m.starts_with("xxl_edge_") && !shown.contains(**m))
        .collect();
    assert!(
        missing.is_empty(),
        "exported but on no panel of dashboards/xxl-edge.json: {missing:?}"
    );
}

#[test]
fn alert_rule_tests_name_only_exported_metrics() {
    let text = read("dashboards/alerts.test.yml");
    let tokens = metric_tokens(&text);
    assert!(!tokens.is_empty());
    assert_known("dashboards/alerts.test.yml", &tokens);
}
