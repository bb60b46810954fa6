"""Shared harness every model of this package must pass.

fit (1 epoch, tiny images) -> test (AUROC/AUPRO/F1 present and finite) -> predict with anomalib's
visualizer -> export to OpenVINO and ONNX -> anomalib's ``OpenVINOInferencer`` (f32) gives the
torch model's score and anomaly map within 1e-3.

Cases come from ``tests/harness_cases.py``; anomalib's own Padim runs through the same harness as
a self-check of the harness itself.
"""

from __future__ import annotations

import csv
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.deploy import ExportType, OpenVINOInferencer
from anomalib.engine import Engine
from anomalib.metrics import AUPRO, AUROC, Evaluator, F1Score

import anomalib_hyperbolic.models as plugin_models
from anomalib_hyperbolic.testing import make_mvtec_like_dataset
from tests.harness_cases import HARNESS_CASES, HarnessCase

REPO = Path(__file__).resolve().parents[2]
SELF_CHECK = "anomalib.Padim"
CASES: dict[str, HarnessCase] = {
    **HARNESS_CASES,
    SELF_CHECK: HarnessCase(init_args={"backbone": "resnet18", "pre_trained": False, "layers": ["layer1", "layer2"]}),
}


def _evaluator() -> Evaluator:
    metrics = [
        AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
        F1Score(fields=["pred_label", "gt_label"], prefix="image_"),
        AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
        AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
    ]
    return Evaluator(test_metrics=metrics)


def _model_class(name: str) -> type:
    if name == SELF_CHECK:
        from anomalib.models import Padim

        return Padim
    return getattr(plugin_models, name)


def test_every_registered_model_has_a_case() -> None:
    missing = sorted(set(plugin_models.__all__) - set(HARNESS_CASES))
    assert not missing, f"models without a harness case in tests/harness_cases.py: {missing}"


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_mvtec_like_dataset(tmp_path_factory.mktemp("harness_data"), n_train=6, n_test_good=3, n_test_defect=3)


@pytest.mark.parametrize("name", sorted(CASES))
def test_model_harness(name: str, dataset_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # OpenVINOInferencer writes ./openvino_cache
    torch.manual_seed(0)
    case = CASES[name]
    size = case.image_size
    model_class = _model_class(name)
    pre_processor = model_class.configure_pre_processor(image_size=(size, size))
    model = model_class(**case.init_args, pre_processor=pre_processor, evaluator=_evaluator())

    if case.datamodule_factory is not None:
        datamodule = case.datamodule_factory(dataset_root, size)
    else:
        datamodule = MVTecAD(
            root=dataset_root,
            category="synthetic",
            train_batch_size=4,
            eval_batch_size=4,
            num_workers=0,
        )
    engine = Engine(
        max_epochs=case.max_epochs,
        max_steps=case.max_steps,
        accelerator="cpu",
        devices=1,
        default_root_dir=tmp_path / "results",
        logger=False,
        enable_progress_bar=False,
    )

    # fit
    engine.fit(model=model, datamodule=datamodule)

    # test: metrics present and finite
    results = engine.test(model=model, datamodule=datamodule)
    assert results, "Engine.test returned no metrics"
    metrics = results[0]
    for key in ("image_AUROC", "image_F1Score", "pixel_AUROC", "pixel_AUPRO"):
        assert key in metrics, f"{key} missing from {sorted(metrics)}"
        assert math.isfinite(float(metrics[key])), f"{key} = {metrics[key]}"

    # predict with anomalib's visualizer
    predictions = engine.predict(model=model, datamodule=datamodule)
    assert predictions
    first = predictions[0]
    assert first.pred_score is not None
    assert first.anomaly_map is not None
    assert torch.isfinite(first.anomaly_map).all()
    written = list((tmp_path / "results").rglob("*.png"))
    assert written, "anomalib's ImageVisualizer wrote no image"

    # export: OpenVINO and ONNX
    model.eval()
    openvino_xml = engine.export(model=model, export_type=ExportType.OPENVINO, export_root=tmp_path / "export")
    onnx_file = engine.export(model=model, export_type=ExportType.ONNX, export_root=tmp_path / "export")
    assert openvino_xml is not None
    assert Path(openvino_xml).is_file()
    assert onnx_file is not None
    assert Path(onnx_file).is_file()

    # parity: torch forward (pre-processor + model + post-processor) vs the exported graphs
    image_path = sorted((dataset_root / "synthetic" / "test").rglob("*.png"))[-1]
    from anomalib.data.utils import read_image

    image = read_image(image_path, as_tensor=True).unsqueeze(0)
    with torch.no_grad():
        expected = model(image)
    for exported in (Path(openvino_xml), Path(onnx_file)):
        inferencer = OpenVINOInferencer(path=exported, device="CPU", config={"INFERENCE_PRECISION_HINT": "f32"})
        result = inferencer.predict(image.squeeze(0).permute(1, 2, 0).numpy())
        np.testing.assert_allclose(
            np.asarray(result.pred_score).reshape(-1),
            expected.pred_score.numpy().reshape(-1),
            rtol=1e-3,
            atol=1e-3,
            err_msg=f"{name}: score differs ({exported.suffix})",
        )
        np.testing.assert_allclose(
            np.asarray(result.anomaly_map).reshape(-1),
            expected.anomaly_map.numpy().reshape(-1),
            rtol=1e-3,
            atol=1e-3,
            err_msg=f"{name}: anomaly map differs ({exported.suffix})",
        )

    # edge inference with OpenVINO alone (examples/openvino_inference.py): no torch import, same scores
    images = image_path.parent
    code = textwrap.dedent(
        f"""
        import runpy, sys
        sys.argv = ["openvino_inference.py", {str(openvino_xml)!r}, {str(images)!r}, "--output", "scored"]
        try:
            runpy.run_path({str(REPO / "examples" / "openvino_inference.py")!r}, run_name="__main__")
        except SystemExit as exit_code:
            assert exit_code.code == 0, exit_code.code
        assert "torch" not in sys.modules, "the OpenVINO example imported torch"
        """
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    with (tmp_path / "scored" / "scores.csv").open() as handle:
        rows = {Path(row["file"]).name: float(row["score"]) for row in csv.DictReader(handle)}
    assert len(rows) == len(list(images.glob("*.png")))
    assert abs(rows[image_path.name] - float(expected.pred_score.reshape(-1)[0])) < 1e-3
    assert len(list((tmp_path / "scored").glob("*.png"))) == len(rows)
