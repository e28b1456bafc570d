'use strict';
// The kernel driven over a socketpair (fd 3), outside a sandbox, as the server drives it.

const assert = require('node:assert/strict');
const net = require('node:net');
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { after, before, describe, it } = require('node:test');

const { KernelClient } = require('./harness');

const PNG_1PX = Buffer.from(
  'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==',
  'base64',
);

function text(result) {
  return result.results.map((r) => r.data['text/plain']).join('\n');
}

describe('javascript kernel', () => {
  let k;
  before(async () => {
    k = new KernelClient('javascript');
    const ready = await k.ready();
    assert.equal(ready.type, 'ready');
  });
  after(() => k.close());

  it('keeps let, const, class and function declarations across cells', async () => {
    let r = await k.execute('let a = 1\nconst b = { n: 2 }\nclass Box { constructor(v) { this.v = v } }\nfunction twice(x) { return 2 * x }');
    assert.equal(r.reply.status, 'ok', JSON.stringify(r.error));
    assert.equal(r.results.length, 0, 'a declaration shows no value');
    r = await k.execute('twice(a + b.n) + new Box(4).v');
    assert.equal(text(r), '10');
    assert.equal(r.results[0].type, 'execute_result');
    assert.equal(r.results[0].execution_count, r.reply.execution_count);
  });

  it('lets a cell run again: declarations may be repeated', async () => {
    for (let i = 0; i < 2; i += 1) {
      const r = await k.execute('const again = 41\nclass Again {}\nagain + 1');
      assert.equal(r.reply.status, 'ok', JSON.stringify(r.error));
      assert.equal(text(r), '42');
    }
  });

  it('runs top-level await and keeps what it declared', async () => {
    let r = await k.execute('const sleep = (ms) => new Promise((r) => setTimeout(r, ms))\nawait sleep(5)\nconst { got, list: [first] } = await Promise.resolve({ got: 7, list: [8] })\nfunction later() { return got + first }');
    assert.equal(r.reply.status, 'ok', JSON.stringify(r.error));
    r = await k.execute('later()');
    assert.equal(text(r), '15');
    r = await k.execute('for await (const x of (async function* () { yield 1; yield 2 })()) console.log("x", x)\nawait 3');
    assert.equal(r.stdout, 'x 1\nx 2\n');
    assert.equal(text(r), '3');
  });

  it('counts executions and shows no value for undefined', async () => {
    const first = await k.execute('undefined');
    const second = await k.execute('void 0');
    assert.equal(first.results.length, 0);
    assert.equal(second.reply.execution_count, first.reply.execution_count + 1);
    const silent = await k.execute('1', { silent: true });
    assert.equal(silent.results.length, 0);
    assert.equal(silent.reply.execution_count, second.reply.execution_count);
  });

  it('streams console and process output in order', async () => {
    const r = await k.execute('console.log("one", { a: 1 })\nprocess.stdout.write("two\\n")\nconsole.error("three")\nprocess.stderr.write(Buffer.from("four\\n"))\nconsole.log("five")');
    assert.equal(r.stdout, "one { a: 1 }\ntwo\nfive\n");
    assert.equal(r.stderr, 'three\nfour\n');
    const names = r.events.filter((e) => e.type === 'stream').map((e) => e.name);
    assert.deepEqual(names, ['stdout', 'stderr', 'stdout']);
  });

  it('streams the output of a waiting cell before it ends', async () => {
    k.seq += 1;
    const id = `s${k.seq}`;
    k.send({ type: 'execute_request', id, code: 'console.log("early")\nawait new Promise((r) => setTimeout(r, 1500))\n"late"', max_output_bytes: 1e6 });
    const first = await k.next((e) => e.id === id, 1000);
    assert.equal(first.type, 'stream');
    assert.equal(first.text, 'early\n');
    const r = await k.collect(id);
    assert.equal(text(r), "'late'");
  });

  it('reports an error with its name, message and a stack into the cell', async () => {
    const r = await k.execute('function inner() {\n  // a comment\n  throw new RangeError("too far")\n}\nconst y = 1\ninner()');
    assert.equal(r.reply.status, 'error');
    assert.equal(r.error.ename, 'RangeError');
    assert.equal(r.error.evalue, 'too far');
    const tb = r.error.traceback.join('\n');
    assert.match(tb, /at inner \(<cell \d+>:3:9\)/);
    assert.match(tb, /at <cell \d+>:6:1/);
    assert.match(tb, /throw new RangeError\("too far"\)/, 'the failing line is shown');
    assert.doesNotMatch(tb, /kernel\.js|node:internal|node:vm/, 'no kernel frames');
  });

  it('keeps the line numbers of a cell with top-level await', async () => {
    const r = await k.execute('await null\n\nnull.boom');
    assert.equal(r.error.ename, 'TypeError');
    assert.match(r.error.traceback.join('\n'), /<cell \d+>:3:6/);
  });

  it('reports a syntax error at its line', async () => {
    const r = await k.execute('const ok = 1\nconst = 2');
    assert.equal(r.error.ename, 'SyntaxError');
    assert.match(r.error.traceback[0], /<cell \d+>:2$/);
    assert.equal(r.error.traceback[1], 'const = 2');
  });

  it('reports what a cell throws that is not an Error', async () => {
    const r = await k.execute('throw { code: 5 }');
    assert.equal(r.reply.status, 'error');
    assert.match(r.error.evalue, /code: 5/);
  });

  it('displays HTML, SVG, PNG, JSON and MIME bundles', async () => {
    const r = await k.execute(
      `display.html("<b>bold</b>")
display('<svg xmlns="http://www.w3.org/2000/svg" width="1" height="1"></svg>')
display(Buffer.from("${PNG_1PX.toString('base64')}", "base64"))
display.json({ a: [1, 2] })
display({ "text/markdown": "# hi", "text/plain": "hi" })
display(new Map([[1, 2]]))`,
    );
    assert.equal(r.reply.status, 'ok', JSON.stringify(r.error));
    const data = r.results.map((x) => x.data);
    assert.equal(r.results.every((x) => x.type === 'display_data'), true);
    assert.equal(data[0]['text/html'], '<b>bold</b>');
    assert.match(data[1]['image/svg+xml'], /^<svg/);
    assert.equal(data[2]['image/png'], PNG_1PX.toString('base64'));
    assert.deepEqual(data[3]['application/json'], { a: [1, 2] });
    assert.equal(data[4]['text/markdown'], '# hi');
    assert.equal(data[5]['text/plain'], 'Map(1) { 1 => 2 }');
  });

  it('requires and imports the preinstalled packages', async () => {
    let r = await k.execute(`const _ = require("lodash")
const dayjs = require("dayjs")
const docx = require("docx")
const PptxGenJS = require("pptxgenjs")
const tsc = require("typescript")
import axios from "axios"
const { default: { chunk } } = await import("lodash")
JSON.stringify([_.chunk([1, 2, 3], 2), chunk([1], 1), dayjs("2024-01-02").format("YYYY"), typeof docx.Document, typeof PptxGenJS, typeof tsc.transpileModule, typeof axios.get])`);
    assert.equal(r.reply.status, 'ok', JSON.stringify(r.error));
    assert.equal(text(r), `'[[[1,2],[3]],[[1]],"2024","function","function","function","function"]'`);
    r = await k.execute('const doc = new docx.Document({ sections: [{ children: [new docx.Paragraph("hi")] }] })\nconst buf = await docx.Packer.toBuffer(doc)\nbuf.subarray(0, 2).toString()');
    assert.equal(text(r), "'PK'", 'docx writes a zip');
  });

  it('reports an unreachable network clearly, without hanging', async () => {
    const server = net.createServer();
    await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address();
    await new Promise((resolve) => server.close(resolve));
    const t0 = Date.now();
    const r = await k.execute(`await axios.get("http://127.0.0.1:${port}/", { timeout: 3000 })`);
    assert.equal(r.reply.status, 'error');
    assert.match(`${r.error.evalue} ${r.error.traceback.join(' ')}`, /ECONNREFUSED/);
    assert.ok(Date.now() - t0 < 5000);
  });

  it('survives an exception thrown later by a timer', async () => {
    let r = await k.execute('setTimeout(() => { throw new Error("from a timer") }, 1)\nawait new Promise((r) => setTimeout(r, 30))\n"alive"');
    assert.equal(text(r), "'alive'");
    assert.match(r.stderr, /Uncaught Error: from a timer/);
    r = await k.execute('Promise.reject(new Error("nobody awaits"))\nawait new Promise((r) => setTimeout(r, 30))');
    assert.equal(r.reply.status, 'ok');
    assert.match(r.stderr, /nobody awaits/);
  });

  it('evaluates user expressions', async () => {
    const r = await k.execute('const ux = 6', { user_expressions: { a: 'ux * 7', b: 'nope.x' } });
    assert.equal(r.reply.user_expressions.a.status, 'ok');
    assert.equal(r.reply.user_expressions.a.data['text/plain'], '42');
    assert.equal(r.reply.user_expressions.b.status, 'error');
    assert.equal(r.reply.user_expressions.b.ename, 'ReferenceError');
  });

  it('completes names and properties', async () => {
    await k.execute('const completeMe = { alpha: 1, alpine: 2, beta: 3 }');
    let r = await k.request({ type: 'complete_request', code: 'completeMe.al', cursor_pos: 13 });
    assert.deepEqual(r.matches, ['alpha', 'alpine']);
    assert.equal(r.cursor_start, 11);
    assert.equal(r.cursor_end, 13);
    r = await k.request({ type: 'complete_request', code: 'x = complete', cursor_pos: 12 });
    assert.ok(r.matches.includes('completeMe'));
    r = await k.request({ type: 'complete_request', code: 'Math.ma', cursor_pos: 7 });
    assert.deepEqual(r.matches, ['max']);
  });

  it('inspects and checks completeness', async () => {
    let r = await k.request({ type: 'inspect_request', code: 'completeMe.beta', cursor_pos: 12, detail_level: 0 });
    assert.equal(r.found, true);
    assert.match(r.data['text/plain'], /number\n3/);
    r = await k.request({ type: 'inspect_request', code: 'noSuchThing', cursor_pos: 3 });
    assert.equal(r.found, false);
    r = await k.request({ type: 'is_complete_request', code: 'function f() {' });
    assert.equal(r.status, 'incomplete');
    r = await k.request({ type: 'is_complete_request', code: 'f(1)' });
    assert.equal(r.status, 'complete');
    r = await k.request({ type: 'is_complete_request', code: 'a b c' });
    assert.equal(r.status, 'invalid');
  });

  it('answers comm and configure requests', async () => {
    let r = await k.request({ type: 'comm_info_request' });
    assert.deepEqual(r.comms, {});
    r = await k.request({ type: 'comm_open', comm_id: 'c1', target_name: 'jupyter.widget', data: {} });
    assert.equal(r.type, 'comm_close');
    r = await k.request({ type: 'configure', env: { PYXIS_TEST_VAR: 'v1' } });
    assert.equal(r.status, 'ok');
    const e = await k.execute('process.env.PYXIS_TEST_VAR');
    assert.equal(text(e), "'v1'");
  });

  it('switches language when configured with PYXIS_KERNEL_LANGUAGE (a pooled kernel)', async () => {
    let r = await k.execute('let typed: number = 1');
    assert.equal(r.reply.status, 'error', 'a JavaScript kernel first');
    r = await k.request({ type: 'configure', env: { PYXIS_KERNEL_LANGUAGE: 'typescript' } });
    assert.equal(r.status, 'ok');
    r = await k.execute('interface P { x: number }\nconst p: P = { x: 41 }\np.x + 1');
    assert.equal(text(r), '42');
    r = await k.execute('String(process.env.PYXIS_KERNEL_LANGUAGE)');
    assert.equal(text(r), "'undefined'", 'the switch is not left in the environment');
    r = await k.request({ type: 'configure', env: { PYXIS_KERNEL_LANGUAGE: 'javascript' } });
    assert.equal(r.status, 'ok');
    r = await k.execute('let typed2: number = 1');
    assert.equal(r.reply.status, 'error', 'back to JavaScript');
  });

  it('sends valid JSON for text with lone surrogates', async () => {
    const r = await k.execute('console.log("a\\ud800b")\n"c\\udc00"');
    assert.equal(r.stdout, 'a?b\n');
    assert.equal(text(r), "'c\\udc00'", 'inspect escapes it');
  });
});

