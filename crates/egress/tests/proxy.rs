//! The proxy over real sockets, with a real HTTP client (reqwest) and raw TCP for what a
//! client library would never send. Upstream servers run on loopback, which the operator
//! rules of each test allow port by port.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyxis_egress::{
    AddressRules, EgressConfig, EgressLimits, EgressMode, EgressPolicy, OperatorAllow, Proxy,
    RefusalKind, SessionEgress, StaticResolver,
};

/// An upstream HTTP server on loopback: answers every request with `body`, records each
/// request head it read.
struct Upstream {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Upstream {
    fn start(body: Vec<u8>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        let body = Arc::new(body);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let seen = seen.clone();
                let body = body.clone();
                std::thread::spawn(move || serve_upstream(stream, &seen, &body));
            }
        });
        Upstream { addr, heads }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().expect("lock").clone()
    }
}

fn serve_upstream(stream: TcpStream, seen: &Mutex<Vec<String>>, body: &[u8]) {
    let mut reader = BufReader::new(&stream);
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let length = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        let mut request_body = vec![0u8; length];
        if reader.read_exact(&mut request_body).is_err() {
            return;
        }
        head.push_str(&String::from_utf8_lossy(&request_body));
        seen.lock().expect("lock").push(head);
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\n",
            body.len()
        );
        let mut writer = &stream;
        if writer.write_all(answer.as_bytes()).is_err() || writer.write_all(body).is_err() {
            return;
        }
    }
}

/// A TCP echo server on loopback.
fn echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = &stream;
                let mut writer = &stream;
                let _ = std::io::copy(&mut reader, &mut writer);
            });
        }
    });
    addr
}

/// The proxy under test: a loopback listener standing in for the init, each connection
/// served by `session`.
struct Harness {
    proxy: Proxy,
    session: Arc<SessionEgress>,
    addr: SocketAddr,
    runtime: tokio::runtime::Runtime,
}

fn harness(allow: &[SocketAddr], policy: EgressPolicy, limits: EgressLimits) -> Harness {
    harness_with(allow, &[], policy, limits)
}

fn harness_with(
    allow: &[SocketAddr],
    forbidden: &[SocketAddr],
    policy: EgressPolicy,
    limits: EgressLimits,
) -> Harness {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let resolver = StaticResolver::new()
        .with("localhost", &["127.0.0.1".parse().expect("ip")])
        .with("upstream.test", &["127.0.0.1".parse().expect("ip")]);
    let proxy = Proxy::new(EgressConfig {
        rules: AddressRules {
            allow: allow.iter().map(|a| OperatorAllow::Socket(*a)).collect(),
            forbidden: forbidden.to_vec(),
        },
        resolver: Arc::new(resolver),
        limits,
        connect_timeout: Duration::from_secs(2),
        header_timeout: Duration::from_secs(2),
    });
    let session = proxy.session("test-session", policy);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    let addr = listener.local_addr().expect("addr");
    listener.set_nonblocking(true).expect("nonblocking");
    let serving = session.clone();
    runtime.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serving.clone().serve_connection(stream));
        }
    });
    Harness {
        proxy,
        session,
        addr,
        runtime,
    }
}

fn allow(entries: &[String]) -> EgressPolicy {
    EgressPolicy::new(EgressMode::Allow, entries).expect("policy")
}

fn client(proxy: SocketAddr) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .proxy(reqwest::Proxy::all(format!("http://{proxy}")).expect("proxy url"))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// Sends `request` raw and reads the whole answer (the proxy closes or the read times out).
fn raw(proxy: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(proxy).expect("connect proxy");
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    stream.write_all(request).expect("send");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// `CONNECT target` and the proxy's status line plus the stream, for tunnels.
fn connect(proxy: SocketAddr, target: &str) -> (String, TcpStream) {
    let mut stream = TcpStream::connect(proxy).expect("connect proxy");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        stream,
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"
    )
    .expect("send");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    let mut head = String::from_utf8_lossy(&head).into_owned();
    if !head.starts_with("HTTP/1.1 200") {
        // A refusal: its body follows.
        let mut rest = String::new();
        let _ = stream.read_to_string(&mut rest);
        head.push_str(&rest);
    }
    (head, stream)
}

