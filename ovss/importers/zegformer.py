"""Loading released ZegFormer checkpoints (dingjiansw101/ZegFormer) without detectron2.

A released checkpoint is detectron2's ``{"model": state_dict, ...}`` of the modified ``MaskFormer``:
``backbone.*`` (R50 / R101, basic stem), ``sem_seg_head.pixel_decoder.*``,
``sem_seg_head.predictor.{bg_feature, projection_layer.*, logit_scale, query_embed, input_proj,
transformer.decoder.*, mask_embed.*}``, ``criterion.empty_weight`` and possibly the frozen CLIP under
``sem_seg_head.predictor.clip_model.*`` (fp16 in the official GPU runs). The text classifiers are not
stored (recomputed from the class names). Sizes come from a config (official YAML with ``_BASE_``
chain, or dotted-key JSON) or the released R101 configuration
(``configs/coco-stuff/zegformer_R101_bs32_60k_vit16_coco-stuff_gzss_eval.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelLoadError
from ..models.maskformer import MaskFormerConfig
from .zsseg import (ZSSEG_RELEASED, check_backbone_keys, inference_settings, maskformer_config,
                    maskformer_state_dict, read_d2_checkpoint, resolve_config)

#: architecture of the released ZegFormer R101 (COCO-Stuff / VOC); R50 needs its config.
ZEGFORMER_RELEASED: dict[str, Any] = dict(ZSSEG_RELEASED)
ZEGFORMER_RELEASED.update({
    "MODEL.BACKBONE.NAME": "build_resnet_backbone",
    "MODEL.RESNETS.STEM_TYPE": "basic",
    "MODEL.RESNETS.STEM_OUT_CHANNELS": 64,
    "MODEL.RESNETS.RES5_MULTI_GRID": [1, 1, 1],
    "MODEL.RESNETS.STRIDE_IN_1X1": False,
})

#: ZegFormer hard-codes 512-d segment embeddings (``projection_layer``, ``bg_feature``).
ZEGFORMER_EMBED_DIM = 512


@dataclass
class ZegFormerWeights:
    """A converted ZegFormer checkpoint: MaskFormer sizes, its state dict (class head ``project``), the
    frozen CLIP (OpenAI layout) when included, and the source path."""

    config: MaskFormerConfig
    maskformer: dict[str, torch.Tensor]
    clip_state_dict: dict[str, torch.Tensor] | None
    source: str
    extra: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)  # inference keys the config sets explicitly


#: inference settings an official ``*_gzss_eval.yaml`` may set: ovss attribute -> detectron2 key.
ZEGFORMER_SETTING_KEYS = {"gamma": "MODEL.MASK_FORMER.GZERO_CALIBRATE", "ensembling": "MODEL.MASK_FORMER.ENSEMBLING",
                          "prompt": "MODEL.PROMPT_ENSEMBLE_TYPE", "short_side": "INPUT.MIN_SIZE_TEST",
                          "max_long_side": "INPUT.MAX_SIZE_TEST", "clip_cls_style": "MODEL.CLIP_CLS_STYLE"}


def load_zegformer_checkpoint(path: str | Path,
                              config: str | Path | dict[str, Any] | None = None) -> ZegFormerWeights:
    """Convert a ZegFormer checkpoint (official ``.pth``, safetensors copy, or one ovss training wrote).

    Raises:
        ModelLoadError: unreadable file, a checkpoint of another method or backbone (e.g. the word-vector
            variant with 600-d embeddings).
    """
    ck = read_d2_checkpoint(path)
    sd = ck.model
    if any(k.startswith("sem_seg_head.predictor.class_embed") for k in sd):
        raise ModelLoadError(f"{path} is a ZSSeg checkpoint (it has 'class_embed'): use method 'zsseg'")
    if "sem_seg_head.predictor.projection_layer.weight" not in sd:
        raise ModelLoadError(f"{path} is not a ZegFormer checkpoint: no "
                             "'sem_seg_head.predictor.projection_layer' (expected dingjiansw101/ZegFormer)")
    dim = sd["sem_seg_head.predictor.projection_layer.weight"].shape[0]
    if dim != ZEGFORMER_EMBED_DIM:
        raise ModelLoadError(f"{path}: segment embeddings are {dim}-d; only the CLIP (512-d) ZegFormer is "
                             "supported, not the word-vector baseline")
    check_backbone_keys(sd, "ZegFormer", path)
    cfg = resolve_config(config, ck.extra, "ZegFormer")
    mf_cfg = maskformer_config(cfg, ZEGFORMER_RELEASED, "project", embedding_dim=ZEGFORMER_EMBED_DIM)
    own, rest = maskformer_state_dict(sd, ("criterion.",))
    clip_prefix = "predictor.clip_model."
    clip_sd = {k[len(clip_prefix):]: v for k, v in own.items() if k.startswith(clip_prefix)} or None
    own = {k: v for k, v in own.items() if not k.startswith(clip_prefix)}
    return ZegFormerWeights(mf_cfg, own, clip_sd, str(path), ck.extra,
                            inference_settings(cfg, ZEGFORMER_SETTING_KEYS))


def save_zegformer_checkpoint(path: str | Path, maskformer: dict[str, torch.Tensor], config_flat: dict[str, Any],
                              extra: dict[str, Any] | None = None) -> None:
    """Write a checkpoint in the official key layout, with ``ovss_config`` (dotted keys) beside it."""
    sd = {k if k.startswith("backbone.") else "sem_seg_head." + k: v.detach().cpu() for k, v in maskformer.items()}
    obj = {"model": sd, "ovss_config": dict(config_flat)}
    obj.update(extra or {})
    torch.save(obj, str(path))
