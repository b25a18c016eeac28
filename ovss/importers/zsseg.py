"""Loading released ZSSeg / SimSeg checkpoints (MendelXu/zsseg.baseline) without detectron2.

A released checkpoint is detectron2's ``{"model": state_dict, ...}`` of ``ZeroShotMaskFormer``:
``backbone.*`` (R101c), ``sem_seg_head.pixel_decoder.*``, ``sem_seg_head.predictor.*``,
``clip_adapter.non_object_embedding``, ``clip_adapter.prompt_learner.*`` (learned prefix prompts and the
token-embedding buffers of SOT / "." / EOT / pad), ``criterion.empty_weight`` and, when the file was
written from ``model.state_dict()``, the frozen CLIP under ``clip_adapter.clip_model.*``. This module
turns it into the state dict of :class:`ovss.models.maskformer.MaskFormerV1` plus the ZSSeg text-side
tensors, and reads the architecture sizes from a config (an official YAML with its ``_BASE_`` chain, or
a JSON of dotted keys) or, when none is given, uses the released configuration
(``configs/coco-stuff-164k-156/zero_shot_maskformer_R101c_bs32_60k.yaml``).

Quirk handled (``ZeroShotMaskFormerHead._load_from_state_dict``): the official head renames every
``sem_seg_head.*`` key outside ``predictor`` to ``sem_seg_head.pixel_decoder.*`` when the state dict
has no version-2 metadata. That converts pre-v2 checkpoints (``sem_seg_head.adapter_1.weight``) but
double-prefixes keys of a metadata-less dict that already has the new names (a safetensors copy).
Here both layouts load: a key is moved under ``pixel_decoder`` only when it is not there already.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from ..backbones.resnet import ResNetConfig
from ..checkpoints import load_checkpoint
from ..errors import InputError, ModelLoadError
from ..models.maskformer import MaskFormerConfig
from .d2config import cfg_get, load_config

#: architecture of the released ZSSeg models (R101c, both the zero-shot and the cross-dataset one).
ZSSEG_RELEASED: dict[str, Any] = {
    "MODEL.BACKBONE.NAME": "build_resnet_deeplab_backbone",
    "MODEL.RESNETS.DEPTH": 101,
    "MODEL.RESNETS.STEM_TYPE": "deeplab",
    "MODEL.RESNETS.STEM_OUT_CHANNELS": 128,
    "MODEL.RESNETS.RES2_OUT_CHANNELS": 256,
    "MODEL.RESNETS.WIDTH_PER_GROUP": 64,
    "MODEL.RESNETS.NUM_GROUPS": 1,
    "MODEL.RESNETS.STRIDE_IN_1X1": False,
    "MODEL.RESNETS.RES5_DILATION": 1,
    "MODEL.RESNETS.RES5_MULTI_GRID": [1, 2, 4],
    "MODEL.SEM_SEG_HEAD.CONVS_DIM": 256,
    "MODEL.SEM_SEG_HEAD.MASK_DIM": 256,
    "MODEL.SEM_SEG_HEAD.NORM": "GN",
    "MODEL.SEM_SEG_HEAD.EMBEDDING_DIM": 512,
    "MODEL.SEM_SEG_HEAD.EMBED_HIDDEN_DIM": 1024,
    "MODEL.SEM_SEG_HEAD.EMBED_LAYERS": 2,
    "MODEL.MASK_FORMER.HIDDEN_DIM": 256,
    "MODEL.MASK_FORMER.NHEADS": 8,
    "MODEL.MASK_FORMER.DIM_FEEDFORWARD": 2048,
    "MODEL.MASK_FORMER.DEC_LAYERS": 6,
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": 100,
    "MODEL.MASK_FORMER.DROPOUT": 0.1,
    "MODEL.MASK_FORMER.PRE_NORM": False,
    "MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ": False,
    "MODEL.MASK_FORMER.SIZE_DIVISIBILITY": 32,
    "MODEL.CLIP_ADAPTER.PROMPT_DIM": 512,
    "MODEL.CLIP_ADAPTER.PROMPT_SHAPE": [16, 0],
}

#: detectron2 defaults that an official YAML relies on when it does not set a key.
D2_RESNET_DEFAULTS: dict[str, Any] = {
    "MODEL.RESNETS.DEPTH": 50,
    "MODEL.RESNETS.STEM_OUT_CHANNELS": 64,
    "MODEL.RESNETS.RES2_OUT_CHANNELS": 256,
    "MODEL.RESNETS.WIDTH_PER_GROUP": 64,
    "MODEL.RESNETS.NUM_GROUPS": 1,
    "MODEL.RESNETS.STRIDE_IN_1X1": True,
    "MODEL.RESNETS.RES5_DILATION": 1,
    "MODEL.RESNETS.RES5_MULTI_GRID": [1, 1, 1],
}

RESNET_BUILDERS = {"build_resnet_backbone": "basic", "build_resnet_deeplab_backbone": "deeplab"}


@dataclass
class D2Checkpoint:
    """A detectron2 checkpoint read from disk.

    Attributes:
        model: the flat state dict (key -> tensor), as saved.
        versions: ``_metadata`` versions per module prefix ({} when the file has none, e.g. safetensors).
        extra: the other top-level entries (``iteration``, ``ovss_config``, ...).
    """

    model: dict[str, torch.Tensor]
    versions: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def read_d2_checkpoint(path: str | Path) -> D2Checkpoint:
    """Read a detectron2 checkpoint: ``.pth`` (``torch.save``), ``.pkl`` (pickled numpy arrays) or a
    ``.safetensors`` copy (``ovss convert``), through :func:`ovss.checkpoints.load_checkpoint`, which
    never executes code from the file.

    Raises:
        ModelLoadError: missing, unreadable or unsafe file, or no tensors inside.
    """
    ck = load_checkpoint(path)
    return D2Checkpoint(dict(ck.tensors), ck.versions, ck.extra)


def rename_pixel_decoder(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Move ``sem_seg_head.X`` (X not ``predictor.*`` / ``pixel_decoder.*``) to
    ``sem_seg_head.pixel_decoder.X``: the pre-version-2 MaskFormer head layout."""
    out = {}
    for k, v in sd.items():
        if (k.startswith("sem_seg_head.") and not k.startswith("sem_seg_head.predictor.")
                and not k.startswith("sem_seg_head.pixel_decoder.")):
            k = "sem_seg_head.pixel_decoder." + k[len("sem_seg_head."):]
        out[k] = v
    return out


