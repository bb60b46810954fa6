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

import os
from collections.abc import Sequence
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
from torchvision.transforms.v2 import InterpolationMode, Normalize
from torchvision.transforms.v2 import functional as TF

from anomalib_hyperbolic.distributed import DistributedStateMixin, all_gather_cat, broadcast
from anomalib_hyperbolic.learning_types import SupervisedLearningType
from anomalib_hyperbolic.models.components import PortableCheckpointMixin, backbone_pre_processor
from anomalib_hyperbolic.openvino_precision import F32ScopesExportMixin
from anomalib_hyperbolic.synthesis import cutmix_pseudo_anomalies

from .defaults import DEFAULTS
from .loss import DRALoss
from .torch_model import DRAModel, ReferenceSampler

__all__ = ["DRA"]

NO_ANOMALY_MESSAGE = (
    "DRA learns from labelled anomalies, but the training split holds none. Wrap the datamodule in "
    "anomalib_hyperbolic.data.FewShotAnomalies with num_anomalies > 0 (CLI: --data "
    "anomalib_hyperbolic.data.FewShotAnomalies --data.datamodule <DataModule> --data.num_anomalies 10; "
    "Python: FewShotAnomalies(datamodule, num_anomalies=10))."
)


class DRA(DistributedStateMixin, F32ScopesExportMixin, PortableCheckpointMixin, AnomalibModule):
    """DRA: disentangled representations of seen, pseudo and latent residual abnormalities.

    Every default is in :data:`~anomalib_hyperbolic.models.dra.defaults.DEFAULTS`, each with its source
    (the paper or the official code).

    Args:
        backbone: timm name or local weights file of the shared feature network (ResNet-18 with
            torchvision's ImageNet weights, ``resnet18.tv_in1k``, as the official code).
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
        rotation_degrees: Training images (normal, labelled, pseudo anomalies and references) are
            rotated by ``U(-d, d)`` degrees (official ``RandomRotation(180)``; ``0`` disables).
        seed: Seed of the reference draws and of the training augmentation (pseudo anomalies, rotation).
        lr: Adam learning rate (2e-4).
        weight_decay: Adam weight decay (1e-5).
        lr_step_size: Epochs between learning-rate decays (10, official code; ``0`` disables). As the
            official code steps ``StepLR`` at the start of each epoch, epoch ``e`` (from 0) trains at
            ``lr * lr_gamma ** ((e + 1) // lr_step_size)``: the first decay comes before epoch 9.
        lr_gamma: Learning-rate decay factor (0.1, official code).
        pre_processor: Pre-processor, or ``True`` for the default (448x448, normalised with the backbone's
            mean/std from timm: ImageNet's for ResNet-18, 0.5 for EfficientNet-Lite0).
        post_processor: Post-processor, or ``True`` for the default (see :meth:`configure_post_processor`).
        evaluator: Evaluator or flag.
        visualizer: Visualizer or flag.
    """

    def __init__(
        self,
        backbone: str | os.PathLike = DEFAULTS.backbone,
        layer: str | None = DEFAULTS.layer,
        pre_trained: bool = DEFAULTS.pre_trained,
        num_reference: int = DEFAULTS.num_reference,
        top_k_ratio: float = DEFAULTS.top_k_ratio,
        num_scales: int = DEFAULTS.num_scales,
        loss: str = DEFAULTS.loss,
        margin: float = DEFAULTS.margin,
        pseudo_anomaly_prob: float = DEFAULTS.pseudo_anomaly_prob,
        reference_pseudo_prob: float = DEFAULTS.reference_pseudo_prob,
        rotation_degrees: float = DEFAULTS.rotation_degrees,
        seed: int = DEFAULTS.seed,
        lr: float = DEFAULTS.lr,
        weight_decay: float = DEFAULTS.weight_decay,
        lr_step_size: int = DEFAULTS.lr_step_size,
        lr_gamma: float = DEFAULTS.lr_gamma,
        pre_processor: nn.Module | bool = True,
        post_processor: nn.Module | bool = True,
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
            ("pseudo_anomaly_prob", pseudo_anomaly_prob),
            ("reference_pseudo_prob", reference_pseudo_prob),
        ):
            if not 0 <= value <= 1:
                msg = f"{name} must be in [0, 1], got {value}."
                raise ValueError(msg)
        if lr <= 0:
            msg = f"lr must be > 0, got {lr}."
            raise ValueError(msg)
        if not 0 <= rotation_degrees <= 180:
            msg = f"rotation_degrees must be in [0, 180], got {rotation_degrees}."
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
        self.rotation_degrees = rotation_degrees
        self.seed = seed
        self.lr = lr
        self.weight_decay = weight_decay
        self.lr_step_size = lr_step_size
        self.lr_gamma = lr_gamma
        self._anomalies_seen = 0
        self.references: ReferenceSampler | None = None  # set up from the training split when a fit starts
        self._path_index: dict[str, int] = {}
        #: Dataset indices of the last step's references and batch (global over the ranks), for inspection.
        self.last_reference_indices: list[int] = []
        self.last_batch_indices: list[int] = []

    # -- anomalib hooks ----------------------------------------------------------------------

    @staticmethod
    def configure_pre_processor(
        image_size: tuple[int, int] | None = None, backbone: str | os.PathLike | None = None
    ) -> PreProcessor:
        """Resize to 448x448 (appendix B.1: 448 or 224 by the data's resolution), normalise for ``backbone``.

        The mean/std are timm's for ``backbone`` (:func:`~anomalib_hyperbolic.backbones.backbone_normalization`),
        default DRA's ``resnet18.tv_in1k``: ImageNet's; 0.5/0.5 for ``tf_efficientnet_lite0``.
        """
        return backbone_pre_processor(
            image_size or DEFAULTS.image_size, DEFAULTS.backbone if backbone is None else backbone
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
        """Adam (lr 2e-4, weight decay 1e-5), step decay x0.1 every 10 epochs, as the official code.

        The official loop calls ``StepLR.step()`` at the *start* of every epoch, so epoch ``e`` (from 0)
        trains at ``lr * gamma ** ((e + 1) // step_size)`` (epochs 0-8 at 2e-4, 9-18 at 2e-5, ...);
        Lightning steps after each epoch, hence the ``+ 1``.
        """
        optimizer = torch.optim.Adam(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        if self.lr_step_size <= 0:
            return optimizer
        step_size, gamma = self.lr_step_size, self.lr_gamma

        def factor(epoch: int) -> float:
            return gamma ** ((epoch + 1) // step_size)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    # -- checks --------------------------------------------------------------------------------

    def on_train_start(self) -> None:
        """Fail early without labelled anomalies; set up the reference pool and the inference references."""
        train_data = self._train_dataset()
        samples = getattr(train_data, "samples", None)
        if (
            samples is not None
            and "label_index" in samples.columns
            and int((samples["label_index"].astype(int) == 1).sum()) == 0
        ):
            raise ValueError(NO_ANOMALY_MESSAGE)
        self._anomalies_seen = 0
        self._setup_references(train_data)

    # -- references --------------------------------------------------------------------------

    def _train_dataset(self) -> Any:
        datamodule = getattr(self.trainer, "datamodule", None)
        train_data = getattr(datamodule, "train_data", None)
        if train_data is None:
            loader = getattr(self.trainer, "train_dataloader", None)
            train_data = getattr(loader, "dataset", None)
        return train_data

    def _setup_references(self, train_data: Any) -> None:
        """The reference sampler over the training normals (label 0), and the fixed inference references (eq. 6).

        Raises:
            ValueError: the training split has fewer normal images than ``num_reference``.
        """
        samples = getattr(train_data, "samples", None)
        if samples is None or "label_index" not in samples.columns:
            msg = "DRA draws its reference images from the training dataset's samples table (label_index column)."
            raise ValueError(msg)
        labels = samples["label_index"].astype(int).to_numpy()
        self.references = ReferenceSampler((labels == 0).nonzero()[0], self.num_reference, self.seed)
        self._train_data = train_data
        self._path_index = {str(path): int(i) for i, path in enumerate(samples["image_path"].astype(str))}
        # inference: one seeded set, un-augmented, stored as buffers so that the exported model is self-contained
        indices = self.references.inference_indices()
        self.model.reference_images = broadcast(self._load_images(indices)).detach().clone()

    def _load_images(self, indices: Sequence[int]) -> torch.Tensor:
        """Training images ``indices`` as the training batches see them (dataset transforms, then pre-processor)."""
        images = torch.stack([self._train_data[int(i)].image for i in indices]).to(self.device)
        transform = getattr(self.pre_processor, "transform", None)
        return transform(images) if transform is not None else images

    # -- augmentation ------------------------------------------------------------------------

    def _normalisation(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(mean, std)`` of the pre-processor's ``Normalize`` (``None``: images are raw pixels)."""
        transform = getattr(self.pre_processor, "transform", None)
        stack = [transform]
        while stack:
            item = stack.pop()
            if isinstance(item, Normalize):
                mean = torch.tensor(item.mean, device=self.device).view(1, -1, 1, 1)
                std = torch.tensor(item.std, device=self.device).view(1, -1, 1, 1)
                return mean, std
            stack.extend(getattr(item, "transforms", []) or [])
        return None

    def _augment(
        self,
        images: torch.Tensor,
        kinds: torch.Tensor,
        pseudo_prob: float,
        keys: Sequence[tuple[int, ...]],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """CutMix pseudo anomalies of normal images (eq. 4) and ``RandomRotation``, as the official transforms.

        Works on raw pixels (the batch is denormalised and renormalised): each normal image becomes a pseudo
        anomaly (kind 2) with ``pseudo_prob`` (CutMix with ``ColorJitter(0.1, 0.1, 0.1, 0.1)``), then every
        image is rotated by ``U(-rotation_degrees, rotation_degrees)`` (nearest, black fill). Image ``i``'s
        randomness comes from a generator seeded by ``(seed, step, *keys[i])``, so an image gets the same
        augmentation whichever rank or batch position it has.
        """
        norm = self._normalisation()
        raw = images * norm[1] + norm[0] if norm is not None else images
        raw = raw.clone()
        kinds = kinds.clone()
        step = int(self.global_step)
        for i in range(raw.shape[0]):
            generator = torch.Generator().manual_seed(hash((self.seed, step, *keys[i])) & 0x7FFF_FFFF_FFFF_FFFF)
            draw = float(torch.rand((), generator=generator))
            if int(kinds[i]) == 0 and draw < pseudo_prob:
                pseudo, _ = cutmix_pseudo_anomalies(raw[i : i + 1].clamp(0, 1), generator=generator)
                raw[i] = pseudo[0]
                kinds[i] = 2
            if self.rotation_degrees > 0:
                angle = (2 * float(torch.rand((), generator=generator)) - 1) * self.rotation_degrees
                raw[i] = TF.rotate(raw[i], angle, interpolation=InterpolationMode.NEAREST, fill=0.0)
        out = (raw - norm[0]) / norm[1] if norm is not None else raw
        return out, kinds

    # -- training ------------------------------------------------------------------------------

    def _batch_indices(self, batch: Batch) -> list[int]:
        paths = batch.image_path if batch.image_path is not None else []
        return [self._path_index.get(str(path), -1) for path in paths]

    def training_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """One DRA step: references, CutMix pseudo anomalies, rotation, four head losses (eq. 1)."""
        del args, kwargs
        if batch.gt_label is None:
            raise ValueError(NO_ANOMALY_MESSAGE)
        if self.references is None:  # training_step called outside Trainer.fit
            self._setup_references(self._train_dataset())
        images = batch.image
        kinds = batch.gt_label.long().to(images.device).clone()
        self._anomalies_seen += int((kinds == 1).sum())
        local = self._batch_indices(batch)
        global_batch = all_gather_cat(torch.tensor(local, dtype=torch.long, device=self.device))
        self.last_batch_indices = [int(i) for i in global_batch.tolist()]
        drawn = torch.tensor(self.references.draw(set(self.last_batch_indices)), device=self.device)
        self.last_reference_indices = [int(i) for i in broadcast(drawn).tolist()]
        # References: training normals with the training transforms, each a pseudo anomaly with p = 0.5
        # (the official reference loader reads the training set, appendix B.1), the same on every rank.
        reference, _ = self._augment(
            self._load_images(self.last_reference_indices),
            torch.zeros(self.num_reference, dtype=torch.long, device=self.device),
            self.reference_pseudo_prob,
            [(1, index, j) for j, index in enumerate(self.last_reference_indices)],
        )
        reference = broadcast(reference.contiguous())
        seen: dict[int, int] = {}
        keys = []
        for position, index in enumerate(local):
            key = index if index >= 0 else -1 - position
            seen[key] = seen.get(key, -1) + 1
            keys.append((0, key, seen[key]))
        images, kinds = self._augment(images, kinds, self.pseudo_anomaly_prob, keys)
        scores = self.model(images, reference)  # DRA eq. (1): the four heads' image scores, pyramid-averaged
        losses = self.loss(scores, kinds)
        for head in ("seen", "pseudo", "residual", "normal"):
            self.log(f"train_loss_{head}", losses[head].detach(), on_epoch=True, on_step=False, logger=True)
        self.log("train_loss", losses["loss"].detach(), on_epoch=True, prog_bar=True, logger=True)
        return {"loss": losses["loss"]}

    def on_train_epoch_end(self) -> None:
        """Refresh the inference reference features; fail if the epoch showed no labelled anomaly."""
        if self._anomalies_seen == 0:
            raise ValueError(NO_ANOMALY_MESSAGE)
        self._anomalies_seen = 0
        self._refresh_reference()

    # -- evaluation ----------------------------------------------------------------------------

    def _refresh_reference(self) -> None:
        """Reference features from the current weights, rank 0's on every rank (BN running stats may differ)."""
        if self.model.reference_images.numel() > 0:
            self.model.update_reference_features()
            for level in range(self.model.num_scales):
                broadcast(getattr(self.model, f"reference_features_{level}"))

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
