"""What a backend answers: the value asked for, together with what the call cost.

A backend may return a plain value (a text, a log-probability) when it knows nothing of the
call's cost, or an `Answer` carrying the `CallUsage` it read from the server (tokens counted,
the server's stated limits). The engine turns either into an `Answer` once, and its stages
read the usage from it: the ledger charges the tokens, the limiter adopts the limits. A failed
call carries its usage on its error (`BackendError.usage`), since a server states its limits
with a refusal too.
"""

from __future__ import annotations

from typing import Generic, TypeVar

import attrs

from dlgraph._validate import integer

T = TypeVar("T")
Value = TypeVar("Value", covariant=True)


@attrs.frozen(kw_only=True)
class CallUsage:
    """What one call cost and what the server said of its limits, as far as the backend
    knows; None where it does not (the engine then estimates the tokens, keeps its limits)."""

    prompt_tokens: int | None = attrs.field(default=None, validator=integer(0))
    completion_tokens: int | None = attrs.field(default=None, validator=integer(0))
    """Counts of at least 0: a negative one would pay a budget back."""
    remaining_requests: int | None = attrs.field(default=None, validator=integer(0))
    """Requests the server says are left in its current window (x-ratelimit-remaining-*)."""
    remaining_tokens: int | None = attrs.field(default=None, validator=integer(0))
    limit_requests: int | None = attrs.field(default=None, validator=integer(0))
    """The server's own requests-per-minute limit (x-ratelimit-limit-*)."""
    limit_tokens: int | None = attrs.field(default=None, validator=integer(0))

    @property
    def states_limits(self) -> bool:
        """Whether the server said anything of its limits."""
        return not (
            self.limit_requests is None
            and self.limit_tokens is None
            and self.remaining_requests is None
            and self.remaining_tokens is None
        )


NO_USAGE = CallUsage()
"""A call whose backend reported nothing."""


@attrs.frozen
class Answer(Generic[Value]):
    """A backend's answer to one call (or one multi-prompt call) and its usage."""

    value: Value
    usage: CallUsage = attrs.field(default=NO_USAGE, kw_only=True)


def as_answer(value: T | Answer[T]) -> Answer[T]:
    """A backend's return value as an `Answer`: a plain value has no usage."""
    return value if isinstance(value, Answer) else Answer(value)
