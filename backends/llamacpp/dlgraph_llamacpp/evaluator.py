"""log p(target | context) from llama.cpp logits, for the target positions only.

``create_completion(echo=True, logprobs=...)`` computes every position's full-vocabulary
log-softmax in Python (about 55 s for 134 tokens here). This module decodes with the logits
flag set only where a target token is predicted, keeps the evaluated prefix in the KV cache,
and remembers the last log-softmax rows: scoring several targets after one context (class
verbalizers, most of them one token) then needs no new decode at all.
Not thread-safe: one model, one caller at a time.
"""

from __future__ import annotations

import ctypes
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np

MAX_ROWS = 64
"""Log-softmax rows kept (one per position; float32, about 1 MB each for a 262k vocabulary).
Targets longer than this are still scored exactly: values are read as rows are computed."""


@attrs.define(eq=False)
class PrefixEvaluator:
    """Runs token sequences through a `llama_cpp.Llama`, sharing its KV cache bookkeeping."""

    llm: Any
    reused_tokens: int = 0
    """Tokens served from the KV cache instead of being evaluated (for benchmarks)."""
    evaluated_tokens: int = 0
    decodes: int = 0
    _rows: OrderedDict[int, np.ndarray] = attrs.field(factory=OrderedDict, init=False)

    def common_prefix(self, tokens: Sequence[int]) -> int:
        cached = self.llm.input_ids[: self.llm.n_tokens]
        limit = min(len(cached), len(tokens))
        same = np.asarray(cached[:limit]) == np.asarray(tokens[:limit], dtype=cached.dtype)
        mismatch = np.flatnonzero(~same)
        return int(mismatch[0]) if mismatch.size else limit

    def target_logprob(self, context: Sequence[int], target: Sequence[int]) -> float:
        """Σ log p(target_j | context, target_<j), reading logits at target positions only."""
        tokens = list(context) + list(target)
        common = self.common_prefix(tokens)
        needed = range(len(context) - 1, len(tokens) - 1)
        # a row at position p is valid for these tokens when tokens[: p + 1] are the cached ones
        values = {
            p: float(self._rows[p][tokens[p + 1]]) for p in needed if p < common and p in self._rows
        }
        missing = [p for p in needed if p not in values]
        if missing:
            start = min(common, missing[0])
            self.reused_tokens += start
            values.update(self._decode(tokens, start, missing[0]))
        else:
            self.reused_tokens += len(tokens)
        return sum(values[p] for p in needed)

    def _decode(self, tokens: list[int], start: int, first_scored: int) -> dict[int, float]:
        """Evaluate tokens[start:]; return log p(tokens[p + 1]) for positions p >= first_scored,
        remembering the last rows for later targets on the same prefix."""
        import llama_cpp

        llm = self.llm
        for position in [p for p in self._rows if p >= start]:
            del self._rows[position]  # their tokens are about to be overwritten
        llm._ctx.kv_cache_seq_rm(-1, start, -1)
        llm.n_tokens = start
        n_vocab = llm.n_vocab()
        batch = llm._batch.batch
        values: dict[int, float] = {}
        for chunk_start in range(start, len(tokens), llm.n_batch):
            chunk = tokens[chunk_start : chunk_start + llm.n_batch]
            batch.n_tokens = len(chunk)
            for i, token in enumerate(chunk):
                batch.token[i] = token
                batch.pos[i] = chunk_start + i
                batch.seq_id[i][0] = 0
                batch.n_seq_id[i] = 1
                batch.logits[i] = chunk_start + i >= first_scored
            llm._ctx.decode(llm._batch)
            self.decodes += 1
            for i in range(len(chunk)):
                position = chunk_start + i
                if first_scored <= position < len(tokens) - 1:
                    pointer = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, i)
                    logits = np.ctypeslib.as_array(
                        ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(n_vocab,)
                    )
                    row = _log_softmax(logits)
                    values[position] = float(row[tokens[position + 1]])
                    self._remember(position, row.astype(np.float32))
            llm.input_ids[chunk_start : chunk_start + len(chunk)] = chunk
            llm.n_tokens = chunk_start + len(chunk)
        self.evaluated_tokens += len(tokens) - start
        return values

    def _remember(self, position: int, row: np.ndarray) -> None:
        self._rows[position] = row
        self._rows.move_to_end(position)
        while len(self._rows) > MAX_ROWS:
            self._rows.popitem(last=False)

    def forget(self) -> None:
        """Drop remembered rows (the KV cache was changed by someone else, e.g. generation)."""
        self._rows.clear()


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    values: np.ndarray = logits.astype(np.float64)
    peak = float(values.max())
    normaliser = peak + float(np.log(np.exp(values - peak).sum()))
    result: np.ndarray = values - normaliser
    return result
