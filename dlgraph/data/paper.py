"""The DLN paper's tasks from a local copy of their data (never shipped with dlgraph).

`load_task(name)` returns the exact reference splits. `rebuild_splits(name)` derives them
again from the original files by the recipe of the data's README (numpy's RandomState(42)),
for the tasks whose recipe has no option shuffling; a test checks both agree.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import attrs

from dlgraph._untrusted import excerpt
from dlgraph.data.example import Example
from dlgraph.data.formats import load_json, read_bbh, read_jsonl, read_leopard, read_ordered_prompt
from dlgraph.errors import DataError

DATA_ENV = "DLGRAPH_DATA"
LEOPARD_PREFIXES = {
    "disaster": "Is the following tweet relevant to a disaster? ",
    "airline": "Is the following tweet positive, negative, or neutral? ",
}


def data_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """The dataset folder: `path`, else $DLGRAPH_DATA, else ../shared/data beside the checkout."""
    candidates = [path, os.environ.get(DATA_ENV), Path(__file__).parents[3] / "shared" / "data"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "tasks.json").is_file():
            return Path(candidate)
    raise DataError(f"no DLN data found: set {DATA_ENV} to the folder holding tasks.json")


@attrs.frozen
class Task:
    """A task's splits, output classes and the paper's initial instruction."""

    name: str
    train: list[Example]
    dev: list[Example]
    test: list[Example]
    classes: list[str] | None
    instruction: str


def task_names(path: str | os.PathLike[str] | None = None) -> list[str]:
    return sorted(load_json(data_dir(path) / "tasks.json"))


def _spec(name: str, root: Path) -> dict[str, Any]:
    specs = load_json(root / "tasks.json")
    if not isinstance(specs, dict):
        raise DataError(f"{root / 'tasks.json'}: expected an object of tasks")
    if name not in specs:
        raise DataError(f"unknown task {excerpt(name)} (known: {', '.join(sorted(specs))})")
    spec: dict[str, Any] = specs[name]
    return spec


def load_task(name: str, path: str | os.PathLike[str] | None = None) -> Task:
    """The paper's reference train/dev/test splits of task `name`."""
    root = data_dir(path)
    spec = _spec(name, root)
    splits = {
        split: read_jsonl(root / name / "dln_splits" / f"{split}.jsonl")
        for split in ("train", "dev", "test")
    }
    return Task(
        name,
        splits["train"],
        splits["dev"],
        splits["test"],
        spec.get("protos"),
        spec.get("instruction", ""),
    )


def rebuild_splits(name: str, path: str | os.PathLike[str] | None = None) -> Task:
    """Derive the splits from the original files (navigate, Ordered-Prompt and Leopard tasks).
    Needs numpy (``pip install 'dlgraph[paper]'``), whose generator the recipe is written in."""
    try:
        import numpy as np
    except ImportError:
        raise DataError(
            "rebuilding the paper's splits needs numpy: pip install 'dlgraph[paper]'"
        ) from None

    root = data_dir(path)
    spec = _spec(name, root)
    original = root / name / "original"
    rng = np.random.RandomState(42)
    labels = spec.get("label_mapping", {})
    if name == "navigate":
        pool = read_bbh(root / name / "derived" / "bb_minus_bbh" / f"{name}.json")
        order = list(range(len(pool)))
        rng.shuffle(order)
        train_size, dev_size = min(len(pool) // 2, 1000), min(len(pool) - len(pool) // 2, 1000)
        train = [pool[i] for i in order[:train_size]]
        dev = [pool[i] for i in order[train_size : train_size + dev_size]]
        test = read_bbh(original / "bbh" / f"{name}.json")
    elif name in ("mpqa", "trec", "subj"):
        full_train = read_ordered_prompt(original / "train.jsonl", labels)
        full_test = read_ordered_prompt(original / "test.jsonl", labels)
        train = [full_train[i] for i in rng.choice(len(full_train), 1000, replace=False)]
        dev = read_ordered_prompt(original / "dev_subsample.jsonl", labels)
        test = [full_test[i] for i in rng.choice(len(full_test), 250, replace=False)]
    elif name in LEOPARD_PREFIXES:
        rows = read_leopard(original / f"{name}_eval.json", labels, LEOPARD_PREFIXES[name])
        chosen = [rows[i] for i in rng.choice(len(rows), 1500, replace=False)]
        train, dev, test = chosen[:1000], chosen[1000:1250], chosen[1250:]
    else:
        raise DataError(
            f"task {excerpt(name)}: rebuilding its splits is not supported; use load_task"
        )
    return Task(name, train, dev, test, spec.get("protos"), spec.get("instruction", ""))
