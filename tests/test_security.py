"""A default container cannot undo its limits or leave its bill: the escape matrix.

Each attempt runs inside a real container and must fail; afterwards the host reads the
container's limits and its membership in every hierarchy unchanged. The same attempts from
a `--privileged` container (in a group that allows it) succeed, which shows the matrix can
fail. Every attempt is harmless when it succeeds: writes go only to this test's cgroup root
(a limit rewritten with the value it has, a short-lived subshell moved between our groups),
mounts live in the container's own mount namespace, and the dangerous syscalls (reboot,
kexec_load, init_module, swapon) are called with arguments that cannot work and only where
the filter must answer EPERM; in the privileged run their capability is checked instead.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from pathlib import Path

import pytest

from .conftest import REPO, write_policy

pytestmark = pytest.mark.kernel

POLICY = """
version: 1
policies:
  t:
    memory: {max: 1Gi}
    children:
      box:
        container: {memory: {max: 64Mi}, pids: {max: 64}}
        launch: {network: {mode: loopback}}
      lax:
        container: {memory: {max: 64Mi}, pids: {max: 64}}
        launch: {allow_privileged: true, network: {mode: loopback}}
      ping:
        launch: {capabilities: {add: [NET_RAW]}, network: {mode: loopback}}
      other: {}
"""

# The probes: one line "name=ok" or "name=no" each, then "done", then the container waits.
PROBES = r"""
probe() { n=$1; shift; if "$@" >/dev/null 2>&1; then echo "$n=ok"; else echo "$n=no"; fi; }
mkdir -p $MNT $NODES
probe host_write sh -c "echo x > $HOSTFILE"
probe own_limit sh -c "echo $OWN_VALUE > $OWN_LIMIT"
probe parent_limit sh -c "echo $PARENT_VALUE > $PARENT_LIMIT"
[ -n "$VIEW_LIMIT" ] && probe view_limit sh -c "echo $OWN_VALUE > $VIEW_LIMIT"
probe procs_other sh -c 'echo $$ > $OTHER_PROCS'
probe procs_child sh -c 'd=${VIEW_DIR:-$OWN_DIR}/probe; mkdir -p $d && echo $$ > $d/cgroup.procs'
[ -n "$ROOT_PROCS" ] && probe procs_root sh -c 'echo $$ > $ROOT_PROCS'
probe mount_cgroup2 mount -t cgroup2 none $MNT
probe mount_proc mount -t proc proc $MNT
probe mount_sysfs mount -t sysfs sys $MNT
probe mknod_block mknod $NODES/blk b 7 250
probe open_disk head -c 1 $DISK
probe unshare_user unshare -U true
probe masked sh -c 'head -c 1 /proc/timer_list | grep -q .'
probe exe_write sh -c 'echo x >> /proc/1/exe'
probe environ sh -c "tr '\0' '\n' < /proc/1/environ | grep -q CGMAN_TEST_SECRET"
echo "caps=$(grep CapEff /proc/self/status | cut -f2)"
echo "exe=$(readlink /proc/1/exe)"
echo done
sleep 60
"""

# Called only in default containers, with arguments that cannot work anyway: the filter
# (and the missing capability) must answer EPERM before the kernel looks at them.
SYSCALLS = {"x86_64": {"reboot": 169, "kexec_load": 246, "init_module": 175, "swapon": 167},
            "aarch64": {"reboot": 142, "kexec_load": 104, "init_module": 105, "swapon": 224}}
SYSCALL_PROBE = r"""
import ctypes, errno, json, sys
libc = ctypes.CDLL(None, use_errno=True)
nr = json.loads(sys.argv[1])
args = {"reboot": (0xdead, 0, 0, 0), "kexec_load": (0, 0, 0, 0x80), "init_module": (0, 0, 0),
        "swapon": (b"/nonexistent-cgman", 0)}
for name, n in sorted(nr.items()):
    r = libc.syscall(n, *args[name])
    print(f"{name}={'ok' if r >= 0 else errno.errorcode.get(ctypes.get_errno())}")
