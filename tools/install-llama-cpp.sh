#!/usr/bin/env bash
# Install llama-cpp-python built portably (DESIGN.md §4): a native build dies with SIGILL
# on these machines. pip's wheel cache ignores CMAKE_ARGS, so we keep our own cache keyed
# on version + flags and never reuse a wheel built with other flags.
set -euo pipefail
PY=${1:-.venv/bin/python}
VERSION=0.3.36
FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
KEY=$(printf '%s %s %s' "$VERSION" "$FLAGS" "$(uname -m)" | sha256sum | cut -c1-16)
CACHE="${LLMKIT_WHEEL_CACHE:-$HOME/.cache/llmkit/wheels}/llama-cpp-python-$VERSION-$KEY"
if "$PY" -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$VERSION')" 2>/dev/null; then
  exit 0
fi
if ! ls "$CACHE"/*.whl >/dev/null 2>&1; then
  echo "building llama-cpp-python $VERSION portably (several minutes, once)..."
  mkdir -p "$CACHE.tmp"
  CMAKE_ARGS="$FLAGS" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    "$PY" -m pip wheel --no-deps --no-cache-dir --no-binary llama-cpp-python \
    -w "$CACHE.tmp" "llama-cpp-python==$VERSION"
  rm -rf "$CACHE" && mv "$CACHE.tmp" "$CACHE"
fi
"$PY" -m pip install --no-deps "$CACHE"/*.whl
