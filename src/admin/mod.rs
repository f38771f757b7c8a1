//! The XXL-JOB admin side: wire DTOs ([`wire`]) and the client that calls
//! `{admin}/api/registry`, `registryRemove` and `callback`.
//!
//! The token header is always sent, even when empty (3.3.0–3.3.1 admins require it), and only
//! to a configured admin: redirects are never followed (one to another host would hand it the
//! token and the results, and its `{"code":200}` would pass for delivery); a redirect is a failed
//! call, retried like any other. An answer is read up to [`MAX_ANSWER_BYTES`].
//!
//! An admin URL works with or without its `/xxl-job-admin` context path: on HTTP 404 the other
//! form is tried, and used from then on if it gives an admin's answer, since admins before 3.4.1
//! default to that path and later ones to `/`. The switch is not for good: when the other form
//! fails, the configured one is tried again (a 404 during an admin's restart must not leave the
//! executor on the wrong path once it is back).

pub mod wire;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{AdminConfig, Secret};
use crate::telemetry::Metrics;
use wire::{AdminReply, HandleCallbackParam, RegistryParam};

/// The header both sides use for the shared token.
pub const TOKEN_HEADER: &str = "XXL-JOB-ACCESS-TOKEN";

/// A failed call to one admin.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AdminError {
    /// Connect, timeout or protocol error.
    #[error("xxl-job remoting error({0}), for url : {1}")]
    Transport(String, String),
    /// The admin's TLS certificate failed verification (system roots, or `admin.tls_ca`), or
    /// the admin refused ours.
    #[error("TLS verification failed ({0}), for url : {1}")]
    TlsVerify(String, String),
    /// `admin.tls_ca` or `admin.tls_cert`/`admin.tls_key` cannot be used.
    #[error("admin TLS setup: {0}")]
    TlsSetup(String),
    /// The admin answered with an HTTP status other than 200.
    #[error("Http Request fail, statusCode({0}) for url : {1}")]
    Status(u16, String),
    /// The admin answered, but not with `code == 200`.
    #[error("callbackResult: code={0}, msg={1}")]
    Rejected(i32, String),
    /// The admin answered with a redirect, which is not followed.
    #[error("the admin answered {0} (a redirect to {2}), for url : {1}; redirects are not followed: configure the address it points to")]
    Redirect(u16, String, String),
    /// The body was not the admin's JSON envelope.
    #[error("xxl-job remoting (url={0}) response content invalid({1}).")]
    Invalid(String, String),
    /// No admin is configured.
    #[error("no admin address is configured")]
    NoAdmin,
}

/// Every `result` label value of `xxl_edge_admin_requests_total`: `ok` and each
/// [`AdminError::kind`], for the series created at start.
pub const ADMIN_RESULTS: &[&str] = &[
    "ok",
    "unreachable",
    "http_error",
    "redirect",
    "rejected",
    "invalid_reply",
    "no_admin",
    "tls_verify_failed",
    "tls_setup",
];

impl AdminError {
    /// A bounded label value.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Transport(..) => "unreachable",
            Self::TlsVerify(..) => "tls_verify_failed",
            Self::TlsSetup(..) => "tls_setup",
            Self::Status(..) => "http_error",
            Self::Redirect(..) => "redirect",
            Self::Rejected(..) => "rejected",
            Self::Invalid(..) => "invalid_reply",
            Self::NoAdmin => "no_admin",
        }
    }
}

/// One admin and the base URL that answered last.
#[derive(Debug)]
struct Admin {
    configured: String,
    /// `configured` without its credentials: for labels, spans and logs.
    shown: String,
    resolved: Mutex<String>,
}

/// Client for every configured admin; cheap to clone.
#[derive(Clone, Debug)]
pub struct AdminClient {
    http: reqwest::Client,
    admins: Arc<Vec<Admin>>,
    /// Sent on every call; `Secret` keeps it out of this client's `Debug`.
    token: Secret,
    metrics: Metrics,
    /// Index of the admin that took the last callback batch, to log failovers once.
    callback_admin: Arc<std::sync::atomic::AtomicUsize>,
}

const CONTEXT_PATH: &str = "/xxl-job-admin";

