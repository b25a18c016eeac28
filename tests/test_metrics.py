"""Metrics: hand computations, an independent numpy implementation, the zero-shot split, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ovss.errors import InputError
from ovss.evaluation.metrics import ConfusionMatrix, compute_metrics, confusion_matrix, harmonic_mean

IGN = 255


def test_confusion_matrix_by_hand() -> None:
    gt = np.array([[0, 0, 1],
                   [1, 2, IGN],
                   [2, 2, 0]])
    pred = np.array([[0, 1, 1],
                     [1, 2, 0],   # the ignored pixel's prediction (0) is not counted
                     [0, 2, 0]])
    m = confusion_matrix(pred, gt, 3, IGN)
    # rows = GT, columns = prediction
    assert m.tolist() == [[2, 1, 0],
                          [0, 2, 0],
                          [1, 0, 2]]
    assert m.dtype == np.int64
    # torch tensors give the same matrix
    assert np.array_equal(confusion_matrix(torch.from_numpy(pred), torch.from_numpy(gt), 3, IGN), m)


def test_metrics_by_hand() -> None:
    # class 0: tp 2, gt 3, pred 3 -> IoU 2/4; class 1: tp 2, gt 2, pred 3 -> IoU 2/3
    # class 2: tp 1, gt 3, pred 1 -> IoU 1/3; class 3: absent everywhere -> NaN, skipped
    # class 4: predicted once, no GT -> IoU 0, counted in mIoU; Acc NaN
    m = np.array([[2, 1, 0, 0, 0],
                  [0, 2, 0, 0, 0],
                  [1, 0, 1, 0, 1],
                  [0, 0, 0, 0, 0],
                  [0, 0, 0, 0, 0]])
    r = compute_metrics(m)
    iou = [2 / 4, 2 / 3, 1 / 3, float("nan"), 0.0]
    acc = [2 / 3, 1.0, 1 / 3, float("nan"), float("nan")]
    assert np.allclose(r.iou, iou, equal_nan=True)
    assert np.allclose(r.acc, acc, equal_nan=True)
    assert r.mIoU == pytest.approx((2 / 4 + 2 / 3 + 1 / 3 + 0.0) / 4)
    assert r.mAcc == pytest.approx((2 / 3 + 1 + 1 / 3) / 3)
    assert r.aAcc == pytest.approx(5 / 8)
    assert r.fwIoU == pytest.approx(3 / 8 * 2 / 4 + 2 / 8 * 2 / 3 + 3 / 8 * 1 / 3)
    s = r.summary()
    assert s["mIoU"] == pytest.approx(100 * r.mIoU) and set(s) == {"mIoU", "mAcc", "aAcc", "fwIoU"}
    pc = r.per_class(["a", "b", "c", "d", "e"])
    assert pc[3]["IoU"] is None and pc[3]["Acc"] is None and pc[4]["IoU"] == 0.0
    assert pc[0]["gt_pixels"] == 3 and pc[0]["pred_pixels"] == 3 and pc[0]["name"] == "a"


def _reference(preds: list[np.ndarray], gts: list[np.ndarray], num_classes: int, ignore: int) -> dict:
    """Independent numpy implementation: per-class boolean masks, per-image sums (no bincount)."""
    inter = np.zeros(num_classes)
    area_p = np.zeros(num_classes)
    area_g = np.zeros(num_classes)
    for p, g in zip(preds, gts):
        valid = g != ignore
        for c in range(num_classes):
            pc, gc = (p == c) & valid, (g == c) & valid
            inter[c] += np.logical_and(pc, gc).sum()
            area_p[c] += pc.sum()
            area_g[c] += gc.sum()
    union = area_p + area_g - inter
    iou = np.array([inter[c] / union[c] if union[c] > 0 else np.nan for c in range(num_classes)])
    acc = np.array([inter[c] / area_g[c] if area_g[c] > 0 else np.nan for c in range(num_classes)])
    has_gt = area_g > 0
    # detectron2 SemSegEvaluator form of mIoU: sum over classes with GT / #(GT or pred)
    miou_d2 = np.sum(iou[has_gt]) / np.sum(union > 0)
    return {"iou": iou, "acc": acc, "mIoU": np.nanmean(iou), "mIoU_d2": miou_d2, "mAcc": np.nanmean(acc),
            "aAcc": inter.sum() / area_g.sum(),
            "fwIoU": np.sum(area_g[has_gt] / area_g.sum() * iou[has_gt])}


@pytest.mark.parametrize("num_classes,ignore", [(12, 255), (300, 65535)])
def test_matches_independent_numpy(num_classes: int, ignore: int) -> None:
    rng = np.random.default_rng(0)
    acc = ConfusionMatrix(num_classes, ignore)
    preds, gts = [], []
    for _ in range(6):
        h, w = rng.integers(20, 50, size=2)
        # GT uses only part of the classes, so some classes are NaN and some predicted-only
        g = rng.integers(0, num_classes - 3, size=(h, w))
        g[rng.random((h, w)) < 0.1] = ignore
        p = np.where(rng.random((h, w)) < 0.6, np.clip(g, 0, num_classes - 1), rng.integers(0, num_classes, (h, w)))
        p[g == ignore] = rng.integers(0, num_classes, size=int((g == ignore).sum()))
        acc.update(p, g)
        preds.append(p)
        gts.append(g)
    ref = _reference(preds, gts, num_classes, ignore)
    r = acc.compute()
    assert np.allclose(r.iou, ref["iou"], equal_nan=True, rtol=0, atol=1e-12)
    assert np.allclose(r.acc, ref["acc"], equal_nan=True, rtol=0, atol=1e-12)
    for k in ("mIoU", "mAcc", "aAcc", "fwIoU"):
        assert getattr(r, k) == pytest.approx(ref[k], abs=1e-12), k
    assert r.mIoU == pytest.approx(ref["mIoU_d2"], abs=1e-12)  # mmseg nanmean == detectron2 formula


def test_seen_unseen_and_hiou() -> None:
    m = np.diag([4, 3, 2, 1]).astype(np.int64)
    m[0, 1] = 4          # class 0: IoU 4/8, class 1: IoU 3/7
    m[3, 2] = 1          # class 2: IoU 2/3, class 3: IoU 1/2
    r = compute_metrics(m, unseen=[2, 3])
    seen = (4 / 8 + 3 / 7) / 2
    unseen = (2 / 3 + 1 / 2) / 2
    assert r.mIoU_seen == pytest.approx(seen)
    assert r.mIoU_unseen == pytest.approx(unseen)
    assert r.hIoU == pytest.approx(2 * seen * unseen / (seen + unseen))
    # ZSSeg GeneralizedSemSegEvaluator: 100 * 2 / (1/S + 1/U)
    assert 100 * r.hIoU == pytest.approx(100 * 2 / (1 / seen + 1 / unseen))
    s = r.summary()
    assert set(s) == {"mIoU", "mAcc", "aAcc", "fwIoU", "mIoU_seen", "mIoU_unseen", "hIoU"}
    assert [c["unseen"] for c in r.per_class("abcd")] == [False, False, True, True]
    assert harmonic_mean(0.0, 0.0) == 0.0 and math.isnan(harmonic_mean(float("nan"), 0.5))
    with pytest.raises(InputError, match="unseen class index"):
        compute_metrics(m, unseen=[4])


def test_empty_matrix_gives_nan_not_error() -> None:
    r = compute_metrics(np.zeros((3, 3), dtype=np.int64))
    assert math.isnan(r.mIoU) and r.summary()["mIoU"] is None


def test_errors() -> None:
    g = np.zeros((4, 4), dtype=np.int64)
    with pytest.raises(InputError, match="shape"):
        confusion_matrix(np.zeros((4, 5)), g, 3)
    with pytest.raises(InputError, match="predicted label 3 is outside"):
        confusion_matrix(np.full((4, 4), 3), g, 3)
    with pytest.raises(InputError, match="label value 7 is neither"):
        confusion_matrix(np.zeros((4, 4)), np.full((4, 4), 7), 3)
    with pytest.raises(InputError, match="must be \\(C, C\\)"):
        compute_metrics(np.zeros((2, 3)))
