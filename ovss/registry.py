"""The method registry: one line per method, importing its module only when it is used.

The registry line is the single source of a method's paper citation and one-line summary (so
``ovss methods`` lists every method without importing them all); everything else a method declares
on its class (:mod:`ovss.segmenter`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from .errors import UnknownNameError, did_you_mean
from .options import OptionSpec, check_options
from .segmenter import Segmenter


@dataclass(frozen=True)
class MethodInfo:
    """A registered method: its name, where its class lives, its paper and what it does."""

    name: str
    module: str  # module under ovss.methods
    cls: str
    paper: str
    summary: str


_METHODS: dict[str, MethodInfo] = {}


def _add(name: str, module: str, cls: str, paper: str, summary: str) -> None:
    _METHODS[name] = MethodInfo(name, module, cls, paper, summary)


_add("vanilla", "vanilla", "VanillaCLIP", "Radford et al., ICML 2021 (CLIP); dense baseline of ClearCLIP, ECCV 2024",
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
    """The class of method ``name`` (imports its module).

    Raises:
        UnknownNameError: no such method.
    """
    info = method_info(name)
    module = importlib.import_module(f"ovss.methods.{info.module}")
    return getattr(module, info.cls)


def method_options(name: str) -> dict[str, OptionSpec]:
    """Every option of the method's constructor with its type, default and range."""
    return method_class(name).options()


def parse_options(method: str, values: dict[str, Any], *, from_text: bool = False) -> dict[str, Any]:
    """Check option values against the method's declarations (see :func:`ovss.options.check_options`);
    ``from_text`` parses strings typed on the command line or the web page by the declared type.

    Raises:
        UnknownNameError: no such method.
        InputError: an unknown option, a value of the wrong type or out of range.
    """
    return check_options(method, method_options(method), values, from_text=from_text)


def create_segmenter(method: str, **kwargs: Any) -> Segmenter:
    """Build the segmenter of ``method`` (see :func:`available_methods`) with its keyword options.

    Common options: ``model``, ``pretrained``, ``dataset`` (official protocol and class file),
    ``device``, ``short_side``, ``max_long_side``, ``precision``, ``classes``, ``background``; each
    method's class documents the rest (``ovss methods NAME`` lists them). A file option may name a zoo entry
    (``checkpoint="fcclip_cocopan"``, see ``ovss models``): :func:`ovss.zoo.resolve` downloads it on
    first use and fills the ``model`` / ``pretrained`` / ``config`` that match it unless given.

    Raises:
        UnknownNameError: unknown method, model, tag or dataset protocol.
        InputError: an option the method does not take, or a bad value.
        ModelLoadError: weights unreachable or checkpoint of the wrong architecture.
    """
    kwargs = parse_options(method, kwargs)
    from .zoo import resolve  # zoo names in checkpoint= & co.: the cached file, matching model/pretrained

    return method_class(method)(**resolve(method, kwargs))
