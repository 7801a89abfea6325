"""Language nodes and their kinds: every rule that depends on what a node outputs.

A node's kind says how the node runs, how the log-likelihood of a target is computed, which
targets it accepts and when an output is right, which outputs a posterior may consider, what a
log-likelihood costs in calls, and how the node is shown. The forward pass, the posterior, the
ELBO, the estimate and the command ask the kind instead of branching on it, as micrograd keeps
each operation's backward rule beside the operation. Two kinds exist: `ClassKind` (the most
probable of fixed classes) and `TextKind` (free text).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypedDict, Unpack

import attrs
import jinja2

from dlgraph._untrusted import excerpt
from dlgraph._validate import (
    MAX_TOKENS,
    boolean,
    check_bool,
    class_strings,
    integer,
    number,
    stop_strings,
    text,
)
from dlgraph.backend import Capabilities, Phase
from dlgraph.data.example import Example
from dlgraph.errors import DataError, GraphError
from dlgraph.scoring import (
    LOG_FLOOR,
    class_name,
    is_correct,
    matching_class,
    normalize_answer,
    verbalizers,
)
from dlgraph.templates import Template, TemplateFailed, TemplateRefused

if TYPE_CHECKING:
    from dlgraph.engine import Engine

INPUT = "INPUT"
"""The name of the network's input: ``net.add_edge(dg.INPUT, "node")``."""

RESERVED = frozenset({"prompt", "parents", "classes", "input", "demonstrations"})
"""Template variables every node template may use; no node may take these names."""
TEMPLATE_WORDS = frozenset({"self", "loop", "true", "false", "none", "True", "False", "None"})
"""Names a template reads as something else (jinja's own variables and constants): a parent
so named could not be reached by its name, so no node may take them either."""

CONTENT_FREE = "N/A"
"""What every parent says when a class node measures its bias (calibration)."""


@attrs.frozen
class Parent:
    """One parent's output as a template sees it, in edge order."""

    name: str
    label: str
    text: str


def describe_inputs(parents: Sequence[Parent]) -> str:
    """What a node reads besides its prompt, one ``label: text`` line per parent."""
    return "\n".join(f"{parent.label}: {parent.text}" for parent in parents)


def _demonstrations(values: object) -> tuple[Demonstration, ...]:
    """A converter: demonstrations as records, or as ``{"input": ..., "output": ...}`` objects
    read from a file (checked as strictly)."""
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise TypeError(f"demonstrations: expected a list, got {excerpt(values)}")
    found = []
    for index, value in enumerate(values):
        if isinstance(value, Demonstration):
            found.append(value)
            continue
        if not isinstance(value, dict) or set(value) != {"input", "output"}:
            raise TypeError(
                f"demonstrations[{index}]: expected an object with input and output, got {excerpt(value)}"
            )
        found.append(Demonstration(value["input"], value["output"]))
    return tuple(found)


@attrs.frozen
class Demonstration:
    """A worked example inside a prompt: the input as the node sees it (its parents' lines)
    and the output it should give."""

    input: str = attrs.field(validator=text)
    output: str = attrs.field(validator=text)

    def to_json(self) -> dict[str, str]:
        return {"input": self.input, "output": self.output}


@attrs.frozen
class Parameter:
    """What training learns for a node: its instruction (the prompt) and its ordered
    demonstrations."""

    prompt: str = attrs.field(validator=text)
    demonstrations: tuple[Demonstration, ...] = attrs.field(default=(), converter=_demonstrations)

    def describe(self) -> str:
        count = len(self.demonstrations)
        return self.prompt + (f" [+{count} demonstration{'s' * (count != 1)}]" if count else "")

    def to_json(self) -> dict[str, object]:
        return {
            "prompt": self.prompt,
            "demonstrations": [d.to_json() for d in self.demonstrations],
        }

    @classmethod
    def from_json(cls, data: object) -> Parameter:
        if not isinstance(data, dict) or set(data) != {"prompt", "demonstrations"}:
            raise TypeError(
                f"expected an object with prompt and demonstrations, got {excerpt(data)}"
            )
        return cls(data["prompt"], data["demonstrations"])


