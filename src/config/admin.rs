//! `[admin]`: where the admin is and how to talk to it.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::check::Check;
use super::layers::{EnvVar, Kind};
use super::Secret;

/// The default admin address, as in the reference's sample config.
pub(super) const DEFAULT_ADMIN: &str = "http://127.0.0.1:8080/xxl-job-admin";

pub(super) const ENV: &[EnvVar] = &[
    EnvVar::new("XXL_JOB_ADMIN_ADDRESSES", "admin.addresses", Kind::List),
    EnvVar::new("XXL_JOB_ACCESS_TOKEN", "admin.access_token", Kind::Text),
    EnvVar::new("XXL_JOB_ADMIN_TIMEOUT", "admin.timeout_secs", Kind::Secs),
    EnvVar::new("XXL_EDGE_ADMIN_TLS_CA", "admin.tls_ca", Kind::Text),
    EnvVar::new("XXL_EDGE_ADMIN_TLS_CERT", "admin.tls_cert", Kind::Text),
    EnvVar::new("XXL_EDGE_ADMIN_TLS_KEY", "admin.tls_key", Kind::Text),
];

/// `[admin]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Raw {
    addresses: Option<Vec<String>>,
    access_token: Option<Secret>,
    timeout_secs: Option<f64>,
    tls_ca: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
}

/// Admin connection settings.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Admin base URLs, trailing `/` removed.
    pub addresses: Vec<String>,
    /// The shared token; empty means none. Never printed.
    pub access_token: Secret,
    /// Connect and read timeout for calls to the admin.
    pub timeout: Duration,
    /// PEM CA certificates that `https://` admins are verified against, instead of the
    /// system's roots.
    pub tls_ca: Option<PathBuf>,
    /// A client certificate (chain, PEM) and its key, for admins behind an mTLS proxy.
    pub tls_identity: Option<(PathBuf, PathBuf)>,
}

/// Why a token can never match what the admin sends (the problem never quotes the token).
///
/// A header value is visible ASCII with inner blanks, and HTTP strips blanks around it: a token
/// with a newline, a control character, a non-ASCII letter or an outer blank could never be
/// received as written. A token of blanks only would show as `(set)` yet turn the check off (as
/// the reference's `isNotBlank` does): "no token" is written as an empty one.
fn token_problem(token: &str) -> Result<(), &'static str> {
    if token.is_empty() {
        return Ok(());
    }
    if token.trim().is_empty() {
        return Err("is only blanks, which would turn the token check off; leave it empty (or unset) for no token");
    }
    if !token.chars().all(|c| matches!(c, ' '..='~')) {
        return Err("holds a character that an HTTP header cannot carry (a newline, a control character or non-ASCII); the admin's token could never match it");
    }
    if token.trim() != token {
        return Err("starts or ends with a blank, which HTTP strips from the header; the admin's token could never match it");
    }
    Ok(())
}

impl Raw {
    pub(super) fn convert(self, c: &mut Check) -> AdminConfig {
        let addresses: Vec<String> = self
            .addresses
            .unwrap_or_else(|| vec![DEFAULT_ADMIN.to_string()])
            .into_iter()
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .map(|a| a.trim_end_matches('/').to_string())
            .collect();
        for a in &addresses {
            let ok = a
                .strip_prefix("http://")
                .or_else(|| a.strip_prefix("https://"))
                .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'));
            if !ok || a.contains(',') || a.contains(char::is_whitespace) {
                c.problem(
                    "admin.addresses",
                    format!(
                        "\"{}\" is not an http:// or https:// URL",
                        crate::telemetry::redact_url(a)
                    ),
                );
            }
        }
        // Credentials in an address are for the HTTP client only, never for output.
        let shown: Vec<String> = addresses
            .iter()
            .map(|a| crate::telemetry::redact_url(a))
            .collect();
        c.show("admin.addresses", format!("{shown:?}"));
        let access_token = self.access_token.unwrap_or_default();
        if let Err(problem) = token_problem(access_token.expose()) {
            c.problem("admin.access_token", problem);
        }
        c.show("admin.access_token", &access_token);
        let given = |p: Option<PathBuf>| p.filter(|p| !p.as_os_str().is_empty());
        let tls_ca = given(self.tls_ca);
        if let Some(ca) = &tls_ca {
            super::executor::readable_file(c, "admin.tls_ca", ca);
        }
        let tls_identity = match (given(self.tls_cert), given(self.tls_key)) {
            (Some(cert), Some(key)) => {
                super::executor::readable_file(c, "admin.tls_cert", &cert);
                super::executor::readable_file(c, "admin.tls_key", &key);
                Some((cert, key))
            }
            (None, None) => None,
            (Some(_), None) => {
                c.problem("admin.tls_key", "must be set with admin.tls_cert");
                None
            }
            (None, Some(_)) => {
                c.problem("admin.tls_cert", "must be set with admin.tls_key");
                None
            }
        };
        AdminConfig {
            addresses,
            access_token,
            timeout: c.secs("admin.timeout_secs", self.timeout_secs, 3.0, 0.1..=600.0),
            tls_ca,
            tls_identity,
        }
    }
}
