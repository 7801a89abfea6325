"""Tracing on: OpenTelemetry spans for calls, forward passes and training steps.

Imported only when an engine traces (`dlgraph.engine.tracing.open_tracer`); the rest of
dlgraph never imports OpenTelemetry.

A call's span follows the GenAI client-span conventions (`SEMCONV_VERSION`, v1.37.0): name
``{operation} {model}``, kind CLIENT, and

* ``gen_ai.operation.name``, ``gen_ai.provider.name``, ``gen_ai.request.model``: as the backend
  names them (`Backend.operation_name`...): ``text_completion`` unless it is a chat API, since
  a log-probability is asked of a completions endpoint too;
* ``gen_ai.request.max_tokens``, ``.temperature``, ``.seed``, ``.stop_sequences`` (generation);
* ``gen_ai.usage.input_tokens`` / ``output_tokens``: as the ledger counts them (reported by the
  backend, else estimated; a batch's usage shared among its calls);
* ``error.type`` and the error status when the call fails;
* opt-in (``Tracing(record_content=True)``): ``gen_ai.input.messages`` and
  ``gen_ai.output.messages``, JSON strings (spans take no structured values);
* dlgraph's: ``dlgraph.node``, ``dlgraph.phase``, ``dlgraph.request.kind`` (``generate``,
  ``logprob``, ``top_logprobs``, ``continuations``, ``samples``), ``dlgraph.request.continuations``
  (how many a continuations request scores), ``gen_ai.request.choice.count`` (how many
  samples a samples request draws), ``dlgraph.attempts`` (backend attempts: retries, the
  re-sends of a refused batch being split, and the parts a partly cached or split request
  sent, included), ``dlgraph.retries``,
  ``dlgraph.cache_hit``, ``dlgraph.shared``, ``dlgraph.logprob`` (``dlgraph.logprobs``, one per
  continuation), ``dlgraph.cancelled``;
* events: ``dlgraph.rate_limited`` per 429 (``dlgraph.retry_after_s``, the pause the server
  asked), ``dlgraph.attempt_failed`` per other failed attempt (``error.type``,
  ``dlgraph.error.message``).

The span is opened by a stage on top of the chain, in the caller's task, so it is a child of
the caller's span (the node's, the step's phase). What happens further down (retries, 429s,
tokens) runs in the engine's own tasks; the stages already report all of it to the ledger, per
request, and the ledger tells the stage (`counted`), which finds the open span by the request.
A call answered by an identical call already in flight (single-flight) has no attempts of its
own: it is marked ``dlgraph.shared`` and costs nothing, as in the ledger.

``error.type`` is the dlgraph error's class name: ``RequestRejected``, ``RetriesExhausted``,
``BackendUnavailable``, ``BudgetExhausted``, ``RateLimited``, ``TransientError``,
``MalformedAnswer``, or the name of an unexpected exception. A cancelled call is not a failed
one: its span ends with ``dlgraph.cancelled`` and no error status.
"""

from __future__ import annotations

import importlib.metadata
import json
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import attrs
from opentelemetry import context, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from dlgraph.backend import (
    Backend,
    ContinuationsRequest,
    GenerateRequest,
    LogprobRequest,
    Request,
    SamplesRequest,
    TopLogprobsRequest,
)
from dlgraph.engine.ledger import Ledger
from dlgraph.engine.spans import AttributeValue, Tracer
from dlgraph.engine.stage import Batch, Call, Outcome, Work
from dlgraph.errors import BackendError, BudgetExhausted, RateLimited

SEMCONV_VERSION = "1.37.0"
"""The OpenTelemetry semantic conventions the spans follow: GenAI client spans as of v1.37.0,
the release that named the provider ``gen_ai.provider.name`` (``gen_ai.system`` before) and
added the opt-in ``gen_ai.input.messages`` / ``gen_ai.output.messages``; checked against a
later gen-ai-spans.md too, where the attributes used are unchanged (the GenAI conventions are
still "Development", now kept in open-telemetry/semantic-conventions-genai)."""

SCHEMA_URL = f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}"
KINDS: Mapping[type, str] = {
    GenerateRequest: "generate",
    LogprobRequest: "logprob",
    TopLogprobsRequest: "top_logprobs",
    ContinuationsRequest: "continuations",
    SamplesRequest: "samples",
}


def _version() -> str | None:
    try:
        return importlib.metadata.version("dlgraph")
    except importlib.metadata.PackageNotFoundError:
        return None


