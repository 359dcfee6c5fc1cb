#!/usr/bin/env bash
# LoRA fine-tuning on a CUDA GPU, for real: correctness (bf16 CUDA vs fp32 CPU loss curve,
# kill + --resume, export --verify) and throughput (llmkit sdpa / flex_attention / padded vs TRL
# SFTTrainer + PEFT, and + Liger when carried). Writes $OUT/gpu.json (or bench/results/gpu.json).
#
# Check it on a CPU first (tiny model, the same code paths):
#     bench/gpu.sh --cpu-smoke
#
# On the lent H200 (the `device` tool; nothing can be downloaded there, so the packages it lacks
# travel as wheels in .whl/, ignored by git; ~20 MB, well inside the 64 MiB per call):
#   here, once, in the repo root:
#     echo /.whl/ >> .git/info/exclude
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 pydantic==2.14.4 pydantic_core==2.50.5 \
#       annotated-types==0.8.0 typing-inspection==0.4.5 gguf==0.19.0 ollama==0.6.3 trl==1.16.0 \
#       peft==0.21.2 transformers==5.24.0 liger-kernel
#   (bitsandbytes' CUDA wheel is larger than what a call can carry with the rest: QLoRA is not
#   measured there; llama-cpp-python has no wheel for that Python, so export --verify is skipped
#   and recorded as such.)
#   then one run (device tool `run`, carry [".whl"], timeout_s 540; about 8 minutes):
#     python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#       --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; bench/gpu.sh
#   its $OUT/gpu.json comes back; copy it to bench/results/gpu.json and add the README table.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
# transformers 5 would fetch Hub kernels for TRL's model (llmkit turns them off itself): both run
# transformers' own layers, and offline the fetch would fail
export USE_HUB_KERNELS="${USE_HUB_KERNELS:-NO}"
export LLMKIT_HOME="${LLMKIT_HOME:-/tmp/llmkit-gpu-bench/home}" BENCH_WORK="${BENCH_WORK:-/tmp/llmkit-gpu-bench}"
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
OUTDIR="${OUT:-bench/results}"
mkdir -p "$OUTDIR"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUTDIR/nvidia-smi.txt" || true
set -o pipefail
"$PY" bench/gpu_throughput.py --out "$OUTDIR" "$@" 2>&1 | tee "$OUTDIR/gpu.log"
