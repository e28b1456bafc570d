//! Serving HTTP connections with bounds a hostile client cannot stretch: a deadline for
//! each request's head, a stall timeout in the middle of a request, and caps on open
//! connections in all and per peer address.
//!
//! `axum::serve` has none of these knobs, so connections are served here with hyper's own
//! HTTP/1 connection builder:
//!
//! - **Header deadline** (`PYXIS_HEADER_TIMEOUT_S`): hyper's `header_read_timeout`, with
//!   tokio's timer. The clock starts when the connection is ready for a request head (at
//!   accept, and again when a keep-alive connection goes idle after a response), and a drip
//!   of bytes does not reset it: half a request line, a slowloris drip of headers, and a
//!   keep-alive connection that sends no next request are all closed when it runs out.
//!   hyper-util's `auto` builder is not used: it first sniffs for the HTTP/2 preface, and
//!   during that read no timer runs, so a connection that sends nothing would be held
//!   forever. Pyxis speaks HTTP/1.1 only (as `axum::serve` did with its features).
//! - **Stall timeout** (`PYXIS_CONN_IDLE_TIMEOUT_S`): a connection whose client stops
//!   sending a request body the handler is reading, or stops reading the response the
//!   server is writing, for that long is closed. A handler that computes for a long time
//!   (a long cell), an SSE stream between events, and WebSocket connections (handed off
//!   after the upgrade) are not stalls and are never cut.
//! - **Connection caps** (`PYXIS_MAX_CONNECTIONS`, `PYXIS_MAX_CONNECTIONS_PER_PEER`): a
//!   connection past a cap is answered at once with a 503 and closed, without a task, a
//!   read or a buffer; the permit lives as long as the socket (WebSockets included).
//!
//! Every accepted socket gets `TCP_NODELAY` (a stream's events are small separate writes).
//! Shutdown stops accepting, lets each connection finish its request, and waits a bounded
//! time for them.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tower::Service;

use crate::config::Config;

/// How long shutdown waits for open connections to finish their requests.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The bounds of one listener's connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Time for a request's head to arrive.
    pub header_timeout: Duration,
    /// Time a request may stall (body not sent, response not read).
    pub stall_timeout: Duration,
    /// Most open connections.
    pub max_connections: usize,
    /// Most open connections from one peer address (0: no per-peer cap).
    pub max_per_peer: usize,
}

impl ConnLimits {
    /// The configured bounds.
    pub fn from_config(cfg: &Config) -> Self {
        Self {
            header_timeout: cfg.header_timeout,
            stall_timeout: cfg.conn_idle_timeout,
            max_connections: cfg.max_connections,
            max_per_peer: cfg.max_connections_per_peer,
        }
    }
}

/// Serve `router` on `listener` until `shutdown` resolves; then let the open connections
/// finish (for at most [`SHUTDOWN_GRACE`]).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let peers: Arc<Mutex<HashMap<IpAddr, usize>>> = Default::default();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let builder = Arc::new(builder);
    // Each connection holds a receiver; shutdown sends on it, then waits until all are gone.
    let (close_tx, close_rx) = watch::channel(false);
    let mut shutdown = pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = &mut shutdown => break,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                accept_error(e).await;
                continue;
            }
        };
        let Some(admission) = admit(&permits, &peers, peer.ip(), &limits) else {
            continue_refused(tcp, &limits, &permits);
            continue;
        };
        // Small writes go out at once: a stream's events (SSE, WebSocket frames) are
        // separate writes after the headers, and with Nagle's algorithm each would wait for
        // the client's delayed ACK of the previous one (about 40 ms on Linux).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "could not set TCP_NODELAY");
        }
        crate::metrics::connection_opened();
        let conn = ConnTask {
            builder: builder.clone(),
            router: router.clone(),
            close_rx: close_rx.clone(),
            stall: limits.stall_timeout,
        };
        tokio::spawn(conn.run(tcp, admission));
    }
    drop(listener);
    let _ = close_tx.send(true);
    drop(close_rx);
    if tokio::time::timeout(SHUTDOWN_GRACE, close_tx.closed())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the shutdown grace period; closing them");
    }
}

/// Errors of `accept` that concern one connection only are skipped; others (out of file
/// descriptors) get a short pause so the loop does not spin.
async fn accept_error(e: io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// A connection's place under the caps, released when its socket closes.
struct Admission {
    _permit: OwnedSemaphorePermit,
    _peer: Option<PeerGuard>,
}

struct PeerGuard {
    peers: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl Drop for PeerGuard {
    fn drop(&mut self) {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = peers.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                peers.remove(&self.ip);
            }
        }
    }
}

fn admit(
    permits: &Arc<Semaphore>,
    peers: &Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
    limits: &ConnLimits,
) -> Option<Admission> {
    let permit = permits.clone().try_acquire_owned().ok()?;
    let peer = if limits.max_per_peer > 0 {
        let mut map = peers.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= limits.max_per_peer {
            return None;
        }
        *n += 1;
        Some(PeerGuard {
            peers: peers.clone(),
            ip,
        })
    } else {
        None
    };
    Some(Admission {
        _permit: permit,
        _peer: peer,
    })
}

