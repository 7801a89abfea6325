"""The mutation script's configuration stays true to the code: every module of the core is in
scope with test files that exist, and every explained survivor still names a mutant, with a
reason. (Running the mutants is `python scripts/mutate.py`, minutes, not part of the suite.)"""

from __future__ import annotations

import gc
import importlib.util
import sys
from pathlib import Path
from types import FunctionType, ModuleType

import pytest

ROOT = Path(__file__).parents[1]
CORE = ["dlgraph/engine", "dlgraph/train", "dlgraph/templates"]
CORE_FILES = ["dlgraph/graph.py", "dlgraph/nodes.py", "dlgraph/scoring.py"]


@pytest.fixture(scope="module")
def mutate() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mutate", ROOT / "scripts" / "mutate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["mutate"] = module
    spec.loader.exec_module(module)
    return module


def test_every_core_module_is_in_scope_with_test_files_that_exist(mutate) -> None:
    scope = mutate.Config.read(mutate.CONFIG).scope()
    core = {ROOT / path for path in CORE_FILES} | {
        path for folder in CORE for path in (ROOT / folder).rglob("*.py")
    }
    assert core <= set(scope)
    for module, tests in scope.items():
        assert tests, module
        assert all((ROOT / test).is_file() for test in tests), module


def test_every_explained_survivor_names_a_mutant_of_the_code_and_gives_a_reason(mutate) -> None:
    config = mutate.Config.read(mutate.CONFIG)
    keys = {m.key for module in config.scope() for m in mutate.mutants_of(module, config)}
    explained = mutate.read_explained(mutate.SURVIVORS)
    for key, entry in explained.items():
        assert key in keys, f"no such mutant any more: {key}"
        assert entry.kind in ("equivalent", "accepted") and entry.reason.strip(), key


def test_a_mutant_changes_the_code_it_names(mutate) -> None:
    config = mutate.Config.read(mutate.CONFIG)
    path = ROOT / "dlgraph" / "scoring.py"
    mutants = mutate.mutants_of(path, config)
    original = compile(path.read_text(), str(path), "exec", dont_inherit=True)
    assert len({m.key for m in mutants}) == len(mutants) > 10
    for mutant in mutants:
        assert mutant.before != mutant.after, mutant.key
        assert mutate.mutated_code(mutant, config) != original, mutant.key


def test_a_mutant_inside_a_closure_reaches_the_closures_its_module_already_made(mutate) -> None:
    """The filters are closures `_text_filter` made at import: a mutant of their body must
    run in them, not only in closures made later (it once survived unseen)."""
    from dlgraph.templates import _budget

    config = mutate.Config.read(mutate.CONFIG)
    path = ROOT / "dlgraph" / "templates" / "_budget.py"
    (mutant,) = [
        m
        for m in mutate.mutants_of(path, config)
        if m.qualname == "_text_filter.apply" and m.before == "budget.step()"
    ]
    saved = {
        function: function.__code__
        for function in gc.get_objects()
        if isinstance(function, FunctionType) and function.__code__.co_filename == str(path)
    }
    try:
        assert mutate._patch_function(mutant, mutate.mutated_code(mutant, config))
        budget = _budget.RenderBudget(10, 10)
        assert _budget.FILTERS["upper"]({_budget.BUDGET: budget}, "ab") == "AB"
        assert budget.steps == 0  # the step the mutant deleted
    finally:
        for function, code in saved.items():
            function.__code__ = code
    budget = _budget.RenderBudget(10, 10)
    _budget.FILTERS["upper"]({_budget.BUDGET: budget}, "ab")
    assert budget.steps == 1
