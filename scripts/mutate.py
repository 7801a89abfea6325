"""Mutation testing of dlgraph's core: how many small, plausible bugs does the test suite catch?

    python scripts/mutate.py                           # every module in scope
    python scripts/mutate.py dlgraph/engine/retry.py   # some modules (paths or globs)
    python scripts/mutate.py --list                    # the mutants, without running them

What is in scope, and which test files cover each module, is configured in one place,
`scripts/mutation.toml` (globs, so a module that is split or renamed stays in scope). Each
mutant is one small change to one module's syntax tree (a comparison or an operator swapped,
a condition negated, a constant moved by one, a call or a `raise` deleted, ``min`` for
``max``, ``f(x)`` for ``x``...). A mutant is *killed* when a test fails with it in place (or
the package no longer imports, or the tests crash their process), and *survives* when every
test still passes: a bug of that shape would ship green.

How it stays fast on two cores: one traced run of the mapped test files records which tests
execute each line (coverage.py contexts); a mutant then runs only the tests that execute the
line it changed, fastest first, stopping at the first failure, and no more of them than fit
in `max_test_seconds` (a survivor says when slower tests were left out). The tests are
collected once, in this process; each mutant runs in a child forked from it, where the
mutated function's code object is swapped into the live function (a change in a class body
or at module level is imported afresh through an import hook instead), so the work tree is
never written. A mutant whose line no test executes survives without a run.

Survivors are explained in `scripts/mutation_survivors.toml`, each with a one-line reason:
*equivalent* ones (no test could tell them from the original) are left out of the score,
*accepted* ones (a real change that no test is worth writing for) count against it; both are
printed with their reason and not run again (``--check-explained`` runs them too). The score
is killed / (mutants - equivalent). Exit status 1 when it is below `fail_under`, or when a
mutant survives unexplained.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import fnmatch
import gc
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import math
import os
import signal
import sys
import tempfile
import time
import tomllib
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import CodeType, FunctionType, ModuleType
from typing import Any

import attrs
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # measure the checkout this script is in, whatever is installed
CONFIG = ROOT / "scripts" / "mutation.toml"
SURVIVORS = ROOT / "scripts" / "mutation_survivors.toml"
TIMEOUT_S, TIMEOUT_FACTOR = 3.0, 2.0
"""A mutant's tests get this long, plus this many times their traced duration (coverage's
tracing already slows them), before the mutant counts as killed by a timeout: a hang or a
slowdown is a change a user would see."""
IMPORT_CONTEXT = "import"
"""The coverage context of lines executed while modules are imported, outside any test."""
IN_PROCESS = "DLGRAPH_LIMITED_IN_PROCESS"
"""Set for the tests: `tests/limited.py` then runs the bad-input corpus in the test's own
process (under a raised memory cap) instead of a freshly started child, which would import
the unmutated code and hide what it executes from the traced run."""


# -- configuration -------------------------------------------------------------------------------


@attrs.frozen
class Config:
    scopes: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]
    """(globs of module paths, globs of the test files that cover them)"""
    fail_under: float
    skip_keywords: frozenset[str]
    """Keyword arguments whose value is never mutated (see the configuration file)."""
    skip_calls: frozenset[str]
    """Calls (``name`` or ``object.name``, globs) never deleted nor mutated inside."""
    keyword: str
    """A pytest ``-k`` expression: the tests of the listed files that may run at all."""
    max_test_s: float
    """A mutant runs the fastest tests of its line that fit in this much traced test time."""

    @classmethod
    def read(cls, path: Path) -> Config:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        skip = data.get("skip", {})
        return cls(
            scopes=tuple((tuple(s["modules"]), tuple(s["tests"])) for s in data["scope"]),
            fail_under=float(data.get("fail_under", 90.0)),
            skip_keywords=frozenset(skip.get("keywords", ())),
            skip_calls=frozenset(skip.get("calls", ())),
            keyword=str(data.get("keyword", "")),
            max_test_s=float(data.get("max_test_seconds", math.inf)),
        )

    def scope(self) -> dict[Path, tuple[str, ...]]:
        """Every module in scope with its test files (relative paths), sorted."""
        scope: dict[Path, set[str]] = {}
        for globs, tests in self.scopes:
            files = [path for test in tests for path in sorted(ROOT.glob(test))]
            for module in (path for glob in globs for path in sorted(ROOT.glob(glob))):
                scope.setdefault(module, set()).update(str(f.relative_to(ROOT)) for f in files)
        return {module: tuple(sorted(tests)) for module, tests in sorted(scope.items())}


@attrs.frozen
class Explained:
    reason: str
    kind: str
    """"equivalent" (no test could tell it from the original: left out of the score) or
    "accepted" (a real change, counted as a survivor)."""


def read_explained(path: Path) -> dict[str, Explained]:
    if not path.exists():
        return {}
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    return {
        entry["mutant"]: Explained(entry["reason"], entry.get("kind", "equivalent"))
        for entry in data.get("survivor", [])
    }


# -- mutants ---------------------------------------------------------------------------------------

_COMPARE_SWAPS: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}
_BINARY_SWAPS: dict[type[ast.operator], type[ast.operator]] = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Div,
    ast.Pow: ast.Mult,
    ast.Mod: ast.FloorDiv,
}
_CALL_SWAPS = {"min": "max", "max": "min", "any": "all", "all": "any"}
_CONVERSIONS = frozenset(
    {"tuple", "list", "dict", "set", "frozenset", "str", "int", "float", "bool", "len", "repr"}
    | {"type", "id", "iter", "next", "isinstance", "hasattr", "getattr", "range", "enumerate"}
)
"""Calls not replaced by their argument: a conversion or a query, whose removal only breaks
types (caught by mypy, or by the first test that runs the line)."""


@attrs.frozen
class Point:
    """Where a mutation goes: replace `parent.field[index]` (or `parent.field`) by `new`."""

    parent: ast.AST
    field: str
    index: int | None
    new: ast.AST
    node: ast.AST
    statement: ast.stmt
    qualname: str
    function: str | None
    """The outermost function around the mutation (its code object holds the change), or
    None for a class body or the module's own code, which run once, at import."""
    operator: str

    def apply(self) -> Callable[[], None]:
        """Put the mutation in the tree; returns what undoes it."""
        ast.copy_location(self.new, self.node)
        ast.fix_missing_locations(self.new)
        if self.index is None:
            setattr(self.parent, self.field, self.new)
            return lambda: setattr(self.parent, self.field, self.node)
        items = getattr(self.parent, self.field)
        items[self.index] = self.new

        def undo() -> None:
            items[self.index] = self.node

        return undo


