#!/usr/bin/env bash
# GPU check, about 7 minutes on one GPU: the tests marked `gpu`; where a training step's time
# goes at the `seed` baseline's shape (eager and compiled, bf16 and fp32: tokens/s, MFU against
# the data-sheet peak, the GPU's busy share of the wall time, the costliest kernels);
# `train()` as users run it with precision=auto and compile=auto (what the probe chose and why,
# compile seconds); and the `seed`-preset grid packed on one GPU (wall time, per-trial tokens/s
# and MFU). Run from the repository root with the project installed:
#     bash benchmarks/gpu_check.sh [OUT_DIR]
# Prints key=value lines; copy the figures into benchmarks/RESULTS.md (section 6).
set -euo pipefail
out="${1:-${OUT:-/tmp/gpu_check}}"
mkdir -p "$out"
export TUNE_ABLATIONS_CACHE="${TUNE_ABLATIONS_CACHE:-$out/cache}"
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-$out/inductor}"
export PYTHONUNBUFFERED=1
t0=$(date +%s)
python - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device"
print(f"gpu={torch.cuda.get_device_name()!r} bf16={torch.cuda.is_bf16_supported()} "
      f"torch={torch.__version__} cuda={torch.version.cuda}")
PY
# 1. The gpu-marked tests (fp16 grad scaler, a tiny run on the GPU, every optimizer).
python -m pytest -q -m gpu tests/test_gpu.py tests/test_optimizers.py 2>&1 | tee "$out/gpu_tests.log" | tail -3
echo "section=tests elapsed_s=$(( $(date +%s) - t0 ))"
# 2. Where a step's time goes at the seed baseline's shape (d384, 12 layers, seq 512, batch 8):
#    `profile ...` lines (step_ms, tokens_per_s, mfu vs the data sheet for bf16, gpu_busy,
#    kernels_per_step, share of kernel time per group) and the 6 costliest kernels of each.
timeout 200 python benchmarks/profile_step.py --device cuda --sizes seed --precisions bf16 fp32 \
  --compile both --steps 10 --rounds 2 --threads 4 --top 6 2>&1 | grep -vE "^USDT|Warning" \
  | tee "$out/profile.log" || echo "section=profile status=timeout_or_error"
echo "section=profile elapsed_s=$(( $(date +%s) - t0 ))"
# 3. train() as users would run it at the seed baseline: precision=auto and compile=auto are
#    decided by the probe (its reasons and the compile seconds are printed), 200 steps.
timeout 200 python -m tune_ablations.train --preset seed --set max_steps=200 eval_every=200 \
  warmup_steps=10 text_samples=0 precision=auto compile=auto --out "$out/train_auto.json" \
  | grep -E "event=end" | sed "s/^/run=train_auto /" || echo "section=train_auto status=timeout"
python - "$out/train_auto.json" <<'PY' || true
import json, sys
r = json.load(open(sys.argv[1]))
print(f"run=train_auto precision={r['precision']} compiled={r.get('compiled')} "
      f"compile_time_s={r.get('compile_time_s', 0):.1f} tokens_per_s={r['tokens_per_s']:.0f} "
      f"mfu={r['mfu']:.4f} peak={r['peak_source']}")
print(f"run=train_auto precision_reason={r['precision_reason']!r}")
print(f"run=train_auto compile_reason={r['compile_reason']!r}")
PY
echo "section=train_auto elapsed_s=$(( $(date +%s) - t0 ))"
# 4. The six seed ablations packed on one GPU, 150 steps each (a fraction of the published 2000
#    so the check fits its time budget; tokens/s and MFU do not depend on the step count).
start=$(date +%s)
timeout 200 python -m tune_ablations.grid --preset seed --set max_steps=150 eval_every=75 \
  warmup_steps=10 text_samples=0 --seeds 1 --storage "$out/results" --name seed-grid \
  | grep -vE "^\||^\+" | tail -12 || echo "section=grid status=timeout_or_error"
echo "grid_wall_s=$(( $(date +%s) - start ))"
python - "$out/results/seed-grid" <<'PY' || true
import json, sys
from pathlib import Path
from tune_ablations.results.frames import load_results
df = load_results(sys.argv[1])
rt = json.loads((Path(sys.argv[1]) / "sweep.json").read_text()).get("runtime", {})
print(f"grid runtime precision={rt.get('precision')} compile={rt.get('compiled')} "
      f"reason={rt.get('precision_reason')!r}")
for _, r in df.iterrows():
    print(f"trial ablation={r['ablation']} status={r['status']} precision={r['precision']} "
          f"tokens_per_s={r['tokens_per_s']:.0f} mfu={r['mfu']:.4f} val_loss={r['val_loss']:.4f}")
PY
echo "section=done elapsed_s=$(( $(date +%s) - t0 ))"
