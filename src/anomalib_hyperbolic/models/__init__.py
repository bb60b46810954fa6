"""Models of anomalib-hyperbolic, registered with anomalib as ``AnomalibModule`` subclasses.

Each model class subclasses :class:`anomalib.models.components.AnomalibModule` directly, so
``anomalib train --model NAME`` and ``anomalib.models.get_model(NAME)`` find it once this module
is imported (automatically, see :mod:`anomalib_hyperbolic._autoload`).
"""

from anomalib_hyperbolic.models.dra import DRA
from anomalib_hyperbolic.models.hadnet import HADNet
from anomalib_hyperbolic.models.hypad import HypAD
from anomalib_hyperbolic.models.simplenet import SimpleNet

__all__: list[str] = ["DRA", "HADNet", "HypAD", "SimpleNet"]
