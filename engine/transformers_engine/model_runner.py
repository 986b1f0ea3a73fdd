"""Runs one scheduled step on the model: packs every chunk into one forward pass through our paged attention,
then samples the next token of each generating sequence whose chunk reached its end (all in one pass).

The runner owns the model, the KV tensors (KVPool) and the single worker thread the forward passes run on, so
the event loop stays free for the agents and servers around the engine.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ModelLoadError
from ..scheduler import ScheduledChunk, ScheduledStep
from ..step_sampling import SampleRequest, sample_step
from . import paged_attention
from .kv_cache_manager import BlockCopy
from .paged_attention import KVPool, PackedBatch, SeqSlice


@dataclass
class StepOutput:
    """What one forward pass produced for the sequences whose chunk ended at their last token."""

    logits: dict[int, torch.Tensor] = field(default_factory=dict)  # seq id -> logits after its last token
    sampled: dict[int, int] = field(default_factory=dict)  # seq id -> sampled token (generating sequences only)
    accepted: dict[int, list[int]] = field(default_factory=dict)  # seq id -> draft tokens verified before it
    errors: dict[int, Exception] = field(default_factory=dict)  # seq id -> why sampling failed for it alone


class ModelRunner:
    """A transformers causal LM bound to a paged KV pool sized from a byte budget."""

    def __init__(self, model: Any, name: str, *, block_size: int, kv_cache_bytes: int | None) -> None:
        paged_attention.register()
        model.set_attn_implementation(paged_attention.ATTN_NAME)
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        if getattr(cfg, "sliding_window", None) and any(
                t == "sliding_attention" for t in (getattr(cfg, "layer_types", None) or [])):
            raise ModelLoadError(f"{name}: sliding-window attention is not supported by the engine")
        self.model = model
        self.config = cfg  # the text model's config (vocabulary, context length, eos)
        self.device = next(model.parameters()).device
        self.block_size = block_size
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        dtype = next(model.parameters()).dtype
        per_block = 2 * cfg.num_hidden_layers * block_size * kv_heads * head_dim * torch.finfo(dtype).bits // 8
        self.num_blocks = max((kv_cache_bytes or (2 << 30)) // per_block, 2)
        self.kv = KVPool(cfg.num_hidden_layers, self.num_blocks, block_size, kv_heads, head_dim, dtype, self.device)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="moa-engine")
        # Sequences being scored (engine.score): seq id -> (position, logits after it) for each position computed.
        self.all_logits: dict[int, list[tuple[int, torch.Tensor]]] = {}

    @property
    def kv_bytes_budget(self) -> int:
        """Bytes of KV the pool holds."""
        return self.num_blocks * self.kv.bytes_per_block

    def copy_block(self, copy: BlockCopy) -> None:
        """Perform a fork's block copy."""
        self.kv.copy_block(copy.src, copy.dst)

    async def run(self, step: ScheduledStep) -> StepOutput:
        """Execute the step on the worker thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.execute, step)

    def execute(self, step: ScheduledStep) -> StepOutput:
        """One packed forward, then sampling for the generating sequences (runs on the worker thread)."""
        bs = self.block_size
        ids: list[int] = []
        pos: list[int] = []
        write: list[int] = []
        slices: list[SeqSlice] = []
        keep: list[int] = []
        keep_chunks: list[ScheduledChunk] = []  # chunks ending at their last token: rows keep[i]..+len(draft)
        every: list[tuple[int, int, int]] = []  # (packed row, seq id, position) of every row of a scored sequence
        for c in step.chunks:
            s = c.seq
            q0 = len(ids)
            end = c.end + len(c.draft)  # a draft's tokens are computed right after the chunk's
            ids.extend([*s.tokens[c.start:c.end], *c.draft])
            pos.extend(range(c.start, end))
            write.extend(s.blocks[p // bs] * bs + p % bs for p in range(c.start, end))
            blocks = torch.tensor(s.blocks[: -(-end // bs)], dtype=torch.long)
            kv_slots = (blocks[:, None] * bs + torch.arange(bs)).flatten()[:end]
            slices.append(SeqSlice(q0, len(ids), kv_slots.to(self.device)))
            if c.end == len(s.tokens):
                keep.extend(range(len(ids) - 1 - len(c.draft), len(ids)))
                keep_chunks.append(c)
            if s.id in self.all_logits:
                every.extend((q0 + i, s.id, p) for i, p in enumerate(range(c.start, c.end)))
        dev = self.device
        batch = PackedBatch(slices, torch.tensor(write, dtype=torch.long, device=dev))
        with torch.inference_mode():
            out = self.model(
                input_ids=torch.tensor([ids], device=dev),
                position_ids=torch.tensor([pos], device=dev),
                use_cache=False,
                logits_to_keep=torch.tensor([*keep, *(r for r, _, _ in every)] or [len(ids) - 1], device=dev),
                moa_batch=batch,
                kv_pool=self.kv,
            )
            logits = out.logits[0].float()
            result = StepOutput()
            for j, (_, sid, p) in enumerate(every):
                self.all_logits[sid].append((p, logits[len(keep) + j]))
            row = 0
            requests: list[tuple[int, SampleRequest]] = []
            for c in keep_chunks:
                s, gen = c.seq, c.gen
                result.logits[s.id] = logits[row]
                rows, row = logits[row:row + 1 + len(c.draft)], row + 1 + len(c.draft)
                if gen is not None and not s.closed:
                    requests.append((s.id, SampleRequest(gen, s.tokens, list(rows), c.draft)))
        # Outside inference mode: the generations' penalty histories built here are grown later.
        for (sid, _), out in zip(requests, sample_step([r for _, r in requests]), strict=True):
            if isinstance(out, Exception):  # one sequence's bad sampling fails only that sequence
                result.errors[sid] = out
            else:
                result.accepted[sid], result.sampled[sid] = out.accepted, out.token
        return result

    def shutdown(self) -> None:
        """Stop the worker thread once the step in flight (if any) is over."""
        self._executor.shutdown(wait=True)
