"""Compatible requests arriving close together go out as one multi-prompt request; a request
of several parts that the server refuses is split.

A request opens a batch (or joins the open one with the same sampling fields); the batch is
sent when it is full or when its window has passed, by a task in the engine's task group.
A waiter cancelled before its batch is sent leaves it; one cancelled later just stops waiting.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Sequence

import anyio
import anyio.abc
import attrs

from dlgraph._tasks import map_concurrently
from dlgraph.backend import GenerateRequest, LogprobRequest, Parted, Result
from dlgraph.engine.ledger import Ledger
from dlgraph.engine.stage import Batch, Call, Outcome, Work, batch_key
from dlgraph.errors import BackendError, RequestRejected


@attrs.define(eq=False)
class _Slot:
    request: GenerateRequest | LogprobRequest
    done: anyio.Event = attrs.field(factory=anyio.Event)
    result: Result | None = None
    error: BaseException | None = None


@attrs.define(eq=False)
class _OpenBatch:
    slots: list[_Slot] = attrs.field(factory=list)
    tokens: int = 0
    sent: bool = False


@attrs.define(eq=False)
class Coalescer:
    inner: Call
    task_group: anyio.abc.TaskGroup
    max_batch: int
    window_s: float
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep
    clock: Callable[[], float] = anyio.current_time
    max_tokens: int | None = None
    """A batch closes once its estimated tokens reach this (so that one request does not
    take more of a token-per-minute allowance than it can hold)."""
    count_tokens: Callable[[Work], int] = lambda work: 0
    _open: dict[Hashable, _OpenBatch] = attrs.field(factory=dict, init=False)

    async def __call__(self, work: Work) -> Outcome:
        if not isinstance(work, GenerateRequest | LogprobRequest) or self.max_batch <= 1:
            return await self.inner(work)
        key = batch_key(work)
        batch = self._open.get(key)
        if batch is None:
            batch = self._open[key] = _OpenBatch()
            self.task_group.start_soon(self._send_after_window, key, batch)
        slot = _Slot(work)
        batch.slots.append(slot)
        if self.max_tokens is not None:
            batch.tokens += self.count_tokens(work)
        full = self.max_tokens is not None and batch.tokens >= self.max_tokens
        if full or len(batch.slots) >= self.max_batch:
            self._send(key, batch)
        try:
            await slot.done.wait()
        finally:
            if not batch.sent and slot in batch.slots:
                batch.slots.remove(slot)
        if slot.error is not None:
            raise slot.error
        assert slot.result is not None
        return slot.result

    async def _send_after_window(self, key: Hashable, batch: _OpenBatch) -> None:
        await self.sleep(self.window_s)
        if not batch.sent:
            self._send(key, batch)

    def _send(self, key: Hashable, batch: _OpenBatch) -> None:
        batch.sent = True
        if self._open.get(key) is batch:
            del self._open[key]
        if batch.slots:
            self.task_group.start_soon(self._deliver, list(batch.slots))

    async def _deliver(self, slots: list[_Slot]) -> None:
        try:
            if len(slots) == 1:
                outcomes: list[object] = [await self.inner(slots[0].request)]
            else:
                batch = Batch(tuple(slot.request for slot in slots), since=self.clock())  # type: ignore[arg-type]
                result = await self.inner(batch)
                assert isinstance(result, list)
                outcomes = list(result)
        except Exception as error:  # handed to every waiter of the batch
            outcomes = [error] * len(slots)
        for slot, outcome in zip(slots, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                slot.error = outcome
            else:
                slot.result = outcome  # type: ignore[assignment]
            slot.done.set()


@attrs.define(eq=False)
class Split:
    """A request of several parts the server refuses is split, so that what the server
    takes still gets its answers.

    A multi-prompt `Batch` is halved until the refused prompt fails alone: the other prompts
    still get their answers, a half that fails for another reason fails alone, and the halves
    keep the batch's place in the limiter's queue. Several continuations or samples of one
    text (`ContinuationsRequest`, `SamplesRequest`) share that text, which is what a server
    most often refuses (too long, filtered): one part is sent alone first, and if it is
    refused too, so is the request, after two calls. If it is taken, the server refused the
    size: the rest goes in requests of at most half the refused size, and so does every
    later request of that kind (`most`), halved again while refused."""

    inner: Call
    ledger: Ledger = attrs.field(factory=Ledger, kw_only=True)
    """Told of the pieces a request is sent in, so that tracing counts them as its."""
    most: dict[type, int] = attrs.field(factory=dict)
    """By kind of request, the most parts a request is sent with, learnt from refusals."""

    async def __call__(self, work: Work) -> Outcome:
        if isinstance(work, Parted):
            return await self._parts(work)
        if not isinstance(work, Batch):
            return await self.inner(work)
        try:
            return await self.inner(work)
        except RequestRejected as error:
            if len(work.requests) == 1:
                return [error]
        middle = len(work.requests) // 2
        halves = [
            Batch(work.requests[:middle], since=work.since),
            Batch(work.requests[middle:], since=work.since),
        ]
        results: list[list[object]] = [[], []]

        async def run(index: int) -> None:
            half = halves[index]
            try:
                outcome = await self(half)
                assert isinstance(outcome, list)
                results[index] = list(outcome)
            except BackendError as error:
                results[index] = [error] * len(half.requests)

        async with anyio.create_task_group() as task_group:
            task_group.start_soon(run, 0)
            task_group.start_soon(run, 1)
        return results[0] + results[1]  # type: ignore[return-value]

    async def _parts(self, work: Parted) -> Outcome:
        size, most = work.size, self.most.get(type(work))
        if most is not None and size > most:
            return await self._in_chunks(work, most)
        try:
            return await self.inner(work)
        except RequestRejected:
            if size == 1:
                raise
        if most is None:  # nothing learnt yet: is it the text, or the size?
            first = await self._piece(work, 0, 1)  # refused too: the text, not the size
            self._learn(work, size)
            return _joined([first, await self._piece(work, 1, size)])
        self._learn(work, size)
        return await self._parts(work)

    def _learn(self, work: Parted, refused: int) -> None:
        """A request of `refused` parts was too many: at most half of them (rounded up) from
        now on, never raised again by a request sent before the last refusal."""
        kind = type(work)
        self.most[kind] = min(self.most.get(kind, refused), max(1, (refused + 1) // 2))

    async def _in_chunks(self, work: Parted, most: int) -> Outcome:
        """The request's parts in consecutive requests of at most `most`, values joined."""
        size = work.size
        starts = range(0, size, most)
        pieces = await map_concurrently(
            lambda start: self._piece(work, start, min(start + most, size)), starts
        )
        return _joined(pieces)

    async def _piece(self, work: Parted, start: int, stop: int) -> Outcome:
        """Parts `start` to `stop` of `work`, sent as a request of their own (one part as
        the request it equals: a server may refuse the several-parts form itself)."""
        piece = work.each()[start] if stop - start == 1 else work.piece(start, stop)
        with self.ledger.sent_for(work, piece):
            if isinstance(piece, Parted):
                return await self._parts(piece)
            return (await self.inner(piece),)  # type: ignore[return-value]


def _joined(outcomes: Sequence[Outcome]) -> Outcome:
    """The values of consecutive pieces of one request, as one answer."""
    joined: list[object] = []
    for outcome in outcomes:
        assert isinstance(outcome, tuple), "a request of several parts answers a tuple"
        joined.extend(outcome)
    return tuple(joined)  # type: ignore[return-value]
