"""DRA: open-set supervised anomaly detection with a few labelled anomalies (Ding et al., CVPR 2022)."""

from .lightning_model import DRA
from .loss import DeviationLoss, DRALoss
from .torch_model import DRAModel

__all__ = ["DRA", "DRALoss", "DRAModel", "DeviationLoss"]
