"""One benchmark cell: train, test and time a model configuration (in its own process); its files.

A grid (:mod:`.grid`) runs every cell as ``python -m anomalib_hyperbolic.benchmark --cell NAME``;
:func:`run_and_write_cell` is that process's work. A cell's row goes to ``cells/<name>.json``
(:func:`cell_file`, written atomically: a cell counts as done only when complete), its trained
state, with ``save_weights``, to ``weights/<name>.pt`` (:func:`weights_file`).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from anomalib_hyperbolic.benchmark.cell_model import (
    load_trained_state,
    normalization_record,
    prepare_cell,
    trained_state,
    untrained_model,
)
from anomalib_hyperbolic.benchmark.config import (
    MIXED_PRECISIONS,
    cell_channels_last,
    cell_precision,
    cell_seed,
    evaluation_split,
    load_config,
    precision_arguments,
    training_limits,
    validation_interval,
)
from anomalib_hyperbolic.benchmark.timing import machine, precision_effect, time_model


def cell_file(output: Path, name: str) -> Path:
    """Where a cell's row lives: ``<output>/cells/<name>.json``, the name made file-safe."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    return output / "cells" / f"{safe}.json"


def weights_file(output: Path, name: str) -> Path:
    """Where a cell's trained state lives with ``save_weights``: ``<output>/weights/<name>.pt``."""
    return output / "weights" / f"{cell_file(output, name).stem}.pt"


def cell_engine(
    config: dict[str, Any], spec: dict[str, Any], model: Any, root: Path, callbacks: Sequence[Any], **options: Any
) -> Any:
    """An anomalib ``Engine`` for a cell: its limits, precision, memory format, validation interval and devices.

    No logger and no progress bar; ``options`` are further ``Trainer`` arguments
    (e.g. ``deterministic=True``).
    """
    from anomalib.engine import Engine

    accelerator = spec.get("accelerator", config.get("accelerator", "cpu"))
    precision, f32_evaluation = cell_precision(config, spec)
    callbacks = list(callbacks)
    if cell_channels_last(config, spec):
        from anomalib_hyperbolic.precision import ChannelsLastTraining

        callbacks.append(ChannelsLastTraining())
    return Engine(
        **training_limits(spec),
        **precision_arguments(precision, f32_evaluation, accelerator),
        check_val_every_n_epoch=validation_interval(spec, getattr(model, "trainer_arguments", None)),
        accelerator=accelerator,
        devices=spec.get("devices", config.get("devices", 1)),
        strategy=spec.get("strategy", config.get("strategy", "auto")),
        default_root_dir=root,
        logger=False,
        enable_progress_bar=False,
        callbacks=callbacks,
        **options,
    )


