"""Datasets: examples, loaders for the DLN paper's formats, and generated tasks."""

from dlgraph.data.example import Example, check_dataset

__all__ = ["Example", "check_dataset"]
