"""The systemd driver's pure half: unit names, the policy -> unit property table (every row, with
min, max and what systemd cannot express), and the reconcile against a recording bus. The real
systemd runs in tests/test_systemd_host.py."""

from __future__ import annotations

from typing import Any

import pytest

from cgman.drivers.systemd.bus import BusError
from cgman.drivers.systemd.reconcile import (ApplyRolledBack, apply_units, check_owner, device_path, diff_units,
                                             sendable)
from cgman.errors import Busy
from cgman.drivers.systemd.units import (INFINITY, Prop, UnitPlanError, cpu_bitmask, escape, format_bitmask,
                                         properties, scope_name, slice_name, unit_plan)
from cgman.model import (UNLIMITED, CpuLimits, IODevice, IOLimits, MemoryLimits, PidsLimits,
                         Resources)
from cgman.policy import parse_text as _parse
from cgman.model import PolicySet


def parse_text(text: str, file: str) -> PolicySet:
    return PolicySet(tuple(_parse(text, file)))


@pytest.mark.parametrize("name, want", [
    ("acme", "acme"), ("noisy-neighbour", "noisy\\x2dneighbour"), ("a.b_c:d", "a.b_c:d"), ("web1", "web1"),
])
def test_escape_as_systemd_escape(name, want):
    assert escape(name) == want


def test_slice_and_scope_names():
    assert slice_name("cgman") == "cgman.slice"
    assert slice_name("cgman", "acme/web") == "cgman-acme-web.slice"
    assert slice_name("cgman-test-1", "noisy-neighbour") == "cgman\\x2dtest\\x2d1-noisy\\x2dneighbour.slice"
    assert scope_name("cgman", "acme/web", "c-1") == "cgman-acme-web-c\\x2d1.scope"
    # escaping keeps different groups apart: acme/web and acme-web are not one slice
    assert slice_name("cgman", "acme-web") != slice_name("cgman", "acme/web")


def test_a_root_with_a_path_is_refused():
    with pytest.raises(UnitPlanError, match="the systemd driver needs a single name"):
        slice_name("cgman.slice/cgman-agent.service/payload", "acme")


def _props(**kw: Any) -> dict[str, Any]:
    res = Resources(**kw)
    return {p.name: p.value for p in properties(res, who="g") if not p.name.endswith("Accounting")}


@pytest.mark.parametrize("res, want", [
    (dict(cpu=CpuLimits(weight=1)), {"CPUWeight": 1}),
    (dict(cpu=CpuLimits(weight=10000)), {"CPUWeight": 10000}),
    (dict(cpu=CpuLimits(shares=1024)), {"CPUWeight": 100}),                  # OCI formula, as the cgroupfs driver
    (dict(cpu=CpuLimits(shares=2)), {"CPUWeight": 1}),
    (dict(cpu=CpuLimits(max_cpus=0.5)), {"CPUQuotaPerSecUSec": 500000, "CPUQuotaPeriodUSec": 100000}),
    (dict(cpu=CpuLimits(max_cpus=1.5, period_usec=50000)), {"CPUQuotaPerSecUSec": 1500000,
                                                            "CPUQuotaPeriodUSec": 50000}),
    (dict(cpu=CpuLimits(max_cpus=UNLIMITED)), {"CPUQuotaPerSecUSec": INFINITY, "CPUQuotaPeriodUSec": 100000}),
    (dict(cpu=CpuLimits(cpus=frozenset({0, 1, 9}))), {"AllowedCPUs": b"\x03\x02"}),
    (dict(cpu=CpuLimits(mems=frozenset({0}))), {"AllowedMemoryNodes": b"\x01"}),
    (dict(memory=MemoryLimits(max_bytes=2 << 30, high_bytes=1 << 30, low_bytes=1, min_bytes=0,
                              swap_bytes=UNLIMITED)),
     {"MemoryMax": 2 << 30, "MemoryHigh": 1 << 30, "MemoryLow": 1, "MemoryMin": 0, "MemorySwapMax": INFINITY}),
    (dict(io=IOLimits(weight=200, devices=(IODevice("254:0", weight=50, rbps=1 << 20, wiops=UNLIMITED),
                                           IODevice("/dev/vda", riops=10, wbps=5)))),
     {"IOWeight": 200, "IODeviceWeight": (("/dev/block/254:0", 50),),
      "IOReadBandwidthMax": (("/dev/block/254:0", 1 << 20),), "IOWriteIOPSMax": (("/dev/block/254:0", INFINITY),),
      "IOReadIOPSMax": (("/dev/vda", 10),), "IOWriteBandwidthMax": (("/dev/vda", 5),)}),
    (dict(pids=PidsLimits(max=1)), {"TasksMax": 1}),
    (dict(pids=PidsLimits(max=UNLIMITED)), {"TasksMax": INFINITY}),
    (dict(), {}),                                                             # None: leave as is
])
def test_property_table(res, want):
    assert _props(**res) == want


