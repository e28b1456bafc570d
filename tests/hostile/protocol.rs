//! Attacks on the kernel's link to the server: the cell owns the kernel process, so it can
//! write anything to the protocol socket, close it, crash or exit the interpreter.

use std::time::Instant;

use serde_json::json;

use crate::util::{self, attack, server};

/// Python: `frame(obj)` encodes a protocol frame; `KFD` is the kernel's socket.
const FRAMES: &str = r#"
import os, json, struct, stat
def _is_sock(fd):
    try:
        return stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        return False
KFD = [fd for fd in range(3, 256) if _is_sock(fd)][0]
def frame(obj):
    b = json.dumps(obj).encode()
    return struct.pack('>I', len(b)) + b
"#;

/// After the attack the session answers (possibly once with `state_lost`), the server stayed
/// healthy and kept its memory.
fn protocol_attack(code: &str) -> serde_json::Value {
    let s = server();
    let v = s.session();
    let before = util::rss_bytes(s.pid());
    let t = Instant::now();
    let r = attack(s, &v, |v| {
        v.exec_with(json!({"code": format!("{FRAMES}\n{code}"), "timeout_s": 20}))
    });
    assert!(t.elapsed().as_secs() < 60, "took {:?}", t.elapsed());
    let after = util::rss_bytes(s.pid());
    assert!(
        after < before + (128 << 20),
        "server RSS grew from {before} to {after}"
    );
    // The attack ran: the cell did not fail before reaching the socket.
    assert_ne!(r["status"], "error", "{r:#}");
    let kept = r.to_string().len() as u64;
    assert!(
        kept <= 2 * util::OUTPUT_CAP + 65536,
        "reply of {kept} bytes"
    );
    r
}

#[test]
fn garbage_on_the_protocol_socket() {
    protocol_attack(
        "os.write(KFD, b'\\x00\\x00\\x00\\x10not json at all!' * 4)\nimport time; time.sleep(1)",
    );
}

#[test]
fn a_huge_frame_length_on_the_protocol_socket() {
    protocol_attack(
        "os.write(KFD, b'\\xff\\xff\\xff\\xf0')\nchunk = b'x' * (1 << 20)\nfor _ in range(64):\n    os.write(KFD, chunk)\nimport time; time.sleep(1)",
    );
}

#[test]
fn forged_output_frames_are_capped_by_the_server() {
    let r = protocol_attack(
        r#"
text = 'z' * (256 << 10)
for _ in range(40):
    for i in range(1, 40):
        os.write(KFD, frame({"type": "stream", "id": str(i), "name": "stdout", "text": text}))
        os.write(KFD, frame({"type": "display_data", "id": str(i), "data": {"text/plain": text}, "metadata": {}}))
"#,
    );
    let out = r["stdout"].as_str().unwrap_or_default().len() as u64;
    assert!(out <= util::OUTPUT_CAP + 4096, "{out} bytes of stdout kept");
}

#[test]
fn unknown_and_malformed_frames() {
    protocol_attack(
        r#"
os.write(KFD, frame({"type": "no_such_message", "id": "1"}))
os.write(KFD, frame({"type": "ready"}))
os.write(KFD, frame({"type": "stream", "id": "1"}))
os.write(KFD, frame([1, 2, 3]))
import time; time.sleep(1)
"#,
    );
}

/// A cell queues forged `execute_reply` frames for guessed ids of the next cells: request
/// ids are random, so the forgeries match nothing and the next cells run normally.
#[test]
fn forged_replies_for_future_cells() {
    protocol_attack(
        r#"
for i in range(1, 40):
    os.write(KFD, frame({"type": "execute_reply", "id": str(i), "status": "ok", "execution_count": 10**18, "truncated": False}))
import time; time.sleep(1)
"#,
    );
}

#[test]
fn closing_the_protocol_socket() {
    let r = protocol_attack("os.close(KFD)\nimport time; time.sleep(3)\nprint('still here')");
    assert_eq!(r["state_lost"], true, "{r:#}");
}

#[test]
fn the_interpreter_exits() {
    let s = server();
    let v = s.session();
    let r = attack(s, &v, |v| v.exec("import os\nos._exit(3)"));
    assert_eq!(r["status"], "killed", "{r:#}");
    assert_eq!(r["error"]["name"], "KernelDied", "{r:#}");
    assert_eq!(r["state_lost"], true, "{r:#}");
}

