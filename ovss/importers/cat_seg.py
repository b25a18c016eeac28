"""Load official CAT-Seg checkpoints (cvlab-kaist/CAT-Seg @ 6d3a188) without detectron2.

A released checkpoint (``model_base.pth``, ``model_large.pth``, or ``model_final.pth`` of a training
run) is ``torch.save({"model": CATSeg.state_dict(), ...})``: the fine-tuned CLIP under
``sem_seg_head.predictor.clip_model.*`` (OpenAI layout, except that the vendored ``Attention``
splits each ``in_proj_weight`` into ``q_proj_weight`` / ``k_proj_weight`` / ``v_proj_weight``,
``third_party/model_vpt.py:168-177``), the aggregator under ``sem_seg_head.predictor.transformer.*``
(the names of :class:`ovss.models.cat_seg.Aggregator`), and the two guidance upsamplers
``upsample1`` / ``upsample2``. The file is read safely (``torch.load(weights_only=True)``, or
safetensors), the attention weights are re-packed for open_clip, and the sizes come from the
official YAML when given, checked against the tensors' shapes, else from the shapes and
:data:`RELEASED` (the official ``configs/vitb_384.yaml`` / ``configs/vitl_336.yaml``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import ModelLoadError
from ..models.cat_seg import CATSegConfig, CATSegNet
from .d2config import cfg_get, load_config

CLIP_PREFIX = "sem_seg_head.predictor.clip_model."
AGG_PREFIX = "sem_seg_head.predictor.transformer."
_SIGNATURE = (AGG_PREFIX + "conv1.weight", AGG_PREFIX + "head.weight", "upsample1.weight", "upsample2.weight")


@dataclass(frozen=True)
class CLIPVariant:
    """What ``MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED`` selects in the official code.

    Attributes:
        open_clip_name: the open_clip model of that OpenAI CLIP (QuickGELU, as the vendored CLIP).
        resolution: CLIP input side (``cat_seg_model.py:78``: 384 for ViT-B/16, else 336).
        hook_layers: blocks guiding the decoder (``cat_seg_model.py:84``: [3, 7] for ViT-B/16,
            else [7, 15]).
    """

    open_clip_name: str
    resolution: int
    hook_layers: tuple[int, int]


#: ``CLIP_PRETRAINED`` values the official code runs (``clip.load`` names of OpenAI CLIPs).
#: ViT-H / ViT-G (open_clip towers in ``cat_seg_predictor.py:64-73``) have no dense path at this
#: commit and no released weights.
CLIP_VARIANTS: dict[str, CLIPVariant] = {
    "ViT-B/16": CLIPVariant("ViT-B-16-quickgelu", 384, (3, 7)),
    "ViT-L/14@336px": CLIPVariant("ViT-L-14-336-quickgelu", 336, (7, 15)),
    "ViT-L/14": CLIPVariant("ViT-L-14-quickgelu", 336, (7, 15)),
}


@dataclass(frozen=True)
class CATSegSettings:
    """Test-time settings of an official config (defaults: ``configs/vitb_384.yaml`` + base).

    Attributes:
        clip_pretrained: [MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED].
        min_size_test, max_size_test: [INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST] test resize.
        clip_pixel_mean, clip_pixel_std: [MODEL.CLIP_PIXEL_MEAN / STD], RGB, 0-255 units.
        size_divisibility: [MODEL.MASK_FORMER.SIZE_DIVISIBILITY] padding of the non-sliding path.
        prompt_ensemble_type: [MODEL.PROMPT_ENSEMBLE_TYPE] (only "single" runs at inference).
        config_pooling_size, config_sliding_window: [POOLING_SIZES], [TEST.SLIDING_WINDOW] as the
            file sets them (the official ``eval.sh`` overrides both: (1, 1) and True).
        source: the file the settings were read from ('' for the built-in table).
    """

    clip_pretrained: str = "ViT-B/16"
    min_size_test: int = 640
    max_size_test: int = 2560
    clip_pixel_mean: tuple[float, float, float] = (122.7709383, 116.7460125, 104.09373615)
    clip_pixel_std: tuple[float, float, float] = (68.5005327, 66.6321579, 70.3231630)
    size_divisibility: int = 32
    prompt_ensemble_type: str = "single"
    config_pooling_size: tuple[int, int] = (2, 2)
    config_sliding_window: bool = False
    source: str = ""


#: The released models (README "Pretrained Models"): their configs' sizes and test settings.
RELEASED: dict[str, tuple[CATSegConfig, CATSegSettings]] = {
    "vitb_384": (CATSegConfig(text_guidance_dim=512, appearance_guidance_dim=512),
                 CATSegSettings(clip_pretrained="ViT-B/16", source="configs/vitb_384.yaml")),
    "vitl_336": (CATSegConfig(text_guidance_dim=768, appearance_guidance_dim=768),
                 CATSegSettings(clip_pretrained="ViT-L/14@336px", source="configs/vitl_336.yaml")),
}

#: open_clip CLIP width -> released config
_RELEASED_BY_WIDTH = {768: "vitb_384", 1024: "vitl_336"}


# --------------------------------------------------------------------------- reading
def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a CAT-Seg checkpoint without executing anything from it (:func:`ovss.checkpoints.load_checkpoint`:
    safetensors, or ``torch.load(weights_only=True)`` with an allow-list; the state dict under
    ``"model"`` as detectron2 writes it, or at the top).

    Raises:
        ModelLoadError: missing, unreadable or unsafe file, or not a CAT-Seg checkpoint (the
            message says what it looks like instead).
    """
    from ..checkpoints import load_checkpoint

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"CAT-Seg checkpoint not found: {path} (download model_base.pth / model_large.pth, "
                             "or pass checkpoint=\"catseg_vitb\"; see docs/cat_seg.md)")
    sd = dict(load_checkpoint(path).tensors)
    missing = [k for k in _SIGNATURE if k not in sd]
    if missing:
        raise ModelLoadError(f"{path} is not a CAT-Seg checkpoint ({_describe(sd)}; it lacks {missing[0]}): pass "
                             "model_base.pth / model_large.pth or a model_final.pth of the official training")
    return sd


