#!/usr/bin/env bash
# The cgman demo, as root on a fresh Debian 12 machine: apply policies/, start a
# workload in a group, show status, freeze and thaw it; then containers: a web
# server and a client on a bridge, exec, freeze/thaw, stop with the usage it
# used; metrics scraped from the exporter and a bill printed from the ledger;
# clean everything up.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "scripts/demo.sh: run as root" >&2; exit 2; }
scripts/setup.sh
export CGMAN_CGROUP_ROOT=cgman-demo
export CGMAN_RUN_DIR=/run/cgman-demo CGMAN_STATE_DIR=/var/lib/cgman-demo
PY=$PWD/.venv/bin/python
cg() { echo "+ cgman $*" >&2; .venv/bin/cgman "$@"; }
tick=$(mktemp); pid=""; exporter=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  [ -n "$exporter" ] && kill "$exporter" 2>/dev/null || true
  .venv/bin/cgman rm --force web1 >/dev/null 2>&1 || true
  rm -rf "$CGMAN_RUN_DIR" "$CGMAN_STATE_DIR"
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

# The exporter serves per-container usage and per-tenant billing counters.
port=19753
echo "+ cgman exporter --listen 127.0.0.1:$port &" >&2
.venv/bin/cgman exporter --listen 127.0.0.1:$port 2>/dev/null &
exporter=$!

# Containers in acme/web: bridge cgman0, 10.88.0.0/24, 0.5 CPU and 512Mi each (policies/acme.yaml)
cg run -p acme/web --name web1 -d -- "$PY" -u -m http.server 8080
for _ in $(seq 50); do cg logs web1 2>/dev/null | grep -q Serving && break; sleep 0.1; done
cg ps
cg run -p acme/web --name client --rm -- "$PY" -c \
  "import urllib.request; print('client got', len(urllib.request.urlopen('http://10.88.0.2:8080/').read()), 'bytes from web1')"
cg exec web1 -- sh -c 'echo "inside web1: hostname=$(hostname) pid=$$ cgroup=$(cut -d: -f3 /proc/self/cgroup | sort -u | tr "\n" " ")"'
cg freeze web1
cg ps
cg thaw web1
cg stop web1
cg ps -a
cg inspect web1 | grep -A4 final_usage
echo "+ curl http://127.0.0.1:$port/metrics | grep tenant (exited containers included)" >&2
$PY -c "import urllib.request; print(''.join(l for l in urllib.request.urlopen('http://127.0.0.1:$port/metrics').read().decode().splitlines(True) if l.startswith('cgman_tenant_')), end='')"
cg usage --prices prices/example.yaml
cg usage --by container --format csv
kill "$exporter"; exporter=""
cg rm web1
cg rm .
echo "demo done: everything under $CGMAN_CGROUP_ROOT removed"
