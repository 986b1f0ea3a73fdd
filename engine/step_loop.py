"""The engine loop, which survives its own faults: a stage that raises fails only the work it was on.

Whatever a stage raises (schedule, refuse, sample, a forward pass, emit, the intake of a step's results) fails
only the work of the sequences that stage was working on, with a typed `StepFailedError` (or the stage's own
`EngineError`), and the loop goes on. Stages that work on many sequences at once blame a fault on the one whose
part raised it: the schedulers run each sequence's part under `blamed_on(s)`, `_update` walks a step's chunks
with `_chunks(step)`. A forward pass that fails for a batch of several sequences is run again one sequence at a
time, so a fault that one sequence causes fails it alone. Both local engines run this one loop (LocalEngine).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from .errors import EngineError, StepFailedError

log = logging.getLogger(__name__)


class SequenceFault(Exception):
    """A loop stage raised `cause` while working on `seq` (an engine-internal signal, never seen by callers)."""

    def __init__(self, seq: Any, cause: Exception) -> None:
        super().__init__(f"sequence {seq.id}: {type(cause).__name__}: {cause}")
        self.seq = seq
        self.cause = cause


@contextmanager
def blamed_on(seq: Any) -> Iterator[None]:
    """Run one sequence's part of a stage: what it raises becomes a SequenceFault naming `seq`."""
    try:
        yield
    except SequenceFault:
        raise
    except Exception as exc:
        raise SequenceFault(seq, exc) from exc


