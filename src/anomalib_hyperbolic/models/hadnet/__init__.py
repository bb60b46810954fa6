"""HADNet: hyperbolic geometry enhanced feature filtering network (HST + AFSS + ARD)."""

from .lightning_model import HADNet
from .torch_model import HADNetModel

__all__ = ["HADNet", "HADNetModel"]
