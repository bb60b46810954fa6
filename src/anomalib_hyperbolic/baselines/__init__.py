"""Baselines that benchmarks compare this package's models with.

* :class:`EfficientAdStepSchedule`: anomalib's ``EfficientAd`` with HypAD's per-step learning-rate decay.

Not imported by ``anomalib_hyperbolic.models``: use them by class path
(``anomalib_hyperbolic.baselines.EfficientAdStepSchedule``).
"""

from anomalib_hyperbolic.baselines.efficientad import EfficientAdStepSchedule

__all__: list[str] = ["EfficientAdStepSchedule"]
