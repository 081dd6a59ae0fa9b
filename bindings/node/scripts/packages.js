#!/usr/bin/env node
// Packs the npm packages of a release, in the napi-rs pattern (ADR 0015):
//
//   node scripts/packages.js main --out DIR
//       the main package `harmonylite`: the JS loader, the types, the install check and the README, with
//       optionalDependencies on every platform package (same version); no addon.
//   node scripts/packages.js platform --name linux-x64-gnu --addon FILE --nats-server FILE --out DIR
//       the platform package `harmonylite-linux-x64-gnu`: the addon as `harmonylite.linux-x64-gnu.node`
//       and the nats-server binary beside it, with os/cpu/libc so that npm installs it only there.
//
// Each prints the path of the tarball it wrote into DIR (`npm pack`). The version is package.json's,
// which scripts/version.sh keeps equal to the workspace Cargo.toml's.
'use strict'

const { execFileSync } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { PLATFORMS } = require('./platforms')

const packageDir = path.resolve(__dirname, '..')
const manifest = JSON.parse(fs.readFileSync(path.join(packageDir, 'package.json'), 'utf8'))

function fail(message) {
  console.error(`packages.js: ${message}`)
  process.exit(1)
}

function options(argv) {
  const out = {}
  for (let i = 0; i < argv.length; i += 2) {
    if (!argv[i].startsWith('--') || argv[i + 1] === undefined) fail(`bad argument ${argv[i]}`)
    out[argv[i].slice(2)] = argv[i + 1]
  }
  if (!out.out) fail('--out DIR is required')
  return out
}

/** Runs `npm pack` on a staged folder, returns the tarball's absolute path. */
function pack(staged, out) {
  fs.mkdirSync(out, { recursive: true })
  const result = execFileSync('npm', ['pack', '--json', '--pack-destination', path.resolve(out)], {
    cwd: staged,
    encoding: 'utf8',
  })
  return path.join(path.resolve(out), JSON.parse(result)[0].filename)
}

function stage(name) {
  return fs.mkdtempSync(path.join(os.tmpdir(), `${name}-`))
}

function copy(from, to, mode) {
  fs.copyFileSync(from, to)
  if (mode) fs.chmodSync(to, mode)
}

const [command, ...rest] = process.argv.slice(2)
const opts = options(rest)
const common = {
  version: manifest.version,
  license: manifest.license,
  engines: manifest.engines,
  repository: manifest.repository,
}

if (command === 'main') {
  const dir = stage('harmonylite')
  const files = ['index.js', 'index.d.ts', 'README.md', 'scripts/install.js', 'scripts/platforms.js']
  fs.mkdirSync(path.join(dir, 'scripts'))
  for (const file of files) copy(path.join(packageDir, file), path.join(dir, file))
  const { devDependencies, napi, ...published } = manifest
  const main = {
    ...published,
    files,
    scripts: { install: manifest.scripts.install },
    optionalDependencies: Object.fromEntries(PLATFORMS.map((p) => [`harmonylite-${p.name}`, manifest.version])),
  }
  fs.writeFileSync(path.join(dir, 'package.json'), `${JSON.stringify(main, null, 2)}\n`)
  console.log(pack(dir, opts.out))
  fs.rmSync(dir, { recursive: true, force: true })
} else if (command === 'platform') {
  const platform = PLATFORMS.find((p) => p.name === opts.name)
  if (!platform) fail(`unknown platform ${opts.name} (known: ${PLATFORMS.map((p) => p.name).join(', ')})`)
  for (const key of ['addon', 'nats-server']) {
    if (!opts[key] || !fs.existsSync(opts[key])) fail(`--${key} ${opts[key] ?? ''}: no such file`)
  }
  const name = `harmonylite-${platform.name}`
  const addon = `harmonylite.${platform.name}.node`
  const dir = stage(name)
  copy(opts.addon, path.join(dir, addon), 0o755)
  // The engine looks for `nats-server` in the folder of the file that holds it: this addon.
  copy(opts['nats-server'], path.join(dir, 'nats-server'), 0o755)
  fs.writeFileSync(
    path.join(dir, 'README.md'),
    `# ${name}\n\nThe ${platform.name} addon of [harmonylite](https://www.npmjs.com/package/harmonylite) and the ` +
      'nats-server binary its embedded default starts. Install `harmonylite`, which depends on this package.\n',
  )
  const pkg = {
    name,
    ...common,
    description: `HarmonyLite's native addon and nats-server for ${platform.name}`,
    main: addon,
    files: [addon, 'nats-server', 'README.md'],
    os: [platform.os],
    cpu: [platform.cpu],
    ...(platform.libc ? { libc: [platform.libc] } : {}),
  }
  fs.writeFileSync(path.join(dir, 'package.json'), `${JSON.stringify(pkg, null, 2)}\n`)
  console.log(pack(dir, opts.out))
  fs.rmSync(dir, { recursive: true, force: true })
} else {
  fail('usage: packages.js main --out DIR | platform --name NAME --addon FILE --nats-server FILE --out DIR')
}
