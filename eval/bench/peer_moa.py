"""Classic MoA the way users of the MoA repository write it, as a client of an OpenAI-compatible server.

The TTFT bench's peer (`bench ttft --peer`, against llama.cpp's own server on the same GGUF): every proposer is
requested at once (chat completions with its persona, temperature and penalties, writing exactly its token count
as the bench's proposers do), then the aggregator is streamed with the proposals as references in its system
prompt (MoA's aggregate-and-synthesize prompt, prompts/aggregate_system.txt, the one our classic mode reads).
Times run from the moment the proposals are requested; answer tokens are counted as the bench counts ours (the
shown text re-tokenized as it grows).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from engine import Tokenizer
from moa_stream import AgentConfig, MoAConfig, MoAError, aggregate_system


@dataclass
class PeerRun:
    """One classic MoA turn against the server: its timings and token counts."""

    answer: str
    total_s: float
    proposals_s: float  # wall time of the concurrent proposal requests
    proposal_tokens: int  # completion tokens of every proposal together (the server's usage)
    token_times: list[float] = field(default_factory=list)  # when each shown answer token arrived

    @property
    def ttft_s(self) -> float | None:
        """Seconds to the first answer token (None: no answer text)."""
        return self.token_times[0] if self.token_times else None

    def to_dict(self) -> dict[str, Any]:
        """The JSON `bench ttft --peer` reports as `peer_classic`."""
        return {"ttft_s": self.ttft_s, "total_s": self.total_s, "answer_tokens": len(self.token_times),
                "proposals_s": self.proposals_s, "proposal_tokens": self.proposal_tokens,
                "aggregator_tok_s": answer_rate(self.token_times),
                "proposer_tok_s": self.proposal_tokens / self.proposals_s if self.proposals_s > 0 else None}


def answer_rate(token_times: list[float]) -> float | None:
    """Answer tokens/s after the first token (None with fewer than two tokens)."""
    if len(token_times) < 2 or token_times[-1] <= token_times[0]:
        return None
    return (len(token_times) - 1) / (token_times[-1] - token_times[0])


def sampling_fields(agent: AgentConfig) -> dict[str, Any]:
    """The agent's sampling in llama.cpp server's terms (its penalty is `repeat_penalty`, default 1.1 there)."""
    body: dict[str, Any] = {"max_tokens": agent.max_tokens, "temperature": agent.temperature, "top_p": agent.top_p,
                            "min_p": agent.min_p, "repeat_penalty": agent.repetition_penalty,
                            "frequency_penalty": agent.frequency_penalty, "presence_penalty": agent.presence_penalty}
    if agent.seed is not None:
        body["seed"] = agent.seed
    if agent.ignore_eos:  # the bench's proposers write exactly max_tokens
        body["min_tokens"] = agent.max_tokens
    return body


def _messages(system: str | None, question: str) -> list[dict[str, str]]:
    return [*([{"role": "system", "content": system}] if system else []), {"role": "user", "content": question}]


async def classic_over_http(base_url: str, config: MoAConfig, question: str, tokenizer: Tokenizer,
                            timeout_s: float = 600.0) -> PeerRun:
    """Run one classic MoA turn (the config's last layer, then its aggregator) against the server at base_url."""
    import httpx

    proposers = config.layers[-1]
    agg = config.aggregator
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout_s) as client:
        async def propose(agent: AgentConfig) -> tuple[str, int]:
            body = {"messages": _messages(agent.system_prompt, question), **sampling_fields(agent)}
            resp = await client.post("/chat/completions", json=body)
            if resp.status_code != 200:
                raise MoAError(f"peer proposal {agent.name!r} failed: HTTP {resp.status_code}: {resp.text[:300]}")
            data = resp.json()
            return str(data["choices"][0]["message"]["content"] or ""), int(data["usage"]["completion_tokens"])

        t0 = time.perf_counter()
        done = await asyncio.gather(*(propose(a) for a in proposers))
        proposals_s = time.perf_counter() - t0
        system = aggregate_system([text for text, _ in done], extra=agg.system_prompt)
        body = {"messages": _messages(system, question), **sampling_fields(agg), "stream": True}
        text, times = "", []
        async with client.stream("POST", "/chat/completions", json=body) as resp:
            if resp.status_code != 200:
                raise MoAError(f"peer aggregator failed: HTTP {resp.status_code}: {(await resp.aread())[:300]!r}")
            async for line in resp.aiter_lines():
                if not line.startswith("data:") or line.strip() == "data: [DONE]":
                    continue
                delta = json.loads(line[5:])["choices"][0].get("delta", {}).get("content") or ""
                if not delta:
                    continue
                text += delta
                now = time.perf_counter() - t0
                n = len(tokenizer.encode(text, add_special_tokens=False))
                times.extend([now] * (n - len(times)))
                del times[n:]
        return PeerRun(text, time.perf_counter() - t0, proposals_s, sum(n for _, n in done), times)
