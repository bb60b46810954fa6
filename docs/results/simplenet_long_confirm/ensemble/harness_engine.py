"""Scratch harness on Engine-path features: train on cached train/syn; metrics on sweep (selection) and complement."""
import sys, math, time, torch
_load = torch.load
_F = _load(".cache/simplenet_selection/feat_engine.pt")
_F.update(test=_F["sweep_test"], test_mask=_F["sweep_mask"], test_label=_F["sweep_label"])
torch.load = lambda *a, **k: _F
sys.argv = ["h", "x.pt"]
exec(open("docs/results/simplenet_long_confirm/selection/harness.py").read())
torch.load = _load
SETS = {"sweep": (TEST, TMASK, TLABEL), "compl": (_F["compl_test"].permute(0, 2, 3, 1).contiguous(), _F["compl_mask"], _F["compl_label"])}
_evaluate = evaluate

def evaluate(m, blur=True):
    global TEST, TMASK, TLABEL
    out = []
    for key in ("sweep", "compl"):
        TEST, TMASK, TLABEL = SETS[key]
        out.append(_evaluate(m, blur))
    TEST, TMASK, TLABEL = SETS["sweep"]
    return tuple(out[0]) + (out[1][2], out[1][0], out[1][1])

_train = train
def train(**kw):
    m, log = _train(**kw)
    for ep, r in log:
        print(f"   >> {kw.get('tag',''):28s} ep {ep:3d} | sweep PRO {r[2]:.3f} | complement PRO {r[3]:.3f} I {r[4]:.3f} P {r[5]:.3f}", flush=True)
    return m, log

NOISE_RANGE = None
_gen = SimpleNetModel.generate_anomalous
def _mixed(self, points):
    if NOISE_RANGE is None:
        return _gen(self, points)
    lo, hi = NOISE_RANGE
    scale = torch.empty(points.shape[:-1] + (1,)).uniform_(math.log(lo), math.log(hi)).exp()
    return points + torch.randn_like(points) * scale
SimpleNetModel.generate_anomalous = _mixed

def knn_eval(frac=0.1, seed=0):
    from anomalib.metrics.aupro import _AUPRO
    g = torch.Generator().manual_seed(seed)
    bank = ((TRAIN - mean) / std).flatten(0, 2)
    bank = bank[torch.randperm(len(bank), generator=g)[: int(len(bank) * frac)]]
    blur = build().blur
    for key, (te, tm, tl) in SETS.items():
        q = ((te - mean) / std).flatten(0, 2)
        d = torch.cat([torch.cdist(q[i:i+4096], bank).min(1).values for i in range(0, len(q), 4096)]).view(te.shape[:3])
        amap = F.interpolate(d.unsqueeze(1), size=tm.shape[-2:], mode="bilinear", align_corners=False)
        amap = torch.cat([blur(amap[i:i+32]) for i in range(0, len(amap), 32)])[:, 0]
        a = _AUPRO(fpr_limit=0.3); a.update(amap, tm.int())
        print(f"   >> kNN on o ({frac:.0%} random bank) {key} PRO {float(a.compute()):.3f}", flush=True)

N_TRAIN = len(TRAIN)
def train2(epochs=8, copies=2, noise=0.5, seed=0, cov_min=0.25, paired=False, tag="", eval_every=None, batch=4, hidden=384):
    """The harness loop, with `paired`: the synthetic copies are of the batch's own images (as in the Lightning model)."""
    m = build(hidden=hidden, noise=noise, seed=seed)
    opt = torch.optim.Adam([{"params": m.adaptor.parameters(), "lr": 1e-4},
                            {"params": m.discriminator.parameters(), "lr": 2e-4}], weight_decay=1e-5)
    loss_fn = TruncatedL1Loss(0.5, 0.5)
    g = torch.Generator().manual_seed(seed)
    rounds = len(SYN) // N_TRAIN
    syn_order = torch.randperm(len(SYN), generator=g); sp = 0
    t = time.time(); log = []
    m.train()
    for ep in range(1, epochs + 1):
        perm = torch.randperm(N_TRAIN, generator=g)
        for i in range(0, N_TRAIN, batch):
            idx = perm[i:i+batch]
            o = (TRAIN[idx] - m.feature_mean) / m.feature_std
            pts = m.adaptor(o).flatten(0, -2)
            if paired:
                r = torch.randint(0, rounds, (copies, len(idx)), generator=g)
                j = (r * N_TRAIN + idx.unsqueeze(0)).flatten()
            else:
                k = len(idx) * copies; j = syn_order[torch.arange(sp, sp + k) % len(SYN)]; sp += k
            so = (SYN[j].float().permute(0, 2, 3, 1) - m.feature_mean) / m.feature_std
            syn = m.adaptor(so)[COV[j].float() > cov_min]
            ns, ans = m._discriminate_training(pts, syn)
            loss = loss_fn(ns, ans)
            opt.zero_grad(); loss.backward(); opt.step()
        if (eval_every and ep % eval_every == 0) or ep == epochs:
            r_ = evaluate(m); log.append((ep, r_))
            print(f"   >> {tag:28s} ep {ep:3d} | sweep PRO {r_[2]:.3f} | complement PRO {r_[3]:.3f} I {r_[4]:.3f} P {r_[5]:.3f}  ({time.time()-t:.0f}s)", flush=True)
    return m, log

