"""Plug-ins: packages that register judges, feature networks, metric networks and task sources.

Core code (evaluation/, tasks/) never imports a world: it looks names up in its registries, and the
registries call `load_plugins()` before a lookup. A plug-in is a module whose import registers what it
provides. They come from three places, in this order:

  * the built-in mini world, `igmu.world.plugin` (skipped quietly if that package is absent);
  * the environment variable IGMU_PLUGINS: comma-separated module names;
  * the entry-point group "igmu.plugins" of installed distributions.

A plug-in named in IGMU_PLUGINS or an entry point that fails to import is one clear error line.
"""
from __future__ import annotations

import importlib
import os

from .errors import UserError

BUILTIN = ("igmu.world.plugin",)
_LOADED: list[str] = []
_DONE = False


def load_plugins() -> list[str]:
    """Import every plug-in once; returns the names of the modules loaded."""
    global _DONE
    if _DONE:
        return list(_LOADED)
    _DONE = True  # set first: a plug-in that looks a registry up while importing must not recurse
    for name in BUILTIN:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is None or not name.startswith(e.name):
                raise
            continue
        _LOADED.append(name)
    named = [m.strip() for m in os.environ.get("IGMU_PLUGINS", "").split(",") if m.strip()]
    for name in named:
        _import(name, "IGMU_PLUGINS")
    try:
        from importlib.metadata import entry_points

        eps = list(entry_points(group="igmu.plugins"))
    except Exception:  # pragma: no cover - broken metadata must not stop the tool
        eps = []
    for ep in eps:
        if ep.value not in _LOADED:
            _import(ep.value, f"entry point {ep.name!r}")
    return list(_LOADED)


def _import(name: str, where: str) -> None:
    if name in _LOADED:
        return
    try:
        importlib.import_module(name)
    except ImportError as e:
        raise UserError(f"plug-in {name!r} (from {where}) cannot be imported: {e}") from None
    _LOADED.append(name)
