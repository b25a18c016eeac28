"""Mask AP (AP, AP50, AP75, APs, APm, APl) with pycocotools' COCOeval, as detectron2 scores it.

Instance predictions become COCO results-format detections, one dict per instance
(``image_id``, ``category_id`` (the dataset's category id), ``segmentation`` (COCO RLE with
``counts`` as str), ``score``): detectron2 ``evaluation/coco_evaluation.py``
``instances_to_coco_json``. They are scored against a COCO-format instances JSON with
``COCOeval(iouType="segm")`` restricted to the evaluated images, exactly as detectron2's
``_evaluate_predictions_on_coco`` (which FC-CLIP's / Mask2Former's ``InstanceSegEvaluator``
calls): no ``bbox`` in the results, so COCOeval measures small / medium / large by **mask**
area; ``maxDets`` [1, 10, 100]; the summary is ``stats[0:6]``; the per-category AP is the
mean of ``precision[:, :, k, area all, maxDets 100]`` over its defined (> -1) entries
(detectron2 ``_derive_coco_results``). No detections at all gives NaN everywhere (detectron2
skips COCOeval then).

Values are fractions here; ``summary(percent=True)`` gives percent, as detectron2 prints them.

Note: detectron2 scores *Cityscapes* instance AP with ``CityscapesInstanceEvaluator``
(cityscapesscripts' own AP, which averages over the overlaps 0.5:0.05:0.95 with its own
matching and per-class area limits); ovss scores every dataset with COCOeval, so Cityscapes AP
from ovss is COCO-style mask AP on the same instances (see docs/reproduce.md).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from ..errors import InputError

if TYPE_CHECKING:
    from ..data.datasets import EvalDataset, Sample

SUMMARY_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # COCOeval stats[0:6], detectron2's names


def encode_mask(mask: np.ndarray | torch.Tensor) -> dict[str, Any]:
    """A binary mask as COCO RLE (pycocotools ``mask.encode`` on the Fortran-ordered uint8 mask).

    Args:
        mask: (H, W) bool or 0/1 array.

    Returns:
        ``{"size": [H, W], "counts": str}`` (``counts`` decoded to str so it is JSON-able).
    """
    from pycocotools import mask as mask_util

    arr = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if arr.ndim != 2:
        raise InputError(f"an instance mask must be (H, W), got shape {arr.shape}")
    rle = mask_util.encode(np.asfortranarray(arr.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_mask(rle: Mapping[str, Any]) -> np.ndarray:
    """(H, W) bool mask of a COCO RLE (``counts`` str or bytes), the inverse of :func:`encode_mask`."""
    from pycocotools import mask as mask_util

    counts = rle["counts"]
    return mask_util.decode({"size": list(rle["size"]),
                             "counts": counts.encode("ascii") if isinstance(counts, str) else counts}).astype(bool)


def to_detections(instances: Any, image_id: Any, category_ids: Sequence[int]) -> list[dict[str, Any]]:
    """Instance predictions of one image as COCO results (detectron2 ``instances_to_coco_json``,
    without ``bbox``: mask AP uses mask areas).

    Args:
        instances: an object with ``masks`` (N, H, W) bool, ``scores`` (N,) and ``labels`` (N,)
            class indices (e.g. :class:`ovss.models.mask_inference.Instances`), or a mapping
            with those keys.
        image_id: the image's id in the instances JSON.
        category_ids: the dataset category id of class index ``k`` (contiguous -> dataset id).

    Returns:
        One dict per instance: ``image_id``, ``category_id``, ``segmentation`` (RLE), ``score``.

    Raises:
        InputError: a label outside ``category_ids``.
    """
    rles, scores, labels = instance_rles(instances)
    out = []
    for i, rle in enumerate(rles):
        k = int(labels[i])
        if not 0 <= k < len(category_ids):
            raise InputError(f"instance {i} has class {k}, outside the dataset's {len(category_ids)} classes")
        out.append({"image_id": image_id, "category_id": int(category_ids[k]), "segmentation": dict(rle),
                    "score": float(scores[i])})
    return out


def instance_rles(instances: Any) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray]:
    """Per instance its COCO RLE (each distinct mask encoded once, see :func:`encode_mask`), and the
    (N,) scores and labels as numpy; ``instances`` as for :func:`to_detections`."""
    get = (lambda k: instances.get(k)) if isinstance(instances, Mapping) else (lambda k: getattr(instances, k, None))

    def arr(x: Any) -> np.ndarray:
        return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)

    scores, labels = arr(get("scores")), arr(get("labels"))
    query_masks, index = get("query_masks"), get("mask_index")
    if query_masks is not None and index is not None:  # Instances: masks shared by the instances of a query
        encoded = [encode_mask(m) for m in query_masks]
        return [encoded[int(j)] for j in arr(index)], scores, labels
    masks = get("masks")
    return [encode_mask(masks[i]) for i in range(len(scores))], scores, labels


@dataclass
class InstanceMetrics:
    """Mask AP of a run (fractions; NaN where undefined).

    Attributes:
        AP, AP50, AP75, APs, APm, APl: COCOeval ``stats[0:6]`` (``-1`` -> NaN).
        ap_per_category: (K,) AP of each category of the instances JSON (sorted by id).
        category_ids: (K,) those category ids.
        num_detections: detections scored.
    """

    AP: float
    AP50: float
    AP75: float
    APs: float
    APm: float
    APl: float
    ap_per_category: np.ndarray
    category_ids: tuple[int, ...]
    num_detections: int

    def summary(self, percent: bool = True) -> dict[str, float | None]:
        """AP, AP50, AP75, APs, APm, APl (percent by default; NaN as None)."""
        return {k: _num(getattr(self, k), percent) for k in SUMMARY_KEYS}

    def per_category(self, percent: bool = True) -> dict[int, float | None]:
        """Category id -> AP."""
        return {c: _num(a, percent) for c, a in zip(self.category_ids, self.ap_per_category)}


def _num(v: float, percent: bool) -> float | None:
    v = float(v)
    return None if not np.isfinite(v) else (100 * v if percent else v)


def coco_from_dict(data: Mapping[str, Any]) -> Any:
    """A pycocotools ``COCO`` over an already parsed instances JSON (its index printout silenced)."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dict(data)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def evaluate_detections(gt: Any, detections: Iterable[Mapping[str, Any]], image_ids: Sequence[Any],
                        max_dets: Sequence[int] = (1, 10, 100)) -> InstanceMetrics:
    """Mask AP of ``detections`` on ``image_ids`` (detectron2 ``_evaluate_predictions_on_coco``, segm).

    Args:
        gt: a pycocotools ``COCO`` of the instances JSON (see :func:`coco_from_dict`).
        detections: COCO results (``image_id``, ``category_id``, ``segmentation`` RLE, ``score``).
        image_ids: the evaluated images (``COCOeval.params.imgIds``): images without
            detections count, images not listed are ignored.
        max_dets: ``COCOeval.params.maxDets``.

    Returns:
        The :class:`InstanceMetrics`.

    Raises:
        InputError: a detection whose category is not in the instances JSON.
    """
    from pycocotools.cocoeval import COCOeval

    cat_ids = tuple(sorted(int(c) for c in gt.getCatIds()))
    dets = [{k: v for k, v in d.items() if k != "bbox"} for d in detections]  # mask areas for APs/m/l
    bad = next((d for d in dets if int(d["category_id"]) not in set(cat_ids)), None)
    if bad is not None:
        raise InputError(f"a detection of image {bad['image_id']} has category_id {bad['category_id']}, which is not a "
                         f"category of the instances JSON ({len(cat_ids)} categories)")
    nan = float("nan")
    if not dets:
        return InstanceMetrics(nan, nan, nan, nan, nan, nan, np.full(len(cat_ids), nan), cat_ids, 0)
    for d in dets:  # pycocotools wants bytes counts only for frPyObjects; str works for area/iou
        d["segmentation"] = dict(d["segmentation"])
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, "segm")
        ev.params.imgIds = list(image_ids)
        ev.params.maxDets = list(max_dets)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [float(s) if s >= 0 else nan for s in ev.stats[:6]]
    precision = ev.eval["precision"]  # (T, R, K, A, M)
    per_cat = np.full(len(cat_ids), nan)
    for k in range(precision.shape[2]):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        per_cat[k] = float(np.mean(p)) if p.size else nan
    return InstanceMetrics(*stats, ap_per_category=per_cat, category_ids=cat_ids, num_detections=len(dets))


