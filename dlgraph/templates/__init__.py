"""Forward, proposal and posterior templates (jinja2), and their loader.

A template is either the name of a file here (``reason``, ``classify``, ``propose``,
``posterior``) or template text given by the user.
"""

from __future__ import annotations

from importlib.resources import files

import attrs
import jinja2
import jinja2.meta

BUILTIN = ("reason", "classify", "propose", "posterior")

_environment = jinja2.Environment(
    undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False
)


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
        parse."""
        source = template_text(name_or_text)
        try:
            parsed = _environment.parse(source)
            compiled = _environment.from_string(source)
        except jinja2.TemplateSyntaxError as error:
            raise ValueError(f"template does not parse: {error}") from error
        variables = frozenset(jinja2.meta.find_undeclared_variables(parsed))
        return cls(source, compiled=compiled, variables=variables)

    def render(self, **values: object) -> str:
        return self._compiled.render(**values).rstrip(" ")
