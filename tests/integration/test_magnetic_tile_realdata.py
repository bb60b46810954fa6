"""Smoke test on the real Magnetic Tile copy: Padim (offline EfficientNet-Lite0) fit + test on a subset.

Bounded to about a minute on 2 CPU cores: a seeded subset (60 normals, 8 images per defect
class) at 128 x 128. Skipped when ``../shared/datasets/magnetic_tile`` (relative to the
repository root) is absent.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

REAL_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "magnetic_tile"


def _offline_hf_home(hf_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the HF cache at ``hf_home`` and go offline, also when huggingface_hub is already imported."""
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:  # its values were read from the environment at import time
        monkeypatch.setattr(constants, "HF_HOME", str(hf_home), raising=False)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"), raising=False)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True, raising=False)


@pytest.mark.realdata
@pytest.mark.skipif(not (REAL_ROOT / "MT_Free" / "Imgs").is_dir(), reason=f"no Magnetic Tile copy at {REAL_ROOT}")
def test_padim_on_real_magnetic_tile_subset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from anomalib_hyperbolic.backbones import provision_efficientnet_lite0

    provision_efficientnet_lite0(hf_home=tmp_path / "hf")
    _offline_hf_home(tmp_path / "hf", monkeypatch)

    from anomalib.engine import Engine
    from anomalib.models import Padim

    from anomalib_hyperbolic.data import MagneticTile
    from anomalib_hyperbolic.testing import make_magnetic_tile_subset

    root = make_magnetic_tile_subset(REAL_ROOT, tmp_path / "magnetic_tile", n_normal=60, n_per_defect=8, seed=0)
    datamodule = MagneticTile(root=root, train_batch_size=16, eval_batch_size=16, num_workers=0)
    model = Padim(
        backbone="tf_efficientnet_lite0",
        layers=["blocks.1", "blocks.2", "blocks.4"],  # timm feature_info nodes of lite0
        n_features=100,
        pre_trained=True,
        pre_processor=Padim.configure_pre_processor(image_size=(128, 128)),
        visualizer=False,
    )
    engine = Engine(default_root_dir=tmp_path / "results", max_epochs=1, accelerator="cpu", devices=1, logger=False)
    engine.fit(model=model, datamodule=datamodule)
    assert len(datamodule.train_data) == 48
    results = engine.test(model=model, datamodule=datamodule)[0]
    assert len(datamodule.test_data) == 12 + 5 * 8
    auroc = float(results["image_AUROC"])
    assert math.isfinite(auroc)
    assert auroc > 0.5, results
