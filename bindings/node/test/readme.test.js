// The README's quickstart and conflicts example run as written (on the embedded default, with the pinned nats-server).
'use strict'

const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')
const { test } = require('node:test')

const { PACKAGE_DIR, linkPackages, natsServerBinary, runNode, tempDir } = require('./support')

/** The first ```js block after the `heading`. */
function snippet(heading) {
  const readme = fs.readFileSync(path.join(PACKAGE_DIR, 'README.md'), 'utf8')
  const at = readme.indexOf(heading)
  assert.ok(at >= 0, `README.md has a ${heading} section`)
  const block = readme.slice(at).match(/```js\n([\s\S]*?)```/)
  assert.ok(block, `README.md has a \`\`\`js block under ${heading}`)
  return block[1]
}

/** Runs `code` as a script of an app that installed harmonylite and better-sqlite3. */
async function runAsApp(t, code) {
  const dir = tempDir(t)
  linkPackages(dir)
  fs.writeFileSync(path.join(dir, 'snippet.js'), code)
  const binary = natsServerBinary()
  const env = path.isAbsolute(binary) ? { HARMONYLITE_NATS_SERVER: binary } : {}
  const result = await runNode('snippet.js', { cwd: dir, env })
  assert.equal(result.code, 0, `stdout:\n${result.stdout}\nstderr:\n${result.stderr}`)
  return { dir, result }
}

test('the README quickstart runs as written: two replicas converge, and it exits by itself', async (t) => {
  const { dir, result } = await runAsApp(t, snippet('## Quickstart'))
  assert.match(
    result.stdout,
    /^converged: \[\n? *\{ id: 1, body: 'written on node 1' \},\n? *\{ id: 2, body: 'written on node 2' \}\n? *\]$/m,
  )
  assert.match(result.stdout, /^node 1 published [1-9]\d* row\(s\)$/m)
  assert.ok(fs.existsSync(path.join(dir, 'node1.db')) && fs.existsSync(path.join(dir, 'node2.db')))
})

test('the README conflicts example runs as written and exits by itself', async (t) => {
  const { result } = await runAsApp(t, snippet('## Conflicts'))
  assert.match(result.stdout, /^node 1: change_lost doc \[ 1n \] \{ rating: 2n \}$/m)
  assert.match(result.stdout, /^node 2: (values_overwritten|change_lost) \[ 'rating' \] kept \{ rating: 1n \}$/m)
})
