"""HADNet's training diagnostics (issue 32): logged once an epoch, observation only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from anomalib_hyperbolic.models import HADNet
from tests.harness_cases import tiny_cpu_engine, tiny_hadnet, tiny_magnetic_tile


def _fit(root: Path, run_dir: Path, observe: bool, epochs: int) -> tuple[dict[str, float], dict, HADNet, list]:
    """Seeded tiny supervised fit + test; ``observe=False`` turns the diagnostics' updates into no-ops."""
    from lightning.pytorch import seed_everything

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seed_everything(0, workers=True)
        datamodule = tiny_magnetic_tile(root)
        model = tiny_hadnet(training_mode="supervised")
        computed: list[dict[str, float]] = []
        compute = model.logit_diagnostics.compute

        def spy() -> Any:
            computed.append(compute())
            return computed[-1]

        model.logit_diagnostics.compute = spy  # type: ignore[method-assign]
        if not observe:
            model.logit_diagnostics.update = lambda *args: None  # type: ignore[method-assign]
        engine = tiny_cpu_engine(run_dir, epochs)
        engine.fit(model, datamodule=datamodule)
        logged = {key: float(value) for key, value in engine.trainer.callback_metrics.items()}
        (metrics,) = engine.test(model, datamodule=datamodule, verbose=False)
    finally:
        torch.set_num_threads(threads)
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    return {**metrics, **{f"logged:{key}": value for key, value in logged.items()}}, state, model, computed


def test_diagnostics_are_logged_once_an_epoch_and_change_nothing(tmp_path: Path) -> None:
    from anomalib_hyperbolic.testing import make_magnetic_tile_like

    root = make_magnetic_tile_like(tmp_path / "mt", n_normal=6, n_per_defect=3)
    observed, observed_state, model, computed = _fit(root, tmp_path / "a", observe=True, epochs=2)
    blind, blind_state, _, _ = _fit(root, tmp_path / "b", observe=False, epochs=2)

    assert len(computed) == 2  # once per epoch, not per step
    last = computed[-1]
    for key in ("iou_at_0.5", "logit_defect_mean", "logit_background_q50", "logit_normal_q95", "pixels_normal"):
        assert observed[f"logged:train_{key}"] == pytest.approx(last[key]), key
    assert 0 <= last["iou_at_0.5"] <= 1
    assert observed["logged:train_seg_loss"] > 0
    # the epoch saw every training pixel once: the groups add up to the training images' pixels
    train_images = len(model.trainer.datamodule.train_data)
    assert last["pixels_defect"] + last["pixels_background"] + last["pixels_normal"] == train_images * 32 * 32
    # observation only: the same weights and test metrics without the diagnostics
    assert set(observed_state) == set(blind_state), "the diagnostics must not add checkpoint state"
    for name, tensor in blind_state.items():
        assert torch.equal(observed_state[name], tensor), name
    for name, value in blind.items():
        if not name.startswith("logged:"):
            assert observed[name] == value, name