def run_cell(
    config: dict[str, Any], spec: dict[str, Any], cell_dir: Path, weights: Path | None = None
) -> dict[str, Any] | None:
    """Train, test and (unless ``latency: false``) time one model configuration; return its row.

    With ``weights``, the state that training changed is saved there (see :func:`trained_state`).
    Under DDP (a cell's ``devices``/``strategy``) only rank 0 returns the row; the other ranks ``None``.
    """
    import resource

    import torch

    from anomalib_hyperbolic.metrics import CategoryIoUThresholds, RawScoreMetrics, TrainingStepTimer

    if spec.get("latency_only"):
        return latency_only_cell(config, spec, cell_dir)
    datamodule, split_sizes, model = prepare_cell(config, spec)
    evaluate_on = evaluation_split(config, spec)
    pixel_metrics = bool(config.get("pixel_metrics", True))
    raw_scores = RawScoreMetrics(pixel_metrics=pixel_metrics)
    callbacks: list[Any] = [raw_scores]
    if pixel_metrics:
        callbacks.append(CategoryIoUThresholds(probability_threshold=0.5 if probability_maps(spec, model) else None))
    step_timer = TrainingStepTimer()
    initial = {key: value.detach().cpu().clone() for key, value in model.state_dict().items()}
    limits = training_limits(spec)
    _, f32_evaluation = cell_precision(config, spec)
    # raw_scores and the IoU thresholds: trainer callbacks, run before the post-processor
    engine = cell_engine(config, spec, model, cell_dir, callbacks=[*callbacks, step_timer])
    fitted = fitted_state_file(cell_dir)
    fit = fit_or_resume(config, spec, engine, model, datamodule, step_timer, initial, fitted)
    if evaluate_on == "validation":  # every rank: metrics sync
        metrics = engine.test(model=model, dataloaders=datamodule.val_dataloader(), verbose=False)[0]
    else:
        metrics = engine.test(model=model, datamodule=datamodule, verbose=False)[0]
    if not engine.trainer.is_global_zero:
        return None  # under DDP rank 0 alone saves, times and writes the cell
    row: dict[str, Any] = {"name": spec["name"], **limits}
    row.update({key: value for key, value in fit.items() if key not in row})
    row["world_size"] = engine.trainer.world_size
    row["precision"] = str(engine.trainer.precision)  # the trainer's, after the model's trainer_arguments
    if row["precision"] in MIXED_PRECISIONS:
        row["f32_evaluation"] = f32_evaluation
    row["channels_last"] = cell_channels_last(config, spec)
    row["check_val_every_n_epoch"] = engine.trainer.check_val_every_n_epoch
    row.update({key: float(value) for key, value in metrics.items()})
    row.update(raw_scores.results)
    for callback in callbacks[1:]:  # the IoU at the validation, oracle and probability thresholds
        row.update(callback.results)
    row["evaluated_on"] = evaluate_on
    row["evaluated_images"] = raw_scores.images  # under DDP, rank 0's share
    row["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
        row["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
        row["gpu"] = torch.cuda.get_device_name()
    if weights is not None:
        weights.parent.mkdir(parents=True, exist_ok=True)
        torch.save(trained_state(model, initial), weights)
    if config.get("latency", {}) is not False:
        model.cpu()
        row.update(time_model(config, model, cell_dir / "export"))
    if config.get("precision_effect"):
        model.cpu()
        row.update(precision_effect(config, spec, model, datamodule, cell_dir / "export_precision"))
    row["split_sizes"] = split_sizes
    row["code_version"] = code_version()
    row["machine"] = machine()  # training seconds and latencies compare only between cells of one machine
    row["seed"] = cell_seed(config, spec)
    if "group" in spec:
        row["group"] = spec["group"]
    row["class_path"] = spec["class_path"]
    row["init_args"] = spec.get("init_args", {})
    row["normalization"] = normalization_record(config, spec, model)
    for key in ("data_wrapper", "data_overrides"):
        if spec.get(key):
            row[key] = spec[key]
    return row


def fitted_state_file(cell_dir: Path) -> Path:
    """Where a cell keeps its fitted model until its row is written: ``<cell_dir>/fitted_state.pt``.

    :func:`run_and_write_cell` deletes it once the row is written.
    """
    return cell_dir / "fitted_state.pt"


#: grid settings that do not change what a cell fits (evaluation and timing only)
NOT_FITTING_SETTINGS = ("models", "latency", "latency_after", "precision_effect", "smoke")


def cell_fingerprint(config: dict[str, Any], spec: dict[str, Any]) -> str:
    """The settings a fitted state was trained under: the cell's and the grid's (but ``NOT_FITTING_SETTINGS``)."""
    grid = {key: value for key, value in config.items() if key not in NOT_FITTING_SETTINGS}
    settings = {"config": grid, "spec": spec}
    return json.dumps(settings, sort_keys=True, default=str)


def fit_or_resume(
    config: dict[str, Any],
    spec: dict[str, Any],
    engine: Any,
    model: Any,
    datamodule: Any,
    step_timer: Any,
    initial: dict[str, Any],
    fitted: Path,
) -> dict[str, Any]:
    """Fit the cell's model, or load the state an earlier run of the same cell fitted; return the fit's figures.

    ``step_timer`` is the engine's :class:`~anomalib_hyperbolic.metrics.TrainingStepTimer`.

    After ``fit`` the model's changed state (:func:`trained_state`) and the fit's figures go to ``fitted``,
    so that a cell whose evaluation failed after a long fit is tested again without retraining (its row
    says ``resumed_from_fitted_state``). A state fitted under other settings (:func:`cell_fingerprint`)
    is not reused: the cell trains again.
    """
    import torch

    fingerprint = cell_fingerprint(config, spec)
    if fitted.is_file():
        saved = torch.load(fitted, map_location="cpu", weights_only=True)
        if saved.get("fingerprint") == fingerprint:
            load_trained_state(model, saved["state"])
            return {**saved["fit"], "resumed_from_fitted_state": True}
        print(f"{spec['name']}: {fitted} was fitted under other settings; training again", flush=True)
    start = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    # what training actually ran: a max_time cap can stop it before max_steps / max_epochs
    fit: dict[str, Any] = {
        "train_seconds": time.perf_counter() - start,
        "steps_run": engine.trainer.global_step,
        "epochs_run": engine.trainer.current_epoch,
        **last_epoch_figures(engine.trainer.callback_metrics),
    }
    # training-loop throughput (TrainingStepTimer: set-up passes and the first step excluded); steps are
    # optimiser steps (each rank takes every one), images are counted over all ranks
    if step_timer.steps_per_second is not None:
        fit["train_steps_per_second"] = step_timer.steps_per_second
        batch = getattr(datamodule, "train_batch_size", None)
        if batch:
            fit["train_images_per_second"] = step_timer.steps_per_second * batch * engine.trainer.world_size
    if engine.trainer.is_global_zero:
        fitted.parent.mkdir(parents=True, exist_ok=True)
        temporary = fitted.with_suffix(".tmp")
        torch.save({"fingerprint": fingerprint, "fit": fit, "state": trained_state(model, initial)}, temporary)
        temporary.replace(fitted)
    return fit


def probability_maps(spec: dict[str, Any], model: Any) -> bool:
    """Whether the cell's raw ``anomaly_map`` is a probability, so that 0.5 is a threshold worth reporting.

    The cell's ``probability_maps`` when set, else the model's ``anomaly_map_is_probability``
    (HADNet, the U-Net baseline: sigmoid outputs), else ``False``.
    """
    if spec.get("probability_maps") is not None:
        return bool(spec["probability_maps"])
    return bool(getattr(model, "anomaly_map_is_probability", False))


def last_epoch_figures(callback_metrics: dict[str, Any]) -> dict[str, float]:
    """The ``train_*`` figures a model logged in its last training epoch (losses, diagnostics), as floats.

    A figure logged with ``on_epoch=True`` (the losses of HADNet and the U-Net) is the epoch's mean,
    one logged at the epoch's end (their ``LogitDiagnostics``) is that value, and one logged per step
    only is the last step's. Lightning's suffixed copies (``*_step``, ``*_epoch``) are left out.
    """
    figures = {}
    for key, value in callback_metrics.items():
        if key.startswith("train_") and not key.endswith(("_step", "_epoch")):
            try:
                figures[key] = float(value)
            except (TypeError, ValueError):
                continue
    return figures


def code_version() -> str:
    """``git describe``-like ``<commit>[+changes]`` of the package's checkout, or ``unknown``."""
    root = Path(__file__).resolve().parents[1]  # the package folder, anomalib_hyperbolic/
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "."],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}+changes" if changed else commit


