"""Dense (per-patch) forward of an open_clip ViT with a replaceable last block.

The training-free CLIP methods (MaskCLIP, SCLIP, ClearCLIP, NACLIP, ProxyCLIP) keep blocks
0..L-2 of CLIP's image encoder and change only the last block; its output tokens then go
through ``ln_post`` and ``proj``. This module runs the shared part and exposes the pieces the
methods recombine (q, k, v of the last block, its output projection), in batch-first layout
(B, 1+N, D) with the CLS token first.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelLoadError
from ..kernels import linear, linear_module

#: ``last_block(block, x, grid) -> tokens``: x (B, 1+N, D) input of the last block, grid (h, w).
LastBlock = Callable[[nn.Module, torch.Tensor, tuple[int, int]], torch.Tensor]


def check_dense_vit(visual: nn.Module, model_name: str) -> None:
    """Raise a clear error when ``visual`` is not an open_clip ViT these methods can run.

    Raises:
        ModelLoadError: a ResNet/ConvNeXt/timm tower, or attention blocks other than
            ``nn.MultiheadAttention`` (the layout of OpenAI CLIP and its open_clip ports).
    """
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if blocks is None or not hasattr(visual, "conv1") or not hasattr(visual, "positional_embedding"):
        raise ModelLoadError(f"{model_name} has no ViT image encoder of the CLIP layout; the dense CLIP "
                             "methods need a ViT (e.g. ViT-B-16, ViT-L-14)")
    if not isinstance(blocks[-1].attn, nn.MultiheadAttention):
        raise ModelLoadError(f"{model_name}'s ViT uses custom attention blocks, which the dense CLIP methods "
                             "do not support; use a CLIP-layout ViT (OpenAI, LAION, DataComp, MetaCLIP)")
    if getattr(visual, "attn_pool", None) is not None:
        raise ModelLoadError(f"{model_name} pools with attention (CoCa-style); use a plain CLIP ViT")


def interpolate_pos_embed(pos: torch.Tensor, grid0: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """Resize a ViT position embedding to a new patch grid, exactly as the official code does.

    Bicubic interpolation (align_corners=False) called with
    ``scale_factor=((h + 0.1) / h0, (w + 0.1) / w0)`` (the DINO "+0.1" trick), CLS embedding kept.
    A target-size call gives different numbers: the scale factor sets the sampling positions.
    Source: SCLIP ``clip/model.py::VisionTransformer.interpolate_pos_encoding`` (NACLIP, ClearCLIP,
    ProxyCLIP: the same); DINO ``vision_transformer.py::interpolate_pos_encoding``.

    Args:
        pos: (1 + h0*w0, D) position embedding, CLS first.
        grid0: (h0, w0) grid the embedding was trained on.
        grid: (h, w) target grid.

    Returns:
        (1 + h*w, D); ``pos`` itself when the grid is unchanged.
    """
    if tuple(grid) == tuple(grid0):
        return pos
    (h0, w0), (h, w) = grid0, grid
    dim = pos.shape[-1]
    patch = pos[1:].reshape(1, h0, w0, dim).permute(0, 3, 1, 2)
    patch = F.interpolate(patch, scale_factor=((h + 0.1) / h0, (w + 0.1) / w0), mode="bicubic")
    if patch.shape[-2:] != (h, w):  # float rounding of the scale factor; never seen for real sizes
        raise RuntimeError(f"position-embedding resize gave {tuple(patch.shape[-2:])}, expected {(h, w)}")
    return torch.cat([pos[:1], patch.permute(0, 2, 3, 1).reshape(h * w, dim)], dim=0)


def pretrained_grid(visual: nn.Module) -> tuple[int, int]:
    """(h0, w0) patch grid of the position embedding."""
    n = visual.positional_embedding.shape[0] - 1
    grid = getattr(visual, "grid_size", None)
    if grid is not None and grid[0] * grid[1] == n:
        return int(grid[0]), int(grid[1])
    g = int(round(math.sqrt(n)))
    return g, g


def patch_size(visual: nn.Module) -> tuple[int, int]:
    k = visual.conv1.kernel_size
    return int(k[0]), int(k[1])


def embed(visual: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Patch embedding + CLS + (resized) position embedding + ``ln_pre``.

    Args:
        images: (B, 3, H, W) normalised images; sides that are not multiples of the patch size
            lose their remainder in the patch convolution, as in the official code.

    Returns:
        tokens (B, 1+N, D) and the patch grid (h, w), N = h*w.
    """
    x = visual.conv1(images)
    b, d, h, w = x.shape
    x = x.reshape(b, d, h * w).permute(0, 2, 1)
    cls = visual.class_embedding.to(x.dtype) + torch.zeros(b, 1, d, dtype=x.dtype, device=x.device)
    x = torch.cat([cls, x], dim=1)
    x = x + interpolate_pos_embed(visual.positional_embedding, pretrained_grid(visual), (h, w)).to(x.dtype)
    return visual.ln_pre(x), (h, w)


def is_standard_block(block: nn.Module) -> bool:
    """True for an open_clip ``ResidualAttentionBlock`` with plain self-attention (one
    ``nn.MultiheadAttention`` with a packed input projection, no extra key/value biases, no
    cross-attention), which :func:`standard_block` runs."""
    attn = getattr(block, "attn", None)
    return (type(block).__name__ == "ResidualAttentionBlock" and not hasattr(block, "ln_1_kv")
            and isinstance(attn, nn.MultiheadAttention) and attn.in_proj_weight is not None
            and attn.bias_k is None and not attn.add_zero_attn and all(
                hasattr(block, n) for n in ("ln_1", "ln_2", "mlp", "ls_1", "ls_2")))


