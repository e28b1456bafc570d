//! The proxy: one [`Proxy`] per server, one [`SessionEgress`] per session. Each connection a
//! sandbox makes to its init's listener arrives here as a socket (see
//! [`SessionEgress::serve_channel`]) and is served as an HTTP/1.1 proxy connection by hyper:
//! `CONNECT host:port` opens a tunnel (TLS passes through untouched), an absolute-form
//! request (`GET http://host/path`) is forwarded. Every target is checked first against the
//! session's policy (before any name is resolved), then every address the name resolves to
//! against the address rules; the connection goes to exactly the address checked.

use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::addr::{AddressRules, AddressVerdict};
use crate::limits::{EgressLimits, LimitHit, OpenGuard, Usage};
use crate::metrics::{EgressMetrics, RefusalKind};
use crate::mirror::Mirror;
use crate::policy::{EgressPolicy, Target, TargetHost};
use crate::resolve::{Resolver, SystemResolver};

/// Largest request head the proxy reads.
const MAX_HEAD: usize = 64 << 10;
/// Each direction's buffer of a tunnel: fewer, larger reads and writes than tokio's 8 KiB
/// default for large downloads.
const TUNNEL_BUFFER: usize = 64 << 10;
/// Most descriptors taken from the channel in one read.
const FDS_PER_READ: usize = 16;

/// The operator's side of the proxy: address rules, resolver, limits, time limits.
#[derive(Clone)]
pub struct EgressConfig {
    /// Which addresses may be connected to at all.
    pub rules: AddressRules,
    /// Who resolves names.
    pub resolver: Arc<dyn Resolver>,
    /// Each session's limits.
    pub limits: EgressLimits,
    /// Time to resolve and connect.
    pub connect_timeout: Duration,
    /// Time for a client to send a request head.
    pub header_timeout: Duration,
}

impl Default for EgressConfig {
    fn default() -> EgressConfig {
        EgressConfig {
            rules: AddressRules::default(),
            resolver: Arc::new(SystemResolver),
            limits: EgressLimits::default(),
            connect_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
        }
    }
}

impl std::fmt::Debug for EgressConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressConfig")
            .field("rules", &self.rules)
            .field("limits", &self.limits)
            .field("connect_timeout", &self.connect_timeout)
            .field("header_timeout", &self.header_timeout)
            .finish_non_exhaustive()
    }
}

/// Why the proxy refused a request; its answer is [`Refusal::status`] with the message as
/// the body and [`RefusalKind::code`] in `X-Pyxis-Egress-Refusal`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The policy is `none`.
    #[error("egress refused: this session's network policy is \"none\" (nothing is reachable)")]
    PolicyNone,
    /// Not on the allow-list.
    #[error("egress refused: {target} is not on this session's allow-list")]
    NotAllowed {
        /// Where the request wanted to go.
        target: String,
    },
    /// A non-public address.
    #[error(
        "egress refused: {target} resolves to {addr}, a loopback, private, link-local, CGNAT \
         or metadata address (refused unless the operator allows it)"
    )]
    NotPublic {
        /// Where the request wanted to go.
        target: String,
        /// The address refused.
        addr: IpAddr,
    },
    /// The server itself.
    #[error("egress refused: {target} is the Pyxis server itself")]
    ServerAddress {
        /// Where the request wanted to go.
        target: String,
    },
    /// The name does not resolve.
    #[error("egress failed: cannot resolve {name}")]
    Resolve {
        /// The name.
        name: String,
    },
    /// Connecting failed.
    #[error("egress failed: cannot connect to {target}: {reason}")]
    Connect {
        /// Where.
        target: String,
        /// Why (timed out, refused, …).
        reason: String,
    },
    /// Not a request a proxy serves.
    #[error("bad proxy request: {0}")]
    BadRequest(String),
    /// A limit of the session.
    #[error("egress refused: {}", limit_text(.0))]
    Limit(LimitHit),
}

fn limit_text(hit: &LimitHit) -> String {
    match hit {
        LimitHit::Open(n) => format!("this session has {n} connections open, its limit"),
        LimitHit::Rate(n) => format!("more than {n} new connections per second"),
        LimitHit::Bytes(n) => format!("this session has used its limit of {n} bytes"),
    }
}