def latency_only_cell(config: dict[str, Any], spec: dict[str, Any], cell_dir: Path) -> dict[str, Any]:
    """A cell that is timed, not trained (see :func:`untrained_model`).

    With ``latency: false`` its timing is left to ``--time-only``.
    """
    row: dict[str, Any] = {"name": spec["name"], "latency_only": spec["latency_only"], "class_path": spec["class_path"]}
    row["init_args"] = spec.get("init_args", {})
    if config.get("latency", {}) is not False:
        row.update(time_model(config, untrained_model(config, spec), cell_dir / "export"))
        row["latency_machine"] = machine()
    row["code_version"] = code_version()
    return row


def load_trained_cell(config: dict[str, Any], spec: dict[str, Any], weights: Path) -> tuple[Any, Any]:
    """Rebuild a cell and load the state it saved with ``save_weights``; its ``(datamodule, model)``."""
    import torch

    datamodule, _, model = prepare_cell(config, spec)
    load_trained_state(model, torch.load(weights, map_location="cpu", weights_only=True))
    return datamodule, model


def trained_cell_for_testing(config_path: str | Path, name: str) -> tuple[Any, Any]:
    """Cell ``name`` (seed suffix included) of a benchmark config, rebuilt from its saved weights.

    Returns its datamodule, set up for testing, and its trained model in eval mode: what the analysis
    scripts score again. Raises ``ValueError`` for an unknown cell, ``FileNotFoundError`` without weights.
    """
    config = load_config(config_path)
    specs = [spec for spec in config["models"] if spec["name"] == name]
    if not specs:
        msg = f"No cell {name!r} in {config_path}; its cells: {[spec['name'] for spec in config['models']]}."
        raise ValueError(msg)
    weights = weights_file(Path(config["output"]), name)
    if not weights.is_file():
        msg = f"{weights} does not exist: run cell {name!r} with save_weights first."
        raise FileNotFoundError(msg)
    datamodule, model = load_trained_cell(config, specs[0], weights)
    model.eval()
    datamodule.setup("test")
    return datamodule, model


