"""Multi-scale deformable attention (Deformable DETR, Zhu et al., ICLR 2021) in plain PyTorch.

The sampling is bilinear ``grid_sample`` per level and head, exactly the pure-PyTorch path of
the official op (``ms_deform_attn_core_pytorch`` in Mask2Former / FC-CLIP
``pixel_decoder/ops/functions/ms_deform_attn_func.py``), which is also what the official module
falls back to on CPU. It runs anywhere and is differentiable; a fused CUDA kernel may replace it
later without changing the results beyond float rounding.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def ms_deform_attn_core(value: torch.Tensor, spatial_shapes: Sequence[tuple[int, int]],
                        sampling_locations: torch.Tensor, attention_weights: torch.Tensor) -> torch.Tensor:
    """Attention-weighted sum of bilinear samples over levels and points.

    Args:
        value: (N, S, M, Dh) values of all levels concatenated (S = sum H_l W_l, M heads).
        spatial_shapes: L pairs (H_l, W_l), in the order of the concatenation.
        sampling_locations: (N, Lq, M, L, P, 2) normalised (x, y) in [0, 1] (0 = left/top edge
            of the first pixel, 1 = right/bottom edge of the last); outside samples read zeros.
        attention_weights: (N, Lq, M, L, P), softmax-normalised over L * P per head.

    Returns:
        (N, Lq, M * Dh), heads concatenated.
    """
    n, _, m, d = value.shape
    _, lq, _, nl, npt, _ = sampling_locations.shape
    values = value.split([int(h) * int(w) for h, w in spatial_shapes], dim=1)
    grids = 2 * sampling_locations - 1
    sampled = []
    for lvl, (h, w) in enumerate(spatial_shapes):
        v = values[lvl].flatten(2).transpose(1, 2).reshape(n * m, d, int(h), int(w))
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)  # (N*M, Lq, P, 2)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    weights = attention_weights.transpose(1, 2).reshape(n * m, 1, lq, nl * npt)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1).view(n, m * d, lq)
    return out.transpose(1, 2).contiguous()


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention module (parameter names of the official module).

    Args:
        d_model: channels C.
        n_levels: number of feature levels L.
        n_heads: heads M (C must be divisible by M).
        n_points: sampling points P per head and level.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} must be divisible by n_heads {n_heads}")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR init: zero offset weights, offsets biased to a ring of points per head."""
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.n_heads, 1, 1, 2)
        grid = grid.repeat(1, self.n_levels, self.n_points, 1)
        for i in range(self.n_points):
            grid[:, :, i, :] *= i + 1
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, input_flatten: torch.Tensor,
                spatial_shapes: Sequence[tuple[int, int]],
                padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            query: (N, Lq, C) queries (features + position embedding).
            reference_points: (N, Lq, L, 2) normalised (x, y) per level.
            input_flatten: (N, S, C) values of all levels, concatenated row-major per level.
            spatial_shapes: L pairs (H_l, W_l).
            padding_mask: optional (N, S) bool, True where the value is padding (zeroed).

        Returns:
            (N, Lq, C).
        """
        n, lq, _ = query.shape
        _, s, _ = input_flatten.shape
        if sum(int(h) * int(w) for h, w in spatial_shapes) != s:
            raise ValueError("spatial_shapes do not match the number of value tokens")
        value = self.value_proj(input_flatten)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)
        value = value.view(n, s, self.n_heads, self.d_model // self.n_heads)
        offsets = self.sampling_offsets(query).view(n, lq, self.n_heads, self.n_levels, self.n_points, 2)
        weights = self.attention_weights(query).view(n, lq, self.n_heads, self.n_levels * self.n_points)
        weights = F.softmax(weights, -1).view(n, lq, self.n_heads, self.n_levels, self.n_points)
        shapes = torch.as_tensor([[int(h), int(w)] for h, w in spatial_shapes], dtype=torch.long,
                                 device=query.device)
        normalizer = torch.stack([shapes[..., 1], shapes[..., 0]], -1)  # (W, H) per level
        locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        return self.output_proj(ms_deform_attn_core(value, spatial_shapes, locations, weights))
