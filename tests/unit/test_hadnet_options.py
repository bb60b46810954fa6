"""HADNet's design-study options (issue 32): each is off by default and does what it says when on."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from anomalib.data import ImageBatch
from lightning.pytorch.callbacks import Callback

from anomalib_hyperbolic.models import HADNet
from anomalib_hyperbolic.models.hadnet import DEFAULTS, HADNetModel
from anomalib_hyperbolic.models.hadnet.loss import HADNetLoss, per_image_dice_loss, soft_dice_loss
from anomalib_hyperbolic.models.hadnet.torch_model import FixedOrderContext, RealNetDiscriminator
from tests.harness_cases import TINY_HADNET as TINY
from tests.harness_cases import tiny_cpu_engine, tiny_hadnet, tiny_magnetic_tile


def test_defaults_are_the_measured_recipe():
    """Every option's default is the behaviour measured before issue 32's study."""
    assert (DEFAULTS.seg_loss, DEFAULTS.dice_per_image, DEFAULTS.lr_schedule) == ("bce_dice", False, "step")
    assert (DEFAULTS.discriminator_input, DEFAULTS.discriminator_head) == ("ranked_residuals", "plain")
    assert DEFAULTS.context_width is None
    assert (DEFAULTS.train_backbone, DEFAULTS.supervised_synthesis) == (False, False)
    model = HADNetModel(**TINY)
    assert model.context is None
    assert type(model.discriminator).__name__ == "Discriminator"
    assert not any(p.requires_grad for p in model.feature_extractor.parameters())


# ---------------------------------------------------------------------------------------------- loss
def _hand_built() -> tuple[torch.Tensor, torch.Tensor]:
    """One 4x4 image with 2 defect pixels (14 negatives: ratio 7) and fixed logits."""
    masks = torch.zeros(1, 1, 4, 4)
    masks[0, 0, 1, 1] = masks[0, 0, 2, 2] = 1
    logits = torch.linspace(-2, 2, 16).view(1, 1, 4, 4)
    return logits, masks


def test_balanced_bce_weights_the_positives_by_the_ratio():
    logits, masks = _hand_built()
    p = torch.sigmoid(logits)
    expected = (-(7 * masks * p.log() + (1 - masks) * (1 - p).log())).mean()
    balanced = HADNetLoss(seg_loss="balanced_bce_dice", dice_weight=0.0).segmentation(logits, masks)
    torch.testing.assert_close(balanced, expected)
    plain = HADNetLoss(dice_weight=0.0).segmentation(logits, masks)
    torch.testing.assert_close(plain, (-(masks * p.log() + (1 - masks) * (1 - p).log())).mean())


def test_focal_loss_by_hand():
    logits, masks = _hand_built()
    p = torch.sigmoid(logits)
    p_t = p * masks + (1 - p) * (1 - masks)
    alpha_t = 0.25 * masks + 0.75 * (1 - masks)
    expected = (-alpha_t * (1 - p_t) ** 2 * p_t.log()).mean()
    focal = HADNetLoss(seg_loss="focal_dice", dice_weight=0.0).segmentation(logits, masks)
    torch.testing.assert_close(focal, expected)
    # the Dice term is added with dice_weight whatever the pixel term
    with_dice = HADNetLoss(seg_loss="focal_dice", dice_weight=2.0).segmentation(logits, masks)
    torch.testing.assert_close(with_dice, expected + 2 * soft_dice_loss(logits, masks))


def test_per_image_dice_leaves_normal_images_out():
    logits, masks = _hand_built()
    normal_logits = torch.full_like(logits, 3.0)  # a normal image predicted all-defect
    batch_logits, batch_masks = torch.cat([logits, normal_logits]), torch.cat([masks, torch.zeros_like(masks)])
    p = torch.sigmoid(logits)
    expected = 1 - (2 * (p * masks).sum() + 1) / (p.sum() + masks.sum() + 1)
    torch.testing.assert_close(per_image_dice_loss(batch_logits, batch_masks), expected)
    # the normal image's prediction moves the batch Dice, not the per-image one
    assert soft_dice_loss(batch_logits, batch_masks) > expected + 0.1
    # two defect images of different sizes weigh the same (mean of their Dice losses)
    big = torch.ones_like(masks)
    pair = per_image_dice_loss(torch.cat([logits, logits]), torch.cat([masks, big]))
    torch.testing.assert_close(pair, (expected + per_image_dice_loss(logits, big)) / 2)
    # a batch without defect pixels: 0, and still differentiable
    leaf = normal_logits.clone().requires_grad_(True)
    empty = per_image_dice_loss(leaf, torch.zeros_like(masks))
    empty.backward()
    assert float(empty) == 0.0
    assert leaf.grad is not None
    loss = HADNetLoss(dice_per_image=True, dice_weight=1.0)
    bce = F.binary_cross_entropy_with_logits(batch_logits, batch_masks)
    torch.testing.assert_close(loss.segmentation(batch_logits, batch_masks), bce + expected)


# ---------------------------------------------------------------------------------------------- discriminator
def test_residuals_and_features_gives_fixed_order_context():
    torch.manual_seed(0)
    model = HADNetModel(**TINY, discriminator_input="residuals_and_features").train()
    # Lambda (s = 8) + features and signed residuals of both layers (2 x (8 + 8))
    assert model.discriminator.body[0].in_channels == 8 + 2 * 16
    images = torch.rand(3, 3, 32, 32)
    selected, _ = model.forward_features(images)
    recon = model.reconstruct(selected)
    context = model.context(selected, recon)
    assert context.shape == (3, 32, *selected[0].shape[-2:])
    # channel k is the same quantity in every image: layer 1's features, its signed residual, then layer 2's
    torch.testing.assert_close(context[:, :8], selected[0])
    torch.testing.assert_close(context[:, 8:16], selected[0] - recon[0])
    up = F.interpolate(selected[1], size=selected[0].shape[-2:], mode="bilinear", align_corners=False)
    torch.testing.assert_close(context[:, 16:24], up)
    # ... whatever the other images of the batch (ARD's ranking is per image, this is not)
    alone = FixedOrderContext((8, 8))([s[1:2] for s in selected], [r[1:2] for r in recon])
    torch.testing.assert_close(alone, context[1:2])
    out = model(images)
    assert out["logits"].shape == (3, 1, 32, 32)
    out["logits"].mean().backward()
    assert all(p.grad is not None for p in model.discriminator.parameters())


def test_context_width_projects_each_layer_before_upsampling():
    torch.manual_seed(0)
    model = HADNetModel(**TINY, discriminator_input="residuals_and_features", context_width=3).eval()
    assert model.discriminator.body[0].in_channels == 8 + 2 * 3
    context = model.context
    assert context.out_channels == 6
    images = torch.rand(2, 3, 32, 32)
    selected, _ = model.forward_features(images)
    recon = model.reconstruct(selected)
    # the same as the unprojected context through one 1x1 convolution on the finest grid (both are linear)
    full = FixedOrderContext((8, 8))(selected, recon)
    weight = torch.zeros(6, 32, 1, 1)
    weight[:3, :16] = context.projections[0].weight
    weight[3:, 16:] = context.projections[1].weight
    bias = torch.cat([context.projections[0].bias, context.projections[1].bias])
    torch.testing.assert_close(context(selected, recon), F.conv2d(full, weight, bias), atol=1e-5, rtol=1e-5)
    exported = torch.export.export(model, (images,), strict=False)
    torch.testing.assert_close(exported.module()(images)[2], model(images).anomaly_map, atol=1e-5, rtol=1e-5)
    for width in (0, 2.5):
        with pytest.raises(ValueError, match="context_width"):
            HADNetModel(**TINY, discriminator_input="residuals_and_features", context_width=width)
    with pytest.raises(ValueError, match=r"context_width.*ranked_residuals"):  # nothing to project: say so
        HADNetModel(**TINY, context_width=16)


def test_realnet_head_is_deeper_and_decodes_at_twice_the_resolution():
    head = RealNetDiscriminator(8, (8, 4))
    assert len(head.stack) == 3  # two residual blocks and a ReLU
    assert head(torch.rand(2, 8, 8, 8)).shape == (2, 1, 16, 16)
    torch.manual_seed(0)
    model = HADNetModel(**TINY, discriminator_head="realnet").eval()
    assert isinstance(model.discriminator, RealNetDiscriminator)
    images = torch.rand(1, 3, 32, 32)
    expected = model(images)
    assert expected.anomaly_map.shape == (1, 1, 32, 32)
    # both options still export as a fixed graph
    both = HADNetModel(**TINY, discriminator_head="realnet", discriminator_input="residuals_and_features").eval()
    exported = torch.export.export(both, (images,), strict=False)
    torch.testing.assert_close(exported.module()(images)[2], both(images).anomaly_map, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"discriminator_input": "features"}, "discriminator_input"),
        ({"discriminator_head": "deep"}, "discriminator_head"),
        ({"seg_loss": "dice"}, "seg_loss"),
        ({"lr_schedule": "linear"}, "lr_schedule"),
        ({"train_backbone": True}, "cache_features=False"),
    ],
)
def test_bad_option(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HADNet(**TINY, visualizer=False, **kwargs)


# ---------------------------------------------------------------------------------------------- training data
def _supervised_batch() -> ImageBatch:
    """Two defect images with masks and two normal images."""
    generator = torch.Generator().manual_seed(0)
    images = 0.5 + 0.05 * torch.randn(4, 3, 32, 32, generator=generator)
    masks = torch.zeros(4, 32, 32, dtype=torch.bool)
    masks[0, 4:12, 4:12] = masks[1, 20:28, 8:16] = True
    return ImageBatch(image=images.clamp(0, 1), gt_mask=masks, gt_label=torch.tensor([1, 1, 0, 0]))


def test_supervised_synthesis_turns_normals_into_anomalies_with_clean_twins():
    torch.manual_seed(0)
    batch = _supervised_batch()
    plain = HADNet(**TINY, training_mode="supervised", visualizer=False)
    assert plain._anomalous(batch, jitter=False)[2] is None  # default: real defects only, no twin
    module = HADNet(
        **TINY, training_mode="supervised", supervised_synthesis=True, anomaly_probability=1.0, visualizer=False
    )
    anomalous, masks, normal, _ = module._anomalous(batch, jitter=False)
    torch.testing.assert_close(normal, batch.image)  # the twins are the clean images
    torch.testing.assert_close(anomalous[:2], batch.image[:2])  # real defects unchanged ...
    torch.testing.assert_close(masks[:2, 0], batch.gt_mask[:2].float())  # ... with their masks
    assert (masks[2:].flatten(1).sum(1) > 0).all()  # both normals got a Perlin anomaly
    changed = (anomalous[2:] != batch.image[2:]).any(dim=1, keepdim=True)
    assert (changed <= masks[2:].bool()).all()  # they changed inside their masks only
    # stage 1 keeps the real defects only
    assert module._anomalous(batch, init=True)[2] is None
    module.initialize([batch])
    module.model.train()
    out = module.training_step(batch, 0)
    assert torch.isfinite(out["loss"])


def test_supervised_synthesis_masks_the_reconstruction_of_real_defects_only(monkeypatch):
    module = HADNet(
        **TINY, training_mode="supervised", supervised_synthesis=True, anomaly_probability=1.0, visualizer=False
    )
    batch = _supervised_batch()
    module.initialize([batch])
    module.model.train()
    seen = {}
    forward = module.loss.forward

    def spy(logits, masks, reconstructions, targets, recon_masks=None):
        seen["masks"], seen["recon_masks"] = masks, recon_masks
        return forward(logits, masks, reconstructions, targets, recon_masks)

    monkeypatch.setattr(module.loss, "forward", spy)
    module.training_step(batch, 0)
    torch.testing.assert_close(seen["recon_masks"][:2], seen["masks"][:2])  # real defects: outside their masks
    assert float(seen["recon_masks"][2:].abs().sum()) == 0.0  # synthetic ones: every pixel (clean twin)


def test_train_backbone_trains_the_backbone_with_batchnorm_in_eval():
    torch.manual_seed(0)
    frozen = HADNet(**TINY, training_mode="supervised", visualizer=False)
    frozen_params = {id(p) for group in frozen.configure_optimizers()[0][0].param_groups for p in group["params"]}
    assert not frozen_params & {id(p) for p in frozen.model.feature_extractor.parameters()}
    module = HADNet(**TINY, training_mode="supervised", train_backbone=True, cache_features=False, visualizer=False)
    assert module.feature_cache is None
    optimizer = module.configure_optimizers()[0][0]
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert {id(p) for p in module.model.feature_extractor.parameters()} <= in_optimizer
    batch = _supervised_batch()
    module.initialize([batch])  # stage 1 runs without the backbone's graph
    assert all(p.grad is None for p in module.model.feature_extractor.parameters())
    module.model.train()
    assert not module.model.feature_extractor.training
    norms = [m for m in module.model.feature_extractor.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    running = [m.running_mean.clone() for m in norms]
    module.training_step(batch, 0)["loss"].backward()
    grads = [p.grad for p in module.model.feature_extractor.parameters() if p.grad is not None]
    assert grads
    assert any(float(g.abs().sum()) > 0 for g in grads)
    for norm, before in zip(norms, running, strict=True):
        assert torch.equal(norm.running_mean, before)  # BatchNorm in eval: statistics unchanged
    # at inference no graph is kept
    module.model.eval()
    assert not module.model.extract(batch.image)[0].requires_grad


# ---------------------------------------------------------------------------------------------- schedule
class _LearningRates(Callback):
    def __init__(self) -> None:
        self.rates: list[float] = []
        self.steps = 0
        self.final = float("nan")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.rates.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_end(self, trainer, pl_module) -> None:
        self.steps = trainer.global_step
        self.final = trainer.optimizers[0].param_groups[0]["lr"]


def _fit_rates(root: Path, run_dir: Path, schedule: str, epochs: int = 2) -> _LearningRates:
    datamodule = tiny_magnetic_tile(root)
    model = tiny_hadnet(training_mode="supervised", lr_schedule=schedule)
    rates = _LearningRates()
    engine = tiny_cpu_engine(run_dir, epochs, [rates])
    engine.fit(model, datamodule=datamodule)
    return rates


def test_cosine_schedule_decays_within_the_run_and_step_does_not(tmp_path):
    from anomalib_hyperbolic.testing import make_magnetic_tile_like

    root = make_magnetic_tile_like(tmp_path / "mt", n_normal=4, n_per_defect=3)
    cosine = _fit_rates(root, tmp_path / "cosine", "cosine")
    steps = cosine.steps
    assert steps >= 4
    expected = [DEFAULTS.lr * (1 + math.cos(math.pi * k / steps)) / 2 for k in range(steps)]
    assert cosine.rates == pytest.approx(expected, rel=1e-6, abs=1e-12)
    assert cosine.rates[-1] < 0.1 * DEFAULTS.lr  # the last step trains at a small fraction of lr
    assert cosine.final == pytest.approx(0.0, abs=1e-12)
    step = _fit_rates(root, tmp_path / "step", "step")
    assert step.rates == [DEFAULTS.lr] * step.steps  # StepLR(50) never decays in 2 epochs


# ---------------------------------------------------------------------------------------------- thresholding
def _validation_batch() -> ImageBatch:
    """Four probability maps whose pooled pixel F1 peaks far below 0.5: defect pixels at 0.3, a few at 0.9."""
    maps = torch.full((4, 1, 8, 8), 0.05)
    masks = torch.zeros(4, 8, 8, dtype=torch.bool)
    masks[:2, 2:6, 2:6] = True
    maps[:2, 0, 2:6, 2:6] = 0.3
    maps[0, 0, 2, 2] = 0.9
    return ImageBatch(
        image=torch.zeros(4, 3, 8, 8),
        anomaly_map=maps,
        gt_mask=masks,
        pred_score=maps.flatten(1).amax(1),
        gt_label=torch.tensor([1, 1, 0, 0]),
    )


def test_fixed_pixel_threshold_survives_validation_and_decides_pred_mask():
    from anomalib.data import InferenceBatch
    from anomalib.post_processing import PostProcessor

    from anomalib_hyperbolic.models.components import FixedPixelThresholdPostProcessor

    fitted, fixed = PostProcessor(), FixedPixelThresholdPostProcessor(0.5)
    assert float(fixed.pixel_threshold) == 0.5  # already before any validation (predict without fit)
    for post_processor in (fitted, fixed):
        post_processor.on_validation_batch_end(None, None, _validation_batch())
        post_processor.on_validation_epoch_end(None, None)
    assert float(fitted.pixel_threshold) < 0.5  # anomalib's F1 fit lands on the low defect pixels
    assert float(fixed.pixel_threshold) == 0.5
    assert float(fixed.image_threshold) == float(fitted.image_threshold)  # the image threshold is still fitted
    maps = _validation_batch().anomaly_map
    out = fixed(InferenceBatch(pred_score=maps.flatten(1).amax(1), anomaly_map=maps))
    assert torch.equal(out.pred_mask.reshape(maps.shape), maps > 0.5)
    restored = FixedPixelThresholdPostProcessor(0.2)
    restored.load_checkpoint_config(fixed.checkpoint_config())
    assert restored.fixed_pixel_threshold == 0.5


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "0.5", True])
def test_fixed_pixel_threshold_must_be_a_finite_number(value):
    with pytest.raises(ValueError, match="pixel_threshold"):
        HADNet(**TINY, visualizer=False, pixel_threshold=value)


def test_pixel_threshold_sets_hadnets_post_processor_and_refuses_a_second_one():
    from anomalib.post_processing import PostProcessor

    from anomalib_hyperbolic.models.components import FixedPixelThresholdPostProcessor

    assert type(HADNet(**TINY, visualizer=False).post_processor) is PostProcessor  # the default: fitted
    model = HADNet(**TINY, visualizer=False, pixel_threshold=0.5)
    assert isinstance(model.post_processor, FixedPixelThresholdPostProcessor)
    assert float(model.post_processor.pixel_threshold) == 0.5
    with pytest.raises(ValueError, match="not both"):
        HADNet(**TINY, visualizer=False, pixel_threshold=0.5, post_processor=PostProcessor())
