"""The public surface for plugins: everything a backend needs from dlgraph, and nothing else.

A plugin imports ``dlgraph`` (the user's API) and this module, never another module of the
core (`tests/test_architecture.py` checks every plugin under ``backends/``).
"""

from __future__ import annotations

from dlgraph.answer import NO_USAGE, Answer, CallUsage, as_answer
from dlgraph.backend import (
    PHASES,
    Backend,
    BackendFactory,
    BackendRegistry,
    Batch,
    Capabilities,
    GenerateRequest,
    LogprobRequest,
    Phase,
    Request,
    Result,
    TopLogprobsRequest,
    Work,
    connect,
)

__all__ = [
    "NO_USAGE",
    "PHASES",
    "Answer",
    "Backend",
    "BackendFactory",
    "BackendRegistry",
    "Batch",
    "CallUsage",
    "Capabilities",
    "GenerateRequest",
    "LogprobRequest",
    "Phase",
    "Request",
    "Result",
    "TopLogprobsRequest",
    "Work",
    "as_answer",
    "connect",
]
