// Publishes npm tarballs to the install suite's verdaccio: makes a user (verdaccio's htpasswd plugin
// answers the CouchDB-style PUT npm's `adduser` sends) and runs `npm publish` with its token.
//
//   node publish.js REGISTRY_URL TARBALL...
'use strict'

const { execFileSync } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')

async function main() {
  const [registry, ...tarballs] = process.argv.slice(2)
  const url = new URL(registry)
  const user = 'install-suite'
  const response = await fetch(new URL(`-/user/org.couchdb.user:${user}`, url), {
    method: 'PUT',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ name: user, password: 'install-suite-password', type: 'user', roles: [] }),
  })
  const body = await response.json()
  if (!body.token) throw new Error(`verdaccio gave no token (${response.status}): ${JSON.stringify(body)}`)
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'publish-'))
  const npmrc = path.join(dir, '.npmrc')
  fs.writeFileSync(npmrc, `registry=${url.href}\n//${url.host}/:_authToken=${body.token}\n`)
  try {
    for (const tarball of tarballs) {
      execFileSync('npm', ['publish', '--userconfig', npmrc, '--registry', url.href, tarball], {
        stdio: 'inherit',
        cwd: dir,
      })
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

main().catch((err) => {
  console.error(`publish.js: ${err.message}`)
  process.exit(1)
})
