"""dlgraph on Ray, side by side in one run: a shared rate limit, and model replicas.

    python bench/distributed.py [--quick]

1. Three trials (processes, as Ray tasks) with uneven work (4:2:1 calls) against one simulated
   server in its own process, limited to R requests a minute: (a) one limit shared through
   the named actor, (b) each trial limited to R/3, (c) each trial told R with no coordination.
   Measured on the server's clock: efficiency (the bound, calls beyond the server's burst at
   R, over the span from the first to the last answered request), 429s (in all and after the
   first second), calls lost, wall time.
2. Replicas of the scripted model with a fixed latency and one call at a time each: calls/s
   with 1 and 2 replicas, and the cost of routing a call through Ray (sequential calls with no
   latency, through a 1-replica pool vs the same model in process).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from typing import Any

import anyio
import ray
from dlgraph_ray import SharedLimit
from dlgraph_sim import ScriptedModel
from dlgraph_sim.server import ServerConfig, ServerProcess

import dlgraph as dg

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

RPM = 600.0
SERVER_LATENCY_S = 0.05


@ray.remote(num_cpus=0.5)
def trial(url: str, calls: int, rpm: float, shared: str | None) -> dict[str, Any]:
    """One training run's calls, all at once, from its own process."""

    async def main() -> dict[str, Any]:
        backend = dg.connect("openai", base_url=url, model="sim-1", profile="sim")
        limit = SharedLimit(shared) if shared else None
        engine = dg.Engine(backend, rpm=rpm, cache=False, coalesce_ms=0, shared_limit=limit)
        lost = 0
        async with engine, anyio.create_task_group() as group:

            async def one(index: int) -> None:
                nonlocal lost
                try:
                    await engine.generate(f"trial {uuid.uuid4()} call {index}", max_tokens=4)
                except dg.BackendError:
                    lost += 1

            for index in range(calls):
                group.start_soon(one, index)
        return {"lost": lost, "retries": engine.statistics().total.retries}

    return anyio.run(main)


def shared_limit_scenarios(unit: int) -> list[dict[str, Any]]:
    work = [4 * unit, 2 * unit, unit]
    rate = RPM / 60
    rows = []
    for name, rpm, shared in (
        ("shared limit (named actor)", RPM, True),
        ("each trial R/3", RPM / 3, False),
        ("no coordination", RPM, False),
    ):
        key = f"bench-{uuid.uuid4()}" if shared else None
        with ServerProcess(ServerConfig(rpm=RPM, latency_median_s=SERVER_LATENCY_S)) as server:
            started = time.monotonic()
            results = ray.get([trial.remote(server.url, calls, rpm, key) for calls in work])
            wall = time.monotonic() - started
            attempts = server.attempts()
        times = attempts["times"]
        ok = sorted(times.get("ok", []))
        refused = sorted(times.get("rate_limited", []))
        first = min(ok[0], refused[0] if refused else ok[0])
        span = ok[-1] - first
        bound = max(0.0, len(ok) - rate) / rate  # the server's bucket holds one second
        rows.append(
            {
                "scenario": name,
                "calls": sum(work),
                "efficiency": bound / span,
                "429s": len(refused),
                "429s after 1 s": sum(1 for at in refused if at - first > 1.0),
                "lost": sum(r["lost"] for r in results),
                "span_s": span,
                "wall_s": wall,
            }
        )
    return rows


async def calls_per_second(backend: dg.Backend, calls: int, concurrent: bool) -> float:
    async with dg.Engine(backend, cache=False) as engine:
        started = time.perf_counter()
        if concurrent:
            async with anyio.create_task_group() as group:
                for index in range(calls):
                    group.start_soon(engine.generate, f"prompt {index}")
        else:
            for index in range(calls):
                await engine.generate(f"prompt {index}")
        return calls / (time.perf_counter() - started)


def replica_scenarios(calls: int) -> dict[str, float]:
    def pool(replicas: int, latency_s: float) -> dg.Backend:
        return dg.connect(
            "ray",
            backend="sim",
            replicas=replicas,
            num_cpus=0.5,
            latency_s=latency_s,
            capabilities=dg.Capabilities(max_concurrency=1),
        )

    one = anyio.run(calls_per_second, pool(1, 0.05), calls, True)
    two = anyio.run(calls_per_second, pool(2, 0.05), calls, True)
    local = [anyio.run(calls_per_second, ScriptedModel(), calls, False) for _ in range(3)]
    routed = [anyio.run(calls_per_second, pool(1, 0.0), calls, False) for _ in range(3)]
    return {
        "1 replica calls/s": one,
        "2 replicas calls/s": two,
        "scaling": two / one,
        "in-process call µs": 1e6 / statistics.median(local),
        "through Ray call µs": 1e6 / statistics.median(routed),
    }


def print_limits(rows: list[dict[str, Any]], unit: int) -> None:
    print(f"\n3 trials with {4 * unit}, {2 * unit} and {unit} calls; server limit {RPM:.0f} rpm")
    print("| scenario | efficiency | 429s | 429s after 1 s | lost calls | span s | wall s |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['scenario']} | {row['efficiency']:.2f} | {row['429s']} | "
            f"{row['429s after 1 s']} | {row['lost']} | {row['span_s']:.1f} | {row['wall_s']:.1f} |"
        )


def print_replicas(replicas: dict[str, float]) -> None:
    print("\nreplicas of a model answering one call at a time in 50 ms")
    for name, value in replicas.items():
        print(f"  {name}: {value:,.2f}")
    overhead = replicas["through Ray call µs"] - replicas["in-process call µs"]
    print(f"  routing overhead per call: {overhead:,.0f} µs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a third of the work")
    args = parser.parse_args()
    unit = 15 if args.quick else 45
    ray.init(include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    try:
        print_limits(shared_limit_scenarios(unit), unit)
        print_replicas(replica_scenarios(60 if args.quick else 200))
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