# --- predictions and the resume file -------------------------------------------------------------


class InstancePredictions:
    """Instance predictions as a COCO results JSON (what detectron2 writes as
    ``coco_instances_results.json`` and ``ovss eval`` as ``<stem>_instances.json``): a list of
    ``{"image_id", "category_id", "segmentation" (RLE), "score"}`` with the instances JSON's image
    and category ids. Images without detections have none.

    Raises:
        InputError: unreadable JSON, not a list of detections, the dataset has no instance ground truth.
    """

    def __init__(self, json_file: str | Path, dataset: EvalDataset) -> None:
        self.json_path = Path(json_file).expanduser()
        if dataset.instances is None:
            raise InputError(f"{dataset.name}: no instance ground truth under {dataset.root}, so instance predictions "
                             "cannot be scored (see docs/datasets.md)")
        self.gt = dataset.instances
        try:
            dets = json.loads(self.json_path.read_text(encoding="utf-8"))
            self.by_image: dict[str, list[dict]] = {}
            for d in dets:
                if not {"image_id", "category_id", "segmentation", "score"} <= set(d):
                    raise KeyError("image_id, category_id, segmentation, score")
                self.by_image.setdefault(str(d["image_id"]), []).append(d)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"cannot read instance predictions {self.json_path} ({exc.__class__.__name__}: {exc}); "
                             "expected a COCO results JSON: a list of {image_id, category_id, segmentation, score}"
                             ) from None

    def __call__(self, sample: Sample) -> list[dict]:
        return self.by_image.get(str(self.gt.image_ids[sample.image.name]), [])


def detections_path(state_path: Path) -> Path:
    """The detections file beside a resume state (``.partial...npz`` -> ``.partial...detections.jsonl``)."""
    return state_path.with_name(state_path.name.replace(".npz", ".detections.jsonl"))


def load_detections(path: Path, done: Sequence[str]) -> dict[str, list[dict]]:
    """The saved detections of the images in ``done`` (the state's list: lines of images scored
    after the last state write, or a line cut by a kill, are dropped), and the file rewritten to
    just those lines (atomically), so appending continues from a clean file.

    Raises:
        InputError: an image of ``done`` has no line (the file was removed or edited).
    """
    keep = set(done)
    found: dict[str, list[dict]] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # the tail of an interrupted append
            if row.get("id") in keep:
                found[row["id"]] = row["detections"]
    missing = [i for i in done if i not in found]
    if missing:
        raise InputError(f"the resume state lists {len(missing)} images whose detections are not in {path} (first: "
                         f"{missing[0]}): rerun with --no-resume")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps({"id": i, "detections": found[i]}) + "\n" for i in done), encoding="utf-8")
    os.replace(tmp, path)
    return found


def append_detections(path: Path | None, sample_id: str, detections: list[dict]) -> None:
    """Append one image's detections as a JSON line (nothing when ``path`` is None)."""
    if path is not None:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"id": sample_id, "detections": detections}) + "\n")