@attrs.frozen
class NodeOutput:
    rendered: str
    """The model input the node was given."""
    text: str


@attrs.frozen(kw_only=True)
class NodeCall:
    """How one call of a node is made: on which engine, for which phase (the ledger's tag),
    under which parameter (None: the node's own), with which sample seed and temperature
    (None: the node's own) and at which priority (higher goes first under a rate limit)."""

    engine: Engine
    phase: Phase
    parameter: Parameter | None = None
    seed: int = 0
    temperature: float | None = None
    priority: int = 0


@attrs.frozen
class Cost:
    """What one run or one score of a node sends: how many backend calls (at most: a backend
    without exact log-probabilities asks for fewer), and whether they write text, which takes
    longer than scoring a given one."""

    calls: int
    writes: bool
    expected: int = attrs.field(
        default=attrs.Factory(lambda self: self.calls, takes_self=True), kw_only=True
    )
    """The calls expected (a class read from the first token: one, at most two)."""

    @expected.validator
    def _at_most_calls(self, attribute: attrs.Attribute[int], value: int) -> None:
        if not 0 <= value <= self.calls:
            raise ValueError(f"expected calls {value} outside 0..{self.calls}")


class NodeKind(Protocol):
    """What a kind of node must say; `ClassKind` and `TextKind` are the two there are."""

    default_template: ClassVar[str]
    shape: ClassVar[tuple[str, str]]
    """Mermaid brackets around the node's name."""
    score_repeats_run: ClassVar[bool]
    """Whether scoring a target sends exactly the requests of running the node on the same
    inputs, so that an engine's cache answers a score of what a forward pass ran."""

    def describe(self) -> str: ...
    def to_json(self) -> dict[str, Any]: ...

    def target(self, text: str) -> str | None:
        """`text` as this node names an answer (a class name), or None if it is none."""
        ...

    def is_correct(self, output: str, target: str) -> bool: ...

    def outputs(self) -> tuple[str, ...] | None:
        """Every output the node can give, when they are few; None when it writes text."""
        ...

    def run_cost(self, capabilities: Capabilities) -> Cost:
        """What one run of the node sends to a backend that can do `capabilities`."""
        ...

    def score_cost(self, capabilities: Capabilities, targets: int = 1) -> Cost:
        """What the log-likelihoods of `targets` targets on the same inputs (`logliks`) send
        to a backend that can do `capabilities`."""
        ...

    def posterior_size(self, samples: int) -> int:
        """Outputs a posterior weighs per example, given `samples` posterior samples."""
        ...

    def posterior_draws(self, samples: int, capabilities: Capabilities) -> int:
        """Calls a posterior makes per example to draw `samples` samples (on the backward
        engine, a backend of these `capabilities`)."""
        ...

    async def posterior_candidates(
        self, node: LanguageNode, output: str, prompt: str, samples: int, call: NodeCall
    ) -> list[str]:
        """Outputs a posterior weighs for one example: the forward `output` first, then every
        other output the node can give, or `samples` continuations of the posterior `prompt`
        (seeds from the call's on, at the call's temperature)."""
        ...

    async def run(
        self, node: LanguageNode, parents: Sequence[Parent], call: NodeCall
    ) -> NodeOutput: ...

    async def logliks(
        self, node: LanguageNode, parents: Sequence[Parent], targets: Sequence[str], call: NodeCall
    ) -> list[float]:
        """log p(target | the node reading `parents`) of each target, in order."""
        ...


