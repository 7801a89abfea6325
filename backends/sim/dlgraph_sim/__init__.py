"""A scripted language model: dlgraph's test double, made from plain functions.

``ScriptedModel(generate=fn, logprob=fn)`` answers each request with what the functions say,
can wait a given latency and raise scripted failures, and records every call with its start
and end time so that tests can count and order calls. Given
``capabilities=dg.Capabilities(continuations=n)``, it scores several continuations of one
context in one call, each as `logprob` scores it alone; given ``samples=n``, it draws several
samples of one prompt in one call, each as `generate` draws its seed alone.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import attrs

import dlgraph as dg
from dlgraph import plugin

__all__ = ["CallRecord", "ScriptedModel", "stable_random"]

GenerateRule = Callable[[dg.GenerateRequest], str]
LogprobRule = Callable[[dg.LogprobRequest], float]
ScriptedRequest = (
    dg.GenerateRequest | dg.LogprobRequest | dg.ContinuationsRequest | dg.SamplesRequest
)
FaultRule = Callable[[ScriptedRequest, int], Exception | None]


def stable_random(*parts: object) -> float:
    """A number in [0, 1) fixed by its arguments: deterministic across runs and processes."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _table(rules: Mapping[Any, Any]) -> GenerateRule:
    """A table of ``{pattern: text}``; every pattern is compiled here, so that a bad one
    (from a config file, say) is refused on construction, not at the first call."""
    compiled = []
    for pattern, text in rules.items():
        if not isinstance(pattern, str) or not isinstance(text, str):
            raise TypeError(
                f"generate: expected a table of {{pattern: text}}, got {plugin.excerpt(pattern)}: "
                f"{plugin.excerpt(text)}"
            )
        try:
            compiled.append((re.compile(pattern), text))
        except re.error as error:
            raise ValueError(
                f"generate: {plugin.excerpt(pattern)} is not a valid pattern ({error})"
            ) from None

    def generate(request: dg.GenerateRequest) -> str:
        for pattern, answer in compiled:
            if pattern.search(request.prompt):
                return answer
        return ""

    return generate


def _default_logprob(request: dg.LogprobRequest) -> float:
    return -1.0 - stable_random(request.context, request.target)


def _silent(request: dg.GenerateRequest) -> str:
    return ""


def _as_rule(rule: GenerateRule | Mapping[str, str]) -> GenerateRule:
    if isinstance(rule, Mapping):
        return _table(rule)
    if not callable(rule):
        raise TypeError(
            "generate: expected a function of the request or a table of {pattern: text}, "
            f"got {plugin.excerpt(rule)}"
        )
    return rule


def _function(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if attribute.name == "fault":
        if value is not None and not callable(value):
            raise TypeError(
                f"fault: expected None or a function of (request, call number), got {plugin.excerpt(value)}"
            )
    elif not callable(value):
        raise TypeError(
            f"{attribute.alias}: expected a function of the request, got {plugin.excerpt(value)}"
        )


def _latency(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """Seconds waited per call (finite: a call that never ends is a `fault`), or a function
    of the request giving them."""
    if callable(value):
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(
            f"latency_s: expected seconds (a number >= 0) or a function of the request, "
            f"got {plugin.excerpt(value)}"
        )
    plugin.check_number("latency_s", value, 0)


def _name(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"name: expected text, got {plugin.excerpt(value)}")
    if not value:
        raise ValueError("name: expected a non-empty text (it names the model in its identity)")


def _capabilities(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, dg.Capabilities):
        raise TypeError(
            f"capabilities: expected a dlgraph.Capabilities, got {plugin.excerpt(value)}"
        )


@attrs.frozen
class CallRecord:
    request: ScriptedRequest
    started: float
    finished: float
    result: str | float | tuple[float, ...] | tuple[str, ...] | None


@attrs.define(eq=False)
class ScriptedModel(dg.Backend):
    """Deterministic model from rules.

    `generate` is a function of the request, or a table ``{regex: text}`` matched against the
    prompt (first match wins, else ""). `logprob` is a function of the request. `fault` may
    return an exception to raise for (request, call number). `latency_s` is waited per call.
    Every option is checked on construction, naming it: they may come from a config file's
    ``[backend] options``.
    """

    generate_rule: GenerateRule = attrs.field(default=_silent, alias="generate", converter=_as_rule)
    logprob_rule: LogprobRule = attrs.field(
        default=_default_logprob, alias="logprob", validator=_function
    )
    fault: FaultRule | None = attrs.field(default=None, validator=_function)
    latency_s: float | Callable[[Any], float] = attrs.field(default=0.0, validator=_latency)
    name: str = attrs.field(default="scripted", validator=_name)
    capabilities: dg.Capabilities = attrs.field(factory=dg.Capabilities, validator=_capabilities)
    calls: list[CallRecord] = attrs.field(factory=list, init=False)
    closed: bool = attrs.field(default=False, init=False)

    @property
    def identity(self) -> str:
        return f"sim:{self.name}"

    def count(self, kind: str = "", node: str | None = None, phase: str | None = None) -> int:
        """How many calls match: kind ``generate`` (one sample or several) / ``logprob``
        (every scoring call, one or several continuations), node and phase."""
        writes = dg.GenerateRequest | dg.SamplesRequest
        return sum(
            1
            for record in self.calls
            if (not kind or (kind == "generate") == isinstance(record.request, writes))
            and (node is None or record.request.node == node)
            and (phase is None or record.request.phase == phase)
        )

    async def _answer(self, request: Any, rule: Callable[[Any], Any]) -> Any:
        number = len(self.calls)
        started = anyio.current_time()
        record_index = len(self.calls)
        self.calls.append(CallRecord(request, started, started, None))
        latency = self.latency_s(request) if callable(self.latency_s) else self.latency_s
        if latency:
            await anyio.sleep(latency)
        error = self.fault(request, number) if self.fault else None
        result = None if error else rule(request)
        self.calls[record_index] = CallRecord(request, started, anyio.current_time(), result)
        if error:
            raise error
        return result

    async def generate(self, request: dg.GenerateRequest) -> str:
        return str(await self._answer(request, self.generate_rule))

    async def logprob(self, request: dg.LogprobRequest) -> float:
        return float(await self._answer(request, self.logprob_rule))

    async def continuations(self, request: dg.ContinuationsRequest) -> tuple[float, ...]:
        """One call: each continuation as `logprob` scores it alone (same node and phase)."""
        if len(request.continuations) > self.capabilities.continuations:
            raise dg.RequestRejected(
                f"{self.identity}: {len(request.continuations)} continuations in one call, "
                f"{self.capabilities.continuations} at most"
            )

        def rule(asked: dg.ContinuationsRequest) -> tuple[float, ...]:
            return tuple(float(self.logprob_rule(each)) for each in asked.each())

        result: tuple[float, ...] = await self._answer(request, rule)
        return result

    async def samples(self, request: dg.SamplesRequest) -> tuple[str, ...]:
        """One call: each sample as `generate` draws its seed alone (same node and phase); a
        request of more samples than `capabilities.samples` is refused, as a server would."""
        if request.count > self.capabilities.samples:
            raise dg.RequestRejected(
                f"{self.identity}: {request.count} samples in one call, "
                f"{self.capabilities.samples} at most"
            )

        def rule(asked: dg.SamplesRequest) -> tuple[str, ...]:
            return tuple(str(self.generate_rule(each)) for each in asked.each())

        result: tuple[str, ...] = await self._answer(request, rule)
        return result

    async def aclose(self) -> None:
        self.closed = True
