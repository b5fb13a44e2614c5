"""One contract, every driver: the fake (v1 and v2 flavours) and the real drivers of
this host must behave the same for the operations apply, status and control use."""

from __future__ import annotations

import errno

import pytest

from cgman.drivers import Host
from cgman.drivers.fake import FakeDriver
from cgman.errors import CgroupIOError, NotFound
from cgman.model import PolicySet
from cgman.plan import Features, Layout
from cgman.policy import parse_text
from cgman.reconcile.apply import ApplyError, apply


def _real_drivers(host):
    return [d for d in (host.v1, host.v2) if d is not None]


@pytest.fixture(params=["fake-v1", "fake-v2", "real"])
def drivers(request):
    if request.param == "fake-v1":
        return [FakeDriver(1)]
    if request.param == "fake-v2":
        return [FakeDriver(2)]
    host = request.getfixturevalue("host")
    return _real_drivers(host)


def _limit_file(d) -> tuple[str, str]:
    # a file every hierarchy of that version has, controllers or not
    return ("cgroup", "cgroup.max.descendants") if d.version == 2 else ("pids", "pids.max")


def test_group_lifecycle(drivers):
    for d in drivers:
        assert not d.exists("a")
        assert d.create(".") is True and d.create(".") is False
        assert d.create("a") is True and d.create("a") is False
        d.create("a/b")
        assert d.children(".") == ["a"] and d.children("a") == ["b"]
        with pytest.raises(CgroupIOError) as ei:
            d.remove("a")                                  # has a child
        assert ei.value.errno == errno.EBUSY
        d.remove("a/b")
        d.remove("a")
        d.remove("a")                                      # removing twice is fine
        assert not d.exists("a") and d.children(".") == []
        d.remove(".")


def test_write_read_roundtrip_and_missing(drivers):
    for d in drivers:
        d.create(".")
        d.create("g")
        ctl, f = _limit_file(d)
        assert d.read("g", ctl, f).strip() == "max"
        d.write("g", ctl, f, "42")
        assert d.read("g", ctl, f).strip() == "42"
        with pytest.raises(NotFound):
            d.read("nope", ctl, f)
        with pytest.raises(CgroupIOError):
            d.write("g", ctl, "no.such.file", "1")
        assert d.procs("g") == set() and d.procs("nope") == set()
        d.remove("g")
        d.remove(".")


def test_freeze_thaw_state(drivers):
    for d in drivers:
        if d.version == 1 and not hasattr(d, "files") and "freezer" not in d._by_ctl:
            continue
        d.create(".")
        d.create("g")
        assert d.is_frozen("g") is False
        d.freeze("g", 5)
        assert d.is_frozen("g") is True
        d.thaw("g", 5)
        assert d.is_frozen("g") is False
        d.remove("g")
        d.remove(".")


# ---------------------------------------------------------------- apply logic on the fake
POL = "version: 1\npolicies:\n  a:\n    pids: {max: 10}\n    memory: {max: 64Mi}\n  b:\n    cpu: {weight: 50}\n"


def _fake_host(version: int) -> tuple[Host, FakeDriver]:
    d = FakeDriver(version)
    layout = Layout.for_target("v1" if version == 1 else "v2")
    feat = Features(io_bfq_weight=False)
    return (Host.with_drivers(layout, "cgman", v1=d if version == 1 else None,
                              v2=d if version == 2 else None, features=feat), d)


@pytest.mark.parametrize("version", [1, 2])
def test_second_apply_writes_nothing(version):
    h, d = _fake_host(version)
    ps = PolicySet(groups=tuple(parse_text(POL, "p.yaml")))
    first = apply(ps, h)
    n = len(d.writes)
    assert n == len(first.changes) > 0
    second = apply(ps, h)
    assert second.changes == [] and second.created == [] and len(d.writes) == n


@pytest.mark.parametrize("version", [1, 2])
def test_failed_write_restores_every_value_and_removes_new_groups(version):
    h, d = _fake_host(version)
    apply(PolicySet(groups=tuple(parse_text("version: 1\npolicies:\n  a:\n    pids: {max: 5}\n", "p.yaml"))), h)
    before = {k: dict(v) for k, v in d.files.items()}
    d.fail[("b", "cpu.shares" if version == 1 else "cpu.weight")] = errno.EINVAL
    with pytest.raises(ApplyError) as ei:
        apply(PolicySet(groups=tuple(parse_text(POL, "p.yaml"))), h)
    assert "p.yaml: group b:" in str(ei.value) and "rolled back" in str(ei.value)
    assert d.files == before


def test_failed_freeze_in_apply_rolls_back(capsys):
    h, d = _fake_host(2)
    d.create(".")
    d.fail[("a", "freeze")] = 1
    with pytest.raises(ApplyError, match="did not freeze"):
        apply(PolicySet(groups=tuple(parse_text(
            "version: 1\npolicies:\n  a:\n    pids: {max: 3}\n    frozen: true\n", "p.yaml"))), h)
    assert not d.exists("a")


def test_dry_run_writes_nothing():
    h, d = _fake_host(2)
    res = apply(PolicySet(groups=tuple(parse_text(POL, "p.yaml"))), h, dry_run=True)
    assert res.created == [".", "a", "b"] and res.changes and d.writes == [] and d.files == {}


def test_rollback_that_cannot_restore_says_so():
    h, d = _fake_host(2)
    apply(PolicySet(groups=tuple(parse_text("version: 1\npolicies:\n  a:\n    pids: {max: 5}\n", "p.yaml"))), h)
    d.fail[("b", "cpu.weight")] = errno.EINVAL
    real_write = d.write

    def write(path, controller, file, value):
        if (path, file, value) == ("a", "pids.max", "5"):      # the undo of a's change
            raise CgroupIOError("/fake/a", file, value, errno.EIO)
        real_write(path, controller, file, value)
    d.write = write  # type: ignore[method-assign]
    with pytest.raises(ApplyError) as ei:
        apply(PolicySet(groups=tuple(parse_text(POL, "p.yaml"))), h)
    msg = str(ei.value)
    assert "could NOT be restored" in msg and "nothing was applied" not in msg
    assert d.files["a"]["pids.max"] == "10"                    # the one change left behind
