//! What a cell returns: state, output, rich results, errors, limits.

use std::time::{Duration, Instant};

use base64::Engine;
use pyxis_tests::TestServer;
use serde_json::{json, Value};

fn png_of(v: &Value) -> Vec<u8> {
    let results = v["results"].as_array().expect("results");
    let b64 = results
        .iter()
        .find_map(|r| r["data"]["image/png"].as_str())
        .unwrap_or_else(|| panic!("no image/png in {v:#}"));
    let png = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    png
}

#[test]
fn state_is_kept_across_cells() {
    let s = TestServer::shared();
    let sess = s.session();
    sess.ok("import math\nx = 20\ndef f(y):\n    return x + y");
    let v = sess.exec("f(22)");
    assert_eq!(v["status"], "ok");
    assert_eq!(v["results"][0]["kind"], "execute_result");
    assert_eq!(v["results"][0]["data"]["text/plain"], "42");
    assert_eq!(v["execution_count"], 2);
    assert_eq!(sess.ok("print(math.pi > 3, x)"), "True 20\n");
}

#[test]
fn stdout_stderr_and_fd_level_output_are_captured() {
    let s = TestServer::shared();
    let sess = s.session();
    let v = sess.exec(
        "import sys, os, subprocess\nprint('py-out')\nprint('py-err', file=sys.stderr)\n\
         os.system('echo from-shell')\nsubprocess.run(['sh', '-c', 'echo sub-err 1>&2'])\n",
    );
    assert_eq!(v["status"], "ok", "{v:#}");
    let out = v["stdout"].as_str().unwrap();
    let err = v["stderr"].as_str().unwrap();
    assert!(
        out.contains("py-out") && out.contains("from-shell"),
        "{out}"
    );
    assert!(err.contains("py-err") && err.contains("sub-err"), "{err}");
    let v = sess.exec("!echo bang");
    assert!(v["stdout"].as_str().unwrap().contains("bang"), "{v:#}");
}

#[test]
fn an_error_returns_name_value_and_traceback() {
    let s = TestServer::shared();
    let sess = s.session();
    let v = sess.exec("def g():\n    return 1 / 0\ng()");
    assert_eq!(v["status"], "error");
    assert_eq!(v["error"]["name"], "ZeroDivisionError");
    assert_eq!(v["error"]["value"], "division by zero");
    let tb = v["error"]["traceback"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        tb.contains("ZeroDivisionError") && tb.contains("g()"),
        "{tb}"
    );
    assert!(!tb.contains('\u{1b}'), "no ANSI escapes in {tb:?}");
    let v = sess.exec("def broken(:\n  pass");
    assert_eq!(v["error"]["name"], "SyntaxError");
    // The session goes on.
    assert_eq!(sess.ok("print('fine')"), "fine\n");
}

#[test]
fn plots_come_back_as_png_with_and_without_show() {
    let s = TestServer::shared();
    let sess = s.session();
    let v =
        sess.exec("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.show()");
    assert_eq!(v["status"], "ok", "{v:#}");
    let png = png_of(&v);
    assert!(png.len() > 2000, "a real plot, not an empty image");
    assert_eq!(
        v["results"].as_array().unwrap().len(),
        1,
        "one figure, shown once"
    );
    // A figure left open at the end of a cell is returned too.
    let v = sess.exec("fig, ax = plt.subplots()\nax.bar(['a', 'b'], [3, 5])");
    png_of(&v);
    // ... and only once: the next cell has no figure.
    let v = sess.exec("1 + 1");
    assert!(v["results"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["data"]["image/png"].is_null()));
}

#[test]
fn a_dataframe_renders_as_html_and_text() {
    let s = TestServer::shared();
    let sess = s.session();
    let v = sess.exec(
        "import pandas as pd\ndf = pd.DataFrame({'city': ['Oslo', 'Lima'], 'n': [1, 2]})\ndf",
    );
    assert_eq!(v["status"], "ok", "{v:#}");
    let data = &v["results"][0]["data"];
    let html = data["text/html"].as_str().expect("text/html");
    assert!(html.contains("<table") && html.contains("Oslo"), "{html}");
    assert!(data["text/plain"].as_str().unwrap().contains("Lima"));
    let v = sess.exec("from IPython.display import display, HTML\ndisplay(HTML('<b>hi</b>'))\ndisplay(df.head(1))");
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "{v:#}");
    assert_eq!(results[0]["kind"], "display_data");
    assert_eq!(results[0]["data"]["text/html"], "<b>hi</b>");
}

#[test]
fn a_chinese_title_renders_its_glyphs() {
    let s = TestServer::shared();
    let sess = s.session();
    let v = sess.exec(
        "import warnings, matplotlib.pyplot as plt\nwarnings.simplefilter('always')\n\
         fig, ax = plt.subplots()\nax.set_title('销售额 你好')\nax.plot([1, 2], [3, 4])\nplt.show()",
    );
    assert_eq!(v["status"], "ok", "{v:#}");
    let stderr = v["stderr"].as_str().unwrap();
    assert!(!stderr.contains("missing from"), "glyphs missing: {stderr}");
    let cjk = png_of(&v);
    // Compare with the same plot whose title is boxes: the images must differ.
    let v = sess
        .exec("fig, ax = plt.subplots()\nax.set_title('')\nax.plot([1, 2], [3, 4])\nplt.show()");
    let plain = png_of(&v);
    assert_ne!(cjk, plain);
    let font = sess.ok(
        "from matplotlib import font_manager as fm\n\
         print(any('wqy' in f.fname.lower() or 'cjk' in f.fname.lower() for f in fm.fontManager.ttflist))",
    );
    assert!(
        font.trim_end().ends_with("True"),
        "CJK font known to matplotlib: {font}"
    );
}

