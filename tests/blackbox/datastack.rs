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

/// The document-tools door: every route on inputs a session renders, and on hostile files.
#[test]
fn the_document_tools_door_answers_every_route_and_refuses_hostile_files() {
    let s = TestServer::shared();
    let sess = s.session();
    sess.ok(r#"import struct, zipfile, zlib
from PIL import Image, ImageDraw, ImageFont
import barcode, docx, qrcode
from barcode.writer import ImageWriter
font = ImageFont.truetype('/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc', 48)
img = Image.new('RGB', (900, 240), 'white')
d = ImageDraw.Draw(img)
d.text((40, 40), '我们在北京学习中文', font=font, fill='black')
d.text((40, 140), 'Hello door of Pyxis', font=font, fill='black')
img.save('scan.png')
qr = qrcode.make('pyxis-qr-payload').convert('RGB')
code = barcode.get('code128', 'PYXIS-0042', writer=ImageWriter()).render()
label = Image.new('RGB', (qr.width + code.width + 60, max(qr.height, code.height) + 40), 'white')
label.paste(qr, (20, 20)); label.paste(code, (qr.width + 40, 20)); label.save('label.png')
doc = docx.Document(); doc.add_paragraph('Door conversion 转换'); doc.save('report.docx')
open('sales.csv', 'w').write('region,amount\nnorth,10\nsouth,20\nnorth,5\n')
Image.open('scan.png').save('ok.pdf', 'PDF')
data = open('ok.pdf', 'rb').read(); open('cut.pdf', 'wb').write(data[: len(data) // 3])
with zipfile.ZipFile('bomb.docx', 'w', zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
    zf.writestr('[Content_Types].xml', '<Types/>')
    with zf.open('word/document.xml', 'w', force_zip64=True) as part:
        for _ in range(512):
            part.write(b'\0' * (1 << 20))
def chunk(kind, body):
    return struct.pack('>I', len(body)) + kind + body + struct.pack('>I', zlib.crc32(kind + body))
side = 30000
packer = zlib.compressobj(1)
rows = (b'\0' + b'\xff' * side) * 1000
idat = b''.join(packer.compress(rows) for _ in range(side // 1000)) + packer.flush()
open('huge.png', 'wb').write(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', side, side, 8, 0, 0, 0, 0))
                             + chunk(b'IDAT', idat) + chunk(b'IEND', b''))
open('xxe.svg', 'w').write('<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                           '<svg xmlns="http://www.w3.org/2000/svg"><text>&x;</text></svg>')
"#);
    let file = |name: &str| -> Vec<u8> {
        let r = sess.get_file(name);
        assert_eq!(r.status(), 200, "{name}");
        r.bytes().expect("bytes").to_vec()
    };
    let post = |route: &str, name: &str, fields: &[(&str, &str)]| {
        let mut form = reqwest::blocking::multipart::Form::new().part(
            "file",
            reqwest::blocking::multipart::Part::bytes(file(name)).file_name(name.to_string()),
        );
        for (k, v) in fields {
            form = form.text(k.to_string(), v.to_string());
        }
        s.req(reqwest::Method::POST, route)
            .multipart(form)
            .send()
            .expect("door request")
    };
    let json_of = |r: reqwest::blocking::Response| -> (u16, Value) {
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    };

    let (status, v) = json_of(post(
        "/api/ocr/extract",
        "scan.png",
        &[("lang", "chi_sim+eng")],
    ));
    assert_eq!(status, 200, "{v}");
    let text: String = v["text"]
        .as_str()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert!(
        text.contains("我们在北京学习中文") && text.contains("HellodoorofPyxis"),
        "{v}"
    );
    assert!(v["pages"][0]["boxes"]
        .as_array()
        .is_some_and(|b| !b.is_empty()));

    let (status, v) = json_of(post("/api/ocr/barcode", "label.png", &[]));
    assert_eq!(status, 200, "{v}");
    let found: Vec<(String, String)> = v["barcodes"]
        .as_array()
        .expect("barcodes")
        .iter()
        .map(|b| {
            (
                b["type"].as_str().unwrap_or_default().into(),
                b["data"].as_str().unwrap_or_default().into(),
            )
        })
        .collect();
    assert!(
        found.contains(&("QRCODE".into(), "pyxis-qr-payload".into())),
        "{v}"
    );
    assert!(
        found.contains(&("CODE128".into(), "PYXIS-0042".into())),
        "{v}"
    );

    let r = post("/api/file/convert", "report.docx", &[("to", "pdf")]);
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/pdf");
    let pdf = r.bytes().expect("pdf");
    assert!(pdf.starts_with(b"%PDF-"));

    let (status, v) = json_of(post("/api/data_analysis/analyze", "sales.csv", &[]));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["shape"], serde_json::json!([3, 2]));
    assert_eq!(v["dtypes"]["amount"], "int64");

    let (status, v) = json_of(post(
        "/api/data_analysis/transform",
        "sales.csv",
        &[(
            "expression",
            "df.groupby('region', as_index=False)['amount'].sum()",
        )],
    ));
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["result"]["data"],
        serde_json::json!([["north", 15], ["south", 20]])
    );

    // Hostile and bad input: a clear 4xx each, the server answering all along.
    for (route, name, fields, want, code) in [
        ("/api/ocr/extract", "cut.pdf", vec![], 422, "unreadable_pdf"),
        (
            "/api/file/convert",
            "cut.pdf",
            vec![("to", "png")],
            422,
            "unreadable_pdf",
        ),
        (
            "/api/file/convert",
            "bomb.docx",
            vec![("to", "pdf")],
            413,
            "document_too_large",
        ),
        (
            "/api/ocr/extract",
            "huge.png",
            vec![],
            413,
            "image_too_large",
        ),
        (
            "/api/ocr/barcode",
            "huge.png",
            vec![],
            413,
            "image_too_large",
        ),
        (
            "/api/file/convert",
            "xxe.svg",
            vec![("to", "png")],
            422,
            "unsafe_xml",
        ),
        (
            "/api/ocr/extract",
            "scan.png",
            vec![("lang", "../../etc")],
            400,
            "bad_lang",
        ),
        (
            "/api/file/convert",
            "sales.csv",
            vec![("to", "mp3")],
            415,
            "unsupported_conversion",
        ),
        (
            "/api/data_analysis/transform",
            "sales.csv",
            vec![("expression", "df[")],
            400,
            "bad_expression",
        ),
    ] {
        let (status, v) = json_of(post(route, name, &fields));
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (want, Some(code)),
            "{route} {name}: {v}"
        );
    }
    let r = s
        .req(reqwest::Method::POST, "/api/ocr/extract")
        .multipart(reqwest::blocking::multipart::Form::new().text("lang", "eng"))
        .send()
        .expect("request");
    assert_eq!(
        json_of(r).1["error"]["code"],
        "invalid_request",
        "no file part"
    );
    let r = s.post("/api/ocr/extract", &serde_json::json!({"lang": "eng"}));
    let (status, v) = json_of(r);
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (422, Some("invalid_request"))
    );
}
