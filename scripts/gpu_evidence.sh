#!/usr/bin/env bash
# The GPU half of the Magnetic Tile evidence for HypAD (issue 3) and SimpleNet (issue 4).
#
# Prepared on the CPU machine (all under ignored folders):
#   python scripts/resize_image_tree.py ../shared/datasets/magnetic_tile .gpu/magnetic_tile_256 --size 256
#   .cache/weights/tf_efficientnet_lite0.safetensors   (anomalib-hyperbolic provision-backbone)
#   .cache/penalty/<folder>/*.png                       (EfficientAD's out-of-distribution penalty images)
#   .cache/teacher_pdn_s_lite0_elpv.pth                 (CPU-distilled teacher: fallback only)
#   .whl/*.whl                                          (anomalib and the packages the GPU image lacks:
#       pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d .whl
#       anomalib==2.7.0 docstring-parser jsonargparse==4.46.0 kornia==0.9.0 kornia_rs omegaconf rich-argparse
#       platformdirs; pip wheel --no-deps -w .whl FrEIA==0.2; installed there with
#       pip install --no-index --no-deps --target /tmp/site .whl/*.whl and PYTHONPATH=/tmp/site)
# On the GPU machine, from the repository root:  OUT=<folder for results> bash scripts/gpu_evidence.sh
# Then on the CPU machine, with the cells and weights unpacked into results/benchmark/magnetic_tile_gpu:
#   anomalib-hyperbolic benchmark --config configs/benchmark/archive/magnetic_tile_gpu.yaml --time-only
#
# Steps: (1) PatchCore and the SimpleNet cells start at once; (2) meanwhile a PDN-S teacher is distilled
# from EfficientNet-Lite0 on the training normals of the split (never the test images); (3) the PDN cells
# (EfficientAd and the HypAD variants) train in parallel with that teacher; (4) results are packed into $OUT.
set -uo pipefail
CONFIG=${CONFIG:-configs/benchmark/archive/magnetic_tile_gpu.yaml}
DEVICE=${DEVICE:-cuda}
DISTILL_STEPS=${DISTILL_STEPS:-3000}
DEADLINE_S=${DEADLINE_S:-500}          # grids are stopped and everything is packed after this many seconds, finished or not
OUT=${OUT:?set OUT to the folder for the results}
PY=${PYTHON:-python3}
started=$(date +%s)
export PYTHONUNBUFFERED=1 HF_HOME=$PWD/.cache/hf HF_HUB_OFFLINE=1 PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
output=$($PY -c "import yaml,sys; print(yaml.safe_load(open('$CONFIG'))['output'])")
teacher=$($PY -c "import yaml,sys; print(yaml.safe_load(open('$CONFIG'))['pdn_teacher'])")
mkdir -p "$output" "$OUT"

# timm's offline cache for anomalib's PatchCore, filled from the local Lite0 weights file
$PY -m anomalib_hyperbolic.cli provision-backbone --output .cache/weights/tf_efficientnet_lite0.safetensors \
  --hf-home "$HF_HOME" --no-pip || exit 1

cells() {  # cell names whose model is (yes) or is not (no) a PDN model
  $PY -c "import yaml; pdn = ('EfficientAd', 'HypAD'); names = [m['name'] for m in yaml.safe_load(open('$CONFIG'))['models'] if (m['class_path'].split('.')[-1] in pdn) == ('$1' == 'yes')]; names and print('\n'.join(names))"
}
mapfile -t pdn_cells < <(cells yes)
mapfile -t other_cells < <(cells no)
echo "cells without a teacher: ${other_cells[*]}"
echo "PDN cells: ${pdn_cells[*]}"
left() { echo $((DEADLINE_S - ($(date +%s) - started))); }

other=""
if [ "${#other_cells[@]}" -gt 0 ]; then
  timeout "$(left)" $PY -m anomalib_hyperbolic.benchmark --config "$CONFIG" --parallel "${#other_cells[@]}" \
    --only "${other_cells[@]}" >"$output/grid_other.log" 2>&1 &
  other=$!
fi

# teacher images: the split's training normals (copied; the test split is never seen)
$PY - "$CONFIG" <<'PY'
import shutil, sys, yaml
from pathlib import Path
from lightning.pytorch.trainer.states import TrainerFn
from anomalib_hyperbolic.benchmark import import_class
cfg = yaml.safe_load(open(sys.argv[1]))
dm = import_class(cfg["data"]["class_path"])(**cfg["data"]["init_args"])
dm.setup(TrainerFn.FITTING)
folder = Path(".gpu/teacher_images"); folder.mkdir(parents=True, exist_ok=True)
paths = list(dm.train_data.samples.image_path) + list(dm.val_data.samples.image_path)
for path in paths:
    shutil.copyfile(path, folder / Path(path).name)
print(f"teacher images: {len(paths)} training normals")
PY
t0=$(date +%s)
timeout "${DISTILL_TIMEOUT_S:-110}" $PY -m anomalib_hyperbolic.models.hypad.distill --image-dir .gpu/teacher_images --output "$teacher" \
  --backbone .cache/weights/tf_efficientnet_lite0.safetensors --layers blocks.2 blocks.4 --image-size 256 \
  --steps "$DISTILL_STEPS" --batch-size 8 --num-workers 4 --device "$DEVICE" --seed 0 --no-progress \
  >"$output/distill.log" 2>&1
echo "distillation exit $? after $(( $(date +%s) - t0 )) s"
if [ ! -f "$teacher" ] && [ -f "$teacher.ckpt" ]; then   # stopped early: use its last checkpoint
  $PY -c "import torch; s=torch.load('$teacher.ckpt', weights_only=True); torch.save(s['teacher'], '$teacher'); print('teacher from checkpoint at step', s['step'])"
fi
if [ ! -f "$teacher" ]; then echo "no GPU teacher: using the CPU one"; cp .cache/teacher_pdn_s_lite0_elpv.pth "$teacher"; fi
tail -n 3 "$output/distill.log"

timeout "$(left)" $PY -m anomalib_hyperbolic.benchmark --config "$CONFIG" --parallel "${#pdn_cells[@]}" \
  --only "${pdn_cells[@]}" >"$output/grid_pdn.log" 2>&1
echo "PDN grid exit $? at $(( $(date +%s) - started )) s"
if [ -n "$other" ]; then
  wait "$other"
  echo "other grid exit $? at $(( $(date +%s) - started )) s"
fi
nvidia-smi --query-gpu=name,memory.used --format=csv 2>/dev/null

# pack: cells, logs, small weights in one archive; large weight files split into 15 MiB parts
tar czf "$OUT/cells.tgz" -C "$output" cells $(cd "$output" && ls grid_*.log distill.log 2>/dev/null)
small=()
for file in "$output"/weights/*.pt; do   # cell file names are already safe ([A-Za-z0-9_.-])
  [ -f "$file" ] || continue
  name=$(basename "$file")
  if [ "$(stat -c %s "$file")" -gt 15000000 ]; then
    tar cf - -C "$output/weights" "$name" | split -b 15M - "$OUT/weights_${name%.pt}.tar.part-"
  else
    small+=("$name")
  fi
done
if [ "${#small[@]}" -gt 0 ]; then tar czf "$OUT/weights_small.tgz" -C "$output/weights" "${small[@]}"; fi
ls -la "$OUT"
echo "total $(( $(date +%s) - started )) s"
