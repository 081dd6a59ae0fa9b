// Test harness: real nats-server processes on ports they pick, a temp folder per test, no fixed sleeps
// (conditions are polled with a generous timeout). Every process a test starts, it stops.
'use strict'

const { spawn } = require('node:child_process')
const fs = require('node:fs')
const http = require('node:http')
const os = require('node:os')
const path = require('node:path')

const PACKAGE_DIR = path.resolve(__dirname, '..')
const REPO_DIR = path.resolve(PACKAGE_DIR, '..', '..')
/** Generous: the CI machine has 2 shared cores. */
const WAIT_MS = 60_000

/** The pinned nats-server: $HARMONYLITE_NATS_SERVER, the repo's .venv (scripts/setup.sh), then PATH. */
function natsServerBinary() {
  if (process.env.HARMONYLITE_NATS_SERVER) return process.env.HARMONYLITE_NATS_SERVER
  const venv = path.join(REPO_DIR, '.venv', 'bin', 'nats-server')
  return fs.existsSync(venv) ? venv : 'nats-server'
}

const cleanups = new WeakMap()

/**
 * Runs `fn` when the test ends, in reverse order of registration (replicas close before the
 * nats-server they use stops, and before their folder is removed).
 */
function defer(t, fn) {
  let stack = cleanups.get(t)
  if (!stack) {
    stack = []
    cleanups.set(t, stack)
    t.after(async () => {
      const errors = []
      while (stack.length) {
        try {
          await stack.pop()()
        } catch (err) {
          errors.push(err)
        }
      }
      if (errors.length) throw errors[0]
    })
  }
  stack.push(fn)
}

/** A temp folder removed when the test ends. */
function tempDir(t, prefix = 'hl-node-') {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix))
  defer(t, () => fs.rmSync(dir, { recursive: true, force: true }))
  return dir
}

function httpOk(port, urlPath) {
  return new Promise((resolve) => {
    const request = http.get({ host: '127.0.0.1', port, path: urlPath, timeout: 2000 }, (res) => {
      res.resume()
      resolve(res.statusCode === 200)
    })
    request.on('error', () => resolve(false))
    request.on('timeout', () => {
      request.destroy()
      resolve(false)
    })
  })
}

/** Polls `check` (sync or async) until it returns a truthy value or `WAIT_MS` passes. */
async function waitUntil(what, check, timeoutMs = WAIT_MS) {
  const started = Date.now()
  let pause = 5
  for (;;) {
    const value = await check()
    if (value) return value
    if (Date.now() - started > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, pause))
    pause = Math.min(pause * 2, 200)
  }
}

/**
 * Starts a real nats-server with JetStream in its own temp folder; stopped when the test ends. Its ports are
 * picked by the server itself (a port chosen here and bound there could be taken in between by a suite
 * running beside this one) and read from the ports file it writes; `start()` after `stop()` brings it back
 * on those same ports with the same store.
 */
async function startNats(t) {
  const dir = tempDir(t, 'hl-nats-')
  const config = path.join(dir, 'nats.conf')
  const writeConfig = (listen, monitor) =>
    fs.writeFileSync(
      config,
      `listen: ${listen}\nhttp: ${monitor}\nports_file_dir: ${JSON.stringify(dir)}\nmax_payload: 8MB\n` +
        `jetstream { store_dir: ${JSON.stringify(path.join(dir, 'js'))} }\n`,
    )
  writeConfig('127.0.0.1:-1', '127.0.0.1:-1')
  let port = 0
  let monitorPort = 0
  let child = null
  const server = {
    get url() {
      return `nats://127.0.0.1:${port}`
    },
    async start() {
      const log = fs.openSync(path.join(dir, 'nats.log'), 'a')
      child = spawn(natsServerBinary(), ['-c', config], { stdio: ['ignore', 'ignore', log] })
      fs.closeSync(log)
      const started = child
      const exited = new Promise((resolve) => started.once('exit', resolve))
      started.exited = exited
      const portsFile = path.join(dir, `${path.basename(natsServerBinary())}_${started.pid}.ports`)
      await waitUntil('nats-server ports file', () => {
        if (started.exitCode !== null) throw new Error(`nats-server exited: see ${dir}/nats.log`)
        try {
          const ports = JSON.parse(fs.readFileSync(portsFile, 'utf8'))
          port = Number(new URL(ports.nats[0]).port)
          monitorPort = Number(new URL(ports.monitoring[0]).port)
          return port > 0 && monitorPort > 0
        } catch {
          return false // not written yet, or being written
        }
      })
      // Pinned from now on: a restart comes back where the replicas are connected.
      writeConfig(`127.0.0.1:${port}`, `127.0.0.1:${monitorPort}`)
      await waitUntil('nats-server /healthz', async () => {
        if (started.exitCode !== null) throw new Error(`nats-server exited: see ${dir}/nats.log`)
        return httpOk(monitorPort, '/healthz')
      })
    },
    async stop() {
      if (!child) return
      const stopping = child
      child = null
      if (stopping.exitCode === null && stopping.signalCode === null) {
        stopping.kill('SIGKILL')
        await stopping.exited
      }
    },
  }
  await server.start()
  defer(t, () => server.stop())
  return server
}

/** Every row of `table`, ordered, with exact types (bigint integers, Buffers). */
function dump(db, table) {
  return db.prepare(`SELECT * FROM "${table}" ORDER BY 1`).safeIntegers(true).raw(true).all()
}

/** Runs `node <script>` in `cwd`; resolves with its exit code, output and run time. */
function runNode(script, { cwd, env = {}, timeoutMs = WAIT_MS, args = [] } = {}) {
  return new Promise((resolve, reject) => {
    const started = Date.now()
    const child = spawn(process.execPath, [script, ...args], {
      cwd,
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (chunk) => (stdout += chunk))
    child.stderr.on('data', (chunk) => (stderr += chunk))
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`${script} did not exit within ${timeoutMs} ms\nstdout:\n${stdout}\nstderr:\n${stderr}`))
    }, timeoutMs)
    child.on('error', reject)
    child.on('exit', (code, signal) => {
      clearTimeout(timer)
      resolve({ code, signal, stdout, stderr, ms: Date.now() - started })
    })
  })
}

/**
 * Makes `require('harmonylite')` and `require('better-sqlite3')` resolve from `dir`, as they would in
 * an app that installed both.
 */
function linkPackages(dir) {
  const modules = path.join(dir, 'node_modules')
  fs.mkdirSync(modules, { recursive: true })
  fs.symlinkSync(PACKAGE_DIR, path.join(modules, 'harmonylite'), 'dir')
  fs.symlinkSync(path.join(PACKAGE_DIR, 'node_modules', 'better-sqlite3'), path.join(modules, 'better-sqlite3'), 'dir')
}

module.exports = {
  PACKAGE_DIR,
  defer,
  REPO_DIR,
  WAIT_MS,
  dump,
  linkPackages,
  natsServerBinary,
  runNode,
  startNats,
  tempDir,
  waitUntil,
}
