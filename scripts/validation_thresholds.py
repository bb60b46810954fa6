"""Mean per-type IoU of trained benchmark cells on their validation images, at three pixel thresholds.

Rebuilds each cell from its saved weights (``save_weights``) and scores the **validation** split (never the
test images a result comes from) with the benchmark's :class:`~anomalib_hyperbolic.metrics.CategoryIoUThresholds`:
at the threshold anomalib's post-processor fitted on those same images (``val_threshold``), at probability
``--probability`` (for sigmoid maps) and at the best threshold for the mean per-type IoU on them
(``oracle``). Where the three agree, validation cannot tell the thresholds apart. One JSON line per cell.

    HF_HOME=.cache/hf HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python scripts/validation_thresholds.py \
        configs/benchmark/mt_supervised.yaml "HADNet (fixed-order features, context 16, 150 epochs, bf16) s0"
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import warnings

from anomalib.engine import Engine

from anomalib_hyperbolic.benchmark import trained_cell_for_testing
from anomalib_hyperbolic.metrics import CategoryIoUThresholds


def main() -> None:
    """One JSON line per cell: the three thresholds, their mean per-type IoU and each type's IoU."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="benchmark config")
    parser.add_argument("cells", nargs="+", help="cell names, seed suffix included")
    parser.add_argument("--probability", type=float, default=0.5, help="fixed probability threshold")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    for name in args.cells:
        datamodule, model = trained_cell_for_testing(args.config, name)  # every split is set up
        thresholds = CategoryIoUThresholds(probability_threshold=args.probability)
        with tempfile.TemporaryDirectory() as root:
            options = {"logger": False, "enable_progress_bar": False, "default_root_dir": root}
            engine = Engine(accelerator="cpu", callbacks=[thresholds], **options)
            engine.test(model=model, dataloaders=datamodule.val_dataloader(), verbose=False)
        print(json.dumps({"cell": name, "split": "validation", **thresholds.results}), flush=True)


if __name__ == "__main__":
    main()
