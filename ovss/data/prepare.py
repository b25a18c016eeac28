"""``ovss prepare``: turn an official dataset release into the layout ``ovss eval`` reads.

Each converter reads the files of the release from one or more sources (folders or zip files,
searched by path pattern, so the top folder of a zip does not matter), writes the evaluation
split into ``out`` in one of the layouts of :mod:`ovss.data.datasets`, and does the same
arithmetic as the script the field uses for it (cited per converter). Every output file is
written atomically (temporary file, then ``os.replace``) and skipped when it already exists, so
an interrupted run continues where it stopped; the JSON files that list all images are written
last, so their presence marks a finished run.

Nothing read executes code: PNG/JPEG/TIFF with Pillow, ``.mat`` with scipy, JSON with ``json``
(ADE20K-Full's ``index_ade20k.pkl`` is not read: the images are found by name instead).
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from ..errors import DatasetError, InputError, UnknownNameError, did_you_mean

# --- sources ---------------------------------------------------------------------------------------


class Source:
    """A folder or a zip file of a release: its files by relative POSIX path.

    Raises:
        InputError: the path does not exist or is neither a folder nor a zip file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self._zip: zipfile.ZipFile | None = None
        if self.path.is_dir():
            self.files = sorted(p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file())
        elif self.path.is_file() and zipfile.is_zipfile(self.path):
            self._zip = zipfile.ZipFile(self.path)
            self.files = sorted(n for n in self._zip.namelist() if not n.endswith("/"))
        else:
            raise InputError(f"--source {self.path} is neither a folder nor a zip file")

    def read(self, name: str) -> bytes:
        """The bytes of file ``name``."""
        if self._zip is not None:
            return self._zip.read(name)
        return (self.path / name).read_bytes()

    def __repr__(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class Found:
    """A file found in a source: the source, its name there and the regex groups of the match."""

    source: Source
    name: str
    groups: tuple[str, ...]

    def read(self) -> bytes:
        return self.source.read(self.name)

    def image(self) -> np.ndarray:
        """The file decoded by Pillow, as stored (palette indices stay indices)."""
        with Image.open(io.BytesIO(self.read())) as im:
            return np.array(im)


def find(sources: Sequence[Source], pattern: str) -> list[Found]:
    """Files whose path matches ``pattern`` (a regex searched against the whole relative path, so a
    leading top folder may precede it), sorted by the first group, then the path; the first
    source that has a given first group wins."""
    rx = re.compile(r"(?:^|.*/)" + pattern + "$")
    out: dict[str, Found] = {}
    for src in sources:
        for name in src.files:
            m = rx.match(name)
            if m and m.group(1) not in out:
                out[m.group(1)] = Found(src, name, m.groups())
    return [out[k] for k in sorted(out)]


def _need(found: list[Found], what: str, sources: Sequence[Source]) -> list[Found]:
    if not found:
        raise DatasetError(f"no {what} in {', '.join(map(str, sources))} (see docs/datasets.md, 'ovss prepare')")
    return found


# --- writing ---------------------------------------------------------------------------------------


def _atomic(path: Path, write: Callable[[Any], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        write(fh)
    os.replace(tmp, path)


def save_image(path: Path, arr: np.ndarray, fmt: str | None = None) -> None:
    """Write ``arr`` with Pillow atomically (format from the suffix unless given)."""
    fmt = fmt or {".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".jpg": "JPEG"}[path.suffix.lower()]
    _atomic(path, lambda fh: Image.fromarray(arr).save(fh, format=fmt))


def save_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` atomically."""
    _atomic(path, lambda fh: fh.write(data))


def save_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON atomically."""
    save_bytes(path, json.dumps(obj).encode("utf-8"))


class Progress:
    """A tqdm bar (or nothing) that counts the converted and the skipped (already there) files."""

    def __init__(self, total: int, desc: str, show: bool) -> None:
        self.written = self.skipped = 0
        self.bar = None
        if show:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True)

    def step(self, wrote: bool) -> None:
        if wrote:
            self.written += 1
        else:
            self.skipped += 1
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _each(items: Sequence[Found], desc: str, show: bool, outputs: Callable[[Found], list[Path]],
          convert: Callable[[Found], None]) -> Progress:
    """Run ``convert`` for every item whose ``outputs`` are not all there yet."""
    prog = Progress(len(items), desc, show)
    try:
        for item in items:
            todo = not all(p.is_file() for p in outputs(item))
            if todo:
                convert(item)
            prog.step(todo)
    finally:
        prog.close()
    return prog


def _copy(item: Found, dst: Path) -> None:
    if not dst.is_file():
        save_bytes(dst, item.read())


# --- COCO-Stuff / COCO-Object ---------------------------------------------------------------------

#: COCO-Stuff-164k label id (0..181) -> train id (0..170), 255 stays: mmseg
#: ``tools/dataset_converters/coco_stuff164k.py`` ``clsID_to_trID`` (the 11 unused COCO ids dropped).
_COCO_UNUSED = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
COCO_STUFF_TRAIN_IDS = {cid: k for k, cid in enumerate(c for c in range(182) if c not in _COCO_UNUSED)}


def coco_stuff_lut(kind: str) -> np.ndarray:
    """(256,) uint8 look-up table from a COCO-Stuff ``stuffthingmaps`` value to the label stored.

    ``kind="stuff"``: the 171 train ids, 255 ignore (mmseg ``coco_stuff164k.py``).
    ``kind="object"``: SCLIP/GroupViT ``datasets/cvt_coco_object.py``: things (ids <= 90) -> train
    id + 1 (1..80), every other value (stuff and the unlabeled 255) -> 0 (background).
    Values not in the table (never stored) are kept, as both scripts keep them.
    """
    lut = np.arange(256, dtype=np.int64)
    for cid, train in COCO_STUFF_TRAIN_IDS.items():
        if kind == "stuff":
            lut[cid] = train
        else:
            lut[cid] = train + 1 if cid <= 90 else 0
    if kind == "object":
        lut[255] = 0
    return lut.astype(np.uint8)


def prepare_coco(sources: Sequence[Source], out: Path, *, kind: str, split: str = "val2017",
                 progress: bool = True) -> dict[str, int]:
    """COCO-Stuff-164k (171 classes) or COCO-Object (81) in mmseg's ``coco_stuff164k`` layout.

    Sources: ``<split>/<id>.jpg`` (COCO ``val2017.zip``) and ``<split>/<id>.png``
    (``stuffthingmaps_trainval2017.zip``). Writes ``images/<split>/<id>.jpg`` (copied) and
    ``annotations/<split>/<id>_labelTrainIds.png`` (stuff) or ``_instanceTrainIds.png`` (object).
    """
    lut = coco_stuff_lut(kind)
    suffix = "_labelTrainIds.png" if kind == "stuff" else "_instanceTrainIds.png"
    maps = _need(find(sources, rf"{split}/(\d+)\.png"), f"COCO-Stuff label maps ({split}/<id>.png, from "
                 "stuffthingmaps_trainval2017.zip)", sources)
    images = {f.groups[0]: f for f in _need(find(sources, rf"{split}/(\d+)\.jpg"), f"COCO images ({split}/<id>.jpg)",
                                            sources)}

    def outputs(f: Found) -> list[Path]:
        return [out / "images" / split / f"{f.groups[0]}.jpg", out / "annotations" / split / f"{f.groups[0]}{suffix}"]

    def convert(f: Found) -> None:
        if f.groups[0] not in images:
            raise DatasetError(f"no image {split}/{f.groups[0]}.jpg for the label map {f.name}")
        _copy(images[f.groups[0]], outputs(f)[0])
        save_image(outputs(f)[1], lut[f.image()])

    prog = _each(maps, f"coco_{'stuff' if kind == 'stuff' else 'object'}", progress, outputs, convert)
    return {"images": len(maps), "written": prog.written, "skipped": prog.skipped}


# --- Cityscapes -----------------------------------------------------------------------------------

#: cityscapesscripts ``helpers/labels.py``: id -> (name, train id, hasInstances, ignoreInEval)
CITYSCAPES_LABELS: dict[int, tuple[str, int, bool, bool]] = {
    0: ("unlabeled", 255, False, True), 1: ("ego vehicle", 255, False, True),
    2: ("rectification border", 255, False, True), 3: ("out of roi", 255, False, True),
    4: ("static", 255, False, True), 5: ("dynamic", 255, False, True), 6: ("ground", 255, False, True),
    7: ("road", 0, False, False), 8: ("sidewalk", 1, False, False), 9: ("parking", 255, False, True),
    10: ("rail track", 255, False, True), 11: ("building", 2, False, False), 12: ("wall", 3, False, False),
    13: ("fence", 4, False, False), 14: ("guard rail", 255, False, True), 15: ("bridge", 255, False, True),
    16: ("tunnel", 255, False, True), 17: ("pole", 5, False, False), 18: ("polegroup", 255, False, True),
    19: ("traffic light", 6, False, False), 20: ("traffic sign", 7, False, False),
    21: ("vegetation", 8, False, False), 22: ("terrain", 9, False, False), 23: ("sky", 10, False, False),
    24: ("person", 11, True, False), 25: ("rider", 12, True, False), 26: ("car", 13, True, False),
    27: ("truck", 14, True, False), 28: ("bus", 15, True, False), 29: ("caravan", 255, True, True),
    30: ("trailer", 255, True, True), 31: ("train", 16, True, False), 32: ("motorcycle", 17, True, False),
    33: ("bicycle", 18, True, False),
}


def cityscapes_train_id_lut() -> np.ndarray:
    """(256,) uint8: label id -> train id (255 for the classes not evaluated and unknown ids)."""
    lut = np.full(256, 255, dtype=np.uint8)
    for lid, (_, train, _, _) in CITYSCAPES_LABELS.items():
        lut[lid] = train
    return lut


def cityscapes_segments(instance_ids: np.ndarray) -> list[dict[str, Any]]:
    """The panoptic segments of one ``*_gtFine_instanceIds.png`` (cityscapesscripts
    ``preparation/createPanopticImgs.py``, label ids as category ids): every value ``v`` is a
    segment with id ``v``; ``v >= 1000``: class ``v // 1000``, not crowd; ``v < 1000``: class
    ``v``, crowd when the class has instances; classes with ``ignoreInEval`` are left out (void).

    Returns:
        ``id``, ``category_id`` (label id), ``area``, ``bbox`` [x, y, w, h], ``iscrowd``, in
        increasing id order.
    """
    segs = []
    for sid in np.unique(instance_ids):
        sid = int(sid)
        label, crowd = (sid, 1) if sid < 1000 else (sid // 1000, 0)
        info = CITYSCAPES_LABELS.get(label)
        if info is None or info[3]:
            continue
        if not info[2]:
            crowd = 0
        mask = instance_ids == sid
        xs, ys = np.nonzero(mask.any(0))[0], np.nonzero(mask.any(1))[0]
        segs.append({"id": sid, "category_id": label, "area": int(mask.sum()),
                     "bbox": [int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)],
                     "iscrowd": crowd})
    return segs


def cityscapes_panoptic_rgb(instance_ids: np.ndarray, segments: Iterable[dict]) -> np.ndarray:
    """The RGB panoptic PNG of createPanopticImgs: ``[id % 256, id // 256, id // 256 // 256]``
    on each segment's pixels, 0 elsewhere."""
    out = np.zeros((*instance_ids.shape, 3), dtype=np.uint8)
    for seg in segments:
        sid = int(seg["id"])
        out[instance_ids == sid] = [sid % 256, sid // 256, sid // 256 // 256]
    return out


def prepare_cityscapes(sources: Sequence[Source], out: Path, *, split: str = "val",
                       progress: bool = True) -> dict[str, int]:
    """Cityscapes ``split``: train ids, panoptic and instance ground truth.

    Sources: ``leftImg8bit/<split>/<city>/<name>_leftImg8bit.png`` (``leftImg8bit_trainvaltest.zip``),
    ``gtFine/<split>/<city>/<name>_gtFine_labelIds.png`` and ``..._instanceIds.png``
    (``gtFine_trainvaltest.zip``). Writes (layout of ``ovss.data.datasets``, ``cityscapes``):

    * ``leftImg8bit/<split>/...`` (copied);
    * ``gtFine/<split>/<city>/<name>_gtFine_labelTrainIds.png``: label id -> train id, 255 ignore
      (what cityscapesscripts ``createTrainIdLabelImgs`` / mmseg ``cityscapes.py`` make);
    * ``gtFine/cityscapes_panoptic_<split>/<name>_gtFine_panoptic.png`` and
      ``gtFine/cityscapes_panoptic_<split>.json`` (``createPanopticImgs`` with label ids);
    * ``gtFine/cityscapes_instances_<split>.json``: COCO instances of the 8 evaluated thing classes
      (category id = label id): one RLE annotation per instance (segment id >= 1000), crowd
      regions (``iscrowd`` 1) for the group labels (id < 1000) of those classes.
    """
    from pycocotools import mask as mask_util

    gt = _need(find(sources, rf"gtFine/{split}/([^/]+/[^/]+)_gtFine_instanceIds\.png"),
               f"gtFine/{split}/<city>/<name>_gtFine_instanceIds.png (gtFine_trainvaltest.zip)", sources)
    label_ids = {f.groups[0]: f for f in find(sources, rf"gtFine/{split}/([^/]+/[^/]+)_gtFine_labelIds\.png")}
    images = {f.groups[0]: f for f in find(sources, rf"leftImg8bit/{split}/([^/]+/[^/]+)_leftImg8bit\.png")}
    lut = cityscapes_train_id_lut()
    pan_dir = out / "gtFine" / f"cityscapes_panoptic_{split}"
    annotations, images_json, instances = [], [], []
    prog = Progress(len(gt), "cityscapes", progress)
    try:
        for f in gt:
            rel = f.groups[0]
            name = PurePosixPath(rel).name
            if rel not in images or rel not in label_ids:
                raise DatasetError(f"{f.name}: no {'image' if rel not in images else 'labelIds file'} for {rel} "
                                   "in the sources (give leftImg8bit and gtFine)")
            ids = f.image().astype(np.int64)
            segs = cityscapes_segments(ids)
            targets = [out / "leftImg8bit" / split / f"{rel}_leftImg8bit.png",
                       out / "gtFine" / split / f"{rel}_gtFine_labelTrainIds.png", pan_dir / f"{name}_gtFine_panoptic.png"]
            todo = not all(p.is_file() for p in targets)
            if todo:
                _copy(images[rel], targets[0])
                if not targets[1].is_file():
                    save_image(targets[1], lut[label_ids[rel].image()])
                if not targets[2].is_file():
                    save_image(targets[2], cityscapes_panoptic_rgb(ids, segs))
            prog.step(todo)
            h, w = ids.shape
            images_json.append({"id": name, "file_name": f"{rel}_leftImg8bit.png", "height": h, "width": w})
            annotations.append({"image_id": name, "file_name": f"{name}_gtFine_panoptic.png", "segments_info": segs})
            for seg in segs:
                info = CITYSCAPES_LABELS[seg["category_id"]]
                if not info[2]:
                    continue
                rle = mask_util.encode(np.asfortranarray((ids == seg["id"]).astype(np.uint8)))
                instances.append({"id": len(instances) + 1, "image_id": name, "category_id": seg["category_id"],
                                  "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
                                  "area": seg["area"], "bbox": seg["bbox"], "iscrowd": seg["iscrowd"]})
    finally:
        prog.close()
    evaluated = [(lid, info) for lid, info in sorted(CITYSCAPES_LABELS.items()) if not info[3]]
    categories = [{"id": lid, "name": info[0], "isthing": int(info[2])} for lid, info in evaluated]
    save_json(out / "gtFine" / f"cityscapes_instances_{split}.json",
              {"images": images_json, "annotations": instances, "categories": [c for c in categories if c["isthing"]]})
    save_json(out / "gtFine" / f"cityscapes_panoptic_{split}.json",
              {"images": images_json, "annotations": annotations, "categories": categories})
    return {"images": len(gt), "written": prog.written, "skipped": prog.skipped, "instances": len(instances)}


# --- PASCAL Context --------------------------------------------------------------------------------

#: The 59 classes of PASCAL Context among its 459 (label ids of the full release, 0 = background):
#: mmseg ``tools/dataset_converters/pascal_context.py`` / CAT-Seg ``prepare_pascal_context_59.py`` ``_mapping``.
CONTEXT59_IDS = (0, 2, 259, 260, 415, 324, 9, 258, 144, 18, 19, 22, 23, 397, 25, 284, 158, 159, 416, 33, 162, 420,
                 454, 295, 296, 427, 44, 45, 46, 308, 59, 440, 445, 31, 232, 65, 354, 424, 68, 326, 72, 458, 34, 207,
                 80, 355, 85, 347, 220, 349, 360, 98, 187, 104, 105, 366, 189, 368, 113, 115)


def context59_lut() -> np.ndarray:
    """(460,) uint8: full label id -> 59-class label (sorted ids, background 0 -> 255, the others
    -> 0..58), everything else 255 (CAT-Seg ``prepare_pascal_context_59.py``: ``_key - 1`` as uint8)."""
    lut = np.full(460, 255, dtype=np.uint8)
    for k, cid in enumerate(sorted(CONTEXT59_IDS)):
        lut[cid] = (k - 1) % 256
    return lut


def _context_val_ids(sources: Sequence[Source]) -> tuple[list[str], dict | None]:
    js = find(sources, r"(trainval_merged\.json)")
    if js:
        data = json.loads(js[0].read())
        return sorted(Path(im["file_name"]).stem for im in data["images"] if im.get("phase") == "val"), data
    txt = find(sources, r"((?:pascalcontext_val|SegmentationContext/val)\.txt)")
    if txt:
        return sorted(line.strip() for line in txt[0].read().decode().splitlines() if line.strip()), None
    raise DatasetError(f"no PASCAL Context val list in {', '.join(map(str, sources))}: give trainval_merged.json "
                       "(the Detail API annotations) or pascalcontext_val.txt / ImageSets/SegmentationContext/val.txt")


def prepare_context(sources: Sequence[Source], out: Path, *, classes: int, progress: bool = True) -> dict[str, int]:
    """PASCAL Context val, 59 or 459 classes, in CAT-Seg's layout (``VOCdevkit/VOC2010``).

    * 459: ``trainval/<id>.mat`` (the full-label release ``trainval.tar.gz``): ``LabelMap - 1`` in
      its own dtype (uint16: 0..458; a 0 would wrap to 65535, the ignore value) as 16-bit TIFF
      ``annotations_detectron2/pc459_val/<id>.tif`` (CAT-Seg ``prepare_pascal_context_459.py``);
      the val ids come from ``trainval_merged.json`` (``phase`` val) or a val list.
    * 59: ``trainval_merged.json`` (Detail API): the val images' ``annos_segmentation`` RLE masks
      painted in order with their ``category_id`` over 0, then :func:`context59_lut`, as
      ``annotations_detectron2/pc59_val/<id>.png`` (CAT-Seg ``prepare_pascal_context_59.py``).

    ``JPEGImages/<id>.jpg`` of the val images are copied beside them.
    """
    from pycocotools import mask as mask_util

    ids, data = _context_val_ids(sources)
    images = {f.groups[0]: f for f in find(sources, r"JPEGImages/([^/]+)\.jpg")}
    if classes == 459:
        mats = {f.groups[0]: f for f in find(sources, r"trainval/([^/]+)\.mat")}
        sub, suffix = "pc459_val", ".tif"
    elif classes == 59:
        if data is None:
            raise DatasetError("context59 needs trainval_merged.json (the Detail API annotations) among the sources")
        by_id = {im["image_id"]: im for im in data["images"] if im.get("phase") == "val"}
        annos: dict[str, list[dict]] = {}
        for ann in data.get("annos_segmentation", []):
            if ann["image_id"] in by_id:
                annos.setdefault(Path(by_id[ann["image_id"]]["file_name"]).stem, []).append(ann)
        meta = {Path(im["file_name"]).stem: im for im in by_id.values()}
        sub, suffix = "pc59_val", ".png"
        lut = context59_lut()
    else:
        raise InputError(f"PASCAL Context has 59 or 459 classes, not {classes}")
    items = [Found(images[i].source, images[i].name, (i,)) if i in images else Found(sources[0], "", (i,)) for i in ids]

    def outputs(f: Found) -> list[Path]:
        return [out / "JPEGImages" / f"{f.groups[0]}.jpg", out / "annotations_detectron2" / sub / f"{f.groups[0]}{suffix}"]

    def convert(f: Found) -> None:
        i = f.groups[0]
        if i not in images:
            raise DatasetError(f"no JPEGImages/{i}.jpg in the sources")
        _copy(images[i], outputs(f)[0])
        if classes == 459:
            if i not in mats:
                raise DatasetError(f"no trainval/{i}.mat in the sources (the full-label .mat release)")
            import scipy.io

            label = scipy.io.loadmat(io.BytesIO(mats[i].read()))["LabelMap"]
            save_image(outputs(f)[1], (label - 1).astype(label.dtype), "TIFF")
        else:
            im = meta[i]
            mask = np.zeros((im["height"], im["width"]), dtype=np.int64)
            for ann in annos.get(i, []):
                seg = dict(ann["segmentation"])
                if isinstance(seg.get("counts"), str):
                    seg["counts"] = seg["counts"].encode("ascii")
                mask[np.nonzero(mask_util.decode(seg))] = int(ann["category_id"])
            save_image(outputs(f)[1], lut[np.clip(mask, 0, 459)])

    prog = _each(items, f"context{classes}", progress, outputs, convert)
    return {"images": len(items), "written": prog.written, "skipped": prog.skipped}


# --- ADE20K-Full (847) ----------------------------------------------------------------------------


def ade847_object_lut() -> np.ndarray:
    """(65536,) uint16: ADE20K_2021_17_01 object class id -> ADE-847 train id, others 65535
    (``object_ids`` of ``ovss/data/ade847_classes.json``, from Mask2Former/FC-CLIP
    ``datasets/prepare_ade20k_full_sem_seg.py``)."""
    text = resources.files("ovss").joinpath("data/ade847_classes.json").read_text(encoding="utf-8")
    lut = np.full(65536, 65535, dtype=np.uint16)
    for train, obj in enumerate(json.loads(text)["object_ids"]):
        lut[obj] = train
    return lut


def ade_full_resize(img: np.ndarray, lab: np.ndarray, max_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """The short side to ``max_size`` when it is longer (``round`` for the other side), image with
    OpenCV ``INTER_LINEAR``, labels ``INTER_NEAREST`` (``prepare_ade20k_full_sem_seg.py``)."""
    import cv2

    h, w = img.shape[:2]
    if w >= h > max_size:
        size = (round(w / float(h) * max_size), max_size)
    elif h >= w > max_size:
        size = (max_size, round(h / float(w) * max_size))
    else:
        return img, lab
    return (cv2.resize(img, size, interpolation=cv2.INTER_LINEAR),
            cv2.resize(lab, size, interpolation=cv2.INTER_NEAREST))


def prepare_ade847(sources: Sequence[Source], out: Path, *, progress: bool = True) -> dict[str, int]:
    """ADE20K-Full val (847 classes) in Mask2Former's layout (``ADE20K_2021_17_01``).

    Sources: the ADE20K_2021_17_01 release's ``images/ADE/validation/.../ADE_val_<n>.jpg`` with
    their ``_seg.png``. Per image (``prepare_ade20k_full_sem_seg.py``): object class =
    ``R // 10 * 256 + G`` of the seg PNG (``(R / 10).astype(int32)``), resized with the image by
    :func:`ade_full_resize`, mapped by :func:`ade847_object_lut`; writes
    ``images_detectron2/validation/<name>.jpg`` (Pillow JPEG at its default quality, as the script
    saves it) and ``annotations_detectron2/validation/<name>.tif`` (uint16).
    """
    lut = ade847_object_lut()
    imgs = _need(find(sources, r"validation/(?:.*/)?(ADE_val_\d+)\.jpg"),
                 "ADE20K_2021_17_01 images (images/ADE/validation/.../ADE_val_*.jpg)", sources)
    segs = {f.groups[0]: f for f in find(sources, r"validation/(?:.*/)?(ADE_val_\d+)_seg\.png")}

    def outputs(f: Found) -> list[Path]:
        n = f.groups[0]
        return [out / "images_detectron2/validation" / f"{n}.jpg", out / "annotations_detectron2/validation" / f"{n}.tif"]

    def convert(f: Found) -> None:
        if f.groups[0] not in segs:
            raise DatasetError(f"no {f.groups[0]}_seg.png beside {f.name}")
        seg = segs[f.groups[0]].image()
        lab = (seg[..., 0] / 10).astype(np.int32) * 256 + seg[..., 1].astype(np.int32)
        img, lab = ade_full_resize(f.image(), lab)
        save_image(outputs(f)[0], np.ascontiguousarray(img), "JPEG")
        save_image(outputs(f)[1], lut[np.clip(lab, 0, 65535)], "TIFF")

    prog = _each(imgs, "ade847", progress, outputs, convert)
    return {"images": len(imgs), "written": prog.written, "skipped": prog.skipped}


# --- ADE20K-150 panoptic and instances -------------------------------------------------------------


def ade20k_instance_categories() -> list[dict[str, Any]]:
    """The 100 instance categories of the ADE20K instance annotations: ``instance_id`` (the R
    value of ``annotations_instance`` PNGs), ``semantic_id`` (the ADE-150 class index) and
    ``name`` (``ovss/data/ade20k_instance.json``, from Mask2Former/FC-CLIP's
    ``ade20k_instance_catid_mapping.txt`` and ``ade20k_instance_imgCatIds.json``)."""
    text = resources.files("ovss").joinpath("data/ade20k_instance.json").read_text(encoding="utf-8")
    return json.loads(text)["categories"]


def _bbox(mask: np.ndarray) -> list[int]:
    xs, ys = np.nonzero(mask.any(0))[0], np.nonzero(mask.any(1))[0]
    return [int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)]


def ade20k_panoptic(semantic: np.ndarray, instance: np.ndarray, sem_of_instance: dict[int, int],
                    things: set[int]) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One image's panoptic ground truth as Mask2Former/FC-CLIP ``prepare_ade20k_pan_seg.py`` makes it.

    Stuff segments first, from the semantic PNG (``value - 1``; 0 -> 255 skipped; thing classes
    skipped), then every instance (G channel, 0 = none) of the instance PNG, class
    ``sem_of_instance[R - 1]``, painted over them. As in the script, a stuff segment's ``area`` and
    ``bbox`` are measured before the things are painted (so they can exceed its final pixels).
    Segment ids here are ``class + 1`` for stuff and ``1000 * (class + 1) + n`` for the n-th thing
    (the script draws random colours with panopticapi's ``IdGenerator``; PQ does not depend on ids).

    Returns:
        (H, W) int64 segment ids and ``segments_info`` (``id``, ``category_id`` = ADE-150 index,
        ``area``, ``bbox``, ``iscrowd`` 0).
    """
    ids = np.zeros(semantic.shape, dtype=np.int64)
    segs: list[dict[str, Any]] = []
    sem = semantic.astype(np.int64) - 1
    for cat in np.unique(sem):
        cat = int(cat)
        if cat < 0 or cat in things:
            continue
        mask = sem == cat
        ids[mask] = cat + 1
        segs.append({"id": cat + 1, "category_id": cat, "area": int(mask.sum()), "bbox": _bbox(mask), "iscrowd": 0})
    ins_cat, ins_id = instance[..., 0].astype(np.int64) - 1, instance[..., 1]
    for n, tid in enumerate(t for t in np.unique(ins_id) if t != 0):
        mask = ins_id == tid
        cats = np.unique(ins_cat[mask])
        if len(cats) != 1:
            raise DatasetError(f"instance {int(tid)} has {len(cats)} categories")
        cat = sem_of_instance[int(cats[0])]
        sid = 1000 * (cat + 1) + n + 1
        ids[mask] = sid
        segs.append({"id": sid, "category_id": cat, "area": int(mask.sum()), "bbox": _bbox(mask), "iscrowd": 0})
    return ids, segs


def prepare_ade20k(sources: Sequence[Source], out: Path, *, progress: bool = True) -> dict[str, int]:
    """ADE20K-150 val with panoptic and instance ground truth (``ADEChallengeData2016``).

    Sources: ``ADEChallengeData2016.zip`` (``images/validation/*.jpg``, ``annotations/validation/*.png``)
    and the instance annotations (``annotations_instance/validation/*.png``: R = instance category
    1..100, G = instance id). Writes the mmseg layout (images and annotations copied),
    ``ade20k_panoptic_val/<id>.png`` + ``ade20k_panoptic_val.json`` (:func:`ade20k_panoptic`; 150
    categories, ids 0..149, ``isthing`` for the 100 instance classes) and ``ade20k_instance_val.json``
    (``prepare_ade20k_ins_seg.py``: one RLE annotation per instance, ``category_id`` = ADE-150 index,
    image id = the file stem).
    """
    from pycocotools import mask as mask_util

    from .datasets import get_dataset, id2rgb

    cats = ade20k_instance_categories()
    sem_of_instance = {c["instance_id"] - 1: c["semantic_id"] for c in cats}
    raw_to_sem = {c["instance_id"]: c["semantic_id"] for c in cats}
    things = set(sem_of_instance.values())
    images = _need(find(sources, r"images/validation/(ADE_val_\d+)\.jpg"), "images/validation/ADE_val_*.jpg", sources)
    semantic = {f.groups[0]: f for f in find(sources, r"annotations/validation/(ADE_val_\d+)\.png")}
    instance = {f.groups[0]: f for f in find(sources, r"annotations_instance/validation/(ADE_val_\d+)\.png")}
    if not instance:
        raise DatasetError("no annotations_instance/validation/ADE_val_*.png (the ADE20K instance annotations) in "
                           f"{', '.join(map(str, sources))}")
    pan_json, ins_images, ins_anns = [], [], []
    prog = Progress(len(images), "ade20k", progress)
    try:
        for f in images:
            stem = f.groups[0]
            if stem not in semantic or stem not in instance:
                raise DatasetError(f"no {'annotations' if stem not in semantic else 'annotations_instance'}"
                                   f"/validation/{stem}.png for {f.name}")
            sem, ins = semantic[stem].image(), instance[stem].image()
            ids, segs = ade20k_panoptic(sem, ins, sem_of_instance, things)
            targets = [out / "images/validation" / f"{stem}.jpg", out / "annotations/validation" / f"{stem}.png",
                       out / "ade20k_panoptic_val" / f"{stem}.png"]
            todo = not all(p.is_file() for p in targets)
            if todo:
                _copy(f, targets[0])
                _copy(semantic[stem], targets[1])
                if not targets[2].is_file():
                    save_image(targets[2], id2rgb(ids))
            prog.step(todo)
            pan_json.append({"image_id": stem, "file_name": f"{stem}.png", "segments_info": segs})
            h, w = sem.shape[:2]
            ins_images.append({"id": stem, "file_name": f"{stem}.jpg", "width": int(w), "height": int(h)})
            for tid in (t for t in np.unique(ins[..., 1]) if t != 0):
                mask = ins[..., 1] == tid
                rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
                ins_anns.append({"id": len(ins_anns) + 1, "image_id": stem, "iscrowd": 0,
                                 "category_id": raw_to_sem[int(np.unique(ins[..., 0][mask])[0])],
                                 "bbox": _bbox(mask), "segmentation": {"size": [int(h), int(w)],
                                                                       "counts": rle["counts"].decode("ascii")},
                                 "area": int(mask.sum())})
    finally:
        prog.close()
    names = get_dataset("ade20k").classes
    save_json(out / "ade20k_instance_val.json",
              {"images": ins_images, "annotations": ins_anns,
               "categories": [{"id": c["semantic_id"], "name": c["name"]} for c in cats]})
    save_json(out / "ade20k_panoptic_val.json",
              {"images": [{"id": i["id"], "file_name": i["file_name"], "width": i["width"], "height": i["height"]}
                          for i in ins_images], "annotations": pan_json,
               "categories": [{"id": k, "name": n, "isthing": int(k in things)} for k, n in enumerate(names)]})
    return {"images": len(images), "written": prog.written, "skipped": prog.skipped, "instances": len(ins_anns)}


# --- Mapillary Vistas -----------------------------------------------------------------------------


def prepare_mapillary(sources: Sequence[Source], out: Path, *, progress: bool = True) -> dict[str, int]:
    """Mapillary Vistas validation with the v1.2 annotations, as Mask2Former reads it (no conversion).

    Sources: the v1.2 release (``validation/{images,labels,panoptic}``) or v2.0 (whose
    ``validation/v1.2/{labels,panoptic}`` are the v1.2 annotations). Copies
    ``validation/images/<id>.jpg``, ``validation/labels/<id>.png`` (0..64, 65 unlabeled),
    ``validation/panoptic/<id>.png`` and ``validation/panoptic/panoptic_2018.json`` (last).
    """
    imgs = _need(find(sources, r"validation/images/([^/]+)\.jpg"), "validation/images/<id>.jpg", sources)
    v12 = any(find(sources, r"validation/v1\.2/(labels)/[^/]+\.png"))
    ann = "validation/v1\\.2/" if v12 else "validation/"
    labels = {f.groups[0]: f for f in find(sources, ann + r"labels/([^/]+)\.png")}
    pans = {f.groups[0]: f for f in find(sources, ann + r"panoptic/([^/]+)\.png")}
    pan_json = find(sources, ann + r"panoptic/(panoptic_2018\.json)")

    def outputs(f: Found) -> list[Path]:
        i = f.groups[0]
        return [out / "validation/images" / f"{i}.jpg", out / "validation/labels" / f"{i}.png"] + (
            [out / "validation/panoptic" / f"{i}.png"] if pans else [])

    def convert(f: Found) -> None:
        i = f.groups[0]
        if i not in labels:
            raise DatasetError(f"no labels/{i}.png for {f.name} (the v1.2 annotations)")
        _copy(f, outputs(f)[0])
        _copy(labels[i], outputs(f)[1])
        if pans:
            _copy(pans[i], outputs(f)[2])

    prog = _each(imgs, "mapillary_vistas", progress, outputs, convert)
    if pans and pan_json:
        save_bytes(out / "validation/panoptic/panoptic_2018.json", pan_json[0].read())
    return {"images": len(imgs), "written": prog.written, "skipped": prog.skipped}


# --- registry ----------------------------------------------------------------------------------------

CONVERTERS: dict[str, tuple[Callable[..., dict[str, int]], dict[str, Any], str]] = {
    "coco_stuff": (prepare_coco, {"kind": "stuff"}, "val2017.zip + stuffthingmaps_trainval2017.zip -> coco_stuff164k"),
    "coco_object": (prepare_coco, {"kind": "object"}, "val2017.zip + stuffthingmaps_trainval2017.zip -> coco_stuff164k"),
    "cityscapes": (prepare_cityscapes, {}, "leftImg8bit_trainvaltest.zip + gtFine_trainvaltest.zip -> cityscapes"),
    "context59": (prepare_context, {"classes": 59}, "VOC2010 JPEGImages + trainval_merged.json -> VOCdevkit/VOC2010"),
    "context459": (prepare_context, {"classes": 459},
                   "VOC2010 JPEGImages + trainval.tar.gz (.mat) + trainval_merged.json -> VOCdevkit/VOC2010"),
    "ade20k": (prepare_ade20k, {}, "ADEChallengeData2016.zip + annotations_instance -> ADEChallengeData2016 "
               "(with panoptic and instance ground truth)"),
    "ade847": (prepare_ade847, {}, "ADE20K_2021_17_01 release -> ADE20K_2021_17_01"),
    "mapillary_vistas": (prepare_mapillary, {}, "Mapillary Vistas v1.2 (or v2.0) -> mapillary_vistas"),
}


def prepare(dataset: str, sources: Sequence[str | Path], out: str | Path, *, progress: bool = True) -> dict[str, int]:
    """Convert the official release of ``dataset`` into ``out`` (see :data:`CONVERTERS`).

    Args:
        dataset: ``coco_stuff``, ``coco_object``, ``cityscapes``, ``context59``, ``context459``,
            ``ade20k``, ``ade847``, ``mapillary_vistas``.
        sources: folders and/or zip files holding the release's files.
        out: the data root to write (then ``ovss eval --dataset <dataset> --data-root <out>``).
        progress: show a progress bar.

    Returns:
        Counts: ``images`` (in the split), ``written`` and ``skipped`` (already there).

    Raises:
        UnknownNameError: no converter for ``dataset``.
        InputError: a source is neither a folder nor a zip file.
        DatasetError: files of the release are missing.
    """
    if dataset not in CONVERTERS:
        raise UnknownNameError(f"no converter for {dataset!r}.{did_you_mean(dataset, list(CONVERTERS))} "
                               f"Available: {', '.join(CONVERTERS)}")
    if not sources:
        raise InputError("give the release with --source (a folder or a zip file; repeatable)")
    fn, kwargs, _ = CONVERTERS[dataset]
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    return fn([Source(s) for s in sources], out, progress=progress, **kwargs)


__all__ = ["CONVERTERS", "Source", "prepare", "coco_stuff_lut", "cityscapes_segments", "context59_lut",
           "ade847_object_lut", "ade20k_panoptic", "ade20k_instance_categories"]
