#!/usr/bin/env bash
# GPU check for issue 6, about 5 minutes on one NVIDIA GPU, without network:
#   1. nvidia-smi and the Python environment (.venv, else the system's python3 with its CUDA torch);
#   2. benchmarks/speed.py --size 512x256 --batch 16 --width 64 --device cuda (bf16 + channels_last
#      are the defaults on CUDA): original pipeline vs unetseg vs compiled (vs smp if installed);
#   3. a ~2-minute `unetseg train` run on ~2000 synthetic scenes at 512x256 (width 64, batch 16,
#      precision auto), its training images/s (median of log.jsonl rows) and peak memory.
#
# Needs, beside a CUDA torch: numpy, Pillow, PyYAML, tqdm, matplotlib, safetensors, cityscapesscripts
# (pure Python: without network, `pip install --no-deps --target DIR` its wheel, DIR on PYTHONPATH).
#
# TARGET: >= 400 training images/s for the width-64 U-Net at 512x256 on one H200.
# Exit status: 0 target met, 3 target missed, anything else: the check itself failed.
#
#   bash benchmarks/gpu_check.sh [LOG]     (LOG default: $OUT/gpu_check.log, else /tmp/gpu_check.log)
#
# Environment: GPU_CHECK_WORK (scratch folder, default /tmp/unetseg-gpu-check),
# GPU_CHECK_SCENES (synthetic training scenes, default 2000), GPU_CHECK_SECONDS (seconds of training
# steps to size the run for, default 100). Expected ~4.5 minutes; the time limits bound it at ~5.5.
set -euo pipefail

TARGET_IMG_S=400
SCENES="${GPU_CHECK_SCENES:-2000}"
TRAIN_SECONDS="${GPU_CHECK_SECONDS:-100}" # of steps; with start-up and the final evaluation ~2 min
SPEED_LIMIT_S=150                          # speed.py is stopped after this; training still runs
BATCH=16

cd "$(dirname "${BASH_SOURCE[0]}")/.."
LOG="${1:-${OUT:-/tmp}/gpu_check.log}"
WORK="${GPU_CHECK_WORK:-/tmp/unetseg-gpu-check}"
mkdir -p "$(dirname "$LOG")" "$WORK"
exec > >(tee "$LOG") 2>&1
started=$SECONDS
stage() { printf '\n== %s (at %ds)\n' "$1" "$((SECONDS - started))"; }

stage "GPU"
nvidia-smi
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv

stage "Python environment"
# The project's venv if there is one; else the system's python3, which on a GPU box holds the CUDA
# torch (a venv made over it can miss that torch when python3 is itself a venv), with src/ on the path.
PY="$PWD/.venv/bin/python"
[[ -x "$PY" ]] || PY="$(command -v python3)"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
"$PY" - <<'EOF'
import importlib.util
import sys

if importlib.util.find_spec("torch") is None:
    sys.exit(f"cannot run: no torch for {sys.executable} (expected a system-wide CUDA build)")
import torch

print(f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"GPU available: {torch.cuda.is_available()}")
required = ["numpy", "PIL", "yaml", "tqdm", "matplotlib", "cityscapesscripts", "safetensors"]
optional = ["onnx", "onnxscript", "onnxruntime", "segmentation_models_pytorch"]
missing = [m for m in required if importlib.util.find_spec(m) is None]
absent = [m for m in optional if importlib.util.find_spec(m) is None]
print(f"optional, absent (parts skipped): {', '.join(absent) or 'none'}")
if missing or not torch.cuda.is_available():
    sys.exit(f"cannot run: missing {', '.join(missing) or 'nothing'}; "
             f"CUDA available: {torch.cuda.is_available()}")
EOF

stage "speed.py (side by side; limit ${SPEED_LIMIT_S}s)"
set +e
timeout "$SPEED_LIMIT_S" "$PY" benchmarks/speed.py --size 512x256 --batch "$BATCH" --width 64 \
    --device cuda --work "$WORK/speed" | tee "$WORK/speed.txt"
speed_rc=${PIPESTATUS[0]}
set -e
[[ $speed_rc -eq 0 ]] || echo "speed.py did not finish (exit $speed_rc; 124: time limit)"

stage "training data: $SCENES synthetic scenes at 512x256, cached"
data=(
    "data.root=$WORK/synthetic_512x256_$SCENES"
    "data.cache_dir=$WORK/cache"
    "data.size=[512,256]"
    "data.synthetic_train=$SCENES"
    "data.synthetic_val=40"
)
"$PY" -m unetseg prepare "${data[@]}"

# Steps for ~TRAIN_SECONDS at the end-to-end rate speed.py measured (else 2000); timeout stops
# the run anyway (it then saves a checkpoint and exits; log.jsonl keeps its rows).
steps=$("$PY" - "$WORK/speed.txt" "$TRAIN_SECONDS" "$BATCH" <<'EOF'
import json
import sys

try:
    line = open(sys.argv[1]).read().strip().splitlines()[-1]
    rate = json.loads(line)["variants"]["unetseg"]["end_to_end_img_s"]
    print(max(200, min(20000, int(rate * float(sys.argv[2]) / int(sys.argv[3])))))
except (OSError, IndexError, KeyError, ValueError):
    print(2000)
EOF
)

stage "training: $steps steps, width 64, batch $BATCH, precision auto (limit $((TRAIN_SECONDS + 50))s)"
run="$WORK/run"
rm -rf "$run"
set +e
timeout "$((TRAIN_SECONDS + 50))" "$PY" -m unetseg train --out "$run" "${data[@]}" \
    model.width=64 "train.batch_size=$BATCH" train.accum_steps=1 train.precision=auto \
    train.device=cuda "train.training_iterations=$steps" train.log_interval=20 \
    "train.eval_interval=$steps" "train.save_model_interval=$steps" \
    "train.snapshot_interval=$steps" train.warmup_steps=50
train_rc=$?
set -e
[[ $train_rc -eq 0 || $train_rc -eq 124 ]] || echo "training exited with $train_rc"

stage "result"
set +e
"$PY" - "$run/log.jsonl" "$TARGET_IMG_S" <<'EOF'
import json
import statistics
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
target = float(sys.argv[2])
steady = [r for r in rows if r["step"] > 100] or rows  # the first steps warm up (cuDNN, caches)
rates = sorted(r["images_per_s"] for r in steady)
median = statistics.median(rates)
low, high = rates[len(rates) // 10], rates[(len(rates) * 9) // 10]
peak = max(r["memory_mb"] for r in rows)
met = median >= target
print(f"training: {rows[-1]['step']} steps, {len(steady)} rows after warm-up; "
      f"images/s median {median:.1f} (p10 {low:.1f}, p90 {high:.1f}); "
      f"peak memory {peak:.0f} MiB; final loss {rows[-1]['loss']:.3f}")
print(f"TARGET >= {target:.0f} img/s: {'met' if met else 'NOT met'}")
sys.exit(0 if met else 3)
EOF
result=$?
echo "log: $LOG ($((SECONDS - started))s)"
exit "$result"
