"""SimpleNet (Liu et al., CVPR 2023): the paper's model, and options beyond it that plug in."""

from .defaults import DEFAULTS, SimpleNetDefaults
from .extensions import ExtendedSimpleNetModel, build_model
from .lightning_model import SimpleNet
from .loss import TruncatedL1Loss
from .torch_model import HeadScores, SimpleNetModel

__all__ = [
    "DEFAULTS",
    "ExtendedSimpleNetModel",
    "HeadScores",
    "SimpleNet",
    "SimpleNetDefaults",
    "SimpleNetModel",
    "TruncatedL1Loss",
    "build_model",
]
