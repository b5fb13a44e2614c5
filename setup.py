"""Build the C extensions (cgman._spawn, cgman._fastread); all other metadata is in pyproject.toml."""
from setuptools import Extension, setup

_FLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"]

setup(ext_modules=[
    Extension("cgman._spawn", ["cgman/_spawn.c"], extra_compile_args=_FLAGS),
    Extension("cgman._fastread", ["cgman/_fastread.c"], extra_compile_args=_FLAGS + ["-pthread"],
              extra_link_args=["-pthread"]),
])
