"""A node's candidate parameters for one step: the current one, the best remembered ones,
proposed instructions with the current demonstrations, and the current instruction with
demonstration sets drawn from the batch (and with none).

A demonstration shows an example's inputs as the node sees them, with every hidden node at its
posterior target, and the node's target as the output: gold answers for output nodes, and for
hidden nodes the intermediate outputs that made their children right.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping

import attrs

from dlgraph._untrusted import excerpt
from dlgraph._validate import check_number
from dlgraph.graph import Graph
from dlgraph.nodes import INPUT, Demonstration, Parameter, describe_inputs
from dlgraph.train.options import TrainerOptions
from dlgraph.train.race import Race
from dlgraph.train.step import StepState
from dlgraph.train.waves import Count


def shown_values(state: StepState, index: int) -> dict[str, str]:
    """Example `index` as demonstrations show it: every node with a target at its target."""
    values = state.trace.values(index)
    for name, node_targets in state.targets.items():
        values[name] = node_targets[index]
    return values


def demonstration_size(options: TrainerOptions, examples: int) -> int:
    """Demonstrations in each set drawn from a batch of `examples` (never all of it: at
    least one example is left to score); no set is drawn when this is not positive."""
    return min(options.max_demonstrations, examples - 1)


def demonstration_sets(
    net: Graph, name: str, state: StepState, options: TrainerOptions, rng: random.Random
) -> list[tuple[Demonstration, ...]]:
    """`num_demonstration_samples` sets of `demonstration_size` examples of the batch; draws
    from `rng` in order."""
    size = demonstration_size(options, state.examples)
    if size <= 0:
        return []
    sets = []
    for _ in range(options.num_demonstration_samples):
        chosen = rng.sample(range(state.examples), size)
        sets.append(
            tuple(
                Demonstration(
                    describe_inputs(net.parent_values(name, shown_values(state, i))),
                    state.targets[name][i],
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


def shown_examples(net: Graph, name: str, candidate: Parameter, state: StepState) -> frozenset[int]:
    """The examples of the batch a candidate's demonstrations show (the same inputs): scoring
    the candidate on them would reward copying an answer it was given."""
    inputs = {d.input for d in candidate.demonstrations}
    lines = {line for d in candidate.demonstrations for line in d.input.splitlines()}
    reads_input = INPUT in net.parents(name)
    shown = set()
    for i in range(state.examples):
        values = shown_values(state, i)
        if describe_inputs(net.parent_values(name, values)) in inputs:
            shown.add(i)
        elif reads_input and f"Input: {state.trace.xs[i]}" in lines:
            shown.add(i)
    return frozenset(shown)


def new_candidates(options: TrainerOptions) -> int:
    """Candidates a step adds per node, at most: proposals and demonstration sets."""
    demonstration_sets = options.num_demonstration_samples if options.max_demonstrations else 0
    return options.num_prompt_samples + demonstration_sets


def other_candidates(
    options: TrainerOptions, step: int, examples: int, has_demonstrations: bool
) -> Count:
    """Before the run: the examples that a node's candidates other than its current parameter
    are scored on at step `step` (from 1), all together, at most and as expected. The
    remembered ones fill the memory as steps go, with the candidates still in each step's
    race at its end (every one under full scoring); a demonstration set is not scored on the
    examples it shows; the current parameter has a version without demonstrations when it has
    some (the network's own are taken to last)."""
    kept = Race.of(options).kept(new_candidates(options), examples)
    remembered = min(options.memory_size, (step - 1) * kept)
    shown = demonstration_size(options, examples)
    sets = options.num_demonstration_samples if options.max_demonstrations else 0
    bare = 1  # the current instruction without demonstrations
    at_most = options.memory_size + options.num_prompt_samples + sets + bare
    expected = (remembered + options.num_prompt_samples) * examples
    expected += sets * (examples - shown) if shown > 0 else 0
    expected += examples if has_demonstrations else 0
    return Count(at_most * examples, expected)


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
