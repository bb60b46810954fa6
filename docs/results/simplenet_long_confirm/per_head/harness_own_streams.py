"""train6: 4-head ensemble with shared or per-head synthetic draws / batch order (cached Engine-path features)."""
import sys
args = sys.argv[1:]
exec(open("docs/results/simplenet_long_confirm/ensemble/harness_engine.py").read())
torch.set_num_threads(1)

def train6(epochs=8, seeds=(0, 1, 2, 3), copies=2, noise=0.5, cov_min=0.25, own_synth=False, own_order=False, data_seed=0, batch=4, hidden=384, eval_at=(8,)):
    K = len(seeds)
    members = [build(hidden=hidden, noise=noise, seed=s) for s in seeds]
    opts = [torch.optim.Adam([{"params": mm.adaptor.parameters(), "lr": 1e-4},
                              {"params": mm.discriminator.parameters(), "lr": 2e-4}], weight_decay=1e-5) for mm in members]
    loss_fn = TruncatedL1Loss(0.5, 0.5)
    gens = [torch.Generator().manual_seed(data_seed * 100 + (k if own_order else 0)) for k in range(K)]
    sg = torch.Generator().manual_seed(data_seed * 100 + 50)
    rounds = len(SYN) // N_TRAIN
    t = time.time()
    for mm in members: mm.train()
    for ep in range(1, epochs + 1):
        perms = [torch.randperm(N_TRAIN, generator=g_) for g_ in gens]
        for i in range(0, N_TRAIN, batch):
            shared_r = None
            for k, (mm, opt) in enumerate(zip(members, opts)):
                idx = perms[k][i:i+batch]
                if own_synth or own_order or shared_r is None:
                    r = torch.randint(0, rounds, (copies, len(idx)), generator=sg)
                    shared_r = r
                r = shared_r
                j = (r * N_TRAIN + idx.unsqueeze(0)).flatten()
                so_raw = SYN[j].float().permute(0, 2, 3, 1); keep = COV[j].float() > cov_min
                o = (TRAIN[idx] - mm.feature_mean) / mm.feature_std
                pts = mm.adaptor(o).flatten(0, -2)
                syn = mm.adaptor((so_raw - mm.feature_mean) / mm.feature_std)[keep]
                ns, ans = mm._discriminate_training(pts, syn)
                loss = loss_fn(ns, ans)
                opt.zero_grad(); loss.backward(); opt.step()
        if ep in eval_at:
            singles = [evaluate_maps([mm]) for mm in members]
            ens = evaluate_maps(members)
            st = ' '.join(f"{r['compl'][0]:.3f}" for r in singles)
            print(f"RESULT own_synth={own_synth} own_order={own_order} data_seed={data_seed} K={K} ep {ep} | singles compl {st} | ens compl {ens['compl'][0]:.3f} I {ens['compl'][1]:.3f} | sweep singles mean {sum(r['sweep'][0] for r in singles)/K:.3f} ens {ens['sweep'][0]:.3f} ({time.time()-t:.0f}s)", flush=True)
    return members

for a in args:
    mode, ds = a.split(":")
    train6(own_synth=mode in ("synth", "all"), own_order=mode == "all", data_seed=int(ds))
