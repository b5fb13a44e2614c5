"""Hierarchy detection from mountinfo text (drivers/detect.parse_mountinfo). Pure: fixture strings."""

from __future__ import annotations

import pytest

from cgman.drivers.detect import parse_mountinfo

# Hybrid, as on the build machine: one v1 hierarchy per controller plus cgroup2 at .../unified.
HYBRID = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
24 22 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 24 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""

# Pure v2 (systemd's unified layout), with optional fields and a tmpfs that is not a cgroup.
PURE_V2 = """\
22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw,errors=remount-ro
24 22 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:2 - sysfs sysfs rw
26 24 0:24 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
27 24 0:25 / /sys/fs/pstore rw,nosuid,nodev,noexec,relatime shared:5 - pstore pstore rw
30 22 0:27 / /run rw,nosuid,nodev,noexec,relatime shared:13 - tmpfs tmpfs rw,size=1620404k,mode=755
"""  # noqa: E501

# Pure v1 with co-mounted controllers (older systemd / RHEL 7 style).
PURE_V1 = """\
18 1 253:0 / / rw,relatime shared:1 - xfs /dev/mapper/rhel-root rw,attr2,inode64,noquota
25 18 0:21 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:8 - tmpfs tmpfs ro,mode=755
26 25 0:22 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:9 - cgroup cgroup rw,xattr,release_agent=/usr/lib/systemd/systemd-cgroups-agent,name=systemd
29 25 0:25 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,cpu,cpuacct
30 25 0:26 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,net_prio,net_cls
31 25 0:27 / /sys/fs/cgroup/cpuset rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup rw,cpuset
32 25 0:28 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,memory
33 25 0:29 / /sys/fs/cgroup/blkio rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,blkio
34 25 0:30 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,pids
35 25 0:31 / /sys/fs/cgroup/freezer rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,freezer
36 25 0:32 / /sys/fs/cgroup/devices rw,nosuid,nodev,noexec,relatime shared:17 - cgroup cgroup rw,devices
37 25 0:33 / /sys/fs/cgroup/perf_event rw,nosuid,nodev,noexec,relatime shared:18 - cgroup cgroup rw,perf_event
"""  # noqa: E501

CG = "/sys/fs/cgroup"


@pytest.mark.parametrize("text, v1, unified", [
    (HYBRID, {"cpu": f"{CG}/cpu", "cpuacct": f"{CG}/cpuacct", "cpuset": f"{CG}/cpuset",
              "memory": f"{CG}/memory", "freezer": f"{CG}/freezer", "io": f"{CG}/blkio",
              "pids": f"{CG}/pids", "devices": f"{CG}/devices"}, f"{CG}/unified"),
    (PURE_V2, {}, CG),
    (PURE_V1, {"cpu": f"{CG}/cpu,cpuacct", "cpuacct": f"{CG}/cpu,cpuacct", "cpuset": f"{CG}/cpuset",
               "memory": f"{CG}/memory", "io": f"{CG}/blkio", "pids": f"{CG}/pids",
               "freezer": f"{CG}/freezer", "devices": f"{CG}/devices"}, None),
], ids=["hybrid", "v2", "v1-comounted"])
def test_parse_mountinfo(text, v1, unified):
    assert parse_mountinfo(text) == (v1, unified)


def test_comounted_cpu_and_cpuacct_share_one_mountpoint():
    v1, _ = parse_mountinfo(PURE_V1)
    assert v1["cpu"] == v1["cpuacct"]
    # "cpu" is matched as a whole option, never as a prefix of cpuset/cpuacct
    assert v1["cpuset"] != v1["cpu"]


@pytest.mark.parametrize("opts", ["rw,cpuacct", "rw,cpuset", "rw,name=systemd", "rw,net_cls,net_prio",
                                  "rw,devices", "rw,perf_event,hugetlb"])
def test_non_cgman_v1_options_are_not_mistaken_for_cpu(opts):
    line = f"40 31 0:37 / /sys/fs/cgroup/x rw,relatime - cgroup cgroup {opts}\n"
    v1, unified = parse_mountinfo(line)
    assert "cpu" not in v1 and unified is None


