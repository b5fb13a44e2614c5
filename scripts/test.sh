#!/usr/bin/env bash
# The whole test suite, as root: pure tests, real-kernel tests on this host,
# then the cgroup2-marked subset on a pure cgroup v2 kernel in a throw-away VM, and the
# systemd-marked tests (plus the bridge tests) in the same VM booted with systemd as PID 1.
#   scripts/test.sh            everything
#   CGMAN_SKIP_VM=1 scripts/test.sh   this host only
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "scripts/test.sh: run as root (real cgroup tests)" >&2; exit 2; }
scripts/setup.sh
# pytest caches its assertion-rewritten test modules only when bytecode may be written; CI images often
# forbid it, and the emulated VMs below would then rewrite every test module again in each stage.
unset PYTHONDONTWRITEBYTECODE
mode=$(.venv/bin/python -c 'from cgman.drivers import open_host; print(open_host().info.mode)')
# Tests for files this kind of host does not have are deselected here and run where they exist.
case $mode in v2) sel="not v1host";; *) sel="not v2host";; esac
sel="$sel and not systemd"     # they install units and mount over /etc/cgman: only in the throw-away VM
echo "== this host: $mode cgroups (pytest -m '$sel')"
.venv/bin/python -m pytest -q -p no:cacheprovider -m "$sel" tests/
VM=../shared/cgroup2-vm/run-in-cgroup2-vm.sh
if [ "${CGMAN_SKIP_VM:-0}" = 1 ]; then
  echo "== skipping the cgroup v2 VM (CGMAN_SKIP_VM=1)"
elif [ -x "$VM" ] || [ -f "$VM" ]; then
  # The VMs read this tree through the host's read-only, cached share (CG2VM_RW_CWD=0; writes land in the
  # guest's throw-away tmpfs): the read-write share has no metadata cache and doubles every import there.
  export CG2VM_RW_CWD=0
  # Collected here, where it takes seconds: the VM then imports only the files that hold these tests.
  v2_tests=$(.venv/bin/python -m pytest -q -p no:cacheprovider --collect-only -m "cgroup2 and not v1host" tests/ | grep '::')
  echo "== pure cgroup v2 kernel (VM): pytest -m cgroup2 ($(echo "$v2_tests" | wc -l) tests)"
  # shellcheck disable=SC2086  # one node id per word
  CG2VM_TIMEOUT=${CG2VM_TIMEOUT:-1800} bash "$VM" .venv/bin/python -m pytest -q -p no:cacheprovider --durations=15 $v2_tests
  echo "== systemd 252 as PID 1 on a pure cgroup v2 kernel (VM): the shipped units, the systemd driver and its container scopes, the limit and billing tests under both drivers, and bridge networking"
  CGMAN_SYSTEMD_VM=1 CG2VM_INIT=systemd CG2VM_TIMEOUT=${CG2VM_TIMEOUT:-1800} bash "$VM" .venv/bin/python -m pytest -q \
    -p no:cacheprovider --durations=15 tests/test_systemd_host.py tests/test_systemd_driver.py tests/test_driver_limits.py \
    tests/test_systemd_scopes.py tests/test_systemd_status.py tests/test_launch.py \
    -k "test_systemd_host or test_systemd_driver or test_driver_limits or test_systemd_scopes or test_systemd_status or bridge_container"
else
  echo "scripts/test.sh: $VM not found: cannot run the cgroup v2 tests" >&2
  exit 1
fi
