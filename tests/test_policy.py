"""Policy files (SPEC §1): YAML -> model, and every bad-input class named by file:line:column
and key path. Pure: no root, no cgroup I/O (policy files are written under tmp_path)."""

from __future__ import annotations

import json
import os
import stat
import types
from pathlib import Path

import pytest
import yaml

from cgman import policy, schema
from cgman.errors import PolicyError
from cgman.model import (DEFAULT_NAMESPACES, UNLIMITED, CpuLimits, IODevice, IOLimits,
                         MemoryLimits, PidsLimits, Resources)
from cgman.policy import load_files, parse_text

Ki, Mi, Gi = 1 << 10, 1 << 20, 1 << 30

# SPEC §1, verbatim.
SPEC_EXAMPLE = """\
version: 1                      # required; schema version
cpu_weight_formula: oci         # oci (default) | systemd — how cpu shares <-> cpu weight convert
policies:
  acme:                         # group -> cgroup <root>/acme ; names: [A-Za-z0-9][A-Za-z0-9_.-]{0,63}
    tenant: acme                # billing owner; inherited by children; default: the top-level group name
    cpu: {weight: 300}          # aggregate limits of the whole group
    memory: {max: 8Gi}
    children:
      web:                      # -> <root>/acme/web
        cpu: {max: 2, cpus: "0-1"}
        memory: {max: 2Gi, high: 1800Mi, low: 256Mi, swap: 0}
        io:
          weight: 200
          devices:
            - {device: "254:0", rbps: 50Mi, wbps: 20Mi, riops: 2000, wiops: 1000}
        pids: {max: 512}
        frozen: false
        container:              # limits applied to EACH container launched under acme/web
          cpu: {max: 0.5}
          memory: {max: 512Mi}
          pids: {max: 128}
        launch:                 # how containers of this group are launched
          namespaces: [uts, ipc, pid, net, mount, cgroup]   # user is opt-in
          hostname: "{name}"
          network: {mode: bridge, bridge: cgman0, subnet: 10.88.0.0/24}   # none | loopback | bridge
          rootfs: {layers: [/srv/images/base, /srv/images/web]}           # optional overlayfs
"""
ROOTFS_LINE = "          rootfs: {layers: [/srv/images/base, /srv/images/web]}           # optional overlayfs\n"


def _by_path(groups):
    return {g.path: g for g in groups}


@pytest.fixture(params=["libyaml", "python"])
def composer(request, monkeypatch):
    """Run under libyaml's composer (when installed) and the pure-Python one: marks must agree."""
    if request.param == "libyaml":
        if not getattr(yaml, "CSafeLoader", None):
            pytest.skip("PyYAML built without libyaml")
        monkeypatch.setattr(policy, "_COMPOSER", yaml.CSafeLoader, raising=False)
    else:
        monkeypatch.setattr(policy, "_COMPOSER", yaml.SafeLoader, raising=False)
    return request.param


# ------------------------------------------------------------------ the SPEC example
def test_spec_example_loads():
    groups = parse_text(SPEC_EXAMPLE, "spec.yaml")
    web = _by_path(groups)["acme/web"]
    assert web.launch.rootfs.layers == ("/srv/images/base", "/srv/images/web")
    assert web.launch.rootfs.path is None


def test_spec_example_without_rootfs_parses_into_the_model():
    assert ROOTFS_LINE in SPEC_EXAMPLE
    groups = parse_text(SPEC_EXAMPLE.replace(ROOTFS_LINE, ""), "spec.yaml")
    assert [g.path for g in groups] == ["acme", "acme/web"]
    acme, web = groups
    assert acme.tenant == "acme" and web.tenant == "acme"
    assert acme.formula == web.formula == "oci"
    assert acme.location.file == "spec.yaml"
    assert (acme.location.line, acme.location.column) == (4, 3)
    assert (web.location.line, web.location.column) == (9, 7)
    assert acme.resources == Resources(cpu=CpuLimits(weight=300), memory=MemoryLimits(max_bytes=8 * Gi))
    assert acme.container is None and acme.launch is None
    r = web.resources
    assert r.cpu == CpuLimits(max_cpus=2.0, period_usec=100_000, cpus=frozenset({0, 1}))
    assert r.memory == MemoryLimits(max_bytes=2 * Gi, high_bytes=1800 * Mi, low_bytes=256 * Mi,
                                    swap_bytes=0)
    assert r.io == IOLimits(weight=200, devices=(IODevice("254:0", rbps=50 * Mi, wbps=20 * Mi,
                                                          riops=2000, wiops=1000),))
    assert r.pids == PidsLimits(max=512)
    assert r.frozen is False
    assert web.container == Resources(cpu=CpuLimits(max_cpus=0.5, period_usec=100_000),
                                      memory=MemoryLimits(max_bytes=512 * Mi), pids=PidsLimits(max=128))
    la = web.launch
    assert la.namespaces == ("uts", "ipc", "pid", "net", "mount", "cgroup")
    assert la.hostname == "{name}"
    assert (la.network.mode, la.network.bridge, la.network.subnet) == ("bridge", "cgman0", "10.88.0.0/24")
    assert la.rootfs is None