class StepLoop:
    """The loop task both local engines run (LocalEngine's base); the engines provide the stages."""

    _table: Any
    _kv: Any
    id: int
    _wake: asyncio.Event | None = None
    _step_done: asyncio.Event | None = None
    _forward_steps = 0
    _wake_at: float | None = None  # when work waiting for pins is due (see Scheduler.schedule)
    _taking_in: Any = None  # the chunk of a step's results being taken in (a fault there is blamed on it)
    _yield_between_steps = False  # let calls waiting to edit KV between steps run before the next one

    _scheduler: Any  # the subclass's Scheduler: `schedule()` -> a step with `chunks` and `unfit`

    async def _forward(self, step: Any) -> Any:
        """Compute the step (on the worker thread); what `_update` takes in."""
        raise NotImplementedError

    def _update(self, step: Any, output: Any) -> None:
        """Take in a finished step's results, iterating its chunks with `_chunks(step)`."""
        raise NotImplementedError

    def _fail_step(self, step: Any, exc: Exception) -> None:
        """Fail the work of a step whose forward pass raised."""
        raise NotImplementedError

    def _sample_ready(self) -> None:
        """Sample the first token of generations whose logits are stored already (no forward needed)."""
        raise NotImplementedError

    def _begin_step(self, step: Any) -> None:
        """Mark the step's sequences as in flight (a hook)."""

    def _end_step(self, step: Any) -> None:
        """Undo `_begin_step` once the step is over, whatever happened (a hook)."""

    def _drop_uncomputed_kv(self, s: Any) -> None:
        """Drop KV a failed stage may have written or reserved past the sequence's computed tokens (a hook)."""

    def _undo_forward(self, step: Any) -> None:
        """Drop whatever KV a failed forward pass may have written, before its chunks run again (a hook)."""

    def _output_after(self, step: Any, output: Any, i: int) -> Any:
        """The part of a step's output that belongs to its chunks from the i-th on (outputs keyed by sequence:
        all of it)."""
        return output

    async def _loop(self) -> None:
        assert self._wake is not None and self._step_done is not None
        while True:
            await self._sleep()
            while (step := self._next_step()) is not None:
                await self._run_step(step)
                if self._yield_between_steps:
                    await asyncio.sleep(0)

    async def _sleep(self) -> None:
        """Wait to be woken (a call that brings work), or until the time work waiting for pins is due."""
        assert self._wake is not None
        if self._wake_at is None:
            await self._wake.wait()
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, self._wake_at - time.monotonic()))
        self._wake.clear()

    def _next_step(self) -> Any | None:
        """The next step with work (None: nothing to do until woken), after sampling what stored logits allow and
        refusing work that can never fit; a stage's fault fails the work it was on and the next step is sought."""
        while True:
            try:
                self._sample_ready()
            except Exception as exc:
                self._fail_work(self._starting(), "sample", exc)
            try:
                step = self._scheduler.schedule()
            except SequenceFault as fault:
                self._fail_work([fault.seq], "schedule", fault.cause)
                continue
            except Exception as exc:  # not one sequence's: every sequence waiting to be scheduled
                if not self._fail_work([s for s in self._table if s.wants_compute], "schedule", exc):
                    return None  # nobody waits: stop until the next call wakes the loop, never spin
                continue
            self._wake_at = step.wake_at
            if step.unfit is not None:
                unfit = step.unfit
                try:
                    self._refuse(unfit)
                except Exception as exc:
                    self._fail_work([unfit], "refuse", exc)
                continue
            return step if step.chunks else None

    async def _run_step(self, step: Any) -> None:
        assert self._step_done is not None
        self._begin_step(step)
        try:
            try:
                output = await self._forward(step)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("forward step failed")
                await self._isolate(step, exc)
            else:
                self._forward_steps += 1
                self._take_in(step, output)
        finally:
            self._end_step(step)
            self._step_done.set()

    async def _isolate(self, step: Any, exc: Exception) -> None:
        """After a batch's forward failed: run each chunk alone, so only the chunks that fail alone fail."""
        if len(step.chunks) > 1:
            try:
                self._undo_forward(step)
            except Exception:
                log.exception("could not undo a failed forward step")
            else:
                for c in step.chunks:
                    alone = replace(step, chunks=[c])
                    try:
                        output = await self._forward(alone)
                    except asyncio.CancelledError:
                        raise
                    except Exception as solo_exc:
                        self._fail_forward(alone, solo_exc)
                    else:
                        self._forward_steps += 1
                        self._take_in(alone, output)
                return
        self._fail_forward(step, exc)

    def _fail_forward(self, step: Any, exc: Exception) -> None:
        err = exc if isinstance(exc, EngineError) else StepFailedError(
            f"the forward pass failed: {type(exc).__name__}: {exc}; the engine goes on, retry the request")
        try:
            self._fail_step(step, err)
        except Exception:
            log.exception("failing a step's work failed")
            self._fail_work([c.seq for c in step.chunks], "forward", exc)

    def _take_in(self, step: Any, output: Any) -> None:
        """`_update` the step; a fault while taking in one chunk fails that chunk's sequence, the rest go on."""
        while step.chunks:
            self._taking_in = None
            try:
                self._update(step, output)
                return
            except Exception as exc:
                c = self._taking_in
                if c is None:  # outside any chunk: every sequence of the step
                    self._fail_work([x.seq for x in step.chunks], "update", exc)
                    return
                self._fail_work([c.seq], "update", exc)
                i = next(j for j, x in enumerate(step.chunks) if x is c) + 1
                step, output = replace(step, chunks=step.chunks[i:]), self._output_after(step, output, i)
            finally:
                self._taking_in = None

    def _chunks(self, step: Any) -> Iterator[Any]:
        """The step's chunks for `_update`, marking the one being taken in."""
        for c in step.chunks:
            self._taking_in = c
            yield c
        self._taking_in = None

    def _starting(self) -> list[Any]:
        """Sequences whose generation waits for its first token from stored logits."""
        return [s for s in self._table
                if s.generation is not None and not s.generation.produced and not s.pending]

    def _fail_work(self, seqs: Iterable[Any], stage: str, cause: Exception) -> int:
        """Fail the work waiting on `seqs` (their waiters and generation) after `stage` raised `cause`; tokens
        nobody will compute now are dropped. Returns how much work failed."""
        log.error("engine %d: the %s stage failed: %r", self.id, stage, cause, exc_info=cause)
        failed = 0
        for s in seqs:
            err = cause if isinstance(cause, EngineError) else StepFailedError(
                f"the engine's {stage} stage failed on sequence {s.id}: {type(cause).__name__}: {cause}; the engine "
                "goes on (this is a bug: please report it), retry the request")
            rollback = min((w.rollback_to for w in s.waiters), default=len(s.tokens))
            failed += len(s.waiters) + (s.generation is not None)
            self._fail_waiters(s, err)
            if s.generation is not None:
                s.generation.queue.put_nowait(err)
                s.generation = None
            try:
                del s.tokens[max(rollback, s.num_computed):]
                self._drop_uncomputed_kv(s)
                self._forget_uncomputed(s)
                self._kv.touch(s)
            except Exception:  # the callers know already; the sequence keeps what it had
                log.exception("cleaning up sequence %d after a failed %s stage failed", s.id, stage)
        return failed
