"""MaskFormer v1 (Cheng et al., NeurIPS 2021) as used by ZSSeg and ZegFormer, in plain PyTorch.

Parts and their official sources (facebookresearch/MaskFormer ``mask_former/modeling``):

* :class:`BasePixelDecoder` (``heads/pixel_decoder.py``): FPN over res2..res5 with GroupNorm(32),
  nearest upsampling, 3x3 output convs, ``mask_features`` 3x3 conv with bias (stride 4).
* :class:`PositionEmbeddingSine` (``transformer/position_encoding.py``): DETR sine embedding,
  normalised (scale 2 pi, eps 1e-6), y features first, computed over the padded grid (no mask).
* :class:`TransformerDecoder` (``transformer/transformer.py``): DETR decoder, tgt = 0, query_pos =
  ``query_embed``, post-norm (or pre-norm) layers, a shared final LayerNorm applied to every
  intermediate output; no encoder layers (``ENC_LAYERS 0`` in both methods).
* :class:`TransformerPredictor` (``transformer/transformer_predictor.py`` and the zero-shot variants of
  ZSSeg ``zero_shot_transformer_predictor.py`` / ZegFormer ``transformer_zeroshot_predictor.py``):
  ``input_proj`` 1x1 conv on res5, ``mask_embed`` 3-layer MLP dotted with the mask features, and a
  class head into CLIP's text space: ZSSeg ``class_embed`` MLP (hidden -> EMBED_HIDDEN -> EMBEDDING_DIM),
  ZegFormer ``projection_layer`` Linear(hidden, 512) + ``bg_feature`` + fixed ``logit_scale``.

Module names are detectron2's, so a released checkpoint loads after stripping ``sem_seg_head.``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.resnet import ResNet, ResNetConfig
from .detr import MLP, PositionEmbeddingSine


@dataclass
class MaskFormerConfig:
    """Sizes of a MaskFormer v1 with a zero-shot class head (detectron2 config keys in comments)."""

    resnet: ResNetConfig = field(default_factory=ResNetConfig)
    conv_dim: int = 256  # SEM_SEG_HEAD.CONVS_DIM
    mask_dim: int = 256  # SEM_SEG_HEAD.MASK_DIM
    norm: str = "GN"  # SEM_SEG_HEAD.NORM
    hidden_dim: int = 256  # MASK_FORMER.HIDDEN_DIM
    nheads: int = 8  # MASK_FORMER.NHEADS
    dim_feedforward: int = 2048  # MASK_FORMER.DIM_FEEDFORWARD
    dec_layers: int = 6  # MASK_FORMER.DEC_LAYERS
    num_queries: int = 100  # MASK_FORMER.NUM_OBJECT_QUERIES
    dropout: float = 0.1  # MASK_FORMER.DROPOUT
    pre_norm: bool = False  # MASK_FORMER.PRE_NORM
    enforce_input_proj: bool = False  # MASK_FORMER.ENFORCE_INPUT_PROJ
    class_head: str = "embed"  # "embed" (ZSSeg class_embed MLP) or "project" (ZegFormer projection_layer)
    embedding_dim: int = 512  # SEM_SEG_HEAD.EMBEDDING_DIM (ZSSeg) / 512 hard-coded (ZegFormer)
    embed_hidden_dim: int = 1024  # SEM_SEG_HEAD.EMBED_HIDDEN_DIM (ZSSeg)
    embed_layers: int = 2  # SEM_SEG_HEAD.EMBED_LAYERS (ZSSeg)
    size_divisibility: int = 32

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


class ConvGN(nn.Conv2d):
    """detectron2 ``Conv2d`` with an optional ``norm`` submodule (GroupNorm(32)) and ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int, norm: str, relu: bool) -> None:
        use_norm = norm == "GN"
        super().__init__(cin, cout, kernel, padding=kernel // 2, bias=not use_norm)
        self.norm = nn.GroupNorm(32, cout) if use_norm else None
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        return F.relu(x) if self.relu else x


class BasePixelDecoder(nn.Module):
    """FPN pixel decoder: ``layer_4`` on res5, then ``adapter_k`` (1x1) + nearest-upsampled sum +
    ``layer_k`` (3x3) for res4, res3, res2 (k = 3, 2, 1); output ``mask_features`` (B, mask_dim, H/4, W/4)."""

    def __init__(self, in_channels: dict[str, int], conv_dim: int, mask_dim: int, norm: str = "GN") -> None:
        super().__init__()
        names = ["res2", "res3", "res4", "res5"]
        for idx, name in enumerate(names):
            if name == "res5":
                self.add_module(f"layer_{idx + 1}", ConvGN(in_channels[name], conv_dim, 3, norm, True))
            else:
                self.add_module(f"adapter_{idx + 1}", ConvGN(in_channels[name], conv_dim, 1, norm, False))
                self.add_module(f"layer_{idx + 1}", ConvGN(conv_dim, conv_dim, 3, norm, True))
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, 3, padding=1)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        y = self.layer_4(features["res5"])
        for k, name in ((3, "res4"), (2, "res3"), (1, "res2")):
            lateral = getattr(self, f"adapter_{k}")(features[name])
            y = lateral + F.interpolate(y, size=lateral.shape[-2:], mode="nearest")
            y = getattr(self, f"layer_{k}")(y)
        return self.mask_features(y)


