"""Register this package's models and datamodules with anomalib without an explicit import.

anomalib has no plugin entry point: its CLI resolves ``--model NAME`` among the already-imported
subclasses of ``AnomalibModule`` (jsonargparse) and ``anomalib.models.get_model`` does the same.
So the wheel installs ``anomalib_hyperbolic_autoload.pth`` into site-packages; at interpreter
start it imports ``anomalib_hyperbolic`` (which imports nothing heavy), whose ``__init__`` calls
:func:`install` to put a tiny import hook first on ``sys.meta_path`` (no torch, no anomalib).
When some program later imports ``anomalib.models`` (or ``anomalib.data``), the hook lets
that module finish loading and then imports ``anomalib_hyperbolic.models`` (or
``anomalib_hyperbolic.data``), whose classes subclass anomalib's and so become visible by
short name.

Switch it off with ``ANOMALIB_HYPERBOLIC_AUTOLOAD=0``; ``import anomalib_hyperbolic`` still
registers everything explicitly.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import sys
from types import ModuleType
from typing import Any

ENV_VAR = "ANOMALIB_HYPERBOLIC_AUTOLOAD"

#: anomalib module -> plugin module imported right after it.
PLUGIN_MODULES = {
    "anomalib.models": "anomalib_hyperbolic.models",
    "anomalib.data": "anomalib_hyperbolic.data",
}

logger = logging.getLogger(__name__)


def _import_plugin(plugin: str) -> None:
    try:
        importlib.import_module(plugin)
    except Exception as error:  # a broken plugin must never break anomalib itself
        logger.warning("anomalib-hyperbolic: could not register %s (%s: %s)", plugin, type(error).__name__, error)


class _PluginLoader(importlib.abc.Loader):
    """Wraps anomalib's own loader; imports the plugin once the anomalib module is executed."""

    def __init__(self, loader: importlib.abc.Loader, plugin: str) -> None:
        self._loader = loader
        self._plugin = plugin

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        _import_plugin(self._plugin)

    def __getattr__(self, name: str) -> Any:  # resource readers, get_source, is_package...
        return getattr(self._loader, name)


class _PluginFinder(importlib.abc.MetaPathFinder):
    """Meta-path finder that intercepts only the modules in :data:`PLUGIN_MODULES`."""

    def __init__(self) -> None:
        self._resolving: set[str] = set()

    def find_spec(
        self,
        fullname: str,
        path: Any = None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        plugin = PLUGIN_MODULES.get(fullname)
        if plugin is None or fullname in self._resolving:
            return None
        self._resolving.add(fullname)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._resolving.discard(fullname)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _PluginLoader(spec.loader, plugin)
        return spec


def enabled() -> bool:
    """Whether the ``.pth`` registration is on (``ANOMALIB_HYPERBOLIC_AUTOLOAD`` not 0/false/no/off).

    The ``.pth`` file repeats this test inline, so that nothing is imported when it is off.
    """
    return os.environ.get(ENV_VAR, "1").strip().lower() not in {"0", "false", "no", "off"}


def install() -> None:
    """Install the hook (idempotent); register at once for anomalib modules already imported."""
    if not any(isinstance(finder, _PluginFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _PluginFinder())
    for anomalib_module, plugin in PLUGIN_MODULES.items():
        if anomalib_module in sys.modules and plugin not in sys.modules:
            _import_plugin(plugin)
