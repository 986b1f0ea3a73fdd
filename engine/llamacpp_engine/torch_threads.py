"""While a llama.cpp engine is open, torch runs one intra-op thread in this process.

On this engine torch only samples (a handful of small tensor ops per step, on the event loop between decodes),
and a torch thread pool buys nothing at those sizes while its threads take the cores ggml's workers and the
event loop need: measured on the loaded 2-core machine (issue 21), sampled tokens/s over greedy tokens/s went
from 0.64 with torch's default 2 threads to 0.80-0.85 with 1. It is set once per engine, not around each
sampling pass: `torch.set_num_threads` rebuilds torch's pools, which costs more than the pass. The count torch
had is restored when the last engine of the process shuts down.
"""

from __future__ import annotations

import threading

import torch

_lock = threading.Lock()
_engines = 0
_before = 0


def hold() -> None:
    """One more open engine: torch runs one intra-op thread from now on."""
    global _engines, _before
    with _lock:
        if _engines == 0:
            _before = torch.get_num_threads()
            if _before != 1:
                torch.set_num_threads(1)
        _engines += 1


def release() -> None:
    """An engine shut down: the last one gives torch back the thread count it had."""
    global _engines
    with _lock:
        if _engines == 0:
            return
        _engines -= 1
        if _engines == 0 and _before != torch.get_num_threads():
            torch.set_num_threads(_before)