class DecoderLayer(nn.Module):
    """DETR decoder layer: self-attention, cross-attention, FFN (ReLU), each with residual + LayerNorm."""

    def __init__(self, d_model: int, nhead: int, dim_ff: int, dropout: float, pre_norm: bool) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_ff)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_ff, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor,
                query_pos: torch.Tensor) -> torch.Tensor:
        if self.pre_norm:
            t2 = self.norm1(tgt)
            q = k = t2 + query_pos
            tgt = tgt + self.dropout1(self.self_attn(q, k, value=t2)[0])
            t2 = self.norm2(tgt)
            tgt = tgt + self.dropout2(self.multihead_attn(t2 + query_pos, memory + pos, value=memory)[0])
            t2 = self.norm3(tgt)
            return tgt + self.dropout3(self.linear2(self.dropout(F.relu(self.linear1(t2)))))
        q = k = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, k, value=tgt)[0]))
        tgt2 = self.multihead_attn(tgt + query_pos, memory + pos, value=memory)[0]
        tgt = self.norm2(tgt + self.dropout2(tgt2))
        tgt2 = self.linear2(self.dropout(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(tgt2))


class TransformerDecoder(nn.Module):
    """Stack of :class:`DecoderLayer` with a shared final ``norm``; returns every layer's normed
    output, (L, Q, B, C)."""

    def __init__(self, d_model: int, nhead: int, dim_ff: int, dropout: float, num_layers: int,
                 pre_norm: bool) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(d_model, nhead, dim_ff, dropout, pre_norm)
                                    for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor,
                query_pos: torch.Tensor) -> torch.Tensor:
        out = []
        for layer in self.layers:
            tgt = layer(tgt, memory, pos, query_pos)
            out.append(self.norm(tgt))
        return torch.stack(out)


