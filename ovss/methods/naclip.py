"""NACLIP: neighbourhood-aware k-k attention, reduced last block, PAMR.

Source: Hajimiri et al., "Pay Attention to Your Neighbours: Training-Free Open-Vocabulary
Semantic Segmentation", WACV 2025, Sec. 3 (Eq. 4-6); ``sinahmr/NACLIP``
``clip/model.py::VisionTransformer.custom_attn`` (``arch='reduced'``, ``attn_strategy='naclip'``):
``out_proj(softmax(k k^T s + G) v)`` with no residual and no FFN, where
``G[p, q] = exp(-|p - q|^2 / (2 σ^2))`` between patch-grid positions (σ = 5 patches; 0 in the
CLS row and column). PAMR (10 steps, dilations 8 and 16) refines the logits; the returned
scores are renormalised over classes (``naclip.py::postprocess_result`` at 0cac3a6).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.vit_dense import merge_heads, split_heads
from ..options import Positive
from ..protocols import NACLIP_PROTOCOLS
from .clip_dense import DenseCLIPSegmenter


def gaussian_neighbourhood(h: int, w: int, std: float) -> torch.Tensor:
    """(1+h*w, 1+h*w) additive attention bias: exp(-((i-k)^2 + (j-l)^2) / (2 std^2)) between
    patches (i, j) and (k, l) in raster order; 0 in the CLS row and column."""
    ii, jj = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    pos = torch.stack([ii.reshape(-1), jj.reshape(-1)], dim=1)
    d2 = ((pos[:, None, :] - pos[None, :, :]) ** 2).sum(-1)
    out = torch.zeros(h * w + 1, h * w + 1)
    out[1:, 1:] = torch.exp(-d2 / (2 * std ** 2))
    return out


class NACLIP(DenseCLIPSegmenter):
    """NACLIP (protocols: ``sinahmr/NACLIP`` ``configs/cfg_*.py``, PAMR on as in its README numbers).

    Args:
        gaussian_std: σ of the neighbourhood prior, in patches (paper: 5).
        **kwargs: see :class:`ovss.methods.clip_dense.DenseCLIPSegmenter`.
    """

    method = "naclip"
    protocols = NACLIP_PROTOCOLS
    renormalize = True
    whole_image_via_input = True

    def __init__(self, *args: Any, gaussian_std: Positive = 5.0, **kwargs: Any) -> None:
        self.gaussian_std = float(gaussian_std)
        self._bias: dict[tuple[int, int], torch.Tensor] = {}
        super().__init__(*args, **kwargs)

    def neighbourhood(self, grid: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
        if grid not in self._bias:
            self._bias[grid] = gaussian_neighbourhood(*grid, self.gaussian_std)
        return self._bias[grid].to(device=like.device, dtype=like.dtype)

    def last_block(self, block: nn.Module, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        _, k, v = split_heads(block, block.ln_1(x))
        # softmax(k k^T / sqrt(d) + G) v as one fused attention with G as its additive mask
        return merge_heads(block, F.scaled_dot_product_attention(k, k, v, attn_mask=self.neighbourhood(grid, k)))

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "gaussian_std": self.gaussian_std}
