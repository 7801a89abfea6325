"""The render budget, and the only filters, tests and methods a template can reach.

Every render gets a `RenderBudget` of steps (loop iterations, filter and method calls, pieces
of output) and of characters (text that filters, methods, ``~``, slices and the output
write), both a floor plus an allowance proportional to the size of the values it was given.
Each filter charges the budget for what it will write *before* writing it where that is
known (``replace``, ``indent``, ``join``), so no single call can allocate much beyond the
budget; the template's output is charged piece by piece as it is produced. A render that
exhausts its budget stops with `BudgetExceeded`. Filters and the output take the render's
context (``pass_context``), which also keeps jinja from running them when it compiles.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, cast

import attrs
import jinja2
import jinja2.filters
import jinja2.runtime
import jinja2.sandbox
import jinja2.tests
from jinja2.exceptions import SecurityError

BUDGET = "dlgraph render budget"
"""The context key of a render's budget; not an identifier, so no template can name it."""
STEPS = 100_000
"""Steps every render may take, plus one per character of the values it was given."""
CHARACTERS = 1_000_000
"""Characters every render may write, plus `CHARACTERS_PER_INPUT` per character given."""
CHARACTERS_PER_INPUT = 10

TEXT_METHODS = frozenset(
    {
        "strip",
        "lstrip",
        "rstrip",
        "lower",
        "upper",
        "title",
        "capitalize",
        "startswith",
        "endswith",
        "split",
        "splitlines",
    }
)
"""Methods of text a template may call: none writes more than a few times its input."""
LOOP_ATTRIBUTES = frozenset(
    {
        "index",
        "index0",
        "revindex",
        "revindex0",
        "first",
        "last",
        "length",
        "previtem",
        "nextitem",
    }
)

COUNTED = "_counted"
CONCAT = "_concat"
SLICED = "_sliced"


class BudgetExceeded(SecurityError):
    """A render took more steps, or wrote more characters, than its budget allows."""


def input_characters(values: Iterable[object]) -> int:
    """The characters of the text in `values`: strings, and strings inside lists, tuples,
    dicts and attrs records (walked without recursion)."""
    total = 0
    stack = list(values)
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            total += len(value)
        elif isinstance(value, list | tuple):
            stack.extend(value)
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif attrs.has(type(value)):
            stack.extend(attrs.astuple(cast(attrs.AttrsInstance, value), recurse=False))
    return total


@attrs.define
class RenderBudget:
    """What one render may still spend."""

    step_limit: int
    character_limit: int
    steps: int = attrs.field(default=0, init=False)
    characters: int = attrs.field(default=0, init=False)

    @classmethod
    def for_values(cls, values: Mapping[str, object]) -> RenderBudget:
        given = input_characters(values.values())
        return cls(STEPS + given, CHARACTERS + CHARACTERS_PER_INPUT * given)

    def step(self, count: int = 1) -> None:
        self.steps += count
        if self.steps > self.step_limit:
            raise BudgetExceeded(
                f"it takes more than {self.step_limit:,} steps (loop iterations, calls and "
                "pieces of output)"
            )

    def write(self, count: int) -> None:
        self.characters += count
        if self.characters > self.character_limit:
            raise BudgetExceeded(
                f"it writes more than {self.character_limit:,} characters (output and "
                "intermediate text)"
            )

    def text(self, value: object) -> str:
        """`value` as text; a list or record is charged for the text inside it before it is
        converted, so that printing one costs what it writes."""
        if isinstance(value, str):
            return value
        if isinstance(value, list | tuple | dict) or attrs.has(type(value)):
            self.write(input_characters([value]))
        return str(value)


def _budget(context: jinja2.runtime.Context) -> RenderBudget:
    budget = context.get(BUDGET)
    if not isinstance(budget, RenderBudget):
        raise SecurityError("rendered without a budget")
    return budget


def _written(budget: RenderBudget, text: str) -> str:
    budget.write(len(text))
    return text


