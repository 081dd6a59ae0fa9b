// The published layout (ADR 0015): `harmonylite` without an addon, and the platform package with the addon
// and nats-server, as scripts/packages.js packs them for a release, install without a compiler or a
// registry, and the embedded default finds the nats-server beside the addon. Without the platform package
// the install fails, naming the platform. (The clean-room install suite does the same from a registry on a
// machine with nothing but Node.)
'use strict'

const assert = require('node:assert/strict')
const { execFile } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')
const { test } = require('node:test')
const { promisify } = require('node:util')

const { PACKAGE_DIR, natsServerBinary, runNode, tempDir } = require('./support')

const run = promisify(execFile)
const ADDON = 'harmonylite.linux-x64-gnu.node'
const version = JSON.parse(fs.readFileSync(path.join(PACKAGE_DIR, 'package.json'), 'utf8')).version

/** Packs the release's main package and linux-x64-gnu package into `dir`; returns their tarballs. */
async function packRelease(dir) {
  const packages = path.join(PACKAGE_DIR, 'scripts', 'packages.js')
  const main = (await run(process.execPath, [packages, 'main', '--out', dir])).stdout.trim()
  // The debug build's debug information is most of its size: pack a stripped copy, to keep gzip quick.
  let addon = path.join(PACKAGE_DIR, ADDON)
  try {
    await run('strip', ['--strip-debug', '-o', path.join(dir, ADDON), addon])
    addon = path.join(dir, ADDON)
  } catch {
    // no strip here: pack the addon as built
  }
  const binary = natsServerBinary()
  const nats = path.isAbsolute(binary) ? binary : (await run('sh', ['-c', `command -v ${binary}`])).stdout.trim()
  const platform = (
    await run(process.execPath, [
      packages,
      'platform',
      '--name',
      'linux-x64-gnu',
      '--addon',
      addon,
      '--nats-server',
      nats,
      '--out',
      dir,
    ])
  ).stdout.trim()
  return { main, platform }
}

async function tarballFiles(tarball) {
  const { stdout } = await run('tar', ['-tzf', tarball])
  return stdout.split('\n').filter(Boolean).map((f) => f.replace(/^package\//, '')).sort()
}

/** An app folder, and an environment with no cargo and no nats-server anywhere a lookup would find one. */
function app(dir, name) {
  const folder = path.join(dir, name)
  fs.mkdirSync(folder)
  fs.writeFileSync(path.join(folder, 'package.json'), '{ "name": "app", "version": "1.0.0", "private": true }\n')
  const env = {
    ...process.env,
    PATH: `${path.dirname(process.execPath)}:/usr/bin:/bin`,
    CARGO: '/bin/false',
    HARMONYLITE_NATS_SERVER: '',
    VIRTUAL_ENV: '',
  }
  return { folder, env }
}

test('the release packages install offline, and the embedded default finds the nats-server beside the addon', async (t) => {
  const dir = tempDir(t)
  const { main, platform } = await packRelease(dir)
  assert.equal(path.basename(main), `harmonylite-${version}.tgz`)
  assert.equal(path.basename(platform), `harmonylite-linux-x64-gnu-${version}.tgz`)

  const mainFiles = await tarballFiles(main)
  assert.deepEqual(mainFiles, ['README.md', 'index.d.ts', 'index.js', 'package.json', 'scripts/install.js', 'scripts/platforms.js'])
  const manifest = JSON.parse((await run('tar', ['-xzOf', main, 'package/package.json'])).stdout)
  assert.deepEqual(manifest.optionalDependencies, {
    'harmonylite-linux-x64-gnu': version,
    'harmonylite-linux-arm64-gnu': version,
    'harmonylite-linux-x64-musl': version,
  })
  assert.equal(manifest.devDependencies, undefined)
  assert.deepEqual(await tarballFiles(platform), ['README.md', ADDON, 'nats-server', 'package.json'])
  const platformManifest = JSON.parse((await run('tar', ['-xzOf', platform, 'package/package.json'])).stdout)
  assert.deepEqual([platformManifest.os, platformManifest.cpu, platformManifest.libc], [['linux'], ['x64'], ['glibc']])

  const { folder, env } = app(dir, 'app')
  const install = await run(
    'npm',
    ['install', '--offline', '--no-audit', '--no-fund', '--foreground-scripts', platform, main],
    { cwd: folder, env },
  )
  assert.match(install.stdout + install.stderr, /using harmonylite-linux-x64-gnu/)
  const installed = path.join(folder, 'node_modules')
  assert.ok(!fs.existsSync(path.join(installed, 'harmonylite', ADDON)), 'the main package has no addon')

  // Embedded default, nothing configured: the nats-server that runs is the platform package's.
  fs.writeFileSync(
    path.join(folder, 'check.js'),
    `const fs = require('node:fs')
     const { openReplicated } = require('harmonylite')
     openReplicated('app.db', { nodeId: 1 }).then(async (replica) => {
       const state = JSON.parse(fs.readFileSync('app.db.harmonylite/nats/harmonylite-embedded.json', 'utf8'))
       console.log(JSON.stringify({ loaded: require.resolve('harmonylite'), server: fs.readlinkSync('/proc/' + state.pid + '/exe') }))
       await replica.close()
     })`,
  )
  const result = await runNode('check.js', { cwd: folder, env })
  assert.equal(result.code, 0, result.stderr)
  const report = JSON.parse(result.stdout)
  assert.equal(report.loaded, path.join(installed, 'harmonylite', 'index.js'))
  assert.equal(report.server, path.join(fs.realpathSync(installed), 'harmonylite-linux-x64-gnu', 'nats-server'))
})

test('installing harmonylite without a platform package fails, naming the platform', async (t) => {
  const dir = tempDir(t)
  const { main } = await packRelease(dir)
  const { folder, env } = app(dir, 'bare')
  // As on a platform that no package matches: npm installs no optional dependency.
  const error = await run(
    'npm',
    ['install', '--offline', '--no-audit', '--no-fund', '--foreground-scripts', '--omit=optional', main],
    { cwd: folder, env },
  ).then(
    () => null,
    (err) => err,
  )
  assert.ok(error, 'npm install must fail')
  assert.match(
    error.stdout + error.stderr,
    /harmonylite: the prebuilt package for this platform \(linux-x64-gnu\), harmonylite-linux-x64-gnu, is not installed/,
  )
})
