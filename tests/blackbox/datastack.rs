//! The data stack inside real sandboxes (issue 17): the pinned libraries are
//! honest in `/v1/capabilities`, the system tools run under a sandbox's limits
//! with their writable state in its own /tmp, figures come back with their
//! chart data, plotly as its JSON, and hostile documents stay contained.

use pyxis_tests::TestServer;
use serde_json::Value;

const PINS: &str = include_str!("../../runtime/python/requirements.txt");

fn pins() -> Vec<(String, String)> {
    PINS.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.starts_with('#') {
                return None;
            }
            let (name, version) = line.split_once("==")?;
            Some((name.trim().to_string(), version.trim().to_string()))
        })
        .collect()
}

fn results_with(v: &Value, mime: &str) -> Vec<Value> {
    v["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter_map(|r| r["data"].get(mime).cloned())
        .collect()
}

#[test]
fn capabilities_list_every_pinned_library_at_its_pinned_version() {
    let s = TestServer::shared();
    let caps: Value = s.get("/v1/capabilities").json().expect("json");
    let libraries = caps["libraries"].as_object().expect("libraries");
    let pins = pins();
    assert!(pins.len() > 50, "the pins: {pins:?}");
    for (name, version) in &pins {
        assert_eq!(
            libraries.get(name).and_then(Value::as_str),
            Some(version.as_str()),
            "{name} in /v1/capabilities: {libraries:?}"
        );
    }
}

#[test]
fn the_system_tools_run_inside_a_sandbox() {
    let s = TestServer::shared();
    let sess = s.session();
    let out = sess.ok(r#"import subprocess
for argv in (['tesseract', '--list-langs'], ['pdftoppm', '-v'], ['gs', '--version'],
             ['ffmpeg', '-version'], ['convert', '-version'], ['pandoc', '--version'],
             ['rsvg-convert', '--version'], ['soffice', '--version']):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    print(argv[0], r.returncode, (r.stdout + r.stderr).split('\n')[0][:60])
print(' '.join(subprocess.run(['tesseract', '--list-langs'], capture_output=True,
                              text=True).stdout.split()[1:]))
from pyzbar import pyzbar
import cv2, fitz, polars, duckdb, xgboost, lightgbm, numba, jieba
print('imports ok')
"#);
    for tool in [
        "tesseract",
        "pdftoppm",
        "gs",
        "ffmpeg",
        "convert",
        "pandoc",
        "rsvg-convert",
        "soffice",
    ] {
        assert!(out.contains(&format!("{tool} 0 ")), "{tool} failed:\n{out}");
    }
    assert!(out.contains("chi_sim") && out.contains("eng"), "{out}");
    assert!(out.contains("imports ok"), "{out}");
}

#[test]
fn ocr_and_office_conversion_work_in_a_sandbox_and_leave_no_state_behind() {
    let s = TestServer::shared();
    let sess = s.session();
    let out = sess.ok(r#"import os
from PIL import Image, ImageDraw, ImageFont
from pyxis_runtime import tools
font = ImageFont.truetype('/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc', 48)
img = Image.new('RGB', (700, 240), 'white')
draw = ImageDraw.Draw(img)
draw.text((40, 40), '我们在北京学习中文', font=font, fill='black')
draw.text((40, 140), 'Hello Pyxis sandbox', font=font, fill='black')
img.save('scan.png')
text = tools.ocr_extract('scan.png', lang='chi_sim+eng')['text']
print('OCR', ''.join(text.split()))
import docx, pdfplumber
d = docx.Document()
d.add_paragraph('Converted inside a sandbox 沙箱')
d.save('a.docx')
(pdf,) = tools.convert('a.docx', 'pdf')
print('PDF', pdfplumber.open(pdf).pages[0].extract_text())
print('WS', sorted(os.listdir('.')))
print('TMP', sorted(n for n in os.listdir('/tmp') if n.startswith('pyxis-lo')))
print('CACHE', os.environ['XDG_CACHE_HOME'], os.environ['MAGICK_CONFIGURE_PATH'])
"#);
    assert!(
        out.contains("OCR 我们在北京学习中文HelloPyxissandbox"),
        "{out}"
    );
    assert!(out.contains("Converted inside a sandbox 沙箱"), "{out}");
    assert!(
        out.contains("WS ['a.docx', 'a.pdf', 'scan.png']"),
        "LibreOffice's profile or a cache landed in the workspace:\n{out}"
    );
    assert!(
        out.contains("TMP []"),
        "the profile was not removed:\n{out}"
    );
    assert!(out.contains("CACHE /tmp/.cache "), "{out}");
}

#[test]
fn imagemagick_is_bounded_by_our_policy_in_a_sandbox() {
    let s = TestServer::shared();
    let sess = s.session();
    let out = sess.ok(r#"import subprocess
r = subprocess.run(['convert', '-list', 'resource'], capture_output=True, text=True)
print(r.stdout)
r = subprocess.run(['convert', '-size', '15000x15000', 'xc:white', '/tmp/big.png'],
                   capture_output=True, text=True, timeout=120)
print('BIG', r.returncode, 'cache resources exhausted' in r.stderr or
      'exceeds limit' in r.stderr, r.stderr[:200])
"#);
    assert!(out.contains("Area: 64MP"), "{out}");
    assert!(out.contains("Disk: 192MiB"), "{out}");
    assert!(out.contains("BIG 1 True"), "{out}");
    // The session is still alive after the refused conversion.
    assert_eq!(sess.ok("print(1 + 1)"), "2\n");
}

#[test]
fn an_svg_cannot_read_a_host_file_through_entities_or_xinclude() {
    let secret = tempfile::Builder::new()
        .prefix("pyxis-host-secret-")
        .tempfile_in("/root")
        .or_else(|_| tempfile::NamedTempFile::new())
        .expect("host file");
    std::fs::write(secret.path(), "host-secret-marker").expect("write");
    let path = secret.path().display().to_string();
    let s = TestServer::shared();
    let sess = s.session();
    let out = sess.ok(&format!(
        r#"import os, subprocess
from pyxis_runtime import tools
open('e.svg', 'w').write('<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY x SYSTEM "file://{path}">]>'
    '<svg xmlns="http://www.w3.org/2000/svg"><text y="20">&x;</text></svg>')
open('i.svg', 'w').write('<svg xmlns="http://www.w3.org/2000/svg" xmlns:xi="http://www.w3.org/2001/XInclude">'
    '<text y="20"><xi:include href="{path}" parse="text"/></text></svg>')
for name in ('e.svg', 'i.svg'):
    try:
        tools.convert(name, 'png')
        print(name, 'converted')
    except tools.ToolError as err:
        print(name, err.code, err.status)
# Past our check, straight to librsvg: the host file is not there to read.
r = subprocess.run(['rsvg-convert', '-o', 'raw.png', 'i.svg'], capture_output=True, text=True)
print('RSVG', r.returncode, r.stderr[:200])
print('VISIBLE', os.path.exists('{path}'))
"#
    ));
    assert!(out.contains("e.svg unsafe_xml 422"), "{out}");
    assert!(out.contains("i.svg unsafe_xml 422"), "{out}");
    assert!(out.contains("VISIBLE False"), "{out}");
    assert!(!out.contains("host-secret-marker"), "{out}");
}

#[test]
fn a_matplotlib_figure_comes_back_with_its_chart_data() {
    let s = TestServer::shared();
    let sess = s.session();
    let v = sess.exec(
        "import matplotlib.pyplot as plt\n\
         fig, ax = plt.subplots()\n\
         ax.plot([1, 2, 3], [2, 4, 8], label='doubling')\n\
         ax.set_title('增长')\n\
         ax.set_xlabel('day')\n\
         plt.show()",
    );
    assert_eq!(v["status"], "ok", "{v:#}");
    assert_eq!(results_with(&v, "image/png").len(), 1, "{v:#}");
    let charts = results_with(&v, "application/vnd.pyxis.chart+json");
    assert_eq!(charts.len(), 1, "{v:#}");
    let chart = &charts[0];
    assert_eq!(chart["type"], "line");
    assert_eq!(chart["title"], "增长");
    assert_eq!(chart["x_label"], "day");
    assert_eq!(chart["elements"][0]["label"], "doubling");
    assert_eq!(
        chart["elements"][0]["points"],
        serde_json::json!([[1, 2], [2, 4], [3, 8]])
    );
}

#[test]
fn a_plotly_figure_comes_back_as_its_json_and_html() {
    let s = TestServer::shared();
    let sess = s.session();
    let v = sess.exec(
        "import plotly.express as px\n\
         px.bar(x=['a', 'b'], y=[3, 5], title='plotly in pyxis')",
    );
    assert_eq!(v["status"], "ok", "{v:#}");
    let specs = results_with(&v, "application/vnd.plotly.v1+json");
    assert_eq!(specs.len(), 1, "{v:#}");
    assert_eq!(specs[0]["data"][0]["type"], "bar");
    assert_eq!(
        specs[0]["layout"]["title"]["text"], "plotly in pyxis",
        "{:#}",
        specs[0]["layout"]
    );
    let html = results_with(&v, "text/html");
    assert!(html[0].as_str().is_some_and(|h| h.contains("plotly")));
}
