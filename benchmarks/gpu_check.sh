#!/usr/bin/env bash
# The GPU checks of issue 20, on one GPU, in at most 10 minutes (each section has its own time limit, and
# none runs past the script's deadline). In the order they run, most telling first:
#
#   1. the smoke tuners (pez, soft, rlprompt) run on CUDA and return finite metrics;
#   3. a checkpoint restored as the sweep restores it (torch.load onto the CPU) resumes and evaluates on CUDA
#      (the device-parametrised tests, CUDA variants): prints RESUME ok;
#   5. a smoke sweep at gpus_per_trial=0: the number of processes that touched the GPU (want 0);
#   4. four smoke trials on one GPU at gpus_per_trial=0.25: GPU memory per process from nvidia-smi;
#   2. PEZ, fluent PEZ and RLPrompt step times and peak memory on SmolLM2-135M (bf16 body, fp32 head), the
#      deterministic-algorithms flag's cost, and the memory estimate the preflight uses, for comparison.
#
#   bash benchmarks/gpu_check.sh            # from anywhere; PY=... picks the interpreter (default .venv/bin/python)
#
# Writes its logs under $OUT (a temporary folder when unset) and prints a summary; exits 0 when every check
# passed, 1 when one failed, 2 when there is no usable GPU (nothing is run then).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-$(mktemp -d -t gpu_check.XXXXXX)}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

no_gpu() {
    echo "gpu_check.sh: $1; nothing was run. This script needs one CUDA GPU; on a CPU machine run" >&2
    echo "  $PY -m pytest -q tests/objectives tests/tuners tests/sweep/test_devices.py" >&2
    exit 2
}
command -v nvidia-smi >/dev/null 2>&1 || no_gpu "nvidia-smi not found"
nvidia-smi -L 2>/dev/null | grep -q '^GPU' || no_gpu "nvidia-smi lists no GPU"
[ -x "$PY" ] || no_gpu "no Python at $PY (set PY=/path/to/python of the project's environment)"
"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null ||
    no_gpu "torch.cuda.is_available() is False for $PY (a CPU-only torch build?)"

STATUS=0
declare -a SUMMARY=()
section() { printf '\n=== %s  (%ss elapsed)\n' "$1" "$SECONDS"; }
record() {  # record NAME RESULT: one summary line; RESULT other than ok* marks the run failed
    SUMMARY+=("$1: $2")
    case "$2" in ok*) ;; *) STATUS=1 ;; esac
}
# The whole script stays within 10 minutes: each command gets its own limit, cut to what is left of this.
DEADLINE=${DEADLINE:-570}
# Runs "$@" with a time limit, its output to $OUT/$1.log and the console; returns the command's status
# (124: stopped at its limit, 125: skipped, no time left).
run() {
    local name=$1 limit=$2
    shift 2
    local left=$((DEADLINE - SECONDS))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 20 ]; then
        echo "($name: skipped, the script's ${DEADLINE}s are spent)"
        return 125
    fi
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    grep -v -e 'Loading weights' -e 'Warning' "$OUT/$name.log" | tail -n 25
    [ $rc -eq 124 ] && echo "($name: stopped after its ${limit}s limit)"
    return $rc
}
gpu_pids() { nvidia-smi --query-compute-apps=pid --format=csv,noheader 2>/dev/null | tr -d ' ' | sort -u; }
# Samples the GPU's compute processes every second into $1 (lines "time pid MiB") until killed.
monitor() { while :; do nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits 2>/dev/null |
    sed "s/^/$(date +%s), /"; sleep 1; done >"$1"; }

section "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)'
BEFORE_PIDS=$(gpu_pids)

# 1. The smoke tuners on CUDA: the CLI path (no Ray), device forced.
section "1. smoke tuners on CUDA"
for tuner in pez soft rlprompt; do
    if run "smoke_$tuner" 120 "$PY" -m tuners run "$tuner" --preset smoke --quiet --set device=cuda \
        --json "$OUT/smoke_$tuner.json"; then
        "$PY" - "$OUT/smoke_$tuner.json" <<'EOF'
import json, math, sys
result = json.load(open(sys.argv[1]))
bad = {k: v for k, v in result["metrics"].items() if not math.isfinite(v)}
print(f"{result['tuner']}: {result['prompt_text']!r} acc_dev={result['metrics']['task/acc_dev']:.3f} "
      f"log_ppl={result['metrics']['interp/log_ppl']:.3f} wall {result['wall_s']:.1f}s" + (f" NON-FINITE {bad}" if bad else ""))
sys.exit(1 if bad else 0)
EOF
        [ $? -eq 0 ] && record "smoke $tuner on cuda" ok || record "smoke $tuner on cuda" "FAILED (non-finite metrics)"
    else
        record "smoke $tuner on cuda" "FAILED (see $OUT/smoke_$tuner.log)"
    fi
done

# 3. A checkpoint restored the sweep's way resumes and evaluates on CUDA (the tests' CUDA variants run here).
section "3. checkpoint resume on CUDA"
# -m gpu selects the CUDA variants only; all 3 must pass (a skip would mean CUDA was not seen).
if run resume 150 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/tuners/test_device_paths.py &&
    grep -q '^3 passed' "$OUT/resume.log"; then
    echo "RESUME ok"
    record "checkpoint resume on cuda" "ok (RESUME ok)"
else
    echo "RESUME FAILED"
    record "checkpoint resume on cuda" "FAILED (see $OUT/resume.log)"
