"""How good is a distilled PDN teacher? Nearest-neighbour anomaly scores on its features and on its targets.

Every student of EfficientAD / HypAD learns to predict the teacher's features, so a teacher whose
features do not separate defects from normal texture caps both models. The measurement here: the
PatchCore-style score (distance of each test patch to the nearest patch of a memory bank of training
normals) computed twice on the same images and the same PDN output grid,

- on the teacher's output ``PDN(x)``;
- on the distillation targets it regresses (:class:`~.distill.DistillationTargets`: the backbone's
  features, 3x3-averaged, on the PDN grid, standardised with the training images' channel statistics),

plus the teacher's regression error on the test images. A teacher close to its backbone scores close
to the targets' AUROCs; a gap says distil longer (or on other images) before comparing students.

Command line (one protocol config gives data, split, subset, size and backbone)::

    anomalib-hyperbolic teacher-quality --config configs/benchmark/mt_pdn_cpu.yaml --teacher T.pth [T2.pth ...]
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .distill import DistillationTargets, build_pdn
from .torch_model import load_teacher_weights

logger = logging.getLogger(__name__)

__all__ = ["main", "nearest_neighbour_maps", "teacher_quality"]


def nearest_neighbour_maps(bank: torch.Tensor, features: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Euclidean distance of every feature vector of ``features`` (N, C, h, w) to its nearest row of ``bank`` (M, C)."""
    n, c, h, w = features.shape
    if bank.ndim != 2 or bank.shape[1] != c:
        msg = f"memory bank of shape {tuple(bank.shape)} does not match features with {c} channels"
        raise ValueError(msg)
    queries = features.permute(0, 2, 3, 1).reshape(-1, c)
    distances = torch.cat([torch.cdist(part, bank).amin(dim=1) for part in queries.split(chunk)])
    return distances.reshape(n, h, w)


def _auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    from torchmetrics.functional.classification import binary_auroc

    return float(binary_auroc(scores.flatten().float(), labels.flatten().long()))


def _images(dataset: Any, image_size: int) -> Iterable[tuple[torch.Tensor, int, torch.Tensor]]:
    """``(image (1, 3, s, s) in [0, 1], label, mask (s, s))`` of every item of an anomalib dataset."""
    from torchvision.transforms.v2.functional import resize

    for index in range(len(dataset)):
        item = dataset[index]
        image = resize(item.image, [image_size, image_size], antialias=True).unsqueeze(0)
        mask = item.gt_mask if item.gt_mask is not None else torch.zeros(item.image.shape[-2:])
        mask = resize(mask.float().view(1, 1, *mask.shape[-2:]), [image_size, image_size]).view(image_size, image_size)
        yield image, int(item.gt_label), mask > 0.5


