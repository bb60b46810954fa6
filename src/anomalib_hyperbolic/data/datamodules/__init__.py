"""Data modules (``AnomalibDataModule`` subclasses) of the seed papers' benchmarks."""

from anomalib_hyperbolic.data.datamodules.elpv import ELPV
from anomalib_hyperbolic.data.datamodules.magnetic_tile import MagneticTile
from anomalib_hyperbolic.data.datamodules.neu_seg import NEUSeg

__all__ = ["ELPV", "MagneticTile", "NEUSeg"]
