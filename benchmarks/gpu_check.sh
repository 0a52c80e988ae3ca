#!/usr/bin/env bash
# Everything HUSAI measures on a GPU, in one call of at most TOTAL_S seconds (default 540),
# ending in one table per part: whoever has a GPU for a few minutes runs this once and pastes
# the tables into the README ("GPUs" section). A part cut by its limit says so (rc=124) and the
# rest go on. The last part (grokking) gets whatever time is left, since the paper preset's
# base model needs minutes to grok (about 103 steps/s on an H200).
#
#   bash benchmarks/gpu_check.sh                       # from the repository root, HUSAI's env active
#   PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh
#   PARTS="pipeline" TOTAL_S=480 bash benchmarks/gpu_check.sh   # a part not in the default set
#
# Parts (PARTS, default "gpu_tests throughput sweep grokking"), each under its own time limit so
# that one slow part cannot hide the others:
#   gpu_tests    the `gpu` tests (tests/core/test_device.py: determinism, CPU agreement,
#                bfloat16, the memory cap of a shared GPU, every tensor on the device, a step
#                that never synchronises with the host);
#   throughput   benchmarks/sae_throughput.py --device cuda: SAETrainer vs the seed-batched path;
#   sweep        benchmarks/gpu_sweep.py: 8 trials at gpu 0.25 vs 4 at gpu 1 (trials per hour);
#   grokking     benchmarks/gpu_grokking.py: the paper preset's time to grokking, GPU vs CPU;
#   quick_trial  `husai trial --preset quick` end to end on the GPU (its CPU time is in the README);
#   pipeline     `husai pipeline` on sweeps/quick.yaml with each trial given the whole GPU
#                (resources {cpu: 4, gpu: 1}, the same recipes: one trial at a time), against
#                the README's CPU time of the same pipeline.
# Logs go to $OUT (when set) or a temporary folder; the tables are printed again at the end.
set -u
PY=${PYTHON:-python3}
PARTS=" ${PARTS:-gpu_tests throughput sweep grokking} "
TOTAL_S=${TOTAL_S:-540}
LOGS=${OUT:-$(mktemp -d -t husai-gpu-check-XXXX)}
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
START=$(date +%s)

part() {  # part NAME LIMIT_S COMMAND...   (skipped unless NAME is in PARTS)
    local name=$1 limit=$2
    shift 2
    [[ "$PARTS" == *" $name "* ]] || return 0
    echo "== $name (limit ${limit} s) =="
    local t0=$(date +%s)
    timeout --signal=INT --kill-after=15 "$limit" "$@" >"$LOGS/$name.log" 2>&1
    local rc=$?
    echo "rc=$rc after $(( $(date +%s) - t0 )) s" | tee -a "$LOGS/$name.log"
    tail -n 4 "$LOGS/$name.log"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$LOGS/gpu.txt"
"$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" | tee -a "$LOGS/gpu.txt"

part gpu_tests 75 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/core/test_device.py
part throughput 90 "$PY" benchmarks/sae_throughput.py --device cuda --steps 20 \
    --d-in 128 512 --d-sae 4096 16384 --dtype float32 bfloat16
part sweep 220 "$PY" benchmarks/gpu_sweep.py --trials 8 --baseline-trials 4 --steps 600 \
    --d-sae 1024 --seeds 3 --shares 1 0.25
E2E=$(mktemp -d -t husai-e2e-XXXX)
part quick_trial 90 env HUSAI_CACHE_DIR="$E2E/trial-cache" \
    MLFLOW_TRACKING_URI="sqlite:///$E2E/trial.db" "$PY" -m husai trial --preset quick
if [[ "$PARTS" == *" pipeline "* ]]; then
    "$PY" -c 'import sys, yaml; d = yaml.safe_load(open("sweeps/quick.yaml"))
d["resources"] = {"cpu": 4, "gpu": 1}
yaml.safe_dump(d, open(sys.argv[1], "w"))' "$E2E/quick_gpu.yaml"
fi
LEFT=$(( TOTAL_S - ($(date +%s) - START) ))
part pipeline $(( LEFT - 60 )) env HUSAI_CACHE_DIR="$E2E/pipe-cache" \
    MLFLOW_TRACKING_URI="sqlite:///$E2E/pipe.db" \
    "$PY" -m husai pipeline --sweep "$E2E/quick_gpu.yaml" --policy gates/default.yaml
# Grokking last, with what is left: the device run stops 35 s before the limit, leaving the
# time for the CPU's 20 steps and the table.
LEFT=$(( TOTAL_S - ($(date +%s) - START) ))
part grokking "$LEFT" "$PY" benchmarks/gpu_grokking.py --device cuda \
    --budget-s $(( LEFT > 60 ? LEFT - 35 : 25 )) --cpu-steps 20

echo
echo "################ GPU check: $(cat "$LOGS/gpu.txt" | head -1), $(( $(date +%s) - START )) s ################"
[ -f "$LOGS/gpu_tests.log" ] && grep -E "passed|failed|error|^E " "$LOGS/gpu_tests.log" | tail -8
for name in throughput sweep grokking; do
    [ -f "$LOGS/$name.log" ] || continue
    echo "-- $name"
    grep -E '^\||x faster|^[A-Z].*:|^gpu ' "$LOGS/$name.log" | grep -v Warning | tail -n 14
done
for name in quick_trial pipeline; do
    [ -f "$LOGS/$name.log" ] || continue
    echo "-- $name"
    grep -E "^rc=|^trial |husai-base|recon|took|gate" "$LOGS/$name.log" | tail -n 6
done
