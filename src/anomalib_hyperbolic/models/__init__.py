"""Models of anomalib-hyperbolic, registered with anomalib as ``AnomalibModule`` subclasses.

Each model class subclasses :class:`anomalib.models.components.AnomalibModule` directly, so
``anomalib train --model NAME`` and ``anomalib.models.get_model(NAME)`` find it once this module
is imported (automatically, see :mod:`anomalib_hyperbolic._autoload`).
"""

__all__: list[str] = []

from anomalib_hyperbolic.models.dra import DRA

__all__ += ["DRA"]