def _describe(sd: dict[str, torch.Tensor]) -> str:
    keys = list(sd)
    if not keys:
        return "it holds no tensors"
    if any(k.startswith("visual.") for k in keys) and "token_embedding.weight" in sd:
        return "it looks like a plain CLIP checkpoint"
    if any(k.startswith("sem_seg_head.predictor.class_embed") for k in keys):
        return "it looks like a MaskFormer-family checkpoint"
    return f"{len(keys)} tensors, e.g. {keys[0]}"


def convert_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official keys -> :class:`ovss.models.cat_seg.CATSegNet` keys (``clip.*`` in open_clip's
    layout with ``in_proj_weight = cat([q, k, v])``, ``transformer.*``, ``upsample1/2.*``), float32.
    Keys of no known part are kept as they are (and reported as unexpected when loading)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        v = v.float() if v.is_floating_point() else v
        if k.startswith(CLIP_PREFIX):
            rest = k[len(CLIP_PREFIX):]
            if rest.endswith(("attn.k_proj_weight", "attn.v_proj_weight")):
                continue
            if rest.endswith("attn.q_proj_weight"):
                base = k[: -len("q_proj_weight")]
                parts = [sd.get(base + f"{p}_proj_weight") for p in "qkv"]
                if any(p is None for p in parts):
                    raise ModelLoadError(f"the checkpoint has {k} but not all of q/k/v_proj_weight")
                out["clip." + rest[: -len("q_proj_weight")] + "in_proj_weight"] = torch.cat(parts, 0).float()
                continue
            out["clip." + rest] = v
        elif k.startswith(AGG_PREFIX):
            out["transformer." + k[len(AGG_PREFIX):]] = v
        else:
            out[k] = v
    return out


