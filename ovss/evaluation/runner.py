"""The evaluation loop: a benchmark split, a source of label maps, one confusion matrix.

:func:`evaluate` scores either a segmenter (built here from a method name with the dataset's
official protocol, or passed in already built) or a folder of PNG label maps made by any tool,
on one process or many (``torchrun``: the images are sharded over the ranks and the confusion
matrices are all-reduced, so the numbers equal a single-process run bit for bit). A run with an
output folder keeps a partial state there (confusion matrix + processed image ids, written
atomically) and resumes from it when started again with the same settings.
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
from ..data.datasets import EvalDataset, Sample, open_dataset
from ..segmenter import image_id_kwargs
from ..errors import InputError
from .metrics import SegMetrics, compute_metrics, confusion_matrix

PRED_SUFFIXES = (".png", ".tif", ".tiff")
SAVE_EVERY = 25  # images between two partial-state writes (also written on interruption)


# --- sources of label maps ---------------------------------------------------------------------


class SegmenterSource:
    """Label maps from a :class:`ovss.segmenter.Segmenter` (``predict(rgb) -> result.labels``)."""

    needs_image = True

    def __init__(self, segmenter: Any, num_classes: int) -> None:
        self.segmenter = segmenter
        self.num_classes = num_classes
        self._checked = False

    def __call__(self, sample: Sample, image: np.ndarray | None) -> np.ndarray:
        # no inference_mode here: GradCAM methods need autograd
        res = self.segmenter.predict(image, **image_id_kwargs(self.segmenter, Path(sample.id).name))
        classes = getattr(res, "classes", None)
        if not self._checked and classes is not None and len(classes) != self.num_classes:
            raise InputError(f"the segmenter scores {len(classes)} classes but the dataset has "
                             f"{self.num_classes}: build it for this dataset (create_segmenter(..., dataset=...))")
        self._checked = True
        labels = res.labels
        if isinstance(labels, torch.Tensor):
            labels = labels.detach().cpu().numpy()
        return np.asarray(labels)

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
    reduce-zero-label datasets), at the image's original size.
    """

    needs_image = False

    def __init__(self, folder: str | Path, dataset: EvalDataset) -> None:
        self.folder = Path(folder).expanduser()
        if not self.folder.is_dir():
            raise InputError(f"predictions folder {self.folder} does not exist")
        self.image_root = dataset.root / dataset.layout.image_dir

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

    def __call__(self, sample: Sample, image: np.ndarray | None) -> np.ndarray:
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
        return arr

    def describe(self) -> dict[str, Any]:
        return {"predictions": str(self.folder)}


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

    def to_dict(self) -> dict[str, Any]:
        """The JSON report: metrics in percent, per-class IoU/Acc, configuration, versions, time."""
        return {
            "dataset": self.dataset.name,
            "name": self.name,
            "units": "percent",
            "metrics": self.metrics.summary(percent=True),
            "per_class": self.metrics.per_class(self.dataset.classes, percent=True),
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
    if d.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {d!r} requested but CUDA is not available: use --device cpu")
    return d


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


def _save_state(path: Path, matrix: np.ndarray, done: list[str], fingerprint: str, elapsed: float) -> None:
    buf = io.BytesIO()
    np.savez(buf, matrix=matrix, done=np.array(done, dtype=str), fingerprint=np.array(fingerprint),
             elapsed=np.array(elapsed, dtype=np.float64))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)  # atomic: a kill mid-write leaves the previous state intact


def _load_state(path: Path, fingerprint: str, num_classes: int) -> tuple[np.ndarray, list[str], float] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["fingerprint"]) != fingerprint or z["matrix"].shape != (num_classes, num_classes):
                return None
            return z["matrix"].astype(np.int64), [str(x) for x in z["done"]], float(z["elapsed"])
    except Exception:  # a corrupt state file means starting over, never a crash
        return None


# --- loop -------------------------------------------------------------------------------------------


