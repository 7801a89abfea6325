"""How long a run will take: a few timed calls per engine and action, projected over the
waves of concurrent calls the trainer will send.

A run is a sequence of waves (a forward pass's layer, a posterior's samples, a step's
proposals, all candidates' scores): the trainer sends a wave's calls together and waits for
the slowest. So a wave costs what the endpoint takes for that many calls in flight, which
differs by orders of magnitude between servers: an API answers 50 calls about as fast as one,
llama-cpp-python's server answers them one after another. The probe times one call alone and
a few sent together, and the projection assumes the time grows linearly with calls in flight
between those two points, up to the engine's concurrency ceiling and its request rate.

What to time comes from the step's own description: the actions its waves hold, each probed
by the first phase that sends it, with that phase's own request builder (`StepPhase.probe`)
on a batch of training examples standing in for the run's.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Mapping, Sequence

import anyio
import attrs

from dlgraph._tasks import map_concurrently
from dlgraph.data.example import Example
from dlgraph.engine import Engine
from dlgraph.forward import Trace
from dlgraph.graph import Graph
from dlgraph.nodes import INPUT
from dlgraph.train.plan import Plan
from dlgraph.train.step import Posterior, Probe, Sizes, StandIn, StepPhase, StepSetup, StepState
from dlgraph.train.waves import Action, Wave

PROBE_CONCURRENCY = 4
"""Calls sent together by the probe's second measurement."""


@attrs.frozen
class Latency:
    """Seconds for one probe alone, and for `together` probes sent at once. A probe is what
    the run does: a class node's score asks for every class at once (`calls` calls, which a
    backend may serve from one shared prompt)."""

    alone_s: float
    together_s: float
    together: int
    calls: int = 1

    def wave_s(self, calls: int, ceiling: int) -> float:
        """Seconds for `calls` calls sent at once when at most `ceiling` run concurrently."""
        if calls <= 0:
            return 0.0
        probes = math.ceil(calls / self.calls)
        in_flight = min(probes, max(1, ceiling // self.calls))
        return math.ceil(probes / in_flight) * (self.alone_s + self.slope_s * (in_flight - 1))

    @property
    def slope_s(self) -> float:
        """What each further probe in flight adds. Timing noise within a quarter of one probe
        is not taken for a slope: the few ran in parallel, and more are assumed to."""
        excess = self.together_s - (1 + NOISE) * self.alone_s
        return max(0.0, excess) / max(1, self.together - 1)


NOISE = 0.25
"""The share of one call's time that timing noise may add to the probe's calls together."""


@attrs.frozen
class EnginePace:
    """What the probe measured on one engine, and the limits it will run under."""

    latency: Mapping[Action, Latency]
    ceiling: int
    """The most calls in flight the engine allows."""
    requests_per_s: float | None
    """Its request rate limit, when one is set."""

    def wave_s(self, wave: Wave) -> float:
        latency = self.latency.get(wave.action) or self.latency.get("score")
        seconds = latency.wave_s(wave.expected, self.ceiling) if latency else 0.0
        if self.requests_per_s:
            seconds = max(seconds, wave.expected / self.requests_per_s)
        return seconds


@attrs.frozen
class Pace:
    forward: EnginePace
    backward: EnginePace

    def seconds(self, waves: Sequence[Wave]) -> float:
        """Projected wall time of the waves, one after another."""
        return sum((self.backward if w.backward else self.forward).wave_s(w) for w in waves)


async def measure(engine: Engine, probes: Mapping[Action, Probe]) -> EnginePace:
    """Time each action: one probe alone (twice), then a few sent together. They go through
    the engine, so they count towards its ledger and budget."""
    ceiling = engine.concurrency_ceiling
    together = max(1, min(PROBE_CONCURRENCY, ceiling))
    tag = random.Random().randrange(10**9)
    latency: dict[Action, Latency] = {}
    for action, probe in probes.items():
        alone, calls = math.inf, 1
        for _ in range(2):  # the faster of two, so that no one-time cost is taken for latency
            started = anyio.current_time()
            calls = await probe(tag)
            alone = min(alone, anyio.current_time() - started)
            tag += 1
        started = anyio.current_time()
        await map_concurrently(probe, [tag + i for i in range(together)])
        latency[action] = Latency(alone, anyio.current_time() - started, together, calls)
        tag += together
    rpm = engine.limits.rpm
    return EnginePace(latency, ceiling, rpm / 60.0 if rpm else None)


def _stand_in(net: Graph, examples: Sequence[Example], size: int, tag: int) -> StepState:
    """A batch of `size` training examples whose inputs carry `tag`, so that no answer comes
    from a cache (the tag follows the input, so prompts share the instruction as the run's
    do); every node's output is its input's text, which stands in for what it would write,
    and every hidden node's posterior is its output."""
    batch = tuple(
        attrs.evolve(example, input=f"{example.input} ({tag})")
        for example in (examples[(tag + j) % len(examples)] for j in range(size))
    )
    xs = tuple(example.input for example in batch)
    state = StepState(batch, {name: _targets(name, batch) for name in net.output_nodes()})
    state.trace = Trace(
        xs, {INPUT: xs} | dict.fromkeys(net.nodes, xs), dict.fromkeys(net.nodes, xs)
    )
    for name in net.hidden_nodes():
        state.posteriors[name] = Posterior.point(xs)
        state.targets[name] = list(xs)
    return state


def _targets(output: str, batch: Sequence[Example]) -> list[str]:
    """An output node's targets as the examples give them (a probe takes them unchecked)."""
    return [e.target if isinstance(e.target, str) else e.target.get(output, "") for e in batch]


def _probes(
    phases: Sequence[StepPhase], sizes: Sizes, stand_in: StandIn, backward: bool | None
) -> dict[Action, Probe]:
    """A probe per action the phases send (on one side, or on both when `backward` is None),
    built by the first phase that sends it."""
    probes: dict[Action, Probe] = {}
    for phase in phases:
        for each in phase.waves(sizes):
            if each.action not in probes and backward in (None, each.backward):
                probes[each.action] = phase.probe(each, stand_in)
    return probes


async def measure_pace(
    phases: Sequence[StepPhase], setup: StepSetup, examples: Sequence[Example], batch_size: int
) -> Pace:
    """Time the actions of a step's waves on each engine (on one engine once, when both are
    one)."""
    plan = Plan(setup, batch_size, 1)
    stand_in = functools.partial(_stand_in, setup.net, examples, batch_size)
    if setup.backward is setup.engine:
        both = await measure(setup.engine, _probes(phases, plan, stand_in, None))
        return Pace(both, both)
    return Pace(
        await measure(setup.engine, _probes(phases, plan, stand_in, False)),
        await measure(setup.backward, _probes(phases, plan, stand_in, True)),
    )


def duration(seconds: float) -> str:
    """A wall time as people say it: '40 s', '12 min', '3.5 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