"""


@pytest.fixture
def pol(tmp_path, cli, host):     # host: removes this test's cgroup root afterwards
    p = write_policy(tmp_path, "sec.yaml", POLICY)
    cli("apply", str(p), check=True)
    return p


def _disk() -> str:
    """A block device the host's root can open (a disk; else an idle loop device, as in a VM
    sandbox that keeps its disk from root too)."""
    names = sorted(os.listdir("/sys/block"), key=lambda n: (n.startswith(("loop", "ram", "zram")), n))
    for name in names:
        try:
            os.close(os.open(f"/dev/{name}", os.O_RDONLY | os.O_CLOEXEC))
            return f"/dev/{name}"
        except OSError:
            continue
    pytest.fail("no block device on this host that root can open, to probe")


def _tree_path(host, controller: str, rel: str, file: str) -> str:
    d = host.driver_for(controller)
    t = d.tree(controller) if hasattr(d, "tree") else d.t
    return t.path(rel, file)


def _probe_env(host, group: str, name: str, mnt: str, default: bool) -> dict[str, str]:
    leaf = f"{group}/{name}"
    limit_file = "memory.max" if host.layout.version_of("memory") == 2 else "memory.limit_in_bytes"
    own = _tree_path(host, "memory", leaf, limit_file)
    parent = _tree_path(host, "memory", group, limit_file)
    env = {"OWN_LIMIT": own, "OWN_DIR": os.path.dirname(own), "OWN_VALUE": str(64 << 20), "PARENT_LIMIT": parent,
           "PARENT_VALUE": Path(parent).read_text().strip(),
           "OTHER_PROCS": _tree_path(host, "pids", "t/other", "cgroup.procs"),
           "MNT": mnt, "DISK": _disk(), "VIEW_LIMIT": "", "VIEW_DIR": "", "ROOT_PROCS": ""}
    if host.layout.version_of("pids") == 1:
        env["ROOT_PROCS"] = _tree_path(host, "pids", ".", "cgroup.procs")
    if default:   # the container's own view; in a privileged one this path is the host's root group
        view = "/sys/fs/cgroup/memory" if host.layout.version_of("memory") == 1 else "/sys/fs/cgroup"
        env["VIEW_LIMIT"], env["VIEW_DIR"] = f"{view}/{limit_file}", view
    return env


def _results(cli, name: str, timeout: float = 120) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    out = ""
    while time.monotonic() < deadline:
        out = cli("logs", name).stdout
        if "\ndone" in out or out.startswith("done"):
            return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        time.sleep(0.2)
    raise AssertionError(f"the probes did not finish: {out}")


def _nsdelegate() -> bool:
    """cgroup2 mounted with nsdelegate (systemd does): the kernel refuses writes to the
    interface files of a cgroup namespace's root from inside it."""
    text = Path("/proc/self/mountinfo").read_text()
    return any(" - cgroup2 " in ln and "nsdelegate" in ln.split(" - ")[1] for ln in text.splitlines())


def _memberships(pid: int) -> list[str]:
    return sorted(Path(f"/proc/{pid}/cgroup").read_text().splitlines())


def _workload(init_pid: int) -> int:
    kids = Path(f"/proc/{init_pid}/task/{init_pid}/children").read_text().split()
    assert kids, "the init has no workload"
    return int(kids[0])


