"""The evaluation loop: a benchmark split, a source of label maps, one confusion matrix.

:func:`evaluate` scores either a segmenter (built here from a method name with the dataset's
official protocol, or passed in already built) or a folder of PNG label maps made by any tool,
on one process or many (``torchrun``: the images are sharded over the ranks and the confusion
matrices are all-reduced, so the numbers equal a single-process run bit for bit). A run with an
output folder keeps a partial state there (confusion matrix + processed image ids, written
atomically) and resumes from it when started again with the same settings.

On a split with panoptic ground truth (``coco_panoptic``, ``ade20k`` when prepared) a source
that gives panoptic segments (a method with ``capabilities.panoptic``, built with
``panoptic=True``; or predictions in the COCO panoptic format) is also scored for PQ / SQ / RQ
(:mod:`ovss.evaluation.panoptic`): the (C, 4) statistics are accumulated beside the confusion
matrix, kept in the resume state and all-reduced the same way.

On a split with instance ground truth (a COCO instances JSON: ``coco_panoptic``, ``ade20k``,
``cityscapes`` when prepared) a source that gives instances (a method with
``capabilities.instance``, built with ``instance=True``; or a COCO results JSON) is also scored for
mask AP (:mod:`ovss.evaluation.instance`): each image's detections (COCO RLE) are appended to a
JSON-lines file beside the resume state (one line per image, so saving the state stays cheap
however many detections there are), gathered to rank 0 after the loop and scored there once with
pycocotools' COCOeval.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from .. import registry
from ..data.datasets import EvalDataset, Sample, id2rgb, open_dataset
from ..errors import InputError, UnknownNameError
from ..fileio import atomic_write_bytes, atomic_write_text
from .distributed import Dist, all_reduce, barrier, broadcast_object, dist_setup, eval_device, gather_to_rank0
from .instance import (append_detections, coco_from_dict, detections_path, evaluate_detections, load_detections,
                       to_detections)
from .metrics import compute_metrics, confusion_matrix
from .panoptic import compute_pq, pq_stats
from .report import EvalResult, jsonable, print_report, safe_name, write_reports
from .sources import Panoptic, PredictionDirSource, SegmenterSource, to_numpy

__all__ = ["evaluate", "EvalResult", "print_report", "write_reports"]

SAVE_EVERY = 25  # images between two partial-state writes (also written on interruption)


# --- partial state (resume) -------------------------------------------------------------------------


def _state_path(output_dir: Path, stem: str, d: Dist) -> Path:
    return output_dir / f".{stem}.partial.rank{d.rank}of{d.world}.npz"


def _save_state(path: Path, matrix: np.ndarray, pq: np.ndarray, done: list[str], fingerprint: str,
                elapsed: float) -> None:
    buf = io.BytesIO()
    np.savez(buf, matrix=matrix, pq=pq, done=np.array(done, dtype=str), fingerprint=np.array(fingerprint),
             elapsed=np.array(elapsed, dtype=np.float64))
    atomic_write_bytes(path, buf.getvalue())  # a kill mid-write leaves the previous state intact


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


# --- loop -------------------------------------------------------------------------------------------


Loaded = tuple[int, np.ndarray | None, np.ndarray, Panoptic | None]  # index, image, label, panoptic GT


def _prefetch(dataset: EvalDataset, indices: list[int], decode: Callable[[Path], np.ndarray] | None,
              need_panoptic: bool = False, workers: int = 2, depth: int = 4) -> Iterator[Loaded]:
    """Yield (index, image, label, panoptic ground truth) in order, decoding a few ahead in threads
    (cv2/PIL release the GIL); images are decoded by ``decode`` (None: not needed)."""

    def load(i: int) -> Loaded:
        return (i, decode(dataset.samples[i].image) if decode is not None else None, dataset.read_label(i),
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
    truth and the source gives panoptic segments: a ``method`` with ``capabilities.panoptic``
    (it is then built with ``panoptic=True``), a ``segmenter`` whose ``panoptic``
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
            ``method`` with ``capabilities.instance``, a ``segmenter`` whose ``instance``
            attribute is true, or ``instance_predictions``).
        instance_predictions: with ``predictions``, a COCO results JSON (see
            :class:`ovss.evaluation.instance.InstancePredictions`).
        label_short_side: CLIP-DIY's own scoring protocol (not the benchmark's): the ground truth
            is resized to this short side with nearest neighbour before scoring (see
            :func:`resize_to_short_side`); a ``method`` with a ``label_short_side`` option (CLIP-DIY)
            is built with it and predicts at that size, as its official script does; other
            predictions are nearest-resized to it. None scores at the original label resolution
            (every other method's protocol). Not with PQ / AP.
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
        dev = eval_device(device)
    d = dist_setup(dev)
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
            able = registry.method_class(method).capabilities.panoptic
        except UnknownNameError:  # create_segmenter reports it with the list of methods
            able = False
        how = f"method {method!r} has no panoptic output"
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
            able = registry.method_class(method).capabilities.instance
        except UnknownNameError:
            able = False
        how = f"method {method!r} has no instance output"
    elif segmenter is not None:
        able = bool(requested) or getattr(segmenter, "instance", False) is True
        how = ""
    else:
        able, how = False, "label maps carry no instances: give --instance-predictions JSON as well"
    if requested and not able:
        raise InputError(f"AP asked for on {ds.name} but {how}")
    return able


def _evaluate(ds: EvalDataset, d: Dist, dev: str, t_start: float, *, segmenter: Any, method: str | None,
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
    stem = f"{ds.name}_{safe_name(run_name)}"

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
            if label_short_side is not None and "label_short_side" in registry.method_options(method):
                kwargs["label_short_side"] = label_short_side  # CLIP-DIY predicts at that size itself
            segmenter = registry.create_segmenter(method, **kwargs)  # type: ignore[arg-type]
        source = SegmenterSource(segmenter, num_classes, panoptic=with_pq, instance=with_ap)

    config = {
        **ds.describe(),
        "name": run_name, "method": method, "model": model, "pretrained": pretrained,
        "predictions": str(predictions) if predictions is not None else None,
        "segmenter_options": jsonable(segmenter_options), "device": dev, "limit": limit,
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
        decode = source.decode if isinstance(source, SegmenterSource) else None
        for i, image, label, pan_gt in _prefetch(ds, todo, decode, with_pq):
            sample = ds.samples[i]
            pred = source(sample, image)
            try:
                if label_short_side is not None:
                    label = resize_to_short_side(label, label_short_side)
                    pred.labels = _nearest(to_numpy(pred.labels), label.shape)
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

    total = all_reduce(d, matrix, dev)
    pq_total = all_reduce(d, pq, dev) if with_pq else None
    n_images = int(all_reduce(d, np.array([len(done)], dtype=np.int64), dev)[0])
    elapsed = float(all_reduce(d, np.array([prev_elapsed + time.perf_counter() - t_start]), dev, op="max")[0])
    if unseen is None:
        unseen = ds.spec.unseen_indices
    metrics = compute_metrics(total, unseen or None)
    config["loop_s"] = round(loop_s, 3)
    instance_metrics, all_dets = None, []
    if with_ap:
        assert ds.instances is not None
        parts = gather_to_rank0(d, [det for i in shard for det in detections.get(ds.samples[i].id, [])])
        if d.rank == 0:
            all_dets = [det for part in parts for det in part]
            image_ids = [ds.image_id(i) for i in indices]
            instance_metrics = evaluate_detections(coco_from_dict(ds.instances.data), all_dets, image_ids)
        instance_metrics = broadcast_object(d, instance_metrics)
    result = EvalResult(ds, run_name, total, metrics, n_images, elapsed, config, pq_stats=pq_total,
                        panoptic=compute_pq(pq_total, isthing) if pq_total is not None else None,
                        instance=instance_metrics, detections=all_dets)
    if out_dir is not None and d.rank == 0:
        result.json_path, result.csv_path = write_reports(result, out_dir, stem)
    if save_dir is not None and with_pq and d.rank == 0:  # past the all-reduces every rank has saved its images
        _merge_panoptic_json(save_dir, ds, [ds.samples[i] for i in indices])
    barrier(d, dev)
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
    atomic_write_text(png.with_suffix(".json"), json.dumps(jsonable(ann)))


INSTANCES_DIR = "instances"  # --save-predictions DIR: DIR/instances/<id>.json (COCO results, RLE masks)


def _save_instances(save_dir: Path, sample: Sample, detections: list[dict]) -> None:
    """Write one image's detections as a COCO results JSON (RLE masks)."""
    path = save_dir / INSTANCES_DIR / f"{sample.id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(detections))


def _merge_panoptic_json(save_dir: Path, ds: EvalDataset, samples: Sequence[Sample]) -> None:
    """Gather the per-image annotations into ``panoptic.json`` (re-scorable with ``panoptic_predictions=``)."""
    assert ds.panoptic is not None
    parts = [save_dir / PANOPTIC_DIR / f"{s.id}.json" for s in samples]
    annotations = [json.loads(p.read_text(encoding="utf-8")) for p in parts if p.is_file()]
    categories = [{"id": c, "name": name, "isthing": int(t)}
                  for c, name, t in zip(ds.panoptic.category_ids, ds.classes, ds.panoptic.isthing)]
    atomic_write_text(save_dir / f"{PANOPTIC_DIR}.json", json.dumps({"annotations": annotations, "categories": categories}))
    for p in parts:
        p.unlink(missing_ok=True)


