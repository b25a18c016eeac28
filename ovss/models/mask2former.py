"""Mask2Former head as FC-CLIP uses it, in plain PyTorch (no detectron2).

* :class:`MSDeformAttnPixelDecoder`: deformable-attention encoder over res3..res5 plus one FPN
  level on res2, giving ``mask_features`` (stride 4) and three multi-scale features (strides 32,
  16, 8) (Mask2Former ``pixel_decoder/msdeformattn.py``).
* :class:`FCCLIPTransformerDecoder`: the masked-attention transformer decoder with FC-CLIP's
  prediction head: in-decoder mask pooling of ``mask_features``, a class embedding in CLIP's text
  space, and logits ``clamp(exp(logit_scale), max=100) * cos(embedding, text)`` with the max over
  each class's synonyms (fc-clip ``transformer_decoder/fcclip_transformer_decoder.py``).
* :class:`FCCLIPNet`: backbone + head + void embedding, module names equal to the official
  ``FCCLIP`` meta-architecture so that the released checkpoints' keys map one to one.

Shapes use B images, Q queries, C channels, K classes, S synonym rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .deform_attn import MSDeformAttn
from .detr import MLP, PositionEmbeddingSine
from .mask_pooling import mask_pool


@dataclass
class FCCLIPConfig:
    """Architecture sizes (detectron2 config keys in brackets; defaults = the released ConvNeXt-L model).

    Attributes:
        conv_dim: pixel-decoder channels [MODEL.SEM_SEG_HEAD.CONVS_DIM].
        mask_dim: mask-feature channels [MODEL.SEM_SEG_HEAD.MASK_DIM].
        enc_layers: deformable encoder layers [MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS].
        enc_ffn: encoder FFN width (hard-coded 1024 in the official pixel decoder).
        enc_points: sampling points (4, hard-coded in the official pixel decoder).
        norm: conv norm of the FPN level [MODEL.SEM_SEG_HEAD.NORM], "GN" or "".
        hidden_dim: decoder width [MODEL.MASK_FORMER.HIDDEN_DIM].
        nheads: heads of the decoder and the deformable encoder [MODEL.MASK_FORMER.NHEADS].
        dim_feedforward: decoder FFN width [MODEL.MASK_FORMER.DIM_FEEDFORWARD].
        dec_layers: [MODEL.MASK_FORMER.DEC_LAYERS]; the decoder has dec_layers - 1 layers.
        num_queries: [MODEL.MASK_FORMER.NUM_OBJECT_QUERIES].
        pre_norm: [MODEL.MASK_FORMER.PRE_NORM].
        enforce_input_proj: [MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ].
        embed_dim: CLIP embedding dim [MODEL.FC_CLIP.EMBED_DIM].
        common_stride: [MODEL.SEM_SEG_HEAD.COMMON_STRIDE].
        num_train_classes: training classes, sizes ``criterion.empty_weight`` [SEM_SEG_HEAD.NUM_CLASSES].
    """

    conv_dim: int = 256
    mask_dim: int = 256
    enc_layers: int = 6
    enc_ffn: int = 1024
    enc_points: int = 4
    norm: str = "GN"
    hidden_dim: int = 256
    nheads: int = 8
    dim_feedforward: int = 2048
    dec_layers: int = 10
    num_queries: int = 250
    pre_norm: bool = False
    enforce_input_proj: bool = False
    embed_dim: int = 768
    common_stride: int = 4
    num_train_classes: int = 133


class ConvNormAct(nn.Conv2d):
    """Conv2d followed by an optional norm and activation (detectron2 ``layers.Conv2d``; same keys)."""

    def __init__(self, *args: Any, norm: nn.Module | None = None,
                 activation: Callable[[torch.Tensor], torch.Tensor] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


def c2_xavier_fill(module: nn.Conv2d) -> None:
    """detectron2/fvcore ``c2_xavier_fill``: kaiming-uniform with a=1, zero bias."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.constant_(module.bias, 0)


def _norm(kind: str, channels: int) -> nn.Module | None:
    if kind == "GN":
        return nn.GroupNorm(32, channels)
    if kind in ("", None):
        return None
    raise ValueError(f"unsupported norm {kind!r} (expected 'GN' or '')")


