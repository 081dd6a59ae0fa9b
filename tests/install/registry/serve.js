// Starts verdaccio (the install suite's npm registry) on a port the kernel picks, and writes that port to
// PORT_FILE once it listens, so nothing has to guess a free port.
//
//   node serve.js CONFIG PORT_FILE
'use strict'

const fs = require('node:fs')
const { runServer } = require('verdaccio')

const [config, portFile] = process.argv.slice(2)
if (!config || !portFile) {
  console.error('usage: node serve.js CONFIG PORT_FILE')
  process.exit(2)
}

runServer(config)
  .then((app) => {
    const server = app.listen(0, '127.0.0.1', () => {
      const { port } = server.address()
      fs.writeFileSync(`${portFile}.tmp`, `${port}\n`)
      fs.renameSync(`${portFile}.tmp`, portFile)
      console.log(`verdaccio listening on 127.0.0.1:${port}`)
    })
    const stop = () => server.close(() => process.exit(0))
    process.on('SIGTERM', stop)
    process.on('SIGINT', stop)
  })
  .catch((err) => {
    console.error('verdaccio failed to start:', err)
    process.exit(1)
  })
