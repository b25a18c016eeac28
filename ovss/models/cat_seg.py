"""CAT-Seg's cost aggregation network (Cho et al., CVPR 2024, "CAT-Seg: Cost Aggregation for
Open-Vocabulary Semantic Segmentation"), exact to the official ``cat_seg/modeling/transformer/model.py``
of cvlab-kaist/CAT-Seg at commit 6d3a188 (cited below as ``model.py:<line>``).

Given dense CLIP image embeddings (B, E, h, w) and class text embeddings (B, T, P, E) over P prompt
templates, the network builds the cost volume (cosine similarity per pixel, class and template,
paper Sec. 3.2, Eq. 1), embeds it with a 7x7 convolution, refines it with ``num_layers`` pairs of
spatial aggregation (two Swin blocks whose queries and keys see the projected CLIP features,
"embedding guidance", Sec. 3.3) and class aggregation (linear attention over the classes, keys and
queries guided by the projected text embeddings, Sec. 3.3), and upsamples it with two
transposed-convolution stages guided by intermediate CLIP features (Sec. 3.4) to one logit per class
at 4x the CLIP grid.

Module and parameter names are those of the official ``Aggregator`` (the checkpoint's
``sem_seg_head.predictor.transformer.*``), so a released checkpoint loads key for key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from timm.models.swin_transformer import window_partition, window_reverse
from torch import nn


@dataclass(frozen=True)
class CATSegConfig:
    """Sizes of a CAT-Seg network (the ``MODEL.SEM_SEG_HEAD.*`` keys of the official config).

    Attributes:
        text_guidance_dim: [TEXT_GUIDANCE_DIM] CLIP embedding dim E of the text guidance (512 for
            ViT-B/16, 768 for ViT-L/14).
        text_guidance_proj_dim: [TEXT_GUIDANCE_PROJ_DIM] projected text guidance channels.
        appearance_guidance_dim: [APPEARANCE_GUIDANCE_DIM] CLIP embedding dim E of the image features.
        appearance_guidance_proj_dim: [APPEARANCE_GUIDANCE_PROJ_DIM] projected appearance guidance.
        decoder_dims: [DECODER_DIMS] output channels of the two upsampling stages.
        decoder_guidance_dims: [DECODER_GUIDANCE_DIMS] channels of the two decoder guidance maps
            (fixed by ``upsample1`` / ``upsample2``: 256, 128).
        decoder_guidance_proj_dims: [DECODER_GUIDANCE_PROJ_DIMS] projected decoder guidance.
        num_layers: [NUM_LAYERS] aggregation layers (spatial + class each).
        num_heads: [NUM_HEADS] attention heads of both aggregations.
        hidden_dim: [HIDDEN_DIMS] channels of the embedded cost volume.
        pooling_size: [POOLING_SIZES] average pooling before the class aggregation ((1, 1) at test
            time in the official ``eval.sh``; (2, 2) in training).
        feature_resolution: [FEATURE_RESOLUTION] (h, w) CLIP patch grid (24, 24).
        window_size: [WINDOW_SIZES] Swin window side.
        attention_type: [ATTENTION_TYPE] "linear" (released models) or "full" (softmax).
        prompt_channel: number of prompt templates P (1 for ``PROMPT_ENSEMBLE_TYPE single``).
        pad_len: classes per class-aggregation sequence (``Aggregator(pad_len=256)``, not a config
            key): fewer classes are padded with learned tokens, more are cut to the 256 with the
            highest cost (the rest get logit -100).
    """

    text_guidance_dim: int = 512
    text_guidance_proj_dim: int = 128
    appearance_guidance_dim: int = 512
    appearance_guidance_proj_dim: int = 128
    decoder_dims: tuple[int, int] = (64, 32)
    decoder_guidance_dims: tuple[int, int] = (256, 128)
    decoder_guidance_proj_dims: tuple[int, int] = (32, 16)
    num_layers: int = 2
    num_heads: int = 4
    hidden_dim: int = 128
    pooling_size: tuple[int, int] = (1, 1)
    feature_resolution: tuple[int, int] = (24, 24)
    window_size: int = 12
    attention_type: str = "linear"
    prompt_channel: int = 1
    pad_len: int = 256


# --------------------------------------------------------------------------- spatial aggregation
def shifted_window_mask(resolution: tuple[int, int], window: int, shift: int) -> torch.Tensor:
    """Swin's attention mask for shifted windows (``model.py:161-179``; Liu et al., ICCV 2021, Sec. 3.2).

    Returns:
        float32 (num_windows, window**2, window**2): 0 between tokens of the same region of the
        rolled map, -100 otherwise (regions ``[0, H - window)``, ``[H - window, H - shift)``,
        ``[H - shift, H)`` per axis).
    """
    h, w = resolution
    img = torch.zeros(1, h, w, 1)
    cnt = 0
    for hs in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
        for ws in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            img[:, hs, ws, :] = cnt
            cnt += 1
    win = window_partition(img, (window, window)).view(-1, window * window)
    mask = win.unsqueeze(1) - win.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


class GuidedWindowAttention(nn.Module):
    """Window self-attention whose queries and keys also see the appearance guidance
    (``WindowAttention``, ``model.py:51-114``): ``q = Wq [x, g]``, ``k = Wk [x, g]``,
    ``v = Wv x``; no relative position bias.

    Args:
        dim: channels of the cost embedding x.
        guidance_dim: channels of the guidance g concatenated to x (0: none).
        num_heads: attention heads (head dim = dim // num_heads).
    """

    def __init__(self, *, dim: int, guidance_dim: int, num_heads: int) -> None:
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim ** -0.5
        self.q = nn.Linear(dim + guidance_dim, head_dim * num_heads)
        self.k = nn.Linear(dim + guidance_dim, head_dim * num_heads)
        self.v = nn.Linear(dim, head_dim * num_heads)
        self.proj = nn.Linear(head_dim * num_heads, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The official computation on windows of ``[x, g]`` (``model.py:86-114``).

        Args:
            x: (num_windows * B, N, dim + guidance_dim) windows of the cost embedding with the
                guidance concatenated.
            mask: (num_windows, N, N) additive mask or None.

        Returns:
            (num_windows * B, N, dim).
        """
        b, n, _ = x.shape
        q = self.q(x).reshape(b, n, self.num_heads, -1).permute(0, 2, 1, 3)
        k = self.k(x).reshape(b, n, self.num_heads, -1).permute(0, 2, 1, 3)
        v = self.v(x[:, :, : self.dim]).reshape(b, n, self.num_heads, -1).permute(0, 2, 1, 3)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(b // nw, nw, self.num_heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, n, n)
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, -1))

    def project(self, x: torch.Tensor, guidance: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-token q, k, v of a cost map and its guidance, without repeating the guidance.

        ``Wq [x, g] + b = Wq_x x + (Wq_g g + b)``: the guidance term depends on the view only, so
        it is computed once per view and broadcast over the T classes (the official code
        concatenates the repeated guidance to every class's map; same values up to float
        summation order).

        Args:
            x: (B*T, ..., dim) normalised cost embedding (any token layout).
            guidance: (B, ..., guidance_dim) or None; same token layout.

        Returns:
            q, k, v, each (B*T, ..., heads * head_dim).
        """
        v = self.v(x)
        if guidance is None:
            return self.q(x), self.k(x), v
        d, b = self.dim, guidance.shape[0]
        t = x.shape[0] // b
        out = []
        for lin in (self.q, self.k):
            xs = F.linear(x, lin.weight[:, :d])
            gs = F.linear(guidance, lin.weight[:, d:], lin.bias)
            out.append((xs.view(b, t, *xs.shape[1:]) + gs.unsqueeze(1)).view(xs.shape))
        return out[0], out[1], v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Softmax attention within windows, then ``proj``.

        Args:
            q, k, v: (num_windows * B, N, heads * head_dim) windowed projections.
            mask: (num_windows, N, N) additive mask or None.

        Returns:
            (num_windows * B, N, dim).
        """
        b, n, _ = q.shape
        q, k, v = (z.view(b, n, self.num_heads, -1).transpose(1, 2) for z in (q, k, v))
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        else:
            nw = mask.shape[0]
            shape = (b // nw, nw, self.num_heads, n, -1)
            q, k, v = (z.reshape(shape) for z in (q, k, v))
            out = torch.stack([F.scaled_dot_product_attention(q[:, i], k[:, i], v[:, i], attn_mask=mask[i],
                                                              scale=self.scale) for i in range(nw)], dim=1)
            out = out.view(b, self.num_heads, n, -1)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class GuidedSwinBlock(nn.Module):
    """A Swin block with appearance guidance (``SwinTransformerBlock``, ``model.py:117-225``):
    ``x + WMSA([LN(x), g])`` then ``+ MLP(LN(.))`` (GELU, ratio 4, timm ``Mlp``).

    Args:
        dim: channels of the cost embedding.
        guidance_dim: appearance guidance channels.
        resolution: (H, W) token grid.
        num_heads: attention heads.
        window_size: window side; the whole grid when it is not smaller.
        shift_size: cyclic shift (0: plain windows; ``window_size // 2`` in the second block).
    """

    def __init__(self, *, dim: int, guidance_dim: int, resolution: tuple[int, int], num_heads: int,
                 window_size: int, shift_size: int) -> None:
        super().__init__()
        self.resolution = tuple(resolution)
        self.window_size = window_size
        self.shift_size = shift_size
        if min(self.resolution) <= self.window_size:  # model.py:146-149
            self.shift_size = 0
            self.window_size = min(self.resolution)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = GuidedWindowAttention(dim=dim, guidance_dim=guidance_dim, num_heads=num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * 4.0), act_layer=nn.GELU)
        mask = (shifted_window_mask(self.resolution, self.window_size, self.shift_size)
                if self.shift_size > 0 else None)
        self.register_buffer("attn_mask", mask)  # persistent, as in the official checkpoints

    def forward(self, x: torch.Tensor, guidance: torch.Tensor | None) -> torch.Tensor:
        """One block (``model.py:185-225``).

        Args:
            x: (B*T, H*W, dim) cost embedding, classes of one view consecutive.
            guidance: (B, H*W, guidance_dim) normalised appearance guidance of the B views (shared
                by their T classes), or None.

        Returns:
            (B*T, H*W, dim).

        The projections are computed per token before the cyclic shift and the window partition
        (the official code projects inside the windows: the same per-token values), the guidance
        term once per view (:meth:`GuidedWindowAttention.project`), and the window attention with
        ``F.scaled_dot_product_attention``.
        """
        h, w = self.resolution
        bt, length, c = x.shape
        if length != h * w:
            raise ValueError(f"input has {length} tokens, expected {h}x{w}")
        g = guidance.view(guidance.shape[0], h, w, -1) if guidance is not None else None
        q, k, v = self.attn.project(self.norm1(x).view(bt, h, w, c), g)
        s, ws = self.shift_size, self.window_size

        def windows(z: torch.Tensor) -> torch.Tensor:
            if s > 0:
                z = torch.roll(z, shifts=(-s, -s), dims=(1, 2))
            return window_partition(z, (ws, ws)).view(-1, ws * ws, z.shape[-1])

        out = self.attn.attend(windows(q), windows(k), windows(v), self.attn_mask)
        out = window_reverse(out.view(-1, ws, ws, c), (ws, ws), h, w)
        if s > 0:
            out = torch.roll(out, shifts=(s, s), dims=(1, 2))
        x = x + out.reshape(bt, h * w, c)
        return x + self.mlp(self.norm2(x))

    def forward_official(self, x: torch.Tensor, guidance: torch.Tensor | None) -> torch.Tensor:
        """The official block verbatim in its arithmetic (guidance repeated per class and
        concatenated before the shift): x (B, H*W, dim), guidance (B, H*W, guidance_dim) with the
        same B. For tests of :meth:`forward`."""
        h, w = self.resolution
        b, _, c = x.shape
        y = self.norm1(x).view(b, h, w, c)
        if guidance is not None:
            y = torch.cat([y, guidance.view(b, h, w, -1)], dim=-1)
        s, ws = self.shift_size, self.window_size
        if s > 0:
            y = torch.roll(y, shifts=(-s, -s), dims=(1, 2))
        out = self.attn(window_partition(y, (ws, ws)).view(-1, ws * ws, y.shape[-1]), mask=self.attn_mask)
        out = window_reverse(out.view(-1, ws, ws, c), (ws, ws), h, w)
        if s > 0:
            out = torch.roll(out, shifts=(s, s), dims=(1, 2))
        x = x + out.reshape(b, h * w, c)
        return x + self.mlp(self.norm2(x))


class SpatialAggregation(nn.Module):
    """Spatial aggregation: a plain and a shifted guided Swin block applied to every class's cost
    map (``SwinTransformerBlockWrapper``, ``model.py:228-253``); the appearance guidance is
    layer-normalised once (``guidance_norm``) and shared by both blocks.

    Args:
        dim: channels of the cost embedding.
        guidance_dim: appearance guidance channels.
        resolution: (H, W) token grid.
        num_heads: attention heads.
        window_size: Swin window side (shift = window_size // 2 in the second block).
    """

    def __init__(self, *, dim: int, guidance_dim: int, resolution: tuple[int, int], num_heads: int,
                 window_size: int) -> None:
        super().__init__()
        kw = dict(dim=dim, guidance_dim=guidance_dim, resolution=resolution, num_heads=num_heads,
                  window_size=window_size)
        self.block_1 = GuidedSwinBlock(**kw, shift_size=0)
        self.block_2 = GuidedSwinBlock(**kw, shift_size=window_size // 2)
        self.guidance_norm = nn.LayerNorm(guidance_dim) if guidance_dim > 0 else None

    def forward(self, x: torch.Tensor, guidance: torch.Tensor | None, chunk: int = 0) -> torch.Tensor:
        """Both blocks on every class's map.

        Args:
            x: (B, C, T, H, W) cost embedding.
            guidance: (B, Cg, H, W) appearance guidance, or None.
            chunk: run this many classes at a time (0: all); the blocks see each class's map on
                its own, so this bounds the memory without changing the values.

        Returns:
            (B, C, T, H, W).
        """
        b, c, t, h, w = x.shape
        if guidance is not None:
            # model.py:249 repeats the guidance over T before the LayerNorm; a LayerNorm per token
            # gives the same values, and the blocks broadcast it over the classes
            guidance = self.guidance_norm(guidance.flatten(2).transpose(1, 2))
        step = chunk if chunk > 0 else t
        out = torch.empty_like(x) if step < t else None
        for t0 in range(0, t, step):
            part = x[:, :, t0:t0 + step]
            tc = part.shape[2]
            y = part.permute(0, 2, 3, 4, 1).reshape(b * tc, h * w, c)
            y = self.block_2(self.block_1(y, guidance), guidance)
            y = y.reshape(b, tc, h, w, c).permute(0, 4, 1, 2, 3)
            if out is None:
                return y
            out[:, :, t0:t0 + step] = y
        return out


# --------------------------------------------------------------------------- class aggregation
@dataclass(frozen=True)
class SharedTokens:
    """``count`` identical extra key/value tokens every sequence attends to (the class
    aggregation's padding: one learned token, the same at every pixel and in every view).

    Attributes:
        k, v: (H, D) the token's key and value, per head.
        count: how many copies.
    """

    k: torch.Tensor
    v: torch.Tensor
    count: int


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-6,
                     shared: SharedTokens | None = None) -> torch.Tensor:
    """Linear attention of "Transformers are RNNs" (Katharopoulos et al., ICML 2020) with the
    feature map ``elu + 1`` (``LinearAttention``, ``model.py:256-286``: values divided by the
    sequence length S and the result multiplied back, the official fp16 guard).

    Args:
        q: (N, L, H, D) queries; k, v: (N, S0, H, D) keys and values.
        shared: tokens appended to every sequence's keys and values (S = S0 + count); their sums
            are ``count`` times one token's, so they are not materialised (the official code
            concatenates them: the same values up to float summation order).

    Returns:
        (N, L, H, D).
    """
    q = F.elu(q) + 1
    k = F.elu(k) + 1
    s = v.size(1) + (shared.count if shared is not None else 0)
    v = v / s
    kv = torch.einsum("nshd,nshv->nhdv", k, v)
    ksum = k.sum(dim=1)
    if shared is not None and shared.count:
        kp = F.elu(shared.k) + 1
        kv = kv + shared.count * torch.einsum("hd,hv->hdv", kp, shared.v / s)
        ksum = ksum + shared.count * kp
    z = 1 / (torch.einsum("nlhd,nhd->nlh", q, ksum) + eps)
    return torch.einsum("nlhd,nhdv,nlh->nlhv", q, kv, z) * s


def full_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   shared: SharedTokens | None = None) -> torch.Tensor:
    """Softmax attention (``FullAttention``, ``model.py:289-320``; ATTENTION_TYPE "full").

    Args:
        q: (N, L, H, D); k, v: (N, S0, H, D).
        shared: tokens appended to every sequence (see :func:`linear_attention`), each weighted
            ``count`` times in the softmax.

    Returns:
        (N, L, H, D).
    """
    scale = q.size(3) ** -0.5
    qk = torch.einsum("nlhd,nshd->nlsh", q, k) * scale
    if shared is None or not shared.count:
        return torch.einsum("nlsh,nshd->nlhd", torch.softmax(qk, dim=2), v)
    qp = torch.einsum("nlhd,hd->nlh", q, shared.k) * scale                  # (N, L, H)
    m = torch.maximum(qk.amax(dim=2), qp)
    w, wp = torch.exp(qk - m.unsqueeze(2)), torch.exp(qp - m)
    z = w.sum(dim=2) + shared.count * wp
    out = torch.einsum("nlsh,nshd->nlhd", w, v) + (shared.count * wp).unsqueeze(-1) * shared.v
    return out / z.unsqueeze(-1)


