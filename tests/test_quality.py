"""The code base stays clean: ruff's lint and format, and mypy --strict, as the style guide asks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # ruff and mypy over the whole code base

ROOT = Path(__file__).parents[1]
SOURCES = [
    "dlgraph",
    "backends/sim/dlgraph_sim",
    "backends/openai/dlgraph_openai",
    "backends/llamacpp/dlgraph_llamacpp",
    "backends/ray/dlgraph_ray",
    "scripts/mutate.py",
]


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def test_ruff_finds_nothing_to_lint_or_format() -> None:
    paths = ["dlgraph", "backends", "tests", "bench", "examples", "scripts"]
    lint = run("ruff", "check", *paths, "--select", "F,E9,B,UP,I")
    assert lint.returncode == 0, lint.stdout
    form = run("ruff", "format", "--check", *paths)
    assert form.returncode == 0, form.stdout


def test_mypy_strict_passes() -> None:
    result = run("mypy", *SOURCES)
    assert result.returncode == 0, result.stdout
