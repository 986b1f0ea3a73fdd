"""Module-level tools for the worker-process runner's tests (a worker process imports them by name)."""

from __future__ import annotations

import os
import time
from pathlib import Path


def write_later(path: str, delay_s: float) -> str:
    """Note the worker's pid in `path`.pid, then write `path` after `delay_s` seconds (an effect outside us)."""
    Path(f"{path}.pid").write_text(str(os.getpid()))
    time.sleep(delay_s)
    Path(path).write_text("late")
    return "written"
