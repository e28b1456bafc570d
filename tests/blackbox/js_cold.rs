//! Issue 15: a session whose first context is not Python, made with the pool empty: the
//! sandbox's kernel process (forked by the zygote) executes that language's kernel in place
//! of the Python one, so no Python kernel is started and replaced. In the sandbox's pid
//! namespace that kernel is pid 2 with its parent (the zygote) outside it; a kernel started
//! through the join path is not. Hostile: the session's environment is given to the kernel
//! after it started (so `NODE_OPTIONS` cannot change how Node starts, nor
//! `PYXIS_KERNEL_LANGUAGE` the language), and nothing of the zygote's reaches it.

use pyxis_tests::{Session, TestServer};
use serde_json::{json, Value};

fn plain(v: &Value) -> String {
    v["results"][0]["data"]["text/plain"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn ok(v: Value) -> Value {
    assert_eq!(v["status"], "ok", "{v:#}");
    v
}

/// A server whose pool keeps nothing: every session is made cold.
fn cold_server() -> TestServer {
    TestServer::start(&[("PYXIS_POOL_MIN_IDLE", "0")])
}

/// `pyxis_sessions_created_total{source="cold"}` of `/metrics` (0 before the first).
fn created_cold(server: &TestServer) -> f64 {
    let text = server.get("/metrics").text().expect("metrics text");
    let want = "pyxis_sessions_created_total{source=\"cold\"} ";
    text.lines()
        .find_map(|l| l.strip_prefix(want))
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

/// `[pid, ppid]` of the session's first kernel, as JavaScript sees them.
fn js_pids(sess: &Session<'_>) -> String {
    plain(&ok(sess.exec("[process.pid, process.ppid]")))
}

#[test]
fn a_cold_javascript_session_runs_node_in_the_kernel_process_it_was_made_with() {
    let server = cold_server();
    let before = created_cold(&server);
    let sess = server.session_with(json!({ "language": "javascript" }));
    assert_eq!(created_cold(&server), before + 1.0, "not made cold");
    // Pid 2 of the sandbox, its parent outside the namespace: the process the zygote
    // forked, now running Node (a joined kernel would be a child of the join path's).
    assert_eq!(js_pids(&sess), "[ 2, 0 ]");
    let v = ok(sess.exec("[process.title, process.argv.slice(2), process.execArgv.length]"));
    assert!(plain(&v).contains("'pyxis-node-kernel'"), "{v:#}");
    assert!(plain(&v).contains("[ 'javascript' ]"), "{v:#}");
    // The environment of a process started in the sandbox, and nothing of the zygote's.
    let v = ok(sess.exec(
        "['HOME', 'PATH', 'PYXIS_WORKSPACE', 'PYXIS_SANDBOX_LIB', 'JE_ARROW_MALLOC_CONF', 'PYXIS_KERNEL_FD']\n\
         .map((k) => `${k}=${process.env[k] ?? '-'}`).join(' ')",
    ));
    let env = plain(&v);
    assert!(
        env.contains("HOME=/workspace") && env.contains("PYXIS_WORKSPACE=/workspace"),
        "{env}"
    );
    assert!(env.contains("PYXIS_SANDBOX_LIB=-"), "{env}");
    assert!(
        env.contains("JE_ARROW_MALLOC_CONF=-") && env.contains("PYXIS_KERNEL_FD=-"),
        "{env}"
    );
    // State, the first count, and a Python context beside it.
    let v = ok(sess.exec("let n = 40\nn + 2"));
    assert_eq!(plain(&v), "42");
    assert_eq!(v["execution_count"], 4);
    let py = crate::javascript::new_context(&sess, "python");
    let v = crate::javascript::exec_in(&sess, &py, "6 * 7", json!({}));
    assert_eq!(plain(&ok(v)), "42");
    assert_eq!(plain(&ok(sess.exec("n"))), "40");
}

#[test]
fn a_cold_typescript_and_a_cold_bash_session_are_executed_the_same_way() {
    let server = cold_server();
    let ts = server.session_with(json!({ "language": "typescript" }));
    assert_eq!(js_pids(&ts), "[ 2, 0 ]");
    let v = ok(ts.exec("interface P<T> { v: T }\nconst p: P<number> = { v: 41 }\np.v + 1"));
    assert_eq!(plain(&v), "42");
    let bash =
        server.session_with(json!({ "language": "bash", "env": { "GREETING": "hi there" } }));
    // The session's environment arrives by configure, exported in the shell.
    assert_eq!(ok(bash.exec("echo \"$GREETING\""))["stdout"], "hi there\n");
    let v = ok(bash.exec("echo $PPID; tr '\\0' ' ' < /proc/$PPID/cmdline; cd /tmp"));
    let out = v["stdout"].as_str().unwrap_or_default().to_string();
    assert!(
        out.starts_with("2\n"),
        "the bash kernel is not pid 2: {out:?}"
    );
    assert!(out.contains("pyxis_runtime.bash_kernel"), "{out:?}");
    assert_eq!(ok(bash.exec("pwd"))["stdout"], "/tmp\n");
}

#[test]
fn the_sessions_env_reaches_a_cold_kernel_only_after_it_started() {
    let server = cold_server();
    // Given to Node at its start, this would stop it (no such module) or make it run the
    // workspace's code before the kernel; given by configure, it is only a variable.
    let sess = server.session_with(json!({
        "language": "javascript",
        "env": {
            "NODE_OPTIONS": "--require /nonexistent/preload.js",
            "PYXIS_KERNEL_LANGUAGE": "typescript",
            "GREETING": "hi"
        }
    }));
    let v =
        ok(sess.exec("[process.env.GREETING, process.env.NODE_OPTIONS, process.execArgv.length]"));
    assert_eq!(
        plain(&v),
        "[ 'hi', '--require /nonexistent/preload.js', 1 ]"
    );
    // Still JavaScript: TypeScript syntax is a syntax error here.
    let v = sess.exec("const x: number = 1");
    assert_eq!(v["status"], "error", "{v:#}");
    assert_eq!(v["error"]["name"], "SyntaxError", "{v:#}");
}

#[test]
fn a_cold_javascript_context_restarted_alone_gets_a_fresh_kernel_process() {
    let server = cold_server();
    let sess = server.session_with(json!({ "language": "javascript" }));
    ok(sess.exec("let kept = 1\nrequire('fs').writeFileSync('left.txt', 'still here')"));
    let r = server.post(&format!("/v1/sessions/{}/restart", sess.id), &json!({}));
    assert!(r.status().is_success(), "restart: {}", r.status());
    // A new sandbox init and kernel process, the same workspace, the state gone.
    assert_eq!(js_pids(&sess), "[ 2, 0 ]");
    let v = ok(sess.exec("[typeof kept, require('fs').readFileSync('left.txt', 'utf8')]"));
    assert_eq!(plain(&v), "[ 'undefined', 'still here' ]");
    // A busy loop resumed by an await outlives its time limit: the kernel is ended, its
    // state lost, and a fresh one is made the same way.
    ok(sess.exec("let again = 2"));
    let v = sess.exec_with(json!({ "code": "await null\nwhile (true) {}", "timeout_s": 1 }));
    assert_eq!(v["status"], "timeout", "{v:#}");
    assert_eq!(v["state_lost"], true, "{v:#}");
    assert_eq!(js_pids(&sess), "[ 2, 0 ]");
    assert_eq!(plain(&ok(sess.exec("typeof again"))), "'undefined'");
}
