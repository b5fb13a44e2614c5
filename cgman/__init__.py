"""cgman: a cgroup resource manager and accounting service.

The package is layered (see STYLE.md): model -> policy -> convert/plan (pure)
-> drivers (v1, v2, fake) -> runtime -> cli. Nothing here runs at import time but one
hook: dataclasses made by this process reuse the code compiled for them before (_dcache.py).
"""

from . import _dcache

_dcache.install()

__version__ = "0.1.0"
