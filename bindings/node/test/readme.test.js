// The README's quickstart runs as written (on the embedded default, with the pinned nats-server).
'use strict'

const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')
const { test } = require('node:test')

const { PACKAGE_DIR, linkPackages, natsServerBinary, runNode, tempDir } = require('./support')

/** The first ```js block after the "## Quickstart" heading. */
function quickstart() {
  const readme = fs.readFileSync(path.join(PACKAGE_DIR, 'README.md'), 'utf8')
  const section = readme.slice(readme.indexOf('## Quickstart'))
  const block = section.match(/```js\n([\s\S]*?)```/)
  assert.ok(block, 'README.md has a ```js block under ## Quickstart')
  return block[1]
}

test('the README quickstart runs as written and exits by itself', async (t) => {
  const dir = tempDir(t)
  linkPackages(dir)
  fs.writeFileSync(path.join(dir, 'quickstart.js'), quickstart())
  const binary = natsServerBinary()
  const env = path.isAbsolute(binary) ? { HARMONYLITE_NATS_SERVER: binary } : {}
  const result = await runNode('quickstart.js', { cwd: dir, env })
  assert.equal(result.code, 0, `stdout:\n${result.stdout}\nstderr:\n${result.stderr}`)
  assert.match(result.stdout, /published up to 0:\d+ - \d+ row\(s\) so far/)
  assert.ok(fs.existsSync(path.join(dir, 'app.db')))
})