class ClassAttention(nn.Module):
    """Attention over the class axis with text guidance (``AttentionLayer``, ``model.py:323-354``):
    ``q = Wq [x, g]``, ``k = Wk [x, g]``, ``v = Wv x``; no output projection.

    Args:
        hidden_dim: channels of the cost embedding.
        guidance_dim: text guidance channels.
        num_heads: attention heads.
        attention_type: "linear" or "full".
    """

    def __init__(self, *, hidden_dim: int, guidance_dim: int, num_heads: int, attention_type: str) -> None:
        super().__init__()
        if attention_type not in ("linear", "full"):
            raise ValueError(f"attention_type must be 'linear' or 'full', got {attention_type!r}")
        self.nheads = num_heads
        self.attention_type = attention_type
        self.q = nn.Linear(hidden_dim + guidance_dim, hidden_dim)
        self.k = nn.Linear(hidden_dim + guidance_dim, hidden_dim)
        self.v = nn.Linear(hidden_dim, hidden_dim)

    def _qk(self, x: torch.Tensor, guidance: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        n, length, c = x.shape
        if guidance is None:
            return self.q(x), self.k(x)
        if guidance.shape[0] == n:
            xg = torch.cat([x, guidance], dim=-1)
            return self.q(xg), self.k(xg)
        b = guidance.shape[0]
        q, k = ((F.linear(x, lin.weight[:, :c]).view(b, n // b, length, -1)
                 + F.linear(guidance, lin.weight[:, c:], lin.bias).unsqueeze(1)).view(n, length, -1)
                for lin in (self.q, self.k))
        return q, k

    def forward(self, x: torch.Tensor, guidance: torch.Tensor | None,
                shared: tuple[torch.Tensor, torch.Tensor | None, int] | None = None) -> torch.Tensor:
        """Attention over each sequence of classes.

        Args:
            x: (N, L, C) one (normalised) sequence of L classes per pixel.
            guidance: (N, L, Cg) as in the official code, or (B, L, Cg) with N = B * r: the
                guidance of consecutive groups of r sequences (the pixels of one view share their
                text guidance), whose projection is then computed once per group
                (``Wq [x, g] + b = Wq_x x + (Wq_g g + b)``, the same values up to float
                summation order); or None.
            shared: (token (C,), its guidance (Cg,) or None, count): ``count`` copies of one more
                token appended to every sequence as keys and values only (the padding; its own
                outputs are never used).

        Returns:
            (N, L, C).
        """
        n, length, c = x.shape
        q, k = self._qk(x, guidance)
        q, k = q.view(n, length, self.nheads, -1), k.view(n, length, self.nheads, -1)
        v = self.v(x).view(n, length, self.nheads, -1)
        extra = None
        if shared is not None and shared[2] > 0:
            tok, g, count = shared
            tg = torch.cat([tok, g]) if g is not None and guidance is not None else tok
            extra = SharedTokens(self.k(tg).view(self.nheads, -1), self.v(tok).view(self.nheads, -1), int(count))
        attend = linear_attention if self.attention_type == "linear" else full_attention
        return attend(q, k, v, shared=extra).reshape(n, length, c)


class ClassAggregation(nn.Module):
    """Class aggregation (``ClassTransformerLayer``, ``model.py:357-424``): per pixel, the sequence
    of classes (padded to ``pad_len`` with a learned token) goes through a pre-LN transformer layer
    (guided class attention, then a ReLU MLP of ratio 4); the padding is dropped and the result
    is added to the layer input (so the input enters twice: ``x + (x + A + MLP)``).

    The padding token is the same at every pixel and in every view, and its own outputs are
    dropped: it enters the attention as ``pad_len - T`` shared keys and values
    (:class:`SharedTokens`) instead of being concatenated to every sequence.

    Args:
        hidden_dim: channels of the cost embedding.
        guidance_dim: text guidance channels.
        num_heads: attention heads.
        attention_type: "linear" or "full".
        pooling_size: (ph, pw) average pooling of the cost map before the attention, undone by a
            bilinear (align_corners=True) resize after it.
        pad_len: sequence length the classes are padded to (0: no padding).
    """

    def __init__(self, *, hidden_dim: int, guidance_dim: int, num_heads: int, attention_type: str,
                 pooling_size: tuple[int, int], pad_len: int) -> None:
        super().__init__()
        self.pooling_size = tuple(pooling_size)
        self.attention = ClassAttention(hidden_dim=hidden_dim, guidance_dim=guidance_dim, num_heads=num_heads,
                                        attention_type=attention_type)
        self.MLP = nn.Sequential(nn.Linear(hidden_dim, hidden_dim * 4), nn.ReLU(), nn.Linear(hidden_dim * 4, hidden_dim))
        self.norm1 = nn.LayerNorm(hidden_dim)
        self.norm2 = nn.LayerNorm(hidden_dim)
        self.pad_len = pad_len
        self.padding_tokens = nn.Parameter(torch.zeros(1, 1, hidden_dim)) if pad_len > 0 else None
        self.padding_guidance = (nn.Parameter(torch.zeros(1, 1, guidance_dim))
                                 if pad_len > 0 and guidance_dim > 0 else None)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.pooling_size == (1, 1):
            return x
        b, c, t, h, w = x.shape
        y = F.avg_pool2d(x.transpose(1, 2).reshape(b * t, c, h, w), self.pooling_size)
        return y.reshape(b, t, c, *y.shape[-2:]).transpose(1, 2)

    def _unpool(self, seq: torch.Tensor, b: int, hp: int, wp: int, h: int, w: int) -> torch.Tensor:
        """(B*hp*wp, T, C) -> bilinear (align_corners=True) back to (h, w) -> (B, C, T, h, w)."""
        t, c = seq.shape[1:]
        y = seq.reshape(b, hp, wp, t, c).permute(0, 3, 4, 1, 2).reshape(b * t, c, hp, wp)
        if self.pooling_size != (1, 1):  # an identity at (1, 1): same size, align_corners=True
            y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=True)
        return y.reshape(b, t, c, h, w).transpose(1, 2)

    def forward(self, x: torch.Tensor, guidance: torch.Tensor | None, per_view: bool = False) -> torch.Tensor:
        """The layer on every pixel's sequence of classes.

        Args:
            x: (B, C, T, H, W) cost embedding.
            guidance: (B, T, Cg) text guidance, or None.
            per_view: run one view at a time (each pixel's sequence is computed on its own: the
                same values, less memory).

        Returns:
            (B, C, T, H, W).
        """
        b, c, t, h, w = x.shape
        if per_view and b > 1:
            return torch.cat([self(x[i:i + 1], guidance[i:i + 1] if guidance is not None else None)
                              for i in range(b)])
        x_pool = self._pool(x)
        hp, wp = x_pool.shape[-2:]
        seq = x_pool.permute(0, 3, 4, 2, 1).reshape(b * hp * wp, t, c)
        shared = None
        if self.padding_tokens is not None and t < self.pad_len:
            g = self.padding_guidance.view(-1) if self.padding_guidance is not None else None
            shared = (self.norm1(self.padding_tokens.view(-1)), g, self.pad_len - t)
        # the guidance stays (B, T, Cg): ClassAttention broadcasts it over the pixels (model.py:410 repeats it)
        seq = seq + self.attention(self.norm1(seq), guidance, shared)
        seq = seq + self.MLP(self.norm2(seq))
        return x + self._unpool(seq, b, hp, wp, h, w)

    def forward_official(self, x: torch.Tensor, guidance: torch.Tensor | None) -> torch.Tensor:
        """``model.py:387-424`` verbatim in its arithmetic (padding concatenated to every sequence,
        guidance repeated per pixel), for tests of :meth:`forward`."""
        b, c, t, h, w = x.shape
        x_pool = self._pool(x)
        hp, wp = x_pool.shape[-2:]
        pad = self.pad_len - t if self.padding_tokens is not None and t < self.pad_len else 0
        if pad:
            x_pool = torch.cat([x_pool, self.padding_tokens.view(1, c, 1, 1, 1).expand(b, c, pad, hp, wp)], dim=2)
        seq = x_pool.permute(0, 3, 4, 2, 1).reshape(b * hp * wp, t + pad, c)
        if guidance is not None:
            if pad and self.padding_guidance is not None:
                guidance = torch.cat([guidance, self.padding_guidance.expand(b, pad, -1)], dim=1)
            guidance = guidance.repeat_interleave(hp * wp, dim=0)
        seq = seq + self.attention(self.norm1(seq), guidance)
        seq = seq + self.MLP(self.norm2(seq))
        return x + self._unpool(seq, b, hp, wp, h, w)[:, :, :t]


class AggregatorLayer(nn.Module):
    """One aggregation layer: spatial, then class aggregation (``model.py:482-495``).

    Args:
        hidden_dim: channels of the cost embedding.
        text_guidance_dim: projected text guidance channels.
        appearance_guidance_dim: projected appearance guidance channels.
        num_heads, resolution, pooling_size, window_size, attention_type, pad_len: see
            :class:`SpatialAggregation` and :class:`ClassAggregation`.
    """

    def __init__(self, *, hidden_dim: int, text_guidance_dim: int, appearance_guidance_dim: int, num_heads: int,
                 resolution: tuple[int, int], pooling_size: tuple[int, int], window_size: int,
                 attention_type: str, pad_len: int) -> None:
        super().__init__()
        self.swin_block = SpatialAggregation(dim=hidden_dim, guidance_dim=appearance_guidance_dim,
                                             resolution=resolution, num_heads=num_heads, window_size=window_size)
        self.attention = ClassAggregation(hidden_dim=hidden_dim, guidance_dim=text_guidance_dim, num_heads=num_heads,
                                          attention_type=attention_type, pooling_size=pooling_size, pad_len=pad_len)

    def forward(self, x: torch.Tensor, appearance_guidance: torch.Tensor | None,
                text_guidance: torch.Tensor | None) -> torch.Tensor:
        return self.attention(self.swin_block(x, appearance_guidance), text_guidance)


# --------------------------------------------------------------------------- upsampling decoder
class DoubleConv(nn.Module):
    """(3x3 conv, no bias -> GroupNorm(mid // 16) -> ReLU) x 2 (``model.py:520-537``; both norms
    take ``mid`` channels, as the official code, which requires mid == out).

    Args:
        in_channels, out_channels: channels in and out.
    """

    def __init__(self, *, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, mid, kernel_size=3, padding=1, bias=False),
            nn.GroupNorm(mid // 16, mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, kernel_size=3, padding=1, bias=False),
            nn.GroupNorm(mid // 16, mid),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class Up(nn.Module):
    """x2 upsampling with guidance (``model.py:540-555``): ConvTranspose2d(in -> in - guidance,
    k2 s2), concatenated with the guidance map (repeated over the classes), then :class:`DoubleConv`.

    Args:
        in_channels: channels in (also after the concatenation).
        out_channels: channels out.
        guidance_channels: channels of the guidance map.
    """

    def __init__(self, *, in_channels: int, out_channels: int, guidance_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels - guidance_channels, kernel_size=2, stride=2)
        self.conv = DoubleConv(in_channels=in_channels, out_channels=out_channels)

    def forward(self, x: torch.Tensor, guidance: torch.Tensor | None = None) -> torch.Tensor:
        """Upsample, concatenate the guidance, double conv.

        Args:
            x: (B*T, C, H, W), the classes of one view consecutive.
            guidance: (B, Cg, 2H, 2W) or None.

        Returns:
            (B*T, out, 2H, 2W).

        The first 3x3 convolution of ``[up(x), g]`` is computed as ``conv(up(x)) + conv(g)``
        (zero padding makes the two equal), ``conv(g)`` once per view and broadcast over the
        classes, instead of concatenating the repeated guidance (``model.py:549-555``); the
        same values up to float summation order.
        """
        x = self.up(x)
        conv0, rest = self.conv.double_conv[0], self.conv.double_conv[1:]
        if guidance is None:
            return rest(conv0(x))
        n, c = x.shape[:2]
        b = guidance.shape[0]
        y = F.conv2d(x, conv0.weight[:, :c], padding=1)
        gy = F.conv2d(guidance, conv0.weight[:, c:], padding=1)
        y = (y.view(b, n // b, *y.shape[1:]) + gy.unsqueeze(1)).view(y.shape)
        return rest(y)

    def forward_official(self, x: torch.Tensor, guidance: torch.Tensor | None = None) -> torch.Tensor:
        """``model.py:549-555`` verbatim in its arithmetic (for tests of :meth:`forward`)."""
        x = self.up(x)
        if guidance is not None:
            x = torch.cat([x, guidance.repeat_interleave(x.size(0) // guidance.size(0), dim=0)], dim=1)
        return self.conv(x)


# --------------------------------------------------------------------------- the aggregator
class Aggregator(nn.Module):
    """CAT-Seg's cost aggregation network (``Aggregator``, ``model.py:558-724``).

    Args:
        config: the sizes (:class:`CATSegConfig`).
    """

    def __init__(self, *, config: CATSegConfig) -> None:
        super().__init__()
        cfg = config
        self.config = cfg
        self.pad_len = cfg.pad_len
        self.layers = nn.ModuleList([
            AggregatorLayer(hidden_dim=cfg.hidden_dim, text_guidance_dim=cfg.text_guidance_proj_dim,
                            appearance_guidance_dim=cfg.appearance_guidance_proj_dim, num_heads=cfg.num_heads,
                            resolution=tuple(cfg.feature_resolution), pooling_size=tuple(cfg.pooling_size),
                            window_size=cfg.window_size, attention_type=cfg.attention_type, pad_len=cfg.pad_len)
            for _ in range(cfg.num_layers)])
        self.conv1 = nn.Conv2d(cfg.prompt_channel, cfg.hidden_dim, kernel_size=7, stride=1, padding=3)
        self.guidance_projection = nn.Sequential(
            nn.Conv2d(cfg.appearance_guidance_dim, cfg.appearance_guidance_proj_dim, kernel_size=3, stride=1,
                      padding=1), nn.ReLU()) if cfg.appearance_guidance_dim > 0 else None
        self.text_guidance_projection = nn.Sequential(
            nn.Linear(cfg.text_guidance_dim, cfg.text_guidance_proj_dim), nn.ReLU()
        ) if cfg.text_guidance_dim > 0 else None
        self.decoder_guidance_projection = nn.ModuleList([
            nn.Sequential(nn.Conv2d(d, dp, kernel_size=3, stride=1, padding=1), nn.ReLU())
            for d, dp in zip(cfg.decoder_guidance_dims, cfg.decoder_guidance_proj_dims)
        ]) if cfg.decoder_guidance_dims[0] > 0 else None
        self.decoder1 = Up(in_channels=cfg.hidden_dim, out_channels=cfg.decoder_dims[0],
                           guidance_channels=cfg.decoder_guidance_proj_dims[0])
        self.decoder2 = Up(in_channels=cfg.decoder_dims[0], out_channels=cfg.decoder_dims[1],
                           guidance_channels=cfg.decoder_guidance_proj_dims[1])
        self.head = nn.Conv2d(cfg.decoder_dims[1], 1, kernel_size=3, stride=1, padding=1)
        #: classes run through the Swin blocks and the decoder at a time, and the class aggregation
        #: one view at a time when > 0 (bounded memory, the same values); 0: all at once
        self.class_chunk = 16

    @staticmethod
    def correlation(img_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
        """Cost volume (``model.py:648-652``; paper Eq. 1).

        Args:
            img_feats: (B, E, H, W) dense image embeddings.
            text_feats: (B, T, P, E) text embeddings per class and template.

        Returns:
            (B, P, T, H, W) cosine similarities.
        """
        img = F.normalize(img_feats, dim=1)
        text = F.normalize(text_feats, dim=-1)
        return torch.einsum("bchw, btpc -> bpthw", img, text)

    def corr_embed(self, corr: torch.Tensor) -> torch.Tensor:
        """(B, P, T, H, W) -> ``conv1`` per (b, t) -> (B, C, T, H, W) (``model.py:654-659``)."""
        b, p, t, h, w = corr.shape
        x = self.conv1(corr.transpose(1, 2).reshape(b * t, p, h, w))
        return x.reshape(b, t, -1, h, w).transpose(1, 2)

    def conv_decoder(self, x: torch.Tensor, guidance: Sequence[torch.Tensor | None],
                     out: dict[str, Any] | None = None, chunk: int = 0) -> torch.Tensor:
        """(B, C, T, H, W) -> two guided x2 stages -> ``head`` -> (B, T, 4H, 4W) logits (``model.py:674-681``).

        Args:
            chunk: decode this many classes at a time (0: all); every class is decoded on its
                own, so this bounds the memory (the 4H x 4W feature maps) without changing the values.
            out: when a dict, ``decoder1`` / ``decoder2`` (B, T, C', 2H, 2W) / (B, T, C'', 4H, 4W) are kept.
        """
        b, c, t, h, w = x.shape
        step = chunk if chunk > 0 else t
        logits, dec1, dec2 = [], [], []
        for t0 in range(0, t, step):
            part = x[:, :, t0:t0 + step]
            tc = part.shape[2]
            y = self.decoder1(part.transpose(1, 2).reshape(b * tc, c, h, w), guidance[0])
            if out is not None:
                dec1.append(y.reshape(b, tc, *y.shape[1:]))
            y = self.decoder2(y, guidance[1])
            if out is not None:
                dec2.append(y.reshape(b, tc, *y.shape[1:]))
            y = self.head(y)
            logits.append(y.reshape(b, tc, *y.shape[-2:]))
        if out is not None:
            out["decoder1"], out["decoder2"] = torch.cat(dec1, dim=1), torch.cat(dec2, dim=1)
        return torch.cat(logits, dim=1)

    def forward(self, img_feats: torch.Tensor, text_feats: torch.Tensor, guidance: Sequence[torch.Tensor],
                out: dict[str, Any] | None = None) -> torch.Tensor:
        """Cost volume -> aggregation -> upsampling decoder (``model.py:683-724``).

        Args:
            img_feats: (B, E, H, W) dense CLIP image embeddings (``res3``).
            text_feats: (B, T, P, E) class text embeddings (L2-normalised per template).
            guidance: the appearance guidance (B, E, H, W) and the two decoder guidance maps
                (B, 256, 2H, 2W), (B, 128, 4H, 4W) (``res3``, ``res4``, ``res5``).
            out: when a dict, filled with the intermediates: ``corr`` (B, P, T', H, W),
                ``corr_embed``, ``appearance_guidance``, ``text_guidance`` (B, T', Ct),
                ``decoder_guidance`` (two maps), ``layers`` (per layer: ``swin``, ``class``
                outputs (B, C, T', H, W)), ``decoder1``, ``decoder2``, ``classes`` (the kept
                classes (B, pad_len) when T > pad_len, else None); T' = min(T, pad_len).

        Returns:
            (B, T, 4H, 4W) logits; classes cut by ``pad_len`` have logit -100.
        """
        classes = None
        corr = self.correlation(img_feats, text_feats)
        t_all = text_feats.size(1)
        if self.pad_len > 0 and t_all > self.pad_len:
            # keep the pad_len classes with the highest cost anywhere (model.py:693-701)
            best = corr.permute(0, 2, 1, 3, 4).flatten(-3).max(dim=-1)[0]
            classes = best.topk(self.pad_len, dim=-1, sorted=False)[1]
            text = F.normalize(text_feats, dim=-1)
            text_feats = torch.gather(text, 1, classes[..., None, None].expand(-1, -1, text.size(-2), text.size(-1)))
            corr = torch.einsum("bchw, btpc -> bpthw", F.normalize(img_feats, dim=1), text_feats)
        x = self.corr_embed(corr)
        app_guidance, text_guidance = None, None
        dec_guidance: list[torch.Tensor | None] = [None, None]
        if self.guidance_projection is not None:
            app_guidance = self.guidance_projection(guidance[0])
        if self.decoder_guidance_projection is not None:
            dec_guidance = [proj(g) for proj, g in zip(self.decoder_guidance_projection, guidance[1:])]
        if self.text_guidance_projection is not None:
            t = text_feats.mean(dim=-2)
            t = t / t.norm(dim=-1, keepdim=True)
            text_guidance = self.text_guidance_projection(t)
        if out is not None:
            out.update(corr=corr, corr_embed=x, appearance_guidance=app_guidance, text_guidance=text_guidance,
                       decoder_guidance=dec_guidance, classes=classes, layers=[])
        for layer in self.layers:
            x = layer.swin_block(x, app_guidance, self.class_chunk)
            if out is not None:
                out["layers"].append({"swin": x})
            x = layer.attention(x, text_guidance, per_view=self.class_chunk > 0)
            if out is not None:
                out["layers"][-1]["class"] = x
        logits = self.conv_decoder(x, dec_guidance, out, self.class_chunk)
        if classes is not None:
            full = logits.new_full((logits.size(0), t_all, *logits.shape[-2:]), -100.0)
            full.scatter_(1, classes[..., None, None].expand(-1, -1, *logits.shape[-2:]), logits)
            logits = full
        return logits


# --------------------------------------------------------------------------- the whole network
class CATSegNet(nn.Module):
    """CAT-Seg: CLIP (dense image path + text tower), the two guidance upsamplers and the
    aggregator (``CATSeg`` + ``CATSegHead`` + ``CATSegPredictor`` of ``cat_seg_model.py``,
    ``cat_seg_head.py``, ``cat_seg_predictor.py``).

    Args:
        clip: an open_clip CLIP of the OpenAI layout (its weights come from the CAT-Seg checkpoint).
        config: the aggregator sizes.
        clip_resolution: side of CLIP's square input (384 for ViT-B/16, 336 otherwise;
            ``cat_seg_model.py:78``).
        hook_layers: blocks whose outputs guide the decoder ([3, 7] for ViT-B/16, [7, 15]
            otherwise; ``cat_seg_model.py:84``).

    The upsamplers take CLIP's width (the official code hard-codes 768 / 1024, ``cat_seg_model.py:80-82``,
    which is the width of ViT-B/16 / ViT-L/14).
    """

    def __init__(self, *, clip: nn.Module, config: CATSegConfig, clip_resolution: int,
                 hook_layers: tuple[int, int]) -> None:
        super().__init__()
        self.clip = clip
        self.config = config
        self.clip_resolution = int(clip_resolution)
        self.hook_layers = tuple(int(i) for i in hook_layers)
        width = int(clip.visual.conv1.out_channels)
        self.upsample1 = nn.ConvTranspose2d(width, config.decoder_guidance_dims[0], kernel_size=2, stride=2)
        self.upsample2 = nn.ConvTranspose2d(width, config.decoder_guidance_dims[1], kernel_size=4, stride=4)
        self.transformer = Aggregator(config=config)

    def forward(self, images: torch.Tensor, text: torch.Tensor, out: dict[str, Any] | None = None) -> torch.Tensor:
        """Logits of every class for a batch of CLIP-normalised views (``cat_seg_model.py:203-210``).

        Args:
            images: (B, 3, R, R) CLIP-normalised views at ``clip_resolution``.
            text: (T, P, E) L2-normalised class text embeddings (P prompt templates).
            out: when a dict, filled with ``clip_dense`` (B, 1+N, E), ``clip_blocks`` (the hooked
                block outputs (B, 1+N, D)), ``res3`` (B, E, h, w), ``res4``, ``res5`` and the
                aggregator's intermediates (see :meth:`Aggregator.forward`).

        Returns:
            (B, T, 4h, 4w) logits.
        """
        from .cat_seg_clip import encode_image_dense

        feats, hooked = encode_image_dense(self.clip.visual, images, self.hook_layers)
        b = images.shape[0]
        h, w = self.config.feature_resolution

        def grid(tokens: torch.Tensor) -> torch.Tensor:
            return tokens[:, 1:].transpose(1, 2).reshape(b, -1, h, w)

        res3 = grid(feats)
        res4 = self.upsample1(grid(hooked[0]))
        res5 = self.upsample2(grid(hooked[1]))
        if out is not None:
            out.update(clip_dense=feats, clip_blocks=hooked, res3=res3, res4=res4, res5=res5)
        return self.transformer(res3, text.unsqueeze(0).expand(b, -1, -1, -1), [res3, res4, res5], out)


# --------------------------------------------------------------------------- test-time inference
#: the official sliding window (``inference_sliding_window(kernel=384, overlap=0.333, out_res=[640, 640])``)
WINDOW, OVERLAP, OUT_RES = 384, 0.333, 640


def sliding_window_views(image: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, clip_resolution: int,
                         kernel: int = WINDOW, overlap: float = OVERLAP, out_res: int = OUT_RES) -> torch.Tensor:
    """The five views of the official test-time scheme (``cat_seg_model.py:187-201``).

    The image is squashed to ``out_res x out_res`` (aspect ratio not kept) and cut into
    ``kernel``-pixel crops at stride ``int(kernel * (1 - overlap))`` (``nn.Unfold`` order: row
    major); the last view is the image itself squashed to ``kernel x kernel``. Each view is
    normalised with CLIP's mean/std (0-255 units) and resized to ``clip_resolution`` (all
    resizes bilinear, align_corners=False).

    Args:
        image: (3, h, w) float32 image, 0-255.
        mean, std: (3, 1, 1) float32 CLIP normalisation.
        clip_resolution: CLIP input side.

    Returns:
        (L + 1, 3, clip_resolution, clip_resolution), L crops then the global view.
    """
    stride = int(kernel * (1 - overlap))
    x = image.unsqueeze(0).float()
    big = F.interpolate(x, size=(out_res, out_res), mode="bilinear", align_corners=False)
    crops = F.unfold(big, kernel_size=kernel, stride=stride)                # (1, 3*k*k, L)
    crops = crops[0].T.reshape(-1, 3, kernel, kernel)
    whole = F.interpolate(x, size=(kernel, kernel), mode="bilinear", align_corners=False)
    views = (torch.cat([crops, whole], dim=0) - mean) / std
    return F.interpolate(views, size=(clip_resolution, clip_resolution), mode="bilinear", align_corners=False)


def merge_sliding_window(logits: torch.Tensor, kernel: int = WINDOW, overlap: float = OVERLAP,
                         out_res: int = OUT_RES) -> torch.Tensor:
    """Merge the views' logits into ``out_res x out_res`` scores (``cat_seg_model.py:212-219``).

    Logits are resized to ``kernel``, passed through a sigmoid (probabilities, not logits, are
    averaged), the crops are folded back and divided by the per-pixel window count, the global
    view is resized to ``out_res``, and the two are averaged.

    Args:
        logits: (L + 1, T, h, w) logits of :func:`sliding_window_views`' views.

    Returns:
        (T, out_res, out_res) class probabilities (independent per class).
    """
    stride = int(kernel * (1 - overlap))
    probs = F.interpolate(logits, size=kernel, mode="bilinear", align_corners=False).sigmoid()
    whole = F.interpolate(probs[-1:], size=(out_res, out_res), mode="bilinear", align_corners=False)
    crops = probs[:-1]
    folded = F.fold(crops.flatten(1).T, (out_res, out_res), kernel_size=kernel, stride=stride)
    ones = torch.ones(1, out_res, out_res, dtype=logits.dtype, device=logits.device)
    count = F.fold(F.unfold(ones, kernel_size=kernel, stride=stride), (out_res, out_res), kernel_size=kernel,
                   stride=stride)
    return ((folded / count + whole) / 2.0)[0]


def sliding_window_scores(logits: torch.Tensor, output_size: tuple[int, int], chunk: int = 16) -> torch.Tensor:
    """:func:`merge_sliding_window` then :func:`postprocess` to ``output_size``, a chunk of classes
    at a time (every class is merged on its own: the same values, bounded memory).

    Args:
        logits: (L + 1, T, h, w) logits of the sliding-window views.
        output_size: (H, W).

    Returns:
        (T, H, W) class probabilities.
    """
    t = logits.shape[1]
    out = logits.new_empty((t, *output_size))
    step = chunk if chunk > 0 else t
    for t0 in range(0, t, step):
        merged = merge_sliding_window(logits[:, t0:t0 + step])
        out[t0:t0 + step] = postprocess(merged, merged.shape[-2:], output_size)
    return out


def postprocess(scores: torch.Tensor, image_size: tuple[int, int], output_size: tuple[int, int]) -> torch.Tensor:
    """detectron2 ``sem_seg_postprocess``: crop (T, H', W') to ``image_size``, bilinear to ``output_size``."""
    x = scores[:, : image_size[0], : image_size[1]].expand(1, -1, -1, -1)
    return F.interpolate(x, size=tuple(output_size), mode="bilinear", align_corners=False)[0]
