"""The method registry: one line per method, importing its module only when it is used."""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any

from .errors import InputError, UnknownNameError, did_you_mean
from .segmenter import Segmenter


@dataclass(frozen=True)
class MethodInfo:
    name: str
    module: str  # module under ovss.methods
    cls: str
    paper: str
    summary: str


_METHODS: dict[str, MethodInfo] = {}


def _add(name: str, module: str, cls: str, paper: str, summary: str) -> None:
    _METHODS[name] = MethodInfo(name, module, cls, paper, summary)


_add("vanilla", "vanilla", "VanillaCLIP", "Radford et al., ICML 2021 (CLIP); dense baseline as in ClearCLIP, ECCV 2024",
     "unmodified CLIP patch tokens")
_add("maskclip", "maskclip", "MaskCLIP", "Zhou et al., ECCV 2022 (MaskCLIP)", "value-embedding path of the last block")
_add("sclip", "sclip", "SCLIP", "Wang et al., ECCV 2024 (SCLIP)", "correlative self-attention q-q + k-k")
_add("clearclip", "clearclip", "ClearCLIP", "Lan et al., ECCV 2024 (ClearCLIP)", "q-q attention, no residual, no FFN")
_add("naclip", "naclip", "NACLIP", "Hajimiri et al., WACV 2025 (NACLIP)", "k-k attention + Gaussian neighbourhood, PAMR")
_add("fc_clip", "fc_clip", "FCCLIP", "Yu et al., NeurIPS 2023 (FC-CLIP)", "single-stage Mask2Former on a frozen convolutional CLIP")
_add("proxyclip", "proxyclip", "ProxyCLIP", "Lan et al., ECCV 2024 (ProxyCLIP)", "proxy attention from a self-supervised ViT (DINO)")
_add("clip_diy", "clip_diy", "CLIPDIY", "Wysoczanska et al., WACV 2024 (CLIP-DIY)", "multi-scale CLIP patch classification + FOUND saliency")
_add("pnp_ovss", "pnp_ovss", "PnPOVSS", "Luo et al., CVPR 2024 (PnP-OVSS)", "BLIP cross-attention GradCAM + Salience DropOut")
_add("zsseg", "zsseg", "ZSSeg", "Xu et al., ECCV 2022 (ZSSeg / SimSeg)", "MaskFormer proposals classified by CLIP crops")
_add("zegformer", "zegformer", "ZegFormer", "Ding et al., CVPR 2022 (ZegFormer)", "decoupled zero-shot segmentation: segment groups + CLIP")
_add("cat_seg", "cat_seg", "CATSeg", "Cho et al., CVPR 2024 (CAT-Seg)", "cost volume of CLIP features, spatial + class aggregation")


def available_methods() -> list[str]:
    """Names of the registered methods, in registry order."""
    return list(_METHODS)


def method_info(name: str) -> MethodInfo:
    """Registry entry of ``name``.

    Raises:
        UnknownNameError: no such method.
    """
    if name not in _METHODS:
        raise UnknownNameError(f"unknown method {name!r}.{did_you_mean(name, list(_METHODS))} "
                               f"Available: {', '.join(_METHODS)}")
    return _METHODS[name]


def method_class(name: str) -> type[Segmenter]:
    info = method_info(name)
    module = importlib.import_module(f"ovss.methods.{info.module}")
    return getattr(module, info.cls)


def method_options(name: str) -> dict[str, inspect.Parameter] | None:
    """Keyword options of the method's constructor (following ``**kwargs`` up to the parent
    classes), by name; None when it takes any keyword."""
    options: dict[str, inspect.Parameter] = {}
    for klass in method_class(name).__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = list(inspect.signature(init).parameters.values())
        for p in params:
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self":
                options.setdefault(p.name, p)
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return options
    return None


def flag_options(name: str) -> set[str]:
    """The method's boolean options (``--panoptic`` on the command line needs no value)."""
    options = method_options(name) or {}
    return {n for n, p in options.items() if p.annotation in (bool, "bool") or isinstance(p.default, bool)}


def check_options(method: str, kwargs: dict[str, Any]) -> None:
    """Raise a one-line error for keyword options the method does not take.

    Raises:
        InputError: names the unknown option, the closest known one and the method's options.
    """
    options = method_options(method)
    if options is None:
        return
    for key in kwargs:
        if key not in options:
            flag = key.replace("_", "-")
            known = [n.replace("_", "-") for n in options]
            raise InputError(f"{method} has no option {key!r} (--{flag}).{did_you_mean(flag, known)} "
                             f"Its options: {', '.join(sorted(known))}")


def create_segmenter(method: str, **kwargs: Any) -> Segmenter:
    """Build the segmenter of ``method`` (see :func:`available_methods`) with its keyword options.

    Common options: ``model``, ``pretrained``, ``dataset`` (official protocol and class file),
    ``device``; each method's class documents the rest.

    Raises:
        UnknownNameError: unknown method, model, tag or dataset protocol.
        InputError: an option the method does not take, or a bad value.
        ModelLoadError: weights unreachable or checkpoint of the wrong architecture.
    """
    check_options(method, kwargs)
    return method_class(method)(**kwargs)
