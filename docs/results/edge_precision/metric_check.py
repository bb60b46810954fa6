"""Held-out (15 % draw mt_cpu leaves out) image/pixel AUROC of an mt_cpu cell's export: f32, default, default with scopes in f32."""
import sys, os, copy, tempfile, shutil, time
from pathlib import Path
pass  # run from the repository root
import numpy as np, torch, openvino as ov
from sklearn.metrics import roc_auc_score
from torchvision.transforms.v2.functional import resize
from torchvision.transforms.v2 import InterpolationMode
from anomalib_hyperbolic import benchmark as B
from anomalib_hyperbolic.openvino_precision import keep_scopes_in_f32
cell = sys.argv[1]; groups = [g.split(',') for g in sys.argv[2:]]
config = B.load_config('configs/benchmark/mt_cpu.yaml')
spec = next(s for s in config['models'] if s['name'] == cell)
held = copy.deepcopy(config); held['subset'] = {**config['subset'], 'complement': []}
dm, sizes, model = B._prepare(held, spec)
B.load_trained_state(model, torch.load(B._weights_file(Path(config['output']), cell), map_location='cpu', weights_only=True))
model.eval(); model.openvino_f32_scopes = ()
xml = model.to_openvino(export_root=tempfile.mkdtemp(), input_size=(256, 256))
imgs, labels, masks = [], [], []
for batch in dm.test_dataloader():
    for i in range(batch.image.shape[0]):
        imgs.append(resize(batch.image[i:i+1], [256, 256], antialias=True).numpy()); labels.append(int(batch.gt_label[i]))
        masks.append(resize(batch.gt_mask[i:i+1].unsqueeze(1).float(), [256, 256], interpolation=InterpolationMode.NEAREST).numpy().reshape(-1)[::16] > 0.5)
print(sizes, len(imgs), sum(labels))
core = ov.Core()
def evaluate(path, hint):
    cm = core.compile_model(core.read_model(path), 'CPU', {} if hint is None else {'INFERENCE_PRECISION_HINT': hint})
    req = cm.create_infer_request(); s, m = [], []
    for x in imgs:
        out = {n: np.array(v) for p, v in req.infer([x]).items() for n in p.get_names()}
        s.append(float(out['pred_score'].reshape(-1)[0])); m.append(out['anomaly_map'].reshape(-1)[::16])
    t = time.perf_counter(); [req.infer([imgs[0]]) for _ in range(20)]; ms = (time.perf_counter() - t) / 20 * 1000
    return np.array(s), np.concatenate(m), ms
ref = evaluate(xml, 'f32'); y = np.array(labels); ym = np.concatenate(masks)
def show(name, r):
    print(f"{name:60s} I-AUROC {roc_auc_score(y, r[0]):.4f} P-AUROC {roc_auc_score(ym, r[1]):.4f} max|dscore| {np.abs(r[0]-ref[0]).max():.4f} mean|dmap| {np.abs(r[1]-ref[1]).mean():.5f} {r[2]:.1f} ms")
show('f32', ref); show('default', evaluate(xml, None))
for g in groups:
    d = tempfile.mkdtemp(); shutil.copy(xml, d + '/m.xml'); shutil.copy(xml.with_suffix('.bin'), d + '/m.bin')
    keep_scopes_in_f32(d + '/m.xml', g); show('default, f32: ' + ','.join(g), evaluate(d + '/m.xml', None))
