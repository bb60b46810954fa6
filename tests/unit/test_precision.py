"""``TrainOnlyMixedPrecision``: bf16 autocast in training steps, float32 validation/test/predict steps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from torch.utils.data import DataLoader, TensorDataset

from anomalib_hyperbolic.precision import TrainOnlyMixedPrecision, autocast_device


class _Recorder(LightningModule):
    """A linear layer that records, per step kind, the autocast state and its output dtype."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.seen: dict[str, tuple[bool, torch.dtype, torch.dtype]] = {}

    def _record(self, stage: str, batch: list[torch.Tensor]) -> torch.Tensor:
        output = self.layer(batch[0])
        self.seen[stage] = (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"), output.dtype)
        return output.float().square().mean()

    def training_step(self, batch: list[torch.Tensor], batch_index: int) -> torch.Tensor:
        return self._record("train", batch)

    def validation_step(self, batch: list[torch.Tensor], batch_index: int) -> None:
        self._record("validate", batch)

    def test_step(self, batch: list[torch.Tensor], batch_index: int) -> None:
        self._record("test", batch)

    def predict_step(self, batch: list[torch.Tensor], batch_index: int) -> torch.Tensor:
        return self._record("predict", batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _quiet_cpu_trainer(root: Path, **options: object) -> Trainer:
    """A CPU ``Trainer`` without logger, checkpoints, progress bar or model summary."""
    quiet = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    return Trainer(accelerator="cpu", default_root_dir=root, enable_model_summary=False, **quiet, **options)


def _run(tmp_path: Path, **precision: object) -> dict[str, tuple[bool, torch.dtype, torch.dtype]]:
    loader = DataLoader(TensorDataset(torch.randn(8, 4)), batch_size=4)
    model = _Recorder()
    trainer = _quiet_cpu_trainer(tmp_path, max_epochs=1, num_sanity_val_steps=0, **precision)
    trainer.fit(model, train_dataloaders=loader, val_dataloaders=loader)
    trainer.test(model, dataloaders=loader, verbose=False)
    trainer.predict(model, dataloaders=loader)
    return model.seen


def test_training_steps_autocast_to_bf16_evaluation_steps_stay_float32(tmp_path: Path) -> None:
    seen = _run(tmp_path, plugins=[TrainOnlyMixedPrecision("bf16-mixed", device="cpu")])
    assert seen["train"] == (True, torch.bfloat16, torch.bfloat16)
    for stage in ("validate", "test", "predict"):
        enabled, _, dtype = seen[stage]
        assert not enabled, stage
        assert dtype == torch.float32, stage
    assert not torch.is_autocast_enabled("cpu")  # nothing leaks out of the trainer


def test_lightning_bf16_mixed_autocasts_evaluation_too(tmp_path: Path) -> None:
    """What the plugin changes: Lightning's own ``bf16-mixed`` also autocasts validation and test."""
    seen = _run(tmp_path, precision="bf16-mixed")
    assert all(seen[stage][2] == torch.bfloat16 for stage in ("train", "validate", "test", "predict"))


def test_the_plugin_reports_lightnings_precision_name(tmp_path: Path) -> None:
    trainer = Trainer(accelerator="cpu", logger=False, plugins=[TrainOnlyMixedPrecision("bf16-mixed", device="cpu")])
    assert trainer.precision == "bf16-mixed"
    with pytest.raises(ValueError, match="Precision must be"):
        TrainOnlyMixedPrecision("bf16-true", device="cpu")  # type: ignore[arg-type]


def test_autocast_device_of_accelerator_flags() -> None:
    assert autocast_device("cpu") == "cpu"
    assert autocast_device("gpu") == autocast_device("cuda") == "cuda"
    assert autocast_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert autocast_device(None) == autocast_device("auto")


class _ConvNet(LightningModule):
    """Two convolutions; records the memory format of its weight and activations in each training step."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3))
        self.formats: list[tuple[bool, bool]] = []

    def training_step(self, batch: list[torch.Tensor], batch_index: int) -> torch.Tensor:
        output = self.net(batch[0])
        channels_last = torch.channels_last
        self.formats.append(
            (
                self.net[0].weight.is_contiguous(memory_format=channels_last),
                output.is_contiguous(memory_format=channels_last),
            )
        )
        return output.square().mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=0.01)


def _fit_convnet(tmp_path: Path, callbacks: list) -> _ConvNet:
    torch.manual_seed(0)
    model = _ConvNet()
    images = torch.randn(8, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    trainer = _quiet_cpu_trainer(tmp_path, max_epochs=2, callbacks=callbacks)
    trainer.fit(model, train_dataloaders=DataLoader(TensorDataset(images), batch_size=4))
    return model


def test_channels_last_training_trains_in_channels_last_and_hands_back_nchw(tmp_path: Path) -> None:
    from anomalib_hyperbolic.precision import ChannelsLastTraining

    plain = _fit_convnet(tmp_path / "plain", [])
    relaid = _fit_convnet(tmp_path / "channels_last", [ChannelsLastTraining()])
    assert plain.formats == [(False, False)] * 4
    assert relaid.formats == [(True, True)] * 4  # weights and activations (from NCHW input) in channels-last
    weight = relaid.net[0].weight
    assert weight.is_contiguous()
    assert not weight.is_contiguous(memory_format=torch.channels_last)
    for name, value in plain.state_dict().items():  # same training, another memory order
        torch.testing.assert_close(relaid.state_dict()[name], value, rtol=1e-4, atol=1e-5, msg=name)