def train3(epochs=8, copies=2, noise=0.5, seed=0, cov_min=0.25, delay=1, tag="", eval_every=None, batch=4, hidden=384):
    """Synthetic copies of images from a queue of the last `delay` batches (not the current one), like a buffer in the model."""
    m = build(hidden=hidden, noise=noise, seed=seed)
    opt = torch.optim.Adam([{"params": m.adaptor.parameters(), "lr": 1e-4},
                            {"params": m.discriminator.parameters(), "lr": 2e-4}], weight_decay=1e-5)
    loss_fn = TruncatedL1Loss(0.5, 0.5)
    g = torch.Generator().manual_seed(seed)
    rounds = len(SYN) // N_TRAIN
    t = time.time(); log = []; queue = []
    m.train()
    for ep in range(1, epochs + 1):
        perm = torch.randperm(N_TRAIN, generator=g)
        for i in range(0, N_TRAIN, batch):
            idx = perm[i:i+batch]
            o = (TRAIN[idx] - m.feature_mean) / m.feature_std
            pts = m.adaptor(o).flatten(0, -2)
            src = torch.cat(queue) if queue else idx
            pick = src[torch.randint(0, len(src), (copies * len(idx),), generator=g)] if delay > 1 else src.repeat(copies)[: copies * len(idx)]
            r = torch.randint(0, rounds, (len(pick),), generator=g)
            j = r * N_TRAIN + pick
            so = (SYN[j].float().permute(0, 2, 3, 1) - m.feature_mean) / m.feature_std
            syn = m.adaptor(so)[COV[j].float() > cov_min]
            ns, ans = m._discriminate_training(pts, syn)
            loss = loss_fn(ns, ans)
            opt.zero_grad(); loss.backward(); opt.step()
            queue = (queue + [idx])[-delay:]
        if (eval_every and ep % eval_every == 0) or ep == epochs:
            r_ = evaluate(m); log.append((ep, r_))
            print(f"   >> {tag:28s} ep {ep:3d} | sweep PRO {r_[2]:.3f} | complement PRO {r_[3]:.3f} I {r_[4]:.3f} P {r_[5]:.3f}  ({time.time()-t:.0f}s)", flush=True)
    return m, log