def _header(statement: ast.stmt) -> str:
    """A statement as one line; a compound statement by its header."""
    match statement:
        case ast.If(test=test) | ast.While(test=test):
            keyword = "if" if isinstance(statement, ast.If) else "while"
            return f"{keyword} {ast.unparse(test)}:"
        case ast.For(target=target, iter=iterable) | ast.AsyncFor(target=target, iter=iterable):
            return f"for {ast.unparse(target)} in {ast.unparse(iterable)}:"
        case ast.With(items=items) | ast.AsyncWith(items=items):
            return f"with {', '.join(ast.unparse(item) for item in items)}:"
        case ast.FunctionDef() | ast.AsyncFunctionDef():
            return f"def {statement.name}({ast.unparse(statement.args)}):"
        case ast.ClassDef():
            return f"class {statement.name}:"
        case ast.Try():
            return "try:"
    return ast.unparse(statement)


def _is_docstring(statement: ast.stmt) -> bool:
    return isinstance(statement, ast.Expr) and (
        isinstance(statement.value, ast.Constant) and isinstance(statement.value.value, str)
    )


def _call_name(call: ast.Call) -> str:
    try:
        return ast.unparse(call.func)
    except Exception:  # an exotic callee: no name to match
        return ""


class _Finder:
    """Every mutation point of a module, in source order (the same order on every parse)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.points: list[Point] = []
        self._scope: list[tuple[str, bool]] = []
        """Enclosing classes and functions: (name, is a function)."""
        self._statement: ast.stmt | None = None

    def find(self, tree: ast.Module) -> list[Point]:
        self._children(tree)
        return self.points

    def _add(
        self, parent: ast.AST, field: str, index: int | None, new: ast.AST, operator: str
    ) -> None:
        old = getattr(parent, field) if index is None else getattr(parent, field)[index]
        assert self._statement is not None
        names = [name for name, _ in self._scope]
        qualname = ".".join(names) or "<module>"
        outer = next((i for i, (_, is_function) in enumerate(self._scope) if is_function), None)
        function = None if outer is None else ".".join(names[: outer + 1])
        self.points.append(
            Point(parent, field, index, new, old, self._statement, qualname, function, operator)
        )

    def _children(self, node: ast.AST) -> None:
        for field, value in ast.iter_fields(node):
            if field in ("annotation", "returns", "type_comment", "decorator_list"):
                continue
            if isinstance(node, ast.arguments) and field in ("defaults", "kw_defaults"):
                continue  # a parameter's default is a setting, as `default=` is
            if isinstance(node, ast.AnnAssign) and field == "value" and self._in_class():
                if not isinstance(value, ast.Call):
                    continue  # so is a record field's (`busy_timeout_s: float = 5.0`)
            if isinstance(value, list):
                for index, item in enumerate(value):
                    if isinstance(item, ast.AST):
                        self._visit(item, node, field, index)
            elif isinstance(value, ast.AST):
                self._visit(value, node, field, None)

    def _in_class(self) -> bool:
        return bool(self._scope) and not self._scope[-1][1]

    def _skipped_call(self, call: ast.Call) -> bool:
        name = _call_name(call)
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.config.skip_calls)

    def _visit(self, node: ast.AST, parent: ast.AST, field: str, index: int | None) -> None:
        if isinstance(node, ast.stmt):
            self._visit_statement(node, parent, field, index)
            return
        if isinstance(node, ast.JoinedStr):
            return  # f-strings are messages
        if isinstance(node, ast.keyword) and node.arg in self.config.skip_keywords:
            return
        if isinstance(node, ast.Call) and self._skipped_call(node):
            return
        self._mutate_expression(node, parent, field, index)
        self._children(node)

    def _visit_statement(
        self, node: ast.stmt, parent: ast.AST, field: str, index: int | None
    ) -> None:
        if isinstance(node, ast.Assert | ast.Import | ast.ImportFrom) or _is_docstring(node):
            return
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            return
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            if self._skipped_call(node.value):
                return
        outer = self._statement
        self._statement = node
        self._mutate_statement(node, parent, field, index)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            self._scope.append((node.name, not isinstance(node, ast.ClassDef)))
            self._children(node)
            self._scope.pop()
        else:
            self._children(node)
        self._statement = outer

    def _mutate_statement(
        self, node: ast.stmt, parent: ast.AST, field: str, index: int | None
    ) -> None:
        if index is None:
            return
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call | ast.Await):
            self._add(parent, field, index, ast.Pass(), "delete call")
        elif isinstance(node, ast.Raise):
            self._add(parent, field, index, ast.Pass(), "delete raise")
        elif isinstance(node, ast.Break):
            self._add(parent, field, index, ast.Continue(), "break -> continue")
        elif isinstance(node, ast.Continue):
            self._add(parent, field, index, ast.Break(), "continue -> break")
        elif isinstance(node, ast.AugAssign) and type(node.op) in _BINARY_SWAPS:
            new_op = _BINARY_SWAPS[type(node.op)]()
            new = ast.AugAssign(target=node.target, op=new_op, value=node.value)
            self._add(parent, field, index, new, "operator")
        if isinstance(node, ast.If | ast.While) and not isinstance(
            node.test, ast.Compare | ast.BoolOp | ast.UnaryOp
        ):
            negated = ast.UnaryOp(op=ast.Not(), operand=node.test)
            self._add(node, "test", None, negated, "negate condition")

    def _mutate_expression(
        self, node: ast.AST, parent: ast.AST, field: str, index: int | None
    ) -> None:
        if isinstance(node, ast.Compare):
            for position, op in enumerate(node.ops):
                if type(op) in _COMPARE_SWAPS:
                    ops = list(node.ops)
                    ops[position] = _COMPARE_SWAPS[type(op)]()
                    new = ast.Compare(left=node.left, ops=ops, comparators=node.comparators)
                    self._add(parent, field, index, new, "comparison")
        elif isinstance(node, ast.BinOp) and type(node.op) in _BINARY_SWAPS:
            new_op = _BINARY_SWAPS[type(node.op)]()
            self._add(parent, field, index, ast.BinOp(node.left, new_op, node.right), "operator")
        elif isinstance(node, ast.BoolOp):
            other = ast.Or() if isinstance(node.op, ast.And) else ast.And()
            self._add(parent, field, index, ast.BoolOp(other, node.values), "and/or")
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not | ast.USub):
            self._add(parent, field, index, node.operand, "drop unary")
        elif isinstance(node, ast.Constant) and not isinstance(node.value, str | bytes):
            value = node.value
            if isinstance(value, bool):
                self._add(parent, field, index, ast.Constant(not value), "constant")
            elif isinstance(value, int | float) and field != "slice":
                self._add(parent, field, index, ast.Constant(value + 1), "constant")
            elif isinstance(value, int) and field == "slice":
                self._add(parent, field, index, ast.Constant(value + 1), "index")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            swapped = _CALL_SWAPS.get(node.func.id)
            if swapped is not None:
                call = ast.Call(ast.Name(swapped, ast.Load()), node.args, node.keywords)
                self._add(parent, field, index, call, "call")
            elif (
                node.func.id not in _CONVERSIONS
                and not node.func.id[:1].isupper()  # a constructor: an error, a record
                and len(node.args) == 1
                and not isinstance(node.args[0], ast.Starred)
                and not node.keywords
            ):
                self._add(parent, field, index, node.args[0], "drop call")


@attrs.frozen
class Mutant:
    path: Path
    number: int
    """Its place among the module's mutation points."""
    line: int
    lines: tuple[int, ...]
    """The lines whose tests can see it: its own and its statement's first."""
    qualname: str
    function: str | None
    operator: str
    before: str
    after: str
    key: str
    """Stable across edits elsewhere in the module: path, function, statement before and after."""

    @property
    def relative(self) -> str:
        return str(self.path.relative_to(ROOT))

    def describe(self) -> str:
        return f"{self.relative}:{self.line} {self.qualname} [{self.operator}]\n    - {self.before}\n    + {self.after}"


