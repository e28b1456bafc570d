'use strict';
// Starts the kernel as a child with fd 3 a Unix socketpair (what the sandbox gives it) and
// speaks the framed protocol to it, as the server does.

const { spawn } = require('child_process');
const path = require('path');
const { encode, FrameBuffer } = require('../lib/framing');

const KERNEL = path.join(__dirname, '..', 'kernel.js');
const MODULES = process.env.PYXIS_NODE_MODULES || path.join(process.env.PYXIS_RUNTIME_DIR || '/opt/pyxis/runtime', 'node', 'node_modules');

class KernelClient {
  /** `nodeArgs`: options before the kernel's path (the server gives `--max-old-space-size`). */
  constructor(language = 'javascript', env = {}, nodeArgs = []) {
    this.child = spawn(process.execPath, [...nodeArgs, KERNEL, language], {
      stdio: ['ignore', 'pipe', 'pipe', 'pipe'],
      env: { PATH: process.env.PATH, PYXIS_NODE_MODULES: MODULES, PYXIS_WORKSPACE: '/nonexistent', ...env },
    });
    this.sock = this.child.stdio[3];
    this.frames = new FrameBuffer();
    this.events = [];
    this.waiters = [];
    this.closed = false;
    this.stderr = '';
    this.child.stderr.on('data', (d) => {
      this.stderr += d;
    });
    this.child.stdout.on('data', () => {});
    this.sock.on('data', (chunk) => {
      this.frames.feed(chunk);
      for (let msg = this.frames.next(); msg; msg = this.frames.next()) this.events.push(msg);
      this.wake();
    });
    this.sock.on('close', () => {
      this.closed = true;
      this.wake();
    });
    this.exited = new Promise((resolve) => this.child.on('exit', (code, signal) => resolve({ code, signal })));
    this.seq = 0;
  }

  wake() {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }

  /** The next event matching `pred`, waiting up to `ms`. */
  async next(pred = () => true, ms = 10000) {
    const deadline = Date.now() + ms;
    for (;;) {
      const i = this.events.findIndex(pred);
      if (i >= 0) return this.events.splice(i, 1)[0];
      if (this.closed) throw new Error(`kernel closed its socket; stderr: ${this.stderr}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no event in ${ms} ms; stderr: ${this.stderr}`);
      await new Promise((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  ready() {
    return this.next((e) => e.type === 'ready');
  }

  send(msg) {
    this.sock.write(encode(msg));
  }

  /** Runs a cell: `{ reply, events, stdout, stderr, results, error }`. */
  async execute(code, extra = {}, ms = 20000) {
    this.seq += 1;
    const id = `c${this.seq}`;
    this.send({ type: 'execute_request', id, code, max_output_bytes: 1024 * 1024, ...extra });
    return this.collect(id, ms);
  }

  async collect(id, ms = 20000) {
    const events = [];
    for (;;) {
      const ev = await this.next((e) => e.id === id, ms);
      if (ev.type === 'execute_reply') {
        const text = (name) => events.filter((e) => e.type === 'stream' && e.name === name).map((e) => e.text).join('');
        return {
          reply: ev,
          events,
          stdout: text('stdout'),
          stderr: text('stderr'),
          results: events.filter((e) => e.type === 'execute_result' || e.type === 'display_data'),
          error: events.find((e) => e.type === 'error'),
        };
      }
      events.push(ev);
    }
  }

  async request(msg, ms = 10000) {
    this.seq += 1;
    const id = `r${this.seq}`;
    this.send({ ...msg, id });
    return this.next((e) => e.id === id, ms);
  }

  interrupt() {
    this.child.kill('SIGINT');
  }

  async close() {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.send({ type: 'shutdown' });
      const t = setTimeout(() => this.child.kill('SIGKILL'), 2000);
      await this.exited;
      clearTimeout(t);
    }
  }
}

module.exports = { KernelClient, KERNEL, MODULES };
