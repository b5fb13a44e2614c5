"""Images on the real kernel: a busybox recipe built by `cgman build` (RUN steps as containers of
a group, billed to its tenant), run with --image, rebuilt from the cache, traded with Debian's
skopeo and umoci, and refused cleanly on bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import write_policy

POLICY = """\
version: 1
policies:
  acme:
    children:
      build:
        container: {cpu: {max: 1}, memory: {max: 256Mi}, pids: {max: 64}}
      app:
        launch: {image: "demo:1"}
"""
TOOLS = ("sh", "ls", "cat", "echo", "rm", "mkdir", "chown", "id", "pwd", "find", "sleep", "touch", "sort")
RECIPE = """\
# a small image: files added, changed and deleted across steps; a dir emptied and refilled
ARG BASE=scratch
FROM $BASE
COPY base/ /
ENV GREETING=hi \\
    WHO=world
RUN mkdir -p /data/keep /data/empty && echo old > /data/empty/old && echo 1 > /data/keep/f && echo x > /gone
RUN rm /gone && rm -rf /data/empty && mkdir /data/empty && echo new > /data/empty/new && echo 2 > /data/keep/f
WORKDIR /work
COPY --chown=1000:1000 app/ ./app/
RUN chown 123:45 app/b.txt && cat /proc/self/cgroup > /work/cgroup
CMD echo "$GREETING $WHO from $(pwd)"
"""


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"these tests need {tool}: apt-get install {tool} (scripts/setup.sh)")
    return path


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    bb = _need("busybox")
    c = tmp_path / "ctx"
    (c / "base" / "bin").mkdir(parents=True)
    shutil.copy(bb, c / "base" / "bin" / "busybox")
    for t in TOOLS:
        (c / "base" / "bin" / t).symlink_to("busybox")
    (c / "app").mkdir()
    (c / "app" / "a.txt").write_text("a\n")
    (c / "app" / "b.txt").write_text("b\n")
    (c / "Dockerfile").write_text(RECIPE)
    return c


@pytest.fixture
def group(host, cli, tmp_path: Path) -> str:
    cli("apply", str(write_policy(tmp_path, "p.yaml", POLICY)), check=True)
    return "acme/build"


def _tree(cli, ref: str) -> list[str]:
    out = cli("run", "--image", ref, "-p", "acme/build", "--", "sh", "-c",
              "cd / && find bin data work -print | sort", check=True).stdout
    return [line for line in out.splitlines() if line]


def test_build_run_cache_and_rebuild(cli, group, ctx: Path, tmp_path: Path):
    first = cli("build", "-t", "demo:1", "-p", group, str(ctx), check=True).stdout
    assert "cached" not in first and "tagged demo:1" in first
    run = cli("run", "--image", "demo:1", "-p", group, check=True)
    assert run.stdout == "hi world from /work\n"                      # ENV and WORKDIR seen by CMD
    out = cli("run", "--image", "demo:1", "-p", group, "--", "sh", "-c",
              "ls /data/empty; cat /data/keep/f; ls /gone 2>&1; ls -ln app | sort", check=True).stdout
    assert out.startswith("new\n2\n") and "No such file" in out         # opaque dir, change, deletion
    assert " 1000 " in out and " 123 " in out                           # COPY --chown, chown in a RUN
    cg = cli("run", "--image", "demo:1", "-p", group, "--", "cat", "/work/cgroup", check=True).stdout
    assert "/" in cg                                                   # the RUN step ran in its own cgroup ns
    again = cli("build", "-t", "demo:1", "-p", group, str(ctx), check=True).stdout
    assert again.count("cached") == 5 and "layer sha256" not in again   # fully cached
    (ctx / "app" / "a.txt").write_text("changed\n")
    third = cli("build", "-t", "demo:1", "-p", group, str(ctx), check=True).stdout
    steps = [line for line in third.splitlines() if line.startswith("  ")]
    assert [s.split()[0] for s in steps] == ["cached", "cached", "cached", "layer", "layer"]
    changed = cli("run", "--image", "demo:1", "-p", group, "--", "cat", "/work/app/a.txt", check=True)
    assert changed.stdout == "changed\n"
    # every RUN step is in the ledger, billed to the group's tenant, with its CPU
    rows = json.loads(cli("usage", "--by", "container", "--format", "json", check=True).stdout)["rows"]
    builds = [r for r in rows if r["name"].startswith("build-")]
    assert len(builds) >= 4 and all(r["tenant"] == "acme" and r["group"] == "acme/build" for r in builds)
    assert all(r["cpu_seconds"] > 0 for r in builds)
    # a group's launch.image is its containers' default root (and a USER applies to the workload)
    assert cli("run", "-p", "acme/app", check=True).stdout == "hi world from /work\n"
    (ctx / "Dockerfile").write_text("FROM demo:1\nUSER 1000:1000\nCMD id -u; id -g; touch /x\n")
    cli("build", "-t", "demo:user", str(ctx), check=True)                # no RUN: no group needed
    r = cli("run", "--image", "demo:user", "-p", group)
    assert r.stdout.startswith("1000\n1000\n") and "Permission denied" in r.stderr and r.returncode == 1
    images = json.loads(cli("images", "--json", check=True).stdout)
    assert [i["ref"] for i in images] == ["demo:1", "demo:user"] and images[0]["layers"] == 5


def test_export_to_skopeo_and_umoci_and_back(cli, group, ctx: Path, tmp_path: Path):
    skopeo, umoci = _need("skopeo"), _need("umoci")
    cli("build", "-t", "demo:1", "-p", group, str(ctx), check=True)
    exp = tmp_path / "exp"
    cli("image", "export", "demo:1", str(exp), check=True)
    info = json.loads(subprocess.run([skopeo, "inspect", f"oci:{exp}:1"], capture_output=True, text=True,
                                     check=True).stdout)
    assert len(info["Layers"]) == 5 and "GREETING=hi" in info["Env"]
    bundle = tmp_path / "bundle"
    subprocess.run([umoci, "unpack", "--image", f"{exp}:1", str(bundle)], check=True, capture_output=True)
    rootfs = bundle / "rootfs"
    seen = sorted(str(p.relative_to(rootfs)) for top in ("bin", "data", "work")
                  for p in [rootfs / top, *(rootfs / top).rglob("*")])
    assert seen == _tree(cli, "demo:1")                                 # exactly the container's tree
    assert not (rootfs / "gone").exists() and not (rootfs / "data" / "empty" / "old").exists()
    # an image umoci made: init, new, unpack, change, repack, config; imported and run here
    lay = tmp_path / "lay"
    subprocess.run([umoci, "init", "--layout", str(lay)], check=True)
    subprocess.run([umoci, "new", "--image", f"{lay}:v1"], check=True)
    b2 = tmp_path / "b2"
    subprocess.run([umoci, "unpack", "--image", f"{lay}:v1", str(b2)], check=True, capture_output=True)
    shutil.copytree(ctx / "base", b2 / "rootfs", symlinks=True, dirs_exist_ok=True)
    (b2 / "rootfs" / "hello").write_text("from umoci\n")
    subprocess.run([umoci, "repack", "--image", f"{lay}:v1", str(b2)], check=True, capture_output=True)
    subprocess.run([umoci, "config", "--image", f"{lay}:v1", "--config.cmd", "cat",
                    "--config.cmd", "/hello", "--config.env", "X=1"], check=True, capture_output=True)
    cli("image", "import", f"{lay}:v1", "umo:v1", check=True)
    assert cli("run", "--image", "umo:v1", "-p", group, check=True).stdout == "from umoci\n"
    # rmi is refused while a container uses the image; prune keeps what is tagged
    cli("run", "-d", "--name", "holder", "--image", "umo:v1", "-p", group, "--", "sleep", "30", check=True)
    busy = cli("rmi", "umo:v1")
    assert busy.returncode == 1 and "used by container(s) holder" in busy.stderr
    cli("stop", "-t", "0s", "holder", check=True)
    cli("rmi", "umo:v1", check=True)
    pruned = cli("image", "prune", "--json", check=True)
    assert json.loads(pruned.stdout)["blobs"] >= 3
    assert cli("run", "--image", "demo:1", "-p", group, check=True).stdout == "hi world from /work\n"


def _store_files(tmp_path: Path) -> set[str]:
    root = tmp_path / "state" / "images"
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


@pytest.mark.parametrize("recipe,msg,code", [
    ("FROM scratch\nVOLUME /x\n", "Dockerfile:2: VOLUME: instruction not supported", 1),
    ("FROM scratch\nCOPY nothere /x\n", "Dockerfile:2: COPY: nothere: no such file in the build context", 1),
    ("FROM scratch\nCOPY ../secret /x\n", "Dockerfile:2: COPY: ../secret is outside the build context", 1),
    ("FROM scratch\nCOPY out /x\n", "Dockerfile:2: COPY: out leads outside the build context", 1),
    ("FROM scratch\nCOPY base/ /\nRUN echo partial > /p && exit 7\n", "Dockerfile:3: RUN", 7),
])
def test_bad_builds_fail_in_one_line_and_tag_nothing(cli, group, ctx: Path, tmp_path: Path, recipe, msg, code):
    (tmp_path / "secret").write_text("s")
    (ctx / "out").symlink_to(tmp_path / "secret")
    (ctx / "Dockerfile").write_text(recipe)
    r = cli("build", "-t", "bad:1", "-p", group, str(ctx))
    assert r.returncode == code, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and msg in lines[0], r.stderr
    assert cli("images", "--json", check=True).stdout.strip() == "[]"
    assert not [f for f in _store_files(tmp_path) if f.startswith("tmp/") and f != "tmp"]


def test_a_corrupt_blob_is_refused_on_import_and_nothing_is_stored(cli, group, ctx: Path, tmp_path: Path):
    cli("build", "-t", "demo:1", "-p", group, str(ctx), check=True)
    exp = tmp_path / "exp"
    cli("image", "export", "demo:1", str(exp), check=True)
    cli("rmi", "demo:1", check=True)
    cli("image", "prune", check=True)
    before = _store_files(tmp_path)
    idx = json.loads((exp / "index.json").read_text())
    man = json.loads((exp / "blobs" / "sha256" / idx["manifests"][0]["digest"][7:]).read_text())
    victim = exp / "blobs" / "sha256" / man["layers"][2]["digest"][7:]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    r = cli("image", "import", f"{exp}:1", "demo:2")
    assert r.returncode == 1 and "does not match its digest" in r.stderr and len(r.stderr.splitlines()) == 1
    assert cli("images", "--json", check=True).stdout.strip() == "[]"
    after = {f for f in _store_files(tmp_path) if not f.startswith(("oci/blobs/sha256/", "layers/"))}
    assert after <= before | {"gc.lock", "index.lock"}
    assert not os.listdir(tmp_path / "state" / "images" / "tmp")
