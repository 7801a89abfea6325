"""How fast and how reliably clients get a DLN-2 training step's calls through a rate-limited,
faulty OpenAI-compatible server. Everything below runs side by side in one run:

* dlgraph's Engine (dlgraph-openai);
* the reference DLN client's two patterns, re-implemented: per prompt in blocking mini-batches
  of 20 (gather; on any error wait 4 to 10 s and retry), and 20 prompts per /v1/completions
  request, one request at a time (same retries);
* the official `openai` SDK behind an asyncio semaphore of 64 (its default retries).

The simulated server (dlgraph_sim.server) runs in its own process, fresh for every run.
Scenarios: RPM-bound and TPM-bound, each with 1% 5xx and 0.5% dropped connections; RPM-bound
with coalescing (8 prompts per request). Then the engine's own CPU overhead per call against
an instant in-process backend: as configured by default, with the ledger journalled to a file
(as `dlgraph train` does), and with tracing on (OpenTelemetry SDK).

    python bench/engine.py              # about 15 minutes
    python bench/engine.py --quick      # a smaller workload, about 5 minutes
    python bench/engine.py --scenarios  # the CPU overhead only, about a minute
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import attrs
from dlgraph_sim.server import ServerConfig, ServerProcess

import dlgraph as dg
from dlgraph._tasks import map_concurrently

WORDS = "the a to of and walk left right step turn back forward yes no answer because so then we it is".split()
SERVER_LATENCY_S = 0.2
TIME_CAP_S = float(os.environ.get("BENCH_TIME_CAP_S", "150"))
_deadline = [float("inf")]


def past_cap() -> bool:
    """Clients stop issuing new calls after the time cap; the rest of the run is extrapolated."""
    return time.perf_counter() > _deadline[0]


@attrs.frozen
class Call:
    kind: str  # "generate" or "logprob"
    text: str
    max_tokens: int = 0
    target: str = ""


def words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(count))


def dln2_step(
    seed: int, batch: int = 20, hidden: int = 5, candidates: int = 20
) -> list[list[Call]]:
    """The calls of one DLN-2 step, phase by phase (a phase needs the one before it)."""
    rng = random.Random(seed)
    inputs = [f"question {i}: " + words(rng, 60) for i in range(batch)]

    def lp(context: str, target: str) -> Call:
        return Call("logprob", context, target=target)

    forward_reason = [Call("generate", "Think it through.\n" + x + "\nOutput:", 48) for x in inputs]
    forward_answer = [
        lp("Answer.\n" + x + "\nreason: " + words(rng, 30) + "\nAnswer:", v)
        for x in inputs
        for v in (" yes", " no")
    ]
    posterior = [
        Call("generate", f"Improve the reasoning (sample {k}).\n" + x + "\n" + words(rng, 60), 48)
        for x in inputs
        for k in range(hidden)
    ]
    evidence = [
        lp(f"Answer.\n{x}\nreason: {words(rng, 30)} {k}\nAnswer:", v)
        for x in inputs
        for k in range(hidden + 1)
        for v in (" yes", " no", " prior")
    ]
    propose = [
        Call("generate", f"Rewrite the instruction ({node} {m}).\n" + words(rng, 250), 80)
        for node in ("reason", "answer")
        for m in range(candidates)
    ]
    score = [
        lp(f"Prompt {c}.\n{x}\nreason: {words(rng, 30)} {t}\nAnswer:", v)
        for c in range(candidates + 1)
        for x in inputs
        for t in range(2)
        for v in (" yes", " no")
    ]
    return [forward_reason, forward_answer, posterior, evidence, propose, score]


def sim_tokens(text: str) -> int:
    from dlgraph_sim.server import tokenize

    return len(tokenize(text))


def workload_size(workload: list[list[Call]]) -> tuple[int, int]:
    calls = sum(len(phase) for phase in workload)
    tokens = sum(sim_tokens(c.text + c.target) + c.max_tokens for phase in workload for c in phase)
    return calls, tokens


@attrs.frozen
class Scenario:
    name: str
    rpm: float | None
    tpm: float | None
    error_rate: float = 0.01
    drop_rate: float = 0.005
    coalesce: bool = False
    """The coalescing scenario: dlgraph at 8 prompts per request instead of one."""


@attrs.define
class Outcome:
    client: str
    wall_s: float
    done: int
    failed: int
    latencies: list[float]
    cpu_s: float
    capped: bool = False
    attempts: dict[str, int] = attrs.Factory(dict)


# -- the server, in its own process ------------------------------------------------------------


def start_server(scenario: Scenario, seed: int) -> ServerProcess:
    return ServerProcess(
        ServerConfig(
            seed=seed,
            latency_median_s=SERVER_LATENCY_S,
            latency_sigma=0.3,
            error_rate=scenario.error_rate,
            drop_rate=scenario.drop_rate,
            max_batch=64,
            rpm=scenario.rpm or None,
            tpm=scenario.tpm or None,
        )
    )


# -- clients -----------------------------------------------------------------------------------

Runner = Callable[[str, list[list[Call]], Scenario, list[float]], Awaitable[int]]


async def dlgraph_engine(
    url: str,
    workload: list[list[Call]],
    scenario: Scenario,
    latencies: list[float],
    max_batch: int | None = None,
    coalesce_ms: float | str = "auto",
) -> int:
    """The engine as a user would set it up: the server's limits, no cache (every call real).
    By default it coalesces (under an rpm limit) up to the profile's 64 prompts per request."""
    from dlgraph_openai import OpenAIBackend

    backend = OpenAIBackend(
        "sim-1",
        base_url=url,
        profile="sim",
        timeout_s=30,
        tokenizer=sim_tokens,
        max_batch=max_batch,
    )
    async with dg.Engine(
        backend, rpm=scenario.rpm, tpm=scenario.tpm, cache=False, coalesce_ms=coalesce_ms
    ) as engine:

        async def one(call: Call) -> None:
            started = time.perf_counter()
            if call.kind == "generate":
                await engine.generate(call.text, max_tokens=call.max_tokens, temperature=0.7)
            else:
                await engine.logprob(call.text, call.target)
            latencies.append(time.perf_counter() - started)

        for phase in workload:
            await map_concurrently(one, phase)
    return 0


