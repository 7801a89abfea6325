"""What the forward pass and the trainer ask of tracing, and tracing off.

`Tracer` opens spans for dlgraph's own work and puts one span per call on top of an engine's
chain; this base class does neither (tracing off): every span is one shared do-nothing scope,
and the chain is left as it is. `dlgraph.engine._otel.OtelTracer` is tracing on.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from dlgraph.backend import Backend
    from dlgraph.engine.ledger import Ledger
    from dlgraph.engine.stage import Call

AttributeValue = str | bool | int | float | Sequence[str] | Sequence[float]


class SpanNotes(Protocol):
    """What the code inside a span may add to it."""

    def set(self, name: str, value: AttributeValue) -> None:
        """Set the attribute ``dlgraph.<name>``."""


class _NoNotes:
    def set(self, name: str, value: AttributeValue) -> None:
        return None


_OFF_SCOPE: AbstractContextManager[SpanNotes] = nullcontext(_NoNotes())
"""Stateless, so one scope serves every span while tracing is off."""


class Tracer:
    """Spans for the forward pass and the trainer, and the stage that traces each call (this
    base class: tracing off)."""

    is_recording: bool = False

    def span(
        self, operation: str, target: str | None = None, **attributes: AttributeValue
    ) -> AbstractContextManager[SpanNotes]:
        """A span named ``dlgraph.<operation>`` (and `` <target>``), child of the current
        one, with `attributes` as ``dlgraph.<name>``; current while the block runs. An error
        leaving the block sets ``error.type``; a cancellation ends the span, not as an error."""
        return _OFF_SCOPE

    def traced(self, chain: Call, backend: Backend, ledger: Ledger) -> Call:
        """The engine's chain with one span per call on top (here: the chain unchanged)."""
        return chain


OFF = Tracer()
