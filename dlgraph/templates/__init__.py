"""Forward, proposal and posterior templates (jinja2), and their loader.

A template is either the name of a file here (``reason``, ``classify``, ``propose``,
``posterior``) or template text given by the user, possibly from a network file someone else
wrote, so templates are untrusted and bounded twice over:

* **when loaded**, a template may say only what prompts need (`_allowed`): variables, loops
  over demonstrations and parents, conditions, comparisons, ``~``, a few text filters
  (``trim``, ``join``, ``replace``, ``indent``, ``truncate``, ...) and text methods
  (``strip()``, ``split()``, ...). Arithmetic, macros, assignments, includes, recursion and
  other calls are refused with the construct and its line, and nothing is evaluated: jinja's
  constant folding is off and every filter needs the render's context. Loading costs time in
  proportion to the template's length, at most `MAX_SOURCE` characters.
* **when rendered**, in jinja2's immutable sandbox with no globals, every loop iteration, call
  and piece of output spends a budget (`_budget`) of steps and characters (a floor plus an
  allowance in proportion to the values given), and a render that would exceed it stops with
  `TemplateRefused`: a template's work and output are bounded whatever its input.
"""

from __future__ import annotations

from importlib.resources import files

import attrs
import jinja2
import jinja2.exceptions
import jinja2.meta

from dlgraph._untrusted import excerpt
from dlgraph.templates._allowed import Refusal, check_allowed, instrument
from dlgraph.templates._budget import BUDGET, RenderBudget, sandbox

BUILTIN = ("reason", "classify", "propose", "posterior")
MAX_SOURCE = 20_000
"""The longest template text, in characters: generous for a prompt, and it bounds what
loading one costs (about 0.5 s for a template this long that is all expressions)."""


class TemplateRefused(ValueError):
    """A template says something prompts may not, reaches outside the variables it was
    given, or exceeds its render budget."""


class TemplateFailed(ValueError):
    """A template failed while rendering on these values (an index past the end of a list, a
    filter given the wrong kind of value); it may render on others."""


_ENVIRONMENT = sandbox()


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
        """Compile a built-in template by name, or template text. ValueError if it does not
        parse or is one word that names no built-in template (a misspelt name);
        TemplateRefused if it says something prompts may not."""
        if not name_or_text.strip():
            raise ValueError(
                f"template is empty (built-in: {', '.join(BUILTIN)}; or give template text)"
            )
        if name_or_text.isidentifier() and name_or_text not in BUILTIN:
            raise ValueError(
                f"unknown template {excerpt(name_or_text)} (built-in: {', '.join(BUILTIN)}; "
                "or give template text)"
            )
        source = template_text(name_or_text)
        if len(source) > MAX_SOURCE:
            raise TemplateRefused(
                f"template refused: it is {len(source):,} characters long (at most {MAX_SOURCE:,})"
            )
        try:
            parsed = _ENVIRONMENT.parse(source)
            check_allowed(parsed)
            variables = frozenset(jinja2.meta.find_undeclared_variables(parsed))
            compiled = _ENVIRONMENT.from_string(instrument(parsed))
        except jinja2.TemplateSyntaxError as error:
            raise ValueError(
                f"template does not parse: {excerpt(error.message or '', quoted=False)} "
                f"(line {error.lineno})"
            ) from error
        except Refusal as error:
            raise TemplateRefused(f"template refused: {error}") from error
        except RecursionError:
            raise TemplateRefused("template refused: it nests too deeply") from None
        return cls(source, compiled=compiled, variables=variables)

    def render(self, **values: object) -> str:
        """The text, within the render budget. Raises TemplateRefused when the template
        reaches outside its variables or exceeds its budget, jinja2.UndefinedError for a
        variable or item that is not there, TemplateFailed for any other failure."""
        budget = RenderBudget.for_values(values)
        pieces = []
        try:
            for piece in self._compiled.generate(**values, **{BUDGET: budget}):
                budget.step()
                budget.write(len(piece))
                pieces.append(piece)
        except jinja2.exceptions.SecurityError as error:
            raise TemplateRefused(f"template refused: {error}") from error
        except jinja2.UndefinedError:
            raise
        except (jinja2.TemplateError, ArithmeticError, LookupError, TypeError, ValueError) as error:
            raise TemplateFailed(f"template failed: {excerpt(str(error), quoted=False)}") from error
        return "".join(pieces).rstrip(" ")
