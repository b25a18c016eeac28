"""Self-supervised ViTs (DINO, DINOv2) through timm, run the way their official code runs them.

ProxyCLIP takes its proxy attention from DINO ViT-B/8 patch features and CLIP-DIY's FOUND
saliency reads the last-block keys of DINO ViT-S/8. ProxyCLIP loads DINO with
``torch.hub.load('facebookresearch/dino:main', 'dino_vitb8')`` (``proxyclip_segmentor.py`` L53 at
05c3c18); FOUND builds DINO's own ``vision_transformer.py`` (``vits.__dict__[vit_arch]``) and loads
``dino_deitsmall8_300ep_pretrain.pth`` from dl.fbaipublicfiles.com (``model.py::get_vit_encoder``
L203-229 at a557f2c: L208 the URL, L221 the model, L226-229 the load), the 300-epoch ViT-S/8, not
the ``dino_deitsmall8_pretrain.pth`` of hub ``dino_vits8`` and timm's ``vit_small_patch8_224.dino``.
Either state dict has exactly timm's ``VisionTransformer`` layout, so ovss builds the network with
timm and loads either timm's hub weights or a local checkpoint.

What timm does not reproduce is DINO's position-embedding resize for other input sizes:
DINO ``vision_transformer.py::interpolate_pos_encoding`` (facebookresearch/dino 7c446df; L174-194
in the stored copy read, 04c0ad9) calls bicubic interpolation with
``scale_factor=((h + 0.1) / g0, (w + 0.1) / g0)`` (L182-183 ``w0 = w // patch_size``, L186
``w0, h0 = w0 + 0.1, h0 + 0.1``, L187-191 ``interpolate(..., scale_factor=(w0 / math.sqrt(N),
h0 / math.sqrt(N)), mode='bicubic')``, where DINO's ``w`` is the pixel height) and no antialias,
while timm's ``dynamic_img_size`` resamples to a size with antialias (0.69 apart on the parity
model). :func:`vit_tokens` therefore runs timm's modules with the official resize. DINOv2 with
registers (``dinov2_vitb14_reg``, hub ``interpolate_offset=0``, ``interpolate_antialias=True``)
resizes to a size with antialias, which is timm's own rule; models whose name contains
"dinov2" use it.

Model spec (``proxy_model`` / ``saliency_model``): a timm model name such as
``vit_base_patch8_224.dino`` (ProxyCLIP default), ``vit_small_patch8_224.dino`` (FOUND),
``vit_base_patch16_224.dino``, ``vit_base_patch14_reg4_dinov2.lvd142m``; or a JSON file whose
``"timm"`` entry holds ``{"model_name": ..., "kwargs": {...}}`` (architecture overrides), as
the parity fixtures' ``tiny_dino_b8.json``. Weights: a local checkpoint file (safetensors or a
torch pickle; DINO/timm key layout), a checkpoint URL (CLIP-DIY's default: FOUND's 300-epoch
ViT-S/8), or, when none is given, timm's hub weights.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError, ModelLoadError, UnknownNameError, did_you_mean
from ..checkpoints import CHECKPOINT_SUFFIXES, load_into, load_state_dict
from .clip import fetch_url, hub_file_cached, hub_reachable, offline_help



@dataclass
class LoadedViT:
    """A timm ``VisionTransformer`` (float32, eval mode) with what is needed to run it at any size.

    Attributes:
        model: the timm module.
        name: timm model name.
        pretrained: checkpoint path, "timm-hub", or "" (random weights).
        patch_size: side of a square patch in pixels.
        pos_resample: "dino" (scale-factor bicubic with the +0.1 offset) or "timm" (size-based
            bicubic with antialias, DINOv2-reg).
    """

    model: nn.Module
    name: str
    pretrained: str
    patch_size: int
    pos_resample: str = "dino"

    @property
    def embed_dim(self) -> int:
        return int(self.model.embed_dim)

    @property
    def num_prefix_tokens(self) -> int:
        return int(getattr(self.model, "num_prefix_tokens", 1))


def _read_spec(spec: str, flag: str) -> tuple[str, dict[str, Any]]:
    """(timm model name, architecture kwargs) of a model name or JSON config file."""
    if spec.lower().endswith(".json"):
        path = Path(spec)
        if not path.is_file():
            raise ModelLoadError(f"{flag}: model config file not found: {spec}")
        try:
            cfg = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ModelLoadError(f"{flag}: {spec} is not valid JSON: {exc}") from None
        entry = cfg.get("timm") if isinstance(cfg, dict) else None
        if not isinstance(entry, dict) or not isinstance(entry.get("model_name"), str):
            raise ModelLoadError(f"{flag}: {spec} has no \"timm\": {{\"model_name\": ..., \"kwargs\": {{...}}}} entry")
        kwargs = dict(entry.get("kwargs") or {})
        kwargs.pop("pretrained", None)
        return entry["model_name"], kwargs
    if Path(spec).suffix.lower() in CHECKPOINT_SUFFIXES:
        raise InputError(f"{flag} takes a timm model name or a JSON config, not a checkpoint ({spec}); "
                         "pass the checkpoint as the matching *-pretrained option")
    return spec, {}


def load_vit(model: str, pretrained: str | None = None, device: str | torch.device = "cpu", *,
             flag: str = "--proxy-model", pretrained_flag: str = "--proxy-pretrained") -> LoadedViT:
    """Build a timm ViT (DINO layout) and load its weights.

    Args:
        model: timm model name or JSON config (see the module docstring).
        pretrained: local checkpoint (timm/DINO state-dict keys; a ``head.*`` is dropped), a
            checkpoint URL (downloaded once into torch's hub cache, e.g. DINO's released
            ``dino_deitsmall8_300ep_pretrain.pth``), or None to download timm's hub weights (a
            timm name only).
        device: where to put the model.
        flag, pretrained_flag: option names used in error messages.

    Returns:
        The model in float32 and eval mode.

    Raises:
        UnknownNameError: not a timm model name.
        ModelLoadError: missing file, wrong checkpoint layout, hub unreachable.
    """
    import timm

    name, kwargs = _read_spec(model, flag)
    if not timm.is_model(name):
        raise UnknownNameError(f"{flag}: unknown timm model {name!r}."
                               f"{did_you_mean(name, timm.list_models('*dino*'))} DINO models: "
                               "vit_base_patch8_224.dino, vit_small_patch8_224.dino, vit_base_patch16_224.dino, "
                               "vit_base_patch14_reg4_dinov2.lvd142m")
    try:
        timm.models.get_pretrained_cfg(name)
    except RuntimeError:
        arch = name.split(".")[0]
        tags = timm.list_pretrained(arch + ".*")
        raise UnknownNameError(f"{flag}: unknown pretrained tag in {name!r}.{did_you_mean(name, tags)} "
                               f"Tags of {arch}: {', '.join(tags) or 'none'}") from None
    if model.lower().endswith(".json") and not pretrained:
        raise ModelLoadError(f"{flag} {model} describes its own architecture: pass its weights with {pretrained_flag}")
    kwargs.setdefault("num_classes", 0)
    if pretrained and pretrained.startswith(("https://", "http://")):  # e.g. DINO's own releases
        pretrained = str(fetch_url(pretrained, pretrained_flag))
    if pretrained:
        sd = load_state_dict(pretrained)
        try:
            net = timm.create_model(name, pretrained=False, **kwargs)
        except Exception as exc:
            raise ModelLoadError(f"{flag}: cannot build {name} with {kwargs}: {exc}") from None
        own = net.state_dict()
        drop = tuple(k for k in sd if k.startswith("head.") and k not in own)
        load_into(net, {k: v.float() for k, v in sd.items() if v.is_floating_point()}, f"{pretrained} into {name}",
                  drop=drop)
        source = str(pretrained)
    else:
        cfg = timm.models.get_pretrained_cfg(name)
        repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
        cached = bool(repo) and hub_file_cached(repo, ["model.safetensors", "pytorch_model.bin"])
        if not cached and not hub_reachable():
            raise ModelLoadError(offline_help(f"the weights of {name}", pretrained_flag))
        try:
            net = timm.create_model(name, pretrained=True, **kwargs)
        except Exception as exc:
            msg = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
            raise ModelLoadError(f"could not load {name} from the hub: {msg}. "
                                 + offline_help("them", pretrained_flag)) from None
        source = "timm-hub"
    if not hasattr(net, "blocks") or not hasattr(net, "patch_embed") or getattr(net, "pos_embed", None) is None:
        raise ModelLoadError(f"{flag}: {name} is not a plain ViT with an absolute position embedding")
    ps = net.patch_embed.patch_size
    ps = ps if isinstance(ps, int) else ps[0]
    net = net.float().eval().to(device)
    for p in net.parameters():
        p.requires_grad_(False)
    resample = "timm" if "dinov2" in name.lower() else "dino"
    return LoadedViT(net, name, source, int(ps), resample)


def dino_pos_embed(pos_embed: torch.Tensor, num_prefix: int, grid: tuple[int, int]) -> torch.Tensor:
    """Resize a DINO position embedding to ``grid`` as DINO ``interpolate_pos_encoding`` does.

    Bicubic (align_corners=False, no antialias) with ``scale_factor=((h + 0.1) / g0,
    (w + 0.1) / g0)`` on the square g0 x g0 grid; prefix (CLS) embeddings unchanged
    (``vision_transformer.py`` L174-194 at 04c0ad9: L186 the +0.1, L187-191 the interpolation, L194
    the CLS concatenation). DINO returns the embedding unchanged only when ``npatch == N and w == h``
    (L177, pixel sides); this function tests the grid, so a square g0 x g0 grid from a non-square
    input whose sides are not multiples of the patch is left unchanged here but resampled by
    (g0 + 0.1) / g0 in DINO (ovss's CLIP-DIY path, and ProxyCLIP with ``pad_crops``, pad to multiples of
    the patch first).

    Args:
        pos_embed: (1, num_prefix + g0*g0, C).
        num_prefix: number of leading entries that are not patch positions (1 for DINO).
        grid: (h, w) target patch grid.

    Returns:
        (1, num_prefix + h*w, C).
    """
    n = pos_embed.shape[1] - num_prefix
    g0 = int(math.isqrt(n))
    h, w = grid
    if g0 * g0 != n:
        raise ModelLoadError(f"position embedding with {n} patch entries is not a square grid")
    if (h, w) == (g0, g0):
        return pos_embed
    patch = pos_embed[:, num_prefix:].reshape(1, g0, g0, -1).permute(0, 3, 1, 2)
    patch = F.interpolate(patch, scale_factor=((h + 0.1) / g0, (w + 0.1) / g0), mode="bicubic")
    return torch.cat([pos_embed[:, :num_prefix], patch.permute(0, 2, 3, 1).reshape(1, h * w, -1)], dim=1)


def _tokens_in(vit: LoadedViT, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Patch embedding + prefix tokens + resized position embedding (+ ``norm_pre``)."""
    m = vit.model
    p = vit.patch_size
    if images.ndim != 4 or images.shape[1] != 3:
        raise InputError(f"expected (B, 3, H, W) images, got shape {tuple(images.shape)}")
    if images.shape[-2] < p or images.shape[-1] < p:
        raise InputError(f"image of {images.shape[-2]}x{images.shape[-1]} pixels is smaller than "
                         f"{vit.name}'s {p}x{p} patch")
    x = m.patch_embed.proj(images)  # (B, C, h, w); sides that are not multiples of p are floored, as in DINO
    b, c, h, w = x.shape
    x = x.flatten(2).transpose(1, 2)
    x = m.patch_embed.norm(x)
    prefix = []
    if getattr(m, "cls_token", None) is not None:
        prefix.append(m.cls_token.expand(b, -1, -1))
    if getattr(m, "reg_token", None) is not None:
        prefix.append(m.reg_token.expand(b, -1, -1))
    if vit.pos_resample == "dino" and not m.no_embed_class:
        pos = dino_pos_embed(m.pos_embed, m.num_prefix_tokens, (h, w))
        x = torch.cat(prefix + [x], dim=1) + pos
    else:
        from timm.layers import resample_abs_pos_embed

        npre = 0 if m.no_embed_class else m.num_prefix_tokens
        gh, gw = m.patch_embed.grid_size
        pos = m.pos_embed if (h, w) == (gh, gw) else resample_abs_pos_embed(
            m.pos_embed, new_size=(h, w), old_size=(gh, gw), num_prefix_tokens=npre)
        if m.no_embed_class:
            x = torch.cat(prefix + [x + pos], dim=1)
        else:
            x = torch.cat(prefix + [x], dim=1) + pos
    x = m.pos_drop(x)
    x = m.norm_pre(x)
    return x, (h, w)


