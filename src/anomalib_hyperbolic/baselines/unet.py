"""Supervised U-Net segmentation baseline (``segmentation_models_pytorch``) as an anomalib model.

A U-Net on a timm encoder (default EfficientNet-Lite0), trained on the defect masks of the
training split with BCE + Dice. It is the fully supervised reference for the anomaly detectors:
it needs defective training images with masks, e.g. from
:class:`anomalib_hyperbolic.data.FewShotAnomalies`, which moves ``K`` test anomalies (with their
masks) into the training split.

Example:
    >>> from anomalib.data import MVTecAD
    >>> from anomalib.engine import Engine
    >>> from anomalib_hyperbolic.baselines import UNetSegmentation
    >>> from anomalib_hyperbolic.data import FewShotAnomalies
    >>> datamodule = FewShotAnomalies(MVTecAD(category="carpet"), num_anomalies=10)  # doctest: +SKIP
    >>> model = UNetSegmentation(backbone="weights/tf_efficientnet_lite0.safetensors")  # doctest: +SKIP
    >>> Engine(max_epochs=20).fit(model, datamodule=datamodule)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
from anomalib.data import Batch, InferenceBatch
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch import nn

from anomalib_hyperbolic.backbones import LITE0_ARCH, create_timm_model, load_weights_file, resolve_backbone
from anomalib_hyperbolic.learning_types import SupervisedLearningType
from anomalib_hyperbolic.metrics import LogitDiagnostics
from anomalib_hyperbolic.models.components import PortableCheckpointMixin, backbone_pre_processor

__all__ = ["UNetSegmentation", "UNetSegmentationModel", "load_encoder_weights"]

logger = logging.getLogger(__name__)


def load_encoder_weights(encoder: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a timm classifier's state dict into the ``features_only`` timm model of an smp encoder.

    Keys the encoder lacks (the classifier head: ``conv_head``, ``bn2``, ``classifier``) are skipped;
    every encoder tensor must be in ``state`` with its shape.

    Raises:
        ValueError: ``state`` misses encoder tensors or holds them with other shapes.
    """
    own = encoder.state_dict()
    missing = [key for key in own if key not in state]
    mismatched = [
        f"{key} {tuple(state[key].shape)} vs {tuple(own[key].shape)}"
        for key in own
        if key in state and state[key].shape != own[key].shape
    ]
    if missing or mismatched:
        msg = (
            f"Backbone weights {source} do not fit the U-Net encoder: {len(missing)} of its {len(own)} tensors "
            f"missing (e.g. {missing[:3]}), {len(mismatched)} with other shapes (e.g. {mismatched[:3]})."
        )
        raise ValueError(msg)
    encoder.load_state_dict({key: state[key] for key in own}, strict=True)
    logger.info("U-Net encoder loaded from %s (%d unused tensors skipped).", source, len(state) - len(own))


class UNetSegmentationModel(nn.Module):
    """``smp.Unet`` with one output channel: logits in training, map and score at inference.

    Args:
        arch: timm architecture of the encoder (smp's ``tu-<arch>`` universal encoder).
        decoder_channels: U-Net decoder widths, one per encoder level (5).
        score_top_k: The image score is the mean of the ``score_top_k`` largest map values (1: the max).
    """

    def __init__(self, arch: str, decoder_channels: Sequence[int], score_top_k: int) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        self.unet = smp.Unet(
            encoder_name=f"tu-{arch}", encoder_weights=None, decoder_channels=tuple(decoder_channels), classes=1
        )
        self.score_top_k = score_top_k

    @property
    def encoder(self) -> nn.Module:
        """The timm ``features_only`` model inside smp's encoder (the backbone weights go here)."""
        return self.unet.encoder.model

    def forward(self, images: torch.Tensor) -> torch.Tensor | InferenceBatch:
        """Logits ``(B, 1, H, W)`` in training; else ``anomaly_map`` (sigmoid, ``(B, 1, H, W)``) and ``pred_score``."""
        logits = self.unet(images)
        if self.training:
            return logits
        anomaly_map = torch.sigmoid(logits)
        flat = anomaly_map.flatten(1)
        top_k = min(self.score_top_k, flat.shape[1])
        pred_score = flat.amax(dim=1) if top_k == 1 else flat.topk(top_k, dim=1).values.mean(dim=1)
        return InferenceBatch(pred_score=pred_score, anomaly_map=anomaly_map)


