"""One llama.cpp model and context over the low-level bindings: a unified KV cache many sequences share.

Everything here touches llama.cpp memory, so it runs on the engine's single worker thread (decode) or on the
event loop between steps (sequence edits); never both at once: the engine only edits while no step runs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import EngineError, ModelLoadError


@dataclass(frozen=True)
class ContextOptions:
    """How to build the context: KV cells, sequence slots, tokens per decode, threads, GPU layers."""

    n_ctx: int = 16384  # KV cells shared by every sequence (unified cache)
    n_seq_max: int = 64  # llama.cpp sequence ids (slots) for sequences whose KV is resident
    n_batch: int = 512  # most tokens one llama_decode takes
    threads: int | None = None  # default: default_threads()
    gpu_layers: int = 0  # layers offloaded to a GPU (Metal, CUDA) where llama.cpp was built with one
    # Flash attention skips masked KV cells, so a sequence's logits do not depend on which other sequences share
    # the batch and the cache (without it, masked cells shift SIMD sums and near-ties flip under batching). It
    # does sum a sequence's own cells in cache order: KV recomputed into freed cells (after eviction or
    # preemption) moves SmolLM2's logits by up to ~1.0 against the same tokens in order (tests/engine/
    # test_preemption.py, NEAR_TIE_NATS), so greedy output under KV pressure may part at a near-tie.
    flash_attn: bool = True


@dataclass(frozen=True)
class BatchToken:
    """One token of a decode: its id, position, slot, and whether its logits are wanted."""

    token: int
    pos: int
    slot: int
    logits: bool


def default_threads() -> int:
    """One thread per core but one, at most 8.

    The engine's event loop (sampling, detokenizing) runs beside every decode, and ggml's workers spin at their
    barriers: a worker sharing a core with it, or with another busy process, stalls all the others (measured on
    the loaded 2-core machine: 2 threads 0.3 tok/s, 1 thread 15.7 tok/s).
    """
    return max(1, min((os.cpu_count() or 1) - 1, 8))


def use_extra_buffer_types() -> bool:
    """Whether llama.cpp may keep weights in its CPU extra buffer types (repacked kernels): not on an AMX build.

    A llama.cpp built natively on an AMX CPU puts weights in AMX buffers, and 0.3.36 segfaults in
    ggml_backend_amx_mul_mat on the first decode there (seen on the development VM); the AVX2 build that
    `make install` makes has no AMX and keeps its repacked kernels.
    """
    import llama_cpp as L

    return b"AMX_INT8 = 1" not in L.llama_print_system_info()


def _quiet() -> None:
    # llama-cpp-python prints llama.cpp's log to stderr unless its logger is raised above INFO.
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)


class LlamaContext:
    """A GGUF model, one context with a unified KV cache, one reusable batch, and the sequence-memory calls."""

    def __init__(self, path: str | Path, options: ContextOptions) -> None:
        import llama_cpp as L

        _quiet()
        self._L = L
        path = Path(path)
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {path} does not exist: pass the path of a .gguf model")
        L.llama_backend_init()
        mparams = L.llama_model_default_params()
        mparams.n_gpu_layers = options.gpu_layers
        mparams.use_extra_bufts = use_extra_buffer_types()
        self._model = L.llama_model_load_from_file(str(path).encode(), mparams)
        if not self._model:
            raise ModelLoadError(f"llama.cpp could not load {path}: is it a GGUF model file?")
        if options.n_seq_max > L.llama_max_parallel_sequences():
            raise EngineError(f"n_seq_max={options.n_seq_max} exceeds llama.cpp's "
                              f"{L.llama_max_parallel_sequences()} sequences")
        cparams = L.llama_context_default_params()
        cparams.n_ctx = options.n_ctx
        cparams.n_batch = options.n_batch
        cparams.n_ubatch = options.n_batch
        cparams.n_seq_max = options.n_seq_max
        cparams.kv_unified = True  # one cell pool: seq_cp shares cells between sequences instead of copying
        threads = options.threads or default_threads()
        cparams.n_threads = cparams.n_threads_batch = threads
        cparams.flash_attn_type = (L.LLAMA_FLASH_ATTN_TYPE_ENABLED if options.flash_attn
                                   else L.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        cparams.no_perf = True
        self._ctx = L.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            L.llama_model_free(self._model)
            raise ModelLoadError(f"llama.cpp could not create a context of {options.n_ctx} cells for {path}")
        self.path = path
        self.options = options
        self.threads = threads
        self.n_ctx = int(L.llama_n_ctx(self._ctx))
        self.n_batch = int(L.llama_n_batch(self._ctx))
        self._vocab = L.llama_model_get_vocab(self._model)
        self.n_vocab = int(L.llama_vocab_n_tokens(self._vocab))
        self.n_ctx_train = int(L.llama_model_n_ctx_train(self._model))
        self.eog_ids = frozenset(t for t in range(self.n_vocab) if L.llama_vocab_is_eog(self._vocab, t))
        self.bytes_per_cell = self._bytes_per_cell()
        self._mem = L.llama_get_memory(self._ctx)
        self._batch = L.llama_batch_init(self.n_batch, 0, 1)
        self._tok = np.ctypeslib.as_array(self._batch.token, shape=(self.n_batch,))
        self._pos = np.ctypeslib.as_array(self._batch.pos, shape=(self.n_batch,))
        self._nseq = np.ctypeslib.as_array(self._batch.n_seq_id, shape=(self.n_batch,))
        self._want = np.ctypeslib.as_array(self._batch.logits, shape=(self.n_batch,))
        self._seq_ids = [self._batch.seq_id[i] for i in range(self.n_batch)]
        self._closed = False

    def _bytes_per_cell(self) -> int:
        # K and V of every layer for one token, at the cache's f16 default.
        L = self._L
        n_layer = int(L.llama_model_n_layer(self._model))
        n_embd = int(L.llama_model_n_embd(self._model))
        heads, kv_heads = int(L.llama_model_n_head(self._model)), int(L.llama_model_n_head_kv(self._model))
        return 2 * n_layer * (n_embd // max(heads, 1)) * kv_heads * 2

    # ---------------------------------------------------------------- decode (worker thread)

    def decode(self, tokens: Sequence[BatchToken]) -> list[np.ndarray]:
        """Run one llama_decode over the tokens; the logits rows of those that asked for them, in order."""
        n = len(tokens)
        if not 0 < n <= self.n_batch:
            raise EngineError(f"a decode takes 1 to {self.n_batch} tokens, got {n}")
        self._tok[:n] = [t.token for t in tokens]
        self._pos[:n] = [t.pos for t in tokens]
        self._nseq[:n] = 1
        self._want[:n] = [t.logits for t in tokens]
        for i, t in enumerate(tokens):
            self._seq_ids[i][0] = t.slot
        self._batch.n_tokens = n
        rc = self._L.llama_decode(self._ctx, self._batch)
        if rc != 0:
            raise EngineError(f"llama_decode failed with code {rc} (1: no KV slot for the batch; "
                              "raise n_ctx or lower the KV budget)")
        rows: list[np.ndarray] = []
        for i, t in enumerate(tokens):
            if t.logits:
                ptr = self._L.llama_get_logits_ith(self._ctx, i)
                rows.append(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy())
        return rows

    # ---------------------------------------------------------------- sequence memory (between steps)

    def seq_cp(self, src: int, dst: int, n: int, start: int = 0) -> None:
        """Let slot dst share the KV cells of slot src's positions start..n-1 (no copy, no compute)."""
        self._L.llama_memory_seq_cp(self._mem, src, dst, start, n)

    @property
    def can_shift(self) -> bool:
        """Whether cached positions can be moved (RoPE models: llama.cpp re-rotates the keys in place)."""
        return bool(self._L.llama_memory_can_shift(self._mem))

    def seq_shift(self, slot: int, start: int, delta: int) -> None:
        """Move slot's positions from `start` on by `delta` (the keys are re-rotated before the next decode)."""
        self._L.llama_memory_seq_add(self._mem, slot, start, -1, delta)

    def seq_rm(self, slot: int, start: int = -1) -> None:
        """Drop slot's KV from position `start` on (-1: all of it); cells no other slot holds become free."""
        if not self._L.llama_memory_seq_rm(self._mem, slot, start, -1):
            raise EngineError(f"llama.cpp refused to remove positions {start}.. of sequence slot {slot}")

    def seq_pos_max(self, slot: int) -> int:
        """Highest position slot holds in the KV cache, -1 if none."""
        return int(self._L.llama_memory_seq_pos_max(self._mem, slot))

    def close(self) -> None:
        """Free the batch, context and model (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._L.llama_batch_free(self._batch)
        self._L.llama_free(self._ctx)
        self._L.llama_model_free(self._model)
