"""Tracing: model calls, forward passes and training steps as OpenTelemetry spans.

Optional (the extra ``dlgraph[otel]`` installs ``opentelemetry-api``) and off unless a tracer
is configured. An engine's ``tracing`` setting decides, when the engine is entered:

* ``"auto"`` (the default): trace when the application has set a global tracer provider
  (``opentelemetry.trace.set_tracer_provider``, or the ``opentelemetry-instrument`` agent);
  found without importing OpenTelemetry, so an application that never imported it pays nothing;
* a `Tracing` record (or True): trace with its tracer provider, else the global one;
* False: never.

When off, nothing is imported and nothing is emitted: the engine's chain has no tracing stage
and `Tracer.span` hands back one shared do-nothing scope (`dlgraph.engine.spans`). When on,
the OpenTelemetry side lives in `dlgraph.engine._otel`, imported then. Spans follow the GenAI
semantic conventions (`dlgraph.engine._otel.SEMCONV_VERSION`, v1.37.0); dlgraph's own
attributes are in the ``dlgraph.*`` namespace. Prompts, inputs and answers are recorded only
with ``Tracing(record_content=True)``: they may be private.
"""

from __future__ import annotations

import sys
from typing import Any, Literal

import attrs

from dlgraph._validate import boolean
from dlgraph.engine.spans import OFF, Tracer


@attrs.frozen(kw_only=True)
class Tracing:
    """How an engine traces: ``dg.Engine(backend, tracing=dg.Tracing(...))``.

    Without `tracer_provider`, spans go to OpenTelemetry's global tracer provider (set by the
    application). `record_content` adds prompts, inputs and answers to the call spans
    (``gen_ai.input.messages``, ``gen_ai.output.messages``); off by default, since prompts
    and data may be private.
    """

    tracer_provider: Any = None
    """An ``opentelemetry.trace.TracerProvider``; None: the global one."""
    record_content: bool = attrs.field(default=False, validator=boolean)


TracingSetting = Tracing | bool | Literal["auto"]


def check_setting(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """An attrs validator for an engine's ``tracing`` setting."""
    if not (isinstance(value, Tracing | bool) or value == "auto"):
        raise TypeError(f"tracing: expected 'auto', true, false or a dg.Tracing, got {value!r}")


def global_provider() -> Any:
    """The tracer provider the application set, or None; OpenTelemetry is looked for among
    the modules already imported, never imported here."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    return provider


def open_tracer(setting: TracingSetting) -> Tracer:
    """The tracer an engine uses while it is entered (see the module docstring).

    Raises ImportError naming the extra when tracing is asked for and OpenTelemetry is
    missing."""
    if setting is False:
        return OFF
    if setting == "auto":
        if global_provider() is None:
            return OFF
        setting = Tracing()
    elif setting is True:
        setting = Tracing()
    assert isinstance(setting, Tracing)
    try:
        from dlgraph.engine._otel import OtelTracer
    except ImportError as error:
        raise ImportError(
            f"tracing needs OpenTelemetry's API ({error}): pip install 'dlgraph[otel]'"
        ) from error
    return OtelTracer.open(setting.tracer_provider, record_content=setting.record_content)
