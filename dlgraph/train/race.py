"""Stopping a comparison once it is decided: candidates raced over a batch's examples, and a
step's dev evaluation as a paired sequential comparison with the best network.

A race scores the candidates in rounds of examples and halves the field after every round
but the last (successive halving: the better half by mean per-example difference to the
current parameter goes on), which decides as full scoring does wherever the margins are wide.
Both compare per-example results paired on the same examples, which removes what the
examples themselves contribute (an easy example is easy for every prompt): a candidate is
also dropped when the one-sided upper confidence bound of its mean difference to the leader is
below zero. The bound is a normal one on the sample standard deviation, so it is trusted
only from `MIN_EXAMPLES` paired examples on. It is in the scores' own units and assumes no
range: the same bound serves a race's log-likelihoods and a comparison's metric scores, in
[0, 1] for the built-in metrics or beyond for a user's (it assumes the mean difference is
near normal, which a metric with rare, very large scores makes less so). A difference that
is the same on every example has no spread, so a candidate worse by the same amount
everywhere is dropped at once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from statistics import NormalDist

import attrs

from dlgraph.train.options import TrainerOptions

MIN_EXAMPLES = 5
"""Paired examples before any bound is trusted."""
FIRST_SHARE = 4
"""A race's first round scores a quarter of the batch (at least `MIN_EXAMPLES`: no candidate
is dropped, by halving or by the bound, on fewer paired examples); every later round doubles
the examples scored so far."""
EXPECTED_DEV_SHARE = 0.6
"""The share of the dev set a step's comparison is expected to score (a loser stops early,
a winner or a tie runs to the end)."""


def paired_upper_bound(differences: Sequence[float], z: float) -> float:
    """One-sided upper confidence bound on the mean of `differences` (at least one)."""
    n = len(differences)
    mean = sum(differences) / n
    if n < 2:
        return math.inf
    variance = sum((d - mean) ** 2 for d in differences) / (n - 1)
    return mean + z * math.sqrt(variance / n)


def is_settled_worse(differences: Sequence[float], z: float) -> bool:
    """Whether paired differences (candidate minus leader) show a loser at the bound's
    confidence: enough of them, and an upper bound below zero."""
    return len(differences) >= MIN_EXAMPLES and paired_upper_bound(differences, z) < 0


@attrs.frozen
class Race:
    """Candidates scored in rounds over a batch's examples, the losers dropped after each;
    `z` None scores every candidate on every example (full scoring)."""

    z: float | None

    @classmethod
    def of(cls, options: TrainerOptions) -> Race:
        if not options.stop_when_decided:
            return cls(None)
        return cls(NormalDist().inv_cdf(options.decision_confidence))

    def rounds(self, examples: int) -> list[range]:
        """The batch's examples in the rounds they are scored in."""
        if self.z is None:
            return [range(examples)]
        end = min(examples, max(MIN_EXAMPLES, math.ceil(examples / FIRST_SHARE)))
        rounds, start = [], 0
        while start < examples:
            rounds.append(range(start, end))
            start, end = end, min(examples, 2 * end)
        return rounds

    def survivors(
        self, utilities: Sequence[Sequence[float | None]], alive: list[int], *, halve: bool
    ) -> list[int]:
        """The candidates still in the race: the current one (0) always, the leader, and of
        the others the better half when `halve` (more rounds follow), each unless its paired
        difference to the leader is settled below zero. A candidate paired with the current
        one on fewer than `MIN_EXAMPLES` examples (its demonstrations show the others) is
        neither ranked nor dropped yet. `utilities[c][i]` is candidate c's score on example
        i, None where not scored."""
        if self.z is None:
            return alive
        current = utilities[0]
        advantages = {}
        for c in alive:
            pairs = _paired(utilities[c], current)
            if c != 0 and len(pairs) >= MIN_EXAMPLES:
                advantages[c] = sum(pairs) / len(pairs)
        ranked = sorted(advantages, key=lambda c: (-advantages[c], c))
        kept = set(alive) - set(ranked[math.ceil(len(ranked) / 2) :] if halve else ())
        leader = max([0, *ranked], key=lambda c: advantages.get(c, 0.0))
        z = self.z
        return [
            c
            for c in alive
            if c in (0, leader)
            or (c in kept and not is_settled_worse(_paired(utilities[c], utilities[leader]), z))
        ]

    def expected_share(self, examples: int) -> float:
        """The share of a candidate's full scoring a race sends, the field halved after
        every round (the confidence bound's drops, which depend on the data, left out)."""
        if self.z is None or not examples:
            return 1.0
        return sum(len(r) / examples * 0.5**k for k, r in enumerate(self.rounds(examples)))

    def kept(self, candidates: int, examples: int) -> int:
        """Of `candidates` new ones, how many are expected still in the race at its end,
        those a step's memory takes in: the new ones halved after every round but the last.
        An approximation leaning high: a race halves its whole field, remembered candidates
        included, and the bound drops more, as the data decide."""
        for _ in self.rounds(examples)[1:]:
            candidates = math.ceil(candidates / 2)
        return candidates

    @property
    def dev_share(self) -> float:
        """The share of the dev set a step's comparison is expected to score."""
        return 1.0 if self.z is None else EXPECTED_DEV_SHARE


def _paired(candidate: Sequence[float | None], other: Sequence[float | None]) -> list[float]:
    """Differences on the examples both were scored on; none where both scored the same,
    even -inf (which would make every mean NaN and the ranking depend on list order)."""
    return [
        0.0 if c == o else c - o
        for c, o in zip(candidate, other, strict=True)
        if c is not None and o is not None
    ]


@attrs.define
class Tally:
    """What a run's steps sent, by phase, against what the prior expected of them: the
    expected-calls figure of a run is the prior's, scaled by phase as the run so far went
    (races and comparisons stopping early or late, pruned posterior terms, cache hits)."""

    sent: dict[str, int] = attrs.field(factory=dict)
    expected: dict[str, int] = attrs.field(factory=dict)

    def add(self, sent: Mapping[str, int], expected: Mapping[str, int]) -> None:
        for phase in sent.keys() | expected.keys():
            self.sent[phase] = self.sent.get(phase, 0) + sent.get(phase, 0)
            self.expected[phase] = self.expected.get(phase, 0) + expected.get(phase, 0)

    def factors(self) -> dict[str, float]:
        """By phase, what the run sent over what the prior expected of it."""
        return {
            phase: self.sent.get(phase, 0) / count
            for phase, count in self.expected.items()
            if count
        }
