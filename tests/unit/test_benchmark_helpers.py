"""Benchmark helpers: the seeded image subset and the shared local PDN teacher."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from anomalib_hyperbolic import benchmark
from anomalib_hyperbolic.testing import make_mvtec_like_dataset


def _mvtec(root: Path) -> object:
    from anomalib.data import MVTecAD

    return MVTecAD(root=root, category="synthetic", num_workers=0, seed=0)


def test_subset_is_seeded_identical_across_datamodules_and_keeps_few_shot_anomalies(tmp_path: Path) -> None:
    from anomalib_hyperbolic.data import FewShotAnomalies

    root = make_mvtec_like_dataset(tmp_path / "data", n_train=40, n_test_good=20, n_test_defect=20, image_size=32)
    subset = {"train": 0.5, "test": 0.5, "seed": 3}
    first, second = _mvtec(root), _mvtec(root)
    sizes = benchmark.apply_subset(first, subset)
    benchmark.apply_subset(second, subset)
    assert 0 < sizes["train"] < 40
    assert 0 < sizes["test"] < 40
    assert list(first.test_data.samples.image_path) == list(second.test_data.samples.image_path)
    assert list(first.train_data.samples.image_path) == list(second.train_data.samples.image_path)
    other_seed = _mvtec(root)
    benchmark.apply_subset(other_seed, {"test": 0.5, "seed": 4})
    assert list(other_seed.test_data.samples.image_path) != list(first.test_data.samples.image_path)

    # the complement is the disjoint rest of the same draw
    rest = _mvtec(root)
    benchmark.apply_subset(rest, {**subset, "complement": ["test"]})
    drawn, left = set(first.test_data.samples.image_path), set(rest.test_data.samples.image_path)
    assert drawn.isdisjoint(left)
    assert len(drawn | left) == benchmark.apply_subset(_mvtec(root), {})["test"]  # together: the whole split

    few_shot = FewShotAnomalies(datamodule=_mvtec(root), num_anomalies=3, seed=0)
    benchmark.apply_subset(few_shot, subset)
    train = few_shot.train_data.samples
    assert int((train.label_index == 1).sum()) == 3  # the labelled anomalies are never cut
    # the few-shot test set is the common test subset minus the labelled anomalies
    assert set(few_shot.test_data.samples.image_path) <= set(first.test_data.samples.image_path)
    # the trainer's own setup keeps the cut
    few_shot.setup("fit")
    assert len(few_shot.test_data) == len(few_shot.test_data.samples)


def test_subset_errors(tmp_path: Path) -> None:
    root = make_mvtec_like_dataset(tmp_path / "data", n_train=4, n_test_good=2, n_test_defect=2, image_size=32)
    with pytest.raises(ValueError, match="fraction in"):
        benchmark.apply_subset(_mvtec(root), {"test": 1.5})
    with pytest.raises(ValueError, match="train, val, test, seed or complement"):
        benchmark.apply_subset(_mvtec(root), {"tset": 0.5})
    with pytest.raises(ValueError, match="without a fraction"):
        benchmark.apply_subset(_mvtec(root), {"train": 0.5, "complement": ["test"]})
    with pytest.raises(ValueError, match="keeps no image"):
        benchmark.apply_subset(_mvtec(root), {"test": 1e-9})


def _drawn_names(datamodule: object, root: Path, subset: dict[str, object]) -> dict[str, list[str]]:
    """The images each split keeps after ``apply_subset``, as POSIX paths relative to ``root``."""
    benchmark.apply_subset(datamodule, subset)
    return {
        split: sorted(Path(path).resolve().relative_to(root.resolve()).as_posix() for path in data.samples.image_path)
        for split in ("train", "test")
        for data in [getattr(datamodule, f"{split}_data")]
    }


def test_subset_draw_keeps_the_same_images_wherever_the_data_lies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative root, an absolute root and a copy in another folder keep the same images."""
    import shutil

    from anomalib_hyperbolic.data import FewShotAnomalies, MagneticTile
    from anomalib_hyperbolic.testing import make_magnetic_tile_like

    monkeypatch.chdir(tmp_path)
    root = make_magnetic_tile_like(tmp_path / "magnetic_tile", n_normal=16, n_per_defect=4, min_size=16, max_size=24)
    copy = tmp_path / "elsewhere" / "mt_copy"
    shutil.copytree(root, copy)
    subset = {"train": 0.5, "test": 0.5, "seed": 1}

    def drawn(data_root: Path | str) -> dict[str, list[str]]:
        return _drawn_names(MagneticTile(root=data_root, num_workers=0), Path(data_root), subset)

    relative = drawn("magnetic_tile")
    assert relative == drawn(root.resolve()) == drawn(copy)
    whole = _drawn_names(MagneticTile(root=root, num_workers=0), root, {})
    for split in ("train", "test"):
        assert 0 < len(relative[split]) < len(whole[split]), split  # the draw cuts
    # names are relative to the dataset root, in POSIX form
    datamodule = MagneticTile(root="magnetic_tile", num_workers=0)
    datamodule.setup()
    names = benchmark.subset_image_names(datamodule)
    assert set(names.values()) == {name for split in whole.values() for name in split}
    assert all(name.startswith("MT_") and "/Imgs/" in name for name in names.values())
    # a wrapper's root is the wrapped datamodule's
    assert benchmark.dataset_root(FewShotAnomalies(MagneticTile(root=copy), num_anomalies=1)) == copy


