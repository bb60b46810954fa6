"""Every model trains under Lightning's DDP (2 CPU processes, gloo) as it does in one process.

For each model, ``ddp_worker.py`` fits and tests it once in one process (global batch 8) and once
under ``strategy="ddp"`` with 2 ranks (4 images each), on the same generated data and seed:

* the state fitted outside the gradient step (statistics, hyperplanes, selections, references) is
  the same as in one process: exactly for selections, to 1e-5 (relative) for sums, whose order of
  addition changes with the sharding;
* every rank ends with the same model (a digest of the whole state, gathered from each rank);
* the test metrics agree within 0.2 image AUROC and 0.1 pixel AUROC: the training batches are not
  the same images in the same order (Lightning's ``DistributedSampler`` against a ``RandomSampler``),
  so only a bound is meaningful; 8 test images give AUROC steps of 1/16;
* the checkpoint written under DDP loads with ``weights_only=True`` and rank 0 exports to ONNX.

``test_cli_ddp`` runs ``anomalib train --trainer.strategy ddp --trainer.devices 2`` (two models by
default, every model with ``-m slow``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from anomalib_hyperbolic.testing import make_mvtec_like_dataset
from tests.harness_cases import HARNESS_CASES
from tests.integration.ddp_worker import DDP_CASES
from tests.integration.test_model_harness import _cli_value

WORKER = Path(__file__).with_name("ddp_worker.py")
MODELS = sorted(DDP_CASES)


@pytest.fixture(scope="module")
def ddp_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_mvtec_like_dataset(tmp_path_factory.mktemp("ddp_data"), n_train=16)


def _environment() -> dict[str, str]:
    # one thread per rank on the 2-core machine; no hub
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}


def _run(model: str, data: Path, devices: int, out: Path) -> dict:
    command = [sys.executable, str(WORKER), "--model", model, "--data", str(data), "--devices", str(devices)]
    run = subprocess.run(
        [*command, "--out", str(out)], capture_output=True, text=True, env=_environment(), timeout=900, check=False
    )
    assert run.returncode == 0, f"{model} on {devices} process(es) failed:\n{run.stdout[-2000:]}\n{run.stderr[-4000:]}"
    return json.loads(out.read_text())


@pytest.mark.parametrize("model", MODELS)
def test_ddp_matches_one_process(model: str, ddp_data: Path, tmp_path: Path) -> None:
    single = _run(model, ddp_data, 1, tmp_path / "single.json")
    ddp = _run(model, ddp_data, 2, tmp_path / "ddp.json")
    assert ddp["world_size"] == 2
    assert single["world_size"] == 1

    assert set(ddp["fitted"]) == set(single["fitted"]) != set(), "the fitted state was not found"
    for key, expected in single["fitted"].items():
        assert np.size(expected) > 0, f"{key} is empty"
        np.testing.assert_allclose(ddp["fitted"][key], expected, rtol=1e-5, atol=1e-7, err_msg=key)
    for key in (k for k in single["fitted"] if "selected" in k):
        assert ddp["fitted"][key] == single["fitted"][key], f"{key}: a different feature subset"

    assert len(set(ddp["rank_fitted_digests"])) == 1, "the ranks fitted different state"
    assert len(set(ddp["rank_digests"])) == 1, "the ranks ended with different models"

    for key, bound in (("image_AUROC", 0.2), ("pixel_AUROC", 0.1)):
        assert abs(ddp["metrics"][key] - single["metrics"][key]) <= bound, (key, ddp["metrics"], single["metrics"])
    assert ddp["checkpoint_keys"] > 0
    assert Path(ddp["onnx"]).is_file()


# The CLI path under DDP (the launcher re-runs ``anomalib train`` in each rank) is the same for every
# model; the default run checks it for a plain datamodule (SimpleNet) and a wrapped one (DRA's
# FewShotAnomalies), the other models with ``-m slow``. Each model's DDP behaviour is checked above.
CLI_DEFAULT = {"SimpleNet", "DRA"}


@pytest.mark.parametrize(
    "model", [name if name in CLI_DEFAULT else pytest.param(name, marks=pytest.mark.slow) for name in MODELS]
)
def test_cli_ddp(model: str, ddp_data: Path, tmp_path: Path) -> None:
    """``anomalib train --model NAME --trainer.strategy ddp --trainer.devices 2 --trainer.accelerator cpu``."""
    case = HARNESS_CASES[model]
    flags = [item for key, value in case.init_args.items() for item in (f"--model.{key}", _cli_value(value))]
    if model == "DRA":
        data = [
            "--data", "anomalib_hyperbolic.data.FewShotAnomalies",
            "--data.datamodule", "anomalib.data.MVTecAD",
            "--data.datamodule.root", str(ddp_data),
            "--data.datamodule.category", "synthetic",
            "--data.datamodule.train_batch_size", "4",
            "--data.datamodule.eval_batch_size", "4",
            "--data.datamodule.num_workers", "0",
            "--data.num_anomalies", "2", "--data.max_anomalies", "2", "--data.train_batches_per_epoch", "2",
        ]  # fmt: skip
    else:
        data = ["--data", "anomalib.data.MVTecAD", "--data.root", str(ddp_data), "--data.category", "synthetic"]
        data += ["--data.train_batch_size", "4", "--data.eval_batch_size", "4", "--data.num_workers", "0"]
    command = [str(Path(sys.executable).parent / "anomalib"), "train", "--model", model, *flags, *data]
    command += ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
    command += ["--trainer.max_epochs", "1", "--trainer.logger", "false", "--default_root_dir", str(tmp_path)]
    run = subprocess.run(command, capture_output=True, text=True, env=_environment(), cwd=tmp_path, timeout=900)
    assert run.returncode == 0, f"{run.stdout[-2000:]}\n{run.stderr[-4000:]}"
    assert "image_AUROC" in run.stdout + run.stderr, "anomalib train printed no test metrics"
    assert sorted(tmp_path.rglob("*.ckpt")), "no checkpoint written"
