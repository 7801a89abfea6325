"""OpenTelemetry spans of calls, forward passes and training steps, read back from the SDK's
in-memory exporter (each test gives its engine its own tracer provider; the global one is only
set in subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator, Sequence

import anyio
import pytest
from dlgraph_sim import ScriptedModel
from letter_world import LetterWorld, single_word_task
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import dlgraph as dg

SECRET = "ZQX"
"""Marks every prompt, input and answer text of the privacy tests."""


class Spans:
    """A tracer provider that keeps every finished span, and the ids of every started one."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.started: set[int] = set()
        self.provider = TracerProvider()
        self.provider.add_span_processor(_Starts(self.started))
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def tracing(self, **options: bool) -> dg.Tracing:
        return dg.Tracing(tracer_provider=self.provider, **options)

    @property
    def finished(self) -> tuple[ReadableSpan, ...]:
        return self.exporter.get_finished_spans()

    def named(self, name: str) -> list[ReadableSpan]:
        """Spans called `name`, or `name` and a target (``dlgraph.node reason``)."""
        return [span for span in self.finished if span.name.partition(" ")[0] == name]

    def calls(self) -> list[ReadableSpan]:
        return [span for span in self.finished if span.kind == SpanKind.CLIENT]

    def parent(self, span: ReadableSpan) -> ReadableSpan | None:
        if span.parent is None:
            return None
        found = [s for s in self.finished if s.context.span_id == span.parent.span_id]
        assert found, f"{span.name}: its parent was never exported"
        return found[0]

    def children(self, span: ReadableSpan) -> list[ReadableSpan]:
        return [s for s in self.finished if s.parent and s.parent.span_id == span.context.span_id]

    def ancestors(self, span: ReadableSpan) -> Iterator[ReadableSpan]:
        parent = self.parent(span)
        while parent is not None:
            yield parent
            parent = self.parent(parent)


class _Starts(SpanProcessor):
    def __init__(self, started: set[int]) -> None:
        self.started = started

    def on_start(self, span: Span, parent_context: object = None) -> None:
        self.started.add(span.context.span_id)


def dln2() -> dg.Network:
    net = dg.Network()
    net.add_node("reason", prompt="Read the input.", max_tokens=16)
    net.add_node("answer", prompt="Answer the question.", classes=["yes|Yes", "no|No"])
    net.add_edge(dg.INPUT, "reason")
    net.add_edge("reason", "answer")
    net.add_edge(dg.INPUT, "answer")
    return net


def texts(spans: Sequence[ReadableSpan]) -> list[str]:
    """Every text a span carries: name, attribute values, event attributes, status."""
    found: list[str] = []

    def add(attributes: object) -> None:
        for value in dict(attributes or {}).values():
            found.extend(map(str, value) if isinstance(value, tuple) else [str(value)])

    for span in spans:
        found.append(span.name)
        add(span.attributes)
        for event in span.events:
            found.append(event.name)
            add(event.attributes)
        found.append(span.status.description or "")
    return found


# -- the tree ---------------------------------------------------------------------------------


async def test_dln2_forward_pass_spans_nest_each_call_under_its_node_and_nodes_under_the_pass() -> (
    None
):
    spans = Spans()
    model = ScriptedModel(generate=lambda r: "thinking")
    async with dg.Engine(model, tracing=spans.tracing()) as engine:
        await dln2().forward(engine, ["x1", "x2"])

    (forward,) = spans.named("dlgraph.forward")
    assert spans.parent(forward) is None
    assert forward.attributes["dlgraph.phase"] == "forward"
    nodes = spans.named("dlgraph.node")
    assert sorted(
        (s.attributes["dlgraph.node"], s.attributes["dlgraph.example"]) for s in nodes
    ) == [
        ("answer", 0),
        ("answer", 1),
        ("reason", 0),
        ("reason", 1),
    ]
    assert all(spans.parent(node) == forward for node in nodes)
    for node in nodes:
        calls = spans.children(node)
        name = node.attributes["dlgraph.node"]
        assert {call.attributes["dlgraph.node"] for call in calls} == {name}
        # "reason" generates once; "answer" scores each of its four verbalizers
        kinds = sorted(call.attributes["dlgraph.request.kind"] for call in calls)
        assert kinds == (["generate"] if name == "reason" else ["logprob"] * 4)
    assert len(spans.calls()) == len(model.calls) == 10
    assert {spans.parent(call).name for call in spans.calls()} <= {
        "dlgraph.node reason",
        "dlgraph.node answer",
    }