def test_accounting_is_always_on():
    names = [p.name for p in properties(Resources(), who="g")]
    assert names == ["CPUAccounting", "MemoryAccounting", "IOAccounting", "TasksAccounting"]


@pytest.mark.parametrize("cpu, message", [
    (CpuLimits(max_cpus=0.0123456789, period_usec=300000), "quota of 3704us per period, which systemd cannot "
                                                           "express"),
])
def test_values_systemd_cannot_express(cpu, message):
    with pytest.raises(UnitPlanError, match=message):
        properties(Resources(cpu=cpu), who="acme (p.yaml:3:5)")


@pytest.mark.parametrize("res, message", [
    (dict(pids=PidsLimits(max=0)), r"acme \(p.yaml:3:5\): pids max 0, which systemd cannot express \(TasksMax= "
                                   r"takes 1 task or more"),
    (dict(memory=MemoryLimits(max_bytes=0)), r"memory max 0, which systemd cannot express \(MemoryMax= takes 1 byte"),
    (dict(memory=MemoryLimits(high_bytes=0)), r"memory high 0, which systemd cannot express \(MemoryHigh="),
])
def test_a_zero_limit_systemd_refuses_is_refused_before_any_call(res, message):
    with pytest.raises(UnitPlanError, match=message):
        properties(Resources(**res), who="acme (p.yaml:3:5)")


def test_zero_where_systemd_takes_it_is_kept():
    assert _props(memory=MemoryLimits(min_bytes=0, low_bytes=0, swap_bytes=0)) == \
        {"MemoryMin": 0, "MemoryLow": 0, "MemorySwapMax": 0}
    assert _props(pids=PidsLimits(max=1), memory=MemoryLimits(max_bytes=1)) == {"MemoryMax": 1, "TasksMax": 1}


def test_a_containers_cgroup_is_its_scopes_payload_below_the_root_slice():
    from cgman.drivers.systemd.units import scope_dir, scope_placement, slice_dir
    assert slice_dir("cgman") == "."
    assert slice_dir("cgman", "acme/web") == "cgman-acme.slice/cgman-acme-web.slice"
    assert scope_dir("cgman", "acme/web", "c1") == "cgman-acme.slice/cgman-acme-web.slice/cgman-acme-web-c1.scope"
    assert scope_placement("cgman-t", "a-b", "c") == ("cgman\\x2dt.slice",
                                                      "cgman\\x2dt-a\\x2db.slice/cgman\\x2dt-a\\x2db-c.scope/payload")


@pytest.mark.parametrize("mask", [b"", b"\x01", b"\x03\x02", b"\xff\xff", b"\x05"])
def test_bitmask_round_trip(mask):
    cpus = frozenset(i * 8 + b for i, byte in enumerate(mask) for b in range(8) if byte >> b & 1)
    assert cpu_bitmask(cpus) == mask.rstrip(b"\x00")
    assert format_bitmask(mask) == {b"": "", b"\x01": "0", b"\x03\x02": "0-1,9", b"\xff\xff": "0-15",
                                    b"\x05": "0,2"}[mask]