#[test]
fn plain_http_reaches_an_allowed_server_with_a_clean_request() {
    let upstream = Upstream::start(b"hello through the proxy".to_vec());
    let h = harness(
        &[upstream.addr],
        allow(&[upstream.addr.to_string()]),
        EgressLimits::default(),
    );
    let response = client(h.addr)
        .get(format!("http://{}/simple/tiny/?q=1", upstream.addr))
        .header("Proxy-Authorization", "Basic c2VjcmV0")
        .header("Connection", "X-Private")
        .header("X-Private", "internal")
        .send()
        .expect("request");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().expect("body"), "hello through the proxy");
    let heads = upstream.heads();
    assert_eq!(heads.len(), 1, "{heads:?}");
    let head = heads[0].to_ascii_lowercase();
    assert!(
        head.starts_with("get /simple/tiny/?q=1 http/1.1\r\n"),
        "{head}"
    );
    assert!(
        head.contains(&format!("host: {}\r\n", upstream.addr)),
        "{head}"
    );
    for gone in ["proxy-authorization", "x-private", "proxy-connection"] {
        assert!(!head.contains(gone), "{gone} reached upstream: {head}");
    }
    let counters = h.proxy.metrics().snapshot();
    assert_eq!(counters.requests, 1);
    assert!(counters.bytes_received > 0 && counters.bytes_sent > 0);
}

#[test]
fn policies_refuse_with_a_reason_and_count() {
    let allowed = Upstream::start(b"yes".to_vec());
    let other = Upstream::start(b"no".to_vec());
    // The operator allows both; the session's policy only the first.
    let h = harness(
        &[allowed.addr, other.addr],
        allow(&[allowed.addr.to_string()]),
        EgressLimits::default(),
    );
    let http = client(h.addr);
    let ok = http
        .get(format!("http://{}/", allowed.addr))
        .send()
        .expect("request");
    assert_eq!(ok.status(), 200);
    let refused = http
        .get(format!("http://{}/", other.addr))
        .send()
        .expect("request");
    assert_eq!(refused.status(), 403);
    assert_eq!(
        refused
            .headers()
            .get("x-pyxis-egress-refusal")
            .and_then(|v| v.to_str().ok()),
        Some("not_allowed")
    );
    assert!(refused
        .text()
        .expect("body")
        .contains("is not on this session's allow-list"));
    assert!(other.heads().is_empty(), "the other server saw a request");

    // The policy can change (a pooled sandbox given to a session): now nothing.
    h.session.set_policy(EgressPolicy::none());
    let none = http
        .get(format!("http://{}/", allowed.addr))
        .send()
        .expect("request");
    assert_eq!(none.status(), 403);
    assert!(none.text().expect("body").contains("\"none\""));
    let metrics = h.proxy.metrics();
    assert_eq!(metrics.refusals(RefusalKind::NotAllowed), 1);
    assert_eq!(metrics.refusals(RefusalKind::PolicyNone), 1);
}

#[test]
fn connect_tunnels_to_allowed_addresses_only() {
    let echo = echo();
    let server: SocketAddr = "127.0.0.1:18080".parse().expect("addr");
    let h = harness_with(
        &[echo],
        &[server],
        allow(&[
            echo.to_string(),
            "127.0.0.1".into(),
            "10.0.0.0/8".into(),
            "localhost".into(),
        ]),
        EgressLimits::default(),
    );
    let (head, mut tunnel) = connect(h.addr, &echo.to_string());
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    tunnel.write_all(b"bytes, not HTTP").expect("write");
    let mut back = [0u8; 15];
    tunnel.read_exact(&mut back).expect("echo");
    assert_eq!(&back, b"bytes, not HTTP");

    // The server's own address, whatever the allow-list says.
    let (head, _) = connect(h.addr, &server.to_string());
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(head.contains("is the Pyxis server itself"), "{head}");
    // A private address: refused by the rules, before any connection is tried.
    let (head, _) = connect(h.addr, "10.1.2.3:80");
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(head.contains("address_not_public"), "{head}");
    assert!(head.contains("10.1.2.3, a loopback, private"), "{head}");
    // A name that resolves to loopback, on a port the operator did not allow.
    let (head, _) = connect(h.addr, "localhost:9");
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(head.contains("localhost:9 resolves to 127.0.0.1"), "{head}");
    // Loopback on another port.
    let (head, _) = connect(h.addr, "127.0.0.1:9");
    assert!(head.contains("address_not_public"), "{head}");
    assert_eq!(h.proxy.metrics().refusals(RefusalKind::NotPublic), 3);
    assert_eq!(h.proxy.metrics().refusals(RefusalKind::ServerAddress), 1);
    assert_eq!(h.proxy.metrics().snapshot().tunnels, 1);
}

