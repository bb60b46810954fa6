"""HypAD (Li et al., CVPR 2023) as anomalib's ``EfficientAd`` with :class:`HypADModel` (the Poincaré ball).

Inherited from :class:`~anomalib.models.EfficientAd`: teacher download, penalty images, teacher
statistics (per shard under DDP: ``ShardedTeacherStatisticsMixin``), map quantiles, training and
validation steps, pre-processor, trainer arguments, pickling.
Overridden: local or random teacher, no penalty (``imagenet_dir=None``), any batch size, per-step
decay (HypAD section 4.2: Adam, lr 1e-4, step decay), learnt curvature.

Example:
    >>> model = HypAD(teacher_weights="teacher_small.pth", imagenet_dir=None)  # doctest: +SKIP
    >>> Engine(max_steps=70000).fit(model, datamodule=datamodule)  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from anomalib.data.transforms.utils import extract_transforms_by_type
from anomalib.metrics import Evaluator
from anomalib.models import AnomalibModule, EfficientAd
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from torchvision.transforms.v2 import Normalize

from anomalib_hyperbolic.models.components import PortableCheckpointMixin, ShardedTeacherStatisticsMixin
from anomalib_hyperbolic.openvino_precision import F32ScopesExportMixin

from .schedule import step_decay_scheduler
from .torch_model import EfficientAdModelSize, HypADModel, load_teacher_weights, parse_model_size

__all__ = ["HypAD", "step_decay_scheduler"]

logger = logging.getLogger(__name__)


# AnomalibModule again as a direct base: anomalib's registry (get_model, list_models) lists direct subclasses only
class HypAD(F32ScopesExportMixin, PortableCheckpointMixin, ShardedTeacherStatisticsMixin, EfficientAd, AnomalibModule):
    """HypAD: EfficientAD's student-teacher-autoencoder trained and scored in the Poincaré ball.

    Args:
        model_size: PDN size, ``"small"`` (PDN-S, paper) or ``"medium"``.
        teacher_out_channels: Teacher output channels (384).
        c: Curvature ``>= 0`` (0.01, section 4.2); 0, ``clip_radius=inf``, ``projection="identity"``: EfficientAd.
        learn_curvature: Learn ``c`` (collapses towards 0, see the model README).
        clip_radius: Feature-clipping radius (2.3, HypAD section 4.2); ``inf`` disables it.
        projection: ``"avgpool"`` (channel pooling before the exponential map) or ``"identity"``.
        projection_kernel: Channel-pooling kernel (2: 384 -> 192).
        discrepancy: ``"tangent"``, ``"location"`` or ``"channel"`` (:mod:`.loss`).
        augmentation_prob: Probability of the AE view's colour jitter (1: always, EfficientAD's).
        penalty: ``"unclipped"`` (EfficientAD's penalty before clipping) or ``"clipped"`` (v1).
        teacher_weights: Local PDN teacher file (``torch.load(weights_only=True)``); overrides the next.
        pretrained_teacher: Download anomalib's EfficientAD teacher (``False``: random, tests only).
        imagenet_dir: Penalty images (``ImageFolder``; Imagenette downloaded when missing); ``None``: no penalty.
        lr, weight_decay: Adam's, on student and autoencoder (1e-4, 1e-5).
        lr_decay_at, lr_decay_gamma: lr times ``lr_decay_gamma`` (0.1) after ``lr_decay_at`` (0.95) of the steps.
        padding, pad_maps, pre_processor, post_processor, evaluator, visualizer: anomalib's EfficientAd
            options (default pre-processor: resize to 256x256; ImageNet normalisation is in the PDNs).
    """

    def __init__(
        self,
        model_size: EfficientAdModelSize | str = "small",
        teacher_out_channels: int = 384,
        c: float = 0.01,
        learn_curvature: bool = False,
        clip_radius: float = 2.3,
        projection: str = "avgpool",
        projection_kernel: int = 2,
        discrepancy: str = "tangent",
        augmentation_prob: float = 1.0,
        penalty: str = "unclipped",
        teacher_weights: str | Path | None = None,
        pretrained_teacher: bool = True,
        imagenet_dir: str | Path | None = "./datasets/imagenette",
        lr: float = 1e-4,
        weight_decay: float = 1e-5,
        lr_decay_at: float = 0.95,
        lr_decay_gamma: float = 0.1,
        padding: bool = False,
        pad_maps: bool = True,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        if not 0.0 < lr_decay_at <= 1.0:
            msg = f"`lr_decay_at` must be in (0, 1], got {lr_decay_at}."
            raise ValueError(msg)
        size = parse_model_size(model_size)
        processors = (pre_processor, post_processor, evaluator, visualizer)
        # EfficientAd builds an EfficientAdModel: restoring the random state gives HypADModel its weights
        with torch.random.fork_rng(devices=[]):  # positional: ANOMALIB_API pins EfficientAd.__init__
            super().__init__(
                imagenet_dir or ".", teacher_out_channels, size, lr, weight_decay, padding, pad_maps, *processors
            )
        self.model: HypADModel = HypADModel(
            teacher_out_channels=teacher_out_channels,
            model_size=size,
            c=c,
            learn_curvature=learn_curvature,
            clip_radius=clip_radius,
            projection=projection,
            projection_kernel=projection_kernel,
            discrepancy=discrepancy,
            augmentation_prob=augmentation_prob,
            penalty=penalty,
            padding=padding,
            pad_maps=pad_maps,
        )
        self.imagenet_dir: Path | None = None if imagenet_dir is None else Path(imagenet_dir)
        self.teacher_weights = None if teacher_weights is None else Path(teacher_weights)
        self.pretrained_teacher = pretrained_teacher
        self.lr_decay_at = lr_decay_at
        self.lr_decay_gamma = lr_decay_gamma
        if self.teacher_weights is not None:  # fail at construction, not after the data set-up
            load_teacher_weights(self.model.teacher, self.teacher_weights, size.value)

    def prepare_pretrained_model(self) -> None:
        """The teacher: ``teacher_weights``, else EfficientAd's pretrained teacher, else (tests) a random one."""
        if self.teacher_weights is not None:
            load_teacher_weights(self.model.teacher, self.teacher_weights, self.model_size.value)
        elif self.pretrained_teacher:
            super().prepare_pretrained_model()
        else:
            logger.warning("HypAD: pretrained_teacher=False and no teacher_weights; the teacher is random.")

    def prepare_imagenette_data(self, image_size: tuple[int, int] | torch.Size) -> None:
        """EfficientAd's penalty images (resize x2, grayscale p=0.3, centre crop); none for ``imagenet_dir=None``."""
        if self.imagenet_dir is not None:
            super().prepare_imagenette_data(image_size)
        else:  # endless "batches" whose .to(device) is None: EfficientAd.training_step then passes no images
            self.imagenet_iterator = itertools.repeat((SimpleNamespace(to=lambda _device: None),))

    def on_train_start(self) -> None:
        """EfficientAd's set-up (teacher, penalty images, statistics) for any batch size (penalty batch: the same)."""
        if self.pre_processor and extract_transforms_by_type(self.pre_processor.transform, Normalize):
            msg = "Transforms for HypAD should not contain Normalize (the PDNs normalise with ImageNet statistics)."
            raise ValueError(msg)
        self.batch_size = self.trainer.datamodule.train_batch_size
        self.prepare_pretrained_model()
        self.prepare_imagenette_data(next(iter(self.trainer.train_dataloader)).image.shape[-2:])
        if not self.model.is_set(self.model.mean_std):
            self.model.mean_std.update(self.teacher_channel_mean_std(self.trainer.datamodule.train_dataloader()))

    def configure_optimizers(self) -> dict[str, Any]:
        """EfficientAd's Adam on student and autoencoder, decayed per step; a learnt ``c`` without weight decay."""
        # weight decay on c's softplus parameter would be an arbitrary prior (raw -> 0 is c -> ln 2)
        groups = [{"params": [*self.model.student.parameters(), *self.model.ae.parameters()]}]
        if self.model.learn_curvature:
            groups.append({"params": [self.model.curvature_raw], "weight_decay": 0.0})
        optimizer = torch.optim.Adam(groups, lr=self.lr, weight_decay=self.weight_decay)
        scheduler = step_decay_scheduler(optimizer, self.trainer, self.lr_decay_at, self.lr_decay_gamma, "HypAD")
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Log a learnt curvature after EfficientAd's training step (loss ``st + ae + stae``, HypAD eq. (6))."""
        if self.model.learn_curvature:
            self.log("curvature", float(self.model.curvature), on_epoch=True, prog_bar=True, logger=True)
