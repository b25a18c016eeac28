"""The standard OVSS benchmarks: class names, label conventions and on-disk layouts.

Each benchmark is a :class:`DatasetSpec`: its classes (label ``k`` is class ``k`` after the
dataset's label reduction), its ignore index, and one or more :class:`Layout` s, i.e. the folder
trees that the usual preparation scripts leave (mmsegmentation's ``tools/dataset_converters`` and
the SCLIP ``cvt_coco_object.py`` converter for the SCLIP family; detectron2-style
``prepare_*.py`` scripts of FC-CLIP, CAT-Seg and Mask2Former for the trained methods and the
16-bit TIFF datasets). :func:`open_dataset` checks a data root against the layouts and returns an
:class:`EvalDataset` that lists the image/label pairs and reads them.

Label conventions (``/work/shared/reference/training-free-methods.md`` §1.6, mmseg 1.x
``BaseSegDataset`` / ``LoadAnnotations``; detectron2 ``SemSegEvaluator``):

* labels are read as stored (Pillow, palette indices for VOC PNGs, uint16 for TIFF);
* ``reduce_zero_label`` (VOC20, Context59, ADE20K in the mmseg layout): 0 -> ignore, every other
  label minus 1 (mmseg ``LoadAnnotations``: ``0 -> 255; x - 1; 254 -> 255``);
* the ignore index is 255, or 65535 for the 16-bit TIFF datasets (ADE-847, Context-459).

Panoptic ground truth (``coco_panoptic``; ``ade20k`` when prepared) is the COCO panoptic format
of panopticapi (Kirillov et al., CVPR 2019): one RGB PNG per image whose pixel ids are
``R + 256 G + 256^2 B`` (0 = void) and a JSON with each image's ``segments_info`` and the
``categories``; class ``k`` is the ``k``-th category by id (detectron2's contiguous ids).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ..errors import DatasetError, UnknownNameError, did_you_mean

DOCS = "docs/datasets.md"


@dataclass(frozen=True)
class PanopticFiles:
    """The COCO-panoptic-format ground truth of a layout, relative to ``--data-root``.

    Attributes:
        png_dir: folder of the RGB panoptic PNGs (segment id ``R + 256 G + 256^2 B``, 0 = void),
            named by the JSON's ``annotations[i].file_name``.
        json_file: the panoptic JSON: ``annotations`` (``image_id``, ``file_name``,
            ``segments_info`` with ``id``, ``category_id``, ``iscrowd``, ``area``) and
            ``categories`` (``id``, ``name``, ``isthing``).
        required: the layout needs it (``coco_panoptic``); otherwise it is used when both files
            exist (``ade20k``: PQ besides mIoU).
        prepared_by: which script leaves these files.
        png_suffix: what follows the image's name in an annotation's ``file_name``
            (``.png``; Cityscapes ``_gtFine_panoptic.png``): images and annotations are paired by it.
    """

    png_dir: str
    json_file: str
    required: bool = True
    prepared_by: str = ""
    png_suffix: str = ".png"

    def tree(self) -> str:
        """One-line description of the files."""
        return (f"{self.png_dir}/<id>{self.png_suffix} (RGB segment ids), {self.json_file} (segments_info, "
                "categories)")

    def key(self, file_name: str) -> str:
        """The image name an annotation's ``file_name`` belongs to (its name less ``png_suffix``)."""
        name = Path(file_name).name
        return name[: -len(self.png_suffix)] if name.endswith(self.png_suffix) else Path(name).stem


@dataclass(frozen=True)
class InstanceFiles:
    """The COCO-format instance ground truth of a layout (for mask AP), relative to ``--data-root``.

    Always optional: used when the JSON exists. Images are paired with the JSON's ``images`` by
    file name (the base name of ``images[i].file_name`` equals the image file's name).

    Attributes:
        json_file: a COCO instances JSON: ``images`` (``id``, ``file_name``, ``height``,
            ``width``), ``annotations`` (``image_id``, ``category_id``, ``segmentation``
            (polygons or RLE), ``area``, ``iscrowd``) and ``categories`` (``id``, ``name``) whose
            ids are the dataset's category ids (see :attr:`EvalDataset.category_ids`).
        prepared_by: which script or release leaves the file.
    """

    json_file: str
    prepared_by: str = ""

    def tree(self) -> str:
        """One-line description of the file."""
        return f"{self.json_file} (COCO instances: images, annotations, categories)"


