"""Build the C parts; all other metadata is in pyproject.toml.

- cgman._spawn: the launch helper (no Python between clone and exec).
- cgman._fastread: the exporter's stat reader.
- cgman._secure: seccomp profiles compiled with libseccomp, the cgroup v2 device filter (BPF).
- the `cgman` command: a C front (cgman/_client.c) that hands a `cgman run` to a running agent
  and execs the Python CLI (bin/cgman-cli, installed next to it) for everything else. It is
  built as a script, from a header that cgman/cli/thin.py writes from the Python definitions.
- cgman/cgman-init: the container's PID 1, a static executable (musl-gcc where installed:
  ~17 KB; else the C compiler with -static). cgman runs it from a sealed memfd copy, so it
  must not need a dynamic loader or libraries from whatever root the container has.
"""
import os
import shlex
import shutil
import subprocess
import sys
import tempfile

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from distutils.command.build_scripts import build_scripts  # after setuptools: its own copy of distutils

_FLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"]


def _c_compiler() -> list[str]:
    """musl-gcc where installed (small static programs), else $CC (which may carry flags), else cc."""
    return [shutil.which("musl-gcc")] if shutil.which("musl-gcc") else shlex.split(os.environ.get("CC", "cc"))


class BuildExtAndInit(build_ext):
    """build_ext, plus the static init executable next to the extensions."""

    def run(self) -> None:
        super().run()
        out_dir = "cgman" if self.inplace else os.path.join(self.build_lib, "cgman")
        os.makedirs(out_dir, exist_ok=True)
        out = os.path.join(out_dir, "cgman-init")
        cmd = [*_c_compiler(), "-static", "-Os", "-s", "-Wall", "-Wextra", "-o", out, "cgman/_init.c"]
        print(" ".join(cmd))
        subprocess.run(cmd, check=True)


class BuildScriptsAndFront(build_scripts):
    """build_scripts (bin/cgman-cli), plus the `cgman` front next to it: static, so that its
    start (part of every served run) needs no dynamic loader."""

    def run(self) -> None:
        super().run()
        here = os.path.dirname(os.path.abspath(__file__))
        os.makedirs(self.build_dir, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
            header = subprocess.run([sys.executable, "-S", "-B", "-m", "cgman.cli.thin"], cwd=here, check=True,
                                    capture_output=True, text=True, env=dict(env, PYTHONPATH=here)).stdout
            with open(os.path.join(tmp, "_client.h"), "w") as f:
                f.write(header)
            out = os.path.join(self.build_dir, "cgman")
            source = os.path.join(here, "cgman", "_client.c")
            cmd = [*_c_compiler(), "-static", "-Os", "-s", *_FLAGS[1:], "-I", tmp, "-o", out, source]
            print(" ".join(cmd))
            subprocess.run(cmd, check=True)
        os.chmod(out, 0o755)


setup(
    cmdclass={"build_ext": BuildExtAndInit, "build_scripts": BuildScriptsAndFront},
    ext_modules=[
        Extension("cgman._spawn", ["cgman/_spawn.c"], depends=["cgman/_proto.h"], extra_compile_args=_FLAGS),
        Extension("cgman._fastread", ["cgman/_fastread.c"], extra_compile_args=_FLAGS + ["-pthread"],
                  extra_link_args=["-pthread"]),
        Extension("cgman._secure", ["cgman/_secure.c"], extra_compile_args=_FLAGS, libraries=["seccomp"]),
    ],
)
