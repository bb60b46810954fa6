"""Every DRA default, in one place.

Each value is the paper's (Ding, Pang, Shen, CVPR 2022; section and appendix cited) or, where the
paper is silent, the official code's (``choubo/DRA``); the comment says which. The Lightning module
:class:`~anomalib_hyperbolic.models.dra.DRA`, the torch model and the loss take their defaults from
:data:`DEFAULTS`. The training length (30 epochs x 20 iterations, batch 48, section 4.1) is a
trainer/datamodule setting: see ``configs/dra.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DRADefaults:
    """DRA's default arguments (see the module docstring for the sources)."""

    # --- the model ----------------------------------------------------------------------------------
    backbone: str = "resnet18.tv_in1k"  # app. B.1 (ResNet-18); torchvision's ImageNet weights, as the official code
    layer: str | None = None  # None: the deepest level (ResNet-18 layer4, the paper's 512-channel map)
    pre_trained: bool = True
    top_k_ratio: float = 0.1  # k of the top-k MIL, eq. (3): 10 % of the patches, section 4.1
    num_scales: int = 2  # image pyramid levels, app. B.1 (official n_scales=2)
    num_reference: int = 5  # N_r of eq. (6), section 4.6
    normality_hidden: int = 256  # hidden width of the normality head (eq. 9), official code
    image_size: tuple[int, int] = (448, 448)  # the pre-processor's resize, app. B.1 (official img_size=448)
    # --- loss (loss.py) -----------------------------------------------------------------------------
    loss: str = "deviation"  # app. B.1.1 (BCE and focal: app. C.2)
    margin: float = 5.0  # a of eq. (11), app. B.1.1 (DevNet's)
    num_prior: int = 5000  # size of the N(0, 1) prior sample r of eq. (10): DevNet's and the official code's
    # --- training data ------------------------------------------------------------------------------
    pseudo_anomaly_prob: float = 0.5  # a normal image becomes a CutMix pseudo anomaly: official data loader
    reference_pseudo_prob: float = 0.5  # references mix normal and pseudo-anomalous images: app. B.1
    rotation_degrees: float = 180.0  # official transform_train: RandomRotation(180)
    seed: int = 0  # reference draws and training augmentation
    # --- optimisation -------------------------------------------------------------------------------
    lr: float = 2e-4  # Adam, section 4.1
    weight_decay: float = 1e-5  # section 4.1
    lr_step_size: int = 10  # official code: StepLR(10, 0.1)
    lr_gamma: float = 0.1  # official code


DEFAULTS = DRADefaults()
