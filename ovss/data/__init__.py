"""Benchmark datasets: class names, label conventions, on-disk layouts (see ``docs/datasets.md``)."""

from .datasets import (
    DatasetSpec,
    EvalDataset,
    Layout,
    Sample,
    available_datasets,
    get_dataset,
    open_dataset,
    read_label,
)

__all__ = ["DatasetSpec", "EvalDataset", "Layout", "Sample", "available_datasets", "get_dataset",
           "open_dataset", "read_label"]
