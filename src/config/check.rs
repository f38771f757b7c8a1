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

impl super::Config {
    /// What `check-config` points out about the transport: a token sent in clear text to a
    /// port that other hosts can reach (anyone on the path can read it, and it lets them run
    /// every handler).
    pub fn transport_notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        let e = &self.executor;
        if !self.admin.access_token.is_empty() && e.tls.is_none() && !e.listen.is_loopback() {
            notes.push(format!(
                "an access token is configured but the port speaks plain HTTP on \
                 {} (executor.listen, not a loopback address): the token crosses the network \
                 in clear text on every request; set executor.tls_cert and executor.tls_key, \
                 or listen on 127.0.0.1 behind a TLS proxy.",
                e.listen
            ));
        }
        notes
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use crate::config::{Config, Overrides};

    fn load(pairs: &[(&str, &str)]) -> Config {
        let env: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load(None, &env, &Overrides::default()).unwrap()
    }

    #[test]
    fn a_token_in_clear_text_on_a_reachable_port_is_warned_about() {
        let notes = load(&[("XXL_JOB_ACCESS_TOKEN", "t")]).transport_notes();
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].contains("clear text"), "{}", notes[0]);
        assert!(notes[0].contains("0.0.0.0"), "{}", notes[0]);
        // Loopback, no token: nothing to say.
        for pairs in [
            &[
                ("XXL_JOB_ACCESS_TOKEN", "t"),
                ("XXL_EDGE_LISTEN", "127.0.0.1"),
            ][..],
            &[("XXL_EDGE_LISTEN", "::1"), ("XXL_JOB_ACCESS_TOKEN", "t")][..],
            &[][..],
        ] {
            assert!(load(pairs).transport_notes().is_empty(), "{pairs:?}");
        }
    }

    #[test]
    fn tls_keys_come_in_pairs_and_make_the_address_https() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert, "x").unwrap();
        std::fs::write(&key, "x").unwrap();
        let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
        let c = load(&[
            ("XXL_EDGE_TLS_CERT", cert),
            ("XXL_EDGE_TLS_KEY", key),
            ("XXL_JOB_ACCESS_TOKEN", "t"),
            ("XXL_JOB_EXECUTOR_IP", "10.0.0.5"),
        ]);
        let tls = c.executor.tls.clone().unwrap();
        assert_eq!(tls.reload_every, Some(std::time::Duration::from_secs(30)));
        assert_eq!(
            c.executor.registered_address(9999),
            "https://10.0.0.5:9999/"
        );
        assert!(c.transport_notes().is_empty());

        let env = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let problems = |pairs: &[(&str, &str)]| -> Vec<String> {
            match Config::load(None, &env(pairs), &Overrides::default()) {
                Err(crate::config::ConfigError::Invalid(e)) => {
                    e.iter().map(|(k, _)| k.to_string()).collect()
                }
                other => panic!("expected invalid values for {pairs:?}, got {other:?}"),
            }
        };
        assert_eq!(
            problems(&[("XXL_EDGE_TLS_CERT", cert)]),
            ["executor.tls_key"]
        );
        assert_eq!(
            problems(&[("XXL_EDGE_TLS_CLIENT_CA", cert)]),
            ["executor.tls_client_ca"]
        );
        assert_eq!(
            problems(&[
                ("XXL_EDGE_TLS_CERT", cert),
                ("XXL_EDGE_TLS_KEY", "/nonexistent/key.pem")
            ]),
            ["executor.tls_key"]
        );
        assert_eq!(
            problems(&[
                ("XXL_EDGE_TLS_CERT", cert),
                ("XXL_EDGE_TLS_KEY", key),
                ("XXL_JOB_EXECUTOR_ADDRESS", "http://gw:9999/")
            ]),
            ["executor.address"]
        );
        assert_eq!(
            problems(&[("XXL_EDGE_ADMIN_TLS_CERT", cert)]),
            ["admin.tls_key"]
        );
        let c = load(&[
            ("XXL_EDGE_TLS_CERT", cert),
            ("XXL_EDGE_TLS_KEY", key),
            ("XXL_EDGE_TLS_RELOAD_SECS", "0"),
            ("XXL_EDGE_ADMIN_TLS_CA", cert),
        ]);
        assert_eq!(c.executor.tls.unwrap().reload_every, None);
        assert_eq!(c.admin.tls_ca.as_deref(), Some(std::path::Path::new(cert)));
    }
}
