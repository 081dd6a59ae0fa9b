"""A node's long-running process for apps that do not open the replica themselves (the sqlite-utils CLI, a
database written before it was replicated): opens the replica on the file, prints "ready", holds it until
SIGTERM, then closes it (what was committed is published first)."""

import json
import signal
import sys
import threading

import harmonylite

db, cfg = sys.argv[1], json.loads(sys.argv[2])
replica = harmonylite.open_replicated(db, cfg)
replica.wait_ready(timeout=120)
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
print("ready", flush=True)
stop.wait()
replica.close()
print("closed", flush=True)
