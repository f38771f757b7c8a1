//! The one place a value is checked against its bounds: every problem is collected (so a bad
//! config is reported whole, not one key per attempt) and every accepted value is recorded with
//! its key (so `check-config` prints what will run without naming each key again).

use std::fmt::Display;
use std::ops::RangeInclusive;
use std::time::Duration;

/// Problems and effective values gathered while the sections are converted.
#[derive(Debug, Default)]
pub(super) struct Check {
    pub(super) problems: Vec<(String, String)>,
    pub(super) shown: Vec<(String, String)>,
}

impl Check {
    /// Records a problem with `key` (a TOML key or an environment variable).
    pub(super) fn problem(&mut self, key: impl Into<String>, problem: impl Into<String>) {
        self.problems.push((key.into(), problem.into()));
    }

    /// Records the value `key` takes, for `check-config`.
    pub(super) fn show(&mut self, key: impl Into<String>, value: impl Display) {
        self.shown.push((key.into(), value.to_string()));
    }

    /// A whole number in `range`, `default` when unset. Out of range: a problem, and the default
    /// stands in so the other keys can still be checked.
    pub(super) fn int(
        &mut self,
        key: &str,
        given: Option<i64>,
        default: i64,
        range: RangeInclusive<i64>,
    ) -> i64 {
        let v = given.unwrap_or(default);
        if range.contains(&v) {
            self.show(key, v);
            v
        } else {
            self.problem(
                key,
                format!("{v} is not in {}..={}", range.start(), range.end()),
            );
            default
        }
    }

    /// A number of seconds in `range`, `default` when unset.
    pub(super) fn secs(
        &mut self,
        key: &str,
        given: Option<f64>,
        default: f64,
        range: RangeInclusive<f64>,
    ) -> Duration {
        let v = given.unwrap_or(default);
        if v.is_finite() && range.contains(&v) {
            self.show(key, v);
            Duration::from_secs_f64(v)
        } else {
            self.problem(
                key,
                format!("{v} is not in {}..={} seconds", range.start(), range.end()),
            );
            Duration::from_secs_f64(default)
        }
    }

    /// An optional `http://` or `https://` URL: trimmed, blank means unset.
    pub(super) fn url(&mut self, key: &str, given: Option<String>) -> Option<String> {
        let url = given
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())?;
        if url.starts_with("http://") || url.starts_with("https://") {
            self.show(key, &url);
            Some(url)
        } else {
            self.problem(key, format!("\"{url}\" is not an http:// or https:// URL"));
            None
        }
    }
}