def test_hybrid_v1_mounts_include_devices_but_not_name_systemd():
    # devices: each container's leaf gets the device allow list (devices.deny/devices.allow)
    v1, _ = parse_mountinfo(HYBRID)
    assert f"{CG}/systemd" not in v1.values() and v1["devices"] == f"{CG}/devices"


@pytest.mark.parametrize("text, expected", [
    ("", ({}, None)),
    ("garbage without separator\n", ({}, None)),
    ("1 2 3 - cgroup2 cgroup2 rw\n", ({}, None)),                  # too few fields before " - "
    ("26 24 0:24 / /sys/fs/cgroup rw - cgroup2\n", ({}, None)),     # too few fields after " - "
    ("41 31 0:38 / /x rw - cgroup2 cgroup2 rw\n41 31 0:39 / /y rw - cgroup2 cgroup2 rw\n", ({}, "/x")),
    ("32 31 0:29 / /a rw - cgroup cgroup rw,memory\n33 31 0:30 / /b rw - cgroup cgroup rw,memory\n",
     ({"memory": "/a"}, None)),                                   # first mount wins
    ("32 31 0:29 / /mnt/cg\\040v2 rw - cgroup2 cgroup2 rw\n", ({}, "/mnt/cg v2")),   # escaped space
    ("32 31 0:29 / /mnt/a\\134b rw - cgroup cgroup rw,pids\n", ({"pids": "/mnt/a\\b"}, None)),
    ("32 31 0:29 / /sys/fs/cgroup/memory rw,relatime shared:5 master:1 - cgroup cgroup rw,memory\n",
     ({"memory": "/sys/fs/cgroup/memory"}, None)),                # optional fields before " - "
    ("32 31 0:29 / /sys/fs/cgroup/memory rw - tmpfs cgroup rw,memory\n", ({}, None)),  # fstype matters
])
def test_parse_mountinfo_edge_cases(text, expected):
    assert parse_mountinfo(text) == expected


def test_lines_are_independent_of_order():
    lines = HYBRID.splitlines()
    assert parse_mountinfo("\n".join(reversed(lines))) == parse_mountinfo(HYBRID)


@pytest.mark.kernel
def test_the_mount_table_is_read_again_only_after_a_mount(tmp_path):
    """read_mounts keeps its parse until the kernel flags mountinfo as changed (POLLPRI)."""
    import subprocess
    import sys
    script = f"""
import os, subprocess
from cgman.drivers.detect import read_mounts
a = read_mounts(); b = read_mounts()
assert a is b, "unchanged table parsed again"
subprocess.run(["mount", "-t", "tmpfs", "cgman-probe", {str(tmp_path)!r}], check=True)
c = read_mounts()
assert c is not a and any(m.mountpoint == {str(tmp_path)!r} for m in c), "a new mount not seen"
print("ok")
"""
    p = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c", script],
                       capture_output=True, text=True, timeout=60)
    assert p.stdout.strip() == "ok", p.stderr


@pytest.mark.kernel
def test_a_forked_child_and_its_parent_both_see_a_mount_made_after_the_fork(tmp_path):
    """The POLLPRI mark is on the open file, which a fork shares: a child (a run server's
    supervisor) polling its parent's file would take the parent's news, and one that only
    trusted the table it inherited would miss a mount made between the fork and its launch.
    Each fork hands the child a file opened before the table was last checked."""
    import subprocess
    import sys
    script = f"""
import os, subprocess
from cgman.drivers.detect import read_mounts
a = read_mounts()
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.read(r, 1)                       # after the parent's mount
    seen = any(m.mountpoint == {str(tmp_path)!r} for m in read_mounts())
    os._exit(0 if seen else 3)
subprocess.run(["mount", "-t", "tmpfs", "cgman-probe", {str(tmp_path)!r}], check=True)
os.write(w, b"x")
assert os.waitpid(pid, 0)[1] == 0, "the child missed a mount made after the fork"
c = read_mounts()
assert any(m.mountpoint == {str(tmp_path)!r} for m in c), "the parent missed a mount its child saw first"
assert read_mounts() is c
print("ok")
"""
    p = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c", script],
                       capture_output=True, text=True, timeout=60)
    assert p.stdout.strip() == "ok", p.stderr
