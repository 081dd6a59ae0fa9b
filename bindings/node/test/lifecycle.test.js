// Process lifetime and the event loop: a script that closes its replicas exits by itself, live
// subscriptions do not hold the process, and waiting on NATS never blocks the event loop.
'use strict'

const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')
const { test } = require('node:test')
const Database = require('better-sqlite3')

const { openReplicated } = require('..')
const { defer, linkPackages, runNode, startNats, tempDir, waitUntil } = require('./support')

/** How long a script may take to exit after it closed its replica. */
const EXIT_WITHIN_MS = 5_000

const SCRIPT = `
const Database = require('better-sqlite3')
const { openReplicated } = require('harmonylite')
const mode = process.argv[2]
async function main() {
  const db = new Database('app.db')
  db.exec('CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)')
  const replica = await openReplicated(db, { nats: { urls: [process.env.NATS_URL] } })
  const seen = []
  replica.onChange((event) => seen.push(event))
  const stream = replica.changes()
  const next = stream.next() // left pending on purpose: close() must end it
  db.prepare('INSERT INTO t (v) VALUES (?)').run('hello')
  await replica.sync()
  if (mode === 'dispose') await replica[Symbol.asyncDispose]()
  else await replica.close()
  await next
  db.close()
  console.log('closed at', Date.now())
}
main().catch((err) => { console.error(err); process.exit(1) })
`

for (const mode of ['close', 'dispose']) {
  test(`a script that opens, writes and closes (${mode}) exits on its own`, async (t) => {
    const nats = await startNats(t)
    const dir = tempDir(t)
    linkPackages(dir)
    fs.writeFileSync(path.join(dir, 'script.js'), SCRIPT)
    const result = await runNode('script.js', { cwd: dir, env: { NATS_URL: nats.url }, args: [mode] })
    const exitedAt = Date.now()
    assert.equal(result.code, 0, result.stderr)
    const closedAt = Number(result.stdout.match(/closed at (\d+)/)?.[1])
    assert.ok(closedAt > 0, result.stdout)
    assert.ok(exitedAt - closedAt < EXIT_WITHIN_MS, `exited ${exitedAt - closedAt} ms after close()`)
  })
}

test('a live onChange subscription alone does not keep the process alive', async (t) => {
  const nats = await startNats(t)
  const dir = tempDir(t)
  linkPackages(dir)
  // Opens, subscribes, then returns without closing: nothing JavaScript waits on is left.
  fs.writeFileSync(
    path.join(dir, 'script.js'),
    `require('harmonylite').openReplicated('app.db', { nats: { urls: [process.env.NATS_URL] } })
       .then((replica) => { replica.onChange(() => {}); console.log('subscribed at', Date.now()) })`,
  )
  new Database(path.join(dir, 'app.db')).close()
  const result = await runNode('script.js', { cwd: dir, env: { NATS_URL: nats.url } })
  const exitedAt = Date.now()
  assert.equal(result.code, 0, result.stderr)
  const subscribedAt = Number(result.stdout.match(/subscribed at (\d+)/)?.[1])
  assert.ok(exitedAt - subscribedAt < EXIT_WITHIN_MS, `exited ${exitedAt - subscribedAt} ms after subscribing`)
})

test('close() is idempotent and ends subscriptions', async (t) => {
  const nats = await startNats(t)
  const dir = tempDir(t)
  const db = new Database(path.join(dir, 'app.db'))
  db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY)')
  defer(t, () => db.close())
  const replica = await openReplicated(db, { nats: { urls: [nats.url] } })
  const subscription = replica.onChange(() => {})
  await Promise.all([replica.close(), replica.close()])
  await replica.close()
  subscription.unsubscribe()
  await replica[Symbol.asyncDispose]()
})

test('waiting on an unreachable NATS never blocks the event loop', async (t) => {
  const nats = await startNats(t)
  const dir = tempDir(t)
  const db = new Database(path.join(dir, 'app.db'))
  db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)')
  defer(t, () => db.close())
  const replica = await openReplicated(db, { nats: { urls: [nats.url] } })
  defer(t, () => replica.close())
  await replica.waitReady()
  await nats.stop()
  await waitUntil('the replica to see NATS down', async () => (await replica.status()).connection !== 'connected')

  // Measure the longest gap between timer ticks while sync() waits 1.5 s for acknowledgements
  // that cannot come: a blocking call would show up as a gap of about that length.
  let last = Date.now()
  let longestGap = 0
  const ticker = setInterval(() => {
    const now = Date.now()
    longestGap = Math.max(longestGap, now - last)
    last = now
  }, 5)
  db.prepare("INSERT INTO t (v) VALUES ('queued while NATS is down')").run()
  await assert.rejects(replica.sync(1500), { code: 'TIMEOUT' })
  clearInterval(ticker)
  assert.ok(longestGap < 1000, `the event loop stalled for ${longestGap} ms`)

  // The change was kept and goes out once NATS is back.
  await nats.start()
  const token = await replica.sync(60_000)
  assert.match(token, /^0:\d+$/)
})

test('close() settles while NATS is unreachable, so the process can end', async (t) => {
  const nats = await startNats(t)
  const dir = tempDir(t)
  const db = new Database(path.join(dir, 'app.db'))
  db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)')
  defer(t, () => db.close())
  const replica = await openReplicated(db, { nats: { urls: [nats.url] } })
  await replica.waitReady()
  await nats.stop()
  db.prepare("INSERT INTO t (v) VALUES ('kept for the next open')").run()
  const started = Date.now()
  // The engine cannot flush to an unreachable server: close() gives up waiting with TIMEOUT.
  await replica.close().catch((err) => assert.equal(err.code, 'TIMEOUT'))
  assert.ok(Date.now() - started < 30_000)
  await replica.close()
  await assert.rejects(replica.status(), { code: 'CLOSED' })
})