describe('interrupt', () => {
  let k;
  before(async () => {
    k = new KernelClient('javascript');
    await k.ready();
  });
  after(() => k.close());

  async function interrupted(code, delay = 300) {
    k.seq += 1;
    const id = `i${k.seq}`;
    k.send({ type: 'execute_request', id, code, max_output_bytes: 1e6 });
    const timer = setTimeout(() => k.interrupt(), delay);
    const r = await k.collect(id, 10000);
    clearTimeout(timer);
    return r;
  }

  it('ends a busy loop with KeyboardInterrupt and keeps the state', async () => {
    await k.execute('let kept = "still here"');
    const r = await interrupted('let spins = 0\nwhile (true) { spins++ }');
    assert.equal(r.reply.status, 'error');
    assert.equal(r.error.ename, 'KeyboardInterrupt');
    const after2 = await k.execute('[kept, spins > 0]');
    assert.equal(text(after2), "[ 'still here', true ]");
  });

  it('ends a cell that waits forever', async () => {
    const r = await interrupted('await new Promise(() => {})');
    assert.equal(r.error.ename, 'KeyboardInterrupt');
    const next = await k.execute('1 + 1');
    assert.equal(text(next), '2');
  });

  it('ignores SIGINT between cells', async () => {
    k.interrupt();
    await new Promise((r) => setTimeout(r, 100));
    const r = await k.execute('"alive"');
    assert.equal(text(r), "'alive'");
  });

  // The server signals right after it writes a request: the kernel can get both in one turn
  // of its event loop, the signal first. Stopped while both are sent, it gets them so.
  it('ends a cell whose interrupt came with its request', async () => {
    for (const code of ['await new Promise(() => {})', 'let n = 0\nwhile (true) n++']) {
      k.seq += 1;
      const id = `i${k.seq}`;
      process.kill(k.child.pid, 'SIGSTOP');
      k.send({ type: 'execute_request', id, code, max_output_bytes: 1e6 });
      await new Promise((r) => setTimeout(r, 50));
      k.interrupt();
      process.kill(k.child.pid, 'SIGCONT');
      const r = await k.collect(id, 10000);
      assert.equal(r.reply.status, 'error', code);
      assert.equal(r.error.ename, 'KeyboardInterrupt', code);
    }
    const next = await k.execute('1 + 1');
    assert.equal(text(next), '2');
  });

  // vm with SIGINT listeners leaves SIGINT's default action (death) set while its watchdog
  // starts, and an exiting one after it stops: a signal at such a moment killed the kernel.
  it('lives through SIGINTs at every moment of short cells', async () => {
    const c = new KernelClient('javascript');
    await c.ready();
    let sent = 0;
    const storm = setInterval(() => {
      for (let i = 0; i < 3; i += 1) {
        c.interrupt();
        sent += 1;
      }
    }, 1);
    const seen = { ok: 0, KeyboardInterrupt: 0 };
    try {
      for (let round = 0; round < 150; round += 1) {
        const r = await c.execute(`let s${round} = 0\nfor (let i = 0; i < 20000; i++) s${round} += i\ns${round}`);
        const what = r.reply.status === 'ok' ? 'ok' : r.error && r.error.ename;
        assert.ok(what in seen, `round ${round}: ${JSON.stringify(r.error)}`);
        seen[what] += 1;
      }
    } finally {
      clearInterval(storm);
    }
    assert.equal(c.child.exitCode, null, `the kernel exited after ${sent} signals`);
    assert.equal(c.child.signalCode, null, `the kernel died after ${sent} signals`);
    assert.ok(seen.KeyboardInterrupt > 0, `no cell of 150 was interrupted (${sent} signals)`);
    await new Promise((r) => setTimeout(r, 50));
    const after = await c.execute('"alive"');
    assert.equal(text(after), "'alive'");
    await c.close();
  });
});

