"""Scratch: raw vs post-processed AUPRO of saved benchmark cells, on Engine-path images (per-image Resize(256))."""
import sys, glob, pathlib, torch
from torchvision.transforms.v2 import Resize
sys.path.insert(0, "src")
from anomalib.metrics.aupro import _AUPRO
from torchmetrics.classification import BinaryAUROC
from anomalib_hyperbolic.benchmark import load_config, _prepare, _cell_file
torch.set_num_threads(2)
cfg = load_config("configs/benchmark/simplenet_long_confirm.yaml")
names = sys.argv[1:]
for spec in cfg["models"]:
    if names and not any(n in spec["name"] for n in names):
        continue
    stem = _cell_file(pathlib.Path(cfg["output"]), spec["name"]).stem
    ckpts = glob.glob(f"{cfg['output']}/runs/{stem}/**/model.ckpt", recursive=True)
    if not ckpts:
        print("no checkpoint", stem); continue
    dm, sizes, model = _prepare(cfg, spec)
    dm.test_data.augmentations = Resize((256, 256), antialias=True)
    state = torch.load(ckpts[0], map_location="cpu", weights_only=False)["state_dict"]
    for key, value in state.items():
        if key.endswith("memory_bank"):
            model.model.memory_bank = torch.empty_like(value)
    model.load_state_dict(state, strict=False); model.eval()
    pp = model.post_processor
    raw, post, masks = [], [], []
    with torch.no_grad():
        for b in dm.test_dataloader():
            images = model.pre_processor.transform(b.image)
            amap = model.model(images).anomaly_map.reshape(len(images), 1, *images.shape[-2:])
            raw.append(amap[:, 0]); post.append(pp._normalize(amap, pp.pixel_min, pp.pixel_max, pp.pixel_threshold)[:, 0])
            masks.append(b.gt_mask.bool())
    masks = torch.cat(masks).int()
    print(spec["name"], flush=True)
    for label, maps in (("raw", torch.cat(raw)), ("post-processed", torch.cat(post))):
        au = _AUPRO(fpr_limit=0.3); au.update(maps, masks)
        top = float((maps[masks == 0] >= maps.max()).float().mean()); bottom = float((maps[masks == 0] <= maps.min()).float().mean())
        print(f"  {label:15s} AUPRO {float(au.compute()):.4f}  normal pixels tied at max {top:.3f} / at min {bottom:.3f}", flush=True)
