"""Training-step cost of the PDN models on this CPU: float32 or bf16 autocast, NCHW or channels-last.

One optimiser step of EfficientAd's and HypAD's torch models (student + autoencoder; random frozen
teacher, channel statistics set to 0/1) on one 256 px image and one penalty image, as in their
training. Every variant is stepped once per round, rounds repeated, so that a drift of the machine's
speed touches every variant alike; the figure is the median step.

    OMP_NUM_THREADS=2 .venv/bin/python scripts/pdn_step_cost.py --threads 2 --rounds 5
"""

from __future__ import annotations

import argparse
import itertools
import time
from statistics import median

import torch
from anomalib.models.image.efficient_ad.torch_model import EfficientAdModel

from anomalib_hyperbolic.models.hypad.torch_model import HypADModel

MODELS = {"EfficientAd": lambda: EfficientAdModel(teacher_out_channels=384), "HypAD": HypADModel}


def build(name: str, channels_last: bool) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The model in training mode with a frozen teacher, and Adam over the student and autoencoder."""
    model = MODELS[name]()
    with torch.no_grad():
        model.mean_std["mean"].zero_()
        model.mean_std["std"].fill_(1.0)
    model.teacher.eval().requires_grad_(False)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model.train(), torch.optim.Adam([*model.student.parameters(), *model.ae.parameters()], lr=1e-4)


def step(
    model: torch.nn.Module, optimiser: torch.optim.Optimizer, images: tuple[torch.Tensor, ...], bf16: bool
) -> float:
    """One optimiser step; the seconds it took."""
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        losses = model(batch=images[0], batch_imagenet=images[1])
    optimiser.zero_grad()
    sum(losses).backward()
    optimiser.step()
    return time.perf_counter() - start


def main() -> None:
    """Print the median step of every variant."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = (torch.rand(1, 3, args.image_size, args.image_size), torch.rand(1, 3, args.image_size, args.image_size))
    variants = {}
    for name, bf16, channels_last in itertools.product(MODELS, (False, True), (False, True)):
        model, optimiser = build(name, channels_last)
        step(model, optimiser, images, bf16)  # warm-up: first-call allocations and kernel selection
        variants[(name, bf16, channels_last)] = (model, optimiser)
    seconds: dict[tuple, list[float]] = {key: [] for key in variants}
    for _ in range(args.rounds):
        for (name, bf16, channels_last), (model, optimiser) in variants.items():
            seconds[(name, bf16, channels_last)].append(step(model, optimiser, images, bf16))
    print(f"| model | precision | memory format | median s/step ({args.threads} threads, {args.rounds} rounds) |")
    print("|---|---|---|---|")
    for (name, bf16, channels_last), values in seconds.items():
        layout = "channels-last" if channels_last else "NCHW"
        print(f"| {name} | {'bf16 autocast' if bf16 else 'float32'} | {layout} | {median(values):.3f} |")


if __name__ == "__main__":
    main()
