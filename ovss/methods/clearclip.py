"""ClearCLIP: q-q attention with the residual and FFN of the last block removed.

Source: Lan et al., "ClearCLIP: Decomposing CLIP Representations for Dense Vision-Language
Inference", ECCV 2024, Sec. 4 (Eq. 7); ``mc-lan/ClearCLIP``
``open_clip/transformer.py::VisionTransformer.custom_attn`` with ``model_type='ClearCLIP'``,
``ignore_residual=True``: tokens = ``out_proj(softmax(q q^T s) v)``. Crops are zero-padded
(centred) to a multiple of the patch size (``clearclip_segmentor.py::compute_padsize``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.vit_dense import merge_heads, split_heads
from ..protocols import CLEARCLIP_PROTOCOLS
from .clip_dense import DenseCLIPSegmenter


class ClearCLIP(DenseCLIPSegmenter):
    """ClearCLIP (protocols: ``mc-lan/ClearCLIP`` ``configs/cfg_*.py``).

    Args: see :class:`ovss.methods.clip_dense.DenseCLIPSegmenter`.
    """

    method = "clearclip"
    protocols = CLEARCLIP_PROTOCOLS

    def last_block(self, block: nn.Module, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        q, _, v = split_heads(block, block.ln_1(x))
        return merge_heads(block, F.scaled_dot_product_attention(q, q, v))  # softmax(q q^T / sqrt(d)) v, fused
