"""Containers on the real kernel: namespaces, race-free placement, networking, rootfs,
lifecycle and cleanup. Everything runs `python -m cgman` as an operator would.

Tests marked cgroup2 also run in the pure-v2 VM (scripts/test.sh): placement, the
cgroup namespace, limits, usage and the lifecycle; the rest (pure argument handling,
bridge and overlay, which need this host's modules and a real filesystem) run here.
Python in the VM is ~10x slower, so timeouts are generous and sleeps long.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import REPO, cli_env, write_policy

pytestmark = pytest.mark.kernel
PY = sys.executable

POLICY = """
version: 1
policies:
  acme:
    memory: {max: 1Gi}
    children:
      web:
        container:
          memory: {max: 128Mi}
          pids: {max: 64}
        launch:
          network: {mode: loopback}
          volumes: [{path: /tmp}]       # the tests' files (the rest of the host is read-only to it)
      plain:
        container:
          pids: {max: 32}
        launch:
          namespaces: [uts, ipc, pid, net, mount]
"""


@pytest.fixture
def pol(tmp_path, cli):
    p = write_policy(tmp_path, "p.yaml", POLICY)
    cli("apply", str(p), check=True)
    return p


@pytest.fixture
def run(cli, pol):
    """`cgman run -f POLICY -p GROUP [flags] -- CMD`."""
    def go(group: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
        cut = args.index("--") if "--" in args else len(args)
        return cli("run", "-f", str(pol), "-p", group, *args[:cut], *args[cut:], timeout=timeout)
    return go


def _running(pid: int) -> bool:
    """True while pid exists and is not a zombie. The process may be reaped between
    the open and the read of /proc/PID/stat (ESRCH, seen in CI): that is "gone" too."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def record(tmp_path: Path, name: str) -> dict:
    return json.loads((tmp_path / "run" / "containers" / name / "record.json").read_text())


def leaf_dirs(host, leaf: str) -> list[str]:
    out = []
    for d in host.drivers:
        for t in d.hierarchies():
            out.append(os.path.join(t.mount, host.root, leaf))
    return out


def assert_no_leftovers(host, tmp_path: Path, leaf: str) -> None:
    assert not [d for d in leaf_dirs(host, leaf) if os.path.exists(d)], "container cgroup left behind"
    scratch = tmp_path / "state" / "containers"
    assert not scratch.exists() or not list(scratch.iterdir()), "scratch dir left behind"


# ------------------------------------------------------------------------ namespaces
def test_hostname_is_the_containers_own(run, host):
    p = run("acme/web", "--name", "h1", "--hostname", "box-1", "--", "hostname")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "box-1"
    assert socket.gethostname() != "box-1"
    p = run("acme/web", "--name", "h2", "--", "hostname")
    assert p.stdout.strip() == "h2", "the hostname defaults to the container name"


@pytest.mark.cgroup2
def test_first_read_of_proc_self_cgroup_is_the_container_cgroup(run, host, tmp_path):
    """acme/plain has no cgroup namespace: the paths are the host's view."""
    p = run("acme/plain", "--name", "c1", "--", "cat", "/proc/self/cgroup")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    want = f"/{host.root}/acme/plain/c1"
    hierarchies = [t for d in host.drivers for t in d.hierarchies()]
    inside = [ln for ln in lines if ln.endswith(":" + want)]
    # One line per hierarchy cgman manages (v1 controllers and cgroup2), all at the leaf.
    assert len(inside) == len(hierarchies), (lines, hierarchies)
    if host.v2 is not None:
        assert f"0::{want}" in lines
    assert_no_leftovers(host, tmp_path, "acme/plain/c1")


@pytest.mark.cgroup2
def test_cgroup_namespace_shows_its_own_cgroup_as_root(run, host):
    p = run("acme/web", "--name", "c2", "--", "cat", "/proc/self/cgroup")
    assert p.returncode == 0, p.stderr
    for line in p.stdout.strip().splitlines():
        if "name=systemd" in line:      # not a hierarchy cgman places processes in
            continue
        assert line.rsplit(":", 1)[1] == "/", line


@pytest.mark.cgroup2
def test_a_global_flag_after_the_workload_is_the_workloads(run, host):
    """`cgman run -p g echo -v` echoes -v: options end where the workload begins (without `--`),
    so cgman's own -v, --run-dir... are not taken out of the workload's arguments."""
    p = run("acme/web", "--rm", "echo", "-v", "--run-dir", "x")
    assert p.returncode == 0 and p.stdout == "-v --run-dir x\n", p.stderr


def test_pid_1_inside(run, host):
    p = run("acme/web", "--no-init", "--", "sh", "-c", "echo $$")
    assert p.stdout.strip() == "1", "without an init the workload is PID 1"
    p = run("acme/web", "--", "sh", "-c", "echo $$; cat /proc/1/comm; ls /proc | grep -c '^[0-9]'")
    pid, comm, count = p.stdout.split()
    assert (pid, comm) == ("2", "cgman-init")
    assert int(count) <= 4, "/proc shows only the container's pid namespace"


