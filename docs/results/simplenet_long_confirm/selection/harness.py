"""Scratch: train SimpleNet's adaptor + discriminator on cached Lite0 features; raw-map metrics on the sweep images."""
import sys, time, torch, torch.nn.functional as F
sys.path.insert(0, "src")  # run from the repository root
from anomalib.metrics.aupro import _AUPRO
from torchmetrics.classification import BinaryAUROC
from anomalib_hyperbolic.models.simplenet.torch_model import SimpleNetModel
from anomalib_hyperbolic.models.simplenet.loss import TruncatedL1Loss
torch.set_num_threads(2)
D = torch.load(sys.argv[1] if len(sys.argv) > 1 and sys.argv[1].endswith(".pt") else ".cache/simplenet_selection/feat_sweep.pt")
TRAIN = D["train"].permute(0, 2, 3, 1).contiguous()  # (N,32,32,C)
SYN = D.get("syn"); COV = D.get("syn_cov")
TEST = D["test"].permute(0, 2, 3, 1).contiguous(); TMASK = D["test_mask"]; TLABEL = D["test_label"]
mean = TRAIN.flatten(0, 2).double().mean(0).float(); std = TRAIN.flatten(0, 2).double().std(0, unbiased=False).float()
std = std.clamp_min(1e-3 * float(std.mean()))


def build(hidden=384, noise=0.5, seed=0, **kw):
    torch.manual_seed(seed)
    m = SimpleNetModel(backbone=".cache/weights/tf_efficientnet_lite0.safetensors", layers=["blocks.2", "blocks.4"],
                       pretrain_embed_dim=384, target_embed_dim=384, discriminator_hidden=hidden, noise_std=noise,
                       feature_standardization=True, **kw)
    m.feature_mean.copy_(mean); m.feature_std.copy_(std); m.feature_statistics_fitted.fill_(True)
    return m


def evaluate(m, blur=True):
    m.eval()
    with torch.no_grad():
        pts = []
        for i in range(0, len(TEST), 32):
            o = (TEST[i:i+32] - m.feature_mean) / m.feature_std
            pts.append(-m.discriminate(m.to_manifold(m.adaptor(o))).unsqueeze(1))
        ps = torch.cat(pts)
        amap = F.interpolate(ps, size=TMASK.shape[-2:], mode="bilinear", align_corners=False)
        if blur:
            amap = torch.cat([m.blur(amap[i:i+32]) for i in range(0, len(amap), 32)])
        score = ps.flatten(1).amax(1)
    m.train()
    au = _AUPRO(fpr_limit=0.3); au.update(amap[:, 0], TMASK.int())
    pa = BinaryAUROC(); pa.update(amap.flatten(), TMASK.flatten().int())
    ia = BinaryAUROC(); ia.update(score, TLABEL.int())
    return float(ia.compute()), float(pa.compute()), float(au.compute())


def train(epochs=8, copies=2, hidden=384, noise=0.5, seed=0, lr=(1e-4, 2e-4), wd=1e-5, th=(0.5, 0.5), eval_every=None,
          tag="", batch=4, cov_min=0.5, noise_on_syn=False, cosine=False, pbn=False, **kw):
    m = build(hidden=hidden, noise=noise, seed=seed, **kw)
    opt = torch.optim.Adam([{"params": m.adaptor.parameters(), "lr": lr[0]},
                            {"params": m.discriminator.parameters(), "lr": lr[1]}], weight_decay=wd)
    loss_fn = TruncatedL1Loss(*th)
    g = torch.Generator().manual_seed(seed)
    syn_order = torch.randperm(len(SYN), generator=g) if (copies and SYN is not None) else None
    sp = 0; t = time.time(); log = []
    total = epochs * ((len(TRAIN) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total) if cosine else None
    m.train()
    for ep in range(1, epochs + 1):
        perm = torch.randperm(len(TRAIN), generator=g)
        for i in range(0, len(perm), batch):
            idx = perm[i:i+batch]
            o = (TRAIN[idx] - m.feature_mean) / m.feature_std
            pts = m.to_manifold(m.adaptor(o)).flatten(0, -2)
            syn = None
            if syn_order is not None:
                k = len(idx) * copies
                j = syn_order[torch.arange(sp, sp + k) % len(SYN)]; sp += k
                so = (SYN[j].float().permute(0, 2, 3, 1) - m.feature_mean) / m.feature_std
                sq = m.to_manifold(m.adaptor(so))
                syn = sq[COV[j].float() > cov_min]
            ns, ans = m._discriminate_training(pts, syn)
            loss = loss_fn(ns, ans)
            opt.zero_grad(); loss.backward(); opt.step()
            if sched is not None:
                sched.step()
        if (eval_every and ep % eval_every == 0) or ep == epochs:
            r = evaluate(m); log.append((ep, r))
            print(f"{tag:40s} ep {ep:3d}  I {r[0]:.3f}  P {r[1]:.3f}  PRO {r[2]:.3f}  ({time.time()-t:.0f}s)", flush=True)
            if pbn:
                import copy
                r2 = evaluate(precise_bn(copy.deepcopy(m), copies=copies))
                print(f"{tag + ' +preciseBN':40s} ep {ep:3d}  I {r2[0]:.3f}  P {r2[1]:.3f}  PRO {r2[2]:.3f}", flush=True)
    return m, log


def precise_bn(m, copies=2, steps=None, seed=99, batch=4, cov_min=0.5):
    """Recompute the discriminator's BatchNorm running stats as a plain average over one pass of training batches."""
    bns = [mod for mod in m.discriminator.modules() if isinstance(mod, torch.nn.BatchNorm1d)]
    saved = [(b.momentum) for b in bns]
    for b in bns:
        b.reset_running_stats(); b.momentum = None
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(TRAIN), generator=g)
    syn_order = torch.randperm(len(SYN), generator=g); sp = 0
    m.train()
    with torch.no_grad():
        for i in range(0, len(perm), batch):
            idx = perm[i:i+batch]
            o = (TRAIN[idx] - m.feature_mean) / m.feature_std
            pts = m.to_manifold(m.adaptor(o)).flatten(0, -2)
            syn = None
            if copies:
                k = len(idx) * copies; j = syn_order[torch.arange(sp, sp + k) % len(SYN)]; sp += k
                so = (SYN[j].float().permute(0, 2, 3, 1) - m.feature_mean) / m.feature_std
                syn = m.to_manifold(m.adaptor(so))[COV[j].float() > cov_min]
            m._discriminate_training(pts, syn)
    for b, mom in zip(bns, saved):
        b.momentum = mom
    return m
