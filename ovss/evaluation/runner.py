"""The evaluation loop: a benchmark split, a source of label maps, one confusion matrix.

:func:`evaluate` scores either a segmenter (built here from a method name with the dataset's
official protocol, or passed in already built) or a folder of PNG label maps made by any tool,
on one process or many (``torchrun``: the images are sharded over the ranks and the confusion
matrices are all-reduced, so the numbers equal a single-process run bit for bit). A run with an
output folder keeps a partial state there (confusion matrix + processed image ids, written
atomically) and resumes from it when started again with the same settings.

On a split with panoptic ground truth (``coco_panoptic``, ``ade20k`` when prepared) a source
that gives panoptic segments (a method whose constructor takes ``panoptic``, built with
``panoptic=True``; or predictions in the COCO panoptic format) is also scored for PQ / SQ / RQ
(:mod:`ovss.evaluation.panoptic`): the (C, 4) statistics are accumulated beside the confusion
matrix, kept in the resume state and all-reduced the same way.

On a split with instance ground truth (a COCO instances JSON: ``coco_panoptic``, ``ade20k``,
``cityscapes`` when prepared) a source that gives instances (a method whose constructor takes
``instance``, built with ``instance=True``; or a COCO results JSON) is also scored for mask AP
(:mod:`ovss.evaluation.instance`): each image's detections (COCO RLE) are appended to a JSON-lines
file beside the resume state (one line per image, so saving the state stays cheap however many
detections there are), gathered to rank 0 after the loop and scored there once with pycocotools'
COCOeval.
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import io
import json
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from .. import registry
from ..data.datasets import EvalDataset, Sample, id2rgb, open_dataset, read_panoptic_png
from ..segmenter import image_id_kwargs, resolve_device
from ..errors import DatasetError, InputError, UnknownNameError
from .metrics import SegMetrics, compute_metrics, confusion_matrix
from .instance import (InstanceMetrics, InstancePredictions, append_detections, coco_from_dict, detections_path,
                       evaluate_detections, load_detections, to_detections)
from .panoptic import PanopticMetrics, compute_pq, pq_stats

PRED_SUFFIXES = (".png", ".tif", ".tiff")
SAVE_EVERY = 25  # images between two partial-state writes (also written on interruption)


# --- sources of label maps ---------------------------------------------------------------------

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


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


class SegmenterSource:
    """Label maps from a :class:`ovss.segmenter.Segmenter` (``predict(rgb) -> result.labels``), with
    ``panoptic`` its ``result.extras["panoptic"]`` (``panoptic_seg``, ``segments``), with
    ``instance`` its ``result.extras["instances"]`` (``masks``, ``scores``, ``labels``)."""

    needs_image = True

    def __init__(self, segmenter: Any, num_classes: int, panoptic: bool = False, instance: bool = False) -> None:
        self.segmenter = segmenter
        self.num_classes = num_classes
        self.panoptic = panoptic
        self.instance = instance
        self._checked = False

    def __call__(self, sample: Sample, image: np.ndarray | None) -> Prediction:
        # no inference_mode here: GradCAM methods need autograd
        res = self.segmenter.predict(image, **image_id_kwargs(self.segmenter, Path(sample.id).name))
        classes = getattr(res, "classes", None)
        if not self._checked and classes is not None and len(classes) != self.num_classes:
            # the panoptic category ids index the same class list, so this also guards PQ
            raise InputError(f"the segmenter scores {len(classes)} classes but the dataset has "
                             f"{self.num_classes}: build it for this dataset (create_segmenter(..., dataset=...))")
        self._checked = True
        extras = getattr(res, "extras", None) or {}
        out = Prediction(_numpy(res.labels))
        if self.panoptic:
            pan = extras.get("panoptic")
            if not isinstance(pan, dict) or "panoptic_seg" not in pan:
                raise InputError("PQ needs panoptic output but the segmenter's result has no extras['panoptic']: "
                                 "build it with panoptic=True, or pass panoptic=False (--no-panoptic)")
            out.panoptic = (_numpy(pan["panoptic_seg"]).astype(np.int64), list(pan.get("segments", [])))
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
        return {"segmenter": type(self.segmenter).__name__, "settings": _jsonable(out)}


class PredictionDirSource:
    """Label maps read from ``folder``: one PNG (or TIFF) per image, named like the image.

    For image id ``a/b`` with image file ``a/b_leftImg8bit.png`` the names tried are
    ``a/b.png``, ``a/b_leftImg8bit.png``, ``b.png``, ``b_leftImg8bit.png`` (and ``.tif``/``.tiff``):
    values must be class indices of the dataset in order (the reduced classes for
    reduce-zero-label datasets), at the image's original size. With ``panoptic_json``, also
    panoptic predictions (see :class:`PanopticPredictions`).
    """

    needs_image = False

    def __init__(self, folder: str | Path, dataset: EvalDataset, panoptic_json: str | Path | None = None,
                 instances_json: str | Path | None = None) -> None:
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


# --- result ----------------------------------------------------------------------------------------


@dataclass
class EvalResult:
    """What :func:`evaluate` returns (the same on every rank).

    Attributes:
        dataset: the opened split.
        name: run name (``<dataset>_<name>`` is the report file stem).
        matrix: (C, C) int64 confusion matrix over all scored pixels (rows GT, columns prediction).
        metrics: metrics as fractions (see :class:`ovss.evaluation.metrics.SegMetrics`).
        num_images: images scored.
        elapsed_s: wall-clock seconds (summed over resumed sessions).
        config: the full configuration, JSON-able.
        json_path / csv_path: the reports written (rank 0 with an output folder), else None.
        pq_stats: (C, 4) float64 ``[tp, fp, fn, iou_sum]`` per class when PQ was scored, else None.
        panoptic: PQ / SQ / RQ as fractions when PQ was scored, else None.
        instance: mask AP as fractions when AP was scored, else None.
        detections: the COCO results of all images when AP was scored (rank 0; [] elsewhere).
    """

    dataset: EvalDataset
    name: str
    matrix: np.ndarray
    metrics: SegMetrics
    num_images: int
    elapsed_s: float
    config: dict[str, Any]
    json_path: Path | None = None
    csv_path: Path | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    pq_stats: np.ndarray | None = None
    panoptic: PanopticMetrics | None = None
    instance: InstanceMetrics | None = None
    detections: list[dict] = field(default_factory=list)

    def summary(self, percent: bool = True) -> dict[str, float | None]:
        """The summary metrics: mIoU, mAcc, aAcc, fwIoU (seen/unseen, hIoU), then PQ / SQ / RQ
        (all, ``_th`` things, ``_st`` stuff) when PQ was scored, then AP, AP50, AP75, APs, APm, APl
        when AP was scored; percent by default, NaN as None."""
        return {**self.metrics.summary(percent), **(self.panoptic.summary(percent) if self.panoptic else {}),
                **(self.instance.summary(percent) if self.instance else {})}

    def per_class(self, percent: bool = True) -> list[dict]:
        """Per class: IoU, Acc and pixel counts, with isthing, PQ, SQ, RQ, tp, fp, fn when PQ was
        scored, and AP (None for classes without instance ground truth) when AP was scored."""
        rows = self.metrics.per_class(self.dataset.classes, percent)
        if self.panoptic is not None:
            rows = [{**r, **p} for r, p in zip(rows, self.panoptic.per_class(self.dataset.classes, percent))]
        if self.instance is not None:
            ap = self.instance.per_category(percent)
            rows = [{**r, "AP": ap.get(c)} for r, c in zip(rows, self.dataset.category_ids)]
        return rows

    def to_dict(self) -> dict[str, Any]:
        """The JSON report: metrics in percent, per-class IoU/Acc (and PQ), configuration, versions, time."""
        return {
            "dataset": self.dataset.name,
            "name": self.name,
            "units": "percent",
            "metrics": self.summary(percent=True),
            "per_class": self.per_class(percent=True),
            "num_images": self.num_images,
            "elapsed_s": round(self.elapsed_s, 3),
            "images_per_s": round(self.num_images / self.elapsed_s, 3) if self.elapsed_s > 0 else None,
            "config": self.config,
            "versions": versions(),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **self.extras,
        }


def versions() -> dict[str, str]:
    """Versions of Python, ovss and the libraries that can change the numbers."""
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("ovss", "torch", "torchvision", "numpy", "open_clip_torch", "timm", "transformers",
                "opencv-python-headless", "pillow"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    if torch.cuda.is_available():
        out["cuda"] = str(torch.version.cuda)
        out["gpu"] = torch.cuda.get_device_name()
    return out


def _jsonable(x: Any) -> Any:
    """``x`` as plain JSON types (unknown objects as their str, NaN/inf as None: strict JSON)."""
    def clean(v: Any) -> Any:
        if isinstance(v, float) and not np.isfinite(v):
            return None
        if isinstance(v, dict):
            return {str(k): clean(w) for k, w in v.items()}
        if isinstance(v, list):
            return [clean(w) for w in v]
        return v

    return clean(json.loads(json.dumps(x, default=str)))


# --- distributed -----------------------------------------------------------------------------------


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    backend: str | None = None
    owns_group: bool = False

    @property
    def active(self) -> bool:
        return self.world > 1


def _resolve_device(device: str | torch.device | None) -> str:
    """"auto"/None -> cuda (this rank's LOCAL_RANK GPU) when available, else cpu; "cuda" -> cuda:LOCAL_RANK."""
    d = str(device) if device is not None else "auto"
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if d == "auto":
        d = "cuda" if torch.cuda.is_available() else "cpu"
    if d == "cuda" and torch.cuda.is_available() and "WORLD_SIZE" in os.environ:
        d = f"cuda:{local}"
    return str(resolve_device(d))


def _dist_setup(device: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return _Dist(dist.get_rank(), dist.get_world_size(), dist.get_backend(), False)
    if world <= 1:
        return _Dist()
    if not dist.is_available():
        raise InputError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(torch.device(device))
    try:
        dist.init_process_group(backend=backend)
    except (ValueError, RuntimeError) as exc:  # e.g. WORLD_SIZE set by hand without MASTER_ADDR/PORT
        raise InputError(f"cannot start torch.distributed ({backend}) with WORLD_SIZE={world}: {exc}; "
                         "launch with torchrun, or unset WORLD_SIZE for one process") from None
    return _Dist(dist.get_rank(), dist.get_world_size(), backend, True)


def _all_reduce(d: _Dist, arr: np.ndarray, device: str, op: str = "sum") -> np.ndarray:
    if not d.active:
        return arr
    import torch.distributed as dist

    t = torch.from_numpy(np.ascontiguousarray(arr))
    if d.backend == "nccl":  # NCCL reduces CUDA tensors only, whatever device scored the images
        cuda = torch.device(device) if device.startswith("cuda") else torch.device("cuda", torch.cuda.current_device())
        t = t.to(cuda)
    dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return t.cpu().numpy()


def _barrier(d: _Dist, device: str) -> None:
    if d.active:
        _all_reduce(d, np.zeros(1, dtype=np.int64), device)  # a tiny collective works on any backend


# --- partial state (resume) -------------------------------------------------------------------------


def _state_path(output_dir: Path, stem: str, d: _Dist) -> Path:
    return output_dir / f".{stem}.partial.rank{d.rank}of{d.world}.npz"


def _save_state(path: Path, matrix: np.ndarray, pq: np.ndarray, done: list[str], fingerprint: str,
                elapsed: float) -> None:
    buf = io.BytesIO()
    np.savez(buf, matrix=matrix, pq=pq, done=np.array(done, dtype=str), fingerprint=np.array(fingerprint),
             elapsed=np.array(elapsed, dtype=np.float64))
    _atomic_bytes(path, buf.getvalue())  # a kill mid-write leaves the previous state intact


def _load_state(path: Path, fingerprint: str, num_classes: int
                ) -> tuple[np.ndarray, np.ndarray, list[str], float] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if (str(z["fingerprint"]) != fingerprint or z["matrix"].shape != (num_classes, num_classes)
                    or z["pq"].shape != (num_classes, 4)):
                return None
            return (z["matrix"].astype(np.int64), z["pq"].astype(np.float64), [str(x) for x in z["done"]],
                    float(z["elapsed"]))
    except Exception:  # a corrupt state file means starting over, never a crash
        return None


def _gather_detections(d: _Dist, detections: list[dict]) -> list[dict]:
    """Every rank's detections on rank 0 (rank order; [] on the other ranks)."""
    if not d.active:
        return detections
    import torch.distributed as dist

    parts: list[Any] | None = [None] * d.world if d.rank == 0 else None
    dist.gather_object(detections, parts, dst=0)
    return [det for part in parts for det in part] if parts is not None else []


def _broadcast_object(d: _Dist, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not d.active:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# --- loop -------------------------------------------------------------------------------------------


Loaded = tuple[int, np.ndarray | None, np.ndarray, Panoptic | None]  # index, image, label, panoptic GT


def _prefetch(dataset: EvalDataset, indices: list[int], need_image: bool, need_panoptic: bool = False,
              workers: int = 2, depth: int = 4) -> Iterator[Loaded]:
    """Yield (index, image, label, panoptic ground truth) in order, decoding a few ahead in threads
    (cv2/PIL release the GIL)."""

    def load(i: int) -> Loaded:
        return (i, dataset.read_image(i) if need_image else None, dataset.read_label(i),
                dataset.read_panoptic(i) if need_panoptic else None)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = [pool.submit(load, i) for i in indices[:depth]]
        nxt = depth
        while pending:
            fut = pending.pop(0)
            if nxt < len(indices):
                pending.append(pool.submit(load, indices[nxt]))
                nxt += 1
            yield fut.result()


def _running_miou(matrix: np.ndarray) -> float:
    tp = np.diag(matrix).astype(np.float64)
    union = matrix.sum(0) + matrix.sum(1) - tp
    valid = union > 0
    return float((tp[valid] / union[valid]).mean() * 100) if valid.any() else float("nan")


def evaluate(dataset: str | EvalDataset, data_root: str | Path | None = None, *,
             segmenter: Any = None, method: str | None = None, model: str | None = None,
             pretrained: str | None = None, predictions: str | Path | None = None,
             device: str | torch.device | None = "auto", limit: int | None = None,
             output_dir: str | Path | None = None, name: str | None = None, layout: str | None = None,
             resume: bool = True, progress: bool = True, save_predictions: str | Path | None = None,
             segmenter_options: dict[str, Any] | None = None, unseen: Sequence[int] | None = None,
             save_every: int = SAVE_EVERY, panoptic: bool | None = None,
             panoptic_predictions: str | Path | None = None, instance: bool | None = None,
             instance_predictions: str | Path | None = None, label_short_side: int | None = None,
             on_image: Callable[[int, Sample], None] | None = None) -> EvalResult:
    """Score one benchmark split with the official metrics.

    Exactly one source of label maps: ``segmenter`` (an object with ``predict(rgb_uint8) ->
    result`` whose ``labels`` is an (H, W) map of class indices), ``method`` (built with
    ``ovss.create_segmenter(method, model=..., pretrained=..., dataset=<name>, device=...)``,
    i.e. the method's official protocol for the dataset), or ``predictions`` (a folder of PNG
    label maps named like the images; see :class:`PredictionDirSource`).

    PQ (:mod:`ovss.evaluation.panoptic`) is scored besides when the split has panoptic ground
    truth and the source gives panoptic segments: a ``method`` whose constructor takes
    ``panoptic`` (it is then built with ``panoptic=True``), a ``segmenter`` whose ``panoptic``
    attribute is true (its results carry ``extras["panoptic"]``: ``panoptic_seg`` (H, W) ids and
    ``segments`` with ``id`` and ``category_id``, the index into the dataset's classes), or
    ``panoptic_predictions`` beside ``predictions``.

    Args:
        dataset: benchmark name (with ``data_root``) or an opened :class:`EvalDataset`.
        data_root: folder of the split (see ``docs/datasets.md``).
        device: "auto" (cuda when available), "cpu", "cuda", "cuda:1"...; under torchrun each
            rank uses cuda:LOCAL_RANK.
        limit: score only the first N images of the split (a quick look).
        output_dir: where ``<dataset>_<name>.json`` / ``.csv`` and the partial state go;
            None writes nothing and cannot resume.
        name: report name; default the method, or "predictions".
        layout: force a dataset layout (see :mod:`ovss.data.datasets`).
        resume: continue from a partial state of an interrupted run with the same settings.
        save_predictions: also write each predicted label map as PNG here (re-scorable with
            ``predictions=``).
        segmenter_options: extra keyword arguments for ``create_segmenter``.
        unseen: class indices of a zero-shot unseen split; default the dataset's own split
            (VOC20 15/5, COCO-Stuff 156/15) or none.
        save_every: images between partial-state writes.
        panoptic: None (default) scores PQ whenever it can (see above); True requires it (an
            error where the split has no panoptic ground truth or the source no panoptic
            output); False scores mIoU only.
        panoptic_predictions: with ``predictions``, a COCO panoptic prediction JSON (see
            :class:`PanopticPredictions`).
        instance: like ``panoptic``, for mask AP on splits with instance ground truth (a
            ``method`` whose constructor takes ``instance``, a ``segmenter`` whose ``instance``
            attribute is true, or ``instance_predictions``).
        instance_predictions: with ``predictions``, a COCO results JSON (see
            :class:`InstancePredictions`).
        label_short_side: CLIP-DIY's own scoring protocol (not the benchmark's): the ground truth
            is resized to this short side with nearest neighbour before scoring (see
            :func:`resize_to_short_side`) and each prediction nearest-resized to it; None scores
            at the original label resolution (every other method's protocol). Not with PQ / AP.
        on_image: callback after each scored image (index in the split, sample).

    Returns:
        The :class:`EvalResult` (identical on every rank under torchrun; PQ equal up to the
        rounding of the IoU sums, the counts exactly).

    Raises:
        InputError: not exactly one source, missing/ill-shaped predictions, bad device, PQ asked
            for where it cannot be scored, a segmenter whose class count differs from the dataset's.
        DatasetError: missing or half-prepared dataset folder.
        UnknownNameError / ModelLoadError: from building the method.
    """
    t_start = time.perf_counter()
    n_sources = sum(x is not None for x in (segmenter, method, predictions))
    if n_sources != 1:
        raise InputError("give exactly one of --method, --predictions (or a segmenter object); got "
                         f"{n_sources}")
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be a positive number of images, got {limit}")
    if panoptic_predictions is not None and predictions is None:
        raise InputError("--panoptic-predictions goes with --predictions (the label maps scored for mIoU)")
    if instance_predictions is not None and predictions is None:
        raise InputError("--instance-predictions goes with --predictions (the label maps scored for mIoU)")
    if label_short_side is not None and label_short_side < 1:
        raise InputError(f"--label-short-side must be a positive number of pixels, got {label_short_side}")
    if isinstance(dataset, EvalDataset):
        ds = dataset
    else:
        if data_root is None:
            raise InputError("give the dataset folder with --data-root")
        ds = open_dataset(dataset, data_root, layout=layout)
    with_pq = _panoptic_mode(ds, panoptic, method=method, segmenter=segmenter,
                             panoptic_predictions=panoptic_predictions)
    with_ap = _instance_mode(ds, instance, method=method, segmenter=segmenter,
                             instance_predictions=instance_predictions)
    if label_short_side is not None and (with_pq or with_ap):
        if panoptic or instance or panoptic_predictions is not None or instance_predictions is not None:
            raise InputError("--label-short-side (CLIP-DIY's mIoU protocol) resizes the semantic labels only: "
                             "not with PQ or AP")
        with_pq = with_ap = False
    if segmenter is not None and getattr(segmenter, "device", None) is not None and str(device) in ("None", "auto"):
        dev = str(segmenter.device)  # a built segmenter decides (and with it NCCL vs Gloo)
    elif predictions is not None and not str(device).startswith("cuda"):
        dev = "cpu"  # reading PNGs needs no GPU; Gloo all-reduces on CPU
    else:
        dev = _resolve_device(device)
    d = _dist_setup(dev)
    try:
        return _evaluate(ds, d, dev, t_start, segmenter=segmenter, method=method, model=model,
                         pretrained=pretrained, predictions=predictions, limit=limit, output_dir=output_dir,
                         name=name, resume=resume, progress=progress, save_predictions=save_predictions,
                         segmenter_options=segmenter_options or {}, unseen=unseen, save_every=save_every,
                         with_pq=with_pq, panoptic_predictions=panoptic_predictions if with_pq else None,
                         with_ap=with_ap, instance_predictions=instance_predictions if with_ap else None,
                         label_short_side=label_short_side, on_image=on_image)
    finally:
        if d.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _takes_option(cls: Any, option: str) -> bool:
    """Whether the constructor of ``cls`` names keyword ``option`` (its signature, as
    :func:`ovss.segmenter.image_id_kwargs` reads ``predict``'s)."""
    import inspect

    try:
        return option in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False


def _panoptic_mode(ds: EvalDataset, requested: bool | None, *, method: str | None, segmenter: Any,
                   panoptic_predictions: str | Path | None) -> bool:
    """Whether this run scores PQ (see :func:`evaluate`'s ``panoptic``).

    Raises:
        InputError: PQ required (``requested`` True, or panoptic predictions given) where the
            split has no panoptic ground truth or the source no panoptic output.
    """
    if requested is False:
        return False
    if ds.panoptic is None:
        if requested or panoptic_predictions is not None:
            raise InputError(f"{ds.name}: no panoptic ground truth under {ds.root} (layout {ds.layout.name}), so no "
                             "PQ: see docs/datasets.md for the panoptic layouts, or use --no-panoptic")
        return False
    if panoptic_predictions is not None:
        able, how = True, ""
    elif method is not None:
        try:
            able = _takes_option(registry.method_class(method), "panoptic")
        except UnknownNameError:  # create_segmenter reports it with the list of methods
            able = False
        how = f"method {method!r} has no panoptic option"
    elif segmenter is not None:
        # a built segmenter cannot be rebuilt: trust the caller, or the segmenter's own setting
        able = bool(requested) or getattr(segmenter, "panoptic", False) is True
        how = ""
    else:
        able, how = False, "label maps carry no segments: give --panoptic-predictions JSON as well"
    if requested and not able:
        raise InputError(f"PQ asked for on {ds.name} but {how}")
    return able


def _instance_mode(ds: EvalDataset, requested: bool | None, *, method: str | None, segmenter: Any,
                   instance_predictions: str | Path | None) -> bool:
    """Whether this run scores mask AP (see :func:`evaluate`'s ``instance``).

    Raises:
        InputError: AP required where the split has no instance ground truth or the source no
            instance output.
    """
    if requested is False:
        return False
    if ds.instances is None:
        if requested or instance_predictions is not None:
            files = ds.layout.instances
            where = f" (expected {files.tree()})" if files is not None else ""
            raise InputError(f"{ds.name}: no instance ground truth under {ds.root}{where}, so no AP: see "
                             "docs/datasets.md, or use --no-instance")
        return False
    if instance_predictions is not None:
        able, how = True, ""
    elif method is not None:
        try:
            able = _takes_option(registry.method_class(method), "instance")
        except UnknownNameError:
            able = False
        how = f"method {method!r} has no instance option"
    elif segmenter is not None:
        able = bool(requested) or getattr(segmenter, "instance", False) is True
        how = ""
    else:
        able, how = False, "label maps carry no instances: give --instance-predictions JSON as well"
    if requested and not able:
        raise InputError(f"AP asked for on {ds.name} but {how}")
    return able


def _evaluate(ds: EvalDataset, d: _Dist, dev: str, t_start: float, *, segmenter: Any, method: str | None,
              model: str | None, pretrained: str | None, predictions: str | Path | None, limit: int | None,
              output_dir: str | Path | None, name: str | None, resume: bool, progress: bool,
              save_predictions: str | Path | None, segmenter_options: dict[str, Any],
              unseen: Sequence[int] | None, save_every: int, with_pq: bool,
              panoptic_predictions: str | Path | None, with_ap: bool, instance_predictions: str | Path | None,
              label_short_side: int | None, on_image: Callable[[int, Sample], None] | None) -> EvalResult:
    num_classes = ds.num_classes
    indices = list(range(len(ds)))[: limit or None]
    shard = indices[d.rank::d.world]
    run_name = name or method or (getattr(segmenter, "method", None) or type(segmenter).__name__.lower()
                                  if segmenter is not None else "predictions")
    stem = f"{ds.name}_{_safe(run_name)}"

    source: SegmenterSource | PredictionDirSource
    if predictions is not None:
        source = PredictionDirSource(predictions, ds, panoptic_predictions, instance_predictions)
        source.check([ds.samples[i] for i in indices])  # all ranks see the same error, none waits
    else:
        if segmenter is None:
            kwargs: dict[str, Any] = {"dataset": ds.name, "device": dev, **segmenter_options}
            if model is not None:
                kwargs["model"] = model
            if pretrained is not None:
                kwargs["pretrained"] = pretrained
            if with_pq:
                kwargs["panoptic"] = True
            if with_ap:
                kwargs["instance"] = True
            segmenter = registry.create_segmenter(method, **kwargs)  # type: ignore[arg-type]
        source = SegmenterSource(segmenter, num_classes, panoptic=with_pq, instance=with_ap)

    config = {
        **ds.describe(),
        "name": run_name, "method": method, "model": model, "pretrained": pretrained,
        "predictions": str(predictions) if predictions is not None else None,
        "segmenter_options": _jsonable(segmenter_options), "device": dev, "limit": limit,
        "num_images_split": len(ds), "num_images_official": ds.spec.num_images,
        "world_size": d.world, "backend": d.backend, "panoptic": with_pq, "instance": with_ap,
        "label_short_side": label_short_side,
        **source.describe(),
    }
    fingerprint = hashlib.sha256(json.dumps(
        {k: config.get(k) for k in ("dataset", "data_root", "layout", "name", "method", "model", "pretrained",
                                    "predictions", "panoptic_predictions", "segmenter_options", "limit",
                                    "world_size", "panoptic", "settings", "instance", "instance_predictions",
                                    "label_short_side")},
        sort_keys=True, default=str).encode()).hexdigest()

    out_dir = Path(output_dir).expanduser() if output_dir is not None else None
    state_path = None
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    pq = np.zeros((num_classes, 4), dtype=np.float64)
    done: list[str] = []
    detections: dict[str, list[dict]] = {}  # sample id -> its COCO results (with_ap)
    prev_elapsed = 0.0
    dets_path = None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        state_path = _state_path(out_dir, stem, d)
        state = _load_state(state_path, fingerprint, num_classes) if resume else None
        if state is not None:
            matrix, pq, done, prev_elapsed = state
        if with_ap:
            dets_path = detections_path(state_path)
            detections = load_detections(dets_path, done)
    done_set = set(done)
    todo = [i for i in shard if ds.samples[i].id not in done_set]
    save_dir = Path(save_predictions).expanduser() if save_predictions is not None else None
    isthing = ds.panoptic.isthing if ds.panoptic is not None else ()

    bar = None
    if progress and d.rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(shard), initial=len(shard) - len(todo), unit="img", dynamic_ncols=True,
                   desc=f"{ds.name}" + (f" (rank 0 of {d.world})" if d.active else ""), file=sys.stderr)
    t_loop = time.perf_counter()
    since_save = 0
    try:
        for i, image, label, pan_gt in _prefetch(ds, todo, source.needs_image, with_pq):
            sample = ds.samples[i]
            pred = source(sample, image)
            try:
                if label_short_side is not None:
                    label = resize_to_short_side(label, label_short_side)
                    pred.labels = _nearest(np.asarray(_numpy(pred.labels)), label.shape)
                matrix += confusion_matrix(pred.labels, label, num_classes, ds.ignore_index)
                if pan_gt is not None:
                    assert pred.panoptic is not None  # the sources give segments whenever with_pq
                    pq += pq_stats(*pan_gt, *pred.panoptic, num_classes)
                image_dets = None
                if with_ap:
                    image_dets = (pred.instances if isinstance(pred.instances, list)
                                  else to_detections(pred.instances, ds.image_id(i), ds.category_ids))
                    detections[sample.id] = image_dets
                    append_detections(dets_path, sample.id, image_dets)
            except InputError as exc:
                raise InputError(f"{sample.id}: {exc}") from None
            if save_dir is not None:
                _save_label_map(save_dir / f"{sample.id}.png", pred.labels, num_classes)
                if pred.panoptic is not None:
                    _save_panoptic(save_dir, ds, sample, pred.panoptic)
                if image_dets is not None:
                    _save_instances(save_dir, sample, image_dets)
            done.append(sample.id)
            since_save += 1
            if state_path is not None and since_save >= save_every:
                _save_state(state_path, matrix, pq, done, fingerprint, prev_elapsed + time.perf_counter() - t_start)
                since_save = 0
            if bar is not None:
                running = f"mIoU {_running_miou(matrix):.2f}"
                if with_pq:
                    running += f" PQ {100 * compute_pq(pq, isthing).PQ:.2f}"
                if with_ap:
                    running += f" dets {sum(len(v) for v in detections.values())}"
                bar.set_postfix_str(running, refresh=False)
                bar.update(1)
            if on_image is not None:
                on_image(i, sample)
    except BaseException:
        if state_path is not None and since_save:
            _save_state(state_path, matrix, pq, done, fingerprint, prev_elapsed + time.perf_counter() - t_start)
        raise
    finally:
        if bar is not None:
            bar.close()
    loop_s = time.perf_counter() - t_loop

    total = _all_reduce(d, matrix, dev)
    pq_total = _all_reduce(d, pq, dev) if with_pq else None
    n_images = int(_all_reduce(d, np.array([len(done)], dtype=np.int64), dev)[0])
    elapsed = float(_all_reduce(d, np.array([prev_elapsed + time.perf_counter() - t_start]), dev, op="max")[0])
    if unseen is None:
        unseen = ds.spec.unseen_indices
    metrics = compute_metrics(total, unseen or None)
    config["loop_s"] = round(loop_s, 3)
    instance_metrics, all_dets = None, []
    if with_ap:
        assert ds.instances is not None
        all_dets = _gather_detections(d, [det for i in shard for det in detections.get(ds.samples[i].id, [])])
        if d.rank == 0:
            image_ids = [ds.image_id(i) for i in indices]
            instance_metrics = evaluate_detections(coco_from_dict(ds.instances.data), all_dets, image_ids)
        instance_metrics = _broadcast_object(d, instance_metrics)
    result = EvalResult(ds, run_name, total, metrics, n_images, elapsed, config, pq_stats=pq_total,
                        panoptic=compute_pq(pq_total, isthing) if pq_total is not None else None,
                        instance=instance_metrics, detections=all_dets)
    if out_dir is not None and d.rank == 0:
        result.json_path, result.csv_path = write_reports(result, out_dir, stem)
    if save_dir is not None and with_pq and d.rank == 0:  # past the all-reduces every rank has saved its images
        _merge_panoptic_json(save_dir, ds, [ds.samples[i] for i in indices])
    _barrier(d, dev)
    if state_path is not None:
        state_path.unlink(missing_ok=True)
        detections_path(state_path).unlink(missing_ok=True)
    return result


def resize_to_short_side(label: np.ndarray, short_side: int) -> np.ndarray:
    """A label map resized with nearest neighbour to short side ``short_side`` (CLIP-DIY's "fix
    for the eval": torchvision ``resize(PIL mask, size=448, NEAREST)``, ``src/datasets/pascal_voc.py``
    ``get_mask`` and ``src/datasets/coco.py`` at f88932d): the long side becomes
    ``int(short_side * long / short)`` (truncated), PIL ``NEAREST``.

    Args:
        label: (H, W) integer labels (< 2^31).
        short_side: target short side in pixels.

    Returns:
        (h, w) int64 labels.
    """
    h, w = label.shape
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(short_side * long / short)
    new_w, new_h = (short_side, new_long) if w <= h else (new_long, short_side)
    img = Image.fromarray(np.asarray(label).astype(np.int32))
    return np.asarray(img.resize((new_w, new_h), Image.NEAREST)).astype(np.int64)


def _nearest(pred: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A prediction nearest-resized to ``shape`` with OpenCV, as CLIP-DIY's ``evaluate.py`` does."""
    if pred.shape == tuple(shape):
        return pred
    import cv2

    return cv2.resize(pred.astype(np.int32), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST).astype(np.int64)


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in name)


def _save_label_map(path: Path, labels: np.ndarray, num_classes: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = np.uint8 if num_classes <= 255 else np.uint16
    Image.fromarray(np.asarray(labels).astype(dtype)).save(path)


PANOPTIC_DIR = "panoptic"  # --save-predictions DIR: DIR/panoptic/<id>.png + DIR/panoptic.json (panopticapi)


def _save_panoptic(save_dir: Path, ds: EvalDataset, sample: Sample, panoptic: Panoptic) -> None:
    """Write one panoptic prediction in the COCO panoptic format: the RGB PNG and, until
    :func:`_merge_panoptic_json` gathers them, its annotation beside it."""
    assert ds.panoptic is not None
    ids, segments = panoptic
    png = save_dir / PANOPTIC_DIR / f"{sample.id}.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(id2rgb(ids)).save(png)
    info = [{**{k: v for k, v in seg.items() if k != "category_id"},
             "category_id": ds.panoptic.category_ids[int(seg["category_id"])]} for seg in segments]
    ann = {"image_id": ds.panoptic.annotations[Path(sample.id).name]["image_id"], "file_name": f"{sample.id}.png",
           "segments_info": info}
    _atomic_text(png.with_suffix(".json"), json.dumps(_jsonable(ann)))


INSTANCES_DIR = "instances"  # --save-predictions DIR: DIR/instances/<id>.json (COCO results, RLE masks)


def _save_instances(save_dir: Path, sample: Sample, detections: list[dict]) -> None:
    """Write one image's detections as a COCO results JSON (RLE masks)."""
    path = save_dir / INSTANCES_DIR / f"{sample.id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_text(path, json.dumps(detections))


def _merge_panoptic_json(save_dir: Path, ds: EvalDataset, samples: Sequence[Sample]) -> None:
    """Gather the per-image annotations into ``panoptic.json`` (re-scorable with ``panoptic_predictions=``)."""
    assert ds.panoptic is not None
    parts = [save_dir / PANOPTIC_DIR / f"{s.id}.json" for s in samples]
    annotations = [json.loads(p.read_text(encoding="utf-8")) for p in parts if p.is_file()]
    categories = [{"id": c, "name": name, "isthing": int(t)}
                  for c, name, t in zip(ds.panoptic.category_ids, ds.classes, ds.panoptic.isthing)]
    _atomic_text(save_dir / f"{PANOPTIC_DIR}.json", json.dumps({"annotations": annotations, "categories": categories}))
    for p in parts:
        p.unlink(missing_ok=True)


# --- reports ----------------------------------------------------------------------------------------


def write_reports(result: EvalResult, output_dir: str | Path, stem: str | None = None) -> tuple[Path, Path]:
    """Write ``<stem>.json`` (everything), ``<stem>.csv`` (one row: summary + per-class IoU, and
    per-class PQ when scored, percent), ``<stem>_confusion.npy`` (the int64 confusion matrix),
    when PQ was scored ``<stem>_pq.npy`` (the (C, 4) float64 ``[tp, fp, fn, iou_sum]``), and when AP
    was scored ``<stem>_instances.json`` (every detection, COCO results format: re-scorable with
    ``--predictions ... --instance-predictions``), atomically.

    Returns:
        The JSON and CSV paths.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = stem or f"{result.dataset.name}_{_safe(result.name)}"
    report = result.to_dict()
    json_path, csv_path = out / f"{stem}.json", out / f"{stem}.csv"
    _atomic_text(json_path, json.dumps(report, indent=2, allow_nan=False) + "\n")
    cfg = result.config
    row: dict[str, Any] = {"dataset": result.dataset.name, "name": result.name, "method": cfg.get("method"),
                           "model": cfg.get("model"), "pretrained": cfg.get("pretrained"),
                           "num_images": result.num_images}
    row.update({k: _fmt(v) for k, v in report["metrics"].items()})
    for metric in ("IoU", "PQ") if result.panoptic is not None else ("IoU",):
        for c in report["per_class"]:
            row[f"{metric}-{c['index']}-{c['name']}"] = _fmt(c[metric])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(row), lineterminator="\n")
    writer.writeheader()
    writer.writerow(row)
    _atomic_text(csv_path, buf.getvalue())
    arrays = {"confusion": result.matrix} if result.pq_stats is None else {"confusion": result.matrix,
                                                                          "pq": result.pq_stats}
    for suffix, arr in arrays.items():
        buf_np = io.BytesIO()
        np.save(buf_np, arr)
        _atomic_bytes(out / f"{stem}_{suffix}.npy", buf_np.getvalue())
    if result.instance is not None:
        _atomic_text(out / f"{stem}_instances.json", json.dumps(result.detections))
    return json_path, csv_path


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.4f}"


def _atomic_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _atomic_text(path: Path, text: str) -> None:
    _atomic_bytes(path, text.encode("utf-8"))


def print_report(result: EvalResult, console: Any = None) -> None:
    """Print the per-class table and the summary metrics (percent) with rich; with PQ also the
    per-class PQ / SQ / RQ and a PQ table for all categories, things and stuff."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    m, pan = result.metrics, result.panoptic
    unseen = set(m.unseen)
    table = Table(title=f"{result.dataset.name} / {result.name}: {result.num_images} images", show_lines=False)
    table.add_column("#", justify="right")
    table.add_column("class")
    table.add_column("IoU", justify="right")
    table.add_column("Acc", justify="right")
    if unseen:
        table.add_column("split")
    if pan is not None:
        table.add_column("kind")
        for k in ("PQ", "SQ", "RQ"):
            table.add_column(k, justify="right")
    for c in result.per_class():
        cells = [str(c["index"]), c["name"], _cell(c["IoU"]), _cell(c["Acc"])]
        if unseen:
            cells.append("unseen" if c["index"] in unseen else "seen")
        if pan is not None:
            cells += ["thing" if c["isthing"] else "stuff", _cell(c["PQ"]), _cell(c["SQ"]), _cell(c["RQ"])]
        table.add_row(*cells)
    console.print(table)
    summary = Table(show_header=True)
    values = m.summary()
    for k in values:
        summary.add_column(k, justify="right")
    summary.add_row(*[_cell(v) for v in values.values()])
    console.print(summary)
    if pan is not None:
        pq_table = Table(show_header=True)
        for k in ("", "PQ", "SQ", "RQ", "categories"):
            pq_table.add_column(k, justify="right")
        values = pan.summary()
        for label, suffix, n in (("All", "", pan.n), ("Things", "_th", pan.n_th), ("Stuff", "_st", pan.n_st)):
            pq_table.add_row(label, *[_cell(values[k + suffix]) for k in ("PQ", "SQ", "RQ")], str(n))
        console.print(pq_table)
    if result.instance is not None:
        ap_table = Table(show_header=True, title=f"mask AP ({result.instance.num_detections} detections)")
        ap_values = result.instance.summary()
        for k in ap_values:
            ap_table.add_column(k, justify="right")
        ap_table.add_row(*[_cell(v) for v in ap_values.values()])
        console.print(ap_table)
    console.print(f"{result.elapsed_s:.1f} s, {result.num_images / max(result.elapsed_s, 1e-9):.2f} images/s"
                  + (f"; report: {result.json_path}" if result.json_path else ""))


def _cell(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"
