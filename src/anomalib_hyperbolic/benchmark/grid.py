"""The benchmark grid: every cell in its own subprocess, resumable, then tables and plots; the CLI.

``anomalib-hyperbolic benchmark --config configs/benchmark/mt_cpu.yaml [--smoke]``
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from anomalib_hyperbolic.benchmark.cells import cell_file, run_and_write_cell, untimed_reason
from anomalib_hyperbolic.benchmark.config import load_config, prepare_data_once, prepare_files, provision
from anomalib_hyperbolic.benchmark.reports import collect, plot, write_precision_table, write_tables

DESCRIPTION = "Side-by-side benchmark of this package's models and anomalib's (PatchCore, EfficientAd, ...)."


def run_grid(
    config_path: str | Path,
    only: Sequence[str] | None = None,
    parallel: int = 1,
    time_only: bool = False,
    smoke: bool = False,
    precision: bool = False,
) -> list[dict[str, Any]]:
    """Run every missing cell in a subprocess (``parallel`` at a time), then write the tables and plots.

    Before the cells, once: the backbone provisioning (``provision``), the ``prepare`` steps (see
    :func:`.config.prepare_files`) and the datamodule's ``prepare_data()``. With ``time_only``, nothing
    is trained: every finished cell that has saved weights and no latency figures is rebuilt and
    timed on this machine instead.
    With ``smoke``, the config's ``smoke`` size runs (see :func:`.config.apply_smoke`). With ``precision``,
    every cell also scores its test images with OpenVINO at f32 and at the default precision
    (:func:`.timing.precision_effect`), as does ``precision_effect: true`` in the config.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    config = load_config(config_path, smoke=smoke)
    output = Path(config["output"])
    (output / "cells").mkdir(parents=True, exist_ok=True)
    specs = [spec for spec in config["models"] if not only or spec["name"] in only or spec.get("group") in only]
    env = {**os.environ, **{key: str(value) for key, value in (config.get("env") or {}).items()}}
    if not time_only:
        provision(config)  # first: prepare steps may need the weights (e.g. distilling a PDN teacher)
        prepare_files(config)
        prepare_data_once(config)
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"))
    with Progress(*columns, TimeElapsedColumn()) as progress:
        task = progress.add_task("benchmark" if not time_only else "timing", total=len(specs))

        def run_one(spec: dict[str, Any]) -> None:
            target = cell_file(output, spec["name"])
            if time_only:
                reason = untimed_reason(output, spec["name"])
                if reason:
                    progress.console.print(f"[dim]{spec['name']}: not timed ({reason})")
                    progress.advance(task)
                    return
            elif target.is_file():
                progress.console.print(f"[dim]{spec['name']}: done earlier, kept ({target})")
                progress.advance(task)
                return
            progress.console.print(f"{spec['name']}: started")
            command = [sys.executable, "-m", "anomalib_hyperbolic.benchmark", "--cell", spec["name"]]
            command += ["--config", str(config_path), *(["--time-only"] if time_only else [])]
            command += ["--smoke"] if smoke else []
            command += ["--precision-effect"] if precision else []
            log = output / "cells" / f"{target.stem}{'.timing' if time_only else ''}.log"
            with log.open("w") as handle:
                result = subprocess.run(command, env=env, stdout=handle, stderr=subprocess.STDOUT, check=False)
            if result.returncode != 0:
                progress.console.print(f"[red]{spec['name']}: failed (exit {result.returncode}), see {log}")
            else:
                progress.console.print(f"{spec['name']}: finished")
            progress.advance(task)

        with ThreadPoolExecutor(max_workers=max(1, int(parallel))) as pool:
            list(pool.map(run_one, specs))
    rows = collect(output)
    write_tables(rows, output)
    write_precision_table(rows, output)
    plot(rows, output)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """``anomalib-hyperbolic benchmark`` (and the per-cell subprocess entry)."""
    parser = argparse.ArgumentParser(prog="anomalib-hyperbolic benchmark", description=DESCRIPTION)
    parser.add_argument(
        "--config", required=True, help="benchmark YAML (keys: see anomalib_hyperbolic.benchmark.config)"
    )
    parser.add_argument("--only", nargs="*", help="run only these cell names")
    parser.add_argument("--parallel", type=int, default=1, help="cells run at once (e.g. several on one GPU)")
    parser.add_argument(
        "--time-only", action="store_true", help="train nothing: time the cells trained elsewhere (saved weights)"
    )
    parser.add_argument(
        "--precision-effect",
        action="store_true",
        help="also score the test images with the OpenVINO export at f32 and at the default precision",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="run the config's `smoke` size (tiny, generated data: what CI runs)"
    )
    parser.add_argument("--cell", help=argparse.SUPPRESS)  # internal: run one cell in this process
    args = parser.parse_args(argv)
    if args.cell:
        config = load_config(args.config, smoke=args.smoke)
        config["precision_effect"] = config.get("precision_effect") or args.precision_effect
        spec = next((item for item in config["models"] if item["name"] == args.cell), None)
        if spec is None:
            parser.error(f"no model named {args.cell!r} in {args.config}")
        run_and_write_cell(config, spec, time_only=args.time_only)
        return 0
    rows = run_grid(
        args.config,
        args.only,
        parallel=args.parallel,
        time_only=args.time_only,
        smoke=args.smoke,
        precision=args.precision_effect,
    )
    output = Path(load_config(args.config, smoke=args.smoke)["output"])
    print((output / ("summary.md" if (output / "summary.md").is_file() else "results.md")).read_text())
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