@dataclass(frozen=True)
class Layout:
    """One on-disk layout of a benchmark's evaluation split, relative to ``--data-root``.

    Attributes:
        name: short name (``mmseg``, ``detectron2``, ``catseg``).
        root_hint: the folder that ``--data-root`` should point at (e.g. ``VOCdevkit/VOC2012``).
        image_dir: folder of the images.
        label_dir: folder of the label maps.
        image_suffix: image file name ending (``.jpg``, ``_leftImg8bit.png``).
        label_suffix: label file name ending (``.png``, ``_gtFine_labelTrainIds.png``, ``.tif``).
        index: how the image list is made: ``"split"`` (ids listed in ``split_file``, mmseg
            ``ann_file``), ``"images"`` (every image under ``image_dir``, mmseg without
            ``ann_file``), ``"labels"`` (every label under ``label_dir``, detectron2
            ``load_sem_seg``) or ``"panoptic"`` (every annotation of the panoptic JSON,
            detectron2 ``load_coco_panoptic_json``).
        split_file: the id list for ``index="split"``.
        reduce_zero_label: apply mmseg's zero-label reduction to the stored labels.
        recursive: images live in sub-folders (Cityscapes cities); ids keep the sub-folder.
        prepared_by: which script leaves this layout (for the error messages and docs).
        panoptic: the panoptic ground truth of the layout, or None.
        labels_from_panoptic: the semantic labels are made from the panoptic ground truth while
            reading (``label_dir`` is then the panoptic PNG folder; see :func:`panoptic_to_semantic`).
        instances: the optional instance ground truth (mask AP), or None.
    """

    name: str
    root_hint: str
    image_dir: str
    label_dir: str
    image_suffix: str
    label_suffix: str
    index: str = "images"
    split_file: str | None = None
    reduce_zero_label: bool = False
    recursive: bool = False
    prepared_by: str = ""
    panoptic: PanopticFiles | None = None
    labels_from_panoptic: bool = False
    instances: InstanceFiles | None = None

    def tree(self) -> str:
        """One-line description of the expected files, e.g. ``JPEGImages/<id>.jpg, ...``."""
        sub = "<city>/" if self.recursive else ""
        parts = [f"{self.image_dir}/{sub}<id>{self.image_suffix}"]
        if not self.labels_from_panoptic:
            parts.append(f"{self.label_dir}/{sub}<id>{self.label_suffix}")
        if self.split_file:
            parts.append(f"{self.split_file} (one <id> a line)")
        if self.panoptic is not None:
            optional = "" if self.panoptic.required else " (optional, for PQ)"
            parts.append(self.panoptic.tree() + optional)
        if self.instances is not None:
            parts.append(self.instances.tree() + " (optional, for AP)")
        return ", ".join(parts)


@dataclass(frozen=True)
class DatasetSpec:
    """A benchmark: its classes, label convention and accepted layouts.

    Attributes:
        name: the ``--dataset`` name (also the protocol name passed to ``create_segmenter``).
        title: human-readable split description.
        classes: (C,) display names; label ``k`` (after reduction) is ``classes[k]``.
        ignore_index: label value that is not scored (255, or 65535 for 16-bit TIFF labels).
        layouts: accepted layouts, in the order they are tried.
        num_images: size of the full evaluation split (a warning is given when the found
            count differs).
        background: index of the background class, or None.
        unseen: names of the unseen classes of the zero-shot split (seen = the others), or ().
        label_dtype: dtype the labels are stored in (uint8 PNG or uint16 TIFF).
        unseen_ids: class indices of the unseen classes where names are ambiguous (ADE-847 has
            duplicate display names); used instead of ``unseen`` when given.
        category_ids: the dataset category id of class ``k`` where no panoptic JSON gives it
            (Cityscapes label ids; default ``k``); instance JSONs use these ids.
    """

    name: str
    title: str
    classes: tuple[str, ...]
    ignore_index: int
    layouts: tuple[Layout, ...]
    num_images: int
    background: int | None = None
    unseen: tuple[str, ...] = ()
    label_dtype: str = "uint8"
    unseen_ids: tuple[int, ...] = ()
    category_ids: tuple[int, ...] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def unseen_indices(self) -> list[int]:
        """Class indices of the unseen classes (empty when the dataset has no zero-shot split)."""
        if self.unseen_ids:
            return list(self.unseen_ids)
        return [self.classes.index(n) for n in self.unseen]

    def layout(self, name: str) -> Layout:
        """The layout called ``name``.

        Raises:
            UnknownNameError: no such layout for this dataset.
        """
        names = [lay.name for lay in self.layouts]
        if name not in names:
            raise UnknownNameError(f"dataset {self.name} has no layout {name!r}."
                                   f"{did_you_mean(name, names)} Layouts: {', '.join(names)}")
        return self.layouts[names.index(name)]


@dataclass(frozen=True)
class Sample:
    """One evaluation image: its id (relative path without suffix), image and label paths, and
    its panoptic PNG when the split has panoptic ground truth."""

    id: str
    image: Path
    label: Path
    panoptic: Path | None = None


@lru_cache(maxsize=1)
def _class_lists() -> dict[str, list[str]]:
    text = resources.files("ovss").joinpath("data/dataset_classes.json").read_text(encoding="utf-8")
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


# --- layouts --------------------------------------------------------------------------------

_VOC12 = "VOCdevkit/VOC2012"
_VOC10 = "VOCdevkit/VOC2010"
_MMSEG = "mmseg tools/dataset_converters"


def _voc_mmseg(reduce: bool) -> Layout:
    return Layout("mmseg", _VOC12, "JPEGImages", "SegmentationClass", ".jpg", ".png", "split",
                  "ImageSets/Segmentation/val.txt", reduce,
                  prepared_by="the VOC2012 trainval tar as released")


def _context_mmseg(reduce: bool) -> Layout:
    return Layout("mmseg", _VOC10, "JPEGImages", "SegmentationClassContext", ".jpg", ".png", "split",
                  "ImageSets/SegmentationContext/val.txt", reduce,
                  prepared_by=f"{_MMSEG}/pascal_context.py")