impl Refusal {
    /// Its kind.
    pub fn kind(&self) -> RefusalKind {
        match self {
            Refusal::PolicyNone => RefusalKind::PolicyNone,
            Refusal::NotAllowed { .. } => RefusalKind::NotAllowed,
            Refusal::NotPublic { .. } => RefusalKind::NotPublic,
            Refusal::ServerAddress { .. } => RefusalKind::ServerAddress,
            Refusal::Resolve { .. } => RefusalKind::Resolve,
            Refusal::Connect { .. } => RefusalKind::Connect,
            Refusal::BadRequest(_) => RefusalKind::BadRequest,
            Refusal::Limit(LimitHit::Open(_)) => RefusalKind::OpenLimit,
            Refusal::Limit(LimitHit::Rate(_)) => RefusalKind::RateLimit,
            Refusal::Limit(LimitHit::Bytes(_)) => RefusalKind::ByteLimit,
        }
    }

    /// The HTTP status of the proxy's answer: 403 for what policy and rules refuse, 429 for
    /// the connection limits, 502/504 for upstream failures, 400 for bad requests.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::PolicyNone
            | Refusal::NotAllowed { .. }
            | Refusal::NotPublic { .. }
            | Refusal::ServerAddress { .. }
            | Refusal::Limit(LimitHit::Bytes(_)) => StatusCode::FORBIDDEN,
            Refusal::Limit(_) => StatusCode::TOO_MANY_REQUESTS,
            Refusal::Resolve { .. } => StatusCode::BAD_GATEWAY,
            Refusal::Connect { reason, .. } if reason.contains("timed out") => {
                StatusCode::GATEWAY_TIMEOUT
            }
            Refusal::Connect { .. } => StatusCode::BAD_GATEWAY,
            Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
        }
    }
}

/// The error type of the proxy's answer bodies.
pub(crate) type BodyError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of the proxy's answers.
pub(crate) type ProxyBody = http_body_util::combinators::BoxBody<Bytes, BodyError>;

/// The server's proxy: configuration and counters shared by every session.
#[derive(Debug, Clone)]
pub struct Proxy {
    inner: Arc<ProxyInner>,
}

#[derive(Debug)]
struct ProxyInner {
    config: EgressConfig,
    metrics: EgressMetrics,
    mirror: Option<Arc<Mirror>>,
}

impl Proxy {
    /// A proxy with `config`.
    pub fn new(config: EgressConfig) -> Proxy {
        Proxy::with_mirror(config, None)
    }

    /// A proxy that also serves the package index at [`crate::MIRROR_HOST`].
    pub fn with_mirror(config: EgressConfig, mirror: Option<Arc<Mirror>>) -> Proxy {
        Proxy {
            inner: Arc::new(ProxyInner {
                config,
                metrics: EgressMetrics::default(),
                mirror,
            }),
        }
    }

    /// The package index mirror, if there is one.
    pub fn mirror(&self) -> Option<&Arc<Mirror>> {
        self.inner.mirror.as_ref()
    }

    /// The counters.
    pub fn metrics(&self) -> &EgressMetrics {
        &self.inner.metrics
    }

    /// The configuration.
    pub fn config(&self) -> &EgressConfig {
        &self.inner.config
    }

    /// A session's side of the proxy, with the proxy's limits.
    pub fn session(&self, id: &str, policy: EgressPolicy) -> Arc<SessionEgress> {
        self.session_with_limits(id, policy, self.inner.config.limits)
    }

    /// A session's side of the proxy, with its own limits.
    pub fn session_with_limits(
        &self,
        id: &str,
        policy: EgressPolicy,
        limits: EgressLimits,
    ) -> Arc<SessionEgress> {
        let (closed, _) = watch::channel(false);
        Arc::new(SessionEgress {
            id: id.to_owned(),
            proxy: self.clone(),
            policy: RwLock::new(policy),
            usage: Usage::new(limits),
            closed,
        })
    }

    /// Checks `host:port` against `policy` and the address rules and returns the one address
    /// to connect to. Names outside the policy are never resolved.
    pub async fn check(
        &self,
        policy: &EgressPolicy,
        host: &str,
        port: u16,
    ) -> Result<SocketAddr, Refusal> {
        let target = Target::parse(host, port).ok_or_else(|| {
            Refusal::BadRequest(format!("{host:?} is not a host name or address"))
        })?;
        self.check_target(policy, &target).await
    }

