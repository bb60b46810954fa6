"""Scratch: cache SimpleNet Lite0 features the way Engine.fit feeds them (datasets resize each image to 256 first)."""
import sys, time, copy, torch
from torchvision.transforms.v2 import Resize
sys.path.insert(0, "src")
from anomalib_hyperbolic.benchmark import load_config, _prepare
torch.set_num_threads(2)
rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 16
base = load_config("configs/benchmark/simplenet_long_confirm.yaml")
spec = [m for m in base["models"] if "s0" in m["name"]][0]
out = {}
t = time.time()
def engine_like(dm):
    for split in ("train_data", "val_data", "test_data"):
        ds = getattr(dm, split, None)
        if ds is not None:
            ds.augmentations = Resize((256, 256), antialias=True)
for key, complement in (("sweep", False), ("compl", True)):
    cfg = copy.deepcopy(base)
    if not complement:
        cfg["subset"].pop("complement")
    dm, sizes, model = _prepare(cfg, spec)
    engine_like(dm); model.eval(); tf = model.pre_processor.transform; fx = model.model.feature_extractor
    print(key, sizes, flush=True)
    with torch.no_grad():
        if key == "sweep":
            imgs = torch.cat([tf(b.image) for b in dm.train_dataloader()])
            out["train"] = torch.cat([fx(imgs[i:i+8]) for i in range(0, len(imgs), 8)])
            syn_f, syn_c = [], []
            torch.manual_seed(123)
            for r in range(rounds):
                for i in range(0, len(imgs), 8):
                    s, m = model.synthesize_anomalies(imgs[i:i+8])
                    f = fx(s)
                    syn_f.append(f.half()); syn_c.append(torch.nn.functional.adaptive_avg_pool2d(m.float(), f.shape[-2:])[:, 0].half())
                print("round", r, f"{time.time() - t:.0f}s", flush=True)
            out["syn"] = torch.cat(syn_f); out["syn_cov"] = torch.cat(syn_c)
        tf_, tm, tl = [], [], []
        for b in dm.test_dataloader():
            tf_.append(fx(tf(b.image)))
            tm.append(torch.nn.functional.interpolate(b.gt_mask.float().unsqueeze(1), size=(256, 256), mode="nearest")[:, 0] > 0.5)
            tl.append(b.gt_label)
        out[f"{key}_test"] = torch.cat(tf_); out[f"{key}_mask"] = torch.cat(tm); out[f"{key}_label"] = torch.cat(tl)
    print(key, "test done", f"{time.time() - t:.0f}s", flush=True)
torch.save(out, ".cache/simplenet_selection/feat_engine.pt")
print({k: v.shape for k, v in out.items()})