def _escape(cli, host, pol, tmp_path, group: str, *flags: str, rootfs: Path | None = None) -> dict[str, str]:
    """Run the probes in a detached container; check the host's view after; return results."""
    name = f"esc{os.urandom(3).hex()}"
    default = "--privileged" not in flags
    mnt = "/tmp/mnt" if rootfs else str(tmp_path / "mnt")
    if not rootfs:
        os.makedirs(mnt, exist_ok=True)
        os.makedirs(tmp_path / "nodes", exist_ok=True)
    env = _probe_env(host, group, name, mnt, default)
    env["NODES"] = "/tmp" if rootfs else str(tmp_path / "nodes")
    # a host file outside /tmp (a container's /tmp is its own): the repository's top
    env["HOSTFILE"] = str(REPO / f".cgman-probe-{name}")
    args = ["run", "-f", str(pol), "-p", group, "--name", name, "-d", *flags]
    args += ["--rootfs", str(rootfs)] if rootfs else []
    for k, v in env.items():
        args += ["-e", f"{k}={v}"]
    os.environ["CGMAN_TEST_SECRET"] = "hunter2"
    try:
        cli(*args, "--", "sh", "-c", PROBES, check=True)
    finally:
        del os.environ["CGMAN_TEST_SECRET"]
    try:
        res = _results(cli, name)
        # What counts is the host's file, not the write: below /tmp (a checkout there, say) the
        # container's write succeeds into its own /tmp overlay and never reaches the host.
        res["host_write"] = "ok" if Path(env["HOSTFILE"]).exists() else "no"
        rec = json.loads(cli("inspect", name, check=True).stdout)
        init = rec["pid"]
        wl = _workload(init)
        if default:
            # unchanged: its limit, and the workload in its own leaf in every hierarchy
            assert Path(env["OWN_LIMIT"]).read_text().strip() in (str(64 << 20), "67108864")
            assert _memberships(wl) == _memberships(init)
            for line in _memberships(wl):
                ctl = line.split(":")[1]
                if ctl and "name=" not in ctl or line.startswith("0::"):
                    assert line.endswith(f"/{host.root}/{group}/{name}"), line
        return res
    finally:
        cli("stop", "-t", "0s", name)
        cli("rm", "-f", name)
        Path(env["HOSTFILE"]).unlink(missing_ok=True)


BLOCKED = ("host_write", "own_limit", "parent_limit", "view_limit", "procs_other", "procs_child", "procs_root",
           "mount_cgroup2", "mount_proc", "mount_sysfs", "mknod_block", "open_disk", "unshare_user", "masked",
           "exe_write", "environ")


def _assert_all_blocked(res: dict[str, str]) -> None:
    opened = [k for k in BLOCKED if res.get(k) == "ok"]
    assert not opened, f"escapes that worked: {opened} ({res})"
    assert res["exe"].startswith("/memfd:cgman-init"), res["exe"]
    caps = int(res["caps"], 16)
    assert caps == 0x800405fb, f"CapEff {caps:#x} is not the default set"     # Podman's eleven


@pytest.fixture
def busybox_root(tmp_path):
    import tempfile
    bb = shutil.which("busybox")
    if bb is None:
        pytest.fail("these tests need a static busybox: apt-get install busybox-static (scripts/setup.sh)")
    root = Path(tempfile.mkdtemp(prefix="cgman-test-sec-"))
    root.chmod(0o755)
    (root / "bin").mkdir()
    (root / "tmp" / "mnt").mkdir(parents=True)
    (root / "tmp").chmod(0o1777)
    shutil.copy(bb, root / "bin" / "busybox")
    for tool in ("sh", "echo", "mount", "mknod", "head", "unshare", "grep", "tr", "readlink", "cut", "sleep",
                 "cat", "true"):
        (root / "bin" / tool).symlink_to("busybox")
    yield root
    shutil.rmtree(root)


# ---------------------------------------------------------------------- the matrix
@pytest.mark.cgroup2
@pytest.mark.parametrize("userns", [False, True], ids=["root", "userns"])
def test_a_default_container_cannot_escape(cli, host, pol, tmp_path, userns):
    res = _escape(cli, host, pol, tmp_path, "t/box", *(["--userns"] if userns else []))
    _assert_all_blocked(res)


@pytest.mark.parametrize("userns", [False, True], ids=["root", "userns"])
def test_a_default_container_with_a_rootfs_cannot_escape(cli, host, pol, tmp_path, busybox_root, userns):
    if userns:       # container root is host uid 100000: its root must be its own to set up /dev
        for p in [busybox_root, *busybox_root.rglob("*")]:
            os.lchown(p, 100000, 100000)
    res = _escape(cli, host, pol, tmp_path, "t/box", *(["--userns"] if userns else []), rootfs=busybox_root)
    _assert_all_blocked(res)


