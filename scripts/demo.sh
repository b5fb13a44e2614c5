#!/usr/bin/env bash
# The cgman demo, as root on a fresh Debian 12 machine: apply policies/, start a
# workload in a group, show status, freeze and thaw it, clean everything up.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "scripts/demo.sh: run as root" >&2; exit 2; }
scripts/setup.sh
export CGMAN_CGROUP_ROOT=cgman-demo
cg() { echo "+ cgman $*" >&2; .venv/bin/cgman "$@"; }
tick=$(mktemp); pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  .venv/bin/cgman rm --force . >/dev/null 2>&1 || true
  rm -f "$tick"
}
trap cleanup EXIT

cg doctor || true
cg validate policies/
cg apply policies/
cg apply policies/                     # a reconcile: the second run writes nothing

echo "+ cgman attach acme/batch -- (a counter)" >&2
.venv/bin/cgman attach acme/batch -- sh -c "i=0; while :; do i=\$((i+1)); echo \$i > $tick; sleep 0.05; done" &
pid=$!
sleep 1
cg status
cg freeze acme/batch
a=$(cat "$tick"); sleep 1; b=$(cat "$tick")
echo "counter while frozen: $a -> $b (stopped)"
cg status acme
cg thaw acme/batch
sleep 1
echo "counter after thaw: $(cat "$tick") (running again)"
cg kill acme/batch
wait "$pid" 2>/dev/null || true; pid=""
cg rm .
echo "demo done: everything under $CGMAN_CGROUP_ROOT removed"
