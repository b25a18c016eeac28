"""Panoptic quality (PQ, SQ, RQ) exactly as the COCO panoptic API computes it.

Kirillov et al., "Panoptic Segmentation", CVPR 2019, Eq. 1:
``PQ = sum_{(p, g) in TP} IoU(p, g) / (|TP| + |FP| / 2 + |FN| / 2) = SQ * RQ`` per category,
with ``SQ = sum IoU / |TP|`` and ``RQ = |TP| / (|TP| + |FP| / 2 + |FN| / 2)``; the summaries are
the plain means over the categories that occur (``tp + fp + fn > 0``), for all categories, the
things and the stuff.

The arithmetic follows panopticapi ``panopticapi/evaluation.py`` (``pq_compute_single_core``
and ``PQStat.pq_average``; detectron2's ``COCOPanopticEvaluator`` calls the same functions):

* segment id 0 is VOID; intersections come from one histogram of ``gt * 256^3 + pred``;
* a ground-truth and a predicted segment of the same category match when their IoU is
  **above** 0.5 (so a match is unique), where the union leaves out the predicted pixels on VOID:
  ``pred_area + gt_area - intersection - |pred ∩ VOID|``;
* crowd ground-truth segments (``iscrowd = 1``) are never matched and never FN;
* an unmatched prediction is an FP unless more than half of it lies on VOID or on the crowd
  region of its own category;
* the ground-truth area is the JSON's ``area`` where it is given (as panopticapi), otherwise
  the pixel count.

The per-category statistics are a (C, 4) float64 array ``[tp, fp, fn, iou_sum]``, so images,
ranks (all-reduce) and resumed runs add up by summing arrays. Values here are fractions;
``summary(percent=True)`` gives percent, as detectron2 prints them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

from ..errors import InputError
from .metrics import metric_value

VOID = 0
OFFSET = 256 * 256 * 256  # panopticapi's OFFSET: segment ids are below 256^3 (RGB-encoded)
TP, FP, FN, IOU = range(4)  # columns of the statistics array
STAT_FIELDS = ("tp", "fp", "fn", "iou_sum")
SUMMARY_KEYS = ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st")  # detectron2's names


def _as_ids(x: np.ndarray | torch.Tensor, what: str) -> np.ndarray:
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{what} segment map must be an (H, W) integer array, got {arr.dtype} {arr.shape}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and (arr.min() < 0 or arr.max() >= OFFSET):
        raise InputError(f"{what} segment ids must lie in [0, 256^3), got {int(arr.min())}..{int(arr.max())}")
    return arr


def _segment_table(segments: Sequence[Mapping], num_categories: int, what: str) -> dict[int, Mapping]:
    table: dict[int, Mapping] = {}
    for seg in segments:
        sid, cat = int(seg["id"]), int(seg["category_id"])
        if sid in table:
            raise InputError(f"{what} segment id {sid} is listed twice")
        if sid == VOID:
            raise InputError(f"{what} segment id 0 is VOID and cannot be a segment")
        if not 0 <= cat < num_categories:
            raise InputError(f"{what} segment {sid} has category {cat}, outside [0, {num_categories}): "
                             "categories must index the dataset's classes in order")
        table[sid] = seg
    return table


def pq_stats(gt: np.ndarray | torch.Tensor, gt_segments: Sequence[Mapping], pred: np.ndarray | torch.Tensor,
             pred_segments: Sequence[Mapping], num_categories: int) -> np.ndarray:
    """Per-category PQ statistics of one image (panopticapi ``pq_compute_single_core``).

    Args:
        gt: (H, W) integer ground-truth segment ids, 0 = VOID.
        gt_segments: the ground truth's ``segments_info``: ``id``, ``category_id`` (contiguous,
            in [0, C)), ``iscrowd`` (0/1, default 0), optionally ``area`` (pixels; default:
            counted in ``gt``).
        pred: (H, W) integer predicted segment ids, 0 = VOID (no segment).
        pred_segments: ``id`` and ``category_id`` (contiguous) of every predicted segment;
            other keys (``isthing``, ``score``) are not used.
        num_categories: C.

    Returns:
        (C, 4) float64 ``[tp, fp, fn, iou_sum]`` per category.

    Raises:
        InputError: shapes differ, an id outside [0, 256^3), a category outside [0, C), a
            segment listed twice or as id 0, a predicted id in the map but not in the list or
            listed but absent from the map (panopticapi's KeyErrors).
    """
    g, p = _as_ids(gt, "ground-truth"), _as_ids(pred, "predicted")
    if g.shape != p.shape:
        raise InputError(f"panoptic prediction shape {p.shape} differs from the ground truth's {g.shape}: "
                         "predictions must be at the original image resolution")
    gt_segs = _segment_table(gt_segments, num_categories, "ground-truth")
    pred_segs = _segment_table(pred_segments, num_categories, "predicted")
    pred_area: dict[int, int] = {}
    for label, count in zip(*np.unique(p, return_counts=True)):
        label = int(label)
        if label not in pred_segs:
            if label == VOID:
                continue
            raise InputError(f"predicted segment id {label} is in the segment map but not in the segment list")
        pred_area[label] = int(count)
    absent = sorted(set(pred_segs) - set(pred_area))
    if absent:
        raise InputError(f"predicted segment ids {absent} are listed but have no pixel in the segment map")
    gt_counts = dict(zip(*(a.tolist() for a in np.unique(g, return_counts=True))))
    gt_area = {sid: int(seg.get("area", gt_counts.get(sid, 0))) for sid, seg in gt_segs.items()}

    pairs, inter = np.unique(g * OFFSET + p, return_counts=True)
    overlap = {(int(k) // OFFSET, int(k) % OFFSET): int(n) for k, n in zip(pairs, inter)}
    stats = np.zeros((num_categories, 4), dtype=np.float64)
    gt_matched: set[int] = set()
    pred_matched: set[int] = set()
    for (gid, pid), n in overlap.items():
        if gid not in gt_segs or pid not in pred_segs or int(gt_segs[gid].get("iscrowd", 0)) == 1:
            continue
        cat = int(gt_segs[gid]["category_id"])
        if cat != int(pred_segs[pid]["category_id"]):
            continue
        union = pred_area[pid] + gt_area[gid] - n - overlap.get((VOID, pid), 0)
        iou = n / union
        if iou > 0.5:
            stats[cat, TP] += 1
            stats[cat, IOU] += iou
            gt_matched.add(gid)
            pred_matched.add(pid)
    crowd: dict[int, int] = {}  # category -> its crowd segment (the last listed, as panopticapi)
    for gid, seg in gt_segs.items():
        if gid in gt_matched:
            continue
        if int(seg.get("iscrowd", 0)) == 1:
            crowd[int(seg["category_id"])] = gid
            continue
        stats[int(seg["category_id"]), FN] += 1
    for pid, seg in pred_segs.items():
        if pid in pred_matched:
            continue
        cat = int(seg["category_id"])
        ignored = overlap.get((VOID, pid), 0)
        if cat in crowd:
            ignored += overlap.get((crowd[cat], pid), 0)
        if ignored / pred_area[pid] > 0.5:  # mostly on VOID / same-category crowd: not an FP
            continue
        stats[cat, FP] += 1
    return stats


@dataclass
class PanopticMetrics:
    """PQ / SQ / RQ of accumulated statistics, as fractions in [0, 1] (NaN where undefined).

    Attributes:
        stats: (C, 4) ``[tp, fp, fn, iou_sum]``.
        isthing: (C,) bool.
        pq, sq, rq: (C,) per category; NaN for categories with ``tp + fp + fn == 0`` (panopticapi
            writes 0 there and leaves them out of the means, as here); ``sq`` is 0 without a TP.
        PQ, SQ, RQ: means over the categories that occur; ``*_th`` over the things, ``*_st`` over
            the stuff (NaN when none occurs; panopticapi divides by zero there).
        n, n_th, n_st: how many categories each mean covers.
    """

    stats: np.ndarray
    isthing: np.ndarray
    pq: np.ndarray
    sq: np.ndarray
    rq: np.ndarray
    PQ: float
    SQ: float
    RQ: float
    PQ_th: float
    SQ_th: float
    RQ_th: float
    PQ_st: float
    SQ_st: float
    RQ_st: float
    n: int
    n_th: int
    n_st: int

    def summary(self, percent: bool = True) -> dict[str, float | None]:
        """PQ, SQ, RQ for all categories, things (``_th``) and stuff (``_st``); percent by default, NaN as None."""
        return {k: metric_value(getattr(self, k), percent) for k in SUMMARY_KEYS}

    def per_class(self, classes: Sequence[str], percent: bool = True) -> list[dict]:
        """One dict per category: index, name, isthing, PQ, SQ, RQ (None where it does not occur), tp, fp, fn."""
        return [{"index": c, "name": name, "isthing": bool(self.isthing[c]), "PQ": metric_value(self.pq[c], percent),
                 "SQ": metric_value(self.sq[c], percent), "RQ": metric_value(self.rq[c], percent),
                 "tp": int(self.stats[c, TP]), "fp": int(self.stats[c, FP]), "fn": int(self.stats[c, FN])}
                for c, name in enumerate(classes)]


def _mean(values: np.ndarray) -> float:
    # left-to-right sum over the categories in order, as pq_average's loop
    return sum(values.tolist()) / len(values) if len(values) else float("nan")


def compute_pq(stats: np.ndarray, isthing: Sequence[bool] | np.ndarray) -> PanopticMetrics:
    """PQ, SQ and RQ of (C, 4) statistics (panopticapi ``PQStat.pq_average`` for all / things / stuff).

    Args:
        stats: (C, 4) ``[tp, fp, fn, iou_sum]`` (sums of :func:`pq_stats`).
        isthing: (C,) whether each category is a thing.

    Returns:
        The metrics as fractions (see :class:`PanopticMetrics`).

    Raises:
        InputError: ``stats`` is not (C, 4) or ``isthing`` is not (C,).
    """
    s = np.asarray(stats, dtype=np.float64)
    things = np.asarray(isthing, dtype=bool)
    if s.ndim != 2 or s.shape[1] != 4:
        raise InputError(f"PQ statistics must be (C, 4) [tp, fp, fn, iou_sum], got shape {s.shape}")
    if things.shape != (s.shape[0],):
        raise InputError(f"isthing must have one entry per category ({s.shape[0]}), got shape {things.shape}")
    tp, fp, fn, iou = s[:, TP], s[:, FP], s[:, FN], s[:, IOU]
    denom = tp + 0.5 * fp + 0.5 * fn
    present = (tp + fp + fn) > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        pq = np.where(present, iou / denom, np.nan)
        sq = np.where(present, np.where(tp > 0, iou / np.where(tp > 0, tp, 1), 0.0), np.nan)
        rq = np.where(present, tp / denom, np.nan)
    out: dict[str, float] = {}
    counts: dict[str, int] = {}
    for suffix, subset in (("", present), ("_th", present & things), ("_st", present & ~things)):
        for name, values in (("PQ", pq), ("SQ", sq), ("RQ", rq)):
            out[name + suffix] = _mean(values[subset])
        counts["n" + suffix] = int(subset.sum())
    return PanopticMetrics(stats=s, isthing=things, pq=pq, sq=sq, rq=rq, **out, **counts)