async def test_call_span_follows_the_genai_conventions() -> None:
    spans = Spans()
    model = ScriptedModel(generate=lambda r: "hello there")
    async with dg.Engine(model, tracing=spans.tracing()) as engine:
        await engine.generate("Say hi.", max_tokens=8, temperature=0.5, stop=["\n"], seed=3)

    (call,) = spans.finished
    assert call.name == "text_completion scripted"
    assert call.kind == SpanKind.CLIENT
    assert call.instrumentation_scope.name == "dlgraph"
    assert call.instrumentation_scope.schema_url == "https://opentelemetry.io/schemas/1.37.0"
    assert dict(call.attributes) == {
        "gen_ai.operation.name": "text_completion",
        "gen_ai.provider.name": "sim",
        "gen_ai.request.model": "scripted",
        "gen_ai.request.max_tokens": 8,
        "gen_ai.request.temperature": 0.5,
        "gen_ai.request.seed": 3,
        "gen_ai.request.stop_sequences": ("\n",),
        "gen_ai.usage.input_tokens": model.count_tokens("Say hi."),
        "gen_ai.usage.output_tokens": model.count_tokens("hello there"),
        "dlgraph.request.kind": "generate",
        "dlgraph.phase": "forward",
        "dlgraph.attempts": 1,
    }
    assert call.status.status_code == StatusCode.UNSET


async def test_call_span_names_the_model_an_openai_compatible_backend_asks() -> None:
    from dlgraph_openai import OpenAIBackend

    backend = OpenAIBackend("m-7b", base_url="http://127.0.0.1:9/v1", api="chat")
    assert (backend.provider_name, backend.model_name) == ("openai", "m-7b")
    assert backend.operation_name == "chat"


# -- what happened to a call ------------------------------------------------------------------


async def test_retried_call_span_counts_its_retries_and_records_each_failed_attempt() -> None:
    failures = [dg.RateLimited("429", retry_after_s=0.05), dg.TransientError("503")]
    spans = Spans()
    model = ScriptedModel(
        generate=lambda r: "ok",
        fault=lambda request, number: failures[number] if number < len(failures) else None,
    )
    retry = dg.RetryPolicy(initial_wait_s=0.01)
    async with dg.Engine(model, retry=retry, tracing=spans.tracing()) as engine:
        assert await engine.generate("Say hi.", node="greet") == "ok"

    (call,) = spans.finished
    assert call.attributes["dlgraph.attempts"] == 3
    assert call.attributes["dlgraph.retries"] == 2
    assert call.attributes["dlgraph.node"] == "greet"
    assert [event.name for event in call.events] == [
        "dlgraph.rate_limited",
        "dlgraph.attempt_failed",
    ]
    pause, failed = call.events
    assert dict(pause.attributes) == {"error.type": "RateLimited", "dlgraph.retry_after_s": 0.05}
    assert failed.attributes["error.type"] == "TransientError"
    assert call.status.status_code == StatusCode.UNSET  # it succeeded in the end
    assert "error.type" not in call.attributes


async def test_failed_call_span_carries_the_error_type_and_the_error_status() -> None:
    spans = Spans()
    model = ScriptedModel(fault=lambda request, number: dg.RequestRejected("context too long"))
    async with dg.Engine(model, tracing=spans.tracing()) as engine:
        with pytest.raises(dg.RequestRejected):
            await engine.generate("Say hi.")

    (call,) = spans.finished
    assert call.attributes["error.type"] == "RequestRejected"
    assert call.status.status_code == StatusCode.ERROR
    assert call.status.description == "context too long"


async def test_call_answered_from_the_cache_is_a_span_marked_as_a_cache_hit() -> None:
    spans = Spans()
    model = ScriptedModel(generate=lambda r: "hello")
    async with dg.Engine(model, tracing=spans.tracing()) as engine:
        await engine.generate("Say hi.")
        await engine.generate("Say hi.")

    first, second = spans.finished
    assert first.attributes["dlgraph.attempts"] == 1 and "dlgraph.cache_hit" not in first.attributes
    assert second.attributes["dlgraph.cache_hit"] is True
    assert second.attributes["dlgraph.attempts"] == 0
    assert "gen_ai.usage.input_tokens" not in second.attributes


