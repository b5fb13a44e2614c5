"""Build and rebuild time of a recipe with a few thousand files, and what a snapshot by
directory walk (kaniko's way: after every step, walk the whole root and compare it with the
previous walk) would cost on the same tree, against cgman's snapshot of the step's overlayfs
upper dir.

    sudo .venv/bin/python benchmarks/images.py [--files 4000] [--steps 5] [--rounds 3]

Needs root, a static busybox, and writes only under a temp dir and its own cgroup root.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cgclean import rmdir_tree  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
POLICY = "version: 1\npolicies:\n  bench:\n    container: {cpu: {max: 2}}\n"


def make_context(ctx: Path, files: int, steps: int) -> None:
    (ctx / "base" / "bin").mkdir(parents=True)
    shutil.copy(shutil.which("busybox") or "/bin/busybox", ctx / "base" / "bin" / "busybox")
    for t in ("sh", "echo", "touch", "rm", "mkdir"):
        (ctx / "base" / "bin" / t).symlink_to("busybox")
    for i in range(files):
        d = ctx / "tree" / f"d{i // 100:03d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:05d}.txt").write_bytes(os.urandom(64) * (1 + i % 32))
    lines = ["FROM scratch", "COPY base/ /", "COPY tree/ /tree/"]
    lines += [f"RUN echo step{s} > /step{s} && touch /tree/d000/f00000.txt && rm -f /tree/d001/f{100 + s:05d}.txt"
              for s in range(steps)]
    (ctx / "Dockerfile").write_text("\n".join(lines) + "\n")


def walk_snapshot(root: str, hash_contents: bool) -> dict[str, tuple]:
    """kaniko's snapshotter: every file's metadata (and, in full mode, content hash)."""
    out: dict[str, tuple] = {}
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            h = b""
            if hash_contents and os.path.isfile(p) and not os.path.islink(p):
                with open(p, "rb") as f:
                    h = hashlib.sha256(f.read()).digest()
            out[p] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, h)
    return out


def snapshot_upper(tmp: Path, i: int) -> float:
    """cgman's part of a step: the upper dir a small RUN leaves (a new file, a touched one, a
    deletion) into a stored, unpacked layer."""
    import stat as st_
    from cgman.images.steps import snapshot_to_layer
    from cgman.images.store import ImageStore
    upper = tmp / f"upper{i}"
    (upper / "tree" / "d000").mkdir(parents=True)
    (upper / f"step{i}").write_text(f"step{i}\n")
    (upper / "tree" / "d000" / "f00000.txt").write_bytes(os.urandom(64))
    (upper / "tree" / "d001").mkdir()
    os.mknod(upper / "tree" / "d001" / "f00100.txt", st_.S_IFCHR, os.makedev(0, 0))
    store = ImageStore(str(tmp / "snapstate"))
    store.init()
    t0 = time.monotonic()
    snapshot_to_layer(store, str(upper))
    return time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=4000)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cgman-bench-img-"))
    root = f"cgman-bench-img-{os.getpid()}"
    env = dict(os.environ, CGMAN_CGROUP_ROOT=root, CGMAN_RUN_DIR=str(tmp / "run"),
               CGMAN_STATE_DIR=str(tmp / "state"), CGMAN_BRIDGE_DIR=str(tmp / "br"))
    cg = [sys.executable, "-m", "cgman"]
    try:
        make_context(tmp / "ctx", a.files, a.steps)
        (tmp / "p.yaml").write_text(POLICY)
        subprocess.run(cg + ["apply", str(tmp / "p.yaml")], env=env, cwd=REPO, check=True, capture_output=True)
        cold, warm, step_s = [], [], []
        for r in range(a.rounds):
            shutil.rmtree(tmp / "state" / "images", ignore_errors=True)
            t0 = time.monotonic()
            out = subprocess.run(cg + ["build", "-t", f"bench:{r}", "-p", "bench", str(tmp / "ctx")], env=env,
                                 cwd=REPO, check=True, capture_output=True, text=True).stdout
            cold.append(time.monotonic() - t0)
            step_s += [float(ln.rsplit(",", 1)[1].strip().rstrip("s")) for ln in out.splitlines()
                       if ln.startswith("  layer") and "entries" in ln][2:]
            t0 = time.monotonic()
            subprocess.run(cg + ["build", "-t", f"bench:{r}", "-p", "bench", str(tmp / "ctx")], env=env, cwd=REPO,
                           check=True, capture_output=True)
            warm.append(time.monotonic() - t0)
        # the same final tree, materialized, walked as kaniko walks it after every step
        tree = tmp / "rootfs"
        subprocess.run(["cp", "-a", str(tmp / "ctx" / "tree"), str(tree)], check=True)
        walks = {"time": [], "full": []}
        for _ in range(a.rounds):
            for mode in walks:
                t0 = time.monotonic()
                walk_snapshot(str(tree), mode == "full")
                walks[mode].append(time.monotonic() - t0)
        med = statistics.median
        cgman_step = med(step_s) if step_s else float("nan")
        snap = [snapshot_upper(tmp, i) for i in range(a.rounds * 3)]
        print(f"recipe: {a.files} files in a COPY, then {a.steps} small RUN steps; {a.rounds} rounds, medians")
        print(f"cgman build (cold):                 {med(cold):.2f} s")
        print(f"cgman rebuild (every step cached):  {med(warm):.2f} s")
        print(f"cgman small RUN step (run + upper-dir snapshot + layer): {cgman_step * 1000:.0f} ms")
        print(f"cgman snapshot of such a step's upper dir (walk, tar, gzip, unpack): {med(snap) * 1000:.1f} ms")
        for mode, ts in walks.items():
            w = med(ts)
            print(f"directory-walk snapshot, kaniko {mode:4} mode, per step:  {w * 1000:.0f} ms "
                  f"(x{a.steps} steps = {w * a.steps:.2f} s; {w / med(snap):.0f}x cgman's snapshot, "
                  f"{w / cgman_step:.1f}x a whole cgman RUN step)")
    finally:
        for m in ("/sys/fs/cgroup/unified", *[f"/sys/fs/cgroup/{c}" for c in os.listdir("/sys/fs/cgroup")]):
            if os.path.isdir(os.path.join(m, root)):
                rmdir_tree(os.path.join(m, root))
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
