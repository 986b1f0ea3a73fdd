"""Speculative tool calls: exact matches are taken, wrong guesses cancelled unseen, impure tools never started."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from moa_stream.tool_speculation import HistoryPredictor, PredictedCall, SpeculativeCalls


class Tools:
    """Real async tools whose completion the test controls with an event (no sleeps, no timing)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.ran: list[tuple[str, dict[str, Any]]] = []
        self.cancelled: list[str] = []

    async def run(self, name: str, arguments: Mapping[str, Any]) -> Any:
        self.ran.append((name, dict(arguments)))
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.append(name)
            raise
        if name == "fail":
            raise RuntimeError("tool failed")
        return {"sum": sum(arguments.get("numbers", []))}

    @staticmethod
    def is_pure(name: str) -> bool:
        return name != "rm"


async def test_an_exact_match_is_taken_and_the_tool_runs_once() -> None:
    tools = Tools()
    spec = SpeculativeCalls(tools.run, tools.is_pure)
    assert spec.start("add", {"numbers": [1, 2]}, "stream")
    assert not spec.start("add", {"numbers": [1, 2]}, "stream")  # already running
    tools.release.set()
    taken, result = await spec.take("add", {"numbers": [1, 2]})
    assert taken and result == {"sum": 3}
    assert len(tools.ran) == 1 and spec.stats.taken == 1 and spec.stats.alpha == 1.0


async def test_a_wrong_guess_is_cancelled_and_its_result_never_returned() -> None:
    tools = Tools()
    spec = SpeculativeCalls(tools.run, tools.is_pure)
    spec.start("add", {"numbers": [1, 2]}, "history")
    await asyncio.sleep(0)  # let the guess start running
    assert await spec.take("add", {"numbers": [1, 3]}) == (False, None)  # the model asked for another call
    assert await spec.cancel_rest() == 1
    assert tools.cancelled == ["add"] and spec.stats.cancelled == 1 and spec.stats.alpha == 0.0


async def test_impure_tools_are_never_started_and_a_failed_guess_is_not_taken() -> None:
    tools = Tools()
    spec = SpeculativeCalls(tools.run, tools.is_pure)
    assert not spec.start("rm", {"path": "x"}, "stream")
    assert tools.ran == [] and spec.stats.refused_impure == 1 and spec.stats.started == 0
    spec.start("fail", {}, "stream")
    tools.release.set()
    assert await spec.take("fail", {}) == (False, None)  # the real call runs and reports its own error


@pytest.mark.parametrize("seen", [[], [PredictedCall("cd", {"folder": "a"})]])
def test_history_predicts_the_usual_follower_else_the_usual_step(seen: list[PredictedCall]) -> None:
    history = HistoryPredictor()
    assert history.predict(seen) is None
    cd, ls, pwd = PredictedCall("cd", {"folder": "a"}), PredictedCall("ls", {}), PredictedCall("pwd", {})
    history.observe([cd, ls])
    history.observe([cd, ls])
    history.observe([pwd, pwd])
    assert history.predict(seen) == (ls if seen else cd)
    assert history.predict([PredictedCall("mkdir", {"dir_name": "b"})]) == ls  # unseen: step 1's usual call