# --------------------------------------------------------------------------- sizes
def config_from_state_dict(sd: dict[str, torch.Tensor]) -> CATSegConfig:
    """Aggregator sizes read from the official tensors' shapes (heads, attention type and pooling
    cannot be read: the released configs' 4, linear and the test-time (1, 1)).

    Raises:
        ModelLoadError: a tensor the layout needs is missing.
    """
    p = AGG_PREFIX
    try:
        conv1 = sd[p + "conv1.weight"]
        layers = {int(m.group(1)) for m in map(re.compile(re.escape(p) + r"layers\.(\d+)\.").match, sd) if m}
        app = sd.get(p + "guidance_projection.0.weight")
        txt = sd.get(p + "text_guidance_projection.0.weight")
        dec = [sd.get(p + f"decoder_guidance_projection.{i}.0.weight") for i in (0, 1)]
        mask = sd.get(p + "layers.0.swin_block.block_2.attn_mask")
        window, res = 12, (24, 24)
        if mask is not None:
            window = int(round(mask.shape[1] ** 0.5))
            side = int(round((mask.shape[0] * mask.shape[1]) ** 0.5))
            res = (side, side)
        return CATSegConfig(
            text_guidance_dim=int(txt.shape[1]) if txt is not None else 0,
            text_guidance_proj_dim=int(txt.shape[0]) if txt is not None else 0,
            appearance_guidance_dim=int(app.shape[1]) if app is not None else 0,
            appearance_guidance_proj_dim=int(app.shape[0]) if app is not None else 0,
            decoder_dims=(int(sd[p + "decoder1.conv.double_conv.0.weight"].shape[0]),
                          int(sd[p + "decoder2.conv.double_conv.0.weight"].shape[0])),
            decoder_guidance_dims=tuple(int(d.shape[1]) if d is not None else 0 for d in dec),  # type: ignore[arg-type]
            decoder_guidance_proj_dims=(int(sd[p + "decoder1.up.weight"].shape[0] - sd[p + "decoder1.up.weight"].shape[1]),
                                        int(sd[p + "decoder2.up.weight"].shape[0] - sd[p + "decoder2.up.weight"].shape[1])),
            num_layers=len(layers),
            hidden_dim=int(conv1.shape[0]),
            prompt_channel=int(conv1.shape[1]),
            window_size=window,
            feature_resolution=res,
            pad_len=256 if p + "layers.0.attention.padding_tokens" in sd else 0,
        )
    except KeyError as exc:
        raise ModelLoadError(f"the CAT-Seg checkpoint lacks {exc.args[0]}: is it complete?") from None


def clip_shape(sd: dict[str, torch.Tensor]) -> tuple[int, int, int]:
    """(width, patch size, blocks) of the checkpoint's CLIP image encoder.

    Raises:
        ModelLoadError: the checkpoint holds no CLIP image encoder.
    """
    w = sd.get(CLIP_PREFIX + "visual.conv1.weight")
    if w is None:
        raise ModelLoadError(f"the checkpoint has no CLIP image encoder ({CLIP_PREFIX}visual.*): CAT-Seg "
                             "checkpoints hold the fine-tuned CLIP")
    blocks = {int(m.group(1)) for m in map(re.compile(re.escape(CLIP_PREFIX) + r"visual\.transformer\.resblocks\.(\d+)\.").match, sd) if m}
    return int(w.shape[0]), int(w.shape[-1]), len(blocks)


def clip_variant(name: str) -> CLIPVariant:
    """The official behaviour selected by a ``CLIP_PRETRAINED`` value.

    Raises:
        ModelLoadError: ViT-H / ViT-G (no dense path at the official commit) or an unknown name.
    """
    if name in CLIP_VARIANTS:
        return CLIP_VARIANTS[name]
    if name in ("ViT-H", "ViT-G"):
        raise ModelLoadError(f"CLIP_PRETRAINED {name!r}: the official code at 6d3a188 builds it with open_clip but "
                             "cannot run its dense image path, and no such weights are released")
    raise ModelLoadError(f"CLIP_PRETRAINED {name!r} is not one the official code runs "
                         f"({', '.join(CLIP_VARIANTS)})")


def settings_from_d2(cfg: dict[str, Any], source: str) -> CATSegSettings:
    """Test-time settings of an official detectron2 config (``load_config`` output)."""
    d = CATSegSettings()
    pool = cfg_get(cfg, "MODEL.SEM_SEG_HEAD.POOLING_SIZES", d.config_pooling_size)
    return CATSegSettings(
        clip_pretrained=str(cfg_get(cfg, "MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED", d.clip_pretrained)),
        min_size_test=int(cfg_get(cfg, "INPUT.MIN_SIZE_TEST", d.min_size_test)),
        max_size_test=int(cfg_get(cfg, "INPUT.MAX_SIZE_TEST", d.max_size_test)),
        clip_pixel_mean=tuple(float(v) for v in cfg_get(cfg, "MODEL.CLIP_PIXEL_MEAN", d.clip_pixel_mean)),
        clip_pixel_std=tuple(float(v) for v in cfg_get(cfg, "MODEL.CLIP_PIXEL_STD", d.clip_pixel_std)),
        size_divisibility=int(cfg_get(cfg, "MODEL.MASK_FORMER.SIZE_DIVISIBILITY", d.size_divisibility)),
        prompt_ensemble_type=str(cfg_get(cfg, "MODEL.PROMPT_ENSEMBLE_TYPE", d.prompt_ensemble_type)),
        config_pooling_size=tuple(int(v) for v in pool),  # type: ignore[arg-type]
        config_sliding_window=_bool(cfg_get(cfg, "TEST.SLIDING_WINDOW", d.config_sliding_window)),
        source=source,
    )


