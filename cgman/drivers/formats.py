"""The formats of cgroup interface files, one parser each. Pure: text in, values out.

Documentation/admin-guide/cgroup-v2.rst ("Interface Files", "Format") names the shapes,
and the v1 files use the same ones plus two of their own:

- single value: ``123`` (memory.current, pids.current, cpuacct.usage, freezer.state)
- limit: a single value where ``max`` (v2), ``-1`` or a number at or above UNLIMITED_V1
  (v1) means no limit (memory.max, memory.limit_in_bytes, pids.max)
- space separated: ``max 100000`` (cpu.max: quota, then period)
- flat keyed: ``KEY VALUE`` lines (cpu.stat, memory.stat, memory.events, cgroup.events;
  with string values: io.weight's ``default 100``, blkio.*_device's ``8:0 1048576``)
- nested keyed: ``KEY SUB=VALUE SUB=VALUE`` lines (io.stat, io.max, *.pressure)
- v1 blkio: ``MAJ:MIN OPERATION VALUE`` lines and a ``Total VALUE`` line
  (blkio.throttle.io_service_bytes_recursive, blkio.throttle.io_serviced_recursive)
"""

from __future__ import annotations

# v1 has no "max": an unlimited memory limit reads as 2^63-1 rounded down to a page
# (9223372036854771712), and other v1 sizes are just as huge. Anything at or above this
# is "no limit"; no real limit comes near it.
UNLIMITED_V1 = 1 << 62


def single_value(text: str) -> str:
    """The one value of a single-value file, without its newline."""
    return text.strip()


def single_int(text: str) -> int:
    """The number of a single-value file (trailing text such as a newline is ignored)."""
    return int(text.split(None, 1)[0])


def limit(text: str) -> int | None:
    """A limit file's number; None when it means no limit (``max``, ``-1``, or v1's huge value)."""
    value = text.strip()
    if value in ("max", "-1"):
        return None
    n = int(value)
    return None if n >= UNLIMITED_V1 else n


def cpu_max(text: str) -> tuple[int | None, int]:
    """cpu.max ``QUOTA PERIOD`` in µs; the quota is None for ``max``."""
    quota, period = text.split()
    return (None if quota == "max" else int(quota)), int(period)


def flat_keyed(text: str) -> dict[str, str]:
    """``KEY VALUE`` lines -> {key: value as written}; a line with a key only maps to ""."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if key:
            out[key] = value.strip()
    return out


def _line_of(text: str, key: str) -> int:
    """Where the line whose first word is ``key`` starts; -1 if there is none."""
    needle = key + " "
    i = text.find(needle)
    while i > 0 and text[i - 1] != "\n":          # a key only counts at the start of a line
        i = text.find(needle, i + 1)
    return i


def flat_keyed_int(text: str, key: str) -> int | None:
    """The number of one ``KEY VALUE`` line (None if no line has that key), found without
    parsing the other lines: the exporter reads a 40-line memory.stat for one of them."""
    i = _line_of(text, key)
    if i < 0:
        return None
    end = text.find("\n", i)
    return int(text[i + len(key) + 1:end if end >= 0 else None])


def sub_keys(fields: str) -> dict[str, str]:
    """``SUB=VALUE SUB=VALUE`` -> {sub: value} (the part of a nested keyed line after its key)."""
    return dict(p.split("=", 1) for p in fields.split() if "=" in p)


def nested_keyed(text: str) -> dict[str, dict[str, str]]:
    """``KEY SUB=VALUE ...`` lines -> {key: {sub: value}}."""
    return {key: sub_keys(rest) for key, rest in flat_keyed(text).items()}


def nested_keyed_int(text: str, key: str, sub: str) -> int | None:
    """The number of ``SUB=`` on the ``KEY`` line (None if absent), without parsing the
    rest: the exporter reads three *.pressure files of every container on every scrape."""
    i = _line_of(text, key)
    if i < 0:
        return None
    end = text.find("\n", i)
    line = text[i:end if end >= 0 else None]
    j = line.find(f" {sub}=")
    if j < 0:
        return None
    j += len(sub) + 2
    k = line.find(" ", j)
    return int(line[j:k if k >= 0 else None])


def v1_blkio_totals(text: str) -> tuple[int, int]:
    """Sums over every device of the ``Read`` and of the ``Write`` lines."""
    read = write = 0
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3:
            if parts[1] == "Read":
                read += int(parts[2])
            elif parts[1] == "Write":
                write += int(parts[2])
    return read, write


def v1_frozen(state: str) -> bool:
    """v1 freezer.state: FREEZING (a freeze under way) counts as frozen, since the group no
    longer runs freely; only THAWED is not."""
    return single_value(state) != "THAWED"
