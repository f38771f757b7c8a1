//! The accept loop behind the executor's listeners (the API port and `telemetry.metrics_listen`).
//!
//! warp's own loop logs every connection error at ERROR, and the commonest one is a client that
//! hung up mid-request (`hyper::Error(IncompleteMessage)`): normal traffic on flaky links, and an
//! ERROR line per occurrence drowns the ones that matter. This loop logs a client that went away
//! at DEBUG and any other connection error at WARN, pauses after accept errors such as EMFILE
//! instead of spinning on them, and shuts down gracefully.
//!
//! It is also the one place for per-connection policy ([`ConnLimits`]): a cap on open
//! connections where [`serve`] accepts, the header-read and idle timeouts in [`TimedIo`], and a
//! deadline on the graceful shutdown, so that no client can keep the process from stopping.
//!
//! With TLS (the `tls` argument of [`serve`]) the handshake runs in the connection's own task, under the same
//! header-read timeout as the request head: the clock starts at accept and covers the handshake
//! and the first head, so a client that stalls in the handshake is closed as one that stalls in
//! its head is. The bytes it counts are the socket's ([`TimedIo`] sits under the TLS layer).

use std::convert::Infallible;
use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::tls::ServerTls;

/// The peer of the connection a request came on, put in each request's extensions (the API's
/// per-peer token budget reads it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// The per-connection limits of [`serve`], and the cap on open connections, shared by every
/// listener that is given a clone.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    /// From a connection's accept, or a keep-alive request's first byte, to the end of its head.
    pub header_read: Duration,
    /// A keep-alive connection with no request (and no answer being written) for this long is
    /// closed.
    pub idle: Duration,
    /// On shutdown, connections still open after this are dropped.
    pub shutdown_deadline: Duration,
    permits: Arc<Semaphore>,
}

impl ConnLimits {
    /// The executor's limits: `server.*`, with the connection cap lowered to fit the open-file
    /// limit with room for the store and the jobs' pipes ([`Config::fd_reserve`]). Each
    /// connection is one file descriptor; past the limit, `accept` fails with EMFILE and so does
    /// every job spawn and store file open.
    pub fn for_executor(config: &Config) -> Self {
        let s = &config.server;
        let reserve = config.fd_reserve();
        let soft = open_files_soft_limit();
        let cap = connection_cap(s.max_connections, soft, reserve);
        if cap < s.max_connections {
            tracing::warn!(
                max_connections = s.max_connections,
                open_files_limit = soft.unwrap_or(0),
                reserved = reserve,
                cap,
                "The open-file limit leaves room for fewer connections than server.max_connections; raise LimitNOFILE (the hard limit) or lower runner.max_running."
            );
        }
        Self::new(
            s.header_read_timeout,
            s.idle_timeout,
            s.shutdown_deadline,
            cap,
        )
    }

    /// Limits as given, with at most `cap` connections open at once.
    pub fn new(
        header_read: Duration,
        idle: Duration,
        shutdown_deadline: Duration,
        cap: usize,
    ) -> Self {
        let cap = cap.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            header_read,
            idle,
            shutdown_deadline,
            permits: Arc::new(Semaphore::new(cap)),
        }
    }
}

/// The current soft `RLIMIT_NOFILE`; `None` when unknown or unlimited.
fn open_files_soft_limit() -> Option<u64> {
    use nix::sys::resource::{getrlimit, Resource, RLIM_INFINITY};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, _)) if soft != RLIM_INFINITY => Some(soft),
        _ => None,
    }
}

/// The connection cap: `configured`, lowered so that the connections and `reserve` fit under
/// the soft open-file limit. Never below 8, so that a tiny limit still lets the admin in (the
/// store and the jobs then compete for what is left, and the start warns).
fn connection_cap(configured: usize, soft_limit: Option<u64>, reserve: u64) -> usize {
    let Some(soft) = soft_limit else {
        return configured;
    };
    let room = usize::try_from(soft.saturating_sub(reserve)).unwrap_or(usize::MAX);
    configured.min(room).max(8.min(configured))
}

