"""HypAD: Hyperbolic Anomaly Detection (Li et al., CVPR 2023) as an anomalib module.

EfficientAD's student-teacher-autoencoder whose features are clipped, mapped into the Poincaré ball
and compared with the hyperbolic distance. Training recipe of HypAD section 4.2: Adam, lr 1e-4 with
a step decay, batch size 1, 256x256 images, ImageNet normalisation (inside the PDN, as anomalib's
EfficientAd), colour jitter of strength 0.2 on every autoencoder view (EfficientAD's), none at evaluation.

Example:
    >>> from anomalib.engine import Engine
    >>> from anomalib_hyperbolic.models import HypAD
    >>> model = HypAD(teacher_weights="teacher_small.pth", imagenet_dir=None)  # doctest: +SKIP
    >>> Engine(max_steps=70000).fit(model, datamodule=datamodule)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from anomalib import LearningType
from anomalib.data import Batch
from anomalib.data.transforms.utils import extract_transforms_by_type
from anomalib.data.utils import download_and_extract
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.models.image.efficient_ad.lightning_model import (
    IMAGENETTE_DOWNLOAD_INFO,
    WEIGHTS_DOWNLOAD_INFO,
    EfficientAd,
)
from anomalib.models.image.efficient_ad.torch_model import EfficientAdModelSize
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.utils.path import get_pretrained_weights_dir
from anomalib.visualization import Visualizer
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import CenterCrop, Compose, Normalize, RandomGrayscale, Resize

from anomalib_hyperbolic.models.components import PortableCheckpointMixin

from .torch_model import HypADModel, load_teacher_weights, parse_model_size

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def list_images(folder: str | Path, argument: str = "image_dir") -> list[Path]:
    """All image files below ``folder`` (recursive, sorted); clear ``ValueError`` when there are none."""
    root = Path(folder)
    if not root.is_dir():
        msg = f"`{argument}={str(folder)!r}` is not a readable directory."
        raise ValueError(msg)
    try:
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    except OSError as error:
        msg = f"`{argument}={str(folder)!r}` cannot be read: {error}"
        raise ValueError(msg) from error
    if not files:
        msg = f"`{argument}={str(folder)!r}` contains no images ({', '.join(IMAGE_EXTENSIONS)})."
        raise ValueError(msg)
    return files


def step_decay_scheduler(
    optimizer: torch.optim.Optimizer, trainer: Any, decay_at: float, gamma: float, model_name: str
) -> dict[str, Any]:
    """Lightning ``lr_scheduler`` entry: ``StepLR`` stepped every optimisation step (EfficientAD's decay).

    The learning rate is multiplied by ``gamma`` once ``decay_at`` of the training steps are done;
    the step count is the earlier of ``max_steps`` and ``max_epochs`` times the epoch length, as
    Lightning stops at whichever comes first.

    Raises:
        ValueError: neither ``max_epochs`` nor ``max_steps`` is finite.
    """
    max_epochs, max_steps = trainer.max_epochs, trainer.max_steps
    if (max_epochs is None or max_epochs < 0) and max_steps < 0:
        msg = f"{model_name} needs a finite number of steps or epochs (max_epochs or max_steps)."
        raise ValueError(msg)
    if max_epochs is None or max_epochs < 0:
        num_steps = max_steps
    else:
        epoch_steps = max_epochs * len(trainer.datamodule.train_dataloader())
        num_steps = epoch_steps if max_steps < 0 else min(max_steps, epoch_steps)
    step_size = max(1, int(decay_at * num_steps))
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)
    return {"scheduler": scheduler, "interval": "step"}


class ImageFileDataset(Dataset):
    """RGB float images in ``[0, 1]`` from a list of files, with an optional transform."""

    def __init__(self, files: Sequence[Path], transform: Any = None) -> None:
        self.files = list(files)
        self.transform = transform

    def __len__(self) -> int:
        """Number of images."""
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        """Image ``index`` as a ``(3, H, W)`` float tensor; ``ValueError`` naming an unreadable file."""
        from anomalib.data.utils import read_image

        try:
            image = read_image(self.files[index], as_tensor=True)
        except Exception as error:
            msg = f"Cannot read image {str(self.files[index])!r}: {error}"
            raise ValueError(msg) from error
        return self.transform(image) if self.transform is not None else image


class HypAD(PortableCheckpointMixin, AnomalibModule):
    """HypAD: EfficientAD in the Poincaré ball.

    Args:
        model_size: PDN size of teacher and student, ``"small"`` (PDN-S, paper default) or ``"medium"``.
        teacher_out_channels: Teacher output channels (384).
        c: Curvature ``c >= 0`` of the ball (``0.01``, HypAD section 4.2 / Table 4). ``c=0`` is
            Euclidean: with ``clip_radius=inf`` and ``projection="identity"`` the model is
            anomalib's EfficientAd.
        learn_curvature: Learn ``c`` (``softplus`` parameter, kept positive, initialised at ``c``).
        clip_radius: Feature-clipping radius (2.3, HypAD section 4.2); ``inf`` disables it.
        projection: Projection (pooling) module before the exponential map: ``"avgpool"`` (channel
            average pooling by ``projection_kernel``) or ``"identity"``.
        projection_kernel: Channel-pooling kernel (2: 384 -> 192 dimensions).
        discrepancy: How the hyperbolic distance replaces EfficientAD's per-element squared
            difference: ``"tangent"`` (default; exact EfficientAD at ``c=0``), ``"location"`` or
            ``"channel"``; see :mod:`anomalib_hyperbolic.models.hypad.loss`.
        augmentation_prob: Probability of the colour jitter (strength 0.2) of the autoencoder view:
            1.0 (default; EfficientAD's always-on jitter, our reading of HypAD section 4.2) or e.g.
            0.2 (the literal "with a probability of 0.2" reading); see ``HypADModel.augment``.
        penalty: ``"unclipped"`` (default: the penalty sees the projected student output before
            clipping, EfficientAD's ``mean(s^2)``) or ``"clipped"`` (HypAD v1: after clipping, a
            constant without gradient at ``r = 2.3``); see ``HypADModel.penalty_loss``.
        teacher_weights: Local PDN teacher state dict (``torch.load(weights_only=True)``), e.g. from
            ``anomalib-hyperbolic distill-teacher``. Takes precedence over ``pretrained_teacher``.
        pretrained_teacher: Without ``teacher_weights``: ``True`` loads anomalib's pretrained
            EfficientAD teacher (downloaded to anomalib's pretrained-weights cache, as EfficientAd
            does); ``False`` keeps a randomly initialised teacher (tests only).
        imagenet_dir: Folder of out-of-distribution images (any layout, searched recursively) for
            EfficientAD's penalty; downloaded (Imagenette) when missing, as anomalib's EfficientAd
            does. ``None`` disables the penalty.
        lr: Adam learning rate (1e-4).
        weight_decay: Adam weight decay (1e-5, as anomalib's EfficientAd).
        lr_decay_at: Fraction of the training steps after which the learning rate is multiplied by
            ``lr_decay_gamma`` (step decay; 0.95 / 0.1 as EfficientAD).
        lr_decay_gamma: Step-decay factor.
        padding: Convolution padding (anomalib's EfficientAd option).
        pad_maps: Pad maps of an unpadded network (anomalib's EfficientAd option).
        pre_processor: Pre-processor (default: resize to 256x256; ImageNet normalisation happens
            inside the networks).
        post_processor: Post-processor.
        evaluator: Evaluator.
        visualizer: Visualizer.
    """

    @classmethod
    def checkpoint_safe_globals(cls) -> Sequence[Any]:
        """Allowlist ``EfficientAdModelSize`` for ``weights_only`` checkpoint loads."""
        return (EfficientAdModelSize,)

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
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        if not 0.0 < lr_decay_at <= 1.0:
            msg = f"`lr_decay_at` must be in (0, 1], got {lr_decay_at}."
            raise ValueError(msg)
        self.model_size = parse_model_size(model_size)
        self.model: HypADModel = HypADModel(
            teacher_out_channels=teacher_out_channels,
            model_size=self.model_size,
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
        self.teacher_weights = None if teacher_weights is None else Path(teacher_weights)
        self.pretrained_teacher = pretrained_teacher
        if self.teacher_weights is not None:
            # Load now so that a wrong file fails at construction, not after the data is set up.
            load_teacher_weights(self.model.teacher, self.teacher_weights, self.model_size.value)
        self.imagenet_dir = None if imagenet_dir is None else Path(imagenet_dir)
        self.lr = lr
        self.weight_decay = weight_decay
        self.lr_decay_at = lr_decay_at
        self.lr_decay_gamma = lr_decay_gamma
        self.imagenet_loader: DataLoader | None = None
        self.imagenet_iterator: Any = None

    # ------------------------------------------------------------------ teacher and penalty data
    def prepare_pretrained_model(self) -> None:
        """Load the teacher: the local file, or anomalib's pretrained EfficientAD teacher (download + cache)."""
        if self.teacher_weights is not None:
            load_teacher_weights(self.model.teacher, self.teacher_weights, self.model_size.value)
            return
        if not self.pretrained_teacher:
            logger.warning("HypAD: pretrained_teacher=False and no teacher_weights; the teacher is random.")
            return
        # Same archive, cache directory and file names as anomalib's EfficientAd.prepare_pretrained_model.
        pretrained_models_dir = get_pretrained_weights_dir()
        if not (pretrained_models_dir / "efficientad_pretrained_weights").is_dir():
            download_and_extract(pretrained_models_dir, WEIGHTS_DOWNLOAD_INFO)
        teacher_path = (
            pretrained_models_dir / "efficientad_pretrained_weights" / f"pretrained_teacher_{self.model_size.value}.pth"
        )
        logger.info("Load pretrained teacher model from %s", teacher_path)
        load_teacher_weights(self.model.teacher, teacher_path, self.model_size.value)

    def prepare_imagenet_data(self, image_size: tuple[int, int] | torch.Size, batch_size: int) -> None:
        """Penalty images (EfficientAD): resize x2, random grayscale (0.3), centre crop to ``image_size``."""
        if self.imagenet_dir is None:
            self.imagenet_loader = None
            return
        if not self.imagenet_dir.is_dir():
            download_and_extract(self.imagenet_dir, IMAGENETTE_DOWNLOAD_INFO)
        transform = Compose(
            [
                Resize((image_size[0] * 2, image_size[1] * 2), antialias=True),
                RandomGrayscale(p=0.3),
                CenterCrop((image_size[0], image_size[1])),
            ]
        )
        dataset = ImageFileDataset(list_images(self.imagenet_dir, "imagenet_dir"), transform=transform)
        self.imagenet_loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=False)
        self.imagenet_iterator = iter(self.imagenet_loader)

    def _next_imagenet_batch(self) -> torch.Tensor | None:
        if self.imagenet_loader is None:
            return None
        try:
            batch = next(self.imagenet_iterator)
        except StopIteration:
            self.imagenet_iterator = iter(self.imagenet_loader)
            batch = next(self.imagenet_iterator)
        return batch.to(self.device)

    def teacher_channel_mean_std(self, dataloader: DataLoader) -> dict[str, torch.Tensor]:
        """Channel mean/std of the teacher outputs on the training data (anomalib's EfficientAd code)."""
        return EfficientAd.teacher_channel_mean_std(self, dataloader)

    def map_norm_quantiles(self, dataloader: DataLoader) -> dict[str, torch.Tensor]:
        """90 % / 99.5 % quantiles of both maps on normal validation images (anomalib's EfficientAd code)."""
        return EfficientAd.map_norm_quantiles(self, dataloader)

    def _get_quantiles_of_maps(self, maps: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return EfficientAd._get_quantiles_of_maps(self, maps)

    # ------------------------------------------------------------------ lightning hooks
    @classmethod
    def configure_pre_processor(cls, image_size: tuple[int, int] | None = None) -> PreProcessor:
        """Resize to 256x256 (HypAD section 4.2); ImageNet normalisation is applied inside the PDNs."""
        image_size = image_size or (256, 256)
        return PreProcessor(transform=Compose([Resize(image_size, antialias=True)]))

    def configure_optimizers(self) -> dict[str, Any]:
        """Adam (lr 1e-4) on student, autoencoder (and curvature) with a step decay at ``lr_decay_at``."""
        params = list(self.model.student.parameters()) + list(self.model.ae.parameters())
        if self.model.learn_curvature:
            params.append(self.model.curvature_raw)
        optimizer = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        scheduler = step_decay_scheduler(optimizer, self.trainer, self.lr_decay_at, self.lr_decay_gamma, "HypAD")
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def on_train_start(self) -> None:
        """Load the teacher, prepare penalty images, compute the teacher channel statistics."""
        if self.pre_processor and extract_transforms_by_type(self.pre_processor.transform, Normalize):
            msg = "Transforms for HypAD should not contain Normalize (the PDNs normalise with ImageNet statistics)."
            raise ValueError(msg)
        sample = next(iter(self.trainer.train_dataloader))
        self.prepare_pretrained_model()
        self.prepare_imagenet_data(sample.image.shape[-2:], batch_size=self.trainer.datamodule.train_batch_size)
        if not self.model.is_set(self.model.mean_std):
            self.model.mean_std.update(self.teacher_channel_mean_std(self.trainer.datamodule.train_dataloader()))

    def __getstate__(self) -> dict:
        """Drop the penalty-image iterator when pickling."""
        state = self.__dict__.copy()
        state.pop("imagenet_iterator", None)
        return state

    def training_step(self, batch: Batch, *args: object, **kwargs: object) -> dict[str, torch.Tensor]:
        """``loss = loss_st + loss_ae + loss_stae`` in the Poincaré ball."""
        del args, kwargs
        loss_st, loss_ae, loss_stae = self.model(batch=batch.image, batch_imagenet=self._next_imagenet_batch())
        loss = loss_st + loss_ae + loss_stae
        self.log("train_st", loss_st.item(), on_epoch=True, prog_bar=True, logger=True)
        self.log("train_ae", loss_ae.item(), on_epoch=True, prog_bar=True, logger=True)
        self.log("train_stae", loss_stae.item(), on_epoch=True, prog_bar=True, logger=True)
        self.log("train_loss", loss.item(), on_epoch=True, prog_bar=True, logger=True)
        if self.model.learn_curvature:
            self.log("curvature", float(self.model.curvature), on_epoch=True, prog_bar=True, logger=True)
        return {"loss": loss}

    def on_validation_start(self) -> None:
        """Quantiles of both maps on the normal validation images (map normalisation of EfficientAD)."""
        self.model.quantiles.update(self.map_norm_quantiles(self.trainer.datamodule.val_dataloader()))

    def validation_step(self, batch: Batch, *args: object, **kwargs: object) -> STEP_OUTPUT:
        """Anomaly maps and scores."""
        del args, kwargs
        predictions = self.model(batch.image)
        return batch.update(**predictions._asdict())

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """No sanity validation (quantiles need the trained model)."""
        return {"num_sanity_val_steps": 0}

    @property
    def learning_type(self) -> LearningType:
        """One-class."""
        return LearningType.ONE_CLASS
