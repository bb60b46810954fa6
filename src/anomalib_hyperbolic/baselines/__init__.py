"""Baselines that benchmarks compare this package's models with.

* :class:`EfficientAdStepSchedule`: anomalib's ``EfficientAd`` with HypAD's per-step learning-rate decay.
* :class:`UNetSegmentation`: a supervised U-Net (``segmentation_models_pytorch``) trained on defect masks.

Not imported by ``anomalib_hyperbolic.models``: use them by class path
(``anomalib_hyperbolic.baselines.UNetSegmentation``).
"""

from anomalib_hyperbolic.baselines.efficientad import EfficientAdStepSchedule
from anomalib_hyperbolic.baselines.unet import UNetSegmentation

__all__: list[str] = ["EfficientAdStepSchedule", "UNetSegmentation"]
