"""How long a run will take: a few timed calls per engine and kind of call, projected over the
waves of concurrent calls the trainer will send.

A run is a sequence of waves (a forward pass's layer, a posterior's samples, a step's
proposals, all candidates' scores): the trainer sends a wave's calls together and waits for
the slowest. So a wave costs what the endpoint takes for that many calls in flight, which
differs by orders of magnitude between servers: an API answers 50 calls about as fast as one,
llama-cpp-python's server answers them one after another. The probe times one call alone and
a few sent together, and the projection assumes the time grows linearly with calls in flight
between those two points, up to the engine's concurrency ceiling and its request rate.
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Literal

import anyio
import attrs

from dlgraph._tasks import map_concurrently
from dlgraph.data.example import Example
from dlgraph.engine import Engine
from dlgraph.graph import Graph
from dlgraph.nodes import INPUT, NodeCall, describe_inputs
from dlgraph.templates import Template
from dlgraph.train.options import TrainerOptions
from dlgraph.train.proposals import END, REWRITES, ShownExample

CallKind = Literal["score", "generate", "propose"]
"""Scoring a target; a node writing its output (or a posterior sample); writing a proposal."""

PROBE_CONCURRENCY = 4
"""Calls sent together by the probe's second measurement."""


@attrs.frozen
class Wave:
    """Calls the trainer sends together and waits for as a whole."""

    backward: bool
    """On the backward engine (proposals, posterior samples) rather than the forward one."""
    kind: CallKind
    calls: int
    """At most."""
    expected: int = attrs.field(default=attrs.Factory(lambda self: self.calls, takes_self=True))
    """Calls expected to reach the model (no answer cached already, candidates as many as
    the run will have by then); the projected time uses these."""


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

    latency: Mapping[CallKind, Latency]
    ceiling: int
    """The most calls in flight the engine allows."""
    requests_per_s: float | None
    """Its request rate limit, when one is set."""

    def wave_s(self, wave: Wave) -> float:
        latency = self.latency.get(wave.kind) or self.latency.get("score")
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


Probe = Callable[[int], Awaitable[int]]
"""One call of a kind (or a class node's calls for one score), returning how many calls it
made; the argument makes each probe distinct, so that none is answered from a cache."""


async def measure(engine: Engine, probes: Mapping[CallKind, Probe]) -> EnginePace:
    """Time each kind of call: one alone (twice), then a few sent together. They go through
    the engine, so they count towards its ledger and budget."""
    ceiling = engine.concurrency_ceiling
    together = max(1, min(PROBE_CONCURRENCY, ceiling))
    tag = random.Random().randrange(10**9)
    latency: dict[CallKind, Latency] = {}
    for kind, probe in probes.items():
        alone, calls = math.inf, 1
        for _ in range(2):  # the faster of two, so that no one-time cost is taken for latency
            started = anyio.current_time()
            calls = await probe(tag)
            alone = min(alone, anyio.current_time() - started)
            tag += 1
        started = anyio.current_time()
        await map_concurrently(probe, [tag + i for i in range(together)])
        latency[kind] = Latency(alone, anyio.current_time() - started, together, calls)
        tag += together
    rpm = engine.limits.rpm
    return EnginePace(latency, ceiling, rpm / 60.0 if rpm else None)


def _probes(
    net: Graph,
    engine: Engine,
    options: TrainerOptions,
    examples: Sequence[Example],
    kinds: Sequence[CallKind],
    *,
    batch_size: int,
    backward: bool = False,
) -> dict[CallKind, Probe]:
    """Calls like the run's, on training inputs tagged so that no answer comes from a cache
    (the tag follows the input, so prompts share the instruction as the run's do): an output
    node's score, a text node's output, a proposal."""
    writers = [name for name in net.topological_order() if net.node(name).kind.outputs() is None]
    output = net.output_nodes()[0]
    shown_count = math.ceil(batch_size / 2) if options.proposal_half_batch else batch_size

    def values(text: str) -> dict[str, str]:
        """Every node's input as the run would fill it, with the example's text standing in
        for hidden nodes' outputs."""
        return {INPUT: text} | {node: text for node in net.nodes}

    def tagged(tag: int) -> dict[str, str]:
        return values(f"{examples[tag % len(examples)].input} ({tag})")

    async def score(tag: int) -> int:
        node = net.node(output)
        outputs = node.kind.outputs()
        target = outputs[0] if outputs else examples[tag % len(examples)].input[:80]
        parents = net.parent_values(output, tagged(tag))
        await node.loglik(parents, target, NodeCall(engine=engine, phase="score"))
        return node.kind.score_cost().calls

    async def write(tag: int) -> int:
        node = net.node(writers[0])
        call = NodeCall(
            engine=engine,
            phase="posterior" if backward else "forward",
            seed=tag,
            temperature=options.sample_temperature,
        )
        await node.run(net.parent_values(node.name, tagged(tag)), call)
        return 1

    shown = [
        ShownExample(
            describe_inputs(net.parent_values(output, values(e.input))),
            "?",
            str(e.target),
            is_correct=False,
        )
        for e in examples[:shown_count]
    ]
    text = Template.load("propose").render(
        prompt=net.node(output).prompt, examples=shown, rewrite=REWRITES[0]
    )

    async def propose(tag: int) -> int:
        await engine.generate(
            f"{text} ({tag})",
            max_tokens=options.proposal_max_tokens,
            temperature=options.sample_temperature,
            stop=(END,),
            seed=tag,
            node=output,
            phase="propose",
        )
        return 1

    available: dict[CallKind, Probe] = {"score": score, "generate": write, "propose": propose}
    return {kind: available[kind] for kind in kinds if kind != "generate" or writers}


async def measure_pace(
    net: Graph,
    forward: Engine,
    backward: Engine,
    options: TrainerOptions,
    examples: Sequence[Example],
    batch_size: int,
) -> Pace:
    """Time the run's kinds of call on each engine (on one engine once, when both are one)."""

    def probes(engine: Engine, kinds: Sequence[CallKind]) -> dict[CallKind, Probe]:
        return _probes(
            net,
            engine,
            options,
            examples,
            kinds,
            batch_size=batch_size,
            backward=kinds[0] == "propose",
        )

    if backward is forward:
        both = await measure(forward, probes(forward, ("score", "generate", "propose")))
        return Pace(both, both)
    return Pace(
        await measure(forward, probes(forward, ("score", "generate"))),
        await measure(backward, probes(backward, ("propose", "generate"))),
    )


def duration(seconds: float) -> str:
    """A wall time as people say it: '40 s', '12 min', '3.5 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