describe('output cap', () => {
  let k;
  before(async () => {
    k = new KernelClient('javascript');
    await k.ready();
  });
  after(() => k.close());

  const size = (r) => r.events.reduce((n, e) => n + JSON.stringify(e).length, 0);

  it('cuts stream output at the cap and flags the reply', async () => {
    const r = await k.execute('for (let i = 0; i < 100000; i++) console.log("line " + i)', { max_output_bytes: 10000 });
    assert.equal(r.reply.status, 'ok');
    assert.equal(r.reply.truncated, true);
    assert.ok(r.stdout.length <= 10000, `${r.stdout.length} bytes kept`);
    assert.ok(r.stdout.startsWith('line 0\n'));
  });

  it('never builds a result or display bigger than the cap', async () => {
    let r = await k.execute('"x".repeat(50 * 1024 * 1024)', { max_output_bytes: 5000 });
    assert.equal(r.reply.truncated, true);
    assert.ok(size(r) < 40000, `${size(r)} bytes of events`);
    r = await k.execute('for (let i = 0; i < 10000; i++) display.html("<p>" + i + "</p>")', { max_output_bytes: 20000 });
    assert.equal(r.reply.truncated, true);
    assert.ok(size(r) < 40000);
    r = await k.execute('display.html("y".repeat(10 * 1024 * 1024))', { max_output_bytes: 20000 });
    assert.equal(r.results.length, 0);
    assert.equal(r.reply.truncated, true);
  });

  it('still names the error of a cell whose output filled the cap', async () => {
    const r = await k.execute('console.log("z".repeat(100000)); throw new Error("after the flood")', { max_output_bytes: 5000 });
    assert.equal(r.reply.status, 'error');
    assert.equal(r.error.ename, 'Error');
    assert.equal(r.error.evalue, 'after the flood');
  });

  it('bounds a huge error message', async () => {
    const r = await k.execute('throw new Error("m".repeat(1000000))');
    assert.ok(r.error.evalue.length < 70 * 1024);
    assert.equal(r.reply.truncated, true);
  });
});

