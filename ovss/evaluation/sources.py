"""Sources of label maps for ``ovss eval``: a segmenter, or predictions made elsewhere (PNG label
maps, COCO panoptic JSON + PNGs)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from ..data.datasets import EvalDataset, Sample, read_panoptic_png
from ..errors import DatasetError, InputError
from ..imageio import load_image
from .report import jsonable

PRED_SUFFIXES = (".png", ".tif", ".tiff")


#: A panoptic prediction: (H, W) int64 segment ids (0 = no segment) and the segments, each with
#: ``id`` and ``category_id`` (contiguous: the dataset's class index).
Panoptic = tuple[np.ndarray, list[dict[str, Any]]]


@dataclass
class Prediction:
    """What a source gives for one image: the (H, W) label map, the panoptic segments when the
    run scores PQ, and the instances when it scores AP: an object with ``masks``, ``scores``,
    ``labels`` (:class:`ovss.models.mask_inference.Instances`), or COCO results already."""

    labels: np.ndarray
    panoptic: Panoptic | None = None
    instances: Any = None


def to_numpy(x: Any) -> np.ndarray:
    """A tensor or array-like as a numpy array (on the CPU)."""
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


class SegmenterSource:
    """Label maps from a :class:`ovss.segmenter.Segmenter` (``predict(rgb, image_id=...) -> result.labels``),
    with ``panoptic`` its ``result.extras["panoptic"]`` (``panoptic_seg``, ``segments``), with ``instance``
    its ``result.extras["instances"]`` (``masks``, ``scores``, ``labels``). Images are
    decoded by the segmenter's own decoder (``read_image``: Pillow for the detectron2-style methods,
    OpenCV for the mmseg-style ones), so ``ovss eval`` takes the path the parity fixtures hold."""

    needs_image = True

    def __init__(self, segmenter: Any, num_classes: int, panoptic: bool = False, instance: bool = False) -> None:
        self.segmenter = segmenter
        self.num_classes = num_classes
        self.panoptic = panoptic
        self.instance = instance
        self._checked = False

    def decode(self, path: Path) -> np.ndarray:
        """(H, W, 3) uint8 RGB of an image file, decoded as the segmenter decodes files."""
        read = getattr(self.segmenter, "read_image", None)
        return read(path) if callable(read) else load_image(path)

    def __call__(self, sample: Sample, image: np.ndarray | None) -> Prediction:
        # no inference_mode here: GradCAM methods need autograd
        res = self.segmenter.predict(image, image_id=Path(sample.id).name)
        classes = getattr(res, "classes", None)
        if not self._checked and classes is not None and len(classes) != self.num_classes:
            # the panoptic category ids index the same class list, so this also guards PQ
            raise InputError(f"the segmenter scores {len(classes)} classes but the dataset has "
                             f"{self.num_classes}: build it for this dataset (create_segmenter(..., dataset=...))")
        self._checked = True
        extras = getattr(res, "extras", None) or {}
        out = Prediction(to_numpy(res.labels))
        if self.panoptic:
            pan = extras.get("panoptic")
            if not isinstance(pan, dict) or "panoptic_seg" not in pan:
                raise InputError("PQ needs panoptic output but the segmenter's result has no extras['panoptic']: "
                                 "build it with panoptic=True, or pass panoptic=False (--no-panoptic)")
            out.panoptic = (to_numpy(pan["panoptic_seg"]).astype(np.int64), list(pan.get("segments", [])))
        if self.instance:
            if extras.get("instances") is None:
                raise InputError("AP needs instance output but the segmenter's result has no extras['instances']: "
                                 "build it with instance=True, or pass instance=False (--no-instance)")
            out.instances = extras["instances"]
        return out

    def describe(self) -> dict[str, Any]:
        settings = getattr(self.segmenter, "settings", None)
        try:
            out = settings() if callable(settings) else {}
        except Exception:  # a stand-in segmenter without full settings still evaluates
            out = {}
        return {"segmenter": type(self.segmenter).__name__, "settings": jsonable(out)}


class PredictionDirSource:
    """Label maps read from ``folder``: one PNG (or TIFF) per image, named like the image.

    For image id ``a/b`` with image file ``a/b_leftImg8bit.png`` the names tried are
    ``a/b.png``, ``a/b_leftImg8bit.png``, ``b.png``, ``b_leftImg8bit.png`` (and ``.tif``/``.tiff``):
    values must be class indices of the dataset in order (the reduced classes for
    reduce-zero-label datasets), at the image's original size. With ``panoptic_json``, also
    panoptic predictions (see :class:`PanopticPredictions`); with ``instances_json``, instance
    predictions (:class:`ovss.evaluation.instance.InstancePredictions`).
    """

    needs_image = False

    def __init__(self, folder: str | Path, dataset: EvalDataset, panoptic_json: str | Path | None = None,
                 instances_json: str | Path | None = None) -> None:
        from .instance import InstancePredictions

        self.folder = Path(folder).expanduser()
        if not self.folder.is_dir():
            raise InputError(f"predictions folder {self.folder} does not exist")
        self.image_root = dataset.root / dataset.layout.image_dir
        self.panoptic = PanopticPredictions(panoptic_json, dataset) if panoptic_json is not None else None
        self.instances = InstancePredictions(instances_json, dataset) if instances_json is not None else None

    def candidates(self, sample: Sample) -> list[Path]:
        try:
            image_rel = sample.image.relative_to(self.image_root)
        except ValueError:
            image_rel = Path(sample.image.name)
        stems = [sample.id, str(image_rel.with_suffix("")), Path(sample.id).name, image_rel.with_suffix("").name]
        seen: list[Path] = []
        for stem in dict.fromkeys(stems):
            for ext in PRED_SUFFIXES:
                p = self.folder / f"{stem}{ext}"
                if p not in seen:
                    seen.append(p)
        return seen

    def find(self, sample: Sample) -> Path | None:
        return next((p for p in self.candidates(sample) if p.is_file()), None)

    def check(self, samples: Sequence[Sample]) -> None:
        """Raise :class:`InputError` when a prediction file is missing (before the long loop)."""
        missing = [s for s in samples if self.find(s) is None]
        if missing:
            tried = ", ".join(p.name for p in self.candidates(missing[0])[::len(PRED_SUFFIXES)])
            raise InputError(f"{len(missing)} of {len(samples)} images have no prediction in {self.folder} "
                             f"(first: image {missing[0].image.name}; tried {tried} and .tif): name each label "
                             "map like its image")
        if self.panoptic is not None:
            self.panoptic.check(samples)

    def __call__(self, sample: Sample, image: np.ndarray | None) -> Prediction:
        path = self.find(sample)
        if path is None:
            raise InputError(f"no prediction for image {sample.image.name} in {self.folder}")
        try:
            with Image.open(path) as im:
                arr = np.array(im)
        except Exception as exc:
            raise InputError(f"cannot read prediction {path} ({exc.__class__.__name__})") from None
        if arr.ndim != 2:
            raise InputError(f"prediction {path} has shape {arr.shape}: expected a single-channel label map "
                             "of class indices, not a colour image")
        return Prediction(arr, self.panoptic(sample) if self.panoptic is not None else None,
                          self.instances(sample) if self.instances is not None else None)

    def describe(self) -> dict[str, Any]:
        return {"predictions": str(self.folder),
                "panoptic_predictions": str(self.panoptic.json_path) if self.panoptic is not None else None,
                "instance_predictions": str(self.instances.json_path) if self.instances is not None else None}


class PanopticPredictions:
    """Panoptic predictions in the COCO panoptic format, as panopticapi ``pq_compute`` reads them:
    a JSON ``{"annotations": [{"image_id", "file_name", "segments_info": [{"id", "category_id"}]}]}``
    (category ids of the dataset's panoptic JSON) and the RGB PNGs it names, in the folder named like
    the JSON without ``.json`` (panopticapi's default ``pred_folder``) or else beside it. Images are
    matched by ``image_id``, as panopticapi does.

    Raises:
        InputError: unreadable JSON, the dataset has no panoptic ground truth.
    """

    def __init__(self, json_file: str | Path, dataset: EvalDataset) -> None:
        self.json_path = Path(json_file).expanduser()
        if dataset.panoptic is None:
            raise InputError(f"{dataset.name}: no panoptic ground truth under {dataset.root}, so panoptic "
                             "predictions cannot be scored (see docs/datasets.md)")
        self.gt = dataset.panoptic
        try:
            data = json.loads(self.json_path.read_text(encoding="utf-8"))
            annotations = data["annotations"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"cannot read panoptic predictions {self.json_path} ({exc.__class__.__name__}: {exc}); "
                             "expected a COCO panoptic JSON with 'annotations'") from None
        stem_dir = self.json_path.with_suffix("")
        self.folder = stem_dir if stem_dir.is_dir() else self.json_path.parent
        self.by_image = {str(a.get("image_id")): a for a in annotations}
        self.contiguous = self.gt.contiguous

    def _annotation(self, sample: Sample) -> dict[str, Any] | None:
        image_id = self.gt.annotations[Path(sample.id).name]["image_id"]
        return self.by_image.get(str(image_id))

    def check(self, samples: Sequence[Sample]) -> None:
        """Raise :class:`InputError` when an image has no annotation or PNG (before the long loop)."""
        missing = [s for s in samples if self._annotation(s) is None]
        if missing:
            raise InputError(f"{len(missing)} of {len(samples)} images have no annotation in {self.json_path} "
                             f"(first: {missing[0].id}); images are matched by image_id")
        no_png = [s for s in samples if not (self.folder / self._annotation(s)["file_name"]).is_file()]
        if no_png:
            raise InputError(f"{len(no_png)} of {len(samples)} panoptic predictions have no PNG in {self.folder} "
                             f"(first: {self._annotation(no_png[0])['file_name']})")

    def __call__(self, sample: Sample) -> Panoptic:
        ann = self._annotation(sample)
        assert ann is not None  # check() ran first
        try:
            ids = read_panoptic_png(self.folder / ann["file_name"])
        except DatasetError as exc:
            raise InputError(str(exc)) from None
        segments = []
        for seg in ann.get("segments_info", []):
            cat = int(seg["category_id"])
            if cat not in self.contiguous:
                raise InputError(f"{self.json_path}: segment {seg.get('id')} of {ann['file_name']} has category_id "
                                 f"{cat}, which is not a category of {self.gt.json_path}")
            segments.append({**seg, "category_id": self.contiguous[cat]})
        return ids, segments
