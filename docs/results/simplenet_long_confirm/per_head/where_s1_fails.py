"""Scratch: where the 4-head cells put their high scores (border vs centre, true defect cells), cached complement features."""
import sys, glob, pathlib, torch, torch.nn.functional as F
sys.path.insert(0, "src")
from anomalib_hyperbolic.benchmark import load_config, _prepare, _cell_file
torch.set_num_threads(2)
FE = torch.load(".cache/simplenet_selection/feat_engine.pt", mmap=True)
cfg = load_config("configs/benchmark/simplenet_long_confirm.yaml")
te = FE["compl_test"].permute(0, 2, 3, 1).float(); tm = FE["compl_mask"]; tl = FE["compl_label"]
gm = F.adaptive_avg_pool2d(tm.float().unsqueeze(1), te.shape[1:3])[:, 0]
for spec in cfg["models"]:
    if "4 heads" not in spec["name"]: continue
    stem = _cell_file(pathlib.Path(cfg["output"]), spec["name"]).stem
    ck = glob.glob(f"{cfg['output']}/runs/{stem}/**/model.ckpt", recursive=True)[0]
    dm, sizes, model = _prepare(cfg, spec)
    model.load_state_dict(torch.load(ck, map_location="cpu", weights_only=False)["state_dict"], strict=False); model.eval(); m = model.model
    with torch.no_grad():
        o = (te - m.feature_mean) / m.feature_std
        g = torch.stack([torch.cat([-m.discriminate(a(o[i:i+32]), d) for i in range(0, len(o), 32)]) for a, d in m.heads()]).mean(0)
    normal = g[tl == 0]; H = g.shape[1]
    border = torch.zeros(H, H, dtype=torch.bool); border[:2] = border[-2:] = True; border[:, :2] = border[:, -2:] = True
    thr = torch.quantile(normal.flatten()[::7], 0.95)
    print(spec["name"][-3:], f"normal: mean {normal.mean():.3f} border mean {normal[:, border].mean():.3f} centre {normal[:, ~border].mean():.3f}",
          f"| top5% normal-px share on border {float((normal[:, border] > thr).float().sum() / (normal > thr).float().sum()):.2f} (border area {float(border.float().mean()):.2f})",
          f"| defect cells mean {g[gm > 0.5].mean():.3f} ; frac defect cells > thr {float((g[gm>0.5] > thr).float().mean()):.3f}")
    # per image: normal-image max score distribution
    mx = g.flatten(1).amax(1)
    print("   image max: normal", [round(float(x), 2) for x in torch.quantile(mx[tl == 0], torch.tensor([0.1, 0.5, 0.9]))], "anomalous", [round(float(x), 2) for x in torch.quantile(mx[tl == 1], torch.tensor([0.1, 0.5, 0.9]))])
