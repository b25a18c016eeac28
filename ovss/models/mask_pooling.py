"""Mask pooling: features averaged inside binary masks (FC-CLIP's in- and out-of-vocabulary branches).

Source: Yu et al., NeurIPS 2023 (FC-CLIP), Sec. 3.2; ``bytedance/fc-clip``
``fcclip/modeling/transformer_decoder/fcclip_transformer_decoder.py::MaskPooling``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mask_pool(x: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """Average features inside binary masks (``MaskPooling`` of the official decoder).

    Args:
        x: (B, C, H, W) features.
        mask_logits: (B, Q, h, w) mask logits, bilinearly resized to (H, W) when needed
            (align_corners False); binarised at > 0 without gradient.

    Returns:
        (B, Q, C): ``sum(x * m) / (sum(m) + 1e-8)``.
    """
    if mask_logits.shape[-2:] != x.shape[-2:]:
        mask_logits = F.interpolate(mask_logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
    with torch.no_grad():
        m = (mask_logits.detach() > 0).to(mask_logits.dtype)
        m = m / (m.sum(dim=(-1, -2), keepdim=True) + 1e-8)
    return torch.einsum("bchw,bqhw->bqc", x, m)
