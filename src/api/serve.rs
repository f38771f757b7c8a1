//! The accept loop behind the executor's listeners (the API port and `telemetry.metrics_listen`).
//!
//! warp's own loop logs every connection error at ERROR, and the commonest one is a client that
//! hung up mid-request (`hyper::Error(IncompleteMessage)`): normal traffic on flaky links, and an
//! ERROR line per occurrence drowns the ones that matter. This loop logs a client that went away
//! at DEBUG and any other connection error at WARN, pauses after accept errors such as EMFILE
//! instead of spinning on them, and shuts down gracefully.
//!
//! It is also the one place for per-connection policy: limits on the connection itself go in
//! [`connection_builder`], a cap on open connections goes where [`serve`] accepts.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves `service` on every connection `listener` accepts, until `shutdown` is cancelled.
///
/// Then it closes the listener (new connections are refused), lets every open connection finish
/// the request it is in (idle keep-alive connections are closed), and returns once all are closed.
pub async fn serve<S, B>(listener: TcpListener, service: S, shutdown: CancellationToken)
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let graceful = GracefulShutdown::new();
    let mut backoff = AcceptBackoff::default();
    loop {
        let accepted = tokio::select! {
            // Shutdown first: once it is asked for, no connection waiting in the backlog is taken.
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(conn) => {
                backoff.reset();
                conn
            }
            Err(e) => {
                match backoff.after(&e) {
                    None => {
                        tracing::debug!(error = %e, "A connection was lost before it was accepted.")
                    }
                    Some(pause) => {
                        tracing::warn!(
                            error = %e,
                            pause_ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX),
                            "Accepting a connection failed; pausing before the next accept."
                        );
                        tokio::select! {
                            () = shutdown.cancelled() => break,
                            () = tokio::time::sleep(pause) => {}
                        }
                    }
                }
                continue;
            }
        };
        // A cap on open connections would be taken here, before the connection is served.
        let conn = connection_builder().serve_connection(TokioIo::new(stream), service.clone());
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                log_connection_error(&e, peer);
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// The settings of every connection: HTTP/1.1 only (every admin generation speaks it; the
/// reference server is Netty's HTTP/1.1 codec). Header and idle timeouts belong here.
fn connection_builder() -> http1::Builder {
    http1::Builder::new()
}

fn log_connection_error(e: &hyper::Error, peer: SocketAddr) {
    if client_went_away(e) {
        tracing::debug!(%peer, error = %e, "The client closed its connection mid-request.");
    } else {
        tracing::warn!(%peer, error = %e, "An HTTP connection failed.");
    }
}

/// True when the error only says the other side left: it closed or reset the connection before
/// a request was complete, or while the answer was being written.
fn client_went_away(e: &hyper::Error) -> bool {
    if e.is_incomplete_message() || e.is_canceled() || e.is_body_write_aborted() || e.is_closed() {
        return true;
    }
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            return is_peer_gone(io.kind());
        }
        source = s.source();
    }
    false
}

fn is_peer_gone(kind: io::ErrorKind) -> bool {
    matches!(
        kind,
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::NotConnected
    )
}

/// How long to pause after a failed accept.
///
/// An error about the one connection being accepted (it was reset before we took it) needs no
/// pause. Any other (EMFILE, ENFILE, ENOBUFS, ENOMEM) would fail again at once, so the loop would
/// spin on a core the jobs need; pausing also gives running jobs time to close files. The pause
/// doubles from 10 ms up to 1 s and starts over after the next successful accept.
#[derive(Debug, Default)]
struct AcceptBackoff {
    failures: u32,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    /// The pause before the next accept, or `None` when none is needed.
    fn after(&mut self, e: &io::Error) -> Option<Duration> {
        if is_peer_gone(e.kind()) || e.kind() == io::ErrorKind::ConnectionRefused {
            return None;
        }
        let pause = Self::FIRST
            .saturating_mul(1 << self.failures.min(16))
            .min(Self::MAX);
        self.failures = self.failures.saturating_add(1);
        Some(pause)
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_errors_back_off_up_to_a_second_and_start_over() {
        let emfile = io::Error::from_raw_os_error(24);
        let mut b = AcceptBackoff::default();
        let pauses: Vec<u64> = (0..10)
            .map(|_| b.after(&emfile).map_or(0, |d| d.as_millis() as u64))
            .collect();
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
        // A connection reset before accept is about that connection only.
        assert_eq!(b.after(&io::ErrorKind::ConnectionAborted.into()), None);
        assert_eq!(b.after(&io::ErrorKind::ConnectionReset.into()), None);
        b.reset();
        assert_eq!(b.after(&emfile), Some(Duration::from_millis(10)));
    }
}

/// On real sockets: hang-ups and graceful shutdown.
#[cfg(test)]
#[path = "serve_tests.rs"]
mod socket_tests;
