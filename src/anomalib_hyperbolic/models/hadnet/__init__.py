"""HADNet: hyperbolic geometry enhanced feature filtering network (HST + AFSS + ARD)."""

from .defaults import DEFAULTS, HADNetDefaults
from .lightning_model import HADNet
from .torch_model import HADNetModel, StageOneBatch

__all__ = ["DEFAULTS", "HADNet", "HADNetDefaults", "HADNetModel", "StageOneBatch"]
