"""A pool of model replicas on Ray: routing, a replica killed mid-run, bad options, and the
embedded model hosted in a replica."""

from __future__ import annotations

import sys
import time

import anyio
import pytest
import ray
from dlgraph_ray import ReplicaPool
from dlgraph_sim import ScriptedModel
from dlgraph_sim.server import ServerConfig, ServerProcess

import dlgraph as dg

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]


def echo(request: dg.GenerateRequest) -> str:
    return "answer to " + request.prompt


def refuse(request: dg.GenerateRequest | dg.LogprobRequest, number: int) -> Exception | None:
    return (
        dg.RequestRejected("no, said the server")
        if "refuse" in getattr(request, "prompt", "")
        else None
    )


def pool(replicas: int, latency_s: float, **options: object) -> dg.Backend:
    return dg.connect(
        "ray",
        backend="sim",
        replicas=replicas,
        num_cpus=0.5,
        generate=echo,
        latency_s=latency_s,
        capabilities=dg.Capabilities(max_concurrency=1),
        **options,
    )


async def test_calls_go_to_the_least_loaded_replica() -> None:
    backend = pool(2, 0.2)
    assert isinstance(backend, ReplicaPool)
    assert backend.identity == "sim:scripted"
    assert backend.capabilities.max_concurrency == 2  # one each
    seen: list[list[int]] = []
    async with dg.Engine(backend, cache=False) as engine, anyio.create_task_group() as group:
        for index in range(8):
            group.start_soon(engine.generate, f"prompt {index}")
        await anyio.sleep(0.1)
        seen.append(backend.statistics())
    assert seen == [[1, 1]]


def test_each_replica_reserves_the_cpus_it_was_given() -> None:
    def reserved() -> float:
        return float(ray.cluster_resources()["CPU"] - ray.available_resources().get("CPU", 0.0))

    def settle(expected: float) -> float:
        deadline = time.monotonic() + 20  # Ray frees and reserves asynchronously
        while reserved() != pytest.approx(expected) and time.monotonic() < deadline:
            time.sleep(0.1)
        return reserved()

    assert settle(0.0) == pytest.approx(0.0)  # the other tests' replicas are gone
    backend = pool(2, 0.0)  # 0.5 CPU each
    assert settle(1.0) == pytest.approx(1.0)
    anyio.run(backend.aclose)
    assert settle(0.0) == pytest.approx(0.0)


async def test_a_pool_survives_a_killed_replica_with_no_call_lost() -> None:
    backend = pool(2, 0.1)
    assert isinstance(backend, ReplicaPool)
    prompts = [f"prompt {index}" for index in range(30)]
    answers: dict[str, str] = {}
    async with dg.Engine(backend, cache=False) as engine:

        async def one(prompt: str) -> None:
            answers[prompt] = await engine.generate(prompt)

        async with anyio.create_task_group() as group:
            for prompt in prompts:
                group.start_soon(one, prompt)
            await anyio.sleep(0.5)
            victim = backend.actors()[0]
            ray.kill(victim)
        assert answers == {prompt: "answer to " + prompt for prompt in prompts}
        assert backend.replaced == 1
        assert victim not in backend.actors() and len(backend.actors()) == 2
        assert await engine.generate("after") == "answer to after"
        assert engine.statistics().total.errors == 0  # the engine never saw a failure


async def test_a_backend_error_in_a_replica_reaches_the_engine_with_its_type() -> None:
    backend = pool(1, 0.0, fault=refuse)
    async with dg.Engine(backend, cache=False) as engine:
        with pytest.raises(dg.RequestRejected, match="no, said the server"):
            await engine.generate("refuse this", node="answer")
        assert await engine.generate("fine") == "answer to fine"