def _bool(v: Any) -> bool:
    return v.strip().lower() in ("1", "true", "yes") if isinstance(v, str) else bool(v)


#: config keys checked against the checkpoint's shapes
_SIZE_KEYS = {
    "text_guidance_dim": "MODEL.SEM_SEG_HEAD.TEXT_GUIDANCE_DIM",
    "text_guidance_proj_dim": "MODEL.SEM_SEG_HEAD.TEXT_GUIDANCE_PROJ_DIM",
    "appearance_guidance_dim": "MODEL.SEM_SEG_HEAD.APPEARANCE_GUIDANCE_DIM",
    "appearance_guidance_proj_dim": "MODEL.SEM_SEG_HEAD.APPEARANCE_GUIDANCE_PROJ_DIM",
    "decoder_dims": "MODEL.SEM_SEG_HEAD.DECODER_DIMS",
    "decoder_guidance_dims": "MODEL.SEM_SEG_HEAD.DECODER_GUIDANCE_DIMS",
    "decoder_guidance_proj_dims": "MODEL.SEM_SEG_HEAD.DECODER_GUIDANCE_PROJ_DIMS",
    "num_layers": "MODEL.SEM_SEG_HEAD.NUM_LAYERS",
    "hidden_dim": "MODEL.SEM_SEG_HEAD.HIDDEN_DIMS",
    "feature_resolution": "MODEL.SEM_SEG_HEAD.FEATURE_RESOLUTION",
    "window_size": "MODEL.SEM_SEG_HEAD.WINDOW_SIZES",
}


def resolve_config(sd: dict[str, torch.Tensor], config: str | Path | dict[str, Any] | None
                   ) -> tuple[CATSegConfig, CATSegSettings]:
    """Sizes and settings of a checkpoint: read from its shapes, checked against the official
    YAML when given (which also sets heads, attention type and the test settings), else the
    released config of its CLIP width (:data:`RELEASED`), else the official defaults.

    Raises:
        ModelLoadError: the config and the checkpoint disagree on a size; a prompt-ensemble type
            other than "single" (the official inference cannot run it).
        InputError: the config file is missing or unreadable.
    """
    arch = config_from_state_dict(sd)
    width = clip_shape(sd)[0]
    if config is None:
        row = RELEASED.get(_RELEASED_BY_WIDTH.get(width, ""))
        settings = row[1] if row else CATSegSettings()
        if row is None:  # not a released size: CLIP_PRETRAINED from the patch size (16: ViT-B/16 rules)
            settings = replace(settings, clip_pretrained="ViT-B/16" if clip_shape(sd)[1] == 16 else "ViT-L/14@336px")
        return arch, settings
    cfg = config if isinstance(config, dict) else load_config(config)
    settings = settings_from_d2(cfg, "" if isinstance(config, dict) else str(config))
    if settings.prompt_ensemble_type != "single":
        raise ModelLoadError(f"MODEL.PROMPT_ENSEMBLE_TYPE {settings.prompt_ensemble_type!r}: the official inference "
                             "only runs 'single' (get_text_embeds cannot stack several templates)")
    for field, key in _SIZE_KEYS.items():
        value = cfg_get(cfg, key)
        if value is None:
            continue
        have = getattr(arch, field)
        want = tuple(int(v) for v in value) if isinstance(have, tuple) else int(value)
        if field == "feature_resolution" and arch.window_size >= min(want):
            have = want  # no shifted block, so no mask to read the grid from
        if want != have:
            raise ModelLoadError(f"the config and the checkpoint disagree: {key} is {list(value) if isinstance(value, (list, tuple)) else value} "
                                 f"in {Path(str(config)).name if not isinstance(config, dict) else 'the config'} but "
                                 f"{list(have) if isinstance(have, tuple) else have} in the checkpoint: pass the "
                                 "config that belongs to this checkpoint (or none)")
    arch = replace(arch,
                   num_heads=int(cfg_get(cfg, "MODEL.SEM_SEG_HEAD.NUM_HEADS", arch.num_heads)),
                   attention_type=str(cfg_get(cfg, "MODEL.SEM_SEG_HEAD.ATTENTION_TYPE", arch.attention_type)))
    return arch, settings


