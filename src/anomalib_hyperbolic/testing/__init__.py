"""Test utilities shipped with the package: synthetic MVTec-format data for offline checks."""

from anomalib_hyperbolic.testing.synthetic import DEFECT_TYPES, make_mvtec_like_dataset, textured_image

__all__ = ["DEFECT_TYPES", "make_mvtec_like_dataset", "textured_image"]
