"""Scratch: cache SimpleNet Lite0 features (train, K rounds of Perlin copies, sweep test) for fast exploration."""
import sys, time, torch
from pathlib import Path

Path(".cache/simplenet_selection").mkdir(parents=True, exist_ok=True)
sys.path.insert(0, "src")  # run from the repository root
from anomalib_hyperbolic.benchmark import load_config, _prepare
torch.set_num_threads(2)
split = sys.argv[1] if len(sys.argv) > 1 else "sweep"
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 16
cfg = load_config("configs/benchmark/simplenet_standardization_sweep.yaml")
if split == "confirm":
    cfg["subset"]["complement"] = ["test"]
spec = [m for m in cfg["models"] if "SimpleNet" in m["name"] and m.get("init_args", {}).get("synthetic_anomalies")][0]
print(spec["name"], spec["init_args"])
dm, sizes, model = _prepare(cfg, spec)
print(sizes)
model.eval()
tf = model.pre_processor.transform
fx = model.model.feature_extractor
out = {}
t = time.time()
with torch.no_grad():
    if split == "sweep":
        feats = []
        for b in dm.train_dataloader():
            feats.append(fx(tf(b.image)))
        out["train"] = torch.cat(feats)  # (N, C, 32, 32)
        imgs = torch.cat([tf(b.image) for b in dm.train_dataloader()])
        print("train", out["train"].shape, time.time() - t)
        syn_f, syn_c = [], []
        g = torch.Generator().manual_seed(0)
        torch.manual_seed(123)
        for r in range(rounds):
            for i in range(0, len(imgs), 8):
                s, m = model.synthesize_anomalies(imgs[i:i+8])
                f = fx(s)
                cov = torch.nn.functional.adaptive_avg_pool2d(m.float(), f.shape[-2:])[:, 0]
                syn_f.append(f.half()); syn_c.append(cov.half())
            print("round", r, time.time() - t, flush=True)
        out["syn"] = torch.cat(syn_f); out["syn_cov"] = torch.cat(syn_c)
    tf_, tm, tl = [], [], []
    for b in dm.test_dataloader():
        tf_.append(fx(tf(b.image))); tm.append(torch.nn.functional.interpolate(b.gt_mask.float().unsqueeze(1), size=(256, 256), mode='nearest')[:, 0] > 0.5); tl.append(b.gt_label)
    out["test"] = torch.cat(tf_); out["test_mask"] = torch.cat(tm); out["test_label"] = torch.cat(tl)
    print("test", out["test"].shape, out["test_mask"].shape, time.time() - t)
print({k: v.shape for k, v in out.items()})
torch.save(out, f".cache/simplenet_selection/feat_{split}.pt")