def _d2(root: str, image_dir: str, label_dir: str, suffix: str, by: str) -> Layout:
    return Layout("detectron2", root, image_dir, label_dir, ".jpg", suffix, "labels", prepared_by=by)


_COCO_MMSEG = dict(root_hint="coco_stuff164k", image_dir="images/val2017", label_dir="annotations/val2017",
                   image_suffix=".jpg", index="images")

_M2F = "Mask2Former/FC-CLIP datasets"
_COCO_PAN = PanopticFiles("panoptic_val2017", "annotations/panoptic_val2017.json",
                          prepared_by="the COCO panoptic annotations zip (panoptic_annotations_trainval2017)")
_ADE_PAN = PanopticFiles("ade20k_panoptic_val", "ade20k_panoptic_val.json", required=False,
                         prepared_by=f"{_M2F}/prepare_ade20k_pan_seg.py")
_COCO_INS = InstanceFiles("annotations/instances_val2017.json", "the COCO 2017 annotations zip (annotations_trainval2017)")
_ADE_INS = InstanceFiles("ade20k_instance_val.json", f"{_M2F}/prepare_ade20k_ins_seg.py")
_CITY_PAN = PanopticFiles("gtFine/cityscapes_panoptic_val", "gtFine/cityscapes_panoptic_val.json", required=False,
                          prepared_by="cityscapesscripts createPanopticImgs (or ovss prepare cityscapes)",
                          png_suffix="_gtFine_panoptic.png")
_CITY_INS = InstanceFiles("gtFine/cityscapes_instances_val.json", "ovss prepare cityscapes (from gtFine instanceIds)")
#: Cityscapes label id of each train id (cityscapesscripts ``labels.py``): the category ids of the
#: panoptic JSON of createPanopticImgs and of the instances JSON
CITYSCAPES_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
_MAPILLARY_PAN = PanopticFiles("validation/panoptic", "validation/panoptic/panoptic_2018.json", required=False,
                               prepared_by="the Mapillary Vistas v1.2 release")


@lru_cache(maxsize=1)
def ade847_unseen_ids() -> tuple[int, ...]:
    """The 275 unseen ("rare") classes of ZegFormer's ADE20K-Full frequency split (seen: the 572
    "frequent" and "common" classes); source in ``ovss/data/ade847_classes.json``."""
    text = resources.files("ovss").joinpath("data/ade847_classes.json").read_text(encoding="utf-8")
    return tuple(int(i) for i in json.loads(text)["unseen_train_ids"])


def _coco_panoptic(labels_from_panoptic: bool) -> Layout:
    if labels_from_panoptic:  # panoptic_semseg_val2017 not made: the same labels, made while reading
        return Layout("panoptic", "coco", "val2017", _COCO_PAN.png_dir, ".jpg", ".png", "panoptic",
                      panoptic=_COCO_PAN, labels_from_panoptic=True, instances=_COCO_INS,
                      prepared_by="the COCO panoptic annotations; semantic labels made from them while reading")
    return Layout("detectron2", "coco", "val2017", "panoptic_semseg_val2017", ".jpg", ".png", "panoptic",
                  panoptic=_COCO_PAN, instances=_COCO_INS,
                  prepared_by=f"{_M2F}/prepare_coco_semantic_annos_from_panoptic_annos.py")


