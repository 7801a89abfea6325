"""A node's candidate parameters for one step: the current one, the best remembered ones,
proposed instructions with the current demonstrations, and the current instruction with
demonstration sets drawn from the batch (and with none).

A demonstration shows an example's inputs as the node sees them, with every hidden node at its
posterior target, and the node's target as the output: gold answers for output nodes, and for
hidden nodes the intermediate outputs that made their children right.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence

import attrs

from dlgraph._untrusted import excerpt
from dlgraph._validate import check_number
from dlgraph.forward import Trace
from dlgraph.graph import Graph
from dlgraph.nodes import INPUT, Demonstration, Parameter, describe_inputs
from dlgraph.train.options import TrainerOptions


def shown_values(trace: Trace, targets: Mapping[str, Sequence[str]], index: int) -> dict[str, str]:
    """Example `index` as demonstrations show it: every node with a target at its target."""
    values = trace.values(index)
    for name, node_targets in targets.items():
        values[name] = node_targets[index]
    return values


def demonstration_sets(
    net: Graph,
    name: str,
    trace: Trace,
    targets: Mapping[str, Sequence[str]],
    options: TrainerOptions,
    rng: random.Random,
) -> list[tuple[Demonstration, ...]]:
    """`num_demonstration_samples` sets of up to `max_demonstrations` examples of the batch
    (never all of it: at least one example is left to score); draws from `rng` in order."""
    size = min(options.max_demonstrations, len(trace) - 1)
    if size <= 0:
        return []
    sets = []
    for _ in range(options.num_demonstration_samples):
        chosen = rng.sample(range(len(trace)), size)
        sets.append(
            tuple(
                Demonstration(
                    describe_inputs(net.parent_values(name, shown_values(trace, targets, i))),
                    targets[name][i],
                )
                for i in chosen
            )
        )
    return sets


def candidate_parameters(
    current: Parameter,
    remembered: Iterable[Parameter],
    instructions: Iterable[str],
    demonstrations: Iterable[tuple[Demonstration, ...]],
) -> list[Parameter]:
    """The current parameter first, then the others, without repeats or blank instructions."""
    candidates = [
        current,
        *remembered,
        *(Parameter(prompt, current.demonstrations) for prompt in instructions),
        *(Parameter(current.prompt, shown) for shown in demonstrations),
    ]
    if current.demonstrations:
        candidates.append(Parameter(current.prompt))
    unique: list[Parameter] = []
    for candidate in candidates:
        if candidate.prompt.strip() and candidate not in unique:
            unique.append(candidate)
    return unique


def shown_examples(
    net: Graph,
    name: str,
    candidate: Parameter,
    trace: Trace,
    targets: Mapping[str, Sequence[str]],
) -> frozenset[int]:
    """The examples of the batch a candidate's demonstrations show (the same inputs): scoring
    the candidate on them would reward copying an answer it was given."""
    inputs = {d.input for d in candidate.demonstrations}
    lines = {line for d in candidate.demonstrations for line in d.input.splitlines()}
    reads_input = INPUT in net.parents(name)
    shown = set()
    for i in range(len(trace)):
        values = shown_values(trace, targets, i)
        if describe_inputs(net.parent_values(name, values)) in inputs:
            shown.add(i)
        elif reads_input and f"Input: {trace.xs[i]}" in lines:
            shown.add(i)
    return frozenset(shown)


@attrs.define(eq=False)
class Memory:
    """The best parameters seen per node, by their ELBO when they were scored."""

    size: int
    _best: dict[str, dict[Parameter, float]] = attrs.field(factory=dict, alias="best")

    def parameters(self, name: str) -> list[Parameter]:
        return list(self._best.get(name, {}))

    def names(self) -> list[str]:
        """The nodes with remembered parameters."""
        return list(self._best)

    def remember(self, name: str, scored: Mapping[Parameter, float]) -> None:
        merged = self._best.get(name, {}) | dict(scored)
        kept = sorted(merged.items(), key=lambda item: -item[1])[: self.size]
        self._best[name] = dict(kept)

    def to_json(self) -> dict[str, list[list[object]]]:
        return {
            name: [[parameter.to_json(), score] for parameter, score in best.items()]
            for name, best in self._best.items()
        }

    @classmethod
    def from_json(cls, size: int, data: object) -> Memory:
        """TypeError or ValueError for anything `to_json` would not have written."""
        if not isinstance(data, dict):
            raise TypeError(f"expected an object, got {excerpt(data)}")
        best: dict[str, dict[Parameter, float]] = {}
        for name, entries in data.items():
            if not isinstance(entries, list) or not all(
                isinstance(e, list) and len(e) == 2 for e in entries
            ):
                raise TypeError(f"{name}: expected a list of [parameter, elbo] pairs")
            best[str(name)] = {
                Parameter.from_json(parameter): check_number("elbo", score, finite=False)
                for parameter, score in entries
            }
        return cls(size, best=best)
