"""Mask-classification inference: from per-query class probabilities and mask logits to outputs.

Mask2Former-family models (FC-CLIP, and any model that predicts Q masks with a class
distribution each) turn their (Q, K + 1) class log-probabilities (void last) and (Q, H, W) mask
logits into semantic, panoptic and instance outputs with fixed arithmetic. This module holds
the instance rule; it imports nothing from ``ovss.methods``.

Source: Mask2Former (Cheng et al., CVPR 2022, Sec. 3.4 / appendix A.3), as FC-CLIP runs it:
bytedance/fc-clip ``fcclip/fcclip.py`` ``FCCLIP.instance_inference`` (lines 527-568 at commit
``2b0bbe2``), identical to facebookresearch/Mask2Former ``MaskFormer.instance_inference``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F

#: Detections kept per image: detectron2's ``TEST.DETECTIONS_PER_IMAGE`` default, the value of
#: every FC-CLIP / Mask2Former eval config (``test_topk_per_image``).
TOPK_PER_IMAGE = 100


@dataclass(frozen=True)
class Instances:
    """Instance predictions of one image, highest score first.

    Attributes:
        masks: (N, H, W) bool binary masks (mask logit > 0).
        scores: (N,) float32 detection scores: class probability x mean mask probability.
        labels: (N,) int64 class indices (into the segmenter's classes).
        query: (N,) int64 the query each instance comes from (a query may give several).
    """

    masks: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    query: torch.Tensor

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Per instance: ``{"label": int, "score": float, "mask": (H, W) bool tensor, "query": int}``."""
        for i in range(len(self)):
            yield {"label": int(self.labels[i]), "score": float(self.scores[i]), "mask": self.masks[i],
                   "query": int(self.query[i])}

    def to(self, device: str | torch.device) -> "Instances":
        """The same instances on ``device``."""
        return Instances(self.masks.to(device), self.scores.to(device), self.labels.to(device), self.query.to(device))


def instance_inference(mask_cls: torch.Tensor, mask_pred: torch.Tensor, *, things: Sequence[int] | None = None,
                       topk: int = TOPK_PER_IMAGE) -> Instances:
    """Mask2Former / FC-CLIP instance inference: the top-k (query, class) pairs as instances.

    Arithmetic of ``FCCLIP.instance_inference`` (fc-clip ``fcclip/fcclip.py`` lines 527-568):
    ``scores = softmax(mask_cls)[:, :-1]`` (the softmax includes void, which is then dropped);
    the ``topk`` largest of the Q x K (query, class) scores (flattened query-major, so index
    ``i`` is query ``i // K``, class ``i % K``); with ``things`` (the official panoptic
    configs: ``panoptic_on``) only pairs whose class is a thing are kept, *after* the top-k;
    binary mask ``mask_logit > 0``; mask score ``sum(sigmoid(m) * bin) / (sum(bin) + 1e-6)``;
    detection score = class score x mask score.

    Differences that do not change any detection: the official ``topk(..., sorted=False)``
    returns the k pairs in an unspecified order, here they are sorted by class score
    (descending; the set is the same); and ``topk`` is capped at Q x K where the official
    call would raise. The mask score is computed once per query and gathered (the official
    code gathers the masks first; the per-row arithmetic is the same).

    Args:
        mask_cls: (Q, K + 1) float class log-probabilities or logits, void last (a softmax is
            taken here, as the official code does on ``mask_cls_results``).
        mask_pred: (Q, H, W) float mask logits at the output size (after ``sem_seg_postprocess``).
        things: class indices kept (thing classes); None keeps every class (the official
            instance-only configs, whose classes are all things).
        topk: (query, class) pairs taken before the thing filter.

    Returns:
        :class:`Instances` (N <= topk) on ``mask_pred``'s device.

    Raises:
        ValueError: ``mask_cls`` and ``mask_pred`` disagree on Q, or ``topk`` < 1.
    """
    if mask_cls.dim() != 2 or mask_pred.dim() != 3 or mask_cls.shape[0] != mask_pred.shape[0]:
        raise ValueError(f"expected mask_cls (Q, K + 1) and mask_pred (Q, H, W) with the same Q, got "
                         f"{tuple(mask_cls.shape)} and {tuple(mask_pred.shape)}")
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    num_queries, num_classes = mask_cls.shape[0], mask_cls.shape[1] - 1
    scores = F.softmax(mask_cls, dim=-1)[:, :-1]
    k = min(topk, num_queries * num_classes)
    top_scores, top_idx = scores.flatten(0, 1).topk(k, sorted=True)
    labels = top_idx % num_classes
    query = torch.div(top_idx, num_classes, rounding_mode="floor")
    if things is not None:
        thing = torch.zeros(num_classes, dtype=torch.bool, device=labels.device)
        ids = torch.as_tensor([int(t) for t in things if 0 <= int(t) < num_classes], dtype=torch.long)
        thing[ids.to(labels.device)] = True
        keep = thing[labels]
        top_scores, labels, query = top_scores[keep], labels[keep], query[keep]
    binary = mask_pred > 0
    flat_bin = binary.flatten(1).to(mask_pred.dtype)
    mask_scores = (mask_pred.sigmoid().flatten(1) * flat_bin).sum(1) / (flat_bin.sum(1) + 1e-6)
    return Instances(masks=binary[query], scores=top_scores * mask_scores[query], labels=labels.long(),
                     query=query.long())