class MSDeformAttnEncoderLayer(nn.Module):
    """Post-norm deformable self-attention + FFN (ReLU) layer."""

    def __init__(self, d_model: int, d_ffn: int, n_levels: int, n_heads: int, n_points: int) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src: torch.Tensor, pos: torch.Tensor, reference_points: torch.Tensor,
                spatial_shapes: Sequence[tuple[int, int]]) -> torch.Tensor:
        src = self.norm1(src + self.self_attn(src + pos, reference_points, src, spatial_shapes))
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


class MSDeformAttnEncoder(nn.Module):
    """The ``transformer.encoder`` of the pixel decoder."""

    def __init__(self, layers: list[MSDeformAttnEncoderLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    @staticmethod
    def reference_points(spatial_shapes: Sequence[tuple[int, int]], batch: int, device: torch.device) -> torch.Tensor:
        """(B, S, L, 2) pixel-centre (x, y) of every token, normalised by its level size (valid ratios 1)."""
        refs = []
        for h, w in spatial_shapes:
            ref_y, ref_x = torch.meshgrid(torch.linspace(0.5, h - 0.5, h, dtype=torch.float32, device=device),
                                          torch.linspace(0.5, w - 0.5, w, dtype=torch.float32, device=device),
                                          indexing="ij")
            ref_y = ref_y.reshape(-1)[None] / (torch.ones(batch, 1, device=device) * h)
            ref_x = ref_x.reshape(-1)[None] / (torch.ones(batch, 1, device=device) * w)
            refs.append(torch.stack((ref_x, ref_y), -1))
        ref = torch.cat(refs, 1)
        return ref[:, :, None] * torch.ones(batch, 1, len(spatial_shapes), 2, device=device)


class MSDeformAttnTransformerEncoderOnly(nn.Module):
    def __init__(self, d_model: int, nhead: int, num_layers: int, d_ffn: int, n_levels: int, n_points: int) -> None:
        super().__init__()
        self.encoder = MSDeformAttnEncoder([MSDeformAttnEncoderLayer(d_model, d_ffn, n_levels, nhead, n_points)
                                            for _ in range(num_layers)])
        self.level_embed = nn.Parameter(torch.empty(n_levels, d_model))
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(self, srcs: list[torch.Tensor], pos_embeds: list[torch.Tensor]
                ) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        flat, lvl_pos, shapes = [], [], []
        for lvl, (src, pos) in enumerate(zip(srcs, pos_embeds)):
            shapes.append((int(src.shape[2]), int(src.shape[3])))
            flat.append(src.flatten(2).transpose(1, 2))
            lvl_pos.append(pos.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1))
        src_flat = torch.cat(flat, 1)
        pos_flat = torch.cat(lvl_pos, 1)
        ref = self.encoder.reference_points(shapes, src_flat.shape[0], src_flat.device)
        out = src_flat
        for layer in self.encoder.layers:
            out = layer(out, pos_flat, ref, shapes)
        return out, shapes


class MSDeformAttnPixelDecoder(nn.Module):
    """Mask2Former's pixel decoder.

    Args:
        in_channels: channels of res2, res3, res4, res5.
        cfg: sizes (``conv_dim``, ``mask_dim``, ``enc_layers``, ``nheads``, ...).

    ``input_proj[0]`` is res5, ``[1]`` res4, ``[2]`` res3 (top-down order, as in the checkpoints).
    """

    def __init__(self, in_channels: Sequence[int], cfg: FCCLIPConfig) -> None:
        super().__init__()
        c = cfg.conv_dim
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(ch, c, kernel_size=1), nn.GroupNorm(32, c)) for ch in list(in_channels[1:])[::-1])
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.constant_(proj[0].bias, 0)
        self.transformer = MSDeformAttnTransformerEncoderOnly(c, cfg.nheads, cfg.enc_layers, cfg.enc_ffn, 3,
                                                              cfg.enc_points)
        self.pe_layer = PositionEmbeddingSine(c // 2)
        self.mask_features = ConvNormAct(c, cfg.mask_dim, kernel_size=1)
        c2_xavier_fill(self.mask_features)
        use_bias = cfg.norm == ""
        # one extra FPN level (stride 4): log2(8) - log2(common_stride 4)
        self.adapter_1 = ConvNormAct(in_channels[0], c, kernel_size=1, bias=use_bias, norm=_norm(cfg.norm, c))
        self.layer_1 = ConvNormAct(c, c, kernel_size=3, padding=1, bias=use_bias, norm=_norm(cfg.norm, c),
                                   activation=F.relu)
        c2_xavier_fill(self.adapter_1)
        c2_xavier_fill(self.layer_1)

    def forward(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """
        Args:
            features: ``res2`` .. ``res5`` (B, C_l, H/s, W/s).

        Returns:
            ``mask_features`` (B, mask_dim, H/4, W/4) and the multi-scale features
            [(B, C, H/32, W/32), (B, C, H/16, W/16), (B, C, H/8, W/8)].
        """
        with torch.autocast(device_type=features["res2"].device.type, enabled=False):
            return self._forward(features)  # float32 always (deformable attention in fp16 is unstable)

    def _forward(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        srcs, pos = [], []
        for idx, name in enumerate(("res5", "res4", "res3")):
            x = features[name].float()
            srcs.append(self.input_proj[idx](x))
            pos.append(self.pe_layer(x))
        y, shapes = self.transformer(srcs, pos)
        b = y.shape[0]
        out = [z.transpose(1, 2).view(b, -1, h, w)
               for z, (h, w) in zip(torch.split(y, [h * w for h, w in shapes], dim=1), shapes)]
        lateral = self.adapter_1(features["res2"].float())
        fpn = lateral + F.interpolate(out[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
        fpn = self.layer_1(fpn)
        return self.mask_features(fpn), out[:3]


class SelfAttentionLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int, pre_norm: bool = False) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=0.0)
        self.norm = nn.LayerNorm(d_model)
        self.pre_norm = pre_norm
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        if self.pre_norm:
            t = self.norm(tgt)
            q = t + query_pos
            return tgt + self.self_attn(q, q, value=t, need_weights=True)[0]
        q = tgt + query_pos
        # need_weights=True: the explicit-softmax path, as the official call (bitwise equal)
        return self.norm(tgt + self.self_attn(q, q, value=tgt, need_weights=True)[0])


class CrossAttentionLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int, pre_norm: bool = False) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=0.0)
        self.norm = nn.LayerNorm(d_model)
        self.pre_norm = pre_norm
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor,
                pos: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        t = self.norm(tgt) if self.pre_norm else tgt
        out = self.multihead_attn(query=t + query_pos, key=memory + pos, value=memory,
                                  attn_mask=memory_mask, need_weights=True)[0]
        return tgt + out if self.pre_norm else self.norm(tgt + out)


class FFNLayer(nn.Module):
    def __init__(self, d_model: int, dim_feedforward: int, pre_norm: bool = False) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.pre_norm = pre_norm
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, tgt: torch.Tensor) -> torch.Tensor:
        if self.pre_norm:
            return tgt + self.linear2(F.relu(self.linear1(self.norm(tgt))))
        return self.norm(tgt + self.linear2(F.relu(self.linear1(tgt))))