async def dlgraph_single(
    url: str, workload: list[list[Call]], scenario: Scenario, latencies: list[float]
) -> int:
    return await dlgraph_engine(url, workload, scenario, latencies, coalesce_ms=0)


async def dlgraph_eight(
    url: str, workload: list[list[Call]], scenario: Scenario, latencies: list[float]
) -> int:
    return await dlgraph_engine(url, workload, scenario, latencies, max_batch=8, coalesce_ms=50)


def _body(calls: list[Call]) -> dict[str, Any]:
    texts = [c.text + c.target for c in calls]
    prompt: str | list[str] = texts if len(texts) > 1 else texts[0]
    if calls[0].kind == "generate":
        return {
            "model": "sim-1",
            "prompt": prompt,
            "max_tokens": calls[0].max_tokens,
            "temperature": 0.7,
        }
    return {"model": "sim-1", "prompt": prompt, "max_tokens": 0, "echo": True, "logprobs": 0}


async def _post_with_reference_retries(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any]
) -> bool:
    """The reference client's retry: any failure waits 4 to 10 s (exponential, no jitter)."""
    for attempt in range(20):
        try:
            async with session.post(url + "/completions", json=body) as response:
                if response.status == 200:
                    await response.json()
                    return True
                await response.read()
        except (TimeoutError, aiohttp.ClientError, ValueError):
            pass

        await asyncio.sleep(min(10.0, max(4.0, 2.0**attempt)))
    return False


async def reference_per_prompt(
    url: str, workload: list[list[Call]], scenario: Scenario, latencies: list[float]
) -> int:
    failed = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def one(call: Call) -> bool:
            started = time.perf_counter()
            ok = await _post_with_reference_retries(session, url, _body([call]))
            latencies.append(time.perf_counter() - started)
            return ok

        for phase in workload:
            for start in range(0, len(phase), 20):
                if past_cap():
                    return failed
                results = await asyncio.gather(*(one(c) for c in phase[start : start + 20]))
                failed += results.count(False)
    return failed


async def reference_twenty_per_request(
    url: str, workload: list[list[Call]], scenario: Scenario, latencies: list[float]
) -> int:
    failed = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        for phase in workload:
            for start in range(0, len(phase), 20):
                if past_cap():
                    return failed
                chunk = phase[start : start + 20]
                started = time.perf_counter()
                ok = await _post_with_reference_retries(session, url, _body(chunk))
                latencies.extend([time.perf_counter() - started] * len(chunk))
                failed += 0 if ok else len(chunk)
    return failed