    async fn check_target(
        &self,
        policy: &EgressPolicy,
        target: &Target,
    ) -> Result<SocketAddr, Refusal> {
        if policy.mode() == crate::EgressMode::None {
            return Err(Refusal::PolicyNone);
        }
        if !policy.permits(target) {
            return Err(Refusal::NotAllowed {
                target: target.to_string(),
            });
        }
        let config = &self.inner.config;
        let addrs = match &target.host {
            TargetHost::Ip(ip) => vec![*ip],
            TargetHost::Name(name) => {
                let resolving = config.resolver.resolve(name, target.port);
                match tokio::time::timeout(config.connect_timeout, resolving).await {
                    Ok(Ok(addrs)) if !addrs.is_empty() => addrs,
                    _ => return Err(Refusal::Resolve { name: name.clone() }),
                }
            }
        };
        let host = target.host_str();
        // Every address must pass, so that no answer of a later lookup can differ in kind.
        for ip in &addrs {
            match config
                .rules
                .verdict(&host, SocketAddr::new(*ip, target.port))
            {
                AddressVerdict::Allowed => {}
                AddressVerdict::NotPublic => {
                    return Err(Refusal::NotPublic {
                        target: target.to_string(),
                        addr: *ip,
                    })
                }
                AddressVerdict::Server => {
                    return Err(Refusal::ServerAddress {
                        target: target.to_string(),
                    })
                }
            }
        }
        Ok(SocketAddr::new(addrs[0], target.port))
    }

    /// Connects to the address that was checked, within the connect time limit.
    async fn connect(&self, target: &Target, addr: SocketAddr) -> Result<TcpStream, Refusal> {
        let failed = |reason: String| Refusal::Connect {
            target: target.to_string(),
            reason,
        };
        match tokio::time::timeout(self.inner.config.connect_timeout, TcpStream::connect(addr))
            .await
        {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                Ok(stream)
            }
            Ok(Err(err)) => Err(failed(err.kind().to_string())),
            Err(_) => Err(failed("timed out".into())),
        }
    }
}

/// One session's side of the proxy: its id (for logs), its policy (replaceable, e.g. when a
/// pooled sandbox is given to a session), its usage and limits.
#[derive(Debug)]
pub struct SessionEgress {
    id: String,
    proxy: Proxy,
    policy: RwLock<EgressPolicy>,
    usage: Arc<Usage>,
    closed: watch::Sender<bool>,
}

