//! What the proxy costs a large download: the same 100 MB body from a loopback server,
//! fetched directly and through the proxy (plain HTTP forwarding and a `CONNECT` tunnel),
//! by the same client. Prints the median of each and the overhead.
//!
//! `cargo run --release -p pyxis-egress --example proxy_overhead [MB] [runs]`

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pyxis_egress::{
    AddressRules, EgressConfig, EgressLimits, EgressMode, EgressPolicy, OperatorAllow, Proxy,
};

fn upstream(size: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let body = Arc::new(vec![b'x'; size]);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let body = body.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(&stream);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut writer = &stream;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = writer.write_all(head.as_bytes());
                let _ = writer.write_all(&body);
            });
        }
    });
    addr
}

/// Reads an HTTP answer with a Content-Length body to its end; the bytes of the body.
fn read_answer(stream: &mut impl Read) -> usize {
    let mut reader = BufReader::with_capacity(1 << 16, stream);
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("head");
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().expect("length");
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut buf = vec![0u8; 1 << 16];
    let mut got = 0;
    while got < length {
        let n = reader.read(&mut buf).expect("body");
        assert!(n > 0, "short body");
        got += n;
    }
    got
}

fn direct(addr: SocketAddr) -> usize {
    let mut s = TcpStream::connect(addr).expect("connect");
    write!(s, "GET /big HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("send");
    read_answer(&mut s)
}

fn forwarded(proxy: SocketAddr, addr: SocketAddr) -> usize {
    let mut s = TcpStream::connect(proxy).expect("connect");
    write!(s, "GET http://{addr}/big HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("send");
    read_answer(&mut s)
}

fn tunnelled(proxy: SocketAddr, addr: SocketAddr) -> usize {
    let mut s = TcpStream::connect(proxy).expect("connect");
    write!(s, "CONNECT {addr} HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("send");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).expect("connect answer");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    write!(s, "GET /big HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("send");
    read_answer(&mut s)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mb: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100);
    let runs: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(9);
    let size = mb << 20;
    let addr = upstream(size);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let proxy = Proxy::new(EgressConfig {
        rules: AddressRules {
            allow: vec![OperatorAllow::Socket(addr)],
            forbidden: Vec::new(),
        },
        limits: EgressLimits {
            max_bytes: u64::MAX,
            ..EgressLimits::default()
        },
        ..EgressConfig::default()
    });
    let session = proxy.session(
        "bench",
        EgressPolicy::new(EgressMode::Allow, &[addr.to_string()]).expect("policy"),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let proxy_addr = listener.local_addr().expect("addr");
    listener.set_nonblocking(true).expect("nonblocking");
    runtime.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(session.clone().serve_connection(stream));
        }
    });
    type Fetch = fn(SocketAddr, SocketAddr) -> usize;
    let ways: [(&str, Fetch); 3] = [
        ("direct", |_, a| direct(a)),
        ("forwarded", forwarded),
        ("tunnelled", tunnelled),
    ];
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); ways.len()];
    // Interleaved, so that drifts of the machine hit every way alike.
    for _ in 0..runs {
        for (i, (_, fetch)) in ways.iter().enumerate() {
            let t = Instant::now();
            assert_eq!(fetch(proxy_addr, addr), size);
            times[i].push(t.elapsed());
        }
    }
    let base = median(times[0].clone());
    for ((name, _), t) in ways.iter().zip(times) {
        let m = median(t);
        let mbps = size as f64 / m.as_secs_f64() / 1e6;
        let overhead = (m.as_secs_f64() / base.as_secs_f64() - 1.0) * 100.0;
        println!(
            "{name:10} {mb} MB  median {:7.1} ms  {mbps:7.0} MB/s  overhead {overhead:+5.1}%",
            m.as_secs_f64() * 1e3
        );
    }
}
