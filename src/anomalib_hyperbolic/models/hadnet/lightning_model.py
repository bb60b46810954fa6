"""HADNet as an anomalib model: ``anomalib train --model HADNet``.

Training has two stages:

1. Initialisation (``on_train_start``, once; skipped when a checkpoint already holds it): HST
   feature statistics from normal images, the Poincaré hyperplanes of every layer fitted to
   anomaly masks, then the AFSS loss of every feature map accumulated over ``init_batches``
   anomalous batches and the ``r`` lowest-loss maps fixed per layer (eqs. 8-10).
2. Ordinary epochs: reconstruction networks + ARD discriminator trained on anomalous inputs.

Logged per epoch (observation only, training is unchanged): the losses (``train_loss``,
``train_seg_loss``, ``train_recon_loss``) and the discriminator's logit diagnostics
(:class:`~anomalib_hyperbolic.metrics.LogitDiagnostics`, keys ``train_iou_at_0.5``,
``train_logit_<defect|background|normal>_<mean|q05|q50|q95|above_0>``, ``train_pixels_<group>``):
the IoU at probability 0.5 of the training masks and where the logits of defect pixels, the
background of defect images and normal images lie, accumulated over the epoch and logged once.

The frozen backbone's levels of plain training images (not colour-jittered, no synthetic anomaly)
are computed once and reused (``cache_features``, :class:`~anomalib_hyperbolic.feature_cache.FeatureCache`),
in stage 1 and in the epochs; jittered and synthetic images are always computed live.

Anomalous inputs ``G_n`` are synthetic (anomalib's :class:`PerlinAnomalyGenerator`, DRAEM-style,
optional texture folder) in ``training_mode="unsupervised"``, or the real defect images and masks
of the training split in ``training_mode="supervised"`` (with ``supervised_synthesis``, the
training normals also become synthetic anomalies, with their clean twin as reconstruction target).

Options of this package beyond the paper (issue 32's design study; every default is the paper's
path): ``seg_loss``, ``dice_per_image``, ``lr_schedule``, ``discriminator_input``, ``discriminator_head``,
``train_backbone`` and ``supervised_synthesis`` (``defaults.py`` says why each exists).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from anomalib import LearningType
from anomalib.data import Batch
from anomalib.data.utils.generators import PerlinAnomalyGenerator
from anomalib.metrics import AUROC, Evaluator, F1Score
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch import seed_everything
from lightning.pytorch.utilities.seed import isolate_rng
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch import nn
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from anomalib_hyperbolic.distributed import DistributedStateMixin, broadcast, shard, world_size
from anomalib_hyperbolic.feature_cache import FeatureCache
from anomalib_hyperbolic.learning_types import SupervisedLearningType
from anomalib_hyperbolic.metrics import CategoryIoU, LogitDiagnostics, MIoU
from anomalib_hyperbolic.models.components import FixedPixelThresholdPostProcessor, PortableCheckpointMixin
from anomalib_hyperbolic.openvino_precision import F32ScopesExportMixin

from .defaults import DEFAULTS
from .loss import HADNetLoss
from .torch_model import HADNetModel, StageOneBatch

logger = logging.getLogger(__name__)

__all__ = ["HADNet"]


class BackboneLevels(nn.Module):
    """HADNet's frozen backbone on *normalised* images, one feature map per layer (the feature cache's extractor).

    :meth:`HADNetModel.extract` is ``BackboneLevels(normalize(images))``; the cache keys the normalised
    images, so the normalisation enters the key and the backbone (weights, layers) the fingerprint.
    The backbone is shared with the model, not copied (the wrapper lives outside the module tree).
    """

    def __init__(self, feature_extractor: nn.Module, layers: Sequence[str]) -> None:
        super().__init__()
        self.feature_extractor = feature_extractor
        self.layers = list(layers)

    @torch.no_grad()
    def forward(self, normalised: torch.Tensor) -> list[torch.Tensor]:
        """Backbone levels ``phi_i`` of normalised images."""
        features = self.feature_extractor(normalised)
        return [features[layer] for layer in self.layers]

    def extra_repr(self) -> str:
        """The layers, so that they enter the cache's fingerprint."""
        return f"layers={self.layers}"


