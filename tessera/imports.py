"""Importing a trusted factory's module, afresh when its package's files changed.

A hub runs for weeks while its owner edits the model file it trusts. Python keeps the first
import of a module, so a fixed factory would fail on until a restart. ``import_fresh`` records
the size and modification time of every loaded file of the module's top-level package; when one
changed (or went away), the package's modules are dropped and imported again, so the next run
built from it uses the new code. Runs that hold objects of the old code keep them. tessera's own
package is never dropped. Callers import only after the trust check (``tessera.trust``).
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
from types import ModuleType

PROTECTED = ("tessera",)
_lock = threading.Lock()
_seen: dict[str, tuple[int, int]] = {}  # file -> (size, mtime_ns) when its module was imported


def _stat(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (-1, -1)
    return (st.st_size, st.st_mtime_ns)


def _package_modules(top: str) -> dict[str, ModuleType]:
    return {n: m for n, m in list(sys.modules.items()) if n == top or n.startswith(top + ".")}


def _files(modules: dict[str, ModuleType]) -> list[str]:
    return [f for m in modules.values() if isinstance(f := getattr(m, "__file__", None), str)]


def _changed(top: str) -> bool:
    return any(path in _seen and _stat(path) != _seen[path] for path in _files(_package_modules(top)))


def import_fresh(module_name: str) -> ModuleType:
    """``module_name`` imported, or imported again with its whole package when one of the
    package's loaded files changed since it was imported."""
    top = module_name.partition(".")[0]
    with _lock:
        if top not in PROTECTED and _changed(top):
            stale = _package_modules(top)
            for path in _files(stale):
                _seen.pop(path, None)
            for name in stale:
                del sys.modules[name]
            importlib.invalidate_caches()
        module = importlib.import_module(module_name)
        if top not in PROTECTED:
            for path in _files(_package_modules(top)):
                _seen.setdefault(path, _stat(path))
        return module