class Transformer(nn.Module):
    """DETR transformer with no encoder layers: the memory is the projected res5 as is."""

    def __init__(self, d_model: int, nhead: int, dim_ff: int, dropout: float, num_layers: int,
                 pre_norm: bool) -> None:
        super().__init__()
        self.decoder = TransformerDecoder(d_model, nhead, dim_ff, dropout, num_layers, pre_norm)

    def forward(self, src: torch.Tensor, query_embed: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """src, pos (B, C, H, W), query_embed (Q, C) -> hs (L, B, Q, C)."""
        b = src.shape[0]
        src = src.flatten(2).permute(2, 0, 1)
        pos = pos.flatten(2).permute(2, 0, 1)
        query_pos = query_embed.unsqueeze(1).repeat(1, b, 1)
        tgt = torch.zeros_like(query_pos)
        hs = self.decoder(tgt, src, pos, query_pos)
        return hs.transpose(1, 2)


class TransformerPredictor(nn.Module):
    """Queries -> per-layer class features in CLIP's text space and mask logits."""

    def __init__(self, cfg: MaskFormerConfig, in_channels: int) -> None:
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden_dim
        self.pe_layer = PositionEmbeddingSine(h // 2)
        self.transformer = Transformer(h, cfg.nheads, cfg.dim_feedforward, cfg.dropout, cfg.dec_layers,
                                       cfg.pre_norm)
        self.query_embed = nn.Embedding(cfg.num_queries, h)
        self.input_proj = (nn.Conv2d(in_channels, h, 1) if in_channels != h or cfg.enforce_input_proj
                           else nn.Identity())
        self.mask_embed = MLP(h, h, cfg.mask_dim, 3)
        if cfg.class_head == "embed":
            self.class_embed = MLP(h, cfg.embed_hidden_dim, cfg.embedding_dim, cfg.embed_layers)
        elif cfg.class_head == "project":
            self.projection_layer = nn.Linear(h, cfg.embedding_dim)
            self.bg_feature = nn.Parameter(torch.empty(1, cfg.embedding_dim))
            nn.init.kaiming_uniform_(self.bg_feature, a=math.sqrt(5))
            self.logit_scale = nn.Parameter(torch.tensor([math.log(100.0)]), requires_grad=False)
        else:
            raise ValueError(f"unknown class head {cfg.class_head!r}")

    def forward(self, res5: torch.Tensor, mask_features: torch.Tensor) -> dict[str, torch.Tensor]:
        """res5 (B, Cin, h, w), mask_features (B, D, H4, W4) -> ``class_features`` (L, B, Q, E) and
        ``mask_logits`` (L, B, Q, H4, W4)."""
        pos = self.pe_layer(res5)
        hs = self.transformer(self.input_proj(res5), self.query_embed.weight, pos)
        feats = self.class_embed(hs) if self.cfg.class_head == "embed" else self.projection_layer(hs)
        masks = torch.einsum("lbqc,bchw->lbqhw", self.mask_embed(hs), mask_features)
        return {"class_features": feats, "mask_logits": masks}

    def classify(self, class_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """Class logits (..., C+1) of the queries against C text embeddings, last column = no object.

        ``embed`` (ZSSeg): ``text_features`` (C+1, E) already holds the normalised no-object row;
        logits = ``(100 * normalize(x)) @ T.T`` (``ClipAdapter.get_sim_logits``, temperature 100).
        ``project`` (ZegFormer): ``text_features`` (C, E); logits = ``[s x_n @ T.T, s x_n @ bg.T]`` with
        s = exp(logit_scale) and the unnormalised ``bg_feature``.
        """
        x = class_features / class_features.norm(dim=-1, keepdim=True)
        if self.cfg.class_head == "embed":
            return 100.0 * x @ text_features.t()
        scale = self.logit_scale.exp()
        return torch.cat((scale * x @ text_features.t(), scale * x @ self.bg_feature.t()), dim=-1)


class MaskFormerV1(nn.Module):
    """Backbone + pixel decoder + predictor; input is the normalised, padded image batch."""

    def __init__(self, cfg: MaskFormerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = ResNet(cfg.resnet)
        ch = self.backbone.out_channels
        self.pixel_decoder = BasePixelDecoder(ch, cfg.conv_dim, cfg.mask_dim, cfg.norm)
        self.predictor = TransformerPredictor(cfg, ch["res5"])

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images (B, 3, hp, wp), hp and wp multiples of 32 -> see :meth:`TransformerPredictor.forward`;
        also ``res5`` and ``mask_features`` for inspection."""
        feats = self.backbone(images)
        mask_features = self.pixel_decoder(feats)
        out = self.predictor(feats["res5"], mask_features)
        out["res5"] = feats["res5"]
        out["mask_features"] = mask_features
        return out


def pad_to_divisible(x: torch.Tensor, divisor: int = 32) -> torch.Tensor:
    """Zero-pad (…, H, W) at the bottom/right to multiples of ``divisor`` (detectron2 ``ImageList``)."""
    h, w = x.shape[-2:]
    hp, wp = -(-h // divisor) * divisor, -(-w // divisor) * divisor
    if (hp, wp) == (h, w):
        return x
    return F.pad(x, (0, wp - w, 0, hp - h), value=0.0)