describe('typescript kernel', () => {
  let k;
  before(async () => {
    k = new KernelClient('typescript');
    await k.ready();
  });
  after(() => k.close());

  it('runs interfaces and generics, and keeps state', async () => {
    let r = await k.execute('interface Point { x: number; y: number }\nfunction first<T>(items: T[]): T { return items[0] }\nconst p: Point = first<Point>([{ x: 1, y: 2 }])\nenum Color { Red, Green }');
    assert.equal(r.reply.status, 'ok', JSON.stringify(r.error));
    r = await k.execute('const q: Point = { ...p, y: 5 }\nclass Stack<T> { private items: T[] = []; push(v: T): this { this.items.push(v); return this } get size(): number { return this.items.length } }\n[q.x + q.y, Color.Green, new Stack<string>().push("a").push("b").size]');
    assert.equal(text(r), '[ 6, 1, 2 ]');
  });

  it('does not fail on a type error (transpile only)', async () => {
    const r = await k.execute('const n: number = "not a number"\nn');
    assert.equal(r.reply.status, 'ok');
    assert.equal(text(r), "'not a number'");
  });

  it('maps error positions back to the TypeScript cell', async () => {
    const r = await k.execute('type Id = string\ninterface Shape {\n  area(): number\n}\nfunction fail(id: Id): never {\n  throw new Error(`bad ${id}`)\n}\nfail("x")');
    assert.equal(r.error.evalue, 'bad x');
    const tb = r.error.traceback.join('\n');
    assert.match(tb, /at fail \(<cell \d+>:6:9\)/);
    assert.match(tb, /at <cell \d+>:8:1/);
    assert.match(tb, /throw new Error\(`bad \$\{id\}`\)/);
  });

  it('reports a TypeScript syntax error at its line', async () => {
    const r = await k.execute('let ok = 1\nlet bad: = 2');
    assert.equal(r.error.ename, 'SyntaxError');
    assert.match(r.error.traceback[0], /<cell \d+>:2$/);
  });

  it('imports and awaits at top level', async () => {
    const r = await k.execute('import _ from "lodash"\nimport type { Dayjs } from "dayjs"\nconst total: number = await Promise.resolve(_.sum([1, 2, 3]))\ntotal');
    assert.equal(r.reply.status, 'ok', JSON.stringify(r.error));
    assert.equal(text(r), '6');
  });
});

