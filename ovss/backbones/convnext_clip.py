"""A frozen open_clip CLIP as the backbone of FC-CLIP: multi-scale features and dense CLIP features.

FC-CLIP (Yu et al., NeurIPS 2023) runs the visual tower of a convolutional CLIP once per image
and reads

* ``res2 .. res5``: the outputs of the four trunk stages (strides 4, 8, 16, 32), fed to the
  Mask2Former pixel decoder;
* ``clip_vis_dense``: the stride-32 map that CLIP's own head would pool (``trunk.norm_pre(res5)``
  for ConvNeXt, ``layer4`` for ResNet), mask-pooled by the out-of-vocabulary classifier.

Everything here follows ``fcclip/modeling/backbone/clip.py`` (bytedance/fc-clip): the stage
outputs are made contiguous (timm's ConvNeXt leaves permuted strides, and the 1x1 convs of the
pixel decoder then round differently), the pooled features go through CLIP's own head
(``trunk.head`` then ``visual.head`` for ConvNeXt; the attention pool with the mask as attention
mask for ResNet), and nothing is trained.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..constants import CLIP_MEAN_255_D2, CLIP_STD_255_D2
from ..errors import ModelLoadError
from ..checkpoints import CHECKPOINT_SUFFIXES, load_into, load_state_dict
from ..models.mask_pooling import mask_pool
from .clip import LoadedCLIP, load_clip, text_fingerprint

#: Per-channel RGB mean / std in 0-255 units (``MODEL.PIXEL_MEAN`` / ``PIXEL_STD`` of the configs).
CLIP_PIXEL_MEAN, CLIP_PIXEL_STD = CLIP_MEAN_255_D2, CLIP_STD_255_D2


def register_test_trunks() -> None:
    """Register the tiny timm ConvNeXt trunk of the parity fixtures (``convnext_fcclip_tiny_trunk``).

    It is timm's ``convnext_large`` block design with depths (1, 1, 2, 1) and dims
    (16, 32, 48, 64); open_clip model configs name it by that timm name. Idempotent.
    """
    import timm
    from timm.models import register_model
    from timm.models.convnext import _create_convnext

    if "convnext_fcclip_tiny_trunk" in timm.list_models("convnext_fcclip_tiny_trunk"):
        return

    @register_model
    def convnext_fcclip_tiny_trunk(pretrained: bool = False, **kwargs):  # noqa: ANN202
        args = dict(depths=[1, 1, 2, 1], dims=[16, 32, 48, 64])
        return _create_convnext("convnext_large", pretrained=pretrained, **dict(args, **kwargs))


def clip_model_type(visual: nn.Module) -> str:
    """'convnext' for an open_clip timm ConvNeXt tower, 'resnet' for a ModifiedResNet.

    Raises:
        ModelLoadError: any other visual tower (ViTs have no multi-scale features).
    """
    trunk = getattr(visual, "trunk", None)
    if trunk is not None and hasattr(trunk, "stages") and hasattr(trunk, "stem"):
        return "convnext"
    if all(hasattr(visual, a) for a in ("layer1", "layer4", "attnpool")):
        return "resnet"
    raise ModelLoadError(f"FC-CLIP needs a convolutional CLIP (ConvNeXt or ResNet), got a "
                         f"{type(visual).__name__} visual tower: pick e.g. convnext_large_d_320 or RN50")


class ConvCLIPBackbone(nn.Module):
    """Frozen convolutional CLIP: features for the head, dense CLIP features, CLIP's own classifier.

    Args:
        clip: the loaded open_clip model (its parameters are frozen here).

    Attributes:
        output_channels: channels of (res2, res3, res4, res5), read from the model (the official
            code picks them from substrings of the model name; the values agree).
        embed_dim: dimension D of CLIP's joint image-text space.
    """

    strides = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}

    def __init__(self, clip: LoadedCLIP) -> None:
        super().__init__()
        self.clip = clip
        self.clip_model = clip.model
        self.model_type = clip_model_type(self.clip_model.visual)
        for p in self.clip_model.parameters():
            p.requires_grad_(False)
        self.clip_model.eval()
        self.output_channels = self._channels()
        self.embed_dim = int(self.clip_model.text_projection.shape[-1])

    def _channels(self) -> dict[str, int]:
        visual = self.clip_model.visual
        if self.model_type == "convnext":
            ch = [int(info["num_chs"]) for info in visual.trunk.feature_info[-4:]]
        else:
            ch = [int(getattr(visual, f"layer{i}")[-1].bn3.num_features) for i in range(1, 5)]
        return dict(zip(("res2", "res3", "res4", "res5"), ch))

    def train(self, mode: bool = True) -> "ConvCLIPBackbone":
        super().train(mode)
        self.clip_model.eval()  # frozen: always eval (the official forward calls self.eval())
        return self

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Multi-scale features of a normalised, padded batch.

        Args:
            x: float32 (B, 3, H, W), H and W multiples of 32.

        Returns:
            ``res2`` .. ``res5`` (B, C_l, H/s, W/s) contiguous, and ``clip_vis_dense``
            (B, C_5, H/32, W/32).
        """
        visual = self.clip_model.visual
        out: dict[str, torch.Tensor] = {}
        if self.model_type == "convnext":
            trunk = visual.trunk
            x = trunk.stem(x)
            for i in range(4):
                x = trunk.stages[i](x)
                out[f"res{i + 2}"] = x.contiguous()
            out["clip_vis_dense"] = trunk.norm_pre(x).contiguous()
        else:
            x = visual.act1(visual.bn1(visual.conv1(x)))
            x = visual.act2(visual.bn2(visual.conv2(x)))
            x = visual.act3(visual.bn3(visual.conv3(x)))
            x = visual.avgpool(x)
            for i in range(1, 5):
                x = getattr(visual, f"layer{i}")(x)
                out[f"res{i + 1}"] = x.contiguous()
            out["clip_vis_dense"] = out["res5"]
        return out

    @torch.no_grad()
    def pooled_clip_features(self, dense: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
        """CLIP image embeddings of the masked regions (the out-of-vocabulary branch).

        Args:
            dense: (B, C, h, w) ``clip_vis_dense``.
            mask_logits: (B, Q, h, w) mask logits already resized to the dense grid; a pixel
                belongs to a mask when its logit is > 0.

        Returns:
            (B, Q, D) embeddings before normalisation. ConvNeXt: average of ``dense`` inside each
            mask (``sum / (area + 1e-8)``; an empty mask gives zeros) through ``trunk.head`` and
            ``visual.head``. ResNet: CLIP's attention pool with the mean token as query and the
            pixels outside the mask blocked (``visual_prediction_forward_resnet``).
        """
        if self.model_type == "convnext":
            pooled = mask_pool(dense, mask_logits)
            b, q, c = pooled.shape
            visual = self.clip_model.visual
            y = visual.trunk.head(pooled.reshape(b * q, c, 1, 1))
            y = visual.head(y)
            return y.view(b, q, y.shape[-1])
        return self._resnet_masked_attnpool(dense, mask_logits)

    def _resnet_masked_attnpool(self, x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        pool = self.clip_model.visual.attnpool
        b, c, h, w = x.shape
        nq = masks.shape[1]
        pe = pool.positional_embedding.to(x.dtype)
        spatial = pe[1:, None, :]
        size = int(math.sqrt(spatial.shape[0]))
        spatial = spatial.permute(1, 2, 0).reshape(1, c, size, size)
        spatial = F.interpolate(spatial, size=(h, w), mode="bilinear", align_corners=False)
        spatial = spatial.permute(2, 3, 0, 1).reshape(h * w, 1, c)
        tokens = x.reshape(b, c, h * w).permute(2, 0, 1)
        key_value = tokens + spatial
        binary = (masks.reshape(b, nq, h * w) > 0).to(masks.dtype)
        query = tokens.mean(0, keepdim=True) + pe[:1, None, :]
        query = query.repeat_interleave(nq, dim=0)
        attn_mask = (binary < 0.5).unsqueeze(1).expand(-1, pool.num_heads, -1, -1)
        attn_mask = attn_mask.reshape(b * pool.num_heads, query.shape[0], key_value.shape[0])
        out = F.multi_head_attention_forward(
            query=query, key=key_value, value=key_value, embed_dim_to_check=key_value.shape[-1],
            num_heads=pool.num_heads, q_proj_weight=pool.q_proj.weight, k_proj_weight=pool.k_proj.weight,
            v_proj_weight=pool.v_proj.weight, in_proj_weight=None,
            in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
            bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
            out_proj_weight=pool.c_proj.weight, out_proj_bias=pool.c_proj.bias,
            use_separate_proj_weight=True, training=False, need_weights=False, attn_mask=attn_mask)[0]
        return out.permute(1, 0, 2)

    @property
    def logit_scale(self) -> torch.Tensor:
        """CLIP's own logit scale (log space, 0-d) used by the out-of-vocabulary classifier."""
        return self.clip_model.logit_scale


def load_conv_clip(model: str, pretrained: str | None, device: str | torch.device = "cpu") -> ConvCLIPBackbone:
    """Load an open_clip ConvNeXt/ResNet CLIP (name + tag, or config JSON + local weights).

    Raises:
        UnknownNameError: unknown model or tag.
        ModelLoadError: weights unreachable, or not a convolutional CLIP.
    """
    register_test_trunks()
    if pretrained and Path(pretrained).suffix.lower() in CHECKPOINT_SUFFIXES:
        # local weights: build the architecture, then load strictly ourselves (the generic
        # loader's key sniffing only looks at the first few keys of a sorted safetensors file)
        clip = load_clip(model, None, "cpu")
        sd = load_state_dict(pretrained)
        sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()
              if k not in ("input_resolution", "context_length", "vocab_size")}
        if not any(k.startswith("visual.") for k in sd):
            raise ModelLoadError(f"{pretrained} does not look like an open_clip CLIP checkpoint "
                                 "(no 'visual.*' keys): is it the right file?")
        load_into(clip.model, sd, f"{pretrained} into {clip.name}")
        clip.model.to(device).eval()
        for p in clip.model.parameters():
            p.requires_grad_(False)
        clip.pretrained = str(pretrained)
        clip.fingerprint = text_fingerprint(clip.model)
    else:
        clip = load_clip(model, pretrained, device)
    return ConvCLIPBackbone(clip)
