//! TLS on the executor port and to the admin, on 127.0.0.1 with certificates made here (rcgen):
//! the protocol over https, client certificates, rotation (by a change of the files and by
//! SIGHUP), a broken new certificate, the admin's certificate verified, the wrong-token budget.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use support::{
    child, ok, sample_handlers, test_config_toml, FakeAdmin, Probe, TestExecutor, GUARD,
};

/// A certificate authority made for one test.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM.
struct Leaf {
    cert: String,
    key: String,
    der: Vec<u8>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Self {
            issuer: CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for 127.0.0.1 (`client`: a client certificate instead).
    fn leaf(&self, name: &str, client: bool) -> Leaf {
        let mut p = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

impl Leaf {
    fn identity(&self) -> reqwest::Identity {
        reqwest::Identity::from_pem(format!("{}\n{}", self.cert, self.key).as_bytes()).unwrap()
    }
}

/// Writes `leaf` to `dir`/cert.pem and key.pem the way a renewal does: each file replaced by a
/// rename, so the executor never reads half a file.
fn install(dir: &Path, leaf: &Leaf) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    for (path, text) in [(&key, &leaf.key), (&cert, &leaf.cert)] {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }
    (cert, key)
}

/// The executor's TOML: token `default_token`, data in `dir/data`, TLS files and other keys in
/// `executor_extra`.
fn config_toml(dir: &Path, admin: &str, executor_extra: &str, admin_extra: &str) -> String {
    test_config_toml(&dir.join("data"), admin, admin_extra, executor_extra, "")
}

fn tls_keys(cert: &Path, key: &Path) -> String {
    format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert.display(),
        key.display()
    )
}

/// An executor in this process on 127.0.0.1:0 with its own config.
struct Executor(TestExecutor);

impl Executor {
    async fn start(toml: &str) -> Self {
        let cfg = xxl_edge::Config::validate(xxl_edge::Config::parse_toml(toml).unwrap()).unwrap();
        let probe = Probe::new();
        let builder = sample_handlers(xxl_edge::Executor::builder().config(cfg), &probe);
        Self(TestExecutor::start(builder).await)
    }

    fn url(&self, scheme: &str, path: &str) -> String {
        format!("{scheme}://{}{path}", self.0.addr)
    }

    async fn shutdown(self) {
        self.0.shutdown().await;
    }
}

/// A client that trusts only `ca` and records the server's certificate of each answer.
fn https_client(ca: &Ca, identity: Option<reqwest::Identity>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap()])
        .tls_info(true)
        .timeout(GUARD);
    if let Some(id) = identity {
        b = b.identity(id);
    }
    b.build().unwrap()
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    body: &str,
    token: &str,
) -> reqwest::Result<(Value, Vec<u8>)> {
    let r = client
        .post(url)
        .header("XXL-JOB-ACCESS-TOKEN", token)
        .body(body.to_string())
        .send()
        .await?;
    let leaf = r
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .map(<[u8]>::to_vec)
        .unwrap_or_default();
    assert_eq!(r.status(), 200);
    Ok((r.json().await?, leaf))
}