def mutants_of(path: Path, config: Config) -> list[Mutant]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    points = _Finder(config).find(tree)
    mutants: list[Mutant] = []
    seen: dict[str, int] = {}
    relative = str(path.relative_to(ROOT))
    for number, point in enumerate(points):
        before = _header(point.statement)
        undo = point.apply()
        try:
            replaced = point.node is point.statement and isinstance(point.new, ast.stmt)
            after = _header(point.new if replaced else point.statement)  # type: ignore[arg-type]
        finally:
            undo()
        key = f"{relative} | {point.qualname} | {before} => {after}"
        seen[key] = seen.get(key, 0) + 1
        if seen[key] > 1:
            key += f" #{seen[key]}"
        node = point.node
        start = getattr(node, "lineno", point.statement.lineno)
        end = getattr(node, "end_lineno", None) or start
        lines = tuple(sorted({point.statement.lineno, *range(start, end + 1)}))
        mutants.append(
            Mutant(
                path,
                number,
                start,
                lines,
                point.qualname,
                point.function,
                point.operator,
                before,
                after,
                key,
            )
        )
    return mutants


def mutated_code(mutant: Mutant, config: Config) -> CodeType:
    tree = ast.parse(mutant.path.read_text(encoding="utf-8"), str(mutant.path))
    point = _Finder(config).find(tree)[mutant.number]
    point.apply()
    return compile(tree, str(mutant.path), "exec", dont_inherit=True)


