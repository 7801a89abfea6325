"""The public surface for plugins: what a backend, a shared limit or a command needs from the
core. A plugin imports ``dlgraph`` (the user's API) and this module, never another module of
the core; `tests/test_architecture.py` checks every plugin under ``backends/``.

**Backends** (entry-point group ``dlgraph.backends``: a factory taking the options given to
``dg.connect(name, **options)``). Subclass `Backend` and implement `generate` and `logprob`;
each returns its plain value, or an `Answer` of it with the call's `CallUsage` when the backend
knows it (the server's token counts and stated limits). A failure raises a `BackendError`
subclass (`TransientError` is retried, `RequestRejected` is not), which may carry the usage
too (``error.usage``). State what the backend can do in `Capabilities` (its context window
when known; `continuations`, up to `MAX_CONTINUATIONS`, when it implements `continuations`:
several continuations of one context scored in one call; `samples`, up to `MAX_SAMPLES`, when
it implements `samples`: several samples of one prompt drawn in one call). A backend that
sends work elsewhere whole overrides `Backend.handle` instead. Building a backend makes no
call (it connects or loads on entering), so a config's check builds it and drops it; a
factory whose building starts something (a cluster, processes) has a ``check`` attribute
taking the same options, which makes every check building would and starts nothing.

**Shared limits** (group ``dlgraph.shared_limits``: a factory taking the endpoint's key and
returning a `GrantSource`). The source lends `Grant`s of an endpoint's allowance to engines
in every process; `TokenBucket` is the bucket it may keep.

**Metrics** (group ``dlgraph.metrics``: a metric function, or a `dlgraph.Metric`, named in
configs by the entry's name: ``[train] metric = "NAME"``). The function takes (the network's
outputs for one example, the `dlgraph.Example`, its target as the output nodes name answers)
and returns a finite float, higher is better; it may be async. `METRICS` lists them.

**Commands** (group ``dlgraph.commands``: a function given `Commands`, the ``dlgraph``
command line's subcommands). It adds its parser and sets ``handler``, a `CommandHandler`:
called with the parsed arguments, it returns the exit status and starts its own event loop;
a `DlgraphError` it raises is printed as ``error: ...`` with status 2. To train, read a
`RunConfig` (``--set`` style settings checked by `parse_setting`) and call `train_run`, which
writes ``result.json`` (`RunResult`, read back with `RunResult.read`) into a run folder;
`prepare_folder` claims a folder of its own and `write_atomic` writes its files.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, Protocol

from dlgraph._entry_points import BACKENDS, COMMANDS, METRICS, SHARED_LIMITS, PluginGroup
from dlgraph._files import prepare_folder, write_atomic
from dlgraph._untrusted import excerpt
from dlgraph._validate import boolean, check_int, check_number, integer, number
from dlgraph.answer import NO_USAGE, Answer, CallUsage, as_answer
from dlgraph.backend import (
    MAX_CONTINUATIONS,
    MAX_SAMPLES,
    PHASES,
    Backend,
    BackendFactory,
    BackendRegistry,
    Batch,
    Capabilities,
    ContinuationsRequest,
    GenerateRequest,
    LogprobRequest,
    Phase,
    Request,
    Result,
    SamplesRequest,
    TopLogprobsRequest,
    Work,
    connect,
)
from dlgraph.config import RunConfig, parse_setting
from dlgraph.data import Task
from dlgraph.engine.bucket import TokenBucket
from dlgraph.engine.shared import Grant, GrantSource
from dlgraph.errors import (
    BackendError,
    BackendUnavailable,
    ConfigError,
    DlgraphError,
    MalformedAnswer,
    RateLimited,
    RequestRejected,
    RetriesExhausted,
    TransientError,
    UnknownBackend,
)
from dlgraph.runs import RunHooks, RunResult, TrainedRun, train_run
from dlgraph.train import StepRecord, VariationalTrainer


class Commands(Protocol):
    """What a command plugin's entry point is given: the subcommands of ``dlgraph`` (an
    argparse subparsers action), to which it adds its own parser."""

    def add_parser(self, name: str, **options: Any) -> argparse.ArgumentParser: ...


CommandHandler = Callable[[argparse.Namespace], int]
"""A command's ``handler`` (set with ``parser.set_defaults(handler=...)``)."""
AddCommand = Callable[[Commands], None]
"""What a ``dlgraph.commands`` entry point refers to."""

__all__ = [
    "BACKENDS",
    "COMMANDS",
    "MAX_CONTINUATIONS",
    "MAX_SAMPLES",
    "METRICS",
    "NO_USAGE",
    "PHASES",
    "SHARED_LIMITS",
    "AddCommand",
    "Answer",
    "Backend",
    "BackendError",
    "BackendFactory",
    "BackendRegistry",
    "BackendUnavailable",
    "Batch",
    "CallUsage",
    "Capabilities",
    "ContinuationsRequest",
    "SamplesRequest",
    "CommandHandler",
    "Commands",
    "ConfigError",
    "DlgraphError",
    "GenerateRequest",
    "Grant",
    "GrantSource",
    "LogprobRequest",
    "MalformedAnswer",
    "Phase",
    "PluginGroup",
    "RateLimited",
    "Request",
    "RequestRejected",
    "Result",
    "RetriesExhausted",
    "RunConfig",
    "RunHooks",
    "RunResult",
    "StepRecord",
    "Task",
    "TokenBucket",
    "TopLogprobsRequest",
    "TrainedRun",
    "TransientError",
    "UnknownBackend",
    "VariationalTrainer",
    "Work",
    "as_answer",
    "boolean",
    "check_int",
    "check_number",
    "connect",
    "excerpt",
    "integer",
    "number",
    "parse_setting",
    "prepare_folder",
    "train_run",
    "write_atomic",
]