@torch.no_grad()
def _maps(extract: Callable[[torch.Tensor], torch.Tensor], images: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([extract(image) for image in images])


def teacher_quality(
    teachers: dict[str, str | Path],
    backbone: str,
    layers: Sequence[str],
    train_dataset: Any,
    test_dataset: Any,
    image_size: int = 128,
    bank_fraction: float = 0.1,
    seed: int = 0,
    model_size: str = "small",
    out_channels: int = 384,
    pre_trained: bool = True,
) -> list[dict[str, Any]]:
    """One row per feature source: the targets, then each teacher (name -> file).

    Each row: ``image_AUROC`` (maximum of the nearest-neighbour map), ``pixel_AUROC`` (the map
    upsampled to the masks), and for teachers ``test_mse`` (mean squared error to the standardised
    targets on the test images). The memory bank is a seeded ``bank_fraction`` of the training
    patches, the same patches for every source.
    """
    train = list(_images(train_dataset, image_size))
    test = list(_images(test_dataset, image_size))
    labels = torch.tensor([label for _, label, _ in test])
    masks = torch.stack([mask for _, _, mask in test])
    if labels.unique().numel() < 2:
        msg = "teacher_quality needs normal and anomalous test images"
        raise ValueError(msg)
    grid = tuple(build_pdn(model_size, out_channels)(train[0][0]).shape[-2:])
    targets = DistillationTargets(backbone, layers, out_channels, pre_trained).eval()
    train_targets = _maps(lambda image: targets(image, grid), [image for image, _, _ in train])
    mean = train_targets.mean(dim=(0, 2, 3), keepdim=True)
    std = train_targets.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    test_targets = (_maps(lambda image: targets(image, grid), [image for image, _, _ in test]) - mean) / std
    sources: dict[str, tuple[torch.Tensor, torch.Tensor]] = {"targets": ((train_targets - mean) / std, test_targets)}
    for name, file in teachers.items():
        teacher: nn.Module = build_pdn(model_size, out_channels).eval()
        load_teacher_weights(teacher, file, model_size)
        sources[name] = (
            _maps(teacher, [image for image, _, _ in train]),
            _maps(teacher, [image for image, _, _ in test]),
        )
    channels = train_targets.shape[1]
    patches = train_targets.shape[0] * grid[0] * grid[1]
    generator = torch.Generator().manual_seed(seed)
    keep = torch.randperm(patches, generator=generator)[: max(1, int(bank_fraction * patches))]
    rows = []
    for name, (train_features, test_features) in sources.items():
        bank = train_features.permute(0, 2, 3, 1).reshape(-1, channels)[keep]
        maps = nearest_neighbour_maps(bank, test_features)
        pixel_maps = F.interpolate(maps.unsqueeze(1), size=(image_size, image_size), mode="bilinear").squeeze(1)
        row: dict[str, Any] = {
            "source": name,
            "image_AUROC": _auroc(maps.amax(dim=(1, 2)), labels),
            "pixel_AUROC": _auroc(pixel_maps, masks),
        }
        if name != "targets":
            row["test_mse"] = float(F.mse_loss(test_features, test_targets))
        rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """``anomalib-hyperbolic teacher-quality``: the table for one protocol config and some teachers."""
    parser = argparse.ArgumentParser(
        prog="anomalib-hyperbolic teacher-quality",
        description="Nearest-neighbour AUROCs of PDN teachers' features vs their distillation targets.",
    )
    parser.add_argument("--config", required=True, help="benchmark config: data, subset, image_size")
    parser.add_argument("--teacher", nargs="+", required=True, help="teacher files (state dicts)")
    parser.add_argument("--backbone", default=".cache/weights/tf_efficientnet_lite0.safetensors")
    parser.add_argument("--layers", nargs="+", default=["blocks.2", "blocks.4"])
    parser.add_argument("--image-size", type=int, default=None, help="default: the config's image_size")
    parser.add_argument("--bank-fraction", type=float, default=0.1)
    parser.add_argument("--output", default=None, help="also write the rows as JSON here")
    parser.add_argument("--smoke", action="store_true", help="the config's --smoke size")
    args = parser.parse_args(argv)

    from anomalib_hyperbolic.benchmark import apply_subset, import_class, load_config, prepare_files

    config = load_config(args.config, smoke=args.smoke)
    prepare_files({"prepare": [step for step in config.get("prepare") or [] if "teacher" not in step["function"]]})
    data = config["data"]
    datamodule = import_class(data["class_path"])(**data.get("init_args", {}))
    datamodule.prepare_data()
    apply_subset(datamodule, config.get("subset"))
    rows = teacher_quality(
        {Path(file).name: file for file in args.teacher},
        args.backbone,
        args.layers,
        datamodule.train_data,
        datamodule.test_data,
        image_size=args.image_size or int(config.get("image_size", 128)),
        bank_fraction=args.bank_fraction,
    )
    print("| source | image AUROC | pixel AUROC | test MSE to targets |")
    print("|---|---|---|---|")
    for row in rows:
        mse = f"{row['test_mse']:.3f}" if "test_mse" in row else "-"
        print(f"| {row['source']} | {row['image_AUROC']:.3f} | {row['pixel_AUROC']:.3f} | {mse} |")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
