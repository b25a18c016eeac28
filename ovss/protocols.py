"""Official per-dataset protocols: one :class:`Protocol` type and one :class:`ProtocolTable`
mechanism for every method.

A method declares its table as a class attribute (``Segmenter.protocols``): one frozen row per
benchmark, a free-form row for ``dataset=None``, and the aliases its users type. Each method family
subclasses :class:`Protocol` with the settings its official configs hold (sliding window, prompt
set, ensemble weights...) and cites the config file of every row in ``source``. Dataset aliases
follow one rule for every method: :data:`ALIASES` plus a table's own, case-insensitive.

This module also holds the tables of the training-free CLIP family. Each of their repositories
ships one config per benchmark (``configs/cfg_<dataset>.py``) that sets the resize short side S
(long side capped at 2048), the sliding-window crop and stride, the softmax temperature
(``logit_scale``), the confidence floor (``prob_thd``) and the class file. The values below are those
configs, read at the commits listed in ``shared/reference/training-free-methods.md`` §0 (SCLIP
b56bd30, NACLIP 0cac3a6, ClearCLIP ad68a40); §1.7 there tabulates them. The vanilla-CLIP and MaskCLIP
baselines use ClearCLIP's protocol (ClearCLIP ``model_type='vanilla'`` / ``'MaskCLIP'``), which is
how the later papers report them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Generic, Iterator, Mapping, TypeVar

from .errors import InputError, UnknownNameError, did_you_mean
from .vocabulary import BACKGROUND, Vocabulary, packaged_class_file, read_class_file

#: the benchmarks of ``ovss eval`` (``ovss.data``), for the web page's and the CLI's lists
DATASETS = ("voc21", "voc20", "context60", "context59", "coco_object", "coco_stuff", "cityscapes", "ade20k",
            "ade847", "context459", "coco_panoptic")

#: names users type for the benchmarks, for every method's table
ALIASES: dict[str, str] = {
    "ade": "ade20k", "ade150": "ade20k", "ade20k_150": "ade20k", "a150": "ade20k",
    "ade20k_847": "ade847", "ade20k_full": "ade847", "a847": "ade847",
    "pc59": "context59", "pcontext59": "context59", "pascal_context": "context59", "pascal_context59": "context59",
    "pc60": "context60", "pascal_context60": "context60",
    "pc459": "context459", "pascal_context459": "context459",
    "voc": "voc21", "pascal_voc": "voc21", "pascal_voc21": "voc21", "pas21": "voc21",
    "pascal_voc20": "voc20", "pas20": "voc20",
    "coco_stuff171": "coco_stuff", "coco_stuff_171": "coco_stuff", "cocostuff": "coco_stuff", "coco171": "coco_stuff",
    "coco80": "coco_object", "coco_thing": "coco_object",
    "coco133": "coco_panoptic",
    "cityscapes19": "cityscapes", "mapillary_vistas": "mapillary",
}


@dataclass(frozen=True)
class Protocol:
    """Inference settings of one method on one benchmark (``dataset=None``: free-form use).

    Attributes:
        dataset: canonical benchmark name, or None for the free-form row.
        short_side: test resize of the short side, pixels.
        max_long_side: cap of the long side after the resize, pixels.
        class_file: the packaged official class file, ``"<family>/<file>"`` under ``ovss/classnames``
            (None: the row has no class list).
        source: the official config this row reproduces (repository and file).
    """

    dataset: str | None = None
    short_side: int = 0
    max_long_side: int = 0
    class_file: str | None = None
    source: str = ""

    def with_overrides(self, **kw: Any) -> "Protocol":
        """Copy with the non-None keyword values replaced."""
        return replace(self, **{k: v for k, v in kw.items() if v is not None})

    def as_dict(self) -> dict[str, Any]:
        """JSON-able settings (tuples as lists)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    def vocabulary(self) -> Vocabulary | None:
        """The official class list of the row (None when it has none). Subclasses read their
        family's file format."""
        if self.class_file is None:
            return None
        family, name = self.class_file.split("/", 1)
        return replace(read_class_file(packaged_class_file(family, name), ","), official=True)


P = TypeVar("P", bound=Protocol)


class ProtocolTable(Generic[P]):
    """A method's official protocols: benchmark name -> frozen row, plus the free-form row.

    Args:
        method: the method's registry name (for messages).
        rows: canonical benchmark name -> row (``row.dataset`` must be the key).
        free: the row used with ``dataset=None``.
        aliases: names of this table only, on top of :data:`ALIASES`.
    """

    def __init__(self, method: str, rows: Mapping[str, P], *, free: P, aliases: Mapping[str, str] | None = None
                 ) -> None:
        for key, row in rows.items():
            if row.dataset != key:
                raise ValueError(f"{method} protocol row {key!r} says dataset={row.dataset!r}")
        self.method = method
        self.rows: dict[str, P] = dict(rows)
        self.free = free
        self.aliases = {**ALIASES, **(aliases or {})}

    def resolve(self, dataset: str) -> str:
        """Canonical name of ``dataset`` (an alias or any letter case).

        Raises:
            UnknownNameError: no protocol of this method for it.
        """
        key = str(dataset).strip().lower()
        key = self.aliases.get(key, key)
        if key not in self.rows:
            raise UnknownNameError(f"{self.method} has no protocol for dataset {dataset!r}."
                                   f"{did_you_mean(str(dataset), list(self.rows))} Available: {', '.join(self.rows)}")
        return key

    def get(self, dataset: str | None) -> P:
        """The row of ``dataset``, or the free-form row for None.

        Raises:
            UnknownNameError: see :meth:`resolve`.
        """
        return self.free if dataset is None else self.rows[self.resolve(dataset)]

    def vocabulary(self, dataset: str) -> Vocabulary:
        """The official class list (with synonyms) of a benchmark row (aliases accepted).

        Raises:
            UnknownNameError: see :meth:`resolve`; InputError: the row has no class list.
        """
        vocab = self.get(dataset).vocabulary()
        if vocab is None:
            raise InputError(f"{self.method}'s protocol {dataset!r} has no class list")
        return vocab

    def datasets(self) -> list[str]:
        return list(self.rows)

    def __contains__(self, dataset: object) -> bool:
        try:
            self.resolve(str(dataset))
        except UnknownNameError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def describe(self) -> list[dict[str, Any]]:
        """Every row's settings (for ``ovss methods NAME``)."""
        return [row.as_dict() for row in self.rows.values()]


