"""The async forward pass on the scripted model."""

from __future__ import annotations

import math

import anyio
import pytest
from dlgraph_sim import ScriptedModel
from fake_clock import FakeClock

import dlgraph as dg


def diamond() -> dg.Network:
    net = dg.Network()
    net.add_node("a", prompt="Say A.")
    net.add_node("b", prompt="Say B.")
    net.add_node("c", prompt="Combine.")
    for source, target in [
        (dg.INPUT, "a"),
        (dg.INPUT, "b"),
        ("a", "c"),
        ("b", "c"),
        (dg.INPUT, "c"),
    ]:
        net.add_edge(source, target)
    return net


def echo_model(latency_s: float = 0.0) -> ScriptedModel:
    def generate(request: dg.GenerateRequest) -> str:
        first_line = request.prompt.splitlines()[0]
        x = request.prompt.split("Input: ")[-1].splitlines()[0]
        return {"Say A.": f"A({x})", "Say B.": f"B({x})"}.get(first_line, "done")

    return ScriptedModel(generate=generate, latency_s=latency_s)


async def test_forward_diamond_gives_c_both_parents_and_the_input() -> None:
    model = echo_model()
    async with dg.Engine(model) as engine:
        trace = await diamond().forward(engine, ["x1", "x2"])
    assert trace.outputs["a"] == ("A(x1)", "A(x2)")
    assert trace.rendered["c"][1] == "Combine.\n\na: A(x2)\nb: B(x2)\nInput: x2\nOutput:"
    assert trace.outputs["c"] == ("done", "done")
    assert model.count("generate", node="c") == 2


async def test_forward_runs_independent_nodes_at_the_same_time() -> None:
    model = echo_model(latency_s=0.05)
    async with dg.Engine(model) as engine:
        await diamond().forward(engine, ["x"])
    a, b, c = (next(r for r in model.calls if r.request.node == n) for n in "abc")
    assert b.started < a.finished and a.started < b.finished  # a and b overlap
    assert c.started >= max(a.finished, b.finished)  # c waits for both parents


async def test_forward_moves_an_example_on_without_waiting_for_the_batch() -> None:
    def latency(request: dg.GenerateRequest) -> float:
        return 0.2 if "Input: slow" in request.prompt and request.node == "a" else 0.01

    model = ScriptedModel(generate=lambda r: "out", latency_s=latency)
    async with dg.Engine(model) as engine:
        await diamond().forward(engine, ["slow", "fast"])
    fast_c = next(
        r for r in model.calls if r.request.node == "c" and "Input: fast" in r.request.prompt
    )
    slow_a = next(
        r for r in model.calls if r.request.node == "a" and "Input: slow" in r.request.prompt
    )
    assert fast_c.finished < slow_a.finished


async def test_class_node_outputs_most_probable_class_name() -> None:
    net = dg.Network()
    net.add_node("answer", prompt="Is it even?", classes=["yes|Yes", "no|No"])
    net.add_edge(dg.INPUT, "answer")

    def logprob(request: dg.LogprobRequest) -> float:
        even = int(request.context.split("Input: ")[1].split()[0]) % 2 == 0
        return -0.1 if (request.target.strip().lower() == "yes") == even else -3.0

    async with dg.Engine(ScriptedModel(logprob=logprob)) as engine:
        assert await net.predict(engine, ["2", "3"]) == ["yes", "no"]


async def test_forward_validates_before_any_call() -> None:
    net = diamond()
    net.add_edge("c", "a")
    model = echo_model()
    async with dg.Engine(model) as engine:
        with pytest.raises(dg.GraphError, match="cycle"):
            await net.forward(engine, ["x"])
    assert model.calls == []


async def test_forward_works_inside_a_task_group_of_a_running_loop() -> None:
    results: list[list[str]] = []
    async with dg.Engine(echo_model()) as engine:
        async with anyio.create_task_group() as task_group:
            for x in ("p", "q"):

                async def run(x: str = x) -> None:
                    results.append(await diamond().predict(engine, [x]))

                task_group.start_soon(run)
    assert sorted(results) == [["done"], ["done"]]


