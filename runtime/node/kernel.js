'use strict';
// The Pyxis JavaScript/TypeScript kernel: runs cells in one Node.js process inside the
// sandbox and speaks the framed protocol of crates/protocol on an inherited socket
// (fd 3 unless PYXIS_KERNEL_FD says otherwise), exactly as the Python driver does.
//
//   node [--max-old-space-size=N] kernel.js [javascript|typescript]
//
// It sends `ready` first, then serves requests in order until EOF or `shutdown`. How a
// cell keeps its declarations and runs top-level `await`: lib/rewrite.js. Interrupt is
// SIGINT: a cell's synchronous part runs under vm's `breakOnSigint` (a busy loop ends
// with KeyboardInterrupt); a cell that waits (await, timers) ends within POLL_MS with
// KeyboardInterrupt. A busy loop in code that an await resumed cannot be broken from
// JavaScript: the server's grace period then kills the kernel, and the reply says
// state_lost.
//
// SIGINT goes to vm's watchdog, which the kernel starts once for its whole life (see
// `sigintWatchdog`), never to a `process.on('SIGINT')` listener: with listeners, vm takes
// them off for every run and libuv sets SIGINT's action back to the default (the process
// dies of it) until the watchdog's thread has started; the watchdog, stopped, leaves an
// action that exits the process. Started once, its action stays: a SIGINT during a run
// breaks it, one between runs is kept as pending, and the kernel takes it at the next
// check (before the cell's code runs, and every POLL_MS while a cell awaits); one still
// pending when a cell ends is dropped, and so is one that comes while the kernel is idle
// and no request has arrived, seen by sweeps IDLE_SWEEPS_MS apart once it went idle (an idle
// kernel sets no timer after the last). The server signals only while a cell runs, after
// it wrote its request and when no reply of the kernel's waits to be read, and again every
// 200 ms until the cell ends (sessions.rs). A cell that adds its own SIGINT listener takes
// the signal from the watchdog (libuv's action replaces its), and then only the grace
// period ends its loops.

// The server's `--max-old-space-size` is a V8 flag, and V8 takes the code cache Node ships
// for its own modules only under the flags it was made with: with one changed, each module
// the kernel loads is compiled from its source (net, module and vm: ~7 ms more; stream,
// which `v8` itself loads, pays ~8 ms more either way). The heap's size is fixed when V8
// starts, so the flag is set back to its default while the kernel loads its modules and
// put back before `ready` (a Worker that a cell starts takes its heap size from it).
const restoreHeapFlag = require.main === module ? defaultHeapFlag() : () => {};

const net = require('net');
const path = require('path');
const util = require('util');
const vm = require('vm');
const Module = require('module');
const { Writable } = require('stream');
const { StringDecoder } = require('string_decoder');
const { pathToFileURL } = require('url');

const { FrameBuffer, FrameError, encode } = require('./lib/framing');
const { Output, cut, nbytes, EVENT_OVERHEAD } = require('./lib/output');
const display = require('./lib/display');

// Words of the constructs lib/rewrite.js changes; a cell without any runs unchanged (its
// function declarations and `var`s are already global, and its value is the script's
// completion value), and lib/rewrite.js is loaded at the first cell with one (~1 ms).
const NEEDS_REWRITE = /\b(let|const|class|await|import|export)\b/;
let rewriteModule = null;

/** lib/rewrite.js (the REPL rewrite, `is_complete`), loaded when first needed. */
function rewriter() {
  if (rewriteModule === null) rewriteModule = require('./lib/rewrite');
  return rewriteModule;
}