# -- running tests in forked processes --------------------------------------------------------


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


class _MutantLoader(importlib.machinery.SourceFileLoader):
    def __init__(self, fullname: str, path: str, code: CodeType) -> None:
        super().__init__(fullname, path)
        self.mutant_code = code

    def get_code(self, fullname: str) -> CodeType:
        return self.mutant_code


class _MutantFinder(importlib.abc.MetaPathFinder):
    """Serves one module from a mutated code object, with the original file as its origin
    (so that package resources next to it are still found)."""

    def __init__(self, path: Path, code: CodeType) -> None:
        self.name = module_name(path)
        self.path = path
        self.code = code

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name:
            return None
        package = [str(self.path.parent)] if self.path.name == "__init__.py" else None
        loader = _MutantLoader(fullname, str(self.path), self.code)
        return importlib.util.spec_from_file_location(
            fullname, self.path, loader=loader, submodule_search_locations=package
        )


def _is_ours(name: str, module: ModuleType) -> bool:
    """Whether a module belongs to this repository: the package, its plugins, the tests."""
    if name == "__main__" or module is sys.modules.get(__name__):
        return False
    file = getattr(module, "__file__", None) or ""
    environment = str(Path(sys.prefix).resolve()) + os.sep
    in_checkout = file.startswith(str(ROOT) + os.sep) and not file.startswith(environment)
    return in_checkout or name.partition(".")[0].startswith("dlgraph") or name == "conftest"


def _forget_project_modules() -> None:
    """Drop every module of this repository, so that the next import reads them again
    (a plugin that imported the package goes too); third-party modules stay loaded."""
    for name, module in list(sys.modules.items()):
        if _is_ours(name, module):
            del sys.modules[name]


def _fork(job: Callable[[], int], log: Path) -> int:
    """Run `job` in a child process (its own process group, output to `log`); its pid."""
    pid = os.fork()
    if pid:
        return pid
    code = 99
    try:
        os.setpgid(0, 0)
        descriptor = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(descriptor, 1)
        os.dup2(descriptor, 2)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        code = job()
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _stop(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _pytest_main(arguments: list[str], plugins: Sequence[object] = ()) -> int:
    os.chdir(ROOT)
    return int(pytest.main(["-q", "-p", "no:randomly", *arguments], plugins=list(plugins)))


class _Recorder:
    """A pytest plugin: each test's coverage context, duration and outcome."""

    def __init__(self, coverage: Any) -> None:
        self.coverage = coverage
        self.durations: dict[str, float] = {}
        self.failed: list[str] = []

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: Any, nextitem: Any) -> None:
        self.coverage.switch_context(item.nodeid)

    def pytest_runtest_logreport(self, report: Any) -> None:
        self.durations[report.nodeid] = self.durations.get(report.nodeid, 0.0) + report.duration
        if report.failed:
            self.failed.append(report.nodeid)