#[test]
fn a_timeout_interrupts_the_cell_and_the_session_goes_on() {
    let s = TestServer::shared();
    let sess = s.session();
    sess.ok("kept = 'yes'");
    let v = sess.exec_with(json!({"code": "import time\ntime.sleep(60)", "timeout_s": 1}));
    assert_eq!(v["status"], "timeout", "{v:#}");
    assert_eq!(v["state_lost"], false, "SIGINT was enough: state kept");
    assert_eq!(sess.ok("print(kept)"), "yes\n");
}

#[test]
fn a_cell_that_ignores_interrupts_is_killed_and_state_is_lost() {
    let s = TestServer::shared();
    let sess = s.session();
    sess.ok("kept = 1\nopen('/workspace/survives.txt', 'w').write('file')");
    let started = Instant::now();
    let v = sess.exec_with(json!({
        "code": "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass",
        "timeout_s": 1
    }));
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(v["status"], "timeout", "{v:#}");
    assert_eq!(v["state_lost"], true);
    let v = sess.exec("print('kept' in globals())\nprint(open('/workspace/survives.txt').read())");
    assert_eq!(v["status"], "ok", "{v:#}");
    assert_eq!(
        v["stdout"], "False\nfile\n",
        "fresh interpreter, same workspace"
    );
}

#[test]
fn interrupt_stops_a_running_cell() {
    let s = TestServer::shared();
    let sess = s.session();
    sess.ok("before = 1");
    std::thread::scope(|scope| {
        let running = scope.spawn(|| sess.exec("import time\ntime.sleep(60)"));
        std::thread::sleep(Duration::from_millis(800));
        let r = s.post(&format!("/v1/sessions/{}/interrupt", sess.id), &json!({}));
        assert_eq!(r.status(), 200);
        let v: Value = r.json().unwrap();
        assert_eq!(v["interrupted"], true);
        let v = running.join().unwrap();
        assert_eq!(v["status"], "error", "{v:#}");
        assert_eq!(v["error"]["name"], "KeyboardInterrupt");
        assert_eq!(v["state_lost"], false);
    });
    assert_eq!(sess.ok("print(before)"), "1\n");
    let v: Value = s
        .post(&format!("/v1/sessions/{}/interrupt", sess.id), &json!({}))
        .json()
        .unwrap();
    assert_eq!(v["interrupted"], false, "nothing was running");
}

#[test]
fn restart_gives_a_fresh_interpreter_with_the_same_files() {
    let s = TestServer::shared();
    let sess = s.session();
    sess.ok("x = 1\nopen('keep.txt', 'w').write('k')");
    let r = s.post(&format!("/v1/sessions/{}/restart", sess.id), &json!({}));
    assert_eq!(r.status(), 200);
    assert_eq!(
        sess.ok("print('x' in globals(), open('keep.txt').read())"),
        "False k\n"
    );
}

#[test]
fn a_memory_hog_is_reported_as_out_of_memory_and_others_go_on() {
    let s = TestServer::shared();
    let neighbour = s.session();
    neighbour.ok("total = 0");
    let hog = s.session_with(json!({"limits": {"memory_mb": 256}}));
    hog.ok("kept = 1");
    std::thread::scope(|scope| {
        let steady = scope.spawn(|| {
            for i in 1..=20 {
                let out = neighbour.ok("total += 1\nprint(total)");
                assert_eq!(out, format!("{i}\n"));
            }
        });
        let v = hog.exec(
            "import numpy as np\nblocks = []\nwhile True:\n    blocks.append(np.ones(10**7))",
        );
        assert_eq!(v["status"], "killed", "{v:#}");
        assert_eq!(v["error"]["name"], "OutOfMemory");
        assert_eq!(v["state_lost"], true);
        steady.join().unwrap();
    });
    assert_eq!(
        s.anon(reqwest::Method::GET, "/healthz")
            .send()
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        hog.ok("print('alive')"),
        "alive\n",
        "the hog's session restarted"
    );
}

#[test]
fn output_beyond_the_cap_is_dropped_and_flagged() {
    let s = TestServer::start(&[
        ("PYXIS_MAX_OUTPUT_BYTES", "100000"),
        ("PYXIS_POOL_MIN_IDLE", "0"),
    ]);
    let sess = s.session();
    let v = sess.exec("for i in range(200000):\n    print('line', i)\nprint('end')");
    assert_eq!(v["status"], "ok");
    assert_eq!(v["truncated"], true);
    assert!(v["stdout"].as_str().unwrap().len() <= 100_000);
    let v = sess.exec("print('small')");
    assert_eq!(v["truncated"], false);
    assert_eq!(v["stdout"], "small\n");
}