/// Answer a connection past a cap with a 503 and close it. The write never waits: a fresh
/// socket's send buffer takes these few bytes, and a client that is not there loses them.
fn continue_refused(tcp: TcpStream, limits: &ConnLimits, permits: &Semaphore) {
    let all = permits.available_permits() == 0;
    let (reason, message) = if all {
        (
            "max_connections",
            format!(
                "the server has {} connections open, its limit; retry shortly",
                limits.max_connections
            ),
        )
    } else {
        (
            "max_connections_per_peer",
            format!(
                "this address has {} connections open, the limit per client; close some or \
                 retry shortly",
                limits.max_per_peer
            ),
        )
    };
    crate::metrics::connection_refused(reason);
    let body = serde_json::json!({
        "error": { "code": "too_many_connections", "message": message }
    })
    .to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tcp.try_write(answer.as_bytes());
}

struct ConnTask {
    builder: Arc<hyper::server::conn::http1::Builder>,
    router: Router,
    close_rx: watch::Receiver<bool>,
    stall: Duration,
}

impl ConnTask {
    async fn run(mut self, tcp: TcpStream, admission: Admission) {
        let progress = Arc::new(Progress::default());
        let io = TokioIo::new(Tracked {
            inner: tcp,
            progress: progress.clone(),
            _admission: admission,
        });
        let router = self.router;
        let served = progress.clone();
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            served.requests.fetch_add(1, Ordering::Relaxed);
            let (parts, body) = req.into_parts();
            let body = axum::body::Body::new(TrackedBody {
                inner: body,
                progress: served.clone(),
            });
            let mut router = router.clone();
            // Router is always ready (`poll_ready` is `Ready(Ok)`), as axum::serve relies on.
            router.call(hyper::Request::from_parts(parts, body))
        });
        let mut conn = pin!(self.builder.serve_connection(io, service).with_upgrades());
        let mut closing = *self.close_rx.borrow();
        if closing {
            conn.as_mut().graceful_shutdown();
        }
        let mut tick = tokio::time::interval(
            (self.stall / 4).clamp(Duration::from_millis(100), Duration::from_secs(5)),
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let outcome = loop {
            tokio::select! {
                r = conn.as_mut() => break r.err(),
                changed = self.close_rx.changed(), if !closing => {
                    if changed.is_err() || *self.close_rx.borrow() {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
                _ = tick.tick() => {
                    if let Some(what) = progress.stalled(self.stall) {
                        crate::metrics::connection_shed(what);
                        tracing::debug!(stall = what, "closing a stalled connection");
                        break None;
                    }
                }
            }
        };
        if let Some(e) = outcome {
            if e.is_timeout() {
                // hyper's header clock ran out: before the first request it is a slow or
                // silent client; after one, a keep-alive connection that sent no next
                // request in time (or a slow one).
                let reason = if progress.requests.load(Ordering::Relaxed) == 0 {
                    "header_timeout"
                } else {
                    "keepalive_timeout"
                };
                crate::metrics::connection_shed(reason);
            } else {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        crate::metrics::connection_closed();
    }
}

/// Milliseconds since the first call (a process-wide monotonic base); never 0.
fn now_ms() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    base.elapsed().as_millis() as u64 + 1
}

/// What a connection is waiting for from its client, and since when (0: not waiting).
#[derive(Default)]
struct Progress {
    /// The server's write is blocked: the client does not read.
    write_blocked: AtomicU64,
    /// A handler waits for body bytes the client does not send.
    body_waiting: AtomicU64,
    /// Requests begun on the connection.
    requests: AtomicU64,
}

impl Progress {
    /// Mark `since` as waiting now if it was not; only the first `Pending` reads the clock.
    fn wait(since: &AtomicU64) {
        if since.load(Ordering::Relaxed) == 0 {
            since.store(now_ms(), Ordering::Relaxed);
        }
    }

    fn moved(since: &AtomicU64) {
        if since.load(Ordering::Relaxed) != 0 {
            since.store(0, Ordering::Relaxed);
        }
    }

    /// Which wait has lasted longer than `limit`, if any.
    fn stalled(&self, limit: Duration) -> Option<&'static str> {
        let now = now_ms();
        let limit = limit.as_millis() as u64;
        let over = |since: &AtomicU64| {
            let t = since.load(Ordering::Relaxed);
            t != 0 && now.saturating_sub(t) > limit
        };
        if over(&self.write_blocked) {
            Some("response_not_read")
        } else if over(&self.body_waiting) {
            Some("body_stalled")
        } else {
            None
        }
    }
}

/// The socket, noting when writes block; it holds the connection's admission, so an
/// upgraded connection (a WebSocket) keeps counting against the caps until it closes.
struct Tracked {
    inner: TcpStream,
    progress: Arc<Progress>,
    _admission: Admission,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note(r.is_pending());
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note(r.is_pending());
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Tracked {
    fn note(&self, pending: bool) {
        if pending {
            Progress::wait(&self.progress.write_blocked);
        } else {
            Progress::moved(&self.progress.write_blocked);
        }
    }
}

/// A request body, noting when its handler waits for bytes that do not come.
struct TrackedBody {
    inner: Incoming,
    progress: Arc<Progress>,
}

impl Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if r.is_pending() {
            Progress::wait(&self.progress.body_waiting);
        } else {
            Progress::moved(&self.progress.body_waiting);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        // A handler that drops the body no longer waits for it.
        Progress::moved(&self.progress.body_waiting);
    }
}
