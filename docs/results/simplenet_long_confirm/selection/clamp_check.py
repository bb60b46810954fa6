"""Scratch: AUPRO / P-AUROC of trained benchmark cells on raw maps vs anomalib's post-processed (normalised, clamped) maps."""
import sys, glob, torch
sys.path.insert(0, "src")  # run from the repository root, after the benchmark (reads its runs/ checkpoints)
from anomalib.metrics.aupro import _AUPRO
from torchmetrics.classification import BinaryAUROC
from anomalib_hyperbolic.benchmark import load_config, _prepare, _cell_file
torch.set_num_threads(2)
cfg = load_config("configs/benchmark/simplenet_long_confirm.yaml")
names = sys.argv[1:]
for spec in cfg["models"]:
    if names and not any(n in spec["name"] for n in names):
        continue
    stem = _cell_file(__import__("pathlib").Path(cfg["output"]), spec["name"]).stem
    ckpts = glob.glob(f"{cfg['output']}/runs/{stem}/**/model.ckpt", recursive=True)
    if not ckpts:
        continue
    dm, sizes, model = _prepare(cfg, spec)
    state = torch.load(ckpts[0], map_location="cpu", weights_only=False)["state_dict"]
    for key, value in state.items():  # PatchCore's memory bank starts empty
        if key.endswith("memory_bank"):
            model.model.memory_bank = torch.empty_like(value)
    print(spec["name"], model.load_state_dict(state, strict=False))
    model.eval()
    pp = model.post_processor
    raw_maps, norm_maps, masks = [], [], []
    with torch.no_grad():
        for b in dm.test_dataloader():
            images = model.pre_processor.transform(b.image)
            out = model.model(images)
            amap = out.anomaly_map.reshape(len(images), 1, *images.shape[-2:])
            raw_maps.append(amap[:, 0]); norm_maps.append(pp._normalize(amap, pp.pixel_min, pp.pixel_max, pp.pixel_threshold)[:, 0])
            m = torch.nn.functional.interpolate(b.gt_mask.float().unsqueeze(1), size=images.shape[-2:], mode="nearest")[:, 0] > 0.5
            masks.append(m)
    masks = torch.cat(masks).int()
    for label, maps in (("raw", torch.cat(raw_maps)), ("post-processed", torch.cat(norm_maps))):
        au = _AUPRO(fpr_limit=0.3); au.update(maps, masks)
        pa = BinaryAUROC(); pa.update(maps.flatten(), masks.flatten())
        zero = float((maps[masks == 0] == maps.min()).float().mean())
        print(f"  {label:15s} AUPRO {float(au.compute()):.4f}  P-AUROC {float(pa.compute()):.4f}  normal pixels at the minimum {zero:.3f}", flush=True)
