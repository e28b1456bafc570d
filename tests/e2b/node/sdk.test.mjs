// E2B's JavaScript SDK (@e2b/code-interpreter, pinned in package-lock.json), unmodified,
// against a Pyxis started by the Python suite (tests/e2b/test_node.py), which sets
// E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY as an E2B user would.
import assert from 'node:assert/strict'
import { test } from 'node:test'

import { CommandExitError, Sandbox, SandboxError } from '@e2b/code-interpreter'

test('create, runCode with shared state, errors, results', async () => {
  const sbx = await Sandbox.create({ metadata: { suite: 'e2b-node' } })
  try {
    const first = await sbx.runCode('x = 20\nprint("set")')
    assert.deepEqual(first.logs.stdout, ['set\n'])
    const second = await sbx.runCode('x + 22')
    assert.equal(second.text, '42')
    const failed = await sbx.runCode('1 / 0')
    assert.equal(failed.error.name, 'ZeroDivisionError')
    assert.equal(failed.error.value, 'division by zero')
    assert.match(failed.error.traceback, /ZeroDivisionError/)
    const seen = []
    await sbx.runCode('import time\nprint("a", flush=True)\ntime.sleep(1)\nprint("b")', {
      onStdout: (m) => seen.push([Date.now(), m.line]),
    })
    assert.deepEqual(seen.map(([, l]) => l), ['a\n', 'b\n'])
    assert.ok(seen[1][0] - seen[0][0] >= 800, 'the first line arrived before the cell ended')
    const listed = await Sandbox.list({ query: { metadata: { suite: 'e2b-node' } } }).nextItems()
    assert.deepEqual(listed.map((s) => s.sandboxId), [sbx.sandboxId])
  } finally {
    await sbx.kill()
  }
})

test('files: write, read, list a binary file', async () => {
  const sbx = await Sandbox.create()
  try {
    const blob = new Uint8Array(4096).map((_, i) => i % 256)
    const info = await sbx.files.write('/home/user/bin/blob.bin', blob.buffer)
    assert.equal(info.path, '/home/user/bin/blob.bin')
    const back = await sbx.files.read('/home/user/bin/blob.bin', { format: 'bytes' })
    assert.deepEqual(Buffer.from(back), Buffer.from(blob))
    const entries = await sbx.files.list('/home/user/bin')
    assert.deepEqual(
      entries.map((e) => [e.name, e.type, e.size]),
      [['blob.bin', 'file', 4096]],
    )
    await sbx.files.write('/home/user/t.txt', 'text ✓')
    assert.equal(await sbx.files.read('/home/user/t.txt'), 'text ✓')
    assert.equal((await sbx.runCode("open('t.txt').read()")).text, 'text ✓')
    await assert.rejects(sbx.files.read('/etc/passwd'), SandboxError)
  } finally {
    await sbx.kill()
  }
})

test('commands: exit code, background and kill', async () => {
  const sbx = await Sandbox.create()
  try {
    const ok = await sbx.commands.run('echo hello from bash')
    assert.equal(ok.exitCode, 0)
    assert.equal(ok.stdout, 'hello from bash\n')
    await assert.rejects(sbx.commands.run('echo hi; exit 3'), (err) => {
      assert.ok(err instanceof CommandExitError)
      assert.equal(err.exitCode, 3)
      assert.equal(err.stdout, 'hi\n')
      return true
    })
    const bg = await sbx.commands.run('sleep 30', { background: true })
    assert.ok(bg.pid > 0)
    const running = await sbx.commands.list()
    assert.ok(running.some((p) => p.pid === bg.pid))
    assert.equal(await bg.kill(), true)
    await assert.rejects(bg.wait(), CommandExitError)
  } finally {
    await sbx.kill()
  }
})

test('kill, then calls fail as for a gone sandbox', async () => {
  const sbx = await Sandbox.create()
  assert.equal(await sbx.isRunning(), true)
  await sbx.kill()
  assert.equal(await sbx.isRunning(), false)
  await assert.rejects(sbx.runCode('1'), SandboxError)
  await assert.rejects(sbx.files.read('/home/user/x'), SandboxError)
  assert.equal(await Sandbox.kill(sbx.sandboxId), false)
})