def test_subset_draw_without_a_root_names_images_from_their_common_folder(tmp_path: Path) -> None:
    """A ``Folder`` of absolute folders and no ``root`` keeps the same images in a copy of the data."""
    import shutil

    from anomalib.data import Folder

    first = make_mvtec_like_dataset(tmp_path / "a" / "data", n_train=16, n_test_good=8, n_test_defect=4) / "synthetic"
    second = tmp_path / "b" / "other"
    shutil.copytree(first, second)

    def folder(base: Path) -> Folder:
        return Folder(
            name="synthetic",
            normal_dir=base / "train" / "good",
            abnormal_dir=[base / "test" / kind for kind in ("blob", "scratch")],
            normal_test_dir=base / "test" / "good",
            num_workers=0,
            seed=0,  # anomalib's val/test re-split
        )

    datamodule = folder(first)
    assert datamodule.root is None
    subset = {"train": 0.5, "test": 0.5, "seed": 2}
    assert _drawn_names(datamodule, first, subset) == _drawn_names(folder(second), second, subset)
    whole = folder(first)
    whole.setup()
    names = set(benchmark.subset_image_names(whole).values())
    assert {"train/good/000.png", "test/good/000.png", "test/blob/000.png"} <= names


def test_build_model_normalization_modes(tmp_path: Path) -> None:
    """``backbone``: Padim on Lite0 gets 0.5/0.5, EfficientAd is left alone; a cell's ``imagenet`` is a control.

    ``model`` (the default) keeps each model's own pre-processor.
    """
    from anomalib_hyperbolic.models.components import pre_processor_normalization

    padim = {
        "name": "Padim",
        "class_path": "anomalib.models.Padim",
        "init_args": {
            "backbone": "tf_efficientnet_lite0",
            "layers": ["blocks.1", "blocks.2"],
            "n_features": 16,
            "pre_trained": False,  # offline: no hub
        },
    }
    efficientad = {
        "name": "EfficientAd",
        "class_path": "anomalib.models.EfficientAd",
        "init_args": {"imagenet_dir": tmp_path},
    }
    imagenet_cell = {**padim, "name": "Padim imagenet", "normalization": "imagenet"}
    half, imagenet = ([0.5] * 3, [0.5] * 3), ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    config = {"image_size": 64, "pixel_metrics": False, "normalization": "backbone"}

    model = benchmark.build_model(config, padim)
    assert pre_processor_normalization(model.pre_processor) == half
    assert model.pre_processor.transform.transforms[0].size == [64, 64]
    record = benchmark.normalization_record(config, padim, model)
    assert record == {"mode": "backbone", "where": "pre_processor", "mean": half[0], "std": half[1]}
    control = benchmark.build_model(config, imagenet_cell)
    assert pre_processor_normalization(control.pre_processor) == imagenet
    assert benchmark.normalization_record(config, imagenet_cell, control)["mode"] == "imagenet"
    ead = benchmark.build_model(config, efficientad)
    assert pre_processor_normalization(ead.pre_processor) is None  # EfficientAd normalises inside: untouched
    assert benchmark.normalization_record(config, efficientad, ead)["where"] is None
    # the default, "model": anomalib's Padim keeps its own ImageNet statistics
    assert pre_processor_normalization(benchmark.build_model({"image_size": 64}, padim).pre_processor) == imagenet
    # ... and this package's models get their own default, which follows the cell's backbone
    simplenet = {
        "name": "SimpleNet",
        "class_path": "anomalib_hyperbolic.models.SimpleNet",
        "init_args": {"backbone": "tf_efficientnet_lite0", "layers": ["blocks.2"], "pre_trained": False},
    }
    assert pre_processor_normalization(benchmark.build_model({"image_size": 64}, simplenet).pre_processor) == half
    with pytest.raises(ValueError, match="normalization must be one of"):
        benchmark.build_model({"normalization": "lab"}, padim)