/// Serves `service` on every connection `listener` accepts, until `shutdown` is cancelled.
///
/// At most `limits.cap()` connections (over every listener sharing `limits`) are open at once:
/// beyond that, connections wait in the listen backlog until one closes. A connection whose
/// request head does not arrive within `limits.header_read`, or that stays idle for
/// `limits.idle`, is closed.
///
/// On shutdown it closes the listener (new connections are refused), lets every open connection
/// finish the request it is in (idle keep-alive connections are closed), and returns once all
/// are closed, or after `limits.shutdown_deadline`, dropping the connections left: a client
/// cannot hold the shutdown up.
///
/// With `tls`, every connection is handshaken with the configuration in force when it was
/// accepted (a reload changes new connections only).
pub async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    shutdown: CancellationToken,
    limits: ConnLimits,
    tls: Option<Arc<ServerTls>>,
) where
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
    let connections = TaskTracker::new();
    let drop_all = CancellationToken::new();
    let mut backoff = AcceptBackoff::default();
    loop {
        // The permit is taken before the accept (mini-redis): at the cap, connections wait in
        // the kernel's backlog instead of costing a descriptor each.
        let permit = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            p = limits.permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
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
        let clock = Arc::new(ConnClock::new(limits.header_read, limits.idle));
        let io = TimedIo::new(stream, clock.clone());
        let service = Tracked {
            inner: service.clone(),
            clock,
            peer,
        };
        let watcher = graceful.watcher();
        let drop_all = drop_all.clone();
        // Taken at accept: a reload after this changes the connections accepted after it.
        let acceptor = tls.as_ref().map(|t| t.acceptor());
        let (shutdown, header_read) = (shutdown.clone(), limits.header_read);
        connections.spawn(async move {
            let _permit = permit;
            let Some(acceptor) = acceptor else {
                let conn = connection_builder().serve_connection(TokioIo::new(io), service);
                return run_connection(watcher.watch(conn), &drop_all, peer).await;
            };
            let handshake = tokio::time::timeout(header_read, acceptor.accept(io));
            let io = tokio::select! {
                r = handshake => match r {
                    Ok(Ok(io)) => io,
                    Ok(Err(e)) => return log_handshake_error(&e, peer),
                    Err(_) => {
                        tracing::debug!(%peer, "Closed a connection that did not finish its TLS handshake within the header read timeout.");
                        return;
                    }
                },
                // Not yet a connection to let finish: it is dropped.
                () = shutdown.cancelled() => return,
            };
            let conn = connection_builder().serve_connection(TokioIo::new(io), service);
            run_connection(watcher.watch(conn), &drop_all, peer).await;
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(limits.shutdown_deadline, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            connections = connections.len(),
            deadline_ms = u64::try_from(limits.shutdown_deadline.as_millis()).unwrap_or(u64::MAX),
            "Connections still open at the shutdown deadline (server.shutdown_deadline_secs) are dropped."
        );
        drop_all.cancel();
    }
    connections.wait().await;
}

/// Runs one connection until it ends, or until the shutdown deadline drops it.
async fn run_connection(
    conn: impl Future<Output = Result<(), hyper::Error>>,
    drop_all: &CancellationToken,
    peer: SocketAddr,
) {
    tokio::select! {
        r = conn => {
            if let Err(e) = r {
                log_connection_error(&e, peer);
            }
        }
        () = drop_all.cancelled() => {}
    }
}

/// A failed handshake is the client's business (a scanner, a plain-HTTP client, a client
/// without an accepted certificate): DEBUG for one that left, INFO otherwise, so that refused
/// client certificates can be seen without drowning the log.
fn log_handshake_error(e: &io::Error, peer: SocketAddr) {
    if is_peer_gone(e.kind()) || e.kind() == io::ErrorKind::TimedOut {
        tracing::debug!(%peer, error = %e, "A client left during the TLS handshake.");
    } else {
        tracing::info!(%peer, error = %e, "TLS handshake refused.");
    }
}

/// The settings of every connection: HTTP/1.1 only (every admin generation speaks it; the
/// reference server is Netty's HTTP/1.1 codec; hyper's `http2` feature is not even built, so an
/// HTTP/2 preface is a malformed request). The timeouts are [`TimedIo`]'s: hyper's own header
/// timeout also runs while a keep-alive connection is idle, so it cannot tell the two apart.
fn connection_builder() -> http1::Builder {
    http1::Builder::new()
}

/// Where a connection is: which of its deadlines runs.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// A request head is being read (or awaited on a new connection) since then.
    Head(Instant),
    /// The service has the request: the body's own timeout is the handler's.
    Busy,
    /// Between requests (the last answer being written counts) since then.
    Idle(Instant),
}

/// The phase of one connection, set by [`Tracked`] around each request and by [`TimedIo`] as
/// bytes move.
#[derive(Debug)]
struct ConnClock {
    phase: Mutex<Phase>,
    header_read: Duration,
    idle: Duration,
}

impl ConnClock {
    fn new(header_read: Duration, idle: Duration) -> Self {
        Self {
            phase: Mutex::new(Phase::Head(Instant::now())),
            header_read,
            idle,
        }
    }

    fn set(&self, f: impl FnOnce(Phase) -> Phase) {
        let mut p = self.phase.lock().unwrap_or_else(|p| p.into_inner());
        *p = f(*p);
    }

    fn deadline(&self) -> Option<Instant> {
        match *self.phase.lock().unwrap_or_else(|p| p.into_inner()) {
            Phase::Head(since) => Some(since + self.header_read),
            Phase::Busy => None,
            Phase::Idle(since) => Some(since + self.idle),
        }
    }