@pytest.mark.cgroup2
def test_the_same_attempts_work_when_privileged(cli, host, pol, tmp_path):
    """The matrix can fail: with the protections off the same writes and mounts succeed."""
    res = _escape(cli, host, pol, tmp_path, "t/lax", "--privileged")
    should_work = ["host_write", "parent_limit", "procs_child", "mount_cgroup2", "mount_proc", "mknod_block",
                   "open_disk", "unshare_user", "masked"]
    if host.layout.version_of("memory") == 1 or not _nsdelegate():
        should_work.append("own_limit")     # with nsdelegate the kernel keeps a cgroupns root's files
    if host.layout.version_of("pids") == 1:
        # On cgroup v2 the kernel itself refuses a move out of the writer's cgroup namespace
        # (its root is the container's leaf), privileged or not; v1 has no such rule.
        should_work += ["procs_other", "procs_root"]
    assert [k for k in should_work if res.get(k) != "ok"] == [], res
    caps = int(res["caps"], 16)
    for cap in (16, 21, 22):      # SYS_MODULE, SYS_ADMIN, SYS_BOOT: what the syscall probes need
        assert caps >> cap & 1
    assert res["environ"] == "no", "the environment is clean even when privileged"


@pytest.mark.cgroup2
def test_dangerous_syscalls_get_eperm(cli, pol):
    table = SYSCALLS.get(platform.machine())
    if table is None:
        pytest.fail(f"no syscall numbers for {platform.machine()}: add them to SYSCALLS")
    import sys
    p = cli("run", "-f", str(pol), "-p", "t/box", "--rm", "--", sys.executable, "-c", SYSCALL_PROBE,
            json.dumps(table))
    assert p.returncode == 0, p.stderr
    got = dict(line.split("=") for line in p.stdout.split())
    assert got == {k: "EPERM" for k in table}, got


def test_the_environment_test_can_fail(cli, pol):
    """A variable passed on purpose (-e KEY) is there: the probe for it would see a leak."""
    os.environ["CGMAN_TEST_SECRET"] = "hunter2"
    try:
        leak = cli("run", "-f", str(pol), "-p", "t/box", "--rm", "-e", "CGMAN_TEST_SECRET", "--", "sh", "-c",
                   "tr '\\0' '\\n' < /proc/1/environ | grep CGMAN_TEST_SECRET")
        clean = cli("run", "-f", str(pol), "-p", "t/box", "--rm", "--", "sh", "-c",
                    "tr '\\0' '\\n' < /proc/1/environ; env")
    finally:
        del os.environ["CGMAN_TEST_SECRET"]
    assert "CGMAN_TEST_SECRET=hunter2" in leak.stdout
    assert "CGMAN_TEST_SECRET" not in clean.stdout and "PATH=" in clean.stdout


def test_the_operators_term_is_the_one_variable_a_container_gets(cli, pol, monkeypatch):
    """TERM comes along to `run` and `exec` (the CLI resolves it into its Settings; the library
    never reads the environment); without one, the container has none either."""
    monkeypatch.setenv("TERM", "xterm-cgman-test")
    monkeypatch.setenv("CGMAN_TEST_SECRET", "hunter2")
    show = ["sh", "-c", 'echo "term=$TERM secret=$CGMAN_TEST_SECRET"']
    ran = cli("run", "-f", str(pol), "-p", "t/box", "--rm", "--", *show)
    assert ran.stdout.strip() == "term=xterm-cgman-test secret=", ran.stderr
    cli("run", "-f", str(pol), "-p", "t/box", "-d", "--name", "termx", "--", "sleep", "60", check=True)
    try:
        execd = cli("exec", "termx", "--", *show)
        assert execd.stdout.strip() == "term=xterm-cgman-test secret=", execd.stderr
        monkeypatch.delenv("TERM")
        assert cli("exec", "termx", "--", *show).stdout.strip() == "term= secret="
    finally:
        cli("stop", "-t", "0s", "termx")
        cli("rm", "-f", "termx")
    assert cli("run", "-f", str(pol), "-p", "t/box", "--rm", "--", *show).stdout.strip() == "term= secret="