def maskformer_state_dict(sd: dict[str, torch.Tensor], drop_prefixes: tuple[str, ...]) -> tuple[
        dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split an official state dict into (MaskFormerV1 keys, the rest).

    ``backbone.*`` stays, ``sem_seg_head.pixel_decoder.*`` -> ``pixel_decoder.*``,
    ``sem_seg_head.predictor.*`` -> ``predictor.*``; keys under ``drop_prefixes`` are dropped.
    """
    own: dict[str, torch.Tensor] = {}
    rest: dict[str, torch.Tensor] = {}
    for k, v in rename_pixel_decoder(sd).items():
        if any(k.startswith(p) for p in drop_prefixes):
            continue
        if k.startswith("backbone."):
            own[k] = v.float()
        elif k.startswith("sem_seg_head.pixel_decoder.") or k.startswith("sem_seg_head.predictor."):
            own[k[len("sem_seg_head."):]] = v.float()
        else:
            rest[k] = v
    return own, rest


def check_backbone_keys(sd: dict[str, torch.Tensor], method: str, path: str | Path) -> None:
    """Raise a clear error when the checkpoint's backbone is not a detectron2 ResNet."""
    bk = [k for k in sd if k.startswith("backbone.")]
    if not bk:
        raise ModelLoadError(f"{path} has no 'backbone.*' keys: it is not a {method} checkpoint "
                             "(expected a detectron2 checkpoint of the official code)")
    if not any(k.startswith("backbone.res5.") for k in bk):
        example = bk[0]
        raise ModelLoadError(f"{path}: the backbone is not a ResNet (e.g. {example!r}); only the released "
                             f"ResNet {method} models (R50/R101/R101c) are supported")


class _TolerantLoader(yaml.SafeLoader):
    """SafeLoader that reads python-specific tags (``!!python/object/apply:eval [...]`` in MaskFormer's base
    configs, e.g. ``INPUT.MIN_SIZE_TRAIN``) as None instead of failing; nothing is evaluated."""


_TolerantLoader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)


