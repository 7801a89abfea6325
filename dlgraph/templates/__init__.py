"""Forward, proposal and posterior templates (jinja2), and their loader.

A template is either the name of a file here (``reason``, ``classify``, ``propose``,
``posterior``) or template text given by the user, possibly from a network file someone else
wrote. Every template renders in jinja2's immutable sandbox with no globals: a template reads
the variables it is given and nothing else; reaching for Python internals (``__class__``,
``__globals__``, format-string tricks) or mutating a value raises `TemplateRefused`, and ``*``
and ``**`` may not build huge values.
"""

from __future__ import annotations

import operator
from importlib.resources import files
from typing import Any

import attrs
import jinja2
import jinja2.exceptions
import jinja2.meta
import jinja2.sandbox

BUILTIN = ("reason", "classify", "propose", "posterior")
MAX_RESULT = 100_000
"""The most characters (or items, or digits) an ``*`` or ``**`` in a template may produce."""


class TemplateRefused(ValueError):
    """A template tried to reach outside the variables it was given, or to build a huge value."""


class _Sandbox(jinja2.sandbox.ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: jinja2.runtime.Context, op: str, left: Any, right: Any) -> Any:
        if op == "**" and isinstance(left, int | float) and isinstance(right, int | float):
            if abs(right) > 64 and abs(left) > 1:
                raise jinja2.exceptions.SecurityError("a power this large is not allowed")
            return operator.pow(left, right)
        for value, factor in ((left, right), (right, left)):
            if hasattr(value, "__len__") and isinstance(factor, int):
                if len(value) * factor > MAX_RESULT:
                    raise jinja2.exceptions.SecurityError("a repetition this large is not allowed")
        return operator.mul(left, right)


def _environment() -> jinja2.Environment:
    environment = _Sandbox(
        undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False
    )
    environment.globals.clear()  # no range, cycler, joiner, lipsum or namespace
    return environment


_ENVIRONMENT = _environment()


def template_text(name_or_text: str) -> str:
    """The source of a builtin template by name, or the given text itself."""
    if name_or_text in BUILTIN:
        return files(__name__).joinpath(f"{name_or_text}.jinja").read_text(encoding="utf-8")
    return name_or_text


@attrs.frozen
class Template:
    """A compiled template that knows which variables it reads."""

    source: str
    _compiled: jinja2.Template = attrs.field(eq=False, repr=False, alias="compiled")
    variables: frozenset[str] = attrs.field(eq=False)

    @classmethod
    def load(cls, name_or_text: str) -> Template:
        """Compile a built-in template by name, or template text; ValueError if it does not
        parse, or if it is one word that names no built-in template (a misspelt name)."""
        if name_or_text.isidentifier() and name_or_text not in BUILTIN:
            raise ValueError(
                f"unknown template {name_or_text!r} (built-in: {', '.join(BUILTIN)}; "
                "or give template text)"
            )
        source = template_text(name_or_text)
        try:
            parsed = _ENVIRONMENT.parse(source)
            compiled = _ENVIRONMENT.from_string(source)
        except jinja2.TemplateSyntaxError as error:
            raise ValueError(f"template does not parse: {error}") from error
        variables = frozenset(jinja2.meta.find_undeclared_variables(parsed))
        return cls(source, compiled=compiled, variables=variables)

    def render(self, **values: object) -> str:
        """Raises TemplateRefused when the template reaches outside its variables."""
        try:
            return self._compiled.render(**values).rstrip(" ")
        except jinja2.exceptions.SecurityError as error:
            raise TemplateRefused(f"template refused: {error}") from error