def transformed_test_batches(datamodule: Any, model: Any) -> Iterator[Any]:
    """The test batches, image and mask transformed as the pre-processor's ``on_test_batch_start`` does."""
    for index, batch in enumerate(datamodule.test_dataloader()):
        model.pre_processor.on_test_batch_start(None, model, batch, index)
        yield batch


def time_cell(config: dict[str, Any], spec: dict[str, Any], row: dict[str, Any], weights: Path) -> dict[str, Any]:
    """Rebuild a cell trained elsewhere, load its saved state, and add this CPU's latency to its row.

    A latency-only cell needs no saved state: it is rebuilt as :func:`untrained_model` makes it.
    """
    model = untrained_model(config, spec) if spec.get("latency_only") else load_trained_cell(config, spec, weights)[1]
    model.eval()
    # `latency_after`: the timing settings of a grid trained with `latency: false`
    timed = time_model(config, model, settings=config.get("latency_after") or config.get("latency") or {})
    timed["latency_machine"] = machine()
    return {**row, **timed}


def untimed_reason(output: Path, name: str) -> str:
    """Why a cell cannot (or need not) be timed by ``--time-only``; empty when it should be."""
    target = cell_file(output, name)
    if not target.is_file():
        return "not trained yet"
    row = json.loads(target.read_text())
    if "torch_latency_ms_b1" in row:
        return "already timed"
    if not row.get("latency_only") and not weights_file(output, name).is_file():
        return f"no saved weights at {weights_file(output, name)}"
    return ""


def run_and_write_cell(config: dict[str, Any], spec: dict[str, Any], time_only: bool = False) -> None:
    """Run one cell (or, with ``time_only``, time a cell trained elsewhere) and write its row.

    Under DDP, ranks other than 0 write nothing.
    """
    output = Path(config["output"])
    target = cell_file(output, spec["name"])
    cell_dir = output / "runs" / target.stem
    if time_only:
        row = time_cell(config, spec, json.loads(target.read_text()), weights_file(output, spec["name"]))
    else:
        save = spec.get("save_weights")
        save = config.get("save_weights", False) if save is None else save
        weights = weights_file(output, spec["name"]) if save else None
        row = run_cell(config, spec, cell_dir, weights)
        if row is None:  # a DDP rank other than 0
            return
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_suffix(".tmp")
    temporary.write_text(json.dumps(row, indent=2, default=str))
    temporary.replace(target)  # atomic: a cell counts as done only when complete
    fitted_state_file(cell_dir).unlink(missing_ok=True)  # rerunning a done cell trains
