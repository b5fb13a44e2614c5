"""Build the one C extension (cgman._spawn); all other metadata is in pyproject.toml."""
from setuptools import Extension, setup

setup(ext_modules=[Extension("cgman._spawn", ["cgman/_spawn.c"],
                             extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter",
                                                 "-Wno-missing-field-initializers"])])