/// The same requests get the same envelopes over https as over plain HTTP: /beat, /idleBeat,
/// /run, /log, /kill, a wrong token, an unknown target; and /metrics follows the port's TLS.
#[tokio::test]
async fn the_protocol_is_the_same_over_https() {
    let admin = FakeAdmin::start().await;
    let ca = Ca::new("test CA");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = install(dir.path(), &ca.leaf("executor", false));
    let plain_dir = tempfile::tempdir().unwrap();
    let plain = Executor::start(&config_toml(plain_dir.path(), &admin.url(), "", "")).await;
    let tls = Executor::start(&config_toml(
        dir.path(),
        &admin.url(),
        &tls_keys(&cert, &key),
        "",
    ))
    .await;
    let https = https_client(&ca, None);
    let http = reqwest::Client::new();

    let run = |log_id: i64| {
        json!({"jobId": 1, "executorHandler": "demoJobHandler", "executorParams": "",
               "executorBlockStrategy": "SERIAL_EXECUTION", "executorTimeout": 0,
               "logId": log_id, "logDateTime": 1717171717000i64, "glueType": "BEAN",
               "glueSource": "", "glueUpdatetime": 1541254891000i64,
               "broadcastIndex": 0, "broadcastTotal": 1})
        .to_string()
    };
    let vectors = [
        ("/beat", String::new(), "default_token"),
        ("/beat", "\"\"".to_string(), "default_token"),
        ("/beat", String::new(), "wrong_token"),
        ("/idleBeat", r#"{"jobId":7}"#.to_string(), "default_token"),
        ("/run", run(1), "default_token"),
        ("/run", "{".to_string(), "default_token"),
        ("/kill", r#"{"jobId":99}"#.to_string(), "default_token"),
        ("/foo", "{}".to_string(), "default_token"),
    ];
    for (path, body, token) in &vectors {
        let (over_http, _) = post(&http, &plain.url("http", path), body, token)
            .await
            .unwrap();
        let (over_https, leaf) = post(&https, &tls.url("https", path), body, token)
            .await
            .unwrap();
        assert_eq!(over_https, over_http, "{path} {body}");
        assert!(!leaf.is_empty(), "the answer came over TLS");
    }
    // Both runs end; their first log page is the same but for the timestamps.
    admin
        .wait_until("both callbacks", |a| a.callbacks_for(1).len() == 2)
        .await;
    let log = r#"{"logDateTim":1717171717000,"logId":1,"fromLineNum":1}"#;
    let (a, _) = post(&http, &plain.url("http", "/log"), log, "default_token")
        .await
        .unwrap();
    let (b, _) = post(&https, &tls.url("https", "/log"), log, "default_token")
        .await
        .unwrap();
    assert_eq!(a["code"], 200, "{a}");
    assert_eq!(b["code"], 200, "{b}");
    let shape = |v: &Value| {
        let mut v = v.clone();
        for k in ["content", "data"] {
            v[k]["logContent"] = json!(v[k]["logContent"].as_str().unwrap().lines().count());
        }
        v
    };
    assert_eq!(shape(&b), shape(&a));
    assert!(b["data"]["logContent"]
        .as_str()
        .unwrap()
        .contains("XXL-JOB, Hello World."));

    // /metrics follows the port: over https here, and plain HTTP is not answered.
    let m = https
        .get(tls.url("https", "/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("xxl_edge_"), "{m}");
    assert!(http.get(tls.url("http", "/beat")).send().await.is_err());
    // The admin was given an https:// address.
    admin.registrations(1).await;
    let reg = admin.calls("registry");
    let registered = reg
        .iter()
        .map(|c| c.body["registryValue"].as_str().unwrap().to_string())
        .find(|v| v.contains(&tls.0.addr.port().to_string()))
        .expect("the TLS executor registered");
    assert_eq!(
        registered,
        format!("https://127.0.0.1:{}/", tls.0.addr.port())
    );

    plain.shutdown().await;
    tls.shutdown().await;
}

/// With `executor.tls_client_ca`, only clients with a certificate from that CA get an answer.
#[tokio::test]
async fn client_certificates_are_verified_when_a_client_ca_is_set() {
    let admin = FakeAdmin::start().await;
    let ca = Ca::new("server CA");
    let clients = Ca::new("client CA");
    let other = Ca::new("another CA");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = install(dir.path(), &ca.leaf("executor", false));
    let client_ca = dir.path().join("clients.pem");
    std::fs::write(&client_ca, clients.pem()).unwrap();
    let extra = format!(
        "{}tls_client_ca = \"{}\"\n",
        tls_keys(&cert, &key),
        client_ca.display()
    );
    let ex = Executor::start(&config_toml(dir.path(), &admin.url(), &extra, "")).await;
    let url = ex.url("https", "/beat");

    let anonymous = https_client(&ca, None);
    let e = post(&anonymous, &url, "", "default_token")
        .await
        .unwrap_err();
    assert!(e.is_connect() || e.is_request(), "{e:?}");
    let stranger = https_client(&ca, Some(other.leaf("stranger", true).identity()));
    assert!(post(&stranger, &url, "", "default_token").await.is_err());

    let admin_proxy = https_client(&ca, Some(clients.leaf("proxy", true).identity()));
    let (v, _) = post(&admin_proxy, &url, "", "default_token").await.unwrap();
    assert_eq!(v, ok());
    ex.shutdown().await;
}

/// A new certificate on disk is picked up (here by `executor.tls_reload_secs`): new connections
/// get it, while a connection opened before keeps its own and goes on being answered.
#[tokio::test]
async fn a_renewed_certificate_is_served_to_new_connections_and_open_ones_go_on() {
    let admin = FakeAdmin::start().await;
    let ca = Ca::new("site CA");
    let dir = tempfile::tempdir().unwrap();
    let first = ca.leaf("executor-1", false);
    let (cert, key) = install(dir.path(), &first);
    let extra = format!("{}tls_reload_secs = 0.05\n", tls_keys(&cert, &key));
    let ex = Executor::start(&config_toml(dir.path(), &admin.url(), &extra, "")).await;
    let url = ex.url("https", "/beat");

    // One client, one pooled connection, kept open across the renewal.
    let kept = https_client(&ca, None);
    let (_, leaf) = post(&kept, &url, "", "default_token").await.unwrap();
    assert_eq!(leaf, first.der);

    let second = ca.leaf("executor-2", false);
    install(dir.path(), &second);
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        // A new client each time: a new connection, a new handshake.
        let (v, leaf) = post(&https_client(&ca, None), &url, "", "default_token")
            .await
            .unwrap();
        assert_eq!(v, ok());
        if leaf == second.der {
            break;
        }
        assert_eq!(leaf, first.der);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the renewed certificate was never served"
        );
        // Polling for the reload (every 50 ms), which the test cannot observe directly.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The connection opened before the renewal is still the old handshake, and still answered.
    let (v, leaf) = post(&kept, &url, "", "default_token").await.unwrap();
    assert_eq!(v, ok());
    assert_eq!(leaf, first.der, "the kept connection was not reused");
    ex.shutdown().await;
}

/// The binary: SIGHUP reloads; new files that cannot be used are refused with a log line and
/// the certificate in use stays; a good one on the next SIGHUP is taken.
#[tokio::test]
async fn a_broken_new_certificate_keeps_the_old_one() {
    use nix::sys::signal::Signal;
    let ca = Ca::new("site CA");
    let dir = tempfile::tempdir().unwrap();
    let first = ca.leaf("executor-1", false);
    let (cert, key) = install(dir.path(), &first);
    let config = dir.path().join("xxl-edge.toml");
    // Reload on SIGHUP only, so that each reload below is the one the signal asked for.
    let extra = format!("{}tls_reload_secs = 0\n", tls_keys(&cert, &key));
    std::fs::write(
        &config,
        config_toml(dir.path(), "http://127.0.0.1:9/xxl-job-admin", &extra, ""),
    )
    .unwrap();
    let ex = child::Child::start(&config).await;
    let url = format!("https://{}/beat", ex.addr);
    let leaf_now = || async {
        let (v, leaf) = post(&https_client(&ca, None), &url, "", "default_token")
            .await
            .unwrap();
        assert_eq!(v, ok());
        leaf
    };
    assert_eq!(leaf_now().await, first.der);

    let message = log_message;
    // A key that does not match the new certificate, as when a renewal is caught half done.
    let second = ca.leaf("executor-2", false);
    std::fs::write(&cert, &second.cert).unwrap();
    ex.signal(Signal::SIGHUP);
    let refused = ex
        .wait_line("the refusal", |v| {
            message(v).starts_with("The TLS files on disk are refused")
        })
        .await;
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("certificate and key"),
        "{refused}"
    );
    assert_eq!(leaf_now().await, first.der);
    // Not PEM at all.
    std::fs::write(&cert, "not a certificate").unwrap();
    ex.signal(Signal::SIGHUP);
    ex.wait_line("the second refusal", |v| {
        message(v).starts_with("The TLS files on disk are refused")
            && v["error"]
                .as_str()
                .is_some_and(|e| e.contains("CERTIFICATE"))
    })
    .await;
    assert_eq!(leaf_now().await, first.der);

    install(dir.path(), &second);
    ex.signal(Signal::SIGHUP);
    ex.wait_line("the reload", |v| {
        message(v).starts_with("TLS certificate reloaded")
    })
    .await;
    assert_eq!(leaf_now().await, second.der);
    assert!(ex.sigterm().await.success());
}

/// Without TLS, SIGHUP (what `systemctl reload` sends) is logged and the executor keeps serving
/// instead of taking the signal's default action and ending.
#[tokio::test]
async fn sighup_without_tls_is_logged_and_the_executor_serves_on() {
    use nix::sys::signal::Signal;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("xxl-edge.toml");
    std::fs::write(
        &config,
        config_toml(dir.path(), "http://127.0.0.1:9/xxl-job-admin", "", ""),
    )
    .unwrap();
    let ex = child::Child::start(&config).await;
    ex.signal(Signal::SIGHUP);
    ex.wait_line("the SIGHUP line", |v| {
        log_message(v).starts_with("SIGHUP: nothing to reload")
    })
    .await;
    let beat = ex.post("/beat", String::new()).await;
    assert_eq!(beat, Some(ok()), "still serving after SIGHUP");
    assert!(ex.sigterm().await.success());
}

/// A log line's message (`--log-json` puts it at the top level).
fn log_message(v: &Value) -> String {
    v["message"].as_str().unwrap_or("").to_string()
}

/// A fake admin over TLS with a self-signed certificate: it records each handshake's outcome
/// and each request's target, and answers `{"code":200}`.
async fn tls_admin() -> (
    SocketAddr,
    String,
    mpsc::UnboundedReceiver<Result<String, String>>,
) {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let key = rustls_pki_types::PrivateKeyDer::try_from(signing_key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let mut tls = match acceptor.accept(tcp).await {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // One small request: its head, then the body its Content-Length announces.
                let (head_end, len) = loop {
                    let n = tls.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                        break (end + 4, len);
                    }
                    assert!(buf.len() < 64 * 1024);
                };
                while buf.len() < head_end + len {
                    let n = tls.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let target = String::from_utf8_lossy(&buf[..head_end])
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("")
                    .to_string();
                let body = r#"{"code":200,"msg":null}"#;
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(reply.as_bytes()).await;
                let _ = tls.shutdown().await;
                let _ = tx.send(Ok(target));
            });
        }
    });
    (addr, cert.pem(), rx)
}

