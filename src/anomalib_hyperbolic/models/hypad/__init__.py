"""HypAD: Hyperbolic Anomaly Detection (Li et al., CVPR 2023), EfficientAD in the Poincaré ball."""

from .lightning_model import HypAD
from .torch_model import HypADModel

__all__ = ["HypAD", "HypADModel"]
