"""SimpleNet as an anomalib model (``anomalib train --model SimpleNet``).

Paper: Liu, Zhou, Liu, Yang -- "SimpleNet: A Simple Network for Image Anomaly Detection and
Localization", CVPR 2023. Official code: https://github.com/DonaldRR/SimpleNet.

Example:
    >>> from anomalib.data import MVTecAD
    >>> from anomalib.engine import Engine
    >>> from anomalib_hyperbolic.models import SimpleNet
    >>> model = SimpleNet()  # paper defaults: wide_resnet50_2 layers 2+3, sigma 0.015, ...
    >>> Engine(max_epochs=160).fit(model, datamodule=MVTecAD(train_batch_size=4))  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from anomalib import LearningType
from anomalib.data import Batch
from anomalib.data.transforms.utils import extract_transforms_by_type
from anomalib.data.utils.generators import PerlinAnomalyGenerator
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torchvision.transforms.v2 import Compose, Normalize, Resize

from anomalib_hyperbolic.models.components import PortableCheckpointMixin

from .loss import TruncatedL1Loss
from .torch_model import SimpleNetModel

__all__ = ["SimpleNet"]


class SimpleNet(PortableCheckpointMixin, AnomalibModule):
    """SimpleNet: adapted pretrained features, Gaussian-noise pseudo-anomalies, MLP discriminator.

    Every default is the paper's (section 4.3) or, where the paper is silent, the official code's.
    Training length (160 epochs) and batch size (4) are trainer/datamodule settings: see
    ``configs/simplenet.yaml``.

    Args:
        backbone: timm name or local weights file. Default ``wide_resnet50_2``.
        layers: Backbone levels. Default ``("layer2", "layer3")``.
        pre_trained: Load ImageNet backbone weights.
        patch_size: Neighbourhood ``p`` (eq. 1), odd. Default 3.
        pretrain_embed_dim: Per-level dims after neighbourhood pooling. Default 1536.
        target_embed_dim: Feature dims ``C`` (eqs. 3-5). Default 1536.
        adaptor_bias: Bias in the adaptor (eq. 5). Default ``False`` (paper).
        noise_std: ``sigma`` of the Gaussian noise (eq. 6). Default 0.015.
        relative_noise: Multiply ``sigma`` by each feature's RMS entry (for backbones whose feature
            scale differs from WideResNet-50's). Default ``False`` (paper).
        feature_standardization: Standardise the features per channel with training-set statistics
            (computed once at the start of training) before the adaptor, so ``sigma`` is in units of
            each channel's spread. Default ``False`` (paper).
        synthetic_anomalies: Beyond the paper: every training step also gives the discriminator, as
            anomalous features, the features under synthetic defects pasted on ``synthetic_copies``
            copies of each batch image (anomalib's ``PerlinAnomalyGenerator``, DRAEM-style Perlin
            masks). Default
            ``False`` (paper: Gaussian feature noise only).
        synthetic_anomaly_source: Folder of texture images for the synthetic defects (e.g. DTD, as
            DRAEM); ``None`` uses the generator's own random patterns.
        synthetic_copies: Defective copies made of each batch image per step. Default 1.
        synthetic_coverage: A grid location's feature counts as anomalous when its cell is covered
            by a synthetic defect mask by more than this fraction, in ``[0, 1)``. Default 0.5.
        synthetic_per_head: With ``ensemble_size`` > 1, give every head its own ``synthetic_copies``
            defective copies of each image (``ensemble_size`` times the generator and backbone work),
            so the heads differ in the synthetic defects they learn from, not only in initialisation
            and eq. (6) noise. Default ``False`` (all heads see the same copies).
        discriminator_hidden: Hidden width of the discriminator. Default 1024.
        negative_slope: LeakyReLU slope. Default 0.2.
        th_pos: ``th^+`` of eq. (7). Default 0.5.
        th_neg: ``th^-`` of eq. (7), as a positive margin. Default 0.5.
        adaptor_lr: Adam learning rate of the adaptor. Default 1e-4.
        discriminator_lr: Adam learning rate of the discriminator. Default 2e-4.
        weight_decay: Adam weight decay (both). Default 1e-5.
        blur_sigma: Anomaly-map Gaussian blur. Default 4.
        image_score: ``"patch_max"`` (eq. 11) or ``"map_max"``.
        distance: ``"euclidean"`` (paper) or ``"poincare"`` (hyperbolic variant).
        curvature: Poincaré-ball curvature ``c`` (used with ``"poincare"``). Default 0.01.
        discriminator_input: With ``"poincare"``: ``"logmap"`` or ``"distance"``.
        ensemble_size: Beyond the paper: independently initialised adaptor/discriminator heads on the
            one frozen feature extractor, each trained with its own loss on the same batches; the anomaly
            score is their mean. Default 1 (paper).
        pre_processor: Pre-processor instance or flag to use the default (resize 256, ImageNet norm).
        post_processor: Post-processor instance or flag to use the default.
        evaluator: Evaluator instance or flag to use the default.
        visualizer: Visualizer instance or flag to use the default.
    """

    def __init__(
        self,
        backbone: str | os.PathLike = "wide_resnet50_2",
        layers: Sequence[str] = ("layer2", "layer3"),
        pre_trained: bool = True,
        patch_size: int = 3,
        pretrain_embed_dim: int = 1536,
        target_embed_dim: int = 1536,
        adaptor_bias: bool = False,
        noise_std: float = 0.015,
        relative_noise: bool = False,
        feature_standardization: bool = False,
        synthetic_anomalies: bool = False,
        synthetic_anomaly_source: str | os.PathLike | None = None,
        synthetic_copies: int = 1,
        synthetic_coverage: float = 0.5,
        synthetic_per_head: bool = False,
        discriminator_hidden: int = 1024,
        negative_slope: float = 0.2,
        th_pos: float = 0.5,
        th_neg: float = 0.5,
        adaptor_lr: float = 1e-4,
        discriminator_lr: float = 2e-4,
        weight_decay: float = 1e-5,
        blur_sigma: float = 4.0,
        image_score: str = "patch_max",
        distance: str = "euclidean",
        curvature: float = 0.01,
        discriminator_input: str = "logmap",
        ensemble_size: int = 1,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        for name, value in (
            ("adaptor_lr", adaptor_lr),
            ("discriminator_lr", discriminator_lr),
            ("weight_decay", weight_decay),
        ):
            if not value >= 0:
                msg = f"`{name}` must be >= 0, got {value!r}."
                raise ValueError(msg)
        self.model = SimpleNetModel(
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
        if not isinstance(synthetic_copies, int) or synthetic_copies < 1:
            msg = f"`synthetic_copies` must be a positive integer, got {synthetic_copies!r}."
            raise ValueError(msg)
        self.synthetic_copies = synthetic_copies
        if not 0 <= synthetic_coverage < 1:
            msg = f"`synthetic_coverage` (share of a grid cell) must be in [0, 1), got {synthetic_coverage!r}."
            raise ValueError(msg)
        self.synthetic_coverage = synthetic_coverage
        if not isinstance(synthetic_per_head, bool) or (synthetic_per_head and not synthetic_anomalies):
            msg = (
                "`synthetic_per_head` must be a bool, and True only with synthetic_anomalies=True, "
                f"got {synthetic_per_head!r}."
            )
            raise ValueError(msg)
        self.synthetic_per_head = synthetic_per_head
        if synthetic_anomaly_source is not None and not Path(synthetic_anomaly_source).is_dir():
            msg = f"`synthetic_anomaly_source` must be a folder of images, got {str(synthetic_anomaly_source)!r}."
            raise ValueError(msg)
        self.anomaly_generator = (
            PerlinAnomalyGenerator(
                anomaly_source_path=None if synthetic_anomaly_source is None else str(synthetic_anomaly_source),
                probability=1.0,
            )
            if synthetic_anomalies
            else None
        )
        self.adaptor_lr = adaptor_lr
        self.discriminator_lr = discriminator_lr
        self.weight_decay = weight_decay

    def on_train_start(self) -> None:
        """With ``feature_standardization``: fit the feature statistics on the training set, once.

        Skipped when they are already fitted (a resumed or loaded checkpoint holds them).
        """
        model = self.model
        if not model.feature_standardization or bool(model.feature_statistics_fitted):
            return
        transform = self.pre_processor.transform if isinstance(self.pre_processor, PreProcessor) else None

        datamodule = getattr(self.trainer, "datamodule", None)
        loader = datamodule.train_dataloader() if datamodule is not None else self.trainer.train_dataloader

        def image_batches() -> Iterator[torch.Tensor]:
            for batch in loader:
                images = batch.image.to(self.device)
                yield transform(images) if transform is not None else images

        was_training = model.training
        model.eval()
        model.fit_feature_statistics(image_batches())
        model.train(was_training)

    def training_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """One step of eqs. (5)-(8): adapt, add noise, discriminate, truncated L1 loss."""
        del args, kwargs
        if self.anomaly_generator is None:
            per_head = self.model.head_training_scores(batch.image)
        else:
            # with synthetic_per_head: ensemble_size groups of synthetic_copies copies, head k takes group k
            groups = self.model.ensemble_size if self.synthetic_per_head else 1
            copies = batch.image.repeat(self.synthetic_copies * groups, 1, 1, 1)
            synthetic_images, synthetic_masks = self.synthesize_anomalies(copies)
            per_head = self.model.head_training_scores(
                batch.image,
                synthetic_images,
                synthetic_masks,
                min_coverage=self.synthetic_coverage,
                synthetic_per_head=self.synthetic_per_head,
            )
        # the sum of the heads' eq. (8) losses, so each head trains exactly as a lone SimpleNet would
        loss = sum(self.loss(normal, anomalous) for normal, anomalous in per_head)
        self.log("train_loss", loss.detach(), on_step=False, on_epoch=True, prog_bar=True, logger=True)
        return {"loss": loss}

    def synthesize_anomalies(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A copy of each pre-processed image with a synthetic defect, and the ``(B, 1, H, W)`` defect masks.

        The generator works on ``[0, 1]`` pixels: a ``Normalize`` of the pre-processor is undone
        before and redone after.
        """
        if self.anomaly_generator is None:
            msg = "synthesize_anomalies needs SimpleNet(synthetic_anomalies=True)."
            raise RuntimeError(msg)
        normalize = None
        if isinstance(self.pre_processor, PreProcessor) and self.pre_processor.transform is not None:
            found = extract_transforms_by_type(self.pre_processor.transform, Normalize)
            normalize = found[0] if found else None
        if normalize is None:
            return self.anomaly_generator(images)
        mean = torch.as_tensor(normalize.mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        std = torch.as_tensor(normalize.std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        synthetic, masks = self.anomaly_generator((images * std + mean).clamp(0, 1))
        return (synthetic - mean) / std, masks

    def validation_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """Anomaly maps and scores (eqs. 9-11) for the validation batch."""
        del args, kwargs
        predictions = self.model(batch.image)
        return batch.update(**predictions._asdict())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam: adaptors at ``adaptor_lr``, discriminators at ``discriminator_lr``, shared weight decay."""
        heads = self.model.heads()
        return torch.optim.Adam(
            [
                {"params": [p for adaptor, _ in heads for p in adaptor.parameters()], "lr": self.adaptor_lr},
                {"params": [p for _, disc in heads for p in disc.parameters()], "lr": self.discriminator_lr},
            ],
            weight_decay=self.weight_decay,
        )

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """No gradient clipping, no sanity validation."""
        return {"gradient_clip_val": 0, "num_sanity_val_steps": 0}

    @property
    def learning_type(self) -> LearningType:
        """One-class: trained on normal images only."""
        return LearningType.ONE_CLASS

    @classmethod
    def configure_pre_processor(cls, image_size: tuple[int, int] | None = None) -> PreProcessor:
        """Resize to ``image_size`` (default 256 x 256) and normalise with ImageNet statistics.

        The paper also centre-crops to 224; anomalib applies the same transform to masks, and we
        keep the whole image (no crop) as anomalib's other models do.
        """
        image_size = image_size or (256, 256)
        return PreProcessor(
            transform=Compose(
                [
                    Resize(image_size, antialias=True),
                    Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
                ]
            ),
        )
