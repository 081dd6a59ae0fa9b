// Two replicas converge on writes the app makes through better-sqlite3, at default settings.
'use strict'

const assert = require('node:assert/strict')
const path = require('node:path')
const { test } = require('node:test')
const Database = require('better-sqlite3')

const { METRICS_CONTENT_TYPE, openReplicated } = require('..')
const { defer, dump, startNats, tempDir } = require('./support')

const SCHEMA = `
  CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, body TEXT, stars INTEGER);
  CREATE TABLE IF NOT EXISTS kinds (k TEXT, n INTEGER, i INTEGER, r REAL, t TEXT, b BLOB, z, PRIMARY KEY (k, n));
`

/** A node: the app's own better-sqlite3 handle (SQLite defaults) and a replica opened from it. */
async function openNode(t, dir, name, nats) {
  const db = new Database(path.join(dir, `${name}.db`))
  db.exec(SCHEMA)
  // Only the NATS location is configured; everything else is the default.
  const replica = await openReplicated(db, { nats: { urls: [nats.url] } })
  defer(t, async () => {
    await replica.close()
    db.close()
  })
  return { db, replica }
}

/** Publishes what every node committed, then waits until every node applied all of it. */
async function converge(nodes) {
  const tokens = []
  for (const node of nodes) tokens.push(await node.replica.sync())
  for (const node of nodes) await node.replica.waitFor(tokens)
}

test('two replicas converge on writes made through better-sqlite3', async (t) => {
  const nats = await startNats(t)
  const dir = tempDir(t)
  const a = await openNode(t, dir, 'a', nats)
  const b = await openNode(t, dir, 'b', nats)
  assert.notEqual(a.replica.nodeId, b.replica.nodeId, 'generated node ids differ')
  assert.equal(typeof a.replica.nodeId, 'bigint')

  const insert = a.db.prepare('INSERT INTO notes (id, body, stars) VALUES (?, ?, ?)')
  a.db.transaction(() => {
    for (let i = 1; i <= 50; i++) insert.run(i, `from a ${i}`, i)
  })()
  b.db.prepare('INSERT INTO notes (id, body, stars) VALUES (?, ?, ?)').run(1000, 'from b', 0)
  await converge([a, b])
  assert.equal(dump(b.db, 'notes').length, 51)
  assert.deepEqual(dump(a.db, 'notes'), dump(b.db, 'notes'))

  // Updates and deletes on both sides.
  a.db.prepare('UPDATE notes SET stars = stars + 100 WHERE id <= 10').run()
  b.db.prepare('DELETE FROM notes WHERE id BETWEEN 40 AND 45').run()
  b.db.prepare("UPDATE notes SET body = 'edited on b' WHERE id = 1000").run()
  await converge([a, b])
  assert.deepEqual(dump(a.db, 'notes'), dump(b.db, 'notes'))
  assert.equal(dump(a.db, 'notes').length, 45)
  assert.deepEqual(a.db.prepare('SELECT body FROM notes WHERE id = 1000').get(), { body: 'edited on b' })
})

test('conflicting updates resolve to the same row on both nodes', async (t) => {
  const nats = await startNats(t)
  const dir = tempDir(t)
  const a = await openNode(t, dir, 'a', nats)
  const b = await openNode(t, dir, 'b', nats)
  a.db.prepare("INSERT INTO notes VALUES (1, 'original', 0), (2, 'original', 0), (3, 'original', 0)").run()
  await converge([a, b])

  // Both nodes change the same rows before hearing from each other; one also deletes a row the other edits.
  for (let round = 0; round < 5; round++) {
    a.db.prepare('UPDATE notes SET body = ?, stars = ? WHERE id = 1').run(`a${round}`, round)
    b.db.prepare('UPDATE notes SET body = ?, stars = ? WHERE id = 1').run(`b${round}`, -round)
  }
  a.db.prepare("UPDATE notes SET body = 'a wins?' WHERE id = 2").run()
  b.db.prepare("UPDATE notes SET body = 'b wins?' WHERE id = 2").run()
  a.db.prepare("UPDATE notes SET body = 'edited' WHERE id = 3").run()
  b.db.prepare('DELETE FROM notes WHERE id = 3').run()
  await converge([a, b])

  const rowsA = dump(a.db, 'notes')
  assert.deepEqual(rowsA, dump(b.db, 'notes'))
  const row1 = a.db.prepare('SELECT body FROM notes WHERE id = 1').get()
  assert.ok(['a4', 'b4'].includes(row1.body), `row 1 holds one node's last write, not ${row1.body}`)
  const row2 = a.db.prepare('SELECT body FROM notes WHERE id = 2').get()
  assert.ok(['a wins?', 'b wins?'].includes(row2.body))
})

test('every SQLite type round-trips exactly, including 64-bit integers', async (t) => {
  const nats = await startNats(t)
  const dir = tempDir(t)
  const a = await openNode(t, dir, 'a', nats)
  const b = await openNode(t, dir, 'b', nats)
  const insert = a.db.prepare('INSERT INTO kinds VALUES (?, ?, ?, ?, ?, ?, ?)').safeIntegers(true)
  insert.run('max', 1n, 9223372036854775807n, 0.1, 'héllo ✓', Buffer.from([0, 1, 2, 255]), null)
  insert.run('min', 2n, -9223372036854775808n, -1e308, '', Buffer.alloc(0), 2n ** 53n + 1n)
  insert.run('nan-free', 3n, 0n, 5e-324, "quote ' \" and \n newline", Buffer.alloc(70_000, 7), 1.5)
  await converge([a, b])
  assert.deepEqual(dump(b.db, 'kinds'), dump(a.db, 'kinds'))
  const typed = b.db.prepare("SELECT typeof(z) z, typeof(r) r, typeof(b) b FROM kinds WHERE k = 'min'").get()
  assert.deepEqual(typed, { z: 'integer', r: 'real', b: 'blob' })
})

test('metrics() on the receiving node count the changes it applied, labelled with its node id', async (t) => {
  const nats = await startNats(t)
  const dir = tempDir(t)
  const a = await openNode(t, dir, 'a', nats)
  const b = await openNode(t, dir, 'b', nats)
  a.db.prepare("INSERT INTO notes (id, body) VALUES (1, 'metered'), (2, 'metered'), (3, 'metered')").run()
  await b.replica.waitFor(await a.replica.sync())

  const applied = (await b.replica.status()).appliedRows
  assert.ok(applied >= 3, `applied ${applied}`)
  const text = await b.replica.metrics()
  assert.equal(typeof text, 'string')
  assert.ok(
    text.split('\n').includes(`harmonylite_changes_applied_total{node_id="${b.replica.nodeId}"} ${applied}`),
    text,
  )
  assert.ok(text.endsWith('# EOF\n'), text)
  // The content type an app serves this text with, exported from the core.
  assert.equal(METRICS_CONTENT_TYPE, 'application/openmetrics-text; version=1.0.0; charset=utf-8')
})
