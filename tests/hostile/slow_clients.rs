//! Slow and stalled clients (issue 14, point 4): connections that never finish their request
//! head, drip it, stop sending a body or stop reading, or open more connections than the
//! server allows. They are shed within their timeout while other clients are answered at
//! once, and the connections past a cap are refused with a clear answer and counted.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use pyxis_tests::{scaled, TestServer};
use serde_json::json;

/// The value of the metric line starting with `series` (`name{labels}`), 0 when absent.
fn metric(server: &TestServer, series: &str) -> f64 {
    let text = server.get("/metrics").text().expect("metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Whether the server closed `conn` (EOF or reset) within `limit`, reading and dropping
/// whatever it sent first.
fn closed_within(conn: &mut TcpStream, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        conn.set_read_timeout(Some(left)).expect("read timeout");
        match conn.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false
            }
            // Reset: closed too.
            Err(_) => return true,
        }
    }
}

/// A request answered on a fresh connection, and how long it took.
fn healthz_round_trip(server: &TestServer) -> Duration {
    let t0 = Instant::now();
    let r = server.get("/healthz");
    assert_eq!(r.status(), 200);
    t0.elapsed()
}

#[test]
fn half_request_lines_silence_and_a_slowloris_drip_are_shed_while_others_are_served() {
    let header_timeout = 2.0;
    let server = TestServer::start(&[
        ("PYXIS_POOL_MIN_IDLE", "0"),
        ("PYXIS_HEADER_TIMEOUT_S", &header_timeout.to_string()),
    ]);
    let before = metric(
        &server,
        "pyxis_connections_shed_total{reason=\"header_timeout\"}",
    );
    let opened = Instant::now();
    let mut stalled: Vec<TcpStream> = Vec::new();
    // 40 connections that send half a request line and stop.
    for _ in 0..40 {
        let mut c = TcpStream::connect(server.addr()).expect("connect");
        c.write_all(b"GET /v1/sessions HT").expect("half a line");
        stalled.push(c);
    }
    // 8 that send nothing at all.
    for _ in 0..8 {
        stalled.push(TcpStream::connect(server.addr()).expect("connect"));
    }
    // A slowloris: one header byte every 100 ms, never the blank line.
    let addr = server.addr().to_string();
    let drip = std::thread::spawn(move || {
        let mut c = TcpStream::connect(addr).expect("connect");
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .expect("start");
        let t0 = Instant::now();
        let mut sent = 0;
        // Valid header lines, one byte at a time: only the clock can end this.
        let line = b"X-Drip: 1\r\n";
        while t0.elapsed() < Duration::from_secs(30) {
            if c.write_all(&line[sent % line.len()..][..1]).is_err() {
                return (true, t0.elapsed());
            }
            sent += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        (false, t0.elapsed())
    });
    // Meanwhile others are answered promptly, well inside the header timeout.
    for _ in 0..5 {
        let took = healthz_round_trip(&server);
        assert!(
            took < scaled(Duration::from_secs(1)),
            "a good client waited {took:?} behind the stalled ones"
        );
    }
    let limit = Duration::from_secs_f64(header_timeout) + scaled(Duration::from_secs(3));
    for (i, c) in stalled.iter_mut().enumerate() {
        let left = limit.saturating_sub(opened.elapsed());
        assert!(
            closed_within(c, left.max(Duration::from_millis(1))),
            "stalled connection {i} still open {:?} after it was opened",
            opened.elapsed()
        );
    }
    let (cut, after) = drip.join().expect("drip thread");
    assert!(cut, "the slowloris connection was never closed");
    assert!(after < limit, "the slowloris was cut only after {after:?}");
    let shed = metric(
        &server,
        "pyxis_connections_shed_total{reason=\"header_timeout\"}",
    );
    assert!(
        shed - before >= 49.0,
        "header timeouts counted: {before} then {shed}"
    );
    // And the server still serves.
    healthz_round_trip(&server);
}

#[test]
fn past_the_connection_cap_new_connections_get_a_clear_503_and_are_counted() {
    let server = TestServer::start(&[
        ("PYXIS_POOL_MIN_IDLE", "0"),
        ("PYXIS_MAX_CONNECTIONS", "8"),
        ("PYXIS_HEADER_TIMEOUT_S", "60"),
    ]);
    let held: Vec<TcpStream> = (0..8)
        .map(|_| TcpStream::connect(server.addr()).expect("connect"))
        .collect();
    // Let the server accept them all.
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..3 {
        let mut extra = TcpStream::connect(server.addr()).expect("connect");
        extra
            .set_read_timeout(Some(scaled(Duration::from_secs(5))))
            .expect("timeout");
        let mut answer = String::new();
        let _ = extra.read_to_string(&mut answer);
        assert!(
            answer.starts_with("HTTP/1.1 503"),
            "a connection past the cap got {answer:?}"
        );
        assert!(answer.contains("too_many_connections"), "{answer}");
        assert!(
            answer.to_ascii_lowercase().contains("retry-after: 1"),
            "{answer}"
        );
    }
    drop(held);
    // The held connections' places come back when they close.
    let deadline = Instant::now() + scaled(Duration::from_secs(10));
    let refused = loop {
        if let Ok(r) = server
            .req(reqwest::Method::GET, "/metrics")
            .timeout(Duration::from_secs(2))
            .send()
        {
            let text = r.text().expect("metrics");
            break text
                .lines()
                .find_map(|l| {
                    l.strip_prefix("pyxis_connections_refused_total{reason=\"max_connections\"}")
                })
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0);
        }
        assert!(
            Instant::now() < deadline,
            "the server never freed its connections"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(refused >= 3.0, "refused connections counted: {refused}");
}

#[test]
fn connections_past_the_per_client_cap_are_refused() {
    let server = TestServer::start(&[
        ("PYXIS_POOL_MIN_IDLE", "0"),
        ("PYXIS_MAX_CONNECTIONS_PER_PEER", "4"),
        ("PYXIS_HEADER_TIMEOUT_S", "60"),
    ]);
    let held: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(server.addr()).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut extra = TcpStream::connect(server.addr()).expect("connect");
    extra
        .set_read_timeout(Some(scaled(Duration::from_secs(5))))
        .expect("timeout");
    let mut answer = String::new();
    let _ = extra.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    assert!(answer.contains("the limit per client"), "{answer}");
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    let refused = metric(
        &server,
        "pyxis_connections_refused_total{reason=\"max_connections_per_peer\"}",
    );
    assert!(refused >= 1.0, "per-peer refusals counted: {refused}");
}

#[test]
fn a_stalled_body_or_an_unread_response_is_shed_but_long_cells_and_streams_are_not() {
    let idle = 2.0;
    let server = TestServer::start(&[
        ("PYXIS_POOL_MIN_IDLE", "1"),
        ("PYXIS_CONN_IDLE_TIMEOUT_S", &idle.to_string()),
    ]);
    let limit = Duration::from_secs_f64(idle) + scaled(Duration::from_secs(4));
    // A body promised and not sent: the handler waits for it, the connection is shed.
    let mut c = TcpStream::connect(server.addr()).expect("connect");
    let head = format!(
        "POST /v1/execute HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"code\": \"pri",
        server.token
    );
    c.write_all(head.as_bytes()).expect("head");
    let t0 = Instant::now();
    assert!(
        closed_within(&mut c, limit),
        "a stalled body was never shed"
    );
    assert!(t0.elapsed() >= Duration::from_secs_f64(idle * 0.9));

    // A response the client does not read: the server's writes block, then it gives up.
    let session = server.session();
    session.ok("open('big.bin', 'wb').write(b'x' * (64 << 20))");
    let mut c = TcpStream::connect(server.addr()).expect("connect");
    // SAFETY: setsockopt on a descriptor this test owns, with a pointer to a local int.
    unsafe {
        let small: libc::c_int = 4096;
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&c),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &small as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    let head = format!(
        "GET {} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        session.file_url("big.bin"),
        server.token
    );
    c.write_all(head.as_bytes()).expect("head");
    std::thread::sleep(limit + scaled(Duration::from_secs(2)));
    // Now read what is there: the stream ends (shed) long before the 64 MiB.
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    c.set_read_timeout(Some(scaled(Duration::from_secs(10))))
        .expect("timeout");
    loop {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    assert!(
        got < 32 << 20,
        "an unread response was kept going: {got} bytes came after the wait"
    );
    let shed = metric(
        &server,
        "pyxis_connections_shed_total{reason=\"response_not_read\"}",
    );
    assert!(shed >= 1.0, "unread responses counted: {shed}");

    // A cell that computes longer than the stall timeout is not a stall…
    let v = session.exec(&format!(
        "import time; time.sleep({}); print('done')",
        idle * 2.0
    ));
    assert_eq!(v["stdout"], "done\n", "{v}");
    // …nor is an SSE stream that is quiet for that long between events.
    let r = server
        .req(
            reqwest::Method::POST,
            &format!("/v1/sessions/{}/execute", session.id),
        )
        .header("Accept", "text/event-stream")
        .json(&json!({"code": format!("import time\nprint(1, flush=True)\ntime.sleep({})\nprint(2)", idle * 2.0)}))
        .send()
        .expect("stream");
    assert_eq!(r.status(), 200);
    let text = r.text().expect("whole stream");
    assert!(text.contains("execute_reply"), "the stream was cut: {text}");
    assert!(
        text.contains("\"2\\n\"") || text.contains("2\\n"),
        "the second print is missing: {text}"
    );
}
