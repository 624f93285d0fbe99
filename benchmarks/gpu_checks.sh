#!/usr/bin/env bash
# The GPU checks of NetLLM-ABR, in one short run on a CUDA machine (nothing else in the project needs one):
#   1. the `gpu` tests (training, checkpoints, the lean decoder and serving on CUDA);
#   2. decision latency of a Llama-2-7B-shaped body (random weights, bf16): recompute, kv, kv-paced;
#   3. LoRA vs full fine-tuning of the 7B shape: seconds per optimizer step and peak CUDA memory;
#   4. kv decisions through transformers' generic forward, for comparison with 2.
# (most wanted first: a run cut short by BUDGET_S loses the last ones)
# Usage: OUT=runs/gpu PYTHON=.venv/bin/python bash benchmarks/gpu_checks.sh
#   BUDGET_S (default 540): wall-clock seconds for all steps together, so that the whole run fits one call of
#     a lent GPU machine (10 minutes at most per command); a step gets at most what is left, and one that
#     cannot get MIN_STEP_S (default 45) is skipped and reported as such.
#   STEPS (default all): comma-separated step names to run, e.g. STEPS=pytest-gpu,latency-7b.
# Each step has its own time limit so that one hang does not cost the others; results go to $OUT as JSON.
set -u
OUT=${OUT:-runs/gpu}
PY=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-540}
MIN_STEP_S=${MIN_STEP_S:-45}
STEPS=${STEPS:-all}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"

step() {  # step NAME SECONDS COMMAND...: run with a limit, log to $OUT/NAME.log, report the exit status
    local name=$1 limit=$2
    shift 2
    if [[ $STEPS != all && ",$STEPS," != *",$name,"* ]]; then
        return 0
    fi
    local left=$((BUDGET_S - SECONDS))
    if ((left < MIN_STEP_S)); then
        echo "=== $name: skipped, ${left}s of BUDGET_S=${BUDGET_S} left"
        return 0
    fi
    ((limit > left)) && limit=$left
    echo "=== $name (limit ${limit}s)"
    local started=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - started)) s"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c 'import torch, transformers, peft; print("torch", torch.__version__, "cuda", torch.version.cuda,
"transformers", transformers.__version__, "peft", peft.__version__, torch.cuda.get_device_name())'

step pytest-gpu 240 $PY -m pytest -q -m gpu -p no:cacheprovider tests/test_netllm_gpu.py \
    tests/test_netllm_backbone.py
step latency-7b 240 $PY benchmarks/bench_netllm_latency.py --backbone llama2-7b-shape --device cuda \
    --dtype bf16 --schemes recompute,kv,kv-paced --out "$OUT/latency-llama2-7b-bf16.json"
step lora-vs-full-7b 300 $PY benchmarks/bench_lora_vs_full.py --backbone llama2-7b-shape --device cuda \
    --dtype bf16 --micro-batch-size 4 --steps 3 --out "$OUT/lora-vs-full-llama2-7b-bf16.json"
step latency-7b-transformers 120 $PY benchmarks/bench_netllm_latency.py --backbone llama2-7b-shape \
    --device cuda --dtype bf16 --schemes kv --sessions 1 --transformers-forward \
    --out "$OUT/latency-llama2-7b-bf16-transformers.json"
