"""Datasets (``AnomalibDataset`` subclasses) of the seed papers' benchmarks."""

from anomalib_hyperbolic.data.datasets.elpv import ELPVDataset, make_elpv_dataset, materialize_elpv
from anomalib_hyperbolic.data.datasets.magnetic_tile import MagneticTileDataset, make_magnetic_tile_dataset
from anomalib_hyperbolic.data.datasets.neu_seg import NEUSegDataset, make_neu_seg_dataset

__all__ = [
    "ELPVDataset",
    "MagneticTileDataset",
    "NEUSegDataset",
    "make_elpv_dataset",
    "make_magnetic_tile_dataset",
    "make_neu_seg_dataset",
    "materialize_elpv",
]