#[test]
fn the_interpreter_segfaults() {
    let s = server();
    let v = s.session();
    let r = attack(s, &v, |v| {
        v.exec("import faulthandler\nfaulthandler._sigsegv()")
    });
    assert_eq!(r["status"], "killed", "{r:#}");
    assert_eq!(r["state_lost"], true, "{r:#}");
}

#[test]
fn cpu_burn_in_many_processes_does_not_starve_the_neighbour() {
    let s = server();
    let v = s.session();
    let out = attack(s, &v, |v| {
        v.ok(r#"
import multiprocessing as mp, time
def burn(t):
    end = time.time() + t
    while time.time() < end:
        pass
    return 1
with mp.get_context('fork').Pool(8) as pool:
    print(sum(pool.map(burn, [5] * 8)))
"#)
    });
    assert_eq!(out, "8\n");
}

#[test]
fn output_flood_between_cells_stays_bounded() {
    let s = server();
    let v = s.session();
    let before = util::rss_bytes(s.pid());
    let next = attack(s, &v, |v| {
        v.ok("import os, threading\ndef spam():\n    b = b'q' * (1 << 20)\n    while True:\n        os.write(1, b)\nthreading.Thread(target=spam, daemon=True).start()\nprint('started')");
        // Nothing is running in the session now, but its thread floods for seconds.
        std::thread::sleep(std::time::Duration::from_secs(5));
        let t = Instant::now();
        let next = v.exec_with(json!({"code": "print('next')", "timeout_s": 10}));
        assert!(
            t.elapsed().as_secs() < 15,
            "next cell took {:?}",
            t.elapsed()
        );
        // A restart ends the flood (fresh interpreter).
        let r = s.post(&format!("/v1/sessions/{}/restart", v.id), &json!({}));
        assert!(r.status().is_success(), "restart: {}", r.status());
        next
    });
    let after = util::rss_bytes(s.pid());
    assert!(
        after < before + (128 << 20),
        "server RSS grew from {before} to {after}"
    );
    let kept = next["stdout"].as_str().unwrap_or_default().len() as u64;
    assert!(kept <= util::OUTPUT_CAP + 4096, "{kept} bytes kept");
}

#[test]
fn closing_stdio_does_not_break_the_session() {
    let s = server();
    let v = s.session();
    attack(s, &v, |v| {
        v.exec("import os\nos.close(0)\nos.close(1)\nos.close(2)\nprint('gone')")
    });
}

#[test]
fn invalid_utf8_and_lone_surrogates_in_output() {
    let s = server();
    let v = s.session();
    v.ok("x = 5");
    let r = attack(s, &v, |v| {
        v.exec(
            "import os\nfrom IPython.display import display\nos.write(1, bytes(range(256)) * 64)\nos.write(2, b'\\xff\\xfe\\xc3(' * 1000)\ndisplay({'text/plain': 'a\\ud800b', 'text/html': '\\udcff'}, raw=True)\n'\\udcff' * 3",
        )
    });
    assert_eq!(r["status"], "ok", "{r:#}");
    assert_eq!(r["state_lost"], false, "{r:#}");
    assert_eq!(v.ok("print(x)"), "5\n");
}

#[test]
fn huge_repr_is_capped() {
    let s = server();
    let v = s.session();
    let r = attack(s, &v, |v| {
        v.exec("class R:\n    def __repr__(self):\n        return 'r' * (50 << 20)\nR()")
    });
    assert_eq!(r["status"], "ok", "{r:#}");
    assert_eq!(r["truncated"], true);
    assert!(r.to_string().len() as u64 <= 2 * util::OUTPUT_CAP + 65536);
}

/// A 50 MiB exception message: the driver cuts the error event down (the reply is
/// flagged truncated) instead of sending a frame beyond the server's limit.
#[test]
fn huge_exception_message_is_capped() {
    let s = server();
    let v = s.session();
    v.ok("x = 5");
    let r = attack(s, &v, |v| v.exec("raise ValueError('v' * (50 << 20))"));
    assert_eq!(r["status"], "error", "{r:#}");
    assert_eq!(r["error"]["name"], "ValueError", "{r:#}");
    assert_eq!(r["truncated"], true, "{r:#}");
    assert!(r.to_string().len() < 2 << 20, "the answer stays small");
    assert_eq!(v.ok("print(x)"), "5\n");
}
