// The platforms HarmonyLite ships prebuilt for Node: one npm package each, `harmonylite-<name>`, carrying
// the addon (`harmonylite.<name>.node`, the file name napi-rs's loader in index.js requires) and the
// pinned nats-server, which the engine finds beside the addon (docs/embedded-nats.md). Read by
// scripts/install.js (the check at install time) and scripts/packages.js (the release's packing).
'use strict'

const PLATFORMS = [
  { name: 'linux-x64-gnu', rustTarget: 'x86_64-unknown-linux-gnu', os: 'linux', cpu: 'x64', libc: 'glibc' },
  { name: 'linux-arm64-gnu', rustTarget: 'aarch64-unknown-linux-gnu', os: 'linux', cpu: 'arm64', libc: 'glibc' },
  { name: 'linux-x64-musl', rustTarget: 'x86_64-unknown-linux-musl', os: 'linux', cpu: 'x64', libc: 'musl' },
]

/** This machine's platform, named as napi-rs names it (`linux-x64-gnu`, `darwin-arm64`, ...). */
function currentPlatform() {
  const { platform, arch } = process
  if (platform !== 'linux') return `${platform}-${arch}`
  const glibc = process.report?.getReport?.().header?.glibcVersionRuntime
  return `linux-${arch}-${glibc ? 'gnu' : 'musl'}`
}

module.exports = { PLATFORMS, currentPlatform }