async def openai_sdk(
    url: str, workload: list[list[Call]], scenario: Scenario, latencies: list[float]
) -> int:
    import openai

    client = openai.AsyncOpenAI(base_url=url, api_key="unused", timeout=30.0)
    semaphore = asyncio.Semaphore(64)
    failed = 0

    async def one(call: Call) -> None:
        nonlocal failed
        async with semaphore:
            if past_cap():
                return
            started = time.perf_counter()
            try:
                if call.kind == "generate":
                    await client.completions.create(
                        model="sim-1", prompt=call.text, max_tokens=call.max_tokens, temperature=0.7
                    )
                else:
                    await client.completions.create(
                        model="sim-1",
                        prompt=call.text + call.target,
                        max_tokens=0,
                        echo=True,
                        logprobs=0,
                    )
            except openai.OpenAIError:
                failed += 1
            latencies.append(time.perf_counter() - started)

    try:
        for phase in workload:
            await asyncio.gather(*(one(c) for c in phase))
    finally:
        await client.close()
    return failed


CLIENTS: dict[str, Runner] = {
    "dlgraph": dlgraph_engine,
    "dlgraph, one prompt per request": dlgraph_single,
    "dlgraph, 8 prompts per request": dlgraph_eight,
    "reference per-prompt x20": reference_per_prompt,
    "reference 20-per-request": reference_twenty_per_request,
    "openai SDK + semaphore": openai_sdk,
}


async def run_client(
    name: str, runner: Runner, workload: list[list[Call]], scenario: Scenario, seed: int
) -> Outcome:
    server = start_server(scenario, seed)
    latencies: list[float] = []
    calls = sum(len(p) for p in workload)
    cpu, wall = time.process_time(), time.perf_counter()
    _deadline[0] = wall + TIME_CAP_S
    failed = await runner(server.url, workload, scenario, latencies)
    _deadline[0] = float("inf")
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    capped = len(latencies) < calls
    try:
        attempts = dict(server.attempts()["by_outcome"])
    finally:
        server.stop()
    done = len(latencies) if capped else calls
    if capped:
        wall = wall * calls / max(1, done)  # extrapolated from the part done before the cap
    return Outcome(name, wall, done, failed, latencies, cpu, capped, attempts)


def bound_s(workload: list[list[Call]], scenario: Scenario) -> float:
    calls, tokens = workload_size(workload)
    requests = calls / 8 if scenario.coalesce else calls
    bounds = [len(workload) * SERVER_LATENCY_S]  # the critical path: one median latency per phase
    if scenario.rpm:
        bounds.append(requests / scenario.rpm * 60)
    if scenario.tpm:
        bounds.append(tokens / scenario.tpm * 60)
    return max(bounds)


def row(outcome: Outcome, bound: float, calls: int) -> str:
    lat = sorted(outcome.latencies) or [0.0]
    p50, p99 = lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    attempts = outcome.attempts
    failed_attempts = sum(n for k, n in attempts.items() if k != "ok")
    wall = f"{outcome.wall_s:.1f}" + ("*" if outcome.capped else "")
    answered = calls - outcome.failed
    efficiency = f"{bound / outcome.wall_s:.2f}" if not outcome.failed else f"lost {outcome.failed}"
    return (
        f"| {outcome.client} | {wall} | {bound:.1f} | {efficiency} | {answered / outcome.wall_s * 60:,.0f} | "
        f"{attempts.get('ok', 0)} | {attempts.get('rate_limited', 0)} | {failed_attempts} | {outcome.failed} | "
        f"{p50:.2f} | {p99:.2f} | {outcome.cpu_s / max(1, outcome.done) * 1e6:,.0f} |"
    )


def _span_sink() -> Any:
    """An OpenTelemetry SDK tracer provider whose spans are built, ended and handed to an
    exporter that drops them: the CPU of tracing without any I/O. None without the SDK."""
    try:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            SimpleSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )
    except ImportError:
        return None

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Drop()))
    return provider


