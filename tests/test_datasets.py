"""Datasets: every benchmark's layouts found on small trees made here, label conventions, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ovss.data import available_datasets, get_dataset, open_dataset, read_label
from ovss.data.datasets import Layout, PanopticFiles, id2rgb, panoptic_to_semantic, read_panoptic_png, rgb2id
from ovss.errors import DatasetError, UnknownNameError


def panoptic_categories(name: str) -> list[dict]:
    """The panoptic JSON ``categories`` of ``name`` (COCO's ids 1..200 with gaps, 80 things
    first; ADE20K's ids 0..149 with 100 things, here every class whose index is not a multiple of 3)."""
    from ovss.vocabulary import packaged_class_file

    spec = get_dataset(name)
    if name == "coco_panoptic":
        lines = packaged_class_file("fc_clip", "coco_panoptic_with_prompt_eng.txt").read_text().splitlines()
        ids = [int(line.split(":")[0]) for line in lines if line.strip() and not line.endswith("invalid_class_id")]
        things = set(range(80))
    else:
        ids, things = list(range(spec.num_classes)), {k for k in range(spec.num_classes) if k % 3}
    return [{"id": c, "name": n, "isthing": int(k in things)} for k, (c, n) in enumerate(zip(ids, spec.classes))]


def random_panoptic(rng: np.random.Generator, size: tuple[int, int], categories: list[dict], n: int = 6,
                    crowd: bool = True) -> tuple[np.ndarray, list[dict]]:
    """Overlapping rectangles with large random segment ids (all three RGB channels used), a
    void rectangle and optionally one crowd segment; ``segments_info`` with dataset category
    ids and the pixel areas."""
    h, w = size
    ids = np.zeros(size, dtype=np.int64)
    seg_ids = np.unique(rng.integers(1, 256 ** 3, size=n))
    for sid in seg_ids:
        y0, x0 = int(rng.integers(0, h - 2)), int(rng.integers(0, w - 2))
        ids[y0:y0 + int(rng.integers(2, h)), x0:x0 + int(rng.integers(2, w))] = sid
    ids[: h // 5, : w // 4] = 0  # void
    present = [int(s) for s in seg_ids if (ids == s).any()]
    segments = [{"id": sid, "category_id": int(categories[int(rng.integers(0, len(categories)))]["id"]),
                 "iscrowd": int(crowd and k == 0), "area": int((ids == sid).sum())}
                for k, sid in enumerate(present)]
    return ids, segments


def write_panoptic(root: Path, files: PanopticFiles, stems: list[str], name: str, size: tuple[int, int],
                   seed: int = 0, maps: dict[str, tuple[np.ndarray, list[dict]]] | None = None
                   ) -> dict[str, tuple[np.ndarray, list[dict]]]:
    """Write COCO-panoptic ground truth of ``stems`` (random, or the given ``maps`` with dataset
    category ids): the RGB PNGs and the JSON; return stem -> (ids, segments_info)."""
    rng = np.random.default_rng(seed)
    categories = panoptic_categories(name)
    (root / files.png_dir).mkdir(parents=True, exist_ok=True)
    out, annotations, images = {}, [], []
    for k, stem in enumerate(stems):
        ids, segments = (maps or {}).get(stem) or random_panoptic(rng, size, categories)
        Image.fromarray(id2rgb(ids)).save(root / files.png_dir / f"{stem}.png")
        image_id = k + 1 if name == "coco_panoptic" else stem  # COCO: integer ids; Mask2Former's ADE: the stem
        annotations.append({"image_id": image_id, "file_name": f"{stem}.png", "segments_info": segments})
        images.append({"id": image_id, "file_name": f"{stem}.jpg", "height": ids.shape[0], "width": ids.shape[1]})
        out[stem] = (ids, segments)
    json_path = root / files.json_file
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return out


def contiguous_segments(name: str, segments: list[dict]) -> list[dict]:
    """``segments_info`` with the dataset's category ids mapped to class indices (sorted ids)."""
    to_k = {c["id"]: k for k, c in enumerate(sorted(panoptic_categories(name), key=lambda c: c["id"]))}
    return [{**s, "category_id": to_k[s["category_id"]]} for s in segments]


def build(root: Path, name: str, layout: Layout, n: int = 3, seed: int = 0, size: tuple[int, int] = (12, 16),
          extra_images: int = 0, panoptic: bool | None = None) -> list[tuple[str, np.ndarray]]:
    """Write ``n`` image/label pairs of ``name`` in ``layout`` under ``root``; return (id, stored label).

    With panoptic ground truth (required by the layout, or ``panoptic=True``) the semantic labels
    are those of the panoptic annotation, as Mask2Former's converter writes them."""
    spec = get_dataset(name)
    rng = np.random.default_rng(seed)
    ids = [f"city{k % 2}/img_{k:03d}" if layout.recursive else f"img_{k:03d}" for k in range(n + extra_images)]
    with_pan = layout.panoptic is not None and (layout.panoptic.required if panoptic is None else panoptic)
    pan = write_panoptic(root, layout.panoptic, ids[:n], name, size, seed) if with_pan else {}
    out = []
    for k, i in enumerate(ids):
        img = root / layout.image_dir / f"{i}{layout.image_suffix}"
        img.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(img)
        if k >= n:
            continue  # an image outside the split / without label
        if with_pan:
            lab = panoptic_to_semantic(pan[i][0], contiguous_segments(name, pan[i][1]), spec.ignore_index)
            if layout.reduce_zero_label:  # stored as mmseg's 1..150 with 0 = other
                lab = np.where(lab == spec.ignore_index, 0, lab + 1)
        else:
            top = spec.num_classes + (1 if layout.reduce_zero_label else 0)
            lab = rng.integers(0, top, size=size)
            lab[0, :3] = spec.ignore_index
        if not layout.labels_from_panoptic:
            lab_path = root / layout.label_dir / f"{i}{layout.label_suffix}"
            lab_path.parent.mkdir(parents=True, exist_ok=True)
            dtype = np.uint16 if spec.label_dtype == "uint16" else np.uint8
            Image.fromarray(lab.astype(dtype)).save(lab_path)
        out.append((i, lab))
    if layout.split_file:
        split = root / layout.split_file
        split.parent.mkdir(parents=True, exist_ok=True)
        split.write_text("\n".join(i for i, _ in out) + "\n")
    return out


ALL_LAYOUTS = [(name, lay.name) for name in available_datasets() for lay in get_dataset(name).layouts]


@pytest.mark.parametrize("name,layout_name", ALL_LAYOUTS)
def test_every_layout_is_found_and_read(tmp_path: Path, name: str, layout_name: str) -> None:
    spec = get_dataset(name)
    layout = spec.layout(layout_name)
    written = build(tmp_path, name, layout, extra_images=1 if layout.index == "split" else 0)
    ds = open_dataset(name, tmp_path, layout=layout_name)
    assert ds.layout == layout and len(ds) == 3
    assert [s.id for s in ds.samples] == sorted(i for i, _ in written)
    stored = dict(written)
    for k, sample in enumerate(ds.samples):
        lab = ds.read_label(k)
        raw = stored[sample.id]
        assert lab.dtype == np.int64 and lab.shape == raw.shape
        expect = raw.copy()
        if layout.reduce_zero_label:
            expect = np.where((raw == 0) | (raw == spec.ignore_index), spec.ignore_index, raw - 1)
        assert np.array_equal(lab, expect)
        assert set(np.unique(lab)) <= set(range(spec.num_classes)) | {spec.ignore_index}
        assert ds.read_image(k).shape == (12, 16, 3)
    assert ds.describe()["layout"] == layout_name


def test_layout_detection_order(tmp_path: Path) -> None:
    spec = get_dataset("ade20k")
    build(tmp_path, "ade20k", spec.layout("detectron2"))
    assert open_dataset("ade20k", tmp_path).layout.name == "detectron2"
    build(tmp_path, "ade20k", spec.layout("mmseg"))
    assert open_dataset("ade20k", tmp_path).layout.name == "mmseg"  # first listed wins
    assert open_dataset("ade20k", tmp_path, layout="detectron2").layout.name == "detectron2"


def test_reduce_zero_label_like_mmseg(tmp_path: Path) -> None:
    p = tmp_path / "l.png"
    Image.fromarray(np.array([[0, 1, 2, 150, 255]], dtype=np.uint8)).save(p)
    assert read_label(p, reduce_zero_label=True).tolist() == [[255, 0, 1, 149, 255]]
    assert read_label(p).tolist() == [[0, 1, 2, 150, 255]]


def test_palette_png_reads_indices(tmp_path: Path) -> None:
    # VOC labels are palette PNGs: the indices are the labels, not the colours
    im = Image.fromarray(np.array([[0, 15, 255]], dtype=np.uint8), mode="P")
    pal = [0] * 768
    pal[15 * 3:15 * 3 + 3] = [192, 128, 128]
    pal[255 * 3:255 * 3 + 3] = [224, 224, 192]
    im.putpalette(pal)
    im.save(tmp_path / "voc.png")
    assert read_label(tmp_path / "voc.png").tolist() == [[0, 15, 255]]


def test_tiff_16bit_labels(tmp_path: Path) -> None:
    lab = np.array([[0, 300, 846], [65535, 5, 65535]], dtype=np.uint16)
    Image.fromarray(lab).save(tmp_path / "a.tif")
    out = read_label(tmp_path / "a.tif", ignore_index=65535)
    assert out.tolist() == lab.astype(np.int64).tolist()
    import tifffile

    tifffile.imwrite(tmp_path / "b.tif", lab, compression="zlib")
    assert read_label(tmp_path / "b.tif").tolist() == lab.astype(np.int64).tolist()


def test_class_lists_and_splits() -> None:
    counts = {"voc21": 21, "voc20": 20, "context60": 60, "context59": 59, "coco_object": 81, "coco_stuff": 171,
              "cityscapes": 19, "ade20k": 150, "ade847": 847, "context459": 459, "coco_panoptic": 133,
              "mapillary_vistas": 65}
    assert {n: get_dataset(n).num_classes for n in available_datasets()} == counts
    voc20 = get_dataset("voc20")
    assert [voc20.classes[i] for i in voc20.unseen_indices] == ["pottedplant", "sheep", "sofa", "train", "tvmonitor"]
    assert voc20.unseen_indices == [15, 16, 17, 18, 19]
    stuff = get_dataset("coco_stuff")
    assert len(stuff.unseen_indices) == 15 and stuff.num_classes - 15 == 156
    assert stuff.unseen_indices == [19, 23, 28, 29, 36, 51, 76, 88, 94, 112, 133, 136, 137, 157, 160]
    # ZegFormer's ADE20K-Full frequency split: 275 rare classes unseen, 572 frequent + common seen
    ade = get_dataset("ade847")
    assert len(ade.unseen_indices) == 275 and len(set(ade.unseen_indices)) == 275
    assert ade.unseen_indices[:5] == [166, 176, 193, 208, 264] and max(ade.unseen_indices) < 847
    assert "wall" not in [ade.classes[i] for i in ade.unseen_indices]
    assert get_dataset("voc21").classes[0] == "background" and get_dataset("voc21").background == 0
    assert get_dataset("coco_object").classes[:2] == ("background", "person")
    assert get_dataset("ade20k").classes[:3] == ("wall", "building", "sky")
    assert get_dataset("ade847").ignore_index == 65535 and get_dataset("context459").ignore_index == 65535
    assert get_dataset("cityscapes").classes[6] == "traffic light"
    pan = get_dataset("coco_panoptic").classes
    assert pan[:3] == ("person", "bicycle", "car") and pan[79] == "toothbrush" and pan[80] == "banner"
    assert pan[-1] == "rug" and len(set(pan)) == 133


def test_unknown_names() -> None:
    with pytest.raises(UnknownNameError, match="Did you mean 'voc21'"):
        get_dataset("voc12")
    with pytest.raises(UnknownNameError, match="no layout 'd2'"):
        get_dataset("ade20k").layout("d2")


def test_error_root_missing(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as e:
        open_dataset("voc21", tmp_path / "nope")
    msg = str(e.value)
    assert "does not exist" in msg and "VOCdevkit/VOC2012" in msg and "SegmentationClass/<id>.png" in msg
    assert "\n" not in msg


def test_error_missing_label_folder(tmp_path: Path) -> None:
    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "ImageSets/Segmentation").mkdir(parents=True)
    (tmp_path / "ImageSets/Segmentation/val.txt").write_text("a\n")
    with pytest.raises(DatasetError) as e:
        open_dataset("voc20", tmp_path)
    msg = str(e.value)
    assert msg.startswith("voc20: missing SegmentationClass/ in ") and "ImageSets/Segmentation/val.txt" in msg
    assert "other accepted layouts" in msg and "annotations_pascal20/validation" in msg


def test_error_half_prepared(tmp_path: Path) -> None:
    spec = get_dataset("voc21")
    build(tmp_path, "voc21", spec.layouts[0], n=3)
    (tmp_path / "SegmentationClass" / "img_001.png").unlink()
    with pytest.raises(DatasetError, match=r"1 of the 3 images listed in ImageSets/Segmentation/val.txt have no "
                                           r"label file .*first missing: img_001.png"):
        open_dataset("voc21", tmp_path)
    (tmp_path / "JPEGImages" / "img_002.jpg").unlink()
    with pytest.raises(DatasetError, match="have no image file .*img_002.jpg"):
        open_dataset("voc21", tmp_path)


def test_error_images_without_labels_and_empty(tmp_path: Path) -> None:
    lay = get_dataset("cityscapes").layouts[0]
    build(tmp_path, "cityscapes", lay, n=2, extra_images=1)
    with pytest.raises(DatasetError, match="1 of the 3 images found in leftImg8bit/val have no label file"):
        open_dataset("cityscapes", tmp_path)
    empty = tmp_path / "ade"
    (empty / "images/validation").mkdir(parents=True)
    (empty / "annotations/validation").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"no '\*\.jpg' images in .*images/validation"):
        open_dataset("ade20k", empty)
    (empty / "ImageSets/SegmentationContext").mkdir(parents=True)
    with pytest.raises(DatasetError, match="missing JPEGImages/, SegmentationClassContext/, "
                                           "ImageSets/SegmentationContext/val.txt"):
        open_dataset("context60", empty)


def test_error_rgb_label(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(DatasetError, match="3 channels"):
        read_label(tmp_path / "rgb.png")
    with pytest.raises(DatasetError, match="not found"):
        read_label(tmp_path / "none.png")
    (tmp_path / "bad.tif").write_bytes(b"not a tiff")
    with pytest.raises(DatasetError, match="cannot read label file"):
        read_label(tmp_path / "bad.tif")


def test_panoptic_png_ids_round_trip(tmp_path: Path) -> None:
    ids = np.array([[0, 1, 255, 256], [65535, 65536, 256 ** 3 - 1, 12345678]], dtype=np.int64)
    assert np.array_equal(rgb2id(id2rgb(ids)), ids)
    assert id2rgb(ids)[0, 3].tolist() == [0, 1, 0]  # R + 256 G + 256^2 B
    Image.fromarray(id2rgb(ids)).save(tmp_path / "p.png")
    assert np.array_equal(read_panoptic_png(tmp_path / "p.png"), ids)
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "grey.png")
    with pytest.raises(DatasetError, match="expected an RGB image"):
        read_panoptic_png(tmp_path / "grey.png")


def test_coco_panoptic_labels_made_from_panoptic_equal_prepared(tmp_path: Path) -> None:
    spec = get_dataset("coco_panoptic")
    written = dict(build(tmp_path, "coco_panoptic", spec.layout("detectron2"), n=3, size=(20, 24)))
    prepared = open_dataset("coco_panoptic", tmp_path)
    assert prepared.layout.name == "detectron2" and prepared.panoptic is not None
    assert sum(prepared.panoptic.isthing) == 80 and prepared.panoptic.category_ids[80] == 92
    made = open_dataset("coco_panoptic", tmp_path, layout="panoptic")  # panoptic_semseg_val2017 ignored
    assert made.layout.labels_from_panoptic and made.describe()["labels_from_panoptic"]
    for k, sample in enumerate(prepared.samples):
        assert np.array_equal(prepared.read_label(k), made.read_label(k))
        assert np.array_equal(made.read_label(k), written[sample.id])
        ids, segments = prepared.read_panoptic(k)
        lab = made.read_label(k)
        assert (lab[ids == 0] == 255).all()
        for seg in segments:  # crowd segments keep their class, as Mask2Former's converter writes them
            assert (lab[ids == seg["id"]] == seg["category_id"]).all() and 0 <= seg["category_id"] < 133
        assert any(seg["iscrowd"] for seg in segments)
    (tmp_path / "panoptic_semseg_val2017").rename(tmp_path / "elsewhere")
    assert open_dataset("coco_panoptic", tmp_path).layout.name == "panoptic"  # detected, not an error


def test_ade20k_panoptic_is_optional(tmp_path: Path) -> None:
    spec = get_dataset("ade20k")
    build(tmp_path / "plain", "ade20k", spec.layout("mmseg"))
    assert open_dataset("ade20k", tmp_path / "plain").panoptic is None
    written = dict(build(tmp_path / "pan", "ade20k", spec.layout("detectron2"), panoptic=True))
    ds = open_dataset("ade20k", tmp_path / "pan")
    assert ds.panoptic is not None and ds.describe()["num_things"] == 100
    assert ds.panoptic.category_ids == tuple(range(150))
    for k, sample in enumerate(ds.samples):
        assert np.array_equal(ds.read_label(k), written[sample.id])
        assert ds.samples[k].panoptic == tmp_path / "pan" / "ade20k_panoptic_val" / f"{sample.id}.png"
