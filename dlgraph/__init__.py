"""dlgraph: trainable graphs of LLM calls (deep language networks on any DAG)."""

from dlgraph.backend import (
    Backend,
    BackendRegistry,
    Capabilities,
    GenerateRequest,
    LogprobRequest,
    TopLogprobsRequest,
    connect,
    report,
)
from dlgraph.data import Example
from dlgraph.engine import Budget, Engine, LedgerSnapshot, Price, RateLimits, RetryPolicy, Usage
from dlgraph.errors import (
    BackendError,
    BackendUnavailable,
    BudgetExhausted,
    CacheError,
    CheckpointError,
    ConfigError,
    DataError,
    DlgraphError,
    GraphError,
    MalformedAnswer,
    RateLimited,
    RequestRejected,
    RetriesExhausted,
    TransientError,
    UnknownBackend,
)
from dlgraph.evaluation import Accuracy, evaluate
from dlgraph.forward import Trace
from dlgraph.network import Network
from dlgraph.nodes import INPUT, Demonstration, LanguageNode, Parameter
from dlgraph.train import Estimate, FitResult, StepRecord, TrainerOptions, VariationalTrainer

__all__ = [
    "INPUT",
    "Accuracy",
    "Backend",
    "BackendError",
    "BackendRegistry",
    "BackendUnavailable",
    "Budget",
    "BudgetExhausted",
    "CacheError",
    "Capabilities",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "Demonstration",
    "DlgraphError",
    "Estimate",
    "Engine",
    "Example",
    "FitResult",
    "GenerateRequest",
    "GraphError",
    "LanguageNode",
    "LedgerSnapshot",
    "LogprobRequest",
    "MalformedAnswer",
    "Network",
    "Parameter",
    "Price",
    "RateLimited",
    "RateLimits",
    "RequestRejected",
    "RetriesExhausted",
    "RetryPolicy",
    "StepRecord",
    "TopLogprobsRequest",
    "Trace",
    "TrainerOptions",
    "TransientError",
    "UnknownBackend",
    "Usage",
    "VariationalTrainer",
    "connect",
    "evaluate",
    "report",
]
