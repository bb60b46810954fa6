"""Every HADNet default, in one place.

HADNet (Feng, Liu, Gai, Sci. Rep. 2025) builds on RealNet (Zhang et al., CVPR 2024, ``cnulab/RealNet``).
Each value is the paper's ("Implementation details") or, where the paper is silent, RealNet's
(paper or official code); the rest are this package's choices (see ``README.md`` next to this file,
"Choices where the paper is open"). The comment says which. The Lightning module
:class:`~anomalib_hyperbolic.models.hadnet.HADNet`, the torch model and the loss take their
defaults from :data:`DEFAULTS`; ``configs/hadnet.yaml`` spells out the paper's recipe.
"""

from __future__ import annotations

from dataclasses import dataclass

from anomalib_hyperbolic.geometry import DEFAULT_CLIP_RADIUS

#: HADNet "Implementation details": RGB mean / std of the images (for the paper's WideResNet-50).
PAPER_MEAN = (0.491, 0.449, 0.410)
PAPER_STD = (0.231, 0.219, 0.220)


@dataclass(frozen=True)
class HADNetDefaults:
    """HADNet's default arguments (see the module docstring for the sources)."""

    # --- the model ----------------------------------------------------------------------------------
    #: RealNet's backbone with torchvision's ImageNet weights, as RealNet's code loads them (timm's plain
    #: ``wide_resnet50_2`` tag is ``racm_in1k``, other weights)
    backbone: str = "wide_resnet50_2.tv_in1k"
    layers: tuple[str, ...] = ("layer1", "layer2", "layer3", "layer4")  # paper: "layers as RealNet"
    pre_trained: bool = True
    num_selected: tuple[int, ...] = (256, 512, 512, 256)  # AFSS r per layer: RealNet's for wide_resnet50_2
    num_residuals: int = 512  # ARD s: RealNet's 256 (GMP) + 256 (GAP)
    rho: float = 0.01  # curvature of the Poincare ball: paper
    clip_radius: float = DEFAULT_CLIP_RADIUS  # 2.3, feature clipping before expmap0 (geometry's default)
    hidden_ratio: float = 0.5  # this package: width of the per-layer autoencoder relative to r
    discriminator_widths: tuple[int, ...] = (128, 32, 8)  # this package: the segmentation head's convs
    #: this package (issue 32's design study, not the paper): what the discriminator sees. "ranked_residuals":
    #: the paper's ARD Lambda only (eq. 13; a given channel is a different feature in every image);
    #: "residuals_and_features": Lambda plus, in a fixed channel order, the selected features and their signed
    #: residual (so the head can tell which feature deviates, and in which direction)
    discriminator_input: str = "ranked_residuals"
    #: this package (issue 32): with "residuals_and_features", a learned 1x1 projection of each layer's context
    #: to this many channels at the layer's resolution, before upsampling (a cheaper training step); None: none
    context_width: int | None = None
    #: this package (issue 32): "plain" (the convs above, logits at the residual grid); "realnet": RealNet's
    #: deeper head, a 2-block residual stack before the convs and a x2-upsampled decoder stage after them
    discriminator_head: str = "plain"
    score_pool_size: int = 16  # RealNet's evaluation: 16x16 average pool of the map at 256 px
    selection: str = "afss"  # paper (eqs. 8-10); "random" is its ablation RDR
    residual_selection: str = "ard"  # paper (eqs. 11-13); "all" is an ablation
    afss_target: str = "hyperplane"  # paper: hyperbolic distance map; "mask" is RealNet's AFS
    mean: tuple[float, ...] | None = None  # None: PAPER_MEAN for the paper's backbone, else the backbone's own
    std: tuple[float, ...] | None = None  # None: as for mean
    image_size: tuple[int, int] = (256, 256)  # the pre-processor's resize: paper
    #: this package (issue 32; the paper reports IoU without naming its threshold): None = anomalib's pixel
    #: threshold, fitted on the validation images (pooled pixel F1); a number = that fixed value of the map, a
    #: probability, e.g. 0.5, the boundary the BCE loss trains (models.components.FixedPixelThresholdPostProcessor)
    pixel_threshold: float | None = None
    # --- training data ------------------------------------------------------------------------------
    training_mode: str = "unsupervised"  # this package (any one-class datamodule); the paper's is "supervised"
    anomaly_source_path: str | None = None  # Perlin anomalies' texture folder (None: random patterns)
    anomaly_probability: float = 0.5  # this package: half the training images made anomalous
    blend_factor: tuple[float, float] = (0.2, 1.0)  # this package: blend range of the Perlin anomalies
    color_jitter_p: float = 0.25  # paper: ColorJitter with p = 0.25
    color_jitter: float = 0.2  # this package (the paper gives no strengths)
    #: this package (issue 32): in supervised mode, also turn the training normals into Perlin anomalies
    #: (anomaly_probability of them) with their clean twin as reconstruction target, so the reconstruction
    #: learns to remove anomalies; False: real defects only (nothing teaches the removal)
    supervised_synthesis: bool = False
    cache_features: bool = True  # engineering: the frozen backbone's levels of plain images computed once
    #: this package (issue 32; the paper is silent on freezing): fine-tune the backbone (its BatchNorm stays in
    #: eval mode) with the same Adam as the heads, as the U-Net baseline fine-tunes its encoder; False: frozen
    #: as in RealNet. Needs cache_features=False (a training backbone's features are not fixed)
    train_backbone: bool = False
    # --- optimisation -------------------------------------------------------------------------------
    lr: float = 1e-3  # paper: Adam, lr 1e-3
    lr_step_size: int = 50  # this package: the paper names a step decay but not its parameters
    lr_gamma: float = 0.1  # this package (as above)
    #: this package (issue 32): "step" = StepLR(lr_step_size, lr_gamma) per epoch (never decays in runs
    #: shorter than lr_step_size epochs); "cosine" = cosine decay to 0 over the run's optimiser steps
    #: (relative to max_epochs, so every budget ends decayed)
    lr_schedule: str = "step"
    init_batches: int = 16  # this package: batches of the HST statistics and of the AFSS losses
    hst_steps: int = 50  # this package: Adam steps fitting the Poincare hyperplanes
    hst_lr: float = 1e-2  # this package
    seed: int = 0  # stage 1's shuffling and random draws, and the random-selection ablation
    # --- loss (loss.py) -----------------------------------------------------------------------------
    seg_weight: float = 1.0  # this package: weight of BCE + Dice
    dice_weight: float = 1.0  # this package: the Dice term (HADNet is judged by IoU)
    #: this package (issue 32): the pixel term of the segmentation loss. "bce_dice" = mean BCE + Dice;
    #: "balanced_bce_dice" = BCE with the positives weighted by the batch's negative/positive pixel ratio
    #: (clamped to [1, 100], loss.balanced_bce) + Dice; "focal_dice" = sigmoid focal loss (torchvision's) + Dice.
    #: Defects are ~5 % of Magnetic Tile's training pixels (0.2 % for Blowhole), so plain BCE favours background
    seg_loss: str = "bce_dice"
    focal_alpha: float = 0.25  # torchvision's / RetinaNet's default (< 0: no class weighting); "focal_dice" only
    focal_gamma: float = 2.0  # torchvision's / RetinaNet's default; "focal_dice" only
    #: this package (issue 32): False = one soft Dice over every pixel of the batch (normal images included);
    #: True = the mean of per-image Dice over the images with defect pixels (normal images leave the Dice term),
    #: so a small defect counts as much as a large one
    dice_per_image: bool = False
    recon_weight: float = 1.0  # this package: weight of the reconstruction MSE


DEFAULTS = HADNetDefaults()