def _prefetch(dataset: EvalDataset, indices: list[int], need_image: bool, workers: int = 2,
              depth: int = 4) -> Iterator[tuple[int, np.ndarray | None, np.ndarray]]:
    """Yield (index, image, label) in order, decoding a few ahead in threads (cv2/PIL release the GIL)."""

    def load(i: int) -> tuple[int, np.ndarray | None, np.ndarray]:
        return i, (dataset.read_image(i) if need_image else None), dataset.read_label(i)

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
             save_every: int = SAVE_EVERY,
             on_image: Callable[[int, Sample], None] | None = None) -> EvalResult:
    """Score one benchmark split with the official metrics.

    Exactly one source of label maps: ``segmenter`` (an object with ``predict(rgb_uint8) ->
    result`` whose ``labels`` is an (H, W) map of class indices), ``method`` (built with
    ``ovss.create_segmenter(method, model=..., pretrained=..., dataset=<name>, device=...)``,
    i.e. the method's official protocol for the dataset), or ``predictions`` (a folder of PNG
    label maps named like the images; see :class:`PredictionDirSource`).

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
        on_image: callback after each scored image (index in the split, sample).

    Returns:
        The :class:`EvalResult` (identical on every rank under torchrun).

    Raises:
        InputError: not exactly one source, missing/ill-shaped predictions, bad device.
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
    if isinstance(dataset, EvalDataset):
        ds = dataset
    else:
        if data_root is None:
            raise InputError("give the dataset folder with --data-root")
        ds = open_dataset(dataset, data_root, layout=layout)
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
                         on_image=on_image)
    finally:
        if d.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _evaluate(ds: EvalDataset, d: _Dist, dev: str, t_start: float, *, segmenter: Any, method: str | None,
              model: str | None, pretrained: str | None, predictions: str | Path | None, limit: int | None,
              output_dir: str | Path | None, name: str | None, resume: bool, progress: bool,
              save_predictions: str | Path | None, segmenter_options: dict[str, Any],
              unseen: Sequence[int] | None, save_every: int,
              on_image: Callable[[int, Sample], None] | None) -> EvalResult:
    num_classes = ds.num_classes
    indices = list(range(len(ds)))[: limit or None]
    shard = indices[d.rank::d.world]
    run_name = name or method or (getattr(segmenter, "method", None) or type(segmenter).__name__.lower()
                                  if segmenter is not None else "predictions")
    stem = f"{ds.name}_{_safe(run_name)}"

    source: SegmenterSource | PredictionDirSource
    if predictions is not None:
        source = PredictionDirSource(predictions, ds)
        source.check([ds.samples[i] for i in indices])  # all ranks see the same error, none waits
    else:
        if segmenter is None:
            kwargs: dict[str, Any] = {"dataset": ds.name, "device": dev, **segmenter_options}
            if model is not None:
                kwargs["model"] = model
            if pretrained is not None:
                kwargs["pretrained"] = pretrained
            segmenter = registry.create_segmenter(method, **kwargs)  # type: ignore[arg-type]
        source = SegmenterSource(segmenter, num_classes)

    config = {
        **ds.describe(),
        "name": run_name, "method": method, "model": model, "pretrained": pretrained,
        "predictions": str(predictions) if predictions is not None else None,
        "segmenter_options": _jsonable(segmenter_options), "device": dev, "limit": limit,
        "num_images_split": len(ds), "num_images_official": ds.spec.num_images,
        "world_size": d.world, "backend": d.backend,
        **source.describe(),
    }
    fingerprint = hashlib.sha256(json.dumps(
        {k: config.get(k) for k in ("dataset", "data_root", "layout", "name", "method", "model", "pretrained",
                                    "predictions", "segmenter_options", "limit", "world_size", "settings")},
        sort_keys=True, default=str).encode()).hexdigest()

    out_dir = Path(output_dir).expanduser() if output_dir is not None else None
    state_path = None
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    done: list[str] = []
    prev_elapsed = 0.0
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        state_path = _state_path(out_dir, stem, d)
        if resume:
            state = _load_state(state_path, fingerprint, num_classes)
            if state is not None:
                matrix, done, prev_elapsed = state
    done_set = set(done)
    todo = [i for i in shard if ds.samples[i].id not in done_set]
    save_dir = Path(save_predictions).expanduser() if save_predictions is not None else None

    bar = None
    if progress and d.rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(shard), initial=len(shard) - len(todo), unit="img", dynamic_ncols=True,
                   desc=f"{ds.name}" + (f" (rank 0 of {d.world})" if d.active else ""), file=sys.stderr)
    t_loop = time.perf_counter()
    since_save = 0
    try:
        for i, image, label in _prefetch(ds, todo, source.needs_image):
            sample = ds.samples[i]
            pred = source(sample, image)
            try:
                matrix += confusion_matrix(pred, label, num_classes, ds.ignore_index)
            except InputError as exc:
                raise InputError(f"{sample.id}: {exc}") from None
            if save_dir is not None:
                _save_label_map(save_dir / f"{sample.id}.png", pred, num_classes)
            done.append(sample.id)
            since_save += 1
            if state_path is not None and since_save >= save_every:
                _save_state(state_path, matrix, done, fingerprint, prev_elapsed + time.perf_counter() - t_start)
                since_save = 0
            if bar is not None:
                bar.set_postfix_str(f"mIoU {_running_miou(matrix):.2f}", refresh=False)
                bar.update(1)
            if on_image is not None:
                on_image(i, sample)
    except BaseException:
        if state_path is not None and since_save:
            _save_state(state_path, matrix, done, fingerprint, prev_elapsed + time.perf_counter() - t_start)
        raise
    finally:
        if bar is not None:
            bar.close()
    loop_s = time.perf_counter() - t_loop

    total = _all_reduce(d, matrix, dev)
    n_images = int(_all_reduce(d, np.array([len(done)], dtype=np.int64), dev)[0])
    elapsed = float(_all_reduce(d, np.array([prev_elapsed + time.perf_counter() - t_start]), dev, op="max")[0])
    if unseen is None:
        unseen = ds.spec.unseen_indices
    metrics = compute_metrics(total, unseen or None)
    config["loop_s"] = round(loop_s, 3)
    result = EvalResult(ds, run_name, total, metrics, n_images, elapsed, config)
    if out_dir is not None and d.rank == 0:
        result.json_path, result.csv_path = write_reports(result, out_dir, stem)
    _barrier(d, dev)
    if state_path is not None and state_path.exists():
        state_path.unlink()
    return result


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in name)


def _save_label_map(path: Path, labels: np.ndarray, num_classes: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = np.uint8 if num_classes <= 255 else np.uint16
    Image.fromarray(np.asarray(labels).astype(dtype)).save(path)


# --- reports ----------------------------------------------------------------------------------------


def write_reports(result: EvalResult, output_dir: str | Path, stem: str | None = None) -> tuple[Path, Path]:
    """Write ``<stem>.json`` (everything), ``<stem>.csv`` (one row: summary + per-class IoU, percent)
    and ``<stem>_confusion.npy`` (the int64 confusion matrix) atomically.

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
    for c in report["per_class"]:
        row[f"IoU-{c['index']}-{c['name']}"] = _fmt(c["IoU"])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(row), lineterminator="\n")
    writer.writeheader()
    writer.writerow(row)
    _atomic_text(csv_path, buf.getvalue())
    buf_np = io.BytesIO()
    np.save(buf_np, result.matrix)
    tmp = out / f"{stem}_confusion.npy.tmp"
    tmp.write_bytes(buf_np.getvalue())
    os.replace(tmp, out / f"{stem}_confusion.npy")
    return json_path, csv_path


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.4f}"


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def print_report(result: EvalResult, console: Any = None) -> None:
    """Print the per-class table and the summary metrics (percent) with rich."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    m = result.metrics
    unseen = set(m.unseen)
    table = Table(title=f"{result.dataset.name} / {result.name}: {result.num_images} images", show_lines=False)
    table.add_column("#", justify="right")
    table.add_column("class")
    table.add_column("IoU", justify="right")
    table.add_column("Acc", justify="right")
    if unseen:
        table.add_column("split")
    for c in m.per_class(result.dataset.classes):
        cells = [str(c["index"]), c["name"], _cell(c["IoU"]), _cell(c["Acc"])]
        if unseen:
            cells.append("unseen" if c["index"] in unseen else "seen")
        table.add_row(*cells)
    console.print(table)
    summary = Table(show_header=True)
    names = list(m.summary())
    for k in names:
        summary.add_column(k, justify="right")
    summary.add_row(*[_cell(v) for v in m.summary().values()])
    console.print(summary)
    console.print(f"{result.elapsed_s:.1f} s, {result.num_images / max(result.elapsed_s, 1e-9):.2f} images/s"
                  + (f"; report: {result.json_path}" if result.json_path else ""))


def _cell(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"
