"""Distil a PDN teacher for HypAD / EfficientAD from any timm backbone on a folder of images.

HypAD section 3.2 (after EfficientAD): the PDN-S teacher is trained to regress the features of a
pretrained backbone (WideResNet-101 in the paper, on ImageNet) with a mean squared error. Here:

1. target features: the backbone's ``layers`` (default ``layer2``, ``layer3``, as PatchCore and
   EfficientAD) on inputs normalised with the mean/std the backbone was trained with (timm's
   pretrained config: ImageNet's for WideResNet-101, 0.5/0.5 for EfficientNet-Lite0), each averaged
   over a 3x3 neighbourhood, resized (bilinear) to the PDN output grid,
   concatenated, and reduced to ``out_channels`` (384) by adaptive average pooling over channels
   (PatchCore's aggregation; with fewer backbone channels than 384 this interpolates channels);
2. targets are standardised per channel with mean/std estimated on ``stats_images`` images first;
3. the PDN (anomalib's ``SmallPatchDescriptionNetwork`` / ``MediumPatchDescriptionNetwork``) is
   trained with Adam on ``MSE(PDN(x), standardised target)``.

Checkpoints (``torch.save`` of tensors and plain types, readable with ``weights_only=True``) hold the
teacher, optimiser, step and target statistics; ``resume=True`` continues from one. The final file
is the teacher's state dict alone, ready for ``HypAD(teacher_weights=...)``.

Command line: ``anomalib-hyperbolic distill-teacher --image-dir DIR --output teacher.pth`` or
``python -m anomalib_hyperbolic.models.hypad.distill ...``.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision.transforms.v2 import Compose, RandomCrop, Resize

from .torch_model import EfficientAdModelSize, parse_model_size

logger = logging.getLogger(__name__)

__all__ = [
    "DistillationTargets",
    "ImageFileDataset",
    "build_pdn",
    "distill_teacher",
    "distill_teacher_on_training_split",
    "list_images",
    "main",
]

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


def build_pdn(model_size: EfficientAdModelSize | str = "small", out_channels: int = 384) -> nn.Module:
    """Anomalib's PDN-S or PDN-M (unpadded, as EfficientAd's teacher)."""
    from anomalib.models.image.efficient_ad.torch_model import (
        MediumPatchDescriptionNetwork,
        SmallPatchDescriptionNetwork,
    )

    size = parse_model_size(model_size)
    network = SmallPatchDescriptionNetwork if size == EfficientAdModelSize.S else MediumPatchDescriptionNetwork
    return network(out_channels=out_channels, padding=False)


class DistillationTargets(nn.Module):
    """Backbone features -> local 3x3 average -> PDN grid -> ``out_channels`` (channel adaptive pooling).

    Images in ``[0, 1]`` are normalised with the backbone's own training mean/std
    (:func:`~anomalib_hyperbolic.backbones.backbone_normalization`) before the backbone sees them.
    """

    def __init__(self, backbone: str, layers: Sequence[str], out_channels: int, pre_trained: bool) -> None:
        super().__init__()
        from anomalib_hyperbolic.backbones import backbone_normalization, create_feature_extractor

        self.extractor = create_feature_extractor(backbone, list(layers), pre_trained=pre_trained).eval()
        self.layers = list(layers)
        self.out_channels = out_channels
        mean, std = backbone_normalization(backbone)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    @torch.no_grad()
    def forward(self, images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The ``(B, out_channels, *size)`` targets of images in ``[0, 1]`` (not yet standardised)."""
        features = self.extractor((images - self.mean) / self.std)
        maps = [
            F.interpolate(F.avg_pool2d(features[layer], 3, 1, 1), size=size, mode="bilinear", align_corners=False)
            for layer in self.layers
        ]
        stacked = torch.cat(maps, dim=1)  # (B, C_total, h, w)
        b, ch, h, w = stacked.shape
        if ch == self.out_channels:
            return stacked
        flat = stacked.permute(0, 2, 3, 1).reshape(-1, 1, ch)
        reduced = F.adaptive_avg_pool1d(flat, self.out_channels)
        return reduced.reshape(b, h, w, self.out_channels).permute(0, 3, 1, 2)


