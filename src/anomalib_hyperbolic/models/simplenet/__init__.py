"""SimpleNet (Liu et al., CVPR 2023) with an optional Poincaré-ball variant."""

from .lightning_model import SimpleNet
from .loss import TruncatedL1Loss
from .torch_model import SimpleNetModel

__all__ = ["SimpleNet", "SimpleNetModel", "TruncatedL1Loss"]
