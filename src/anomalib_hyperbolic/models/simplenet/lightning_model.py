"""SimpleNet as an anomalib model (``anomalib train --model SimpleNet``).

Paper: Liu, Zhou, Liu, Yang -- "SimpleNet: A Simple Network for Image Anomaly Detection and
Localization", CVPR 2023. Official code: https://github.com/DonaldRR/SimpleNet.

Example:
    >>> from anomalib.data import MVTecAD
    >>> from anomalib.engine import Engine
    >>> from anomalib_hyperbolic.models import SimpleNet
    >>> model = SimpleNet()  # paper defaults: wide_resnet50_2.tv_in1k layers 2+3, sigma 0.015, ...
    >>> Engine(max_epochs=160).fit(model, datamodule=MVTecAD(train_batch_size=4))  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

import torch
from anomalib import LearningType
from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch.utilities.types import STEP_OUTPUT

from anomalib_hyperbolic.distributed import DistributedStateMixin, shard_loader
from anomalib_hyperbolic.feature_cache import FeatureCache, image_keys
from anomalib_hyperbolic.models.components import PortableCheckpointMixin, backbone_pre_processor
from anomalib_hyperbolic.openvino_precision import F32ScopesExportMixin

from .defaults import ADAPTOR_OPTIMIZERS, DEFAULTS, require_choice
from .extensions import build_model
from .loss import TruncatedL1Loss
from .synthetic_defects import SyntheticDefects, SyntheticFeaturePool

__all__ = ["SimpleNet"]

#: Whether this torch's Adam takes ``decoupled_weight_decay`` per parameter group (AdamW's decay).
_ADAM_DECOUPLES = "decoupled_weight_decay" in inspect.signature(torch.optim.Adam).parameters


class SimpleNet(DistributedStateMixin, F32ScopesExportMixin, PortableCheckpointMixin, AnomalibModule):
    """SimpleNet: adapted pretrained features, Gaussian-noise pseudo-anomalies, MLP discriminator.

    Every default is the paper's (section 4.3) or, where the paper is silent, the official code's:
    all of them live in :data:`~anomalib_hyperbolic.models.simplenet.defaults.DEFAULTS`. Training
    length (160 epochs) and batch size (4) are trainer/datamodule settings: see ``configs/simplenet.yaml``.

    Logged while training (epoch means): ``train_loss`` (eq. 8, summed over heads), ``p_true`` and
    ``p_fake`` (the official code's diagnostics: shares of normal features with ``D >= th_pos`` and
    of eq. (6) noisy features with ``D < -th_neg``) and, with ``synthetic_anomalies``,
    ``p_synthetic`` (the same share for the synthetic-defect features); while validating,
    ``val_p_true`` (``p_true`` of the normal validation images, features the model was not trained on).

    Args:
        backbone: timm name or local weights file. Default ``wide_resnet50_2.tv_in1k`` (torchvision
            V1 weights, as the official code; sigma 0.015 is calibrated to them).
        layers: Backbone levels. Default ``("layer2", "layer3")``.
        pre_trained: Load ImageNet backbone weights.
        patch_size: Neighbourhood ``p`` (eq. 1), odd. Default 3.
        pretrain_embed_dim: Per-level dims after neighbourhood pooling. Default 1536. A warning is
            given when the features span fewer dimensions than ``target_embed_dim`` (a level with
            ``C x p^2`` below ``pretrain_embed_dim``): the null-space trap.
        target_embed_dim: Feature dims ``C`` (eqs. 3-5). Default 1536.
        adaptor_bias: Bias in the adaptor (eq. 5). Default ``False`` (paper).
        noise_std: ``sigma`` of the Gaussian noise (eq. 6). Default 0.015.
        relative_noise: Multiply ``sigma`` by each feature's RMS entry. Default ``False`` (paper).
        feature_standardization: Standardise the features per channel with training-set statistics
            (computed once at the start of training) before the adaptor, so ``sigma`` is in units of
            each channel's spread. Default ``False`` (paper).
        synthetic_anomalies: Also give the discriminator, as anomalous features, the features under
            synthetic defects pasted on ``synthetic_copies`` copies of each batch image
            (:mod:`~anomalib_hyperbolic.models.simplenet.synthetic_defects`). Default ``False`` (paper).
        synthetic_anomaly_source: Folder of texture images for the synthetic defects; ``None`` uses
            the generator's own random patterns.
        synthetic_copies: Defective copies made of each batch image per step. Default 1.
        synthetic_coverage: A grid location's feature counts as anomalous when its cell is covered
            by a synthetic defect mask by more than this fraction, in ``[0, 1)``. Default 0.5.
        synthetic_per_head: With ``ensemble_size`` > 1, give every head its own ``synthetic_copies``
            defective copies of each image. Default ``False`` (all heads see the same copies).
        synthetic_pool_size: 0 (default): new synthetic defects, through the backbone, at every step.
            ``N``: ``N`` defective variants of each training image are drawn once (and every
            ``synthetic_pool_refresh`` epochs) and their features reused
            (:class:`~anomalib_hyperbolic.models.simplenet.synthetic_defects.SyntheticFeaturePool`).
        synthetic_pool_refresh: Epochs between redraws of the pool; 0 (default) keeps it for the fit.
        cache_features: Compute the frozen extractor's features of each training image once and
            reuse them in later epochs (:class:`~anomalib_hyperbolic.feature_cache.FeatureCache`);
            the model and its updates are unchanged (features agree to the last bits). Default ``True``.
        discriminator_hidden: Hidden width of the discriminator. Default 1024.
        negative_slope: LeakyReLU slope. Default 0.2.
        th_pos: ``th^+`` of eq. (7). Default 0.5.
        th_neg: ``th^-`` of eq. (7), as a positive margin. Default 0.5.
        adaptor_lr: Learning rate of the adaptor. Default 1e-4.
        discriminator_lr: Adam learning rate of the discriminator. Default 2e-4.
        weight_decay: Adam's (L2) weight decay of the discriminator, and of the adaptor with
            ``adaptor_optimizer="adam"``. Default 1e-5.
        adaptor_optimizer: ``"adamw"`` (official code: AdamW, decoupled weight decay
            ``adaptor_weight_decay``) or ``"adam"`` (the paper's text: Adam with ``weight_decay``,
            this package's choice before v2). Default ``"adamw"``.
        adaptor_weight_decay: AdamW's decoupled weight decay of the adaptor (``"adamw"`` only).
            Default 0.01 (AdamW's default, which the official code keeps).
        blur_sigma: Anomaly-map Gaussian blur. Default 4.
        image_score: ``"patch_max"`` (eq. 11) or ``"map_max"``.
        distance: ``"euclidean"`` (paper) or ``"poincare"`` (hyperbolic variant).
        curvature: Poincaré-ball curvature ``c`` (used with ``"poincare"``). Default 0.01.
        discriminator_input: With ``"poincare"``: ``"logmap"`` or ``"distance"``.
        ensemble_size: Independently initialised adaptor/discriminator heads on the one frozen
            feature extractor, each trained with its own loss on the same batches; the anomaly score
            is their mean. Default 1 (paper).
        pre_processor: Pre-processor instance or flag to use the default (resize 256, normalised with the
            backbone's mean/std from timm: ImageNet's for the default backbone, 0.5 for EfficientNet-Lite0).
        post_processor: Post-processor instance or flag to use the default.
        evaluator: Evaluator instance or flag to use the default.
        visualizer: Visualizer instance or flag to use the default.
    """

    #: OpenVINO's default precision (bf16 on CPUs with bf16 units) keeps the feature extractor in f32: run in
    #: bf16 it cost the trained mt_cpu model (Lite0, standardised features) 0.12 image AUROC; precision-report
    #: traced the loss to it (score deviation 1.80 f32 stds, 0.17 with the extractor in f32)
    openvino_f32_scopes = ("model.feature_extractor",)

    def __init__(
        self,
        backbone: str | os.PathLike = DEFAULTS.backbone,
        layers: Sequence[str] = DEFAULTS.layers,
        pre_trained: bool = DEFAULTS.pre_trained,
        patch_size: int = DEFAULTS.patch_size,
        pretrain_embed_dim: int = DEFAULTS.pretrain_embed_dim,
        target_embed_dim: int = DEFAULTS.target_embed_dim,
        adaptor_bias: bool = DEFAULTS.adaptor_bias,
        noise_std: float = DEFAULTS.noise_std,
        relative_noise: bool = DEFAULTS.relative_noise,
        feature_standardization: bool = DEFAULTS.feature_standardization,
        synthetic_anomalies: bool = DEFAULTS.synthetic_anomalies,
        synthetic_anomaly_source: str | os.PathLike | None = DEFAULTS.synthetic_anomaly_source,
        synthetic_copies: int = DEFAULTS.synthetic_copies,
        synthetic_coverage: float = DEFAULTS.synthetic_coverage,
        synthetic_per_head: bool = DEFAULTS.synthetic_per_head,
        synthetic_pool_size: int = DEFAULTS.synthetic_pool_size,
        synthetic_pool_refresh: int = DEFAULTS.synthetic_pool_refresh,
        cache_features: bool = DEFAULTS.cache_features,
        discriminator_hidden: int = DEFAULTS.discriminator_hidden,
        negative_slope: float = DEFAULTS.negative_slope,
        th_pos: float = DEFAULTS.th_pos,
        th_neg: float = DEFAULTS.th_neg,
        adaptor_lr: float = DEFAULTS.adaptor_lr,
        discriminator_lr: float = DEFAULTS.discriminator_lr,
        weight_decay: float = DEFAULTS.weight_decay,
        adaptor_optimizer: str = DEFAULTS.adaptor_optimizer,
        adaptor_weight_decay: float = DEFAULTS.adaptor_weight_decay,
        blur_sigma: float = DEFAULTS.blur_sigma,
        image_score: str = DEFAULTS.image_score,
        distance: str = DEFAULTS.distance,
        curvature: float = DEFAULTS.curvature,
        discriminator_input: str = DEFAULTS.discriminator_input,
        ensemble_size: int = DEFAULTS.ensemble_size,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        super().__init__(
            # the default pre-processor normalises with this backbone's statistics
            pre_processor=self.configure_pre_processor(backbone=backbone) if pre_processor is True else pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        for name, value in (
            ("adaptor_lr", adaptor_lr),
            ("discriminator_lr", discriminator_lr),
            ("weight_decay", weight_decay),
            ("adaptor_weight_decay", adaptor_weight_decay),
        ):
            if not value >= 0:
                msg = f"`{name}` must be >= 0, got {value!r}."
                raise ValueError(msg)
        require_choice("adaptor_optimizer", adaptor_optimizer, ADAPTOR_OPTIMIZERS)
        if adaptor_optimizer == "adamw" and not _ADAM_DECOUPLES:
            msg = (
                "adaptor_optimizer='adamw' needs torch.optim.Adam's `decoupled_weight_decay` (recent torch "
                f"releases; this is torch {torch.__version__}): upgrade torch or pass adaptor_optimizer='adam'."
            )
            raise RuntimeError(msg)
        if not isinstance(synthetic_per_head, bool) or (synthetic_per_head and not synthetic_anomalies):
            msg = (
                "`synthetic_per_head` must be a bool, and True only with synthetic_anomalies=True, "
                f"got {synthetic_per_head!r}."
            )
            raise ValueError(msg)
        self.model = build_model(
            backbone=backbone,
            layers=list(layers),
            pre_trained=pre_trained,
            patch_size=patch_size,
            pretrain_embed_dim=pretrain_embed_dim,
            target_embed_dim=target_embed_dim,
            adaptor_bias=adaptor_bias,
            noise_std=noise_std,
            relative_noise=relative_noise,
            feature_standardization=feature_standardization,
            discriminator_hidden=discriminator_hidden,
            negative_slope=negative_slope,
            blur_sigma=blur_sigma,
            image_score=image_score,
            distance=distance,
            curvature=curvature,
            discriminator_input=discriminator_input,
            ensemble_size=ensemble_size,
        )
        self.loss = TruncatedL1Loss(th_pos=th_pos, th_neg=th_neg)
        self.synthetic_defects = None  # the paper: Gaussian feature noise only
        if synthetic_anomalies:  # (the generator draws random numbers when built: only build it when used)
            self.synthetic_defects = SyntheticDefects(
                synthetic_anomaly_source, synthetic_copies, synthetic_coverage, synthetic_per_head
            )
        else:  # bad values are refused all the same
            SyntheticDefects.validate(synthetic_anomaly_source, synthetic_copies, synthetic_coverage)
        if synthetic_pool_size and self.synthetic_defects is None:
            msg = f"`synthetic_pool_size` needs synthetic_anomalies=True, got {synthetic_pool_size!r}."
            raise ValueError(msg)
        self.synthetic_pool = (
            SyntheticFeaturePool(self.synthetic_defects, synthetic_pool_size, synthetic_pool_refresh)
            if synthetic_pool_size and self.synthetic_defects is not None
            else None
        )
        # a plain attribute (no state): the extractor's features of the training images, computed once
        self.feature_cache = FeatureCache(self.model.feature_extractor) if cache_features else None
        self.adaptor_lr = adaptor_lr
        self.discriminator_lr = discriminator_lr
        self.weight_decay = weight_decay
        self.adaptor_optimizer = adaptor_optimizer
        self.adaptor_weight_decay = adaptor_weight_decay

    def on_train_start(self) -> None:
        """Empty the feature cache and pool; with ``feature_standardization``, fit the feature statistics once.

        The statistics are skipped when already fitted (a resumed or loaded checkpoint holds them);
        their pass over the training set fills the feature cache.
        """
        for store in (self.feature_cache, self.synthetic_pool):
            if store is not None:
                store.clear()
        model = self.model
        if not getattr(model, "feature_standardization", False) or bool(model.feature_statistics_fitted):
            return
        transform = self.pre_processor.transform if isinstance(self.pre_processor, PreProcessor) else None

        datamodule = getattr(self.trainer, "datamodule", None)
        # every image once over all ranks: this rank's shard, summed over the ranks by fit_feature_statistics
        loader = (
            shard_loader(datamodule.train_dataloader()) if datamodule is not None else self.trainer.train_dataloader
        )

        def image_batches() -> Iterator[torch.Tensor]:
            for batch in loader:
                images = batch.image.to(self.device)
                yield transform(images) if transform is not None else images

        was_training = model.training
        model.eval()
        model.fit_feature_statistics(image_batches(), self.extract)
        model.train(was_training)

    def on_train_epoch_end(self) -> None:
        """Close the epoch of the feature cache and the synthetic pool (switch-off check, refresh)."""
        for store in (self.feature_cache, self.synthetic_pool):
            if store is not None:
                store.end_epoch()

    def extract(self, images: torch.Tensor, content_keys: Sequence[str] | None = None) -> torch.Tensor:
        """The frozen extractor's ``(B, C, H0, W0)`` output for training images, from the cache where it is on.

        ``content_keys``: the images' :func:`~anomalib_hyperbolic.feature_cache.image_keys`, where known.
        """
        if self.feature_cache is None:
            return self.model.feature_extractor(images)
        return self.feature_cache(images, content_keys)  # type: ignore[return-value]

    def training_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """SimpleNet's Algorithm 1 on one batch: the torch model's scores per head, the truncated L1 loss.

        The features come from the feature cache where it is on, and (with ``synthetic_anomalies``)
        every head also gets the features under its synthetic defects. The step's loss is the sum of
        the heads' eq. (8) losses, so each head trains exactly as a lone SimpleNet would.
        """
        del args, kwargs
        images = batch.image
        # each image's content key, hashed once for the feature cache and the synthetic pool
        keys = image_keys(images) if self.feature_cache is not None or self.synthetic_pool is not None else None
        synthetic = self.synthetic_features(images, len(self.model.heads()), keys)
        heads = self.model(images, extract=partial(self.extract, content_keys=keys), synthetic=synthetic)
        loss = sum(self.loss(head.normal, head.anomalous) for head in heads)  # SimpleNet eqs. (7)-(8) per head
        self.log("train_loss", loss.detach(), on_step=False, on_epoch=True, prog_bar=True, logger=True)
        hits: dict[str, list[torch.Tensor]] = {"p_true": [], "p_fake": [], "p_synthetic": []}
        for head in heads:
            normal_hits, anomalous_hits = self.loss.on_margin(head.normal, head.anomalous)
            hits["p_true"].append(normal_hits)
            hits["p_fake"].append(anomalous_hits[: len(head.normal)])
            hits["p_synthetic"].append(anomalous_hits[len(head.normal) :])
        for name, parts in hits.items():
            shares = torch.cat(parts)
            if shares.numel():  # p_synthetic: only with synthetic defects that cover a cell this step
                self.log(name, shares.float().mean(), on_step=False, on_epoch=True, prog_bar=name != "p_synthetic")
        return {"loss": loss}

    def synthetic_features(
        self, images: torch.Tensor, heads: int, content_keys: Sequence[str] | None = None
    ) -> list[torch.Tensor] | None:
        """Per head, the ``(M, C)`` features of the synthetic-defect cells (live or from the pool); ``None`` without."""
        if self.synthetic_defects is None:
            return None
        if self.synthetic_pool is not None:
            keys = list(content_keys) if content_keys is not None else image_keys(images)
            extractor = self.model.feature_extractor
            rows = self.synthetic_pool.anomalous_features(images, keys, heads, extractor, self.pre_processor)
            return [self.model.standardize(part) for part in rows]
        defects = self.synthetic_defects(images, heads, self.pre_processor)
        features = self.model.features_of(self.model.feature_extractor(defects.images))
        return [defects.anomalous_features(features, index) for index in range(heads)]

    def validation_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """Anomaly maps and scores (eqs. 9-11) for the validation batch; ``val_p_true`` on its normal images.

        ``val_p_true`` is ``p_true`` on held-out features: the share of the normal validation images'
        locations with ``D >= th_pos`` (the heads' mean ``D`` with ``ensemble_size`` > 1).
        """
        del args, kwargs
        patch_scores = self.model.patch_scores(self.model.features(batch.image))  # s = -D, eq. (9)
        labels = getattr(batch, "gt_label", None)
        normal = patch_scores if labels is None else patch_scores[labels.to(patch_scores.device) == 0]
        if normal.numel():
            self.log("val_p_true", (normal <= -self.loss.th_pos).float().mean(), on_step=False, on_epoch=True)
        predictions = self.model.predictions(patch_scores, batch.image.shape[-2:])
        return batch.update(**predictions._asdict())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """One Adam, two parameter groups: adaptors (AdamW's decoupled decay with ``"adamw"``) and discriminators."""
        heads = self.model.heads()
        adaptors: dict[str, Any] = {"params": [p for adaptor, _ in heads for p in adaptor.parameters()]}
        adaptors["lr"] = self.adaptor_lr
        if self.adaptor_optimizer == "adamw":  # AdamW, as the official code's adaptor optimiser
            adaptors.update(weight_decay=self.adaptor_weight_decay, decoupled_weight_decay=True)
        discriminators = {"params": [p for _, disc in heads for p in disc.parameters()], "lr": self.discriminator_lr}
        return torch.optim.Adam([adaptors, discriminators], weight_decay=self.weight_decay)

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """No gradient clipping, no sanity validation."""
        return {"gradient_clip_val": 0, "num_sanity_val_steps": 0}

    @property
    def learning_type(self) -> LearningType:
        """One-class: trained on normal images only."""
        return LearningType.ONE_CLASS

    @classmethod
    def configure_pre_processor(
        cls, image_size: tuple[int, int] | None = None, backbone: str | os.PathLike | None = None
    ) -> PreProcessor:
        """Resize to ``image_size`` (default 256 x 256) and normalise with ``backbone``'s mean/std.

        ``backbone`` defaults to SimpleNet's (``wide_resnet50_2.tv_in1k``: ImageNet statistics); the
        statistics are timm's for that backbone (:func:`~anomalib_hyperbolic.backbones.backbone_normalization`,
        e.g. 0.5/0.5 for ``tf_efficientnet_lite0``). The paper also centre-crops to 224; anomalib applies
        the same transform to masks, and we keep the whole image (no crop) as anomalib's other models do.
        """
        return backbone_pre_processor(image_size or (256, 256), DEFAULTS.backbone if backbone is None else backbone)