# ------------------------------------------------------------------ every key into the model
EVERY_KEY = """\
version: 1
cpu_weight_formula: systemd
policies:
  acme:
    tenant: bill-to
    cpu: {shares: 2048, max: 1.5, period: 50ms, cpus: "0-3,6", mems: 0}
    memory: {max: 8Gi, high: 7Gi, low: 1Gi, min: 512Mi, swap: 1G}
    io:
      weight: 300
      devices:
        - {device: "8:0", weight: 500, rbps: 50Mi, wbps: 20Mi, riops: 2000, wiops: max}
        - device: "259:1"
          rbps: max
    pids: {max: 512}
    frozen: true
    children:
      web:
        cpu: {weight: 200, max: max}
        container:
          cpu: {max: 0.5, weight: 50}
          memory: {max: 512Mi, swap: 0}
          io: {weight: 10, devices: [{device: "8:16", wiops: 5}]}
          pids: {max: 128}
        launch:
          namespaces: [uts, ipc, pid, net, mount, user, cgroup]
          hostname: "{name}.web"
          network: {mode: bridge, bridge: br-acme, subnet: 10.88.0.0/24}
          user: {uid: 100000, gid: 100000, count: 65536}
  other:
    memory: {max: max, swap: max}
    pids: {max: max}
    frozen: false
    launch:
      network: {mode: loopback}
"""


def test_every_key_is_parsed_into_the_model(composer):
    g = _by_path(parse_text(EVERY_KEY, "all.yaml"))
    assert list(g) == ["acme", "acme/web", "other"]
    acme, web, other = g["acme"], g["acme/web"], g["other"]
    assert {x.formula for x in g.values()} == {"systemd"}
    assert (acme.tenant, web.tenant, other.tenant) == ("bill-to", "bill-to", "other")
    assert acme.resources.cpu == CpuLimits(shares=2048, max_cpus=1.5, period_usec=50_000,
                                           cpus=frozenset({0, 1, 2, 3, 6}), mems=frozenset({0}))
    assert acme.resources.memory == MemoryLimits(max_bytes=8 * Gi, high_bytes=7 * Gi, low_bytes=Gi,
                                                 min_bytes=512 * Mi, swap_bytes=10**9)
    assert acme.resources.io == IOLimits(weight=300, devices=(
        IODevice("8:0", weight=500, rbps=50 * Mi, wbps=20 * Mi, riops=2000, wiops=UNLIMITED),
        IODevice("259:1", rbps=UNLIMITED)))
    assert acme.resources.pids == PidsLimits(max=512)
    assert acme.resources.frozen is True
    assert acme.container is None and acme.launch is None

    assert web.resources.cpu == CpuLimits(weight=200, max_cpus=UNLIMITED, period_usec=100_000)
    assert web.resources.memory == MemoryLimits()
    assert web.resources.frozen is None
    assert web.container == Resources(
        cpu=CpuLimits(weight=50, max_cpus=0.5, period_usec=100_000),
        memory=MemoryLimits(max_bytes=512 * Mi, swap_bytes=0),
        io=IOLimits(weight=10, devices=(IODevice("8:16", wiops=5),)),
        pids=PidsLimits(max=128))
    la = web.launch
    assert la.namespaces == ("uts", "ipc", "pid", "net", "mount", "user", "cgroup")
    assert la.hostname == "{name}.web"
    assert (la.network.mode, la.network.bridge, la.network.subnet) == ("bridge", "br-acme", "10.88.0.0/24")
    assert la.user_map_uid == 100000

    assert other.resources.memory == MemoryLimits(max_bytes=UNLIMITED, swap_bytes=UNLIMITED)
    assert other.resources.pids.max is UNLIMITED
    assert other.resources.frozen is False
    assert other.launch.namespaces == DEFAULT_NAMESPACES
    assert other.launch.network.mode == "loopback"
    assert other.launch.user_map_uid is None