def _trace_job(modules: list[Path], tests: list[str], out: Path) -> Callable[[], int]:
    def job() -> int:
        import coverage

        _forget_project_modules()
        recorder = _Recorder(None)
        traced = coverage.Coverage(
            data_file=None, include=[str(m) for m in modules], config_file=False
        )
        recorder.coverage = traced
        traced.start()
        traced.switch_context(IMPORT_CONTEXT)
        try:
            code = _pytest_main(tests, [recorder])
        finally:
            traced.stop()
        data = traced.get_data()
        lines = {
            str(module): {
                str(line): sorted(set(contexts))
                for line, contexts in data.contexts_by_lineno(str(module)).items()
            }
            for module in modules
        }
        report = {"exit": code, "failed": recorder.failed, "durations": recorder.durations}
        out.write_text(json.dumps(report | {"lines": lines}))
        return 0

    return job


def _find_code(code: CodeType, qualname: str) -> CodeType | None:
    """The code object of function `qualname` among `code`'s constants, at any depth."""
    for constant in code.co_consts:
        if isinstance(constant, CodeType):
            if constant.co_qualname == qualname:
                return constant
            found = _find_code(constant, qualname)
            if found is not None:
                return found
    return None


def _codes(code: CodeType) -> Iterator[CodeType]:
    """`code` and every function's code nested in it, at any depth."""
    yield code
    for constant in code.co_consts:
        if isinstance(constant, CodeType):
            yield from _codes(constant)


def _patch_function(mutant: Mutant, code: CodeType) -> bool:
    """Swap the mutated code into the live function objects of `mutant.function`, and of the
    functions nested in it that already exist (a closure a module built at import, such as a
    filter made by a factory, holds the code it was made with, not its maker's): they keep
    their identity, so every class and test that holds them runs the mutant. False when that
    cannot be done (a change of free variables), and a fresh import is needed."""
    assert mutant.function is not None
    outer = _find_code(code, mutant.function)
    if outer is None:
        return False
    replacements = {nested.co_qualname: nested for nested in _codes(outer)}
    patched = []
    for candidate in gc.get_objects():
        if isinstance(candidate, FunctionType):
            new = replacements.get(candidate.__code__.co_qualname)
            if new is not None and candidate.__code__.co_filename == new.co_filename:
                try:
                    candidate.__code__ = new
                except ValueError:
                    return False
                patched.append(candidate)
    return bool(patched)


def _killer_file(work: Path, pid: int) -> Path:
    """Where the child `pid` names the test that killed its mutant."""
    return work / f"killer-{pid}"


def _name_killer(work: Path, nodeid: str) -> None:
    _killer_file(work, os.getpid()).write_text(nodeid, encoding="utf-8")


