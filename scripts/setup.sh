#!/usr/bin/env bash
# Installs what cgman and its tests need on a fresh Debian 12 machine (as root):
# Debian packages, then a virtualenv in .venv with cgman and its test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
need=()
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
command -v gcc >/dev/null || need+=(gcc libc6-dev)          # builds cgman._spawn (C)
[ -f /usr/include/seccomp.h ] || need+=(libseccomp-dev)     # cgman._secure compiles seccomp profiles with it
command -v musl-gcc >/dev/null || need+=(musl-tools)         # cgman-init, the container's static PID 1 (17 KB)
# Container tests: a static busybox for rootfs/overlay images, file(1) to check it is static.
[ -x /bin/busybox ] && file -L /bin/busybox 2>/dev/null | grep -q 'statically linked' || need+=(busybox-static)
command -v file >/dev/null || need+=(file)
# Image tests trade OCI layouts with tools no one here wrote.
command -v umoci >/dev/null || need+=(umoci)
command -v skopeo >/dev/null || need+=(skopeo)
# Grafana dashboard tests: promtool checks their PromQL; a real Prometheus evaluates every panel.
command -v promtool >/dev/null || need+=(prometheus)
# Fleet ledger tests: a throw-away PostgreSQL cluster (initdb/pg_ctl from /usr/lib/postgresql/*/bin).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v systemd-analyze >/dev/null || need+=(systemd)   # tests/test_packaging.py verifies the units offline
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: apt-get install ${need[*]}" >&2
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --config-settings editable_mode=compat -e '.[test]' 2>&1 | grep -v '^WARNING: Location' >&2 || true
# An editable install leaves cgman's own modules uncompiled; with PYTHONDONTWRITEBYTECODE set (common on CI
# images) every `cgman` command would compile them again.
.venv/bin/python -m compileall -q cgman >/dev/null
# Likewise the code of cgman's dataclass methods, which @dataclass compiles at every import (cgman/_dcache.py).
.venv/bin/python -c 'from cgman import _dcache; _dcache.warm()'
[ -x cgman/cgman-init ] || { echo "setup: cgman/cgman-init was not built" >&2; exit 1; }
# The installed `cgman` is the C front (cgman/_client.c), with the Python CLI next to it.
[ "$(head -c 4 .venv/bin/cgman | od -An -c | tr -d ' ')" = '177ELF' ] && [ -x .venv/bin/cgman-cli ] \
  || { echo "setup: the cgman front (.venv/bin/cgman) or .venv/bin/cgman-cli was not installed" >&2; exit 1; }
.venv/bin/python -c 'import cgman, cgman._spawn, cgman._fastread, cgman._secure, bcrypt, jeepney, typer, yaml, psutil, prometheus_client, pyroute2, pytest, hypothesis, psycopg' \
  || { echo "setup: the virtualenv is incomplete" >&2; exit 1; }