# ---------------------------------------------------------------------- what keeps working
@pytest.mark.cgroup2
def test_ordinary_workloads_keep_working(cli, pol):
    import sys
    script = """
import os, socket, threading, signal, subprocess
os.chdir("/tmp")                      # its own /tmp: the rest of the host is read-only to it
open("f", "w").write("x"); os.chown("f", 1000, 1000); os.chmod("f", 0o600); print("chown ok")
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", 80)); s.listen()
print("bind 80 ok")
t = threading.Thread(target=lambda: None); t.start(); t.join()
pid = os.fork()
if pid == 0:
    os._exit(7)
print("fork", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
got = []
signal.signal(signal.SIGUSR1, lambda *a: got.append(1)); os.kill(os.getpid(), signal.SIGUSR1); print("signal", len(got))
print("setpriv", subprocess.run(["setpriv", "--reuid=1000", "--regid=1000", "--clear-groups", "id", "-u"],
                                capture_output=True, text=True).stdout.strip())
try:
    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP); print("raw ok")
except PermissionError as e:
    print("raw", e.errno)
"""
    p = cli("run", "-f", str(pol), "-p", "t/box", "--rm", "--", sys.executable, "-c", script)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split("\n")[:7] == ["chown ok", "bind 80 ok", "fork 7", "signal 1", "setpriv 1000", "raw 1", ""]
    # a group that grants NET_RAW gets raw sockets (ping)
    p = cli("run", "-f", str(pol), "-p", "t/ping", "--rm", "--", sys.executable, "-c", script)
    assert "raw ok" in p.stdout, p.stdout + p.stderr


@pytest.mark.cgroup2
def test_exec_gets_the_containers_settings(cli, pol):
    cli("run", "-f", str(pol), "-p", "t/box", "--name", "ex1", "-d", "--", "sleep", "60", check=True)
    try:
        status = cli("exec", "ex1", "--", "sh", "-c", "grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' "
                     "/proc/self/status; echo $$ > /sys/fs/cgroup/cgroup.procs || echo RO").stdout
        assert "CapEff:\t00000000800405fb" in status and "NoNewPrivs:\t1" in status
        assert "Seccomp:\t2" in status and "RO" in status, status
        sec = json.loads(cli("inspect", "ex1", check=True).stdout)["security"]
        assert sec["privileged"] is False and "NET_RAW" not in sec["capabilities"]
        assert sec["seccomp"] == "default" and sec["no_new_privileges"] is True
    finally:
        cli("stop", "-t", "0s", "ex1")
        cli("rm", "-f", "ex1")