async def test_a_replicas_answer_brings_the_servers_token_counts_to_the_engine() -> None:
    """The usage travels with the answer through the actor: the ledger holds the server's
    count of the prompt (6 tokens), not the pool's estimate of four characters a token (2)."""
    with ServerProcess(ServerConfig()) as server:
        options = {"base_url": server.url, "model": "sim-1", "profile": "sim"}
        backend = dg.connect("ray", backend="openai", replicas=1, num_cpus=0.5, **options)
        async with dg.Engine(backend, cache=False) as engine:
            await engine.generate("a b c d e f", max_tokens=2)
    assert engine.statistics().total.tokens_in == 6


async def test_a_class_distribution_in_one_call_is_forwarded_whole_to_a_replica() -> None:
    """The pool states the replica's capability and sends the continuations request as one
    unit of work; the values are the replica backend's."""
    backend = dg.connect(
        "ray",
        backend="sim",
        replicas=1,
        num_cpus=0.5,
        capabilities=dg.Capabilities(continuations=8),
    )
    assert backend.capabilities.continuations == 8
    async with dg.Engine(backend, cache=False) as engine:
        distribution = await engine.classify("Is it so? Answer:", ["yes|Yes", "no"])
        assert engine.statistics().total.calls == 1
    local = ScriptedModel(capabilities=dg.Capabilities(continuations=8))
    async with dg.Engine(local) as engine:
        assert distribution == pytest.approx(
            await engine.classify("Is it so? Answer:", ["yes|Yes", "no"])
        )


async def test_samples_of_one_prompt_in_one_call_are_forwarded_whole_to_a_replica() -> None:
    backend = dg.connect(
        "ray", backend="sim", replicas=1, num_cpus=0.5, capabilities=dg.Capabilities(samples=8)
    )
    assert backend.capabilities.samples == 8
    async with dg.Engine(backend, cache=False) as engine:
        texts = await engine.samples("Say a word:", 5, temperature=1.0)
        assert engine.statistics().total.calls == 1
    assert texts == [""] * 5  # the scripted replica's silent rule, sample by sample


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"backend": "nope"}, dg.UnknownBackend, "unknown backend 'nope'"),
        ({"backend": "ray"}, ValueError, "cannot itself be a pool"),
        ({"backend": 3}, TypeError, "backend: expected the name"),
        ({"backend": "sim", "replicas": 0}, ValueError, "replicas: expected an integer >= 1"),
        ({"backend": "sim", "replicas": True}, ValueError, "replicas: expected an integer >= 1"),
        ({"backend": "sim", "num_cpus": -1}, ValueError, "num_cpus: expected a number >= 0"),
        ({"backend": "sim", "num_gpus": "one"}, ValueError, "num_gpus: expected a number >= 0"),
        ({"backend": "sim", "max_attempts": 0}, ValueError, "max_attempts: expected an integer"),
        ({"backend": "sim", "no_such_option": 1}, TypeError, "sim: .*'no_such_option'"),
    ],
)
def test_bad_pool_options_are_refused_naming_the_option(
    options: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        dg.connect("ray", **options)


@pytest.mark.timeout(240)
async def test_a_replica_hosts_the_embedded_model_and_answers_as_it_does_in_process() -> None:
    options = {"n_ctx": 256, "n_threads": 1, "deterministic": True}
    context, target = "The capital of France is", " Paris"
    async with dg.Engine(dg.connect("llamacpp", **options), cache=False) as engine:
        local = await engine.logprob(context, target)
        local_text = await engine.generate(context, max_tokens=6)
    backend = dg.connect("ray", backend="llamacpp", replicas=1, num_cpus=1, **options)
    assert backend.identity == dg.connect("llamacpp", **options).identity
    async with dg.Engine(backend, cache=False) as engine:
        remote = await engine.logprob(context, target)
        remote_text = await engine.generate(context, max_tokens=6)
        usage = engine.statistics().total
    assert remote == pytest.approx(local, abs=1e-6) and remote < -0.1
    assert remote_text == local_text
    assert usage.tokens_in > 0  # the replica's reported usage reached this engine's ledger
