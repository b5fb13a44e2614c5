"""The policy format as data: one declaration drives both validation and JSON Schema.

Each field type knows how to check a YAML node (returning the parsed Python
value) and how to describe itself as JSON Schema. policy.py walks YAML nodes
with these; ``cgman schema`` prints ``json_schema()``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from . import units
from .convert import (BFQ_MAX, SHARES_MAX, SHARES_MIN, WEIGHT_MAX, WEIGHT_MIN)
from .errors import shown
from .model import NAMESPACES, UNLIMITED

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
NAME_RE = re.compile(NAME_PATTERN)
DEVICE_PATTERN = r"^([0-9]{1,10}:[0-9]{1,10}|/dev/.+)$"
# The kernel's dev_valid_name(): 1..15 bytes (IFNAMSIZ - 1), not "." or "..", no '/', ':' or space.
BRIDGE_PATTERN = r"^(?!\.\.?$)[A-Za-z0-9_.-]{1,15}$"
CAP_PATTERN = r"^(?i:(CAP_)?[A-Z_]{2,32})$"
CAP_HINT = "a capability name such as NET_RAW or CAP_NET_RAW, or ALL"


class Invalid(ValueError):
    """Raised by a field check; policy.py adds file, line, column and key path."""


@dataclass(frozen=True)
class Field:
    """Base of all field types."""

    doc: str = ""

    def check(self, value: Any) -> Any:  # value: a plain scalar for scalar fields
        return value

    def schema(self) -> dict[str, Any]:
        return {}

    def _with_doc(self, d: dict[str, Any]) -> dict[str, Any]:
        if self.doc:
            d["description"] = self.doc
        return d


@dataclass(frozen=True)
class Int(Field):
    """An integer in [lo, hi], or "max" where allow_max."""

    lo: int = 0
    hi: int = 2**63 - 1
    allow_max: bool = False

    def check(self, value: Any) -> Any:
        if self.allow_max and value == "max":
            return UNLIMITED
        if isinstance(value, bool) or not isinstance(value, int):
            extra = " or max" if self.allow_max else ""
            raise Invalid(f"expected an integer{extra}, got {shown(value)}")
        if not self.lo <= value <= self.hi:
            raise Invalid(f"{shown(value)} is out of range {self.lo}..{self.hi}")
        return value

    def schema(self) -> dict[str, Any]:
        num = {"type": "integer", "minimum": self.lo, "maximum": self.hi}
        if self.allow_max:
            return self._with_doc({"oneOf": [num, {"const": "max"}]})
        return self._with_doc(num)


@dataclass(frozen=True)
class Quantity(Field):
    """A byte quantity: a number or a string with a unit (512Mi, 1G), or "max"."""

    def check(self, value: Any) -> Any:
        try:
            return units.parse_quantity(value)
        except units.UnitError as e:
            raise Invalid(str(e)) from None

    def schema(self) -> dict[str, Any]:
        return self._with_doc({"oneOf": [
            {"type": "integer", "minimum": 0},
            {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?\s*(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?|max)$"}]})


@dataclass(frozen=True)
class Duration(Field):
    """A duration (100ms, 1s) within [lo_usec, hi_usec]."""

    lo_usec: int = 1000
    hi_usec: int = 1_000_000

    def check(self, value: Any) -> Any:
        try:
            usec = units.parse_duration_usec(value)
        except units.UnitError as e:
            raise Invalid(str(e)) from None
        if not self.lo_usec <= usec <= self.hi_usec:
            raise Invalid(f"{shown(value)} is out of range {self.lo_usec}us..{self.hi_usec}us")
        return usec

    def schema(self) -> dict[str, Any]:
        return self._with_doc({"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?(us|ms|s|m)$"})


@dataclass(frozen=True)
class Cpus(Field):
    """A CPU count (1.5, "250m"), or "max"."""

    def check(self, value: Any) -> Any:
        try:
            return units.parse_cpus(value)
        except units.UnitError as e:
            raise Invalid(str(e)) from None

    def schema(self) -> dict[str, Any]:
        return self._with_doc({"oneOf": [{"type": "number", "exclusiveMinimum": 0},
                                         {"const": "max"}]})


@dataclass(frozen=True)
class CpuList(Field):
    """A cpuset list ("0-3,8")."""

    def check(self, value: Any) -> Any:
        try:
            return units.parse_cpu_list(value)
        except units.UnitError as e:
            raise Invalid(str(e)) from None

    def schema(self) -> dict[str, Any]:
        return self._with_doc({"type": ["string", "integer"],
                               "pattern": r"^[ \t]*[0-9]+(-[0-9]+)?([ \t]*,[ \t]*[0-9]+(-[0-9]+)?)*[ \t]*$"})


@dataclass(frozen=True)
class Bool(Field):
    """true or false."""

    def check(self, value: Any) -> Any:
        if not isinstance(value, bool):
            raise Invalid(f"expected true or false, got {shown(value)}")
        return value

    def schema(self) -> dict[str, Any]:
        return self._with_doc({"type": "boolean"})


@dataclass(frozen=True)
class Str(Field):
    """A string, matching pattern where one is given."""

    pattern: str | None = None
    hint: str = ""

    def check(self, value: Any) -> Any:
        if not isinstance(value, str):
            raise Invalid(f"expected a string, got {shown(value)}")
        if self.pattern and not re.fullmatch(self.pattern.rstrip("$"), value):
            raise Invalid(f"{shown(value)} is not valid{': ' + self.hint if self.hint else ''}")
        return value

    def schema(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": "string"}
        if self.pattern:
            d["pattern"] = self.pattern
        return self._with_doc(d)


@dataclass(frozen=True)
class Enum(Field):
    """One of values."""

    values: tuple[Any, ...] = ()

    def check(self, value: Any) -> Any:
        if value not in self.values or isinstance(value, bool) != isinstance(self.values[0], bool):
            raise Invalid(f"{shown(value)} is not one of {', '.join(map(str, self.values))}")
        return value

    def schema(self) -> dict[str, Any]:
        return self._with_doc({"enum": list(self.values)})


@dataclass(frozen=True)
class Obj(Field):
    """A mapping with known keys (fields), some required."""

    fields: dict[str, Field] = field(default_factory=dict)
    required: tuple[str, ...] = ()

    def schema(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": "object",
                             "properties": {k: f.schema() for k, f in self.fields.items()},
                             "additionalProperties": False}
        if self.required:
            d["required"] = list(self.required)
        return self._with_doc(d)


@dataclass(frozen=True)
class ListOf(Field):
    """A list of item."""

    item: Field = field(default_factory=Field)

    def schema(self) -> dict[str, Any]:
        return self._with_doc({"type": "array", "items": self.item.schema()})


@dataclass(frozen=True)
class MapOf(Field):
    """A mapping whose keys are names (groups); values are ``value()`` fields."""

    value: Callable[[], Field] = Field
    key_pattern: str = NAME_PATTERN

    def schema(self) -> dict[str, Any]:
        return self._with_doc({"type": "object",
                               "patternProperties": {self.key_pattern: self.value().schema()},
                               "additionalProperties": False})


@dataclass(frozen=True)
class Ref(Field):
    """A named, possibly recursive, definition (``$defs``)."""

    name: str = ""
    target: Callable[[], Field] = Field

    def schema(self) -> dict[str, Any]:
        return {"$ref": f"#/$defs/{self.name}"}


# ---------------------------------------------------------------------------- the format
CPU = Obj(doc="CPU limits", fields={
    "weight": Int(lo=WEIGHT_MIN, hi=WEIGHT_MAX, doc="relative weight, v2 scale (default 100)"),
    "shares": Int(lo=SHARES_MIN, hi=SHARES_MAX, doc="relative shares, v1 scale (default 1024)"),
    "max": Cpus(doc="bandwidth cap in CPUs (1.5) or max"),
    "period": Duration(doc="CFS period, default 100ms"),
    "cpus": CpuList(doc="cpuset.cpus, e.g. 0-3"),
    "mems": CpuList(doc="cpuset.mems, e.g. 0"),
})
MEMORY = Obj(doc="memory limits", fields={
    "max": Quantity(doc="hard limit; over it the OOM killer runs"),
    "high": Quantity(doc="throttle point (v2 only)"),
    "low": Quantity(doc="best-effort protection (v1: soft limit)"),
    "min": Quantity(doc="hard protection (v2 only)"),
    "swap": Quantity(doc="swap alone, as v2 memory.swap.max; needs max"),
})
IO_DEVICE = Obj(required=("device",), fields={
    "device": Str(pattern=DEVICE_PATTERN, hint="use MAJ:MIN or a /dev path"),
    "weight": Int(lo=WEIGHT_MIN, hi=WEIGHT_MAX),
    "rbps": Quantity(), "wbps": Quantity(),
    "riops": Int(lo=1, allow_max=True), "wiops": Int(lo=1, allow_max=True),
})
IO = Obj(doc="block IO", fields={
    "weight": Int(lo=WEIGHT_MIN, hi=WEIGHT_MAX, doc=f"v2 scale; BFQ gets 1..{BFQ_MAX}"),
    "devices": ListOf(item=IO_DEVICE),
})
PIDS = Obj(fields={"max": Int(lo=0, allow_max=True, doc="most tasks; fork fails beyond")})
CONTAINER = Obj(doc="limits applied to each container launched in the group",
                fields={"cpu": CPU, "memory": MEMORY, "io": IO, "pids": PIDS})
LAUNCH = Obj(doc="how containers of this group are launched", fields={
    "namespaces": ListOf(item=Enum(values=NAMESPACES)),
    "hostname": Str(pattern=r"^[A-Za-z0-9{}_.-]{1,64}$", hint="a hostname; {name} is the container"),
    "network": Obj(fields={
        "mode": Enum(values=("none", "loopback", "bridge")),
        "bridge": Str(pattern=BRIDGE_PATTERN, hint="an interface name of 1..15 characters, not . or .."),
        "subnet": Str(doc="IPv4 CIDR for the bridge, e.g. 10.88.0.0/24"),
    }),
    "rootfs": Obj(fields={"path": Str(pattern=r"^/.*$", hint="an absolute path"),
                          "layers": ListOf(item=Str(pattern=r"^/.*$", hint="an absolute path"))}),
    "image": Str(pattern=r"^[a-z0-9][a-z0-9._/-]{0,127}:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$",
                 hint="NAME:TAG of an image in `cgman images`", doc="default image for `cgman run` (issue 15)"),
    "user": Obj(doc="user namespace mapping (with namespaces: [user])",
                fields={"uid": Int(lo=1, hi=2**32 - 2), "gid": Int(lo=1, hi=2**32 - 2),
                        "count": Int(lo=1, hi=2**32 - 1)}),
    "privileged": Bool(doc="turn every protection off (needs allow_privileged: true)"),
    "allow_privileged": Bool(doc="let runs loosen the rules: --privileged, --cap-add beyond the list, "
                                 "--device, --security-opt"),
    "capabilities": Obj(doc="capabilities beyond or below the default set (CHOWN DAC_OVERRIDE FOWNER FSETID "
                            "KILL NET_BIND_SERVICE SETFCAP SETGID SETPCAP SETUID SYS_CHROOT)",
                        fields={"add": ListOf(item=Str(pattern=CAP_PATTERN, hint=CAP_HINT)),
                                "drop": ListOf(item=Str(pattern=CAP_PATTERN, hint=CAP_HINT))}),
    "no_new_privileges": Bool(doc="no_new_privs: setuid binaries cannot gain privileges (default true)"),
    "seccomp": Str(pattern=r"^(default|unconfined|/.+)$",
                   hint="default, unconfined, or an absolute path to a JSON profile (Docker's format)"),
    "devices": ListOf(item=Obj(required=("path",), fields={
        "path": Str(pattern=r"^/dev/.+$", hint="a device node under /dev"),
        "access": Str(pattern=r"^(?!.*(.).*\1)[rwm]{1,3}$", hint="a combination of r, w and m")})),
    "volumes": ListOf(doc="host paths that containers without a root of their own may write (the rest of "
                          "the host is read-only to them)", item=Obj(required=("path",), fields={
        "path": Str(pattern=r"^/.+$", hint="an absolute path"),
        "readonly": Bool(doc="shared read-only (default: writable)")})),
})


def _group() -> Field:
    return GROUP


GROUP_REF = Ref(name="group", target=_group)
GROUP = Obj(doc="a cgroup; its name is the key", fields={
    "tenant": Str(pattern=NAME_PATTERN, hint="a name like acme"),
    "cpu": CPU, "memory": MEMORY, "io": IO, "pids": PIDS,
    "frozen": Bool(doc="freeze every process in the group"),
    "children": MapOf(value=lambda: GROUP_REF),
    "container": CONTAINER,
    "launch": LAUNCH,
})
FILE = Obj(required=("version", "policies"), fields={
    "version": Enum(values=(1,), doc="schema version"),
    "cpu_weight_formula": Enum(values=("oci", "systemd")),
    "policies": MapOf(value=lambda: GROUP_REF),
})


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a cgman policy file."""
    d = FILE.schema()
    d["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    d["title"] = "cgman policy file"
    d["$defs"] = {"group": GROUP.schema()}
    return d