impl SessionEgress {
    /// The session's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The policy in force.
    pub fn policy(&self) -> EgressPolicy {
        self.policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the policy; connections made from now on follow it.
    pub fn set_policy(&self, policy: EgressPolicy) {
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = policy;
    }

    /// What the session has used.
    pub fn usage(&self) -> &Usage {
        &self.usage
    }

    /// Ends every connection of the session and its channel (the session is going away).
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    fn refuse(&self, refusal: &Refusal) -> Response<ProxyBody> {
        self.proxy.metrics().refused(refusal.kind());
        tracing::info!(
            session = %self.id,
            code = refusal.kind().code(),
            reason = %refusal,
            "egress refused"
        );
        let mut response = Response::new(
            Full::new(Bytes::from(format!("{refusal}\n")))
                .map_err(|never| match never {})
                .boxed(),
        );
        *response.status_mut() = refusal.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(
            HeaderName::from_static("x-pyxis-egress-refusal"),
            HeaderValue::from_static(refusal.kind().code()),
        );
        if let Refusal::Limit(LimitHit::Rate(_)) = refusal {
            let secs = self.usage.retry_after().as_secs().max(1);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }

    /// Receives the connections the sandbox's init passes over `channel` (its end of the
    /// egress channel, a Unix stream socket) and serves each, until the init closes its end
    /// or [`SessionEgress::close`] is called. Anything but a TCP socket is closed unread.
    pub async fn serve_channel(self: Arc<Self>, channel: OwnedFd) -> io::Result<()> {
        let channel = std::os::unix::net::UnixStream::from(channel);
        channel.set_nonblocking(true)?;
        let channel = tokio::net::UnixStream::from_std(channel)?;
        let mut closed = self.closed.subscribe();
        loop {
            tokio::select! {
                ready = channel.readable() => ready?,
                _ = closed.wait_for(|c| *c) => return Ok(()),
            }
            let received = channel.try_io(tokio::io::Interest::READABLE, || {
                receive_fds(channel.as_raw_fd())
            });
            match received {
                Ok(Some(fds)) => {
                    for fd in fds {
                        if let Some(stream) = tcp_stream(fd) {
                            tokio::spawn(self.clone().serve_connection(stream));
                        }
                    }
                }
                Ok(None) => return Ok(()),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return Err(err),
            }
        }
    }

    /// Serves one connection from the sandbox as an HTTP/1.1 proxy connection.
    pub async fn serve_connection(self: Arc<Self>, stream: TcpStream) {
        self.proxy.metrics().connection();
        let admitted = self.usage.admit();
        let guard = match admitted {
            Ok(guard) => Arc::new(guard),
            Err(hit) => {
                self.clone()
                    .answer_refusal(stream, Refusal::Limit(hit))
                    .await;
                return;
            }
        };
        let config = self.proxy.config();
        let mut closed = self.closed.subscribe();
        let session = self.clone();
        // Held by the connection and by a tunnel it becomes, which outlives it.
        let held = guard.clone();
        let service =
            hyper::service::service_fn(move |req| session.clone().handle(req, held.clone()));
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_timeout)
            .max_buf_size(MAX_HEAD)
            .half_close(false);
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        tokio::select! {
            result = connection => {
                if let Err(err) = result {
                    tracing::debug!(session = %self.id, ?err, "egress connection ended");
                }
            }
            _ = closed.wait_for(|c| *c) => {}
        }
        drop(guard);
    }

    /// Answers the first request of a connection that a limit refused, then closes it.
    async fn answer_refusal(self: Arc<Self>, stream: TcpStream, refusal: Refusal) {
        let response = self.refuse(&refusal);
        let once = std::sync::Mutex::new(Some(response));
        let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
            let response = once.lock().ok().and_then(|mut r| r.take());
            async move { Ok::<_, Infallible>(response.unwrap_or_else(empty_close)) }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(2))
            .max_buf_size(MAX_HEAD)
            .keep_alive(false);
        let _ = builder
            .serve_connection(TokioIo::new(stream), service)
            .await;
    }

    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        guard: Arc<OpenGuard>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let result = if req.method() == Method::CONNECT {
            self.tunnel(req, guard).await
        } else {
            self.forward(req).await
        };
        Ok(result.unwrap_or_else(|refusal| self.refuse(&refusal)))
    }

    /// `CONNECT host:port`: check, connect, answer 200, then copy both ways.
    async fn tunnel(
        self: &Arc<Self>,
        req: Request<Incoming>,
        guard: Arc<OpenGuard>,
    ) -> Result<Response<ProxyBody>, Refusal> {
        let authority = req
            .uri()
            .authority()
            .filter(|_| req.uri().scheme().is_none() && req.uri().path_and_query().is_none())
            .ok_or_else(|| Refusal::BadRequest("CONNECT needs host:port".into()))?;
        let port = authority
            .port_u16()
            .ok_or_else(|| Refusal::BadRequest("CONNECT needs a port".into()))?;
        if authority.as_str().contains('@') {
            return Err(Refusal::BadRequest(
                "no credentials in the authority".into(),
            ));
        }
        let target = Target::parse(authority.host(), port).ok_or_else(|| {
            Refusal::BadRequest(format!(
                "{:?} is not a host name or address",
                authority.host()
            ))
        })?;
        let policy = self.policy();
        let addr = self.proxy.check_target(&policy, &target).await?;
        let upstream = self.proxy.connect(&target, addr).await?;
        self.proxy.metrics().tunnel();
        tracing::debug!(session = %self.id, %target, %addr, "egress tunnel");
        let session = self.clone();
        tokio::spawn(async move {
            let mut closed = session.closed.subscribe();
            let upgraded = match hyper::upgrade::on(req).await {
                Ok(upgraded) => upgraded,
                Err(_) => return,
            };
            tokio::select! {
                _ = session.relay(upgraded, upstream) => {}
                _ = closed.wait_for(|c| *c) => {}
            }
            drop(guard);
        });
        Ok(Response::new(
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed(),
        ))
    }

    /// A tunnel's bytes, both ways, until both sides end, either fails or the byte limit
    /// is passed: spliced in the kernel between the two sockets when the sandbox's side is
    /// the plain socket it came as (always, but for hyper's internals), else copied.
    async fn relay(self: &Arc<Self>, upgraded: hyper::upgrade::Upgraded, upstream: TcpStream) {
        let parts = match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => parts,
            Err(upgraded) => {
                let mut client = TokioIo::new(upgraded);
                let mut upstream = Counted::new(upstream, self.clone());
                let _ = tokio::io::copy_bidirectional_with_sizes(
                    &mut client,
                    &mut upstream,
                    TUNNEL_BUFFER,
                    TUNNEL_BUFFER,
                )
                .await;
                return;
            }
        };
        let client = parts.io.into_inner();
        // What the client sent after its CONNECT head (a TLS hello, say) goes first.
        if !parts.read_buf.is_empty() {
            use tokio::io::AsyncWriteExt;
            let mut counted = Counted::new(upstream, self.clone());
            if counted.write_all(&parts.read_buf).await.is_err() {
                return;
            }
            return self.splice(client, counted.inner).await;
        }
        self.splice(client, upstream).await
    }

    async fn splice(self: &Arc<Self>, client: TcpStream, upstream: TcpStream) {
        let cut = std::sync::atomic::AtomicBool::new(false);
        let metrics = self.proxy.metrics();
        let usage = &self.usage;
        let max = usage.limits().max_bytes;
        let passed = || {
            if !cut.swap(true, std::sync::atomic::Ordering::AcqRel) {
                self.byte_limit_passed();
            }
        };
        let result = crate::splice::relay(
            &client,
            &upstream,
            |n| {
                metrics.sent(n);
                let ok = usage.bytes() < max && usage.spend(n);
                if !ok {
                    passed();
                }
                ok
            },
            |n| {
                metrics.received(n);
                let ok = usage.spend(n);
                if !ok {
                    passed();
                }
                ok
            },
            || io::Error::other(ByteLimitPassed),
        )
        .await;
        if let Err(err) = result {
            tracing::debug!(session = %self.id, ?err, "egress tunnel ended");
        }
    }

    /// The byte limit cut a connection: a refusal, counted and logged once per connection.
    fn byte_limit_passed(&self) {
        let refusal = Refusal::Limit(LimitHit::Bytes(self.usage.limits().max_bytes));
        self.proxy.metrics().refused(refusal.kind());
        tracing::info!(
            session = %self.id,
            code = refusal.kind().code(),
            reason = %refusal,
            "egress connection cut"
        );
    }

    /// An absolute-form `http://` request: check, connect, forward without hop-by-hop
    /// headers, answer with the upstream's response.
    async fn forward(
        self: &Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, Refusal> {
        let uri = req.uri().clone();
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(Refusal::BadRequest(
                    "https URLs go through CONNECT (set HTTPS_PROXY)".into(),
                ))
            }
            Some(other) => {
                return Err(Refusal::BadRequest(format!(
                    "only http URLs are forwarded, not {other}:"
                )))
            }
            None => {
                return Err(Refusal::BadRequest(
                    "this is a proxy: send absolute-form requests (GET http://host/path)".into(),
                ))
            }
        }
        let authority = uri
            .authority()
            .ok_or_else(|| Refusal::BadRequest("the URL has no host".into()))?;
        if authority.as_str().contains('@') {
            return Err(Refusal::BadRequest(
                "no credentials in the URL's authority".into(),
            ));
        }
        if req.headers().contains_key(header::UPGRADE) {
            return Err(Refusal::BadRequest(
                "upgrades are not forwarded over plain http; use CONNECT".into(),
            ));
        }
        if authority.host().eq_ignore_ascii_case(crate::MIRROR_HOST) {
            let mirror = self.proxy.mirror().ok_or_else(|| {
                Refusal::BadRequest("this server has no package index configured".into())
            })?;
            return mirror.handle(&self.proxy, &self.policy(), &req).await;
        }
        let port = authority.port_u16().unwrap_or(80);
        let target = Target::parse(authority.host(), port).ok_or_else(|| {
            Refusal::BadRequest(format!(
                "{:?} is not a host name or address",
                authority.host()
            ))
        })?;
        let policy = self.policy();
        let addr = self.proxy.check_target(&policy, &target).await?;
        let upstream = self.proxy.connect(&target, addr).await?;
        self.proxy.metrics().request();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(
            Counted::new(upstream, self.clone()),
        ))
        .await
        .map_err(|err| Refusal::Connect {
            target: target.to_string(),
            reason: err.to_string(),
        })?;
        let session = self.clone();
        tokio::spawn(async move {
            let mut closed = session.closed.subscribe();
            tokio::select! {
                _ = connection => {}
                _ = closed.wait_for(|c| *c) => {}
            }
        });

        let (mut parts, body) = req.into_parts();
        parts.uri = origin_form(&uri);
        parts.version = http::Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers);
        // The URL's authority is the one checked; a different Host header would let the
        // request reach another virtual host than the one the policy allowed.
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|_| Refusal::BadRequest("bad authority".into()))?;
        parts.headers.insert(header::HOST, host);
        let upstream_req = Request::from_parts(parts, body);
        let response = sender
            .send_request(upstream_req)
            .await
            .map_err(|err| Refusal::Connect {
                target: target.to_string(),
                reason: err.to_string(),
            })?;
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(
            parts,
            body.map_err(BodyError::from).boxed(),
        ))
    }
}

