#!/usr/bin/env bash
# Issue 8: CamVid recipe variants and seeds side by side, all at once on one device, each trained
# for a fixed number of steps on the cross-sequence split (train 0006R0 + 0016E5, validate on the 62
# 0001TP frames at the training size). One 60-minute CPU run per variant cannot tell a variant from
# its seed; on one H200 six runs of 5000 steps at once take 6 to 7 minutes.
#
#   bash benchmarks/sweep_camvid.sh STEPS SECONDS NAME[="OVERRIDES"] [NAME[="OVERRIDES"] ...]
#   e.g. bash benchmarks/sweep_camvid.sh 5000 420 s0 s1="train.seed=1" s2="train.seed=2" \
#            N_s0="model.full_resolution=true"
#
# Each run trains configs/camvid.yaml plus its space-separated overrides (schedule over STEPS,
# periodic evaluation every 250 steps), stopped after SECONDS wall-clock seconds. Prints each run's
# last and best periodic 0001TP mIoU and its per-class IoU, from the run folders' eval.jsonl.
# Environment: CAMVID (data root, default ../shared/data/camvid), SWEEP_DIR (run folders, default
# /tmp/sweep), DEVICE (default cuda), WORKERS (loader workers per run, default 2), SWEEP_OVERRIDES
# (overrides for every run and the cache, space-separated).
set -uo pipefail
[[ $# -ge 3 ]] || { sed -n '2,17p' "$0"; exit 2; }
steps=$1 limit=$2
shift 2
read -ra every <<<"${SWEEP_OVERRIDES:-}"
runs="$(realpath -m "${SWEEP_DIR:-/tmp/sweep}")"
camvid="$(realpath -m "${CAMVID:-$(dirname "${BASH_SOURCE[0]}")/../../shared/data/camvid}")"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="$PWD/.venv/bin/python"
[[ -x "$PY" ]] || PY="$(command -v python3)"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$runs"
common=(
    --config configs/camvid.yaml
    "data.root=$camvid" "data.num_workers=${WORKERS:-2}"
    data.val_split=train "data.val_filter=['0001TP*']" "data.train_filter=['0006R0*','0016E5*']"
    "${every[@]}"
)
"$PY" -m unetseg prepare "${common[@]}" || exit 1 # the cache once, not by each run
names=()
for variant in "$@"; do
    [[ $variant == *=* ]] || variant+="=" # a bare NAME: the recipe as it is
    name="${variant%%=*}"
    names+=("$name")
    read -ra overrides <<<"${variant#*=}"
    rm -rf "${runs:?}/$name" "$runs/$name.log" # this name's earlier run only
    timeout "$limit" "$PY" -m unetseg train --out "$runs/$name" "${common[@]}" \
        "train.training_iterations=$steps" train.eval_interval=250 \
        "train.save_model_interval=$steps" train.snapshot_interval=1000000 train.log_interval=50 \
        "train.device=${DEVICE:-cuda}" "${overrides[@]}" >"$runs/$name.log" 2>&1 &
done
wait
"$PY" - "$runs" "${names[@]}" <<'PY'
import json
import sys
from pathlib import Path

for run in (Path(sys.argv[1]) / name for name in sorted(sys.argv[2:])):
    evals = run / "eval.jsonl"
    rows = [json.loads(line) for line in evals.open()] if evals.exists() else []
    if not rows:
        print(f"{run.name}: no evaluation; the end of {run}.log:")
        print(Path(f"{run}.log").read_text()[-1500:])
        continue
    last, best = rows[-1], max(r["miou"] for r in rows)
    per_class = ", ".join(f"{k} {v or 0:.3f}" for k, v in last["iou"].items())
    print(f"{run.name}: step {last['step']} mIoU {last['miou']:.4f} (best {best:.4f}) {per_class}")
PY