# ---------------------------------------------------------------------------------------------
# the training-free CLIP family (dense CLIP engine)

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
class DenseCLIPProtocol(Protocol):
    """Settings of the dense CLIP engine (SCLIP-family ``configs/cfg_*.py``).

    Attributes:
        crop: sliding-window crop in pixels; 0 runs the whole image at once.
        stride: sliding-window stride in pixels.
        logit_scale: temperature multiplying the cosine logits before the softmax.
        prob_threshold: pixels whose top class probability is below this become background.
        area_threshold: SCLIP's area filter (fraction of foreground pixels), or None.
        pamr_steps: PAMR iterations (0: off); pamr_dilations: its dilations.
        class_sep: synonym separator of the family's class files.
        pad_crops: zero-pad each crop (centred) to a multiple of the patch size (ClearCLIP,
            ProxyCLIP) instead of letting the patch convolution drop the remainder (SCLIP, NACLIP).
    """

    crop: int = 0
    stride: int = 0
    logit_scale: float = 1.0
    prob_threshold: float = 0.0
    area_threshold: float | None = None
    pamr_steps: int = 0
    pamr_dilations: tuple[int, ...] = (8, 16)
    class_sep: str = ", "
    pad_crops: bool = False

    def vocabulary(self) -> Vocabulary | None:
        """The official class file with its repository's separator; class 0 is displayed as
        "background" on the benchmarks that score one (VOC21, Context60, COCO-Object)."""
        if self.class_file is None:
            return None
        family, name = self.class_file.split("/", 1)
        vocab = read_class_file(packaged_class_file(family, name), self.class_sep)
        if self.dataset in BACKGROUND_DATASETS:
            vocab = Vocabulary((BACKGROUND,) + vocab.names[1:], vocab.queries, 0)
        return replace(vocab, official=True)


def dense_clip_table(method: str, family: str, defaults: dict[str, Any], per_dataset: dict[str, dict[str, Any]],
                     source: str) -> ProtocolTable[DenseCLIPProtocol]:
    """A dense-CLIP protocol table from a family's defaults and per-dataset overrides.

    Args:
        family: folder of the family's class files under ``ovss/classnames``.
        source: the configs' path with ``{ds}`` for the dataset.
    """
    known = {f.name for f in fields(DenseCLIPProtocol)}
    bad = (set(defaults) | {k for v in per_dataset.values() for k in v}) - known
    if bad:
        raise ValueError(f"unknown protocol fields {sorted(bad)}")
    rows = {ds: DenseCLIPProtocol(dataset=ds, class_file=f"{family}/{CLASS_FILES[ds]}",
                                  source=source.format(ds=ds), **{**defaults, **over})
            for ds, over in per_dataset.items()}
    free = DenseCLIPProtocol(dataset=None, source=source.format(ds="<dataset>") + " defaults", **defaults)
    return ProtocolTable(method, rows, free=free)


_SCLIP = dict(short_side=336, max_long_side=2048, crop=224, stride=112, logit_scale=40.0, class_sep=", ")
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
_NACLIP = dict(short_side=336, max_long_side=2048, crop=224, stride=112, logit_scale=40.0, pamr_steps=10,
               pamr_dilations=(8, 16), class_sep=", ")
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
_CLEARCLIP = dict(short_side=448, max_long_side=2048, crop=448, stride=224, logit_scale=50.0, class_sep=",",
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

SCLIP_PROTOCOLS = dense_clip_table("sclip", "sclip_naclip", _SCLIP, _SCLIP_DS, "wangf3014/SCLIP configs/cfg_{ds}.py")
NACLIP_PROTOCOLS = dense_clip_table("naclip", "sclip_naclip", _NACLIP, _NACLIP_DS,
                                    "sinahmr/NACLIP configs/cfg_{ds}.py")
CLEARCLIP_PROTOCOLS = dense_clip_table("clearclip", "clearclip", _CLEARCLIP, _CLEARCLIP_DS,
                                       "mc-lan/ClearCLIP configs/cfg_{ds}.py")
VANILLA_PROTOCOLS = dense_clip_table("vanilla", "clearclip", _CLEARCLIP, _CLEARCLIP_DS,
                                     "mc-lan/ClearCLIP configs/cfg_{ds}.py (model_type='vanilla')")
MASKCLIP_PROTOCOLS = dense_clip_table("maskclip", "clearclip", _CLEARCLIP, _CLEARCLIP_DS,
                                      "mc-lan/ClearCLIP configs/cfg_{ds}.py (model_type='MaskCLIP')")
