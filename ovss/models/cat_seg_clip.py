"""CAT-Seg's dense forward of CLIP's image encoder, run on an open_clip ViT.

CAT-Seg (cvlab-kaist/CAT-Seg @ 6d3a188) vendors OpenAI's CLIP with a ``dense`` path
(``cat_seg/third_party/model_vpt.py``, cited as ``model_vpt.py:<line>``): the position embedding is
resized to the patch grid with a bicubic resize to a target size, blocks 0..L-2 run unchanged, and
the last block keeps only its value path plus the CLS token of its input (no attention) before the
MLP; every token then goes through ``ln_post`` and ``proj``. The outputs of two intermediate blocks
are taken by forward hooks (``cat_seg_model.py:84-87``) as decoder guidance. open_clip's
``VisionTransformer`` holds the same modules under the same names (OpenAI layout), so the
functions below run on it directly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def resized_pos_embed(pos: torch.Tensor, side: int) -> torch.Tensor:
    """The position embedding on a ``side x side`` grid (``VisualTransformer.resized_pos_embed``,
    ``model_vpt.py:306-319``): the CLS row kept, the square grid resized with
    ``F.interpolate(size=(side, side), mode="bicubic", align_corners=False)`` (a target size, not
    a scale factor).

    Args:
        pos: (1 + g*g, D) position embedding.
        side: target grid side.

    Returns:
        (1 + side*side, D).
    """
    n, d = pos.shape
    g = int(round((n - 1) ** 0.5))
    if g * g != n - 1:
        raise ValueError(f"position embedding of {n - 1} patch positions is not a square grid")
    if g == side:
        return pos
    grid = pos[1:].reshape(1, g, g, d).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(side, side), mode="bicubic", align_corners=False)
    return torch.cat([pos[:1], grid.squeeze(0).reshape(d, -1).T], dim=0)


def dense_last_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """CAT-Seg's last-block dense path (``ResidualAttentionBlock.forward_dense``, ``model_vpt.py:210-231``):
    ``v = out_proj(W_v ln_1(x) + b_v) + x[CLS]``, then ``v + mlp(ln_2(v))``.

    The official code projects q, k and v and passes all three through ``out_proj``; only v is
    used, so only v is computed here. The CLS token of the block input is added to every token.

    Args:
        block: an open_clip ``ResidualAttentionBlock`` (``nn.MultiheadAttention`` with a packed
            ``in_proj_weight``, or split by :func:`split_qkv`).
        x: (B, 1+N, D) block input, CLS first.

    Returns:
        (B, 1+N, D).
    """
    attn: nn.MultiheadAttention = block.attn
    d = x.shape[-1]
    y = block.ln_1(x)
    if attn.in_proj_weight is not None:  # open_clip's packed weights
        v = F.linear(y, attn.in_proj_weight[2 * d:], attn.in_proj_bias[2 * d:])
    else:
        # split q/k/v (training, split_qkv): all three projected as forward_dense does (model_vpt.py:212-216),
        # so the unused q and k weights stay in the graph with the official zero gradient (and DDP sees them)
        w = torch.cat([attn.q_proj_weight, attn.k_proj_weight, attn.v_proj_weight], 0)
        v = F.linear(y, w, attn.in_proj_bias)[..., 2 * d:]
    v = F.linear(v, attn.out_proj.weight, attn.out_proj.bias) + x[:, :1]
    return v + block.mlp(block.ln_2(v))


def encode_image_dense(visual: nn.Module, images: torch.Tensor, hook_layers: tuple[int, ...]
                       ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``clip_model.encode_image(images, dense=True)`` with the hooked block outputs
    (``VisualTransformer.forward``, ``model_vpt.py:279-304``; hooks ``cat_seg_model.py:84-87``).

    Args:
        visual: an open_clip ``VisionTransformer`` of the OpenAI layout.
        images: (B, 3, R, R) CLIP-normalised square images.
        hook_layers: indices of the blocks whose outputs are returned (raw residual stream); the
            last block is not hookable (the official dense path bypasses its hooks).

    Returns:
        (B, 1+N, E) projected tokens (CLS first; every token through ``ln_post`` and ``proj``), and
        one (B, 1+N, D) tensor per hooked block, in ``hook_layers`` order.

    Raises:
        ValueError: a hook on the last block or beyond.
    """
    blocks = visual.transformer.resblocks
    if any(i >= len(blocks) - 1 or i < 0 for i in hook_layers):
        raise ValueError(f"guidance blocks {tuple(hook_layers)} must lie before the last of {len(blocks)} blocks")
    x = visual.conv1(images)
    b, d = x.shape[:2]
    x = x.reshape(b, d, -1).permute(0, 2, 1)
    cls = visual.class_embedding.to(x.dtype) + torch.zeros(b, 1, d, dtype=x.dtype, device=x.device)
    x = torch.cat([cls, x], dim=1)
    pos = visual.positional_embedding
    if x.shape[1] != pos.shape[0]:  # model_vpt.py:285-288
        pos = resized_pos_embed(pos, int((x.shape[1] - 1) ** 0.5))
    x = visual.ln_pre(x + pos.to(x.dtype))
    batch_first = getattr(visual.transformer, "batch_first", True)
    hooked: dict[int, torch.Tensor] = {}
    for i, blk in enumerate(blocks[:-1]):
        x = blk(x) if batch_first else blk(x.transpose(0, 1)).transpose(0, 1)
        if i in hook_layers:
            hooked[i] = x
    x = dense_last_block(blocks[-1], x)
    x = visual.ln_post(x) @ visual.proj
    return x, [hooked[i] for i in hook_layers]


def split_qkv(model: nn.Module) -> int:
    """Give every ``nn.MultiheadAttention`` in ``model`` separate ``q_proj_weight`` /
    ``k_proj_weight`` / ``v_proj_weight`` parameters in place of the packed ``in_proj_weight``, as
    the official vendored CLIP's ``Attention`` does (``model_vpt.py:168-177``), so that the query and
    value projections can train while the keys stay frozen (``CLIP_FINETUNE attention``,
    ``cat_seg_model.py:57-75``) and the state dict has the official names. ``in_proj_bias`` stays
    packed. torch's ``multi_head_attention_forward`` then projects with the three matrices
    (``use_separate_proj_weight``), as the official code runs.

    Returns:
        the number of attention modules converted (already split ones are left as they are).
    """
    n = 0
    for m in model.modules():
        if isinstance(m, nn.MultiheadAttention) and m.in_proj_weight is not None:
            q, k, v = (nn.Parameter(w.detach().clone()) for w in m.in_proj_weight.chunk(3, dim=0))
            m._qkv_same_embed_dim = False
            m.q_proj_weight, m.k_proj_weight, m.v_proj_weight = q, k, v
            m.in_proj_weight = None
            n += 1
    return n