def arch_from_d2(cfg: dict[str, Any], base: CATSegConfig | None = None) -> CATSegConfig:
    """Aggregator sizes an official config sets (``MODEL.SEM_SEG_HEAD.*``; keys it lacks keep
    ``base``'s, default :class:`CATSegConfig`), including ``NUM_HEADS``, ``ATTENTION_TYPE`` and
    ``POOLING_SIZES`` (the training value: the released configs set (2, 2)). For building a network
    to train, where no checkpoint gives the shapes.

    Args:
        cfg: a config as :func:`ovss.importers.d2config.load_config` returns it.
        base: the sizes to start from.
    """
    base = base or CATSegConfig()
    kw: dict[str, Any] = {}
    for field, key in _SIZE_KEYS.items():
        value = cfg_get(cfg, key)
        if value is not None:
            kw[field] = tuple(int(v) for v in value) if isinstance(getattr(base, field), tuple) else int(value)
    pool = cfg_get(cfg, "MODEL.SEM_SEG_HEAD.POOLING_SIZES")
    if pool is not None:
        kw["pooling_size"] = tuple(int(v) for v in pool)
    kw["num_heads"] = int(cfg_get(cfg, "MODEL.SEM_SEG_HEAD.NUM_HEADS", base.num_heads))
    kw["attention_type"] = str(cfg_get(cfg, "MODEL.SEM_SEG_HEAD.ATTENTION_TYPE", base.attention_type))
    return replace(base, **kw)


# --------------------------------------------------------------------------- building
def _name_keys(keys: list[str], n: int = 3) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f" and {len(keys) - n} more" if len(keys) > n else "")


def load_checkpoint_into(net: CATSegNet, sd: dict[str, torch.Tensor], name: str) -> None:
    """Load converted tensors strictly into ``net``.

    Raises:
        ModelLoadError: one line naming the missing, unexpected and wrongly shaped keys (in the
            official naming).
    """
    from ..checkpoints import state_dict_mismatch

    missing, unexpected, reshaped = state_dict_mismatch(net.state_dict(), sd)
    wrong = [f"{_official(k)} {got} vs {want}" for k, got, want in reshaped]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} of another shape ({_name_keys(wrong)})")
        if missing:
            parts.append(f"{len(missing)} missing ({_name_keys([_official(k) for k in missing])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_name_keys([_official(k) for k in unexpected])})")
        raise ModelLoadError(f"{name} does not fit this CAT-Seg architecture: " + "; ".join(parts)
                             + ". Pass the CLIP (model=...) and config the checkpoint was trained with")
    net.load_state_dict(sd, strict=True)


def _official(key: str) -> str:
    if key.startswith("clip."):
        return CLIP_PREFIX + key[len("clip."):]
    if key.startswith("transformer."):
        return AGG_PREFIX + key[len("transformer."):]
    return key


def build_catseg(sd: dict[str, torch.Tensor], clip: torch.nn.Module, arch: CATSegConfig, settings: CATSegSettings,
                 name: str, *, pooling_size: tuple[int, int] = (1, 1),
                 clip_fallback: Callable[[], dict[str, torch.Tensor]] | None = None) -> CATSegNet:
    """Build the network around ``clip`` and load the checkpoint (its CLIP tensors replace ``clip``'s).

    Args:
        sd: the official state dict (:func:`read_checkpoint`).
        clip: an open_clip CLIP of the checkpoint's architecture (OpenAI layout, QuickGELU).
        arch, settings: from :func:`resolve_config`.
        name: the checkpoint's name for messages.
        pooling_size: class-aggregation pooling (the official ``eval.sh``: (1, 1)).
        clip_fallback: called only when the checkpoint lacks CLIP tensors: an open_clip state dict
            of pretrained CLIP weights that supplies them (the official code loads OpenAI's CLIP,
            then the checkpoint over it, non-strictly). The released checkpoints hold all of CLIP.

    Returns:
        The network, float32, eval mode, without gradients.

    Raises:
        ModelLoadError: wrong architecture (names the mismatched keys), unsupported CLIP_PRETRAINED.
    """
    variant = clip_variant(settings.clip_pretrained)
    arch = replace(arch, pooling_size=tuple(int(v) for v in pooling_size))  # type: ignore[arg-type]
    net = CATSegNet(clip=clip, config=arch, clip_resolution=variant.resolution, hook_layers=variant.hook_layers)
    load = convert_state_dict(sd)
    own = net.state_dict()
    for k in list(load):  # the parameter-free CLIP entries open_clip does not keep
        if k.startswith("clip.") and k not in own and k.endswith(("input_resolution", "context_length", "vocab_size")):
            del load[k]
    absent = [k for k in own if k.startswith("clip.") and k not in load]
    if absent and clip_fallback is not None:
        pretrained = clip_fallback()
        load.update({k: pretrained[k[len("clip."):]].float() for k in absent if k[len("clip."):] in pretrained})
    load_checkpoint_into(net, load, name)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net
