"""A thin layer over llama.cpp's C API (through llama-cpp-python's ctypes bindings): a model,
its vocabulary, and a context holding several sequences in one unified KV cache.

Only the scheduler's worker thread calls `NativeContext` (llama.cpp contexts are not
thread-safe); tokenizing is safe from any thread.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import numpy as np

import dlgraph as dg


def _llama() -> Any:
    import llama_cpp  # imported here: `import dlgraph_llamacpp` must not load the library

    quiet = logging.getLogger("llama-cpp-python")  # llama.cpp's own log, printed to stderr
    if quiet.level == logging.NOTSET:
        quiet.setLevel(logging.ERROR)  # as llama_cpp.Llama(verbose=False) does
    return llama_cpp


SIMULATE_CRASH = "DLGRAPH_LLAMACPP_SIMULATE_CRASH"
"""A test seam: makes this machine behave like one whose CPU llama.cpp cannot run on. With
``extra_buffers``, a process that loads a model with extra buffer types dies by SIGILL, as
on Intel CPUs with AMX where llama.cpp's AMX matmul faults; with ``always``, any load does."""

_LOADING = threading.Lock()
"""Held while a model loads: `llama_loads_with` changes what every load in the process gets."""


def model_params(extra_buffers: bool) -> Any:
    """llama.cpp's model parameters, with its extra buffer types (AMX, repacked weights) on
    or off. Every model this plugin loads gets its parameters here."""
    wanted = os.environ.get(SIMULATE_CRASH, "")
    if wanted == "always" or (wanted == "extra_buffers" and extra_buffers):
        os.kill(os.getpid(), signal.SIGILL)
    params = _llama().llama_model_default_params()
    params.use_extra_bufts = extra_buffers
    return params


@contextmanager
def llama_loads_with(extra_buffers: bool) -> Iterator[None]:
    """Within the block, `llama_cpp.Llama` loads models with extra buffer types on or off.

    It takes no argument for them: it reads `llama_model_default_params()` while it loads, so
    that function answers with `model_params(extra_buffers)` meanwhile; the lock keeps this
    plugin's other loads out. (A process that only serves, such as llama-cpp-python's server
    started by a test, may hold it for its whole life.)"""
    bindings = _llama().llama_cpp
    with _LOADING:
        original = bindings.llama_model_default_params
        bindings.llama_model_default_params = lambda: model_params(extra_buffers)
        try:
            yield
        finally:
            bindings.llama_model_default_params = original


def open_llama(path: Path, *, extra_buffers: bool, **options: Any) -> Any:
    """A `llama_cpp.Llama` for `path` whose model has extra buffer types on or off."""
    llama = _llama()
    with llama_loads_with(extra_buffers):
        return llama.Llama(model_path=str(path), verbose=False, **options)


@attrs.define(eq=False)
class NativeModel:
    """A GGUF model loaded once; several contexts may share it."""

    path: Path
    extra_buffers: bool = attrs.field(kw_only=True)
    """llama.cpp's extra buffer types (AMX, repacked weights); see `guard.py`."""
    _model: Any = attrs.field(init=False, repr=False)
    _vocab: Any = attrs.field(init=False, repr=False)
    n_vocab: int = attrs.field(init=False)
    n_ctx_train: int = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        llama = _llama()
        llama.llama_backend_init()
        with _LOADING:
            model = llama.llama_model_load_from_file(
                str(self.path).encode(), model_params(self.extra_buffers)
            )
        if not model:
            raise dg.BackendUnavailable(f"cannot load model file {str(self.path)!r}")
        self._model = model
        self._vocab = llama.llama_model_get_vocab(model)
        self.n_vocab = llama.llama_vocab_n_tokens(self._vocab)
        self.n_ctx_train = llama.llama_model_n_ctx_train(model)

    def tokenize(self, text: str, *, add_bos: bool) -> list[int]:
        llama = _llama()
        data = text.encode("utf-8")
        buffer = (llama.llama_token * (len(data) + 8))()
        count = llama.llama_tokenize(
            self._vocab, data, len(data), buffer, len(buffer), add_bos, False
        )
        if count < 0:  # the buffer was too small: -count tokens are needed
            buffer = (llama.llama_token * -count)()
            count = llama.llama_tokenize(
                self._vocab, data, len(data), buffer, len(buffer), add_bos, False
            )
        return list(buffer[:count])

    def piece(self, token: int) -> bytes:
        """The bytes a generated token stands for (special tokens render as nothing)."""
        llama = _llama()
        buffer = ctypes.create_string_buffer(64)
        count = llama.llama_token_to_piece(self._vocab, token, buffer, 64, 0, False)
        if count < 0:
            buffer = ctypes.create_string_buffer(-count)
            count = llama.llama_token_to_piece(self._vocab, token, buffer, -count, 0, False)
        return buffer.raw[:count]

    def is_end(self, token: int) -> bool:
        return bool(_llama().llama_vocab_is_eog(self._vocab, token))

    def close(self) -> None:
        if self._model:
            _llama().llama_model_free(self._model)
            self._model = None