def standard_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """open_clip ``ResidualAttentionBlock.forward`` on batch-first tokens (B, T, D) without a mask,
    with the attention through ``F.scaled_dot_product_attention`` (a fused kernel: on a 2-core CPU
    ~15% faster than ``nn.MultiheadAttention``'s path for ViT-B/16 windows, equal up to float
    summation order, ~1e-7) and QuickGELU computed in place when no gradient is recorded (the same
    operations, one (B, T, 4D) buffer less)."""
    attn: nn.MultiheadAttention = block.attn
    b, t, d = x.shape
    heads = attn.num_heads
    qkv = linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).view(b, t, 3, heads, d // heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    a = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.dropout if attn.training else 0.0)
    x = x + block.ls_1(linear_module(attn.out_proj, a.transpose(1, 2).reshape(b, t, d)))
    return x + block.ls_2(mlp(block.mlp, block.ln_2(x)))


def mlp(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """An open_clip block's MLP (c_fc, act, c_proj). When autograd is off: the two products through
    :func:`ovss.kernels.linear`, and QuickGELU ``h * sigmoid(1.702 h)`` in place (the same values)."""
    act = getattr(module, "gelu", None)
    if (act is None or torch.is_grad_enabled() or not hasattr(module, "c_fc") or not hasattr(module, "c_proj")
            or len(list(module.children())) != 3):  # open_clip's scale_fc adds a LayerNorm before c_proj
        return module(x)
    h = linear_module(module.c_fc, x)
    h = h.mul_(torch.sigmoid(1.702 * h)) if type(act).__name__ == "QuickGELU" else act(h)
    return linear_module(module.c_proj, h)


def run_blocks(visual: nn.Module, x: torch.Tensor, blocks: list[nn.Module] | nn.ModuleList) -> torch.Tensor:
    """Run ``blocks`` on batch-first tokens (B, 1+N, D), whatever the transformer's layout
    (standard blocks through :func:`standard_block`)."""
    if not getattr(visual.transformer, "batch_first", True):
        x = x.transpose(0, 1)
        for blk in blocks:
            x = blk(x)
        return x.transpose(0, 1)
    for blk in blocks:
        x = standard_block(blk, x) if is_standard_block(blk) else blk(x)
    return x


def tokens_before_last(visual: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Tokens entering the last block: (B, 1+N, D), and the patch grid."""
    x, grid = embed(visual, images)
    return run_blocks(visual, x, visual.transformer.resblocks[:-1]), grid


def split_heads(block: nn.Module, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v of ``block.attn`` (with ``in_proj_bias``) for tokens y (B, T, D), each (B, heads, T, d)."""
    attn: nn.MultiheadAttention = block.attn
    b, t, d = y.shape
    heads = attn.num_heads
    q, k, v = linear(y, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    return tuple(z.reshape(b, t, heads, d // heads).transpose(1, 2) for z in (q, k, v))  # type: ignore[return-value]


def merge_heads(block: nn.Module, out: torch.Tensor) -> torch.Tensor:
    """(B, heads, T, d) attention output -> ``out_proj`` -> (B, T, D)."""
    b, h, t, d = out.shape
    return linear_module(block.attn.out_proj, out.transpose(1, 2).reshape(b, t, h * d))


def residual_ffn(block: nn.Module, x: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
    """The rest of a standard block: ``x + ls_1(attn_out)``, then ``+ ls_2(mlp(ln_2(.)))``."""
    ls_1 = getattr(block, "ls_1", nn.Identity())
    ls_2 = getattr(block, "ls_2", nn.Identity())
    x = x + ls_1(attn_out)
    return x + ls_2(mlp(block.mlp, block.ln_2(x)))


def dense_features(visual: nn.Module, images: torch.Tensor, last_block: LastBlock) -> torch.Tensor:
    """Projected, L2-normalised patch features of the modified ViT.

    Args:
        images: (B, 3, H, W) normalised images.
        last_block: the method's replacement of the last block.

    Returns:
        (B, E, h, w) unit-norm features on the patch grid (CLS dropped), E = CLIP embed dim.
    """
    x, grid = tokens_before_last(visual, images)
    x = last_block(visual.transformer.resblocks[-1], x, grid)
    x = visual.ln_post(x) @ visual.proj
    x = x[:, 1:]
    x = x / x.norm(dim=-1, keepdim=True)
    b, n, e = x.shape
    return x.transpose(1, 2).reshape(b, e, grid[0], grid[1])


def encode_image(visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """CLIP's image embedding, open_clip ``VisionTransformer.forward`` of a plain CLIP ViT (CLS token
    pooled, ``ln_post``, ``proj``) with the blocks through :func:`run_blocks` (fused attention, and
    oneDNN products at inference): the same arithmetic up to float summation order. Towers of another
    layout (attention pooling, average pooling, a ConvNeXt/ResNet) go through their own forward.

    Args:
        images: (B, 3, H, W) normalised images at the tower's input size.

    Returns:
        (B, E) unnormalised embeddings.
    """
    plain = (getattr(visual, "attn_pool", None) is None and getattr(visual, "pool_type", "tok") == "tok"
             and hasattr(visual, "conv1") and hasattr(visual, "transformer") and visual.proj is not None
             and not (visual.training and getattr(visual.patch_dropout, "prob", 0.0) > 0))
    if not plain:
        return visual(images)
    x, _ = embed(visual, images)
    x = run_blocks(visual, x, visual.transformer.resblocks)
    return visual.ln_post(x[:, 0]) @ visual.proj
