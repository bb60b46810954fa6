"""Learning types beyond anomalib's ``LearningType`` (shared by DRA and HADNet).

anomalib's :class:`anomalib.LearningType` has ``ONE_CLASS``, ``ZERO_SHOT`` and ``FEW_SHOT``, and its
``Engine`` treats ``ZERO_SHOT``/``FEW_SHOT`` models as training-free: ``Engine.fit`` only runs
validation for them (WinCLIP-style reference images), and checkpoints are saved at validation end.
Models that learn by gradient descent from normal images *plus a few labelled anomalies* (open-set
supervised detection: DRA, HADNet) must be trained, so they report :attr:`SUPERVISED`: a string
enum like anomalib's, absent from the Engine's training-free set, so ``Engine.fit`` trains them.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["SupervisedLearningType"]


class SupervisedLearningType(str, Enum):
    """Learning type of models trained on normal images and a few labelled anomalies."""

    SUPERVISED = "supervised"
