"""A grid's figures: rows collected from the cell files, tables (per cell, per configuration over seeds), plots.

``results.csv``/``results.md`` (one row per cell), ``summary.csv``/``summary.md`` (mean ± std over
seeds, see :func:`seed_summary`), ``precision.md`` (OpenVINO f32 against the default precision) and
``metrics.png``, ``latency_vs_aupro.png``, ``hypad_curvature.png``.
"""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# pixel_MIoU: the pooled binary IoU (normal and defect pixels); pixel_CategoryIoU: the mean IoU over defect types
METRIC_COLUMNS = ["image_AUROC", "image_F1Score", "pixel_AUROC", "pixel_AUPRO", "pixel_MIoU", "pixel_CategoryIoU"]
# the same threshold-free metrics on raw model scores, before anomalib's normalise-and-clamp
RAW_METRIC_COLUMNS = ["raw_image_AUROC", "raw_pixel_AUROC", "raw_pixel_AUPRO"]
# the mean per-type IoU of the raw maps at the validation-fitted threshold (what pixel_CategoryIoU reports),
# at an oracle threshold fitted on the evaluated images (a diagnostic, never a result) and at probability 0.5
# (probability maps only); see metrics.CategoryIoUThresholds
THRESHOLD_COLUMNS = ["pixel_CategoryIoU_val_threshold", "pixel_CategoryIoU_oracle", "pixel_CategoryIoU_at_0.5"]
# the last training epoch's IoU at probability 0.5 of the training masks (metrics.LogitDiagnostics)
DIAGNOSTIC_COLUMNS = ["train_iou_at_0.5"]
SUMMARY_COLUMNS = [*METRIC_COLUMNS, *RAW_METRIC_COLUMNS, *THRESHOLD_COLUMNS, *DIAGNOSTIC_COLUMNS]
LATENCY_COLUMNS = ["torch_latency_ms_b1", "openvino_latency_ms_b1"]
TRAINING_COLUMNS = ["train_seconds", "train_steps_per_second", "train_images_per_second"]
COLUMNS = [
    "name",
    *METRIC_COLUMNS,
    *RAW_METRIC_COLUMNS,
    *THRESHOLD_COLUMNS,
    *DIAGNOSTIC_COLUMNS,
    "train_seconds",
    "train_steps_per_second",
    "peak_memory_mb",
    "torch_latency_ms_b1",
    "torch_throughput_ips_b8",
    "openvino_latency_ms_b1",
    "openvino_throughput_ips_b8",
]


def collect(output: Path) -> list[dict[str, Any]]:
    """Rows of every finished cell."""
    return [json.loads(path.read_text()) for path in sorted((output / "cells").glob("*.json"))]


