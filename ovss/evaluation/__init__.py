"""Evaluation: confusion-matrix metrics (mIoU, mAcc, aAcc, fwIoU, seen/unseen, hIoU) and the
``ovss eval`` loop over the benchmarks of :mod:`ovss.data`."""

from .metrics import ConfusionMatrix, SegMetrics, compute_metrics, confusion_matrix, harmonic_mean
from .runner import EvalResult, evaluate, print_report, write_reports

__all__ = ["ConfusionMatrix", "SegMetrics", "compute_metrics", "confusion_matrix", "harmonic_mean",
           "EvalResult", "evaluate", "print_report", "write_reports"]
