"""The network: language nodes joined by edges into a DAG, and its validation.

A Network owns structure only. It never calls a model (``forward`` and ``predict`` hand it to
`dlgraph.forward`) and never trains.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import networkx as nx

from dlgraph._files import write_atomic
from dlgraph.backend import as_strings
from dlgraph.errors import GraphError
from dlgraph.scoring import class_name, verbalizers
from dlgraph.templates import Template

if TYPE_CHECKING:
    from dlgraph.engine import Engine
    from dlgraph.forward import Trace

INPUT = "INPUT"
"""The name of the network's input: ``net.add_edge(dg.INPUT, "node")``."""

FORMAT = "dlgraph.network"
VERSION = 1


@attrs.frozen
class Parent:
    """One parent's output as a template sees it, in edge order."""

    name: str
    label: str
    text: str


@attrs.define(eq=False)
class LanguageNode:
    """One LLM call whose parameter is its prompt.

    A class node (`classes` set) outputs the name of its most probable class; a generation
    node outputs free text of at most `max_tokens`.
    """

    name: str
    prompt: str
    template: str = attrs.field(kw_only=True)
    classes: tuple[str, ...] | None = attrs.field(default=None, kw_only=True)
    max_tokens: int = attrs.field(default=128, kw_only=True)
    temperature: float = attrs.field(default=0.0, kw_only=True)
    stop: tuple[str, ...] = attrs.field(default=(), kw_only=True, converter=as_strings)
    is_trainable: bool = attrs.field(default=True, kw_only=True)
    is_output: bool = attrs.field(default=False, kw_only=True)
    calibrate: bool = attrs.field(default=False, kw_only=True)
    """Class nodes only: divide class probabilities by those for a content-free input."""
    _compiled: Template | None = attrs.field(default=None, init=False, repr=False)

    @property
    def compiled(self) -> Template:
        if self._compiled is None:
            self._compiled = Template.load(self.template)
        return self._compiled

    @property
    def class_names(self) -> list[str]:
        return [class_name(spec) for spec in self.classes or ()]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "prompt": self.prompt,
            "template": self.template,
            "classes": list(self.classes) if self.classes else None,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "stop": list(self.stop),
            "is_trainable": self.is_trainable,
            "is_output": self.is_output,
            "calibrate": self.calibrate,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LanguageNode:
        classes = data.get("classes")
        return cls(
            str(data["name"]),
            str(data["prompt"]),
            template=str(data["template"]),
            classes=tuple(classes) if classes else None,
            max_tokens=int(data.get("max_tokens", 128)),
            temperature=float(data.get("temperature", 0.0)),
            stop=tuple(data.get("stop", ())),
            is_trainable=bool(data.get("is_trainable", True)),
            is_output=bool(data.get("is_output", False)),
            calibrate=bool(data.get("calibrate", False)),
        )


def _known(names: Iterable[str]) -> str:
    return ", ".join(sorted(names)) or "none"