def synonym_index(num_synonyms: Sequence[int]) -> torch.Tensor:
    """(K, max S_k) column indices of each class's synonym rows, padded by repeating the first one."""
    width = max(num_synonyms)
    rows, start = [], 0
    for n in num_synonyms:
        idx = list(range(start, start + n))
        rows.append(idx + [idx[0]] * (width - n))
        start += n
    return torch.tensor(rows, dtype=torch.long)


def classification_logits(x: torch.Tensor, text_classifier: torch.Tensor, logit_scale: torch.Tensor,
                          num_synonyms: Sequence[int]) -> torch.Tensor:
    """Cosine logits against the text classifier, max over each class's synonyms, void last.

    ``get_classification_logits`` of the official decoder.

    Args:
        x: (B, Q, D) embeddings (normalised here).
        text_classifier: (S + 1, D) L2-normalised rows, one per synonym, void row last.
        logit_scale: 0-d log scale; ``clamp(exp(.), max=100)`` multiplies the cosines.
        num_synonyms: (K,) synonym rows per class, sum S.

    Returns:
        (B, Q, K + 1).
    """
    x = F.normalize(x, dim=-1)
    scale = torch.clamp(logit_scale.exp(), max=100)
    logits = scale * x @ text_classifier.T
    idx = synonym_index(num_synonyms).to(logits.device)
    per_class = logits[..., idx].max(-1).values  # max is exact: padding repeats a member row
    return torch.cat([per_class, logits[..., -1:]], dim=-1)


