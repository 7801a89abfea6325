"""Run configuration files for the `dlgraph` command, one job per module: reading files and
settings (`files`), engines (`engines`), data (`tasks`), network presets (`presets`), and
the whole file (`run`)."""

from dlgraph.config.engines import ENGINE_KEYS, EngineConfig
from dlgraph.config.files import SECTIONS, Section, parse_setting
from dlgraph.config.run import RunConfig

__all__ = ["ENGINE_KEYS", "SECTIONS", "EngineConfig", "RunConfig", "Section", "parse_setting"]
