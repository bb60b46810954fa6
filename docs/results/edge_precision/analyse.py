"""Per-scope / per-layer bf16 analysis of a trained mt_cpu cell (held-out images: the 15 % test draw mt_cpu leaves out)."""
import sys, os, json, copy
pass  # run from the repository root, after the mt_cpu cells (their saved weights)
import torch
from anomalib_hyperbolic import benchmark as B
from anomalib_hyperbolic.openvino_precision import precision_report, format_report
cell = sys.argv[1]; scopes = [g.split(',') for g in sys.argv[2:]] or None
config = B.load_config('configs/benchmark/mt_cpu.yaml')
spec = next(s for s in config['models'] if s['name'] == cell)
held_out = copy.deepcopy(config); held_out['subset'] = {**config['subset'], 'complement': []}
datamodule, sizes, model = B._prepare(held_out, spec)
B.load_trained_state(model, torch.load(B._weights_file(__import__('pathlib').Path(config['output']), cell), map_location='cpu', weights_only=True))
model.eval()
test = datamodule.test_data.samples
normal = test[test.label_index == 0].image_path.tolist()[:8]; defect = test[test.label_index == 1].image_path.tolist()[:16]
print(sizes, len(normal), len(defect))
xml = model.to_openvino(export_root=f'/tmp/ovx/cells/{B._cell_file(__import__("pathlib").Path("x"), cell).stem}', input_size=(256, 256))
from anomalib_hyperbolic.openvino_precision import load_images
print(format_report(precision_report(xml, load_images(normal + defect, 256), scopes, per_layer=12, timing_runs=20)))