POLICY = """\
version: 1
policies:
  acme:
    cpu: {weight: 300}
    memory: {max: 1Gi}
    children:
      web:
        cpu: {max: 0.5}
        pids: {max: 64}
        frozen: true
        container: {memory: {max: 64Mi}}
"""


def test_the_plan_lists_slices_parents_first_with_their_properties():
    p = unit_plan(parse_text(POLICY, "p.yaml"), "cgman").as_dict()
    assert [(u["unit"], u["slice"]) for u in p["units"]] == [("cgman-acme.slice", "cgman.slice"),
                                                            ("cgman-acme-web.slice", "cgman-acme.slice")]
    assert p["units"][0]["properties"]["CPUWeight"] == "300" and p["units"][0]["properties"]["MemoryMax"] == \
        str(1 << 30)
    assert p["units"][1]["properties"]["CPUQuotaPerSecUSec"] == "500000" and p["units"][1]["frozen"] is True


def test_a_bad_container_limit_fails_the_plan():
    with pytest.raises(UnitPlanError, match=r"acme/web/<container> \(p.yaml:7:7\): cpu.max"):
        bad = POLICY.replace("memory: {max: 64Mi}", "cpu: {max: 0.0123456789, period: 300ms}")
        unit_plan(parse_text(bad, "p.yaml"), "cgman")


class RecordingBus:
    """systemd's side as a dict of units; records every call that would change something."""

    def __init__(self, units: dict[str, dict[str, Any]] | None = None) -> None:
        self.units = units or {}
        self.calls: list[tuple] = []

    def unit(self, name: str) -> dict[str, Any] | None:
        return self.units.get(name)

    def start_transient(self, name: str, props: Any, extra: Any = ()) -> None:
        self.calls.append(("start", name))
        self.units.setdefault("cgman.slice", {"ActiveState": "active", "LoadState": "loaded"})  # the parent
        self.units[name] = {"ActiveState": "active", "Transient": True, "LoadState": "loaded",
                            **{p.name: p.value for p in props}, **{k: v for k, _, v in extra}}

    def set_properties(self, name: str, props: Any) -> None:
        self.calls.append(("set", name, tuple(p.name for p in props)))
        self.units[name].update({p.name: p.value for p in props})

    def freeze(self, name: str, frozen: bool) -> None:
        self.calls.append(("freeze", name, frozen))
        self.units[name]["FreezerState"] = "frozen" if frozen else "running"

    def stop(self, name: str) -> None:
        self.calls.append(("stop", name))
        self.units.pop(name, None)

    def slices(self) -> list[tuple[str, str, str]]:
        return [(n, u.get("Description", ""), u["ActiveState"]) for n, u in self.units.items() if n.endswith(".slice")]

    def members(self, name: str) -> list[str]:
        return [n for n, u in self.units.items() if u.get("Slice") == name or
                (n.endswith(".slice") and n != name and n.rsplit("-", 1)[0] + ".slice" == name)]


class RefusingBus(RecordingBus):
    """systemd refusing the call that touches ``refuse`` (a value only it checks)."""

    def __init__(self, refuse: str, units: dict[str, dict[str, Any]] | None = None) -> None:
        super().__init__(units)
        self.refuse = refuse

    def start_transient(self, name: str, props: Any, extra: Any = ()) -> None:
        if name == self.refuse:
            raise BusError(f"systemd: StartTransientUnit: org.freedesktop.DBus.Error.InvalidArgs: {name}")
        super().start_transient(name, props, extra)

    def set_properties(self, name: str, props: Any) -> None:
        if name == self.refuse:
            raise BusError(f"systemd: SetUnitProperties: org.freedesktop.DBus.Error.InvalidArgs: {name}")
        super().set_properties(name, props)


