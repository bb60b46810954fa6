"""Shared harness every model of this package must pass.

fit (1 epoch, tiny images) -> test (AUROC/AUPRO/F1 present and finite) -> predict with anomalib's
visualizer -> export to OpenVINO and ONNX -> anomalib's ``OpenVINOInferencer`` (f32) gives the
torch model's score and anomaly map within 1e-3.

Cases come from ``tests/harness_cases.py``; anomalib's own Padim runs through the same harness as
a self-check of the harness itself.
"""

from __future__ import annotations

import csv
import json
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


def _cli_value(value: object) -> str:
    """An init argument as anomalib's (jsonargparse) CLI reads it."""
    return value if isinstance(value, str) else json.dumps(value)


def _assert_parity(exported: Path, image: torch.Tensor, expected: object, label: str) -> None:
    """anomalib's ``OpenVINOInferencer`` (f32) on ``exported`` gives the torch score and map within 1e-3."""
    inferencer = OpenVINOInferencer(path=exported, device="CPU", config={"INFERENCE_PRECISION_HINT": "f32"})
    result = inferencer.predict(image.squeeze(0).permute(1, 2, 0).numpy())
    for field in ("pred_score", "anomaly_map"):
        np.testing.assert_allclose(
            np.asarray(getattr(result, field)).reshape(-1),
            getattr(expected, field).numpy().reshape(-1),
            rtol=1e-3,
            atol=1e-3,
            err_msg=f"{label}: {field} differs",
        )


def _check_checkpoint_exports(
    name: str,
    model_class: type,
    case: HarnessCase,
    checkpoint: Path,
    image: torch.Tensor,
    expected: object,
    tmp_path: Path,
) -> None:
    """``Engine.export(ckpt_path=...)`` (ONNX) and ``anomalib export --ckpt_path`` (OpenVINO) match torch."""
    from_checkpoint = Engine(accelerator="cpu", devices=1, logger=False).export(
        model=model_class(**case.init_args),
        export_type=ExportType.ONNX,
        ckpt_path=checkpoint,
        export_root=tmp_path / "export_from_checkpoint",
    )
    cli_root = tmp_path / "export_cli"
    flags = [item for key, value in case.init_args.items() for item in (f"--model.{key}", _cli_value(value))]
    class_path = f"{model_class.__module__.split('.lightning_model')[0]}.{model_class.__name__}"
    command = [str(Path(sys.executable).parent / "anomalib"), "export", "--model", class_path, *flags]
    command += ["--ckpt_path", str(checkpoint), "--export_type", "openvino", "--export_root", str(cli_root)]
    run = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    cli_xml = next(cli_root.rglob("model.xml"))
    for exported in (Path(from_checkpoint), cli_xml):
        _assert_parity(exported, image, expected, f"{name} from its checkpoint ({exported})")


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
        _assert_parity(exported, image, expected, f"{name} ({exported.suffix})")

    # export from the trained checkpoint, as `anomalib export --ckpt_path` does: Python (ONNX) and the
    # CLI (OpenVINO) rebuild the model from the checkpoint alone and must give the same outputs.
    # (Not for the Padim self-check: anomalib's own models cannot load a checkpoint trained with a
    # custom AUPRO evaluator, whose fpr_limit buffer is saved; this package's models drop such keys.)
    checkpoints = sorted((tmp_path / "results").rglob("*.ckpt"))
    assert checkpoints, "Engine.fit saved no checkpoint"
    if name != SELF_CHECK:
        _check_checkpoint_exports(name, model_class, case, checkpoints[-1], image, expected, tmp_path)
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


@pytest.mark.parametrize("name", ["SimpleNet", "DRA", "HADNet"])
def test_model_trains_under_bf16_autocast_and_evaluates_in_float32(
    name: str, dataset_root: Path, tmp_path: Path
) -> None:
    """``TrainOnlyMixedPrecision("bf16-mixed")`` (the benchmark's ``precision: bf16-mixed``): no dtype error.

    Training steps run under CPU bf16 autocast, validation and test steps in float32; metrics are finite.
    """
    from anomalib_hyperbolic.precision import TrainOnlyMixedPrecision

    torch.manual_seed(0)
    case = HARNESS_CASES[name]
    size = case.image_size
    model_class = _model_class(name)
    model = model_class(
        **case.init_args,
        pre_processor=model_class.configure_pre_processor(image_size=(size, size)),
        evaluator=_evaluator(),
        visualizer=False,
    )
    autocast: dict[str, set[object]] = {"training_step": set(), "validation_step": set(), "test_step": set()}

    def recording(hook: str) -> object:
        step = getattr(model, hook)

        def wrapped(*args: object, **kwargs: object) -> object:
            enabled = torch.is_autocast_enabled("cpu")
            autocast[hook].add(torch.get_autocast_dtype("cpu") if enabled else None)
            return step(*args, **kwargs)

        return wrapped

    for hook in autocast:
        setattr(model, hook, recording(hook))
    if case.datamodule_factory is not None:
        datamodule = case.datamodule_factory(dataset_root, size)
    else:
        datamodule = MVTecAD(
            root=dataset_root, category="synthetic", train_batch_size=4, eval_batch_size=4, num_workers=0
        )
    engine = Engine(
        max_epochs=1,
        max_steps=case.max_steps,
        accelerator="cpu",
        devices=1,
        plugins=[TrainOnlyMixedPrecision("bf16-mixed", device="cpu")],
        default_root_dir=tmp_path / "results",
        logger=False,
        enable_progress_bar=False,
    )
    engine.fit(model=model, datamodule=datamodule)
    metrics = engine.test(model=model, datamodule=datamodule, verbose=False)[0]
    assert autocast == {"training_step": {torch.bfloat16}, "validation_step": {None}, "test_step": {None}}
    for key in ("image_AUROC", "image_F1Score", "pixel_AUROC", "pixel_AUPRO"):
        assert math.isfinite(float(metrics[key])), f"{key} = {metrics[key]}"
    assert all(parameter.dtype == torch.float32 for parameter in model.parameters())  # weights stay float32