fn empty_close() -> Response<ProxyBody> {
    let mut response = Response::new(
        http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    response
}

/// `/path?query` of an absolute URI (`/` when it has none).
fn origin_form(uri: &Uri) -> Uri {
    let path = uri
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| !p.is_empty())
        .unwrap_or("/");
    path.parse().unwrap_or_else(|_| Uri::from_static("/"))
}

/// Removes the headers that belong to one connection (RFC 9110 7.6.1), those named by
/// `Connection`, and the proxy's own. Bodies are re-framed by hyper, so `Content-Length`
/// goes too: a request that carried both it and `Transfer-Encoding` cannot smuggle a
/// second request past the proxy.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    for name in ["keep-alive", "proxy-connection"] {
        headers.remove(name);
    }
}

/// Reads up to [`FDS_PER_READ`] descriptors from the channel; `None` at its end.
fn receive_fds(channel: RawFd) -> io::Result<Option<Vec<OwnedFd>>> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::FromRawFd;
    let mut data = [0u8; FDS_PER_READ];
    let mut iov = [io::IoSliceMut::new(&mut data)];
    let mut space = nix::cmsg_space!([RawFd; FDS_PER_READ]);
    let msg = recvmsg::<()>(
        channel,
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)?;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            // SAFETY: each descriptor was just received, is open, and owned by nothing else.
            fds.extend(
                received
                    .into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    if msg.bytes == 0 && fds.is_empty() {
        return Ok(None);
    }
    Ok(Some(fds))
}

