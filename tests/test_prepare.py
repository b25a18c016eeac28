"""``ovss prepare``: every converter on a tiny synthetic source in the official release format
(folders and zips), the values it writes, that ``ovss eval`` opens the result, and resuming."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from ovss.data.datasets import open_dataset, read_panoptic_png
from ovss.data.prepare import ade847_object_lut, prepare
from ovss.errors import DatasetError, InputError, UnknownNameError
from ovss.evaluation.instance import decode_mask, encode_mask


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _jpg(h: int, w: int, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


# ---- COCO-Stuff / COCO-Object ----------------------------------------------------------------------

STUFF = np.array([[0, 12, 90, 91], [181, 255, 26, 92]], dtype=np.uint8)  # COCO-Stuff label ids


def test_coco_stuff_and_object_from_zips(tmp_path: Path) -> None:
    ids = ["000000000139", "000000000285"]
    images = _zip(tmp_path / "val2017.zip", {f"val2017/{i}.jpg": _jpg(2, 4, k) for k, i in enumerate(ids)})
    maps = _zip(tmp_path / "stuffthingmaps_trainval2017.zip", {f"stuffthingmaps/val2017/{i}.png": _png(STUFF)
                                                               for i in ids} | {"train2017/1.png": _png(STUFF)})
    out = tmp_path / "coco_stuff164k"
    counts = prepare("coco_stuff", [images, maps], out, progress=False)
    assert counts == {"images": 2, "written": 2, "skipped": 0}
    ds = open_dataset("coco_stuff", out)
    assert ds.layout.name == "mmseg" and len(ds) == 2
    # 0 -> 0, 12 -> 11 (id 11 unused), 90 (unused id, never stored) kept, 91 -> 80, 181 -> 170, 255 kept, 26 -> 24
    assert ds.read_label(0).tolist() == [[0, 11, 90, 80], [170, 255, 24, 81]]
    prepare("coco_object", [images, maps], out, progress=False)
    obj = open_dataset("coco_object", out)
    # things (ids <= 90): train id + 1; stuff and the unlabeled 255: background 0 (SCLIP cvt_coco_object.py)
    assert obj.read_label(1).tolist() == [[1, 12, 90, 0], [0, 0, 25, 0]]
    assert prepare("coco_stuff", [images, maps], out, progress=False)["skipped"] == 2  # resumed: nothing to do


# ---- Cityscapes -------------------------------------------------------------------------------------


def _cityscapes_release(root: Path) -> dict[str, np.ndarray]:
    inst = np.full((6, 8), 7, dtype=np.uint16)    # road
    inst[0, :] = 1                                 # ego vehicle: not evaluated -> void
    inst[1:3, 0:3] = 26001                         # car instance 1
    inst[1:3, 4:6] = 26002                         # car instance 2
    inst[3:5, 0:2] = 26                            # car group: crowd
    inst[3:6, 6:8] = 24000                         # person instance 0
    inst[5, 0] = 23                                # sky
    labels = np.where(inst >= 1000, inst // 1000, inst).astype(np.uint8)
    files = {}
    for city, name in (("frankfurt", "frankfurt_000000_000294"), ("lindau", "lindau_000001_000019")):
        files[f"leftImg8bit/val/{city}/{name}_leftImg8bit.png"] = _png(np.zeros((6, 8, 3), dtype=np.uint8))
        files[f"gtFine/val/{city}/{name}_gtFine_labelIds.png"] = _png(labels)
        files[f"gtFine/val/{city}/{name}_gtFine_instanceIds.png"] = _png(inst)
        files[f"gtFine/val/{city}/{name}_gtFine_polygons.json"] = b"{}"
    _tree(root, files)
    return {"inst": inst.astype(np.int64), "labels": labels}


def test_cityscapes_train_ids_panoptic_and_instances(tmp_path: Path) -> None:
    ref = _cityscapes_release(tmp_path / "release")
    out = tmp_path / "cityscapes"
    counts = prepare("cityscapes", [tmp_path / "release"], out, progress=False)
    assert counts["images"] == 2 and counts["instances"] == 8  # per image: 3 instances + 1 crowd region
    ds = open_dataset("cityscapes", out)
    assert ds.panoptic is not None and ds.instances is not None and len(ds) == 2
    lab = ds.read_label(0)
    assert lab[0, 0] == 255 and lab[1, 0] == 13 and lab[3, 6] == 11 and lab[5, 0] == 10 and lab[5, 3] == 0
    ids, segs = ds.read_panoptic(0)
    inst = ref["inst"]
    assert np.array_equal(ids, np.where(inst == 1, 0, inst))  # ego vehicle is void, every other id kept
    by_id = {s["id"]: s for s in segs}
    assert set(by_id) == {7, 23, 26, 24000, 26001, 26002}
    assert by_id[26]["iscrowd"] == 1 and by_id[26001]["iscrowd"] == 0 and by_id[7]["iscrowd"] == 0
    assert by_id[26001]["category_id"] == 13 and by_id[7]["category_id"] == 0  # contiguous = train ids
    raw = json.loads((out / "gtFine/cityscapes_panoptic_val.json").read_text())
    s0 = {s["id"]: s for s in raw["annotations"][0]["segments_info"]}
    assert s0[26001] == {"id": 26001, "category_id": 26, "area": 6, "bbox": [0, 1, 3, 2], "iscrowd": 0}
    assert raw["annotations"][0]["image_id"] == "frankfurt_000000_000294" and len(raw["categories"]) == 19
    coco = json.loads((out / "gtFine/cityscapes_instances_val.json").read_text())
    assert [c["id"] for c in coco["categories"]] == [24, 25, 26, 27, 28, 31, 32, 33]
    anns = [a for a in coco["annotations"] if a["image_id"] == "frankfurt_000000_000294"]
    assert sorted((a["category_id"], a["iscrowd"], a["area"]) for a in anns) == [(24, 0, 6), (26, 0, 4), (26, 0, 6),
                                                                                  (26, 1, 4)]
    car2 = next(a for a in anns if a["area"] == 4 and not a["iscrowd"])
    assert np.array_equal(decode_mask(car2["segmentation"]), inst == 26002)
    assert ds.image_id(0) == "frankfurt_000000_000294"
    # resumed: nothing rewritten; a deleted output is made again
    (out / "gtFine/cityscapes_panoptic_val/lindau_000001_000019_gtFine_panoptic.png").unlink()
    again = prepare("cityscapes", [tmp_path / "release"], out, progress=False)
    assert (again["written"], again["skipped"]) == (1, 1)
    assert np.array_equal(read_panoptic_png(out / "gtFine/cityscapes_panoptic_val/lindau_000001_000019_gtFine_panoptic.png"),
                          np.where(inst == 1, 0, inst))


# ---- PASCAL Context --------------------------------------------------------------------------------


def _detail_json(val: list[str], masks: dict[str, list[tuple[int, np.ndarray]]]) -> bytes:
    images = [{"image_id": k + 1, "file_name": f"{i}.jpg", "phase": "val" if i in val else "train",
               "height": 4, "width": 5} for k, i in enumerate(sorted(masks))]
    by_name = {im["file_name"][:-4]: im["image_id"] for im in images}
    annos = [{"image_id": by_name[i], "category_id": c, "segmentation": encode_mask(m)}
             for i, items in sorted(masks.items()) for c, m in items]
    return json.dumps({"images": images, "annos_segmentation": annos, "categories": []}).encode()


def test_context459_and_59(tmp_path: Path) -> None:
    import scipy.io

    label_map = np.array([[1, 2, 3, 459, 300], [1, 1, 260, 260, 2], [5, 5, 5, 5, 5], [9, 9, 9, 9, 9]], dtype=np.uint16)
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"LabelMap": label_map})
    a = np.zeros((4, 5), dtype=bool)
    a[0, :3] = True
    b = np.zeros((4, 5), dtype=bool)
    b[0, 2:] = True
    c = np.zeros((4, 5), dtype=bool)
    c[3] = True
    masks = {"2008_000002": [(2, a), (259, b), (7, c)], "2008_000003": [(9, a)]}
    files = {"VOC2010/JPEGImages/2008_000002.jpg": _jpg(4, 5), "VOC2010/JPEGImages/2008_000003.jpg": _jpg(4, 5),
             "VOC2010/trainval_merged.json": _detail_json(["2008_000002"], masks),
             "trainval/2008_000002.mat": buf.getvalue(), "trainval/2008_000003.mat": buf.getvalue()}
    src = _zip(tmp_path / "context.zip", files)
    out = tmp_path / "VOC2010"
    assert prepare("context459", [src], out, progress=False)["images"] == 1  # only the val image
    ds = open_dataset("context459", out, layout="catseg")
    assert ds.read_label(0).tolist() == (label_map.astype(np.int64) - 1).tolist()
    assert prepare("context59", [src], out, progress=False)["images"] == 1
    ds59 = open_dataset("context59", out, layout="catseg")
    # painted in order: 2 (aeroplane -> 0), then 259 (-> index of 259 in the sorted 59 ids minus 1), 7 (not among the
    # 59 -> 255); unpainted background 0 -> 255
    k259 = sorted((0, 2, 259, 260, 415, 324, 9, 258, 144, 18, 19, 22, 23, 397, 25, 284, 158, 159, 416, 33, 162, 420,
                   454, 295, 296, 427, 44, 45, 46, 308, 59, 440, 445, 31, 232, 65, 354, 424, 68, 326, 72, 458, 34,
                   207, 80, 355, 85, 347, 220, 349, 360, 98, 187, 104, 105, 366, 189, 368, 113, 115)).index(259) - 1
    assert ds59.read_label(0).tolist() == [[0, 0, k259, k259, k259], [255] * 5, [255] * 5, [255] * 5]
    with pytest.raises(DatasetError, match="no PASCAL Context val list"):
        prepare("context59", [_zip(tmp_path / "x.zip", {"VOC2010/JPEGImages/a.jpg": _jpg(2, 2)})], tmp_path / "o2",
                progress=False)


# ---- ADE20K-Full -----------------------------------------------------------------------------------


def test_ade847_from_the_full_release(tmp_path: Path) -> None:
    import cv2

    lut = ade847_object_lut()
    obj_ids = json.loads((Path(__file__).parents[1] / "ovss/data/ade847_classes.json").read_text())["object_ids"]
    wall, other = obj_ids[0], obj_ids[846]
    h, w = 600, 700
    obj = np.full((h, w), wall, dtype=np.int64)
    obj[100:300, 200:500] = other
    obj[0:10, 0:10] = 1  # an object class outside the 847: ignored
    seg = np.zeros((h, w, 3), dtype=np.uint8)
    seg[..., 0] = obj // 256 * 10 + 3  # R / 10 truncates: + 3 does not change the class
    seg[..., 1] = obj % 256
    root = _tree(tmp_path / "ADE20K_2021_17_01", {
        "images/ADE/validation/urban/street/ADE_val_00000001.jpg": _jpg(h, w),
        "images/ADE/validation/urban/street/ADE_val_00000001_seg.png": _png(seg),
        "images/ADE/training/urban/street/ADE_train_00000001.jpg": _jpg(4, 4)})
    out = tmp_path / "out"
    assert prepare("ade847", [root], out, progress=False)["images"] == 1
    ds = open_dataset("ade847", out)
    lab = ds.read_label(0)
    assert lab.shape == (512, round(700 / 600 * 512))  # short side 600 > 512 -> 512
    expect = cv2.resize(obj.astype(np.int32), (lab.shape[1], 512), interpolation=cv2.INTER_NEAREST)
    assert np.array_equal(lab, lut[expect].astype(np.int64))
    assert set(np.unique(lab)) == {0, 846, 65535} and ds.read_image(0).shape == (512, lab.shape[1], 3)


# ---- Mapillary Vistas ------------------------------------------------------------------------------


def test_mapillary_v12_and_v20_layouts(tmp_path: Path) -> None:
    lab = np.array([[0, 64, 65]], dtype=np.uint8)
    pan = {"annotations": [{"image_id": "a", "file_name": "a.png", "segments_info": [{"id": 1, "category_id": 1}]}],
           "categories": [{"id": k + 1, "name": str(k), "isthing": 0} for k in range(65)]}
    pan_png = np.zeros((1, 3, 3), dtype=np.uint8)
    pan_png[0, 0] = 1
    for version, prefix in (("v12", "validation/"), ("v20", "validation/v1.2/")):
        files = {"validation/images/a.jpg": _jpg(1, 3), f"{prefix}labels/a.png": _png(lab),
                 f"{prefix}panoptic/a.png": _png(pan_png), f"{prefix}panoptic/panoptic_2018.json": json.dumps(pan).encode()}
        if version == "v20":  # v2.0's own labels (124 classes) must not be taken
            files["validation/v2.0/labels/a.png"] = _png(lab + 1)
        src = _zip(tmp_path / f"{version}.zip", files)
        out = tmp_path / version
        assert prepare("mapillary_vistas", [src], out, progress=False)["images"] == 1
        ds = open_dataset("mapillary_vistas", out)
        assert ds.read_label(0).tolist() == [[0, 64, 65]] and ds.panoptic is not None


# ---- CLI and errors --------------------------------------------------------------------------------


def test_cli_and_errors(tmp_path: Path) -> None:
    from ovss.cli import app

    _cityscapes_release(tmp_path / "release")
    r = CliRunner().invoke(app, ["prepare", "cityscapes", "--source", str(tmp_path / "release"), "--out",
                                    str(tmp_path / "cs"), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "2 images (2 converted, 0 already there)" in r.output and "ovss eval --dataset cityscapes" in r.output
    r = CliRunner().invoke(app, ["prepare", "cityscape", "--source", str(tmp_path), "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "did you mean 'cityscapes'" in r.output.lower()
    with pytest.raises(InputError, match="neither a folder nor a zip"):
        prepare("cityscapes", [tmp_path / "missing"], tmp_path / "x", progress=False)
    with pytest.raises(DatasetError, match="no gtFine/val/<city>/<name>_gtFine_instanceIds.png"):
        prepare("cityscapes", [tmp_path / "cs" / "leftImg8bit"], tmp_path / "y", progress=False)
    with pytest.raises(UnknownNameError):
        prepare("voc", [tmp_path], tmp_path / "z", progress=False)


# ---- ADE20K-150 panoptic and instances -------------------------------------------------------------


def test_ade20k_panoptic_and_instances(tmp_path: Path) -> None:
    sem = np.ones((6, 8), dtype=np.uint8)          # 1 = wall (class 0, stuff)
    sem[0, :] = 0                                    # "other": void
    sem[3:6, 0:4] = 8                                # 8 = bed (class 7, a thing): not a stuff segment
    sem[4, 6] = 3                                    # sky (class 2)
    ins = np.zeros((6, 8, 3), dtype=np.uint8)
    ins[3:6, 0:2] = (1, 1, 0)                        # instance 1, category 1 (bed)
    ins[3:6, 2:4] = (1, 2, 0)                        # instance 2, bed
    ins[1, 6:8] = (1, 3, 0)                          # instance 3, bed, painted over wall pixels
    src = _zip(tmp_path / "ADEChallengeData2016.zip", {
        "ADEChallengeData2016/images/validation/ADE_val_00000001.jpg": _jpg(6, 8),
        "ADEChallengeData2016/annotations/validation/ADE_val_00000001.png": _png(sem)})
    inst_dir = _tree(tmp_path / "inst", {"annotations_instance/validation/ADE_val_00000001.png": _png(ins)})
    out = tmp_path / "ADEChallengeData2016"
    counts = prepare("ade20k", [src, inst_dir], out, progress=False)
    assert counts["images"] == 1 and counts["instances"] == 3
    ds = open_dataset("ade20k", out)
    assert ds.layout.name == "mmseg" and ds.panoptic is not None and ds.instances is not None
    assert sum(ds.panoptic.isthing) == 100
    ids, segs = ds.read_panoptic(0)
    by_cat = {}
    for s in segs:
        by_cat.setdefault(s["category_id"], []).append(s)
    assert sorted(by_cat) == [0, 2, 7] and len(by_cat[7]) == 3
    wall = by_cat[0][0]
    assert wall["area"] == int((sem == 1).sum())  # measured before instance 3 was painted over it
    assert int((ids == wall["id"]).sum()) == wall["area"] - 2
    assert (ids[0] == 0).all() and ds.read_label(0)[0, 0] == 255
    coco = json.loads((out / "ade20k_instance_val.json").read_text())
    assert len(coco["categories"]) == 100 and {a["category_id"] for a in coco["annotations"]} == {7}
    assert coco["images"][0] == {"id": "ADE_val_00000001", "file_name": "ADE_val_00000001.jpg", "width": 8,
                                 "height": 6}
    assert ds.image_id(0) == "ADE_val_00000001"
    with pytest.raises(DatasetError, match="annotations_instance"):
        prepare("ade20k", [src], tmp_path / "o", progress=False)
