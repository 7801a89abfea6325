"""The async engine and its pipeline stages."""

from dlgraph.engine.core import Engine
from dlgraph.engine.ledger import Budget, LedgerSnapshot, Usage
from dlgraph.engine.retry import RetryPolicy

__all__ = ["Budget", "Engine", "LedgerSnapshot", "RetryPolicy", "Usage"]