@pytest.mark.parametrize("snippet, field, expected", [
    ("cpu: {weight: 1}", ("cpu", "weight"), 1),
    ("cpu: {weight: 10000}", ("cpu", "weight"), 10000),
    ("cpu: {shares: 2}", ("cpu", "shares"), 2),
    ("cpu: {shares: 262144}", ("cpu", "shares"), 262144),
    ("cpu: {max: 2}", ("cpu", "max_cpus"), 2.0),
    ("cpu: {max: '1.5'}", ("cpu", "max_cpus"), 1.5),
    ("cpu: {max: 0.01}", ("cpu", "max_cpus"), 0.01),
    ("cpu: {max: 1, period: 1ms}", ("cpu", "period_usec"), 1000),
    ("cpu: {max: 1, period: 1s}", ("cpu", "period_usec"), 1_000_000),
    ("cpu: {max: 1, period: 250000us}", ("cpu", "period_usec"), 250_000),
    ("cpu: {max: 1}", ("cpu", "period_usec"), 100_000),
    ("cpu: {weight: 5}", ("cpu", "period_usec"), None),
    ("cpu: {cpus: 3}", ("cpu", "cpus"), frozenset({3})),
    ("cpu: {mems: '0-1'}", ("cpu", "mems"), frozenset({0, 1})),
    ("memory: {max: 1073741824}", ("memory", "max_bytes"), Gi),
    ("memory: {max: 1.5Gi}", ("memory", "max_bytes"), Gi + Gi // 2),
    ("memory: {high: 2G}", ("memory", "high_bytes"), 2 * 10**9),
    ("memory: {low: 64Ki}", ("memory", "low_bytes"), 64 * Ki),
    ("memory: {min: 0}", ("memory", "min_bytes"), 0),
    ("memory: {max: 1Gi, swap: 0}", ("memory", "swap_bytes"), 0),
    ("io: {weight: 1}", ("io", "weight"), 1),
    ("io: {weight: 10000}", ("io", "weight"), 10000),
    ("pids: {max: 0}", ("pids", "max"), 0),
    ("pids: {max: 100000}", ("pids", "max"), 100000),
])
def test_single_keys(snippet, field, expected):
    (g,) = parse_text(f"version: 1\npolicies:\n  g:\n    {snippet}\n", "k.yaml")
    got = getattr(getattr(g.resources, field[0]), field[1])
    assert got == expected
    assert type(got) is type(expected)


@pytest.mark.parametrize("text", [
    "version: 1\npolicies: {}\n",
    "version: 1\npolicies:\n  g:\n",                 # a null group body is an empty group
    "version: 1\npolicies:\n  g: {}\n",
])
def test_minimal_documents(text):
    groups = parse_text(text)
    assert all(g.resources == Resources() for g in groups)


def test_null_group_is_an_empty_group():
    (g,) = parse_text("version: 1\npolicies:\n  g:\n")
    assert g.path == "g" and g.tenant == "g" and g.formula == "oci"
    assert g.resources == Resources() and g.container is None and g.launch is None


def test_formula_defaults_to_oci():
    (g,) = parse_text("version: 1\npolicies:\n  g: {}\n")
    assert g.formula == "oci"


# ------------------------------------------------------------------ tenants and children
TREE = """\
version: 1
policies:
  acme:
    children:
      web:
        children:
          api: {}
      batch:
        tenant: acme-batch
        children:
          nightly: {}
  globex:
    tenant: gx
    children:
      shop: {}
  solo: {}
"""


@pytest.mark.parametrize("path, tenant, parent, depth, line, column", [
    ("acme", "acme", None, 0, 3, 3),
    ("acme/web", "acme", "acme", 1, 5, 7),
    ("acme/web/api", "acme", "acme/web", 2, 7, 11),
    ("acme/batch", "acme-batch", "acme", 1, 8, 7),
    ("acme/batch/nightly", "acme-batch", "acme/batch", 2, 11, 11),
    ("globex", "gx", None, 0, 12, 3),
    ("globex/shop", "gx", "globex", 1, 15, 7),
    ("solo", "solo", None, 0, 16, 3),
])
def test_children_paths_and_tenant_inheritance(path, tenant, parent, depth, line, column, composer):
    g = _by_path(parse_text(TREE, "tree.yaml"))[path]
    assert g.tenant == tenant
    assert g.parent == parent
    assert g.depth == depth
    assert (g.location.file, g.location.line, g.location.column) == ("tree.yaml", line, column)
    assert str(g.location) == f"tree.yaml:{line}:{column}"


def test_parents_come_before_children_depth_first():
    assert [g.path for g in parse_text(TREE)] == [
        "acme", "acme/web", "acme/web/api", "acme/batch", "acme/batch/nightly",
        "globex", "globex/shop", "solo"]


def test_formula_applies_to_children():
    text = "version: 1\ncpu_weight_formula: systemd\npolicies:\n  a:\n    children:\n      b: {}\n"
    assert [g.formula for g in parse_text(text)] == ["systemd", "systemd"]


# ------------------------------------------------------------------ bad input, one per class
def _err(text: str, file: str = "bad.yaml") -> PolicyError:
    with pytest.raises(PolicyError) as e:
        parse_text(text, file)
    return e.value


P = "version: 1\npolicies:\n"          # lines 1-2 of most cases below

BAD = {
    # id: (text, line, column, key path or "", message fragment)
    "yaml_syntax_unclosed_flow": (P + "  acme:\n    cpu: {weight: 300\n", 5, 1, "", "YAML syntax error"),
    "yaml_syntax_tab": (P + "\tacme: {}\n", 3, 1, "", "YAML syntax error"),
    "yaml_syntax_bad_indent": (P + "  acme:\n    cpu: {}\n   memory: {}\n", 5, 4, "", "YAML syntax error"),
    "unknown_key_cpu": (P + "  acme:\n    cpu: {wieght: 300}\n", 4, 11, "policies.acme.cpu.wieght",
                        "unknown key; expected one of: weight, shares, max, period, cpus, mems"),
    "unknown_key_top": ("version: 1\npolicy:\n  acme: {}\n", 2, 1, "policy", "unknown key"),
    "unknown_key_group": (P + "  acme:\n    cpus: 2\n", 4, 5, "policies.acme.cpus", "unknown key"),
    "unknown_key_device": (P + "  acme:\n    io:\n      devices:\n        - {device: '8:0', rpbs: 1}\n",
                           6, 27, "policies.acme.io.devices[0].rpbs", "unknown key"),
    "unknown_key_child": (P + "  acme:\n    children:\n      web:\n        memory: {limit: 1Gi}\n",
                          6, 18, "policies.acme.children.web.memory.limit", "unknown key"),
    "unknown_key_container": (P + "  acme:\n    container:\n      frozen: true\n", 5, 7,
                              "policies.acme.container.frozen", "unknown key"),
    "bad_unit": (P + "  acme:\n    memory: {max: 2GB}\n", 4, 19, "policies.acme.memory.max", "bad unit 'GB'"),
    "bad_unit_block": (P + "  acme:\n    memory:\n      high: 10mb\n", 5, 13,
                       "policies.acme.memory.high", "bad unit 'mb'"),
    "bad_unit_device": (P + "  acme:\n    io:\n      devices:\n        - device: '8:0'\n          rbps: 1MB\n",
                        7, 17, "policies.acme.io.devices[0].rbps", "bad unit 'MB'"),
    "bad_duration": (P + "  acme:\n    cpu: {max: 1, period: 100 msec}\n", 4, 27,
                     "policies.acme.cpu.period", "bad duration"),
    "bad_cpu_list": (P + "  acme:\n    cpu: {cpus: '3-1'}\n", 4, 17, "policies.acme.cpu.cpus", "bad range"),
    "not_a_number": (P + "  acme:\n    cpu: {weight: '300'}\n", 4, 19, "policies.acme.cpu.weight",
                     "expected an integer"),
    "out_of_range_weight": (P + "  acme:\n    cpu: {weight: 20000}\n", 4, 19, "policies.acme.cpu.weight",
                            "20000 is out of range 1..10000"),
    "out_of_range_weight_zero": (P + "  acme:\n    cpu: {weight: 0}\n", 4, 19, "policies.acme.cpu.weight",
                                 "out of range 1..10000"),
    "out_of_range_shares": (P + "  acme:\n    cpu: {shares: 1}\n", 4, 19, "policies.acme.cpu.shares",
                            "1 is out of range 2..262144"),
    "out_of_range_shares_hi": (P + "  acme:\n    cpu: {shares: 262145}\n", 4, 19, "policies.acme.cpu.shares",
                               "out of range 2..262144"),
    "out_of_range_io_weight": (P + "  acme:\n    io: {weight: 0}\n", 4, 18, "policies.acme.io.weight",
                               "out of range 1..10000"),
    "out_of_range_device_weight": (P + "  acme:\n    io:\n      devices:\n        - {device: '8:0', weight: 10001}\n",
                                   6, 35, "policies.acme.io.devices[0].weight", "out of range"),
    "out_of_range_riops": (P + "  acme:\n    io:\n      devices:\n        - {device: '8:0', riops: 0}\n",
                           6, 34, "policies.acme.io.devices[0].riops", "out of range"),
    "out_of_range_pids": (P + "  acme:\n    pids: {max: -1}\n", 4, 17, "policies.acme.pids.max", "out of range"),
    "out_of_range_period": (P + "  acme:\n    cpu: {max: 1, period: 2s}\n", 4, 27, "policies.acme.cpu.period",
                            "out of range"),
    "out_of_range_cpu_max": (P + "  acme:\n    cpu: {max: 0}\n", 4, 16, "policies.acme.cpu.max", "positive"),
    "quota_below_kernel_min": (P + "  acme:\n    cpu: {max: 0.005}\n", 4, 11, "policies.acme.cpu.max",
                               "below the kernel minimum"),
    "negative_quantity": (P + "  acme:\n    memory: {max: -1}\n", 4, 19, "policies.acme.memory.max",
                          "negative"),
    "bool_not_frozen": (P + "  acme:\n    frozen: yes please\n", 4, 13, "policies.acme.frozen",
                        "expected true or false"),
    "weight_and_shares": (P + "  acme:\n    cpu: {weight: 100, shares: 1024}\n", 4, 24, "policies.acme.cpu.shares",
                          "set cpu.weight or cpu.shares, not both"),
    "weight_and_shares_container": (P + "  acme:\n    container:\n      cpu:\n        shares: 512\n        weight: 5\n",
                                    6, 9, "policies.acme.container.cpu.shares", "not both"),
    "swap_without_max": (P + "  acme:\n    memory: {swap: 1Gi}\n", 4, 14, "policies.acme.memory.swap",
                         "memory.swap needs memory.max"),
    "finite_swap_unlimited_max": (P + "  acme:\n    memory: {max: max, swap: 1Gi}\n", 4, 24,
                                  "policies.acme.memory.swap", "a finite memory.swap needs a finite memory.max"),
    "period_without_max": (P + "  acme:\n    cpu:\n      weight: 10\n      period: 50ms\n", 6, 7,
                           "policies.acme.cpu.period", "cpu.period needs cpu.max"),
    "slash_in_name": (P + "  acme/web: {}\n", 3, 3, "policies.acme/web", "cannot contain '/'"),
    "slash_in_child_name": (P + "  acme:\n    children:\n      a/b: {}\n", 5, 7,
                            "policies.acme.children.a/b", "cannot contain '/'"),
    "dotdot_name": (P + "  acme:\n    children:\n      '..': {}\n", 5, 7, "policies.acme.children...",
                    "cannot contain '/' or be '.'/'..'"),
    "dot_name": (P + "  '.': {}\n", 3, 3, "policies..", "cannot contain '/' or be '.'/'..'"),
    "leading_dash_name": (P + "  -x: {}\n", 3, 3, "policies.-x", "bad name"),
    "name_too_long": (P + "  " + "a" * 65 + ": {}\n", 3, 3, "policies." + "a" * 65, "bad name"),
    "bad_tenant": (P + "  acme: {tenant: 'a b'}\n", 3, 18, "policies.acme.tenant", "is not valid"),
    "duplicate_group": (P + "  acme: {}\n  acme: {}\n", 4, 3, "policies.acme",
                        "duplicate key (first defined at line 3)"),
    "duplicate_key_in_group": (P + "  acme:\n    memory: {max: 1Gi}\n    memory: {max: 2Gi}\n", 5, 5,
                               "policies.acme.memory", "duplicate key (first defined at line 4)"),
    "duplicate_key_in_flow": (P + "  acme:\n    cpu: {weight: 1, weight: 2}\n", 4, 22,
                              "policies.acme.cpu.weight", "duplicate key (first defined at line 4)"),
    "duplicate_version": ("version: 1\nversion: 1\npolicies: {}\n", 2, 1, "version",
                          "duplicate key (first defined at line 1)"),
    "missing_version": ("policies:\n  acme: {}\n", 1, 1, "version", "required key is missing"),
    "missing_policies": ("version: 1\n", 1, 1, "policies", "required key is missing"),
    "wrong_version": ("version: 2\npolicies: {}\n", 1, 10, "version", "not one of 1"),
    "bool_version": ("version: true\npolicies: {}\n", 1, 10, "version", "not one of 1"),
    "bad_formula": ("version: 1\ncpu_weight_formula: linear\npolicies: {}\n", 2, 21, "cpu_weight_formula",
                    "not one of oci, systemd"),
    "not_a_mapping": ("- version: 1\n", 1, 1, "", "expected a mapping"),
    "bad_subnet_host_bits": (P + "  acme:\n    launch:\n      network: {mode: bridge, subnet: 10.88.0.1/24}\n",
                             5, 31, "policies.acme.launch.network.subnet", "bad IPv4 subnet"),
    "bad_subnet_prefix": (P + "  acme:\n    launch:\n      network:\n        subnet: 10.88.0.0/33\n",
                          6, 9, "policies.acme.launch.network.subnet", "bad IPv4 subnet"),
    "bad_subnet_ipv6": (P + "  acme:\n    launch:\n      network:\n        subnet: 'fd00::/64'\n",
                        6, 9, "policies.acme.launch.network.subnet", "bad IPv4 subnet"),
    "bad_subnet_text": (P + "  acme:\n    launch:\n      network:\n        subnet: bridge0\n",
                        6, 9, "policies.acme.launch.network.subnet", "bad IPv4 subnet"),
    "subnet_too_small": (P + "  acme:\n    launch:\n      network:\n        subnet: 10.88.0.0/31\n",
                         6, 9, "policies.acme.launch.network.subnet", "subnet too small"),
    "bad_namespace": (P + "  acme:\n    launch:\n      namespaces: [pid, time]\n", 5, 25,
                      "policies.acme.launch.namespaces[1]", "not one of"),
    "device_listed_twice": (P + "  acme:\n    io:\n      devices:\n        - {device: '8:0', rbps: 1Mi}\n"
                            "        - {device: '8:0', wbps: 1Mi}\n", 7, 11,
                            "policies.acme.io.devices[1].device", "device 8:0 is listed twice"),
    "device_bad_syntax": (P + "  acme:\n    io:\n      devices:\n        - {device: sda, rbps: 1}\n", 6, 20,
                          "policies.acme.io.devices[0].device", "use MAJ:MIN or a /dev path"),
    "device_without_limits": (P + "  acme:\n    io:\n      devices:\n        - device: '8:0'\n", 6, 11,
                              "policies.acme.io.devices[0]", "give at least one of"),
    "device_missing": (P + "  acme:\n    io:\n      devices:\n        - {rbps: 1}\n", 6, 11,
                       "policies.acme.io.devices[0].device", "required key is missing"),
    "dev_path_not_block": (P + "  acme:\n    io:\n      devices:\n        - device: /dev/null\n          rbps: 1Mi\n",
                           6, 11, "policies.acme.io.devices[0].device", "/dev/null is not a block device"),
    "dev_path_missing": (P + "  acme:\n    io:\n      devices:\n        - device: /dev/cgman-no-such-disk\n"
                         "          rbps: 1Mi\n", 6, 11, "policies.acme.io.devices[0].device", "cannot stat"),
    "user_without_userns": (P + "  acme:\n    launch:\n      user: {uid: 1000}\n", 5, 7,
                            "policies.acme.launch.user", "needs 'user' in namespaces"),
    "rootfs_neither": (P + "  acme:\n    launch:\n      rootfs: {}\n", 5, 15, "policies.acme.launch.rootfs",
                       "give exactly one of path or layers"),
    "list_where_mapping": (P + "  acme:\n    cpu: [1, 2]\n", 4, 10, "policies.acme.cpu", "expected a mapping"),
    "mapping_where_scalar": (P + "  acme:\n    pids: {max: {a: 1}}\n", 4, 17, "policies.acme.pids.max",
                             "expected a single value"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_names_file_line_column_and_key(case, composer):
    text, line, column, key, fragment = BAD[case]
    err = _err(text, "bad.yaml")
    msg = str(err)
    assert (err.file, err.line, err.column, err.key) == ("bad.yaml", line, column, key), msg
    where = f"bad.yaml:{line}:{column}: "
    assert msg.startswith(where), msg
    if key:
        assert msg.startswith(f"{where}{key}: "), msg
    assert fragment in msg
    assert "\n" not in msg                      # one line for the CLI


@pytest.mark.parametrize("text", ["", "\n\n", "# nothing but a comment\n", "  \n# x\n"])
def test_empty_file(text):
    err = _err(text, "empty.yaml")
    assert (err.file, err.line, err.column) == ("empty.yaml", 1, 1)
    assert str(err).startswith("empty.yaml:1:1: empty policy file")


@pytest.mark.parametrize("text", [P + "  acme:\n    cpu: {max: .inf}\n",
                                  P + "  acme:\n    cpu: {max: 'inf'}\n",
                                  P + "  acme:\n    cpu: {max: 1e400}\n"])
def test_infinite_cpu_max_is_a_policy_error(text):
    err = _err(text)
    assert "bad.yaml:4:" in str(err) and "policies.acme.cpu.max" in str(err)


def test_absurd_cpu_max_is_out_of_range():
    _err(P + "  acme:\n    cpu: {max: 1e300}\n")


@pytest.mark.parametrize("text", [P + '  "acme\\n": {}\n', P + '  acme:\n    cpu: {"wei\\nght": 1}\n'])
def test_error_with_newline_in_a_name_is_one_line(text):
    assert "\n" not in str(_err(text))


# ------------------------------------------------------------------ /dev paths
class _FakeOs(types.SimpleNamespace):
    """os with a fake block device /dev/cgman-fake-disk (8:16) for policy._resolve_device."""

    def __getattr__(self, name):
        return getattr(os, name)

    def stat(self, path, *a, **k):
        if path == "/dev/cgman-fake-disk":
            return types.SimpleNamespace(st_mode=stat.S_IFBLK | 0o660, st_rdev=os.makedev(8, 16))
        return os.stat(path, *a, **k)


@pytest.fixture
def fake_disk(monkeypatch):
    monkeypatch.setattr(policy, "os", _FakeOs())


def test_dev_path_resolves_to_maj_min(fake_disk):
    (g,) = parse_text(P + "  acme:\n    io:\n      devices:\n        - {device: /dev/cgman-fake-disk, wbps: 1Mi}\n")
    assert g.resources.io.devices == (IODevice("8:16", wbps=Mi),)


def test_dev_path_and_maj_min_of_same_device_are_listed_twice(fake_disk):
    text = (P + "  acme:\n    io:\n      devices:\n        - {device: '8:16', rbps: 1Mi}\n"
            "        - {device: /dev/cgman-fake-disk, wbps: 1Mi}\n")
    err = _err(text)
    assert str(err).startswith("bad.yaml:7:11: policies.acme.io.devices[1].device: "
                               "device 8:16 is listed twice")


def test_same_device_in_group_and_container_is_fine():
    text = (P + "  acme:\n    io: {devices: [{device: '8:0', rbps: 1}]}\n"
            "    container:\n      io: {devices: [{device: '8:0', rbps: 2}]}\n")
    (g,) = parse_text(text)
    assert g.resources.io.devices[0].rbps == 1 and g.container.io.devices[0].rbps == 2


# ------------------------------------------------------------------ rootfs
def test_rootfs_path():
    (g,) = parse_text(P + "  acme:\n    launch:\n      rootfs: {path: /srv/root}\n")
    assert g.launch.rootfs.path == "/srv/root"


@pytest.mark.parametrize("value", ["srv/root", "./root", ""])
def test_rootfs_path_must_be_absolute(value):
    err = _err(P + f"  acme:\n    launch:\n      rootfs: {{path: '{value}'}}\n")
    assert "policies.acme.launch.rootfs.path" in str(err) and "absolute path" in str(err)


# ------------------------------------------------------------------ load_files
def _write(dir: Path, name: str, text: str) -> Path:
    p = dir / name
    p.write_text(text, encoding="utf-8")
    return p


def test_load_files_merges_files_in_order(tmp_path):
    a = _write(tmp_path, "a.yaml", P + "  acme:\n    children:\n      web: {}\n")
    b = _write(tmp_path, "b.yaml", "version: 1\ncpu_weight_formula: systemd\npolicies:\n  globex: {}\n")
    ps = load_files([a, b])
    assert [g.path for g in ps.groups] == ["acme", "acme/web", "globex"]
    assert ps.files == (str(a), str(b))
    assert [g.formula for g in ps.groups] == ["oci", "oci", "systemd"]   # per file
    assert ps.get("acme/web").location.file == str(a)
    assert ps.get("globex").location.file == str(b)
    assert ps.get("nope") is None


def test_load_files_expands_directories_sorted_yaml_only(tmp_path):
    _write(tmp_path, "20-b.yml", P + "  b: {}\n")
    _write(tmp_path, "10-a.yaml", P + "  a: {}\n")
    _write(tmp_path, "30-c.txt", "not yaml at all: [")
    _write(tmp_path, "README", "ignored")
    (tmp_path / "40-d.yaml").mkdir()
    ps = load_files([tmp_path])
    assert [g.path for g in ps.groups] == ["a", "b"]
    assert ps.files == (str(tmp_path / "10-a.yaml"), str(tmp_path / "20-b.yml"))


def test_load_files_duplicate_top_level_group_across_files(tmp_path):
    a = _write(tmp_path, "a.yaml", P + "  other: {}\n  acme: {}\n")
    b = _write(tmp_path, "b.yaml", P + "  x: {}\n  y: {}\n  acme:\n    pids: {max: 1}\n")
    with pytest.raises(PolicyError) as e:
        load_files([a, b])
    err = e.value
    assert (err.file, err.line, err.column, err.key) == (str(b), 5, 3, "policies.acme")
    assert str(err) == f"{b}:5:3: policies.acme: group 'acme' is already defined at {a}:4:3"


def test_load_files_one_bad_file_fails_all(tmp_path):
    good = _write(tmp_path, "a.yaml", P + "  acme: {}\n")
    bad = _write(tmp_path, "b.yaml", P + "  globex:\n    cpu: {weight: 0}\n")
    with pytest.raises(PolicyError) as e:
        load_files([good, bad])
    assert str(e.value).startswith(f"{bad}:4:19: policies.globex.cpu.weight: ")


def test_load_files_errors_name_the_file_of_the_error(tmp_path):
    bad = _write(tmp_path, "bad.yaml", "")
    with pytest.raises(PolicyError, match=r"bad\.yaml:1:1: empty policy file"):
        load_files([bad])


@pytest.mark.parametrize("setup, fragment", [
    (lambda d: [], "no policy files given"),
    (lambda d: [d / "missing.yaml"], "cannot read"),
    (lambda d: [d], "no policy files given"),                    # an empty directory
    (lambda d: [_bytes(d / "latin1.yaml", b"version: 1\npolicies:\n  caf\xe9: {}\n")], "not UTF-8"),
])
def test_load_files_unreadable(tmp_path, setup, fragment):
    with pytest.raises(PolicyError, match=fragment):
        load_files(setup(tmp_path))


def _bytes(p: Path, data: bytes) -> Path:
    p.write_bytes(data)
    return p


def test_parsing_does_not_accumulate_state(monkeypatch):
    """Each parse uses its own loader, whose node cache dies with it (no module-level cache)."""
    text = P + "  acme:\n    cpu: {weight: 3}\n    pids: {max: 5}\n"
    loaders = []
    real = yaml.SafeLoader.construct_object

    def spy(self, node, deep=False):
        loaders.append(self)
        return real(self, node, deep)
    monkeypatch.setattr(yaml.SafeLoader, "construct_object", spy)
    parse_text(text)
    parse_text(text)
    assert len({id(x) for x in loaders}) == 2
    assert not [v for v in vars(policy).values() if isinstance(v, yaml.SafeLoader)]


# ------------------------------------------------------------------ JSON Schema
def _objects(node, path="#"):
    """Every JSON Schema object node with its path."""
    if isinstance(node, dict):
        yield path, node
        for k, v in node.items():
            yield from _objects(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _objects(v, f"{path}/{i}")


def test_json_schema_is_json_and_has_group_def():
    s = schema.json_schema()
    assert json.loads(json.dumps(s)) == s
    assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert "group" in s["$defs"]
    assert s["required"] == ["version", "policies"]
    assert set(s["properties"]) == {"version", "cpu_weight_formula", "policies"}
    assert s["properties"]["version"]["enum"] == [1]
    assert s["properties"]["cpu_weight_formula"]["enum"] == ["oci", "systemd"]
    pol = s["properties"]["policies"]
    assert pol["additionalProperties"] is False
    assert list(pol["patternProperties"].values()) == [{"$ref": "#/$defs/group"}]


def test_json_schema_refs_resolve():
    s = schema.json_schema()
    refs = [n["$ref"] for _, n in _objects(s) if "$ref" in n]
    assert refs and set(refs) == {"#/$defs/group"}
    children = s["$defs"]["group"]["properties"]["children"]
    assert list(children["patternProperties"].values()) == [{"$ref": "#/$defs/group"}]


def test_json_schema_objects_reject_unknown_keys():
    s = schema.json_schema()
    objs = [(p, n) for p, n in _objects(s) if n.get("type") == "object"]
    assert len(objs) >= 15
    for path, node in objs:
        assert node.get("additionalProperties") is False, path
        assert "properties" in node or "patternProperties" in node, path


@pytest.mark.parametrize("where, keys", [
    (("$defs", "group"), {"tenant", "cpu", "memory", "io", "pids", "frozen", "children", "container",
                          "launch"}),
    (("$defs", "group", "properties", "cpu"), {"weight", "shares", "max", "period", "cpus", "mems"}),
    (("$defs", "group", "properties", "memory"), {"max", "high", "low", "min", "swap"}),
    (("$defs", "group", "properties", "io"), {"weight", "devices"}),
    (("$defs", "group", "properties", "io", "properties", "devices", "items"),
     {"device", "weight", "rbps", "wbps", "riops", "wiops"}),
    (("$defs", "group", "properties", "pids"), {"max"}),
    (("$defs", "group", "properties", "container"), {"cpu", "memory", "io", "pids"}),
    (("$defs", "group", "properties", "launch"), {"namespaces", "hostname", "network", "rootfs", "user",
                                                  "privileged", "allow_privileged", "capabilities",
                                                  "no_new_privileges", "seccomp", "devices", "volumes",
                                                  "image"}),
    (("$defs", "group", "properties", "launch", "properties", "network"), {"mode", "bridge", "subnet"}),
])
def test_json_schema_properties_match_spec_keys(where, keys):
    node = schema.json_schema()
    for k in where:
        node = node[k]
    assert set(node["properties"]) == keys
    assert node["additionalProperties"] is False


def test_json_schema_ranges():
    g = schema.json_schema()["$defs"]["group"]["properties"]
    assert (g["cpu"]["properties"]["weight"]["minimum"], g["cpu"]["properties"]["weight"]["maximum"]) == (1, 10000)
    assert (g["cpu"]["properties"]["shares"]["minimum"], g["cpu"]["properties"]["shares"]["maximum"]) == (2, 262144)
    assert g["io"]["properties"]["devices"]["items"]["required"] == ["device"]
    assert g["frozen"] == {"type": "boolean", "description": "freeze every process in the group"}
