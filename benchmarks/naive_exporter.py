"""The scrape benchmark's baseline: a naive prometheus_client exporter of cgman's containers.

What a competent first attempt looks like: a ``Collector`` on a private
``CollectorRegistry`` that, on every collect(), lists the run dir's records (json.load
each), reads each running container's cgroup files with plain ``open().read()`` on full
paths, and yields Gauge/CounterMetricFamily with the names cgman serves, through
``prometheus_client.start_http_server``. No caches, no kept-open files, limits read from
the kernel. It imports nothing of cgman (the caller passes the host's layout), so its
memory is prometheus_client's and the stdlib's.

    python benchmarks/naive_exporter.py --run-dir DIR --port N --mode hybrid \
        --mounts '{"cpu": "/sys/fs/cgroup/cpu", ...}' [--unified /sys/fs/cgroup/unified]

``files_for`` is also what benchmarks/scrape.py reads for its ``kernel-reads`` floor.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from typing import Any, Iterator

LABELS = ["container", "group", "tenant"]
USER_HZ = os.sysconf("SC_CLK_TCK") or 100
V1_UNLIMITED = 1 << 62          # memory.limit_in_bytes reports ~2^63 rounded to a page when unlimited


def files_for(mode: str, v1: dict[str, str], unified: str | None) -> dict[str, tuple[str, str]]:
    """key -> (mount, kernel file) of what to read per container on this host."""
    if mode == "v2":
        assert unified
        names = ["cpu.stat", "memory.current", "memory.stat", "memory.events", "io.stat", "pids.current",
                 "cgroup.events", "memory.max", "cpu.max", "pids.max",
                 "cpu.pressure", "memory.pressure", "io.pressure"]
        return {n: (unified, n) for n in names}
    f = {
        "cpuacct.usage": (v1["cpuacct"], "cpuacct.usage"),
        "v1 cpu.stat": (v1["cpu"], "cpu.stat"),
        "memory.usage_in_bytes": (v1["memory"], "memory.usage_in_bytes"),
        "memory.stat": (v1["memory"], "memory.stat"),
        "memory.oom_control": (v1["memory"], "memory.oom_control"),
        "io_service_bytes": (v1["io"], "blkio.throttle.io_service_bytes_recursive"),
        "io_serviced": (v1["io"], "blkio.throttle.io_serviced_recursive"),
        "pids.current": (v1["pids"], "pids.current"),
        "freezer.state": (v1["freezer"], "freezer.state"),
        "memory.limit_in_bytes": (v1["memory"], "memory.limit_in_bytes"),
        "cpu.cfs_quota_us": (v1["cpu"], "cpu.cfs_quota_us"),
        "cpu.cfs_period_us": (v1["cpu"], "cpu.cfs_period_us"),
        "pids.max": (v1["pids"], "pids.max"),
    }
    if unified:                 # hybrid: user/system in µs and PSI come from the cgroup2 mount
        f.update({"cpu.stat": (unified, "cpu.stat"), "cpu.pressure": (unified, "cpu.pressure"),
                  "memory.pressure": (unified, "memory.pressure"), "io.pressure": (unified, "io.pressure")})
    else:
        f["cpuacct.stat"] = (v1["cpuacct"], "cpuacct.stat")
    return f


def _kv(text: str) -> dict[str, str]:
    return dict(line.split(None, 1) for line in text.splitlines() if " " in line)


def _psi_totals(text: str) -> tuple[float, float | None]:
    totals = [float(line.rsplit("total=", 1)[1]) / 1e6 for line in text.splitlines() if "total=" in line]
    return totals[0], totals[1] if len(totals) > 1 else None


def _blkio(text: str) -> tuple[int, int]:
    r = w = 0
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] == "Read":
            r += int(parts[2])
        elif len(parts) == 3 and parts[1] == "Write":
            w += int(parts[2])
    return r, w


def read_container(files: dict[str, tuple[str, str]], rel: str) -> dict[str, float]:
    """Every value of one container's cgroup (``rel``: <cgman root>/<group>/<name>).
    Raises OSError if the cgroup is gone; a file this kernel lacks is skipped."""
    raw: dict[str, str] = {}
    for key, (mount, name) in files.items():
        try:
            with open(f"{mount}/{rel}/{name}") as f:
                raw[key] = f.read()
        except FileNotFoundError:
            if not os.path.isdir(f"{mount}/{rel}"):
                raise
    v: dict[str, float] = {}
    if "cpuacct.usage" in raw:                       # v1 / hybrid
        v["cpu_usage"] = int(raw["cpuacct.usage"]) / 1e9
        v["cpu_throttled"] = int(_kv(raw["v1 cpu.stat"])["throttled_time"]) / 1e9
        v["memory_usage"] = int(raw["memory.usage_in_bytes"])
        v["working_set"] = max(0, v["memory_usage"] - int(_kv(raw["memory.stat"])["total_inactive_file"]))
        v["oom_kills"] = int(_kv(raw["memory.oom_control"]).get("oom_kill", 0))
        v["io_read_bytes"], v["io_write_bytes"] = _blkio(raw["io_service_bytes"])
        v["io_read_ops"], v["io_write_ops"] = _blkio(raw["io_serviced"])
        v["pids"] = int(raw["pids.current"])
        v["frozen"] = 0 if raw["freezer.state"].strip() == "THAWED" else 1
        lim = int(raw["memory.limit_in_bytes"])
        if lim < V1_UNLIMITED:
            v["limit_memory"] = lim
        quota = int(raw["cpu.cfs_quota_us"])
        if quota > 0:
            v["limit_cpu"] = quota / int(raw["cpu.cfs_period_us"])
        if raw["pids.max"].strip() != "max":
            v["limit_pids"] = int(raw["pids.max"])
        if "cpu.stat" in raw:
            cs = _kv(raw["cpu.stat"])
            v["cpu_user"], v["cpu_system"] = int(cs["user_usec"]) / 1e6, int(cs["system_usec"]) / 1e6
        elif "cpuacct.stat" in raw:
            cs = _kv(raw["cpuacct.stat"])
            v["cpu_user"], v["cpu_system"] = int(cs["user"]) / USER_HZ, int(cs["system"]) / USER_HZ
    else:                                            # pure cgroup v2
        cs = _kv(raw["cpu.stat"])
        v["cpu_usage"] = int(cs["usage_usec"]) / 1e6
        v["cpu_user"], v["cpu_system"] = int(cs["user_usec"]) / 1e6, int(cs["system_usec"]) / 1e6
        if "throttled_usec" in cs:
            v["cpu_throttled"] = int(cs["throttled_usec"]) / 1e6
        if "memory.current" in raw:
            v["memory_usage"] = int(raw["memory.current"])
            v["working_set"] = max(0, v["memory_usage"] - int(_kv(raw["memory.stat"])["inactive_file"]))
            v["oom_kills"] = int(_kv(raw["memory.events"]).get("oom_kill", 0))
            if raw["memory.max"].strip() != "max":
                v["limit_memory"] = int(raw["memory.max"])
        if "io.stat" in raw:
            rb = wb = ro = wo = 0
            for tok in raw["io.stat"].split():
                k, _, n = tok.partition("=")
                rb += int(n) if k == "rbytes" else 0
                wb += int(n) if k == "wbytes" else 0
                ro += int(n) if k == "rios" else 0
                wo += int(n) if k == "wios" else 0
            v["io_read_bytes"], v["io_write_bytes"], v["io_read_ops"], v["io_write_ops"] = rb, wb, ro, wo
        if "pids.current" in raw:
            v["pids"] = int(raw["pids.current"])
            if raw["pids.max"].strip() != "max":
                v["limit_pids"] = int(raw["pids.max"])
        v["frozen"] = int(_kv(raw["cgroup.events"]).get("frozen", 0))
        if "cpu.max" in raw:
            quota, period = raw["cpu.max"].split()
            if quota != "max":
                v["limit_cpu"] = int(quota) / int(period)
    for kind in ("cpu", "memory", "io"):
        if f"{kind}.pressure" in raw:
            v[f"psi_{kind}_some"], full = _psi_totals(raw[f"{kind}.pressure"])
            if full is not None:
                v[f"psi_{kind}_full"] = full
    return v


# (metric name, counter?, help, value key)
METRICS = [
    ("cgman_cpu_usage_seconds_total", True, "CPU time used.", "cpu_usage"),
    ("cgman_cpu_user_seconds_total", True, "CPU time in user mode.", "cpu_user"),
    ("cgman_cpu_system_seconds_total", True, "CPU time in kernel mode.", "cpu_system"),
    ("cgman_cpu_throttled_seconds_total", True, "Time throttled by the CPU quota.", "cpu_throttled"),
    ("cgman_memory_usage_bytes", False, "Memory charged to the container.", "memory_usage"),
    ("cgman_memory_working_set_bytes", False, "Memory usage minus inactive file cache.", "working_set"),
    ("cgman_memory_oom_kills_total", True, "OOM kills.", "oom_kills"),
    ("cgman_io_read_bytes_total", True, "Bytes read.", "io_read_bytes"),
    ("cgman_io_write_bytes_total", True, "Bytes written.", "io_write_bytes"),
    ("cgman_io_read_ops_total", True, "Read operations.", "io_read_ops"),
    ("cgman_io_write_ops_total", True, "Write operations.", "io_write_ops"),
    ("cgman_pids_current", False, "Processes and threads.", "pids"),
    ("cgman_frozen", False, "1 if frozen.", "frozen"),
    ("cgman_limit_cpu_cpus", False, "CPU limit in CPUs.", "limit_cpu"),
    ("cgman_limit_memory_bytes", False, "Memory limit.", "limit_memory"),
    ("cgman_limit_pids", False, "Process limit.", "limit_pids"),
] + [(f"cgman_pressure_{k}_{w}_seconds_total", True, f"PSI {k} {s} total.", f"psi_{k}_{s}")
     for k in ("cpu", "memory", "io") for w, s in (("waiting", "some"), ("stalled", "full"))]


def make_collector(run_dir: str, files: dict[str, tuple[str, str]]) -> Any:
    from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.registry import Collector

    class NaiveCollector(Collector):
        def collect(self) -> Iterator[Any]:
            fams = {key: (CounterMetricFamily if counter else GaugeMetricFamily)(name, doc, labels=LABELS)
                    for name, counter, doc, key in METRICS}
            info = GaugeMetricFamily("cgman_container_info", "1 per live container.", labels=LABELS)
            started = GaugeMetricFamily("cgman_container_start_time_seconds", "Start time.", labels=LABELS)
            mem_bs = CounterMetricFamily("cgman_memory_byte_seconds_total", "Memory byte-seconds.", labels=LABELS)
            t_cpu = CounterMetricFamily("cgman_tenant_cpu_seconds_total", "Tenant CPU.", labels=["tenant"])
            t_n = CounterMetricFamily("cgman_tenant_containers_total", "Tenant containers.", labels=["tenant"])
            tenants: dict[str, list[float]] = {}
            cdir = os.path.join(run_dir, "containers")
            for n in sorted(os.listdir(cdir)) if os.path.isdir(cdir) else []:
                try:
                    with open(os.path.join(cdir, n, "record.json")) as f:
                        rec = json.load(f)
                except (OSError, ValueError):
                    continue
                if rec.get("state") != "running":
                    continue
                labels = [rec["name"], rec["group"], rec["tenant"]]
                try:
                    vals = read_container(files, f"{rec['cgroup_root']}/{rec['cgroup']}")
                except (OSError, ValueError, KeyError):
                    continue            # exited meanwhile
                for key, fam in fams.items():
                    if key in vals:
                        fam.add_metric(labels, vals[key])
                info.add_metric(labels, 1)
                if rec.get("started") is not None:
                    started.add_metric(labels, rec["started"])
                mem_bs.add_metric(labels, rec.get("memory_byte_seconds") or 0.0)
                t = tenants.setdefault(rec["tenant"], [0.0, 0])
                t[0] += vals.get("cpu_usage", 0.0)
                t[1] += 1
            for tenant, (cpu, count) in sorted(tenants.items()):
                t_cpu.add_metric([tenant], cpu)
                t_n.add_metric([tenant], count)
            yield info
            yield started
            yield mem_bs
            yield from fams.values()
            yield t_cpu
            yield t_n

    return NaiveCollector()


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--mode", required=True, choices=["v1", "v2", "hybrid"])
    ap.add_argument("--mounts", default="{}", help="JSON: cgman controller name -> v1 mountpoint")
    ap.add_argument("--unified", default=None, help="the cgroup2 mountpoint, if any")
    args = ap.parse_args()
    from prometheus_client import CollectorRegistry, start_http_server
    registry = CollectorRegistry(auto_describe=False)
    registry.register(make_collector(args.run_dir, files_for(args.mode, json.loads(args.mounts), args.unified)))
    start_http_server(args.port, addr="127.0.0.1", registry=registry)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
