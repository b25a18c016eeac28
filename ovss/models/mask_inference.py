"""Mask-classification inference of the Mask2Former family: semantic scores, panoptic segments and
instances from per-query class log-probabilities and mask logits.

Source: Cheng et al., "Masked-attention Mask Transformer for Universal Image Segmentation" (Mask2Former),
CVPR 2022, Sec. 3.4 / Appendix; ``facebookresearch/Mask2Former`` ``mask2former/maskformer_model.py``
``semantic_inference`` / ``panoptic_inference`` / ``instance_inference``, which FC-CLIP keeps unchanged
(``bytedance/fc-clip`` ``fcclip/fcclip.py``; ``FCCLIP.instance_inference`` lines 527-568 at ``2b0bbe2``), and
detectron2 ``modeling/postprocessing.py::sem_seg_postprocess``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

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