class FCCLIPTransformerDecoder(nn.Module):
    """Masked-attention decoder with FC-CLIP's mask-pooled class head (``sem_seg_head.predictor``).

    Args:
        in_channels: channels of the multi-scale features (conv_dim).
        cfg: sizes.
    """

    num_feature_levels = 3

    def __init__(self, in_channels: int, cfg: FCCLIPConfig) -> None:
        super().__init__()
        d = cfg.hidden_dim
        self.num_heads = cfg.nheads
        self.num_layers = cfg.dec_layers - 1
        self.pe_layer = PositionEmbeddingSine(d // 2)
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(d, cfg.nheads, cfg.pre_norm) for _ in range(self.num_layers))
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(d, cfg.nheads, cfg.pre_norm) for _ in range(self.num_layers))
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(d, cfg.dim_feedforward, cfg.pre_norm) for _ in range(self.num_layers))
        self.decoder_norm = nn.LayerNorm(d)
        self.num_queries = cfg.num_queries
        self.query_feat = nn.Embedding(cfg.num_queries, d)
        self.query_embed = nn.Embedding(cfg.num_queries, d)
        self.level_embed = nn.Embedding(self.num_feature_levels, d)
        self.input_proj = nn.ModuleList()
        for _ in range(self.num_feature_levels):
            if in_channels != d or cfg.enforce_input_proj:
                conv = nn.Conv2d(in_channels, d, kernel_size=1)
                c2_xavier_fill(conv)
                self.input_proj.append(conv)
            else:
                self.input_proj.append(nn.Sequential())
        self.mask_embed = MLP(d, d, cfg.mask_dim, 3)
        self._mask_pooling_proj = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d))
        self.class_embed = MLP(d, d, cfg.embed_dim, 3)
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))

    def forward(self, x: list[torch.Tensor], mask_features: torch.Tensor, text_classifier: torch.Tensor,
                num_synonyms: Sequence[int]) -> dict[str, Any]:
        """
        Args:
            x: the three multi-scale features (strides 32, 16, 8), (B, C, h_l, w_l).
            mask_features: (B, mask_dim, H/4, W/4).
            text_classifier: (S + 1, D), void row last.
            num_synonyms: (K,) rows per class.

        Returns:
            ``pred_logits`` (B, Q, K + 1), ``pred_masks`` (B, Q, H/4, W/4) of the last head, and
            ``aux_outputs``: the same for the earlier heads (before layer 0 and after each
            layer but the last), for deep supervision.
        """
        src, pos, sizes = [], [], []
        for i in range(self.num_feature_levels):
            sizes.append(x[i].shape[-2:])
            pos.append(self.pe_layer(x[i]).flatten(2).permute(2, 0, 1))
            proj = self.input_proj[i](x[i]).flatten(2) + self.level_embed.weight[i][None, :, None]
            src.append(proj.permute(2, 0, 1))
        bs = src[0].shape[1]
        query_embed = self.query_embed.weight.unsqueeze(1).repeat(1, bs, 1)
        output = self.query_feat.weight.unsqueeze(1).repeat(1, bs, 1)
        classes, masks = [], []
        cls, msk, attn_mask = self.prediction_heads(output, mask_features, sizes[0], text_classifier, num_synonyms)
        classes.append(cls)
        masks.append(msk)
        for i in range(self.num_layers):
            level = i % self.num_feature_levels
            attn_mask[torch.where(attn_mask.sum(-1) == attn_mask.shape[-1])] = False
            output = self.transformer_cross_attention_layers[i](output, src[level], attn_mask, pos[level], query_embed)
            output = self.transformer_self_attention_layers[i](output, query_embed)
            output = self.transformer_ffn_layers[i](output)
            cls, msk, attn_mask = self.prediction_heads(
                output, mask_features, sizes[(i + 1) % self.num_feature_levels], text_classifier, num_synonyms)
            classes.append(cls)
            masks.append(msk)
        return {"pred_logits": classes[-1], "pred_masks": masks[-1],
                "aux_outputs": [{"pred_logits": a, "pred_masks": b} for a, b in zip(classes[:-1], masks[:-1])]}

    def prediction_heads(self, output: torch.Tensor, mask_features: torch.Tensor, target_size: Sequence[int],
                         text_classifier: torch.Tensor, num_synonyms: Sequence[int]
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Class logits, mask logits and the next layer's attention mask from (Q, B, C) queries."""
        decoder_output = self.decoder_norm(output).transpose(0, 1)
        mask_embed = self.mask_embed(decoder_output)
        outputs_mask = torch.einsum("bqc,bchw->bqhw", mask_embed, mask_features)
        pooled = self._mask_pooling_proj(mask_pool(mask_features, outputs_mask))
        class_embed = self.class_embed(pooled + decoder_output)
        outputs_class = classification_logits(class_embed, text_classifier, self.logit_scale, num_synonyms)
        attn_mask = F.interpolate(outputs_mask, size=tuple(target_size), mode="bilinear", align_corners=False)
        attn_mask = (attn_mask.sigmoid().flatten(2).unsqueeze(1).repeat(1, self.num_heads, 1, 1)
                     .flatten(0, 1) < 0.5).bool().detach()
        return outputs_class, outputs_mask, attn_mask


class FCCLIPHead(nn.Module):
    """``sem_seg_head``: pixel decoder + transformer decoder."""

    def __init__(self, in_channels: Sequence[int], cfg: FCCLIPConfig) -> None:
        super().__init__()
        self.pixel_decoder = MSDeformAttnPixelDecoder(in_channels, cfg)
        self.predictor = FCCLIPTransformerDecoder(cfg.conv_dim, cfg)

    def forward(self, features: dict[str, torch.Tensor], text_classifier: torch.Tensor,
                num_synonyms: Sequence[int]) -> dict[str, Any]:
        mask_features, multi_scale = self.pixel_decoder(features)
        out = self.predictor(multi_scale, mask_features, text_classifier, num_synonyms)
        out["mask_features"] = mask_features
        out["multi_scale_features"] = multi_scale
        return out


class FCCLIPNet(nn.Module):
    """Backbone + head + void embedding, with the official module names (``backbone.clip_model``,
    ``sem_seg_head.pixel_decoder``, ``sem_seg_head.predictor``, ``void_embedding``).

    Args:
        backbone: a :class:`ovss.backbones.convnext_clip.ConvCLIPBackbone`.
        cfg: head sizes.
    """

    def __init__(self, backbone: nn.Module, cfg: FCCLIPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        ch = backbone.output_channels
        self.sem_seg_head = FCCLIPHead([ch["res2"], ch["res3"], ch["res4"], ch["res5"]], cfg)
        self.void_embedding = nn.Embedding(1, backbone.embed_dim)

    def full_classifier(self, text_classifier: torch.Tensor) -> torch.Tensor:
        """(S, D) synonym rows -> (S + 1, D) with the normalised void embedding appended."""
        return torch.cat([text_classifier, F.normalize(self.void_embedding.weight, dim=-1)], dim=0)

    def forward(self, images: torch.Tensor, text_classifier: torch.Tensor,
                num_synonyms: Sequence[int]) -> dict[str, Any]:
        """
        Args:
            images: (B, 3, H, W) normalised, padded to multiples of 32.
            text_classifier: (S, D) synonym rows (without void).
            num_synonyms: (K,) rows per class.

        Returns:
            The decoder outputs plus ``features`` (backbone maps) and ``text_classifier`` (S + 1, D).
        """
        features = self.backbone(images)
        classifier = self.full_classifier(text_classifier)
        out = self.sem_seg_head(features, classifier, num_synonyms)
        out["features"] = features
        out["text_classifier"] = classifier
        return out

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        """Every tensor except the CLIP text tower (what the released checkpoints hold)."""
        return {k: v for k, v in self.state_dict().items()
                if not k.startswith("backbone.clip_model.") or k.startswith("backbone.clip_model.visual.")}