class _FirstFailure:
    """A pytest plugin: names the first test that fails (the mutant's killer), or the test
    module that no longer imports with the mutant in place (a failure too: pytest then calls
    the run a usage error, since the tests asked for were not found)."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.named = False

    def pytest_runtest_logreport(self, report: Any) -> None:
        self._failed(report)

    def pytest_collectreport(self, report: Any) -> None:
        self._failed(report)

    def _failed(self, report: Any) -> None:
        if report.failed and not self.named:
            self.named = True
            _name_killer(self.work, report.nodeid)


def _run_items(items: Sequence[pytest.Item], work: Path) -> int:
    """Run collected tests in order, like ``pytest -x``: 1 at the first failure, else 0."""
    from _pytest.runner import runtestprotocol

    for position, item in enumerate(items):
        following = items[position + 1] if position + 1 < len(items) else None
        reports = runtestprotocol(item, log=False, nextitem=following)
        failed = [report for report in reports if report.failed]
        if failed:
            _name_killer(work, item.nodeid)
            print(f"FAILED {item.nodeid}\n{failed[0].longreprtext[-3000:]}")
            return 1
        print(f"passed {item.nodeid}")
    return 0


def _mutant_job(
    mutant: Mutant,
    config: Config,
    tests: list[str],
    collected: dict[str, pytest.Item],
    work: Path,
) -> Callable[[], int]:
    """In the child: a mutant inside a function is patched into the tests already collected
    by the parent; one in a class body or at module level is imported afresh, and its tests
    collected again. The child names the test that failed first in its killer file."""

    def job() -> int:
        code = mutated_code(mutant, config)
        items = [collected[test] for test in tests if test in collected]
        if mutant.function is not None and len(items) == len(tests):
            if _patch_function(mutant, code):
                return _run_items(items, work)
        _forget_project_modules()
        finder = _MutantFinder(mutant.path, code)
        sys.meta_path.insert(0, finder)
        try:
            importlib.import_module(finder.name)
        except Exception:  # the package no longer imports: every user sees that at once
            traceback.print_exc()
            _name_killer(work, f"import {finder.name}")
            return 1
        first_failure = _FirstFailure(work)
        exit_code = _pytest_main(["-x", "--no-header", *tests], [first_failure])
        return 1 if first_failure.named else exit_code

    return job


class _Server:
    """A pytest plugin that, instead of running the session's tests, runs every mutant in a
    child process forked from the collected session."""

    def __init__(
        self,
        runs: list[tuple[Mutant, list[str]]],
        durations: dict[str, float],
        config: Config,
        jobs: int,
        work: Path,
    ) -> None:
        self.runs, self.durations, self.config = runs, durations, config
        self.jobs, self.work = jobs, work
        self.outcomes: list[Outcome] = []

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool:
        collected = {item.nodeid: item for item in session.items}

        def job(mutant: Mutant, tests: list[str]) -> Callable[[], int]:
            return _mutant_job(mutant, self.config, tests, collected, self.work)

        results = run_mutants(self.runs, self.durations, job, self.jobs, self.work)
        for done, outcome in enumerate(results, 1):
            self.outcomes.append(outcome)
            mark = {"killed": ".", "timeout": "T", "survived": "S", "error": "E"}[outcome.status]
            end = "" if done % 80 else f" {done}/{len(self.runs)}\n"
            print(mark, end=end, flush=True)
        print(flush=True)
        return True


# -- the test map --------------------------------------------------------------------------------


@attrs.frozen
class TestMap:
    """Which tests execute which line, and how long each test takes."""

    lines: dict[str, dict[int, frozenset[str]]]
    durations: dict[str, float]

    def tests_for(self, mutant: Mutant, test_files: Sequence[str]) -> list[str]:
        """The tests that execute the mutant's lines, fastest first. A line run only while
        modules are imported (a class body: a field's validator) may matter to any test of
        the module's files, even one that runs none of its lines (constructing a record runs
        attrs' code and the validators')."""
        by_line = self.lines.get(str(mutant.path), {})
        seen: set[str] = set()
        for line in mutant.lines:
            seen |= by_line.get(line, frozenset())
        files = tuple(test_files)
        tests = {t for t in seen if t in self.durations}
        if not tests and IMPORT_CONTEXT in seen:
            tests = set(self.durations)
        tests = {t for t in tests if t.split("::")[0] in files}
        return sorted(tests, key=lambda t: (self.durations[t], t))

    def within(self, tests: Sequence[str], seconds: float) -> list[str]:
        """The fastest of `tests` (given fastest first) that fit in `seconds` of traced test
        time, and at least one."""
        chosen: list[str] = []
        total = 0.0
        for test in tests:
            total += self.durations[test]
            if chosen and total > seconds:
                break
            chosen.append(test)
        return chosen


def trace(modules: dict[Path, tuple[str, ...]], config: Config, work: Path) -> TestMap:
    files = sorted({test for tests in modules.values() for test in tests})
    if config.keyword:
        files += ["-k", config.keyword]
    out, log = work / "trace.json", work / "trace.log"
    started = time.monotonic()
    count = len({test for tests in modules.values() for test in tests})
    print(f"tracing {count} test files to map tests to lines ...", flush=True)
    pid = _fork(_trace_job(list(modules), files, out), log)
    _, status = os.waitpid(pid, 0)
    if not out.exists():
        tail = log.read_text(errors="replace")[-3000:]
        sys.exit(f"the traced test run crashed (status {status}):\n{tail}")
    report = json.loads(out.read_text())
    failed = set(report["failed"])
    if report["exit"] not in (0, 1) or len(failed) > len(report["durations"]) // 10:
        tail = log.read_text(errors="replace")[-3000:]
        sys.exit(f"the tests fail without any mutant (exit {report['exit']}):\n{tail}")
    if failed:  # a test that fails anyway cannot kill a mutant: it would only seem to
        print(f"  left out, failing without a mutant: {', '.join(sorted(failed))}", flush=True)
    lines = {
        module: {int(line): frozenset(ctx) - failed for line, ctx in by_line.items()}
        for module, by_line in report["lines"].items()
    }
    total = sum(report["durations"].values())
    print(
        f"  {len(report['durations'])} tests, {total:.0f} s of test time, "
        f"traced in {time.monotonic() - started:.0f} s",
        flush=True,
    )
    return TestMap(lines, report["durations"])


# -- running mutants ---------------------------------------------------------------------------


@attrs.frozen
class Outcome:
    mutant: Mutant
    status: str
    """killed, timeout, survived, uncovered (survived: no test runs its line), error, explained"""
    tests: int
    seconds: float
    covering: int = 0
    """How many tests execute its line (more than `tests` when the time cap left some out)."""
    detail: str = ""
    """For an error: the end of the child's output, which says why its tests did not run."""


