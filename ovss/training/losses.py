"""Mask losses and matching costs shared by the MaskFormer (ZSSeg / ZegFormer) and Mask2Former
(FC-CLIP) trainers (MaskFormer / Mask2Former ``modeling/criterion.py`` and ``modeling/matcher.py``).

Masks are logits (N, P) against 0/1 targets (N, P) or (M, P); losses are summed over masks and
divided by ``num_masks`` (the number of target masks in the batch), costs are (N, M) matrices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dice_loss(inputs: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Dice loss ``1 - (2 |p t| + 1) / (|p| + |t| + 1)`` with ``p = sigmoid(inputs)``, per mask."""
    p = inputs.sigmoid().flatten(1)
    num = 2 * (p * targets).sum(-1)
    den = p.sum(-1) + targets.sum(-1)
    return (1 - (num + 1) / (den + 1)).sum() / num_masks


def sigmoid_ce_loss(inputs: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Binary cross-entropy on the logits, averaged over points, per mask (Mask2Former)."""
    return F.binary_cross_entropy_with_logits(inputs, targets, reduction="none").mean(1).sum() / num_masks


def sigmoid_focal_loss(inputs: torch.Tensor, targets: torch.Tensor, num_masks: float, alpha: float = 0.25,
                       gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss (torchvision ``sigmoid_focal_loss``) averaged over pixels, per mask (MaskFormer)."""
    from torchvision.ops import sigmoid_focal_loss as focal

    return focal(inputs, targets, alpha=alpha, gamma=gamma, reduction="none").mean(1).sum() / num_masks


def batch_dice_cost(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N, M) Dice cost between every predicted mask (logits, N x P) and target (M x P)."""
    p = inputs.sigmoid().flatten(1)
    num = 2 * torch.einsum("nc,mc->nm", p, targets)
    den = p.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (num + 1) / (den + 1)


def batch_sigmoid_ce_cost(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N, M) mean binary cross-entropy between every predicted mask and target (Mask2Former)."""
    hw = inputs.shape[1]
    pos = F.binary_cross_entropy_with_logits(inputs, torch.ones_like(inputs), reduction="none")
    neg = F.binary_cross_entropy_with_logits(inputs, torch.zeros_like(inputs), reduction="none")
    return (torch.einsum("nc,mc->nm", pos, targets) + torch.einsum("nc,mc->nm", neg, 1 - targets)) / hw


def batch_sigmoid_focal_cost(inputs: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
                             gamma: float = 2.0) -> torch.Tensor:
    """(N, M) mean sigmoid focal cost between every predicted mask and target (MaskFormer)."""
    hw = inputs.shape[1]
    p = inputs.sigmoid()
    pos = ((1 - p) ** gamma) * F.binary_cross_entropy_with_logits(inputs, torch.ones_like(inputs), reduction="none")
    neg = (p ** gamma) * F.binary_cross_entropy_with_logits(inputs, torch.zeros_like(inputs), reduction="none")
    return (alpha * pos @ targets.t() + (1 - alpha) * neg @ (1 - targets).t()) / hw
