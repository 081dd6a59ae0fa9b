// One knex node of the acceptance suite: opens knex and the replica with the guide's db.js (written into
// this node's folder by the test), then takes commands, one JSON object per line on stdin, and answers
// each with one JSON line on stdout. Every committed write is appended to the journal (the ledger) after
// its commit returned.
'use strict'

const fs = require('node:fs')
const path = require('node:path')
const readline = require('node:readline')

const dir = process.cwd()
const { open, close } = require(path.join(dir, 'db.js'))
const journal = fs.openSync(path.join(dir, 'journal.jsonl'), 'a')

function record (op, label, values = {}) {
  fs.writeSync(journal, JSON.stringify({ at: Date.now() / 1000, op, table: 'notes', label_column: 'ref', label, values }) + '\n')
}

const plain = (value) => JSON.parse(JSON.stringify(value, (_, v) => (typeof v === 'bigint' ? Number(v) : v)))

let app
let writer = null

const commands = {
  async migrate () {
    const [batch, log] = await app.db.migrate.latest()
    return { batch, applied: log }
  },
  async insert ({ prefix, count }) {
    for (let i = 0; i < count; i++) {
      const ref = `${prefix}-${i}`
      await app.db('notes').insert({ ref, body: `note ${ref}`, votes: i })
      record('created', ref, { body: `note ${ref}`, votes: i })
    }
    return { inserted: count }
  },
  async update ({ prefix, count }) {
    const rows = await app.db('notes').where('ref', 'like', `${prefix}-%`).orderBy('id').limit(count)
    for (const row of rows) {
      await app.db('notes').where({ ref: row.ref }).update({ votes: row.votes + 100 })
      record('updated', row.ref, { votes: row.votes + 100 })
    }
    return { updated: rows.length }
  },
  async delete ({ prefix, count }) {
    const rows = await app.db('notes').where('ref', 'like', `${prefix}-%`).orderBy('id', 'desc').limit(count)
    for (const row of rows) {
      await app.db('notes').where({ ref: row.ref }).del()
      record('deleted', row.ref)
    }
    return { deleted: rows.length }
  },
  async writer ({ prefix, paceMs }) {
    let i = 0
    let stop = false
    const done = (async () => {
      while (!stop) {
        const ref = `${prefix}-${i}`
        await app.db('notes').insert({ ref, body: `note ${ref}`, votes: i })
        record('created', ref, { body: `note ${ref}`, votes: i })
        i++
        await new Promise((resolve) => setTimeout(resolve, paceMs))
      }
      return i
    })()
    writer = { done, stop: () => { stop = true } }
    return { started: true }
  },
  async stopWriter () {
    writer.stop()
    const written = await writer.done
    writer = null
    return { written }
  },
  async status () {
    return plain(await app.replica.status())
  },
  async close () {
    await close(app)
    return { closed: true }
  },
}

async function main () {
  app = await open(JSON.parse(process.argv[2]))
  console.log(JSON.stringify({ ready: true }))
  const lines = readline.createInterface({ input: process.stdin })
  for await (const line of lines) {
    const { cmd, ...args } = JSON.parse(line)
    try {
      const result = await commands[cmd](args)
      console.log(JSON.stringify({ ok: true, ...result }))
    } catch (err) {
      console.log(JSON.stringify({ ok: false, error: String(err && err.stack || err), code: err && err.code }))
    }
    if (cmd === 'close') break
  }
  process.exit(0)
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
