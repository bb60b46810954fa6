"""Every benchmark protocol (docs/benchmarking.md) runs end to end at its `--smoke` size on generated data.

The real runs use ../shared's Magnetic Tile and ELPV; the smoke size of each config swaps in a
generated folder, tiny images and one epoch or two steps per cell, so that this checks every cell of
every protocol builds, trains, tests and is summarised, offline, within CI's budget.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from anomalib_hyperbolic import benchmark

REPO = Path(__file__).resolve().parents[2]
PROTOCOLS = ["mt_cpu", "mt_supervised", "mt_supervised_val", "elpv_fewshot", "mt_pdn_cpu"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_protocol_runs_at_smoke_size(protocol: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # the configs' paths (.cache/weights, ../shared) are relative to the repository
    text = (REPO / "configs" / "benchmark" / f"{protocol}.yaml").read_text()
    # the generated data and the results go to this test's folder
    text = text.replace(".cache/smoke", str(tmp_path / "smoke")).replace("results/benchmark", str(tmp_path))
    config_path = tmp_path / f"{protocol}.yaml"
    config_path.write_text(text)
    config = benchmark.load_config(config_path, smoke=True)
    assert config["output"].startswith(str(tmp_path))

    rows = benchmark.run_grid(config_path, parallel=2, smoke=True)

    expected = [spec["name"] for spec in config["models"]]
    finished = sorted(row["name"] for row in rows)
    assert finished == sorted(expected), f"cells that failed: {sorted(set(expected) - set(finished))}"
    for row in (row for row in rows if not row.get("latency_only")):
        assert 0 <= row["image_AUROC"] <= 1, row["name"]
        assert 0 <= row["raw_image_AUROC"] <= 1, row["name"]
    output = Path(config["output"])
    assert (output / "summary.md").is_file()
    assert (output / "metrics.png").stat().st_size > 0
    full = yaml.safe_load(text)
    assert full.get("seeds") == [0, 1, 2], "every protocol compares over at least 3 training seeds"
