"""Every error dlgraph raises, one class per failure a user may want to catch.

```
DlgraphError
├── GraphError (ValueError)   cycle, unknown node, orphan node, unsupplied template variable
├── DataError (ValueError)    empty dataset, malformed line (path:line), target outside classes
├── ConfigError (ValueError)  a bad key or value in a config file (names key and file)
├── MetricError (ValueError)  a metric raised or gave no number (names metric and example);
│                             an unknown metric name (lists the known ones)
├── CheckpointError           corrupt, truncated or incompatible; never half-loaded
├── CacheError                an answer cache on disk that is corrupt or not dlgraph's
├── BudgetExhausted           call or token budget reached; fit() stops cleanly, best net saved
└── BackendError              .node and .phase when known; .usage: what the server said
    ├── UnknownBackend (LookupError)
    ├── BackendUnavailable    unreachable server, missing model file
    ├── RequestRejected       non-retryable 4xx: context length, bad request
    ├── TransientError        408, 409, 429, 5xx, timeout, dropped connection
    │   ├── RateLimited       .retry_after_s
    │   └── MalformedAnswer   a 200 answer that is not a valid answer (missing text, bad log-probs)
    └── RetriesExhausted      deadline passed; __cause__ is the last TransientError
```
"""

from __future__ import annotations

from dlgraph.answer import NO_USAGE, CallUsage


class DlgraphError(Exception):
    """Base of every error raised by dlgraph."""


class GraphError(DlgraphError, ValueError):
    """The network's structure or templates are invalid; the message names the node or edge."""


class DataError(DlgraphError, ValueError):
    """A dataset is empty or malformed; the message names the file and line when known."""


class ConfigError(DlgraphError, ValueError):
    """A configuration file has a bad key or value; the message names the key and file."""


class MetricError(DlgraphError, ValueError):
    """A metric failed on an example (it raised, or returned something that is no finite
    number), or no metric has the name given; the message names the metric and the example."""


class CheckpointError(DlgraphError):
    """A checkpoint is corrupt, truncated or belongs to another run; nothing was loaded."""


class CacheError(DlgraphError):
    """An answer cache on disk is corrupt or belongs to something else; it names the file."""


class BudgetExhausted(DlgraphError):
    """The engine's call or token budget is spent."""


class BackendError(DlgraphError):
    """A model call failed. `node` and `phase` say which part of the network asked; `usage`
    is what the call cost and what the server said of its limits with its refusal (a 429
    states them too), as the backend read it."""

    def __init__(
        self,
        message: str,
        *,
        node: str | None = None,
        phase: str | None = None,
        usage: CallUsage = NO_USAGE,
    ):
        super().__init__(message)
        self.message = message
        self.node = node
        self.phase = phase
        self.usage = usage

    def __str__(self) -> str:
        where = ", ".join(
            f"{key} {value!r}"
            for key, value in (("node", self.node), ("phase", self.phase))
            if value
        )
        return f"{self.message} ({where})" if where else self.message


class UnknownBackend(BackendError, LookupError):
    """No installed plugin has this name."""


class BackendUnavailable(BackendError):
    """The backend cannot be reached or loaded: a server is down, a model file is missing."""


class RequestRejected(BackendError):
    """The backend refused this request and would refuse it again (bad request, too long)."""


class TransientError(BackendError):
    """A failure worth retrying: timeouts, dropped connections, 408, 409, 429 and 5xx."""


class RateLimited(TransientError):
    """The server asked us to slow down; `retry_after_s` is its requested pause, if any."""

    def __init__(
        self,
        message: str,
        *,
        retry_after_s: float | None = None,
        node: str | None = None,
        phase: str | None = None,
        usage: CallUsage = NO_USAGE,
    ):
        super().__init__(message, node=node, phase=phase, usage=usage)
        self.retry_after_s = retry_after_s


class MalformedAnswer(TransientError):
    """The server answered, but not with a valid answer (a missing text, log-probabilities
    that do not line up); retried, since a second answer may be whole."""


class RetriesExhausted(BackendError):
    """Retrying did not succeed before the deadline; `__cause__` is the last transient error."""


def tag(error: BackendError, node: str | None, phase: str | None) -> None:
    """Attach the asking node and phase to an error passing through the engine."""
    if error.node is None:
        error.node = node
    if error.phase is None:
        error.phase = phase
