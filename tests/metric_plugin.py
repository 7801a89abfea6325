"""A metric plugin installed for a test: a distribution on sys.path with entries in the
``dlgraph.metrics`` group, as `pip install` leaves one (its module is imported only when a
metric is asked for by name).

* ``shouted``: 1 for an answer in capitals, else 0.
* ``fragile``: 1 for every answer, until the environment variable FRAGILE is set; then NaN.
"""

from __future__ import annotations

from pathlib import Path

import pytest

MODULE = """
import os


def shouted(outputs, example):
    return float(outputs.isupper())


def fragile(outputs, example):
    return float("nan") if os.environ.get("FRAGILE") else 1.0
"""


def install_metric_plugin(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (folder / "shouting_metric.py").write_text(MODULE)
    info = folder / "shouting_metric-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: shouting-metric\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[dlgraph.metrics]\nshouted = shouting_metric:shouted\nfragile = shouting_metric:fragile\n"
    )
    monkeypatch.syspath_prepend(str(folder))
