// onChange and changes() deliver remote changes; a throwing callback is reported and does not stop delivery.
'use strict'

const assert = require('node:assert/strict')
const path = require('node:path')
const { test } = require('node:test')
const Database = require('better-sqlite3')

const { openReplicated } = require('..')
const { defer, startNats, tempDir, waitUntil } = require('./support')

async function twoNodes(t) {
  const nats = await startNats(t)
  const dir = tempDir(t)
  const nodes = []
  for (const [name, nodeId] of [['a', 1], ['b', 2]]) {
    const db = new Database(path.join(dir, `${name}.db`))
    db.exec('CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, name TEXT)')
    db.exec('CREATE TABLE IF NOT EXISTS tags (owner TEXT, n REAL, label TEXT, PRIMARY KEY (owner, n))')
    const replica = await openReplicated(db, { nodeId, nats: { urls: [nats.url] } })
    defer(t, async () => {
      await replica.close()
      db.close()
    })
    nodes.push({ db, replica })
  }
  return nodes
}

/** Collects process warnings while the test runs. */
function captureWarnings(t) {
  const warnings = []
  const listener = (warning) => warnings.push(warning)
  process.on('warning', listener)
  defer(t, () => process.off('warning', listener))
  return warnings
}

test('onChange delivers remote changes with typed keys', async (t) => {
  const [a, b] = await twoNodes(t)
  const seen = []
  const subscription = b.replica.onChange((event) => seen.push(event))
  a.db.prepare("INSERT INTO items VALUES (1, 'one')").run()
  a.db.prepare("INSERT INTO tags VALUES ('x', 2.5, 'half')").run()
  a.db.prepare("UPDATE items SET name = 'uno' WHERE id = 1").run()
  a.db.prepare('DELETE FROM items WHERE id = 1').run()
  await b.replica.waitFor(await a.replica.sync())
  // Changes to one row made before they are sent may travel (and arrive) as one, or not at all: a row
  // created and deleted before it was stamped never existed for the other nodes, so nothing is sent.
  await waitUntil('the tag insert, and the item delete if the item travelled', () => {
    const items = seen.filter((e) => e.table === 'items')
    return seen.some((e) => e.table === 'tags') && (items.length === 0 || items.at(-1).op === 'delete')
  })
  assert.equal(b.db.prepare('SELECT count(*) FROM items').pluck().get(), 0)
  subscription.unsubscribe()

  const remote = seen.filter((e) => !e.local)
  assert.equal(remote.length, seen.length, 'b made no change of its own')
  for (const event of remote) {
    assert.equal(event.originNode, 1n)
    assert.equal(typeof event.hlc, 'bigint')
    assert.ok(event.hlc > 2n ** 53n, 'a clock stamp exceeds 2^53 and is exact')
  }
  const tag = remote.find((e) => e.table === 'tags')
  assert.deepEqual(tag.pk, ['x', 2.5])
  assert.equal(tag.op, 'insert')
  const items = remote.filter((e) => e.table === 'items')
  for (const item of items) assert.deepEqual(item.pk, [1n])
})

test('local changes are reported as local', async (t) => {
  const [a] = await twoNodes(t)
  const seen = []
  a.replica.onChange((event) => seen.push(event))
  a.db.prepare("INSERT INTO items VALUES (7, 'mine')").run()
  await a.replica.sync()
  await waitUntil('the local event', () => seen.length >= 1)
  assert.equal(seen[0].local, true)
  assert.equal(seen[0].originNode, a.replica.nodeId)
})

test('a throwing callback is reported and later events still arrive', async (t) => {
  const [a, b] = await twoNodes(t)
  const warnings = captureWarnings(t)
  const delivered = []
  b.replica.onChange((event) => {
    delivered.push(event.pk[0])
    if (event.pk[0] === 1n) throw new TypeError('callback bug on row 1')
  })
  b.replica.onChange(async (event) => {
    if (event.pk[0] === 2n) throw new RangeError('async callback bug on row 2')
  })
  for (let id = 1; id <= 3; id++) {
    a.db.prepare('INSERT INTO items VALUES (?, ?)').run(id, `row ${id}`)
    // One row per message, so the throw happens between deliveries.
    await b.replica.waitFor(await a.replica.sync())
  }
  await waitUntil('rows 1..3 delivered', () => delivered.length >= 3)
  assert.deepEqual(delivered, [1n, 2n, 3n])
  await waitUntil('two warnings', () => warnings.length >= 2)
  const names = warnings.map((w) => w.name)
  assert.deepEqual(names, ['HarmonyLiteCallbackError', 'HarmonyLiteCallbackError'])
  const causes = warnings.map((w) => w.cause)
  assert.ok(causes.some((c) => c instanceof TypeError && c.message === 'callback bug on row 1'))
  assert.ok(causes.some((c) => c instanceof RangeError && c.message === 'async callback bug on row 2'))
  assert.ok(warnings.some((w) => /callback bug on row 1/.test(w.message)), 'the message says what was thrown')
})

test('unsubscribe stops a callback; other subscriptions go on', async (t) => {
  const [a, b] = await twoNodes(t)
  const first = []
  const second = []
  const subscription = b.replica.onChange((event) => first.push(event))
  b.replica.onChange((event) => second.push(event))
  a.db.prepare("INSERT INTO items VALUES (1, 'before')").run()
  await b.replica.waitFor(await a.replica.sync())
  await waitUntil('both callbacks', () => first.length === 1 && second.length === 1)
  subscription.unsubscribe()
  subscription.unsubscribe()
  a.db.prepare("INSERT INTO items VALUES (2, 'after')").run()
  await b.replica.waitFor(await a.replica.sync())
  await waitUntil('the second callback', () => second.length === 2)
  assert.equal(first.length, 1)
})

test('changes() is an async iterator of remote changes that ends on break', async (t) => {
  const [a, b] = await twoNodes(t)
  const stream = b.replica.changes()
  for (let id = 1; id <= 5; id++) a.db.prepare('INSERT INTO items VALUES (?, ?)').run(id, `n${id}`)
  await a.replica.sync()
  const ids = []
  for await (const event of stream) {
    assert.equal(event.table, 'items')
    ids.push(event.pk[0])
    if (ids.length === 5) break
  }
  assert.deepEqual(ids, [1n, 2n, 3n, 4n, 5n])
  assert.deepEqual(await stream.next(), { done: true })
})

test('changes() ends when the replica closes', async (t) => {
  const [a, b] = await twoNodes(t)
  const stream = b.replica.changes()
  const pending = stream.next()
  a.db.prepare("INSERT INTO items VALUES (1, 'x')").run()
  await a.replica.sync()
  const first = await pending
  assert.equal(first.done, false)
  const waiting = stream.next()
  await b.replica.close()
  assert.deepEqual(await waiting, { done: true })
  assert.throws(() => b.replica.changes(), { code: 'CLOSED' })
  assert.throws(() => b.replica.onChange(() => {}), { code: 'CLOSED' })
})