def test_init_reaps_orphaned_zombies(run, host):
    # The orphan's parent exits at once; it is reparented to PID 1, which must reap it.
    code = ("import os, time\n"
            "if os.fork() == 0:\n"
            "    if os.fork() == 0: os._exit(0)\n"
            "    os._exit(0)\n"
            "os.wait(); time.sleep(0.3)\n"
            "zombies = [p for p in os.listdir('/proc') if p.isdigit() and\n"
            "           open(f'/proc/{p}/stat').read().rsplit(')', 1)[1].split()[0] == 'Z']\n"
            "print(len(zombies))\n")
    p = run("acme/web", "--", PY, "-c", code)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "0"


LOOP_CHECK = ("import socket\n"
              "devs = [l.split(':')[0].strip() for l in open('/proc/net/dev').readlines()[2:]]\n"
              "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
              "try:\n"
              "    c = socket.create_connection(s.getsockname(), timeout=2); up = 'up'\n"
              "except OSError as e:\n"
              "    up = 'down'\n"
              "print(','.join(sorted(devs)), up)\n")


def test_loopback_network_has_only_lo_and_it_is_up(run, host):
    p = run("acme/web", "--network", "loopback", "--", PY, "-c", LOOP_CHECK)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["lo", "up"]


def test_none_network_has_nothing_up(run, host):
    p = run("acme/web", "--network", "none", "--", PY, "-c", LOOP_CHECK)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["lo", "down"]


def test_user_namespace_root_is_an_unprivileged_host_uid(run, host, tmp_path):
    import tempfile
    # pytest's tmp_path sits under a 0700 directory: uid 100000 could not reach it.
    out = Path(tempfile.mkdtemp(prefix="cgman-test-userns-"))
    out.chmod(0o777)
    try:
        _userns_checks(run, out)
    finally:
        shutil.rmtree(out)


def _userns_checks(run, out: Path) -> None:
    p = run("acme/web", "--userns", "--", "sh", "-c", f"id -u; cat /proc/self/uid_map; touch {out}/made")
    assert p.returncode == 0, p.stderr
    uid, *mapping = p.stdout.split()
    assert uid == "0", "root inside"
    assert mapping == ["0", "100000", "65536"]
    assert (out / "made").stat().st_uid == 100000, "...which is uid 100000 on the host"
    # And it cannot do what host root can: the file is owned by host root.
    p = run("acme/web", "--userns", "--", "sh", "-c", "echo x >> /etc/hostname")
    assert p.returncode != 0


# ---------------------------------------------------------------------- rootfs
@pytest.fixture
def img_dir():
    """A world-traversable temp dir: in a user namespace the mapped root (uid 100000) must
    reach layers and scratch, and pytest's tmp_path sits under a 0700 directory."""
    import tempfile
    d = Path(tempfile.mkdtemp(prefix="cgman-test-img-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d)


@pytest.fixture
def busybox_layers(img_dir):
    tmp_path = img_dir
    bb = shutil.which("busybox")
    if bb is None or b"statically linked" not in subprocess.run(["file", "-L", bb], capture_output=True).stdout:
        pytest.fail("these tests need a static busybox: apt-get install busybox-static file (scripts/setup.sh)")
    base = tmp_path / "img" / "base"
    (base / "bin").mkdir(parents=True)
    shutil.copy(bb, base / "bin" / "busybox")
    for tool in ("sh", "cat", "ls", "echo", "hostname", "id", "ps", "sleep", "touch", "rm"):
        (base / "bin" / tool).symlink_to("busybox")
    (base / "etc").mkdir()
    (base / "etc" / "motd").write_text("base\n")
    app = tmp_path / "img" / "app"
    app.mkdir()
    (app / "motd-app").write_text("app\n")
    (app / "etc").mkdir()
    (app / "etc" / "motd").write_text("app wins\n")
    return base, app


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() and not p.is_symlink() else b"")
            for p in sorted(path.rglob("*"))}


def test_overlay_writes_never_reach_a_lower_layer(run, host, tmp_path, busybox_layers):
    base, app = busybox_layers
    before = (_tree(base), _tree(app))
    p = run("acme/web", "--name", "ov", "--layer", str(base), "--layer", str(app), "--",
            "sh", "-c", "cat /etc/motd; echo changed > /etc/motd; echo new > /new; rm /motd-app; "
                        "cat /etc/motd /new; ls /motd-app 2>&1; ls /")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[:3] == ["app wins", "changed", "new"], "upper layers win; writes are visible inside"
    assert (_tree(base), _tree(app)) == before, "no lower layer changed"
    assert not (tmp_path / "state" / "containers" / "ov").exists(), "the upper dir is removed at exit"
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(base) not in mounts and "overlay" not in [ln.split()[-3] for ln in mounts.splitlines()
                                                         if str(tmp_path) in ln]


