"""Load the released FC-CLIP checkpoints (detectron2 ``.pth``) without detectron2.

The official checkpoints (``torch.save({"model": state_dict, ...})``) hold the module paths of
the official ``FCCLIP`` meta-architecture: ``backbone.clip_model.visual.*`` (the frozen CLIP
image tower), ``sem_seg_head.pixel_decoder.*``, ``sem_seg_head.predictor.*``,
``void_embedding.weight`` and the training buffer ``criterion.empty_weight``. They do **not**
hold the CLIP text tower (``token_embedding``, ``transformer.*``, ``text_projection``,
``logit_scale``, ...): the official code takes it from open_clip's pretrained weights, and so do
we. :class:`ovss.models.mask2former.FCCLIPNet` uses the same module names, so the conversion is
"drop the training buffer, keep the rest"; the work is in checking the architecture and reading
the sizes (from the official YAML when given, else from the tensors' shapes, else the paper's
defaults of ``configs/coco/panoptic-segmentation/fcclip/fcclip_convnext_large_eval_ade20k.yaml``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..checkpoints import load_into, load_state_dict
from ..constants import CLIP_MEAN_255_D2, CLIP_STD_255_D2
from ..errors import ModelLoadError
from ..models.mask2former import FCCLIPConfig, FCCLIPNet
from .d2config import cfg_get, load_config

#: Keys every FC-CLIP checkpoint has (anything else is another architecture).
_SIGNATURE = ("sem_seg_head.predictor.class_embed.layers.2.weight",
              "sem_seg_head.predictor._mask_pooling_proj.1.weight",
              "sem_seg_head.pixel_decoder.mask_features.weight",
              "void_embedding.weight")

_TRAINING_ONLY = ("criterion.",)


@dataclass
class FCCLIPSettings:
    """Inference settings of the official config (defaults: the ADE20K eval config).

    Attributes:
        clip_model: [MODEL.FC_CLIP.CLIP_MODEL_NAME], or None when no config was given.
        clip_pretrained: [MODEL.FC_CLIP.CLIP_PRETRAINED_WEIGHTS], or None.
        alpha, beta: geometric-ensemble exponents for seen / unseen classes.
        ensemble_on_valid_mask: use the out-of-vocabulary branch only for non-empty masks.
        object_mask_threshold, overlap_threshold: panoptic inference thresholds.
        size_divisibility: padding multiple of the input.
        pixel_mean, pixel_std: RGB, 0-255 units.
        min_size_test, max_size_test: short side and long-side cap of the test resize.
    """

    clip_model: str | None = None
    clip_pretrained: str | None = None
    alpha: float = 0.4
    beta: float = 0.8
    ensemble_on_valid_mask: bool = False
    object_mask_threshold: float = 0.0
    overlap_threshold: float = 0.8
    size_divisibility: int = 32
    pixel_mean: tuple[float, ...] = CLIP_MEAN_255_D2
    pixel_std: tuple[float, ...] = CLIP_STD_255_D2
    min_size_test: int | None = None
    max_size_test: int | None = None


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an FC-CLIP checkpoint (``.pth`` from detectron2, or ``.safetensors``) into a state dict.

    Raises:
        ModelLoadError: unreadable file, or not an FC-CLIP checkpoint (the message names what
            it looks like instead).
    """
    sd = load_state_dict(path)
    missing = [k for k in _SIGNATURE if k not in sd]
    if missing:
        raise ModelLoadError(f"{path} is not an FC-CLIP checkpoint ({_describe(sd)}; it lacks {missing[0]}): "
                             "pass a released FC-CLIP .pth (see docs/fc_clip.md) or one written by "
                             "`python -m ovss.training.fc_clip_train`")
    return sd


def _describe(sd: dict[str, torch.Tensor]) -> str:
    keys = list(sd)
    if any(k.startswith("sem_seg_head.predictor.class_embed.weight") for k in keys):
        return "it looks like a closed-vocabulary Mask2Former/MaskFormer checkpoint"
    if any(k.startswith("visual.") for k in keys) and any(k.startswith("token_embedding") for k in keys):
        return "it looks like a plain CLIP checkpoint"
    if not keys:
        return "it holds no tensors"
    return f"{len(keys)} tensors, e.g. {keys[0]}"


