"""Writing segmentation results to files: label maps, overlays, panoptic maps, instances and the JSON report
(the CLI's ``ovss segment`` and the web page's downloads)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from .fileio import atomic_write_text


def unique_stems(paths: list[Path]) -> list[str]:
    """Output stems for ``paths``: the file stem, with ``_1``, ``_2``... for repeats."""
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        stem = p.stem
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        out.append(stem if n == 0 else f"{stem}_{n}")
    return out


def write_outputs(out_dir: Path, stem: str, rgb: Any, res: Any, extra: dict[str, Any]) -> None:
    """Write ``<stem>_labels.png``, ``<stem>_overlay.png`` and ``<stem>.json`` for one result."""
    from .visualize import label_image, overlay, palette

    labels = res.labels_numpy()
    colors = palette(len(res.classes), res.background)
    label_image(labels, colors).save(out_dir / f"{stem}_labels.png")
    panoptic = res.extras.get("panoptic")
    if isinstance(panoptic, dict) and "panoptic_seg" in panoptic:
        write_panoptic(out_dir / f"{stem}_panoptic.png", rgb, panoptic, res.classes)
        write_panoptic_ids(out_dir / f"{stem}_panoptic_ids.png", panoptic["panoptic_seg"])
    if res.extras.get("instances") is not None:  # COCO RLE per instance; overlay of those scoring >= 0.5
        atomic_write_text(out_dir / f"{stem}_instances.json", json.dumps(instances_json(res.extras["instances"],
                                                                                       res.classes)))
        instance_overlay(rgb, res.extras["instances"], res.classes).save(out_dir / f"{stem}_instances.png")
    overlay(rgb, labels, res.classes, colors, background=res.background).save(out_dir / f"{stem}_overlay.png")
    share = res.pixel_share()
    report = {
        **extra,
        "classes": res.classes,
        "background": res.background,
        "labels_png": ("8-bit palette PNG, pixel value = class index" if len(res.classes) <= 256
                       else "16-bit greyscale PNG, pixel value = class index"),
        "score_kind": res.score_kind,
        "pixel_share": share,
        "palette": {name: [int(c) for c in col] for name, col in zip(res.classes, colors)},
        "settings": res.settings,
        "extras": {k: to_json(v) for k, v in res.extras.items() if is_jsonable(to_json(v))},
    }
    atomic_write_text(out_dir / f"{stem}.json", json.dumps(report, indent=2))


def write_panoptic(path: Path, rgb: Any, panoptic: dict[str, Any], classes: list[str]) -> None:
    """Overlay of a panoptic result: one colour per segment (instance colours), legend by segment."""
    import numpy as np

    from .visualize import overlay, palette

    ids = np.asarray(panoptic["panoptic_seg"])
    segments = list(panoptic.get("segments", []))
    seg_ids = [int(s["id"]) for s in segments]
    index = np.zeros(ids.shape, np.int64)  # 0: no segment
    for k, sid in enumerate(seg_ids, start=1):
        index[ids == sid] = k
    names = ["void"] + [f"{classes[int(s['category_id'])]}" + (f" #{k}" if s.get("isthing") else "")
                        for k, s in enumerate(segments, start=1)]
    overlay(rgb, index, names, palette(len(names), 0), background=0).save(path)


def write_panoptic_ids(path: Path, ids: Any) -> None:
    """The panoptic id map in the COCO panoptic PNG encoding (``id = R + 256 G + 256^2 B``; 0: no
    segment), the ids of the JSON report's ``extras.panoptic.segments``."""
    from PIL import Image

    from .data.datasets import id2rgb

    Image.fromarray(id2rgb(ids)).save(path)


def instances_json(instances: Any, classes: Sequence[str]) -> list[dict[str, Any]]:
    """One image's instances as JSON-able dicts, highest score first: ``label`` (class index),
    ``class`` (its name), ``score``, ``segmentation`` (COCO RLE, ``counts`` str), ``area``
    (pixels) and ``query`` where the instances carry it.

    Args:
        instances: ``masks`` (N, H, W) bool, ``scores`` (N,), ``labels`` (N,) (attributes or keys).
        classes: the result's class names (``labels`` index them).
    """
    import numpy as np
    from pycocotools import mask as mask_util

    from .evaluation.instance import instance_rles

    get = (lambda k: instances.get(k)) if isinstance(instances, Mapping) else (lambda k: getattr(instances, k, None))
    rles, scores, labels = instance_rles(instances)
    query = get("query")
    out = []
    for i in np.argsort(-scores.astype(np.float64), kind="stable"):
        k = int(labels[i])
        rle = dict(rles[i])
        area = int(mask_util.area({"size": rle["size"], "counts": rle["counts"].encode("ascii")}))
        row = {"label": k, "class": classes[k], "score": float(scores[i]), "segmentation": rle, "area": area}
        if query is not None:
            row["query"] = int(query[i])
        out.append(row)
    return out


def instance_overlay(rgb: Any, instances: Any, classes: Sequence[str], min_score: float = 0.5) -> Any:
    """The photo with every instance scoring at least ``min_score`` in its own colour (higher
    scores drawn on top), outlines and a legend ``class #n (score)``.

    Args:
        rgb: (H, W, 3) uint8 photo.
        instances: as for :func:`instances_json`.
        classes: class names.
        min_score: instances below it are not drawn (detectron2's demo uses 0.5).

    Returns:
        A PIL RGB image (see :func:`ovss.visualize.overlay`).
    """
    import numpy as np

    from .evaluation.instance import decode_mask
    from .visualize import overlay, palette

    rows = [r for r in instances_json(instances, classes) if r["score"] >= min_score]
    index = np.zeros(rgb.shape[:2], dtype=np.int64)  # 0: no instance
    for n, r in reversed(list(enumerate(rows, start=1))):  # lowest score first, highest painted last
        index[decode_mask(r["segmentation"])] = n
    names = ["none"] + [f"{r['class']} #{n} ({r['score']:.2f})" for n, r in enumerate(rows, start=1)]
    return overlay(rgb, index, names, palette(len(names), 0), background=0)


def to_json(v: Any) -> Any:
    """Drop tensors from nested extras (label maps go to PNGs), keep the rest."""
    import torch

    if isinstance(v, dict):
        return {k: to_json(x) for k, x in v.items() if not isinstance(x, torch.Tensor)}
    if isinstance(v, (list, tuple)):
        return [to_json(x) for x in v]
    return v


def is_jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except TypeError:
        return False