def _end(span: Span, error: BaseException | None, record_content: bool) -> None:
    """End a span: an exception sets ``error.type`` and the error status, with its message
    when dlgraph wrote it to name endpoints, statuses and counts (backend and budget errors)
    or content may be recorded; a cancellation is marked, not counted as an error."""
    if isinstance(error, Exception):
        span.set_attribute("error.type", type(error).__name__)
        safe = record_content or isinstance(error, BackendError | BudgetExhausted)
        span.set_status(Status(StatusCode.ERROR, str(error) if safe else None))
    elif error is not None:
        span.set_attribute("dlgraph.cancelled", True)
    span.end()


@attrs.define(eq=False)
class _Notes:
    span: Span

    def set(self, name: str, value: AttributeValue) -> None:
        self.span.set_attribute(f"dlgraph.{name}", value)


class _Scope:
    """One dlgraph span, current while its block runs (a class, not a generator: cheaper)."""

    __slots__ = ("_attributes", "_name", "_record_content", "_span", "_token", "_tracer")

    def __init__(
        self,
        tracer: trace.Tracer,
        name: str,
        attributes: dict[str, AttributeValue],
        record_content: bool,
    ) -> None:
        self._tracer, self._name, self._attributes = tracer, name, attributes
        self._record_content = record_content

    def __enter__(self) -> _Notes:
        self._span = self._tracer.start_span(self._name, attributes=self._attributes)
        self._token = context.attach(trace.set_span_in_context(self._span))
        return _Notes(self._span)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        context.detach(self._token)
        _end(self._span, error, self._record_content)


@attrs.define(eq=False)
class OtelTracer(Tracer):
    tracer: trace.Tracer
    record_content: bool = False
    is_recording = True

    @classmethod
    def open(cls, provider: trace.TracerProvider | None, *, record_content: bool) -> OtelTracer:
        """Spans from `provider`, else from the global tracer provider."""
        tracer = trace.get_tracer("dlgraph", _version(), provider, schema_url=SCHEMA_URL)
        return cls(tracer, record_content)

    def span(
        self, operation: str, target: str | None = None, **attributes: AttributeValue
    ) -> _Scope:
        name = f"dlgraph.{operation}" if target is None else f"dlgraph.{operation} {target}"
        named = {f"dlgraph.{key}": value for key, value in attributes.items()}
        return _Scope(self.tracer, name, named, self.record_content)

    def traced(self, chain: Call, backend: Backend, ledger: Ledger) -> Call:
        stage = CallSpans(
            chain,
            self.tracer,
            backend.operation_name,
            backend.provider_name,
            backend.model_name,
            self.record_content,
        )
        ledger.listener = stage
        return stage


@attrs.define(eq=False)
class _Call:
    """What happened to one call so far, as the ledger reported it."""

    span: Span
    attempts: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    retries: int = 0
    cache_hit: bool = False

    def count(self, counts: Mapping[str, int], error: BackendError | None) -> None:
        self.attempts += counts.get("calls", 0)
        self.tokens_in += counts.get("tokens_in", 0)
        self.tokens_out += counts.get("tokens_out", 0)
        self.retries += counts.get("retries", 0)
        self.cache_hit = self.cache_hit or counts.get("cache_hits", 0) > 0
        if isinstance(error, RateLimited):
            event: dict[str, AttributeValue] = {"error.type": "RateLimited"}
            if error.retry_after_s is not None:
                event["dlgraph.retry_after_s"] = error.retry_after_s
            self.span.add_event("dlgraph.rate_limited", event)
        elif error is not None:
            self.span.add_event(
                "dlgraph.attempt_failed",
                {"error.type": type(error).__name__, "dlgraph.error.message": error.message},
            )


