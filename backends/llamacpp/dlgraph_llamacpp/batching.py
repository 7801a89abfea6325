"""Continuous batching: concurrent calls decoded together, one llama_decode per step.

Each call becomes a job. Between steps, on the event loop, the scheduler admits waiting jobs
(highest priority first, then arrival) while their cells fit the KV cache, gives each a
sequence of the unified cache, and lets it share the longest prefix a live sequence already
evaluated (`seq_cp` shares the cells: nothing is computed again). It then plans one batch:
every generating job's next token first, then chunks of prompts, within `n_batch` tokens and
`n_outputs_max` logit rows. The decode, and everything that reads logits (sampling,
log-probabilities), runs in one worker thread, so the event loop never blocks; the results
come back to the loop, where finished jobs wake their callers and leave their sequence behind
as a cached prefix for later jobs.

Log-probabilities read logits at target positions only. A row is kept (`rows`) by the tokens
it follows, so a second target after one context (another class verbalizer) is answered from
the kept row, and a job that needs a row another job is computing waits for it.

With `deterministic`, each step decodes one job alone from its first token: no job's numbers
depend on its companions or on timing, at the speed of one call at a time.
"""

from __future__ import annotations

import itertools
import logging
from collections import OrderedDict
from collections.abc import Sequence

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread
import attrs
import numpy as np

import dlgraph as dg
from dlgraph_llamacpp.native import NativeContext, NativeModel
from dlgraph_llamacpp.sampling import Sampler, log_normaliser
from dlgraph_llamacpp.threads import CoreWatch

logger = logging.getLogger(__name__)

MIN_SHARED = 8
"""A shared prefix shorter than this is evaluated again rather than shared."""
WINDOW = 64
"""Waiting jobs that may hold back for a prefix another job is evaluating."""
CACHED_SHARE = 0.25
"""Cached prefixes may hold at most this share of the KV cells: every cell in use lengthens
every token's attention."""
KEPT_ROWS = 64
"""Log-probability rows kept for later targets after the same tokens (1 MB each)."""


@attrs.define(eq=False)
class Job:
    """One call inside the scheduler."""

    tokens: list[int]
    priority: int
    order: int
    done: anyio.Event = attrs.field(factory=anyio.Event)
    sequence: int | None = None
    evaluated: int = 0
    """Tokens of `tokens` already in the KV cache."""
    error: BaseException | None = None
    cancelled: bool = False
    prefix: np.ndarray = attrs.field(init=False, repr=False)
    """The tokens other sequences may share with this one, as an array for fast matching."""

    def __attrs_post_init__(self) -> None:
        self.prefix = np.asarray(self.tokens[: self.first_output], dtype=np.int64)

    @property
    def first_output(self) -> int:
        """The first position whose logits this job needs; cells before it may be shared."""
        raise NotImplementedError

    @property
    def demand(self) -> int:
        """Cells this job may occupy at most."""
        raise NotImplementedError

    @property
    def end(self) -> int:
        """How many of `tokens` must be evaluated."""
        raise NotImplementedError

    def wants(self, position: int) -> bool:
        raise NotImplementedError

    def read(self, row: np.ndarray, position: int) -> object:
        """In the worker thread: what this job takes from the logits at `position`."""
        raise NotImplementedError


@attrs.define(eq=False)
class GenerateJob(Job):
    prompt_length: int = 0
    max_tokens: int = 1
    stop: tuple[str, ...] = ()
    sampler: Sampler = attrs.field(factory=lambda: Sampler(0.0, 0))
    generated: int = 0
    text: bytearray = attrs.field(factory=bytearray)
    result: str = ""

    @property
    def first_output(self) -> int:
        return self.prompt_length - 1

    @property
    def demand(self) -> int:
        return self.prompt_length + self.max_tokens

    @property
    def end(self) -> int:
        return len(self.tokens)

    def wants(self, position: int) -> bool:
        return position == len(self.tokens) - 1

    def read(self, row: np.ndarray, position: int) -> object:
        return self.sampler(row)


@attrs.define(eq=False)
class LogprobJob(Job):
    context_length: int = 1
    values: dict[int, float] = attrs.field(factory=dict)

    @property
    def first_output(self) -> int:
        return self.context_length - 1

    @property
    def demand(self) -> int:
        return len(self.tokens)

    @property
    def end(self) -> int:
        return len(self.tokens) - 1  # the last target token's logits are never read

    def wants(self, position: int) -> bool:
        return self.context_length - 1 <= position < len(self.tokens) - 1

    def read(self, row: np.ndarray, position: int) -> object:
        """The whole row as log-probabilities where the context ends (kept: another target
        after this context reads it there); beyond it, only this target token's value."""
        normaliser = log_normaliser(row)
        if position == self.context_length - 1:
            return row - np.float32(normaliser)
        return float(row[self.tokens[position + 1]]) - normaliser

    def positions(self) -> range:
        return range(self.context_length - 1, len(self.tokens) - 1)


