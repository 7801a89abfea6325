"""The layering of dlgraph's modules, read from their own import statements.

Every import statement counts, at the top of a module, inside a function or under
``TYPE_CHECKING``: a cycle hidden in a function-local import is still a cycle in the design.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

PACKAGE = Path(__file__).parents[1] / "dlgraph"

LAYERS = [
    {
        "answer",
        "errors",
        "_validate",
        "_untrusted",
        "_files",
        "_entry_points",
        "_numbers",
        "report",
        "scoring",
        "templates",
    },
    {"_tasks", "backend", "data", "metrics"},
    {"engine"},
    {"nodes"},
    {"graph"},
    {"forward"},
    {"network"},
    {"evaluation"},
    {"train"},
    {"config"},
    {"runs"},  # a training run from a config, for the command and plugin commands
    {"", "plugin"},  # the package itself re-exports the public API; plugin: what plugins use
    {"cli"},  # the command uses the public API as a user would
]
"""Lower layers first: a module imports only from its own layer or the ones above it here."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imported_modules(name: str) -> set[str]:
    """The dlgraph modules that `name`'s import statements name, wherever they stand."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for statement in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(statement, ast.Import):
            found.update(alias.name for alias in statement.names)
        elif isinstance(statement, ast.ImportFrom):
            base = statement.module or ""
            if statement.level:
                anchor = package.split(".")[: len(package.split(".")) - statement.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in statement.names:
                child = f"{base}.{alias.name}"
                found.add(child if child in MODULES else base)
    return {module for module in found if module in MODULES and module != name}


def import_graph() -> nx.DiGraph:
    graph = nx.DiGraph()
    for name in MODULES:
        graph.add_node(name)
        graph.add_edges_from((name, target) for target in imported_modules(name))
    return graph


def layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    return next(index for index, names in enumerate(LAYERS) if top in names)


def test_import_graph_sees_function_local_and_type_checking_imports() -> None:
    assert "dlgraph.engine" in imported_modules("dlgraph.nodes")  # under TYPE_CHECKING
    assert "dlgraph.scoring" in imported_modules("dlgraph.nodes")


def test_dlgraph_modules_import_each_other_without_cycles() -> None:
    try:
        cycle = nx.find_cycle(import_graph())
    except nx.NetworkXNoCycle:
        return
    pytest.fail("import cycle: " + " -> ".join(edge[0] for edge in cycle))


def test_imports_point_down_the_layers_only() -> None:
    upward = [
        f"{source} -> {target}"
        for source, target in import_graph().edges
        if layer(target) > layer(source)
    ]
    assert upward == []


def test_the_engine_knows_nothing_of_networks_and_the_leaves_nothing_of_the_engine() -> None:
    graph = import_graph()
    engine = {m for m in MODULES if m.startswith("dlgraph.engine")}
    above_engine = {m for m in MODULES if layer(m) > layer("dlgraph.engine")}
    assert not {t for m in engine for t in graph.successors(m)} & above_engine
    assert imported_modules("dlgraph.scoring") == set()


def foreign_imports(name: str) -> set[str]:
    """The top-level packages outside dlgraph that `name`'s import statements name."""
    found: set[str] = set()
    for statement in ast.walk(ast.parse(MODULES[name].read_text(encoding="utf-8"))):
        if isinstance(statement, ast.Import):
            found.update(alias.name.split(".")[0] for alias in statement.names)
        elif isinstance(statement, ast.ImportFrom) and not statement.level and statement.module:
            found.add(statement.module.split(".")[0])
    return found - {"dlgraph"}


def test_opentelemetry_is_imported_by_one_module_which_only_the_tracing_switch_imports() -> None:
    assert {m for m in MODULES if "opentelemetry" in foreign_imports(m)} == {"dlgraph.engine._otel"}
    importers = {m for m in MODULES if "dlgraph.engine._otel" in imported_modules(m)}
    assert importers == {"dlgraph.engine.tracing"}


PLUGINS = sorted((PACKAGE.parent / "backends").glob("*/dlgraph_*"))
PUBLIC = {"dlgraph", "dlgraph.plugin"}
"""What a plugin may import of the core: the user's API and the plugin surface."""


def core_imports(source: str) -> set[str]:
    """The modules of the core that `source`'s import statements name (``from dlgraph import
    cli`` names the module ``dlgraph.cli``; ``from dlgraph import Grant``, the package)."""
    found: set[str] = set()
    for statement in ast.walk(ast.parse(source)):
        if isinstance(statement, ast.Import):
            found.update(alias.name for alias in statement.names)
        elif isinstance(statement, ast.ImportFrom) and not statement.level and statement.module:
            for alias in statement.names:
                child = f"{statement.module}.{alias.name}"
                found.add(child if child in MODULES else statement.module)
    return {name for name in found if name == "dlgraph" or name.startswith("dlgraph.")}


def test_the_plugin_check_reads_every_plugin_package() -> None:
    names = {path.name for path in PLUGINS}
    assert names == {"dlgraph_sim", "dlgraph_openai", "dlgraph_llamacpp", "dlgraph_ray"}
    assert all(list(path.rglob("*.py")) for path in PLUGINS)


def test_the_plugin_check_sees_a_reach_inside_the_core_however_it_is_written() -> None:
    reaching = (
        "import dlgraph.engine.limiter\n"
        "from dlgraph.backend import CallReport\n"
        "from dlgraph import cli\n"
        "def later():\n    from dlgraph._files import write_atomic\n"
        "import dlgraph as dg\nfrom dlgraph import plugin, Grant\nfrom dlgraph.plugin import Backend\n"
    )
    assert core_imports(reaching) - PUBLIC == {
        "dlgraph.engine.limiter",
        "dlgraph.backend",
        "dlgraph.cli",
        "dlgraph._files",
    }


def test_plugins_import_only_the_public_surface_of_the_core() -> None:
    reaching = sorted(
        f"{path.relative_to(PACKAGE.parent)}: {module}"
        for package in PLUGINS
        for path in package.rglob("*.py")
        for module in core_imports(path.read_text(encoding="utf-8")) - PUBLIC
    )
    assert reaching == []
