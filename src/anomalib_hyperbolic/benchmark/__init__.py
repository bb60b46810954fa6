"""Side-by-side benchmark of this package's models and anomalib's (PatchCore, EfficientAd, ...).

``anomalib-hyperbolic benchmark --config configs/benchmark/mt_cpu.yaml`` (``--smoke``: the config's
tiny size on generated data, what CI runs)

Every cell of the grid (one model configuration) trains and tests on the same datamodule, split,
seed and backbone weights, in its own subprocess (clean peak-memory figures, isolation), and writes
``cells/<name>.json``. Finished cells are never recomputed, so an interrupted run resumes where it
stopped. Then the figures are collected into ``results.csv`` / ``results.md`` and plotted
(``metrics.png``, ``latency_vs_aupro.png``, ``hypad_curvature.png``).

Per cell: image AUROC and F1, pixel AUROC, AUPRO (anomalib's, FPR limit 0.3), mIoU and the mean
per-type IoU at the validation-fitted, an oracle and (probability maps) the 0.5 threshold (when the
datamodule has masks), the last epoch's ``train_*`` figures, training wall time, peak resident
memory, and CPU latency at batch 1 and throughput at batch 8 in PyTorch eager and OpenVINO (same
process, warm-up, median of >= 20 runs). ``evaluate_on: validation`` scores the validation split
instead of the test split (see :mod:`.config`).

Training on an accelerator and timing on the edge CPU are separate steps: run the grid with
``accelerator: gpu``, ``latency: false`` and ``save_weights: true`` where the GPU is (``--parallel N``
runs N cells at once), bring ``<output>/cells`` and ``<output>/weights`` to the CPU machine and run
``--time-only``: each saved cell is rebuilt, given its trained state, and timed there.

Modules:

* :mod:`.config`: the YAML config (keys documented there), ``--smoke`` size, seeds, per-cell settings;
* :mod:`.subset`: the seeded per-image subset draw;
* :mod:`.cell_model`: a cell's datamodule and model, trained state saved and restored;
* :mod:`.cells`: one cell run (train, test, time) and its files;
* :mod:`.timing`: latency, throughput and OpenVINO's precision effect;
* :mod:`.reports`: tables and plots;
* :mod:`.grid`: the grid of subprocesses and the command line;
* :mod:`.progress`, :mod:`.training_progress`, :mod:`.quiet`, :mod:`.openvino_scoring`: what the main
  job adds (progress lines and their Lightning callback, quiet libraries, scoring a test set with
  OpenVINO alone); imported on use, not here.
"""

from __future__ import annotations

from anomalib_hyperbolic.benchmark.cell_model import (
    build_model,
    evaluator,
    load_trained_state,
    normalization_record,
    prepare_cell,
    trained_state,
    untrained_model,
    use_local_pdn_teacher,
)
from anomalib_hyperbolic.benchmark.cells import (
    cell_engine,
    cell_file,
    code_version,
    last_epoch_figures,
    latency_only_cell,
    load_trained_cell,
    probability_maps,
    run_and_write_cell,
    run_cell,
    time_cell,
    trained_cell_for_testing,
    transformed_test_batches,
    untimed_reason,
    weights_file,
)
from anomalib_hyperbolic.benchmark.config import (
    EVALUATION_SPLITS,
    MIXED_PRECISIONS,
    NORMALIZATIONS,
    apply_smoke,
    cell_channels_last,
    cell_image_size,
    cell_normalization,
    cell_precision,
    cell_seed,
    evaluation_split,
    expand_seeds,
    import_class,
    load_config,
    precision_arguments,
    prepare_data_once,
    prepare_files,
    provision,
    training_limits,
    validation_interval,
)
from anomalib_hyperbolic.benchmark.grid import main, run_grid
from anomalib_hyperbolic.benchmark.reports import (
    COLUMNS,
    DIAGNOSTIC_COLUMNS,
    LATENCY_COLUMNS,
    METRIC_COLUMNS,
    PRECISION_METRICS,
    RAW_METRIC_COLUMNS,
    SUMMARY_COLUMNS,
    THRESHOLD_COLUMNS,
    TRAINING_COLUMNS,
    collect,
    plot,
    seed_summary,
    write_precision_table,
    write_tables,
)
from anomalib_hyperbolic.benchmark.subset import apply_subset, dataset_root, subset_image_names
from anomalib_hyperbolic.benchmark.timing import PRECISIONS, batch_infer_request, machine, precision_effect, time_model

__all__ = [
    "COLUMNS",
    "DIAGNOSTIC_COLUMNS",
    "EVALUATION_SPLITS",
    "LATENCY_COLUMNS",
    "METRIC_COLUMNS",
    "MIXED_PRECISIONS",
    "NORMALIZATIONS",
    "PRECISIONS",
    "PRECISION_METRICS",
    "RAW_METRIC_COLUMNS",
    "SUMMARY_COLUMNS",
    "THRESHOLD_COLUMNS",
    "TRAINING_COLUMNS",
    "apply_smoke",
    "apply_subset",
    "batch_infer_request",
    "build_model",
    "cell_channels_last",
    "cell_engine",
    "cell_file",
    "cell_image_size",
    "cell_normalization",
    "cell_precision",
    "cell_seed",
    "code_version",
    "collect",
    "dataset_root",
    "evaluation_split",
    "evaluator",
    "expand_seeds",
    "import_class",
    "last_epoch_figures",
    "latency_only_cell",
    "load_config",
    "load_trained_cell",
    "load_trained_state",
    "machine",
    "main",
    "normalization_record",
    "plot",
    "precision_arguments",
    "precision_effect",
    "prepare_cell",
    "prepare_data_once",
    "prepare_files",
    "probability_maps",
    "provision",
    "run_and_write_cell",
    "run_cell",
    "run_grid",
    "seed_summary",
    "subset_image_names",
    "time_cell",
    "time_model",
    "trained_cell_for_testing",
    "trained_state",
    "training_limits",
    "transformed_test_batches",
    "untimed_reason",
    "untrained_model",
    "use_local_pdn_teacher",
    "validation_interval",
    "weights_file",
    "write_precision_table",
    "write_tables",
]