/// The descriptor as a tokio TCP stream, if it is a connected TCP socket.
fn tcp_stream(fd: OwnedFd) -> Option<TcpStream> {
    use nix::sys::socket::{getsockopt, sockopt};
    let is_stream =
        getsockopt(&fd, sockopt::SockType).ok() == Some(nix::sys::socket::SockType::Stream);
    let std = std::net::TcpStream::from(fd);
    let inet = std.local_addr().is_ok() && std.peer_addr().is_ok();
    if !is_stream || !inet || std.set_nonblocking(true).is_err() {
        return None;
    }
    TcpStream::from_std(std).ok()
}

/// The error a [`Counted`] stream returns once the session's byte limit is passed.
#[derive(Debug, thiserror::Error)]
#[error("the session's egress byte limit is used up")]
struct ByteLimitPassed;

/// An upstream connection whose bytes count against the session's limit and the metrics.
struct Counted {
    inner: TcpStream,
    session: Arc<SessionEgress>,
    cut: bool,
}

impl Counted {
    fn new(inner: TcpStream, session: Arc<SessionEgress>) -> Counted {
        Counted {
            inner,
            session,
            cut: false,
        }
    }

    /// The error for a passed limit; the first one of this connection is a refusal.
    fn passed(&mut self) -> io::Error {
        if !self.cut {
            self.cut = true;
            self.session.byte_limit_passed();
        }
        io::Error::other(ByteLimitPassed)
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let n = buf.filled().len() - before;
            self.session.proxy.metrics().received(n);
            if !self.session.usage.spend(n) {
                return Poll::Ready(Err(self.passed()));
            }
        }
        polled
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.session.usage.bytes() >= self.session.usage.limits().max_bytes {
            return Poll::Ready(Err(self.passed()));
        }
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.session.proxy.metrics().sent(n);
            if !self.session.usage.spend(n) {
                return Poll::Ready(Err(self.passed()));
            }
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::OperatorAllow;
    use crate::policy::EgressMode;
    use crate::resolve::StaticResolver;

