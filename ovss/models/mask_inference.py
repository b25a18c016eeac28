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
    """Instance predictions of one image, in descending class-score order.

    Several instances of one query (one per class among its top-k pairs) share its mask, so the
    masks are stored once per query: instance ``i``'s mask is ``query_masks[mask_index[i]]``
    (:attr:`masks` gives the (N, H, W) stack).

    Attributes:
        query_masks: (U, H, W) bool binary masks (mask logit > 0) of the U distinct queries used.
        mask_index: (N,) int64 row of ``query_masks`` of each instance.
        scores: (N,) float32 detection scores: class probability x mean mask probability.
        labels: (N,) int64 class indices (into the segmenter's classes).
        query: (N,) int64 the query each instance comes from.
    """

    query_masks: torch.Tensor
    mask_index: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    query: torch.Tensor

    @classmethod
    def from_masks(cls, masks: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                   query: torch.Tensor | None = None) -> "Instances":
        """Instances from an (N, H, W) mask stack (one stored mask per instance)."""
        n = int(scores.shape[0])
        idx = torch.arange(n, device=scores.device)
        return cls(masks.bool(), idx, scores, labels.long(), idx if query is None else query.long())

    @property
    def masks(self) -> torch.Tensor:
        """(N, H, W) bool: every instance's mask (a gathered copy)."""
        return self.query_masks[self.mask_index]

    def mask(self, i: int) -> torch.Tensor:
        """(H, W) bool mask of instance ``i`` (a view)."""
        return self.query_masks[int(self.mask_index[i])]

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Per instance: ``{"label": int, "score": float, "mask": (H, W) bool tensor, "query": int}``."""
        for i in range(len(self)):
            yield {"label": int(self.labels[i]), "score": float(self.scores[i]), "mask": self.mask(i),
                   "query": int(self.query[i])}

    def to(self, device: str | torch.device) -> "Instances":
        """The same instances on ``device``."""
        return Instances(*(t.to(device) for t in (self.query_masks, self.mask_index, self.scores, self.labels,
                                                  self.query)))


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
    call would raise. Masks and mask scores are computed once per query used (the official
    code gathers an (N, H, W) float copy first; the per-row arithmetic is the same).

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
    used, mask_index = torch.unique(query, return_inverse=True)
    logits = mask_pred[used]
    binary = logits > 0
    flat_bin = binary.flatten(1).to(mask_pred.dtype)
    mask_scores = (logits.sigmoid().flatten(1) * flat_bin).sum(1) / (flat_bin.sum(1) + 1e-6)
    return Instances(query_masks=binary, mask_index=mask_index.long(), scores=top_scores * mask_scores[mask_index],
                     labels=labels.long(), query=query.long())
