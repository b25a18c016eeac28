"""MaskCLIP: the value-embedding path of CLIP's last block.

Source: Zhou et al., "Extract Free Dense Labels from CLIP", ECCV 2022, Sec. 3.2 (the query and
key embeddings are dropped; the value embedding goes through the output projection). The
default follows the protocol later papers report MaskCLIP under (ClearCLIP ``model_type=
'MaskCLIP'``, ``ignore_residual=True``: ``out_proj(v)`` of ``ln_1(x)``, no residual, no FFN);
``residual=True`` keeps the residual and FFN on the value path as the official
``chongzhou96/MaskCLIP`` ``mmseg/models/backbones/vit.py`` does (with OpenAI numerics, i.e.
without that fork's GELU / LayerNorm-eps differences).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..backbones.vit_dense import merge_heads, residual_ffn, split_heads
from ..protocols import MASKCLIP_PROTOCOLS
from .clip_dense import DenseCLIPSegmenter


class MaskCLIP(DenseCLIPSegmenter):
    """Value path ``out_proj(v)`` as the dense features.

    Args:
        residual: add the residual and FFN on the value path (official MaskCLIP repository);
            default False (ClearCLIP's MaskCLIP baseline, the fixture's).
        **kwargs: see :class:`ovss.methods.clip_dense.DenseCLIPSegmenter`.
    """

    method = "maskclip"
    protocols = MASKCLIP_PROTOCOLS

    def __init__(self, *args: Any, residual: bool = False, **kwargs: Any) -> None:
        self.residual = residual
        super().__init__(*args, **kwargs)

    def last_block(self, block: nn.Module, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        _, _, v = split_heads(block, block.ln_1(x))
        out = merge_heads(block, v)
        return residual_ffn(block, x, out) if self.residual else out

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "residual": self.residual}
