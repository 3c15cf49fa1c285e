#!/usr/bin/env bash
# GPU check, under 8 minutes on one GPU: the tests marked `gpu`, the fp16/bf16 paths, and the
# `seed`-preset grid packed on one GPU (wall time, per-trial tokens/s and MFU against the data
# sheet). Run from the repository root with the project installed:
#     bash benchmarks/gpu_check.sh [OUT_DIR]
# Prints key=value lines; copy the figures into benchmarks/RESULTS.md.
set -euo pipefail
out="${1:-${OUT:-/tmp/gpu_check}}"
mkdir -p "$out"
export TUNE_ABLATIONS_CACHE="${TUNE_ABLATIONS_CACHE:-$out/cache}"
export PYTHONUNBUFFERED=1
python - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device"
print(f"gpu={torch.cuda.get_device_name()} bf16={torch.cuda.is_bf16_supported()} "
      f"torch={torch.__version__} cuda={torch.version.cuda}")
PY
# 1. The gpu-marked tests (fp16 grad scaler, a tiny run on the GPU, every optimizer).
python -m pytest -q -m gpu tests/test_gpu.py tests/test_optimizers.py 2>&1 | tee "$out/gpu_tests.log"
# 2. fp16 and bf16 paths at the seed baseline's shape, 60 steps each.
for p in bf16 fp16 fp32; do
  timeout 240 python -m tune_ablations.train --preset seed --set precision=$p max_steps=60 \
    eval_every=60 warmup_steps=5 text_samples=0 --out "$out/train_$p.json" \
    | grep -E "event=(start|end)" | sed "s/^/precision=$p /"
done
# 3. The six seed ablations packed on one GPU, 300 steps each (a fraction of the published 2000
#    so the check fits its time budget; tokens/s and MFU do not depend on the step count).
start=$(date +%s)
timeout 360 python -m tune_ablations.grid --preset seed --set max_steps=300 eval_every=100 \
  warmup_steps=20 text_samples=0 --storage "$out/results" --name seed-grid \
  | grep -vE "^\||^\+" | tail -12
echo "grid_wall_s=$(( $(date +%s) - start ))"
python - "$out/results/seed-grid" <<'PY'
import sys
from tune_ablations.results.frames import load_results
df = load_results(sys.argv[1])
for _, r in df.iterrows():
    print(f"trial ablation={r['ablation']} status={r['status']} tokens_per_s={r['tokens_per_s']:.0f} "
          f"mfu={r['mfu']:.3f} val_loss={r['val_loss']:.4f}")
PY
