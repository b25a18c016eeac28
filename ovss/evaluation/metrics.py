"""Semantic segmentation metrics from a confusion matrix accumulated over a whole split.

Conventions (identical in mmseg 1.x ``IoUMetric`` and detectron2 ``SemSegEvaluator``, the two
evaluators behind the published OVSS numbers):

* one (C, C) confusion matrix over every scored pixel of the split, at the label's resolution;
  pixels whose ground truth is the ignore index are not scored;
* IoU_c = TP_c / (GT_c + Pred_c - TP_c), NaN when class c is in neither GT nor prediction;
  a class predicted but absent from GT has IoU 0;
* mIoU = mean of IoU_c over the non-NaN classes (mmseg ``nanmean``; detectron2's
  ``sum(IoU[GT>0]) / #(GT>0 or Pred>0)`` is the same number);
* Acc_c = TP_c / GT_c (NaN without GT), mAcc = nanmean, aAcc = sum TP / sum GT;
* fwIoU = sum_c GT_c / sum GT * IoU_c over the classes with GT (detectron2);
* seen / unseen mIoU = the same nanmean restricted to a class subset, and
  hIoU = 2 S U / (S + U) (ZSSeg ``GeneralizedSemSegEvaluator``; ZS3/SPNet protocol).

Metric values here are fractions in [0, 1]; :meth:`SegMetrics.to_dict` gives percent, as the
papers print them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from ..errors import InputError


def confusion_matrix(pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor, num_classes: int,
                     ignore_index: int = 255) -> np.ndarray:
    """(C, C) int64 confusion matrix of one label map: ``M[g, p]`` = #pixels with GT g, prediction p.

    Args:
        pred: (H, W) integer prediction, values in [0, C).
        gt: (H, W) integer ground truth, values in [0, C) or ``ignore_index``.
        num_classes: C.
        ignore_index: GT value that is not scored.

    Raises:
        InputError: shapes differ, a prediction is outside [0, C), or a GT value is neither a
            class nor the ignore index (a wrong dataset/layout for these labels).
    """
    p = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
    g = gt.detach().cpu().numpy() if isinstance(gt, torch.Tensor) else np.asarray(gt)
    if p.shape != g.shape:
        raise InputError(f"prediction shape {tuple(p.shape)} differs from label shape {tuple(g.shape)}: "
                         "predictions must be at the original image resolution")
    g = g.reshape(-1).astype(np.int64, copy=False)
    p = p.reshape(-1).astype(np.int64, copy=False)
    keep = g != ignore_index
    g, p = g[keep], p[keep]
    if g.size:
        if g.min() < 0 or g.max() >= num_classes:
            bad = int(g[(g < 0) | (g >= num_classes)][0])
            raise InputError(f"label value {bad} is neither a class in [0, {num_classes}) nor the ignore "
                             f"index {ignore_index}: wrong dataset or label layout for these files?")
        if p.min() < 0 or p.max() >= num_classes:
            bad = int(p[(p < 0) | (p >= num_classes)][0])
            raise InputError(f"predicted label {bad} is outside [0, {num_classes}): predictions must index "
                             "the dataset's classes in order")
    return np.bincount(g * num_classes + p, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes)


class ConfusionMatrix:
    """Accumulates the (C, C) int64 confusion matrix (rows GT, columns prediction) of a split."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor) -> None:
        """Add one image (see :func:`confusion_matrix` for shapes and errors)."""
        self.matrix += confusion_matrix(pred, gt, self.num_classes, self.ignore_index)

    def compute(self, unseen: Sequence[int] | None = None) -> "SegMetrics":
        """Metrics of the pixels added so far (see :func:`compute_metrics`)."""
        return compute_metrics(self.matrix, unseen)