def _classes(instance: ClassKind, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    if not value:
        raise ValueError("classes must be a non-empty list of strings")
    names = [verbalizers(spec)[0] if verbalizers(spec) else "" for spec in value]
    if "" in names:
        raise ValueError(f"empty class in {excerpt(list(value))}")
    for spec in value:
        if "" in spec.split("|"):
            raise ValueError(
                f"class {excerpt(spec)}: an empty verbalizer (each '|' separates two spellings)"
            )
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate class names in {excerpt(list(value))}")
    owner: dict[str, str] = {}
    for spec, name in zip(value, names, strict=True):
        for word in verbalizers(spec):
            answer = normalize_answer(word)
            if owner.setdefault(answer, name) != name:
                raise ValueError(
                    f"classes {excerpt(owner[answer])} and {excerpt(name)} cannot be told apart: both read "
                    f"as the answer {excerpt(answer)}"
                )


@attrs.frozen
class ClassKind:
    """Outputs the most probable class, scored from the log-probability of every verbalizer
    (``"yes|Yes"``: the first verbalizer names the class). With `calibrate`, probabilities are
    divided by those for a content-free input, which removes the prompt's bias towards some
    classes (Zhao et al., 2021)."""

    classes: tuple[str, ...] = attrs.field(converter=class_strings, validator=_classes)
    calibrate: bool = attrs.field(default=False, kw_only=True, validator=boolean)
    _verbalizers: int = attrs.field(init=False, eq=False, repr=False)
    default_template: ClassVar[str] = "classify"
    shape: ClassVar[tuple[str, str]] = ("{", "}")
    score_repeats_run: ClassVar[bool] = True

    def __attrs_post_init__(self) -> None:
        count = sum(len(verbalizers(spec)) for spec in self.classes)
        object.__setattr__(self, "_verbalizers", count)  # counted once: the estimate asks often

    @property
    def names(self) -> list[str]:
        return [class_name(spec) for spec in self.classes]

    def describe(self) -> str:
        return "classes: " + ", ".join(self.names) + (" (calibrated)" if self.calibrate else "")

    def to_json(self) -> dict[str, Any]:
        return {"classes": list(self.classes), "calibrate": self.calibrate}

    def target(self, text: str) -> str | None:
        return matching_class(text, self.classes)

    def is_correct(self, output: str, target: str) -> bool:
        return is_correct(output, target, self.classes)

    def outputs(self) -> tuple[str, ...]:
        return tuple(self.names)

    def run_cost(self, capabilities: Capabilities) -> Cost:
        """A run is a score: the distribution over the classes."""
        return self.score_cost(capabilities)

    def score_cost(self, capabilities: Capabilities, targets: int = 1) -> Cost:
        """The calls of one class distribution, whatever the targets read from it (one per
        verbalizer, or one in all, or the first token's alternatives and then those they lack:
        `Capabilities.distribution_calls`), twice when calibrated (the content-free input
        too)."""
        factor = 2 if self.calibrate else 1
        calls = capabilities.distribution_calls(self._verbalizers)
        expected = capabilities.expected_distribution_calls(self._verbalizers)
        return Cost(factor * calls, writes=False, expected=factor * expected)

    def posterior_size(self, samples: int) -> int:
        return len(self.classes)

    def posterior_draws(self, samples: int, capabilities: Capabilities) -> int:
        return 0

    async def posterior_candidates(
        self, node: LanguageNode, output: str, prompt: str, samples: int, call: NodeCall
    ) -> list[str]:
        return [output] + [name for name in self.names if name != output]

    async def distribution(
        self, node: LanguageNode, parents: Sequence[Parent], call: NodeCall
    ) -> tuple[str, list[float]]:
        """The rendered input and P(class | it), in class order."""
        rendered = node.render(parents, parameter=call.parameter)
        distribution = await self._classify(node, rendered, call)
        if not self.calibrate:
            return rendered, distribution
        blank = node.render(
            [attrs.evolve(p, text=CONTENT_FREE) for p in parents], parameter=call.parameter
        )
        bias = await self._classify(node, blank, call)
        ratios = [p / max(b, 1e-9) for p, b in zip(distribution, bias, strict=True)]
        return rendered, [r / sum(ratios) for r in ratios]

    async def _classify(self, node: LanguageNode, rendered: str, call: NodeCall) -> list[float]:
        return await call.engine.classify(
            rendered, self.classes, node=node.name, phase=call.phase, priority=call.priority
        )

    async def run(
        self, node: LanguageNode, parents: Sequence[Parent], call: NodeCall
    ) -> NodeOutput:
        rendered, distribution = await self.distribution(node, parents, call)
        best = max(range(len(distribution)), key=distribution.__getitem__)
        return NodeOutput(rendered, self.names[best])

    async def logliks(
        self, node: LanguageNode, parents: Sequence[Parent], targets: Sequence[str], call: NodeCall
    ) -> list[float]:
        """Every target read from one distribution."""
        _, distribution = await self.distribution(node, parents, call)
        names = self.names
        probabilities = [distribution[names.index(t)] if t in names else 0.0 for t in targets]
        return [max(math.log(p), LOG_FLOOR) if p > 0 else LOG_FLOOR for p in probabilities]


@attrs.frozen
class TextKind:
    """Outputs free text of at most `max_tokens` tokens, cut at any of `stop`."""

    max_tokens: int = attrs.field(default=128, kw_only=True, validator=integer(1, MAX_TOKENS))
    temperature: float = attrs.field(default=0.0, kw_only=True, validator=number(0))
    stop: tuple[str, ...] = attrs.field(default=(), kw_only=True, converter=stop_strings)
    default_template: ClassVar[str] = "reason"
    shape: ClassVar[tuple[str, str]] = ("[", "]")
    score_repeats_run: ClassVar[bool] = False

    def describe(self) -> str:
        return f"text, {self.max_tokens} tokens"

    def to_json(self) -> dict[str, Any]:
        return {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "stop": list(self.stop),
        }

    def target(self, text: str) -> str:
        return text

    def is_correct(self, output: str, target: str) -> bool:
        return is_correct(output, target)

    def outputs(self) -> None:
        return None

    def run_cost(self, capabilities: Capabilities) -> Cost:
        return Cost(1, writes=True)

    def score_cost(self, capabilities: Capabilities, targets: int = 1) -> Cost:
        """The targets' continuations of the rendered input: `Capabilities.continuation_calls`."""
        return Cost(capabilities.continuation_calls(targets), writes=False)

    def posterior_size(self, samples: int) -> int:
        return samples + 1

    def posterior_draws(self, samples: int, capabilities: Capabilities) -> int:
        """As many calls as draw them: one where the backend draws that many of one prompt."""
        return capabilities.sample_calls(samples)

    async def posterior_candidates(
        self, node: LanguageNode, output: str, prompt: str, samples: int, call: NodeCall
    ) -> list[str]:
        """The forward output, then the samples of seeds from the call's on, drawn together
        (`Engine.samples`: one call where the backend draws several of one prompt)."""
        drawn = await call.engine.samples(prompt, samples, **self._sampling(node, call))
        return [output, *(text.strip() for text in drawn)]

    async def run(
        self, node: LanguageNode, parents: Sequence[Parent], call: NodeCall
    ) -> NodeOutput:
        rendered = node.render(parents, parameter=call.parameter)
        return NodeOutput(rendered, await self._generate(node, rendered, call))

    async def _generate(self, node: LanguageNode, prompt: str, call: NodeCall) -> str:
        output = await call.engine.generate(prompt, **self._sampling(node, call))
        return output.strip()

    def _sampling(self, node: LanguageNode, call: NodeCall) -> dict[str, Any]:
        """How the node's text is drawn in this call: its own settings, the call's
        temperature over its own, the call's seed, who asks."""
        return dict(
            max_tokens=self.max_tokens,
            temperature=self.temperature if call.temperature is None else call.temperature,
            stop=self.stop,
            seed=call.seed,
            node=node.name,
            phase=call.phase,
            priority=call.priority,
        )

    async def logliks(
        self, node: LanguageNode, parents: Sequence[Parent], targets: Sequence[str], call: NodeCall
    ) -> list[float]:
        """Each target as a continuation of the rendered input (after a space)."""
        rendered = node.render(parents, parameter=call.parameter)
        continuations = [" " + target for target in targets]
        return await call.engine.logprobs(
            rendered, continuations, node=node.name, phase=call.phase, priority=call.priority
        )


Kind = ClassKind | TextKind


def _name(instance: LanguageNode, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"node name must be a non-empty string, got {excerpt(value)}")
    if value == INPUT or value in RESERVED:
        raise ValueError(f"node name {excerpt(value)} is reserved")
    if value in TEMPLATE_WORDS:
        raise ValueError(
            f"node name {excerpt(value)} is reserved (templates read it as something else)"
        )


@attrs.frozen
class LanguageNode:
    """One LLM call whose parameter is its prompt and its demonstrations. Frozen: a new
    parameter makes a new node (`with_parameter`), so a network's structure never changes
    behind its back."""

    name: str = attrs.field(validator=_name)
    prompt: str = attrs.field(validator=text)
    kind: Kind = attrs.field(kw_only=True)
    template: str = attrs.field(kw_only=True, validator=text)
    """The name of a built-in template (``reason``, ``classify``) or template text."""
    is_trainable: bool = attrs.field(default=True, kw_only=True, validator=boolean)
    is_output: bool = attrs.field(default=False, kw_only=True, validator=boolean)
    demonstrations: tuple[Demonstration, ...] = attrs.field(
        default=(), kw_only=True, converter=_demonstrations
    )
    compiled: Template = attrs.field(init=False, eq=False, repr=False)

    @demonstrations.validator
    def _outputs_the_node_can_give(
        self, attribute: attrs.Attribute[Any], value: tuple[Demonstration, ...]
    ) -> None:
        for index, demonstration in enumerate(value):
            if self.kind.target(demonstration.output) is None:
                raise ValueError(
                    f"demonstrations[{index}]: output {excerpt(demonstration.output)} is not an "
                    f"answer this node gives ({self.kind.describe()})"
                )

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "compiled", Template.load(self.template))

    @property
    def classes(self) -> tuple[str, ...] | None:
        """A class node's class specs; None for a text node."""
        return self.kind.classes if isinstance(self.kind, ClassKind) else None

    @property
    def parameter(self) -> Parameter:
        return Parameter(self.prompt, self.demonstrations)

    def with_parameter(self, parameter: Parameter) -> LanguageNode:
        return attrs.evolve(self, prompt=parameter.prompt, demonstrations=parameter.demonstrations)

    def render(self, parents: Sequence[Parent], *, parameter: Parameter | None = None) -> str:
        """The model input, given the parents' outputs; `parameter` replaces the node's own
        prompt and demonstrations (to try candidates). Raises GraphError naming the node when
        its template reaches outside its variables (templates render in a sandbox)."""
        named = {("input" if p.name == INPUT else p.name): p.text for p in parents}
        chosen = self.parameter if parameter is None else parameter
        try:
            return self.compiled.render(
                **named,
                prompt=chosen.prompt,
                demonstrations=list(chosen.demonstrations),
                parents=list(parents),
                classes=list(self.kind.outputs() or []),
            )
        except (TemplateRefused, TemplateFailed, jinja2.UndefinedError) as error:
            raise GraphError(f"node {excerpt(self.name)}: {error}") from error

    async def run(self, parents: Sequence[Parent], call: NodeCall) -> NodeOutput:
        """One call of this node on its parents' outputs."""
        return await self.kind.run(self, parents, call)

    async def loglik(self, parents: Sequence[Parent], target: str, call: NodeCall) -> float:
        """log p(target | this node reading `parents`, under the call's parameter)."""
        return (await self.logliks(parents, [target], call))[0]

    async def logliks(
        self, parents: Sequence[Parent], targets: Sequence[str], call: NodeCall
    ) -> list[float]:
        """log p(target | this node reading `parents`) of each target: the inputs rendered
        once, and as few calls as the node's kind and the backend allow
        (`NodeKind.score_cost`)."""
        return await self.kind.logliks(self, parents, targets, call)

    def targets(self, examples: Sequence[Example], name: str) -> list[str]:
        """The examples' targets as this node names answers; DataError naming the example
        (its file and line when it was read from one) for a target it cannot give."""
        targets = []
        for index, example in enumerate(examples):
            target = example.target
            raw = target if isinstance(target, str) else target[self.name]
            found = self.kind.target(raw)
            if found is None:
                raise DataError(
                    f"{example.where(f'{name}[{index}]')}: target {excerpt(raw)} is not a "
                    f"class of node {excerpt(self.name)} ({self.kind.describe()})"
                )
            targets.append(found)
        return targets

    def accuracy(self, outputs: Sequence[str], targets: Sequence[str]) -> float:
        if not targets:
            raise ValueError("accuracy of an empty dataset")
        hits = sum(self.kind.is_correct(o, t) for o, t in zip(outputs, targets, strict=True))
        return hits / len(targets)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "prompt": self.prompt,
            "demonstrations": [d.to_json() for d in self.demonstrations],
            "template": self.template,
            **self.kind.to_json(),
            "trainable": self.is_trainable,
            "output": self.is_output,
        }


