"""Test utilities shipped with the package: synthetic datasets in the layouts the datamodules read."""

from anomalib_hyperbolic.testing.surface_defects import (
    make_elpv_like,
    make_magnetic_tile_like,
    make_magnetic_tile_subset,
    make_neu_seg_like,
)
from anomalib_hyperbolic.testing.synthetic import DEFECT_TYPES, make_mvtec_like_dataset, textured_image

__all__ = [
    "DEFECT_TYPES",
    "make_elpv_like",
    "make_magnetic_tile_like",
    "make_magnetic_tile_subset",
    "make_mvtec_like_dataset",
    "make_neu_seg_like",
    "textured_image",
]