def config_from_state_dict(sd: dict[str, torch.Tensor]) -> FCCLIPConfig:
    """Head sizes read from the tensor shapes (everything but what shapes cannot tell).

    Raises:
        ModelLoadError: inconsistent shapes.
    """
    try:
        pd = "sem_seg_head.pixel_decoder."
        pr = "sem_seg_head.predictor."
        enc_re = re.compile(re.escape(pd) + r"transformer\.encoder\.layers\.(\d+)\.")
        dec_re = re.compile(re.escape(pr) + r"transformer_ffn_layers\.(\d+)\.")
        enc = {int(m.group(1)) for m in map(enc_re.match, sd) if m}
        dec = {int(m.group(1)) for m in map(dec_re.match, sd) if m}
        conv_dim = int(sd[pd + "input_proj.0.0.weight"].shape[0])
        aw = int(sd[pd + "transformer.encoder.layers.0.self_attn.attention_weights.weight"].shape[0])
        levels = int(sd[pd + "transformer.level_embed"].shape[0])
        # attention_weights has heads * levels * points rows; the official pixel decoder always
        # uses 4 points (DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS is never read)
        points = 4
        nheads = aw // (levels * points)
        empty = sd.get("criterion.empty_weight")
        return FCCLIPConfig(
            conv_dim=conv_dim,
            mask_dim=int(sd[pd + "mask_features.weight"].shape[0]),
            enc_layers=len(enc),
            enc_ffn=int(sd[pd + "transformer.encoder.layers.0.linear1.weight"].shape[0]),
            enc_points=points,
            norm="GN" if pd + "adapter_1.norm.weight" in sd else "",
            hidden_dim=int(sd[pr + "query_feat.weight"].shape[1]),
            nheads=nheads,
            dim_feedforward=int(sd[pr + "transformer_ffn_layers.0.linear1.weight"].shape[0]) if dec else 2048,
            dec_layers=len(dec) + 1,
            num_queries=int(sd[pr + "query_feat.weight"].shape[0]),
            enforce_input_proj=pr + "input_proj.0.weight" in sd,
            embed_dim=int(sd[pr + "class_embed.layers.2.weight"].shape[0]),
            num_train_classes=int(empty.shape[0]) - 1 if empty is not None else 133,
        )
    except (KeyError, IndexError, ZeroDivisionError) as exc:
        raise ModelLoadError(f"the FC-CLIP checkpoint has an unexpected layout ({exc}): "
                             "is it a complete checkpoint?") from None


def config_from_d2(cfg: dict[str, Any]) -> tuple[dict[str, Any], FCCLIPSettings]:
    """Head sizes (as FCCLIPConfig keyword arguments, only those the file sets) and inference
    settings from an official detectron2 config (``load_config`` output)."""
    keys = {
        "conv_dim": "MODEL.SEM_SEG_HEAD.CONVS_DIM", "mask_dim": "MODEL.SEM_SEG_HEAD.MASK_DIM",
        "enc_layers": "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS",
        "norm": "MODEL.SEM_SEG_HEAD.NORM", "hidden_dim": "MODEL.MASK_FORMER.HIDDEN_DIM",
        "nheads": "MODEL.MASK_FORMER.NHEADS", "dim_feedforward": "MODEL.MASK_FORMER.DIM_FEEDFORWARD",
        "dec_layers": "MODEL.MASK_FORMER.DEC_LAYERS", "num_queries": "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES",
        "pre_norm": "MODEL.MASK_FORMER.PRE_NORM", "enforce_input_proj": "MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ",
        "embed_dim": "MODEL.FC_CLIP.EMBED_DIM", "common_stride": "MODEL.SEM_SEG_HEAD.COMMON_STRIDE",
        "num_train_classes": "MODEL.SEM_SEG_HEAD.NUM_CLASSES",
    }
    sizes = {k: cfg_get(cfg, v) for k, v in keys.items() if cfg_get(cfg, v) is not None}
    d = FCCLIPSettings()
    settings = FCCLIPSettings(
        clip_model=cfg_get(cfg, "MODEL.FC_CLIP.CLIP_MODEL_NAME"),
        clip_pretrained=cfg_get(cfg, "MODEL.FC_CLIP.CLIP_PRETRAINED_WEIGHTS"),
        alpha=float(cfg_get(cfg, "MODEL.FC_CLIP.GEOMETRIC_ENSEMBLE_ALPHA", d.alpha)),
        beta=float(cfg_get(cfg, "MODEL.FC_CLIP.GEOMETRIC_ENSEMBLE_BETA", d.beta)),
        ensemble_on_valid_mask=bool(cfg_get(cfg, "MODEL.FC_CLIP.ENSEMBLE_ON_VALID_MASK", d.ensemble_on_valid_mask)),
        object_mask_threshold=float(cfg_get(cfg, "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD",
                                            d.object_mask_threshold)),
        overlap_threshold=float(cfg_get(cfg, "MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD", d.overlap_threshold)),
        size_divisibility=int(cfg_get(cfg, "MODEL.MASK_FORMER.SIZE_DIVISIBILITY", d.size_divisibility)),
        pixel_mean=tuple(float(v) for v in cfg_get(cfg, "MODEL.PIXEL_MEAN", d.pixel_mean)),
        pixel_std=tuple(float(v) for v in cfg_get(cfg, "MODEL.PIXEL_STD", d.pixel_std)),
        min_size_test=cfg_get(cfg, "INPUT.MIN_SIZE_TEST"),
        max_size_test=cfg_get(cfg, "INPUT.MAX_SIZE_TEST"),
    )
    return sizes, settings


