// better-sqlite3 and the engine each carry their own copy of SQLite, in one process, on one file.
// Their locks must still exclude each other (the core's lock shim, core/src/sqlite_locks, ADR 0012): the
// app writing while the applier writes, while the engine builds snapshots (a second engine connection)
// and while a replica closes and reopens must never corrupt the database. Without the shim these
// scenarios end in "database disk image is malformed" (or SIGBUS).
'use strict'

const assert = require('node:assert/strict')
const path = require('node:path')
const { test } = require('node:test')
const Database = require('better-sqlite3')

const { openReplicated } = require('..')
const { defer, startNats, tempDir } = require('./support')

const BLOB = Buffer.alloc(2000, 1)

function openDb(t, dir, name) {
  const db = new Database(path.join(dir, `${name}.db`))
  db.exec('CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, src TEXT, v BLOB)')
  defer(t, () => db.close())
  return db
}

function assertIntact(db, name) {
  assert.equal(db.pragma('integrity_check', { simple: true }), 'ok', `${name} is intact`)
}

test('the app and the applier write one file at the same time without corrupting it', async (t) => {
  const nats = await startNats(t)
  const dir = tempDir(t)
  const cfg = { nats: { urls: [nats.url] } }
  const a = openDb(t, dir, 'a')
  const b = openDb(t, dir, 'b')
  const ra = await openReplicated(a, cfg)
  defer(t, () => ra.close())
  const rb = await openReplicated(b, cfg)
  defer(t, () => rb.close())

  // Both apps write in bursts while each node applies the other's stream.
  const insertA = a.prepare('INSERT INTO t VALUES (?, ?, ?)')
  const insertB = b.prepare('INSERT INTO t VALUES (?, ?, ?)')
  for (let round = 0; round < 200; round++) {
    a.transaction(() => {
      for (let i = 0; i < 50; i++) insertA.run(round * 50 + i, 'a', BLOB)
    })()
    for (let i = 0; i < 50; i++) insertB.run(1e7 + round * 50 + i, 'b', BLOB)
    if (round % 20 === 0) await new Promise((resolve) => setImmediate(resolve))
  }
  const tokens = [await ra.sync(60_000), await rb.sync(60_000)]
  await ra.waitFor(tokens, 60_000)
  await rb.waitFor(tokens, 60_000)
  assertIntact(a, 'a')
  assertIntact(b, 'b')
  const count = (db) => db.prepare('SELECT count(*) AS n FROM t').get().n
  assert.equal(count(a), 20_000)
  assert.equal(count(b), 20_000)
})

test('a replica closes and reopens while the app keeps writing, without corrupting the file', async (t) => {
  const nats = await startNats(t)
  const dir = tempDir(t)
  const cfg = { nats: { urls: [nats.url] } }
  const a = openDb(t, dir, 'a')
  const b = openDb(t, dir, 'b')
  // In WAL mode from the start: switching a file to WAL needs it exclusively, and the engine's
  // open does not yet retry that while the app is writing (reported for core/).
  b.pragma('journal_mode = WAL')
  const ra = await openReplicated(a, cfg)
  defer(t, () => ra.close())

  // The app writes to b every few milliseconds for the whole test.
  const insertB = b.prepare('INSERT INTO t VALUES (?, ?, ?)')
  let nextB = 1e7
  let writing = true
  const writer = (async () => {
    while (writing) {
      b.transaction(() => {
        for (let i = 0; i < 20; i++) insertB.run(nextB++, 'b', BLOB)
      })()
      await new Promise((resolve) => setTimeout(resolve, 2))
    }
  })()
  defer(t, () => {
    writing = false
    return writer
  })

  const insertA = a.prepare('INSERT INTO t VALUES (?, ?, ?)')
  let nextA = 0
  for (let cycle = 0; cycle < 8; cycle++) {
    const rb = await openReplicated(b, cfg)
    a.transaction(() => {
      for (let i = 0; i < 500; i++) insertA.run(nextA++, 'a', BLOB)
    })()
    await rb.waitFor(await ra.sync(60_000), 60_000)
    await rb.close()
  }
  writing = false
  await writer
  assertIntact(b, 'b')
  assert.equal(b.prepare("SELECT count(*) AS n FROM t WHERE src = 'a'").get().n, nextA)
})

test('an app with a connection per transaction writes while the engine applies and builds snapshots', async (t) => {
  const nats = await startNats(t)
  const dir = tempDir(t)
  const cfg = { nats: { urls: [nats.url] }, snapshot: { store: 'dir', dir: { path: path.join(dir, 'snapshots') } } }
  const a = openDb(t, dir, 'a')
  const b = openDb(t, dir, 'b')
  a.pragma('journal_mode = WAL')
  b.pragma('journal_mode = WAL')
  const ra = await openReplicated(a, cfg)
  defer(t, () => ra.close())
  const rb = await openReplicated(b, cfg)
  defer(t, () => rb.close())

  // A web app's pattern: open, one transaction, close; now and then a TRUNCATE checkpoint.
  const ids = { a: [], b: [] }
  let next = 0
  const writeOnce = (name, tx) => {
    const db = new Database(path.join(dir, `${name}.db`), { timeout: 30_000 })
    try {
      const insert = db.prepare('INSERT INTO t VALUES (?, ?, ?)')
      const batch = []
      db.transaction(() => {
        for (let i = 0; i < 20; i++) {
          const id = (name === 'a' ? 0 : 1e7) + next++
          insert.run(id, name, BLOB.subarray(0, 600))
          batch.push(id)
        }
      })()
      ids[name].push(...batch)
      if (tx % 25 === 24) db.pragma('wal_checkpoint(TRUNCATE)')
    } finally {
      db.close()
    }
  }
  let snapshots = 0
  let tx = 0
  for (let round = 0; round < 4; round++) {
    // The snapshot runs on the engine's threads (a read-only connection, VACUUM INTO) while both apps
    // write; the writes yield to the event loop so that the promise can settle.
    let done = false
    const saved = ra.saveSnapshot().then((manifest) => {
      done = true
      if (manifest) snapshots++
    })
    let written = 0
    while (!done || written < 30) {
      writeOnce('a', tx)
      writeOnce('b', tx)
      tx++
      written++
      await new Promise((resolve) => setImmediate(resolve))
    }
    await saved
  }
  const tokens = [await ra.sync(60_000), await rb.sync(60_000)]
  await ra.waitFor(tokens, 60_000)
  await rb.waitFor(tokens, 60_000)
  assertIntact(a, 'a')
  assertIntact(b, 'b')
  assert.ok(snapshots >= 1, 'snapshots were built during the writes')
  const expected = [...ids.a, ...ids.b].sort((x, y) => x - y)
  for (const db of [a, b]) {
    const present = db.prepare('SELECT id FROM t ORDER BY id').pluck().all()
    assert.deepEqual(present, expected, 'every ledger row on every node')
  }
})
