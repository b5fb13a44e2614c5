#!/usr/bin/env bash
# The cgman demo, as root on a fresh Debian 12 machine. The agent keeps policies/
# applied: an edited file is applied at once, a setting changed by hand is written
# back, a broken file keeps its last good version. Then a workload in a group is
# frozen and thawed; containers (a web server and a client on a bridge) run, one is
# frozen and thawed and stopped with the usage it used; the agent's metrics are
# scraped, a bill is printed from the ledger; everything is cleaned up.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "scripts/demo.sh: run as root" >&2; exit 2; }
scripts/setup.sh
# Overridable so that tests/test_demo.py can run it under its own cgman-test-* root.
export CGMAN_CGROUP_ROOT=${CGMAN_DEMO_ROOT:-cgman-demo}
export CGMAN_RUN_DIR=${CGMAN_DEMO_RUN_DIR:-/run/cgman-demo} CGMAN_STATE_DIR=${CGMAN_DEMO_STATE_DIR:-/var/lib/cgman-demo}
PY=$PWD/.venv/bin/python
cg() { echo "+ cgman $*" >&2; .venv/bin/cgman "$@"; }
tick=$(mktemp); pid=""; agent=""
pol=$(mktemp -d); log=$(mktemp)
port=${CGMAN_DEMO_PORT:-19753}
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  [ -n "$agent" ] && kill "$agent" 2>/dev/null && wait "$agent" 2>/dev/null || true
  .venv/bin/cgman rm --force web1 >/dev/null 2>&1 || true
  rm -rf "$CGMAN_RUN_DIR" "$CGMAN_STATE_DIR"
  .venv/bin/cgman rm --force . >/dev/null 2>&1 || true
  rm -rf "$tick" "$tick.new" "$pol" "$log"
}
trap cleanup EXIT
metric() {  # metric NAME: its value on the agent's /metrics
  $PY -c "import sys, urllib.request
for l in urllib.request.urlopen('http://127.0.0.1:$port/metrics').read().decode().splitlines():
    if l.split(' ')[0] == sys.argv[1]: print(l.split(' ')[1])" "$1"
}
wait_log() {  # wait_log LINE PATTERN: until the agent logs PATTERN at or after line LINE
  for _ in $(seq 100); do
    sed -n "$1,\$p" "$log" | grep -q -- "$2" && return 0; sleep 0.1
  done; echo "the agent did not log '$2': see $log" >&2; cat "$log" >&2; exit 1
}
mark() { echo $(($(wc -l <"$log") + 1)); }
show_log() { sed -n "$1,\$p" "$log" | sed 's/^/    agent| /'; }

cg doctor || true
cg validate policies/
cp -p policies/*.yaml "$pol/"           # -p: old files, applied at once (a fresh one waits 0.5 s)

# The agent: applies the directory now and on every change, corrects drift every 2s,
# serves /metrics (usage, billing counters and its own health).
echo "+ cgman agent --policy-dir $pol --listen 127.0.0.1:$port --interval 2s &" >&2
.venv/bin/cgman agent --policy-dir "$pol" --listen 127.0.0.1:$port --interval 2s 2>"$log" &
agent=$!
wait_log 1 "applied 4 file(s)"
show_log 1
cg status acme

echo "== edit a policy file: the agent applies it at once" >&2
m=$(mark)
sed -i 's/cpu: {weight: 300}/cpu: {weight: 500}/' "$pol/acme.yaml"
wait_log $m "applied 4 file(s)"; show_log $m

echo "== change a setting by hand: the agent writes it back within 2s" >&2
m=$(mark)
if [ -d /sys/fs/cgroup/cpu/$CGMAN_CGROUP_ROOT ]; then f=/sys/fs/cgroup/cpu/$CGMAN_CGROUP_ROOT/acme/cpu.shares
else f=/sys/fs/cgroup/$CGMAN_CGROUP_ROOT/acme/cpu.weight; fi
echo "+ echo 2 > $f" >&2; echo 2 > "$f"
wait_log $m "drift corrected"; show_log $m; echo "    $f = $(cat "$f")"

echo "== break a policy file: the agent logs file:line and keeps the last good version" >&2
m=$(mark)
sed -i 's/pids: {max: 4096}/pids: {max: lots}/' "$pol/acme.yaml"
wait_log $m "keeping its last good version"; sleep 0.2; show_log $m
echo "    cgman_agent_policy_files_invalid = $(metric cgman_agent_policy_files_invalid)"
m=$(mark)
sed -i 's/pids: {max: lots}/pids: {max: 4096}/' "$pol/acme.yaml"
wait_log $m "applied 4 file(s)"          # fixed: in force again before the containers start

echo "+ cgman attach acme/batch -- (a counter)" >&2
# written aside and renamed over: a freeze between the truncation and the write of a plain
# `echo > $tick` would leave the file empty for the whole freeze
.venv/bin/cgman attach acme/batch -- sh -c "i=0; while :; do i=\$((i+1)); echo \$i > $tick.new; mv -f $tick.new $tick; sleep 0.05; done" &
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

# Containers in acme/web: bridge cgman0, 10.88.0.0/24, 0.5 CPU and 512Mi each (policies/acme.yaml)
# A plain TCPServer: `python -m http.server` first asks DNS for its own name (socket.getfqdn), and a
# bridge without a reachable name server waits 10 s for that.
cg run -p acme/web --name web1 -d -- "$PY" -u -c "import http.server as h, socketserver as s
srv = s.TCPServer(('', 8080), h.SimpleHTTPRequestHandler); print('Serving on port 8080'); srv.serve_forever()"
for i in $(seq 100); do cg logs web1 2>/dev/null | grep -q Serving && break; sleep 0.1
  [ "$i" = 100 ] && { echo "web1 is not serving after 10 s: see \`cgman logs web1\`" >&2; exit 1; }; done
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
echo "+ curl http://127.0.0.1:$port/metrics | grep tenant (from the agent; exited containers included)" >&2
$PY -c "import urllib.request; print(''.join(l for l in urllib.request.urlopen('http://127.0.0.1:$port/metrics').read().decode().splitlines(True) if l.startswith(('cgman_tenant_', 'cgman_agent_reconciles', 'cgman_agent_drift', 'cgman_agent_changes'))), end='')"
cg usage --prices prices/example.yaml
cg usage --by container --format csv
kill "$agent"; wait "$agent" || true; agent=""
cg rm web1
cg rm .
echo "demo done: everything under $CGMAN_CGROUP_ROOT removed"