class NodeSettings(TypedDict, total=False):
    """The keywords of `Network.add_node` after the name and the prompt, which are also the
    keys of a node in a saved network: the node's kind, its template and its role."""

    demonstrations: Sequence[Demonstration | dict[str, str]]
    template: str | None
    classes: Sequence[str] | None
    calibrate: bool | None
    max_tokens: int | None
    temperature: float | None
    stop: Sequence[str] | None
    trainable: bool
    output: bool


def make_node(name: str, prompt: str, **settings: Unpack[NodeSettings]) -> LanguageNode:
    """A node from the keywords of `Network.add_node`; the one path every node takes, built in
    code or loaded from a file. Raises GraphError naming the node and what is wrong."""
    unknown = sorted(set(settings) - set(NodeSettings.__annotations__))
    if unknown:
        raise GraphError(
            f"node {excerpt(name)}: unknown setting {excerpt(unknown[0])} (known: "
            f"{', '.join(NodeSettings.__annotations__)})"
        )
    try:
        trainable, output = settings.get("trainable", True), settings.get("output", False)
        check_bool("trainable", trainable)
        check_bool("output", output)
        kind = _kind(settings)
        template = settings.get("template")
        return LanguageNode(
            name,
            prompt,
            kind=kind,
            template=kind.default_template if template is None else template,
            is_trainable=trainable,
            is_output=output,
            demonstrations=settings.get("demonstrations", ()),
        )
    except (TypeError, ValueError) as error:
        raise GraphError(f"node {excerpt(name)}: {error}") from error


def _kind(settings: NodeSettings) -> Kind:
    """A class node when `classes` are given, else a text node; the settings of the other
    kind are refused (ValueError)."""
    classes, calibrate = settings.get("classes"), settings.get("calibrate")
    max_tokens, temperature = settings.get("max_tokens"), settings.get("temperature")
    stop = settings.get("stop")
    if classes is not None:
        given = {"max_tokens": max_tokens, "temperature": temperature, "stop": stop}
        for key, value in given.items():
            if value is not None:
                raise ValueError(f"{key} applies to generation nodes only, not class nodes")
        return ClassKind(classes, calibrate=False if calibrate is None else calibrate)
    if calibrate:
        raise ValueError("calibrate applies to class nodes only")
    return TextKind(
        max_tokens=128 if max_tokens is None else max_tokens,
        temperature=0.0 if temperature is None else temperature,
        stop=() if stop is None else stop,
    )