fi

# 4 and 5: smoke sweeps under Ray, the GPU sampled every second. Ray must count the GPU (an embedded Ray on
# this machine detects it); each sweep runs in a fresh --out.
sweep() {  # sweep NAME LIMIT GPUS_PER_TRIAL [--set ...]
    local name=$1 limit=$2 share=$3
    shift 3
    monitor "$OUT/$name.gpu.csv" &
    local monitor_pid=$!
    run "$name" "$limit" "$PY" sweep/run.py --preset smoke --fresh --out "$OUT/$name" \
        --set "gpus_per_trial=$share" --set problem.device=auto "$@"
    local rc=$?
    kill "$monitor_pid" 2>/dev/null
    wait "$monitor_pid" 2>/dev/null
    return $rc
}
# Per process: the most GPU memory nvidia-smi showed; how many ran at once; processes that were there before.
gpu_summary() {
    "$PY" - "$1" "$BEFORE_PIDS" <<'EOF'
import collections, sys
before = set(sys.argv[2].split())
peak, at = {}, collections.defaultdict(set)
for line in open(sys.argv[1]):
    parts = [p.strip() for p in line.split(",")]
    if len(parts) != 3 or not parts[2].isdigit() or parts[1] in before:
        continue
    stamp, pid, mib = parts
    peak[pid] = max(peak.get(pid, 0), int(mib))
    at[stamp].add(pid)
together = max((len(p) for p in at.values()), default=0)
print(f"GPU processes: {len(peak)} (at most {together} at once); MiB per process (peak): "
      + (", ".join(f"{pid}: {mib}" for pid, mib in sorted(peak.items())) or "none"))
print(f"COUNT {len(peak)} TOGETHER {together}")
EOF
}

section "5. GPU processes of a smoke sweep at gpus_per_trial=0 (want 0)"
if sweep cpu_only 150 0 --set num_samples=2; then
    line=$(gpu_summary "$OUT/cpu_only.gpu.csv" | tee /dev/stderr | grep '^COUNT')
    count=$(echo "$line" | awk '{print $2}')
    [ "${count:-1}" -eq 0 ] && record "GPU processes at gpus_per_trial=0" "ok (0)" ||
        record "GPU processes at gpus_per_trial=0" "FAILED: $count (trials given no GPU used one: device=auto must follow ray.get_gpu_ids())"
else
    record "GPU processes at gpus_per_trial=0" "FAILED (see $OUT/cpu_only.log)"
fi

section "4. four smoke trials on one GPU at gpus_per_trial=0.25"
if sweep shared 210 0.25 --set max_concurrent=4 --set cpus_per_trial=1 --set ray_num_cpus=8 --set num_samples=4; then
    line=$(gpu_summary "$OUT/shared.gpu.csv" | tee /dev/stderr | grep '^COUNT')
    together=$(echo "$line" | awk '{print $4}')
    [ "${together:-0}" -ge 4 ] && record "four trials on one GPU" "ok ($line)" ||
        record "four trials on one GPU" "FAILED: fewer than 4 GPU processes at once ($line)"
else
    record "four trials on one GPU" "FAILED (see $OUT/shared.log)"
fi

# 2. Step times and peak memory on SmolLM2-135M (the demo's LM): PEZ and fluent PEZ (pez_step.py), the
# deterministic flag's cost on the same steps, RLPrompt (rlprompt_step.py, the demo preset), and the estimate.
section "2a. PEZ and fluent PEZ steps, SmolLM2-135M, CUDA"
run pez_step 150 "$PY" benchmarks/pez_step.py --model smollm2-135m --device cuda --skip-uncached --steps 10 --threads 4 &&
    record "PEZ step times" ok || record "PEZ step times" "FAILED (see $OUT/pez_step.log)"
section "2b. the same with PROMPTSWEEP_DETERMINISTIC=1 (deterministic algorithms)"
run pez_step_deterministic 120 env PROMPTSWEEP_DETERMINISTIC=1 "$PY" benchmarks/pez_step.py --model smollm2-135m \
    --device cuda --skip-uncached --steps 10 --threads 4 &&
    record "PEZ step times, deterministic" ok || record "PEZ step times, deterministic" "FAILED (see $OUT/pez_step_deterministic.log)"
section "2c. RLPrompt step (demo preset), SmolLM2-135M, CUDA"
run rlprompt_step 150 "$PY" benchmarks/rlprompt_step.py --device cuda --steps 4 --threads 4 &&
    record "RLPrompt step times" ok || record "RLPrompt step times" "FAILED (see $OUT/rlprompt_step.log)"
section "2d. the preflight's memory estimate for the demo trials (compare with the peaks above)"
run estimate 60 "$PY" - <<'EOF'
import torch
from objectives.memory import estimate_trial_bytes
from tuners import preset_config
card = torch.cuda.get_device_properties(0).total_memory
for name in ("pez", "rlprompt"):
    config = preset_config(name, "demo", {"device": "cuda"})
    for share in (1.0, 0.25):
        print(f"{name} demo, gpus_per_trial={share}: {estimate_trial_bytes(config, gpu_share=share, card_bytes=card).describe()}")
EOF
[ $? -eq 0 ] && record "memory estimate" ok || record "memory estimate" "FAILED (see $OUT/estimate.log)"

section "summary (logs in $OUT)"
printf '%s\n' "${SUMMARY[@]}"
echo "total ${SECONDS}s"
exit $STATUS