/// The most read of an admin's answer: its envelope is a few dozen bytes, and an answer read
/// whole (a 256 MiB one took the process to 733 MiB) is memory a device does not have.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The other form of an admin URL: with its context path when it has none, and without when it
/// has it.
fn other_form(base: &str) -> String {
    match base.strip_suffix(CONTEXT_PATH) {
        Some(stripped) => stripped.to_string(),
        None => format!("{base}{CONTEXT_PATH}"),
    }
}

/// The call reached an admin (it answered with its envelope, whatever the code): the URL form
/// is right.
fn admin_answered(res: &Result<(), AdminError>) -> bool {
    matches!(res, Ok(()) | Err(AdminError::Rejected(..)))
}

impl AdminClient {
    /// Builds the client.
    ///
    /// # Errors
    /// The TLS backend could not be initialised.
    pub fn new(cfg: &AdminConfig, metrics: Metrics) -> Result<Self, AdminError> {
        let http = tls_settings(reqwest::Client::builder(), cfg)?
            .connect_timeout(cfg.timeout)
            .timeout(cfg.timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(2)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("xxl-edge/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| AdminError::Transport(e.to_string(), String::new()))?;
        Ok(Self {
            http,
            admins: Arc::new(
                cfg.addresses
                    .iter()
                    .map(|a| Admin {
                        configured: a.clone(),
                        shown: crate::telemetry::redact_url(a),
                        resolved: Mutex::new(a.clone()),
                    })
                    .collect(),
            ),
            token: cfg.access_token.clone(),
            metrics,
            callback_admin: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        })
    }

    /// The configured admin addresses, in order.
    pub fn addresses(&self) -> Vec<String> {
        self.admins.iter().map(|a| a.configured.clone()).collect()
    }

    /// The configured admin addresses without credentials (userinfo, query values), for
    /// labels and logs.
    pub fn shown_addresses(&self) -> Vec<String> {
        self.admins.iter().map(|a| a.shown.clone()).collect()
    }

    /// Registers with admin `i`.
    ///
    /// # Errors
    /// The call failed or was rejected.
    pub async fn registry(&self, i: usize, p: &RegistryParam) -> Result<(), AdminError> {
        self.call(i, "registry", p).await
    }

    /// Deregisters from admin `i`.
    ///
    /// # Errors
    /// The call failed or was rejected.
    pub async fn registry_remove(&self, i: usize, p: &RegistryParam) -> Result<(), AdminError> {
        self.call(i, "registryRemove", p).await
    }

    /// Sends a callback batch to the first admin that answers `code == 200`.
    ///
    /// # Errors
    /// The last admin's error when none accepted it.
    pub async fn callback(&self, batch: &[HandleCallbackParam]) -> Result<usize, AdminError> {
        let mut last = AdminError::NoAdmin;
        for i in 0..self.admins.len() {
            match self.call(i, "callback", batch).await {
                Ok(()) => {
                    let before = self
                        .callback_admin
                        .swap(i, std::sync::atomic::Ordering::Relaxed);
                    if before != i {
                        tracing::warn!(
                            from = %self.admins[before.min(self.admins.len() - 1)].shown,
                            to = %self.admins[i].shown,
                            "Admin failover: callbacks now go to another admin."
                        );
                    }
                    return Ok(i);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn call<T: serde::Serialize + ?Sized>(
        &self,
        i: usize,
        call: &str,
        body: &T,
    ) -> Result<(), AdminError> {
        let admin = self.admins.get(i).ok_or(AdminError::NoAdmin)?;
        let started = Instant::now();
        let base = admin
            .resolved
            .lock()
            .map(|b| b.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        let mut res = self.post(&base, call, body).await;
        let on_other_form = base != admin.configured;
        // A 404 says the path is wrong; any failure on the other form may mean the admin is
        // back under the configured one.
        if !admin_answered(&res)
            && (on_other_form || matches!(res, Err(AdminError::Status(404, _))))
        {
            let alt = other_form(&base);
            let alt_res = self.post(&alt, call, body).await;
            if admin_answered(&alt_res) {
                if let Ok(mut r) = admin.resolved.lock() {
                    tracing::info!(configured = %admin.shown, using = %crate::telemetry::redact_url(&alt), "Admin answers under another context path; using it.");
                    *r = alt;
                }
                res = alt_res;
            } else if on_other_form {
                // Neither answered: start from the configured form next time, and report its
                // failure (the one the operator can act on).
                if let Ok(mut r) = admin.resolved.lock() {
                    *r = admin.configured.clone();
                }
                res = alt_res;
            }
        }
        let result = match &res {
            Ok(()) => "ok",
            Err(e) => e.kind(),
        };
        self.metrics
            .admin_requests
            .with_label_values(&[&admin.shown, call, result])
            .inc();
        self.metrics
            .admin_latency
            .with_label_values(&[&admin.shown, call])
            .observe(started.elapsed().as_secs_f64());
        res
    }

    async fn post<T: serde::Serialize + ?Sized>(
        &self,
        base: &str,
        call: &str,
        body: &T,
    ) -> Result<(), AdminError> {
        let url = format!("{base}/api/{call}");
        let span = tracing::debug_span!(
            "admin.call",
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            http.request.method = "POST",
            url.full = crate::telemetry::redact_url(&url),
            xxl.admin.call = call,
            http.response.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        let res = tracing::Instrument::instrument(self.post_url(&url, body), span.clone()).await;
        match &res {
            // As integers (the conventions' type): the bridge records unsigned values as text.
            Ok(status) => {
                span.record("http.response.status_code", i64::from(*status));
            }
            Err(e) => {
                span.record("otel.status_code", "ERROR");
                // The conventions' `error.type`: the status code when the admin answered with
                // one, else what went wrong (bounded).
                if let AdminError::Status(code, _) = e {
                    span.record("http.response.status_code", i64::from(*code));
                    span.record("error.type", code.to_string());
                } else {
                    span.record("error.type", e.kind());
                }
                span.record("otel.status_description", e.to_string());
            }
        }
        res.map(|_| ())
    }

    async fn post_url<T: serde::Serialize + ?Sized>(
        &self,
        url: &str,
        body: &T,
    ) -> Result<u16, AdminError> {
        // Errors are logged, written into run logs and put on spans: they name the URL
        // without its credentials.
        let shown = crate::telemetry::redact_url(url);
        let json = serde_json::to_vec(body)
            .map_err(|e| AdminError::Invalid(shown.clone(), e.to_string()))?;
        let resp = self
            .http
            .post(url)
            .header("Content-Type", "application/json;charset=UTF-8")
            .header(TOKEN_HEADER, self.token.expose())
            .body(json)
            .send()
            .await
            .map_err(|e| transport_error(&e, url, &shown))?;
        let status = resp.status().as_u16();
        if resp.status().is_redirection() {
            let location = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .unwrap_or("nowhere")
                .chars()
                .take(200)
                .collect();
            return Err(AdminError::Redirect(status, shown, location));
        }
        if status != 200 {
            return Err(AdminError::Status(status, shown));
        }
        let body = read_capped(resp, url).await?;
        let reply: AdminReply = serde_json::from_slice(&body).map_err(|_| {
            AdminError::Invalid(
                shown.clone(),
                String::from_utf8_lossy(&body).chars().take(200).collect(),
            )
        })?;
        if reply.code == 200 {
            Ok(status)
        } else {
            Err(AdminError::Rejected(
                reply.code,
                reply.msg.unwrap_or_default(),
            ))
        }
    }
}

/// The answer's body, refused once it passes [`MAX_ANSWER_BYTES`] (announced or read).
async fn read_capped(mut resp: reqwest::Response, url: &str) -> Result<Vec<u8>, AdminError> {
    let shown = crate::telemetry::redact_url(url);
    let too_large = || {
        AdminError::Invalid(
            shown.clone(),
            format!("the answer is larger than {} KiB", MAX_ANSWER_BYTES / 1024),
        )
    };
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| {
        AdminError::Transport(
            crate::telemetry::redact::redact_in(&error_chain(&e), url),
            shown.clone(),
        )
    })? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `admin.tls_ca` (the only roots `https://` admins are verified against when set; the
/// system's otherwise) and the client identity.
fn tls_settings(
    b: reqwest::ClientBuilder,
    cfg: &AdminConfig,
) -> Result<reqwest::ClientBuilder, AdminError> {
    let read = |what: &str, p: &std::path::Path| {
        std::fs::read(p)
            .map_err(|e| AdminError::TlsSetup(format!("cannot read {what} {}: {e}", p.display())))
    };
    let mut b = b.tls_version_min(reqwest::tls::Version::TLS_1_2);
    if let Some(ca) = &cfg.tls_ca {
        let certs = reqwest::Certificate::from_pem_bundle(&read("admin.tls_ca", ca)?)
            .map_err(|e| AdminError::TlsSetup(format!("admin.tls_ca {}: {e}", ca.display())))?;
        if certs.is_empty() {
            return Err(AdminError::TlsSetup(format!(
                "admin.tls_ca {} holds no PEM certificate",
                ca.display()
            )));
        }
        b = b.tls_certs_only(certs);
    }
    if let Some((cert, key)) = &cfg.tls_identity {
        let mut pem = read("admin.tls_cert", cert)?;
        pem.push(b'\n');
        pem.extend_from_slice(&read("admin.tls_key", key)?);
        let id = reqwest::Identity::from_pem(&pem).map_err(|e| {
            AdminError::TlsSetup(format!(
                "admin.tls_cert {} / admin.tls_key {}: {e}",
                cert.display(),
                key.display()
            ))
        })?;
        b = b.identity(id);
    }
    Ok(b)
}

/// A failed send: a certificate that failed verification (ours of the admin's, or the admin's
/// of ours) is told apart from an unreachable admin, since the fix is a CA file, not the network.
/// `url` is the real one (its credentials are taken out of the error text), `shown` the
/// redacted one the error names.
fn transport_error(e: &reqwest::Error, url: &str, shown: &str) -> AdminError {
    match tls_verify_failure(e) {
        Some(why) => AdminError::TlsVerify(
            crate::telemetry::redact::redact_in(&why, url),
            shown.to_string(),
        ),
        None => AdminError::Transport(
            crate::telemetry::redact::redact_in(&error_chain(e), url),
            shown.to_string(),
        ),
    }
}

/// The rustls error in `e`'s chain, when it is about a certificate. `io::Error::source` skips
/// the error it wraps (hyper-rustls nests the rustls error two `io::Error`s deep), so each
/// `io::Error` is opened instead.
fn tls_verify_failure(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            use rustls::AlertDescription as A;
            return match r {
                rustls::Error::InvalidCertificate(_)
                | rustls::Error::NoCertificatesPresented
                | rustls::Error::AlertReceived(
                    A::BadCertificate
                    | A::UnknownCA
                    | A::CertificateRequired
                    | A::CertificateUnknown
                    | A::CertificateExpired
                    | A::CertificateRevoked
                    | A::UnsupportedCertificate
                    | A::AccessDenied,
                ) => Some(r.to_string()),
                _ => None,
            };
        }
        next = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// Against a scripted peer on real sockets: redirects, context-path discovery, answer size.
#[cfg(test)]
#[path = "client_tests.rs"]
mod client_tests;

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::config::Config;

    const TOKEN: &str = "s3cr3t-admin-token";

    /// Answers one request with the admin's success envelope and hands back the request's head.
    async fn one_admin_reply(listener: tokio::net::TcpListener) -> String {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        // Bounded: the head of one small request.
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 64 * 1024 {
            let n = conn.read(&mut chunk).await.unwrap();
            assert!(n > 0, "client closed before its request head ended");
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = r#"{"code":200,"msg":null}"#;
        let reply = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(reply.as_bytes()).await.unwrap();
        String::from_utf8_lossy(&buf).into_owned()
    }

    #[tokio::test]
    async fn the_token_is_sent_but_never_printed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut cfg = Config::defaults().admin;
        cfg.addresses = vec![format!("http://{}", listener.local_addr().unwrap())];
        cfg.access_token = Secret::new(TOKEN);
        let client = AdminClient::new(&cfg, Metrics::new().unwrap()).unwrap();
        assert!(!format!("{client:?}").contains(TOKEN));
        assert!(!format!("{cfg:?}").contains(TOKEN));

        let admin = tokio::spawn(one_admin_reply(listener));
        let p = RegistryParam::executor("app", "http://127.0.0.1:9999/");
        client.registry(0, &p).await.unwrap();
        let head = admin.await.unwrap().to_ascii_lowercase();
        assert!(
            head.contains(&format!("xxl-job-access-token: {TOKEN}")),
            "{head}"
        );
    }
}