const DEFAULT_MAX_OUTPUT = 1024 * 1024;
// Bound of an answer that is not a cell's output (completions, inspection).
const REPLY_LIMIT = 1024 * 1024;
// Bounds of an error event: the message, one traceback line, the whole traceback.
const ERROR_VALUE_CAP = 64 * 1024;
const TRACEBACK_LINE_CAP = 8 * 1024;
const TRACEBACK_TOTAL_CAP = 256 * 1024;
// Sources (and TypeScript source maps) of this many recent cells are kept, for the
// excerpts and positions of errors raised by functions they defined.
const KEPT_CELLS = 200;
const MODULES = process.env.PYXIS_NODE_MODULES || path.join(__dirname, 'node_modules');
const INTERRUPTED = 'ERR_SCRIPT_EXECUTION_INTERRUPTED';
const OWN_FRAMES = [__dirname + path.sep, 'node:internal', 'node:vm', '(node:'];
const CELL_POS = /<cell (\d+)>:(\d+):(\d+)/g;
// A cell without calls, loops or `new` cannot spin by itself (only through getters or
// conversions it triggers).
const MAY_RUN_LONG = /[(`]|\b(while|for|do|new)\b/;
// How often a cell that awaits looks for a pending SIGINT.
const POLL_MS = 10;
// When an idle kernel drops a SIGINT that no request came with (see the header).
const IDLE_SWEEPS_MS = [5, 50, 500, 5000];
// A TypeScript cell without any of these characters or words is JavaScript as it stands
// (`x + 1`, `f(2)`): it skips the compiler, which costs milliseconds per cell.
const TS_SYNTAX =
  /[:<!?@]|\b(as|satisfies|interface|type|enum|namespace|declare|abstract|implements|private|public|protected|readonly|override|module|keyof|infer|is|unique|asserts|accessor)\b/;

// What the warm-up runs (see `Kernel.warmUp`): an expression with a value, binding nothing,
// and a few values whose inspection compiles util.inspect's common paths.
const WARM_UP_CELL = '1 + 1';
const WARM_UP_VALUES = [1.5, 'text', { key: [true, null] }, new Map([[1, 2]])];

const runtimeRequire = Module.createRequire(path.join(MODULES, '..', 'kernel.js'));

/**
 * vm's SIGINT watchdog, started for the kernel's life (see the header): `take()` says
 * whether a SIGINT came while no run was watched, and forgets it. Null where this Node
 * has no such binding (the kernel then listens for SIGINT, with vm's windows).
 */
function sigintWatchdog() {
  const binding = safe(() => process.binding('contextify'), null);
  if (!binding || typeof binding.startSigintWatchdog !== 'function' || typeof binding.stopSigintWatchdog !== 'function') {
    return null;
  }
  if (!binding.startSigintWatchdog()) return null;
  return {
    pending: () => binding.watchdogHasPendingSigint(),
    // Started once more and stopped: a nested stop reports the pending signal and clears it.
    take() {
      binding.startSigintWatchdog();
      return binding.stopSigintWatchdog();
    },
  };
}

class KeyboardInterrupt extends Error {
  constructor(message = '') {
    super(message);
    this.name = 'KeyboardInterrupt';
  }
}

function safe(fn, fallback) {
  try {
    return fn();
  } catch {
    return fallback;
  }
}

/** Code points → UTF-16 index of `text`. */
function utf16Index(text, codePoints) {
  let i = 0;
  for (let n = 0; n < codePoints && i < text.length; n += 1) {
    const c = text.charCodeAt(i);
    i += c >= 0xd800 && c <= 0xdbff && i + 1 < text.length ? 2 : 1;
  }
  return i;
}

function codePoints(text) {
  let n = 0;
  for (const _ of text) n += 1; // eslint-disable-line no-unused-vars
  return n;
}

/** Node's module resolution for a cell: the working directory first, then the runtime's packages. */
function resolveFromCell(spec) {
  return runtimeRequire.resolve(spec, { paths: [process.cwd(), path.join(MODULES, '..')] });
}

function userRequire(spec) {
  if (typeof spec !== 'string') return runtimeRequire(spec);
  if (spec.startsWith('node:') || Module.isBuiltin(spec)) return runtimeRequire(spec);
  return runtimeRequire(resolveFromCell(spec));
}
userRequire.resolve = (spec, options) => (options ? runtimeRequire.resolve(spec, options) : resolveFromCell(spec));
userRequire.cache = runtimeRequire.cache;
userRequire.main = undefined;

/** `import()` of a cell: relative to the working directory, bare names from its node_modules or the runtime's. */
async function userImport(spec) {
  spec = String(spec);
  if (/^(node|data|file):/.test(spec) || Module.isBuiltin(spec)) return import(spec);
  if (spec.startsWith('.') || spec.startsWith('/')) return import(pathToFileURL(path.resolve(process.cwd(), spec)).href);
  const name = spec.startsWith('@') ? spec.split('/').slice(0, 2).join('/') : spec.split('/')[0];
  const local = path.join(process.cwd(), 'node_modules', name);
  if (safe(() => require('fs').statSync(local).isDirectory(), false)) {
    return import(pathToFileURL(Module.createRequire(path.join(process.cwd(), 'x.js')).resolve(spec)).href);
  }
  try {
    // From this file's directory, with ESM's own rules (the package's "import" exports).
    return await import(spec);
  } catch (err) {
    if (safe(() => err.code, null) !== 'ERR_MODULE_NOT_FOUND') throw err;
    // The runtime's packages elsewhere (PYXIS_NODE_MODULES), by require's rules.
    return import(pathToFileURL(resolveFromCell(spec)).href);
  }
}

class Kernel {
  constructor(sock, language) {
    this.sock = sock;
    this.typescript = language === 'typescript';
    this.out = new Output((data) => this.sock.write(data));
    this.frames = new FrameBuffer();
    this.queue = [];
    this.busy = false;
    this.count = 0;
    this.cells = new Map(); // file name → { source, map }
    this.onInterrupt = null;
    this.watchdog = null;
    this.sweep = null;
    // A cell's request is being served (from its first line to its reply), and SIGINT came
    // while it could not be delivered to the cell's code (see `onSigint`).
    this.executing = false;
    this.interruptPending = false;
    this.stopping = false;
    this.hidden = { t: undefined, import: userImport };
  }

  // ---- setup

  install() {
    const g = globalThis;
    Object.defineProperty(g, '__pyxis', { value: this.hidden, enumerable: false, configurable: false, writable: false });
    const mod = new Module(path.join(process.cwd(), '<cell>'), null);
    mod.filename = mod.id;
    mod.paths = Module._nodeModulePaths(process.cwd()).concat([MODULES]);
    mod.loaded = true;
    mod.require = userRequire;
    const globals = {
      require: userRequire,
      module: mod,
      exports: mod.exports,
      __filename: mod.filename,
      __dirname: process.cwd(),
      display: display.makeDisplay((bundle, metadata) => this.display(bundle, metadata)),
    };
    for (const [name, value] of Object.entries(globals)) {
      Object.defineProperty(g, name, { value, enumerable: false, configurable: true, writable: true });
    }
    this.installStreams();
    this.watchdog = sigintWatchdog();
    if (!this.watchdog) process.on('SIGINT', () => this.onSigint());
    process.on('uncaughtException', (err) => this.background('Uncaught', err));
    process.on('unhandledRejection', (err) => this.background('Unhandled promise rejection:', err));
    // Warnings (deprecations of the user's packages) go to the cell's stderr.
    process.removeAllListeners('warning');
    process.on('warning', (w) => this.out.write('stderr', `${safe(() => `${w.name}: ${w.message}`, 'Warning')}\n`));
  }

  installStreams() {
    const out = this.out;
    for (const [name, fd] of [['stdout', 1], ['stderr', 2]]) {
      let decoder = null;
      const toText = (chunk, encoding) => {
        if (typeof chunk === 'string') {
          return encoding && encoding !== 'utf8' && encoding !== 'utf-8' && Buffer.isEncoding(encoding)
            ? Buffer.from(chunk, encoding).toString('utf8')
            : chunk;
        }
        if (chunk instanceof Uint8Array) {
          decoder ??= new StringDecoder('utf8');
          return decoder.write(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength));
        }
        return String(chunk);
      };
      const stream = new Writable({
        decodeStrings: false,
        write(chunk, encoding, callback) {
          out.write(name, toText(chunk, encoding));
          callback();
        },
      });
      stream.write = (chunk, encoding, callback) => {
        if (typeof encoding === 'function') {
          callback = encoding;
          encoding = undefined;
        }
        out.write(name, toText(chunk, encoding));
        if (typeof callback === 'function') process.nextTick(callback);
        return true;
      };
      Object.assign(stream, { fd, isTTY: false, columns: 80 });
      Object.defineProperty(process, name, { value: stream, configurable: true, enumerable: true, writable: true });
    }
    // The global console was made for the original streams: one over ours replaces it.
    const console2 = new console.Console({ stdout: process.stdout, stderr: process.stderr, colorMode: false });
    for (const key of Object.keys(console2)) {
      if (typeof console2[key] === 'function') console[key] = console2[key].bind(console2);
    }
  }

  // ---- transport

  /**
   * For a kernel the warm pool keeps (PYXIS_KERNEL_WARM_UP=1): runs the execute path once
   * before `ready`, its output thrown away: a cell through the
   * frame decoder, `handle`, `run` (vm.Script), the result's `util.inspect` and the reply's
   * encoding. V8 compiles each function at its first call, so without this the session's
   * first cell would pay ~5 ms for it. It leaves no trace a cell can see: the execution
   * count stays 0 (not stored in the history), the cell is not remembered, and it binds no
   * name. Best effort: a failure here only costs the first cell that time.
   */
  async warmUp() {
    const sink = this.out.sink;
    this.out.sink = () => {};
    try {
      const frames = new FrameBuffer();
      frames.feed(encode({ type: 'execute_request', id: '', code: WARM_UP_CELL, store_history: false }));
      await this.handle(frames.next());
      display.inspect(WARM_UP_VALUES);
      // What the warm-up's cell does not reach, for a session's first cells: the rewrite
      // (a cell that declares something) and the flush timer (one that prints).
      rewriter();
      this.out.arm();
      this.out.disarm();
    } catch {
      // Nothing a cell depends on.
    } finally {
      this.out.sink = sink;
      this.out.queue = [];
      this.out.queued = 0;
      this.count = 0;
      this.cells.clear();
    }
  }

  async start(warmUp) {
    if (warmUp) await this.warmUp();
    this.sock.on('data', (chunk) => {
      this.frames.feed(chunk);
      for (;;) {
        let msg;
        try {
          msg = this.frames.next();
        } catch (err) {
          if (err instanceof FrameError) this.exit(0);
          throw err;
        }
        if (msg === null) break;
        this.queue.push(msg);
      }
      this.pump();
    });
    this.sock.on('end', () => this.exit(0));
    this.sock.on('error', () => this.exit(0));
    restoreHeapFlag();
    this.out.reply({ type: 'ready' });
  }

  exit(code) {
    if (this.stopping) return;
    this.stopping = true;
    this.out.send();
    this.sock.end(() => process.exit(code));
    setTimeout(() => process.exit(code), 200).unref();
  }

  async pump() {
    if (this.busy) return;
    this.busy = true;
    try {
      while (this.queue.length && !this.stopping) {
        const msg = this.queue.shift();
        await this.handle(msg);
      }
    } finally {
      this.busy = false;
      if (this.watchdog) this.sweepIdle(0);
    }
  }

  /** Drops a SIGINT that came while idle, at each of IDLE_SWEEPS_MS (see the header). */
  sweepIdle(i) {
    clearTimeout(this.sweep);
    // The take waits for the poll phase of the loop's turn: a request that is readable now
    // (with the SIGINT that came after it) is read first, and the kernel is busy by then.
    this.sweep = setTimeout(() => {
      setImmediate(() => {
        if (this.busy) return;
        this.watchdog.take();
        if (i + 1 < IDLE_SWEEPS_MS.length) this.sweepIdle(i + 1);
      });
    }, IDLE_SWEEPS_MS[i]);
    this.sweep.unref();
  }

  async handle(msg) {
    const id = typeof msg.id === 'string' ? msg.id : String(msg.id ?? '');
    switch (msg.type) {
      case 'execute_request':
        await this.execute(msg, id);
        break;
      case 'complete_request':
        this.out.reply(this.complete(msg, id));
        break;
      case 'inspect_request':
        this.out.reply(this.inspect(msg, id));
        break;
      case 'is_complete_request': {
        const code = typeof msg.code === 'string' ? msg.code : '';
        const status = this.typescript ? 'unknown' : rewriter().completeness(code);
        this.out.reply({ type: 'is_complete_reply', id, status, indent: status === 'incomplete' ? '  ' : '' });
        break;
      }
      case 'comm_info_request':
        this.out.reply({ type: 'comm_info_reply', id, comms: {} });
        break;
      case 'comm_open':
        this.out.reply({ type: 'comm_close', id, comm_id: String(msg.comm_id ?? '').slice(0, 256), data: {} });
        break;
      case 'configure': {
        let status = 'ok';
        try {
          for (const [k, v] of Object.entries(msg.env || {})) process.env[String(k)] = String(v);
          // A pooled kernel claimed by a session of the other language switches to it.
          const language = process.env.PYXIS_KERNEL_LANGUAGE;
          if (language !== undefined) {
            delete process.env.PYXIS_KERNEL_LANGUAGE;
            this.typescript = ['ts', 'typescript'].includes(language.toLowerCase());
          }
        } catch (err) {
          status = `error: ${safe(() => err.message, 'bad env')}`;
        }
        this.out.reply({ type: 'configure_reply', id, status });
        break;
      }
      case 'shutdown':
        this.exit(0);
        break;
      default:
        // comm_msg, comm_close, a stray input_reply, an unknown type: ignored.
        break;
    }
  }

  // ---- cells

  async execute(msg, id) {
    const out = this.out;
    const code = typeof msg.code === 'string' ? msg.code : String(msg.code ?? '');
    const silent = Boolean(msg.silent);
    const store = msg.store_history === undefined || msg.store_history === null ? !silent : Boolean(msg.store_history);
    const limit = Number.isFinite(msg.max_output_bytes) && msg.max_output_bytes > 0 ? msg.max_output_bytes : DEFAULT_MAX_OUTPUT;
    out.startCell(id, limit);
    if (store) this.count += 1;
    const n = this.count;
    let status = 'ok';
    this.executing = true;
    try {
      await this.run(code, store ? n : 0, n, silent);
    } catch (err) {
      status = 'error';
      this.error(err);
    } finally {
      this.executing = false;
      this.takeInterrupt();
    }
    const reply = { type: 'execute_reply', id, status, execution_count: n, truncated: false, user_expressions: {} };
    const expressions = msg.user_expressions;
    if (status === 'ok' && expressions && typeof expressions === 'object' && Object.keys(expressions).length) {
      reply.user_expressions = this.userExpressions(expressions);
    }
    reply.truncated = out.truncated;
    out.finishCell(reply);
  }

  async run(code, cellNo, count, silent) {
    const filename = cellNo ? `<cell ${cellNo}>` : '<cell 0>';
    let source = code;
    let map = null;
    if (this.typescript && TS_SYNTAX.test(code)) {
      const ts = require('./lib/typescript');
      try {
        ({ code: source, map } = ts.transpile(code, `cell${cellNo}`));
      } catch (err) {
        if (err instanceof ts.TranspileError) throw this.syntaxError(err.message, filename, code, err.line, err.column);
        throw err;
      }
    }
    this.remember(filename, code, map);
    let plan = null;
    let script = null;
    const options = { filename };
    if (vm.constants && vm.constants.USE_MAIN_CONTEXT_DEFAULT_LOADER) {
      options.importModuleDynamically = vm.constants.USE_MAIN_CONTEXT_DEFAULT_LOADER;
    }
    if (!NEEDS_REWRITE.test(source)) {
      try {
        script = new vm.Script(source, options);
        plan = { async: false, hasResult: true };
      } catch {
        // The parser says where the syntax error is.
      }
    }
    try {
      if (!plan) plan = rewriter().rewrite(source);
    } catch (err) {
      if (err instanceof SyntaxError && err.loc) {
        let { line, column } = err.loc;
        column += 1;
        if (map) ({ line, column } = require('./lib/typescript').original(map, line, column) || { line, column });
        throw this.syntaxError(err.message.replace(/ \(\d+:\d+\)$/, ''), filename, code, line, column);
      }
      throw err;
    }
    if (!script) script = new vm.Script(plan.code, { ...options, lineOffset: plan.lineOffset });
    // breakOnSigint starts and joins a watchdog thread (~0.5 ms): a cell that calls
    // nothing and loops nowhere (`x = 1`, `a + b`) runs without it.
    // With the watchdog started for good, a watched run costs a lock and a counter. Without
    // it each starts and joins a thread (~0.5 ms): a cell that calls nothing and loops
    // nowhere (`x = 1`, `a + b`) runs unwatched. vm then takes every SIGINT listener off
    // for the run, and with them a SIGINT that libuv has received but not yet dispatched:
    // two turns of the event loop first let it arrive.
    const breakOnSigint = Boolean(this.watchdog) || MAY_RUN_LONG.test(source);
    if (breakOnSigint && !this.watchdog) {
      await new Promise(setImmediate);
      await new Promise(setImmediate);
    }
    this.checkInterrupt();
    let value = this.interruptible(() => script.runInThisContext({ breakOnSigint, displayErrors: false }));
    if (plan.async) {
      this.out.flushStream();
      this.out.send();
      value = await this.awaitCell(value);
    }
    if (plan.hasResult && value !== undefined && !silent) this.result(count, value);
  }

  /** Runs `fn` (which runs user code) under breakOnSigint's rules: SIGINT → KeyboardInterrupt. */
  interruptible(fn) {
    try {
      return fn();
    } catch (err) {
      if (safe(() => err.code, null) === INTERRUPTED) throw new KeyboardInterrupt();
      throw err;
    }
  }

  /**
   * A function of the user's (inspect hooks, getters) called by the kernel. Not under
   * breakOnSigint (its thread costs ~0.5 ms a call): one that never returns is ended by
   * the server's grace period.
   */
  guarded(fn) {
    return fn();
  }

  /**
   * SIGINT, where there is no watchdog to take it (see `sigintWatchdog`). A cell that
   * awaits ends at once; one whose code has not started yet (its request
   * is being read, rewritten, compiled) ends as it starts. Idle, the interrupt is for the
   * request that arrives in this turn of the event loop: the server signals only after it
   * has written the cell's request, and writes the next request only after this cell's
   * reply, so an interrupt still pending when the turn ends was for a cell already over.
   */
  onSigint() {
    if (this.onInterrupt) {
      this.onInterrupt();
      return;
    }
    this.interruptPending = true;
    if (!this.executing) {
      setImmediate(() => {
        if (!this.executing) this.interruptPending = false;
      });
    }
  }

  /** Whether an interrupt came that the cell's code has not got; forgets it. */
  takeInterrupt() {
    const pending = this.interruptPending || Boolean(this.watchdog && this.watchdog.take());
    this.interruptPending = false;
    return pending;
  }

  /** Throws KeyboardInterrupt if an interrupt came before the cell's code could get it. */
  checkInterrupt() {
    if (this.takeInterrupt()) throw new KeyboardInterrupt();
  }

  awaitCell(promise) {
    let poll = null;
    return new Promise((resolve, reject) => {
      if (this.takeInterrupt()) {
        reject(new KeyboardInterrupt());
        return;
      }
      this.onInterrupt = () => reject(new KeyboardInterrupt());
      if (this.watchdog) {
        const watchdog = this.watchdog;
        poll = setInterval(() => {
          if (watchdog.pending() && watchdog.take()) this.onInterrupt?.();
        }, POLL_MS);
      }
      Promise.resolve(promise).then(resolve, reject);
    }).finally(() => {
      if (poll) clearInterval(poll);
      this.onInterrupt = null;
    });
  }

  remember(filename, source, map) {
    this.cells.set(filename, { source, map });
    if (this.cells.size > KEPT_CELLS) this.cells.delete(this.cells.keys().next().value);
  }

  result(count, value) {
    const out = this.out;
    if (out.full()) return;
    let text;
    try {
      text = this.guarded(() => display.inspect(value));
    } catch (err) {
      if (err instanceof KeyboardInterrupt) throw err;
      text = `[inspect failed: ${safe(() => String(err.message), 'error')}]`;
    }
    const kept = cut(text, Math.max(out.room() - EVENT_OVERHEAD - 128, 0));
    if (kept.length < text.length) out.truncated = true;
    text = kept;
    // The cell's reply is sent right after (only synchronous code and microtasks between).
    out.event({ type: 'execute_result', execution_count: count, data: { 'text/plain': text }, metadata: {} }, nbytes(text), true);
  }

  display(bundle, metadata) {
    const out = this.out;
    if (out.full()) return;
    let size = 0;
    for (const [mime, value] of Object.entries(bundle)) {
      size += mime.length + (typeof value === 'string' ? value.length : safe(() => JSON.stringify(value).length, 0));
    }
    let meta = {};
    if (metadata && typeof metadata === 'object' && !Array.isArray(metadata)) {
      meta = safe(() => JSON.parse(JSON.stringify(metadata)), {});
    }
    out.event({ type: 'display_data', data: bundle, metadata: meta, transient: {} }, size);
  }

  // ---- errors

  syntaxError(message, filename, source, line, column) {
    const err = new SyntaxError(message);
    err.pyxisTraceback = [...this.excerpt(filename, source, line, column), `SyntaxError: ${message}`];
    return err;
  }

  excerpt(filename, source, line, column) {
    const text = (source || '').split('\n')[line - 1];
    if (text === undefined) return [];
    return [`${filename}:${line}`, text, `${' '.repeat(Math.max(column - 1, 0))}^`, ''];
  }

  /** A stack line with positions in TypeScript cells mapped back to the cell. */
  mapPositions(line) {
    return line.replace(CELL_POS, (all, n, l, c) => {
      const cell = this.cells.get(`<cell ${n}>`);
      if (!cell || !cell.map) return all;
      const pos = require('./lib/typescript').original(cell.map, Number(l), Number(c));
      return pos ? `<cell ${n}>:${pos.line}:${pos.column}` : all;
    });
  }

  describe(err, withExcerpt = true) {
    if (err instanceof KeyboardInterrupt) {
      return { ename: 'KeyboardInterrupt', evalue: 'interrupted', traceback: ['KeyboardInterrupt: interrupted'] };
    }
    const isError = safe(() => err instanceof Error || (err !== null && typeof err === 'object' && typeof err.stack === 'string'), false);
    if (!isError) {
      const shown = safe(() => display.inspect(err), String(typeof err));
      return { ename: 'Uncaught', evalue: shown, traceback: [`Uncaught ${shown}`] };
    }
    const ename = String(safe(() => err.name || err.constructor.name, 'Error') || 'Error');
    const evalue = String(safe(() => err.message, '') ?? '');
    if (Array.isArray(err.pyxisTraceback)) return { ename, evalue, traceback: err.pyxisTraceback };
    const stack = String(safe(() => err.stack, '') || `${ename}: ${evalue}`);
    const lines = stack.split('\n');
    const frames = [];
    const head = [];
    let inFrames = false;
    for (const line of lines) {
      if (/^\s+at /.test(line)) {
        inFrames = true;
        if (!OWN_FRAMES.some((own) => line.includes(own))) frames.push(this.mapPositions(line));
      } else if (!inFrames) {
        head.push(line);
      }
    }
    let excerpt = [];
    for (const frame of withExcerpt ? frames : []) {
      const m = /<cell (\d+)>:(\d+):(\d+)/.exec(frame);
      if (m) {
        const cell = this.cells.get(`<cell ${m[1]}>`);
        if (cell) excerpt = this.excerpt(`<cell ${m[1]}>`, cell.source, Number(m[2]), Number(m[3]));
        break;
      }
    }
    return { ename, evalue, traceback: [...excerpt, ...head, ...frames] };
  }

  /** The error event of a cell that failed: its last event, the reply follows. */
  error(err) {
    const { ename, evalue: value, traceback } = this.describe(err);
    let evalue = value;
    let truncated = false;
    if (evalue.length > ERROR_VALUE_CAP) {
      evalue = `${evalue.slice(0, ERROR_VALUE_CAP)}… [truncated]`;
      truncated = true;
    }
    const lines = [];
    let total = 0;
    for (let line of traceback) {
      if (line.length > TRACEBACK_LINE_CAP) {
        line = `${line.slice(0, TRACEBACK_LINE_CAP)}… [truncated]`;
        truncated = true;
      }
      total += line.length;
      if (total > TRACEBACK_TOTAL_CAP) {
        truncated = true;
        break;
      }
      lines.push(line);
    }
    if (truncated) this.out.truncated = true;
    const msg = { type: 'error', ename: ename.slice(0, 256), evalue, traceback: lines };
    if (!this.out.event(msg, total + evalue.length, true)) {
      this.out.forceEvent({ type: 'error', ename: ename.slice(0, 256), evalue: evalue.slice(0, 1024), traceback: [] }, true);
    }
  }

  /** An exception or rejection no cell awaits (a timer's callback): reported on stderr. */
  background(what, err) {
    const { traceback } = this.describe(err, false);
    this.out.write('stderr', `${what} ${cut(traceback.join('\n'), 64 * 1024)}\n`);
  }

  userExpressions(expressions) {
    const results = {};
    for (const [name, expr] of Object.entries(expressions)) {
      try {
        const value = this.interruptible(() => vm.runInThisContext(String(expr), { filename: '<expression>', breakOnSigint: true }));
        const text = cut(this.guarded(() => display.inspect(value)), 64 * 1024);
        results[String(name)] = { status: 'ok', data: { 'text/plain': text }, metadata: {} };
      } catch (err) {
        const d = this.describe(err);
        results[String(name)] = { status: 'error', ename: d.ename, evalue: cut(d.evalue, 1024), traceback: [] };
      }
    }
    const size = encode(results).length + EVENT_OVERHEAD * Object.keys(results).length;
    if (this.out.used + size > this.out.limit) {
      this.out.truncated = true;
      return {};
    }
    this.out.used += size;
    return results;
  }

  // ---- completion and inspection

  /** The object an access path (`a.b.c`) names, without calling getters; undefined if none. */
  lookup(parts) {
    let obj = globalThis;
    for (const part of parts) {
      if (obj === null || obj === undefined) return undefined;
      let desc;
      for (let o = Object(obj); o && !desc; o = Object.getPrototypeOf(o)) desc = Object.getOwnPropertyDescriptor(o, part);
      if (!desc || !('value' in desc)) return undefined;
      obj = desc.value;
    }
    return obj;
  }

  complete(msg, id) {
    const code = typeof msg.code === 'string' ? msg.code : '';
    let cursor = Number.isInteger(msg.cursor_pos) ? msg.cursor_pos : codePoints(code);
    cursor = Math.min(Math.max(cursor, 0), codePoints(code));
    const before = code.slice(0, utf16Index(code, cursor));
    const m = /((?:[A-Za-z_$][\w$]*\s*\.\s*)*)([A-Za-z_$][\w$]*)?$/.exec(before);
    const chain = m && m[1] ? m[1].split('.').map((s) => s.trim()).filter(Boolean) : [];
    const prefix = (m && m[2]) || '';
    const names = new Set();
    const base = chain.length ? this.lookup(chain) : globalThis;
    if (base !== undefined && base !== null) {
      for (let o = Object(base), depth = 0; o && depth < 20; o = Object.getPrototypeOf(o), depth += 1) {
        for (const k of safe(() => Object.getOwnPropertyNames(o), [])) names.add(k);
      }
    }
    if (!chain.length) {
      for (const k of ['await', 'async', 'function', 'const', 'let', 'class', 'return', 'import', 'typeof', 'instanceof']) names.add(k);
    }
    let budget = REPLY_LIMIT;
    const matches = [];
    for (const k of [...names].filter((k) => k.startsWith(prefix) && /^[A-Za-z_$][\w$]*$/.test(k)).sort()) {
      budget -= 2 * k.length + 64;
      if (budget < 0) break;
      matches.push(k);
    }
    return {
      type: 'complete_reply',
      id,
      matches,
      cursor_start: cursor - codePoints(prefix),
      cursor_end: cursor,
      metadata: {},
    };
  }

  inspect(msg, id) {
    const code = typeof msg.code === 'string' ? msg.code : '';
    let cursor = Number.isInteger(msg.cursor_pos) ? msg.cursor_pos : codePoints(code);
    cursor = utf16Index(code, Math.min(Math.max(cursor, 0), codePoints(code)));
    const left = /[\w$.]*$/.exec(code.slice(0, cursor))[0];
    const right = /^[\w$]*/.exec(code.slice(cursor))[0];
    const token = (left + right).replace(/^\.+|\.+$/g, '');
    const parts = token.split('.').filter(Boolean);
    const value = parts.length ? this.lookup(parts) : undefined;
    if (value === undefined) return { type: 'inspect_reply', id, found: false, data: {}, metadata: {} };
    let text = `${token}: ${typeof value}\n${safe(() => this.guarded(() => display.inspect(value)), '')}`;
    if (typeof value === 'function' && msg.detail_level === 1) {
      text += `\n\n${safe(() => Function.prototype.toString.call(value), '')}`;
    }
    text = cut(text, REPLY_LIMIT / 2);
    return { type: 'inspect_reply', id, found: true, data: { 'text/plain': text }, metadata: {} };
  }
}

/** Sets `--max-old-space-size` to its default if it is the only flag; returns what restores it. */
function defaultHeapFlag() {
  const args = process.execArgv;
  if (!args.length || !args.every((a) => /^--max[-_]old[-_]space[-_]size=\d+$/.test(a))) return () => {};
  try {
    const v8 = require('v8');
    v8.setFlagsFromString('--max-old-space-size=0');
    return () => v8.setFlagsFromString(args[args.length - 1]);
  } catch {
    return () => {};
  }
}

function setupProcess() {
  delete process.env.PYXIS_SANDBOX_LIB;
  const workspace = process.env.PYXIS_WORKSPACE || '/workspace';
  try {
    process.chdir(workspace);
    process.env.HOME = workspace;
  } catch {
    // Outside a sandbox (the kernel's own tests): stay where started.
  }
  process.title = 'pyxis-node-kernel';
}

function main() {
  const arg = (process.argv[2] || process.env.PYXIS_KERNEL_LANGUAGE || 'javascript').toLowerCase();
  const language = arg === 'ts' || arg === 'typescript' ? 'typescript' : 'javascript';
  const fd = Number(process.env.PYXIS_KERNEL_FD || 3);
  // Set for a kernel the warm pool keeps (see `Kernel.warmUp`).
  const warmUp = process.env.PYXIS_KERNEL_WARM_UP === '1';
  delete process.env.PYXIS_KERNEL_FD;
  delete process.env.PYXIS_KERNEL_WARM_UP;
  setupProcess();
  const sock = new net.Socket({ fd, readable: true, writable: true });
  sock.setNoDelay?.(true);
  const kernel = new Kernel(sock, language);
  kernel.install();
  // The kernel lives as long as its socket; nothing else keeps the loop alive.
  util.inspect.defaultOptions.colors = false;
  kernel.start(warmUp);
}

if (require.main === module) main();

module.exports = { Kernel, KeyboardInterrupt };