def _format(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return "" if value is None else str(value)


def seed_summary(rows: list[dict[str, Any]], columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Mean and sample standard deviation (n - 1) of every metric over cells that differ only in ``seed``.

    Cells expanded from one model's ``seeds`` share its ``group``; other cells are grouped by class,
    init arguments, training limits, data wrapper, data overrides, training precision (``precision``,
    ``f32_evaluation``) and evaluated split (``evaluated_on``), named after their first cell without a
    trailing seed tag (``" s1"``). Returns one entry per group, in first-seen order, with ``seeds``,
    ``class_path``, ``init_args`` and, per metric and latency column, ``<column>_mean``,
    ``<column>_std`` and ``<column>_values`` (one value per seed).
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        limits = [row.get(key) for key in ("max_epochs", "max_steps", "max_time")]
        data = [row.get("data_wrapper"), row.get("data_overrides")]  # e.g. DRA's K and seen class
        # the training precision (rows written before it was recorded trained at 32-true)
        precision = [row.get("precision") or "32-true", row.get("f32_evaluation")]
        split = row.get("evaluated_on") or "test"  # rows written before evaluate_on were scored on test
        key = json.dumps(
            [row.get("class_path"), row.get("init_args", {}), limits, data, precision, split],
            sort_keys=True,
            default=str,
        )
        groups.setdefault(f"group:{row['group']}" if "group" in row else key, []).append(row)
    summary = []
    for members in groups.values():
        first = members[0]
        entry: dict[str, Any] = {
            "name": first.get("group") or re.sub(r"\s+s\d+$", "", first["name"]),
            "seeds": [member.get("seed") for member in members],
            "class_path": first.get("class_path", ""),
            "init_args": first.get("init_args", {}),
        }
        for column in columns or (*SUMMARY_COLUMNS, *LATENCY_COLUMNS, *TRAINING_COLUMNS):
            values = [float(member[column]) for member in members if member.get(column) is not None]
            if values:
                entry[f"{column}_values"] = values
                entry[f"{column}_mean"] = statistics.fmean(values)
                entry[f"{column}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        summary.append(entry)
    return summary


def write_tables(rows: list[dict[str, Any]], output: Path) -> None:
    """``results.csv`` and ``results.md`` with one row per cell, and ``summary.md``/``.csv`` over seeds.

    The summary (mean ± std per configuration, see :func:`seed_summary`) is written when some
    configuration ran with more than one seed or came from a ``seeds`` list; its columns are the
    metrics any cell has, then the means of training time and latency (each a median of runs).
    """
    with (output / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: row.get(key, "") for key in COLUMNS})
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_format(row.get(key)) for key in COLUMNS) + " |" for row in rows]
    (output / "results.md").write_text("\n".join(lines) + "\n")
    summary = seed_summary(rows)
    if not any(len(entry["seeds"]) > 1 for entry in summary) and not any("group" in row for row in rows):
        return
    columns = [
        column
        for column in (*SUMMARY_COLUMNS, *TRAINING_COLUMNS, *LATENCY_COLUMNS)
        if any(f"{column}_mean" in entry for entry in summary)
    ]
    header = ["name", "seeds", *columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    with (output / "summary.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "seeds", *(f"{column}_{part}" for column in columns for part in ("mean", "std"))])
        for entry in summary:
            seeds = ", ".join(str(seed) for seed in entry["seeds"])
            cells = [entry["name"], seeds]
            for column in columns:
                if f"{column}_mean" not in entry:
                    cells.append("")
                else:  # metrics to 3 decimals, seconds and milliseconds to 1; one seed: no spread
                    digits = 3 if column in SUMMARY_COLUMNS else 2 if column.endswith("per_second") else 1
                    spread = f" ± {entry[f'{column}_std']:.{digits}f}" if len(entry[f"{column}_values"]) > 1 else ""
                    cells.append(f"{entry[f'{column}_mean']:.{digits}f}{spread}")
            lines.append("| " + " | ".join(cells) + " |")
            values = [entry.get(f"{column}_{part}", "") for column in columns for part in ("mean", "std")]
            writer.writerow([entry["name"], seeds, *values])
    (output / "summary.md").write_text("\n".join(lines) + "\n")


PRECISION_METRICS = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO")


def write_precision_table(rows: list[dict[str, Any]], output: Path) -> None:
    """``precision.md``: each configuration's OpenVINO metrics at f32 and at the default precision (over seeds).

    From the ``ov_*`` keys of ``precision_effect`` cells: per metric the f32 mean, the default
    precision's mean, and the largest |default - f32| of any seed (the issue's bound is per run); then
    the largest |score change|, both batch-1 latencies and the speed-up. Nothing is written when no
    cell measured it.
    """
    derived = []
    for row in rows:
        if row.get("ov_f32_latency_ms_b1") is None:
            continue
        extra = {}
        for metric in PRECISION_METRICS:
            f32, default = row.get(f"ov_f32_{metric}"), row.get(f"ov_default_{metric}")
            if f32 is not None and default is not None:
                extra[f"ov_change_{metric}"] = abs(float(default) - float(f32))
        derived.append({**row, **extra})
    if not derived:
        return
    columns = [
        *(f"ov_{kind}_{metric}" for metric in PRECISION_METRICS for kind in ("f32", "default", "change")),
        "ov_max_score_change",
        "ov_f32_latency_ms_b1",
        "ov_default_latency_ms_b1",
    ]
    header = ["name", "seeds"]
    header += [f"{metric} f32 / default (worst Δ)" for metric in PRECISION_METRICS]
    header += ["max Δ score", "f32 ms", "default ms", "speed-up"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for entry in seed_summary(derived, columns):
        cells = [entry["name"], ", ".join(str(seed) for seed in entry["seeds"])]
        for metric in PRECISION_METRICS:
            if f"ov_f32_{metric}_mean" not in entry:
                cells.append("")
                continue
            worst = max(entry[f"ov_change_{metric}_values"])
            cells.append(
                f"{entry[f'ov_f32_{metric}_mean']:.3f} / {entry[f'ov_default_{metric}_mean']:.3f} ({worst:.3f})"
            )
        f32_ms, default_ms = entry["ov_f32_latency_ms_b1_mean"], entry["ov_default_latency_ms_b1_mean"]
        score = entry.get("ov_max_score_change_values")
        cells += [
            f"{max(score):.3f}" if score else "",
            f"{f32_ms:.1f}",
            f"{default_ms:.1f}",
            f"{f32_ms / default_ms:.2f}x",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    (output / "precision.md").write_text("\n".join(lines) + "\n")


PLOTTED_METRICS = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO")


def plot(rows: list[dict[str, Any]], output: Path) -> None:
    """One figure per question, each configuration's seeds pooled (mean, error bar = std over seeds).

    ``metrics.png``: accuracy per model (horizontal bars, so long names never overlap);
    ``latency_vs_aupro.png``: CPU latency against AUPRO, each model's PyTorch and OpenVINO points joined
    (only when some configuration was timed and scored; a stale figure from an earlier run is removed);
    ``hypad_curvature.png`` (only with HypAD cells; a stale one is removed): AUPRO and AUROC against the
    curvature, one line per clipping radius.
    """
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    summary = seed_summary(rows)
    if not summary:
        return
    metrics = [key for key in PLOTTED_METRICS if any(f"{key}_mean" in entry for entry in summary)]
    # latency-only configurations have no accuracy bar to draw
    scored = [entry for entry in summary if any(f"{key}_mean" in entry for key in metrics)]
    height = 0.8 / max(1, len(metrics))
    figure, axis = plt.subplots(figsize=(8, 1.0 + 0.25 * len(scored) * max(1, len(metrics))))
    for index, key in enumerate(metrics):
        positions = [i + index * height for i in range(len(scored))]
        means = [entry.get(f"{key}_mean", float("nan")) for entry in scored]
        errors = [entry.get(f"{key}_std", 0.0) for entry in scored]
        axis.barh(positions, means, height=height, xerr=errors, capsize=2, label=key)
    labels = [f"{entry['name']} (n={len(entry['seeds'])})" for entry in scored]
    axis.set_yticks([i + height * (len(metrics) - 1) / 2 for i in range(len(scored))], labels, fontsize=7)
    axis.invert_yaxis()
    axis.set_xlim(0, 1)
    axis.set_xlabel("mean over seeds (error bar: std)")
    axis.legend(fontsize=7, loc="lower right")
    axis.set_title("accuracy per model")
    figure.tight_layout()
    figure.savefig(output / "metrics.png", dpi=120)
    plt.close(figure)

    timed = []  # (colour index, configuration, its (latency, marker) points)
    for index, entry in enumerate(summary):
        points = [
            (entry[f"{runtime}_latency_ms_b1_mean"], marker)
            for runtime, marker in (("torch", "o"), ("openvino", "s"))
            if f"{runtime}_latency_ms_b1_mean" in entry
        ]
        if points and "pixel_AUPRO_mean" in entry:
            timed.append((index, entry, points))
    if not timed:  # e.g. a `latency: false` grid: no empty figure (and none left from an earlier run)
        (output / "latency_vs_aupro.png").unlink(missing_ok=True)
    else:
        figure, axis = plt.subplots(figsize=(8, 5))
        for index, entry, points in timed:
            aupro, spread, colour = entry["pixel_AUPRO_mean"], entry["pixel_AUPRO_std"], f"C{index % 10}"
            latencies = [latency for latency, _ in points]
            axis.plot(latencies, [aupro] * len(points), "-", color=colour, label=entry["name"])
            for latency, marker in points:
                axis.errorbar(latency, aupro, yerr=spread, fmt=marker, color=colour, capsize=2)
        axis.set_xscale("log")
        axis.set_xlabel("CPU latency, batch 1 (ms, log); o PyTorch, s OpenVINO")
        axis.set_ylabel("AUPRO (mean ± std over seeds)")
        axis.set_title("latency vs AUPRO")
        axis.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
        figure.tight_layout()
        figure.savefig(output / "latency_vs_aupro.png", dpi=120)
        plt.close(figure)

    hypad = [entry for entry in summary if entry["class_path"].endswith("HypAD")]
    if hypad:
        # HypAD's defaults: c = 0.01, clipping radius 2.3 (a None radius is "no clipping")
        def curvature(entry: dict[str, Any]) -> float:
            return float(entry["init_args"].get("c", entry["init_args"].get("curvature", 0.01)))

        def radius(entry: dict[str, Any]) -> str:
            value = entry["init_args"].get("clip_radius", 2.3)
            return "none" if value is None else f"{float(value):g}"

        figure, axes = plt.subplots(1, 2, figsize=(9, 4), sharex=True)
        for style, clip in zip(("-", "--", ":", "-."), sorted({radius(entry) for entry in hypad}), strict=False):
            group = sorted((entry for entry in hypad if radius(entry) == clip), key=curvature)
            for axis, key in zip(axes, ("pixel_AUPRO", "image_AUROC"), strict=True):
                axis.errorbar(
                    [curvature(entry) for entry in group],
                    [entry.get(f"{key}_mean", float("nan")) for entry in group],
                    yerr=[entry.get(f"{key}_std", 0.0) for entry in group],
                    fmt=style + "o",
                    capsize=2,
                    label=f"clip {clip}",
                )
                axis.set_title(key)
        for axis in axes:
            axis.set_xscale("symlog", linthresh=0.001)
            axis.set_xlabel("curvature c")
            axis.legend(fontsize=7)
        figure.suptitle("HypAD: curvature and clipping (mean ± std over seeds)")
        figure.tight_layout()
        figure.savefig(output / "hypad_curvature.png", dpi=120)
        plt.close(figure)
    else:  # like the latency figure: none left from an earlier run with HypAD cells
        (output / "hypad_curvature.png").unlink(missing_ok=True)
