"""What ``ovss eval`` returns and writes: :class:`EvalResult`, the JSON / CSV / NumPy reports and the
printed tables."""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.datasets import EvalDataset
from ..fileio import atomic_write_bytes, atomic_write_text
from .metrics import SegMetrics
from .instance import InstanceMetrics
from .panoptic import PanopticMetrics



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


def jsonable(x: Any) -> Any:
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


def safe_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in name)



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
    stem = stem or f"{result.dataset.name}_{safe_name(result.name)}"
    report = result.to_dict()
    json_path, csv_path = out / f"{stem}.json", out / f"{stem}.csv"
    atomic_write_text(json_path, json.dumps(report, indent=2, allow_nan=False) + "\n")
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
    atomic_write_text(csv_path, buf.getvalue())
    arrays = {"confusion": result.matrix} if result.pq_stats is None else {"confusion": result.matrix,
                                                                          "pq": result.pq_stats}
    for suffix, arr in arrays.items():
        buf_np = io.BytesIO()
        np.save(buf_np, arr)
        atomic_write_bytes(out / f"{stem}_{suffix}.npy", buf_np.getvalue())
    if result.instance is not None:
        atomic_write_text(out / f"{stem}_instances.json", json.dumps(result.detections))
    return json_path, csv_path


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.4f}"


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