def test_reconcile_creates_then_does_nothing_then_corrects_drift():
    ps = parse_text(POLICY, "p.yaml")
    bus = RecordingBus()
    first = apply_units(ps, "cgman", bus)
    assert first.created == ["cgman-acme.slice", "cgman-acme-web.slice"]
    assert ("freeze", "cgman-acme-web.slice", True) in bus.calls
    bus.calls.clear()
    again = apply_units(ps, "cgman", bus)
    assert not again.created and not again.changes and again.unchanged > 0
    assert bus.calls == [], "a frozen slice is not frozen again"
    bus.units["cgman-acme.slice"]["CPUWeight"] = 5            # someone ran systemctl set-property
    fixed = apply_units(ps, "cgman", bus)
    assert [str(c) for c in fixed.changes] == ["cgman-acme.slice: CPUWeight was 5, set 300"]
    assert ("set", "cgman-acme.slice", ("CPUWeight",)) in bus.calls


def test_a_refused_call_rolls_back_what_the_apply_changed():
    ps = parse_text(POLICY, "p.yaml")
    bus = RefusingBus("cgman-acme-web.slice")
    with pytest.raises(ApplyRolledBack, match=r"InvalidArgs: cgman-acme-web.slice; rolled back 3 change\(s\), "
                                              "nothing was applied"):
        apply_units(ps, "cgman", bus)
    assert bus.units == {} and bus.calls[-3:] == [("stop", "cgman-acme-web.slice"), ("stop", "cgman-acme.slice"),
                                                  ("stop", "cgman.slice")]

    good = RecordingBus()
    apply_units(ps, "cgman", good)
    before = {k: dict(v) for k, v in good.units.items()}
    changed = parse_text(POLICY.replace("weight: 300", "weight: 400").replace("max: 0.5", "max: 0.7"), "p.yaml")
    bus = RefusingBus("cgman-acme-web.slice", good.units)
    with pytest.raises(ApplyRolledBack, match="rolled back 1 change"):
        apply_units(changed, "cgman", bus)
    assert bus.units == before and bus.calls[-1] == ("set", "cgman-acme.slice", ("CPUWeight",))


def test_a_device_list_is_set_whole():
    props = sendable([Prop("IOReadBandwidthMax", "a(st)", (("/dev/vda", 5),)), Prop("CPUWeight", "t", 1)])
    assert [(p.name, p.value) for p in props] == [("IOReadBandwidthMax", ()), ("IOReadBandwidthMax",
                                                  (("/dev/vda", 5),)), ("CPUWeight", 1)]


def test_a_unit_name_clash_applies_nothing():
    bus = RecordingBus({"cgman-acme-web.slice": {"ActiveState": "active", "LoadState": "loaded",
                                                 "Transient": False, "FragmentPath": "/etc/systemd/system/x"}})
    with pytest.raises(UnitPlanError, match="cgman-acme-web.slice already exists and is not cgman's "
                                        r"\(/etc/systemd/system/x\)"):
        apply_units(parse_text(POLICY, "p.yaml"), "cgman", bus)
    assert bus.calls == []


def test_a_thaw_is_a_change_it_reports():
    ps = parse_text(POLICY, "p.yaml")
    bus = RecordingBus()
    apply_units(ps, "cgman", bus)
    thawed = parse_text(POLICY.replace("frozen: true", "frozen: false"), "p.yaml")
    bus.calls.clear()
    planned = apply_units(thawed, "cgman", bus, dry_run=True)
    assert [str(c) for c in planned.changes] == ["cgman-acme-web.slice: FreezerState was frozen, set running"]
    assert bus.calls == []
    done = apply_units(thawed, "cgman", bus)
    assert done.changes == planned.changes and bus.calls == [("freeze", "cgman-acme-web.slice", False)]


def test_dry_run_calls_nothing():
    bus = RecordingBus()
    res = apply_units(parse_text(POLICY, "p.yaml"), "cgman", bus, dry_run=True)
    assert res.created == ["cgman-acme.slice", "cgman-acme-web.slice"] and bus.calls == []


