"""log p(target | context) from llama.cpp logits, for the target positions only.

``create_completion(echo=True, logprobs=...)`` computes every position's full-vocabulary
log-softmax in Python (about 55 s for 134 tokens here). This module decodes with the logits
flag set only where a target token is predicted, and keeps the evaluated prefix in the KV
cache so that scoring many targets or prompts on one context re-evaluates only what changed.
Not thread-safe: one model, one caller at a time.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np


@attrs.define(eq=False)
class PrefixEvaluator:
    """Runs token sequences through a `llama_cpp.Llama`, sharing its KV cache bookkeeping."""

    llm: Any
    reused_tokens: int = 0
    """Tokens served from the KV cache instead of being evaluated (for benchmarks)."""
    evaluated_tokens: int = 0

    def common_prefix(self, tokens: Sequence[int]) -> int:
        cached = self.llm.input_ids[: self.llm.n_tokens]
        limit = min(len(cached), len(tokens))
        same = np.asarray(cached[:limit]) == np.asarray(tokens[:limit], dtype=cached.dtype)
        mismatch = np.flatnonzero(~same)
        return int(mismatch[0]) if mismatch.size else limit

    def target_logprob(self, context: Sequence[int], target: Sequence[int]) -> float:
        """Σ log p(target_j | context, target_<j), reading logits at target positions only."""
        tokens = list(context) + list(target)
        first_scored = len(context) - 1  # the logits here predict the first target token
        start = min(self.common_prefix(tokens), first_scored)
        self.reused_tokens += start
        rows = self._decode(tokens, start, first_scored)
        total = 0.0
        for offset, token in enumerate(target):
            logits = rows[offset]
            peak = float(logits.max())
            log_norm = peak + float(np.log(np.exp(logits - peak).sum()))
            total += float(logits[token]) - log_norm
        return total

    def _decode(self, tokens: list[int], start: int, first_scored: int) -> list[np.ndarray]:
        """Evaluate tokens[start:], returning logits rows for positions >= first_scored."""
        import llama_cpp

        llm = self.llm
        llm._ctx.kv_cache_seq_rm(-1, start, -1)
        llm.n_tokens = start
        n_vocab = llm.n_vocab()
        rows: list[np.ndarray] = []
        batch = llm._batch.batch
        for chunk_start in range(start, len(tokens), llm.n_batch):
            chunk = tokens[chunk_start : chunk_start + llm.n_batch]
            batch.n_tokens = len(chunk)
            for i, token in enumerate(chunk):
                position = chunk_start + i
                batch.token[i] = token
                batch.pos[i] = position
                batch.seq_id[i][0] = 0
                batch.n_seq_id[i] = 1
                batch.logits[i] = position >= first_scored
            llm._ctx.decode(llm._batch)
            for i in range(len(chunk)):
                if chunk_start + i >= first_scored:
                    pointer = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, i)
                    array = np.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(n_vocab,))
                    rows.append(array.astype(np.float64))
            llm.input_ids[chunk_start : chunk_start + len(chunk)] = chunk
            llm.n_tokens = chunk_start + len(chunk)
        self.evaluated_tokens += len(tokens) - start
        return rows
