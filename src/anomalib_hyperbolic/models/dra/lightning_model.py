"""DRA as an anomalib model: open-set supervised anomaly detection with a few labelled anomalies.

DRA trains on normal images plus ``K`` labelled anomalies. anomalib's datamodules hold normal
training images only, so wrap one in :class:`anomalib_hyperbolic.data.FewShotAnomalies`::

    from anomalib.data import MVTecAD
    from anomalib.engine import Engine
    from anomalib_hyperbolic.data import FewShotAnomalies
    from anomalib_hyperbolic.models import DRA

    datamodule = FewShotAnomalies(MVTecAD(category="carpet", train_batch_size=48), num_anomalies=10,
                                  train_batches_per_epoch=20)
    Engine(max_epochs=30).fit(DRA(), datamodule=datamodule)

or ``anomalib train --config configs/dra.yaml``. See ``README.md`` next to this file.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch import nn
from torchvision.transforms.v2 import Compose, Normalize, Resize

from anomalib_hyperbolic.learning_types import SupervisedLearningType
from anomalib_hyperbolic.models.components import PortableCheckpointMixin
from anomalib_hyperbolic.synthesis import random_pseudo_anomalies

from .loss import DRALoss
from .torch_model import DRAModel

__all__ = ["DRA"]

logger = logging.getLogger(__name__)

NO_ANOMALY_MESSAGE = (
    "DRA learns from labelled anomalies, but the training split holds none. Wrap the datamodule in "
    "anomalib_hyperbolic.data.FewShotAnomalies with num_anomalies > 0 (CLI: --data "
    "anomalib_hyperbolic.data.FewShotAnomalies --data.datamodule <DataModule> --data.num_anomalies 10; "
    "Python: FewShotAnomalies(datamodule, num_anomalies=10))."
)


class DRA(PortableCheckpointMixin, AnomalibModule):
    """DRA: disentangled representations of seen, pseudo and latent residual abnormalities.

    Args:
        backbone: timm name or local weights file of the shared feature network (ResNet-18).
        layer: Feature level of the heads; ``None`` = the deepest (``layer4``, 512 channels for ResNet-18).
        pre_trained: ImageNet weights for the backbone.
        num_reference: ``N_r`` reference images of the latent residual head (5, eq. 6).
        top_k_ratio: Fraction of patches in the top-k MIL (0.1, eq. 3).
        num_scales: Image pyramid levels (2, appendix B.1).
        loss: Per-head loss: ``deviation`` (default), ``bce`` or ``focal`` (appendix C.2).
        margin: Deviation-loss margin (5).
        pseudo_anomaly_prob: Chance that a normal training image becomes a CutMix pseudo anomaly (0.5,
            as the official data loader).
        reference_pseudo_prob: Chance that a reference image is a pseudo anomaly (0.5: the reference set
            mixes normal and pseudo-anomalous images, appendix B.1).
        lr: Adam learning rate (2e-4).
        weight_decay: Adam weight decay (1e-5).
        lr_step_size: Epochs between learning-rate decays (10, official code; ``0`` disables).
        lr_gamma: Learning-rate decay factor (0.1, official code).
        pre_processor: Pre-processor, or ``True`` for the default (448x448, ImageNet normalisation).
        post_processor: Post-processor, or ``True`` for the default (see :meth:`configure_post_processor`).
        evaluator: Evaluator or flag.
        visualizer: Visualizer or flag.
    """

    def __init__(
        self,
        backbone: str | os.PathLike = "resnet18",
        layer: str | None = None,
        pre_trained: bool = True,
        num_reference: int = 5,
        top_k_ratio: float = 0.1,
        num_scales: int = 2,
        loss: str = "deviation",
        margin: float = 5.0,
        pseudo_anomaly_prob: float = 0.5,
        reference_pseudo_prob: float = 0.5,
        lr: float = 2e-4,
        weight_decay: float = 1e-5,
        lr_step_size: int = 10,
        lr_gamma: float = 0.1,
        pre_processor: nn.Module | bool = True,
        post_processor: nn.Module | bool = True,
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
            ("pseudo_anomaly_prob", pseudo_anomaly_prob),
            ("reference_pseudo_prob", reference_pseudo_prob),
        ):
            if not 0 <= value <= 1:
                msg = f"{name} must be in [0, 1], got {value}."
                raise ValueError(msg)
        if lr <= 0:
            msg = f"lr must be > 0, got {lr}."
            raise ValueError(msg)
        self.model = DRAModel(
            backbone=backbone,
            layer=layer,
            pre_trained=pre_trained,
            top_k_ratio=top_k_ratio,
            num_scales=num_scales,
            num_reference=num_reference,
        )
        self.loss = DRALoss(loss=loss, margin=margin)
        self.num_reference = num_reference
        self.pseudo_anomaly_prob = pseudo_anomaly_prob
        self.reference_pseudo_prob = reference_pseudo_prob
        self.lr = lr
        self.weight_decay = weight_decay
        self.lr_step_size = lr_step_size
        self.lr_gamma = lr_gamma
        self._anomalies_seen = 0

    # -- anomalib hooks ----------------------------------------------------------------------

    @staticmethod
    def configure_pre_processor(image_size: tuple[int, int] | None = None) -> PreProcessor:
        """Resize to 448x448 (appendix B.1: 448 or 224 by the data's resolution) and ImageNet normalisation."""
        image_size = image_size or (448, 448)
        return PreProcessor(
            transform=Compose(
                [
                    Resize(image_size, antialias=True),
                    Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
                ]
            ),
        )

    def configure_post_processor(self) -> PostProcessor:
        """Anomalib's ``PostProcessor``: min-max normalisation and F1-adaptive thresholds.

        Fitted on the validation split, which (unlike the training split) holds normal and
        anomalous images for any learning type; DRA's scores need nothing else. (anomalib only
        provides a default for one-class models, hence this override.)
        """
        return PostProcessor()

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """Gradient clipping at norm 1 (official code); epochs and batches come from the config."""
        return {"gradient_clip_val": 1.0, "num_sanity_val_steps": 0}

    @property
    def learning_type(self) -> SupervisedLearningType:  # type: ignore[override]
        """``"supervised"``: trained on normal images plus a few labelled anomalies.

        Not anomalib's ``FEW_SHOT``: anomalib's ``Engine.fit`` runs no training for ``FEW_SHOT``
        models (see :mod:`anomalib_hyperbolic.learning_types`).
        """
        return SupervisedLearningType.SUPERVISED

    def configure_optimizers(self) -> Any:
        """Adam (lr 2e-4, weight decay 1e-5), step decay x0.1 every 10 epochs (official code)."""
        optimizer = torch.optim.Adam(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        if self.lr_step_size <= 0:
            return optimizer
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=self.lr_step_size, gamma=self.lr_gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    # -- checks --------------------------------------------------------------------------------

    def on_train_start(self) -> None:
        """Fail early when the training split has no labelled anomaly."""
        datamodule = getattr(self.trainer, "datamodule", None)
        train_data = getattr(datamodule, "train_data", None)
        samples = getattr(train_data, "samples", None)
        if (
            samples is not None
            and "label_index" in samples.columns
            and int((samples["label_index"].astype(int) == 1).sum()) == 0
        ):
            raise ValueError(NO_ANOMALY_MESSAGE)
        self._anomalies_seen = 0

    # -- training ------------------------------------------------------------------------------

    def _reference_images(self, images: torch.Tensor, normal_index: torch.Tensor) -> torch.Tensor:
        """``N_r`` reference images drawn from the batch's normal images, some made pseudo anomalies."""
        if normal_index.numel() == 0:
            if self.model.reference_images.numel() == 0:
                msg = "DRA needs normal images in its training batches (none in the first batch)."
                raise ValueError(msg)
            return self.model.reference_images
        if normal_index.numel() >= self.num_reference:
            pick = normal_index[torch.randperm(normal_index.numel(), device=normal_index.device)[: self.num_reference]]
        else:
            pick = normal_index[torch.randint(normal_index.numel(), (self.num_reference,), device=normal_index.device)]
        reference, _, _ = random_pseudo_anomalies(images[pick], self.reference_pseudo_prob)
        return reference

    def training_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """One DRA step: CutMix pseudo anomalies, reference set, four head losses (eq. 1)."""
        del args, kwargs
        if batch.gt_label is None:
            raise ValueError(NO_ANOMALY_MESSAGE)
        images = batch.image
        kinds = batch.gt_label.long().to(images.device).clone()
        self._anomalies_seen += int((kinds == 1).sum())
        normal_index = (kinds == 0).nonzero().flatten()
        reference = self._reference_images(images, normal_index)
        if normal_index.numel() > 0:
            augmented, is_pseudo, _ = random_pseudo_anomalies(images[normal_index], self.pseudo_anomaly_prob)
            images = images.clone()
            images[normal_index] = augmented
            kinds[normal_index[is_pseudo]] = 2
        scores = self.model(images, reference)
        losses = self.loss(scores, kinds)
        self.model.reference_images = reference.detach().clone()
        for head in ("seen", "pseudo", "residual", "normal"):
            self.log(f"train_loss_{head}", losses[head].detach(), on_epoch=True, on_step=False, logger=True)
        self.log("train_loss", losses["loss"].detach(), on_epoch=True, prog_bar=True, logger=True)
        return {"loss": losses["loss"]}

    def on_train_epoch_end(self) -> None:
        """Refresh the inference reference features; fail if the epoch showed no labelled anomaly."""
        if self._anomalies_seen == 0:
            raise ValueError(NO_ANOMALY_MESSAGE)
        self._anomalies_seen = 0
        self.model.update_reference_features()

    # -- evaluation ----------------------------------------------------------------------------

    def _refresh_reference(self) -> None:
        if self.model.reference_images.numel() > 0:
            self.model.update_reference_features()

    def on_validation_start(self) -> None:
        """Reference features from the current weights."""
        self._refresh_reference()

    def on_test_start(self) -> None:
        """Reference features from the current weights."""
        self._refresh_reference()

    def on_predict_start(self) -> None:
        """Reference features from the current weights."""
        self._refresh_reference()

    def validation_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """Image scores and coarse anomaly maps."""
        del args, kwargs
        predictions = self.model(batch.image)
        return batch.update(**predictions._asdict())