@attrs.frozen
class ContextSettings:
    n_ctx: int
    """KV cells shared by every sequence (a unified cache)."""
    n_batch: int
    """Tokens one decode may carry."""
    n_seq_max: int
    """Sequences the cache can tell apart (running and kept for their prefixes)."""
    n_outputs_max: int
    """Logit rows one decode may return (each is n_vocab floats)."""
    n_threads: int


@attrs.define(eq=False)
class NativeContext:
    """A llama.cpp context with a reusable batch; every method runs on one thread at a time."""

    model: NativeModel
    settings: ContextSettings
    threads: int = attrs.field(init=False)
    _context: Any = attrs.field(init=False, repr=False)
    _memory: Any = attrs.field(init=False, repr=False)
    _batch: Any = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        llama = _llama()
        settings = self.settings
        params = llama.llama_context_default_params()
        params.n_ctx = settings.n_ctx
        params.n_batch = params.n_ubatch = settings.n_batch
        params.n_seq_max = settings.n_seq_max
        params.n_outputs_max = settings.n_outputs_max
        params.n_threads = params.n_threads_batch = settings.n_threads
        params.kv_unified = True  # any sequence may use any cell, and share a prefix's cells
        params.swa_full = True  # sliding-window layers keep every cell, so copies stay whole
        # flash attention would run faster beside many cached cells, but its half-precision
        # products move log-probabilities by up to 0.3 nats (measured): exact scores come first
        params.flash_attn_type = llama.LLAMA_FLASH_ATTN_TYPE_DISABLED
        params.no_perf = True
        context = llama.llama_init_from_model(self.model._model, params)
        if not context:
            raise dg.BackendUnavailable("llama.cpp could not create a context")
        self._context = context
        self._memory = llama.llama_get_memory(context)
        self._batch = llama.llama_batch_init(settings.n_batch, 0, 1)
        self.threads = settings.n_threads

    def set_threads(self, threads: int) -> None:
        if threads != self.threads:
            _llama().llama_set_n_threads(self._context, threads, threads)
            self.threads = threads

    def remove(self, sequence: int) -> None:
        _llama().llama_memory_seq_rm(self._memory, sequence, -1, -1)

    def copy(self, source: int, target: int, length: int) -> None:
        """Share the first `length` cells of `source` with `target` (no copy of the data)."""
        _llama().llama_memory_seq_cp(self._memory, source, target, 0, length)

    def decode(self, tokens: Sequence[tuple[int, int, int, bool]]) -> int:
        """Evaluate (token, position, sequence, wants_logits) entries; llama.cpp's status (0 ok,
        1 no room in the cache: nothing was changed)."""
        batch = self._batch
        for index, (token, position, sequence, logits) in enumerate(tokens):
            batch.token[index] = token
            batch.pos[index] = position
            batch.n_seq_id[index] = 1
            batch.seq_id[index][0] = sequence
            batch.logits[index] = logits
        batch.n_tokens = len(tokens)
        return int(_llama().llama_decode(self._context, batch))

    def logits(self, index: int) -> np.ndarray:
        """The logit row of batch entry `index` (a view valid until the next decode)."""
        pointer = _llama().llama_get_logits_ith(self._context, index)
        row: np.ndarray = np.ctypeslib.as_array(
            ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(self.model.n_vocab,)
        )
        return row

    def close(self) -> None:
        llama = _llama()
        if self._batch is not None:
            llama.llama_batch_free(self._batch)
            self._batch = None
        if self._context:
            llama.llama_free(self._context)
            self._context = None