class UNetSegmentation(PortableCheckpointMixin, AnomalibModule):
    """Supervised U-Net anomaly segmentation, trained on the training split's ``gt_mask``.

    Every training batch must carry ``gt_mask``: the defect masks of the anomalous images and
    all-zero masks of the normal ones, as anomalib's segmentation datasets give them (for example
    ``FewShotAnomalies(MVTecAD(...), num_anomalies=K)``). Normal-only batches train towards an
    all-zero map (their Dice term is zero).

    Args:
        backbone: timm name or local weights file of the encoder (default ``tf_efficientnet_lite0``;
            ``anomalib-hyperbolic provision-backbone --output FILE`` writes ImageNet Lite0 weights
            offline). A name loads timm's pretrained weights (hub or ``HF_HOME`` cache).
        pre_trained: Load the backbone weights into the encoder; ``False`` keeps it random.
        decoder_channels: U-Net decoder widths, five of them (smp's default ``(256, 128, 64, 32, 16)``).
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        bce_weight: Weight of the pixel-wise binary cross-entropy term.
        dice_weight: Weight of the (batch-wise, binary) Dice term.
        score_top_k: Image score: mean of the ``score_top_k`` largest anomaly-map values (1: the max).
        pre_processor: Pre-processor instance or flag for the default (resize 256, normalised with the
            encoder's mean/std from timm: 0.5 for EfficientNet-Lite0, ImageNet's for ResNets).
        post_processor: Post-processor instance or flag for the default (anomalib's ``PostProcessor``).
        evaluator: Evaluator instance or flag for the default.
        visualizer: Visualizer instance or flag for the default.

    Raises:
        ValueError: a weight is negative or both are zero, ``score_top_k < 1``, or the backbone
            weights do not fit the encoder.

    Logged per epoch besides ``train_loss``: HADNet's logit diagnostics of the training batches
    (:class:`~anomalib_hyperbolic.metrics.LogitDiagnostics`, ``train_iou_at_0.5``, ``train_logit_*``).
    """

    #: The raw ``anomaly_map`` is a probability (sigmoid of the logits): 0.5 is a meaningful threshold.
    anomaly_map_is_probability = True

    def __init__(
        self,
        backbone: str | os.PathLike = LITE0_ARCH,
        pre_trained: bool = True,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        lr: float = 1e-3,
        weight_decay: float = 1e-5,
        bce_weight: float = 1.0,
        dice_weight: float = 1.0,
        score_top_k: int = 1,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        super().__init__(
            # the default pre-processor normalises with the encoder's statistics
            pre_processor=self.configure_pre_processor(backbone=backbone) if pre_processor is True else pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        if bce_weight < 0 or dice_weight < 0 or bce_weight + dice_weight == 0:
            msg = f"bce_weight and dice_weight must be >= 0 and not both 0, got {bce_weight} and {dice_weight}."
            raise ValueError(msg)
        if score_top_k < 1:
            msg = f"score_top_k must be >= 1, got {score_top_k}."
            raise ValueError(msg)
        spec = resolve_backbone(backbone)
        self.model = UNetSegmentationModel(spec.arch, decoder_channels, score_top_k)
        if pre_trained:
            if spec.weights_file is not None:
                state, source = load_weights_file(spec.weights_file), repr(str(spec.weights_file))
            else:
                state, source = create_timm_model(spec.arch, pre_trained=True).state_dict(), f"timm {spec.arch!r}"
            load_encoder_weights(self.model.encoder, state, source)
        self.lr = lr
        self.weight_decay = weight_decay
        self.bce_weight = bce_weight
        self.dice_weight = dice_weight
        from segmentation_models_pytorch.losses import DiceLoss, SoftBCEWithLogitsLoss

        # The mean pixel-wise BCE (no ignored label), and smp's binary Dice: one soft Dice over every pixel of
        # the batch (dims (0, 2)), ``1 - 2 |P M| / (|P| + |M|)`` with the denominator clamped at 1e-6 and 0 for a
        # batch without defect pixels. Identical to the earlier hand-written loss for 0/1 masks, up to float
        # rounding: smp takes the probabilities as exp(logsigmoid) and the intersection as (|P| + |M| - |P - M|) / 2.
        self.bce_loss = SoftBCEWithLogitsLoss(ignore_index=None)
        self.dice_loss = DiceLoss(mode="binary", from_logits=True, smooth=0.0, eps=1e-6)
        self.logit_diagnostics = LogitDiagnostics()  # observes the training logits (no persistent state)

    @staticmethod
    def training_masks(batch: Batch) -> torch.Tensor:
        """The batch's ``gt_mask`` as float ``(B, 1, H, W)`` in ``{0, 1}``.

        Raises:
            ValueError: the batch has no ``gt_mask`` (classification-only data).
        """
        if batch.gt_mask is None:
            msg = (
                "UNetSegmentation trains on masks, but the training batch has no `gt_mask`. Use a segmentation "
                "datamodule whose training split holds defect images with masks, e.g. "
                "FewShotAnomalies(MVTecAD(...), num_anomalies=K)."
            )
            raise ValueError(msg)
        masks = (batch.gt_mask > 0).float()
        return masks.unsqueeze(1) if masks.ndim == 3 else masks

    def segmentation_loss(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """``bce_weight * BCE + dice_weight * (1 - Dice)``; Dice over the whole batch, 0 for an all-normal batch."""
        return self.bce_weight * self.bce_loss(logits, masks) + self.dice_weight * self.dice_loss(logits, masks)

    def training_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """BCE + Dice between the U-Net logits and the batch's masks."""
        del args, kwargs
        masks = self.training_masks(batch).to(batch.image.device)
        logits = self.model(batch.image)
        loss = self.segmentation_loss(logits, masks)
        self.log("train_loss", loss.item(), on_epoch=True, prog_bar=True, logger=True)
        self.logit_diagnostics.update(logits, masks)
        return {"loss": loss}

    def on_train_epoch_end(self) -> None:
        """Log the epoch's logit diagnostics (``train_iou_at_0.5``, ``train_logit_*``) once."""
        if self.logit_diagnostics.update_called:
            diagnostics = self.logit_diagnostics.compute()
            self.log_dict({f"train_{name}": value for name, value in diagnostics.items()}, logger=True)
            self.logit_diagnostics.reset()

    def validation_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """Anomaly maps (sigmoid of the logits) and image scores for the validation batch."""
        del args, kwargs
        predictions = self.model(batch.image)
        return batch.update(**predictions._asdict())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam over encoder and decoder."""
        return torch.optim.Adam(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """No gradient clipping, no sanity validation."""
        return {"gradient_clip_val": 0, "num_sanity_val_steps": 0}

    @property
    def learning_type(self) -> SupervisedLearningType:  # type: ignore[override]
        """``"supervised"``: trained on masks (see :mod:`anomalib_hyperbolic.learning_types`)."""
        return SupervisedLearningType.SUPERVISED

    def configure_post_processor(self) -> PostProcessor:
        """Anomalib's ``PostProcessor`` (anomalib has no default for non-one-class models)."""
        return PostProcessor()

    @classmethod
    def configure_pre_processor(
        cls, image_size: tuple[int, int] | None = None, backbone: str | os.PathLike | None = None
    ) -> PreProcessor:
        """Resize to ``image_size`` (default 256 x 256; sides must be multiples of 32), normalise for ``backbone``.

        The mean/std are timm's for the encoder's architecture (smp's ``tu-<arch>`` encoder is timm's
        model: :func:`~anomalib_hyperbolic.backbones.backbone_normalization`); ``backbone`` defaults to
        the U-Net's ``tf_efficientnet_lite0`` (mean = std = 0.5).
        """
        image_size = image_size or (256, 256)
        if any(side % 32 for side in image_size):
            msg = f"UNetSegmentation needs image sides that are multiples of 32 (U-Net depth 5), got {image_size}."
            raise ValueError(msg)
        return backbone_pre_processor(image_size, LITE0_ARCH if backbone is None else backbone)
