#!/usr/bin/env bash
# HarmonyLite's fault campaign: 3 `harmonylite` sidecars with a writer process each (every committed row in
# an fsync'd ledger), against real nats-servers, while sidecars and writers are killed -9, NATS goes away
# (store kept, store lost), processes are paused under CPU load, the network is partitioned (network
# namespaces: a 3-server NATS cluster split 2/1) and forged messages are published. Each scenario prints
# lost / extra / identical / panics / time to converge; the run ends with "faults: N passed, N failed" and
# exits non-zero on any loss, divergence or panic. See RELIABILITY.md.
#
#   scripts/faults.sh                      short run (a few rounds of each; what CI runs)
#   scripts/faults.sh --long               the long campaign (RELIABILITY.md's figures)
#   scripts/faults.sh --seed 42            repeat a run's random choices
#   scripts/faults.sh --scenario sigstop   one scenario (repeatable; an open one runs when named)
#   scripts/faults.sh --include-open       also the scenarios known to fail today
#   scripts/faults.sh --list               the scenarios
#   scripts/faults.sh --keep               keep the logs and databases even when everything passed
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
export CARGO_BUILD_TARGET="${CARGO_BUILD_TARGET:-x86_64-unknown-linux-gnu}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
NATS="${HARMONYLITE_NATS_SERVER:-$REPO/.venv/bin/nats-server}"
if [ ! -x "$NATS" ]; then
  echo "faults: no nats-server at $NATS (run scripts/setup.sh or set HARMONYLITE_NATS_SERVER)"
  echo "faults: 0 passed, 1 failed"
  exit 1
fi
echo "== faults: building the sidecar and the campaign harness"
if ! cargo build -q -p harmonylite-cli -p harmonylite-faults; then
  echo "faults: 0 passed, 1 failed"
  exit 1
fi
BIN="$CARGO_TARGET_DIR/$CARGO_BUILD_TARGET/debug"
[ -x "$BIN/faults" ] || BIN="$CARGO_TARGET_DIR/debug"
if [ "${1:-}" = "--list" ]; then
  exec "$BIN/faults" list
fi
RUN_ID=$(( $$ % 100000 ))
export HARMONYLITE_COMMIT="${HARMONYLITE_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
# The harness runs in a process group of its own: on an interrupt, that group (the harness and every
# process it started) is stopped, and the network namespaces of this run are removed.
cleanup() {
  [ -n "${HARNESS:-}" ] && kill -KILL -- "-$HARNESS" 2>/dev/null
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^hlf${RUN_ID}-"); do
    ip netns del "$ns" 2>/dev/null
  done
}
trap 'cleanup; exit 130' INT TERM
setsid "$BIN/faults" campaign --run-id "$RUN_ID" --harmonylite "$BIN/harmonylite" --nats-server "$NATS" "$@" &
HARNESS=$!
wait "$HARNESS"
status=$?
HARNESS=
exit "$status"
