"""HypAD as a subclass of anomalib's EfficientAd: the anomalib API it uses, what it inherits, its defaults."""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import pytest
import torch
from anomalib.models import EfficientAd, list_models
from anomalib.models.image.efficient_ad.torch_model import EfficientAdModel

from anomalib_hyperbolic.models import HypAD
from anomalib_hyperbolic.models.hypad import torch_model
from anomalib_hyperbolic.models.hypad.torch_model import ANOMALIB_API, HypADModel, check_anomalib_api


def test_anomalib_api_is_the_one_hypad_was_written_for() -> None:
    check_anomalib_api()
    # the hooks HypADModel overrides are the ones EfficientAdModel.forward calls, with these arguments
    forward = inspect.getsource(EfficientAdModel.forward)
    for call in ("self.compute_student_teacher_distance(batch)", "self.compute_losses(", "self.compute_maps("):
        assert call in forward, (
            f"anomalib's EfficientAdModel.forward no longer calls {call}; HypAD would be EfficientAd"
        )
    step = inspect.getsource(EfficientAd.training_step)
    assert "next(self.imagenet_iterator)[0].to(self.device)" in step, "EfficientAd.training_step changed"
    assert "self.model(batch=batch.image, batch_imagenet=batch_imagenet)" in step, "EfficientAd.training_step changed"


def test_a_renamed_anomalib_method_fails_with_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(EfficientAdModel, "_normalize_teacher")
    monkeypatch.setitem(ANOMALIB_API, "EfficientAd.map_norm_quantiles", ("self", "loader"))
    with pytest.raises(RuntimeError, match=r"anomalib .* changed EfficientAd methods HypAD builds on") as error:
        HypADModel()
    message = str(error.value)
    assert "EfficientAdModel._normalize_teacher('self', 'teacher_output'): missing" in message
    assert "EfficientAd.map_norm_quantiles('self', 'loader'): now has ('self', 'dataloader')" in message


def test_hypad_is_an_efficientad_registered_with_anomalib() -> None:
    model = HypAD(pretrained_teacher=False, imagenet_dir=None)
    assert isinstance(model, EfficientAd)
    assert isinstance(model.model, HypADModel)
    assert "HypAD" in list_models(case="pascal")
    for name in ("on_validation_start", "validation_step", "training_step", "map_norm_quantiles", "trainer_arguments"):
        assert name not in HypAD.__dict__, f"HypAD should inherit EfficientAd.{name}"
    assert model.trainer_arguments == {"num_sanity_val_steps": 0}
    assert model.hparams["c"] == 0.01
    assert model.hparams["imagenet_dir"] is None


def test_same_seed_gives_efficientads_initial_weights() -> None:
    torch.manual_seed(7)
    reference = EfficientAd(imagenet_dir="unused")
    torch.manual_seed(7)
    model = HypAD(c=0.0, clip_radius=math.inf, projection="identity", imagenet_dir="unused")
    for (name, a), b in zip(reference.model.state_dict().items(), model.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_penalty_images_are_efficientads_or_none(tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "any_class").mkdir()
    for index in range(3):
        Image.new("RGB", (40, 30), color=(index * 60, 20, 200)).save(tmp_path / "any_class" / f"{index}.png")
    model = HypAD(pretrained_teacher=False, imagenet_dir=tmp_path)
    model.batch_size = 2  # on_train_start sets the training batch size
    model.prepare_imagenette_data((32, 32))
    images = next(model.imagenet_iterator)[0]
    assert images.shape == (2, 3, 32, 32)

    no_penalty = HypAD(pretrained_teacher=False, imagenet_dir=None)
    no_penalty.prepare_imagenette_data((32, 32))
    assert next(no_penalty.imagenet_iterator)[0].to(torch.device("cpu")) is None
    state = no_penalty.__getstate__()  # EfficientAd's: the iterator is not pickled
    assert "imagenet_iterator" not in state


def test_defaults_are_the_papers() -> None:
    parameters = inspect.signature(HypAD).parameters
    defaults = {name: parameters[name].default for name in parameters}
    assert defaults["model_size"] == "small"
    assert defaults["c"] == 0.01
    assert defaults["clip_radius"] == 2.3
    assert defaults["projection"] == "avgpool"
    assert defaults["augmentation_prob"] == 1.0
    assert defaults["penalty"] == "unclipped"
    assert defaults["lr"] == 1e-4
    assert torch_model.PENALTIES[0] == "unclipped"
