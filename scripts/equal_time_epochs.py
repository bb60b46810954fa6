"""How many epochs of each comparison cell fit in a reference cell's training time, on this machine.

Issue 32 compares HADNet with the U-Net and supervised SuperSimpleNet "at equal training wall time". A
``max_time`` cap would tie each seed's schedule to the CPU it ran on (and to whatever shared it), so the
budget is fixed once as an epoch count instead: each comparison cell trains ``--steps`` steps with the
cell's own stack (precision, channels-last, batch size, normalisation) and no validation; its seconds per
step (after the first) times its steps per epoch give its epoch time, and the reference cell's recorded
``train_seconds`` (run on this same machine, CPU quiet) divided by that is the number of epochs printed.
Run it on a quiet CPU, on the machine that ran the reference cell:

    PYTHONPATH=src HF_HOME=.cache/hf HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 .venv/bin/python scripts/equal_time_epochs.py \
        configs/benchmark/mt_supervised.yaml --reference "HADNet (...) s0" --cells "U-Net (...) s0" "..."
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import tempfile
import warnings
from pathlib import Path
from typing import Any

from anomalib_hyperbolic.benchmark import cell_file, load_config, machine
from anomalib_hyperbolic.benchmark.cell_model import prepare_cell
from anomalib_hyperbolic.benchmark.cells import cell_engine
from anomalib_hyperbolic.metrics import TrainingStepTimer


def seconds_per_epoch(config: dict[str, Any], spec: dict[str, Any], steps: int) -> tuple[float, int]:
    """The cell's training seconds per step (``steps`` steps, first one left out) and its steps per epoch."""
    datamodule, _, model = prepare_cell(config, spec)
    timer = TrainingStepTimer()
    short = {**spec, "max_epochs": 1, "max_steps": -1, "max_time": None}
    with tempfile.TemporaryDirectory() as root:
        engine = cell_engine(
            config, short, model, Path(root), callbacks=[timer], limit_train_batches=steps, limit_val_batches=0
        )
        engine.fit(model, datamodule=datamodule)
    if timer.steps_per_second is None:
        msg = f"cell {spec['name']!r} ran fewer than 2 training steps; raise --steps"
        raise RuntimeError(msg)
    return 1.0 / timer.steps_per_second, len(datamodule.train_dataloader())


def main() -> None:
    """One line per comparison cell: seconds per step, per epoch, and the epochs of the reference's time."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="benchmark config")
    parser.add_argument("--reference", required=True, help="finished cell whose train_seconds is the budget")
    parser.add_argument("--cells", nargs="+", required=True, help="cells to size (seed suffix included)")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per cell")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    config = load_config(args.config)
    specs = {spec["name"]: spec for spec in config["models"]}
    unknown = [name for name in [args.reference, *args.cells] if name not in specs]
    if unknown:
        msg = f"No cell {unknown} in {args.config}; its cells: {sorted(specs)}"
        raise SystemExit(msg)
    row_path = cell_file(Path(config["output"]), args.reference)
    if not row_path.is_file():
        msg = f"{row_path} does not exist: run cell {args.reference!r} first (on this machine)."
        raise SystemExit(msg)
    budget = float(json.loads(row_path.read_text())["train_seconds"])
    print(f"machine: {machine()}; reference {args.reference!r}: {budget:.0f} s of training")
    for name in args.cells:
        step_seconds, steps_per_epoch = seconds_per_epoch(config, specs[name], args.steps)
        epoch_seconds = step_seconds * steps_per_epoch
        print(
            f"{name}: {step_seconds:.3f} s/step x {steps_per_epoch} steps = {epoch_seconds:.1f} s/epoch -> "
            f"{math.floor(budget / epoch_seconds)} epochs in {budget:.0f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
