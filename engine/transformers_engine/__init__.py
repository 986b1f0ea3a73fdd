"""The embedded engine: any transformers causal LM, a paged KV pool, continuous batching, O(Δ) appends.

Split along vLLM v1's seams:
- `scheduler`: picks each step's work under the token budget (decodes first, then chunked prefill);
- `kv_cache_manager`: which KV blocks each sequence holds, over the BlockPool (prefix hits, LRU eviction, forks);
- `model_runner`: packs one step into a forward pass through `paged_attention`, then samples (`sampler`);
- `engine`: the async Engine API, the loop task that runs steps, and the token streams of generations.
`sequence_state` is the per-sequence record they share.
"""

from .engine import TransformersEngine

__all__ = ["TransformersEngine"]
