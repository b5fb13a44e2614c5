"""Loading policy files: YAML -> validated model, with file:line:column on every error.

The only module that imports yaml. It walks the composed node tree (not the
constructed dict) so that each value keeps its position, and so that duplicate
keys, which PyYAML would silently merge, are caught.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path
from typing import Any, Iterable

import yaml

from . import schema as S
from .convert import cpu_quota_usec
from .errors import CgmanError, PolicyError, shown
from .inputs import DEFAULT_LIMITS, Limits, decode, read_input
from .model import (DEFAULT_CPU_PERIOD_USEC, CpuLimits, DeviceSpec, Group, IODevice, IOLimits, LaunchSpec,
                    Location, MemoryLimits, NetworkSpec, PidsLimits, PolicySet, Resources,
                    RootfsSpec, SecurityPolicy, Unlimited, VolumeSpec)

#: YAML tags of numbers: their text is checked for length before it is constructed.
NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
#: No field takes a number longer than this; Python's int() would refuse past 4300 digits anyway.
MAX_NUMBER_CHARS = 40


def _too_many(limit: int) -> str:
    return f"more than {limit} groups: split the policies, or raise CGMAN_MAX_GROUPS"


class Walker:
    """Checks one file's node tree against the schema; raises PolicyError. The price sheet
    (accounting/prices.py) walks its tree with it too, for the same positions and limits."""

    def __init__(self, file: str, limits: Limits = DEFAULT_LIMITS) -> None:
        self.file = file
        self.limits = limits
        # A loader per file: construct_object caches every node it builds, so a
        # shared one would grow for the life of a long-running agent.
        self.loader = yaml.SafeLoader("")
        # The composed tree shares the node of an anchor with each of its aliases, so a
        # node met twice was reached through an alias; one met on its own path is a cycle.
        self._seen: set[int] = set()
        self._path: set[int] = set()
        self.alias_nodes = 0
        self.groups = 0
        self.depth = 0

    def fail(self, node: yaml.Node, key: str, message: str) -> PolicyError:
        m = node.start_mark
        return PolicyError(message, self.file, m.line + 1, m.column + 1, key)

    def loc(self, node: yaml.Node) -> Location:
        return Location(self.file, node.start_mark.line + 1, node.start_mark.column + 1)

    def scalar(self, node: yaml.Node) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            kind = "a mapping" if isinstance(node, yaml.MappingNode) else "a list"
            raise ValueError(f"expected a single value, got {kind}")
        if node.tag in NUMBER_TAGS and len(node.value) > MAX_NUMBER_CHARS:
            raise ValueError(f"number too long ({len(node.value)} characters; no field takes more "
                             f"than {MAX_NUMBER_CHARS})")
        try:
            return self.loader.construct_object(node, deep=True)
        except (ValueError, yaml.YAMLError):
            raise
        except Exception:         # e.g. PyYAML's IndexError on an explicit `!!int ""`
            raise ValueError(f"{shown(node.value)} is not a valid {node.tag.rpartition(':')[2]}") from None

    def enter(self, node: yaml.Node, key: str) -> None:
        """Count ``node`` against the alias budget; refuse a node that contains itself."""
        i = id(node)
        if i in self._path:
            raise self.fail(node, key, "recursive YAML alias (a node that contains itself): "
                                       "write the value out instead")
        if i in self._seen:
            self.alias_nodes += 1
            if self.alias_nodes > self.limits.max_alias_nodes:
                raise self.fail(node, key, f"YAML aliases expand to more than "
                                           f"{self.limits.max_alias_nodes} nodes: excessive aliasing")
        else:
            self._seen.add(i)

    def items(self, node: yaml.Node, key: str) -> list[tuple[str, yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, key, "expected a mapping (key: value)")
        seen: dict[str, yaml.Node] = {}
        out: list[tuple[str, yaml.Node, yaml.Node]] = []
        for knode, vnode in node.value:
            if not isinstance(knode, yaml.ScalarNode):
                raise self.fail(knode, key, "keys must be plain names")
            k = str(knode.value)
            if k in seen:
                prev = seen[k].start_mark
                raise self.fail(knode, join_key(key, k),
                                f"duplicate key (first defined at line {prev.line + 1})")
            seen[k] = knode
            out.append((k, knode, vnode))
        return out

    def check(self, node: yaml.Node, f: S.Field, key: str) -> Any:
        """Validate ``node`` against field ``f``; return parsed values (dicts for objects)."""
        self.enter(node, key)
        if isinstance(node, yaml.ScalarNode):
            return self._check(node, f, key)
        self._path.add(id(node))
        try:
            return self._check(node, f, key)
        finally:
            self._path.discard(id(node))

    def _check(self, node: yaml.Node, f: S.Field, key: str) -> Any:
        if isinstance(f, S.Ref):
            f = f.target()
        if isinstance(f, S.Obj):
            if isinstance(node, yaml.ScalarNode) and node.value in ("", "~", "null"):
                node = yaml.MappingNode("tag:yaml.org,2002:map", [], node.start_mark, node.end_mark)
            out: dict[str, Any] = {"__node__": node}
            for k, knode, vnode in self.items(node, key):
                sub = f.fields.get(k)
                if sub is None:
                    allowed = ", ".join(f.fields)
                    raise self.fail(knode, join_key(key, k), f"unknown key; expected one of: {allowed}")
                out[k] = self.check(vnode, sub, join_key(key, k))
                out["__key__" + k] = knode
            for r in f.required:
                if r not in out:
                    raise self.fail(node, join_key(key, r), "required key is missing")
            return out
        if isinstance(f, S.MapOf):
            return self._group_map(node, f, key)
        if isinstance(f, S.ListOf):
            if not isinstance(node, yaml.SequenceNode):
                raise self.fail(node, key, "expected a list")
            return [(item, self.check(item, f.item, f"{key}[{i}]"))
                    for i, item in enumerate(node.value)]
        try:
            return f.check(self.scalar(node))
        except (ValueError, yaml.YAMLError) as e:
            raise self.fail(node, key, str(e)) from None

    def _group_map(self, node: yaml.Node, f: S.MapOf, key: str) -> dict[str, Any]:
        """A mapping of group names (``policies:`` or ``children:``), within the limits."""
        self.depth += 1
        result: dict[str, Any] = {}
        try:
            if self.depth > self.limits.max_group_depth:
                raise self.fail(node, key, f"groups nest deeper than {self.limits.max_group_depth} levels")
            for k, knode, vnode in self.items(node, key):
                self.groups += 1
                if self.groups > self.limits.max_groups:
                    raise self.fail(knode, join_key(key, k), _too_many(self.limits.max_groups))
                if "/" in k or k in (".", ".."):
                    raise self.fail(knode, join_key(key, k),
                                    "group names cannot contain '/' or be '.'/'..'; "
                                    "nest groups with children: instead")
                if not S.NAME_RE.fullmatch(k):
                    raise self.fail(knode, join_key(key, k),
                                    "bad name: use letters, digits, '_', '.', '-' (max 64), "
                                    "starting with a letter or digit")
                result[k] = (knode, self.check(vnode, f.value(), join_key(key, k)))
        finally:
            self.depth -= 1
        return result


def join_key(key: str, k: str) -> str:
    """The dotted path of ``k`` below ``key``, as errors name it (``policies.acme.cpu``)."""
    return f"{key}.{k}" if key else k


# libyaml's composer is ~5x faster than the pure-Python one and keeps the same marks.
_COMPOSER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _resolve_device(w: Walker, node: yaml.Node, key: str, dev: str) -> str:
    if not dev.startswith("/dev/"):
        return dev
    try:
        st = os.stat(dev)
    except OSError as e:
        raise w.fail(node, key, f"cannot stat {dev}: {e.strerror}") from None
    if not stat.S_ISBLK(st.st_mode):
        raise w.fail(node, key, f"{dev} is not a block device")
    return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"


def _resources(w: Walker, d: dict[str, Any], key: str) -> Resources:
    cpu_d = d.get("cpu", {})
    if "weight" in cpu_d and "shares" in cpu_d:
        raise w.fail(cpu_d["__key__shares"], f"{key}.cpu.shares",
                     "set cpu.weight or cpu.shares, not both")
    if "period" in cpu_d and "max" not in cpu_d:
        raise w.fail(cpu_d["__key__period"], f"{key}.cpu.period", "cpu.period needs cpu.max")
    if "max" in cpu_d:
        try:
            cpu_quota_usec(cpu_d["max"], cpu_d.get("period", DEFAULT_CPU_PERIOD_USEC))
        except ValueError as e:
            raise w.fail(cpu_d["__key__max"], f"{key}.cpu.max", str(e)) from None
    cpu = CpuLimits(weight=cpu_d.get("weight"), shares=cpu_d.get("shares"),
                    max_cpus=cpu_d.get("max"),
                    period_usec=cpu_d.get("period", DEFAULT_CPU_PERIOD_USEC if "max" in cpu_d else None),
                    cpus=cpu_d.get("cpus"), mems=cpu_d.get("mems"))
    mem_d = d.get("memory", {})
    if "swap" in mem_d and "max" not in mem_d:
        raise w.fail(mem_d["__key__swap"], f"{key}.memory.swap",
                     "memory.swap needs memory.max in the same group "
                     "(cgroup v1 limits memory+swap together)")
    if "swap" in mem_d and isinstance(mem_d["max"], Unlimited) and not isinstance(mem_d["swap"], Unlimited):
        raise w.fail(mem_d["__key__swap"], f"{key}.memory.swap",
                     "a finite memory.swap needs a finite memory.max")
    memory = MemoryLimits(max_bytes=mem_d.get("max"), high_bytes=mem_d.get("high"),
                          low_bytes=mem_d.get("low"), min_bytes=mem_d.get("min"),
                          swap_bytes=mem_d.get("swap"))
    io_d = d.get("io", {})
    devices = []
    seen: set[str] = set()
    for i, (node, dev_d) in enumerate(io_d.get("devices", [])):
        dkey = f"{key}.io.devices[{i}]"
        dev = _resolve_device(w, dev_d["__node__"], dkey + ".device", dev_d["device"])
        if dev in seen:
            raise w.fail(node, dkey + ".device", f"device {dev} is listed twice")
        seen.add(dev)
        if len([k for k in dev_d if not k.startswith("__") and k != "device"]) == 0:
            raise w.fail(node, dkey, "give at least one of weight, rbps, wbps, riops, wiops")
        devices.append(IODevice(device=dev, weight=dev_d.get("weight"), rbps=dev_d.get("rbps"),
                                wbps=dev_d.get("wbps"), riops=dev_d.get("riops"),
                                wiops=dev_d.get("wiops")))
    io = IOLimits(weight=io_d.get("weight"), devices=tuple(devices))
    pids = PidsLimits(max=d.get("pids", {}).get("max"))
    return Resources(cpu=cpu, memory=memory, io=io, pids=pids, frozen=d.get("frozen"))


def _launch(w: Walker, d: dict[str, Any], key: str) -> LaunchSpec:
    ns = tuple(v for _, v in d.get("namespaces", [(None, n) for n in LaunchSpec().namespaces]))
    net_d = d.get("network", {})
    subnet = net_d.get("subnet")
    if subnet is not None:
        try:
            net = ipaddress.IPv4Network(subnet, strict=True)
        except ValueError as e:
            raise w.fail(net_d["__key__subnet"], f"{key}.network.subnet",
                         f"bad IPv4 subnet: {e}") from None
        if net.num_addresses < 4:
            raise w.fail(net_d["__key__subnet"], f"{key}.network.subnet",
                         "subnet too small: needs room for the bridge and one container")
    mode = net_d.get("mode", "bridge" if subnet else "none")
    if mode == "bridge" and "net" not in ns:
        raise w.fail(d["__node__"], f"{key}.network.mode", "bridge networking needs the net namespace")
    rootfs = None
    if "rootfs" in d:
        r = d["rootfs"]
        if ("path" in r) == ("layers" in r):
            raise w.fail(r["__node__"], f"{key}.rootfs", "give exactly one of path or layers")
        rootfs = RootfsSpec(path=r.get("path"), layers=tuple(v for _, v in r.get("layers", [])))
    if "image" in d and rootfs is not None:
        raise w.fail(d["__key__image"], f"{key}.image", "give image or rootfs, not both")
    user = d.get("user", {})
    uid = user.get("uid")
    if "user" in d and "user" not in ns:
        raise w.fail(d["__key__user"], f"{key}.user", "a user mapping needs 'user' in namespaces")
    return LaunchSpec(namespaces=ns, hostname=d.get("hostname"),
                      network=NetworkSpec(mode=mode, bridge=net_d.get("bridge", "cgman0"),
                                          subnet=subnet),
                      rootfs=rootfs, user_map_uid=uid, user_map_gid=user.get("gid"),
                      user_map_count=user.get("count"), security=_security(w, d, key, ns),
                      image=d.get("image"))


def _security(w: Walker, d: dict[str, Any], key: str, ns: tuple[str, ...]) -> SecurityPolicy:
    """launch.{privileged, allow_privileged, capabilities, no_new_privileges, seccomp, devices}."""
    from .security import caps, devices, seccomp
    from .security.resolve import volume_path
    privileged = d.get("privileged", False)
    if privileged and not d.get("allow_privileged", False):
        raise w.fail(d["__key__privileged"], f"{key}.privileged",
                     "a privileged group must also say allow_privileged: true (both are the operator's choice)")
    if not privileged and not {"mount", "pid"} <= set(ns):
        raise w.fail(d.get("__key__namespaces", d["__node__"]), f"{key}.namespaces",
                     "containers need the mount and pid namespaces for their protections (a read-only "
                     "cgroupfs and host view, masked /proc paths, no reach into other tenants' processes): "
                     "add mount and pid, or set privileged: true")
    cap_d = d.get("capabilities", {})
    lists: dict[str, tuple[str, ...]] = {}
    for which in ("add", "drop"):
        out = []
        for node, name in cap_d.get(which, []):
            try:
                out.append(caps.normalize(name))
            except ValueError as e:
                raise w.fail(node, f"{key}.capabilities.{which}", str(e)) from None
        lists[which] = tuple(out)
    profile = d.get("seccomp", seccomp.DEFAULT)
    if profile not in (seccomp.DEFAULT, seccomp.UNCONFINED):
        try:
            seccomp.load(profile)
        except CgmanError as e:
            raise w.fail(d["__key__seccomp"], f"{key}.seccomp", str(e)) from None
    devs = []
    for i, (node, dev) in enumerate(d.get("devices", [])):
        try:
            devices.from_path(dev["path"], dev.get("access", "rwm"))
        except ValueError as e:
            raise w.fail(node, f"{key}.devices[{i}].path", str(e)) from None
        devs.append(DeviceSpec(path=dev["path"], access=dev.get("access", "rwm")))
    vols = []
    for i, (node, v) in enumerate(d.get("volumes", [])):
        try:
            vols.append(VolumeSpec(path=volume_path(v["path"]), readonly=v.get("readonly", False)))
        except ValueError as e:
            raise w.fail(node, f"{key}.volumes[{i}].path", str(e)) from None
    return SecurityPolicy(privileged=privileged, allow_privileged=d.get("allow_privileged", False),
                          cap_add=lists["add"], cap_drop=lists["drop"],
                          no_new_privileges=d.get("no_new_privileges", True), seccomp=profile,
                          devices=tuple(devs), volumes=tuple(vols))


def _groups(w: Walker, tree: dict[str, Any], parent: str, tenant: str | None,
            formula: Any, key: str) -> Iterable[Group]:
    for name, (knode, d) in tree.items():
        path = f"{parent}/{name}" if parent else name
        gkey = join_key(key, name)
        t = d.get("tenant", tenant or name)
        yield Group(path=path, tenant=t, resources=_resources(w, d, gkey), location=w.loc(knode),
                    formula=formula,
                    container=_resources(w, d["container"], gkey + ".container")
                    if "container" in d else None,
                    launch=_launch(w, d["launch"], gkey + ".launch") if "launch" in d else None)
        yield from _groups(w, d.get("children", {}), path, t, formula, gkey + ".children")


def compose(text: str, file: str, empty: str) -> yaml.Node:
    """The node tree of one YAML document (positions kept); PolicyError on a syntax error,
    or with ``empty`` as the message for an empty document."""
    try:
        root = yaml.compose(text, Loader=_COMPOSER)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        raise PolicyError(f"YAML syntax error: {e.problem or e}", file, line, col) from None
    except yaml.YAMLError as e:
        raise PolicyError(f"YAML error: {e}", file) from None
    if root is None:
        raise PolicyError(empty, file, 1, 1)
    return root


def parse_text(text: str, file: str = "<input>", limits: Limits = DEFAULT_LIMITS) -> list[Group]:
    """Parse one policy document; raises PolicyError naming file:line:column."""
    if len(text) > limits.max_input_bytes:       # callers that read files have checked bytes already
        raise PolicyError(f"policy text is too large ({len(text)} characters; the limit is "
                          f"{limits.max_input_bytes}): split it, or raise CGMAN_MAX_INPUT_BYTES", file)
    w = Walker(file, limits)
    root = compose(text, file, "empty policy file: expected 'version: 1' and 'policies:'")
    d = w.check(root, S.FILE, "")
    return list(_groups(w, d["policies"], "", None, d.get("cpu_weight_formula", "oci"),
                        "policies"))


def load_files(paths: Iterable[str | os.PathLike[str]], limits: Limits = DEFAULT_LIMITS) -> PolicySet:
    """Load and validate every file before anything is applied (all or nothing).

    Directories are expanded to their *.yaml / *.yml files in name order. Each file must
    be a regular file within ``limits.max_input_bytes``; all of them together may define
    at most ``limits.max_groups`` groups.
    """
    files = list(_expand(paths))
    if not files:
        raise PolicyError("no policy files given (pass files or a directory of *.yaml)")
    groups: dict[str, Group] = {}
    for f in files:
        text = decode(read_input(f, limits.max_input_bytes), str(f))
        for g in parse_text(text, str(f), limits):
            if len(groups) >= limits.max_groups:
                raise PolicyError(_too_many(limits.max_groups), g.location.file, g.location.line,
                                  g.location.column, "policies." + g.path.replace("/", ".children."))
            if g.path in groups:
                prev = groups[g.path].location
                raise PolicyError(f"group '{g.path}' is already defined at {prev}",
                                  g.location.file, g.location.line, g.location.column,
                                  "policies." + g.path.replace("/", ".children."))
            groups[g.path] = g
    # Insertion order is depth-first per file, so parents always precede children.
    return PolicySet(groups=tuple(groups.values()), files=tuple(str(f) for f in files))


def _expand(paths: Iterable[str | os.PathLike[str]]) -> Iterable[Path]:
    for p in paths:
        p = Path(p)
        if p.is_dir():
            yield from sorted(x for x in p.iterdir() if x.suffix in (".yaml", ".yml") and x.is_file())
        else:
            yield p
