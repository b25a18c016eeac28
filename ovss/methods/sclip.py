"""SCLIP: correlative self-attention in CLIP's last block.

Source: Wang et al., "SCLIP: Rethinking Self-Attention for Dense Vision-Language Inference",
ECCV 2024, Sec. 3.2 (Eq. 5); ``wangf3014/SCLIP`` ``clip/model.py::VisionTransformer.custom_attn``
with ``csa=True``: attention ``softmax(q q^T s) + softmax(k k^T s)`` per head (s = d^-1/2, CLS
included); the block keeps its residual and FFN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.vit_dense import merge_heads, residual_ffn, split_heads
from ..protocols import SCLIP_PROTOCOLS
from .clip_dense import DenseCLIPSegmenter


class SCLIP(DenseCLIPSegmenter):
    """SCLIP (protocols: ``wangf3014/SCLIP`` ``configs/cfg_*.py``; VOC21 adds the area filter).

    Args: see :class:`ovss.methods.clip_dense.DenseCLIPSegmenter`.
    """

    method = "sclip"
    protocols = SCLIP_PROTOCOLS

    def last_block(self, block: nn.Module, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        q, k, v = split_heads(block, block.ln_1(x))
        # (softmax(q q^T s) + softmax(k k^T s)) v as two fused attentions (equal up to float
        # summation order; the official forms the sum of the maps first)
        out = F.scaled_dot_product_attention(q, q, v) + F.scaled_dot_product_attention(k, k, v)
        return residual_ffn(block, x, merge_heads(block, out))