    fn proxy() -> Proxy {
        let resolver = StaticResolver::new()
            .with("public.test", &["93.184.216.34".parse().expect("ip")])
            .with("loop.test", &["127.0.0.1".parse().expect("ip")])
            .with(
                "mixed.test",
                &[
                    "93.184.216.34".parse().expect("ip"),
                    "10.0.0.1".parse().expect("ip"),
                ],
            )
            .with("mirror.lan", &["192.168.7.7".parse().expect("ip")]);
        Proxy::new(EgressConfig {
            rules: AddressRules {
                allow: OperatorAllow::parse_list("127.0.0.1:3141,mirror.lan:80").expect("parses"),
                forbidden: vec!["127.0.0.1:8000".parse().expect("addr")],
            },
            resolver: Arc::new(resolver),
            ..EgressConfig::default()
        })
    }

    fn allow(list: &[&str]) -> EgressPolicy {
        EgressPolicy::new(EgressMode::Allow, list).expect("policy")
    }

    #[tokio::test]
    async fn checks_follow_policy_then_addresses() {
        let proxy = proxy();
        let public = EgressPolicy::public();
        assert_eq!(
            proxy.check(&public, "public.test", 443).await,
            Ok("93.184.216.34:443".parse().expect("addr"))
        );
        assert_eq!(
            proxy.check(&EgressPolicy::none(), "public.test", 443).await,
            Err(Refusal::PolicyNone)
        );
        assert!(matches!(
            proxy
                .check(&allow(&["other.test"]), "public.test", 443)
                .await,
            Err(Refusal::NotAllowed { .. })
        ));
        // A name that resolves to loopback, and one with a private address among public ones.
        assert!(matches!(
            proxy.check(&public, "loop.test", 80).await,
            Err(Refusal::NotPublic { .. })
        ));
        assert_eq!(
            proxy.check(&public, "mixed.test", 80).await,
            Err(Refusal::NotPublic {
                target: "mixed.test:80".into(),
                addr: "10.0.0.1".parse().expect("ip")
            })
        );
        // Private addresses are refused before any connection, even when allowed by policy.
        let private = allow(&["10.0.0.0/8"]);
        assert!(matches!(
            proxy.check(&private, "10.1.2.3", 80).await,
            Err(Refusal::NotPublic { .. })
        ));
        assert!(matches!(
            proxy.check(&public, "169.254.169.254", 80).await,
            Err(Refusal::NotPublic { .. })
        ));
        // The operator's exceptions need the policy too.
        assert_eq!(
            proxy
                .check(&allow(&["127.0.0.1:3141"]), "127.0.0.1", 3141)
                .await,
            Ok("127.0.0.1:3141".parse().expect("addr"))
        );
        assert!(matches!(
            proxy.check(&allow(&["127.0.0.1"]), "127.0.0.1", 3142).await,
            Err(Refusal::NotPublic { .. })
        ));
        assert!(proxy
            .check(&allow(&["mirror.lan"]), "mirror.lan", 80)
            .await
            .is_ok());
        // The server itself, even if an allow-list names it.
        assert!(matches!(
            proxy.check(&allow(&["127.0.0.1"]), "127.0.0.1", 8000).await,
            Err(Refusal::ServerAddress { .. })
        ));
        assert_eq!(
            proxy.check(&public, "nowhere.test", 80).await,
            Err(Refusal::Resolve {
                name: "nowhere.test".into()
            })
        );
        assert!(matches!(
            proxy.check(&public, "2130706433", 80).await,
            Err(Refusal::BadRequest(_))
        ));
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("proxy-authorization", "Basic eA=="),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("accept", "*/*"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        strip_hop_by_hop(&mut headers);
        let left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, vec!["accept"]);
    }

    #[test]
    fn origin_forms() {
        let uri: Uri = "http://a.test:8080/x/y?z=1".parse().expect("uri");
        assert_eq!(origin_form(&uri), "/x/y?z=1");
        let uri: Uri = "http://a.test".parse().expect("uri");
        assert_eq!(origin_form(&uri), "/");
    }

    #[test]
    fn refusals_have_statuses_and_codes() {
        assert_eq!(Refusal::PolicyNone.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            Refusal::Limit(LimitHit::Rate(5)).status(),
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            Refusal::Limit(LimitHit::Bytes(5)).kind().code(),
            "byte_limit"
        );
        assert!(Refusal::Limit(LimitHit::Open(3))
            .to_string()
            .contains("3 connections open"));
    }
}
