#!/usr/bin/env node
// `npm install` hook: makes sure an addon for this platform is there, or fails saying which platform
// has none. In order:
//   1. an addon in this package (a build in the checkout, `npm run build`);
//   2. the platform package `harmonylite-<platform>` (what the registry's `harmonylite` installs through
//      its optionalDependencies; npm picks the one whose os/cpu/libc match);
//   3. installed from a checkout of the repository (`npm install ./bindings/node`): build the addon from
//      the Rust sources with cargo.
// Anything else is a platform without a prebuilt package: the install fails here, naming the platform,
// rather than at the first require().
//
// Environment: CARGO (the cargo to run), CARGO_TARGET_DIR and CARGO_BUILD_TARGET (respected),
// HARMONYLITE_NODE_PROFILE=release for an optimised build (default: debug, the quick one).
'use strict'

const { execFileSync } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')
const { PLATFORMS, currentPlatform } = require('./platforms')

const packageDir = path.resolve(__dirname, '..')
const platform = currentPlatform()
const platformPackage = `harmonylite-${platform}`

function sharedLibraryName() {
  if (process.platform === 'win32') return 'harmonylite_node.dll'
  if (process.platform === 'darwin') return 'libharmonylite_node.dylib'
  return 'libharmonylite_node.so'
}

function fail(message) {
  console.error(`harmonylite: ${message}`)
  process.exit(1)
}

const addon = path.join(packageDir, `harmonylite.${platform}.node`)
if (fs.existsSync(addon)) {
  console.log(`harmonylite: using the prebuilt addon ${path.basename(addon)}`)
  process.exit(0)
}

try {
  const found = require.resolve(`${platformPackage}/package.json`, { paths: [packageDir] })
  console.log(`harmonylite: using ${platformPackage} (${path.dirname(found)})`)
  process.exit(0)
} catch {
  // not installed: a checkout builds from source below; anything else fails.
}

const manifest = path.join(packageDir, 'Cargo.toml')
if (!fs.existsSync(manifest) || !fs.existsSync(path.join(packageDir, 'src', 'lib.rs'))) {
  const shipped = PLATFORMS.find((p) => p.name === platform)
  const names = PLATFORMS.map((p) => p.name).join(', ')
  fail(
    shipped
      ? `the prebuilt package for this platform (${platform}), ${platformPackage}, is not installed. ` +
          'npm installs it as an optional dependency: install again without --omit=optional / --no-optional, ' +
          `or add ${platformPackage} to your dependencies.`
      : `no prebuilt package for this platform (${platform}: ${process.platform}, ${process.arch}). ` +
          `HarmonyLite ships prebuilt packages for ${names}; elsewhere, install from a checkout of the ` +
          'repository (npm install ./bindings/node), which builds the addon with Rust.',
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
      `Install Rust from https://rustup.rs, or install harmonylite from the registry (prebuilt for ${PLATFORMS.map((p) => p.name).join(', ')}).`,
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