def test_prop_render():
    assert Prop("MemoryMax", "t", INFINITY).render() == "infinity"
    assert Prop("AllowedCPUs", "ay", b"\x03").render() == "0-1"


def test_a_device_without_udev_s_link_is_named_by_the_kernel(tmp_path):
    d = tmp_path / "dev" / "block" / "250:99"
    d.mkdir(parents=True)
    (d / "uevent").write_text("MAJOR=250\nMINOR=99\nDEVNAME=vdz\nDEVTYPE=disk\n")
    assert device_path("/dev/block/250:99", str(tmp_path)) == "/dev/vdz"
    assert device_path("/dev/vda", str(tmp_path)) == "/dev/vda"          # a path stays as written
    with pytest.raises(UnitPlanError, match="io.devices 250:98: systemd takes a device path, and no block device"):
        device_path("/dev/block/250:98", str(tmp_path))


@pytest.mark.parametrize("live, clash", [
    (None, False),
    ({"LoadState": "loaded", "ActiveState": "inactive", "Transient": False, "FragmentPath": ""}, False),
    ({"LoadState": "loaded", "ActiveState": "active", "Transient": True, "Description": "cgman group acme"}, False),
    ({"LoadState": "loaded", "ActiveState": "active", "Transient": False, "FragmentPath": ""}, True),
    ({"LoadState": "loaded", "ActiveState": "inactive", "Transient": True, "Description": "run-u7"}, True),
    ({"LoadState": "loaded", "ActiveState": "inactive", "Transient": False, "FragmentPath": "/etc/x"}, True),
])
def test_which_existing_unit_is_a_clash(live, clash):
    if clash:
        with pytest.raises(UnitPlanError, match="already exists and is not cgman's"):
            check_owner("cgman-acme.slice", live, "group acme")
    else:
        check_owner("cgman-acme.slice", live, "group acme")


def test_prune_stops_cgmans_slices_the_files_no_longer_name_and_nothing_else():
    bus = RecordingBus()
    apply_units(parse_text(POLICY, "p.yaml"), "cgman", bus)
    bus.units["cgman-other.slice"] = {"ActiveState": "active", "Transient": False, "Description": "cgman group x",
                                      "FragmentPath": "/etc/systemd/system/cgman-other.slice"}   # not cgman's
    only_acme = parse_text(POLICY.split("    children:")[0], "p.yaml")
    assert [d["unit"] for d in diff_units(only_acme, "cgman", bus, "/nonexistent")] == ["cgman-acme-web.slice"]
    bus.units["x.scope"] = {"ActiveState": "active", "Transient": True, "Description": "someone's",
                            "Slice": "cgman-acme-web.slice"}
    bus.calls.clear()
    bus.units["cgman-acme.slice"]["CPUWeight"] = 5
    with pytest.raises(Busy, match="cgman-acme-web.slice holds x.scope, which cgman did not make"):
        apply_units(only_acme, "cgman", bus, prune=True, force=True)
    assert bus.calls == [], "a prune it refuses applies nothing either"
    bus.units["x.scope"]["Description"] = "cgman group acme/web container c1"
    with pytest.raises(Busy, match=r"holds x.scope \(a running container\): stop it first, or use --force"):
        apply_units(only_acme, "cgman", bus, prune=True)
    res = apply_units(only_acme, "cgman", bus, prune=True, force=True)
    assert res.pruned == ["cgman-acme-web.slice"] and bus.calls[-1] == ("stop", "cgman-acme-web.slice")
    assert "cgman-other.slice" in bus.units and diff_units(only_acme, "cgman", bus, "/nonexistent") == []