@attrs.define(eq=False)
class Network:
    """A DAG of language nodes fed by INPUT. Output nodes are those marked ``output=True``,
    or, when none is marked, the nodes without children."""

    _graph: nx.DiGraph = attrs.field(factory=nx.DiGraph, init=False)
    _edges: list[tuple[str, str]] = attrs.field(factory=list, init=False)

    def __attrs_post_init__(self) -> None:
        self._graph.add_node(INPUT)

    # -- building ----------------------------------------------------------------------------

    def add_node(
        self,
        name: str,
        prompt: str = "",
        *,
        template: str | None = None,
        classes: Sequence[str] | None = None,
        max_tokens: int = 128,
        temperature: float = 0.0,
        stop: Sequence[str] = (),
        trainable: bool = True,
        output: bool = False,
        calibrate: bool = False,
    ) -> LanguageNode:
        """Add a node; a class node gets ``classes=["yes|Yes", "no|No"]``; ``calibrate``
        removes a class node's prompt bias by comparing with a content-free input."""
        if not isinstance(name, str) or not name.strip():
            raise GraphError(f"node name must be a non-empty string, got {name!r}")
        if name == INPUT or name in self._graph:
            raise GraphError(f"node {name!r}: duplicate name")
        if classes is not None:
            self._check_classes(name, classes)
        if max_tokens <= 0:
            raise GraphError(f"node {name!r}: max_tokens must be > 0, got {max_tokens}")
        if calibrate and not classes:
            raise GraphError(f"node {name!r}: calibrate applies to class nodes only")
        node = LanguageNode(
            name,
            prompt,
            template=template or ("classify" if classes else "reason"),
            classes=tuple(classes) if classes else None,
            max_tokens=max_tokens,
            temperature=temperature,
            stop=as_strings(stop),
            is_trainable=trainable,
            is_output=output,
            calibrate=calibrate,
        )
        self._graph.add_node(name, node=node)
        return node

    @staticmethod
    def _check_classes(name: str, classes: Sequence[str]) -> None:
        if isinstance(classes, str) or not classes:
            raise GraphError(f"node {name!r}: classes must be a non-empty list of strings")
        names = [verbalizers(spec)[0] if verbalizers(spec) else "" for spec in classes]
        if "" in names:
            raise GraphError(f"node {name!r}: empty class in {list(classes)!r}")
        if len(set(names)) != len(names):
            raise GraphError(f"node {name!r}: duplicate class names in {list(classes)!r}")

    def add_edge(self, source: str, target: str) -> None:
        """Feed `source`'s output (or INPUT) into `target`; parents keep the order of edges."""
        for end in (source, target):
            if end not in self._graph:
                raise GraphError(
                    f"edge {source!r} -> {target!r}: unknown node {end!r} "
                    f"(known: {_known(self.nodes)})"
                )
        if target == INPUT:
            raise GraphError(f"edge {source!r} -> {target!r}: nothing may feed INPUT")
        if (source, target) in self._edges:
            raise GraphError(f"edge {source!r} -> {target!r}: duplicate edge")
        self._graph.add_edge(source, target)
        self._edges.append((source, target))

    def set_prompt(self, name: str, prompt: str) -> None:
        self.node(name).prompt = prompt

    # -- reading -----------------------------------------------------------------------------

    @property
    def nodes(self) -> dict[str, LanguageNode]:
        return {name: data["node"] for name, data in self._graph.nodes(data=True) if name != INPUT}

    @property
    def edges(self) -> list[tuple[str, str]]:
        return list(self._edges)

    def node(self, name: str) -> LanguageNode:
        try:
            node: LanguageNode = self._graph.nodes[name]["node"]
        except KeyError:
            raise GraphError(f"unknown node {name!r} (known: {_known(self.nodes)})") from None
        return node

    def parents(self, name: str) -> list[str]:
        return [source for source, target in self._edges if target == name]

    def children(self, name: str) -> list[str]:
        return [target for source, target in self._edges if source == name]

    def output_nodes(self) -> list[str]:
        marked = [name for name, node in self.nodes.items() if node.is_output]
        return marked or [name for name in self.nodes if not self.children(name)]

    def topological_order(self) -> list[str]:
        """Nodes (without INPUT), each after all its parents; ties keep insertion order."""
        order = nx.lexicographical_topological_sort(self._graph, key=list(self._graph).index)
        return [name for name in order if name != INPUT]

    def hidden_nodes(self) -> list[str]:
        """Non-output nodes in topological order."""
        outputs = set(self.output_nodes())
        return [name for name in self.topological_order() if name not in outputs]

    def depth(self, name: str) -> int:
        """Edges on the longest path from INPUT: deeper nodes get priority when rate limited."""
        parents = [p for p in self.parents(name) if p != INPUT]
        return 1 + max((self.depth(p) for p in parents), default=0)

    def prompts(self) -> dict[str, str]:
        return {name: node.prompt for name, node in self.nodes.items()}

    def copy(self) -> Network:
        return Network.from_json(self.to_json())

    # -- validation --------------------------------------------------------------------------

    def validate(self) -> None:
        """Raise GraphError naming the node or edge at fault; runs before any model call."""
        if not self.nodes:
            raise GraphError("the network has no nodes")
        try:
            cycle = nx.find_cycle(self._graph)
        except nx.NetworkXNoCycle:
            cycle = None
        if cycle:
            path = " -> ".join([edge[0] for edge in cycle] + [cycle[0][0]])
            raise GraphError(f"cycle: {path}")
        outputs = self.output_nodes()
        needed = set(outputs).union(*(nx.ancestors(self._graph, name) for name in outputs))
        for name, node in self.nodes.items():
            if name not in needed:
                raise GraphError(
                    f"node {name!r}: no output depends on it (outputs: {_known(outputs)})"
                )
            if not self.parents(name):
                raise GraphError(f"node {name!r}: has no parents; add an edge from INPUT or a node")
            self._check_template(name, node)

    def _check_template(self, name: str, node: LanguageNode) -> None:
        try:
            variables = node.compiled.variables
        except Exception as error:  # jinja2 syntax errors of user text
            raise GraphError(f"node {name!r}: template does not parse: {error}") from error
        supplied = self.template_variables(name)
        missing = sorted(variables - supplied)
        if missing:
            raise GraphError(
                f"node {name!r}: template variable {missing[0]!r} is supplied by no parent "
                f"(parents: {_known(self.parents(name))}; available: {_known(supplied)})"
            )
        if "prompt" in variables and not node.prompt.strip():
            raise GraphError(f"node {name!r}: empty prompt")

    def template_variables(self, name: str) -> set[str]:
        """Names a node's template may use: prompt, parents, classes, input and parent names."""
        supplied = {"prompt", "parents", "classes"}
        for parent in self.parents(name):
            supplied.add("input" if parent == INPUT else parent)
        return supplied

    # -- rendering ---------------------------------------------------------------------------

    def parent_values(self, name: str, values: Mapping[str, str]) -> list[Parent]:
        """A node's parents' outputs in edge order, labelled as templates show them."""
        return [
            Parent(parent, "Input" if parent == INPUT else parent, values[parent])
            for parent in self.parents(name)
        ]

    def describe_inputs(self, name: str, values: Mapping[str, str]) -> str:
        """What a node reads besides its prompt, one ``label: text`` line per parent."""
        return "\n".join(f"{p.label}: {p.text}" for p in self.parent_values(name, values))

    def render(self, name: str, values: Mapping[str, str], prompt: str | None = None) -> str:
        """The model input of node `name`, given its parents' outputs (INPUT included).

        `prompt` replaces the node's own prompt, for scoring candidate prompts.
        """
        node = self.node(name)
        parents = self.parent_values(name, values)
        named = {("input" if p.name == INPUT else p.name): p.text for p in parents}
        return node.compiled.render(
            **named,
            prompt=node.prompt if prompt is None else prompt,
            parents=parents,
            classes=node.class_names,
        )

    # -- running -----------------------------------------------------------------------------

    async def forward(self, engine: Engine, xs: Sequence[str], *, phase: str = "forward") -> Trace:
        """Run every node on every input; see `dlgraph.forward.forward`."""
        from dlgraph.forward import forward

        return await forward(self, engine, xs, phase=phase)

    async def predict(self, engine: Engine, xs: Sequence[str]) -> list[str]:
        """The output node's outputs, one per input (the first output node if several)."""
        trace = await self.forward(engine, xs, phase="eval")
        return list(trace.outputs[self.output_nodes()[0]])

    # -- formats -----------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "nodes": [node.to_json() for node in self.nodes.values()],
            "edges": [list(edge) for edge in self._edges],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Network:
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise GraphError(
                f"not a dlgraph network (format {data.get('format')!r}, version "
                f"{data.get('version')!r}; expected {FORMAT!r}, {VERSION})"
            )
        network = cls()
        for entry in data["nodes"]:
            node = LanguageNode.from_json(entry)
            if node.name == INPUT or node.name in network._graph:
                raise GraphError(f"node {node.name!r}: duplicate name")
            network._graph.add_node(node.name, node=node)
        for source, target in data["edges"]:
            network.add_edge(source, target)
        return network

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the whole network as JSON, atomically."""
        write_atomic(path, json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Network:
        try:
            with open(path, encoding="utf-8") as stream:
                data = json.load(stream)
        except json.JSONDecodeError as error:
            raise GraphError(f"{os.fspath(path)}: not valid JSON: {error}") from error
        try:
            return cls.from_json(data)
        except (KeyError, TypeError, ValueError) as error:
            if isinstance(error, GraphError):
                raise GraphError(f"{os.fspath(path)}: {error}") from error
            raise GraphError(f"{os.fspath(path)}: malformed network: {error!r}") from error

    def to_mermaid(self) -> str:
        """The graph as Mermaid flowchart text."""
        ids = {INPUT: "INPUT"} | {name: f"n{i}" for i, name in enumerate(self.nodes)}
        lines = ["flowchart TD", "  INPUT([INPUT])"]
        for name, node in self.nodes.items():
            shape = f'{ids[name]}{{"{name}"}}' if node.classes else f'{ids[name]}["{name}"]'
            lines.append(f"  {shape}")
        lines += [f"  {ids[source]} --> {ids[target]}" for source, target in self._edges]
        return "\n".join(lines) + "\n"