describe('protocol hygiene', () => {
  it('sends ready first and exits at shutdown', async () => {
    const k = new KernelClient('javascript');
    const first = await k.next();
    assert.equal(first.type, 'ready');
    k.send({ type: 'shutdown' });
    const { code } = await k.exited;
    assert.equal(code, 0);
  });

  it('ignores unknown requests and odd fields', async () => {
    const k = new KernelClient('javascript');
    await k.ready();
    k.send({ type: 'no_such_request', id: 'x' });
    const r = await k.execute({ not: 'a string' });
    assert.equal(r.reply.status, 'error');
    const ok = await k.execute('1', { max_output_bytes: -5 });
    assert.equal(text(ok), '1');
    await k.close();
  });

  it('exits on a malformed frame', async () => {
    const k = new KernelClient('javascript');
    await k.ready();
    const bad = Buffer.from('\u0000\u0000\u0000\u0003{x}', 'latin1');
    k.sock.write(bad);
    const { code } = await k.exited;
    assert.equal(code, 0);
  });

  it('exits on a frame over the size limit', async () => {
    const k = new KernelClient('javascript');
    await k.ready();
    k.sock.write(Buffer.from([0xff, 0xff, 0xff, 0xff]));
    const { code } = await k.exited;
    assert.equal(code, 0);
  });

  it('exits when the supervisor closes the socket', async () => {
    const k = new KernelClient('javascript');
    await k.ready();
    k.sock.end();
    const { code } = await k.exited;
    assert.equal(code, 0);
  });
});

