"""anomalib-hyperbolic: HypAD, HADNet, SimpleNet and DRA as anomalib models.

Importing this package is cheap: it installs the registration hook (see
:mod:`anomalib_hyperbolic._autoload`) and exposes submodules lazily, so
``anomalib.models.get_model("hypad")`` works after ``import anomalib_hyperbolic``.
"""

from __future__ import annotations

import importlib
from typing import Any

from anomalib_hyperbolic import _autoload

__version__ = "0.1.0"

_autoload.install()

_SUBMODULES = {"geometry", "models", "data", "backbones", "testing", "cli"}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"anomalib_hyperbolic.{name}")
    msg = f"module 'anomalib_hyperbolic' has no attribute {name!r}"
    raise AttributeError(msg)
