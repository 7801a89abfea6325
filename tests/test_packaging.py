"""Every distribution declares what it imports: installed alone, as the README says, each one
imports. Read from the source (every import statement, function-local ones included), so that a
package that only happens to be installed beside it (as trio brings sniffio to the test
environment) cannot hide an undeclared import.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
DISTRIBUTIONS = {
    "dlgraph": ROOT / "dlgraph",
    "dlgraph-sim": ROOT / "backends/sim/dlgraph_sim",
    "dlgraph-openai": ROOT / "backends/openai/dlgraph_openai",
    "dlgraph-llamacpp": ROOT / "backends/llamacpp/dlgraph_llamacpp",
    "dlgraph-ray": ROOT / "backends/ray/dlgraph_ray",
}


OPTIONAL_MODULES = {"dlgraph_sim/server.py": "server", "dlgraph/engine/_otel.py": "otel"}
"""Modules only an extra makes usable: their imports may come from that extra."""


def normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(pyproject: Path) -> dict[str, set[str]]:
    """Distribution names by extra; "" holds `dependencies`."""
    project = tomllib.loads(pyproject.read_text())["project"]

    def names(requirements: list[str]) -> set[str]:
        return {normalised(re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0]) for r in requirements}

    extras = project.get("optional-dependencies", {})
    return {"": names(project.get("dependencies", []))} | {k: names(v) for k, v in extras.items()}


def imports(package: Path) -> Iterator[tuple[str, str, bool]]:
    """(module's top-level name, where, at module level) for every absolute import, skipping
    `if TYPE_CHECKING:` blocks, which never run."""
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        yield from _walk(tree, path.relative_to(package.parent), top=True)


def _walk(node: ast.AST, where: Path, top: bool) -> Iterator[tuple[str, str, bool]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
            continue
        if isinstance(child, ast.Import):
            for alias in child.names:
                yield alias.name.split(".")[0], f"{where}:{child.lineno}", top
        elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
            yield child.module.split(".")[0], f"{where}:{child.lineno}", top
        inner = top and not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Try)
        yield from _walk(child, where, inner)


def undeclared(name: str, package: Path) -> list[str]:
    """Imports of `package` (distribution `name`) that its pyproject.toml does not declare:
    at module level they must be in `dependencies` (or, in a module of `OPTIONAL_MODULES`, its
    extra); inside a function or a `try` (loaded on demand) in `dependencies` or any extra."""
    extras = declared(package.parent / "pyproject.toml")
    anywhere = set().union(*extras.values())
    owners = importlib.metadata.packages_distributions() | {
        folder.name: [distribution] for distribution, folder in DISTRIBUTIONS.items()
    }  # editable installs of this project are not listed by their top-level names
    problems = []
    for module, where, top in imports(package):
        if module in sys.stdlib_module_names or module == package.name:
            continue
        found = {normalised(d) for d in owners.get(module, [])}
        extra = OPTIONAL_MODULES.get(where.rpartition(":")[0], "")
        allowed = extras[""] | extras.get(extra, set()) if top else anywhere
        if not found:
            problems.append(f"{where}: {module} (installed by no distribution here)")
        elif not found & allowed:
            needed = f"dependencies{f' or [{extra}]' if extra else ''}" if top else "any extra"
            problems.append(f"{where}: {module} (from {', '.join(sorted(found))}; not in {needed})")
    return problems


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_each_distribution_declares_every_package_it_imports(name: str) -> None:
    assert undeclared(name, DISTRIBUTIONS[name]) == []


def test_an_undeclared_import_is_found_even_when_another_package_brings_it(tmp_path: Path) -> None:
    package = tmp_path / "dlgraph_fake"
    package.mkdir()
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "dlgraph-fake"\ndependencies = ["dlgraph", "anyio"]\n'
        '[project.optional-dependencies]\nplot = ["matplotlib"]\n'
    )
    (package / "__init__.py").write_text(
        "import anyio\nimport sniffio\nimport matplotlib\n"
        "def plot():\n    import matplotlib.pyplot\n"
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import numpy\n"
    )
    assert importlib.metadata.packages_distributions().get("sniffio")  # installed, by trio
    problems = undeclared("dlgraph-fake", package)
    assert [p.split(": ", 1)[1].split(" ")[0] for p in problems] == ["sniffio", "matplotlib"]
    assert problems[0].startswith("dlgraph_fake/__init__.py:2: sniffio")
