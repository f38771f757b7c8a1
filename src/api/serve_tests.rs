//! The accept loop on a real listener with real sockets: a client that
//! leaves mid-request is normal traffic (DEBUG, never WARN or ERROR) and the server keeps
//! answering; shutdown stops accepting but lets a request in flight finish.
//!
//! Each test runs on the current-thread runtime, so the log-capturing subscriber set for the test
//! also sees the events of the connection tasks the server spawns.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::{Debug, Write as _};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::serve;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;
use warp::Filter;

const GUARD: Duration = Duration::from_secs(20);

/// Every event the code under test emits, with its level.
#[derive(Clone, Default)]
struct Events {
    seen: Arc<Mutex<Vec<(tracing::Level, String)>>>,
    added: Arc<Notify>,
}

impl<S: tracing::Subscriber> Layer<S> for Events {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        struct Text(String);
        impl Visit for Text {
            fn record_debug(&mut self, f: &Field, v: &dyn Debug) {
                let _ = write!(self.0, "{}={v:?} ", f.name());
            }
        }
        let mut t = Text(String::new());
        event.record(&mut t);
        self.seen
            .lock()
            .unwrap()
            .push((*event.metadata().level(), t.0));
        self.added.notify_waiters();
    }
}

impl Events {
    /// Waits (bounded) until `n` events contain `needle`; returns their levels.
    async fn wait_for(&self, needle: &str, n: usize) -> Vec<tracing::Level> {
        let deadline = tokio::time::Instant::now() + GUARD;
        loop {
            let added = self.added.notified();
            tokio::pin!(added);
            added.as_mut().enable();
            let levels: Vec<tracing::Level> = self
                .seen
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, t)| t.contains(needle))
                .map(|(l, _)| *l)
                .collect();
            if levels.len() >= n {
                return levels;
            }
            assert!(
                tokio::time::timeout_at(deadline, added).await.is_ok(),
                "fewer than {n} events mention {needle:?}: {:?}",
                self.seen.lock().unwrap()
            );
        }
    }

    fn at_warn_or_above(&self) -> Vec<(tracing::Level, String)> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(l, _)| *l <= tracing::Level::WARN)
            .cloned()
            .collect()
    }
}

/// Starts `serve` on 127.0.0.1:0 with a warp filter, as the executor does with its routes.
async fn start<F>(filter: F) -> (SocketAddr, CancellationToken, JoinHandle<()>)
where
    F: Filter<Extract = (String,), Error = warp::Rejection> + Clone + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let svc = TowerToHyperService::new(warp::service(filter));
    let task = tokio::spawn(serve(listener, svc, stop.clone()));
    (addr, stop, task)
}

/// One whole request on its own connection; returns the raw answer.
async fn request(addr: SocketAddr, body: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(GUARD, s.read_to_end(&mut out))
        .await
        .expect("an answer in time")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

fn echo_len() -> impl Filter<Extract = (String,), Error = warp::Rejection> + Clone {
    warp::post()
        .and(warp::body::bytes())
        .map(|b: bytes::Bytes| format!("got {}", b.len()))
}

#[tokio::test]
async fn a_client_that_hangs_up_mid_request_is_not_an_error() {
    let events = Events::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(events.clone()));
    let (addr, stop, task) = start(echo_len()).await;

    // Two clients close halfway through their headers: hyper reports each connection as
    // "connection closed before message completed" (warp's own loop logged that
    // `hyper::Error(IncompleteMessage)` at ERROR).
    for _ in 0..2 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Le")
            .await
            .unwrap();
        drop(s);
    }
    // One closes halfway through its body: the handler's body read fails (warp rejects it).
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"jobId\":")
        .await
        .unwrap();
    drop(s);
    let levels = events.wait_for("closed before message completed", 2).await;
    assert!(
        levels.iter().all(|l| *l == tracing::Level::DEBUG),
        "{levels:?}"
    );
    events.wait_for("IncompleteBody", 1).await;
    // The server still answers.
    let answer = request(addr, "hello").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("got 5"), "{answer}");
    stop.cancel();
    tokio::time::timeout(GUARD, task).await.unwrap().unwrap();
    assert_eq!(events.at_warn_or_above(), vec![]);
}

#[tokio::test]
async fn shutdown_stops_accepting_and_finishes_the_request_in_flight() {
    let entered = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let slow = {
        let (entered, release) = (entered.clone(), release.clone());
        warp::post()
            .and(warp::body::bytes())
            .then(move |b: bytes::Bytes| {
                let (entered, release) = (entered.clone(), release.clone());
                async move {
                    entered.notify_one();
                    release.notified().await;
                    format!("done {}", b.len())
                }
            })
    };
    let (addr, stop, task) = start(slow).await;
    // An idle keep-alive connection must not hold shutdown up.
    let idle = TcpStream::connect(addr).await.unwrap();
    let in_flight = tokio::spawn(request(addr, "abc"));
    entered.notified().await;

    stop.cancel();
    // The listener closes: new connections are refused (bounded wait for the serve task to see
    // the cancellation).
    let mut refused = false;
    for _ in 0..1000 {
        match TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                refused = true;
                break;
            }
            _ => tokio::task::yield_now().await,
        }
    }
    assert!(refused, "the listener still accepts after shutdown");
    assert!(
        !task.is_finished(),
        "serve returned with a request in flight"
    );

    release.notify_one();
    let answer = tokio::time::timeout(GUARD, in_flight)
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("done 3"), "{answer}");
    tokio::time::timeout(GUARD, task)
        .await
        .expect("serve returns once the request in flight is answered")
        .unwrap();
    drop(idle);
}
