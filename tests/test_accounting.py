"""Accounting on the real kernel: final usage into the ledger exactly once, memory
integration, the exporter's reads and tenant counters, and every failure path of the
ledger (locked, corrupt) losing nothing.

Containers are launched in-process with the library (the same launch/wait/finish
that `cgman run` uses), so that hundreds of them fit in a test's time.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from cgman.model import CpuLimits, MemoryLimits, NetworkSpec, PidsLimits, Resources
from cgman.containers.launch import ContainerSpec, launch
from cgman.accounting.ledger import Ledger, ledger_path
from cgman.settings import Settings
from cgman.state.records import Store

from .conftest import REPO

POLICY = """
version: 1
policies:
  acme:
    tenant: acme
    children:
      web: {}
  beta:
    tenant: beta-corp
"""


@pytest.fixture
def lib(host, tmp_path):
    from cgman.policy import load_files
    from cgman.reconcile.apply import apply
    p = tmp_path / "p.yaml"
    p.write_text(POLICY)
    apply(load_files([p]), host)
    store = Store(Settings(run_dir=str(tmp_path / "run"), state_dir=str(tmp_path / "state"), cgroup_root=host.root))
    return SimpleNamespace(host=host, store=store, tmp=tmp_path)


def spec(name: str, argv: list[str], group: str = "acme/web", tenant: str = "acme",
         res: Resources | None = None) -> ContainerSpec:
    return ContainerSpec(name=name, group=group, tenant=tenant, argv=tuple(argv),
                         resources=res or Resources(), network=NetworkSpec(mode="none"))


def burn(seconds: float) -> list[str]:
    """A workload that uses ``seconds`` of CPU (its own process time), then exits."""
    return [sys.executable, "-S", "-c",
            f"import time\nt = time.process_time() + {seconds}\nwhile time.process_time() < t: pass"]


def run_to_end(lib, s: ContainerSpec, sample_s: float | None = None):
    c = launch(lib.host, lib.store, s)
    if sample_s is not None:
        c.sample_interval_s = sample_s
    code = c.wait()
    rec = c.finish()
    return c, code, rec


def rows(lib) -> list:
    with Ledger(ledger_path(lib.store.state), readonly=True) as led:
        return led.entries()


def collect(lib) -> str:
    from cgman.exporter.collector import Collector
    col = Collector(lib.host.info, lib.store.run, lib.store.state)
    try:
        return col.collect()
    finally:
        col.close()


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    from prometheus_client.parser import text_string_to_metric_families
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, frozenset(labels.items())))


# ------------------------------------------------------------------- ledger, exactly once
@pytest.mark.cgroup2
def test_final_usage_is_recorded_once_with_tenant_group_and_limits(lib):
    res = Resources(cpu=CpuLimits(max_cpus=1.0), memory=MemoryLimits(max_bytes=256 << 20),
                    pids=PidsLimits(max=32))
    c, code, rec = run_to_end(lib, spec("once", burn(0.3), res=res))
    assert code == 0
    [row] = rows(lib)
    assert (row.id, row.name, row.tenant, row.grp, row.exit_code) == (rec.id, "once", "acme", "acme/web", 0)
    assert 300_000 <= row.cpu_usage_usec < 2_000_000
    assert row.cpu_user_usec is not None and row.cpu_user_usec > 0
    assert row.cpu_limit_cpus == 1.0 and row.memory_limit_bytes == 256 << 20
    assert row.host_cpus >= 1 and row.host_memory_bytes > 0
    assert row.started < row.ended <= time.time()
    assert row.memory_byte_seconds > 0
    # The kernel's per-process account agrees with the cgroup's.
    assert c.rusage_cpu_usec is not None
    assert abs(row.cpu_usage_usec - c.rusage_cpu_usec) <= max(5_000, 0.05 * c.rusage_cpu_usec)
    # Collecting again, or recording the same id again, adds nothing.
    c.finish()
    from cgman.accounting import usage as accounting
    assert accounting.commit(lib.store, rec) is True            # already there: fine, no new row
    assert len(rows(lib)) == 1
    with Ledger(ledger_path(lib.store.state)) as led:
        assert led.record(accounting.entry_for(rec)) is False
        assert led.tenant_totals()["acme"].containers == 1
        assert led.tenant_totals()["acme"].cpu_usage_usec == row.cpu_usage_usec


def test_a_failed_exec_is_billed_for_its_setup_and_a_refused_launch_is_not(lib):
    from cgman.errors import Busy, LaunchError
    with pytest.raises(LaunchError):
        launch(lib.host, lib.store, spec("nope", ["/nonexistent/cmd"]))
    [row] = rows(lib)                       # its process ran (namespaces, mounts): that CPU is billed
    assert row.name == "nope" and row.exit_reason == "failed to start" and row.exit_code is None
    c = launch(lib.host, lib.store, spec("dup", ["sleep", "30"]))
    try:
        with pytest.raises(Busy):
            launch(lib.host, lib.store, spec("dup", ["true"]))     # refused before any process existed
        assert [r.name for r in rows(lib)] == ["nope"]
    finally:
        c.stop(0)
        c.finish()
    assert sorted(r.name for r in rows(lib)) == ["dup", "nope"]


def test_memory_is_integrated_from_samples(lib):
    hold = (f"import time\nb = bytearray({64 << 20})\nfor i in range(0, len(b), 4096): b[i] = 1\n"
            f"time.sleep(1.5)")
    c = launch(lib.host, lib.store, spec("mem", [sys.executable, "-S", "-c", hold]))
    c.sample_interval_s = 0.1
    seen = []
    while c.wait(0.25) is None:
        seen.append(lib.store.load("mem").memory_byte_seconds)     # what the exporter shows meanwhile
    rec = c.finish()
    [row] = rows(lib)
    expect = (64 << 20) * 1.5
    assert 0.7 * expect <= row.memory_byte_seconds <= 1.6 * expect, (row.memory_byte_seconds, expect)
    assert row.memory_peak_bytes is not None and row.memory_peak_bytes >= 64 << 20
    assert len(seen) >= 3 and seen == sorted(seen) and seen[-1] > 0
    assert rec.memory_byte_seconds == pytest.approx(row.memory_byte_seconds)


# ------------------------------------------------------------------- exporter, real kernel
@pytest.mark.cgroup2
def test_exporter_reports_what_the_kernel_says(lib):
    from cgman.drivers.reads import read_stats
    res = Resources(cpu=CpuLimits(max_cpus=0.5), memory=MemoryLimits(max_bytes=128 << 20),
                    pids=PidsLimits(max=16))
    c = launch(lib.host, lib.store, spec("web1", ["sh", "-c", "i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done; "
                                                  "exec sleep 60"], res=res))
    try:
        deadline = time.monotonic() + 60
        prev = None
        while time.monotonic() < deadline:       # until the burn is over and the counter rests
            text = collect(lib)
            cpu = value(text, "cgman_cpu_usage_seconds_total", container="web1", group="acme/web", tenant="acme")
            if cpu and cpu > 0.02 and cpu == prev:
                break
            prev = cpu
            time.sleep(0.3)
        L = dict(container="web1", group="acme/web", tenant="acme")
        kernel = read_stats(lib.host, "acme/web/web1")
        assert kernel is not None
        assert cpu == pytest.approx(kernel["cpu_usage_usec"] / 1e6, rel=0.05)
        assert value(text, "cgman_container_info", **L) == 1
        assert value(text, "cgman_limit_cpu_cpus", **L) == 0.5
        assert value(text, "cgman_limit_memory_bytes", **L) == 128 << 20
        assert value(text, "cgman_limit_pids", **L) == 16
        assert value(text, "cgman_pids_current", **L) >= 2          # init + sleep
        assert 0 < value(text, "cgman_memory_working_set_bytes", **L) <= value(text, "cgman_memory_usage_bytes", **L)
        assert value(text, "cgman_frozen", **L) == 0
        assert value(text, "cgman_cpu_throttled_seconds_total", **L) is not None
        assert value(text, "cgman_io_read_bytes_total", **L) is not None
        lib.host.freeze("acme/web/web1")
        assert value(collect(lib), "cgman_frozen", **L) == 1
        lib.host.thaw("acme/web/web1")
        assert value(collect(lib), "cgman_frozen", **L) == 0
        # Only the three labels, on every per-container series.
        for (name, labels), _ in samples(text).items():
            if name.startswith("cgman_") and not name.startswith(("cgman_tenant_", "cgman_exporter_")):
                assert {k for k, _ in labels} == {"container", "group", "tenant"}, name
    finally:
        c.stop(0)
        c.finish()


def test_a_container_vanishing_mid_scrape_never_fails_it(lib):
    from cgman.exporter.collector import Collector
    from cgman.containers.collect import _remove_cgroup
    a = launch(lib.host, lib.store, spec("a", ["sleep", "60"]))
    b = launch(lib.host, lib.store, spec("b", ["sleep", "60"]))
    col = Collector(lib.host.info, lib.store.run, lib.store.state)
    try:
        assert "container=\"a\"" in col.collect()       # a's files are open now
        lib.host.kill("acme/web/a")
        a.wait()
        _remove_cgroup(lib.host, "acme/web/a")            # its record still says running
        # A record whose cgroup never existed at all.
        fake = lib.store.load("b")
        fake.name, fake.id, fake.cgroup = "ghost", "ghost-id", "acme/web/ghost"
        lib.store.reserve(fake)
        text = col.collect()
        assert 'container="a"' not in text and 'container="ghost"' not in text
        assert value(text, "cgman_container_info", container="b", group="acme/web", tenant="acme") == 1
        assert col.read_errors == 0
        assert not col._open.get(a.rec.id)                 # a's fds were closed
    finally:
        col.close()
        b.stop(0)
        b.finish()
        a.finish()
        lib.store.delete("ghost")


@pytest.mark.cgroup2
def test_a_group_gone_before_its_read_costs_only_its_samples_a_missing_root_or_mount_is_an_error(
        host, tmp_path, monkeypatch, caplog):
    """Between the listing of records and the first read of a group, the group is removed: that
    container's samples go, nothing else, and no error. A record under a cgman root that does
    not exist, or a cgroup mount that is not there, is a read error that says so, never taken
    for a container that has gone."""
    from cgman.exporter.collector import Collector
    from .test_fastread import _record
    run = tmp_path / "run"
    host.create(".")
    for name in ("stays", "goes"):
        host.create(name)
        _record(run, name, name, root=host.root)
    col = Collector(host.info, str(run), str(tmp_path / "state"), c_scrape=False)
    listed = col.records.scan

    def scan_then_remove():
        found = listed()
        host.remove("goes")
        return found
    monkeypatch.setattr(col.records, "scan", scan_then_remove)
    try:
        text = col.collect()
        assert 'container="stays"' in text and 'container="goes"' not in text
        assert value(text, "cgman_cpu_usage_seconds_total", container="stays", group="grp", tenant="acme") == 0
        assert col.read_errors == 0 and not host.exists("goes")
        _record(run, "rootless", "stays", root=f"{host.root}-missing")
        with caplog.at_level("WARNING", logger="cgman.exporter.collector"):
            text = col.collect()
        assert 'container="stays"' in text and 'container="rootless"' not in text
        assert col.read_errors == 1
        assert any(f"{host.root}-missing does not exist" in r.getMessage() for r in caplog.records), caplog.text
    finally:
        col.close()
    info = dataclasses.replace(host.info, unified=str(tmp_path / "no-mount")) if host.info.unified else \
        dataclasses.replace(host.info, v1_mounts={**host.info.v1_mounts, "memory": str(tmp_path / "no-mount")})
    col = Collector(info, str(run), str(tmp_path / "state"), c_scrape=False)
    caplog.clear()
    try:
        with caplog.at_level("WARNING", logger="cgman.exporter.collector"):
            text = col.collect()
        assert 'container="stays"' not in text and col.read_errors == 3     # each record: no mount
        assert any(r.getMessage().startswith("container stays: ") and "cannot open the cgroup mount" in
                   r.getMessage() and "no-mount" in r.getMessage() for r in caplog.records), caplog.text
    finally:
        col.close()


def test_tenant_counters_cover_exited_containers_per_tenant(lib):
    run_to_end(lib, spec("x1", burn(0.05)))
    run_to_end(lib, spec("y1", burn(0.05), group="beta", tenant="beta-corp"))
    text = collect(lib)
    by = {r.tenant: r for r in rows(lib)}
    for tenant in ("acme", "beta-corp"):
        assert value(text, "cgman_tenant_cpu_seconds_total", tenant=tenant) == \
            pytest.approx(by[tenant].cpu_usage_usec / 1e6)
        assert value(text, "cgman_tenant_containers_total", tenant=tenant) == 1
        assert value(text, "cgman_tenant_io_bytes_total", tenant=tenant, direction="read") is not None
    assert value(text, "cgman_exporter_ledger_up") is None      # health is the server's (test below)


# ------------------------------------------------------------------- ledger failures lose nothing
def _lock_ledger(path: str) -> sqlite3.Connection:
    Ledger(path).connect().close()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA locking_mode=EXCLUSIVE")
    db.execute("BEGIN EXCLUSIVE")
    return db


def test_opening_a_ledger_that_has_its_schema_takes_no_write_lock(tmp_path):
    """Each run opens the ledger once: when the schema is there, opening only reads, so the run's
    one write transaction is its insert (a writer holding the lock does not delay the open)."""
    path = str(tmp_path / "ledger.db")
    Ledger(path).connect().close()
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")          # holds the write lock, as another run's commit would
    try:
        t = time.monotonic()
        Ledger(path, busy_timeout_s=2.0).connect().close()
        assert time.monotonic() - t < 1.0
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_a_locked_ledger_keeps_the_usage_in_the_record_until_gc(lib, caplog):
    from cgman.containers.manage import gc, rm
    from cgman.errors import Busy
    lib.store = Store(dataclasses.replace(lib.store.settings, ledger_timeout_s=0.2))    # CGMAN_LEDGER_TIMEOUT=0.2
    path = ledger_path(lib.store.state)
    db = _lock_ledger(path)
    try:
        _, code, rec = run_to_end(lib, spec("late", burn(0.1)))
        assert code == 0 and rec.ledger_pending and rec.final_usage["cpu_usage_usec"] >= 100_000
        assert "held it for more than 0.2s" in caplog.text, "the store's ledger timeout was not used"
        assert lib.store.load("late").ledger_pending                   # kept on disk
        assert not lib.host.exists("acme/web/late")                   # the cgroup went all the same
        with pytest.raises(Busy, match="not in the ledger"):
            rm(lib.store, lambda r: lib.host, "late")                  # rm will not drop unbilled usage
        assert gc(lib.store, lambda r: lib.host) == []                 # still locked: nothing lost
        assert lib.store.load("late").ledger_pending
    finally:
        db.rollback() if db.in_transaction else None
        db.close()
    # The exporter counts a pending record too, and the same after gc writes it: no jump, no double.
    before = value(collect(lib), "cgman_tenant_cpu_seconds_total", tenant="acme")
    assert before == pytest.approx(rec.final_usage["cpu_usage_usec"] / 1e6)
    assert gc(lib.store, lambda r: lib.host) == ["late"]
    assert not lib.store.load("late").ledger_pending
    [row] = rows(lib)
    assert row.id == rec.id and row.cpu_usage_usec == rec.final_usage["cpu_usage_usec"]
    assert value(collect(lib), "cgman_tenant_cpu_seconds_total", tenant="acme") == pytest.approx(before)


def test_a_corrupt_ledger_is_left_alone_and_tenant_series_pause(lib, monkeypatch):
    path = ledger_path(lib.store.state)
    os.makedirs(lib.store.state, exist_ok=True)
    garbage = b"this is not a database\n" * 200
    Path(path).write_bytes(garbage)
    _, code, rec = run_to_end(lib, spec("c1", burn(0.05)))
    assert code == 0 and rec.ledger_pending and rec.final_usage is not None
    c = launch(lib.host, lib.store, spec("live", ["sleep", "60"]))
    try:
        from cgman.exporter.collector import Collector
        col = Collector(lib.host.info, lib.store.run, lib.store.state)
        text = col.collect()
        col.close()
        assert col.ledger_up == 0
        assert "cgman_tenant_" not in text                 # a gap, never a smaller counter
        assert value(text, "cgman_container_info", container="live", group="acme/web", tenant="acme") == 1
    finally:
        c.stop(0)
        c.finish()
    assert Path(path).read_bytes() == garbage              # cgman never rewrites a ledger it cannot read


# ------------------------------------------------------------------- exactness (the proof)
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_exporter(lib, port: int, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), CGMAN_RUN_DIR=lib.store.run, CGMAN_STATE_DIR=lib.store.state)
    p = subprocess.Popen([sys.executable, "-m", "cgman", "exporter", "--listen", f"127.0.0.1:{port}", *extra],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return p
        except OSError:
            if p.poll() is not None:
                raise AssertionError(f"exporter exited: {p.stderr.read().decode()}") from None
            time.sleep(0.05)
    p.kill()
    raise AssertionError("exporter did not listen within 30s")


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


@pytest.mark.slow
def test_200_short_containers_are_billed_exactly_across_an_exporter_restart(lib):
    """200 containers of 20-100 ms CPU each, back to back between two scrapes, while a
    scraper polls every 20 ms and the exporter is SIGKILLed and restarted half-way."""
    port = _free_port()
    exp = _start_exporter(lib, port)
    seen: list[tuple[int, float, float]] = []             # (exporter generation, cpu, containers)
    gen = [0]
    stop = threading.Event()

    def scraper() -> None:
        while not stop.is_set():
            try:
                t = _scrape(port)
            except OSError:
                time.sleep(0.01)
                continue
            cpu = value(t, "cgman_tenant_cpu_seconds_total", tenant="acme") or 0.0
            n = value(t, "cgman_tenant_containers_total", tenant="acme") or 0.0
            seen.append((gen[0], cpu, n))
            time.sleep(0.02)

    first = value(_scrape(port), "cgman_tenant_cpu_seconds_total", tenant="acme") or 0.0
    th = threading.Thread(target=scraper, daemon=True)
    th.start()
    truth = 0
    ids = []
    try:
        for i in range(200):
            if i == 100:
                exp.send_signal(signal.SIGKILL)
                exp.wait()
                gen[0] = 1
                exp = _start_exporter(lib, port)
            c, code, rec = run_to_end(lib, spec(f"j{i}", burn((20 + (i * 37) % 81) / 1000)))
            assert code == 0, (i, rec.exit_reason)
            truth += c.rusage_cpu_usec
            ids.append(rec.id)
        stop.set()
        th.join(10)
        last = _scrape(port)
    finally:
        stop.set()
        exp.kill()
        exp.wait()
    ledger = rows(lib)
    assert sorted(r.id for r in ledger) == sorted(ids)          # none missing, none twice
    total = sum(r.cpu_usage_usec for r in ledger)
    assert all(r.cpu_usage_usec > 15_000 for r in ledger)
    # The exporter's counter moved by exactly the ledger's sum between the two scrapes.
    assert value(last, "cgman_tenant_cpu_seconds_total", tenant="acme") - first == pytest.approx(total / 1e6)
    assert value(last, "cgman_tenant_containers_total", tenant="acme") == 200
    # ... and that sum is the workloads' own CPU (the kernel's per-process accounting) within 2 %.
    print(f"ledger {total / 1e6:.4f} s, rusage {truth / 1e6:.4f} s, diff {100 * (total - truth) / truth:+.3f} %, "
          f"{len(seen)} scrapes")
    assert abs(total - truth) <= 0.02 * truth, (total, truth)
    # Never backwards, not even across the SIGKILL and restart.
    assert {g for g, _, _ in seen} == {0, 1}, "the scraper saw both exporter generations"
    for (g0, c0, n0), (g1, c1, n1) in zip(seen, seen[1:], strict=False):
        assert c1 >= c0 - 1e-9 and n1 >= n0, ((g0, c0, n0), (g1, c1, n1))


def _until_at_rest(lib, timeout_s: float = 60) -> None:
    """Until two scrapes 0.3 s apart give every container the same memory: the scrapes compared
    below are taken one after another (seen in the v2 VM: p2 still 20 KiB lighter in the second)."""
    from cgman.exporter.collector import Collector
    col = Collector(lib.host.info, lib.store.run, lib.store.state, c_scrape=False)
    deadline = time.monotonic() + timeout_s
    try:
        last: dict = {}
        while True:
            now = {k: v for k, v in samples(col.collect()).items() if k[0].startswith("cgman_memory")}
            if now and now == last:
                return
            assert time.monotonic() < deadline, (last, now)
            last = now
            time.sleep(0.3)
    finally:
        col.close()


@pytest.mark.cgroup2
def test_the_c_scrape_and_the_python_reference_agree(lib):
    """exporter/fast.py (C parsing and rendering) against drivers/statfiles.py's parsers, same containers."""
    from cgman.exporter.collector import Collector
    from cgman.exporter.fast import module
    assert module() is not None, "cgman._fastread is not built (scripts/setup.sh builds it)"
    res = Resources(cpu=CpuLimits(max_cpus=0.25), memory=MemoryLimits(max_bytes=64 << 20), pids=PidsLimits(max=8))
    cs = [launch(lib.host, lib.store, spec("p1", ["sleep", "60"], res=res)),
          launch(lib.host, lib.store, spec("p2", ["sh", "-c", "head -c 3000000 /dev/urandom > /dev/null; "
                                                              "exec sleep 60"], group="beta", tenant="beta-corp")),
          launch(lib.host, lib.store, spec("p3", ["sleep", "60"]))]
    try:
        lib.host.freeze("acme/web/p3")
        _until_at_rest(lib)                          # p2's burst over, its memory settled (slab freed after RCU)
        # Each path with and without --compat cadvisor (its rss/cache parsing too).
        cols = [Collector(lib.host.info, lib.store.run, lib.store.state, c_scrape=c, compat=compat)
                for compat in (None, "cadvisor") for c in (True, False)]
        c_text, py_text, c_compat, py_compat = (col.collect() for col in cols)
        for col in cols:
            col.close()
        a, b = samples(c_text), samples(py_text)
        assert a.keys() == b.keys()
        assert sum(1 for (n, _) in a if n == "cgman_container_info") == 3
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=0.02, abs=1e-3), k
        ca, cb = samples(c_compat), samples(py_compat)
        assert ca.keys() == cb.keys()
        assert {k for k in ca if not k[0].startswith("container_")} == a.keys()    # compat only adds
        for k in ca:
            assert ca[k] == pytest.approx(cb[k], rel=0.02, abs=2 if k[0] == "container_last_seen" else 1e-3), k
        cad = {n: v for (n, lab), v in ca.items() if n.startswith("container_") and dict(lab)["name"] == "p1"}
        assert cad["container_spec_cpu_quota"] == 25000 and cad["container_spec_cpu_period"] == 100000
        assert cad["container_spec_memory_limit_bytes"] == 64 << 20 and cad["container_threads_max"] == 8
        assert cad["container_memory_rss"] > 0 and "container_memory_cache" in cad
        assert value(c_text, "cgman_frozen", container="p3", group="acme/web", tenant="acme") == 1
        assert value(c_text, "cgman_limit_cpu_cpus", container="p1", group="acme/web", tenant="acme") == 0.25
    finally:
        lib.host.thaw("acme/web/p3")
        for c in cs:
            c.stop(0)
            c.finish()


