"""A load run against the server: N concurrent streaming clients (the official `openai` client) on loopback.

It measures time to first token and counts completions, 429s and errors; it snapshots the engines' resident
sequences and KV bytes and this process's open file descriptors before and after, which must come back to
where they were once every client is gone (no leaked sequences, no leaked sockets).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from moa_stream import MoA
from moa_stream.server import ServerSettings, serving

DEFAULT_QUESTION = "In one sentence, why is the sky blue?"


@dataclass(frozen=True)
class Resources:
    """What a request holds while it runs: engine sequences and KV, server slots, sockets (file descriptors)."""

    sequences_open: int
    sequences_resident: int
    kv_bytes_resident: int
    open_fds: int | None

    @classmethod
    def now(cls, moa: MoA) -> Resources:
        """The engines' gauges and this process's open descriptors (None where /proc is missing)."""
        stats = moa.engine_stats().values()
        return cls(sequences_open=sum(s.sequences_open for s in stats),
                   sequences_resident=sum(s.sequences_resident for s in stats),
                   kv_bytes_resident=sum(s.kv_bytes_resident for s in stats), open_fds=_open_fds())


def _open_fds() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


@dataclass
class LoadReport:
    """The figures of one load run."""

    clients: int
    requests: int
    max_tokens: int
    max_concurrency: int
    duration_s: float = 0.0
    completed: int = 0
    rate_limited: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    ttft_p50_s: float | None = None
    ttft_p99_s: float | None = None
    ttfts_s: list[float] = field(default_factory=list)
    before: Resources | None = None
    after: Resources | None = None

    @property
    def back_to_baseline(self) -> bool:
        """No sequence open and no descriptor more than before the run."""
        if self.before is None or self.after is None:
            return False
        fds_ok = self.after.open_fds is None or self.before.open_fds is None or \
            self.after.open_fds <= self.before.open_fds
        return self.after.sequences_open == self.before.sequences_open == 0 and fds_ok

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (without the raw TTFT list)."""
        out = asdict(self)
        out.pop("ttfts_s")
        out["back_to_baseline"] = self.back_to_baseline
        return out


class _Refused(Exception):
    """The server answered 429; retry after this many seconds."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


async def run_load(moa: MoA, *, clients: int = 64, requests: int = 128, max_tokens: int = 8,
                   max_concurrency: int | None = None, duration_s: float = 600.0, model: str = "moa-stream",
                   question: str = DEFAULT_QUESTION) -> LoadReport:
    """Serve `requests` streaming requests to `clients` concurrent clients (stopping after `duration_s`).

    A client refused with 429 waits the Retry-After and asks again; the refusal is counted, the request not.
    """
    import openai

    limit = max_concurrency or clients
    report = LoadReport(clients=clients, requests=requests, max_tokens=max_tokens, max_concurrency=limit)
    report.before = Resources.now(moa)
    left = requests
    t0 = time.perf_counter()
    deadline = t0 + duration_s

    async def one(client: openai.AsyncOpenAI) -> None:
        start = time.perf_counter()
        first: float | None = None
        try:
            stream = await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": question}], max_tokens=max_tokens, stream=True)
            async for chunk in stream:
                if first is None and chunk.choices and chunk.choices[0].delta.content:
                    first = time.perf_counter() - start
            report.completed += 1
            if first is not None:
                report.ttfts_s.append(first)
        except openai.RateLimitError as exc:
            report.rate_limited += 1
            raise _Refused(float(exc.response.headers.get("retry-after") or 1)) from exc
        except openai.APIError as exc:
            report.errors += 1
            if len(report.error_samples) < 5:
                cause = f" ({type(exc.__cause__).__name__}: {exc.__cause__})" if exc.__cause__ else ""
                report.error_samples.append(f"{type(exc).__name__}: {exc}{cause}"[:300])

    async def client_loop() -> None:
        nonlocal left
        async with openai.AsyncOpenAI(base_url=f"{srv.url}/v1", api_key="load", max_retries=0,
                                      timeout=duration_s) as client:
            while left > 0 and time.perf_counter() < deadline:
                left -= 1
                try:
                    await one(client)
                except _Refused as refused:  # a 429 is an answer, not a request served: wait as told, ask again
                    left += 1
                    await asyncio.sleep(min(refused.retry_after_s, max(0.0, deadline - time.perf_counter())))

    settings = ServerSettings(max_concurrency=limit, request_timeout_s=duration_s)
    async with serving(moa, settings) as srv:
        await asyncio.gather(*(client_loop() for _ in range(clients)))
        for _ in range(500):  # cleanup of the last runs finishes on later loop turns
            if srv.in_flight == 0 and Resources.now(moa).sequences_open == 0:
                break
            await asyncio.sleep(0.02)
    report.duration_s = round(time.perf_counter() - t0, 3)
    report.after = Resources.now(moa)
    report.ttft_p50_s = _percentile(report.ttfts_s, 50)
    report.ttft_p99_s = _percentile(report.ttfts_s, 99)
    return report