async fn metrics(ex: &Executor) -> String {
    reqwest::get(ex.url("http", "/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// An `https://` admin whose certificate is self-signed: refused against the system roots, and
/// counted as a verification failure (not as unreachable); accepted once `admin.tls_ca` names
/// it.
#[tokio::test]
async fn an_admin_certificate_is_verified_against_admin_tls_ca() {
    let (addr, admin_cert, mut events) = tls_admin().await;
    let admin_url = format!("https://{addr}/xxl-job-admin");

    let dir = tempfile::tempdir().unwrap();
    let ex = Executor::start(&config_toml(dir.path(), &admin_url, "", "")).await;
    // The registration at start: the handshake fails at the admin's end...
    let first = tokio::time::timeout(GUARD, events.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(first.is_err(), "{first:?}");
    // ...and the executor reports it as what it is.
    let wanted = format!(
        r#"xxl_edge_admin_requests_total{{admin="{admin_url}",call="registry",result="tls_verify_failed"}} 1"#
    );
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let m = metrics(&ex).await;
        if m.contains(&wanted) {
            // Every series exists from the start (at zero): "unreachable" must stay there.
            let unreachable = format!(
                r#"xxl_edge_admin_requests_total{{admin="{admin_url}",call="registry",result="unreachable"}} 0"#
            );
            assert!(m.contains(&unreachable), "{m}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{wanted} never in:\n{m}"
        );
        // The counter moves right after the failed call, which the test cannot observe.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    ex.shutdown().await;
    // registryRemove at shutdown failed the same way.
    let removal = tokio::time::timeout(GUARD, events.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(removal.is_err(), "{removal:?}");

    let ca = dir.path().join("admin-ca.pem");
    std::fs::write(&ca, &admin_cert).unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    let ex = Executor::start(&config_toml(
        dir2.path(),
        &admin_url,
        "",
        &format!("tls_ca = \"{}\"", ca.display()),
    ))
    .await;
    let registered = tokio::time::timeout(GUARD, events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(registered, Ok("/xxl-job-admin/api/registry".to_string()));
    ex.shutdown().await;
}

/// Ten wrong tokens from one address, then even the right token from it is refused (without
/// being compared), while another address is answered; both get the envelope's token error.
#[tokio::test]
async fn a_peer_that_spent_its_wrong_token_budget_is_refused() {
    let admin = FakeAdmin::start().await;
    let ca = Ca::new("test CA");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = install(dir.path(), &ca.leaf("executor", false));
    let ex = Executor::start(&config_toml(
        dir.path(),
        &admin.url(),
        &tls_keys(&cert, &key),
        "",
    ))
    .await;
    let url = ex.url("https", "/beat");
    let wrong = json!({"code":500,"msg":"The access token is wrong."});
    let guesser = https_client(&ca, None);
    for _ in 0..10 {
        assert_eq!(post(&guesser, &url, "", "guess").await.unwrap().0, wrong);
    }
    // The budget earns one wrong token back every 6 s; these requests take milliseconds.
    assert_eq!(
        post(&guesser, &url, "", "default_token").await.unwrap().0,
        wrong
    );
    let elsewhere = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap()])
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    assert_eq!(
        post(&elsewhere, &url, "", "default_token").await.unwrap().0,
        ok()
    );
    ex.shutdown().await;
}

/// `check-config` warns about a token sent in clear text to a reachable port, and not once TLS
/// is on (the registered address then shows `https://`).
#[test]
fn check_config_warns_about_a_token_in_clear_text() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let (cert, key) = install(dir.path(), &ca.leaf("executor", false));
    let check = |env: &[(&str, &str)]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_xxl-edge"))
            .arg("check-config")
            .env_remove("XXL_JOB_ACCESS_TOKEN")
            .env_remove("XXL_EDGE_LISTEN")
            .envs(env.iter().copied())
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let warning = "note: an access token is configured but the port speaks plain HTTP on 0.0.0.0";
    let out = check(&[("XXL_JOB_ACCESS_TOKEN", "t")]);
    assert!(out.contains(warning), "{out}");
    let out = check(&[
        ("XXL_JOB_ACCESS_TOKEN", "t"),
        ("XXL_EDGE_LISTEN", "127.0.0.1"),
    ]);
    assert!(!out.contains("note:"), "{out}");
    let out = check(&[
        ("XXL_JOB_ACCESS_TOKEN", "t"),
        ("XXL_EDGE_TLS_CERT", cert.to_str().unwrap()),
        ("XXL_EDGE_TLS_KEY", key.to_str().unwrap()),
        ("XXL_JOB_EXECUTOR_IP", "10.0.0.5"),
    ]);
    assert!(!out.contains("note:"), "{out}");
    assert!(
        out.contains("registered address = https://10.0.0.5:9999/"),
        "{out}"
    );
    assert!(out.contains("executor.tls_cert = "), "{out}");
}
