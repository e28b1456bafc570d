//! Network: only `lo`, its own; nothing of the host's loopback (the server included) nor of
//! another session's is reachable. No test sends anything to a non-loopback address.

use std::net::{TcpListener, UdpSocket};
use std::os::unix::net::UnixListener;
use std::time::Duration;

use crate::util::{attack, json_of, server};

/// Python: `tcp(host, port)` → "connected" or the errno name.
const TCP: &str = r#"
import socket, errno, json, os
def tcp(host, port):
    s = socket.socket(socket.AF_INET6 if ':' in host else socket.AF_INET)
    s.settimeout(3)
    try:
        s.connect((host, port))
        s.sendall(b'GET /healthz HTTP/1.0\r\n\r\n')
        return 'connected'
    except socket.timeout:
        return 'timeout'
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    finally:
        s.close()
"#;

#[test]
fn the_server_itself_is_unreachable() {
    let s = server();
    let port: u16 = s.base.rsplit(':').next().unwrap().parse().unwrap();
    let v = s.session();
    let out = attack(s, &v, |v| {
        json_of(
            v,
            &format!("{TCP}\nprint(json.dumps([tcp('127.0.0.1', {port}), tcp('localhost', {port}), tcp('::1', {port})]))"),
        )
    });
    for r in out.as_array().unwrap() {
        assert_ne!(r, "connected", "{out}");
    }
}

#[test]
fn host_loopback_services_are_unreachable() {
    let s = server();
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp_port = tcp.local_addr().unwrap().port();
    tcp.set_nonblocking(true).unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_port = udp.local_addr().unwrap().port();
    udp.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let abstract_name = format!("pyxis-hostile-{}", std::process::id());
    let unix = {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(&abstract_name).unwrap();
        UnixListener::bind_addr(&addr).unwrap()
    };
    unix.set_nonblocking(true).unwrap();
    let v = s.session();
    let out = attack(s, &v, |v| {
        json_of(
            v,
            &format!(
                r#"{TCP}
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    u.sendto(b'hello from the sandbox', ('127.0.0.1', {udp_port}))
    udp = 'sent'
except OSError as e:
    udp = errno.errorcode.get(e.errno, str(e.errno))
x = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    x.connect('\0{abstract_name}')
    ux = 'connected'
except OSError as e:
    ux = errno.errorcode.get(e.errno, str(e.errno))
print(json.dumps({{"tcp": tcp('127.0.0.1', {tcp_port}), "udp": udp, "unix": ux}}))
"#
            ),
        )
    });
    assert_ne!(out["tcp"], "connected", "{out}");
    assert_ne!(out["unix"], "connected", "{out}");
    assert!(tcp.accept().is_err(), "the host listener got a connection");
    assert!(
        unix.accept().is_err(),
        "the host unix socket got a connection"
    );
    let mut buf = [0u8; 64];
    assert!(udp.recv_from(&mut buf).is_err(), "the host got a datagram");
}

#[test]
fn only_loopback_is_visible() {
    let s = server();
    let v = s.session();
    let out = attack(s, &v, |v| {
        json_of(
            v,
            r#"
import socket, json
routes = [l for l in open('/proc/net/route').read().splitlines()[1:] if l.strip()]
dev = [l.split(':')[0].strip() for l in open('/proc/net/dev').read().splitlines()[2:]]
try:
    ifs = [n for _, n in socket.if_nameindex()]
except OSError:
    ifs = ['lo']  # netlink sockets are refused; /proc/net/dev tells the same
v6 = sorted({l.split()[-1] for l in open('/proc/net/if_inet6').read().splitlines() if l.strip()})
print(json.dumps({"ifs": ifs, "dev": dev, "v6": v6, "routes": routes}))
"#,
        )
    });
    assert_eq!(out["ifs"], serde_json::json!(["lo"]), "{out}");
    assert_eq!(out["dev"], serde_json::json!(["lo"]), "{out}");
    assert!(
        out["v6"] == serde_json::json!(["lo"]) || out["v6"] == serde_json::json!([]),
        "{out}"
    );
    assert_eq!(out["routes"], serde_json::json!([]), "{out}");
}

#[test]
fn sessions_do_not_share_loopback() {
    let s = server();
    let a = s.session();
    let port = a
        .ok(r#"
import socket, threading
srv = socket.socket()
srv.bind(('127.0.0.1', 0))
srv.listen(8)
print(srv.getsockname()[1])
"#)
        .trim()
        .parse::<u16>()
        .unwrap();
    // A reaches its own listener.
    assert_eq!(
        a.ok(&format!(
            "c = socket.create_connection(('127.0.0.1', {port}), 2)\nprint('ok')\nc.close()"
        )),
        "ok\n"
    );
    let b = s.session();
    let out = attack(s, &b, |b| {
        json_of(
            b,
            &format!("{TCP}\nprint(json.dumps(tcp('127.0.0.1', {port})))"),
        )
    });
    assert_ne!(out, "connected", "B reached A's listener");
}

#[test]
fn abstract_unix_sockets_are_private_to_a_session() {
    let s = server();
    let a = s.session();
    let name = format!("pyxis-hostile-a-{}", std::process::id());
    a.ok(&format!(
        "import socket\nsrv = socket.socket(socket.AF_UNIX)\nsrv.bind('\\0{name}')\nsrv.listen(1)\nc = socket.socket(socket.AF_UNIX)\nc.connect('\\0{name}')\nc.close()"
    ));
    let b = s.session();
    let out = attack(s, &b, |b| {
        b.ok(&format!(
            "import socket, errno\nc = socket.socket(socket.AF_UNIX)\ntry:\n    c.connect('\\0{name}')\n    print('connected')\nexcept OSError as e:\n    print(errno.errorcode[e.errno])"
        ))
    });
    assert_ne!(out, "connected\n", "B reached A's abstract socket");
}