async def test_identical_calls_in_flight_are_two_spans_charged_once() -> None:
    spans = Spans()
    model = ScriptedModel(generate=lambda r: "hello", latency_s=0.05)
    async with dg.Engine(model, tracing=spans.tracing()) as engine:
        async with anyio.create_task_group() as group:
            group.start_soon(lambda: engine.generate("Say hi.", node="a"))
            group.start_soon(lambda: engine.generate("Say hi.", node="b"))

    assert len(model.calls) == 1
    calls = sorted(spans.finished, key=lambda span: span.attributes["dlgraph.node"])
    assert [call.attributes["dlgraph.attempts"] for call in calls] == [1, 0]
    assert calls[1].attributes["dlgraph.shared"] is True
    assert "gen_ai.usage.input_tokens" not in calls[1].attributes  # the ledger charges one


async def test_cancelled_forward_pass_ends_every_span_it_started_without_an_error() -> None:
    spans = Spans()
    model = ScriptedModel(generate=lambda r: "slow", latency_s=60)
    async with dg.Engine(model, tracing=spans.tracing()) as engine:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as group:
                group.start_soon(dln2().forward, engine, ["x1", "x2", "x3"])
                await anyio.wait_all_tasks_blocked()
                scope.cancel()
        # the engine still works, and its next call is traced as usual
        model.latency_s = 0
        await engine.generate("after")

    assert spans.started == {span.context.span_id for span in spans.finished}
    calls = [call for call in spans.calls() if call.attributes.get("dlgraph.node") == "reason"]
    assert len(calls) == 3
    for span in [*calls, *spans.named("dlgraph.node"), *spans.named("dlgraph.forward")]:
        assert span.attributes["dlgraph.cancelled"] is True
        assert span.status.status_code == StatusCode.UNSET
        assert "error.type" not in span.attributes
    (after,) = [call for call in spans.calls() if "dlgraph.cancelled" not in call.attributes]
    assert spans.parent(after) is None and after.attributes["dlgraph.attempts"] == 1


# -- prompts may be private -------------------------------------------------------------------


def secret_network() -> dg.Network:
    net = dln2()
    net.set_parameter("reason", dg.Parameter(f"{SECRET} reason instruction"))
    net.set_parameter("answer", dg.Parameter(f"{SECRET} answer instruction"))
    return net


async def test_spans_hold_no_prompt_input_or_answer_text_by_default() -> None:
    def generate(request: dg.GenerateRequest) -> str:
        if "second" in request.prompt:  # a failure quoting the prompt is no leak either
            raise ValueError(f"cannot read {request.prompt!r}")
        return f"{SECRET} hidden answer"

    spans = Spans()
    async with dg.Engine(ScriptedModel(generate=generate), tracing=spans.tracing()) as engine:
        await secret_network().forward(engine, [f"{SECRET} first input"])
        with pytest.raises(ValueError, match=SECRET):
            await secret_network().forward(engine, [f"{SECRET} second input"])

    assert len(spans.calls()) == 6
    assert spans.calls()[-1].attributes["error.type"] == "ValueError"
    assert [text for text in texts(spans.finished) if SECRET in text] == []


async def test_spans_record_prompts_and_answers_when_asked() -> None:
    spans = Spans()
    model = ScriptedModel(generate=lambda r: f"{SECRET} hidden answer")
    async with dg.Engine(model, tracing=spans.tracing(record_content=True)) as engine:
        trace = await secret_network().forward(engine, [f"{SECRET} input"])

    (generate,) = [c for c in spans.calls() if c.attributes["dlgraph.request.kind"] == "generate"]
    asked = json.loads(generate.attributes["gen_ai.input.messages"])
    assert asked == [
        {"role": "user", "parts": [{"type": "text", "content": trace.rendered["reason"][0]}]}
    ]
    answered = json.loads(generate.attributes["gen_ai.output.messages"])
    assert answered[0]["parts"] == [{"type": "text", "content": f"{SECRET} hidden answer"}]
    assert answered[0]["role"] == "assistant" and "finish_reason" in answered[0]
    scored = [c for c in spans.calls() if c.attributes["dlgraph.request.kind"] == "logprob"]
    for call in scored:
        context, target = json.loads(call.attributes["gen_ai.input.messages"])
        assert context["parts"][0]["content"] == trace.rendered["answer"][0]
        assert target["role"] == "assistant"