describe('warm-up', () => {
  it('runs before ready and leaves no trace a session can see', async () => {
    // The names a bare Node.js process has on its global object, enumerable: a binding the
    // warm-up made (a `var`, a function) would be one more.
    // (From a file: `node -p` adds `require` and `module` to the global object.)
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pyxis-warm-up-'));
    const probe = path.join(dir, 'probe.js');
    fs.writeFileSync(probe, 'console.log(JSON.stringify(Object.keys(globalThis).sort()))');
    const bare = JSON.parse(execFileSync(process.execPath, [probe], { env: { PATH: process.env.PATH } }).toString());
    fs.rmSync(dir, { recursive: true });
    for (const language of ['javascript', 'typescript']) {
      const k = new KernelClient(language, { PYXIS_KERNEL_WARM_UP: '1' });
      await k.ready();
      // Nothing of the warm-up's cell reached the socket, before or after ready.
      await new Promise((resolve) => setTimeout(resolve, 100));
      assert.deepEqual(k.events, [], language);
      const r = await k.execute('console.log(JSON.stringify(Object.keys(globalThis).sort()))\n1 + 1');
      assert.equal(r.reply.status, 'ok', JSON.stringify(r.error));
      assert.equal(r.reply.execution_count, 1, 'the warm-up is not counted');
      assert.equal(r.results[0].execution_count, 1);
      assert.equal(text(r), '2');
      // The variable is the kernel's own: removed, like PYXIS_KERNEL_FD.
      assert.deepEqual(JSON.parse(r.stdout), bare, language);
      assert.equal(text(await k.execute('typeof process.env.PYXIS_KERNEL_WARM_UP')), "'undefined'");
      // An error's traceback has the cell's own excerpt, nothing of a remembered <cell 0>.
      const e = await k.execute('throw new Error("first")');
      assert.equal(e.reply.execution_count, 3);
      assert.ok(!e.error.traceback.join('\n').includes('<cell 0>'), e.error.traceback.join('\n'));
      assert.ok(e.error.traceback.join('\n').includes('<cell 3>'), e.error.traceback.join('\n'));
      await k.close();
    }
  });
});

describe('heap flag', () => {
  it('keeps the heap size the server gives, for the kernel and for the workers of its cells', async () => {
    // The kernel sets --max-old-space-size to its default while it loads its modules (V8
    // then takes the code cache of Node's own): the heap keeps its size, and the flag is
    // back before `ready`, where a Worker's heap gets its size from it.
    const k = new KernelClient('javascript', {}, ['--max-old-space-size=300']);
    try {
      await k.ready();
      const limit = (r) => Number(text(r)) / 2 ** 20;
      const own = await k.execute('require("v8").getHeapStatistics().heap_size_limit');
      assert.ok(limit(own) >= 300 && limit(own) < 400, text(own));
      const worker = await k.execute(`const { Worker } = require('worker_threads')
await new Promise((resolve, reject) => {
  const w = new Worker("require('worker_threads').parentPort.postMessage(require('v8').getHeapStatistics().heap_size_limit)", { eval: true })
  w.once('message', resolve)
  w.once('error', reject)
})`);
      assert.equal(worker.reply.status, 'ok', JSON.stringify(worker.error));
      assert.ok(limit(worker) >= 300 && limit(worker) < 400, text(worker));
    } finally {
      await k.close();
    }
  });
});
