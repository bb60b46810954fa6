"""Which tensor's bf16 rounding moves DRA's normalised scores? torch, held-out images, trained s0 state."""
import sys, os, copy
from pathlib import Path
pass  # run from the repository root, after the mt_cpu cells (their saved weights)
import numpy as np, torch
import torch.nn.functional as F
from torchvision.transforms.v2.functional import resize
from anomalib_hyperbolic import benchmark as B
import importlib
T = importlib.import_module(sys.argv[2])
cell = sys.argv[1]
config = B.load_config('configs/benchmark/mt_cpu.yaml')
spec = next(s for s in config['models'] if s['name'] == cell)
held = copy.deepcopy(config); held['subset'] = {**config['subset'], 'complement': []}
dm, sizes, model = B._prepare(held, spec)
B.load_trained_state(model, torch.load(B._weights_file(Path(config['output']), cell), map_location='cpu', weights_only=True))
model.eval()
imgs = torch.cat([resize(b.image, [256, 256], antialias=True) for b in dm.test_dataloader()])
bf = lambda t: t.to(torch.bfloat16).to(torch.float32)
def scores():
    with torch.no_grad():
        return torch.cat([model(imgs[i:i+8]).pred_score.reshape(-1) for i in range(0, len(imgs), 8)])
ref = scores()
original = F.interpolate
def run(name, patch):
    T.F.interpolate = patch
    out = scores(); T.F.interpolate = original
    print(f"{name:50s} max|dscore| {float((out-ref).abs().max()):.4f} mean {float((out-ref).abs().mean()):.4f}")
def pyramid_only(x, size=None, **kw):
    y = original(x, size=size, **kw); return bf(y) if x.shape[1] == 3 else y
def maps_only(x, size=None, **kw):
    y = original(x, size=size, **kw); return bf(y) if x.shape[1] != 3 else y
run('input pyramid image rounded to bf16', pyramid_only)
run('patch maps (after heads) rounded to bf16', maps_only)
# the features: round the backbone output
fe = model.model.feature_extractor
h = fe.register_forward_hook(lambda m, i, o: {k: bf(v) for k, v in o.items()} if isinstance(o, dict) else ([bf(t) for t in o] if isinstance(o, (list, tuple)) else bf(o)))
out = scores(); h.remove(); print(f"{'backbone output rounded to bf16':50s} max|dscore| {float((out-ref).abs().max()):.4f} mean {float((out-ref).abs().mean()):.4f}")
h = model.model.register_forward_pre_hook(lambda m, a: (bf(a[0]),) + tuple(a[1:]))
out = scores(); h.remove(); print(f"{'model input rounded to bf16':50s} max|dscore| {float((out-ref).abs().max()):.4f} mean {float((out-ref).abs().mean()):.4f}")
print('score range of held-out images', float(ref.min()), float(ref.max()))