def read_config(path: str | Path) -> dict[str, Any]:
    """:func:`ovss.importers.d2config.load_config`, falling back for official YAMLs whose ``_BASE_`` chain
    holds python tags (which a plain safe load rejects): the same merge, with those values read as None.

    Raises:
        InputError: missing or unparsable file.
    """
    try:
        return load_config(path)
    except InputError:
        if Path(path).suffix.lower() not in (".yaml", ".yml"):
            raise
    return _load_yaml_tolerant(Path(path))


def _load_yaml_tolerant(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(f"config file not found: {path}")
    try:
        data = yaml.load(path.read_text(), Loader=_TolerantLoader) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"cannot parse config {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise InputError(f"config {path} is not a mapping")
    base = data.pop("_BASE_", None)
    if base:
        data = _merge_dicts(_load_yaml_tolerant(path.parent / base), data)
    return data


def _merge_dicts(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge_dicts(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve_config(config: str | Path | dict[str, Any] | None, extra: dict[str, Any], method: str) -> dict[str, Any]:
    """The architecture config: ``config`` (path or dict), else one stored by ovss training in the
    checkpoint, else {} (the released configuration applies)."""
    if isinstance(config, dict):
        cfg = config
    elif config is not None:
        cfg = read_config(config)
    elif isinstance(extra.get("ovss_config"), dict):
        from .d2config import nest_keys

        cfg = nest_keys(extra["ovss_config"])
    else:
        cfg = {}
    name = cfg_get(cfg, "MODEL.BACKBONE.NAME", None)
    if name is not None and name not in RESNET_BUILDERS:
        raise ModelLoadError(f"{method}: backbone {name!r} is not supported (only the ResNet backbones "
                             f"{', '.join(RESNET_BUILDERS)} of the released models)")
    return cfg


def config_value(cfg: dict[str, Any], key: str, released: dict[str, Any]) -> Any:
    """A config value: the file's, else detectron2's default when the file names its backbone builder
    (a full official config), else the released model's."""
    value = cfg_get(cfg, key, None)
    if value is not None:
        return value
    if cfg_get(cfg, "MODEL.BACKBONE.NAME", None) is not None and key in D2_RESNET_DEFAULTS:
        if key == "MODEL.RESNETS.STEM_OUT_CHANNELS" and cfg_get(cfg, "MODEL.RESNETS.STEM_TYPE", "") == "deeplab":
            return 128
        return D2_RESNET_DEFAULTS[key]
    return released[key]


def as_sequence(value: Any) -> list[Any]:
    """A list from a config value; detectron2 YAMLs write tuples as strings such as ``"(16, 0)"``."""
    if isinstance(value, str):
        import ast

        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise InputError(f"config value {value!r} is not a list or tuple") from None
    if not isinstance(value, (list, tuple)):
        raise InputError(f"config value {value!r} is not a list or tuple")
    return list(value)


def maskformer_config(cfg: dict[str, Any], released: dict[str, Any], class_head: str,
                      embedding_dim: int | None = None) -> MaskFormerConfig:
    """Build a :class:`MaskFormerConfig` from a detectron2 config dict with released defaults."""
    def get(key: str) -> Any:
        return config_value(cfg, key, released)

    builder = get("MODEL.BACKBONE.NAME")
    stem = (cfg_get(cfg, "MODEL.RESNETS.STEM_TYPE", None)
            or (RESNET_BUILDERS[builder] if cfg_get(cfg, "MODEL.BACKBONE.NAME", None) is not None
                else released["MODEL.RESNETS.STEM_TYPE"]))
    multi_grid = as_sequence(get("MODEL.RESNETS.RES5_MULTI_GRID"))
    resnet = ResNetConfig(
        depth=int(get("MODEL.RESNETS.DEPTH")), stem_type=stem,
        stem_out_channels=int(get("MODEL.RESNETS.STEM_OUT_CHANNELS")),
        res2_out_channels=int(get("MODEL.RESNETS.RES2_OUT_CHANNELS")),
        width_per_group=int(get("MODEL.RESNETS.WIDTH_PER_GROUP")),
        num_groups=int(get("MODEL.RESNETS.NUM_GROUPS")),
        stride_in_1x1=bool(get("MODEL.RESNETS.STRIDE_IN_1X1")),
        res5_dilation=int(get("MODEL.RESNETS.RES5_DILATION")),
        res5_multi_grid=[int(m) for m in multi_grid])
    return MaskFormerConfig(
        resnet=resnet,
        conv_dim=int(get("MODEL.SEM_SEG_HEAD.CONVS_DIM")), mask_dim=int(get("MODEL.SEM_SEG_HEAD.MASK_DIM")),
        norm=str(get("MODEL.SEM_SEG_HEAD.NORM")),
        hidden_dim=int(get("MODEL.MASK_FORMER.HIDDEN_DIM")), nheads=int(get("MODEL.MASK_FORMER.NHEADS")),
        dim_feedforward=int(get("MODEL.MASK_FORMER.DIM_FEEDFORWARD")),
        dec_layers=int(get("MODEL.MASK_FORMER.DEC_LAYERS")),
        num_queries=int(get("MODEL.MASK_FORMER.NUM_OBJECT_QUERIES")),
        dropout=float(get("MODEL.MASK_FORMER.DROPOUT")), pre_norm=bool(get("MODEL.MASK_FORMER.PRE_NORM")),
        enforce_input_proj=bool(get("MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ")),
        class_head=class_head,
        embedding_dim=int(embedding_dim if embedding_dim is not None else get("MODEL.SEM_SEG_HEAD.EMBEDDING_DIM")),
        embed_hidden_dim=int(get("MODEL.SEM_SEG_HEAD.EMBED_HIDDEN_DIM")) if class_head == "embed" else 1024,
        embed_layers=int(get("MODEL.SEM_SEG_HEAD.EMBED_LAYERS")) if class_head == "embed" else 2,
        size_divisibility=int(get("MODEL.MASK_FORMER.SIZE_DIVISIBILITY")))


@dataclass
class ZSSegWeights:
    """A converted ZSSeg checkpoint.

    Attributes:
        config: MaskFormer sizes.
        maskformer: state dict of :class:`MaskFormerV1` (class head ``embed``).
        non_object_embedding: (1, E) learned no-object embedding (normalised at use).
        prompts: learned prompt tensors (``prefix_prompt`` (n, D), optional ``suffix_prompt``,
            ``start_signal`` / ``dot_signal`` / ``end_signal`` / ``pad_signal`` (1, D)); {} when absent.
        clip_state_dict: the frozen CLIP in OpenAI layout when the checkpoint includes it, else None.
        prompt_shape: (n_prefix, n_suffix) from the config.
        region_prompts: the learned prompts of the separate region classifier
            (``MODEL.CLIP_ADAPTER.SEPERATE_ADAPTER``: ``_region_clip_adapter.prompt_learner.*``); {} without one.
        region_prompt_shape: its (n_prefix, n_suffix) (``REGION_CLIP_ADAPTER.PROMPT_SHAPE``).
        source: the checkpoint path.
        settings: inference settings the config sets explicitly (see :func:`inference_settings`).
    """

    config: MaskFormerConfig
    maskformer: dict[str, torch.Tensor]
    non_object_embedding: torch.Tensor
    prompts: dict[str, torch.Tensor]
    clip_state_dict: dict[str, torch.Tensor] | None
    prompt_shape: tuple[int, int]
    source: str
    extra: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    region_prompts: dict[str, torch.Tensor] = field(default_factory=dict)
    region_prompt_shape: tuple[int, int] = (16, 0)


#: inference settings an official eval config may set: ovss attribute -> detectron2 key.
ZSSEG_SETTING_KEYS = {"mask_thr": "MODEL.CLIP_ADAPTER.MASK_THR",
                      "ensemble_weight": "MODEL.CLIP_ADAPTER.CLIP_ENSEMBLE_WEIGHT",
                      "prompt": "MODEL.CLIP_ADAPTER.PROMPT_LEARNER",
                      "separate_adapter": "MODEL.CLIP_ADAPTER.SEPERATE_ADAPTER",
                      "region_prompt": "MODEL.CLIP_ADAPTER.REGION_CLIP_ADAPTER.PROMPT_LEARNER",
                      "short_side": "INPUT.MIN_SIZE_TEST", "max_long_side": "INPUT.MAX_SIZE_TEST"}


def inference_settings(cfg: dict[str, Any], keys: dict[str, str]) -> dict[str, Any]:
    """The inference settings ``cfg`` sets explicitly ({name: value}); a method applies them over its
    dataset protocol (explicit constructor arguments still win)."""
    out = {}
    for name, key in keys.items():
        value = cfg_get(cfg, key, None)
        if value is not None and not isinstance(value, dict):
            out[name] = value
    return out


def load_zsseg_checkpoint(path: str | Path, config: str | Path | dict[str, Any] | None = None) -> ZSSegWeights:
    """Convert a ZSSeg checkpoint (official ``.pth``, its safetensors copy, or one ovss training wrote).

    Args:
        path: the checkpoint file.
        config: architecture config (official YAML, dotted-key JSON, or a dict); None = released sizes.

    Raises:
        ModelLoadError: unreadable file, a checkpoint of another method or backbone, or sizes that do not
            fit (the message says to pass the matching ``--config``).
    """
    ck = read_d2_checkpoint(path)
    sd = ck.model
    if any(k.startswith("sem_seg_head.predictor.projection_layer") for k in sd):
        raise ModelLoadError(f"{path} is a ZegFormer checkpoint (it has 'projection_layer'): use method "
                             "'zegformer'")
    if not any(k.startswith("sem_seg_head.predictor.class_embed") for k in sd):
        raise ModelLoadError(f"{path} is not a ZSSeg checkpoint: no 'sem_seg_head.predictor.class_embed' "
                             "keys (expected the ZeroShotMaskFormer of MendelXu/zsseg.baseline)")
    check_backbone_keys(sd, "ZSSeg", path)
    cfg = resolve_config(config, ck.extra, "ZSSeg")
    mf_cfg = maskformer_config(cfg, ZSSEG_RELEASED, "embed")
    own, rest = maskformer_state_dict(sd, ("criterion.",))
    clip_sd = {k[len("clip_adapter.clip_model."):]: v for k, v in rest.items()
               if k.startswith("clip_adapter.clip_model.")} or None
    if "clip_adapter.non_object_embedding" not in rest:
        raise ModelLoadError(f"{path} has no 'clip_adapter.non_object_embedding': not a ZSSeg checkpoint")
    prompts = {k[len("clip_adapter.prompt_learner."):]: v.float() for k, v in rest.items()
               if k.startswith("clip_adapter.prompt_learner.")}
    shape = as_sequence(cfg_get(cfg, "MODEL.CLIP_ADAPTER.PROMPT_SHAPE", None)
                        or ZSSEG_RELEASED["MODEL.CLIP_ADAPTER.PROMPT_SHAPE"])
    region = {k[len("_region_clip_adapter.prompt_learner."):]: v.float() for k, v in rest.items()
              if k.startswith("_region_clip_adapter.prompt_learner.")}
    region_shape = as_sequence(cfg_get(cfg, "MODEL.CLIP_ADAPTER.REGION_CLIP_ADAPTER.PROMPT_SHAPE", None) or (16, 0))
    return ZSSegWeights(mf_cfg, own, rest["clip_adapter.non_object_embedding"].float(), prompts, clip_sd,
                        (int(shape[0]), int(shape[1])), str(path), ck.extra,
                        inference_settings(cfg, ZSSEG_SETTING_KEYS), region,
                        (int(region_shape[0]), int(region_shape[1])))


def save_zsseg_checkpoint(path: str | Path, maskformer: dict[str, torch.Tensor], non_object_embedding: torch.Tensor,
                          prompts: dict[str, torch.Tensor], config_flat: dict[str, Any],
                          extra: dict[str, Any] | None = None) -> None:
    """Write a checkpoint in the official key layout (``{"model": state_dict, ...}``) that
    :func:`load_zsseg_checkpoint` and the official code both read; ``config_flat`` (dotted keys) is kept
    under ``ovss_config`` so no ``--config`` is needed to load it back."""
    sd: dict[str, torch.Tensor] = {}
    for k, v in maskformer.items():
        sd[k if k.startswith("backbone.") else "sem_seg_head." + k] = v.detach().cpu()
    sd["clip_adapter.non_object_embedding"] = non_object_embedding.detach().cpu()
    for k, v in prompts.items():
        sd["clip_adapter.prompt_learner." + k] = v.detach().cpu()
    obj = {"model": sd, "ovss_config": dict(config_flat)}
    obj.update(extra or {})
    torch.save(obj, str(path))