def resolve_config(sd: dict[str, torch.Tensor], config: str | Path | dict[str, Any] | None
                   ) -> tuple[FCCLIPConfig, FCCLIPSettings]:
    """Sizes from the checkpoint's shapes, checked against the config file when one is given.

    Raises:
        ModelLoadError: the config and the checkpoint disagree on a size.
        InputError: the config file is missing or unreadable.
    """
    arch = config_from_state_dict(sd)
    if config is None:
        return arch, FCCLIPSettings()
    cfg = config if isinstance(config, dict) else load_config(config)
    sizes, settings = config_from_d2(cfg)
    if int(sizes.get("common_stride", 4)) != 4:
        raise ModelLoadError(f"MODEL.SEM_SEG_HEAD.COMMON_STRIDE {sizes['common_stride']} is not supported "
                             "(every released FC-CLIP model uses 4)")
    for key, value in sizes.items():
        have = getattr(arch, key)
        if key in ("norm", "pre_norm", "common_stride", "num_train_classes"):
            setattr(arch, key, type(have)(value))
            continue
        if int(value) != int(have):
            raise ModelLoadError(f"the config and the checkpoint disagree: {key} is {value} in the config "
                                 f"but {have} in the checkpoint. Pass the config file that belongs to "
                                 "this checkpoint (or none: sizes are read from the checkpoint)")
    return arch, settings


#: the frozen CLIP's visual tower in a checkpoint: open_clip's timm ConvNeXt trunk, or its ModifiedResNet
_VISUAL_FAMILIES = {"convnext": "backbone.clip_model.visual.trunk.", "resnet": "backbone.clip_model.visual.layer1."}


def _check_clip_family(sd: dict[str, torch.Tensor], model_type: str | None, name: str) -> None:
    """A checkpoint trained on a ConvNeXt CLIP given a ResNet CLIP (or the reverse) is named as such.

    Raises:
        ModelLoadError: the checkpoint's visual tower is of another family than ``model_type``.
    """
    found = next((fam for fam, prefix in _VISUAL_FAMILIES.items() if any(k.startswith(prefix) for k in sd)), None)
    if found and model_type and found != model_type:
        hint = ("--model convnext_large_d_320 --pretrained laion2b_s29b_b131k_ft_soup" if found == "convnext"
                else "--model RN50 / RN101 / RN50x4 / RN50x16 / RN50x64 --pretrained openai")
        raise ModelLoadError(f"{name} was trained on a {found} CLIP but the given CLIP is a {model_type}: "
                             f"pass the CLIP it was trained with ({hint}; see docs/fc_clip.md)")


def build_fcclip(checkpoint: str | Path, backbone: torch.nn.Module, config: str | Path | dict[str, Any] | None = None
                 ) -> tuple[FCCLIPNet, FCCLIPSettings]:
    """Build an FC-CLIP network and load a checkpoint into it.

    Args:
        checkpoint: the official ``.pth`` (or ``.safetensors``, or a checkpoint written by
            :mod:`ovss.training.fc_clip_train`).
        backbone: the loaded :class:`ovss.backbones.convnext_clip.ConvCLIPBackbone` (its text
            tower stays as loaded: the checkpoints have none; a visual tower in the checkpoint
            replaces the loaded one, as in the official loader).
        config: official detectron2 YAML (or ``_BASE_`` chain / JSON) or its parsed dict.

    Returns:
        The network in eval mode and the inference settings.

    Raises:
        ModelLoadError: not an FC-CLIP checkpoint, or one of another architecture (other CLIP
            visual tower, other sizes than the config).
    """
    sd = read_checkpoint(checkpoint)
    _check_clip_family(sd, getattr(backbone, "model_type", None), Path(checkpoint).name)
    arch, settings = resolve_config(sd, config)
    net = FCCLIPNet(backbone, arch)
    own = net.state_dict()
    load = {k: v for k, v in sd.items() if not k.startswith(_TRAINING_ONLY)}
    for k, v in own.items():  # text tower (and a visual tower absent from the file) from open_clip
        if k not in load and k.startswith("backbone.clip_model."):
            load[k] = v
    load = {k: v.float() if v.is_floating_point() else v for k, v in load.items()}
    load_into(net, load, f"FC-CLIP checkpoint {Path(checkpoint).name}")
    net.eval()
    return net, settings
