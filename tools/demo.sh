#!/usr/bin/env bash
# `make demo`: the main job, offline, on whatever hardware is here (a few minutes on 2 CPU cores).
# pull → chat → fine-tune → chat again → export GGUF + Ollama model → embed / search / classify / cluster
set -euo pipefail
LLMKIT=${1:-llmkit}
export LLMKIT_HOME=${LLMKIT_HOME:-$PWD/.llmkit-home}
RUN=runs/demo-smollm2
OUT=runs/demo-embed
QUESTION="What is the capital of France?"
N=0  # steps are numbered as they run, so they read in order whether or not Ollama is here
# bold headers on a terminal only: a log file or a pipe gets plain text, and NO_COLOR is honoured
if [ -t 1 ] && [ -z "${NO_COLOR:-}" ]; then BOLD=$'\033[1m' PLAIN=$'\033[0m'; else BOLD= PLAIN=; fi
header() { printf '\n%s== %s%s\n' "$BOLD" "$*" "$PLAIN"; }
step() { N=$((N + 1)); header "$N. $*"; }

step "Pull the embedded default model (SmolLM2-135M-Instruct, shipped as a GGUF: no network)"
$LLMKIT pull smollm2-135m-instruct

step "Ask it: $QUESTION"
$LLMKIT chat smollm2-135m-instruct "$QUESTION" --max-new-tokens 32

step "Fine-tune it with LoRA on our small chat dataset (recipes/smollm2-135m-chat.yaml)"
$LLMKIT train smollm2-135m-chat "train.output_dir=$RUN" --overwrite

step "Ask the fine-tuned model (base + adapter) the same question"
$LLMKIT chat "$RUN" "$QUESTION" --max-new-tokens 32

step "Score the base model with reward functions (recipes/smollm2-135m-grpo.yaml: one-word answers, greedy)"
$LLMKIT eval smollm2-135m-instruct --rewards smollm2-135m-grpo --limit 6
# (llmkit train smollm2-135m-grpo teaches it by these rewards: exact answers 0 % -> 61 % in 15 minutes)

step "Export: merge, write an F16 GGUF checked against llama.cpp, a Modelfile, and the Ollama model"
$LLMKIT export "$RUN" --verify --ollama smollm2-llmkit
# (without a running Ollama server this prints the exact `ollama create` command instead)

if command -v ollama >/dev/null 2>&1; then
  step "Serve it through Ollama"
  $LLMKIT ollama serve
  $LLMKIT ollama run smollm2-llmkit "$QUESTION"
fi

step "Embed text (all-MiniLM-L6-v2, embedded), then search, classify and cluster the vectors"
mkdir -p "$OUT"
$LLMKIT embed recipes/data/embed-unlabelled.txt -o "$OUT/questions.parquet"
$LLMKIT similar "my phone is slow" --index "$OUT/questions.parquet" -k 3
$LLMKIT similarity "It is raining" "Wet weather today"
$LLMKIT classify train recipes/data/embed-labelled.csv --text-column text --label-column label -o "$OUT/topics" --force
$LLMKIT cluster "$OUT/questions.parquet" -k auto --plot "$OUT/clusters.png"

step "Photos too: what bird is this? (EfficientNet-Lite0, embedded; foolbox's labelled ImageNet photos)"
BIRDS=runs/demo-birds
mkdir -p "$BIRDS"
"$(dirname "$LLMKIT")/python" - "$BIRDS" <<'PY'
import importlib.util, pathlib, shutil, sys
data = pathlib.Path(importlib.util.find_spec("foolbox").origin).parent / "data"
for name in ("imagenet_14_129.jpg", "imagenet_15_99.jpg", "imagenet_17_22.jpg"):  # spoonbill, goose, bald eagle
    shutil.copy(data / name, sys.argv[1])
PY
$LLMKIT classify predict --imagenet "$BIRDS"

header "Done. Run dir: $RUN (adapter, metrics, loss.png, model.gguf, Modelfile); embeddings: $OUT"
