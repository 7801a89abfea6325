"""The one loader of plugins: the entry-point groups dlgraph reads, by name.

Four groups: ``dlgraph.backends`` (a backend factory, `dg.connect`), ``dlgraph.shared_limits``
(a `GrantSource` factory taking the endpoint's key), ``dlgraph.commands`` (a function that
adds a command to the `dlgraph` command line) and ``dlgraph.metrics`` (a metric function,
named in configs by the entry's name). Reading a group imports no plugin; an entry is
loaded (its module imported) only when asked for by name, or, for commands, when the command
line is built.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

import attrs

from dlgraph._untrusted import excerpt
from dlgraph.errors import UnknownBackend


@attrs.frozen
class PluginGroup:
    """One entry-point group: `group` as plugins declare it, `kind` as errors name an entry."""

    group: str
    kind: str

    def entries(self) -> dict[str, importlib.metadata.EntryPoint]:
        """The installed entries by name (none is loaded)."""
        return {entry.name: entry for entry in importlib.metadata.entry_points(group=self.group)}

    def entry(self, name: str) -> importlib.metadata.EntryPoint:
        """The installed entry called `name`; UnknownBackend lists the installed names."""
        found = self.entries()
        if name not in found:
            known = ", ".join(sorted(found)) or "none installed"
            raise UnknownBackend(f"unknown {self.kind} {excerpt(name)} (known: {known})")
        return found[name]

    def load(self, name: str) -> Any:
        """What the entry called `name` points at (a factory, a function)."""
        return self.entry(name).load()

    def load_all(self) -> list[Any]:
        """What every installed entry points at, in name order."""
        return [entry.load() for _, entry in sorted(self.entries().items())]


BACKENDS = PluginGroup("dlgraph.backends", "backend")
SHARED_LIMITS = PluginGroup("dlgraph.shared_limits", "shared limit")
COMMANDS = PluginGroup("dlgraph.commands", "command")
METRICS = PluginGroup("dlgraph.metrics", "metric")
