"""Datasets: examples, readers for the DLN paper's formats and splits, and generated tasks."""

from dlgraph.data.example import Example, check_dataset
from dlgraph.data.formats import read_bbh, read_jsonl, read_leopard, read_ordered_prompt
from dlgraph.data.generated import GENERATORS, generate, generated_task
from dlgraph.data.paper import Task, data_dir, load_task, rebuild_splits, task_names

__all__ = [
    "GENERATORS",
    "Example",
    "Task",
    "check_dataset",
    "data_dir",
    "generate",
    "generated_task",
    "load_task",
    "read_bbh",
    "read_jsonl",
    "read_leopard",
    "read_ordered_prompt",
    "rebuild_splits",
    "task_names",
]