def test_local_pdn_teacher_is_loaded_by_efficientad_and_hypad(tmp_path: Path) -> None:
    from anomalib.models import EfficientAd

    from anomalib_hyperbolic.models import HypAD

    source = EfficientAd(imagenet_dir=tmp_path, visualizer=False)
    teacher_file = tmp_path / "teacher.pth"
    torch.save(source.model.teacher.state_dict(), teacher_file)
    for model in (EfficientAd(imagenet_dir=tmp_path, visualizer=False), HypAD(imagenet_dir=None, visualizer=False)):
        benchmark.use_local_pdn_teacher(model, teacher_file)
        model.prepare_pretrained_model()
        for name, value in source.model.teacher.state_dict().items():
            assert torch.equal(model.model.teacher.state_dict()[name], value), name

    wrong = tmp_path / "wrong.pth"
    torch.save({"conv9.weight": torch.zeros(1)}, wrong)
    model = EfficientAd(imagenet_dir=tmp_path, visualizer=False)
    benchmark.use_local_pdn_teacher(model, wrong)
    with pytest.raises(ValueError, match="conv9"):
        model.prepare_pretrained_model()
    with pytest.raises(FileNotFoundError, match="distill-teacher"):
        benchmark.use_local_pdn_teacher(model, tmp_path / "missing.pth")


def test_plots_include_the_hypad_curvature_sweep_only_with_hypad_cells(tmp_path: Path) -> None:
    def row(name: str, class_path: str, init_args: dict, aupro: float) -> dict:
        return {
            "name": name,
            "class_path": class_path,
            "init_args": init_args,
            "image_AUROC": 0.6,
            "pixel_AUROC": 0.7,
            "pixel_AUPRO": aupro,
            "torch_latency_ms_b1": 10.0,
            "openvino_latency_ms_b1": 5.0,
        }

    rows = [row("Patchcore", "anomalib.models.Patchcore", {}, 0.5)]
    benchmark.plot(rows, tmp_path)
    assert (tmp_path / "metrics.png").is_file()
    assert (tmp_path / "latency_vs_aupro.png").is_file()
    assert not (tmp_path / "hypad_curvature.png").exists()
    rows += [
        row("HypAD a", "anomalib_hyperbolic.models.HypAD", {"c": 0.1}, 0.2),
        row("HypAD b", "anomalib_hyperbolic.models.HypAD", {}, 0.3),  # default c = 0.01
    ]
    benchmark.plot(rows, tmp_path)
    assert (tmp_path / "hypad_curvature.png").stat().st_size > 0

    # a grid trained with `latency: false` has no latency figure, and an earlier run's is removed
    untimed = [{key: value for key, value in entry.items() if "latency" not in key} for entry in rows]
    benchmark.plot(untimed, tmp_path)
    assert (tmp_path / "metrics.png").stat().st_size > 0
    assert not (tmp_path / "latency_vs_aupro.png").exists()
    benchmark.plot(rows[:1], tmp_path)  # the HypAD cells gone: so is their figure
    assert not (tmp_path / "hypad_curvature.png").exists()