#[test]
fn the_byte_limit_cuts_and_then_refuses() {
    let upstream = Upstream::start(vec![b'x'; 256 << 10]);
    let h = harness(
        &[upstream.addr],
        allow(&[upstream.addr.to_string()]),
        EgressLimits {
            max_bytes: 64 << 10,
            ..EgressLimits::default()
        },
    );
    let http = client(h.addr);
    let first = http
        .get(format!("http://{}/big", upstream.addr))
        .send()
        .and_then(|r| r.bytes());
    assert!(first.is_err(), "a 256 KiB body passed a 64 KiB limit");
    let second = http
        .get(format!("http://{}/big", upstream.addr))
        .send()
        .expect("an answer");
    assert_eq!(second.status(), 403);
    assert!(second
        .text()
        .expect("body")
        .contains("limit of 65536 bytes"));
    assert!(h.proxy.metrics().refusals(RefusalKind::ByteLimit) >= 2);
    assert!(h.session.usage().bytes() >= 64 << 10);
}

#[test]
fn open_connections_and_the_connection_rate_are_bounded() {
    let echo = echo();
    let h = harness(
        &[echo],
        allow(&[echo.to_string()]),
        EgressLimits {
            max_open: 2,
            ..EgressLimits::default()
        },
    );
    let (a, _keep_a) = connect(h.addr, &echo.to_string());
    let (b, _keep_b) = connect(h.addr, &echo.to_string());
    assert!(a.starts_with("HTTP/1.1 200") && b.starts_with("HTTP/1.1 200"));
    let (c, _) = connect(h.addr, &echo.to_string());
    assert!(c.starts_with("HTTP/1.1 429"), "{c}");
    assert!(c.contains("2 connections open"), "{c}");
    drop((_keep_a, _keep_b));

    let rate = harness(
        &[echo],
        allow(&[echo.to_string()]),
        EgressLimits {
            per_second: 1,
            burst: 3,
            ..EgressLimits::default()
        },
    );
    let answers: Vec<String> = (0..6)
        .map(|_| connect(rate.addr, &echo.to_string()).0)
        .collect();
    let limited = answers
        .iter()
        .filter(|a| a.starts_with("HTTP/1.1 429"))
        .count();
    assert!(limited >= 2, "{answers:?}");
    assert!(answers
        .iter()
        .any(|a| a.contains("Retry-After") || a.contains("retry-after")));
    assert!(rate.proxy.metrics().refusals(RefusalKind::RateLimit) >= 2);
}

#[test]
fn not_an_origin_server_and_not_a_relay_for_other_schemes() {
    let upstream = Upstream::start(b"x".to_vec());
    let h = harness(
        &[upstream.addr],
        allow(&[upstream.addr.to_string()]),
        EgressLimits::default(),
    );
    // Origin-form: the proxy is not a web server to be talked to directly.
    let answer = raw(h.addr, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("absolute-form"), "{answer}");
    // https in absolute form (would need interception), ftp, credentials in the authority.
    for request in [
        format!("GET https://{}/ HTTP/1.1\r\nHost: x\r\n\r\n", upstream.addr),
        format!("GET ftp://{}/ HTTP/1.1\r\nHost: x\r\n\r\n", upstream.addr),
        format!(
            "GET http://user:pw@{}/ HTTP/1.1\r\nHost: x\r\n\r\n",
            upstream.addr
        ),
    ] {
        let answer = raw(h.addr, request.as_bytes());
        assert!(answer.starts_with("HTTP/1.1 400"), "{request}: {answer}");
    }
    assert!(upstream.heads().is_empty());
}

