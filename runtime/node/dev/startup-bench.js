'use strict';
// Start-up bench of the kernel (not a test): starts `node --max-old-space-size=2048
// kernel.js javascript` with a socketpair on fd 3 (as the server does), waits for `ready`,
// runs one `1 + 1` cell, and reports the wall time from spawn and the child's CPU time
// (all its threads, from /proc/<pid>/task/*/schedstat: Linux only) at `ready` and at the
// cell's reply. Variants (kernel.js paths; `path|node args` to change the options, `path|`
// for none) run interleaved, in a new order each round, to cancel a shared machine's load.
//
//   PYXIS_NODE_MODULES=<runtime>/node/node_modules node dev/startup-bench.js [-n 20] [--warm] a/kernel.js b/kernel.js
//
// Medians per variant, then each variant's median difference from the first, round by round.

const { spawn } = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');
const { encode, FrameBuffer } = require('../lib/framing');

const MODULES = process.env.PYXIS_NODE_MODULES || path.join(__dirname, '..', 'node_modules');

function cpuMs(pid) {
  let ns = 0;
  for (const task of fs.readdirSync(`/proc/${pid}/task`)) {
    try {
      ns += Number(fs.readFileSync(`/proc/${pid}/task/${task}/schedstat`, 'utf8').split(' ')[0]);
    } catch {
      // A thread that just ended.
    }
  }
  return ns / 1e6;
}

function once(variant, warm, workspace) {
  const [kernel, extra] = variant.includes('|') ? variant.split('|') : [variant, '--max-old-space-size=2048'];
  const env = { PATH: process.env.PATH, PYXIS_NODE_MODULES: MODULES, PYXIS_WORKSPACE: workspace };
  if (warm) env.PYXIS_KERNEL_WARM_UP = '1';
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const child = spawn(process.execPath, [...extra.split(' ').filter(Boolean), path.resolve(kernel), 'javascript'], {
      stdio: ['ignore', 'ignore', 'inherit', 'pipe'],
      env,
    });
    const ms = () => Number(process.hrtime.bigint() - t0) / 1e6;
    const frames = new FrameBuffer();
    const row = {};
    child.on('error', reject);
    child.on('exit', () => (row.replyCpu === undefined ? reject(new Error(`${kernel} exited early`)) : resolve(row)));
    child.stdio[3].on('data', (chunk) => {
      frames.feed(chunk);
      for (let msg = frames.next(); msg; msg = frames.next()) {
        if (msg.type === 'ready') {
          row.readyWall = ms();
          row.readyCpu = cpuMs(child.pid);
          child.stdio[3].write(encode({ type: 'execute_request', id: 'a', code: '1 + 1' }));
        } else if (msg.type === 'execute_result') {
          row.value = msg.data['text/plain'];
        } else if (msg.type === 'execute_reply') {
          row.replyWall = ms();
          row.replyCpu = cpuMs(child.pid);
          if (row.value !== '2') reject(new Error(`${kernel}: 1 + 1 gave ${row.value}`));
          child.stdio[3].write(encode({ type: 'shutdown' }));
        }
      }
    });
  });
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

async function main() {
  const args = process.argv.slice(2);
  let rounds = 20;
  let warm = false;
  const variants = [];
  for (let i = 0; i < args.length; i += 1) {
    if (args[i] === '-n') rounds = Number(args[(i += 1)]);
    else if (args[i] === '--warm') warm = true;
    else variants.push(args[i]);
  }
  if (!variants.length) variants.push(path.join(__dirname, '..', 'kernel.js'));
  const workspace = fs.mkdtempSync(path.join(os.tmpdir(), 'pyxis-startup-'));
  const rows = new Map(variants.map((v) => [v, []]));
  for (const v of variants) await once(v, warm, workspace); // page cache
  for (let r = 0; r < rounds; r += 1) {
    const order = [...variants].sort(() => Math.random() - 0.5);
    for (const v of order) rows.get(v).push(await once(v, warm, workspace));
  }
  fs.rmSync(workspace, { recursive: true });
  const cols = ['readyWall', 'readyCpu', 'replyWall', 'replyCpu'];
  const fmt = (x, sign = false) => (sign && x >= 0 ? '+' : '') + x.toFixed(1);
  console.log(`medians in ms, ${rounds} rounds${warm ? ', PYXIS_KERNEL_WARM_UP=1' : ''}: ${cols.join(' ')}`);
  for (const v of variants) console.log(`${cols.map((c) => fmt(median(rows.get(v).map((row) => row[c])))).join('  ')}  ${v}`);
  const base = rows.get(variants[0]);
  for (const v of variants.slice(1)) {
    const diff = cols.map((c) => fmt(median(rows.get(v).map((row, i) => row[c] - base[i][c])), true));
    console.log(`${diff.join('  ')}  ${v} - first`);
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