def test_cell_seed_overrides_the_training_seed_but_not_the_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cell's own ``seed`` changes the model's initialisation; the datamodule's images stay the same."""
    # the draw keys on the image path as the datamodule lists it: a root relative to the working
    # directory (as in the protocol configs) makes it the same on every machine and in every tmp_path
    monkeypatch.chdir(tmp_path)
    make_mvtec_like_dataset(Path("data"), n_train=8, n_test_good=4, n_test_defect=4, image_size=64)
    config = {
        "seed": 0,
        "image_size": 64,
        "data": {
            "class_path": "anomalib.data.MVTecAD",
            "init_args": {"root": "data", "category": "synthetic", "num_workers": 0},
        },
        "subset": {"train": 0.7, "test": 0.7, "seed": 0},
    }
    spec = {
        "name": "SimpleNet",
        "class_path": "anomalib_hyperbolic.models.SimpleNet",
        "init_args": {"backbone": "resnet18", "pre_trained": False, "pretrain_embed_dim": 16, "target_embed_dim": 16},
    }
    prepared = {seed: benchmark.prepare_cell(config, {**spec, "seed": seed}) for seed in (0, 1)}
    default = benchmark.prepare_cell(config, spec)  # no cell seed: the config's
    assert benchmark.cell_seed(config, spec) == 0
    assert benchmark.cell_seed(config, {**spec, "seed": 1}) == 1

    def weights(model):
        return model.model.adaptor.weight

    assert torch.equal(weights(default[2]), weights(prepared[0][2]))
    assert not torch.equal(weights(prepared[0][2]), weights(prepared[1][2]))

    def images(datamodule):
        return sorted(datamodule.train_data.samples.image_path) + sorted(datamodule.test_data.samples.image_path)

    assert prepared[0][1] == prepared[1][1]
    assert images(prepared[0][0]) == images(prepared[1][0])


def test_seed_summary_groups_cells_that_differ_only_in_seed(tmp_path: Path) -> None:
    base = {"class_path": "m.A", "init_args": {"x": 1}, "max_epochs": 8, "max_steps": -1}
    rows = [
        {**base, "name": "A s0", "seed": 0, "pixel_AUPRO": 0.5, "image_AUROC": 0.7},
        {**base, "name": "A s1", "seed": 1, "pixel_AUPRO": 0.7, "image_AUROC": 0.9},
        {**base, "name": "A longer s0", "seed": 0, "max_epochs": 16, "pixel_AUPRO": 0.1},
        {**base, "name": "B", "seed": 0, "init_args": {"x": 2}, "pixel_AUPRO": 0.3},
    ]
    summary = benchmark.seed_summary(rows)
    assert [entry["name"] for entry in summary] == ["A", "A longer", "B"]
    assert summary[0]["seeds"] == [0, 1]
    assert summary[0]["pixel_AUPRO_mean"] == pytest.approx(0.6)
    assert summary[0]["pixel_AUPRO_std"] == pytest.approx(0.1 * 2**0.5)  # sample std (n - 1)
    assert summary[0]["image_AUROC_mean"] == pytest.approx(0.8)
    assert "image_AUROC_mean" not in summary[2]
    benchmark.write_tables(rows, tmp_path)
    table = (tmp_path / "summary.md").read_text()
    assert "| A | 0, 1 | 0.800 ± 0.141 |" in table
    single = tmp_path / "single"
    single.mkdir()
    benchmark.write_tables(rows[2:], single)  # no configuration with two seeds: no summary
    assert not (single / "summary.md").exists()


def test_precision_table_reports_both_precisions_the_worst_seed_and_the_speed_up(tmp_path: Path) -> None:
    cell = {"group": "A", "class_path": "m.A", "ov_max_score_change": 0.1}
    rows = [
        {**cell, "name": "A s0", "seed": 0, "ov_f32_image_AUROC": 0.80, "ov_default_image_AUROC": 0.79},
        {**cell, "name": "A s1", "seed": 1, "ov_f32_image_AUROC": 0.90, "ov_default_image_AUROC": 0.93},
        {"name": "B", "group": "B", "class_path": "m.B", "image_AUROC": 0.5},  # not measured: no row
    ]
    for row, (f32, default) in zip(rows, ((20.0, 10.0), (30.0, 10.0)), strict=False):
        row |= {"ov_f32_latency_ms_b1": f32, "ov_default_latency_ms_b1": default}
    benchmark.write_precision_table(rows, tmp_path)
    table = (tmp_path / "precision.md").read_text().splitlines()
    assert len(table) == 3
    assert table[2] == "| A | 0, 1 | 0.850 / 0.860 (0.030) |  |  | 0.100 | 25.0 | 10.0 | 2.50x |"
    benchmark.write_precision_table(rows[2:], tmp_path / "none")  # nothing measured: nothing written
    assert not (tmp_path / "none" / "precision.md").exists()


