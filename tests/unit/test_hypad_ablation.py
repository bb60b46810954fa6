"""The ablation cells of the model README: each HypAD cell switches exactly the factors it names."""

from __future__ import annotations

import math
import re
from pathlib import Path

import yaml

from anomalib_hyperbolic.models import HypAD

README = Path(__file__).parents[2] / "src" / "anomalib_hyperbolic" / "models" / "hypad" / "README.md"


def _readme_cells() -> dict[str, dict]:
    text = README.read_text()
    match = re.search(r"<!-- ablation-cells -->\s*```yaml\n(.*?)```", text, flags=re.DOTALL)
    assert match, "the model README lists the ablation cells in a ```yaml block after <!-- ablation-cells -->"
    return {cell["name"]: cell for cell in yaml.safe_load(match.group(1))}


def _switches(model: HypAD) -> dict[str, object]:
    network = model.model
    return {
        "pooling": network.projection.kernel > 1,
        "clipping": math.isfinite(network.clip_radius),
        "curvature": network.curvature,
        "penalty": network.penalty,
        "augmentation_prob": network.augmentation_prob,
    }


def test_readme_ablation_cells_switch_one_thing_each() -> None:
    """The cells are built as the README writes them (what the benchmark config will copy)."""
    cells = _readme_cells()
    assert len(cells) == 10
    assert cells["EfficientAd"]["class_path"] == "anomalib_hyperbolic.baselines.EfficientAdStepSchedule"
    hypad = {
        name: _switches(HypAD(pretrained_teacher=False, imagenet_dir=None, **cell.get("init_args", {})))
        for name, cell in cells.items()
        if cell["class_path"] == "anomalib_hyperbolic.models.HypAD"
    }
    euclidean = {
        "pooling": False,
        "clipping": False,
        "curvature": 0.0,
        "penalty": "unclipped",
        "augmentation_prob": 1.0,
    }
    assert hypad["HypAD c=0, nothing else (= EfficientAd)"] == euclidean
    assert hypad["+pooling only"] == {**euclidean, "pooling": True}
    assert hypad["+clipping only"] == {**euclidean, "clipping": True}
    assert hypad["+curvature only"] == {**euclidean, "curvature": 0.01}
    full = {**euclidean, "pooling": True, "clipping": True, "curvature": 0.01}
    assert hypad["full HypAD (v1 penalty)"] == {**full, "penalty": "clipped"}
    assert hypad["HypAD (fixed penalty, defaults)"] == full
    for c in (0.001, 0.1):  # c = 0.01 is the defaults cell
        assert hypad[f"HypAD c={c}"] == {**full, "curvature": c}
    assert hypad["HypAD v1 (as run on the GPU, 2026-11-26)"] == {**full, "penalty": "clipped", "augmentation_prob": 0.2}
