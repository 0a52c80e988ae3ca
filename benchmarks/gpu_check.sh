#!/usr/bin/env bash
# Everything HUSAI measures on a GPU, in one call of at most 8.5 minutes (the parts' time limits
# added up; the first full call on an H200, with longer limits, took 522 s), ending in one
# table per part: whoever has a GPU for a few minutes runs this once and pastes the tables into
# the README ("GPUs" section). A part cut by its limit says so (rc=124) and the rest go on; the
# paper preset's grokking needs more than its 45 s on an H200 (about 103 steps/s there).
#
#   bash benchmarks/gpu_check.sh            # from the repository root, HUSAI's environment active
#   PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh
#
# Parts, each under its own time limit so that one slow part cannot hide the others:
#   1. the `gpu` tests (tests/core/test_device.py: determinism, CPU agreement, bfloat16, the
#      memory cap of a shared GPU, every tensor on the device);
#   2. benchmarks/sae_throughput.py --device cuda: SAETrainer vs the seed-batched path;
#   3. benchmarks/gpu_sweep.py: 8 trials at gpu 0.25 vs 4 at gpu 1 (trials per hour);
#   4. benchmarks/gpu_grokking.py: the paper preset's time to grokking, GPU vs this CPU;
#   5. `husai trial --preset quick` end to end on the GPU (its CPU time is in the README).
# Logs go to $OUT (when set) or a temporary folder; the tables are printed again at the end.
set -u
PY=${PYTHON:-python3}
LOGS=${OUT:-$(mktemp -d -t husai-gpu-check-XXXX)}
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
START=$(date +%s)

part() {  # part NAME LIMIT_S COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit} s) =="
    local t0=$(date +%s)
    timeout --signal=INT --kill-after=15 "$limit" "$@" >"$LOGS/$name.log" 2>&1
    local rc=$?
    echo "rc=$rc after $(( $(date +%s) - t0 )) s" | tee -a "$LOGS/$name.log"
    tail -n 4 "$LOGS/$name.log"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$LOGS/gpu.txt"
"$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" | tee -a "$LOGS/gpu.txt"

part gpu_tests 60 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/core/test_device.py
part throughput 90 "$PY" benchmarks/sae_throughput.py --device cuda --steps 20 \
    --d-in 128 512 --d-sae 4096 16384 --dtype float32 bfloat16
part sweep 210 "$PY" benchmarks/gpu_sweep.py --trials 8 --baseline-trials 4 --steps 1000 \
    --d-sae 1024 --seeds 3
part grokking 60 "$PY" benchmarks/gpu_grokking.py --device cuda --budget-s 45 --cpu-steps 20
E2E=$(mktemp -d -t husai-e2e-XXXX)
part quick_trial 90 env HUSAI_CACHE_DIR="$E2E/cache" MLFLOW_TRACKING_URI="sqlite:///$E2E/mlflow.db" \
    "$PY" -m husai trial --preset quick

echo
echo "################ GPU check: $(cat "$LOGS/gpu.txt" | head -1), $(( $(date +%s) - START )) s ################"
grep -E "passed|failed|error" "$LOGS/gpu_tests.log" | tail -3
for name in throughput sweep grokking; do
    echo "-- $name"
    grep -E '^\||x faster|^[A-Z].*:' "$LOGS/$name.log" | grep -v Warning | tail -n 14
done
echo "-- quick trial"
grep -E "^rc=|^trial |husai-base|recon" "$LOGS/quick_trial.log" | tail -n 5
