// The .d.ts type-checks in a strict TypeScript app that uses every public name (test/types/usage.ts).
'use strict'

const assert = require('node:assert/strict')
const { execFile } = require('node:child_process')
const path = require('node:path')
const { test } = require('node:test')
const { promisify } = require('node:util')

const { PACKAGE_DIR } = require('./support')

test('index.d.ts type-checks against a strict TypeScript app', async () => {
  const tsc = require.resolve('typescript/bin/tsc', { paths: [PACKAGE_DIR] })
  const project = path.join(__dirname, 'types')
  const result = await promisify(execFile)(process.execPath, [tsc, '-p', project]).catch((err) => err)
  assert.equal(result.code ?? 0, 0, `tsc:\n${result.stdout}${result.stderr}`)
})
