"""Issue 24: a tool that timed out can no longer change anything, and an async tool that blocks cannot stall us.

Every wait here is on an event the tool itself sets (or on the worker process being gone), never on a sleep:
the tests hold a tool past its timeout with a threading.Event, release it after its error result came back,
wait until it has finished, and only then look at the state it would have changed.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from moa_stream.tools import InProcess, InThread, OffLoop, Tool, ToolCall, ToolSet, WatchedOnLoop, bfcl_toolset
from tests.moa_stream.worker_tools import write_later

GUARD_S = 60  # bounds every wait, so a broken runner fails instead of hanging


def held_mkdir(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event, list[Any]]:
    """BFCL's GorillaFileSystem.mkdir made to wait for `release`; `finished` is set once it has run."""
    from bfcl_eval.eval_checker.multi_turn_eval.func_source_code.gorilla_file_system import GorillaFileSystem

    release, finished, seen = threading.Event(), threading.Event(), []
    real = GorillaFileSystem.mkdir

    def mkdir(self: Any, dir_name: str) -> Any:
        seen.append(self)
        release.wait(GUARD_S)
        try:
            return real(self, dir_name)
        finally:
            finished.set()

    monkeypatch.setattr(GorillaFileSystem, "mkdir", mkdir)
    return release, finished, seen


def listing(fs: Any) -> list[str]:
    return list(fs.ls()["current_directory_content"])


async def test_a_timed_out_bfcl_call_never_changes_the_instances(monkeypatch: pytest.MonkeyPatch) -> None:
    tools = bfcl_toolset(["GorillaFileSystem"], timeout=0.2)
    live = tools.get("mkdir").fn.state.objects["GorillaFileSystem"]
    release, finished, seen = held_mkdir(monkeypatch)

    result = await tools.run(ToolCall("1", "mkdir", {"dir_name": "late"}))
    assert result.error is not None and "timed out after 0.2 s" in result.error
    release.set()
    assert await asyncio.to_thread(finished.wait, GUARD_S), "the held call went on to its end"
    assert seen[0] is not live and "late" in listing(seen[0]), "the late call did its work, on its own copy"
    assert "late" not in listing(live), "a call that timed out changed the live instance"

    finished.clear()
    ok = await tools.run(ToolCall("2", "mkdir", {"dir_name": "on_time"}))
    assert ok.ok and "on_time" in listing(live), "a call that returns in time is committed"
    assert (await tools.run(ToolCall("3", "ls", {}))).result.count("on_time") == 1


async def test_without_the_copy_the_late_call_lands(monkeypatch: pytest.MonkeyPatch) -> None:
    """The negative control: the same call on a thread (the old way) changes the instance after its timeout."""
    tools = bfcl_toolset(["GorillaFileSystem"], timeout=0.2)
    mkdir = tools.get("mkdir")
    threaded = ToolSet([Tool(mkdir.name, mkdir.description, mkdir.parameters, mkdir.fn, runner=InThread())],
                       timeout=0.2)
    live = mkdir.fn.state.objects["GorillaFileSystem"]
    release, finished, _ = held_mkdir(monkeypatch)
    result = await threaded.run(ToolCall("1", "mkdir", {"dir_name": "late"}))
    assert result.error is not None and "timed out" in result.error
    release.set()
    assert await asyncio.to_thread(finished.wait, GUARD_S)
    assert "late" in listing(live)


async def test_a_timed_out_worker_process_is_gone_before_the_result(tmp_path: Path) -> None:
    tools = ToolSet([replace(Tool.from_function(write_later), runner=InProcess())], timeout=5.0)
    path = tmp_path / "effect"
    result = await tools.run(ToolCall("1", "write_later", {"path": str(path), "delay_s": 120}))
    assert result.error is not None and "timed out after 5 s" in result.error
    pid = int((tmp_path / "effect.pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the worker is gone (killed and reaped) before the error came back: it can never write
    assert not path.exists()

    done = await tools.run(ToolCall("2", "write_later", {"path": str(tmp_path / "now"), "delay_s": 0}))
    assert done.ok and done.result == "written" and (tmp_path / "now").read_text() == "late"


def blocking_tool(release: threading.Event, finished: threading.Event, first_sleep_s: float = 0.0) -> Any:
    calls = [0]

    async def blocking() -> str:
        """Blocks the thread it runs on (as time.sleep would): its first call for a while, later ones until
        released."""
        calls[0] += 1
        if calls[0] == 1 and first_sleep_s:
            time.sleep(first_sleep_s)
            return "first"
        release.wait(GUARD_S)
        finished.set()
        return "late"

    return blocking


async def test_an_async_tool_declared_blocking_times_out_without_stalling_the_loop() -> None:
    release, finished = threading.Event(), threading.Event()
    fn = blocking_tool(release, finished)
    tools = ToolSet([Tool("blocking", "Blocks.", {"type": "object", "properties": {}}, fn, runner=OffLoop())],
                    timeout=0.3)
    result = await asyncio.wait_for(tools.run(ToolCall("1", "blocking", {})), GUARD_S)
    # The error came back while the tool still blocks: our loop was free to run the timeout.
    assert result.error is not None and "timed out after 0.3 s" in result.error and not release.is_set()
    release.set()
    assert await asyncio.to_thread(finished.wait, GUARD_S)


async def test_an_async_tool_seen_blocking_the_loop_runs_off_it_from_then_on(caplog: pytest.LogCaptureFixture) -> None:
    release, finished = threading.Event(), threading.Event()
    tool = Tool.from_function(blocking_tool(release, finished, first_sleep_s=0.4), name="blocking")
    assert isinstance(tool.runner, WatchedOnLoop) and not tool.runner.blocks
    tools = ToolSet([tool], timeout=5.0)
    first = await tools.run(ToolCall("1", "blocking", {}))
    assert first.result == "first" and tool.runner.blocks, "the 0.4 s without an await was seen"
    assert "held the event loop for 0.4" in caplog.text
    tools.timeout = 0.3
    result = await asyncio.wait_for(tools.run(ToolCall("2", "blocking", {})), GUARD_S)
    assert result.error is not None and "timed out after 0.3 s" in result.error and not release.is_set()
    release.set()
    assert await asyncio.to_thread(finished.wait, GUARD_S)


async def test_an_async_tool_that_awaits_is_left_on_the_loop() -> None:
    """A tool that uses the agent's loop (an Event made here) keeps working there: it is not moved."""
    ready = asyncio.Event()

    async def waits_for_the_loop() -> str:
        """Awaits an event of the caller's loop."""
        await ready.wait()
        return "woken"

    tool = Tool.from_function(waits_for_the_loop)
    asyncio.get_running_loop().call_soon(ready.set)
    assert (await ToolSet([tool], timeout=5.0).run(ToolCall("1", tool.name, {}))).result == "woken"
    assert isinstance(tool.runner, WatchedOnLoop) and not tool.runner.blocks