def test_rootfs_pivot_root_and_minimal_dev(run, host, busybox_layers):
    base, _ = busybox_layers
    p = run("acme/web", "--rootfs", str(base), "--", "sh", "-c",
            "ls /; ls /dev; echo x > /dev/null && echo devnull-ok; ls /proc/1/comm")
    assert p.returncode == 0, p.stderr
    out = p.stdout.split()
    assert {"bin", "etc", "dev", "proc"} <= set(out)
    assert "tmp" not in out and "home" not in out, "the host's / is not visible"
    assert {"null", "zero", "urandom", "tty"} <= set(out) and "devnull-ok" in out
    assert "sda" not in out and "vda" not in out, "no host disks in /dev"


def test_a_failed_exec_on_layers_undoes_every_step(run, host, tmp_path, busybox_layers):
    """The launch got as far as its overlay scratch and a released process: all of it is undone."""
    base, _ = busybox_layers
    p = run("acme/web", "--name", "nocmd", "--layer", str(base), "--", "/nonexistent/cmd")
    assert p.returncode == 127 and "command not found" in p.stderr, p.stderr
    assert not (tmp_path / "run" / "containers" / "nocmd").exists()
    assert_no_leftovers(host, tmp_path, "acme/web/nocmd")


def test_user_namespace_with_overlay(run, host, busybox_layers, img_dir):
    base, _ = busybox_layers
    state = img_dir / "state"
    p = run("acme/web", "--state-dir", str(state), "--userns", "--layer", str(base), "--",
            "sh", "-c", "id -u; echo hi > /f; cat /f")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["0", "hi"]


# ---------------------------------------------------------------------- placement and limits
@pytest.mark.cgroup2
def test_container_limits_are_the_groups_container_block_plus_flags(run, host, tmp_path, cli):
    p = run("acme/web", "-d", "--name", "lim", "--memory", "64Mi", "--pids", "7", "--cpus", "0.5", "--",
            "sleep", "30")
    assert p.returncode == 0, p.stderr
    try:
        mem = "memory.limit_in_bytes" if host.layout.version_of("memory") == 1 else "memory.max"
        from cgman.plan import Write
        assert host.read(Write("acme/web/lim", "memory", mem, "")).strip() == str(64 << 20)
        assert host.read(Write("acme/web/lim", "pids", "pids.max", "")).strip() == "7"
        if host.layout.version_of("cpu") == 1:
            assert host.read(Write("acme/web/lim", "cpu", "cpu.cfs_quota_us", "")).strip() == "50000"
        else:
            assert host.read(Write("acme/web/lim", "cpu", "cpu.max", "")).split() == ["50000", "100000"]
        rec = record(tmp_path, "lim")
        assert rec["limits"]["memory_max_bytes"] == 64 << 20 and rec["state"] == "running"
        assert host.procs("acme/web/lim") == {rec["pid"]} | host.procs("acme/web/lim")
        assert rec["pid"] in host.procs("acme/web/lim")
    finally:
        cli("stop", "lim", "-t", "0s")
    assert_no_leftovers(host, tmp_path, "acme/web/lim")


@pytest.mark.cgroup2
def test_memory_limit_kills_the_workload(run, host):
    p = run("acme/web", "--memory", "32Mi", "--", PY, "-c",
            "b = bytearray(200 << 20)\nb[::4096] = b'x' * len(b[::4096])\nprint('survived')")
    assert p.returncode == 137, (p.returncode, p.stdout, p.stderr)
    assert "survived" not in p.stdout


def test_pids_limit_applies_inside(run, host):
    p = run("acme/web", "--pids", "5", "--", PY, "-c",
            "import os\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n"
            "            import time; time.sleep(5); os._exit(0)\n        n += 1\n"
            "except OSError as e:\n    print(n, e.errno)\n")
    assert p.returncode == 0, p.stderr
    n, err = p.stdout.split()
    assert int(n) == 5 - 2 and err == "11", "init + python + 3 children = pids.max 5; then EAGAIN"


