//! The admin client against a scripted peer on 127.0.0.1: each test decides, per request path,
//! the raw HTTP answer, and reads every request head the peer received.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::admin::wire::RegistryParam;
use crate::config::Config;

const TOKEN: &str = "s3cr3t-admin-token";

type Script = Arc<dyn Fn(&str) -> Vec<u8> + Send + Sync>;

/// A peer that answers each request (one per connection) with what its script says for the
/// request's path, and records each request's head.
#[derive(Clone)]
struct Peer {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    script: Arc<Mutex<Script>>,
}

impl Peer {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = Self {
            addr: listener.local_addr().unwrap(),
            heads: Arc::default(),
            script: Arc::new(Mutex::new(Arc::new(|_: &str| ok_answer()))),
        };
        let p = peer.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let p = p.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    // Bounded: one small request's head and body.
                    while buf.len() < 1 << 20 {
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).to_string();
                            let len: usize = head
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse().unwrap())
                                })
                                .unwrap_or(0);
                            if buf.len() >= end + 4 + len {
                                break;
                            }
                        }
                        let n = conn.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let head = String::from_utf8_lossy(&buf).to_string();
                    let path = head.split(' ').nth(1).unwrap_or("").to_string();
                    p.heads.lock().unwrap().push(head);
                    let script = p.script.lock().unwrap().clone();
                    // The client may hang up mid-answer (an answer too large): not an error here.
                    let _ = conn.write_all(&script(&path)).await;
                });
            }
        });
        peer
    }

    fn answer(&self, f: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static) {
        *self.script.lock().unwrap() = Arc::new(f);
    }

    /// The paths requested so far.
    fn paths(&self) -> Vec<String> {
        self.heads
            .lock()
            .unwrap()
            .iter()
            .map(|h| h.split(' ').nth(1).unwrap_or("").to_string())
            .collect()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

fn answer(status: &str, extra_headers: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra_headers}connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn ok_answer() -> Vec<u8> {
    answer("200 OK", "", r#"{"code":200,"msg":null}"#)
}

fn client(admin: &str) -> AdminClient {
    let mut cfg = Config::defaults().admin;
    cfg.addresses = vec![admin.to_string()];
    cfg.access_token = Secret::new(TOKEN);
    AdminClient::new(&cfg, Metrics::new().unwrap()).unwrap()
}

fn batch() -> Vec<HandleCallbackParam> {
    serde_json::from_value(serde_json::json!([
        {"logId": 1, "logDateTim": 1, "handleCode": 200, "handleMsg": "ok"}
    ]))
    .unwrap()
}

/// Issue 10 #4: a 307 (or 302) to another host made the client post the callback, with the
/// token, there, and take that host's `{"code":200}` for delivery. Now no redirect is followed:
/// the call fails (and the reporter retries it) and the other host hears nothing.
#[tokio::test]
async fn redirects_are_never_followed_and_fail_the_call() {
    let thief = Peer::start().await;
    let admin = Peer::start().await;
    for status in [
        "307 Temporary Redirect",
        "302 Found",
        "308 Permanent Redirect",
    ] {
        let to = thief.url("/xxl-job-admin/api/callback");
        admin.answer(move |_| answer(status, &format!("location: {to}\r\n"), ""));
        let c = client(&admin.url("/xxl-job-admin"));
        let e = c.callback(&batch()).await.unwrap_err();
        assert!(matches!(e, AdminError::Redirect(..)), "{status}: {e:?}");
        assert_eq!(e.kind(), "redirect");
        assert!(e.to_string().contains("redirects are not followed"), "{e}");
        assert!(e.to_string().contains(&thief.addr.to_string()), "{e}");
        let e = c
            .registry(0, &RegistryParam::executor("app", "http://127.0.0.1:9999/"))
            .await
            .unwrap_err();
        assert!(matches!(e, AdminError::Redirect(..)), "{status}: {e:?}");
    }
    assert_eq!(thief.heads.lock().unwrap().len(), 0, "the token left");
}

/// Issue 10 #5: one 404 under `/xxl-job-admin` while `/api/*` answered something else switched
/// the client to `/` for good. Now the other form is used only once it gives an admin's
/// answer, and a failure there sends the client back to the configured form.
#[tokio::test]
async fn context_path_discovery_is_reversible() {
    let admin = Peer::start().await;
    let c = client(&admin.url("/xxl-job-admin"));
    let reg = RegistryParam::executor("app", "http://127.0.0.1:9999/");

    // The admin restarts: its app answers 404 for a moment while the proxy answers 503 at `/`.
    admin.answer(|path| {
        if path.starts_with("/xxl-job-admin/") {
            answer("404 Not Found", "", "")
        } else {
            answer("503 Service Unavailable", "", "")
        }
    });
    assert!(c.registry(0, &reg).await.is_err());
    // Back: the configured form works at once.
    admin.answer(|path| {
        if path.starts_with("/xxl-job-admin/") {
            ok_answer()
        } else {
            answer("503 Service Unavailable", "", "")
        }
    });
    c.registry(0, &reg).await.unwrap();
    assert_eq!(
        admin.paths().last().map(String::as_str),
        Some("/xxl-job-admin/api/registry")
    );

    // A 3.4.1+ admin at `/`: discovered on the 404, then used directly.
    admin.answer(|path| {
        if path.starts_with("/xxl-job-admin/") {
            answer("404 Not Found", "", "")
        } else {
            ok_answer()
        }
    });
    c.registry(0, &reg).await.unwrap();
    let before = admin.paths().len();
    c.callback(&batch()).await.unwrap();
    assert_eq!(admin.paths()[before..], ["/api/callback".to_string()]);

    // It moves back under the context path: a failure at `/` tries the configured form again.
    admin.answer(|path| {
        if path.starts_with("/xxl-job-admin/") {
            ok_answer()
        } else {
            answer("502 Bad Gateway", "", "")
        }
    });
    c.callback(&batch()).await.unwrap();
    let before = admin.paths().len();
    c.callback(&batch()).await.unwrap();
    assert_eq!(
        admin.paths()[before..],
        ["/xxl-job-admin/api/callback".to_string()]
    );
}

/// Issue 10 #6: an answer was read whole (256 MiB took the process to 733 MiB). Now at most
/// [`MAX_ANSWER_BYTES`] are read, announced (Content-Length) or not (chunked).
#[tokio::test]
async fn a_large_answer_is_refused_not_read_whole() {
    let admin = Peer::start().await;
    let c = client(&admin.url("/xxl-job-admin"));
    let big = format!(r#"{{"code":200,"msg":"{}"}}"#, "x".repeat(1 << 20));
    let body = big.clone();
    admin.answer(move |_| answer("200 OK", "", &body));
    let e = c.callback(&batch()).await.unwrap_err();
    assert!(matches!(e, AdminError::Invalid(..)), "{e:?}");
    assert!(e.to_string().contains("larger than 64 KiB"), "{e}");

    admin.answer(move |_| {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n",
            big.len()
        )
        .into_bytes()
    });
    let e = c.callback(&batch()).await.unwrap_err();
    assert!(e.to_string().contains("larger than 64 KiB"), "{e}");

    // An answer of ordinary size is still read.
    admin.answer(|_| ok_answer());
    c.callback(&batch()).await.unwrap();
}
