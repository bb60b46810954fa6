exec(open("docs/results/simplenet_long_confirm/selection/harness.py").read())
# exp1
train(epochs=32, copies=2, tag="base std0.5 syn x2 h384", eval_every=4)
train(epochs=32, copies=2, hidden=1024, tag="h1024", eval_every=4)
train(epochs=32, copies=0, tag="no syn", eval_every=8)
# exp2
train(epochs=32, copies=2, tag="h384 pbn", eval_every=4, pbn=True)
train(epochs=32, copies=2, tag="h384 cosine", eval_every=8, cosine=True)
train(epochs=32, copies=2, tag="h384 pbn s1", eval_every=4, pbn=True, seed=1)
# exp3
train(epochs=32, copies=2, tag="cov 0.25", eval_every=8, cov_min=0.25)
train(epochs=32, copies=2, tag="s1 (base)", eval_every=8, seed=1)
# exp4
train(epochs=32, copies=2, tag="cov 0.1", eval_every=8, cov_min=0.1)
train(epochs=32, copies=2, tag="cov 0.25 s1", eval_every=8, cov_min=0.25, seed=1)
# stopped before it ran (CPU freed for the benchmark):
# train(epochs=32, copies=2, tag="cov 0.25 s2", eval_every=8, cov_min=0.25, seed=2)
# train(epochs=32, copies=2, tag="s2 (base)", eval_every=8, seed=2)