# ---------------------------------------------------------------------- lifecycle
@pytest.mark.cgroup2
def test_exit_codes_and_signals_propagate(run, host):
    assert run("acme/web", "--", "sh", "-c", "exit 3").returncode == 3
    assert run("acme/web", "--", "sh", "-c", "kill -TERM $$").returncode == 128 + 15
    assert run("acme/web", "--no-init", "--", "sh", "-c", "exit 4").returncode == 4
    assert run("acme/web", "--", "/nonexistent/cmd").returncode == 127


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_forwards_signals_to_the_workload(host, pol, root_name, tmp_path, sig):
    ready = tmp_path / "ready"
    script = (f"trap 'echo got-it; exit 42' {sig.name[3:]}; touch {ready}; "
              "while :; do sleep 0.05; done")
    p = subprocess.Popen([PY, "-m", "cgman", "run", "-f", str(pol), "-p", "acme/web", "--name", "fw", "--",
                          "sh", "-c", script], env=cli_env(root_name, tmp_path), cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert time.monotonic() < deadline and p.poll() is None, p.communicate()
            time.sleep(0.02)
        p.send_signal(sig)
        out, err = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 42, (out, err)
    assert "got-it" in out
    assert record(tmp_path, "fw")["exit_code"] == 42


def test_timeout_stops_the_container_and_exits_124(run, host, tmp_path):
    t = time.monotonic()
    p = run("acme/web", "--name", "slow", "--timeout", "300ms", "--", "sleep", "30")
    assert p.returncode == 124 and "timed out" in p.stderr
    assert time.monotonic() - t < 15
    assert record(tmp_path, "slow")["exit_reason"] == "timeout"
    assert_no_leftovers(host, tmp_path, "acme/web/slow")


@pytest.mark.cgroup2
def test_final_usage_is_read_before_the_cgroup_goes(run, host, tmp_path):
    p = run("acme/web", "--name", "burn", "--", PY, "-c",
            "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass")
    assert p.returncode == 0, p.stderr
    rec = record(tmp_path, "burn")
    assert rec["state"] == "exited" and rec["exit_code"] == 0 and rec["exit_reason"] == "exited"
    assert rec["final_usage"]["cpu_usage_usec"] >= 300_000, rec["final_usage"]
    assert rec["final_usage"]["cpu_usage_usec"] < 2_000_000
    assert_no_leftovers(host, tmp_path, "acme/web/burn")


@pytest.mark.cgroup2
def test_detached_ps_exec_freeze_stop_rm(run, host, cli, tmp_path):
    p = run("acme/web", "-d", "--name", "bg", "--", "sh", "-c", "echo started; exec sleep 600")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "bg"
    try:
        rows = json.loads(cli("ps", "--json", check=True).stdout)
        (row,) = [r for r in rows if r["name"] == "bg"]
        assert row["state"] == "running" and row["group"] == "acme/web" and row["tenant"] == "acme"
        assert row["pid"] > 0 and row["memory_bytes"] > 0 and row["uptime_s"] >= 0

        # exec joins every namespace and the cgroup
        e = cli("exec", "bg", "--", "sh", "-c", "hostname; echo $$; cat /proc/self/cgroup | grep -c ':/$'; exit 7")
        assert e.returncode == 7, e.stderr
        name, pid, at_root = e.stdout.split()
        assert name == "bg" and int(pid) > 2 and int(at_root) >= 1
        procs = host.procs("acme/web/bg")
        assert record(tmp_path, "bg")["pid"] in procs

        cli("freeze", "bg", check=True)
        (row,) = [r for r in json.loads(cli("ps", "--json").stdout) if r["name"] == "bg"]
        assert row["state"] == "frozen"
        cli("thaw", "bg", check=True)

        r = cli("rm", "bg")
        assert r.returncode == 1 and "stop it first" in r.stderr
        s = cli("stop", "bg", "-t", "2s")
        assert s.returncode == 0 and "exit 143" in s.stdout, s.stdout + s.stderr
        assert cli("logs", "bg").stdout == "started\n"
        rows = json.loads(cli("ps", "--json").stdout)
        assert not [r for r in rows if r["name"] == "bg"], "ps hides exited containers"
        (row,) = [r for r in json.loads(cli("ps", "-a", "--json").stdout) if r["name"] == "bg"]
        assert row["state"] == "exited" and row["exit_code"] == 143
        cli("rm", "bg", check=True)
        assert not (tmp_path / "run" / "containers" / "bg").exists()
    finally:
        cli("rm", "--force", "bg")
    assert_no_leftovers(host, tmp_path, "acme/web/bg")


def test_stop_kills_a_workload_that_ignores_sigterm(run, host, cli, tmp_path):
    assert run("acme/web", "-d", "--name", "stubborn", "--", "sh", "-c",
               "trap '' TERM; while :; do sleep 0.05; done").returncode == 0
    t = time.monotonic()
    s = cli("stop", "stubborn", "-t", "300ms")
    assert s.returncode == 0 and "exit 137" in s.stdout, s.stdout + s.stderr
    assert time.monotonic() - t < 30, "stop waited far beyond its 300ms grace"
    assert_no_leftovers(host, tmp_path, "acme/web/stubborn")


def test_rm_force_stops_a_running_container(run, host, cli, tmp_path):
    assert run("acme/web", "-d", "--name", "goner", "--", "sleep", "600").returncode == 0
    cli("rm", "--force", "goner", check=True)
    assert not (tmp_path / "run" / "containers" / "goner").exists()
    assert_no_leftovers(host, tmp_path, "acme/web/goner")


def _supervisor_kill_case(run, host, cli, tmp_path, *args: str) -> dict:
    assert run("acme/web", "-d", "--name", "orphan", *args, "--", "sleep", "600").returncode == 0
    rec = record(tmp_path, "orphan")
    os.kill(rec["supervisor_pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _running(rec["pid"]):
        assert time.monotonic() < deadline, "the container outlived its supervisor"
        time.sleep(0.01)
    g = cli("gc", "--json", check=True)
    assert json.loads(g.stdout) == {"collected": ["orphan"]}
    rec = record(tmp_path, "orphan")
    assert rec["state"] == "exited" and rec["exit_reason"].startswith("collected")
    assert rec["final_usage"] is not None and rec["final_usage"]["cpu_usage_usec"] > 0
    assert_no_leftovers(host, tmp_path, "acme/web/orphan")
    assert json.loads(cli("gc", "--json", check=True).stdout) == {"collected": []}, "exactly once"
    return rec


@pytest.mark.cgroup2
def test_sigkill_of_the_supervisor_leaves_nothing_after_gc(run, host, cli, tmp_path):
    _supervisor_kill_case(run, host, cli, tmp_path)


def test_the_next_command_collects_a_dead_supervisors_container(run, host, cli, tmp_path):
    assert run("acme/web", "-d", "--name", "orphan2", "--", "sleep", "600").returncode == 0
    rec = record(tmp_path, "orphan2")
    os.kill(rec["supervisor_pid"], signal.SIGKILL)
    time.sleep(0.2)
    p = cli("ps", "-a")
    assert "collected container orphan2" in p.stderr
    assert record(tmp_path, "orphan2")["state"] == "exited"
    assert_no_leftovers(host, tmp_path, "acme/web/orphan2")


# ---------------------------------------------------------------------- bridge
# the bridge fixture (a bridge name of the test's own, removed after) is in conftest.py
def bridge_policy(cli, tmp_path: Path, bridge: str, subnet: str) -> Path:
    """Apply a group `net` whose containers get addresses from ``subnet`` on ``bridge``."""
    pol = write_policy(tmp_path, "net.yaml", f"""
version: 1
policies:
  net:
    container: {{pids: {{max: 64}}}}
    launch:
      network: {{mode: bridge, bridge: {bridge}, subnet: {subnet}}}
""")
    cli("apply", str(pol), check=True)
    return pol


def _links() -> str:
    return subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout


def test_two_bridge_containers_talk_over_tcp(cli, host, tmp_path, bridge):
    pol = bridge_policy(cli, tmp_path, bridge, "10.213.7.0/29")
    server = ("import socket\ns = socket.socket(); s.bind(('0.0.0.0', 8080)); s.listen()\n"
              "open('/proc/self/fd/1', 'w').write('listening\\n')\n"
              "c, peer = s.accept(); c.sendall(f'hello {peer[0]}'.encode()); c.close()\n")
    r = cli("run", "-f", str(pol), "-p", "net", "-d", "--name", "srv", "--", PY, "-u", "-c", server)
    assert r.returncode == 0, r.stderr
    try:
        srv = record(tmp_path, "srv")
        assert srv["network"]["address"] == "10.213.7.2" and srv["network"]["gateway"] == "10.213.7.1"
        deadline = time.monotonic() + 10
        while "listening" not in cli("logs", "srv").stdout:
            assert time.monotonic() < deadline, cli("logs", "srv").stdout
            time.sleep(0.05)
        client = ("import socket\ns = socket.create_connection(('10.213.7.2', 8080), timeout=5)\n"
                  "print(s.recv(100).decode())\n"
                  "print(sorted(l.split(':')[0].strip() for l in open('/proc/net/dev').readlines()[2:]))\n")
        c = cli("run", "-f", str(pol), "-p", "net", "--name", "cl", "--", PY, "-c", client)
        assert c.returncode == 0, c.stderr
        hello, devs = c.stdout.strip().splitlines()
        assert hello == "hello 10.213.7.3", "the client got the next address and reached the server"
        assert devs == "['eth0', 'lo']"
    finally:
        cli("rm", "--force", "srv")
    links = _links()
    assert f"{bridge}:" not in links and f"master {bridge}" not in links, "bridge and veths removed"
    assert not (tmp_path / "bridges" / f"{bridge}.json").exists(), "no lease left"
    assert_no_leftovers(host, tmp_path, "net/srv")


def test_subnet_exhausted_is_a_clear_error_and_leaves_nothing(cli, host, tmp_path, bridge):
    pol = bridge_policy(cli, tmp_path, bridge, "10.213.9.0/30")
    assert cli("run", "-f", str(pol), "-p", "net", "-d", "--name", "only", "--", "sleep", "600").returncode == 0
    try:
        r = cli("run", "-f", str(pol), "-p", "net", "--name", "extra", "--", "true")
        assert r.returncode == 1
        assert "subnet 10.213.9.0/30 is exhausted" in r.stderr and len(r.stderr.splitlines()) == 1
        assert not (tmp_path / "run" / "containers" / "extra").exists()
        assert not [d for d in leaf_dirs(host, "net/extra") if os.path.exists(d)]
        leases = json.loads((tmp_path / "bridges" / f"{bridge}.json").read_text())["leases"]
        assert list(leases) == ["10.213.9.2"], "the failed run took no address"
    finally:
        cli("rm", "--force", "only")
    assert f"{bridge}:" not in _links()


def test_sigkill_of_a_bridge_containers_supervisor_frees_its_address(run, host, cli, tmp_path, bridge):
    pol = bridge_policy(cli, tmp_path, bridge, "10.213.11.0/29")
    assert cli("run", "-f", str(pol), "-p", "net", "-d", "--name", "orphan", "--", "sleep", "600").returncode == 0
    rec = record(tmp_path, "orphan")
    os.kill(rec["supervisor_pid"], signal.SIGKILL)
    time.sleep(0.3)
    assert json.loads(cli("gc", "--json", check=True).stdout) == {"collected": ["orphan"]}
    assert f"{bridge}:" not in _links() and "cgv" + rec["id"][:11] not in _links()
    assert not (tmp_path / "bridges" / f"{bridge}.json").exists()
    assert_no_leftovers(host, tmp_path, "net/orphan")


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize("args, message", [
    (("-p", "acme/nope", "--", "true"), "no group 'acme/nope' in the policies (known: acme, acme/web, acme/plain)"),
    (("-p", "acme/web"), "no command given"),
    (("-p", "acme/web", "--rootfs", "/nonexistent-root", "--", "true"), "rootfs /nonexistent-root does not exist"),
    (("-p", "acme/web", "--layer", "/nonexistent-layer", "--", "true"), "layer /nonexistent-layer does not exist"),
    (("-p", "acme/web", "--name", "bad/name", "--", "true"), "bad container name 'bad/name'"),
    (("-p", "acme/web", "--memory", "lots", "--", "true"), "--memory"),
    (("-p", "acme/web", "--network", "wifi", "--", "true"), "--network must be none, loopback or bridge"),
    (("-p", "acme/web", "--timeout", "soon", "--", "true"), "--timeout"),
])
def test_bad_run_input_is_one_clear_line_and_leaves_nothing(cli, pol, host, tmp_path, args, message):
    p = cli("run", "-f", str(pol), *args)
    assert p.returncode != 0
    assert message in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
    assert not list((tmp_path / "run" / "containers").glob("*")) if (tmp_path / "run" / "containers").exists() else True
    assert host.children("acme/web") == []


@pytest.mark.v1host
@pytest.mark.parametrize("how, driver, message", [
    ("env", "systemd", "the systemd cgroup driver needs a pure cgroup v2 host; this one is hybrid"),
    ("flag", "systemd", "the systemd cgroup driver needs a pure cgroup v2 host; this one is hybrid"),
    ("env", "launchd", "CGMAN_CGROUP_DRIVER='launchd': use cgroupfs or systemd"),
    ("flag", "launchd", "--cgroup-driver: 'launchd' is not one of cgroupfs, systemd"),      # a usage error: 2
    ("typer", "launchd", "--cgroup-driver: 'launchd' is not one of cgroupfs, systemd"),
    ("typer", "systemd", "the systemd cgroup driver needs a pure cgroup v2 host; this one is hybrid"),
])
def test_a_cgroup_driver_this_host_cannot_use_is_one_line_and_leaves_nothing(root_name, pol, host, tmp_path,
                                                                            how, driver, message):
    env = dict(cli_env(root_name, tmp_path), **({"CGMAN_CGROUP_DRIVER": driver} if how == "env" else {}))
    words = ["run"] + ([] if how == "env" else ["--cgroup-driver", driver]) + ["-f", str(pol), "-p", "acme/web", "--",
                                                                              "true"]
    # `python -m cgman` reads run's options by the option tables; "typer" goes through the typer command
    cmd = ["-m", "cgman", *words] if how != "typer" else ["-c", f"from cgman.cli.app import run; run({words!r}, 'run')"]
    p = subprocess.run([PY, *cmd], capture_output=True, text=True, env=env, timeout=180, cwd=REPO)
    assert p.returncode == (2 if "is not one of" in message else 1), p.stderr
    assert message in p.stderr and len(p.stderr.splitlines()) == 1, p.stderr
    assert not list((tmp_path / "run" / "containers").glob("*")) if (tmp_path / "run" / "containers").exists() else True
    assert host.children("acme/web") == []


def test_duplicate_name_is_refused_and_the_first_is_untouched(run, host, cli, tmp_path):
    assert run("acme/web", "-d", "--name", "dup", "--", "sleep", "600").returncode == 0
    try:
        first = record(tmp_path, "dup")
        p = run("acme/web", "--name", "dup", "--", "true")
        assert p.returncode == 1 and "a container named 'dup' already exists" in p.stderr
        assert record(tmp_path, "dup") == first
        assert host.children("acme/web") == ["dup"]
    finally:
        cli("rm", "--force", "dup")


def test_unapplied_group_is_a_clear_error(cli, host, tmp_path):
    pol = write_policy(tmp_path, "q.yaml", "version: 1\npolicies:\n  fresh: {}\n")
    p = cli("run", "-f", str(pol), "-p", "fresh", "--", "true")
    assert p.returncode == 1 and "apply its policy first" in p.stderr
    assert not (tmp_path / "run" / "containers").exists() or not list((tmp_path / "run" / "containers").iterdir())


def test_setup_failure_in_the_child_undoes_everything(run, host, tmp_path):
    d = tmp_path / "notaroot"
    d.mkdir()
    (d / "proc").write_text("a file where /proc must be a directory")
    p = run("acme/web", "--name", "broken", "--rootfs", str(d), "--", "/bin/true")
    assert p.returncode == 1
    assert "container setup failed while" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "containers" / "broken").exists()
    assert_no_leftovers(host, tmp_path, "acme/web/broken")


def test_exec_and_stop_of_unknown_containers(cli, host):
    for args in (("exec", "ghost", "--", "true"), ("stop", "ghost"), ("rm", "ghost"), ("logs", "ghost")):
        p = cli(*args)
        assert p.returncode == 1, args
        assert "no container named 'ghost'" in p.stderr or "no group or container named 'ghost'" in p.stderr, p.stderr


def test_exec_into_an_exited_container_is_refused(run, cli, host):
    assert run("acme/web", "--name", "done", "--", "true").returncode == 0
    p = cli("exec", "done", "--", "true")
    assert p.returncode == 1 and "is not running (state: exited)" in p.stderr


@pytest.mark.cgroup2
def test_run_finds_the_group_that_apply_applied_without_f(cli, host, tmp_path):
    """Applied from a file outside the policy dir: run -p GROUP still knows it."""
    pol = write_policy(tmp_path, "elsewhere.yaml",
                       "version: 1\npolicies:\n  solo:\n    container: {pids: {max: 9}}\n")
    cli("apply", str(pol), check=True)
    p = cli("run", "-p", "solo", "--name", "s1", "--", "cat", "/proc/self/cgroup")
    assert p.returncode == 0, p.stderr
    assert record(tmp_path, "s1")["limits"] == {"pids_max": 9}
    # Changing the file and re-applying changes what run uses.
    pol.write_text("version: 1\npolicies:\n  solo:\n    container: {pids: {max: 11}}\n")
    cli("apply", str(pol), check=True)
    assert cli("run", "-p", "solo", "--name", "s2", "--", "true").returncode == 0
    assert record(tmp_path, "s2")["limits"] == {"pids_max": 11}


def test_a_group_not_among_the_applied_ones_says_so_and_how_to_fix_it(cli, host, tmp_path):
    """The applied groups win over the policy dir, so a group only in the dir (say, in a file the
    agent has not applied yet) must not read as "not in the policies": the error names the source."""
    pol = write_policy(tmp_path, "elsewhere.yaml", "version: 1\npolicies:\n  solo: {}\n")
    cli("apply", str(pol), check=True)
    p = cli("run", "-p", "later", "--", "true")
    assert p.returncode == 1, p.stderr
    err = p.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"no group 'later' applied under cgroup root '{host.root}' (known: solo)" in err, err
    assert "`cgman apply FILE`" in err and "-f FILE" in err, err
    assert not (tmp_path / "run" / "containers").exists() or not list((tmp_path / "run" / "containers").iterdir())


def test_rm_force_drops_an_unreadable_record(cli, host, tmp_path):
    d = tmp_path / "run" / "containers" / "junk"
    d.mkdir(parents=True)
    (d / "record.json").write_text("{half")
    p = cli("rm", "junk")
    assert p.returncode == 1 and "unreadable container record" in p.stderr
    assert cli("rm", "--force", "junk").returncode == 0
    assert not d.exists()


def test_a_name_that_is_a_policy_group_never_takes_that_group_over(cli, host, tmp_path):
    """Review finding: `run -p acme --name svc` once reused acme/svc and removed it at exit."""
    pol = write_policy(tmp_path, "svc.yaml", "version: 1\npolicies:\n  acme:\n    children:\n      svc: {}\n")
    cli("apply", str(pol), check=True)
    p = cli("run", "-f", str(pol), "-p", "acme", "--name", "svc", "--", "true")
    assert p.returncode == 1 and "a cgroup acme/svc already exists" in p.stderr
    assert host.exists("acme/svc"), "the policy group is untouched"
    assert not (tmp_path / "run" / "containers" / "svc").exists()


def test_launching_into_a_frozen_group_is_refused_at_once(cli, pol, host, tmp_path):
    cli("freeze", "acme/web", check=True)
    try:
        p = cli("run", "-f", str(pol), "-p", "acme/web", "--", "true", timeout=30)
        assert p.returncode == 1 and "group acme/web is frozen" in p.stderr
        assert host.children("acme/web") == []
    finally:
        cli("thaw", "acme/web")


def test_exec_into_a_user_namespace_container_joins_it_and_its_cgroups(run, host, cli, tmp_path):
    """`cgman exec`'s child is not held (it is cloned sharing the launcher's memory, and joins
    its v1 cgroups itself): it must still enter the user namespace (setns needs a child of its
    own, single-threaded) as root there, and be in the container's leaf in every hierarchy."""
    assert run("acme/plain", "-d", "--userns", "--name", "ux", "--", "sleep", "600").returncode == 0
    try:
        e = cli("exec", "ux", "--", "sh", "-c", "id -u; cat /proc/self/uid_map; cat /proc/self/cgroup")
        assert e.returncode == 0, e.stderr
        uid, *rest = e.stdout.split("\n")
        assert uid == "0" and rest[0].split() == ["0", "100000", "65536"]
        want = f"/{host.root}/acme/plain/ux"
        inside = [ln for ln in rest[1:] if ln.endswith(":" + want)]
        assert len(inside) == sum(len(d.hierarchies()) for d in host.drivers), rest
    finally:
        cli("rm", "--force", "ux")
    assert_no_leftovers(host, tmp_path, "acme/plain/ux")


def test_userns_container_dies_with_its_supervisor(run, host, cli, tmp_path):
    """Changing credentials clears PDEATHSIG; the child sets it again after setresuid."""
    rec = _supervisor_kill_case(run, host, cli, tmp_path, "--userns")
    assert rec["user_map"] == {"uid": 100000, "gid": 100000, "count": 65536}


def test_detached_run_of_a_missing_command_exits_127(run, host, tmp_path):
    p = run("acme/web", "-d", "--name", "nocmd", "--", "/nonexistent/cmd")
    assert p.returncode == 127 and "command not found" in p.stderr
    assert not (tmp_path / "run" / "containers" / "nocmd").exists()


def test_rm_leaves_a_container_to_a_supervisor_that_is_still_recording_it(run, host, cli, tmp_path):
    """Review finding: rm once collected behind a live (here: stopped) supervisor."""
    assert run("acme/web", "-d", "--name", "slowsup", "--", "sleep", "0.3").returncode == 0
    rec = record(tmp_path, "slowsup")
    os.kill(rec["supervisor_pid"], signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 10
        while _running(rec["pid"]):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        p = cli("rm", "slowsup", timeout=60)
        assert p.returncode == 1 and "still recording it" in p.stderr
        assert record(tmp_path, "slowsup")["state"] == "running", "nobody collected behind its back"
    finally:
        os.kill(rec["supervisor_pid"], signal.SIGCONT)
    deadline = time.monotonic() + 20
    while record(tmp_path, "slowsup")["state"] != "exited":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert record(tmp_path, "slowsup")["exit_code"] == 0
    cli("rm", "slowsup", check=True)
    assert_no_leftovers(host, tmp_path, "acme/web/slowsup")


def test_a_failed_cleanup_is_retried_by_gc(run, host, cli, tmp_path):
    """An exited container whose cleanup failed stays on the books until gc completes it."""
    assert run("acme/web", "--name", "sticky", "--", "true").returncode == 0
    path = tmp_path / "run" / "containers" / "sticky" / "record.json"
    rec = json.loads(path.read_text())
    # What a failed rmdir leaves: the leaf still there, the record marked.
    host.create("acme/web/sticky")
    rec.update(cleanup_pending=True, exit_reason="exited; cleanup incomplete: EBUSY")
    path.write_text(json.dumps(rec))
    p = cli("rm", "sticky")
    assert p.returncode == 0, p.stderr       # rm retries the cleanup first, and it works now
    assert not host.exists("acme/web/sticky")
    # And gc does the same for records nobody removes.
    assert run("acme/web", "--name", "sticky2", "--", "true").returncode == 0
    path = tmp_path / "run" / "containers" / "sticky2" / "record.json"
    rec = json.loads(path.read_text())
    host.create("acme/web/sticky2")
    rec.update(cleanup_pending=True)
    path.write_text(json.dumps(rec))
    assert json.loads(cli("gc", "--json", check=True).stdout) == {"collected": ["sticky2"]}
    rec = record(tmp_path, "sticky2")
    assert rec["state"] == "exited" and not rec["cleanup_pending"] and rec["final_usage"] is not None
    assert_no_leftovers(host, tmp_path, "acme/web/sticky2")
