"""OpenVINO precision tools: exports named by module scope, scopes kept in f32, the f32-vs-default report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import openvino as ov
import pytest

from anomalib_hyperbolic.models import SimpleNet
from anomalib_hyperbolic.openvino_precision import (
    in_scopes,
    keep_scopes_in_f32,
    load_images,
    node_scope,
    precision_report,
    reduced_precision_nodes,
)
from tests.harness_cases import HARNESS_CASES

MAGNETIC_TILE = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "magnetic_tile"
BF16_CPU = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
SIZE = HARNESS_CASES["SimpleNet"].image_size


def test_node_scope_reads_the_innermost_module_of_torch_metadata() -> None:
    assert node_scope("['', 'model', 'model.blur', 'conv2d_15']") == "model.blur"
    assert node_scope("['', 'amax']") == ""
    assert node_scope("not a list") == ""


def test_in_scopes_includes_submodules_and_honours_exclusions() -> None:
    scopes = ("model", "!model.feature_extractor")
    assert in_scopes("model.discriminator.tail/node_Gemm_3", scopes)
    assert in_scopes("model/node_amax", scopes)
    assert not in_scopes("model.feature_extractor.blocks/node_Conv_1", scopes)
    assert not in_scopes("modelx/node_Conv_1", scopes)
    assert not in_scopes("node_Conv_1", scopes)  # a node of no module scope


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny SimpleNet exported to ONNX and OpenVINO (plain: no scope kept in f32)."""
    root = tmp_path_factory.mktemp("export")
    model = SimpleNet(**HARNESS_CASES["SimpleNet"].init_args).eval()
    onnx_path = model.to_onnx(root / "onnx", input_size=(SIZE, SIZE))
    xml = model.to_openvino(export_root=root / "openvino", input_size=(SIZE, SIZE))
    return onnx_path, xml


def test_exports_name_their_nodes_after_the_torch_modules(exported: tuple[Path, Path]) -> None:
    onnx_path, xml = exported
    names = [node.name for node in onnx.load(str(onnx_path)).graph.node]
    assert any(name.startswith("model.discriminator") for name in names)
    assert any(name.startswith("post_processor/") for name in names)
    friendly = [node.get_friendly_name() for node in ov.Core().read_model(xml).get_ordered_ops()]
    assert any(name.startswith("model.feature_extractor") for name in friendly)


def test_keep_scopes_in_f32_marks_the_ir_and_refuses_unknown_scopes(
    exported: tuple[Path, Path], tmp_path: Path
) -> None:
    _, xml = exported
    copy = tmp_path / "model.xml"
    copy.write_bytes(xml.read_bytes())
    copy.with_suffix(".bin").write_bytes(xml.with_suffix(".bin").read_bytes())
    already = copy.read_text().count("DisablePrecisionConversion")  # SimpleNet's own scopes (its extractor)
    marked = keep_scopes_in_f32(copy, ["model.discriminator"])
    assert marked > 0
    assert copy.read_text().count("DisablePrecisionConversion") == already + marked
    with pytest.raises(ValueError, match="no node of"):
        keep_scopes_in_f32(copy, ["model.no_such_module"])


@pytest.mark.skipif(not BF16_CPU, reason="this CPU has no bf16 units: OpenVINO's default precision is f32 here")
def test_a_scope_kept_in_f32_runs_in_f32_at_the_default_precision(exported: tuple[Path, Path], tmp_path: Path) -> None:
    _, xml = exported
    core = ov.Core()
    plain = reduced_precision_nodes(core.compile_model(core.read_model(xml), "CPU"))
    copy = tmp_path / "model.xml"
    copy.write_bytes(xml.read_bytes())
    copy.with_suffix(".bin").write_bytes(xml.with_suffix(".bin").read_bytes())
    keep_scopes_in_f32(copy, ["model", "post_processor", "!model.feature_extractor"])
    marked = reduced_precision_nodes(core.compile_model(core.read_model(copy), "CPU"))
    head = ("model", "post_processor", "!model.feature_extractor")
    plain_head = [name for name in plain if in_scopes(name, head)]
    marked_head = [name for name in marked if in_scopes(name, head)]
    assert plain_head, "the plain export runs its head in bf16"
    # OpenVINO 2026.4's CPU plugin drops the mark where it rebuilds a node (MatMul -> FullyConnected):
    # fewer head nodes run in bf16, not none (docs/edge_precision.md)
    assert len(marked_head) < len(plain_head), (plain_head, marked_head)
    assert any(in_scopes(name, ["model.feature_extractor"]) for name in marked), "the backbone stays in bf16"


@pytest.mark.skipif(not MAGNETIC_TILE.is_dir(), reason="needs ../shared/datasets/magnetic_tile")
def test_precision_report_compares_real_images_per_scope_and_per_layer(exported: tuple[Path, Path]) -> None:
    _, xml = exported
    paths = sorted((MAGNETIC_TILE / "MT_Free" / "Imgs").glob("*.jpg"))[:2]
    paths += sorted((MAGNETIC_TILE / "MT_Blowhole" / "Imgs").glob("*.jpg"))[:2]
    images = load_images(paths, SIZE)
    assert images[0].shape == (1, 3, SIZE, SIZE)
    assert images[0].min() >= 0
    assert images[0].max() <= 1
    report = precision_report(xml, images, scopes=[["model.discriminator"]], per_layer=5, timing_runs=2)
    plain, kept, everything = report["variants"]
    assert plain["f32_scopes"] == []
    assert kept["f32_scopes"] == ["model.discriminator"]
    assert kept["marked_nodes"] > 0
    assert everything["f32_scopes"] == ["(all: f32)"]
    for row in (plain, kept):
        assert np.isfinite(row["pred_score_deviation"])
        assert row["pred_score_deviation"] >= 0
        assert np.isfinite(row["anomaly_map_deviation"])
        assert row["latency_ms"] > 0
    if BF16_CPU:
        assert kept["reduced_precision_nodes"] < plain["reduced_precision_nodes"]
    assert len(report["layers"]) == 5
    assert all(np.isfinite(row["deviation"]) for row in report["layers"])


def test_load_images_names_an_unreadable_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read image"):
        load_images([broken], 32)
