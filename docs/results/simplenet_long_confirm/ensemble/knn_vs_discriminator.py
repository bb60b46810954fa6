"""Scratch: is the AUPRO gap in SimpleNet's features or in its discriminator? kNN on o / q vs -D(q), complement images.

Caution: built without Engine.fit (double resize of mixed-size batches, see log.md).
"""
import sys, glob, pathlib, time, torch, torch.nn.functional as F
sys.path.insert(0, "src")
from anomalib.metrics.aupro import _AUPRO
from anomalib_hyperbolic.benchmark import load_config, _prepare, _cell_file
torch.set_num_threads(2)
cfg = load_config("configs/benchmark/simplenet_long_confirm.yaml")
spec = [m for m in cfg["models"] if "s0" in m["name"]][0]
stem = _cell_file(pathlib.Path(cfg["output"]), spec["name"]).stem
ckpt = glob.glob(f"{cfg['output']}/runs/{stem}/**/model.ckpt", recursive=True)[0]
dm, sizes, model = _prepare(cfg, spec)
model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"], strict=False)
model.eval(); m = model.model; tf = model.pre_processor.transform
t = time.time()
with torch.no_grad():
    train = torch.cat([m.extracted_features(tf(b.image)) for b in dm.train_dataloader()])  # (N,32,32,C) standardised
    test, masks = [], []
    for b in dm.test_dataloader():
        test.append(m.extracted_features(tf(b.image)))
        masks.append(F.interpolate(b.gt_mask.float().unsqueeze(1), size=(256, 256), mode="nearest")[:, 0] > 0.5)
    test = torch.cat(test); masks = torch.cat(masks)
print("features", train.shape, test.shape, time.time() - t, flush=True)
torch.save({"train": train.half(), "test": test.half(), "masks": masks}, ".cache/simplenet_selection/feat_complement_s0std.pt")

def finish(grid):  # (B,32,32) -> blurred 256 map
    amap = F.interpolate(grid.unsqueeze(1), size=(256, 256), mode="bilinear", align_corners=False)
    return torch.cat([m.blur(amap[i:i+32]) for i in range(0, len(amap), 32)])[:, 0]

def aupro(maps):
    a = _AUPRO(fpr_limit=0.3); a.update(maps, masks.int()); return float(a.compute())

def knn(bank, queries):
    out = []
    for i in range(0, len(queries), 4096):
        out.append(torch.cdist(queries[i:i+4096], bank).min(1).values)
    return torch.cat(out)

g = torch.Generator().manual_seed(0)
with torch.no_grad():
    D = -m.discriminate(m.adaptor(test))
    print(f"-D(q)          AUPRO {aupro(finish(D)):.4f}", flush=True)
    for name, tr, te in (("o", train, test), ("q", m.adaptor(train), m.adaptor(test))):
        bank = tr.flatten(0, 2)
        bank = bank[torch.randperm(len(bank), generator=g)[: len(bank) // 10]]
        s = knn(bank, te.flatten(0, 2)).view(te.shape[:3])
        print(f"kNN on {name} (random 10 % bank) AUPRO {aupro(finish(s)):.4f}  {time.time() - t:.0f}s", flush=True)
