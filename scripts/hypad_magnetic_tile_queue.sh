#!/usr/bin/env bash
# Runs the HypAD Magnetic Tile study (issue #3) as two parallel queues on CPU.
# Usage: scripts/hypad_magnetic_tile_queue.sh WORK_DIR STEPS
# Needs: WORK/data (split), WORK/data_small (test subset), WORK/teacher_lite0_s.pth, WORK/teacher_stats.pt,
#        WORK/penalty (see scripts/hypad_magnetic_tile.py).
set -u
WORK=${1:-/tmp/hypad_ev}
STEPS=${2:-40}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
COMMON=(--data "$WORK/data_small" --teacher "$WORK/teacher_lite0_s.pth" --stats "$WORK/teacher_stats.pt"
        --penalty-dir "$WORK/penalty" --work "$WORK" --results "$WORK/results.jsonl" --steps "$STEPS")
run() { python scripts/hypad_magnetic_tile.py run "${COMMON[@]}" "$@" >> "$WORK/queue.log" 2>&1; }
(
  run --model EfficientAd
  run --c 0.01
  run --c 0.5
  run --c 0.1
) &
(
  run --c 0.0
  run --c 0.05
  run --c 0.0 --clip-radius inf --projection identity --augmentation-prob 1.0
  run --c 0.01 --clip-radius inf
) &
wait