# -- training ---------------------------------------------------------------------------------


async def test_training_step_spans_hold_its_phases_and_its_dev_evaluation() -> None:
    spans = Spans()
    world = LetterWorld()
    train, dev = single_word_task(12, seed=1), single_word_task(6, seed=2)
    async with dg.Engine(world.model(), tracing=spans.tracing()) as engine:
        trainer = dg.VariationalTrainer(
            dln2(), engine, num_prompt_samples=2, num_hidden_samples=2, max_demonstrations=0
        )
        result = await trainer.fit(train, dev, steps=2, batch_size=4)

    (fit,) = spans.named("dlgraph.fit")
    assert fit.attributes["dlgraph.stopped"] == result.stopped
    steps = spans.named("dlgraph.step")
    assert sorted(step.attributes["dlgraph.step"] for step in steps) == [1, 2]
    assert all(spans.parent(step) == fit for step in steps)
    for step in steps:  # each step's span holds what its record says
        record = result.history[step.attributes["dlgraph.step"] - 1]
        assert step.attributes["dlgraph.batch_loss"] == record.batch_loss
        assert step.attributes["dlgraph.dev_score"] == record.dev_score
    for step in steps:
        parts = sorted(child.name for child in spans.children(step))
        assert parts == [
            "dlgraph.evaluate",
            "dlgraph.forward",
            "dlgraph.posterior reason",
            "dlgraph.propose",
            "dlgraph.score",
        ]
        assert "dlgraph.dev_score" in step.attributes
    # every call sits under its step's part for its phase, and under the fit
    part_of_phase = {
        "forward": "dlgraph.forward",
        "posterior": "dlgraph.posterior reason",
        "propose": "dlgraph.propose",
        "score": "dlgraph.score",
        "eval": "dlgraph.evaluate",
    }
    calls = spans.calls()
    assert {call.attributes["dlgraph.phase"] for call in calls} == set(part_of_phase)
    for call in calls:
        above = [span.name for span in spans.ancestors(call)]
        assert above[-1] == "dlgraph.fit"
        assert part_of_phase[call.attributes["dlgraph.phase"]] in above


# -- off, on, and the switch ------------------------------------------------------------------


def run_python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


ONE_FORWARD_PASS = """
import anyio, sys
import dlgraph as dg
from dlgraph_sim import ScriptedModel

async def main(**options):
    net = dg.Network()
    net.add_node("a", prompt="Say A.")
    net.add_edge(dg.INPUT, "a")
    async with dg.Engine(ScriptedModel(), **options) as engine:
        await net.forward(engine, ["x"])
        return engine.tracer.is_recording
"""


def test_tracing_is_off_and_imports_nothing_without_a_tracer_provider() -> None:
    code = ONE_FORWARD_PASS + (
        "recording = anyio.run(main)\n"
        "print(recording, sorted(m for m in sys.modules if m.startswith('opentelemetry')))"
    )
    assert run_python(code) == "False []"


def test_engine_traces_to_the_global_tracer_provider_the_application_set() -> None:
    code = ONE_FORWARD_PASS + (
        "from opentelemetry import trace\n"
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "from opentelemetry.sdk.trace.export import SimpleSpanProcessor\n"
        "from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter\n"
        "exporter = InMemorySpanExporter()\n"
        "provider = TracerProvider()\n"
        "provider.add_span_processor(SimpleSpanProcessor(exporter))\n"
        "trace.set_tracer_provider(provider)\n"
        "by_default = anyio.run(main)\n"
        "names = sorted(span.name for span in exporter.get_finished_spans())\n"
        "exporter.clear()\n"
        "switched_off = anyio.run(lambda: main(tracing=False))\n"
        "print(by_default, names, switched_off, len(exporter.get_finished_spans()))"
    )
    assert run_python(code) == (
        "True ['dlgraph.forward', 'dlgraph.node a', 'text_completion scripted'] False 0"
    )


