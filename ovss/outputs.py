"""Writing segmentation results to files: label maps, overlays, panoptic maps, instances and the JSON report
(the CLI's ``ovss segment`` and the web page's downloads)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from .errors import InputError
from .fileio import atomic_write_text
from .imageio import ImageFile


#: what :func:`write_outputs` may write for one image, after its stem
OUTPUT_SUFFIXES = ("_labels.png", "_overlay.png", ".json", "_panoptic.png", "_panoptic_ids.png", "_instances.json",
                   "_instances.png")


def plan_outputs(images: Sequence[ImageFile], out_dir: Path) -> list[str]:
    """Output stems (relative to ``out_dir``) of ``images`` (:func:`ovss.imageio.find_images`),
    mirroring the input tree: an image's folders below the folder it was found in, under the
    folders that separate the inputs' folders from their common parent. ``d1/a.png`` and
    ``d2/a.png`` give ``d1/a`` and ``d2/a``; one folder or one file gives plain stems.

    Raises:
        InputError: two inputs would write the same file (``a.png`` and ``a.jpg`` in one folder),
            an output would overwrite an input image, or a file stands where an output folder goes
            (or a folder where an output file goes); nothing has been written then.
    """
    bases = [os.path.abspath(im.base) for im in images]
    common = os.path.commonpath(bases) if bases else ""
    inputs = {os.path.abspath(im.path).casefold(): im.path for im in images}
    owner: dict[str, Path] = {}
    checked: set[str] = set()
    stems = []
    for im, base in zip(images, bases):
        stem = os.path.normpath(os.path.join(os.path.relpath(base, common), im.rel.parent, im.rel.stem))
        for suffix in OUTPUT_SUFFIXES:
            target = os.path.abspath(os.path.join(out_dir, stem + suffix))
            key = target.casefold()  # case-insensitive file systems (macOS, Windows) merge these too
            if key in owner:
                raise InputError(f"{owner[key]} and {im.path} would both write {target}: rename one of them "
                                 "or segment them in separate runs (nothing was written)")
            if key in inputs:
                raise InputError(f"the output {target} of {im.path} would overwrite the input image "
                                 f"{inputs[key]}: choose another -o folder (nothing was written)")
            if os.path.isdir(target):
                raise InputError(f"{target} is a folder where a result of {im.path} goes: move it or choose "
                                 "another -o folder (nothing was written)")
            owner[key] = im.path
        folder = os.path.dirname(os.path.join(out_dir, stem))
        while folder not in checked and os.path.abspath(folder) != os.path.abspath(out_dir):
            checked.add(folder)
            if os.path.lexists(folder) and not os.path.isdir(folder):
                raise InputError(f"{folder} is a file where the results of {im.path} go: move it or choose "
                                 "another -o folder (nothing was written)")
            folder = os.path.dirname(folder)
        stems.append(Path(stem).as_posix())
    return stems


def write_outputs(out_dir: Path, stem: str, rgb: Any, res: Any, extra: dict[str, Any]) -> None:
    """Write ``<stem>_labels.png``, ``<stem>_overlay.png`` and ``<stem>.json`` for one result
    (``stem`` may hold subfolders of ``out_dir``, :func:`plan_outputs`). The label PNG holds class
    indices: 8-bit palette for up to 256 classes, else 16-bit greyscale (the JSON says which)."""
    from .visualize import label_image, overlay, palette

    (out_dir / stem).parent.mkdir(parents=True, exist_ok=True)

    labels = res.labels_numpy()
    colors = palette(len(res.classes), res.background)
    label_image(labels, colors).save(out_dir / f"{stem}_labels.png")
    panoptic = res.extras.get("panoptic")
    if isinstance(panoptic, dict) and "panoptic_seg" in panoptic:
        write_panoptic(out_dir / f"{stem}_panoptic.png", rgb, panoptic, res.classes)
        write_panoptic_ids(out_dir / f"{stem}_panoptic_ids.png", panoptic["panoptic_seg"])
    if res.extras.get("instances") is not None:  # COCO RLE per instance; overlay of those scoring >= 0.5
        atomic_write_text(out_dir / f"{stem}_instances.json",
                          json.dumps(finite_json(instances_json(res.extras["instances"], res.classes)), allow_nan=False))
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
    atomic_write_text(out_dir / f"{stem}.json", json.dumps(finite_json(report), indent=2, allow_nan=False))


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


def finite_json(v: Any) -> Any:
    """``v`` with every NaN or infinite float replaced by None (bare ``NaN`` is not JSON)."""
    import math

    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: finite_json(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [finite_json(x) for x in v]
    return v


def is_jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except TypeError:
        return False
