"""DRA: heads, top-k MIL, losses, exportability, the zero-anomaly error and a tiny fit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from anomalib.data import InferenceBatch, MVTecAD
from anomalib.engine import Engine
from lightning.pytorch.callbacks import Callback

from anomalib_hyperbolic.data import FewShotAnomalies
from anomalib_hyperbolic.models import DRA
from anomalib_hyperbolic.models.dra import DeviationLoss, DRALoss, DRAModel
from anomalib_hyperbolic.models.dra.loss import BinaryFocalLoss, build_loss
from anomalib_hyperbolic.models.dra.torch_model import top_k_mean
from anomalib_hyperbolic.testing import make_mvtec_like_dataset


@pytest.fixture(scope="module")
def model() -> DRAModel:
    torch.manual_seed(0)
    return DRAModel(backbone="resnet18", pre_trained=False)


def test_shapes_and_heads(model: DRAModel) -> None:
    model.train()
    images, reference = torch.randn(4, 3, 64, 64), torch.randn(5, 3, 64, 64)
    scores = model(images, reference)
    assert set(scores) == {"seen", "pseudo", "residual", "normal"}
    assert all(value.shape == (4,) and (value >= 0).all() for value in scores.values())
    assert model.in_dim == 512  # ResNet-18 layer4: the normality head is 512 -> 256 -> 1 (eq. 9)
    assert model.normality_head.fc1.in_features == 512
    assert model.normality_head.fc1.out_features == 256
    assert model.seen_head.scoring.kernel_size == (1, 1)
    with pytest.raises(ValueError, match="reference_images"):
        model(images)
    model.update_reference_features(reference)
    assert model.reference_features_0.shape == (1, 512, 2, 2)
    assert model.reference_features_1.shape == (1, 512, 1, 1)
    model.eval()
    output = model(images)
    assert isinstance(output, InferenceBatch)
    assert output.pred_score.shape == (4,)
    assert output.anomaly_map.shape == (4, 1, 64, 64)
    with pytest.raises(ValueError, match="image size"):
        model(torch.randn(1, 3, 128, 128))


def test_score_is_abnormality_minus_normality(model: DRAModel) -> None:
    model.update_reference_features(torch.randn(5, 3, 64, 64))
    model.eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = []
        for level in range(2):
            features = model.extract(model.scale(images, level))
            scores, _ = model.heads(features, getattr(model, f"reference_features_{level}"))
            expected.append(scores["seen"] + scores["pseudo"] + scores["residual"] - scores["normal"])
        output = model(images)
    torch.testing.assert_close(output.pred_score, torch.stack(expected).mean(0))


def test_no_reference_features_error() -> None:
    fresh = DRAModel(backbone="resnet18", pre_trained=False).eval()
    with pytest.raises(RuntimeError, match="reference features"):
        fresh(torch.randn(1, 3, 64, 64))


def test_reference_buffers_survive_state_dict(model: DRAModel) -> None:
    model.update_reference_features(torch.randn(5, 3, 64, 64))
    other = DRAModel(backbone="resnet18", pre_trained=False)
    other.load_state_dict(model.state_dict())
    model.eval()
    other.eval()
    images = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(other(images).pred_score, model(images).pred_score)


def test_top_k_mil() -> None:
    scores = torch.arange(20.0).reshape(1, 1, 4, 5)
    assert top_k_mean(scores, 0.1).item() == pytest.approx((19 + 18) / 2)  # k = int(20 * 0.1) = 2
    assert top_k_mean(scores, 0.01).item() == pytest.approx(19)  # k >= 1
    assert top_k_mean(scores, 1.0).item() == pytest.approx(9.5)


def test_deviation_loss() -> None:
    torch.manual_seed(0)
    loss = DeviationLoss(margin=5.0)
    zero = torch.zeros(4)
    # normal scores at the prior mean: ~0 loss; anomalous scores at the prior mean: ~margin
    assert loss(zero, torch.zeros(4)).item() < 0.1
    assert loss(zero, torch.ones(4)).item() == pytest.approx(5.0, abs=0.2)
    assert loss(torch.full((4,), 10.0), torch.ones(4)).item() == 0.0
    assert loss(torch.full((4,), 3.0), torch.zeros(4)).item() == pytest.approx(3.0, abs=0.2)
    with pytest.raises(ValueError, match="margin"):
        DeviationLoss(margin=0)
    assert isinstance(build_loss("focal"), BinaryFocalLoss)
    with pytest.raises(ValueError, match="loss must be one of"):
        build_loss("hinge")


def test_dra_loss_routes_samples() -> None:
    kinds = torch.tensor([0, 0, 1, 2])
    scores = {name: torch.zeros(4, requires_grad=True) for name in ("seen", "pseudo", "residual", "normal")}
    losses = DRALoss(loss="bce")(scores, kinds)
    losses["loss"].backward()
    # the seen head ignores the pseudo anomaly, the pseudo head the seen one
    assert scores["seen"].grad[3] == 0
    assert scores["pseudo"].grad[2] == 0
    assert (scores["residual"].grad != 0).all()
    # normality head: target 1 for normal samples -> gradient pushes their score up
    assert (scores["normal"].grad[:2] < 0).all()
    assert (scores["normal"].grad[2:] > 0).all()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="top_k_ratio"):
        DRAModel(backbone="resnet18", pre_trained=False, top_k_ratio=0)
    with pytest.raises(ValueError, match="num_reference"):
        DRAModel(backbone="resnet18", pre_trained=False, num_reference=0)
    with pytest.raises(ValueError, match="pseudo_anomaly_prob"):
        DRA(backbone="resnet18", pre_trained=False, pseudo_anomaly_prob=2.0)
    with pytest.raises(ValueError, match="Unknown layer"):
        DRAModel(backbone="resnet18", pre_trained=False, layer="layer9")


def test_export_onnx(model: DRAModel, tmp_path: Path) -> None:
    model.update_reference_features(torch.randn(5, 3, 64, 64))
    model.eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(images)
    path = tmp_path / "dra.onnx"
    torch.onnx.export(model, (images,), path, input_names=["input"], dynamo=True)
    import openvino

    compiled = openvino.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    outputs = compiled(images.numpy())
    score = torch.from_numpy(outputs[compiled.outputs[0]])
    anomaly_map = torch.from_numpy(outputs[compiled.outputs[1]])
    torch.testing.assert_close(score, expected.pred_score, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(anomaly_map, expected.anomaly_map, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_mvtec_like_dataset(tmp_path_factory.mktemp("dra"), n_train=6, n_test_good=3, n_test_defect=3)


def _engine(tmp_path: Path, callbacks: list | None = None) -> Engine:
    return Engine(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        callbacks=callbacks,
    )


def _datamodule(root: Path, shots: int) -> FewShotAnomalies:
    inner = MVTecAD(root=root, category="synthetic", train_batch_size=8, eval_batch_size=8, num_workers=0)
    return FewShotAnomalies(inner, num_anomalies=shots, max_anomalies=2, train_batches_per_epoch=2)


def _tiny_model() -> DRA:
    return DRA(
        backbone="resnet18",
        pre_trained=False,
        pre_processor=DRA.configure_pre_processor((64, 64)),
        visualizer=False,
    )


def test_zero_anomalies_error_names_the_option(dataset_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"FewShotAnomalies.*num_anomalies"):
        _engine(tmp_path).fit(model=_tiny_model(), datamodule=_datamodule(dataset_root, 0))
    plain = MVTecAD(root=dataset_root, category="synthetic", train_batch_size=8, num_workers=0)
    with pytest.raises(ValueError, match=r"--data\.num_anomalies"):
        _engine(tmp_path).fit(model=_tiny_model(), datamodule=plain)


def test_tiny_fit(dataset_root: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _tiny_model()
    assert model.learning_type.value == "supervised"
    engine = _engine(tmp_path)
    engine.fit(model=model, datamodule=_datamodule(dataset_root, 2))
    assert engine.trainer.global_step == 2
    assert model.model.reference_images.shape == (5, 3, 64, 64)
    assert model.model.reference_features_0.numel() > 0
    results = engine.test(model=model, datamodule=_datamodule(dataset_root, 2))
    assert 0.0 <= results[0]["image_AUROC"] <= 1.0


class _Recorder(Callback):
    """Records the references and the batch of every training step."""

    def __init__(self) -> None:
        self.steps: list[tuple[list[int], list[int]]] = []

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any, **kwargs: Any) -> None:
        del trainer, args, kwargs
        self.steps.append((list(pl_module.last_reference_indices), list(pl_module.last_batch_indices)))


def test_references_are_distinct_training_normals_outside_the_batch(tmp_path: Path) -> None:
    root = make_mvtec_like_dataset(tmp_path / "data", n_train=12, n_test_good=3, n_test_defect=3)
    inner = MVTecAD(root=root, category="synthetic", train_batch_size=4, eval_batch_size=8, num_workers=0)
    datamodule = FewShotAnomalies(inner, num_anomalies=2, train_batches_per_epoch=3)
    model, recorder = _tiny_model(), _Recorder()
    engine = _engine(tmp_path, callbacks=[recorder])
    engine.fit(model=model, datamodule=datamodule)
    labels = datamodule.train_data.samples.label_index.astype(int).to_numpy()
    assert len(recorder.steps) == 3
    for references, batch in recorder.steps:
        assert len(references) == len(set(references)) == 5  # N_r = 5 distinct images
        assert all(labels[i] == 0 for i in references)  # training normals
        assert not set(references) & set(batch)  # none of the images they are compared with
        assert len(batch) == 4
    assert len({tuple(step[0]) for step in recorder.steps}) > 1  # a fresh draw per step (official)
    # inference reference: a fixed, seeded set of training normals, the same after another fit
    fixed = model.model.reference_images.clone()
    assert fixed.shape == (5, 3, 64, 64)
    pool = torch.stack([datamodule.train_data[int(i)].image for i in (labels == 0).nonzero()[0]])
    pool = model.pre_processor.transform(pool)
    for image in fixed:
        assert any(torch.allclose(image, candidate, atol=1e-5) for candidate in pool)
    other = _tiny_model()
    Engine(max_epochs=1, accelerator="cpu", devices=1, default_root_dir=tmp_path, logger=False).fit(
        model=other, datamodule=datamodule
    )
    torch.testing.assert_close(other.model.reference_images, fixed)


def test_too_few_normals_for_the_references(dataset_root: Path, tmp_path: Path) -> None:
    model = DRA(
        backbone="resnet18", pre_trained=False, num_reference=7, pre_processor=DRA.configure_pre_processor((64, 64))
    )
    with pytest.raises(ValueError, match=r"num_reference=7.*has 6"):
        _engine(tmp_path).fit(model=model, datamodule=_datamodule(dataset_root, 2))


def test_rotation_and_pseudo_anomalies_on_raw_pixels() -> None:
    model = _tiny_model()
    images = model.pre_processor.transform(torch.rand(4, 3, 64, 64))
    kinds = torch.tensor([0, 0, 1, 1])
    out, new_kinds = model._augment(images, kinds, 1.0, [(0, i, 0) for i in range(4)])
    assert (new_kinds == torch.tensor([2, 2, 1, 1])).all()  # normals become pseudo anomalies, labelled stay
    assert not torch.allclose(out[2], images[2])  # labelled anomalies are rotated too
    again, _ = model._augment(images, kinds, 1.0, [(0, i, 0) for i in range(4)])
    torch.testing.assert_close(out, again)  # seeded by (seed, step, key)
    # black fill in the normalised space: the corners of a rotated image are ImageNet black
    mean, std = model._normalisation()
    black = ((0 - mean) / std).view(3)
    corners = out[:, :, 0, 0]
    assert any(torch.allclose(corner, black, atol=1e-5) for corner in corners)
    still = DRA(backbone="resnet18", pre_trained=False, rotation_degrees=0, pre_processor=model.pre_processor)
    unrotated, _ = still._augment(images, kinds, 0.0, [(0, i, 0) for i in range(4)])
    torch.testing.assert_close(unrotated, images, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="rotation_degrees"):
        DRA(backbone="resnet18", pre_trained=False, rotation_degrees=200)


def test_default_pre_processor_normalises_with_the_backbone_s_statistics(tmp_path: Path) -> None:
    """ImageNet statistics for the default ResNet-18, 0.5/0.5 for an EfficientNet-Lite0 weights file."""
    from safetensors.torch import save_file

    from anomalib_hyperbolic.models.components import pre_processor_normalization

    imagenet = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    assert pre_processor_normalization(DRA.configure_pre_processor()) == imagenet
    assert pre_processor_normalization(DRA(backbone="resnet18", pre_trained=False).pre_processor) == imagenet
    lite0 = tmp_path / "lite0.safetensors"  # metadata names the architecture; pre_trained=False loads nothing
    save_file({"unused": torch.zeros(1)}, str(lite0), metadata={"architecture": "tf_efficientnet_lite0"})
    model = DRA(backbone=lite0, pre_trained=False)
    assert pre_processor_normalization(model.pre_processor) == ([0.5] * 3, [0.5] * 3)
    assert model.pre_processor.transform.transforms[0].size == [448, 448]
    mean, std = model._normalisation()  # the augmentation's denormalisation follows
    assert mean.flatten().tolist() == std.flatten().tolist() == [0.5] * 3


def test_defaults_follow_the_official_code() -> None:
    import inspect

    assert inspect.signature(DRA).parameters["backbone"].default == "resnet18.tv_in1k"
    assert inspect.signature(DRAModel).parameters["backbone"].default == "resnet18.tv_in1k"
    assert inspect.signature(DRA).parameters["rotation_degrees"].default == 180.0
    model = DRA(backbone="resnet18", pre_trained=False)
    config = model.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    rates = []
    for _epoch in range(30):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    # official: StepLR(10, 0.1) stepped at the start of every epoch -> epochs 0-8, 9-18, 19-28, 29
    assert rates[:9] == pytest.approx([2e-4] * 9)
    assert rates[9:19] == pytest.approx([2e-5] * 10)
    assert rates[19:29] == pytest.approx([2e-6] * 10)
    assert rates[29] == pytest.approx(2e-7)


def test_constructor_defaults_are_the_defaults_module() -> None:
    """One place for the defaults: every argument's default is DEFAULTS' field of the same name."""
    import inspect

    from anomalib_hyperbolic.models.dra import DEFAULTS
    from anomalib_hyperbolic.models.dra.torch_model import NormalityHead, PatchAnomalyHead

    fields = set(DEFAULTS.__dataclass_fields__)
    for cls in (DRA, DRAModel, DRALoss, DeviationLoss, PatchAnomalyHead, NormalityHead):
        for name, parameter in inspect.signature(cls).parameters.items():
            if name in fields:
                assert parameter.default == getattr(DEFAULTS, name), (cls.__name__, name)
    assert inspect.signature(NormalityHead).parameters["hidden_dim"].default == DEFAULTS.normality_hidden
    assert inspect.signature(DeviationLoss).parameters["num_prior"].default == DEFAULTS.num_prior
    assert DRA.configure_pre_processor().transform.transforms[0].size == list(DEFAULTS.image_size)


def test_learning_type_is_supervised_not_few_shot() -> None:
    """Labelled anomalies: not ONE_CLASS; not FEW_SHOT, which anomalib's Engine.fit does not train."""
    from anomalib import LearningType

    from anomalib_hyperbolic.learning_types import SupervisedLearningType

    learning_type = DRA(backbone="resnet18", pre_trained=False, visualizer=False).learning_type
    assert learning_type == SupervisedLearningType.SUPERVISED
    assert learning_type not in set(LearningType)


def test_reference_sampler_draws_distinct_normals_outside_the_batch() -> None:
    from anomalib_hyperbolic.models.dra import ReferenceSampler

    pool = [0, 2, 3, 5, 7, 8, 9]
    sampler = ReferenceSampler(pool, num_reference=3, seed=0)
    draws = [sampler.draw({2, 3}) for _ in range(5)]
    for drawn in draws:
        assert len(set(drawn)) == 3
        assert set(drawn) <= set(pool) - {2, 3}
    assert len({tuple(drawn) for drawn in draws}) > 1  # a fresh draw per step
    again = ReferenceSampler(pool, num_reference=3, seed=0)
    assert [again.draw({2, 3}) for _ in range(5)] == draws  # seeded
    assert sampler.inference_indices() == again.inference_indices()  # one fixed set
    assert len(set(sampler.draw(set(pool)))) == 3  # too few outside the batch: drawn from the whole pool
    with pytest.raises(ValueError, match=r"num_reference=8.*has 7"):
        ReferenceSampler(pool, num_reference=8, seed=0)