@attrs.define
class Killers:
    """Which tests killed the mutants run so far, to run them first for the next mutants of
    the same function, then of the same module: neighbouring mutants tend to die of the same
    test. Only the order of a mutant's tests changes, never which tests it gets, so a verdict
    is the same; a killed mutant just stops sooner."""

    by_place: dict[tuple[str, str], list[str]] = attrs.field(factory=dict)
    by_module: dict[str, list[str]] = attrs.field(factory=dict)

    def record(self, mutant: Mutant, test: str) -> None:
        for tests in (
            self.by_place.setdefault((mutant.relative, mutant.qualname), []),
            self.by_module.setdefault(mutant.relative, []),
        ):
            if test in tests:
                tests.remove(test)
            tests.insert(0, test)

    def order(self, mutant: Mutant, tests: list[str]) -> list[str]:
        """`tests` with the killers of the same function first, then of the same module (the
        latest first), then the rest in their given order."""
        preferred = [
            *self.by_place.get((mutant.relative, mutant.qualname), []),
            *self.by_module.get(mutant.relative, []),
        ]
        position: dict[str, int] = {}
        for index, test in enumerate(preferred):
            position.setdefault(test, index)
        return sorted(tests, key=lambda test: position.get(test, len(preferred)))


def run_mutants(
    mutants: list[tuple[Mutant, list[str]]],
    durations: dict[str, float],
    job: Callable[[Mutant, list[str]], Callable[[], int]],
    jobs: int,
    work: Path,
) -> Iterator[Outcome]:
    pending = list(reversed(mutants))
    running: dict[int, tuple[Mutant, list[str], float, float, Path]] = {}
    killers = Killers()
    try:
        while pending or running:
            while pending and len(running) < jobs:
                mutant, tests = pending.pop()
                tests = killers.order(mutant, tests)
                budget = TIMEOUT_S + TIMEOUT_FACTOR * sum(durations[t] for t in tests)
                log = work / f"mutant-{len(pending)}.log"
                pid = _fork(job(mutant, tests), log)
                running[pid] = (mutant, tests, time.monotonic(), budget, log)
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                now = time.monotonic()
                for late, (mutant, tests, started, budget, _) in list(running.items()):
                    if now - started > budget:
                        _stop(late)
                        del running[late]
                        yield Outcome(mutant, "timeout", len(tests), now - started)
                time.sleep(0.01)
                continue
            if pid not in running:
                continue
            mutant, tests, started, _, log = running.pop(pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)  # anything the tests left running
            code = os.waitstatus_to_exitcode(status)
            verdict = {0: "survived", 1: "killed", 2: "killed"}.get(code, "error")
            if code < 0:  # the tests crashed the process (a segfault): a user sees that too
                verdict = "killed"
            killer = _killer_file(work, pid)
            if verdict == "killed" and killer.exists():
                killers.record(mutant, killer.read_text(encoding="utf-8"))
            detail = ""
            if verdict == "error":
                lines = log.read_text(errors="replace").strip().splitlines()
                detail = " | ".join(lines[-3:])
            yield Outcome(mutant, verdict, len(tests), time.monotonic() - started, detail=detail)
    finally:
        for pid in running:
            _stop(pid)


# -- the report --------------------------------------------------------------------------------


def _is_dead(outcome: Outcome) -> bool:
    return outcome.status in ("killed", "timeout")


