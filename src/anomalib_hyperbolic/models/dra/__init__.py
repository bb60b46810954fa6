"""DRA: open-set supervised anomaly detection with a few labelled anomalies (Ding et al., CVPR 2022)."""

from .defaults import DEFAULTS, DRADefaults
from .lightning_model import DRA
from .loss import DeviationLoss, DRALoss
from .torch_model import DRAModel, ReferenceSampler

__all__ = ["DEFAULTS", "DRA", "DRADefaults", "DRALoss", "DRAModel", "DeviationLoss", "ReferenceSampler"]