class HADNet(DistributedStateMixin, F32ScopesExportMixin, PortableCheckpointMixin, AnomalibModule):
    """HADNet: hyperbolic geometry enhanced feature filtering network (Feng et al., Sci. Rep. 2025).

    Every default is in :data:`~anomalib_hyperbolic.models.hadnet.defaults.DEFAULTS`, each with its
    source (the paper, RealNet, or this package's choice where both are silent).

    Args:
        backbone: timm name or local weights file of the frozen backbone (default: RealNet's
            WideResNet-50 with torchvision's ImageNet weights, ``wide_resnet50_2.tv_in1k``).
        layers: Backbone layers (RealNet: ``layer1``-``layer4``).
        pre_trained: Load pretrained backbone weights.
        num_selected: AFSS ``r`` per layer (or one int); RealNet's 256/512/512/256 for wide_resnet50_2.
        num_residuals: ARD ``s`` (even, <= sum of ``r``); RealNet's 256 (GMP) + 256 (GAP).
        rho: Curvature of the Poincaré ball (paper: 0.01; 0 = Euclidean).
        clip_radius: Feature clipping radius before the exponential map.
        hidden_ratio: Width of each reconstruction autoencoder relative to its ``r``.
        discriminator_widths: Conv widths of the segmentation head.
        score_pool_size: Box filter size before taking the max of the map as image score.
        selection: ``"afss"`` (eqs. 8-10) or ``"random"`` (ablation RDR: random maps).
        residual_selection: ``"ard"`` (eqs. 11-13) or ``"all"`` (ablation: every residual).
        afss_target: ``"hyperplane"`` (HADNet: hyperbolic distance map) or ``"mask"`` (RealNet AFS).
        training_mode: ``"unsupervised"`` (normal images + synthetic anomalies) or ``"supervised"``
            (training images carry real anomaly masks ``gt_mask``).
        anomaly_source_path: Optional texture folder for the synthetic anomalies (e.g. DTD).
        anomaly_probability: Share of training images turned anomalous (unsupervised mode).
        blend_factor: Blend range of the synthetic anomalies.
        color_jitter_p: Probability of ColorJitter per training image (paper: 0.25).
        color_jitter: Brightness / contrast / saturation strengths of that ColorJitter.
        supervised_synthesis: Supervised mode: turn ``anomaly_probability`` of the training normals (images
            without defect pixels) into Perlin anomalies, whose clean twins are the reconstruction targets
            (the real defects keep their masks and the masked reconstruction loss). Epochs only; stage 1
            sees the real defects as before. Default ``False``.
        cache_features: Compute the frozen backbone's levels of each plain training image (not
            colour-jittered, no synthetic anomaly) once and reuse them in stage 1 and later epochs
            (:class:`~anomalib_hyperbolic.feature_cache.FeatureCache`); jittered and synthetic images
            are computed live and never stored. The model and its updates are unchanged (features
            agree to the last bits). Default ``True``; must be ``False`` with ``train_backbone``.
        train_backbone: Fine-tune the backbone with the heads (same Adam and learning rate; its BatchNorm
            stays in eval mode). The HST statistics and the AFSS selection stay those of stage 1.
        lr: Adam learning rate (paper: 1e-3).
        lr_step_size: Epochs between learning-rate decays (step decay).
        lr_gamma: Learning-rate decay factor.
        lr_schedule: ``"step"`` (``StepLR(lr_step_size, lr_gamma)`` per epoch) or ``"cosine"`` (cosine decay
            from ``lr`` to 0 over the run's optimiser steps, ``trainer.estimated_stepping_batches``).
        init_batches: Batches used for the HST statistics and the AFSS scores.
        hst_steps: Optimisation steps fitting the Poincaré hyperplanes before AFSS.
        hst_lr: Learning rate of those steps.
        seed: Seed of the random selection ablation.
        seg_weight: Weight of the segmentation loss.
        dice_weight: Weight of the Dice term in it.
        recon_weight: Weight of the reconstruction loss.
        seg_loss: Pixel term of the segmentation loss: ``"bce_dice"``, ``"balanced_bce_dice"`` or ``"focal_dice"``
            (:class:`~anomalib_hyperbolic.models.hadnet.loss.HADNetLoss`).
        focal_alpha: Focal loss weight of the positives (``"focal_dice"``).
        focal_gamma: Focal loss exponent (``"focal_dice"``).
        dice_per_image: Dice as the mean over defect images instead of one Dice over the batch.
        discriminator_input: ``"ranked_residuals"`` (the paper's ARD ``Lambda``) or ``"residuals_and_features"``
            (plus the selected features and signed residuals in a fixed channel order).
        discriminator_head: ``"plain"`` or ``"realnet"`` (residual stack + a x2 decoder stage).
        context_width: With ``"residuals_and_features"``: a learned 1x1 projection of each layer's context to
            this many channels before upsampling (a cheaper step); ``None``: unprojected.
        mean: Image normalisation mean, applied inside the model; ``None``: the paper's values for the
            paper's WideResNet-50 backbone, the backbone's own (timm's, e.g. 0.5 for EfficientNet-Lite0)
            for any other (:func:`~anomalib_hyperbolic.models.hadnet.torch_model.image_normalization`).
        std: Image normalisation std; ``None`` as for ``mean``.
        pixel_threshold: ``None``: anomalib's pixel threshold, fitted on the validation images; a number:
            that fixed map value (a probability, e.g. 0.5) decides ``pred_mask``.
        pre_processor: Pre-processor (default: resize to 256x256, no normalisation).
        post_processor: Post-processor.
        evaluator: Evaluator (default adds pixel mIoU to anomalib's metrics).
        visualizer: Visualizer.
    """

    #: The raw ``anomaly_map`` is a probability (sigmoid of the discriminator's logits): 0.5 is meaningful.
    anomaly_map_is_probability = True

    def __init__(
        self,
        backbone: str | os.PathLike = DEFAULTS.backbone,
        layers: Sequence[str] = DEFAULTS.layers,
        pre_trained: bool = DEFAULTS.pre_trained,
        num_selected: int | Sequence[int] = DEFAULTS.num_selected,
        num_residuals: int = DEFAULTS.num_residuals,
        rho: float = DEFAULTS.rho,
        clip_radius: float = DEFAULTS.clip_radius,
        hidden_ratio: float = DEFAULTS.hidden_ratio,
        discriminator_widths: Sequence[int] = DEFAULTS.discriminator_widths,
        score_pool_size: int = DEFAULTS.score_pool_size,
        selection: str = DEFAULTS.selection,
        residual_selection: str = DEFAULTS.residual_selection,
        afss_target: str = DEFAULTS.afss_target,
        training_mode: str = DEFAULTS.training_mode,
        anomaly_source_path: str | Path | None = DEFAULTS.anomaly_source_path,
        anomaly_probability: float = DEFAULTS.anomaly_probability,
        blend_factor: float | tuple[float, float] = DEFAULTS.blend_factor,
        color_jitter_p: float = DEFAULTS.color_jitter_p,
        color_jitter: float = DEFAULTS.color_jitter,
        supervised_synthesis: bool = DEFAULTS.supervised_synthesis,
        cache_features: bool = DEFAULTS.cache_features,
        train_backbone: bool = DEFAULTS.train_backbone,
        lr: float = DEFAULTS.lr,
        lr_step_size: int = DEFAULTS.lr_step_size,
        lr_gamma: float = DEFAULTS.lr_gamma,
        lr_schedule: str = DEFAULTS.lr_schedule,
        init_batches: int = DEFAULTS.init_batches,
        hst_steps: int = DEFAULTS.hst_steps,
        hst_lr: float = DEFAULTS.hst_lr,
        seed: int = DEFAULTS.seed,
        seg_weight: float = DEFAULTS.seg_weight,
        dice_weight: float = DEFAULTS.dice_weight,
        recon_weight: float = DEFAULTS.recon_weight,
        seg_loss: str = DEFAULTS.seg_loss,
        focal_alpha: float = DEFAULTS.focal_alpha,
        focal_gamma: float = DEFAULTS.focal_gamma,
        dice_per_image: bool = DEFAULTS.dice_per_image,
        discriminator_input: str = DEFAULTS.discriminator_input,
        discriminator_head: str = DEFAULTS.discriminator_head,
        context_width: int | None = DEFAULTS.context_width,
        mean: Sequence[float] | None = DEFAULTS.mean,
        std: Sequence[float] | None = DEFAULTS.std,
        pixel_threshold: float | None = DEFAULTS.pixel_threshold,
        pre_processor: nn.Module | bool = True,
        post_processor: nn.Module | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        if pixel_threshold is not None:
            if post_processor is not True:
                msg = (
                    "HADNet: `pixel_threshold` sets the threshold of the default post-processor; pass either "
                    f"`pixel_threshold` or `post_processor` ({post_processor!r}), not both."
                )
                raise ValueError(msg)
            post_processor = FixedPixelThresholdPostProcessor(pixel_threshold)
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        choices = {
            "selection": (selection, {"afss", "random"}),
            "afss_target": (afss_target, {"hyperplane", "mask"}),
            "training_mode": (training_mode, {"unsupervised", "supervised"}),
            "lr_schedule": (lr_schedule, {"step", "cosine"}),
        }
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                msg = f"`{name}` must be one of {sorted(allowed)}, got {value!r}."
                raise ValueError(msg)
        for name, value in {"anomaly_probability": anomaly_probability, "color_jitter_p": color_jitter_p}.items():
            if not 0 <= value <= 1:
                msg = f"`{name}` must be in [0, 1], got {value!r}."
                raise ValueError(msg)
        for name, value in {"init_batches": init_batches, "lr_step_size": lr_step_size}.items():
            if not isinstance(value, int) or value < 1:
                msg = f"`{name}` must be an int >= 1, got {value!r}."
                raise ValueError(msg)
        if not isinstance(hst_steps, int) or hst_steps < 0:
            msg = f"`hst_steps` must be an int >= 0, got {hst_steps!r}."
            raise ValueError(msg)
        if train_backbone and cache_features:
            msg = (
                "`train_backbone=True` needs `cache_features=False`: the feature cache stores the backbone's "
                "levels once, but a backbone in training changes them every step."
            )
            raise ValueError(msg)

        self.model = HADNetModel(
            backbone=backbone,
            layers=layers,
            pre_trained=pre_trained,
            num_selected=num_selected,
            num_residuals=num_residuals,
            rho=rho,
            clip_radius=clip_radius,
            hidden_ratio=hidden_ratio,
            discriminator_widths=discriminator_widths,
            score_pool_size=score_pool_size,
            residual_selection=residual_selection,
            mean=mean,
            std=std,
            discriminator_input=discriminator_input,
            discriminator_head=discriminator_head,
            train_backbone=train_backbone,
            context_width=context_width,
        )
        self.loss = HADNetLoss(
            seg_weight=seg_weight,
            dice_weight=dice_weight,
            recon_weight=recon_weight,
            seg_loss=seg_loss,
            focal_alpha=focal_alpha,
            focal_gamma=focal_gamma,
            dice_per_image=dice_per_image,
        )
        self.selection = selection
        self.afss_target = afss_target
        self.training_mode = training_mode
        self.lr = lr
        self.lr_step_size = lr_step_size
        self.lr_gamma = lr_gamma
        self.lr_schedule = lr_schedule
        self.supervised_synthesis = supervised_synthesis
        self.init_batches = init_batches
        self.hst_steps = hst_steps
        self.hst_lr = hst_lr
        self.seed = seed
        source = str(anomaly_source_path) if anomaly_source_path else None
        self.augmenter = PerlinAnomalyGenerator(
            anomaly_source_path=source, probability=anomaly_probability, blend_factor=blend_factor
        )
        # AFSS and the hyperplanes need anomalous images only (RealNet drops the normal type there).
        self.init_augmenter = PerlinAnomalyGenerator(
            anomaly_source_path=source, probability=1.0, blend_factor=blend_factor
        )
        strength = color_jitter
        self.color_jitter = v2.RandomApply(
            [v2.ColorJitter(brightness=strength, contrast=strength, saturation=strength)], p=color_jitter_p
        )
        levels = BackboneLevels(self.model.feature_extractor, self.model.layers)
        self.feature_cache = FeatureCache(levels) if cache_features else None
        # observes the training logits; no persistent state, so checkpoints and exports are unchanged
        self.logit_diagnostics = LogitDiagnostics()

    # ------------------------------------------------------------------ anomalib hooks
    @classmethod
    def configure_pre_processor(cls, image_size: tuple[int, int] | None = None) -> PreProcessor:
        """Resize to 256x256 (paper); images stay in [0, 1] (the model normalises internally)."""
        image_size = image_size or DEFAULTS.image_size
        return PreProcessor(transform=v2.Compose([v2.Resize(image_size, antialias=True)]))

    @staticmethod
    def configure_evaluator() -> Evaluator:
        """Anomalib's default metrics plus HADNet's IoUs (eqs. 14-15): pooled binary and mean over defect types."""
        test_metrics = [
            AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
            F1Score(fields=["pred_label", "gt_label"], prefix="image_"),
            AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
            F1Score(fields=["pred_mask", "gt_mask"], prefix="pixel_", strict=False),
            MIoU(fields=["pred_mask", "gt_mask"], prefix="pixel_", strict=False),
            CategoryIoU(prefix="pixel_", strict=False),
        ]
        return Evaluator(test_metrics=test_metrics)

    @classmethod
    def configure_post_processor(cls) -> PostProcessor:
        """Anomalib's default post-processor."""
        return PostProcessor()

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """No gradient clipping, no sanity validation (the AFSS indices are fixed at train start)."""
        return {"gradient_clip_val": 0, "num_sanity_val_steps": 0}

    @property
    def learning_type(self) -> LearningType | SupervisedLearningType:  # type: ignore[override]
        """``ONE_CLASS`` when unsupervised (normal images only); ``"supervised"`` with ``training_mode="supervised"``.

        The supervised mode trains on labelled defect images and their masks: not anomalib's ``FEW_SHOT``,
        whose models ``Engine.fit`` does not train (see :mod:`anomalib_hyperbolic.learning_types`).
        """
        if self.training_mode == "supervised":
            return SupervisedLearningType.SUPERVISED
        return LearningType.ONE_CLASS

    def configure_optimizers(self) -> tuple[list[torch.optim.Optimizer], list[Any]]:
        """Adam (paper: lr 1e-3) over reconstruction nets and discriminator (and the backbone with ``train_backbone``).

        ``lr_schedule="step"``: the paper's step decay, ``StepLR(lr_step_size, lr_gamma)`` per epoch.
        ``"cosine"`` (this package's option): ``CosineAnnealingLR`` stepped per optimiser step over
        ``trainer.estimated_stepping_batches``, from ``lr`` to 0 whatever ``max_epochs`` is.
        """
        params = list(self.model.reconstructors.parameters()) + list(self.model.discriminator.parameters())
        if self.model.train_backbone:
            params += list(self.model.feature_extractor.parameters())
        optimizer = torch.optim.Adam(params, lr=self.lr)
        if self.lr_schedule == "cosine":
            steps = max(1, int(self.trainer.estimated_stepping_batches))
            cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
            return [optimizer], [{"scheduler": cosine, "interval": "step"}]
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=self.lr_step_size, gamma=self.lr_gamma)
        return [optimizer], [scheduler]

    # ------------------------------------------------------------------ data helpers
    def _images(self, batch: Batch) -> torch.Tensor:
        return batch.image.to(self.device, torch.float32)

    def _real_masks(self, batch: Batch) -> torch.Tensor:
        if batch.gt_mask is None:
            msg = (
                "HADNet training_mode='supervised' needs training batches with `gt_mask` (defect images "
                "with masks in the training split); use training_mode='unsupervised' for normal-only data."
            )
            raise ValueError(msg)
        masks = batch.gt_mask.to(self.device, torch.float32)
        return masks.unsqueeze(1) if masks.ndim == 3 else masks

    def _jitter(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``self.color_jitter`` (``v2.RandomApply``) on each image, and the ``(B,)`` mask of the jittered ones.

        The draws are RandomApply's own, in its order: per image one ``torch.rand(1)``, the image kept
        when it is ``>= p``, else the ColorJitter applied (drawing its factors) before the next image's
        ``torch.rand(1)``. The random stream, so training, is that of calling RandomApply per image.
        """
        jittered = []
        outputs = []
        for image in images:
            applied = not bool(torch.rand(1) >= self.color_jitter.p)
            if applied:
                for transform in self.color_jitter.transforms:
                    image = transform(image)
            outputs.append(image)
            jittered.append(applied)
        return torch.stack(outputs), torch.tensor(jittered, dtype=torch.bool, device=images.device)

    def _anomalous(
        self, batch: Batch, init: bool = False, jitter: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """``(G_n, mask, I_n or None, jittered)``: synthetic anomalies with their normal twin, or real ones.

        ColorJitter (``jitter=True``, training epochs) is applied before the synthesis, so the
        normal twin and the anomalous image share it; ``jittered`` (``(B,)`` bool) marks the images it changed.
        """
        images = self._images(batch)
        if jitter:
            images, jittered = self._jitter(images)
        else:
            jittered = torch.zeros(len(images), dtype=torch.bool, device=images.device)
        if self.training_mode == "supervised":
            masks = self._real_masks(batch)
            if self.supervised_synthesis and not init:
                return (*self._synthesise_on_normals(images, masks), jittered)
            return images, masks, None, jittered
        augmenter = self.init_augmenter if init else self.augmenter
        anomalous, masks = augmenter(images)
        return anomalous.clamp(0, 1), (masks > 0.5).float(), images, jittered

    def _synthesise_on_normals(
        self, images: torch.Tensor, masks: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(G_n, mask, I_n)`` of a supervised batch with ``supervised_synthesis``.

        The images without defect pixels go through the Perlin generator (``anomaly_probability`` of
        them become anomalous, with their Perlin mask); their twin ``I_n`` is the clean image. A real
        defect image keeps its mask and is its own twin (the loss then masks its reconstruction term).
        """
        normal_rows = masks.flatten(1).amax(dim=1) == 0
        anomalous, masks = images.clone(), masks.clone()
        if bool(normal_rows.any()):
            synthetic, synthetic_masks = self.augmenter(images[normal_rows])
            anomalous[normal_rows] = synthetic.clamp(0, 1)
            masks[normal_rows] = (synthetic_masks > 0.5).float().view(-1, *masks.shape[1:])
        return anomalous, masks, images

    @staticmethod
    def _plain(anomalous: torch.Tensor, normal: torch.Tensor | None, jittered: torch.Tensor) -> torch.Tensor:
        """``(B,)`` mask of the anomalous inputs that are plain training images (fixed backbone levels).

        Not jittered, and (unsupervised) left unchanged by the Perlin generator, which keeps
        ``1 - anomaly_probability`` of the images as they are: such an input is its normal twin.
        """
        plain = ~jittered
        if normal is not None:
            plain = plain & (anomalous == normal).flatten(1).all(dim=1)
        return plain

    def _levels(self, images: torch.Tensor, cacheable: torch.Tensor | bool = True) -> list[torch.Tensor]:
        """``HADNetModel.extract(images)``, the ``cacheable`` rows through the feature cache.

        Without gradients, except a training ``train_backbone`` model's (which has no cache).

        Only plain training images may be ``cacheable`` (a ``(B,)`` mask or one bool for all):
        their levels are a fixed function of the image. The other rows are computed live and never
        stored (a jittered or synthetic image does not come back). Without a cache, or with one that
        switched itself off, the whole batch is computed live as before.
        """
        cache = self.feature_cache
        rows = torch.as_tensor(cacheable, dtype=torch.bool, device=images.device).expand(len(images))
        if cache is None or not cache.enabled or not bool(rows.any()):
            return self.model.extract(images)
        normalised = self.model.normalize(images)
        if bool(rows.all()):
            return list(cache(normalised))
        cached = cache(normalised[rows])
        live = self.model.extract(images[~rows])
        levels = []
        for hit, fresh in zip(cached, live, strict=True):
            level = hit.new_empty((len(images), *hit.shape[1:]))
            level[rows] = hit
            level[~rows] = fresh.to(level.dtype)
            levels.append(level)
        return levels

    def _cycle(self, loader: Any, count: int) -> Iterator[Batch]:
        produced = 0
        while produced < count:
            empty = True
            for batch in loader:
                empty = False
                yield batch
                produced += 1
                if produced >= count:
                    return
            if empty:
                return

    # ------------------------------------------------------------------ stage 1: HST + AFSS
    def on_train_start(self) -> None:
        """Check transforms, then fit HST statistics / hyperplanes and fix the AFSS selection once.

        The feature cache is emptied first: stage 1's passes over plain training images fill it.
        """
        if self.pre_processor and any(
            isinstance(t, v2.Normalize) for t in getattr(self.pre_processor.transform, "transforms", [])
        ):
            msg = "HADNet normalises images itself (`mean`/`std`); remove Normalize from the pre-processor."
            raise ValueError(msg)
        if self.feature_cache is not None:
            self.feature_cache.clear()
        if bool(self.model.initialized):
            return
        # Stage 1 sees the same images and random draws on every rank and in one process: a loader of
        # global batches (the per-rank batch x the ranks) shuffled with `seed`, in a seeded RNG scope.
        # Its sums are split over the ranks (shard + all-reduce); the fits run on every rank alike and
        # rank 0's result is broadcast (so every rank holds one model whatever the kernels do).
        with isolate_rng():
            seed_everything(self.seed, verbose=False)
            self.initialize(self._initialization_loader())
        for name, tensor in [*self.model.named_buffers(), *self.model.named_parameters()]:
            if name.startswith(("feature_mean_", "feature_std_", "selected_", "hyperplane_", "initialized")):
                broadcast(tensor)

    def _initialization_loader(self) -> Any:
        """The training split in global batches, shuffled with ``seed`` (the trainer's loader without a datamodule)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None:
            return self.trainer.train_dataloader
        loader = datamodule.train_dataloader()
        return DataLoader(
            loader.dataset,
            batch_size=loader.batch_size * world_size(),
            shuffle=True,
            generator=torch.Generator().manual_seed(self.seed),
            num_workers=loader.num_workers,
            collate_fn=loader.collate_fn,
        )

    def initialize(self, loader: Any) -> None:
        """Stage 1 on batches of ``loader``: the torch model fits feature statistics, hyperplanes, AFSS selection."""
        model = self.model
        was_training = model.training
        model.eval()
        model.fit_feature_statistics(self._normal_levels(loader))
        if self.selection == "random":  # ablation RDR
            model.set_selection([torch.zeros(c) for c in model.channels], mode="random", seed=self.seed)
        else:
            if self.afss_target == "hyperplane" and self.hst_steps > 0:
                loss = model.fit_hyperplanes(self._stage_one_batches(loader, self.hst_steps, twins=False), self.hst_lr)
                if loss is not None:
                    logger.info("HADNet HST hyperplanes fitted (last loss %.4f).", loss)
            model.fit_selection(self._stage_one_batches(loader, self.init_batches, twins=True), self.afss_target)
        model.train(was_training)

    def _normal_levels(self, loader: Any) -> Iterator[list[torch.Tensor]]:
        """Backbone levels of ``init_batches`` training batches: this rank's share of each (all in one process)."""
        for batch in self._cycle(loader, self.init_batches):
            images = shard(self._images(batch))
            if len(images):
                yield self._levels(images)

    def _stage_one_batches(self, loader: Any, count: int, twins: bool) -> Iterator[StageOneBatch]:
        """``count`` anomalous batches (never jittered) as backbone levels; with ``twins``, their normal twins' too."""
        for batch in self._cycle(loader, count):
            anomalous, masks, normal, jittered = self._anomalous(batch, init=True)
            levels = self._levels(anomalous, self._plain(anomalous, normal, jittered))
            normal_levels = self._levels(normal) if twins and normal is not None else None
            yield StageOneBatch(levels, masks, normal_levels)

    # ------------------------------------------------------------------ stage 2
    def training_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """Reconstruction + ARD discriminator on anomalous inputs: the torch model's training forward, then the loss.

        Backbone levels of plain images come from the feature cache (``cache_features``); jittered
        and synthetic images are computed live.
        """
        del args, kwargs
        anomalous, masks, normal, jittered = self._anomalous(batch, jitter=True)
        normal_levels = None
        if normal is not None:  # the twins first: an input the Perlin generator left as it was hits their entry
            with torch.no_grad():  # targets only (a train_backbone model would otherwise keep their graph)
                normal_levels = self._levels(normal, cacheable=~jittered)
        levels = self._levels(anomalous, cacheable=self._plain(anomalous, normal, jittered))
        out = self.model(anomalous, levels=levels, normal_levels=normal_levels)
        # real anomalies have no normal twin: the reconstruction loss counts the pixels outside their masks
        recon_masks = masks if normal is None else None
        if normal is not None and self.training_mode == "supervised":  # supervised_synthesis
            # a real defect is its own twin (unchanged input): outside its mask only; synthetic ones: everywhere
            own_twin = (anomalous == normal).flatten(1).all(dim=1)
            recon_masks = masks * own_twin.view(-1, 1, 1, 1).to(masks.dtype)
        losses = self.loss(out["logits"], masks, out["reconstructions"], out["targets"], recon_masks)
        self.log("train_loss", losses["loss"].item(), on_epoch=True, prog_bar=True, logger=True)
        self.log("train_seg_loss", losses["seg_loss"].item(), on_epoch=True, logger=True)
        self.log("train_recon_loss", losses["recon_loss"].item(), on_epoch=True, logger=True)
        self.logit_diagnostics.update(out["logits"], masks)
        return {"loss": losses["loss"]}

    def on_train_epoch_end(self) -> None:
        """Log the epoch's logit diagnostics; end the feature cache's epoch (it may switch itself off)."""
        if self.logit_diagnostics.update_called:
            diagnostics = self.logit_diagnostics.compute()
            self.log_dict({f"train_{name}": value for name, value in diagnostics.items()}, logger=True)
            self.logit_diagnostics.reset()
        if self.feature_cache is not None:
            self.feature_cache.end_epoch()

    def validation_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """Predict scores and anomaly maps."""
        del args, kwargs
        predictions = self.model(batch.image)
        return batch.update(**predictions._asdict())
