"""The words a step's calls are described in: shared by the phases that send and describe
them, the estimate that sums them and the pace that times them.

A call is described on two axes. Its *phase* (`dlgraph.backend.Phase`: forward, posterior,
propose, score, eval) is the part of a run that asks for it, and the ledger counts calls by
node and phase. Its *action* is what the call does, which decides how long it takes:
``score`` reads a given text (a class node's answer, a target's log-likelihood), ``generate``
writes a node's output, ``sample`` writes an example's posterior samples (one call where the
backend draws several of one prompt), ``propose`` writes an instruction (the longest text).
A phase may send several actions (a forward pass scores with its class nodes and generates
with its text nodes), and an action serves several phases.

A *wave* is calls the trainer sends together and waits for as a whole; its parts say whose
calls they are, as the ledger will count them. Counts come in pairs: `calls`, at most (no
answer cached, every candidate there), and `expected`, what is expected to reach the model.
A phase whose calls depend on the data (a race that stops scoring once a decision is made)
says so by the gap between the two.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal, get_args

import attrs

from dlgraph.backend import Phase
from dlgraph.nodes import Cost

Action = Literal["score", "generate", "sample", "propose"]
ACTIONS: tuple[Action, ...] = get_args(Action)
"""From the quickest to the slowest: a wave of several takes as long as its slowest."""


def action(cost: Cost) -> Action:
    """What calls of this cost do: write text, or score a given one."""
    return "generate" if cost.writes else "score"


@attrs.frozen
class Count:
    """Calls at most, and the calls expected to reach the model (never more)."""

    calls: int
    expected: int = attrs.field(default=attrs.Factory(lambda self: self.calls, takes_self=True))

    def __add__(self, other: Count) -> Count:
        return Count(self.calls + other.calls, self.expected + other.expected)

    def __mul__(self, factor: int) -> Count:
        return Count(self.calls * factor, self.expected * factor)

    def times(self, cost: Cost) -> Count:
        """This many runs or scores that each cost `cost`: its calls at most, its expected
        calls as expected."""
        return Count(self.calls * cost.calls, self.expected * cost.expected)


NONE = Count(0)


@attrs.frozen
class Calls:
    """One node's calls in a wave, under the node and phase the ledger counts them by."""

    node: str
    phase: Phase
    action: Action
    count: Count


@attrs.frozen
class Wave:
    """Calls the trainer sends together and waits for as a whole."""

    backward: bool
    """On the backward engine (proposals, posterior samples) rather than the forward one."""
    action: Action
    """The slowest action among its calls."""
    calls: int
    """At most."""
    expected: int = attrs.field(default=attrs.Factory(lambda self: self.calls, takes_self=True))
    """Calls expected to reach the model (no answer cached already, candidates as many as
    the run will have by then); the projected time uses these."""
    parts: tuple[Calls, ...] = attrs.field(default=(), eq=False, repr=False)
    """Whose calls they are. Two waves are the same to the projection when they have the same
    engine, action and counts, so the parts are left out of comparisons."""


def wave(backward: bool, parts: Iterable[Calls]) -> list[Wave]:
    """The parts sent together: one wave, or none when they make no call."""
    sent = tuple(part for part in parts if part.count.calls)
    if not sent:
        return []
    total = sum((part.count for part in sent), NONE)
    slowest = max((part.action for part in sent), key=ACTIONS.index)
    return [Wave(backward, slowest, total.calls, total.expected, sent)]


def by_key(waves: Iterable[Wave]) -> dict[tuple[str, str], Count]:
    """The waves' calls by (node, phase), as `LedgerSnapshot.by_key` counts them."""
    counts: dict[tuple[str, str], Count] = {}
    for each in waves:
        for part in each.parts:
            key = (part.node, part.phase)
            counts[key] = counts.get(key, NONE) + part.count
    return counts


def by_phase(waves: Iterable[Wave]) -> dict[str, Count]:
    """The waves' calls by phase."""
    counts: dict[str, Count] = {}
    for (_, phase), count in by_key(waves).items():
        counts[phase] = counts.get(phase, NONE) + count
    return counts


def scaled(waves: Iterable[Wave], factors: Mapping[str, float]) -> list[Wave]:
    """The waves with each part's expected calls scaled by its phase's factor (what a run
    sent so far over what was expected of it), never above its calls at most."""
    rescaled = []
    for each in waves:
        parts = []
        for part in each.parts:
            expected = round(part.count.expected * factors.get(part.phase, 1.0))
            count = Count(part.count.calls, min(part.count.calls, expected))
            parts.append(attrs.evolve(part, count=count))
        rescaled += wave(each.backward, parts)
    return rescaled
