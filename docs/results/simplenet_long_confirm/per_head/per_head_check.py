"""Scratch: per-head AUPRO (raw maps) of the saved 4-head benchmark checkpoints, on cached Engine-path features (../ensemble/cache_engine_features.py)."""
import sys, glob, pathlib, torch, torch.nn.functional as F
sys.path.insert(0, "src")
from anomalib.metrics.aupro import _AUPRO
from torchmetrics.classification import BinaryAUROC
from anomalib_hyperbolic.benchmark import load_config, _prepare, _cell_file
torch.set_num_threads(2)
FE = torch.load(".cache/simplenet_selection/feat_engine.pt")
cfg = load_config("configs/benchmark/simplenet_long_confirm.yaml")
def aupro(grid, te_mask, blur):
    amap = F.interpolate(grid.unsqueeze(1), size=te_mask.shape[-2:], mode="bilinear", align_corners=False)
    amap = torch.cat([blur(amap[i:i+32]) for i in range(0, len(amap), 32)])[:, 0]
    a = _AUPRO(fpr_limit=0.3); a.update(amap, te_mask.int()); return float(a.compute())
train_raw = FE["train"].permute(0, 2, 3, 1)
for spec in cfg["models"]:
    if "4 heads" not in spec["name"]: continue
    stem = _cell_file(pathlib.Path(cfg["output"]), spec["name"]).stem
    ck = glob.glob(f"{cfg['output']}/runs/{stem}/**/model.ckpt", recursive=True)[0]
    dm, sizes, model = _prepare(cfg, spec)
    state = torch.load(ck, map_location="cpu", weights_only=False)["state_dict"]
    model.load_state_dict(state, strict=False); model.eval(); m = model.model
    hm = train_raw.flatten(0, 2).mean(0); hs = train_raw.flatten(0, 2).std(0)
    print(spec["name"], "| mean diff vs cache", float((hm - m.feature_mean).abs().max()), "std ratio", float((hs / m.feature_std).max()), float((hs / m.feature_std).min()))
    for key in ("sweep", "compl"):
        te = FE[f"{key}_test"].permute(0, 2, 3, 1); tm = FE[f"{key}_mask"]
        with torch.no_grad():
            o = (te - m.feature_mean) / m.feature_std
            grids = [torch.cat([-m.discriminate(a(o[i:i+32]), d) for i in range(0, len(o), 32)]) for a, d in m.heads()]
        singles = [aupro(g, tm, m.blur) for g in grids]
        print(f"  {key}: heads {' '.join(f'{s:.3f}' for s in singles)} | mean-of-maps {aupro(torch.stack(grids).mean(0), tm, m.blur):.3f}", flush=True)
