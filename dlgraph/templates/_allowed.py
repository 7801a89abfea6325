"""What a prompt template may say, checked when it is loaded, before anything is compiled.

A prompt needs variables, loops over demonstrations and parents, conditions, and a few text
filters; it needs no arithmetic, macros, assignments, includes or calls of arbitrary methods.
`check_allowed` walks a parsed template (without recursion) and refuses everything outside
that allow-list, naming it and its line. `instrument` then routes the remaining work that
can grow with its input through the render budget: every loop iteration, every ``~``, every
slice (`dlgraph.templates._budget`).
"""

from __future__ import annotations

from collections.abc import Collection

from jinja2 import nodes
from jinja2.visitor import NodeTransformer

from dlgraph._untrusted import excerpt
from dlgraph.templates._budget import (
    CONCAT,
    COUNTED,
    FILTERS,
    LOOP_ATTRIBUTES,
    SLICED,
    TESTS,
    TEXT_METHODS,
)

MAX_NESTING = 40
"""Syntax nested deeper than this is refused (an expression of a few levels already counts
several: ``{{ parents[0].text|trim }}`` is five)."""
RECORD_FIELDS = frozenset(
    {"name", "label", "text", "input", "output", "target", "is_correct", "prompt"}
)
"""The fields of the records templates see: a parent (name, label, text), a demonstration
(input, output), and in the proposal and posterior templates a shown example (input, output,
target, is_correct) and a child (prompt, target)."""
ATTRIBUTES = RECORD_FIELDS | LOOP_ATTRIBUTES | TEXT_METHODS

_ALLOWED = (
    nodes.Template,
    nodes.Output,
    nodes.TemplateData,
    nodes.For,
    nodes.If,
    nodes.Name,
    nodes.Const,
    nodes.Tuple,
    nodes.List,
    nodes.Keyword,
    nodes.CondExpr,
    nodes.Filter,
    nodes.Test,
    nodes.Call,
    nodes.Getitem,
    nodes.Getattr,
    nodes.Slice,
    nodes.Concat,
    nodes.Compare,
    nodes.Operand,
    nodes.And,
    nodes.Or,
    nodes.Not,
    nodes.Neg,
    nodes.Pos,
)
_TAGS = {
    nodes.Include: "{% include %}",
    nodes.Import: "{% import %}",
    nodes.FromImport: "{% from ... import %}",
    nodes.Extends: "{% extends %}",
    nodes.Block: "{% block %}",
    nodes.Macro: "{% macro %}",
    nodes.CallBlock: "{% call %}",
    nodes.FilterBlock: "{% filter %}",
    nodes.With: "{% with %}",
    nodes.Assign: "{% set %}",
    nodes.AssignBlock: "{% set %}",
    nodes.ScopedEvalContextModifier: "{% autoescape %}",
    nodes.EvalContextModifier: "{% autoescape %}",
    nodes.Dict: "a dict literal",
}


class Refusal(ValueError):
    """A template says something prompts may not (the message names it and its line)."""


def check_allowed(template: nodes.Template) -> None:
    """Refuse the first construct outside the allow-list: a tag that is not allowed as soon
    as it opens, an expression as it reads, left to right (its parts before it:
    ``a.__class__.__mro__`` is refused at ``__class__``)."""
    stack: list[tuple[nodes.Node, int, bool]] = [(template, 1, False)]
    while stack:
        node, depth, parts_checked = stack.pop()
        problem = _expression_problem(node) if parts_checked else _tag_problem(node)
        if problem is not None:
            raise Refusal(f"{problem} (line {node.lineno})")
        if parts_checked:
            continue
        if depth > MAX_NESTING:
            raise Refusal(f"it nests more than {MAX_NESTING} levels deep (line {node.lineno})")
        stack.append((node, depth, True))
        parts = list(node.iter_child_nodes())
        stack.extend((part, depth + 1, False) for part in reversed(parts))


def _tag_problem(node: nodes.Node) -> str | None:
    """What is not allowed about this kind of node, or None."""
    if not isinstance(node, _ALLOWED):
        return f"{_described(node)} is not allowed in a prompt template"
    if isinstance(node, nodes.For) and node.recursive:
        return "recursive loops are not allowed"
    return None


def _expression_problem(node: nodes.Node) -> str | None:
    """What is not allowed about this use of an allowed node, or None."""
    if isinstance(node, nodes.Name) and node.name == "self":
        return "the variable 'self' is not allowed"
    if isinstance(node, nodes.Getattr) and node.attr not in ATTRIBUTES:
        return f"access to attribute {excerpt(node.attr)} is not allowed"
    if isinstance(node, nodes.Filter | nodes.Test):
        return _filter_or_test_problem(node)
    if isinstance(node, nodes.Call):
        method = node.node.attr if isinstance(node.node, nodes.Getattr) else None
        if method not in TEXT_METHODS or node.dyn_args or node.dyn_kwargs:
            return f"calls are not allowed, except of {_listed(TEXT_METHODS, '()')}"
    if isinstance(node, nodes.Neg | nodes.Pos) and not isinstance(node.node, nodes.Const):
        return f"the operator {node.operator!r} is allowed only before a number"
    return None


def _filter_or_test_problem(node: nodes.Filter | nodes.Test) -> str | None:
    kind, allowed = ("filter", FILTERS) if isinstance(node, nodes.Filter) else ("test", TESTS)
    if node.name not in allowed:
        return f"the {kind} {excerpt(node.name)} is not allowed (allowed: {_listed(allowed)})"
    if node.dyn_args or node.dyn_kwargs:
        return f"the {kind} {excerpt(node.name)} may not take *args or **kwargs"
    return None


def _described(node: nodes.Node) -> str:
    if isinstance(node, nodes.BinExpr):
        return f"the operator {node.operator!r}"
    return _TAGS.get(type(node), type(node).__name__)


def _listed(names: Collection[str], suffix: str = "") -> str:
    return ", ".join(f"{name}{suffix}" for name in sorted(names) if name.isidentifier())


class _Instrument(NodeTransformer):
    """Puts the budget's counters into a checked template: the iterable of every loop, every
    ``~`` and every slice pass through a filter that charges the render budget."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = _charged(COUNTED, node.iter)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return _charged(CONCAT, nodes.List(node.nodes, lineno=node.lineno))

    def visit_Getitem(self, node: nodes.Getitem) -> nodes.Node:
        self.generic_visit(node)
        return _charged(SLICED, node) if isinstance(node.arg, nodes.Slice) else node


def _charged(name: str, node: nodes.Node) -> nodes.Filter:
    return nodes.Filter(node, name, [], [], None, None, lineno=node.lineno)


def instrument(template: nodes.Template) -> nodes.Template:
    """The checked `template` with its counters in place (it is changed in place)."""
    _Instrument().visit(template)
    return template
