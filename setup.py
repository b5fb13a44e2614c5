"""Build the C parts; all other metadata is in pyproject.toml.

- cgman._spawn: the launch helper (no Python between clone and exec).
- cgman._fastread: the exporter's stat reader.
- cgman._secure: seccomp profiles compiled with libseccomp, the cgroup v2 device filter (BPF).
- cgman/cgman-init: the container's PID 1, a static executable (musl-gcc where installed:
  ~17 KB; else the C compiler with -static). cgman runs it from a sealed memfd copy, so it
  must not need a dynamic loader or libraries from whatever root the container has.
"""
import os
import shutil
import subprocess

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

_FLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"]


class BuildExtAndInit(build_ext):
    """build_ext, plus the static init executable next to the extensions."""

    def run(self) -> None:
        super().run()
        out_dir = "cgman" if self.inplace else os.path.join(self.build_lib, "cgman")
        os.makedirs(out_dir, exist_ok=True)
        out = os.path.join(out_dir, "cgman-init")
        cc = shutil.which("musl-gcc") or os.environ.get("CC", "cc")
        cmd = [cc, "-static", "-Os", "-s", "-Wall", "-Wextra", "-o", out, "cgman/_init.c"]
        print(" ".join(cmd))
        subprocess.run(cmd, check=True)


setup(
    cmdclass={"build_ext": BuildExtAndInit},
    ext_modules=[
        Extension("cgman._spawn", ["cgman/_spawn.c"], depends=["cgman/_proto.h"], extra_compile_args=_FLAGS),
        Extension("cgman._fastread", ["cgman/_fastread.c"], extra_compile_args=_FLAGS + ["-pthread"],
                  extra_link_args=["-pthread"]),
        Extension("cgman._secure", ["cgman/_secure.c"], extra_compile_args=_FLAGS, libraries=["seccomp"]),
    ],
)