def _specs() -> dict[str, DatasetSpec]:
    cls = {k: tuple(v) for k, v in _class_lists().items()}
    voc_unseen = ("pottedplant", "sheep", "sofa", "train", "tvmonitor")  # ZS3/CaGNet 15/5 split
    coco_unseen = ("cow", "giraffe", "suitcase", "frisbee", "skateboard", "carrot", "scissors",
                   "cardboard", "clouds", "grass", "playingfield", "river", "road", "tree",
                   "wall-concrete")  # SPNet/ZS3 split used by ZSSeg, ZegFormer (156 seen / 15 unseen)
    specs = [
        DatasetSpec("voc21", "PASCAL VOC 2012 val, 20 classes + background", cls["voc21"], 255, (
            _voc_mmseg(False),
            _d2("pascal_voc_d2", "images/validation", "annotations_pascal21/validation", ".png",
                "FC-CLIP datasets/prepare_pascal_voc_sem_seg.py"),
        ), 1449, background=0),
        DatasetSpec("voc20", "PASCAL VOC 2012 val, 20 classes, background ignored", cls["voc20"], 255, (
            _voc_mmseg(True),
            _d2("pascal_voc_d2", "images/validation", "annotations_pascal20/validation", ".png",
                "FC-CLIP datasets/prepare_pascal_voc_sem_seg.py"),
        ), 1449, unseen=voc_unseen),
        DatasetSpec("context60", "PASCAL Context (VOC2010) val, 59 classes + background", cls["context60"],
                    255, (_context_mmseg(False),), 5105, background=0),
        DatasetSpec("context59", "PASCAL Context (VOC2010) val, 59 classes, background ignored",
                    cls["context59"], 255, (
                        _context_mmseg(True),
                        Layout("catseg", _VOC10, "JPEGImages", "annotations_detectron2/pc59_val", ".jpg",
                               ".png", "labels", prepared_by="CAT-Seg datasets/prepare_pascal_context_59.py"),
                        _d2("pascal_ctx_d2", "images/validation", "annotations_ctx59/validation", ".png",
                            "FC-CLIP datasets/prepare_pascal_ctx_sem_seg.py"),
                    ), 5105),
        DatasetSpec("context459", "PASCAL Context (VOC2010) val, full 459 classes", cls["context459"],
                    65535, (
                        Layout("catseg", _VOC10, "JPEGImages", "annotations_detectron2/pc459_val", ".jpg",
                               ".tif", "labels", prepared_by="CAT-Seg datasets/prepare_pascal_context_459.py"),
                        _d2("pascal_ctx_d2", "images/validation", "annotations_ctx459/validation", ".tif",
                            "FC-CLIP datasets/prepare_pascal_ctx_full_sem_seg.py"),
                    ), 5105, label_dtype="uint16"),
        DatasetSpec("coco_object", "COCO val2017, 80 object classes + background (stuff)", cls["coco_object"],
                    255, (Layout("mmseg", label_suffix="_instanceTrainIds.png",
                                 prepared_by="SCLIP datasets/cvt_coco_object.py", **_COCO_MMSEG),), 5000,
                    background=0),
        DatasetSpec("coco_stuff", "COCO-Stuff-164k val2017, 171 classes", cls["coco_stuff"], 255, (
            Layout("mmseg", label_suffix="_labelTrainIds.png", prepared_by=f"{_MMSEG}/coco_stuff164k.py",
                   **_COCO_MMSEG),
            _d2("coco", "val2017", "stuffthingmaps_detectron2/val2017", ".png",
                "detectron2/Mask2Former datasets/prepare_coco_stuff_164k_sem_seg.py"),
        ), 5000, unseen=coco_unseen),
        DatasetSpec("cityscapes", "Cityscapes val, 19 classes", cls["cityscapes"], 255, (
            Layout("mmseg", "cityscapes", "leftImg8bit/val", "gtFine/val", "_leftImg8bit.png",
                   "_gtFine_labelTrainIds.png", "images", recursive=True, panoptic=_CITY_PAN, instances=_CITY_INS,
                   prepared_by=f"{_MMSEG}/cityscapes.py (or cityscapesscripts createTrainIdLabelImgs, "
                               "or ovss prepare cityscapes)"),
        ), 500, category_ids=CITYSCAPES_LABEL_IDS),
        DatasetSpec("ade20k", "ADE20K (ADEChallengeData2016) val, 150 classes", cls["ade20k"], 255, (
            Layout("mmseg", "ADEChallengeData2016", "images/validation", "annotations/validation", ".jpg",
                   ".png", "images", reduce_zero_label=True, prepared_by="the ADEChallengeData2016 zip as released",
                   panoptic=_ADE_PAN, instances=_ADE_INS),
            replace(_d2("ADEChallengeData2016", "images/validation", "annotations_detectron2/validation", ".png",
                        "detectron2/Mask2Former datasets/prepare_ade20k_sem_seg.py"), panoptic=_ADE_PAN,
                    instances=_ADE_INS),
        ), 2000),
        DatasetSpec("coco_panoptic", "COCO panoptic val2017, 133 classes (80 things, 53 stuff)",
                    cls["coco_panoptic"], 255, (_coco_panoptic(False), _coco_panoptic(True)), 5000),
        DatasetSpec("ade847", "ADE20K-Full (ADE20K_2021_17_01) val, 847 classes (unseen: ZegFormer's 275 rare "
                    "classes)", cls["ade847"], 65535, (
            _d2("ADE20K_2021_17_01", "images_detectron2/validation", "annotations_detectron2/validation",
                ".tif", "Mask2Former/FC-CLIP datasets/prepare_ade20k_full_sem_seg.py (or ovss prepare ade847)"),
            Layout("zegformer", "ADE20K_2021_17_01", "images_detectron2_freq/validation",
                   "annotations_detectron2_freq/val_all", ".jpg", ".tif", "labels",
                   prepared_by="ZegFormer datasets/ade20k-full-frequency-split/prepare_ade20k_full_frequency_all_val.py"),
        ), 2000, label_dtype="uint16", unseen_ids=ade847_unseen_ids()),
        DatasetSpec("mapillary_vistas", "Mapillary Vistas v1.2 validation, 65 classes", cls["mapillary_vistas"], 65, (
            Layout("mask2former", "mapillary_vistas", "validation/images", "validation/labels", ".jpg", ".png",
                   "images", panoptic=_MAPILLARY_PAN,
                   prepared_by="the Mapillary Vistas v1.2 release (labels 0..64, 65 = unlabeled; Mask2Former's layout)"),
        ), 2000, category_ids=tuple(range(1, 66))),
    ]
    return {s.name: s for s in specs}


_SPECS = _specs()


def available_datasets() -> list[str]:
    """Names of the supported benchmarks."""
    return list(_SPECS)