async def test_cancelled_forward_leaves_no_task_running() -> None:
    model = echo_model(latency_s=10.0)

    def busy() -> int:  # idle engine workers wait for their next job; they hold no call
        return sum(1 for task in anyio.get_running_tasks() if "Workers._work" not in task.name)

    async with dg.Engine(model) as engine:
        before = busy()
        with anyio.move_on_after(0.1):
            await diamond().forward(engine, ["x", "y", "z"])
        await anyio.wait_all_tasks_blocked()
        assert busy() == before
        assert len(model.calls) == 6  # a and b started on three examples; c never did
        assert all(record.result is None for record in model.calls)


async def test_forward_failure_raises_the_backend_error_tagged_with_node() -> None:
    def fault(request, number):
        return dg.RequestRejected("prompt too long") if request.node == "b" else None

    async with dg.Engine(ScriptedModel(generate=lambda r: "x", fault=fault)) as engine:
        with pytest.raises(dg.RequestRejected) as caught:
            await diamond().forward(engine, ["x"])
    assert caught.value.node == "b" and caught.value.phase == "forward"
    assert "node 'b'" in str(caught.value)


async def test_calibrated_class_node_removes_the_prompts_bias() -> None:
    def logprob(request: dg.LogprobRequest) -> float:
        text = request.context.split("Input: ")[1].split("\n")[0]
        p_yes = {"N/A": 0.7, "even": 0.8, "odd": 0.6}[text]  # the prompt leans towards yes
        return math.log(p_yes if request.target.strip().lower() == "yes" else 1 - p_yes) - math.log(
            2
        )

    def network(calibrate: bool) -> dg.Network:
        net = dg.Network()
        net.add_node("answer", prompt="Even?", classes=["yes|Yes", "no|No"], calibrate=calibrate)
        net.add_edge(dg.INPUT, "answer")
        return net

    async with dg.Engine(ScriptedModel(logprob=logprob)) as engine:
        assert await network(False).predict(engine, ["even", "odd"]) == ["yes", "yes"]
        assert await network(True).predict(engine, ["even", "odd"]) == ["yes", "no"]


def test_calibrate_is_refused_on_a_generation_node() -> None:
    with pytest.raises(dg.GraphError, match="node 'a': calibrate applies to class nodes only"):
        dg.Network().add_node("a", prompt="x", calibrate=True)


async def test_forward_under_a_rate_limit_sends_an_examples_next_node_before_other_examples() -> (
    None
):
    """Deeper nodes go first when calls queue for the rate limit, so examples finish as the
    batch goes rather than all at the end."""
    clock = FakeClock()
    net = dg.Network()
    net.add_node("a", prompt="Say A.")
    net.add_node("b", prompt="Say B.")
    net.add_edge(dg.INPUT, "a")
    net.add_edge("a", "b")
    model = ScriptedModel(generate=lambda request: request.prompt)  # every input its own output

    async def body() -> None:
        async with dg.Engine(model, rpm=60, clock=clock.time, sleep=clock.sleep) as engine:
            await net.forward(engine, ["x1", "x2", "x3"])

    async with anyio.create_task_group() as group:
        group.start_soon(clock.drive)
        await body()
        group.cancel_scope.cancel()
    assert [call.request.node for call in model.calls] == ["a", "b", "a", "b", "a", "b"]


async def test_forward_refuses_a_node_no_output_depends_on_before_any_call() -> None:
    net = dg.Network()
    net.add_node("a", prompt="Say A.", output=True)
    net.add_node("stray", prompt="Say B.")
    net.add_edge(dg.INPUT, "a")
    net.add_edge(dg.INPUT, "stray")
    model = echo_model()
    async with dg.Engine(model) as engine:
        with pytest.raises(dg.GraphError, match="node 'stray': no output depends on it"):
            await net.forward(engine, ["x"])
    assert model.calls == []
