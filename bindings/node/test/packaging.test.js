// `npm pack` produces a tarball with the prebuilt addon that installs and runs without a compiler.
'use strict'

const assert = require('node:assert/strict')
const { execFile } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')
const { test } = require('node:test')
const { promisify } = require('node:util')
const Database = require('better-sqlite3')

const { PACKAGE_DIR, runNode, startNats, tempDir } = require('./support')

const run = promisify(execFile)
const ADDON = 'harmonylite.linux-x64-gnu.node'

test('npm pack carries a prebuilt addon that installs without a compiler', async (t) => {
  const dir = tempDir(t)
  const { stdout } = await run('npm', ['pack', '--json', '--pack-destination', dir], {
    cwd: PACKAGE_DIR,
    maxBuffer: 16 * 1024 * 1024,
  })
  const [packed] = JSON.parse(stdout)
  const files = packed.files.map((f) => f.path).sort()
  for (const file of [ADDON, 'index.d.ts', 'index.js', 'package.json', 'README.md', 'scripts/install.js']) {
    assert.ok(files.includes(file), `${file} is in the tarball`)
  }
  assert.ok(!files.some((f) => f.startsWith('src/') || f.startsWith('test/')), 'no sources or tests')

  const app = path.join(dir, 'app')
  fs.mkdirSync(app)
  fs.writeFileSync(path.join(app, 'package.json'), '{ "name": "app", "version": "1.0.0", "private": true }\n')
  // No cargo on PATH, and any attempt to run one fails: the install must use the prebuilt addon.
  const env = { ...process.env, PATH: `${path.dirname(process.execPath)}:/usr/bin:/bin`, CARGO: '/bin/false' }
  const install = await run(
    'npm',
    ['install', '--offline', '--no-audit', '--no-fund', '--foreground-scripts', path.join(dir, packed.filename)],
    { cwd: app, env },
  )
  assert.match(install.stdout + install.stderr, /using the prebuilt addon/)
  const installed = path.join(app, 'node_modules', 'harmonylite')
  assert.ok(!fs.lstatSync(installed).isSymbolicLink(), 'a real copy, not a link to the checkout')
  assert.ok(fs.existsSync(path.join(installed, ADDON)))

  // The installed package works: open a replica on a database, read its status, close.
  const nats = await startNats(t)
  const db = path.join(app, 'app.db')
  const handle = new Database(db)
  handle.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)')
  handle.close()
  fs.writeFileSync(
    path.join(app, 'check.js'),
    `const { openReplicated } = require('harmonylite')
     openReplicated('app.db', { nats: { urls: [process.env.NATS_URL] } }).then(async (replica) => {
       console.log(JSON.stringify({ path: require.resolve('harmonylite'), tables: (await replica.status()).replicatedTables }))
       await replica.close()
     })`,
  )
  const result = await runNode('check.js', { cwd: app, env: { NATS_URL: nats.url } })
  assert.equal(result.code, 0, result.stderr)
  const report = JSON.parse(result.stdout)
  assert.equal(report.path, path.join(installed, 'index.js'))
  assert.deepEqual(report.tables, ['t'])
})