#[test]
fn smuggling_and_header_tricks_do_not_pass() {
    let upstream = Upstream::start(b"ok".to_vec());
    let h = harness(
        &[upstream.addr],
        allow(&[upstream.addr.to_string()]),
        EgressLimits::default(),
    );
    // A Host header naming another server: the request goes where its URL says, with the
    // URL's authority as Host.
    let answer = raw(
        h.addr,
        format!(
            "GET http://{}/a HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n",
            upstream.addr
        )
        .as_bytes(),
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Content-Length and Transfer-Encoding both: whatever hyper makes of it, the upstream
    // never sees a second request hidden in the body.
    let smuggle = format!(
        "POST http://{addr}/b HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 4\r\n\
         Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET http://{addr}/smuggled HTTP/1.1\r\n\
         Host: {addr}\r\n\r\n",
        addr = upstream.addr
    );
    let _ = raw(h.addr, smuggle.as_bytes());
    // Two Content-Length headers that disagree.
    let double = format!(
        "POST http://{addr}/c HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 3\r\n\
         Content-Length: 40\r\n\r\nabc",
        addr = upstream.addr
    );
    let answer = raw(h.addr, double.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // A header folded over two lines (obs-fold), which some servers join.
    let folded = format!(
        "GET http://{addr}/d HTTP/1.1\r\nHost: {addr}\r\nX-A: 1\r\n Host: evil\r\n\r\n",
        addr = upstream.addr
    );
    let _ = raw(h.addr, folded.as_bytes());
    let heads = upstream.heads();
    for head in &heads {
        assert!(!head.contains("/smuggled"), "smuggled: {heads:?}");
        assert!(!head.to_ascii_lowercase().contains("169.254"), "{heads:?}");
        assert!(!head.contains("evil"), "{heads:?}");
        assert_eq!(
            head.matches("\r\n\r\n").count(),
            1,
            "one request per head: {head:?}"
        );
    }
    assert!(heads.iter().any(|h| h.starts_with("GET /a ")), "{heads:?}");
}

#[test]
fn garbage_and_silence_end_the_connection_not_the_proxy() {
    let upstream = Upstream::start(b"still fine".to_vec());
    let h = harness(
        &[upstream.addr],
        allow(&[upstream.addr.to_string()]),
        EgressLimits::default(),
    );
    let answer = raw(h.addr, b"\x16\x03\x01\x02\x00garbage\r\n\r\n");
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );
    let huge = format!(
        "GET http://x/ HTTP/1.1\r\nX: {}\r\n\r\n",
        "a".repeat(200 << 10)
    );
    let answer = raw(h.addr, huge.as_bytes());
    assert!(
        answer.is_empty()
            || answer.starts_with("HTTP/1.1 431")
            || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );
    // A client that sends half a head and waits is dropped after the header time limit.
    let mut slow = TcpStream::connect(h.addr).expect("connect");
    slow.write_all(b"GET http://").expect("write");
    slow.set_read_timeout(Some(Duration::from_secs(6)))
        .expect("timeout");
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "slow client kept"
    );
    let response = client(h.addr)
        .get(format!("http://{}/", upstream.addr))
        .send()
        .expect("request");
    assert_eq!(response.text().expect("body"), "still fine");
}

#[test]
fn the_channel_passes_tcp_sockets_and_drops_anything_else() {
    use nix::sys::socket::{
        sendmsg, socketpair, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType,
    };
    let upstream = Upstream::start(b"via the channel".to_vec());
    let h = harness(
        &[upstream.addr],
        allow(&[upstream.addr.to_string()]),
        EgressLimits::default(),
    );
    let (init_end, server_end): (OwnedFd, OwnedFd) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .expect("socketpair");
    let serving = h.session.clone();
    let done = h.runtime.spawn(serving.serve_channel(server_end));
    // What the init does: accept on a loopback listener, pass the socket.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let send = |channel: &OwnedFd, fd: i32| {
        sendmsg::<()>(
            channel.as_raw_fd(),
            &[std::io::IoSlice::new(b"c")],
            &[ControlMessage::ScmRights(&[fd])],
            MsgFlags::empty(),
            None,
        )
        .expect("sendmsg")
    };
    // Not a TCP socket: closed unread.
    let (mine, theirs) = std::os::unix::net::UnixStream::pair().expect("pair");
    send(&init_end, theirs.as_raw_fd());
    drop(theirs);
    let mut mine = mine;
    mine.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let mut buf = [0u8; 1];
    assert_eq!(mine.read(&mut buf).ok(), Some(0), "a unix socket was kept");

    let http = reqwest::blocking::Client::builder()
        .proxy(reqwest::Proxy::all(format!("http://127.0.0.1:{port}")).expect("proxy url"))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let passer = std::thread::spawn(move || {
        let (accepted, _) = listener.accept().expect("accept");
        send(&init_end, accepted.as_raw_fd());
        drop(accepted);
        init_end
    });
    let response = http
        .get(format!("http://{}/", upstream.addr))
        .send()
        .expect("request");
    assert_eq!(response.text().expect("body"), "via the channel");
    // The init's end closes: the channel's task ends.
    drop(passer.join().expect("passer"));
    let ended = h
        .runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(5), done).await });
    assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
}