def get_dataset(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of ``name``.

    Raises:
        UnknownNameError: no such benchmark.
    """
    if name not in _SPECS:
        raise UnknownNameError(f"unknown dataset {name!r}.{did_you_mean(name, list(_SPECS))} "
                               f"Available: {', '.join(_SPECS)}")
    return _SPECS[name]


# --- reading ---------------------------------------------------------------------------------


def read_label(path: str | Path, *, reduce_zero_label: bool = False, ignore_index: int = 255) -> np.ndarray:
    """Read a label map as stored and apply the zero-label reduction.

    Args:
        path: PNG (8-bit, palette or grey) or TIFF (16-bit) label file.
        reduce_zero_label: mmseg's reduction: 0 -> ``ignore_index``, others minus 1 (the old
            ignore value stays ignored).
        ignore_index: the ignore value of the dataset.

    Returns:
        (H, W) int64 label map.

    Raises:
        DatasetError: the file is missing or unreadable.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            arr = np.array(im)
    except FileNotFoundError:
        raise DatasetError(f"label file not found: {path}") from None
    except Exception as exc:  # Pillow raises several types for broken/unsupported files
        arr = _read_tiff_fallback(path, exc)
    if arr.ndim == 3:  # an RGB label map: not a label-index image
        raise DatasetError(f"label file {path} has {arr.shape[2]} channels; expected a single-channel "
                           "label-index image (palette/grey PNG or 16-bit TIFF)")
    label = arr.astype(np.int64)
    if reduce_zero_label:
        zero = label == 0
        was_ignored = label == ignore_index
        label = label - 1
        label[zero | was_ignored] = ignore_index
    return label


def _read_tiff_fallback(path: Path, exc: Exception) -> np.ndarray:
    if path.suffix.lower() in (".tif", ".tiff"):
        try:  # compressions Pillow lacks (e.g. some LZW/deflate predictors)
            import tifffile

            return np.asarray(tifffile.imread(str(path)))
        except Exception:  # tifffile missing or the file broken: report the Pillow error
            pass
    raise DatasetError(f"cannot read label file {path} ({exc.__class__.__name__}: {exc})") from None


def rgb2id(rgb: np.ndarray) -> np.ndarray:
    """COCO panoptic PNG pixels -> segment ids (panopticapi ``utils.rgb2id``).

    Args:
        rgb: (H, W, 3) uint8 RGB.

    Returns:
        (H, W) int64 ids ``R + 256 G + 256^2 B`` (0 = void).
    """
    rgb = np.asarray(rgb).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """Segment ids -> COCO panoptic PNG pixels (panopticapi ``utils.id2rgb``), the inverse of :func:`rgb2id`.

    Args:
        ids: (H, W) integer ids in [0, 256^3).

    Returns:
        (H, W, 3) uint8 RGB.
    """
    ids = np.asarray(ids).astype(np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)