@attrs.define(eq=False)
class CallSpans:
    """The tracing stage: one CLIENT span per call, and the ledger's listener."""

    inner: Call
    tracer: trace.Tracer
    operation: str
    provider: str
    model: str
    record_content: bool = False
    _open: dict[int, list[_Call]] = attrs.field(factory=dict, init=False)
    """Calls in flight by the identity of their request (held alive by the caller), and by
    that of a part sent in its place (`alias`, held alive by who sends it)."""
    _aliases: set[int] = attrs.field(factory=set, init=False)
    _name: str = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._name = f"{self.operation} {self.model}"

    async def __call__(self, work: Work) -> Outcome:
        assert not isinstance(work, Batch), "calls are traced above the coalescer"
        call = _Call(
            self.tracer.start_span(self._name, kind=SpanKind.CLIENT, attributes=self._asked(work))
        )
        watching = self._open.setdefault(id(work), [])
        watching.append(call)
        outcome: Outcome | None = None
        failure: BaseException | None = None
        try:
            outcome = await self.inner(work)
            return outcome
        except BaseException as error:
            failure = error
            raise
        finally:
            watching.remove(call)
            if not watching:
                del self._open[id(work)]
            self._answered(call, outcome, failure)

    def counted(
        self, request: Request, counts: Mapping[str, int], error: BackendError | None
    ) -> None:
        for call in self._open.get(id(request), ()):
            call.count(counts, error)

    def alias(self, derived: Request, original: Request) -> None:
        """A part sent for a call (a partly cached request's rest, a split's piece) counts
        on the call's span."""
        calls = self._open.get(id(original))
        if calls is not None and id(derived) not in self._open:
            self._open[id(derived)] = calls
            self._aliases.add(id(derived))

    def unalias(self, derived: Request) -> None:
        if id(derived) in self._aliases:
            self._aliases.discard(id(derived))
            del self._open[id(derived)]

    def _asked(self, request: Request) -> dict[str, AttributeValue]:
        attributes: dict[str, AttributeValue] = {
            "gen_ai.operation.name": self.operation,
            "gen_ai.provider.name": self.provider,
            "gen_ai.request.model": self.model,
            "dlgraph.request.kind": KINDS[type(request)],
            "dlgraph.phase": request.phase,
        }
        if request.node is not None:
            attributes["dlgraph.node"] = request.node
        if isinstance(request, GenerateRequest | SamplesRequest):
            attributes["gen_ai.request.max_tokens"] = request.max_tokens
            attributes["gen_ai.request.temperature"] = request.temperature
            attributes["gen_ai.request.seed"] = request.seed
            if request.stop:
                attributes["gen_ai.request.stop_sequences"] = request.stop
            if isinstance(request, SamplesRequest):
                attributes["gen_ai.request.choice.count"] = request.count
        elif isinstance(request, TopLogprobsRequest):
            attributes["dlgraph.request.top_logprobs"] = request.count
        elif isinstance(request, ContinuationsRequest):
            attributes["dlgraph.request.continuations"] = len(request.continuations)
        if self.record_content:
            attributes["gen_ai.input.messages"] = _input_messages(request)
        return attributes

    def _answered(self, call: _Call, outcome: Outcome | None, error: BaseException | None) -> None:
        # only what is not the common case, beside attempts: each attribute costs the SDK
        attributes: dict[str, AttributeValue] = {"dlgraph.attempts": call.attempts}
        if call.attempts:
            attributes["gen_ai.usage.input_tokens"] = call.tokens_in
            attributes["gen_ai.usage.output_tokens"] = call.tokens_out
        if call.retries:
            attributes["dlgraph.retries"] = call.retries
        if call.cache_hit:
            attributes["dlgraph.cache_hit"] = True
        if error is None:
            if not call.attempts and not call.cache_hit:
                attributes["dlgraph.shared"] = True
            if isinstance(outcome, float | int):
                attributes["dlgraph.logprob"] = float(outcome)
            elif isinstance(outcome, tuple) and not all(isinstance(v, str) for v in outcome):
                attributes["dlgraph.logprobs"] = outcome
            elif self.record_content and outcome is not None:
                attributes["gen_ai.output.messages"] = _output_messages(outcome)
        call.span.set_attributes(attributes)
        _end(call.span, error, self.record_content)


def _text(role: str, content: str) -> dict[str, Any]:
    return {"role": role, "parts": [{"type": "text", "content": content}]}


def _input_messages(request: Request) -> str:
    """The conventions' input messages, as a JSON string (spans take no structured values)."""
    if isinstance(request, GenerateRequest | SamplesRequest):
        messages = [_text("user", request.prompt)]
    elif isinstance(request, LogprobRequest):
        messages = [_text("user", request.context), _text("assistant", request.target)]
    elif isinstance(request, ContinuationsRequest):
        texts = request.continuations
        messages = [_text("user", request.context), *(_text("assistant", t) for t in texts)]
    else:
        messages = [_text("user", request.context)]
    return json.dumps(messages, ensure_ascii=False)


def _output_messages(outcome: Outcome) -> str:
    """A generation as the conventions' output messages (backends do not say why it ended),
    several samples as one message each; first-token alternatives as one JSON text part."""
    if isinstance(outcome, tuple) and all(isinstance(v, str) for v in outcome):
        contents = [str(v) for v in outcome]
    elif isinstance(outcome, str):
        contents = [outcome]
    else:
        contents = [json.dumps(outcome, ensure_ascii=False)]
    messages = [_text("assistant", c) | {"finish_reason": "unknown"} for c in contents]
    return json.dumps(messages)