def _nanmean(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else float("nan")


def harmonic_mean(a: float, b: float) -> float:
    """2ab / (a + b); NaN when either is NaN, 0 when both are 0 (ZSSeg's hIoU)."""
    if math.isnan(a) or math.isnan(b):
        return float("nan")
    return 0.0 if a + b == 0 else 2.0 * a * b / (a + b)


@dataclass
class SegMetrics:
    """Metrics of a confusion matrix, as fractions in [0, 1] (NaN where undefined).

    Attributes:
        iou: (C,) per-class IoU.
        acc: (C,) per-class accuracy (recall).
        gt_pixels: (C,) scored GT pixels per class.
        pred_pixels: (C,) predicted pixels per class (on scored pixels).
        mIoU, mAcc, aAcc, fwIoU: the summaries (see module docstring).
        mIoU_seen, mIoU_unseen, hIoU: zero-shot split summaries, NaN without a split.
        unseen: class indices of the unseen split (empty without a split).
    """

    iou: np.ndarray
    acc: np.ndarray
    gt_pixels: np.ndarray
    pred_pixels: np.ndarray
    mIoU: float
    mAcc: float
    aAcc: float
    fwIoU: float
    mIoU_seen: float = float("nan")
    mIoU_unseen: float = float("nan")
    hIoU: float = float("nan")
    unseen: list[int] = field(default_factory=list)

    def summary(self, percent: bool = True) -> dict[str, float | None]:
        """The summary metrics (percent by default; NaN as None), zero-shot ones only with a split."""
        keys = ["mIoU", "mAcc", "aAcc", "fwIoU"] + (["mIoU_seen", "mIoU_unseen", "hIoU"] if self.unseen else [])
        return {k: metric_value(getattr(self, k), percent) for k in keys}

    def per_class(self, classes: Sequence[str], percent: bool = True) -> list[dict]:
        """One dict per class: index, name, IoU, Acc (percent, None where undefined), pixel counts,
        and whether the class is unseen."""
        unseen = set(self.unseen)
        return [{"index": c, "name": name, "IoU": metric_value(self.iou[c], percent), "Acc": metric_value(self.acc[c], percent),
                 "gt_pixels": int(self.gt_pixels[c]), "pred_pixels": int(self.pred_pixels[c]),
                 **({"unseen": c in unseen} if self.unseen else {})}
                for c, name in enumerate(classes)]


def metric_value(x: float, percent: bool) -> float | None:
    """``x`` as reported: in percent when asked, NaN (undefined) as None."""
    x = float(x)
    if math.isnan(x):
        return None
    return 100.0 * x if percent else x


def compute_metrics(matrix: np.ndarray, unseen: Sequence[int] | None = None) -> SegMetrics:
    """All metrics of a (C, C) confusion matrix (rows GT, columns prediction).

    Args:
        matrix: (C, C) pixel counts.
        unseen: class indices of the unseen split for mIoU_seen / mIoU_unseen / hIoU; the seen
            split is every other class.

    Returns:
        The metrics as fractions (see :class:`SegMetrics`).

    Raises:
        InputError: the matrix is not square, or an unseen index is out of range.
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise InputError(f"confusion matrix must be (C, C), got shape {m.shape}")
    num_classes = m.shape[0]
    tp = np.diag(m)
    gt = m.sum(axis=1)
    pred = m.sum(axis=0)
    union = gt + pred - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(gt > 0, tp / gt, np.nan)
    total = gt.sum()
    has_gt = gt > 0
    a_acc = float(tp.sum() / total) if total > 0 else float("nan")
    fw_iou = float((gt[has_gt] / total * iou[has_gt]).sum()) if total > 0 else float("nan")
    out = SegMetrics(iou=iou, acc=acc, gt_pixels=gt.astype(np.int64), pred_pixels=pred.astype(np.int64),
                     mIoU=_nanmean(iou), mAcc=_nanmean(acc), aAcc=a_acc, fwIoU=fw_iou)
    if unseen:
        idx = sorted(set(int(i) for i in unseen))
        if idx[0] < 0 or idx[-1] >= num_classes:
            raise InputError(f"unseen class index out of range [0, {num_classes}): {idx}")
        mask = np.zeros(num_classes, dtype=bool)
        mask[idx] = True
        out.unseen = idx
        out.mIoU_unseen = _nanmean(iou[mask])
        out.mIoU_seen = _nanmean(iou[~mask])
        out.hIoU = harmonic_mean(out.mIoU_seen, out.mIoU_unseen)
    return out