def report(
    outcomes: list[Outcome],
    explained: dict[str, Explained],
    seconds: float,
    config: Config,
    whole: bool,
) -> int:
    """Print the score and every survivor; the exit status (see the module's docstring)."""
    killed = [o for o in outcomes if _is_dead(o)]
    listed = [o for o in outcomes if o.mutant.key in explained and not _is_dead(o)]
    equivalent = [o for o in listed if explained[o.mutant.key].kind == "equivalent"]
    accepted = [o for o in listed if explained[o.mutant.key].kind != "equivalent"]
    unexplained = [
        o
        for o in outcomes
        if o.status in ("survived", "uncovered") and o.mutant.key not in explained
    ]
    errors = [o for o in outcomes if o.status == "error"]
    meaningful = len(outcomes) - len(equivalent)
    score = 100.0 * len(killed) / meaningful if meaningful else 100.0

    print("\nper module: killed / meaningful (equivalent)")
    for module in sorted({o.mutant.relative for o in outcomes}):
        mine = [o for o in outcomes if o.mutant.relative == module]
        dead = sum(_is_dead(o) for o in mine)
        same = sum(o in equivalent for o in mine)
        print(f"  {module:44} {dead:4} / {len(mine) - same:<4} ({same})")
    for title, group in (
        ("equivalent: left out of the score", equivalent),
        ("survivors accepted, counted against the score", accepted),
    ):
        if group:
            print(f"\n{title} ({len(group)}; reasons from {SURVIVORS.relative_to(ROOT)}):")
            for o in group:
                print(f"  {o.mutant.describe()}\n    = {explained[o.mutant.key].reason}")
    now_killed = [o for o in killed if o.mutant.key in explained]
    if now_killed:
        print("\nlisted in the survivors file but killed now (remove them from it):")
        for o in now_killed:
            print(f"  {o.mutant.key}")
    if errors:
        print(f"\nmutants whose test run did not start ({len(errors)}):")
        for o in errors:
            print(f"  {o.mutant.describe()}\n    output: {o.detail[-500:]}")
    if unexplained:
        print(f"\nsurvivors ({len(unexplained)}): kill each with a test, or explain it")
        for o in unexplained:
            note = "  (no test runs this line)" if o.status == "uncovered" else ""
            if o.covering > o.tests:
                note = f"  (ran the fastest {o.tests} of the {o.covering} tests that run it)"
            print(f"  {o.mutant.describe()}{note}\n    key: {o.mutant.key}")
    stale = set(explained) - {o.mutant.key for o in outcomes}
    if whole and stale:
        print(f"\n{len(stale)} entries of {SURVIVORS.name} match no mutant any more:")
        for key in sorted(stale):
            print(f"  {key}")
    timeouts = sum(o.status == "timeout" for o in outcomes)
    print(
        f"\n{len(outcomes)} mutants: {len(killed)} killed ({timeouts} by timeout), "
        f"{len(unexplained) + len(accepted)} survived ({len(accepted)} accepted), "
        f"{len(equivalent)} equivalent, {len(errors)} errors"
    )
    print(
        f"mutation score: {score:.1f}% ({len(killed)} / {meaningful} meaningful) in {seconds:.0f} s"
    )
    failed = score < config.fail_under or unexplained or errors
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="module paths or globs (default: all in scope)")
    parser.add_argument("--jobs", "-j", type=int, default=2, help="mutants run at once")
    parser.add_argument("--list", action="store_true", help="list the mutants and stop")
    parser.add_argument(
        "--check-explained", action="store_true", help="run the listed equivalent mutants too"
    )
    arguments = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))  # clean up
    os.environ[IN_PROCESS] = "1"
    config = Config.read(CONFIG)
    scope = config.scope()
    if arguments.modules:
        wanted = [str(ROOT / pattern) for pattern in arguments.modules]
        scope = {m: t for m, t in scope.items() if any(fnmatch.fnmatch(str(m), w) for w in wanted)}
        if not scope:
            sys.exit(f"no module in scope matches {arguments.modules}; see {CONFIG}")
    mutants = [mutant for module in scope for mutant in mutants_of(module, config)]
    if arguments.list:
        for mutant in mutants:
            print(mutant.describe())
        print(f"{len(mutants)} mutants in {len(scope)} modules")
        return 0
    explained = read_explained(SURVIVORS)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dlgraph-mutants-") as folder:
        work = Path(folder)
        test_map = trace(scope, config, work)
        outcomes: list[Outcome] = []
        runs: list[tuple[Mutant, list[str]]] = []
        covering: dict[str, list[str]] = {}
        for mutant in mutants:
            covering[mutant.key] = test_map.tests_for(mutant, scope[mutant.path])
            tests = test_map.within(covering[mutant.key], config.max_test_s)
            if mutant.key in explained and not arguments.check_explained:
                outcomes.append(Outcome(mutant, "explained", 0, 0.0))
            elif not tests:
                outcomes.append(Outcome(mutant, "uncovered", 0, 0.0))
            else:
                runs.append((mutant, tests))
        print(
            f"{len(mutants)} mutants in {len(scope)} modules: running {len(runs)} "
            f"on {arguments.jobs} processes",
            flush=True,
        )
        if runs:
            server = _Server(runs, test_map.durations, config, arguments.jobs, work)
            files = sorted({test.split("::")[0] for _, tests in runs for test in tests})
            keyword = ["-k", config.keyword] if config.keyword else []
            _pytest_main(["-s", "-qq", "--no-header", *keyword, *files], [server])
            outcomes += [
                attrs.evolve(o, covering=len(covering[o.mutant.key])) for o in server.outcomes
            ]
    order = {m.key: i for i, m in enumerate(mutants)}
    outcomes.sort(key=lambda o: order[o.mutant.key])
    elapsed = time.monotonic() - started
    return report(outcomes, explained, elapsed, config, whole=not arguments.modules)


if __name__ == "__main__":
    sys.exit(main())
