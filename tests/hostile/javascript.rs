//! Issue 15: hostile JavaScript in a session's Node context. Memory bombs (V8 heap and
//! off-heap buffers), a `child_process` flood, the native roads out of Node
//! (`process.binding`, `process.dlopen`, the inspector, raw spawns as root), and reads of
//! another session's workspace. Each runs in a JS context of a session whose first context
//! is Python, so [`attack`] also checks that the Python context next to it survives.

use std::time::{Duration, Instant};

use pyxis_tests::{scaled, Session};
use serde_json::{json, Value};

use crate::util::{attack, host_pids_with_uid_in, server};

/// Creates a JavaScript context in the session; returns its id.
fn js_context(sess: &Session<'_>) -> String {
    let r = sess.server.post(
        &format!("/v1/sessions/{}/contexts", sess.id),
        &json!({ "language": "javascript" }),
    );
    let status = r.status();
    let v: Value = r.json().expect("context json");
    assert!(status.is_success(), "create a JS context: {status} {v}");
    v["id"].as_str().expect("context id").to_string()
}

fn js(sess: &Session<'_>, ctx: &str, code: &str, timeout_s: u64) -> Value {
    sess.exec_with(json!({ "code": code, "context": ctx, "timeout_s": timeout_s }))
}

/// Runs `code` (whose value is a JSON string) in the JS context and parses that value.
fn js_json(sess: &Session<'_>, ctx: &str, code: &str) -> Value {
    let v = js(sess, ctx, code, 60);
    assert_eq!(v["status"], "ok", "cell failed: {v:#}");
    let text = v["results"][0]["data"]["text/plain"]
        .as_str()
        .unwrap_or_else(|| panic!("no value: {v:#}"));
    // util.inspect shows the string in quotes; the kernel's strings are JSON-safe ASCII.
    let inner = text.trim_matches('\'').replace("\\'", "'");
    serde_json::from_str(&inner).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn node_memory_bombs_end_in_an_oom_report() {
    let s = server();
    let victim = s.session();
    let ctx = js_context(&victim);
    attack(s, &victim, |victim| {
        for (what, code) in [
            (
                "V8 heap",
                "const heap = []\nwhile (true) heap.push(new Array(1 << 20).fill(heap.length))",
            ),
            (
                "off-heap buffers",
                "const bufs = []\nwhile (true) bufs.push(Buffer.alloc(64 << 20, 1))",
            ),
            (
                "after an await",
                "await null\nconst strs = []\nfor (let i = 0; ; i++) strs.push('x'.repeat(1 << 20) + i)",
            ),
        ] {
            let t = Instant::now();
            let v = js(victim, &ctx, code, 60);
            eprintln!("{what}: {:?}", t.elapsed());
            assert_eq!(v["status"], "killed", "{what}: {v:#}");
            assert_eq!(v["error"]["name"], "OutOfMemory", "{what}: {v:#}");
            assert_eq!(v["state_lost"], true, "{what}");
            let after = js(victim, &ctx, "1 + 1", 30);
            assert_eq!(after["status"], "ok", "{what}: the context restarts: {after:#}");
        }
    });
}

#[test]
fn child_process_flood_hits_the_pids_limit_and_dies_with_the_session() {
    let s = server();
    let victim = s.session();
    let ctx = js_context(&victim);
    let uid = attack(s, &victim, |victim| {
        let out = js_json(
            victim,
            &ctx,
            r#"const cp = require('child_process')
let spawned = 0, failed = 0, thrown = 0
const waits = []
for (let i = 0; i < 400; i++) {
  try {
    const child = cp.spawn('sleep', ['600'], { stdio: 'ignore', detached: true })
    waits.push(new Promise((done) => {
      child.once('spawn', () => { spawned++; done() })
      child.once('error', () => { failed++; done() })
    }))
  } catch { thrown++ }
}
await Promise.all(waits)
let sync = 'ok'
try { cp.execSync('true') } catch (e) { sync = e.code || e.message }
JSON.stringify({ spawned, failed, thrown, sync, uid: process.getuid() })"#,
        );
        eprintln!("flood: {out}");
        let spawned = out["spawned"].as_u64().unwrap_or(0);
        let refused = out["failed"].as_u64().unwrap_or(0) + out["thrown"].as_u64().unwrap_or(0);
        assert!(spawned > 0, "some children start: {out}");
        assert!(refused > 0, "the pids limit (64) refuses the rest: {out}");
        assert!(spawned < 64, "no more processes than the limit: {out}");
        // The kernel itself still works while its children fill the limit.
        let v = js(victim, &ctx, "'alive'", 30);
        assert_eq!(v["status"], "ok", "{v:#}");
        out["uid"].as_u64().expect("uid") as u32
    });
    assert!(
        !host_pids_with_uid_in(uid, uid + 1).is_empty(),
        "the detached children run until the session ends"
    );
    drop(victim);
    let deadline = Instant::now() + scaled(Duration::from_secs(20));
    loop {
        let left = host_pids_with_uid_in(uid, uid + 1);
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "processes outlived the session: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn native_roads_out_of_node_stay_in_the_sandbox() {
    let s = server();
    let victim = s.session();
    let ctx = js_context(&victim);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let out = attack(s, &victim, |victim| {
        js_json(
            victim,
            &ctx,
            &format!(
                r#"const fs = require('fs')
const cp = require('child_process')
const res = {{}}
const attempt = (name, fn) => {{ try {{ res[name] = {{ ok: true, value: String(fn()).slice(0, 300) }} }} catch (e) {{ res[name] = {{ ok: false, error: String(e.code || e.message).slice(0, 300) }} }} }}
const status = fs.readFileSync('/proc/self/status', 'utf8')
const field = (k) => (status.match(new RegExp('^' + k + ':\\s*(.*)$', 'm')) || [])[1]
res.status = {{ seccomp: field('Seccomp'), noNewPrivs: field('NoNewPrivs'), capEff: field('CapEff'), uid: field('Uid') }}
attempt('setuid', () => process.setuid(0))
attempt('setgid', () => process.setgid(0))
// The raw binding under child_process, asked for a root child.
attempt('binding_spawn_root', () => {{
  const r = process.binding('spawn_sync').spawn({{ file: '/usr/bin/id', args: ['id', '-u'], envPairs: [], uid: 0, gid: 0,
    stdio: [{{ type: 'pipe', readable: true, writable: false }}, {{ type: 'pipe', readable: false, writable: true }}, {{ type: 'pipe', readable: false, writable: true }}] }})
  if (r.error) throw Object.assign(new Error('spawn failed'), {{ code: 'errno ' + r.error }})
  return r.output && r.output[1] ? Buffer.from(r.output[1]).toString() : 'no output'
}})
attempt('unshare', () => {{
  const r = cp.spawnSync('unshare', ['-Ur', 'id', '-u'], {{ encoding: 'utf8' }})
  if (r.status !== 0) throw Object.assign(new Error(r.stderr), {{ code: 'exit ' + r.status + ': ' + (r.stderr || '').trim() }})
  return r.stdout
}})
// A shared object copied into the workspace and loaded as an addon.
attempt('dlopen_workspace', () => {{
  const lib = ['/usr/lib/x86_64-linux-gnu/libz.so.1', '/lib/x86_64-linux-gnu/libz.so.1'].find((p) => fs.existsSync(p))
  fs.copyFileSync(lib, '/workspace/addon.node')
  process.dlopen({{ exports: {{}} }}, '/workspace/addon.node')
  return 'loaded'
}})
attempt('init_environ', () => fs.readFileSync('/proc/1/environ', 'utf8'))
attempt('init_root', () => fs.readdirSync('/proc/1/root').join(','))
attempt('signal_init', () => process.kill(1, 0))
attempt('inspector', () => {{ require('inspector').open({port}, '0.0.0.0'); return require('inspector').url() }})
JSON.stringify(res)"#
            ),
        )
    });
    eprintln!("native roads: {out:#}");
    let st = &out["status"];
    assert_eq!(
        st["seccomp"], "2",
        "native code in the kernel runs under seccomp: {out}"
    );
    assert_eq!(st["noNewPrivs"], "1", "{out}");
    assert_eq!(st["capEff"], "0000000000000000", "no capabilities: {out}");
    for name in [
        "setuid",
        "setgid",
        "binding_spawn_root",
        "unshare",
        "init_environ",
    ] {
        assert_eq!(out[name]["ok"], false, "{name} must fail: {out:#}");
    }
    if out["init_root"]["ok"] == true {
        // Readable only if init runs as the sandbox's uid; it is still the sandbox's root.
        let listing = out["init_root"]["value"].as_str().unwrap_or_default();
        assert!(
            !listing.contains("root,"),
            "init's root is the sandbox's: {listing}"
        );
    }
    // A library loaded into the kernel shares its filter: whatever it does, it is
    // confined as the process is (the status above). The inspector listens in the
    // sandbox's own network namespace only: the host cannot reach it.
    if out["inspector"]["ok"] == true {
        let reached = std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_millis(500),
        );
        assert!(
            reached.is_err(),
            "the sandbox's inspector is reachable from the host"
        );
    }
}

#[test]
fn javascript_cannot_read_another_sessions_workspace() {
    let s = server();
    let owner = s.session();
    let secret = format!("js-secret-{}", rand_suffix());
    assert_eq!(
        owner.ok(&format!(
            "open('secret.txt', 'w').write('{secret}'); print('ok')"
        )),
        "ok\n"
    );
    let victim = s.session();
    let ctx = js_context(&victim);
    let data = s.data_dir.display().to_string();
    let other = owner.id.clone();
    let out = attack(s, &victim, |victim| {
        let v = js(
            victim,
            &ctx,
            &format!(
                r#"const fs = require('fs')
const path = require('path')
const found = []
const tried = []
const look = (p) => {{ tried.push(p); try {{ const t = fs.readFileSync(p, 'utf8'); if (t.includes('js-secret-')) found.push(p) }} catch {{}} }}
for (const p of ['{data}/workspaces/{other}/secret.txt', '/workspace/../{other}/secret.txt', '/workspace/../../workspaces/{other}/secret.txt', '/sandbox/../{other}/secret.txt']) look(p)
for (const pid of fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {{
  look('/proc/' + pid + '/root/workspace/secret.txt')
  look('/proc/' + pid + '/cwd/secret.txt')
}}
try {{ fs.symlinkSync('/proc/1/root/..', '/workspace/up') }} catch {{}}
look('/workspace/up/{other}/secret.txt')
const walk = (dir, depth) => {{
  if (depth > 3) return
  let entries = []
  try {{ entries = fs.readdirSync(dir, {{ withFileTypes: true }}) }} catch {{ return }}
  for (const e of entries) {{
    const p = path.join(dir, e.name)
    if (e.isDirectory() && !['proc', 'sys', 'dev', 'usr', 'lib', 'lib64', 'bin', 'sbin', 'opt'].includes(e.name)) walk(p, depth + 1)
    else if (e.name === 'secret.txt') look(p)
  }}
}}
walk('/', 0)
JSON.stringify({{ found, tried: tried.length }})"#
            ),
            60,
        );
        assert_eq!(v["status"], "ok", "{v:#}");
        v
    });
    let text = out.to_string();
    assert!(
        !text.contains(&secret),
        "the other session's secret leaked: {text}"
    );
    assert!(
        text.contains("found\\\":[]"),
        "no other workspace's file was readable: {text}"
    );
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7)
}
