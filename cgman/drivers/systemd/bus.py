"""systemd's manager over D-Bus (org.freedesktop.systemd1), through jeepney.

jeepney is pure Python, has no dependencies, and does blocking I/O, which is all this needs
(a handful of calls per apply; no event loop, no C extension, no libdbus). The only module
that imports it. D-Bus errors become CgmanError subclasses here, at the edge, with the fix.
"""

from __future__ import annotations

import time
from typing import Any, Iterable

from ...errors import CgmanError
from .units import Prop

MANAGER = "org.freedesktop.systemd1.Manager"
UNIT = "org.freedesktop.systemd1.Unit"
UNIT_KEYS = ("LoadState", "ActiveState", "Transient", "Description", "FragmentPath", "FreezerState")


class BusUnavailable(CgmanError):
    """No D-Bus system bus, or no systemd on it."""


class BusError(CgmanError):
    """systemd answered a call with an error."""


class SystemdBus:
    """One connection to the system bus; ``with SystemdBus() as bus: ...``."""

    def __init__(self, timeout_s: float = 30.0) -> None:
        self.timeout_s = timeout_s
        self._conn: Any = None

    def __enter__(self) -> "SystemdBus":
        try:
            from jeepney.io.blocking import open_dbus_connection
        except ImportError as e:
            raise BusUnavailable(f"the systemd cgroup driver needs jeepney ({e}): pip install jeepney, or "
                                 "use the default driver (--cgroup-driver cgroupfs)") from None
        try:
            # jeepney's default of 1 s to authenticate is too short while dbus.service is being
            # socket-activated on a loaded host (seen in the systemd VM).
            self._conn = open_dbus_connection(bus="SYSTEM", auth_timeout=max(self.timeout_s, 10.0))
        except (OSError, ValueError) as e:
            raise BusUnavailable(f"cannot reach systemd over D-Bus (the system bus: {e}): the systemd driver "
                                 "needs systemd as PID 1 and its system bus (apt-get install dbus; systemctl start "
                                 "dbus.socket), or use the default driver (--cgroup-driver cgroupfs)") from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # ------------------------------------------------------------------------ calls
    def _call(self, path: str, interface: str, method: str, signature: str = "", body: tuple = ()) -> tuple:
        from jeepney import DBusAddress, new_method_call
        from jeepney.wrappers import DBusErrorResponse, unwrap_msg
        addr = DBusAddress(path, bus_name="org.freedesktop.systemd1", interface=interface)
        try:
            reply = self._conn.send_and_get_reply(new_method_call(addr, method, signature, body),
                                                  timeout=self.timeout_s)
            return tuple(unwrap_msg(reply))
        except DBusErrorResponse as e:
            raise BusError(f"systemd: {method}: {e.name}: {e.data[0] if e.data else ''}".rstrip(": ")) from None
        except (OSError, TimeoutError) as e:
            raise BusUnavailable(f"systemd did not answer {method} over D-Bus: {e}") from None

    def _manager(self, method: str, signature: str = "", body: tuple = ()) -> tuple:
        return self._call("/org/freedesktop/systemd1", MANAGER, method, signature, body)

    def unit(self, name: str) -> dict[str, Any] | None:
        """The loaded unit's state (UNIT_KEYS) and its type's properties (Slice, Scope), or None
        if systemd has not loaded it. GetAll only where needed: jeepney parses each value in Python."""
        path = self._path(name)
        if path is None:
            return None
        out = {k: self._get(path, UNIT, k) for k in UNIT_KEYS}
        iface = "org.freedesktop.systemd1." + name.rsplit(".", 1)[1].capitalize()
        (props,) = self._call(path, "org.freedesktop.DBus.Properties", "GetAll", "s", (iface,))
        out.update({k: v[1] for k, v in props.items()})
        return out

    def _path(self, name: str) -> str | None:
        try:
            (path,) = self._manager("GetUnit", "s", (name,))
        except BusError as e:
            if "NoSuchUnit" in str(e):
                return None
            raise
        return str(path)

    def _get(self, path: str, interface: str, key: str) -> Any:
        (value,) = self._call(path, "org.freedesktop.DBus.Properties", "Get", "ss", (interface, key))
        return value[1]

    def start_transient(self, name: str, props: Iterable[Prop], extra: Iterable[tuple[str, str, Any]] = ()) -> None:
        """StartTransientUnit, then wait until the unit is active (or failed)."""
        wire = [_wire(p) for p in props] + [(k, (sig, v)) for k, sig, v in extra]
        self._manager("StartTransientUnit", "ssa(sv)a(sa(sv))", (name, "fail", wire, []))
        self.wait_state(name, "active")

    def set_properties(self, name: str, props: Iterable[Prop]) -> None:
        """SetUnitProperties(runtime): what `systemctl set-property --runtime` does."""
        wire = [_wire(p) for p in props]
        if wire:
            self._manager("SetUnitProperties", "sba(sv)", (name, True, wire))

    def freeze(self, name: str, frozen: bool) -> None:
        """FreezeUnit / ThawUnit (`systemctl freeze|thaw`); waits for FreezerState to settle.
        The caller compares FreezerState first (reconcile.apply_units has read it)."""
        self._manager("FreezeUnit" if frozen else "ThawUnit", "s", (name,))
        self.wait_state(name, "frozen" if frozen else "running", key="FreezerState")

    def stop(self, name: str) -> None:
        """StopUnit (a slice: with every unit in it), then wait until it is gone or inactive.
        A unit systemd does not have is stopped already."""
        try:
            self._manager("StopUnit", "ss", (name, "fail"))
        except BusError as e:
            if "NoSuchUnit" not in str(e):
                raise
        self.wait_state(name, "inactive")

    def slices(self) -> list[tuple[str, str, str]]:
        """Every loaded slice as (name, description, active state)."""
        (units,) = self._manager("ListUnitsByPatterns", "asas", ([], ["*.slice"]))
        return [(str(u[0]), str(u[1]), str(u[3])) for u in units]

    def members(self, name: str) -> list[str]:
        """The units in slice ``name`` (its SliceOf): child slices, scopes, services."""
        path = self._path(name)
        return [str(u) for u in self._get(path, UNIT, "SliceOf")] if path else []

    def wait_state(self, name: str, want: str, key: str = "ActiveState") -> None:
        """Poll until ``key`` of ``name`` is ``want``: 1 ms apart at first (a scope is active within a
        few; a fixed 20 ms was most of a container's launch), then up to 20 ms."""
        deadline = time.monotonic() + self.timeout_s
        delay = 0.001
        while True:
            path = self._path(name)
            state = self._get(path, UNIT, key) if path else None
            if state is None and key == "ActiveState":
                state = "inactive"                # unloaded: a stopped transient unit is gone
            if state == want:
                return
            if key == "ActiveState" and state == "failed":
                raise BusError(f"systemd: {name} failed to start (journalctl -u {name})")
            if time.monotonic() > deadline:
                raise BusError(f"systemd: {name}: {key} is {state!r}, not {want!r}, after {self.timeout_s:g}s")
            time.sleep(delay)
            delay = min(delay * 2, 0.02)


def _wire(p: Prop) -> tuple[str, tuple[str, Any]]:
    """A property as jeepney marshals a variant: arrays of structs must be lists."""
    return p.name, (p.signature, list(p.value) if p.signature.startswith("a(") else p.value)