def read_panoptic_png(path: str | Path) -> np.ndarray:
    """(H, W) int64 segment ids of a COCO panoptic PNG (see :func:`rgb2id`).

    Raises:
        DatasetError: the file is missing, unreadable or not an RGB image.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            arr = np.array(im.convert("RGB") if im.mode in ("P", "RGBA") else im)
    except FileNotFoundError:
        raise DatasetError(f"panoptic PNG not found: {path}") from None
    except Exception as exc:  # Pillow raises several types for broken files
        raise DatasetError(f"cannot read panoptic PNG {path} ({exc.__class__.__name__}: {exc})") from None
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise DatasetError(f"panoptic PNG {path} has shape {arr.shape}; expected an RGB image whose pixels "
                           "encode segment ids R + 256 G + 256^2 B")
    return rgb2id(arr)


def panoptic_to_semantic(ids: np.ndarray, segments: list[dict], ignore_index: int = 255) -> np.ndarray:
    """Semantic labels of a panoptic annotation, as Mask2Former's
    ``datasets/prepare_coco_semantic_annos_from_panoptic_annos.py`` writes them.

    Every segment's pixels get its (contiguous) ``category_id``, crowd segments included (the
    script does not look at ``iscrowd``); void and pixels of unlisted ids get ``ignore_index``.

    Args:
        ids: (H, W) int64 segment ids.
        segments: ``segments_info`` with contiguous ``category_id``.
        ignore_index: label of the unlabelled pixels.

    Returns:
        (H, W) int64 labels.
    """
    uniq, inverse = np.unique(ids, return_inverse=True)
    category = {int(seg["id"]): int(seg["category_id"]) for seg in segments}
    lut = np.array([category.get(int(u), ignore_index) for u in uniq], dtype=np.int64)
    return lut[inverse].reshape(ids.shape)


@dataclass
class PanopticGT:
    """The panoptic ground truth of an opened split: the parsed JSON.

    Attributes:
        json_path: the panoptic JSON.
        png_dir: folder of the panoptic PNGs.
        category_ids: (C,) the dataset's category id of class ``k``: the categories sorted by id,
            i.e. detectron2's contiguous ids (COCO: 80 things then 53 stuff; ADE20K: ids 0..149).
        isthing: (C,) whether class ``k`` is a thing (the JSON's ``isthing``).
        annotations: file stem -> ``{"image_id", "file_name", "segments_info"}``, each segment with
            ``id``, contiguous ``category_id``, ``iscrowd`` (0/1) and ``area`` (pixels, when given).
    """

    json_path: Path
    png_dir: Path
    category_ids: tuple[int, ...]
    isthing: tuple[bool, ...]
    annotations: dict[str, dict]

    @property
    def contiguous(self) -> dict[int, int]:
        """Dataset category id -> contiguous class index."""
        return {c: k for k, c in enumerate(self.category_ids)}


def _read_panoptic_json(spec: DatasetSpec, root: Path, files: PanopticFiles) -> PanopticGT:
    path = root / files.json_file
    where = f"(source: {files.prepared_by}; see {DOCS})"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        categories = sorted(data["categories"], key=lambda c: int(c["id"]))
        raw = data["annotations"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{spec.name}: cannot read the panoptic JSON {path} ({exc.__class__.__name__}: {exc}); "
                           f"expected 'annotations' and 'categories' in the COCO panoptic format {where}") from None
    if len(categories) != spec.num_classes:
        raise DatasetError(f"{spec.name}: the panoptic JSON {path} has {len(categories)} categories but the dataset "
                           f"has {spec.num_classes} classes: wrong file for this dataset? {where}")
    ids = tuple(int(c["id"]) for c in categories)
    to_k = {c: k for k, c in enumerate(ids)}
    annotations: dict[str, dict] = {}
    for ann in raw:
        segments = []
        for seg in ann.get("segments_info", []):
            cat = int(seg["category_id"])
            if cat not in to_k:
                raise DatasetError(f"{spec.name}: {path}: segment {seg.get('id')} of {ann.get('file_name')} has "
                                   f"category_id {cat}, which is not among the JSON's categories")
            segments.append({**seg, "id": int(seg["id"]), "category_id": to_k[cat],
                             "iscrowd": int(seg.get("iscrowd", 0))})
        annotations[files.key(ann["file_name"])] = {"image_id": ann.get("image_id"), "file_name": ann["file_name"],
                                                    "segments_info": segments}
    return PanopticGT(path, root / files.png_dir, ids, tuple(bool(c.get("isthing", 0)) for c in categories),
                      annotations)


@dataclass
class InstanceGT:
    """The instance ground truth of an opened split (mask AP): the parsed COCO instances JSON.

    Attributes:
        json_path: the JSON.
        data: its parsed content (``images``, ``annotations``, ``categories``).
        image_ids: image file name -> the JSON's image id, for the split's images.
        category_ids: the JSON's category ids, sorted.
    """

    json_path: Path
    data: dict
    image_ids: dict[str, Any]
    category_ids: tuple[int, ...]


def _read_instances_json(spec: DatasetSpec, root: Path, files: InstanceFiles, category_ids: Sequence[int]
                         ) -> InstanceGT:
    path = root / files.json_file
    where = f"(source: {files.prepared_by}; see {DOCS})"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        images = {Path(str(im["file_name"])).name: im["id"] for im in data["images"]}
        cats = tuple(sorted(int(c["id"]) for c in data["categories"]))
        data["annotations"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{spec.name}: cannot read the instances JSON {path} ({exc.__class__.__name__}: {exc}); "
                           f"expected 'images', 'annotations' and 'categories' in the COCO format {where}") from None
    unknown = sorted(set(cats) - set(int(c) for c in category_ids))
    if unknown:
        raise DatasetError(f"{spec.name}: the instances JSON {path} has categories {unknown[:5]} that are not category "
                           f"ids of the dataset's classes: wrong file for this dataset? {where}")
    return InstanceGT(path, data, images, cats)


@dataclass
class EvalDataset:
    """An opened benchmark split: the pairs found under ``root`` in one layout.

    Attributes:
        spec: the benchmark.
        root: the data root.
        layout: the layout found there.
        samples: image/label pairs in a fixed (sorted) order.
        panoptic: the panoptic ground truth (``coco_panoptic``; ``ade20k`` when prepared), or None.
        instances: the instance ground truth (mask AP) when its JSON is there, or None.
    """

    spec: DatasetSpec
    root: Path
    layout: Layout
    samples: list[Sample] = field(default_factory=list)
    panoptic: PanopticGT | None = None
    instances: InstanceGT | None = None

    @property
    def category_ids(self) -> tuple[int, ...]:
        """(C,) the dataset category id of class ``k``: the panoptic JSON's (sorted by id), else
        the spec's (Cityscapes label ids, Mapillary ``k + 1``), else ``k``."""
        if self.panoptic is not None:
            return self.panoptic.category_ids
        return self.spec.category_ids or tuple(range(self.spec.num_classes))

    def image_id(self, i: int) -> Any:
        """The instances JSON's image id of sample ``i``.

        Raises:
            DatasetError: the split has no instance ground truth.
        """
        if self.instances is None:
            raise DatasetError(f"{self.spec.name}: no instance ground truth under {self.root}")
        return self.instances.image_ids[self.samples[i].image.name]

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def classes(self) -> tuple[str, ...]:
        return self.spec.classes

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def ignore_index(self) -> int:
        return self.spec.ignore_index

    def read_label(self, i: int) -> np.ndarray:
        """(H, W) int64 label map of sample ``i`` after the layout's label reduction."""
        if self.layout.labels_from_panoptic:
            return panoptic_to_semantic(*self.read_panoptic(i), ignore_index=self.spec.ignore_index)
        return read_label(self.samples[i].label, reduce_zero_label=self.layout.reduce_zero_label,
                          ignore_index=self.spec.ignore_index)

    def read_panoptic(self, i: int) -> tuple[np.ndarray, list[dict]]:
        """Panoptic ground truth of sample ``i``: (H, W) int64 segment ids (0 = void) and its
        ``segments_info`` (contiguous ``category_id``, ``iscrowd``, ``area``; see :class:`PanopticGT`).

        Raises:
            DatasetError: the split has no panoptic ground truth, or the PNG is unreadable.
        """
        sample = self.samples[i]
        if self.panoptic is None or sample.panoptic is None:
            raise DatasetError(f"{self.spec.name}: no panoptic ground truth under {self.root}")
        ann = self.panoptic.annotations[Path(sample.id).name]
        return read_panoptic_png(sample.panoptic), ann["segments_info"]

    def read_image(self, i: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB image of sample ``i`` (decoded as :func:`ovss.imageio.load_image`)."""
        from ..imageio import load_image

        return load_image(self.samples[i].image)

    def describe(self) -> dict:
        """JSON-able description (written into the evaluation report)."""
        pan = self.panoptic
        return {"dataset": self.spec.name, "title": self.spec.title, "data_root": str(self.root),
                "layout": self.layout.name, "image_dir": self.layout.image_dir,
                "label_dir": self.layout.label_dir, "split_file": self.layout.split_file,
                "reduce_zero_label": self.layout.reduce_zero_label,
                "labels_from_panoptic": self.layout.labels_from_panoptic,
                "panoptic_json": str(pan.json_path) if pan else None,
                "panoptic_dir": str(pan.png_dir) if pan else None,
                "num_things": sum(pan.isthing) if pan else None,
                "instances_json": str(self.instances.json_path) if self.instances else None,
                "ignore_index": self.spec.ignore_index, "num_classes": self.spec.num_classes,
                "num_images": len(self.samples)}


def _expected(spec: DatasetSpec, layout: Layout) -> str:
    return (f"expected {spec.name} layout '{layout.name}' under --data-root (the {layout.root_hint} folder): "
            f"{layout.tree()}" + (f" (source: {layout.prepared_by})" if layout.prepared_by else "")
            + f" (see {DOCS})")


def _missing_parts(root: Path, layout: Layout) -> list[str]:
    parts = [layout.image_dir, layout.label_dir] + ([layout.split_file] if layout.split_file else [])
    files = {layout.split_file}
    if layout.panoptic is not None and layout.panoptic.required:
        parts += [layout.panoptic.png_dir, layout.panoptic.json_file]
        files.add(layout.panoptic.json_file)
    missing = []
    for p in dict.fromkeys(parts):  # the panoptic PNG folder may also be the label folder
        full = root / p
        if not (full.is_file() if p in files else full.is_dir()):
            missing.append(p)
    return missing


def _open_panoptic(spec: DatasetSpec, root: Path, layout: Layout) -> PanopticGT | None:
    """The layout's panoptic ground truth, None where it is optional and absent.

    Raises:
        DatasetError: only one of the PNG folder and the JSON is there (half-prepared).
    """
    files = layout.panoptic
    if files is None:
        return None
    have_dir, have_json = (root / files.png_dir).is_dir(), (root / files.json_file).is_file()
    if not (have_dir or have_json) and not files.required:
        return None
    if not (have_dir and have_json):
        found, lacking = ((f"{files.png_dir}/", files.json_file) if have_dir else
                          (files.json_file, f"{files.png_dir}/"))
        raise DatasetError(f"{spec.name}: the panoptic ground truth in {root} is half-prepared: {found} is there "
                           f"but {lacking} is missing; expected {files.tree()} (source: {files.prepared_by}; "
                           f"see {DOCS})" + ("" if files.required else "; remove the partial files to score "
                                             "mIoU only"))
    return _read_panoptic_json(spec, root, files)


def _strip(name: str, suffix: str) -> str | None:
    return name[: -len(suffix)] if name.endswith(suffix) else None


def _scan(folder: Path, suffix: str, recursive: bool) -> list[str]:
    """Ids (relative path without ``suffix``) of the files under ``folder`` ending in ``suffix``."""
    files = folder.rglob("*") if recursive else folder.iterdir()
    ids = []
    for f in files:
        if f.is_file():
            stem = _strip(f.name, suffix)
            if stem is not None and stem:
                rel = f.parent.relative_to(folder)
                ids.append(str(rel / stem) if str(rel) != "." else stem)
    return sorted(ids)


def _list_samples(spec: DatasetSpec, root: Path, layout: Layout, panoptic: PanopticGT | None) -> list[Sample]:
    img_dir, lab_dir = root / layout.image_dir, root / layout.label_dir
    if layout.index == "split":
        assert layout.split_file is not None
        text = (root / layout.split_file).read_text(encoding="utf-8")
        ids = [line.strip() for line in text.splitlines() if line.strip()]
        if not ids:
            raise DatasetError(f"{spec.name}: split file {root / layout.split_file} lists no image ids; "
                               + _expected(spec, layout))
    elif layout.index == "images":
        ids = _scan(img_dir, layout.image_suffix, layout.recursive)
        if not ids:
            raise DatasetError(f"{spec.name}: no '*{layout.image_suffix}' images in {img_dir}; "
                               + _expected(spec, layout))
    elif layout.index == "panoptic":
        assert panoptic is not None
        ids = sorted(panoptic.annotations)
        if not ids:
            raise DatasetError(f"{spec.name}: the panoptic JSON {panoptic.json_path} lists no annotations; "
                               + _expected(spec, layout))
    else:
        ids = _scan(lab_dir, layout.label_suffix, layout.recursive)
        if not ids:
            raise DatasetError(f"{spec.name}: no '*{layout.label_suffix}' label files in {lab_dir}; "
                               + _expected(spec, layout))
    listed = {"split": f"listed in {layout.split_file}", "images": f"found in {layout.image_dir}",
              "labels": f"found in {layout.label_dir}",
              "panoptic": f"listed in {layout.panoptic.json_file if layout.panoptic else ''}"}[layout.index]
    annotations = panoptic.annotations if panoptic is not None else {}
    if panoptic is not None:
        unannotated = [i for i in ids if Path(i).name not in annotations]
        if unannotated:
            raise DatasetError(f"{spec.name}: {len(unannotated)} of the {len(ids)} images {listed} have no annotation "
                               f"in the panoptic JSON {panoptic.json_path} (first: {unannotated[0]}); the panoptic "
                               "ground truth is incomplete: " + _expected(spec, layout))
    samples = [Sample(i, img_dir / f"{i}{layout.image_suffix}", lab_dir / f"{i}{layout.label_suffix}",
                      panoptic.png_dir / annotations[Path(i).name]["file_name"] if panoptic is not None else None)
               for i in ids]
    checks = [("image", "image", img_dir), ("label", "label", lab_dir)]
    if panoptic is not None:
        checks.append(("panoptic PNG", "panoptic", panoptic.png_dir))
    for kind, attr, folder in checks:
        missing = [s for s in samples if not getattr(s, attr).is_file()]
        if missing:
            raise DatasetError(
                f"{spec.name}: {len(missing)} of the {len(samples)} images {listed} have no {kind} file in "
                f"{folder} (first missing: {getattr(missing[0], attr).name}); the folder is incomplete or "
                f"half-prepared: " + _expected(spec, layout))
    return samples


def open_dataset(name: str | DatasetSpec, root: str | Path, layout: str | None = None) -> EvalDataset:
    """Find the evaluation split of ``name`` under ``root`` and list its image/label pairs.

    Args:
        name: benchmark name (see :func:`available_datasets`) or a spec.
        root: the data root (e.g. ``/data/VOCdevkit/VOC2012``; see each layout's ``root_hint``).
        layout: force one layout by name; by default the first whose folders exist is used.

    Returns:
        The opened split; ``samples`` sorted as the split file lists them, or by id; with its
        panoptic ground truth where the layout has one (optional for ``ade20k``: used when both
        the PNG folder and the JSON exist).

    Raises:
        UnknownNameError: unknown dataset or layout name.
        DatasetError: the root is missing, no layout matches (the message names the missing
            folders/files and the expected tree), images lack their labels (or the reverse), or
            the panoptic ground truth is half-prepared, unreadable or of another dataset.
    """
    spec = name if isinstance(name, DatasetSpec) else get_dataset(name)
    root = Path(root).expanduser()
    if not root.is_dir():
        lay = spec.layout(layout) if layout else spec.layouts[0]
        raise DatasetError(f"{spec.name}: data root {root} does not exist or is not a folder; "
                           + _expected(spec, lay))
    candidates = [spec.layout(layout)] if layout else list(spec.layouts)
    missing = {lay.name: _missing_parts(root, lay) for lay in candidates}
    found = [lay for lay in candidates if not missing[lay.name]]
    if not found:
        # report against the layout that is most nearly there
        best = min(candidates, key=lambda lay: (len(missing[lay.name]), candidates.index(lay)))
        miss = missing[best.name]
        files = {best.split_file} | ({best.panoptic.json_file} if best.panoptic else set())
        what = ", ".join(f"{p}{'' if p in files else '/'}" for p in miss)
        others = [lay for lay in candidates if lay is not best]
        alt = ("; other accepted layouts: " + " | ".join(f"'{lay.name}' ({lay.root_hint}): {lay.tree()}"
                                                           for lay in others)) if others else ""
        raise DatasetError(f"{spec.name}: missing {what} in {root}; " + _expected(spec, best) + alt)
    chosen = found[0]
    panoptic = _open_panoptic(spec, root, chosen)
    samples = _list_samples(spec, root, chosen, panoptic)
    ds = EvalDataset(spec, root, chosen, samples, panoptic)
    ds.instances = _open_instances(ds)
    return ds


def _open_instances(ds: EvalDataset) -> InstanceGT | None:
    """The layout's instance ground truth where its JSON exists, else None.

    Raises:
        DatasetError: the JSON is unreadable, of another dataset, or lacks some of the split's images.
    """
    files = ds.layout.instances
    if files is None or not (ds.root / files.json_file).is_file():
        return None
    gt = _read_instances_json(ds.spec, ds.root, files, ds.category_ids)
    missing = [s for s in ds.samples if s.image.name not in gt.image_ids]
    if missing:
        raise DatasetError(f"{ds.spec.name}: {len(missing)} of the {len(ds.samples)} images have no entry in the "
                           f"instances JSON {gt.json_path} (first: {missing[0].image.name}); the instance ground truth "
                           f"is incomplete or of another split (source: {files.prepared_by}; see {DOCS}); remove it "
                           "to score without AP")
    return gt