def test_seed_summary_pools_a_seeds_group_and_keeps_per_seed_values() -> None:
    rows = [
        {"name": "A s0", "group": "A", "seed": 0, "class_path": "m.A", "pixel_AUPRO": 0.5, "raw_pixel_AUPRO": 0.6},
        {"name": "A s1", "group": "A", "seed": 1, "class_path": "m.A", "pixel_AUPRO": 0.7, "raw_pixel_AUPRO": 0.8},
        # same class and arguments, another group: not pooled with A
        {"name": "B s0", "group": "B", "seed": 0, "class_path": "m.A", "pixel_AUPRO": 0.1},
    ]
    summary = benchmark.seed_summary(rows)
    assert [entry["name"] for entry in summary] == ["A", "B"]
    assert summary[0]["pixel_AUPRO_values"] == [0.5, 0.7]
    assert summary[0]["raw_pixel_AUPRO_mean"] == pytest.approx(0.7)


def test_expand_seeds_rejects_a_bad_seed_list() -> None:
    with pytest.raises(ValueError, match="seeds must be a non-empty list"):
        benchmark.expand_seeds({"models": [{"name": "A", "seeds": "0,1"}]})
    # a cell with its own seed stays one cell even when the config lists seeds
    cells = benchmark.expand_seeds({"seeds": [0, 1], "models": [{"name": "A", "seed": 5}, {"name": "B"}]})
    assert [cell["name"] for cell in cells] == ["A", "B s0", "B s1"]


