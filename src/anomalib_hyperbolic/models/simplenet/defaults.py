"""Every SimpleNet default, in one place.

Each value is the paper's (Liu et al., CVPR 2023, section 4.3) or, where the paper is silent or the
official code (DonaldRR/SimpleNet) differs in a way that matters, the official code's; the comment
says which. Options beyond the paper default to "off", which is the paper's model. The Lightning
module :class:`~anomalib_hyperbolic.models.simplenet.SimpleNet`, the torch models and the loss take
their defaults from :data:`DEFAULTS`; ``configs/simplenet.yaml`` spells them out.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SimpleNetDefaults:
    """SimpleNet's default arguments (see the module docstring for the sources)."""

    # --- the paper's model ------------------------------------------------------------------------
    #: WideResNet-50 with torchvision's V1 ImageNet weights, as the official code loads them: sigma = 0.015
    #: is calibrated to these features (timm's plain ``wide_resnet50_2`` is the ``racm_in1k`` weights).
    backbone: str = "wide_resnet50_2.tv_in1k"
    layers: tuple[str, ...] = ("layer2", "layer3")  # paper 4.3: the 2nd and 3rd levels
    pre_trained: bool = True
    patch_size: int = 3  # paper Fig. 6
    pretrain_embed_dim: int = 1536  # official run script
    target_embed_dim: int = 1536  # paper 4.3
    adaptor_bias: bool = False  # paper ("without bias"; the official Projection has one)
    noise_std: float = 0.015  # sigma of eq. (6), paper 4.3
    discriminator_hidden: int = 1024  # official run script (the paper gives no width)
    negative_slope: float = 0.2  # paper 4.3
    blur_sigma: float = 4.0  # paper 3.6
    image_score: str = "patch_max"  # eq. (11): max over the feature grid, as the official code
    # --- training ---------------------------------------------------------------------------------
    th_pos: float = 0.5  # th+ of eq. (7)
    th_neg: float = 0.5  # -th- of eq. (7), as a positive margin
    adaptor_lr: float = 1e-4  # paper 4.3 (official: 0.1 x lr 1e-3)
    discriminator_lr: float = 2e-4  # paper 4.3
    weight_decay: float = 1e-5  # paper 4.3: Adam's (L2) weight decay; official: the discriminator's
    adaptor_optimizer: str = "adamw"  # official code: AdamW for the adaptor; "adam" is the paper's text
    adaptor_weight_decay: float = 0.01  # official code: AdamW's default decoupled weight decay
    # --- beyond the paper: every option off --------------------------------------------------------
    relative_noise: bool = False
    feature_standardization: bool = False
    distance: str = "euclidean"
    curvature: float = 0.01
    discriminator_input: str = "logmap"
    ensemble_size: int = 1
    synthetic_anomalies: bool = False
    synthetic_anomaly_source: str | None = None
    synthetic_copies: int = 1
    synthetic_coverage: float = 0.5
    synthetic_per_head: bool = False
    synthetic_pool_size: int = 0  # 0: live synthesis every step; N: N pre-drawn variants per image
    synthetic_pool_refresh: int = 0  # epochs between redraws of the pool (0: never)
    # --- engineering: the model is unchanged ------------------------------------------------------
    cache_features: bool = True  # the frozen extractor's output of each training image computed once


DEFAULTS = SimpleNetDefaults()

IMAGE_SCORES = ("patch_max", "map_max")
ADAPTOR_OPTIMIZERS = ("adamw", "adam")
DISTANCES = ("euclidean", "poincare")
DISCRIMINATOR_INPUTS = ("logmap", "distance")


def require_positive_int(name: str, value: object) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is an ``int`` >= 1 (``bool`` refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        msg = f"`{name}` must be a positive integer, got {value!r}."
        raise ValueError(msg)


def require_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        msg = f"`{name}` must be one of {choices}, got {value!r}."
        raise ValueError(msg)