async def overhead_per_call(count: int, rounds: int = 3) -> dict[str, float]:
    """CPU µs per call: calling the backend directly, through the engine as configured by
    default (tracing off: no tracer provider is set here), through an engine whose ledger is
    journalled to a file (every call recorded as it is sent), and through the engine with
    tracing on (one span per call); same fan-out, interleaved `rounds` times, the median kept."""
    import tempfile

    from dlgraph_sim import ScriptedModel

    model = ScriptedModel(generate=lambda r: "ok")
    requests = [dg.GenerateRequest(f"prompt {i}", max_tokens=4) for i in range(count)]
    provider = _span_sink()

    async def direct() -> None:
        for start in range(0, count, 1000):
            await map_concurrently(model.generate, requests[start : start + 1000])

    async def through_engine(tracing: Any = "auto", journal: str | None = None) -> None:
        async with dg.Engine(model, tracing=tracing, journal=journal) as engine:
            for start in range(0, count, 1000):
                await map_concurrently(
                    lambda r: engine.generate(r.prompt, max_tokens=4),
                    requests[start : start + 1000],
                )

    async def traced() -> None:
        await through_engine(dg.Tracing(tracer_provider=provider))

    folder = tempfile.mkdtemp()

    async def journalled() -> None:
        path = os.path.join(folder, "ledger.jsonl")
        if os.path.exists(path):
            os.remove(path)  # every round starts a new journal, as a new run does
        await through_engine(journal=path)

    bodies: dict[str, Callable[[], Awaitable[None]]] = {
        "direct": direct,
        "engine": through_engine,
        "journalled": journalled,
    }
    if provider is not None:
        bodies["traced"] = traced
    samples: dict[str, list[float]] = {name: [] for name in bodies}
    for _ in range(rounds):
        for name, body in bodies.items():
            model.calls.clear()
            cpu = time.process_time()
            await body()
            samples[name].append((time.process_time() - cpu) / count * 1e6)
    return {name: sorted(values)[len(values) // 2] for name, values in samples.items()}


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smaller workload (fewer prompt candidates)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clients", nargs="*", default=list(CLIENTS))
    parser.add_argument("--scenarios", nargs="*", default=["rpm", "tpm", "rpm+coalesce"])
    args = parser.parse_args()
    workload = dln2_step(args.seed, candidates=8 if args.quick else 20)
    calls, tokens = workload_size(workload)
    target_s = 25.0 if args.quick else 40.0
    scenarios = {
        "rpm": Scenario("rpm", rpm=round(calls / target_s * 60), tpm=None),
        "tpm": Scenario(
            "tpm", rpm=round(calls / target_s * 60 * 4), tpm=round(tokens / target_s * 60)
        ),
        "rpm+coalesce": Scenario(
            "rpm+coalesce", rpm=round(calls / target_s * 60 / 8), tpm=None, coalesce=True
        ),
    }
    print(
        f"workload: one DLN-2 step, {calls:,} calls in {len(workload)} phases, {tokens:,} tokens; "
        f"server latency median {SERVER_LATENCY_S} s; runs capped at {TIME_CAP_S:.0f} s (* = extrapolated)"
    )
    for key in args.scenarios:
        scenario = scenarios[key]
        bound = bound_s(workload, scenario)
        print(
            f"\n### {scenario.name}: rpm {scenario.rpm}, tpm {scenario.tpm}, {scenario.error_rate:.0%} 5xx, "
            f"{scenario.drop_rate:.1%} dropped connections\n"
        )
        print(
            "| client | wall s | bound s | efficiency | answered calls/min | HTTP requests | 429s | failed attempts | failed calls | p50 s | p99 s | client CPU µs/call |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        variant = (
            "dlgraph, 8 prompts per request"
            if scenario.coalesce
            else "dlgraph, one prompt per request"
        )
        names = [n for n in args.clients if not n.startswith("dlgraph,") or n == variant]
        for name in names:
            outcome = await run_client(name, CLIENTS[name], workload, scenario, args.seed)
            print(row(outcome, bound, calls), flush=True)
    cpu = await overhead_per_call(20_000)
    direct, engine = cpu["direct"], cpu["engine"]
    print(
        f"\nengine overhead: {engine - direct:.0f} µs CPU per call ({engine:.0f} through the engine, "
        f"{direct:.0f} calling the instant backend directly; 20,000 calls, median of 3); with "
        f"the ledger journalled to a file {cpu['journalled'] - direct:.0f} µs "
        f"({cpu['journalled'] - engine:+.0f} µs)"
    )
    if "traced" in cpu:
        traced = cpu["traced"]
        print(
            f"engine overhead with tracing on: {traced - direct:.0f} µs CPU per call "
            f"({traced:.0f} through the engine, one span per call built by the OpenTelemetry SDK "
            f"and dropped by its exporter; tracing adds {traced - engine:.0f})"
        )
    else:
        print("engine overhead with tracing on: not measured (opentelemetry-sdk is not installed)")


if __name__ == "__main__":
    asyncio.run(main())
