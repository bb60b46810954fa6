"""Scratch: per-defect-type AUPRO (raw maps) of the long_confirm checkpoints on the 490 complement images.

Caution: built without Engine.fit, so mixed-size test batches are first resized to their largest image
(anomalib collate), then to 256 by the pre-processor: a double resize the benchmark does not do (see log.md).
"""
import sys, glob, pathlib, torch
sys.path.insert(0, "src")
from anomalib.metrics.aupro import _AUPRO
from anomalib_hyperbolic.benchmark import load_config, _prepare, _cell_file
torch.set_num_threads(2)
cfg = load_config("configs/benchmark/simplenet_long_confirm.yaml")
names = sys.argv[1:]
for spec in cfg["models"]:
    if names and not any(n in spec["name"] for n in names):
        continue
    stem = _cell_file(pathlib.Path(cfg["output"]), spec["name"]).stem
    ckpts = glob.glob(f"{cfg['output']}/runs/{stem}/**/model.ckpt", recursive=True)
    dm, sizes, model = _prepare(cfg, spec)
    state = torch.load(ckpts[0], map_location="cpu", weights_only=False)["state_dict"]
    for key, value in state.items():
        if key.endswith("memory_bank"):
            model.model.memory_bank = torch.empty_like(value)
    model.load_state_dict(state, strict=False); model.eval()
    maps, masks, types = [], [], []
    with torch.no_grad():
        for b in dm.test_dataloader():
            images = model.pre_processor.transform(b.image)
            out = model.model(images)
            maps.append(out.anomaly_map.reshape(len(images), *images.shape[-2:]))
            m = torch.nn.functional.interpolate(b.gt_mask.float().unsqueeze(1), size=images.shape[-2:], mode="nearest")[:, 0] > 0.5
            masks.append(m)
            types += [pathlib.Path(p).parts[-3] for p in b.image_path]
    maps, masks = torch.cat(maps), torch.cat(masks).int()
    torch.save({"maps": maps.half(), "masks": masks.bool(), "types": types}, f".cache/simplenet_selection/maps_{stem}.pt")
    print(spec["name"], flush=True)
    for t in sorted(set(types)):
        if t == "MT_Free":
            continue
        idx = [i for i, x in enumerate(types) if x in (t, "MT_Free")]
        au = _AUPRO(fpr_limit=0.3); au.update(maps[idx], masks[idx])
        print(f"  {t:14s} n={sum(x == t for x in types):3d} AUPRO {float(au.compute()):.4f}", flush=True)
    au = _AUPRO(fpr_limit=0.3); au.update(maps, masks)
    print(f"  all AUPRO {float(au.compute()):.4f}", flush=True)