def _targets_in_memory(
    dataset: ImageFileDataset,
    target_net: DistillationTargets,
    grid: tuple[int, int],
    batch_size: int,
    cache_megabytes: float,
    device: str,
    progress: bool,
) -> TensorDataset | None:
    """Every resized image with its (unstandardised) target, when both fit in ``cache_megabytes``; else ``None``."""
    from tqdm.auto import tqdm

    image = dataset[0]
    per_image = 4 * (image.numel() + target_net.out_channels * grid[0] * grid[1])
    if len(dataset) * per_image > cache_megabytes * 2**20:
        return None
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    images, targets = [], []
    for batch in tqdm(loader, desc="Distillation targets", disable=not progress):
        images.append(batch)
        targets.append(target_net(batch.to(device), grid).cpu())
    return TensorDataset(torch.cat(images), torch.cat(targets))


def _infinite(loader: DataLoader):  # noqa: ANN202
    while True:
        yield from loader


def distill_teacher(
    image_dir: str | Path | Sequence[str | Path],
    output: str | Path,
    backbone: str = "wide_resnet101_2",
    layers: Sequence[str] = ("layer2", "layer3"),
    model_size: EfficientAdModelSize | str = "small",
    out_channels: int = 384,
    image_size: int = 256,
    steps: int = 10_000,
    batch_size: int = 8,
    lr: float = 1e-4,
    weight_decay: float = 1e-5,
    stats_images: int = 256,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 500,
    resume: bool = True,
    seed: int = 0,
    pre_trained: bool = True,
    num_workers: int = 0,
    progress: bool = True,
    device: str = "cpu",
    cache_megabytes: float = 2048.0,
    crop_size: int | None = None,
    bf16: bool = False,
) -> Path:
    """Distil a PDN teacher from a timm backbone on the images below ``image_dir``.

    Args:
        image_dir: Folder of training images (searched recursively), or a list of image files.
        output: Where the final teacher state dict is written.
        backbone: timm model name or local weights file (via :mod:`anomalib_hyperbolic.backbones`);
            the paper uses WideResNet-101 (``wide_resnet101_2``).
        layers: Backbone feature levels whose features are regressed.
        model_size: ``"small"`` (PDN-S) or ``"medium"`` (PDN-M).
        out_channels: PDN output channels (384).
        image_size: Side of the square training images (the PDN is fully convolutional, so a
            teacher distilled at one size can be used at another).
        steps: Optimisation steps in total (a resumed run continues up to this number).
        batch_size: Images per step.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        stats_images: Images used to estimate the per-channel target mean/std.
        checkpoint: Checkpoint file (default: ``<output>.ckpt``).
        checkpoint_every: Save a checkpoint every this many steps (and at the end).
        resume: Continue from ``checkpoint`` when it exists.
        seed: Random seed (initialisation, data order).
        pre_trained: Load the backbone's pretrained weights (``False`` only for tests).
        num_workers: DataLoader workers.
        progress: Show a progress bar.
        device: Torch device.
        cache_megabytes: Keep the resized images and their targets in memory when they fit in this
            many MiB (the backbone then runs once per image, not once per step); ``0``: never.
        crop_size: Train on random ``crop_size`` crops of the ``image_size`` images: the teacher learns
            the content scale of ``image_size`` inputs at a fraction of the cost (a PDN-S step at 256 px
            costs about 30 GFLOP an image; a 128 px crop a quarter of that). ``None``: whole images.
            Crops are random, so their targets are computed every step (no in-memory cache).
        bf16: Run the teacher's forward under bf16 autocast (float32 weights, optimiser and loss).
            With the PDN in channels-last, a CPU with bf16 matrix units runs a step about 4x faster.

    Returns:
        The path of the teacher state dict.

    Raises:
        ValueError: empty or unreadable ``image_dir``, unreadable image, unknown PDN size, bad numbers,
            or a checkpoint from a different configuration.
    """
    from tqdm.auto import tqdm

    for name, value in (("steps", steps), ("batch_size", batch_size), ("image_size", image_size)):
        if int(value) < 1:
            msg = f"`{name}` must be >= 1, got {value}."
            raise ValueError(msg)
    if image_size < 64:
        msg = f"`image_size` must be >= 64 for a PDN, got {image_size}."
        raise ValueError(msg)
    if crop_size is not None and not 64 <= crop_size <= image_size:
        msg = f"`crop_size` must be between 64 and image_size ({image_size}), got {crop_size}."
        raise ValueError(msg)
    size = parse_model_size(model_size)
    if isinstance(image_dir, (str, Path)):
        files = list_images(image_dir, "image_dir")
    else:
        files = [Path(file) for file in image_dir]
        if not files:
            msg = "`image_dir` is an empty list of images."
            raise ValueError(msg)
    output = Path(output)
    checkpoint = Path(checkpoint) if checkpoint is not None else output.with_suffix(output.suffix + ".ckpt")
    config = {  # a checkpoint resumes only under the same settings
        "backbone": str(backbone),
        "target_normalization": "backbone",  # earlier checkpoints normalised every backbone's input as ImageNet's
        "image_size": int(image_size),
        "crop_size": crop_size,
        "bf16": bool(bf16),
        "layers": list(layers),
        "model_size": size.value,
        "out_channels": int(out_channels),
    }

    torch.manual_seed(seed)
    target_net = DistillationTargets(str(backbone), layers, out_channels, pre_trained).to(device)
    teacher = build_pdn(size, out_channels).to(device)
    teacher.to(memory_format=torch.channels_last)  # faster convolutions on CPU; same weights and graph
    optimizer = torch.optim.Adam(teacher.parameters(), lr=lr, weight_decay=weight_decay)
    transforms = [Resize((image_size, image_size), antialias=True)]
    if crop_size is not None:
        transforms.append(RandomCrop(crop_size))
    dataset = ImageFileDataset(files, transform=Compose(transforms))
    side = crop_size or image_size
    grid = tuple(teacher(torch.zeros(1, 3, side, side, device=device)).shape[-2:])

    start = 0
    if resume and checkpoint.is_file():
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        if state.get("config") != config:
            msg = f"Checkpoint {str(checkpoint)!r} was made with {state.get('config')}, not {config}; use another file."
            raise ValueError(msg)
        teacher.load_state_dict(state["teacher"])
        optimizer.load_state_dict(state["optimizer"])
        mean, std, start = state["target_mean"].to(device), state["target_std"].to(device), int(state["step"])
        logger.info("Resumed distillation from %s at step %d", checkpoint, start)
    else:
        stats_loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
        total = torch.zeros(out_channels, dtype=torch.float64, device=device)
        total_sq = torch.zeros_like(total)
        count = 0
        for images in tqdm(stats_loader, desc="Target statistics", disable=not progress):
            target = target_net(images.to(device), grid).double()
            total += target.sum(dim=(0, 2, 3))
            total_sq += target.pow(2).sum(dim=(0, 2, 3))
            count += target.shape[0] * target.shape[2] * target.shape[3]
            if count >= stats_images * grid[0] * grid[1]:
                break
        mean64 = total / count
        mean = mean64.float().view(1, -1, 1, 1)
        std = (total_sq / count - mean64.pow(2)).clamp_min(1e-12).sqrt().float().view(1, -1, 1, 1)

    def save(step: int) -> None:
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "teacher": teacher.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "target_mean": mean.cpu(),
            "target_std": std.cpu(),
            "config": config,
        }
        tmp = checkpoint.with_suffix(checkpoint.suffix + ".tmp")
        torch.save(payload, tmp)
        tmp.replace(checkpoint)

    # The targets are fixed (no augmentation): computed once and kept in memory when they fit, so a
    # step costs the PDN's forward and backward alone. Same batches in the same order either way.
    pairs = None
    if crop_size is None:
        pairs = _targets_in_memory(dataset, target_net, grid, batch_size, cache_megabytes, device, progress)
    generator = torch.Generator().manual_seed(seed + start)
    loader = DataLoader(
        pairs if pairs is not None else dataset,
        batch_size=batch_size,
        shuffle=True,
        drop_last=len(dataset) >= batch_size,
        num_workers=num_workers,
        generator=generator,
    )
    batches = _infinite(loader)
    teacher.train()
    bar = tqdm(range(start, steps), initial=start, total=steps, desc="Distilling PDN teacher", disable=not progress)
    for step in bar:
        if pairs is not None:
            images, raw_target = (tensor.to(device) for tensor in next(batches))
        else:
            images = next(batches).to(device)
            raw_target = target_net(images, grid)
        target = (raw_target - mean) / std
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            prediction = teacher(images.contiguous(memory_format=torch.channels_last))
        loss = F.mse_loss(prediction.float(), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            save(step + 1)
    save(max(start, steps))
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(teacher.state_dict(), output)
    return output


def training_normal_images(data: dict[str, Any], subset: dict[str, Any] | None = None) -> list[Path]:
    """The image files of a datamodule's training split (after the benchmark's ``subset``, if given).

    ``data`` is a benchmark config's ``data`` entry (``{class_path: ..., init_args: {...}}``); only the
    training split is read, so a teacher distilled on these images never sees a validation or test image.
    """
    from anomalib_hyperbolic.benchmark import apply_subset, import_class

    datamodule = import_class(data["class_path"])(**data.get("init_args", {}))
    datamodule.prepare_data()
    apply_subset(datamodule, subset)  # sets the datamodule up; no subset: the whole training split
    return [Path(path) for path in datamodule.train_data.samples["image_path"]]


def distill_teacher_on_training_split(
    output: str | Path,
    data: dict[str, Any],
    subset: dict[str, Any] | None = None,
    **distill_arguments: Any,
) -> Path:
    """:func:`distill_teacher` on a datamodule's training images: a benchmark ``prepare`` step.

    E.g. in a benchmark config (the PDN CPU protocol, ``configs/benchmark/mt_pdn_cpu.yaml``)::

        prepare:
          - path: .cache/mt_pdn_cpu/teacher.pth
            function: anomalib_hyperbolic.models.hypad.distill.distill_teacher_on_training_split
            init_args: {data: *data, backbone: .cache/weights/tf_efficientnet_lite0.safetensors, steps: 4000}
    """
    files = training_normal_images(data, subset)
    logger.info("Distilling a PDN teacher on %d training images", len(files))
    return distill_teacher(files, output, **distill_arguments)


def main(argv: Sequence[str] | None = None) -> int:
    """``anomalib-hyperbolic distill-teacher``: command-line front end of :func:`distill_teacher`."""
    parser = argparse.ArgumentParser(
        prog="anomalib-hyperbolic distill-teacher",
        description="Distil a PDN teacher (HypAD / EfficientAD) from a timm backbone on a folder of images.",
    )
    parser.add_argument("--image-dir", required=True, help="folder of training images (recursive)")
    parser.add_argument("--output", required=True, help="teacher state dict to write (.pth)")
    parser.add_argument("--backbone", default="wide_resnet101_2", help="timm name or local weights file")
    parser.add_argument("--layers", nargs="+", default=["layer2", "layer3"], help="backbone feature levels")
    parser.add_argument("--model-size", default="small", help="small (PDN-S) or medium (PDN-M)")
    parser.add_argument("--out-channels", type=int, default=384)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--crop-size", type=int, default=None, help="train on random crops of this size")
    parser.add_argument("--bf16", action="store_true", help="the teacher's forward under bf16 autocast")
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--stats-images", type=int, default=256)
    parser.add_argument("--checkpoint", default=None, help="checkpoint file (default OUTPUT.ckpt)")
    parser.add_argument("--checkpoint-every", type=int, default=500)
    parser.add_argument("--no-resume", action="store_true", help="start afresh even if the checkpoint exists")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        path = distill_teacher(
            image_dir=args.image_dir,
            output=args.output,
            backbone=args.backbone,
            layers=args.layers,
            model_size=args.model_size,
            out_channels=args.out_channels,
            image_size=args.image_size,
            crop_size=args.crop_size,
            bf16=args.bf16,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            stats_images=args.stats_images,
            checkpoint=args.checkpoint,
            checkpoint_every=args.checkpoint_every,
            resume=not args.no_resume,
            seed=args.seed,
            num_workers=args.num_workers,
            progress=not args.no_progress,
            device=args.device,
        )
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    print(f"teacher: {path} ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
