// The playground in a real browser (Debian's Chromium, headless) against a
// real `pyxis serve`: what issue 20 says the page must show. The tests run
// in order and share one server, one browser page and its sessions.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { ARTEFACTS, ROOT, launchBrowser, startServer } from "./harness.mjs";

const SCREENSHOT = join(ARTEFACTS, "playground-screenshot.png");
const SCREENSHOT_PHONE = join(ARTEFACTS, "playground-phone.png");
const NB_PYTHON = process.env.PYXIS_TEST_NBPY;
// The page from elsewhere (e.g. `npm run dev` proxying to this server's API),
// for working on the page; by default the one the server serves.
const PAGE_URL = process.env.PYXIS_TEST_PAGE_URL;

let server;
let context;
let page;
const requests = [];
const pageErrors = [];

/** The cells of the session shown. */
const cells = () => page.locator(".cells:not([hidden]) .cell");

/** Type `code` into the last cell and run it with Shift+Enter; returns its index. */
async function run(code) {
  const n = await cells().count();
  let index = n - 1;
  const last = cells().nth(index);
  // An empty editor shows its placeholder; a cell that never ran has no state.
  const empty = (await last.locator(".cm-placeholder").count()) > 0 && !(await last.getAttribute("data-state"));
  if (!empty) {
    await page.locator(".add-cell").click();
    index = n;
  }
  const cell = cells().nth(index);
  await cell.locator(".cm-content").click();
  await page.keyboard.press("ControlOrMeta+a");
  await page.keyboard.insertText(code);
  await page.keyboard.press("Shift+Enter");
  return index;
}

/** Wait until cell `index` has finished; returns its state (ok, error, …). */
async function done(index, timeout = 60_000) {
  await page.waitForFunction(
    (i) => {
      const c = document.querySelectorAll(".cells:not([hidden]) .cell")[i];
      return c && c.dataset.state && c.dataset.state !== "running";
    },
    index,
    { timeout },
  );
  return cells().nth(index).getAttribute("data-state");
}

async function output(index) {
  return cells().nth(index).locator(".outputs").innerText();
}

async function sessionCount() {
  const r = await server.api("/v1/sessions");
  assert.equal(r.status, 200);
  return (await r.json()).sessions.length;
}