def test_diff_names_what_differs():
    ps = parse_text(POLICY, "p.yaml")
    bus = RecordingBus()
    assert {d["unit"] for d in diff_units(ps, "cgman", bus)} == {"cgman-acme.slice", "cgman-acme-web.slice"}
    apply_units(ps, "cgman", bus)
    bus.units["cgman-acme.slice"]["CPUWeight"] = 5
    bus.units["cgman-acme-web.slice"]["FreezerState"] = "running"
    assert diff_units(ps, "cgman", bus) == [
        {"unit": "cgman-acme.slice", "property": "CPUWeight", "want": "300", "live": "5"},
        {"unit": "cgman-acme-web.slice", "property": "FreezerState", "want": "frozen", "live": "running"}]


def test_the_agent_without_a_system_bus_or_with_a_bad_driver_says_so_in_one_line(tmp_path):
    import os
    import subprocess
    import sys
    (tmp_path / "policies").mkdir()
    env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS="unix:path=/run/nothing-here", CGMAN_RUN_DIR=str(tmp_path / "run"),
               CGMAN_STATE_DIR=str(tmp_path / "state"), CGMAN_CGROUP_ROOT="cgman-test-nobus")
    cmd = [sys.executable, "-m", "cgman", "agent", "--policy-dir", str(tmp_path / "policies"),
           "--listen", "127.0.0.1:0"]
    for args, extra in ((["--cgroup-driver", "systemd"], {}), ([], {"CGMAN_CGROUP_DRIVER": "systemd"})):
        p = subprocess.run(cmd + args, capture_output=True, text=True, env=dict(env, **extra), timeout=60)
        assert p.returncode == 1 and p.stderr.startswith("cgman: error: cannot reach systemd over D-Bus"), p.stderr
        assert len(p.stderr.splitlines()) == 1 and "apt-get install dbus" in p.stderr
    p = subprocess.run(cmd + ["--cgroup-driver", "bogus"], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 2 and "--cgroup-driver: 'bogus' is not one of cgroupfs, systemd" in p.stderr


def test_the_keeper_holds_no_fd_and_no_directory_of_whoever_started_it(tmp_path, monkeypatch):
    """The keeper lives as long as the container's scope (a detached container: days), so it must
    not keep what its supervisor inherited: an fd above stderr (a pipe someone waits on for EOF, a
    flock'd file) or the working directory (a mount that then cannot be unmounted)."""
    import os
    import signal
    import time
    from pathlib import Path

    from cgman.containers.scope import spawn_keeper
    r, w = os.pipe()
    os.set_inheritable(w, True)              # as a shell passes fd 3+ to `cgman run`
    monkeypatch.chdir(tmp_path)
    keeper = spawn_keeper()
    try:
        for _ in range(500):                  # until it has exec'd the init and closed what it inherited
            if Path(f"/proc/{keeper}/comm").read_text().strip() == "cgman-keeper" and \
                    os.readlink(f"/proc/{keeper}/cwd") == "/":
                break
            time.sleep(0.01)
        fds = sorted(int(n) for n in os.listdir(f"/proc/{keeper}/fd"))
        cwd = os.readlink(f"/proc/{keeper}/cwd")
    finally:
        os.kill(keeper, signal.SIGKILL)
        os.waitpid(keeper, 0)
        os.close(r)
        os.close(w)
    assert fds == [0, 1, 2], f"the keeper holds {fds}"
    assert cwd == "/", f"the keeper's working directory is {cwd}"


@pytest.mark.parametrize("root", ["cgman", "cgman-test-0e1a7b21", "a.b_c:d"])
def test_root_of_slice_inverts_slice_name(root):
    from cgman.drivers.systemd.units import root_of_slice
    assert root_of_slice(slice_name(root)) == root


@pytest.mark.parametrize("name", ["cgman-acme.slice", "init.scope", "-.slice", ".slice", "cgman.slice/x",
                                  "cgman\\x2Dtest.slice", "cgman\\x2d.slice/.."])
def test_root_of_slice_is_none_for_what_no_root_writes(name):
    from cgman.drivers.systemd.units import root_of_slice
    assert root_of_slice(name) is None
