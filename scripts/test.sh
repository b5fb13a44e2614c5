#!/usr/bin/env bash
# The whole test suite, as root: pure tests, real-kernel tests on this host,
# then the cgroup2-marked subset on a pure cgroup v2 kernel in a throw-away VM.
#   scripts/test.sh            everything
#   CGMAN_SKIP_VM=1 scripts/test.sh   this host only
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "scripts/test.sh: run as root (real cgroup tests)" >&2; exit 2; }
scripts/setup.sh
mode=$(.venv/bin/python -c 'from cgman.drivers import open_host; print(open_host().info.mode)')
# Tests for files this kind of host does not have are deselected here and run where they exist.
case $mode in v2) sel="not v1host";; *) sel="not v2host";; esac
echo "== this host: $mode cgroups (pytest -m '$sel')"
.venv/bin/python -m pytest -q -p no:cacheprovider -m "$sel" tests/
VM=../shared/cgroup2-vm/run-in-cgroup2-vm.sh
if [ "${CGMAN_SKIP_VM:-0}" = 1 ]; then
  echo "== skipping the cgroup v2 VM (CGMAN_SKIP_VM=1)"
elif [ -x "$VM" ] || [ -f "$VM" ]; then
  echo "== pure cgroup v2 kernel (VM): pytest -m cgroup2"
  CG2VM_TIMEOUT=${CG2VM_TIMEOUT:-1500} bash "$VM" .venv/bin/python -m pytest -q -p no:cacheprovider -m "cgroup2 and not v1host" tests/
else
  echo "scripts/test.sh: $VM not found: cannot run the cgroup v2 tests" >&2
  exit 1
fi
