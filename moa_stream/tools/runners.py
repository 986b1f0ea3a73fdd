"""Where a tool call runs, and what is left of it once its timeout has passed: one class per way.

A timed-out call must not change the agent's state afterwards. A thread cannot be stopped, so each way
answers that differently:
- `OnStateCopy`: a sync call whose effects are all on known objects (BFCL's instances: a `ToolState`) runs on a
  deep copy of them, committed only if it returned in time; a late call changes only its discarded copy.
- `InProcess`: a sync call in a worker process, killed at the timeout: nothing it started goes on.
- `OffLoop`: an async call on its own event loop in a worker thread, so one that blocks (a `time.sleep` in an
  async tool) cannot stall the agent's loop; at the timeout its task is cancelled. `WatchedOnLoop`, the
  default for async tools, runs them on the agent's loop (they may use its objects: the engine) and moves a
  tool seen to block it there for good.
- `InThread`: a sync call on a daemon thread; for pure tools (no effects to undo) and tools that declare none.
`runner_for(tool)` picks the default; a tool may name its own (`Tool(..., runner=InProcess())`).
"""

from __future__ import annotations

import asyncio
import copy
import functools
import inspect
import logging
import multiprocessing
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

log = logging.getLogger(__name__)


def in_daemon_thread(fn: Callable[..., Any], kwargs: dict[str, Any]) -> asyncio.Future[Any]:
    """Run a blocking call on its own daemon thread: a call that never returns cannot keep the process alive."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[Any] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if not fut.done():  # it may have timed out (cancelled) already
            (fut.set_result if ok else fut.set_exception)(value)

    def target() -> None:
        try:
            value, ok = fn(**kwargs), True
        except BaseException as e:
            value, ok = e, False
        try:
            loop.call_soon_threadsafe(settle, ok, value)
        except RuntimeError:  # the loop closed while the call ran
            pass

    threading.Thread(target=target, name="moa-stream-tool", daemon=True).start()
    return fut


class ToolState:
    """The objects a group of tools changes (e.g. one BFCL case's instances), by name.

    Calls that may change them run on a deep copy (`copy`) that `commit` writes back into the same objects
    (their identity is kept, so whoever holds them sees the change); one such call at a time.
    """

    def __init__(self, objects: dict[str, Any]) -> None:
        self.objects = objects
        self._lock: asyncio.Lock | None = None

    @property
    def lock(self) -> asyncio.Lock:
        """Serialises the calls that change the state (two copies committed in turn would lose one's change)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    def copy(self) -> dict[str, Any]:
        """A deep copy of the objects (shared parts stay shared within the copy)."""
        return copy.deepcopy(self.objects)

    def commit(self, changed: dict[str, Any]) -> None:
        """Make the objects equal to a copy a call has changed."""
        for name, obj in changed.items():
            live = self.objects.get(name)
            if live is not None and hasattr(live, "__dict__") and type(live) is type(obj):
                # Update, then drop what went: never an empty __dict__ for a pure call reading it meanwhile.
                fresh, held = vars(obj), vars(live)
                held.update(fresh)
                for gone in [k for k in held if k not in fresh]:
                    del held[gone]
            else:
                self.objects[name] = obj


class StatefulFunction:
    """A sync tool function whose every effect is on a `ToolState`: `run(objects, arguments)`.

    Called directly it works on the live objects; `OnStateCopy` runs it on a copy instead.
    """

    def __init__(self, name: str, run: Callable[[dict[str, Any], dict[str, Any]], Any], state: ToolState) -> None:
        self.__name__ = name
        self.run = run
        self.state = state

    def __call__(self, **arguments: Any) -> Any:
        return self.run(self.state.objects, arguments)


class CallRunner(ABC):
    """Runs one call of a tool's function; cancelling the awaiting task (the timeout) stops what it can."""

    @abstractmethod
    async def run(self, fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        """The function's return value (or its exception)."""


class InThread(CallRunner):
    """A sync call on a daemon thread. It cannot be stopped: past a timeout its result is ignored, but whatever it
    still does happens; right for pure tools and fast ones."""

    async def run(self, fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        """See the class docstring."""
        value = await in_daemon_thread(fn, kwargs)
        if inspect.isawaitable(value):  # a callable object whose __call__ is async
            value = await value
        return value


class OnStateCopy(CallRunner):
    """A `StatefulFunction` call on a deep copy of its state, committed only if it returned (or raised: then
    nothing is committed) before the timeout; past it, the call changes only its own discarded copy."""

    async def run(self, fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        """See the class docstring."""
        if not isinstance(fn, StatefulFunction):
            raise TypeError(f"OnStateCopy runs StatefulFunction tools, got {type(fn).__name__}")
        async with fn.state.lock:
            work = fn.state.copy()
            value = await in_daemon_thread(lambda **kw: fn.run(work, kw), kwargs)
            fn.state.commit(work)  # reached only when the call returned in time: a timeout cancelled the await
            return value


class OffLoop(CallRunner):
    """An async call on a fresh event loop in a daemon thread: blocking there cannot stall the caller's loop.

    At the timeout its task is cancelled (it stops at its next await). It must not use objects bound to the
    caller's loop; a tool that does declares `OnLoop()`.
    """

    async def run(self, fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        """See the class docstring."""
        other = asyncio.new_event_loop()

        def serve() -> None:
            try:
                other.run_forever()
            finally:
                other.close()

        threading.Thread(target=serve, name="moa-stream-tool-loop", daemon=True).start()
        done = asyncio.run_coroutine_threadsafe(fn(**kwargs), other)
        done.add_done_callback(lambda _: other.call_soon_threadsafe(other.stop))
        try:
            return await asyncio.wrap_future(done)
        finally:
            done.cancel()  # no-op when it finished; else cancels its task in its own loop


class OnLoop(CallRunner):
    """An async call on the caller's loop (for tools that use its objects: the engine, a client session); one
    that blocks between its awaits blocks the agent too."""

    async def run(self, fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        """See the class docstring."""
        return await fn(**kwargs)


class _StepTimer:
    """Awaits a coroutine on the running loop, timing each stretch it runs between two awaits."""

    def __init__(self, coro: Any) -> None:
        self.coro = coro
        self.longest = 0.0

    def __await__(self) -> Any:
        steps = self.coro.__await__()
        sent: Any = None
        thrown: BaseException | None = None
        while True:
            t0 = time.perf_counter()
            try:
                waiting = steps.throw(thrown) if thrown is not None else steps.send(sent)
            except StopIteration as stop:
                return stop.value
            finally:
                self.longest = max(self.longest, time.perf_counter() - t0)
            try:
                sent, thrown = (yield waiting), None
            except BaseException as e:  # cancellation (the timeout) goes on into the coroutine
                sent, thrown = None, e


class WatchedOnLoop(CallRunner):
    """The default for async tools: on the caller's loop (so tools may use its objects), watched. A call that
    held the loop longer than `block_limit_s` between two awaits (a `time.sleep` in an async tool) is logged,
    and the tool's later calls run off the loop (OffLoop), where blocking stalls only them."""

    def __init__(self, block_limit_s: float = 0.25) -> None:
        self.block_limit_s = block_limit_s
        self.blocks = False  # seen to block: run off the loop from now on

    async def run(self, fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        """See the class docstring."""
        if self.blocks:
            return await OffLoop().run(fn, kwargs)
        timer = _StepTimer(fn(**kwargs))
        try:
            return await timer
        finally:
            if timer.longest > self.block_limit_s:
                self.blocks = True
                log.warning("async tool %s held the event loop for %.2f s without awaiting; its next calls run "
                            "off the loop (give the tool runner=OffLoop() to start there, or OnLoop() to stay)",
                            getattr(fn, "__name__", fn), timer.longest)


class InProcess(CallRunner):
    """A sync call in a worker process, killed at the timeout: nothing it started goes on.

    The function and its arguments and result must pickle (a module-level function); what it changes in memory
    stays in the worker, so this suits tools whose effects are outside the process (files, services). Each call
    gets a fresh worker from a forkserver (POSIX; spawn elsewhere) that imports only the function's module.
    """

    def __init__(self) -> None:
        if "forkserver" in multiprocessing.get_all_start_methods():
            self._ctx = multiprocessing.get_context("forkserver")
            # The default preloads __main__ into the server: a script would run again, and this one imports torch.
            self._ctx.set_forkserver_preload([])
        else:  # pragma: no cover - Windows
            self._ctx = multiprocessing.get_context("spawn")

    async def run(self, fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        """See the class docstring."""
        pool = ProcessPoolExecutor(max_workers=1, mp_context=self._ctx)  # type: ignore[arg-type]
        try:
            return await asyncio.wrap_future(pool.submit(functools.partial(fn, **kwargs)))
        except BrokenProcessPool:
            raise RuntimeError("the tool's worker process died") from None
        finally:
            workers = list(getattr(pool, "_processes", {}).values())  # the stdlib keeps them private
            for w in workers:
                if w.is_alive():
                    w.kill()
            pool.shutdown(wait=False, cancel_futures=True)
            for w in workers:  # gone before the caller learns of the timeout: it can never act later
                await asyncio.to_thread(w.join)


def runner_for(fn: Callable[..., Any] | None, is_async: bool, pure: bool) -> CallRunner:
    """The default way to run a tool: async on the loop, watched (off it once seen to block); a stateful sync one
    that may change its state on a copy; any other sync one on a thread."""
    if is_async:
        return WatchedOnLoop()
    if isinstance(fn, StatefulFunction) and not pure:
        return OnStateCopy()
    return InThread()
