"""A backend and the engine around it, as a config's sections describe them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from dlgraph._untrusted import excerpt
from dlgraph.backend import Backend, BackendRegistry, connect
from dlgraph.engine import Budget, Engine
from dlgraph.engine.shared import open_shared_limit
from dlgraph.errors import ConfigError, DlgraphError

ENGINE_KEYS = ("rpm", "tpm", "max_concurrency", "cache", "max_calls", "max_tokens", "shared_limit")


@attrs.frozen(kw_only=True)
class EngineConfig:
    """A backend and the engine around it, as one or two sections of a config describe them."""

    path: Path
    backend: str
    backend_options: dict[str, Any]
    engine_options: dict[str, Any]
    backend_section: str
    engine_section: str

    def build(self) -> Engine:
        """The engine, built (not entered: no call is made); a bad name, option or limit is a
        ConfigError naming the section and key."""
        return self._engine(connect_backend=True)

    def check(self) -> None:
        """Every check `build` makes without joining a shared limit or starting what a
        backend's building may start (`BackendRegistry.check`): the names are installed
        plugins, the backend's options, the engine's options and limits are valid."""
        self._engine(connect_backend=False)

    def _engine(self, connect_backend: bool) -> Engine:
        options = dict(self.engine_options)
        try:
            budget = Budget(options.pop("max_calls", None), options.pop("max_tokens", None))
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{self.path}: [{self.engine_section}] {error}") from error
        try:
            if connect_backend:
                backend = connect(self.backend, **self.backend_options)
            else:
                BackendRegistry.from_entry_points().check(self.backend, **self.backend_options)
                backend = Backend()
        except (TypeError, ValueError, DlgraphError) as error:
            raise ConfigError(f"{self.path}: [{self.backend_section}] {error}") from error
        shared = options.pop("shared_limit", None)
        try:
            if shared is None:
                return Engine(backend, budget=budget, **options)
            if not isinstance(shared, str):
                raise TypeError(f"shared_limit: expected a plugin name, got {excerpt(shared)}")
            unopened = open_shared_limit(shared, backend.identity, open=False)
            engine = Engine(backend, budget=budget, shared_limit=unopened, **options)
            if connect_backend:  # every check passed before joining the shared limit
                engine.shared_limit = open_shared_limit(shared, backend.identity)
            return engine
        except (TypeError, ValueError, DlgraphError) as error:
            raise ConfigError(f"{self.path}: [{self.engine_section}] {error}") from error