def test_a_full_fd_cache_still_reports_every_container_and_tenant(lib):
    """Over the fd budget, containers are read with files opened for the scrape only, a few
    at a time: every container appears, and the tenant counter is the same."""
    from cgman.exporter.collector import Collector
    cs = [launch(lib.host, lib.store, spec(f"f{i}", ["sleep", "60"])) for i in range(40)]
    try:
        full = Collector(lib.host.info, lib.store.run, lib.store.state)
        tiny = Collector(lib.host.info, lib.store.run, lib.store.state)
        tiny._fd_budget = 3 * len(tiny.files)            # room for 3 containers' files
        fds_before = len(os.listdir("/proc/self/fd"))
        a, b = full.collect(), tiny.collect()
        mounts = len({f.mount for f in full.files})       # each collector keeps each mount open (cgfs)
        assert len(os.listdir("/proc/self/fd")) - fds_before <= 43 * len(full.files) + 2 * mounts  # no transient leak
        names = {dict(k[1])["container"] for k in samples(b) if k[0] == "cgman_container_info"}
        assert names == {f"f{i}" for i in range(40)} and tiny.read_errors == 0
        assert value(b, "cgman_tenant_containers_total", tenant="acme") == 40
        assert value(b, "cgman_tenant_cpu_seconds_total", tenant="acme") == pytest.approx(
            value(a, "cgman_tenant_cpu_seconds_total", tenant="acme"), rel=0.05)
        assert len(tiny._open) == 3
        full.close()
        tiny.close()
    finally:
        for c in cs:
            c.stop(0)
            c.finish()


def test_a_record_with_a_kernel_sized_limit_does_not_break_scrapes(lib):
    c = launch(lib.host, lib.store, spec("huge", ["sleep", "60"]))
    try:
        rec = lib.store.load("huge")
        rec.limits = {"memory_max_bytes": 11258999068426240000, "pids_max": 1 << 63, "cpu_max_cpus": "max"}
        lib.store.save(rec)
        text = collect(lib)
        L = dict(container="huge", group="acme/web", tenant="acme")
        assert value(text, "cgman_container_info", **L) == 1
        assert value(text, "cgman_limit_memory_bytes", **L) is None     # unlimited: no series
    finally:
        c.stop(0)
        c.finish()
