"""Diagnostic: HADNet's map range and anomalib's pixel threshold after one epoch (mt_supervised_cpu, seed 0).

    HF_HOME=.cache/hf HF_HUB_OFFLINE=1 .venv/bin/python docs/results/mt_supervised_cpu/threshold_check.py

Printed on 2026-12-03 (code a2aaa19): pixel_threshold 0.4612, pixel_max 0.4680, test maps of the first
batch in [1.4e-06, 0.461], no pixel above 0.5.
"""

import torch
from anomalib.engine import Engine

from anomalib_hyperbolic import benchmark

config = benchmark.load_config("configs/benchmark/mt_supervised_cpu.yaml")
spec = next(m for m in config["models"] if m["name"] == "HADNet (supervised, rho 0.01, 3 epochs) s0")
datamodule, sizes, model = benchmark._prepare(config, spec)
print(sizes)
engine = Engine(
    max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir="/tmp/hadnet_check"
)
engine.fit(model=model, datamodule=datamodule)
print({key: float(value) for key, value in model.post_processor.state_dict().items()})
model.eval()
batch = next(iter(datamodule.test_dataloader()))
with torch.no_grad():
    maps = model.model(batch.image).anomaly_map
print("test maps", maps.min().item(), maps.max().item(), "share above 0.5:", (maps > 0.5).float().mean().item())