# ---------------------------------------------------------------------- operator's choice
def test_a_run_cannot_lift_its_groups_rules(cli, pol, host):
    for flags, word in ((["--privileged"], "--privileged"), (["--cap-add", "SYS_ADMIN"], "--cap-add SYS_ADMIN"),
                        (["--device", "/dev/loop-control"], "--device"),
                        (["--security-opt", "seccomp=unconfined"], "seccomp=unconfined"),
                        (["--security-opt", "no-new-privileges=false"], "no-new-privileges=false"),
                        (["--volume", "/etc"], "--volume /etc")):
        p = cli("run", "-f", str(pol), "-p", "t/box", "--rm", *flags, "--", "true")
        assert p.returncode == 1 and word in p.stderr and "allow_privileged" in p.stderr, (flags, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1
    assert host.children("t/box") == []          # nothing launched
    p = cli("run", "-f", str(pol), "-p", "t/box", "--rm", "--cap-drop", "ALL", "--", "grep", "CapEff",
            "/proc/self/status")
    assert p.stdout.split() == ["CapEff:", "0000000000000000"], "dropping is always allowed"


def test_seccomp_unconfined_and_extra_caps_where_allowed(cli, pol):
    p = cli("run", "-f", str(pol), "-p", "t/lax", "--rm", "--cap-add", "NET_RAW", "--security-opt",
            "seccomp=unconfined", "--", "grep", "-E", "^(CapEff|Seccomp):", "/proc/self/status")
    assert p.returncode == 0, p.stderr
    assert "Seccomp:\t0" in p.stdout and "CapEff:\t00000000800425fb" in p.stdout


# ---------------------------------------------------------------------- bad input
BAD = {
    "cap": ("    launch: {capabilities: {add: [NET_RAWR]}}\n", "policies.g.launch.capabilities.add",
            "unknown capability 'NET_RAWR'"),
    "device": ("    launch: {devices: [{path: /dev/nonexistent-cgman}]}\n", "policies.g.launch.devices[0].path",
               "No such file"),
    "privileged": ("    launch: {privileged: true}\n", "policies.g.launch.privileged", "allow_privileged"),
    "no_mount": ("    launch: {namespaces: [pid, net]}\n", "policies.g.launch.namespaces", "mount and pid namespaces"),
    "no_pid": ("    launch: {namespaces: [mount, net]}\n", "policies.g.launch.namespaces", "mount and pid namespaces"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_security_settings_are_one_line_naming_file_and_key(cli, tmp_path, case):
    text, key, msg = BAD[case]
    p = write_policy(tmp_path, "bad.yaml", f"version: 1\npolicies:\n  g:\n{text}")
    r = cli("validate", str(p))
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"{p}:" in r.stderr and key in r.stderr and msg in r.stderr, r.stderr


@pytest.mark.parametrize("profile, msg", [
    ("{not json", "not valid JSON"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read", "no_such_call"], '
     '"action": "SCMP_ACT_ALLOW"}]}', "syscalls[0].names[1]: unknown syscall 'no_such_call'"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_EXPLODE"}]}',
     "syscalls[0].action: unknown action 'SCMP_ACT_EXPLODE'"),
    ('{"defaultAction": "SCMP_ACT_NOPE"}', "defaultAction: unknown action"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "surprise": 1}', "surprise: unknown key"),
], ids=["json", "syscall", "action", "default", "key"])
def test_bad_seccomp_profiles_are_refused_before_anything_runs(cli, tmp_path, host, profile, msg):
    prof = tmp_path / "prof.json"
    prof.write_text(profile)
    pfile = write_policy(tmp_path, "p.yaml", f"version: 1\npolicies:\n  g:\n    launch: {{seccomp: {prof}}}\n")
    r = cli("validate", str(pfile))
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"{pfile}:" in r.stderr and "policies.g.launch.seccomp" in r.stderr and str(prof) in r.stderr
    assert msg in r.stderr, r.stderr
    assert cli("apply", str(pfile)).returncode == 1
    assert not host.exists("g"), "nothing applied"


def test_a_custom_profile_is_enforced(cli, pol, tmp_path):
    """An operator's profile in Docker's format: the default one minus mkdir -> mkdir gets EPERM."""
    from cgman.security.seccomp import DEFAULT_FILE
    doc = json.loads(Path(DEFAULT_FILE).read_text())
    doc["syscalls"][0]["names"] = [n for n in doc["syscalls"][0]["names"] if n not in ("mkdir", "mkdirat")]
    prof = tmp_path / "nomkdir.json"
    prof.write_text(json.dumps(doc))
    d = tmp_path / "made"
    vol = ["--volume", str(tmp_path)]          # a host dir it may write (t/lax allows privileges)
    p = cli("run", "-f", str(pol), "-p", "t/lax", "--rm", *vol, "--security-opt", f"seccomp={prof}", "--",
            "mkdir", str(d))
    assert p.returncode != 0 and "Operation not permitted" in p.stderr and not d.exists()
    p = cli("run", "-f", str(pol), "-p", "t/lax", "--rm", *vol, "--", "mkdir", str(d))
    assert p.returncode == 0 and d.exists()


@pytest.mark.parametrize("summary, ok", [
    (None, True), ({"privileged": True}, True),
    ({"privileged": False, "capabilities": ["CHOWN"], "no_new_privileges": True, "seccomp": "default"}, True),
    ({"privileged": True, "capabilities": ["SYS_ADMIN"]}, False),
    ({"privileged": False, "capabilities": ["SYS_EVERYTHING"], "no_new_privileges": True, "seccomp": "default"},
     False),
    ({"privileged": False, "capabilities": [], "no_new_privileges": True, "seccomp": "rel/path.json"}, False),
    ({"privileged": "yes"}, False), ("privileged", False),
])
def test_a_records_security_summary_is_checked_like_input(summary, ok):
    from cgman.security.resolve import check_summary
    assert (check_summary(summary) == "") is ok


def test_a_cached_program_that_does_not_match_its_digest_is_compiled_again(tmp_path):
    from cgman.security import caps, seccomp
    seccomp.forget()
    prog, _ = seccomp.program("default", caps.DEFAULT, str(tmp_path))
    (cached,) = (tmp_path / "seccomp").iterdir()
    allow_all = bytes.fromhex("0600000000 00ff7f".replace(" ", ""))      # BPF_RET|K SECCOMP_RET_ALLOW
    cached.write_bytes(cached.read_bytes()[:32] + allow_all)              # digest of the real one kept
    seccomp.forget()
    again, _ = seccomp.program("default", caps.DEFAULT, str(tmp_path))
    assert again == prog and again != allow_all


def test_a_program_cached_by_another_build_of_the_compiler_is_not_reused(tmp_path, monkeypatch):
    """The cache key names the compiler's build (cgman._secure's path, size and mtime): a rebuilt
    one (other options, another libseccomp) compiles afresh rather than reuse an older output."""
    from cgman.security import caps, seccomp
    seccomp.forget()
    seccomp.program("default", caps.DEFAULT, str(tmp_path))
    monkeypatch.setattr(seccomp, "_COMPILER", ["another build"])
    seccomp.forget()
    seccomp.program("default", caps.DEFAULT, str(tmp_path))
    assert len(list((tmp_path / "seccomp").iterdir())) == 2
    seccomp.forget()


def test_a_profile_rewritten_in_place_is_read_again_even_with_its_size_and_mtime_kept(tmp_path):
    """A process remembers a profile by what stat says of it; the ctime (which nobody can set
    back) tells a rewrite with the same size and a restored mtime from the file it read."""
    import json
    from cgman.security import caps, seccomp
    seccomp.forget()
    prof = tmp_path / "p.json"

    def write(action: str) -> None:
        prof.write_text(json.dumps({"defaultAction": action, "syscalls": [
            {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"}]}))
    write("SCMP_ACT_KILL")
    first, _ = seccomp.program(str(prof), caps.DEFAULT, None)
    assert seccomp.program(str(prof), caps.DEFAULT, None)[0] == first       # remembered
    st = prof.stat()
    write("SCMP_ACT_TRAP")                                                    # same length
    os.utime(prof, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert prof.stat().st_size == st.st_size and prof.stat().st_mtime_ns == st.st_mtime_ns
    again, _ = seccomp.program(str(prof), caps.DEFAULT, None)
    assert again != first
    seccomp.forget()


def test_a_profile_path_that_changes_while_it_is_read_is_remembered_as_the_file_read(tmp_path, monkeypatch):
    """The program is remembered under what fstat said of the file it was compiled from: a path
    that pointed elsewhere when it was stat'ed (a symlink flipped meanwhile) must not leave the
    other file's program under the first file's identity (a review found it)."""
    import json
    from cgman.security import caps, seccomp
    seccomp.forget()
    strict, loose, link = tmp_path / "strict.json", tmp_path / "loose.json", tmp_path / "profile.json"
    strict.write_text(json.dumps({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"}]}))
    loose.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW"}))
    link.symlink_to(strict)
    real_read = seccomp._read

    def flipped_read(path, seen=None):           # between the stat and the read, the link moves
        link.unlink()
        link.symlink_to(loose)
        return real_read(path) if seen is None else real_read(path, seen)
    monkeypatch.setattr(seccomp, "_read", flipped_read)
    raced, _ = seccomp.program(str(link), caps.DEFAULT, None)
    monkeypatch.setattr(seccomp, "_read", real_read)
    link.unlink()
    link.symlink_to(strict)                        # back to the strict file, unchanged
    now, _ = seccomp.program(str(link), caps.DEFAULT, None)
    assert now != raced
    seccomp.forget()
    assert now == seccomp.program(str(strict), caps.DEFAULT, None)[0]
    seccomp.forget()