@attrs.frozen
class Step:
    """One decode: cache edits first, then each job's tokens[start:end]."""

    removals: tuple[int, ...]
    copies: tuple[tuple[int, int, int], ...]
    entries: tuple[tuple[Job, int, int], ...]
    threads: int


@attrs.frozen
class Statistics:
    decodes: int
    evaluated_tokens: int
    shared_tokens: int
    """Prompt tokens a job took from another sequence's cells instead of evaluating them."""
    kept_row_hits: int
    running: int
    waiting: int
    threads: int


@attrs.define(eq=False)
class Scheduler:
    """Runs jobs on one context; `serve` must run in a task group while jobs are submitted."""

    model: NativeModel
    context: NativeContext
    parallel: int
    deterministic: bool = False
    watch: CoreWatch | None = None
    _waiting: list[Job] = attrs.field(factory=list, init=False)
    _running: list[Job] = attrs.field(factory=list, init=False)
    _free: list[int] = attrs.field(init=False)
    _cached: OrderedDict[int, list[int]] = attrs.field(factory=OrderedDict, init=False)
    _removals: list[int] = attrs.field(factory=list, init=False)
    _rows: OrderedDict[tuple[int, ...], np.ndarray] = attrs.field(factory=OrderedDict, init=False)
    _computing: dict[tuple[int, ...], anyio.Event] = attrs.field(factory=dict, init=False)
    _wake: anyio.Event = attrs.field(factory=anyio.Event, init=False)
    _order: itertools.count[int] = attrs.field(factory=itertools.count, init=False)
    _thread: anyio.CapacityLimiter = attrs.field(
        factory=lambda: anyio.CapacityLimiter(1), init=False
    )
    _counts: dict[str, int] = attrs.field(
        factory=lambda: dict.fromkeys(
            ("decodes", "evaluated_tokens", "shared_tokens", "kept_row_hits"), 0
        ),
        init=False,
    )

    def __attrs_post_init__(self) -> None:
        self._free = list(range(self.context.settings.n_seq_max))[::-1]

    @property
    def _prefill_room(self) -> int:
        return self.context.settings.n_batch

    # -- callers -------------------------------------------------------------------------------

    async def generate(
        self,
        prompt: list[int],
        *,
        max_tokens: int,
        temperature: float,
        seed: int,
        stop: Sequence[str],
        priority: int,
    ) -> str:
        job = GenerateJob(
            list(prompt),
            priority,
            next(self._order),
            prompt_length=len(prompt),
            max_tokens=max_tokens,
            stop=tuple(stop),
            sampler=Sampler(temperature, seed),
        )
        await self._run(job)
        return job.result

    async def logprob(self, context: list[int], target: list[int], *, priority: int) -> float:
        job = LogprobJob(context + target, priority, next(self._order), context_length=len(context))
        key = tuple(context)
        while len(target) == 1:  # one row answers it: a kept one, or one another call computes
            row = self._rows.get(key)
            if row is not None:
                self._counts["kept_row_hits"] += 1
                return float(row[target[0]])
            computing = self._computing.get(key)
            if computing is None:
                break
            await computing.wait()
        owned = key not in self._computing
        if owned:
            self._computing[key] = anyio.Event()
        try:
            await self._run(job)
        finally:
            if owned:  # waiters for this row look again, whatever happened here
                self._computing.pop(key).set()
        return sum(job.values.values())

    async def _run(self, job: Job) -> None:
        self._waiting.append(job)
        self._wake.set()
        try:
            await job.done.wait()
        except BaseException:
            job.cancelled = True  # its sequence is freed before the next decode
            self._wake.set()
            raise
        if job.error is not None:
            raise job.error

    def statistics(self) -> Statistics:
        return Statistics(
            **self._counts,
            running=len(self._running),
            waiting=len(self._waiting),
            threads=self.context.threads,
        )

    # -- the loop ------------------------------------------------------------------------------

    async def serve(self) -> None:
        while True:
            if not (self._waiting or self._running):
                self._wake = anyio.Event()
                await self._wake.wait()
                await anyio.lowlevel.checkpoint()  # let a burst of calls land in one batch
            step = self._plan()
            if step is None:
                self._wake = anyio.Event()
                await self._wake.wait()
                continue
            status, outputs = await anyio.to_thread.run_sync(
                self._execute, step, limiter=self._thread
            )
            self._apply(step, status, outputs)

    def _plan(self) -> Step | None:
        self._drop_cancelled()
        copies = self._admit()
        entries = self._batch()
        if not entries and not self._removals and not copies:
            return None
        threads = self.watch.update() if self.watch else self.context.threads
        removals, self._removals = tuple(self._removals), []
        return Step(removals, tuple(copies), tuple(entries), threads)

    def _drop_cancelled(self) -> None:
        for job in [j for j in self._waiting if j.cancelled]:
            self._waiting.remove(job)
        for job in [j for j in self._running if j.cancelled]:
            self._running.remove(job)
            self._release(job, keep=False)

    def _admit(self) -> list[tuple[int, int, int]]:
        """Give waiting jobs sequences while cells and sequences last, and plan prefix shares.

        A job whose prefix a running job is about to evaluate waits for it (prefill costs the
        same batched or not, so evaluating a prefix twice is the one waste to avoid); the
        others go in priority order while the prompt tokens still to evaluate fit one batch.
        Every token attends to every cell in use, so prompts are best evaluated a batch at a
        time, by few sequences, while many sequences decode side by side.
        """
        copies: list[tuple[int, int, int]] = []
        sources: set[int] = set()
        limit = 1 if self.deterministic else self.parallel
        self._waiting.sort(key=lambda job: (-job.priority, job.order))
        budget = self.context.settings.n_ctx - sum(job.demand for job in self._running)
        deferred: list[Job] = []
        prefill = sum(
            job.end - job.evaluated for job in self._running if job.end - job.evaluated > 1
        )
        while self._waiting and len(self._running) < limit and prefill < self._prefill_room:
            job = self._waiting.pop(0)
            source, shared, ready = (-1, 0, True)
            if not self.deterministic:
                source, shared, ready = self._longest_prefix(job)
            if not ready:
                if len(deferred) >= WINDOW:
                    self._waiting.insert(0, job)
                    break
                deferred.append(job)  # its prefix will be in the cache in a step or two
                continue
            if job.demand > budget and self._running:
                self._waiting.insert(0, job)
                break
            sequence = self._sequence(keep=sources)
            if sequence is None:
                self._waiting.insert(0, job)
                break
            job.sequence, job.evaluated = sequence, 0
            if ready and shared >= MIN_SHARED:
                copies.append((source, sequence, shared))
                sources.add(source)
                job.evaluated = shared
                self._counts["shared_tokens"] += shared
                if source in self._cached:
                    self._cached.move_to_end(source)
            self._running.append(job)
            budget -= job.demand
            prefill += job.end - job.evaluated
        self._waiting[:0] = deferred
        return copies

    def _sequence(self, keep: set[int]) -> int | None:
        """A free sequence id, evicting the least recently cached prefix not in `keep` (a
        source of this step's copies) when none is free."""
        if not self._free:
            evictable = [sequence for sequence in self._cached if sequence not in keep]
            if evictable:
                self._evict(evictable[0])
        return self._free.pop() if self._free else None

    def _evict(self, sequence: int) -> None:
        del self._cached[sequence]
        self._removals.append(sequence)
        self._free.append(sequence)

    def _longest_prefix(self, job: Job) -> tuple[int, int, bool]:
        """(sequence, shared tokens, ready): the live sequence sharing the most leading tokens
        with `job`, up to the first position whose logits the job computes itself. Not ready:
        a running job will have evaluated more of that prefix after a step or two."""
        wanted = job.prefix
        best, best_shared, best_ready = -1, 0, True
        sources = [(j.sequence, j.prefix, j.evaluated) for j in self._running]
        sources += [(s, np.asarray(tokens), len(tokens)) for s, tokens in self._cached.items()]
        for sequence, tokens, evaluated in sources:
            if sequence is None or sequence in self._removals:
                continue
            length = min(len(tokens), len(wanted))
            if length <= best_shared:
                continue
            same = tokens[:length] == wanted[:length]
            shared = length if same.all() else int(np.argmin(same))
            if shared > best_shared:
                best, best_shared = sequence, shared
                best_ready = evaluated >= shared or shared - evaluated < MIN_SHARED
                best_shared = min(shared, evaluated) if best_ready else shared
        return best, best_shared, best_ready

    def _batch(self) -> list[tuple[Job, int, int]]:
        """Each running job's next tokens: decoding ones first, then prompt chunks."""
        room = self.context.settings.n_batch
        rows = self.context.settings.n_outputs_max
        entries = []
        ordered = sorted(self._running, key=lambda job: job.end - job.evaluated > 1)
        for job in ordered:
            start = job.evaluated
            end = min(job.end, start + room)
            while end > start and sum(job.wants(p) for p in range(start, end)) > rows:
                end -= 1
            if end <= start:
                break
            entries.append((job, start, end))
            room -= end - start
            rows -= sum(job.wants(p) for p in range(start, end))
            if self.deterministic:
                break
        return entries

    def _execute(self, step: Step) -> tuple[int, list[tuple[Job, int, object]]]:
        """In the worker thread: cache edits, one decode, and what each job reads from it."""
        context = self.context
        context.set_threads(step.threads)
        for sequence in step.removals:
            context.remove(sequence)
        for source, target, length in step.copies:
            context.copy(source, target, length)
        tokens: list[tuple[int, int, int, bool]] = []
        wanted: list[tuple[int, Job, int]] = []
        for job, start, end in step.entries:
            assert job.sequence is not None
            for position in range(start, end):
                wants = job.wants(position)
                if wants:
                    wanted.append((len(tokens), job, position))
                tokens.append((job.tokens[position], position, job.sequence, wants))
        if not tokens:
            return 0, []
        status = context.decode(tokens)
        if status != 0:
            return status, []
        return 0, [(job, p, job.read(context.logits(index), p)) for index, job, p in wanted]

    def _apply(self, step: Step, status: int, outputs: list[tuple[Job, int, object]]) -> None:
        if status == 1:
            self._make_room()
            return
        if status != 0:
            error = dg.BackendError(f"llama.cpp decode failed with status {status}")
            for job, _, _ in step.entries:
                self._finish(job, error=error)
            return
        self._counts["decodes"] += bool(step.entries)
        for job, start, end in step.entries:
            job.evaluated = end
            self._counts["evaluated_tokens"] += end - start
        for job, position, value in outputs:
            if job.cancelled or job.done.is_set():
                continue
            if isinstance(job, GenerateJob):
                self._next_token(job, int(value))  # type: ignore[call-overload]
            elif isinstance(job, LogprobJob):
                self._take_row(job, position, value)  # type: ignore[arg-type]

    def _make_room(self) -> None:
        """The cache had no room for the batch: free a cached prefix, else send the newest
        job back to wait (it starts again from its first token)."""
        if self._cached:
            self._evict(next(iter(self._cached)))
            return
        job = max(self._running, key=lambda j: j.order)
        self._running.remove(job)
        self._release(job, keep=False)
        job.evaluated = 0
        self._waiting.append(job)

    def _next_token(self, job: GenerateJob, token: int) -> None:
        job.generated += 1
        if self.model.is_end(token):
            self._finish(job)
            return
        job.text += self.model.piece(token)
        text = job.text.decode("utf-8", errors="ignore")
        cut = min((text.index(s) for s in job.stop if s in text), default=None)
        if cut is not None:
            job.result = text[:cut]
            self._finish(job, cut=True)
        elif job.generated >= job.max_tokens:
            self._finish(job)
        else:
            job.tokens.append(token)

    def _take_row(self, job: LogprobJob, position: int, value: np.ndarray | float) -> None:
        if isinstance(value, np.ndarray):
            key = tuple(job.tokens[: position + 1])
            self._rows[key] = value
            self._rows.move_to_end(key)
            while len(self._rows) > KEPT_ROWS:
                self._rows.popitem(last=False)
            event = self._computing.get(key)
            if event is not None:
                event.set()
            value = float(value[job.tokens[position + 1]])
        job.values[position] = value
        if len(job.values) == len(job.positions()):
            self._finish(job)

    def _finish(self, job: Job, *, error: BaseException | None = None, cut: bool = False) -> None:
        if isinstance(job, GenerateJob) and not cut and error is None:
            job.result = job.text.decode("utf-8", errors="ignore")
        job.error = error
        if job in self._running:
            self._running.remove(job)
            self._release(job, keep=error is None)
        job.done.set()

    def _release(self, job: Job, *, keep: bool) -> None:
        """Free the job's sequence, keeping its cells as a cached prefix when worth it."""
        sequence, job.sequence = job.sequence, None
        if sequence is None:
            return
        if keep and not self.deterministic and job.evaluated >= MIN_SHARED:
            self._cached[sequence] = job.tokens[: job.evaluated]
            cap = CACHED_SHARE * self.context.settings.n_ctx
            while sum(len(tokens) for tokens in self._cached.values()) > cap:
                self._evict(next(iter(self._cached)))
        else:
            self._removals.append(sequence)
            self._free.append(sequence)
