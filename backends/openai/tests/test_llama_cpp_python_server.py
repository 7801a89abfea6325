"""dlgraph-openai against a real OpenAI-compatible server nobody here wrote: llama-cpp-python's
(``python -m llama_cpp.server``), on 127.0.0.1, serving the same Gemma 3 270M file as the
embedded backend, whose answers are the reference.

Its echo path takes a full-vocabulary log-softmax in Python for every prompt position (about
a second per token on this machine), so every context here is a few tokens long.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is not installed")
llamacpp = pytest.importorskip("dlgraph_llamacpp", reason="dlgraph-llamacpp is not installed")

from dlgraph_openai import OpenAIBackend  # noqa: E402
from dlgraph_openai.profiles import Profile  # noqa: E402

import dlgraph as dg  # noqa: E402
from dlgraph.train.pace import measure  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CONTEXT = "The capital of France is"
N_CTX = 512
TOLERANCE = 0.02
"""Nats (or probability). The server reuses the cached part of its previous prompt, so a prompt
may be evaluated in other chunks than in process, and llama.cpp's CPU kernels round by chunk:
measured differences are up to 0.016 nats, where a misaligned token would cost whole nats."""


SERVE = """
import runpy
from dlgraph_llamacpp.native import llama_loads_with
with llama_loads_with({extra_buffers}):
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""
"""``python -m llama_cpp.server``, with llama.cpp's extra buffer types as this machine allows."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The server on a free port, started for this module and stopped by its process id."""
    from dlgraph_llamacpp.guard import machine_verdict

    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    extra_buffers = machine_verdict().enabled  # on a CPU where they crash, the server dies too
    command = [
        sys.executable, "-c", SERVE.format(extra_buffers=extra_buffers),
        "--model", str(llamacpp.default_model_path()),
        "--logits_all", "true",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--n_ctx", str(N_CTX),
    ]  # fmt: skip
    with log.open("w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        _wait_until_serving(port, process, log)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


def _wait_until_serving(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited ({process.returncode}):\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5):
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the server did not answer within 120 s:\n{log.read_text()[-2000:]}")


def connect(server: str) -> dg.Backend:
    return dg.connect("openai", profile="llama-cpp-python", base_url=server, model="gemma")


@pytest.fixture(scope="module")
def embedded() -> Iterator[dg.Backend]:
    """Every call decoded alone, as the server decodes it: batched decoding moves
    log-probabilities by up to a tenth of a nat (see the embedded model's README section)."""
    yield dg.connect("llamacpp", n_ctx=N_CTX, deterministic=True)


def test_the_profile_promises_exact_log_probs_one_prompt_per_request(server: str) -> None:
    capabilities = connect(server).capabilities
    assert capabilities.exact_logprobs and capabilities.classification == "logprob"
    assert capabilities.max_batch == 1
    assert dg.connect("openai", profile="llama-cpp-python", model="m").identity.startswith(
        "openai:http://127.0.0.1:8000/v1"
    )


async def test_greedy_generation_answers_within_its_token_bound(server: str) -> None:
    async with dg.Engine(connect(server), cache=False) as engine:
        text = await engine.generate(CONTEXT, max_tokens=6)
        assert text.strip()
        assert len(text) < 80
        assert await engine.generate(CONTEXT, max_tokens=6) == text


async def test_exact_log_probs_equal_the_embedded_backends(server: str, embedded) -> None:
    async with dg.Engine(connect(server), cache=False) as remote:
        served = [await remote.logprob(CONTEXT, target) for target in (" Paris", " London")]
    async with dg.Engine(embedded, cache=False) as local:
        ours = [await local.logprob(CONTEXT, target) for target in (" Paris", " London")]
    assert served == pytest.approx(ours, abs=TOLERANCE)
    assert served[0] > served[1]


async def test_a_hand_written_echo_profile_ends_within_seconds(server: str) -> None:
    """The trap the issue found: echo with max_tokens=0 ran until the context was full."""
    profile = Profile(name="mine", base_url=server, api_key_env=None, echo_logprobs=True)
    backend = OpenAIBackend(model="gemma", profile=profile, timeout_s=60)
    started = time.monotonic()
    async with backend:
        assert (await backend.logprob(dg.LogprobRequest(CONTEXT, " Paris"))).value < 0
    assert time.monotonic() - started < 30


def yes_no_network() -> dg.Network:
    net = dg.Network()
    net.add_node("answer", prompt="Is it hot?", classes=["yes", "no"])
    net.add_edge(dg.INPUT, "answer")
    return net


async def test_class_scoring_and_a_dln1_evaluation_agree_with_the_embedded_model(
    server: str, embedded
) -> None:
    examples = [dg.Example("fire", "yes"), dg.Example("ice", "no")]
    results = []
    for backend in (connect(server), embedded):
        async with dg.Engine(backend) as engine:  # evaluate reuses the forward pass's answers
            distribution = await engine.classify("Is fire hot? Answer:", ["yes", "no"])
            trace = await yes_no_network().forward(engine, [e.input for e in examples])
            accuracy = await dg.evaluate(yes_no_network(), engine, examples)
            results.append((distribution, trace.outputs["answer"], float(accuracy)))
    (served, served_outputs, served_accuracy), (ours, our_outputs, our_accuracy) = results
    assert sum(served) == pytest.approx(1.0)
    assert served == pytest.approx(ours, abs=TOLERANCE)
    assert served_outputs == our_outputs and served_accuracy == our_accuracy


async def test_a_request_the_server_refuses_carries_its_own_message(server: str) -> None:
    async with dg.Engine(connect(server), cache=False) as engine:
        with pytest.raises(dg.RequestRejected, match="maximum context length is 512 tokens"):
            await engine.generate("word " * 2 * N_CTX, max_tokens=4)


async def test_the_probe_sees_that_the_server_answers_one_call_at_a_time(server: str) -> None:
    async def write(tag: int) -> int:  # generation: the server's fast path, same queue
        # long enough that the model's work, which the server does one call at a time, and not
        # the HTTP handling around it, which overlaps, decides how long four calls take
        await engine.generate(f"({tag}) Once upon a time, in a faraway land,", max_tokens=24)
        return 1  # calls a probe makes

    async with dg.Engine(connect(server), cache=False) as engine:
        latency = (await measure(engine, {"generate": write})).latency["generate"]
    # four calls at once take several times one (a parallel server: about one; measured here
    # 2.5 to 4 times, less while other processes share the cores), and the projection of a
    # wave of 16 grows with its size, as one call after another does
    assert latency.together_s > 1.75 * latency.alone_s
    assert latency.wave_s(16, ceiling=64) > 3 * latency.alone_s