def _text_filter(transform: Callable[[str], str]) -> Callable[..., str]:
    """A filter from text to text no longer than a few times its input."""

    @jinja2.pass_context
    def apply(context: jinja2.runtime.Context, value: object) -> str:
        budget = _budget(context)
        budget.step()
        return _written(budget, transform(budget.text(value)))

    return apply


@jinja2.pass_context
def _trim(context: jinja2.runtime.Context, value: object, chars: str | None = None) -> str:
    budget = _budget(context)
    budget.step()
    return _written(budget, budget.text(value).strip(chars))


@jinja2.pass_context
def _join(context: jinja2.runtime.Context, value: Iterable[object], separator: str = "") -> str:
    budget = _budget(context)
    budget.step()
    parts = []
    for item in value:
        budget.step()
        parts.append(_written(budget, budget.text(item)))
        budget.write(len(separator))
    return separator.join(parts)


@jinja2.pass_context
def _replace(
    context: jinja2.runtime.Context, value: object, old: str, new: str, count: int | None = None
) -> str:
    budget = _budget(context)
    budget.step()
    text = budget.text(value)
    if not (isinstance(old, str) and isinstance(new, str)):
        raise TypeError("replace: expected text to replace and text to put in its place")
    found = text.count(old) if old else len(text) + 1
    if count is not None and count >= 0:
        found = min(found, count)
    budget.write(len(text) + found * max(len(new) - len(old), 0))
    return text.replace(old, new, -1 if count is None else count)


@jinja2.pass_context
def _indent(
    context: jinja2.runtime.Context,
    value: object,
    width: int | str = 4,
    first: bool = False,
    blank: bool = False,
) -> str:
    budget = _budget(context)
    budget.step()
    text = budget.text(value)
    if isinstance(width, bool) or not isinstance(width, int | str):
        raise TypeError("indent: expected a width in spaces, or the text to indent with")
    pad = len(width) if isinstance(width, str) else max(width, 0)
    budget.write(len(text) + (text.count("\n") + 2) * pad)
    return jinja2.filters.do_indent(text, width, first, blank)


@jinja2.pass_context
def _truncate(
    context: jinja2.runtime.Context,
    value: object,
    length: int = 255,
    killwords: bool = False,
    end: str = "...",
    leeway: int | None = None,
) -> str:
    budget = _budget(context)
    budget.step()
    text = budget.text(value)
    cut = jinja2.filters.do_truncate(context.environment, text, length, killwords, end, leeway)
    return _written(budget, cut)


def _counting(function: Callable[..., Any]) -> Callable[..., Any]:
    """A filter that writes no text (a length, an item of its input), charged one step."""

    @jinja2.pass_context
    def apply(context: jinja2.runtime.Context, *args: Any) -> Any:
        _budget(context).step()
        return function(*args)

    return apply


@jinja2.pass_context
def _first(context: jinja2.runtime.Context, value: Iterable[object]) -> object:
    _budget(context).step()
    return jinja2.filters.do_first(context.environment, value)


@jinja2.pass_context
def _last(context: jinja2.runtime.Context, value: Any) -> object:
    _budget(context).step()
    return jinja2.filters.do_last(context.environment, value)


@jinja2.pass_context
def _reverse(context: jinja2.runtime.Context, value: Any) -> object:
    budget = _budget(context)
    budget.step()
    if isinstance(value, str):
        return _written(budget, value[::-1])
    items = list(value)
    budget.step(len(items))
    return items[::-1]


@jinja2.pass_context
def _counted(context: jinja2.runtime.Context, iterable: Iterable[object]) -> Iterator[object]:
    """Every loop's iterable: one step per item."""
    budget = _budget(context)
    budget.step()
    for item in iterable:
        budget.step()
        yield item


