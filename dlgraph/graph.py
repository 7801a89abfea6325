"""A graph of language nodes: structure, validation and the JSON format.

A Graph owns structure only: nodes, edges, INPUT, output nodes, topological order. It never
calls a model; `dlgraph.network.Network` is the graph that runs. Everything derived from the
structure is computed once per change, in time linear in nodes and edges.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Self, Unpack

import attrs
import networkx as nx

from dlgraph._files import write_atomic
from dlgraph._untrusted import UnreadableFile, excerpt, parse_json, read_text
from dlgraph.data.example import Example
from dlgraph.errors import DataError, GraphError
from dlgraph.nodes import INPUT, LanguageNode, NodeSettings, Parameter, Parent, make_node
from dlgraph.templates import TemplateFailed

FORMAT = "dlgraph.network"
VERSION = 2
DOCUMENT_KEYS = ("format", "version", "nodes", "edges")
"""What a saved network holds (`to_json`)."""
NODE_KEYS = ("name", "prompt", *NodeSettings.__annotations__)


def _known(names: Sequence[str] | Mapping[str, object]) -> str:
    return ", ".join(sorted(names)) or "none"


@attrs.frozen
class _Structure:
    """What the edges imply, computed once per change (the graph must be acyclic)."""

    order: tuple[str, ...]
    depth: Mapping[str, int]
    outputs: tuple[str, ...]


@attrs.define(eq=False)
class Graph:
    """A DAG of language nodes fed by INPUT. Output nodes are those marked ``output=True``,
    or, when none is marked, the nodes without children."""

    _nodes: dict[str, LanguageNode] = attrs.field(factory=dict, init=False)
    _edges: list[tuple[str, str]] = attrs.field(factory=list, init=False)
    _parents: dict[str, list[str]] = attrs.field(factory=dict, init=False)
    _children: dict[str, list[str]] = attrs.field(factory=lambda: {INPUT: []}, init=False)
    _structure: _Structure | None = attrs.field(default=None, init=False)

    # -- building ----------------------------------------------------------------------------

    def add_node(
        self, name: str, prompt: str = "", **settings: Unpack[NodeSettings]
    ) -> LanguageNode:
        """Add a node: a class node with ``classes=["yes|Yes", "no|No"]`` (and optionally
        ``calibrate``), else a generation node (``max_tokens`` 128, ``temperature`` 0 and
        ``stop`` by default). ``template`` names a built-in template or gives its text;
        ``trainable`` (true) and ``output`` (false) mark the node's role; ``demonstrations``
        start the node with worked examples (training learns them too). Raises GraphError
        naming the node."""
        if isinstance(name, str) and (name == INPUT or name in self._nodes):
            raise GraphError(f"node {excerpt(name)}: duplicate name")
        node = make_node(name, prompt, **settings)
        self._nodes[name] = node
        self._parents[name], self._children[name] = [], []
        self._structure = None
        return node

    def add_edge(self, source: str, target: str) -> None:
        """Feed `source`'s output (or INPUT) into `target`; parents keep the order of edges."""
        for end in (source, target):
            if end != INPUT and end not in self._nodes:
                raise GraphError(
                    f"edge {excerpt(source)} -> {excerpt(target)}: unknown node {excerpt(end)} "
                    f"(known: {_known(self._nodes)})"
                )
        if target == INPUT:
            raise GraphError(f"edge {excerpt(source)} -> {excerpt(target)}: nothing may feed INPUT")
        if source in self._parents[target]:
            raise GraphError(f"edge {excerpt(source)} -> {excerpt(target)}: duplicate edge")
        self._edges.append((source, target))
        self._parents[target].append(source)
        self._children[source].append(target)
        self._structure = None

    def set_prompt(self, name: str, prompt: str) -> None:
        """A new instruction for node `name`; its demonstrations stay."""
        node = self.node(name)
        self._nodes[name] = node.with_parameter(Parameter(prompt, node.demonstrations))

    def set_parameter(self, name: str, parameter: Parameter) -> None:
        """A new instruction and demonstrations for node `name`."""
        self._nodes[name] = self.node(name).with_parameter(parameter)

    def parameters(self) -> dict[str, Parameter]:
        """Every node's learnt parameter: its prompt and its demonstrations."""
        return {name: node.parameter for name, node in self._nodes.items()}

    # -- reading -----------------------------------------------------------------------------

    @property
    def nodes(self) -> dict[str, LanguageNode]:
        return dict(self._nodes)

    @property
    def edges(self) -> list[tuple[str, str]]:
        return list(self._edges)

    def node(self, name: str) -> LanguageNode:
        try:
            return self._nodes[name]
        except KeyError:
            raise GraphError(
                f"unknown node {excerpt(name)} (known: {_known(self._nodes)})"
            ) from None

    def parents(self, name: str) -> list[str]:
        return list(self._parents[name])

    def children(self, name: str) -> list[str]:
        return list(self._children[name])

    def output_nodes(self) -> list[str]:
        marked = [name for name, node in self._nodes.items() if node.is_output]
        return marked or [name for name in self._nodes if not self._children[name]]

    def topological_order(self) -> list[str]:
        """Nodes (without INPUT), each after all its parents; ties keep insertion order."""
        return list(self._derived().order)

    def hidden_nodes(self) -> list[str]:
        """Non-output nodes in topological order."""
        outputs = set(self._derived().outputs)
        return [name for name in self._derived().order if name not in outputs]

    def depth(self, name: str) -> int:
        """Edges on the longest path from INPUT: deeper nodes get priority when rate limited."""
        return self._derived().depth[name]

    def targets(self, examples: Sequence[Example], name: str) -> dict[str, list[str]]:
        """Each output node's targets for `examples`, as the node names answers. DataError,
        naming the example (its file and line when read from one), for a plain target in a
        network of several outputs, a mapping that does not name exactly the outputs, or a
        target an output cannot give."""
        outputs = self.output_nodes()
        for index, example in enumerate(examples):
            where = example.where(f"{name}[{index}]")
            if isinstance(example.target, str):
                if len(outputs) > 1:
                    raise DataError(
                        f"{where}: one target for {len(outputs)} output nodes "
                        f"({', '.join(outputs)}): give an object with a target for each"
                    )
            elif set(example.target) != set(outputs):
                raise DataError(
                    f"{where}: target names {', '.join(sorted(example.target))}; "
                    f"the output nodes are {', '.join(outputs)}"
                )
        return {output: self.node(output).targets(examples, name) for output in outputs}

    def prompts(self) -> dict[str, str]:
        return {name: node.prompt for name, node in self._nodes.items()}

    def parent_values(self, name: str, values: Mapping[str, str]) -> list[Parent]:
        """A node's parents' outputs in edge order, labelled as templates show them."""
        return [
            Parent(parent, "Input" if parent == INPUT else parent, values[parent])
            for parent in self._parents[name]
        ]

    def render(
        self, name: str, values: Mapping[str, str], parameter: Parameter | None = None
    ) -> str:
        """The model input of node `name`, given its parents' outputs (INPUT included)."""
        return self.node(name).render(self.parent_values(name, values), parameter=parameter)

    def copy(self) -> Self:
        """The same structure and prompts; nodes are frozen, so they are shared."""
        twin = type(self)()
        twin._nodes = dict(self._nodes)
        twin._edges = list(self._edges)
        twin._parents = {name: list(p) for name, p in self._parents.items()}
        twin._children = {name: list(c) for name, c in self._children.items()}
        twin._structure = self._structure
        return twin

    # -- structure ---------------------------------------------------------------------------

    def _digraph(self) -> nx.DiGraph:
        graph = nx.DiGraph()
        graph.add_node(INPUT)
        graph.add_nodes_from(self._nodes)
        graph.add_edges_from(self._edges)
        return graph

    def _derived(self) -> _Structure:
        """Topological order, depths and outputs; a cycle raises GraphError."""
        if self._structure is None:
            self._check_acyclic()
            position = {name: index for index, name in enumerate(self._nodes)}
            order = [
                name
                for name in nx.lexicographical_topological_sort(
                    self._digraph(), key=lambda name: position.get(name, -1)
                )
                if name != INPUT
            ]
            depth: dict[str, int] = {}
            for name in order:
                depth[name] = 1 + max(
                    (depth[p] for p in self._parents[name] if p != INPUT), default=0
                )
            self._structure = _Structure(tuple(order), depth, tuple(self.output_nodes()))
        return self._structure

    def _check_acyclic(self) -> None:
        try:
            cycle = nx.find_cycle(self._digraph())
        except nx.NetworkXNoCycle:
            return
        path = " -> ".join([edge[0] for edge in cycle] + [cycle[0][0]])
        raise GraphError(f"cycle: {path}")

    # -- validation --------------------------------------------------------------------------

    def validate(self) -> None:
        """Raise GraphError naming the node or edge at fault; runs before any model call."""
        if not self._nodes:
            raise GraphError("the network has no nodes")
        outputs = self._derived().outputs
        needed = self._ancestors(outputs)
        for name, node in self._nodes.items():
            if name not in needed:
                raise GraphError(
                    f"node {excerpt(name)}: no output depends on it (outputs: {_known(outputs)})"
                )
            if not self._parents[name]:
                raise GraphError(
                    f"node {excerpt(name)}: has no parents; add an edge from INPUT or a node"
                )
            self._check_template(name, node)

    def _ancestors(self, names: Sequence[str]) -> set[str]:
        """`names` and every node they depend on, in one walk up the edges."""
        seen, queue = set(names), deque(names)
        while queue:
            for parent in self._parents.get(queue.popleft(), ()):
                if parent not in seen:
                    seen.add(parent)
                    queue.append(parent)
        return seen

    def _check_template(self, name: str, node: LanguageNode) -> None:
        variables = node.compiled.variables
        supplied = self.template_variables(name)
        missing = sorted(variables - supplied)
        if missing:
            raise GraphError(
                f"node {excerpt(name)}: template variable {excerpt(missing[0])} is supplied by no parent "
                f"(parents: {_known(self._parents[name])}; available: {_known(sorted(supplied))})"
            )
        if "prompt" in variables and not node.prompt.strip():
            raise GraphError(f"node {excerpt(name)}: empty prompt")
        placeholders = self.parent_values(name, dict.fromkeys(self._parents[name], "..."))
        try:
            node.render(placeholders)  # a refusal or an exhausted budget shows before any call
        except GraphError as error:
            if not isinstance(error.__cause__, TemplateFailed):
                raise
            # a failure may depend on the placeholders; it fails, naming the node, on real inputs

    def template_variables(self, name: str) -> set[str]:
        """Names a node's template may use: prompt, demonstrations, parents, classes, input and
        parent names."""
        supplied = {"prompt", "demonstrations", "parents", "classes"}
        for parent in self._parents[name]:
            supplied.add("input" if parent == INPUT else parent)
        return supplied

    # -- formats -----------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "nodes": [node.to_json() for node in self._nodes.values()],
            "edges": [list(edge) for edge in self._edges],
        }

    @classmethod
    def from_json(cls, data: object) -> Self:
        """A graph from its JSON form, every node through the checks of `add_node`."""
        if not isinstance(data, dict):
            raise GraphError(
                f"not a dlgraph network (expected a JSON object, got {type(data).__name__})"
            )
        version = data.get("version")
        if data.get("format") != FORMAT or type(version) is not int or version not in (1, VERSION):
            raise GraphError(
                f"not a dlgraph network (format {excerpt(data.get('format'))}, version "
                f"{excerpt(version)}; expected {FORMAT!r}, {VERSION})"
            )
        unknown = sorted(set(data) - set(DOCUMENT_KEYS))
        if unknown:
            raise GraphError(
                f"unknown key {excerpt(unknown[0])} (a network holds {', '.join(DOCUMENT_KEYS)})"
            )
        graph = cls()
        for index, entry in enumerate(_list(data, "nodes")):
            graph.add_node(**_node_arguments(entry, index, upgrade=version == 1))
        for index, edge in enumerate(_list(data, "edges")):
            if not (
                isinstance(edge, list) and len(edge) == 2 and all(isinstance(e, str) for e in edge)
            ):
                raise GraphError(f"edges[{index}]: expected [source, target], got {excerpt(edge)}")
            graph.add_edge(edge[0], edge[1])
        return graph

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the whole network as JSON, atomically."""
        write_atomic(path, json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Self:
        """Read a saved network; GraphError names the file and what is wrong with it."""
        where = os.fspath(path)
        try:
            data = parse_json(read_text(path))
        except UnreadableFile as error:
            raise GraphError(f"{where}: {error}") from None
        except json.JSONDecodeError as error:
            raise GraphError(f"{where}: not valid JSON: {error}") from error
        try:
            return cls.from_json(data)
        except GraphError as error:
            raise GraphError(f"{where}: {error}") from error

    def to_mermaid(self) -> str:
        """The graph as Mermaid flowchart text."""
        ids = {INPUT: "INPUT"} | {name: f"n{i}" for i, name in enumerate(self._nodes)}
        lines = ["flowchart TD", "  INPUT([INPUT])"]
        for name, node in self._nodes.items():
            left, right = node.kind.shape
            lines.append(f'  {ids[name]}{left}"{name}"{right}')
        lines += [f"  {ids[source]} --> {ids[target]}" for source, target in self._edges]
        return "\n".join(lines) + "\n"


def _list(data: Mapping[str, Any], key: str) -> list[Any]:
    value = data.get(key)
    if not isinstance(value, list):
        raise GraphError(f"{excerpt(key)}: expected a list, got {excerpt(value)}")
    return value


def _node_arguments(entry: object, index: int, *, upgrade: bool) -> dict[str, Any]:
    """A node entry as keywords of `add_node`; version 1 files named two keys differently and
    gave class nodes the (unused) generation settings."""
    if not isinstance(entry, dict):
        raise GraphError(f"nodes[{index}]: expected an object, got {excerpt(entry)}")
    arguments = dict(entry)
    if upgrade:
        for old, new in (("is_trainable", "trainable"), ("is_output", "output")):
            if old in arguments:
                arguments[new] = arguments.pop(old)
        text_only = (
            ("max_tokens", "temperature", "stop") if arguments.get("classes") else ("calibrate",)
        )
        for key in text_only:
            arguments.pop(key, None)
        if arguments.get("classes") is None:
            arguments.pop("classes", None)
    unknown = sorted(set(arguments) - set(NODE_KEYS))
    name = arguments.get("name", f"nodes[{index}]")
    if unknown:
        raise GraphError(
            f"node {excerpt(name)}: unknown key {excerpt(unknown[0])} (known: {', '.join(NODE_KEYS)})"
        )
    for key in ("name", "prompt"):
        if key not in arguments:
            raise GraphError(f"nodes[{index}]: missing key {excerpt(key)}")
    return arguments
