"""OpenVINO batch-1 latency at f32 and at the default precision for every mt_cpu model (256 px, the queue paused).

Untrained models (only shapes matter; PatchCore's memory bank is noise of its trained size, 177 x 1024 x
ratio entries), except where a saved seed-0 state exists (DRA needs its reference features): then that.
    HF_HOME=.cache/hf HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 python docs/results/edge_precision/speed.py [name parts]
"""
import os, sys, tempfile, json
pass  # run from the repository root, after the mt_cpu cells (their saved weights)
import numpy as np, torch
from pathlib import Path
from anomalib_hyperbolic import benchmark as B
config = B.load_config('configs/benchmark/mt_cpu.yaml')
banks = {'Patchcore (coreset 10 %, default) s0': 18124, 'Patchcore (coreset 1 %) s0': 1812}
rows = []
for spec in config['models']:
    if not spec['name'].endswith(' s0') or (sys.argv[1:] and not any(a in spec['name'] for a in sys.argv[1:])):
        continue
    try:
        _, _, model = B._prepare(config, spec)
        if 'Padim' in spec['name']:
            raise RuntimeError('skip')
    except Exception as e:
        print('skip', spec['name'], e); continue
    weights = B._weights_file(Path(config['output']), spec['name'])
    if weights.is_file():
        B.load_trained_state(model, torch.load(weights, map_location='cpu', weights_only=True))
    if spec['name'] in banks:
        model.model._buffers['memory_bank'] = torch.randn(banks[spec['name']], 152, generator=torch.Generator().manual_seed(0))
    model.eval()
    xml = model.to_openvino(export_root=tempfile.mkdtemp(), input_size=(256, 256))
    row = {'name': spec['group']}
    for precision in ('f32', 'default'):
        request, graph_batch, _ = B._openvino_request(xml, 1, 256, precision)
        array = np.random.default_rng(0).random((graph_batch, 3, 256, 256), dtype=np.float32)
        row[f'{precision}_ms'] = B._median_seconds(lambda: request.infer([array]), 40, 5) * 1000 / graph_batch
    row['speedup'] = row['f32_ms'] / row['default_ms']
    print(json.dumps(row), flush=True); rows.append(row)
