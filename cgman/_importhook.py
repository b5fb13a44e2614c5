"""One way to run code right after a module is imported, by whoever imports it: a finder on
sys.meta_path (_dcache.py's for dataclasses, lazylog.py's for logging) asks the finders after it
for the module's spec and hands it back with its loader's ``exec_module`` wrapped. Such a finder
stays on sys.meta_path, answering nothing once done: removing itself could make another
thread's import, walking the list, skip a finder."""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable


def spec_with_hooks(finder: object, name: str, path: object, target: object,
                    before: Callable[[], None], after: Callable[[Any], None]) -> object:
    """The spec the other finders give ``name``, whose loading calls ``before()`` and, once the
    module ran, ``after(module)``; None (or a spec without a loader) as they answer."""
    spec = None
    for other in sys.meta_path:
        find = getattr(other, "find_spec", None)
        spec = find(name, path, target) if other is not finder and find is not None else None
        if spec is not None:
            break
    if spec is None or spec.loader is None:
        return spec
    run = spec.loader.exec_module

    def exec_module(module: object) -> None:
        before()
        run(module)
        after(module)
    spec.loader.exec_module = exec_module
    return spec