def test_smoke_needs_a_smoke_section(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no `smoke` section"):
        benchmark.apply_smoke({"output": "x", "data": {}, "models": []})


class _MaterialisedOnPrepare:
    """A datamodule whose data exist only after ``prepare_data()`` (like ELPV on a first run)."""

    def __new__(cls, root: str, **kwargs: object) -> object:
        from anomalib.data import MVTecAD

        class Lazy(MVTecAD):
            def prepare_data(self) -> None:
                if not (Path(root) / "synthetic").is_dir():
                    make_mvtec_like_dataset(root, n_train=4, n_test_good=2, n_test_defect=2, image_size=32)

        return Lazy(root=root, category="synthetic", **kwargs)


def test_cells_prepare_the_data_before_setting_it_up(tmp_path: Path) -> None:
    root = tmp_path / "lazy"
    config = {
        "data": {
            "class_path": f"{__name__}._MaterialisedOnPrepare",
            "init_args": {"root": str(root), "num_workers": 0},
        },
        "image_size": 32,
    }
    spec = {
        "name": "PaDiM",
        "class_path": "anomalib.models.Padim",
        "init_args": {"backbone": "resnet18", "pre_trained": False, "layers": ["layer1"], "n_features": 32},
    }
    benchmark.prepare_data_once(config)
    assert (root / "synthetic").is_dir()
    _, sizes, _ = benchmark.prepare_cell(config, spec)
    assert sizes["train"] == 4


def test_raw_score_metrics_see_the_scores_before_post_processing(tmp_path: Path) -> None:
    """As a trainer callback it runs before the post-processor: it sees PaDiM's raw distances (> 1)."""
    from anomalib.engine import Engine
    from anomalib.models import Padim

    from anomalib_hyperbolic.metrics import RawScoreMetrics

    class Recording(RawScoreMetrics):
        largest = 0.0

        def on_test_batch_end(self, trainer, pl_module, outputs, *args, **kwargs) -> None:
            Recording.largest = max(Recording.largest, float(outputs.pred_score.max()))
            super().on_test_batch_end(trainer, pl_module, outputs, *args, **kwargs)

    root = make_mvtec_like_dataset(tmp_path / "data", n_train=6, n_test_good=3, n_test_defect=3, image_size=32)
    raw = Recording()
    model = Padim(backbone="resnet18", pre_trained=False, layers=["layer1"], n_features=32, visualizer=False)
    engine = Engine(max_epochs=1, logger=False, enable_progress_bar=False, callbacks=[raw], default_root_dir=tmp_path)
    datamodule = _mvtec(root)
    engine.fit(model=model, datamodule=datamodule)
    normalised = engine.test(model=model, datamodule=datamodule, verbose=False)[0]
    assert Recording.largest > 1  # normalised scores are clamped to [0, 1]
    assert set(raw.results) == {"raw_image_AUROC", "raw_pixel_AUROC", "raw_pixel_AUPRO"}
    assert raw.results["raw_image_AUROC"] >= normalised["image_AUROC"] - 1e-6  # the clamp only ties scores


def write_marker(path: Path, data: str) -> None:
    """A prepare step for the test below: writes ``data`` to ``path``."""
    Path(path).write_text(data)


def test_prepare_steps_make_missing_paths_only_and_check_they_were_made(tmp_path: Path) -> None:
    made = tmp_path / "made.txt"
    step = {"path": str(made), "function": f"{__name__}.write_marker", "init_args": {"data": "x"}}
    benchmark.prepare_files({"prepare": [step]})
    assert made.read_text() == "x"
    made.write_text("kept")
    benchmark.prepare_files({"prepare": [step]})  # exists: not redone
    assert made.read_text() == "kept"
    silent = {"path": str(tmp_path / "never"), "function": "builtins.print"}
    with pytest.raises(RuntimeError, match="did not write"):
        benchmark.prepare_files({"prepare": [silent]})


def test_validation_interval_validates_epoch_based_cells_once_at_the_end() -> None:
    assert benchmark.validation_interval({"max_epochs": 8}) == 8  # (epoch + 1) % 8 == 0: after the last epoch only
    assert benchmark.validation_interval({"max_epochs": 1}) == 1
    assert benchmark.validation_interval({}) == 1
    assert benchmark.validation_interval({"max_epochs": 8, "max_steps": 100}) == 1  # step-based: unchanged
    assert benchmark.validation_interval({"max_epochs": 8, "max_steps": -1}) == 8
    assert benchmark.validation_interval({"max_epochs": 8, "max_time": "00:00:10:00"}) == 1  # may stop early
    assert benchmark.validation_interval({"max_epochs": 8, "check_val_every_n_epoch": 2}) == 2  # the cell's own
    assert benchmark.validation_interval({"max_epochs": 8, "check_val_every_n_epoch": None}) == 8
    # the model's trainer_arguments win, as in anomalib's Engine (PaDiM, PatchCore: one epoch)
    assert benchmark.validation_interval({"max_epochs": 8}, {"max_epochs": 1, "num_sanity_val_steps": 0}) == 1


def test_cell_precision_defaults_and_plugin() -> None:
    from anomalib_hyperbolic.precision import TrainOnlyMixedPrecision

    assert benchmark.cell_precision({}, {}) == ("32-true", True)
    assert benchmark.cell_precision({"precision": "bf16"}, {}) == ("bf16-mixed", True)
    config = {"precision": "bf16-mixed", "f32_evaluation": False}
    assert benchmark.cell_precision(config, {"precision": None}) == ("bf16-mixed", False)
    assert benchmark.cell_precision(config, {"precision": 32, "f32_evaluation": True}) == ("32-true", True)
    assert benchmark.precision_arguments("32-true", True, "cpu") == {"precision": "32-true"}
    assert benchmark.precision_arguments("bf16-mixed", False, "cpu") == {"precision": "bf16-mixed"}
    (plugin,) = benchmark.precision_arguments("bf16-mixed", True, "cpu")["plugins"]
    assert isinstance(plugin, TrainOnlyMixedPrecision)
    assert (plugin.precision, plugin.device) == ("bf16-mixed", "cpu")


def test_channels_last_key_adds_the_callback_the_cell_asks_for(tmp_path: Path) -> None:
    """`channels_last`: the cell's value wins over the config's; True puts ChannelsLastTraining in the engine."""
    import torch

    from anomalib_hyperbolic.precision import ChannelsLastTraining

    assert benchmark.cell_channels_last({}, {}) is False
    assert benchmark.cell_channels_last({"channels_last": True}, {}) is True
    assert benchmark.cell_channels_last({"channels_last": True}, {"channels_last": False}) is False
    assert benchmark.cell_channels_last({}, {"channels_last": None}) is False
    for value in (True, False):
        engine = benchmark.cell_engine({"channels_last": value}, {}, torch.nn.Linear(1, 1), tmp_path, callbacks=[])
        added = [cb for cb in engine._cache._cached_args["callbacks"] if isinstance(cb, ChannelsLastTraining)]
        assert len(added) == int(value)


def test_seed_summary_keeps_cells_of_different_precisions_apart() -> None:
    base = {"class_path": "m.A", "init_args": {}, "max_epochs": 8, "max_steps": -1, "pixel_AUPRO": 0.5}
    rows = [
        {**base, "name": "A", "seed": 0},  # written before precision was recorded: 32-true
        {**base, "name": "A s1", "seed": 1, "precision": "32-true"},
        {**base, "name": "A bf16", "seed": 0, "precision": "bf16-mixed", "f32_evaluation": True},
    ]
    assert [entry["seeds"] for entry in benchmark.seed_summary(rows)] == [[0, 1], [0]]
