"""A network namespace made ahead of a launch (containers/netns_ahead.py): the container joins
that very namespace, which is new (lo alone, up); it serves one container only, never a forked
child's too; a launch that cannot use it leaves it for the next; a failed launch closes it."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from cgman.containers import netns_ahead
from cgman.containers.launch import ContainerSpec, launch
from cgman.errors import LaunchError
from cgman.model import NetworkSpec
from cgman.settings import Settings
from cgman.state.records import Store

from .conftest import in_fork

pytestmark = pytest.mark.kernel

POLICY = "version: 1\npolicies:\n  acme:\n    children:\n      web: {}\n"
SHOW = ["sh", "-c", "readlink /proc/self/ns/net; ip -o link"]


@pytest.fixture
def lib(host, tmp_path):
    from cgman.policy import load_files
    from cgman.reconcile.apply import apply
    p = tmp_path / "p.yaml"
    p.write_text(POLICY)
    apply(load_files([p]), host)
    netns_ahead.discard()
    try:
        yield SimpleNamespace(host=host, store=Store(Settings(run_dir=str(tmp_path / "run"),
                                                              state_dir=str(tmp_path / "state"),
                                                              bridge_dir=str(tmp_path / "bridges"),
                                                              cgroup_root=host.root)))
    finally:
        netns_ahead.discard()


def spec(name: str, argv: list[str], mode: str = "loopback", userns: bool = False,
         bridge: str | None = None) -> ContainerSpec:
    ns = {"uts", "ipc", "pid", "net", "mount", "cgroup"} | ({"user"} if userns else set())
    net = NetworkSpec(mode=mode, bridge=bridge, subnet="10.213.13.0/29") if bridge else NetworkSpec(mode=mode)
    return ContainerSpec(name=name, group="acme/web", tenant="acme", argv=tuple(argv), namespaces=frozenset(ns),
                         network=net, auto_remove=True)


def ready_inode() -> int | None:
    """The inode of the namespace made ahead in this process (None if none is)."""
    with netns_ahead._lock:
        return os.fstat(netns_ahead._ready[0][1]).st_ino if netns_ahead._ready else None


def held_namespaces() -> set[str]:
    """What this process's descriptors refer to (the listing's own descriptor is gone by then)."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.add(os.readlink(f"/proc/self/fd/{fd}"))
        except FileNotFoundError:
            pass
    return out


def run_shown(lib, capfd, name: str, **kw) -> tuple[str, list[str]]:
    """Run SHOW in a container: (its network namespace, its links)."""
    capfd.readouterr()
    c = launch(lib.host, lib.store, spec(name, SHOW, **kw))
    assert c.wait(60) == 0
    c.finish()
    ns, *links = capfd.readouterr().out.splitlines()
    return ns, links


def test_the_container_joins_the_namespace_made_for_it_which_is_new_with_lo_up(lib, capfd):
    assert netns_ahead.prepare()
    made = ready_inode()
    ns, links = run_shown(lib, capfd, "a")
    assert ns == f"net:[{made}]"
    assert ns != os.readlink("/proc/self/ns/net")
    assert len(links) == 1 and links[0].split()[1] == "lo:" and "UP" in links[0], links
    assert netns_ahead.take() is None                 # used once
    assert ns not in held_namespaces()                            # the launch closed its descriptor


def test_containers_never_share_one(lib):
    """Alive at once (a freed namespace's inode number may be reused by the next one)."""
    netns_ahead.keep_ready()
    cs = []
    try:
        for i in range(4):
            cs.append(launch(lib.host, lib.store, spec(f"c{i}", ["sleep", "30"])))
            netns_ahead.prepare()        # as the keeper would by now
        seen = {os.readlink(f"/proc/{c.pid}/ns/net") for c in cs}
        assert len(seen) == 4 and os.readlink("/proc/self/ns/net") not in seen
    finally:
        for c in cs:
            c.stop(0)
            c.finish()


def test_a_forked_child_neither_uses_nor_keeps_its_parents(lib):
    assert netns_ahead.prepare()
    made = ready_inode()

    def child() -> bytes:
        kept = f"net:[{made}]" in held_namespaces()
        return b"ok" if netns_ahead.take() is None and not kept else f"kept {kept}".encode()
    assert in_fork(child) == b"ok"
    fd = netns_ahead.take()                           # still the parent's
    assert fd is not None and os.fstat(fd).st_ino == made
    os.close(fd)


@pytest.mark.parametrize("how", ["network none", "user namespace", "bridge"])
def test_a_container_that_cannot_use_it_clones_its_own_and_leaves_it(lib, capfd, how, bridge):
    """A bridge container's veth must land in the namespace it runs in: it shows eth0 with its
    leased address (with the namespace made ahead, the veth went to the host's instead)."""
    assert netns_ahead.prepare()
    made = ready_inode()
    kw = {"mode": "none"} if how == "network none" else {"userns": True} if how == "user namespace" else \
        {"mode": "bridge", "bridge": bridge}
    ns, links = run_shown(lib, capfd, "own", **kw)
    assert ns != f"net:[{made}]" and ns != os.readlink("/proc/self/ns/net")
    assert ready_inode() == made
    if how == "bridge":
        assert sorted(line.split()[1].split("@")[0] for line in links) == ["eth0", "lo:"], links


def test_a_failed_launch_closes_it(lib):
    assert netns_ahead.prepare()
    made = ready_inode()
    with pytest.raises(LaunchError):
        launch(lib.host, lib.store, spec("bad", ["/nonexistent/cmd"]))
    assert netns_ahead.take() is None
    assert f"net:[{made}]" not in held_namespaces()


def test_only_a_network_namespace_is_joined_for_one(lib):
    """The child joins it with setns(CLONE_NEWNET): a descriptor of another kind of namespace
    (here the host's IPC namespace, harmless to join) is refused, the launch fails cleanly."""
    fd = os.open("/proc/self/ns/ipc", os.O_RDONLY | os.O_CLOEXEC)
    with netns_ahead._lock:
        netns_ahead._ready.append((os.getpid(), fd))
    with pytest.raises(LaunchError, match="joining a namespace"):
        launch(lib.host, lib.store, spec("wrong", ["true"]))
    assert not lib.store.exists("wrong")


def test_a_kernel_that_refuses_one_leaves_the_launch_to_clone_its_own(lib, capfd, monkeypatch):
    """new_netns failing (ENOMEM, no CLONE_NEWNET) is no error: none is ready, the launch clones."""
    from cgman.containers import process

    class Refusing:
        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

        @staticmethod
        def new_netns(lo_up: bool = True) -> int:
            raise OSError(12, "Cannot allocate memory")
    real = process.spawn_helper()
    monkeypatch.setattr(process, "spawn_helper", lambda: Refusing())
    assert netns_ahead.prepare() is False and ready_inode() is None
    monkeypatch.undo()
    ns, links = run_shown(lib, capfd, "own")
    assert ns != os.readlink("/proc/self/ns/net") and len(links) == 1 and "UP" in links[0]
