"""Backbone at the default precision, everything after it at f32, as two chained OpenVINO graphs (an experiment).
Held-out images (the 15 % test draw mt_cpu leaves out): I-AUROC, P-AUROC, max |score change| vs f32."""
import sys, os, copy, tempfile, time
from pathlib import Path
pass  # run from the repository root, after the mt_cpu cells (their saved weights)
import numpy as np, torch, openvino as ov
from sklearn.metrics import roc_auc_score
from torchvision.transforms.v2.functional import resize
from torchvision.transforms.v2 import InterpolationMode
from anomalib_hyperbolic import benchmark as B
from anomalib_hyperbolic.openvino_precision import in_scopes
cell = sys.argv[1]; backbone = sys.argv[2].split(',')
config = B.load_config('configs/benchmark/mt_cpu.yaml')
spec = next(s for s in config['models'] if s['name'] == cell)
held = copy.deepcopy(config); held['subset'] = {**config['subset'], 'complement': []}
dm, sizes, model = B._prepare(held, spec)
B.load_trained_state(model, torch.load(B._weights_file(Path(config['output']), cell), map_location='cpu', weights_only=True))
model.eval()
xml = model.to_openvino(export_root=tempfile.mkdtemp(), input_size=(256, 256))
imgs, labels, masks = [], [], []
for batch in dm.test_dataloader():
    for i in range(batch.image.shape[0]):
        imgs.append(resize(batch.image[i:i+1], [256, 256], antialias=True).numpy()); labels.append(int(batch.gt_label[i]))
        masks.append(resize(batch.gt_mask[i:i+1].unsqueeze(1).float(), [256, 256], interpolation=InterpolationMode.NEAREST).numpy().reshape(-1)[::16] > 0.5)
core = ov.Core()
def front_back():
    a = core.read_model(xml); b = core.read_model(xml)
    def boundary(m):
        ports = []
        for node in m.get_ordered_ops():
            if not in_scopes(node.get_friendly_name(), backbone): continue
            for out in node.outputs():
                if any(not in_scopes(t.get_node().get_friendly_name(), backbone) and t.get_node().get_type_name() != 'Result' for t in out.get_target_inputs()):
                    ports.append(out)
        return ports
    pa = boundary(a); front = ov.Model([ov.opset13.result(p) for p in pa], list(a.get_parameters()))
    params = []
    for p in boundary(b):
        param = ov.opset13.parameter(p.get_partial_shape(), p.get_element_type())
        for t in list(p.get_target_inputs()):
            if not in_scopes(t.get_node().get_friendly_name(), backbone): t.replace_source_output(param.output(0))
        params.append(param)
    # the back graph may still need the image (e.g. its size) through the original parameter
    used = [q for q in b.get_parameters() if len(q.output(0).get_target_inputs()) and any(not in_scopes(t.get_node().get_friendly_name(), backbone + ['pre_processor']) for t in q.output(0).get_target_inputs())]
    back = ov.Model(list(b.outputs), params + used)
    back.validate_nodes_and_infer_types()
    print('boundary tensors', len(pa), 'back also takes the image:', bool(used))
    return front, back, bool(used)
def evaluate(run):
    s, m = [], []
    for x in imgs:
        out = run(x); s.append(float(out['pred_score'].reshape(-1)[0])); m.append(out['anomaly_map'].reshape(-1)[::16])
    t = time.perf_counter(); [run(imgs[0]) for _ in range(20)]; ms = (time.perf_counter() - t) / 20 * 1000
    return np.array(s), np.concatenate(m), ms
def single(hint):
    req = core.compile_model(core.read_model(xml), 'CPU', {} if hint is None else {'INFERENCE_PRECISION_HINT': hint}).create_infer_request()
    return lambda x: {n: np.array(v) for p, v in req.infer([x]).items() for n in p.get_names()}
front, back, needs_image = front_back()
rf = core.compile_model(front, 'CPU').create_infer_request()
rb = core.compile_model(back, 'CPU', {'INFERENCE_PRECISION_HINT': 'f32'}).create_infer_request()
def chained(x):
    feats = [np.array(v) for v in rf.infer([x]).to_tuple()]
    return {n: np.array(v) for p, v in rb.infer(feats + ([x] if needs_image else [])).items() for n in p.get_names()}
y = np.array(labels); ym = np.concatenate(masks); ref = evaluate(single('f32'))
for name, run in (('f32', None), ('default', single(None)), (f'default backbone ({",".join(backbone)}) + f32 rest', chained)):
    r = ref if run is None else evaluate(run)
    print(f"{name:70s} I-AUROC {roc_auc_score(y, r[0]):.4f} P-AUROC {roc_auc_score(ym, r[1]):.4f} max|dscore| {np.abs(r[0]-ref[0]).max():.4f} {r[2]:.1f} ms")
