"""The async engine and its pipeline stages (the order and the reasons: `dlgraph.engine.core`)."""

from dlgraph.engine.core import Engine
from dlgraph.engine.limiter import RateLimits
from dlgraph.engine.retry import RetryPolicy
from dlgraph.engine.shared import Grant, GrantSource
from dlgraph.engine.tracing import Tracing
from dlgraph.engine.usage import Budget, LedgerSnapshot, Price, Usage

__all__ = [
    "Budget",
    "Engine",
    "Grant",
    "GrantSource",
    "LedgerSnapshot",
    "Price",
    "RateLimits",
    "RetryPolicy",
    "Tracing",
    "Usage",
]
