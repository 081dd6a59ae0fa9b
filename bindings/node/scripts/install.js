#!/usr/bin/env node
// `npm install` hook. A packed `harmonylite` (npm pack / the registry) carries a prebuilt addon and
// needs nothing here. Installed from a checkout of the repository (`npm install ./bindings/node`), it
// builds the addon from the Rust sources with cargo.
//
// Environment: CARGO (the cargo to run), CARGO_TARGET_DIR and CARGO_BUILD_TARGET (respected),
// HARMONYLITE_NODE_PROFILE=release for an optimised build (default: debug, the quick one).
'use strict'

const { execFileSync } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')

const packageDir = path.resolve(__dirname, '..')

/** The platform part of the addon's file name, as napi-rs names it (`linux-x64-gnu`). */
function platformName() {
  const { platform, arch } = process
  if (platform !== 'linux') return `${platform}-${arch}`
  const glibc = process.report?.getReport?.().header?.glibcVersionRuntime
  return `linux-${arch}-${glibc ? 'gnu' : 'musl'}`
}

function sharedLibraryName() {
  if (process.platform === 'win32') return 'harmonylite_node.dll'
  if (process.platform === 'darwin') return 'libharmonylite_node.dylib'
  return 'libharmonylite_node.so'
}

function fail(message) {
  console.error(`harmonylite: ${message}`)
  process.exit(1)
}

const addon = path.join(packageDir, `harmonylite.${platformName()}.node`)
if (fs.existsSync(addon)) {
  console.log(`harmonylite: using the prebuilt addon ${path.basename(addon)}`)
  process.exit(0)
}

const manifest = path.join(packageDir, 'Cargo.toml')
if (!fs.existsSync(manifest) || !fs.existsSync(path.join(packageDir, 'src', 'lib.rs'))) {
  fail(
    `no prebuilt addon for ${platformName()} in this package, and no Rust sources to build one. ` +
      'Install from a checkout of the repository (npm install ./bindings/node) with Rust installed.',
  )
}

const cargo = process.env.CARGO || 'cargo'
const profile = process.env.HARMONYLITE_NODE_PROFILE === 'release' ? 'release' : 'debug'
const run = (args, options = {}) =>
  execFileSync(cargo, args, { cwd: packageDir, encoding: 'utf8', ...options })

let targetDir
try {
  targetDir = JSON.parse(
    run(['metadata', '--format-version', '1', '--no-deps', '--manifest-path', manifest]),
  ).target_directory
} catch (err) {
  fail(
    `building the addon needs Rust's cargo (${err.code === 'ENOENT' ? 'not found' : err.message.trim()}). ` +
      'Install Rust from https://rustup.rs, or install a packed harmonylite that carries a prebuilt addon.',
  )
}

console.log(`harmonylite: building the addon (${profile}) with cargo...`)
const args = ['build', '--manifest-path', manifest, '-p', 'harmonylite-node']
if (profile === 'release') args.push('--release')
try {
  run(args, { stdio: 'inherit' })
} catch {
  fail('cargo build failed (see above)')
}

const built = path.join(targetDir, process.env.CARGO_BUILD_TARGET || '', profile, sharedLibraryName())
if (!fs.existsSync(built)) fail(`cargo built, but ${built} is missing`)
fs.copyFileSync(built, addon)
console.log(`harmonylite: built ${path.basename(addon)}`)
