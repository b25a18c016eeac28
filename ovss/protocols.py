"""Official per-dataset protocols of the training-free CLIP methods, as cited tables.

Each method's repository ships one config per benchmark (``configs/cfg_<dataset>.py``) that
sets the resize short side S (long side capped at 2048), the sliding-window crop and stride,
the softmax temperature (``logit_scale``), the confidence floor (``prob_thd``) and the class
file. The values below are those configs, read at the commits listed in
``shared/reference/training-free-methods.md`` §0 (SCLIP b56bd30, NACLIP 0cac3a6, ClearCLIP
ad68a40, ProxyCLIP e7b767f); §1.7 there tabulates them. The vanilla-CLIP and MaskCLIP baselines
use ClearCLIP's protocol (ClearCLIP ``model_type='vanilla'`` / ``'MaskCLIP'``), which is how
the later papers report them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from .errors import UnknownNameError, did_you_mean

DATASETS = ("voc21", "voc20", "context60", "context59", "coco_object", "coco_stuff", "cityscapes", "ade20k")

#: class-file name of each benchmark inside a family folder of ``ovss/classnames``
CLASS_FILES = {
    "voc21": "cls_voc21.txt", "voc20": "cls_voc20.txt", "context60": "cls_context60.txt",
    "context59": "cls_context59.txt", "coco_object": "cls_coco_object.txt",
    "coco_stuff": "cls_coco_stuff.txt", "cityscapes": "cls_city_scapes.txt", "ade20k": "cls_ade20k.txt",
    "ade847": "cls_ade20k847.txt", "context459": "cls_context459.txt",
}

#: datasets whose class 0 is a background class scored like the others
BACKGROUND_DATASETS = ("voc21", "context60", "coco_object")


@dataclass(frozen=True)
class Protocol:
    """Inference settings of one method on one benchmark (or free-form use when dataset is None).

    Attributes:
        short_side: S, the resize target of the short side in pixels (keep ratio).
        long_side: cap of the long side after resizing (mmseg ``Resize(scale=(2048, S))``).
        crop: sliding-window crop in pixels; 0 runs the whole image at once.
        stride: sliding-window stride in pixels.
        logit_scale: temperature multiplying the cosine logits before the softmax.
        prob_threshold: pixels whose top class probability is below this become background.
        area_threshold: SCLIP's area filter (fraction of foreground pixels), or None.
        pamr_steps: PAMR iterations (0: off); pamr_dilations: its dilations.
        class_family / class_file / class_sep: the packaged official class file and its separator.
        pad_crops: zero-pad each crop (centred) to a multiple of the patch size (ClearCLIP,
            ProxyCLIP) instead of letting the patch convolution drop the remainder (SCLIP, NACLIP).
        source: the official config this row reproduces.
    """

    method: str
    dataset: str | None
    short_side: int
    crop: int
    stride: int
    logit_scale: float
    prob_threshold: float = 0.0
    area_threshold: float | None = None
    pamr_steps: int = 0
    pamr_dilations: tuple[int, ...] = (8, 16)
    long_side: int = 2048
    class_family: str | None = None
    class_file: str | None = None
    class_sep: str = ", "
    pad_crops: bool = False
    source: str = ""

    def with_overrides(self, **kw: Any) -> "Protocol":
        """Copy with the non-None keyword values replaced."""
        return replace(self, **{k: v for k, v in kw.items() if v is not None})

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["pamr_dilations"] = list(self.pamr_dilations)
        return d


# (method family defaults, per-dataset overrides); see the module docstring for the sources.
_SCLIP = dict(short_side=336, crop=224, stride=112, logit_scale=40.0, class_family="sclip_naclip", class_sep=", ")
_SCLIP_DS = {
    "voc21": dict(logit_scale=65.0, prob_threshold=0.1, area_threshold=0.1),
    "voc20": {},
    "context60": dict(logit_scale=50.0, prob_threshold=0.1),
    "context59": {},
    "coco_object": dict(logit_scale=50.0, prob_threshold=0.1),
    "coco_stuff": dict(short_side=448),
    "cityscapes": dict(short_side=560),
    "ade20k": {},
}
_NACLIP = dict(short_side=336, crop=224, stride=112, logit_scale=40.0, pamr_steps=10, pamr_dilations=(8, 16),
               class_family="sclip_naclip", class_sep=", ")
_NACLIP_DS = {
    "voc21": dict(crop=0, prob_threshold=0.1),
    "voc20": dict(crop=0),
    "context60": dict(prob_threshold=0.1),
    "context59": {},
    "coco_object": dict(prob_threshold=0.1),
    "coco_stuff": {},
    "cityscapes": dict(short_side=560),
    "ade20k": {},
}
_CLEARCLIP = dict(short_side=448, crop=448, stride=224, logit_scale=50.0, class_family="clearclip", class_sep=",",
                  pad_crops=True)
_CLEARCLIP_DS = {
    "voc21": dict(prob_threshold=0.5),
    "voc20": {},
    "context60": dict(prob_threshold=0.15),
    "context59": {},
    "coco_object": dict(prob_threshold=0.4),
    "coco_stuff": {},
    "cityscapes": dict(crop=224, stride=224),
    "ade20k": {},
}

_TABLES: dict[str, tuple[dict[str, Any], dict[str, dict[str, Any]], str]] = {
    "sclip": (_SCLIP, _SCLIP_DS, "wangf3014/SCLIP configs/cfg_{ds}.py"),
    "naclip": (_NACLIP, _NACLIP_DS, "sinahmr/NACLIP configs/cfg_{ds}.py"),
    "clearclip": (_CLEARCLIP, _CLEARCLIP_DS, "mc-lan/ClearCLIP configs/cfg_{ds}.py"),
    "vanilla": (_CLEARCLIP, _CLEARCLIP_DS, "mc-lan/ClearCLIP configs/cfg_{ds}.py (model_type='vanilla')"),
    "maskclip": (_CLEARCLIP, _CLEARCLIP_DS, "mc-lan/ClearCLIP configs/cfg_{ds}.py (model_type='MaskCLIP')"),
}


def register_table(method: str, defaults: dict[str, Any], per_dataset: dict[str, dict[str, Any]], source: str) -> None:
    """Add a method's protocol table (used by methods defined outside this module)."""
    _TABLES[method] = (defaults, per_dataset, source)


def protocol_datasets(method: str) -> list[str]:
    """Benchmarks for which ``method`` has an official protocol."""
    return list(_TABLES[method][1]) if method in _TABLES else []


def get_protocol(method: str, dataset: str | None) -> Protocol:
    """The official protocol of ``method`` on ``dataset``, or its free-form defaults for None.

    Raises:
        UnknownNameError: no table for the method, or no protocol for that dataset.
    """
    if method not in _TABLES:
        raise UnknownNameError(f"no protocol table for method {method!r}")
    defaults, per_ds, source = _TABLES[method]
    if dataset is None:
        cfg = {k: v for k, v in defaults.items() if k not in ("class_family",)}
        return Protocol(method=method, dataset=None, source=source.format(ds="<dataset>") + " defaults", **cfg)
    if dataset not in per_ds:
        raise UnknownNameError(f"no {method} protocol for dataset {dataset!r}.{did_you_mean(dataset, list(per_ds))} "
                               f"Known: {', '.join(per_ds)}")
    cfg = {**defaults, **per_ds[dataset]}
    return Protocol(method=method, dataset=dataset, class_file=CLASS_FILES[dataset],
                    source=source.format(ds=dataset), **cfg)