import copy
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
def train4(epochs=32, copies=2, noise=0.5, seed=0, cov_min=0.25, paired=True, decay=0.995, tag="", eval_every=8, batch=4, hidden=384):
    """train2 plus an EMA copy of adaptor + discriminator (BN buffers averaged too); evaluates both."""
    m = build(hidden=hidden, noise=noise, seed=seed)
    heads = torch.nn.ModuleDict({"adaptor": m.adaptor, "discriminator": m.discriminator})
    ema = AveragedModel(heads, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    opt = torch.optim.Adam([{"params": m.adaptor.parameters(), "lr": 1e-4},
                            {"params": m.discriminator.parameters(), "lr": 2e-4}], weight_decay=1e-5)
    loss_fn = TruncatedL1Loss(0.5, 0.5)
    g = torch.Generator().manual_seed(seed)
    rounds = len(SYN) // N_TRAIN
    syn_order = torch.randperm(len(SYN), generator=g); sp = 0
    t = time.time(); log = []
    m.train()
    for ep in range(1, epochs + 1):
        perm = torch.randperm(N_TRAIN, generator=g)
        for i in range(0, N_TRAIN, batch):
            idx = perm[i:i+batch]
            o = (TRAIN[idx] - m.feature_mean) / m.feature_std
            pts = m.adaptor(o).flatten(0, -2)
            if paired:
                r = torch.randint(0, rounds, (copies, len(idx)), generator=g)
                j = (r * N_TRAIN + idx.unsqueeze(0)).flatten()
            else:
                k = len(idx) * copies; j = syn_order[torch.arange(sp, sp + k) % len(SYN)]; sp += k
            so = (SYN[j].float().permute(0, 2, 3, 1) - m.feature_mean) / m.feature_std
            syn = m.adaptor(so)[COV[j].float() > cov_min]
            ns, ans = m._discriminate_training(pts, syn)
            loss = loss_fn(ns, ans)
            opt.zero_grad(); loss.backward(); opt.step()
            ema.update_parameters(heads)
        if (eval_every and ep % eval_every == 0) or ep == epochs:
            r_ = evaluate(m)
            e = copy.deepcopy(m); e.adaptor.load_state_dict(ema.module["adaptor"].state_dict()); e.discriminator.load_state_dict(ema.module["discriminator"].state_dict())
            r2 = evaluate(e); log.append((ep, r_, r2))
            print(f"   >> {tag:24s} ep {ep:3d} | raw: sweep {r_[2]:.3f} compl {r_[3]:.3f} I {r_[4]:.3f} | EMA: sweep {r2[2]:.3f} compl {r2[3]:.3f} I {r2[4]:.3f}  ({time.time()-t:.0f}s)", flush=True)
    return m, log

def evaluate_maps(members):
    """AUPRO etc. of the mean of -D maps over `members` (list of SimpleNetModel)."""
    from anomalib.metrics.aupro import _AUPRO
    from torchmetrics.classification import BinaryAUROC
    res = {}
    for key, (te, tm, tl) in SETS.items():
        grids = []
        with torch.no_grad():
            for mm in members:
                mm.eval()
                ps = torch.cat([-mm.discriminate(mm.adaptor((te[i:i+32] - mm.feature_mean) / mm.feature_std)) for i in range(0, len(te), 32)])
                grids.append(ps)
                mm.train()
        g_ = torch.stack(grids).mean(0).unsqueeze(1)
        amap = F.interpolate(g_, size=tm.shape[-2:], mode="bilinear", align_corners=False)
        amap = torch.cat([members[0].blur(amap[i:i+32]) for i in range(0, len(amap), 32)])[:, 0]
        a = _AUPRO(fpr_limit=0.3); a.update(amap, tm.int())
        ia = BinaryAUROC(); ia.update(g_.flatten(1).amax(1), tl.int())
        res[key] = (float(a.compute()), float(ia.compute()))
    return res

def train5(epochs=32, seeds=(0, 1, 2, 3), copies=2, noise=0.5, cov_min=0.25, paired=True, eval_at=(8, 16, 32), batch=4, hidden=384, data_seed=0):
    members = [build(hidden=hidden, noise=noise, seed=s) for s in seeds]
    opts = [torch.optim.Adam([{"params": mm.adaptor.parameters(), "lr": 1e-4},
                              {"params": mm.discriminator.parameters(), "lr": 2e-4}], weight_decay=1e-5) for mm in members]
    loss_fn = TruncatedL1Loss(0.5, 0.5)
    g = torch.Generator().manual_seed(data_seed)
    rounds = len(SYN) // N_TRAIN
    t = time.time()
    for mm in members: mm.train()
    for ep in range(1, epochs + 1):
        perm = torch.randperm(N_TRAIN, generator=g)
        for i in range(0, N_TRAIN, batch):
            idx = perm[i:i+batch]
            r = torch.randint(0, rounds, (copies, len(idx)), generator=g)
            j = (r * N_TRAIN + idx.unsqueeze(0)).flatten()
            so_raw = SYN[j].float().permute(0, 2, 3, 1); keep = COV[j].float() > cov_min
            for mm, opt in zip(members, opts):
                o = (TRAIN[idx] - mm.feature_mean) / mm.feature_std
                pts = mm.adaptor(o).flatten(0, -2)
                syn = mm.adaptor((so_raw - mm.feature_mean) / mm.feature_std)[keep]
                ns, ans = mm._discriminate_training(pts, syn)
                loss = loss_fn(ns, ans)
                opt.zero_grad(); loss.backward(); opt.step()
        if ep in eval_at:
            singles = [evaluate_maps([mm]) for mm in members]
            ens = evaluate_maps(members)
            s_txt = " ".join(f"{r['compl'][0]:.3f}" for r in singles)
            print(f"   >> seeds {seeds} ep {ep:3d} | singles compl PRO {s_txt} (mean {sum(r['compl'][0] for r in singles)/len(singles):.3f}) | "
                  f"ensemble compl PRO {ens['compl'][0]:.3f} I {ens['compl'][1]:.3f} | sweep singles mean {sum(r['sweep'][0] for r in singles)/len(singles):.3f} ens {ens['sweep'][0]:.3f}  ({time.time()-t:.0f}s)", flush=True)
    return members
