"""Vanilla CLIP dense baseline: CLIP's patch tokens, unmodified.

Source: Radford et al., ICML 2021 (CLIP); the dense baseline as run by ClearCLIP (Lan et al.,
ECCV 2024, Table 1) in ``mc-lan/ClearCLIP`` ``open_clip/transformer.py::VisionTransformer.forward``
with ``model_type='vanilla'``: ``ignore_residual=False`` is the unmodified block (the default
here), ``ignore_residual=True`` keeps only the attention branch (ClearCLIP's ablation).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.vit_dense import merge_heads, residual_ffn, split_heads
from ..protocols import VANILLA_PROTOCOLS
from .clip_dense import DenseCLIPSegmenter


def qk_attention(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Standard attention branch ``out_proj(softmax(q k^T / sqrt(d)) v)`` of ``ln_1(x)``, (B, T, D)."""
    q, k, v = split_heads(block, block.ln_1(x))
    return merge_heads(block, F.scaled_dot_product_attention(q, k, v))


class VanillaCLIP(DenseCLIPSegmenter):
    """Unmodified CLIP patch tokens (``residual=True``, default) or the attention branch of the
    last block alone (``residual=False``: no residual, no FFN). Protocol: ClearCLIP's.

    Args:
        residual: keep the last block's residual connection and FFN.
        **kwargs: see :class:`ovss.methods.clip_dense.DenseCLIPSegmenter`.
    """

    method = "vanilla"
    protocols = VANILLA_PROTOCOLS

    def __init__(self, *args: Any, residual: bool = True, **kwargs: Any) -> None:
        self.residual = residual
        super().__init__(*args, **kwargs)

    def last_block(self, block: nn.Module, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        out = qk_attention(block, x)
        return residual_ffn(block, x, out) if self.residual else out

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "residual": self.residual}
