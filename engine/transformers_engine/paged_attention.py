"""Attention over our paged KV pool, plugged into any transformers model through its attention interface.

transformers' own continuous batching (`init_continuous_batching`) keeps KV only for the lifetime of a request
and lets its prefix cache decide what survives; our contract needs sequences whose KV is pinned until closed,
an explicit memory budget with LRU eviction, copy-free forks and exact per-sequence counters. So we keep the
KV in our own pool and reuse only the model's layers: every forward packs all scheduled tokens of all
sequences into one row, and this function writes each layer's new keys/values into the pool and attends
each sequence to its own blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

ATTN_NAME = "moa_paged"


@dataclass
class SeqSlice:
    """One sequence's share of a packed forward: its query tokens and the KV they attend to."""

    q_start: int
    q_end: int
    kv_slots: torch.Tensor  # flat pool slots of the sequence's tokens 0..kv_len-1 (after this step)

    @property
    def q_len(self) -> int:
        """Number of new tokens of this sequence in the step."""
        return self.q_end - self.q_start


@dataclass
class PackedBatch:
    """What the attention function needs besides the model's own arguments."""

    slices: list[SeqSlice]
    write_slots: torch.Tensor  # flat pool slot of every packed token, in packing order


class KVPool:
    """The tensors behind the block ids: per layer, keys and values of every slot."""

    def __init__(self, num_layers: int, num_blocks: int, block_size: int, kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str) -> None:
        slots = num_blocks * block_size
        self.block_size = block_size
        # empty, not zeros: a slot is always written before it is read, and untouched pages cost no RAM or
        # start-up time (zeroing the default 2 GiB budget took ~1.5 s on every engine start).
        self.keys = [torch.empty(slots, kv_heads, head_dim, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.empty(slots, kv_heads, head_dim, dtype=dtype, device=device) for _ in range(num_layers)]
        self.bytes_per_block = 2 * num_layers * block_size * kv_heads * head_dim * self.keys[0].element_size()

    def copy_block(self, src: int, dst: int) -> None:
        """Copy one block's keys and values (copy-on-write of a partial block at fork)."""
        bs = self.block_size
        for k, v in zip(self.keys, self.values, strict=True):
            k[dst * bs:(dst + 1) * bs] = k[src * bs:(src + 1) * bs]
            v[dst * bs:(dst + 1) * bs] = v[src * bs:(src + 1) * bs]


def _causal_tail_mask(q_len: int, kv_len: int, device: torch.device) -> torch.Tensor:
    # Query i sits at absolute position kv_len - q_len + i and may see keys 0..that position.
    q_pos = torch.arange(kv_len - q_len, kv_len, device=device)[:, None]
    return torch.arange(kv_len, device=device)[None, :] <= q_pos


def paged_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    moa_batch: PackedBatch | None = None,
    kv_pool: KVPool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Write this layer's new K/V into the pool, then attend each packed sequence to its own KV."""
    if moa_batch is None or kv_pool is None:
        raise RuntimeError(f"attention '{ATTN_NAME}' runs only inside the moa-stream engine")
    if kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None:
        raise NotImplementedError("attention soft-capping and sinks are not supported by the paged engine")
    layer = module.layer_idx
    pool_k, pool_v = kv_pool.keys[layer], kv_pool.values[layer]
    # query/key/value: [1, heads, T, head_dim] with all sequences' tokens packed along T.
    pool_k.index_copy_(0, moa_batch.write_slots, key[0].transpose(0, 1).to(pool_k.dtype))
    pool_v.index_copy_(0, moa_batch.write_slots, value[0].transpose(0, 1).to(pool_v.dtype))
    outs = []
    for s in moa_batch.slices:
        q = query[0, :, s.q_start:s.q_end]
        k = pool_k.index_select(0, s.kv_slots).transpose(0, 1)
        v = pool_v.index_select(0, s.kv_slots).transpose(0, 1)
        kv_len = k.shape[1]
        if s.q_len == 1:
            out = F.scaled_dot_product_attention(q, k, v, scale=scaling, enable_gqa=True)
        elif s.q_len == kv_len:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, enable_gqa=True)
        else:
            mask = _causal_tail_mask(s.q_len, kv_len, q.device)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling, enable_gqa=True)
        outs.append(out)
    attn = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
    return attn.transpose(0, 1).unsqueeze(0), None


def register() -> None:
    """Make ATTN_NAME available to every transformers model (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_NAME, paged_attention_forward)