def vit_tokens(vit: LoadedViT, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Final-LayerNorm tokens of every block (DINO ``get_intermediate_layers(x)[0]``).

    Args:
        images: (B, 3, H, W) ImageNet-normalised images.

    Returns:
        tokens (B, P + h*w, C) with the P prefix tokens first, and the grid (h, w) = (H//p, W//p).
    """
    x, grid = _tokens_in(vit, images)
    for blk in vit.model.blocks:
        x = blk(x)
    return vit.model.norm(x), grid


def patch_features(vit: LoadedViT, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) ImageNet-normalised -> (B, C, H//p, W//p) final-LayerNorm patch tokens.

    ProxyCLIP's ``ex_feats`` (``proxyclip_segmentor.py::forward_feature``, vfm 'dino').
    """
    x, (h, w) = vit_tokens(vit, images)
    x = x[:, vit.num_prefix_tokens:]
    return x.transpose(1, 2).reshape(x.shape[0], -1, h, w)


def last_block_keys(vit: LoadedViT, images: torch.Tensor) -> torch.Tensor:
    """Keys of the last block's attention, heads concatenated (channel = head * d + dim).

    What FOUND reads (``valeoai/FOUND`` ``model.py``: forward hook on ``blocks[-1].attn.qkv``, k
    part, CLS dropped); the last block is not run further.

    Args:
        images: (B, 3, H, W) ImageNet-normalised images.

    Returns:
        (B, C, H//p, W//p).
    """
    x, (h, w) = _tokens_in(vit, images)
    blocks = vit.model.blocks
    for blk in blocks[:-1]:
        x = blk(x)
    last = blocks[-1]
    qkv = last.attn.qkv(last.norm1(x))
    c = qkv.shape[-1] // 3
    k = qkv[:, vit.num_prefix_tokens:, c:2 * c]
    return k.transpose(1, 2).reshape(k.shape[0], c, h, w)
