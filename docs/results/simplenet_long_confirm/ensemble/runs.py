"""The calls made with harness_engine.py, in order (each was its own process; see log.md for the output)."""
import sys

step = sys.argv[1] if len(sys.argv) > 1 else "base"  # read first: the harness resets sys.argv
exec(open("docs/results/simplenet_long_confirm/ensemble/harness_engine.py").read())
if step == "base":  # reproduces the 32-epoch single model; kNN reference
    train(epochs=32, copies=2, tag="base cov0.25", eval_every=8, cov_min=0.25)
    knn_eval()
elif step == "pairing":  # synthetic copies of the batch's own images (as the model does) vs a random pool
    for s in (0, 1):
        train2(epochs=8, paired=True, seed=s, tag=f"8ep paired s{s}")
        train2(epochs=8, paired=False, seed=s, tag=f"8ep random-pool s{s}")
elif step.startswith("ema"):  # python runs.py ema0 / ema1, one thread each, side by side
    torch.set_num_threads(1)
    s = int(step[3:])
    train4(epochs=32, seed=s, paired=True, decay=0.995, tag=f"32ep paired ema.995 s{s}")
elif step.startswith("ensemble"):  # python runs.py ensemble0 / ensemble4, one thread each, side by side
    torch.set_num_threads(1)
    k0 = int(step[8:])
    train5(seeds=tuple(range(k0, k0 + 4)), data_seed=k0)