async def test_engine_without_opentelemetry_says_which_extra_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "dlgraph.engine._otel", None)  # as if it could not import
    with pytest.raises(ImportError, match=r"pip install 'dlgraph\[otel\]'"):
        async with dg.Engine(ScriptedModel(), tracing=True):
            pass


def test_engine_refuses_a_tracing_setting_it_does_not_know() -> None:
    with pytest.raises(TypeError, match="tracing: expected 'auto', true, false or a dg.Tracing"):
        dg.Engine(ScriptedModel(), tracing="on")
    with pytest.raises(TypeError, match="record_content"):
        dg.Tracing(record_content="yes")


async def test_an_engine_given_a_tracer_provider_says_it_is_recording() -> None:
    async with dg.Engine(ScriptedModel(), tracing=Spans().tracing()) as engine:
        assert engine.tracer.is_recording is True
    async with dg.Engine(ScriptedModel(), tracing=False) as engine:
        assert engine.tracer.is_recording is False


async def test_auto_tracing_follows_the_global_tracer_provider_in_this_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from opentelemetry import trace

    async with dg.Engine(ScriptedModel()) as engine:  # no provider set: the API's proxy one
        assert engine.tracer.is_recording is False
        await engine.generate("untraced")
    spans = Spans()
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: spans.provider)
    async with dg.Engine(ScriptedModel()) as engine:
        assert engine.tracer.is_recording is True
        await engine.generate("traced")
    assert [call.name for call in spans.calls()] == ["text_completion scripted"]


async def test_recorded_prompts_and_answers_keep_non_ascii_text_readable() -> None:
    spans = Spans()
    model = ScriptedModel(generate=lambda r: "très bien")
    async with dg.Engine(model, tracing=spans.tracing(record_content=True)) as engine:
        await engine.generate("Ça va? 日本")

    (call,) = spans.calls()
    assert "Ça va? 日本" in call.attributes["gen_ai.input.messages"]  # not \\u escapes
    (answered,) = json.loads(call.attributes["gen_ai.output.messages"])
    assert answered["parts"][0]["content"] == "très bien"


async def test_recorded_first_token_alternatives_keep_non_ascii_tokens_readable() -> None:
    class FirstTokens(dg.Backend):
        capabilities = dg.Capabilities(exact_logprobs=False, top_logprobs=2)

        async def top_logprobs(self, request: dg.TopLogprobsRequest) -> dict[str, float]:
            return {" oui": -0.1, " déjà": -2.5}

    spans = Spans()
    async with dg.Engine(FirstTokens(), tracing=spans.tracing(record_content=True)) as engine:
        await engine.classify("Réponse:", ["oui", "déjà"])

    (call,) = spans.calls()
    (answered,) = json.loads(call.attributes["gen_ai.output.messages"])
    content = answered["parts"][0]["content"]
    assert "déjà" in content and json.loads(content) == {" oui": -0.1, " déjà": -2.5}


async def test_one_request_sent_twice_keeps_its_tokens_on_the_span_of_the_caller_who_stayed() -> (
    None
):
    class Held(dg.Backend):
        def __init__(self) -> None:
            self.release = anyio.Event()
            self.calls = 0

        async def generate(self, request: dg.GenerateRequest) -> str:
            self.calls += 1
            await self.release.wait()
            return "hello there"

    spans = Spans()
    model = Held()
    request = dg.GenerateRequest("Say hi.", node="n")
    async with dg.Engine(model, tracing=spans.tracing()) as engine:
        async with anyio.create_task_group() as group:
            leaver = anyio.CancelScope()

            async def leaving() -> None:
                with leaver:
                    await engine.request(request)

            group.start_soon(leaving)
            group.start_soon(engine.request, request)
            await anyio.wait_all_tasks_blocked()
            leaver.cancel()  # one caller leaves while the shared call is in flight
            await anyio.wait_all_tasks_blocked()
            model.release.set()

    assert model.calls == 1
    left, stayed = sorted(spans.calls(), key=lambda call: "dlgraph.cancelled" in call.attributes)[
        ::-1
    ]
    assert left.attributes["dlgraph.cancelled"] is True
    assert stayed.attributes["gen_ai.usage.input_tokens"] == model.count_tokens("Say hi.")
    assert stayed.attributes["gen_ai.usage.output_tokens"] == model.count_tokens("hello there")
