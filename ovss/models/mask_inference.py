"""Mask-classification inference of the Mask2Former family: semantic scores and panoptic segments
from per-query class log-probabilities and mask logits.

Source: Cheng et al., "Masked-attention Mask Transformer for Universal Image Segmentation" (Mask2Former),
CVPR 2022, Sec. 3.4 / Appendix; ``facebookresearch/Mask2Former`` ``mask2former/maskformer_model.py``
``semantic_inference`` / ``panoptic_inference``, which FC-CLIP keeps unchanged (``bytedance/fc-clip``
``fcclip/fcclip.py``), and detectron2 ``modeling/postprocessing.py::sem_seg_postprocess``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F


def postprocess_masks(mask_logits: torch.Tensor, input_size: tuple[int, int], output_size: tuple[int, int]
                      ) -> torch.Tensor:
    """detectron2 ``sem_seg_postprocess``: (N, Hp, Wp) -> crop to ``input_size`` -> bilinear to ``output_size``."""
    x = mask_logits[:, : input_size[0], : input_size[1]].expand(1, -1, -1, -1)
    return F.interpolate(x, size=output_size, mode="bilinear", align_corners=False)[0]


def semantic_inference(mask_cls: torch.Tensor, mask_pred: torch.Tensor) -> torch.Tensor:
    """(Q, K + 1) log-probs, (Q, H, W) mask logits -> (K, H, W) ``sum_q softmax(cls)[q, c] * sigmoid(mask_q)``."""
    return torch.einsum("qc,qhw->chw", F.softmax(mask_cls, dim=-1)[..., :-1], mask_pred.sigmoid())


def panoptic_inference(mask_cls: torch.Tensor, mask_pred: torch.Tensor, things: Sequence[int],
                       object_mask_threshold: float = 0.0, overlap_threshold: float = 0.8
                       ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Mask2Former's panoptic merge (``FCCLIP.panoptic_inference``).

    Args:
        mask_cls: (Q, K + 1) log-probabilities, void last.
        mask_pred: (Q, H, W) mask logits at the output size.
        things: contiguous ids of the thing classes (stuff segments of one class are merged).

    Returns:
        The (H, W) int32 id map (0 = no segment) and one dict per segment: ``id``,
        ``category_id`` (contiguous), ``isthing``, ``score`` (class probability of the query
        that created the segment).
    """
    num_classes = mask_cls.shape[-1] - 1
    scores, labels = F.softmax(mask_cls, dim=-1).max(-1)
    masks = mask_pred.sigmoid()
    keep = labels.ne(num_classes) & (scores > object_mask_threshold)
    cur_scores, cur_classes, cur_masks = scores[keep], labels[keep], masks[keep]
    h, w = cur_masks.shape[-2:]
    panoptic = torch.zeros((h, w), dtype=torch.int32, device=mask_pred.device)
    segments: list[dict[str, Any]] = []
    if cur_masks.shape[0] == 0:
        return panoptic, segments
    ids = (cur_scores.view(-1, 1, 1) * cur_masks).argmax(0)
    thing_set = set(int(t) for t in things)
    stuff_ids: dict[int, int] = {}
    current = 0
    for k in range(cur_classes.shape[0]):
        cls = int(cur_classes[k])
        isthing = cls in thing_set
        won = ids == k
        mask_area = int(won.sum())
        original_area = int((cur_masks[k] >= 0.5).sum())
        mask = won & (cur_masks[k] >= 0.5)
        if mask_area > 0 and original_area > 0 and int(mask.sum()) > 0:
            if mask_area / original_area < overlap_threshold:
                continue
            if not isthing:
                if cls in stuff_ids:
                    panoptic[mask] = stuff_ids[cls]
                    continue
                stuff_ids[cls] = current + 1
            current += 1
            panoptic[mask] = current
            segments.append({"id": current, "isthing": bool(isthing), "category_id": cls,
                             "score": float(cur_scores[k])})
    return panoptic, segments
