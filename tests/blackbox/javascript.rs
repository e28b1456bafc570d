//! Issue 15, point 2: JavaScript and TypeScript contexts (the Node kernel of
//! `runtime/node`) against a real server: state across cells, TypeScript, errors with
//! their stack, `display`, the preinstalled packages, interrupt, timeout and out of memory
//! in a JS context while the session's Python context keeps its state.

use std::time::{Duration, Instant};

use pyxis_tests::{scaled, Session, TestServer};
use serde_json::{json, Value};

/// Creates a context of `language` in the session; returns its id.
pub fn new_context(sess: &Session<'_>, language: &str) -> String {
    let r = sess.server.post(
        &format!("/v1/sessions/{}/contexts", sess.id),
        &json!({ "language": language }),
    );
    let status = r.status();
    let v: Value = r.json().expect("context json");
    assert!(
        status.is_success(),
        "create a {language} context: {status} {v}"
    );
    v["id"].as_str().expect("context id").to_string()
}

/// Runs `code` in context `ctx` (with more fields from `extra`).
pub fn exec_in(sess: &Session<'_>, ctx: &str, code: &str, extra: Value) -> Value {
    let mut body = json!({ "code": code, "context": ctx });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    sess.exec_with(body)
}

/// The `text/plain` of a cell's results, one per line.
fn plain(v: &Value) -> String {
    v["results"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .filter_map(|r| r["data"]["text/plain"].as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

fn ok(v: &Value) -> &Value {
    assert_eq!(v["status"], "ok", "cell failed: {v:#}");
    v
}

#[test]
fn javascript_session_keeps_state_across_cells() {
    let s = TestServer::shared();
    let sess = s.session_with(json!({ "language": "javascript" }));
    let v = sess.exec(
        "let count = 1\nconst box = { n: 2 }\nclass Counter { constructor(s) { this.s = s } next() { return ++this.s } }\nfunction twice(x) { return 2 * x }\nconsole.log('declared')",
    );
    assert_eq!(ok(&v)["stdout"], "declared\n");
    let v = sess.exec("const c = new Counter(count + box.n)\ntwice(c.next())");
    assert_eq!(plain(ok(&v)), "8");
    assert_eq!(v["results"][0]["kind"], "execute_result");
    // Top-level await, and a declaration that a re-run cell repeats.
    let v = sess.exec(
        "const later = await new Promise((r) => setTimeout(() => r(count + 40), 10))\nlater + 1",
    );
    assert_eq!(plain(ok(&v)), "42");
    let v = sess.exec("let count = 10\ncount + later");
    assert_eq!(plain(ok(&v)), "51");
    assert_eq!(v["execution_count"], 4);
}

#[test]
fn typescript_cell_with_interfaces_and_generics() {
    let s = TestServer::shared();
    let sess = s.session_with(json!({ "language": "typescript" }));
    let v = sess.exec(
        "interface Item<T> { id: number; value: T }\n\
         function pick<T, K extends keyof T>(obj: T, key: K): T[K] { return obj[key] }\n\
         class Store<T> {\n  private items: Item<T>[] = []\n  add(value: T): this { this.items.push({ id: this.items.length, value }); return this }\n  get size(): number { return this.items.length }\n}\n\
         const store = new Store<string>().add('a').add('b')",
    );
    ok(&v);
    let v = sess.exec("const item: Item<number> = { id: 7, value: 35 };\n[pick(item, 'value') + item.id, store.size]");
    assert_eq!(plain(ok(&v)), "[ 42, 2 ]");
    // Type checking is off (ts-node --transpile-only): a type error still runs.
    let v = sess.exec("const wrong: number = 'text' as any as number\ntypeof wrong");
    assert_eq!(plain(ok(&v)), "'string'");
}

#[test]
fn javascript_error_has_name_message_and_a_stack_into_the_cell() {
    let s = TestServer::shared();
    let sess = s.session_with(json!({ "language": "javascript" }));
    let v =
        sess.exec("function parse(s) {\n  return JSON.parse(s)\n}\nconst ok = 1\nparse('{bad')");
    assert_eq!(v["status"], "error", "{v:#}");
    assert_eq!(v["error"]["name"], "SyntaxError");
    assert!(
        v["error"]["value"]
            .as_str()
            .unwrap_or_default()
            .contains("JSON"),
        "{v:#}"
    );
    let tb: Vec<&str> = v["error"]["traceback"]
        .as_array()
        .expect("traceback")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let tb = tb.join("\n");
    assert!(tb.contains("at parse (<cell 1>:2:15)"), "{tb}");
    assert!(tb.contains("at <cell 1>:5:1"), "{tb}");
    assert!(
        tb.contains("return JSON.parse(s)"),
        "the failing line: {tb}"
    );
    assert!(!tb.contains("kernel.js"), "no kernel frames: {tb}");
    // The same in TypeScript: positions are the TypeScript cell's, not the emitted code's.
    let ts = s.session_with(json!({ "language": "typescript" }));
    let v = ts.exec("type Id = number\ninterface Shape {\n  area(): number\n}\nfunction fail(id: Id): never {\n  throw new RangeError(`no ${id}`)\n}\nfail(3)");
    assert_eq!(v["error"]["name"], "RangeError");
    let tb = v["error"]["traceback"].to_string();
    assert!(tb.contains("at fail (<cell 1>:6:9)"), "{tb}");
}

#[test]
fn javascript_displays_html_svg_png_and_json() {
    let s = TestServer::shared();
    let sess = s.session_with(json!({ "language": "javascript" }));
    let png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";
    let v = sess.exec(&format!(
        "display.html('<table><tr><td>1</td></tr></table>')\n\
         display({{ 'image/svg+xml': '<svg xmlns=\"http://www.w3.org/2000/svg\"/>' }})\n\
         display(Buffer.from('{png}', 'base64'))\n\
         display.json({{ rows: 2 }})\n\
         'done'"
    ));
    ok(&v);
    let results = v["results"].as_array().expect("results");
    assert_eq!(results.len(), 5, "{v:#}");
    assert_eq!(results[0]["kind"], "display_data");
    assert_eq!(
        results[0]["data"]["text/html"],
        "<table><tr><td>1</td></tr></table>"
    );
    assert!(results[1]["data"]["image/svg+xml"]
        .as_str()
        .is_some_and(|s| s.starts_with("<svg")));
    assert_eq!(results[2]["data"]["image/png"], png);
    assert_eq!(results[3]["data"]["application/json"], json!({ "rows": 2 }));
    assert_eq!(results[4]["kind"], "execute_result");
    // `outputs` keeps the order: the four displays, then the value.
    let kinds: Vec<&str> = v["outputs"]
        .as_array()
        .expect("outputs")
        .iter()
        .filter_map(|o| o["type"].as_str())
        .collect();
    assert_eq!(
        kinds,
        [
            "display_data",
            "display_data",
            "display_data",
            "display_data",
            "execute_result"
        ]
    );
}

#[test]
fn javascript_preinstalled_packages_write_documents() {
    let s = TestServer::shared();
    let sess = s.session_with(json!({ "language": "javascript" }));
    let v = sess.exec(
        "const fs = require('fs')\n\
         const docx = require('docx')\n\
         const PptxGenJS = require('pptxgenjs')\n\
         const _ = require('lodash')\n\
         const dayjs = require('dayjs')\n\
         const doc = new docx.Document({ sections: [{ children: [new docx.Paragraph('Pyxis')] }] })\n\
         fs.writeFileSync('report.docx', await docx.Packer.toBuffer(doc))\n\
         const pptx = new PptxGenJS()\n\
         pptx.addSlide().addText('Hello', { x: 1, y: 1 })\n\
         await pptx.writeFile({ fileName: 'deck.pptx' })\n\
         const { default: ts } = await import('typescript');\n\
         [_.sum([1, 2]), dayjs('2025-03-04').month(), typeof ts.transpileModule]",
    );
    assert_eq!(plain(ok(&v)), "[ 3, 2, 'function' ]");
    for name in ["report.docx", "deck.pptx"] {
        let r = sess.get_file(name);
        assert_eq!(r.status(), 200, "{name}");
        let bytes = r.bytes().expect("bytes");
        assert!(bytes.starts_with(b"PK"), "{name} is a zip (OOXML)");
    }
}

#[test]
fn javascript_network_absence_is_a_clear_error() {
    let s = TestServer::shared();
    let sess = s.session_with(json!({ "language": "javascript" }));
    let t = Instant::now();
    let v = sess.exec(
        "const axios = require('axios')\nawait axios.get('http://pyxis-no-such-host.invalid/', { timeout: 5000 })",
    );
    assert_eq!(v["status"], "error", "{v:#}");
    assert_eq!(v["error"]["name"], "AxiosError", "{v:#}");
    assert!(!v["error"]["value"].as_str().unwrap_or_default().is_empty());
    assert!(
        t.elapsed() < scaled(Duration::from_secs(10)),
        "no hang: {:?}",
        t.elapsed()
    );
}

#[test]
fn javascript_and_python_contexts_share_the_workspace() {
    let s = TestServer::shared();
    let sess = s.session();
    let js = new_context(&sess, "javascript");
    assert_eq!(
        sess.ok("open('from_py.txt', 'w').write('py wrote'); print('ok')"),
        "ok\n"
    );
    let v = exec_in(
        &sess,
        &js,
        "const fs = require('fs')\nfs.writeFileSync('from_js.json', JSON.stringify({ n: 41 }))\nfs.readFileSync('from_py.txt', 'utf8')",
        json!({}),
    );
    assert_eq!(plain(ok(&v)), "'py wrote'");
    assert_eq!(
        sess.ok("import json; print(json.load(open('from_js.json'))['n'] + 1)"),
        "42\n"
    );
}

#[test]
fn javascript_interrupt_ends_a_busy_loop_and_keeps_state() {
    let s = TestServer::shared();
    let sess = s.session();
    let js = new_context(&sess, "javascript");
    ok(&exec_in(&sess, &js, "let kept = 'here'", json!({})));
    std::thread::scope(|scope| {
        let runner =
            scope.spawn(|| exec_in(&sess, &js, "let spins = 0\nwhile (true) spins++", json!({})));
        std::thread::sleep(scaled(Duration::from_millis(800)));
        let r = s.post(
            &format!("/v1/sessions/{}/contexts/{js}/interrupt", sess.id),
            &json!({}),
        );
        assert!(r.status().is_success(), "interrupt: {}", r.status());
        let v = runner.join().expect("runner");
        assert_eq!(v["status"], "error", "{v:#}");
        assert_eq!(v["error"]["name"], "KeyboardInterrupt");
        assert_eq!(v["state_lost"], false);
    });
    let v = exec_in(&sess, &js, "[kept, spins > 0]", json!({}));
    assert_eq!(plain(ok(&v)), "[ 'here', true ]");
}

#[test]
fn javascript_timeout_loses_that_contexts_state_only() {
    let s = TestServer::shared();
    let sess = s.session();
    assert_eq!(sess.ok("x = 42\nprint(x)"), "42\n");
    let js = new_context(&sess, "javascript");
    ok(&exec_in(&sess, &js, "let before = 1", json!({})));
    // A busy loop resumed by an await cannot be broken from JavaScript: the server's grace
    // period ends the kernel.
    let v = exec_in(
        &sess,
        &js,
        "await null\nwhile (true) {}",
        json!({ "timeout_s": 1 }),
    );
    assert_eq!(v["status"], "timeout", "{v:#}");
    assert_eq!(v["state_lost"], true, "{v:#}");
    let v = exec_in(&sess, &js, "typeof before", json!({}));
    assert_eq!(plain(ok(&v)), "'undefined'", "a fresh kernel");
    assert_eq!(
        sess.ok("print(x)"),
        "42\n",
        "the Python context kept its state"
    );
    // A cell that only waits is interrupted within the time limit, state kept.
    ok(&exec_in(&sess, &js, "let again = 2", json!({})));
    let v = exec_in(
        &sess,
        &js,
        "await new Promise(() => {})",
        json!({ "timeout_s": 1 }),
    );
    assert_eq!(v["status"], "timeout", "{v:#}");
    assert_eq!(v["state_lost"], false, "{v:#}");
    assert_eq!(plain(ok(&exec_in(&sess, &js, "again", json!({})))), "2");
}

#[test]
fn javascript_out_of_memory_is_reported_and_python_keeps_its_state() {
    let s = TestServer::shared();
    let sess = s.session_with(json!({ "limits": { "memory_mb": 256 } }));
    assert_eq!(sess.ok("kept = [1, 2, 3]\nprint(sum(kept))"), "6\n");
    let js = new_context(&sess, "javascript");
    let v = exec_in(
        &sess,
        &js,
        "const hoard = []\nwhile (true) hoard.push(new Array(1 << 20).fill(hoard.length))",
        json!({ "timeout_s": 60 }),
    );
    assert_eq!(v["status"], "killed", "{v:#}");
    assert_eq!(v["error"]["name"], "OutOfMemory", "{v:#}");
    assert_eq!(v["state_lost"], true);
    let v = exec_in(&sess, &js, "typeof hoard", json!({}));
    assert_eq!(plain(ok(&v)), "'undefined'");
    assert_eq!(
        sess.ok("print(sum(kept))"),
        "6\n",
        "the Python context kept its state"
    );
}

#[test]
fn packages_of_a_javascript_session_need_a_python_context() {
    let s = TestServer::shared();
    let sess = s.session_with(json!({ "language": "javascript" }));
    let path = format!("/v1/sessions/{}/packages", sess.id);
    let r = s.get(&path);
    assert_eq!(r.status().as_u16(), 409, "packages of a JS-only session");
    let v: Value = r.json().expect("error json");
    assert_eq!(v["error"]["code"], "no_python_context", "{v}");
    let r = s.delete(&format!("{path}/numpy"));
    assert_eq!(r.status().as_u16(), 409, "removing from a JS-only session");
    // The JS context was not handed Python source: its state is intact.
    ok(&sess.exec("globalThis.kept = 41"));
    new_context(&sess, "python");
    let r = s.get(&path);
    assert_eq!(r.status().as_u16(), 200, "with a Python context");
    let v: Value = r.json().expect("packages json");
    assert_eq!(v["packages"], json!([]), "{v}");
    assert_eq!(plain(ok(&sess.exec("kept + 1"))), "42");
}