    /// Bytes of a request arrived: the first ones after an idle spell start the head's clock.
    fn read_some(&self) {
        self.set(|p| match p {
            Phase::Idle(_) => Phase::Head(Instant::now()),
            other => other,
        });
    }

    /// Bytes of an answer left: an idle connection that is still taking its answer is not idle.
    fn wrote_some(&self) {
        self.set(|p| match p {
            Phase::Idle(_) => Phase::Idle(Instant::now()),
            other => other,
        });
    }
}

/// Marks its connection idle when the request's service future ends (or is dropped).
struct BusyGuard(Arc<ConnClock>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.set(|_| Phase::Idle(Instant::now()));
    }
}

/// The service, with the connection marked busy while it handles a request.
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    clock: Arc<ConnClock>,
    peer: SocketAddr,
}

impl<S, B> Service<Request<Incoming>> for Tracked<S>
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<B>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<B>, Infallible>> + Send>>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(PeerAddr(self.peer));
        self.clock.set(|_| Phase::Busy);
        let guard = BusyGuard(self.clock.clone());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await;
            drop(guard);
            res
        })
    }
}

/// The socket, failing a read or write with `TimedOut` once the connection's current deadline
/// ([`ConnClock`]) has passed with the read or write still waiting. hyper then closes it.
struct TimedIo {
    stream: TcpStream,
    clock: Arc<ConnClock>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl TimedIo {
    fn new(stream: TcpStream, clock: Arc<ConnClock>) -> Self {
        Self {
            stream,
            clock,
            timer: None,
        }
    }

    /// Called when the socket is not ready: `Ready` once the deadline has passed (and it
    /// registers the task to be woken then).
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let Some(deadline) = self.clock.deadline() else {
            return Poll::Pending;
        };
        let timer = match &mut self.timer {
            Some(t) => {
                if t.deadline() != deadline {
                    t.as_mut().reset(deadline);
                }
                t
            }
            None => self
                .timer
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                "no request within the header read or idle timeout",
            )),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl TimedIo {
    /// A write's result, for both write paths: bytes written move the clock on, and a write
    /// that has to wait is bounded by the same deadline as a read.
    fn written(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match r {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.clock.wrote_some();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.poll_deadline(cx).map(Err),
        }
    }
}

impl AsyncRead for TimedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.clock.read_some();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.poll_deadline(cx).map(Err),
        }
    }
}

impl AsyncWrite for TimedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.written(cx, r)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.written(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

fn log_connection_error(e: &hyper::Error, peer: SocketAddr) {
    if timed_out(e) {
        tracing::debug!(%peer, error = %e, "Closed a connection that sent no whole request head in time or stayed idle.");
    } else if client_went_away(e) {
        tracing::debug!(%peer, error = %e, "The client closed its connection mid-request.");
    } else {
        tracing::warn!(%peer, error = %e, "An HTTP connection failed.");
    }
}

/// True when [`TimedIo`] ended the connection.
fn timed_out(e: &hyper::Error) -> bool {
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            return io.kind() == io::ErrorKind::TimedOut;
        }
        source = s.source();
    }
    false
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

    /// A TLS handshake is bound by the header-read timeout from accept, as a request head is;
    /// a handshake still under way at shutdown does not hold the shutdown up.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_tls_handshake_is_closed_at_the_header_timeout() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        const GUARD: Duration = Duration::from_secs(20);
        // A record header that announces a ClientHello of 512 bytes, and one byte of it.
        const HALF_HELLO: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01];

        let dir = tempfile::tempdir().unwrap();
        let tls = ServerTls::load(&crate::tls::tests::files_in(dir.path())).unwrap();
        let limits = ConnLimits::new(Duration::from_secs(10), Duration::from_secs(90), GUARD, 100);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
            Ok::<_, Infallible>(Response::new(String::from("ok")))
        });
        let task = tokio::spawn(serve(listener, svc, stop.clone(), limits, Some(tls)));

        for hello in [HALF_HELLO, &[]] {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(hello).await.unwrap();
            let started = Instant::now();
            let mut out = Vec::new();
            let _ = tokio::time::timeout(GUARD * 10, s.read_to_end(&mut out))
                .await
                .expect("the server closes the connection");
            assert_eq!(started.elapsed(), Duration::from_secs(10));
        }

        let mut pending = TcpStream::connect(addr).await.unwrap();
        pending.write_all(HALF_HELLO).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let stopping = Instant::now();
        stop.cancel();
        tokio::time::timeout(GUARD, task).await.unwrap().unwrap();
        assert!(
            stopping.elapsed() < Duration::from_secs(1),
            "{:?}",
            stopping.elapsed()
        );
    }
}

/// On real sockets: hang-ups and graceful shutdown.
#[cfg(test)]
#[path = "serve_tests.rs"]
mod socket_tests;