@jinja2.pass_context
def _concat(context: jinja2.runtime.Context, parts: list[object]) -> str:
    """``a ~ b``: charged for what it writes."""
    budget = _budget(context)
    budget.step()
    return "".join(_written(budget, budget.text(part)) for part in parts)


@jinja2.pass_context
def _sliced(context: jinja2.runtime.Context, value: object) -> object:
    """``text[a:b]``, a copy: charged for its length."""
    budget = _budget(context)
    budget.step()
    if isinstance(value, str):
        budget.write(len(value))
    elif isinstance(value, list | tuple):
        budget.step(len(value))
    return value


@jinja2.pass_context
def _finalize(context: jinja2.runtime.Context, value: object) -> str:
    """Every ``{{ value }}``, as text (the piece of output is charged when it is written)."""
    return _budget(context).text(value)


FILTERS: dict[str, Callable[..., Any]] = {
    "capitalize": _text_filter(str.capitalize),
    "lower": _text_filter(str.lower),
    "upper": _text_filter(str.upper),
    "title": _text_filter(str.title),
    "string": _text_filter(str),
    "trim": _trim,
    "join": _join,
    "replace": _replace,
    "indent": _indent,
    "truncate": _truncate,
    "wordcount": _counting(jinja2.filters.do_wordcount),
    "length": _counting(len),
    "count": _counting(len),
    "default": _counting(jinja2.filters.do_default),
    "d": _counting(jinja2.filters.do_default),
    "first": _first,
    "last": _last,
    "reverse": _reverse,
}
"""Filters a template may use; each writes at most what the budget allows."""
INTERNAL_FILTERS: dict[str, Callable[..., Any]] = {
    COUNTED: _counted,
    CONCAT: _concat,
    SLICED: _sliced,
}
"""Filters the loader puts in place of loops, ``~`` and slices (no template can name them)."""
TESTS = {
    name: _counting(cast(Callable[..., bool], test))
    for name, test in jinja2.tests.TESTS.items()
    if name not in ("callable", "escaped", "filter", "test")  # they inspect the environment or code
}
"""Tests a template may use: each answers yes or no from its operands (taking the render's
context like the filters, so that none runs while a template is loaded)."""


class Sandbox(jinja2.sandbox.ImmutableSandboxedEnvironment):
    """jinja2's immutable sandbox, narrowed to the allow-list: attributes are the fields of
    the records templates see, the loop's counters and the text methods; the only calls are
    to those methods, each charged for what it returns."""

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if attr.startswith("_"):
            return False
        if isinstance(obj, str):
            return attr in TEXT_METHODS
        if isinstance(obj, jinja2.runtime.LoopContext):
            return attr in LOOP_ATTRIBUTES
        if attrs.has(type(obj)):
            return attr in attrs.fields_dict(type(obj))
        return False

    def call(
        __self,  # noqa: N805 - jinja2's signature: keyword arguments may be called "self"
        __context: jinja2.runtime.Context,
        __obj: Any,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        owner = getattr(__obj, "__self__", None)
        name = getattr(__obj, "__name__", None)
        if not (inspect.isbuiltin(__obj) and isinstance(owner, str) and name in TEXT_METHODS):
            raise SecurityError(f"calling {name or __obj!r} is not allowed")
        budget = _budget(__context)
        budget.step()
        result = __obj(*args, **kwargs)
        if isinstance(result, str):
            budget.write(len(result))
        elif isinstance(result, list):
            budget.step(len(result))
            budget.write(sum(len(part) for part in result))
        return result


def sandbox() -> Sandbox:
    """The environment every template renders in: no globals, only the allowed filters and
    tests, nothing evaluated at compile time."""
    environment = Sandbox(
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
        autoescape=False,
        optimized=False,  # jinja would otherwise fold constant expressions while compiling
        finalize=_finalize,
    )
    environment.globals.clear()  # no range, cycler, joiner, lipsum, dict or namespace
    environment.filters = FILTERS | INTERNAL_FILTERS
    environment.tests = dict(TESTS)
    return environment