describe("playground", { timeout: 600_000 }, () => {
  before(async () => {
    server = await startServer();
    context = await launchBrowser();
    page = await context.newPage();
    page.on("request", (r) => requests.push({ url: r.url(), method: r.method(), frame: r.frame()?.url() }));
    page.on("pageerror", (e) => pageErrors.push(String(e)));
  });

  after(async () => {
    await context?.close();
    await server?.stop();
  });

  test("the page loads without a token, with its security headers", async () => {
    const res = await fetch(`${server.base}/`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get("content-type"), /^text\/html/);
    const csp = res.headers.get("content-security-policy");
    assert.ok(csp, "CSP header");
    const scriptSrc = csp.split(";").map((d) => d.trim()).find((d) => d.startsWith("script-src"));
    assert.equal(scriptSrc, "script-src 'self'");
    assert.match(csp, /connect-src 'self'/);
    assert.match(csp, /frame-ancestors 'none'/);
    assert.equal(res.headers.get("x-content-type-options"), "nosniff");
    assert.equal(res.headers.get("referrer-policy"), "no-referrer");
    const html = await res.text();
    assert.doesNotMatch(html, /<script>(?!<\/script>)/, "no inline script");
    const asset = html.match(/src="(\/assets\/[^"]+\.js)"/)?.[1];
    assert.ok(asset, "a script asset");
    const js = await fetch(`${server.base}${asset}`);
    assert.equal(js.status, 200);
    assert.match(js.headers.get("content-type"), /javascript/);
    assert.equal(js.headers.get("x-content-type-options"), "nosniff");
    // The frame for cell HTML is sandboxed by its own header too, so even
    // opened on its own it has an opaque origin.
    const frame = await fetch(`${server.base}/frame.html`);
    assert.equal(frame.status, 200);
    const fcsp = frame.headers.get("content-security-policy");
    assert.match(fcsp, /sandbox allow-scripts(;|$)/);
    assert.match(fcsp, /connect-src 'none'/);
    assert.doesNotMatch(fcsp, /allow-same-origin/);
    // The API itself still needs the token.
    assert.equal((await fetch(`${server.base}/v1/sessions`)).status, 401);
    const missing = await fetch(`${server.base}/assets/nothing-here.js`);
    assert.equal(missing.status, 404);
  });

  test("without the right token the page says 401", async () => {
    await page.goto(PAGE_URL ?? `${server.base}/`);
    const banner = page.locator(".banner");
    await banner.waitFor({ state: "visible" });
    assert.match(await banner.innerText(), /401/);
    assert.match(await banner.innerText(), /needs a token/);
    await page.fill('input[name="token"]', "not-the-token");
    await page.click("text=Save token");
    await page.waitForFunction(() => /refused this token/.test(document.querySelector(".banner")?.textContent ?? ""));
    assert.ok(await banner.isVisible());
    assert.equal(await page.locator(".server.bad").count(), 1);
  });

  test("the token is kept in storage and a session is created", async () => {
    await page.fill('input[name="token"]', server.token);
    await page.click("text=Save token");
    await page.locator(".server.ok").waitFor();
    assert.ok(await page.locator(".banner").isHidden());
    assert.equal(await page.evaluate(() => localStorage.getItem("pyxis.token")), server.token);
    // The language picker is built from /v1/capabilities.
    const caps = await (await server.api("/v1/capabilities")).json();
    const options = await page.locator("select[aria-label=language] option").allInnerTexts();
    assert.deepEqual(options, caps.languages);
    // A reload keeps the token.
    await page.reload();
    await page.locator(".server.ok").waitFor();
    await page.click("text=New session");
    await page.locator(".session.selected").waitFor();
    assert.equal(await sessionCount(), 1);
    const line = await page.locator(".session.selected").innerText();
    assert.match(line, /python/);
    assert.match(line, /idle/);
    assert.match(line, /mem .+ \/ 1(\.0)? GiB/);
    await cells().first().waitFor();
  });

  test("print('hi') shows hi", async () => {
    const i = await run("print('hi')");
    assert.equal(await done(i), "ok");
    assert.equal((await output(i)).trim(), "hi");
    assert.equal(await cells().nth(i).locator(".prompt").innerText(), "[1]");
    assert.match(await cells().nth(i).locator(".status").innerText(), /ok · [\d.]+ (ms|s)/);
    // Shift+Enter moved on to a fresh cell.
    assert.equal(await cells().count(), i + 2);
  });

  test("output streams in: the first line shows before the last is printed", async () => {
    const i = await run("import time\nfor n in range(3):\n    print(f'line {n}', flush=True)\n    time.sleep(1)");
    await page.waitForFunction(
      (k) => document.querySelectorAll(".cells:not([hidden]) .cell")[k]?.querySelector(".outputs")?.textContent?.includes("line 0"),
      i,
      { timeout: 10_000 },
    );
    const early = await output(i);
    assert.doesNotMatch(early, /line 2/, "line 2 is printed two seconds after line 0");
    assert.equal(await cells().nth(i).getAttribute("data-state"), "running");
    assert.equal(await page.locator("button", { hasText: "Interrupt" }).isEnabled(), true);
    assert.equal(await done(i), "ok");
    assert.equal((await output(i)).trim(), "line 0\nline 1\nline 2");
  });

  test("a matplotlib plot shows as an image (screenshot saved)", async () => {
    const i = await run(
      "import numpy as np\nimport matplotlib.pyplot as plt\nx = np.linspace(0, 2 * np.pi, 200)\nplt.figure(figsize=(6, 3))\nplt.plot(x, np.sin(x), label='sin')\nplt.plot(x, np.cos(x), label='cos')\nplt.legend()\nplt.title('Pyxis')",
    );
    assert.equal(await done(i), "ok");
    const img = cells().nth(i).locator("img.image");
    await img.waitFor();
    await page.waitForFunction((k) => document.querySelectorAll(".cells:not([hidden]) .cell")[k].querySelector("img.image").complete, i);
    const size = await img.evaluate((e) => [e.naturalWidth, e.naturalHeight]);
    assert.ok(size[0] > 0 && size[1] > 0, `natural size ${size}`);
    await page.screenshot({ path: SCREENSHOT, fullPage: true });
  });

  test("a DataFrame shows as a table in a sandboxed frame", async () => {
    const i = await run("import pandas as pd\npd.DataFrame({'city': ['Oslo', 'Lima', 'Pune'], 'temp': [4.5, 19.0, 31.2]})");
    assert.equal(await done(i), "ok");
    const frameEl = cells().nth(i).locator("iframe.frame-html");
    await frameEl.waitFor();
    assert.equal(await frameEl.getAttribute("sandbox"), "allow-scripts");
    const table = frameEl.contentFrame().locator("table");
    await table.waitFor();
    assert.equal(await table.locator("tbody tr").count(), 3);
    assert.match(await table.innerText(), /Lima/);
    assert.match(await cells().nth(i).locator(".out-prompt").innerText(), /Out\[\d+\]/);
    // The frame grew to its table's height.
    await page.waitForFunction((k) => {
      const f = document.querySelectorAll(".cells:not([hidden]) .cell")[k].querySelector("iframe");
      return f && f.getBoundingClientRect().height > 60;
    }, i);
  });

  test("1/0 shows the traceback", async () => {
    const i = await run("1/0");
    assert.equal(await done(i), "error");
    const tb = cells().nth(i).locator("pre.traceback");
    await tb.waitFor();
    const text = await tb.innerText();
    assert.match(text, /ZeroDivisionError/);
    assert.match(text, /division by zero/);
    // ANSI colour codes in a traceback become coloured text.
    const j = await run("raise ValueError('\\x1b[31mred alert\\x1b[0m and plain')");
    assert.equal(await done(j), "error");
    const coloured = cells().nth(j).locator("pre.traceback span.ansi-red-fg");
    await coloured.first().waitFor();
    assert.equal(await coloured.first().innerText(), "red alert");
    assert.doesNotMatch(await output(j), /\x1b/);
    assert.match(await output(j), /\nValueError: red alert and plain$/);
  });

  test("interrupt stops while True: pass", async () => {
    const i = await run("while True:\n    pass");
    await page.waitForFunction((k) => document.querySelectorAll(".cells:not([hidden]) .cell")[k]?.dataset.state === "running", i);
    await page.waitForTimeout(500);
    assert.match(await page.locator(".session.selected").innerText(), /busy/);
    await page.click("button:has-text('Interrupt')");
    assert.equal(await done(i, 30_000), "error");
    assert.match(await output(i), /KeyboardInterrupt/);
    // The session is still alive and keeps its state.
    const j = await run("print('after', 6 * 7)");
    assert.equal(await done(j), "ok");
    assert.equal((await output(j)).trim(), "after 42");
  });

  test("a cell that ignores the interrupt is killed: the page says the state was lost", async () => {
    const i = await run("import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nkept = 1\nwhile True:\n    pass");
    await page.waitForFunction((k) => document.querySelectorAll(".cells:not([hidden]) .cell")[k]?.dataset.state === "running", i);
    await page.waitForTimeout(500);
    await page.click("button:has-text('Interrupt')");
    const state = await done(i, 60_000);
    assert.notEqual(state, "ok");
    assert.match(await cells().nth(i).locator(".status").innerText(), /state lost/);
    const j = await run("print('kept' in dir())");
    assert.equal(await done(j), "ok");
    assert.equal((await output(j)).trim(), "False");
  });

  test("restart gives a fresh interpreter", async () => {
    const i = await run("before_restart = 1");
    assert.equal(await done(i), "ok");
    await page.click("button:has-text('Restart')");
    await page.locator(".banner", { hasText: "Restarted" }).waitFor();
    const j = await run("before_restart");
    assert.equal(await done(j), "error");
    assert.match(await output(j), /NameError/);
  });

  test("upload CSV files (chooser and drag and drop) and read one from a cell", async () => {
    await page.setInputFiles(".drop input[type=file]", [
      { name: "data.csv", mimeType: "text/csv", buffer: Buffer.from("x,y\n1,2\n3,4\n5,6\n") },
      { name: "notes.txt", mimeType: "text/plain", buffer: Buffer.from("two at once\n") },
    ]);
    await page.locator('.file[data-path="data.csv"]').waitFor();
    await page.locator('.file[data-path="notes.txt"]').waitFor();
    // Drag and drop: a drop event carrying a file on the files panel.
    await page.evaluate(() => {
      const dt = new DataTransfer();
      dt.items.add(new File(["a,b\n7,8\n"], "dropped.csv", { type: "text/csv" }));
      const panel = document.querySelector(".files");
      panel.dispatchEvent(new DragEvent("dragover", { dataTransfer: dt, bubbles: true, cancelable: true }));
      panel.dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
    });
    await page.locator('.file[data-path="dropped.csv"]').waitFor();
    assert.match(await page.locator('.file[data-path="data.csv"] .size').innerText(), /^16 B$/);
    assert.match(await page.locator(".files .quota").innerText(), /of \d+/);
    const i = await run("import pandas as pd\ndf = pd.read_csv('data.csv')\nprint(df['x'].sum(), len(df), open('dropped.csv').read().split()[1])");
    assert.equal(await done(i), "ok");
    assert.equal((await output(i)).trim(), "9 3 7,8");
  });

  test("download a file the cell wrote; delete a file", async () => {
    const i = await run("import os\nos.makedirs('out', exist_ok=True)\nwith open('out/result.txt', 'w') as f:\n    f.write('answer=42\\n')");
    assert.equal(await done(i), "ok");
    await page.locator('.file[data-path="out"] button.name').click();
    await page.locator('.file[data-path="out/result.txt"]').waitFor();
    const [dl] = await Promise.all([page.waitForEvent("download"), page.click('[aria-label="download out/result.txt"]')]);
    assert.equal(dl.suggestedFilename(), "result.txt");
    assert.equal(readFileSync(await dl.path(), "utf8"), "answer=42\n");
    await page.click('[aria-label="delete out/result.txt"]');
    await page.locator('.file[data-path="out/result.txt"]').waitFor({ state: "detached" });
    assert.equal((await server.api(`/v1/sessions/${await currentId()}/files/out/result.txt`)).status, 404);
    await page.locator(".crumbs button", { hasText: "/workspace" }).click();
    await page.locator('.file[data-path="data.csv"]').waitFor();
  });

  test("a plotly figure, an SVG and JSON render", async () => {
    const i = await run(
      [
        "from IPython.display import display, SVG, JSON",
        "display({'application/vnd.plotly.v1+json': {'data': [{'type': 'bar', 'x': ['a', 'b', 'c'], 'y': [3, 1, 2]}], 'layout': {'title': {'text': 'bars'}}}, 'text/plain': 'Figure'}, raw=True)",
        "display(SVG('<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"40\" height=\"20\"><rect width=\"40\" height=\"20\" fill=\"teal\"/></svg>'))",
        "display(JSON({'answer': 42}))",
      ].join("\n"),
    );
    assert.equal(await done(i), "ok");
    const plot = cells().nth(i).locator("iframe.frame-plotly").contentFrame();
    await plot.locator("svg.main-svg").first().waitFor({ timeout: 20_000 });
    assert.ok((await plot.locator(".bars path, .point path").count()) >= 3, "three bars drawn");
    const svg = cells().nth(i).locator("img.image[alt='SVG image']");
    await svg.waitFor();
    await page.waitForFunction((k) => document.querySelectorAll(".cells:not([hidden]) .cell")[k].querySelector("img[alt='SVG image']").naturalWidth === 40, i);
    assert.match(await cells().nth(i).locator("pre.json").innerText(), /"answer": 42/);
  });

  test("hostile HTML from a cell can reach neither the token nor the API", async () => {
    const before = await sessionCount();
    const from = requests.length;
    const i = await run(
      [
        "from IPython.display import HTML, display",
        'display(HTML("""<p id="hostile">hostile output</p>',
        "<script>",
        "document.body.dataset.ran = 'script';",
        "try { new Image().src = '/pwned?script=' + localStorage.getItem('pyxis.token'); } catch (e) { new Image().src = '/pwned?blocked'; }",
        "try { parent.document.body.dataset.pwned = 'script'; } catch (e) {}",
        "fetch('/v1/sessions', {method: 'POST', headers: {'Content-Type': 'application/json'}, body: '{}'});",
        "</script>",
        "<img src=\"data:,\" onerror=\"document.body.dataset.ran='onerror'; fetch('/v1/sessions?pwned=' + localStorage.getItem('pyxis.token'), {method: 'POST'})\">",
        '"""))',
      ].join("\n"),
    );
    assert.equal(await done(i), "ok");
    const frameEl = cells().nth(i).locator("iframe.frame-html");
    const frame = frameEl.contentFrame();
    await frame.locator("#hostile").waitFor();
    await page.waitForTimeout(1000);
    // Nothing ran: neither the script nor the inline handler.
    const handle = await frameEl.elementHandle();
    const inner = await handle.contentFrame();
    assert.equal(await inner.evaluate(() => document.body.dataset.ran ?? null), null);
    // And had it run, the frame's origin is opaque: no storage, no parent.
    assert.equal(await inner.evaluate(() => window.origin), "null");
    assert.equal(
      await inner.evaluate(() => {
        try {
          return String(localStorage.length);
        } catch (e) {
          return e.name;
        }
      }),
      "SecurityError",
    );
    assert.equal(
      await inner.evaluate(() => {
        try {
          return String(parent.document.title);
        } catch (e) {
          return e.name;
        }
      }),
      "SecurityError",
    );
    assert.equal(await page.evaluate(() => document.body.dataset.pwned ?? null), null);
    const since = requests.slice(from);
    assert.deepEqual(since.filter((r) => /pwned/.test(r.url)), [], "no request carried the attack");
    assert.deepEqual(
      since.filter((r) => r.method === "POST" && r.url.endsWith("/v1/sessions")),
      [],
      "no session created from the frame",
    );
    assert.equal(await sessionCount(), before);
    // The same HTML never entered the page's own DOM.
    assert.equal(await page.locator("#hostile").count(), 0);
  });

  test("a second session: switch between them, each keeps its cells", async () => {
    const first = await currentId();
    const firstCells = await cells().count();
    await page.click("text=New session");
    await page.waitForFunction((id) => {
      const s = document.querySelector(".session.selected");
      return s && s.dataset.id !== id;
    }, first);
    assert.equal(await page.locator(".session").count(), 2);
    assert.equal(await cells().count(), 1);
    await page.locator(`.session[data-id="${first}"]`).click();
    assert.equal(await cells().count(), firstCells);
    assert.match(await output(0), /hi/);
  });

  test("download as notebook: valid nbformat 4, re-run by nbclient to the same text", async (t) => {
    assert.ok(NB_PYTHON, "PYXIS_TEST_NBPY (a python with nbformat and nbclient, set up by scripts/test) is set");
    const second = await page.locator(".session:not(.selected)").getAttribute("data-id");
    await page.locator(`.session[data-id="${second}"]`).click();
    const codes = [
      "print('hi')",
      "x = 6 * 7\nx",
      "import sys\nprint('to stderr', file=sys.stderr)\nprint(x + 1)",
      "for n in range(3):\n    print('row', n)",
      "1/0",
      "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])",
    ];
    for (const code of codes) assert.notEqual(await done(await run(code)), "running");
    const [dl] = await Promise.all([page.waitForEvent("download"), page.click("button:has-text('Download .ipynb')")]);
    assert.match(dl.suggestedFilename(), /\.ipynb$/);
    const dir = mkdtempSync(join(tmpdir(), "pyxis-nb-"));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const path = join(dir, "session.ipynb");
    await dl.saveAs(path);
    const out = execFileSync(NB_PYTHON, [join(ROOT, "web/tests/nbcheck.py"), path, JSON.stringify(codes)], {
      encoding: "utf8",
      timeout: 180_000,
    });
    const summary = JSON.parse(out.trim().split("\n").pop());
    assert.equal(summary.cells, codes.length);
    assert.deepEqual(summary.mismatches, []);
    assert.equal(summary.rerun_equal, 5, "the five deterministic cells re-ran to the same text");
    assert.equal(summary.images, 1);
    assert.deepEqual(summary.errors, ["ZeroDivisionError"]);
  });

  test("a phone-width layout fits the screen", async () => {
    await page.setViewportSize({ width: 390, height: 844 });
    await page.waitForTimeout(300);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `no horizontal scroll (${overflow}px too wide)`);
    const box = await page.locator(".notebook").boundingBox();
    assert.ok(box.width <= 390 && box.width > 300, `notebook column ${box.width}px`);
    await page.screenshot({ path: SCREENSHOT_PHONE, fullPage: false });
    await page.setViewportSize({ width: 1366, height: 900 });
  });

  test("delete the sessions", async () => {
    const ids = await page.locator(".session").evaluateAll((els) => els.map((e) => e.dataset.id));
    assert.equal(ids.length, 2);
    for (const id of ids) {
      await page.click(`[aria-label="delete session ${id}"]`);
      await page.locator(`.session[data-id="${id}"]`).waitFor({ state: "detached" });
      assert.equal((await server.api(`/v1/sessions/${id}`)).status, 404);
    }
    assert.equal(await sessionCount(), 0);
    assert.ok(await page.locator(".placeholder").isVisible());
  });

  test("the token never went into a URL, and the page threw nothing", async () => {
    assert.ok(requests.length > 20);
    assert.deepEqual(
      requests.filter((r) => r.url.includes(server.token)),
      [],
    );
    assert.deepEqual(pageErrors, []);
  });
});

async function currentId() {
  return page.locator(".session.selected").getAttribute("data-id");
}
