"""The async engine and its pipeline stages."""

from dlgraph.engine.core import Engine
from dlgraph.engine.ledger import Budget, LedgerSnapshot, Price, Usage
from dlgraph.engine.limiter import RateLimits
from dlgraph.engine.retry import RetryPolicy

__all__ = ["Budget", "Engine", "LedgerSnapshot", "Price", "RateLimits", "RetryPolicy", "Usage"]
