"""The panoptic formats of Cityscapes (cityscapesscripts ``createPanopticImgs``) and Mapillary Vistas v1.2:
found, half-prepared errors, and PQ through ``ovss eval`` equal to panopticapi's ``pq_compute`` arithmetic
(the independent re-implementation of tests/test_panoptic.py), single process and torchrun x 2."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from ovss.data.datasets import CITYSCAPES_LABEL_IDS, get_dataset, id2rgb, open_dataset
from ovss.errors import DatasetError
from ovss.evaluation import evaluate
from ovss.evaluation.panoptic import compute_pq
from ovss.segmenter import Capabilities
from test_eval import run_torchrun
from test_instance import PALETTE, _paint
from test_panoptic import reference_pq


class PanopticPaint:
    """Stand-in panoptic segmenter for painted images: one segment per palette colour present
    (class ``things[colour]``), one stuff segment for the blue background (class ``stuff``)."""

    capabilities = Capabilities(panoptic=True)

    def __init__(self, num_classes: int = 19, panoptic: bool = False, dataset: str | None = None,
                 things: tuple[int, ...] = (11, 12, 13, 14, 15, 16, 17, 18, 13), stuff: int = 0,
                 **kwargs: object) -> None:
        self.num_classes, self.panoptic, self.things, self.stuff = num_classes, panoptic, things, stuff

    def segments(self, image: np.ndarray) -> tuple[np.ndarray, list[dict]]:
        ids = np.zeros(image.shape[:2], dtype=np.int64)
        segs = []
        for j, colour in enumerate(PALETTE):
            m = np.abs(image.astype(np.int64) - np.array(colour)).sum(-1) < 60
            if m.any():
                ids[m] = j + 1
                segs.append({"id": j + 1, "category_id": self.things[j], "isthing": True})
        bg = image[..., 2] > 180
        ids[bg] = 100
        segs.append({"id": 100, "category_id": self.stuff, "isthing": False})
        return ids, segs

    def predict(self, image: np.ndarray, image_id: str | None = None) -> SimpleNamespace:
        ids, segs = self.segments(image)
        labels = np.zeros(ids.shape, dtype=np.int64)
        for s in segs:
            labels[ids == s["id"]] = s["category_id"]
        extras = {"panoptic": {"panoptic_seg": torch.from_numpy(ids).int(), "segments": segs}} if self.panoptic else {}
        return SimpleNamespace(labels=torch.from_numpy(labels), classes=[str(c) for c in range(self.num_classes)],
                               extras=extras)


def _gt_segments(objects: list, size: tuple[int, int], thing_of: dict[int, int], stuff: int, crowd_first: bool,
                 label_id: tuple[int, ...]) -> tuple[np.ndarray, list[dict]]:
    """Ground truth of a painted image, ids as createPanopticImgs makes them: things
    ``label id * 1000 + instance``, stuff (and crowd things) ``label id``; contiguous classes given."""
    ids = np.zeros(size, dtype=np.int64)
    segs: list[dict] = []
    covered = np.zeros(size, dtype=bool)
    for n, (colour, mask) in enumerate(objects):
        cls = thing_of[colour]
        crowd = crowd_first and n == 0
        sid = label_id[cls] if crowd else label_id[cls] * 1000 + n + 1
        ids[mask] = sid
        covered |= mask
        segs.append({"id": sid, "category_id": cls, "iscrowd": int(crowd)})
    bg = ~covered
    bg[: size[0] // 6, : size[1] // 5] = False  # a void patch
    ids[bg] = label_id[stuff]
    segs.append({"id": label_id[stuff], "category_id": stuff, "iscrowd": 0})
    return ids, [{**s, "area": int((ids == s["id"]).sum())} for s in segs if (ids == s["id"]).any()]


def cityscapes_panoptic_split(root: Path, n: int = 4, seed: int = 0) -> list[tuple[np.ndarray, list[dict]]]:
    """A Cityscapes val split (leftImg8bit, labelTrainIds) with panoptic ground truth as
    createPanopticImgs writes it (label-id category ids, ``<stem>_gtFine_panoptic.png``, image_id the stem)."""
    spec = get_dataset("cityscapes")
    rng = np.random.default_rng(seed)
    thing_of = {j: 11 + j % 8 for j in range(len(PALETTE))}
    pan_dir = root / "gtFine/cityscapes_panoptic_val"
    pan_dir.mkdir(parents=True)
    annotations, out = [], []
    for k in range(n):
        city = f"city{k % 2}"
        stem = f"{city}_{k:06d}_000019"
        img, objects = _paint(rng, (48, 64), 5)
        (root / "leftImg8bit/val" / city).mkdir(parents=True, exist_ok=True)
        (root / "gtFine/val" / city).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / "leftImg8bit/val" / city / f"{stem}_leftImg8bit.png")
        ids, segs = _gt_segments(objects, (48, 64), thing_of, 0, crowd_first=k % 2 == 1,
                                 label_id=CITYSCAPES_LABEL_IDS)  # stuff: road (0)
        labels = np.full(ids.shape, 255, dtype=np.uint8)
        for s in segs:
            labels[ids == s["id"]] = s["category_id"]
        Image.fromarray(labels).save(root / "gtFine/val" / city / f"{stem}_gtFine_labelTrainIds.png")
        Image.fromarray(id2rgb(ids)).save(pan_dir / f"{stem}_gtFine_panoptic.png")
        annotations.append({"image_id": stem, "file_name": f"{stem}_gtFine_panoptic.png",
                            "segments_info": [{**s, "category_id": CITYSCAPES_LABEL_IDS[s["category_id"]]}
                                              for s in segs]})
        out.append((ids, segs))
    cats = [{"id": CITYSCAPES_LABEL_IDS[t], "name": name, "isthing": int(t >= 11)} for t, name in enumerate(spec.classes)]
    (root / "gtFine/cityscapes_panoptic_val.json").write_text(json.dumps({"annotations": annotations,
                                                                          "categories": cats}))
    return out


def mapillary_split(root: Path, n: int = 3, seed: int = 1) -> list[tuple[np.ndarray, list[dict]]]:
    """A Mapillary Vistas v1.2 validation split: images, labels (0..64, 65 unlabeled) and
    ``validation/panoptic/<id>.png`` + ``panoptic_2018.json`` (category ids 1..65)."""
    spec = get_dataset("mapillary_vistas")
    rng = np.random.default_rng(seed)
    things = [k for k, name in enumerate(spec.classes) if name in ("Person", "Car", "Bicycle", "Bus", "Truck",
                                                                     "Bench", "Pole", "Trash Can", "Boat")]
    thing_of = {j: things[j] for j in range(len(PALETTE))}
    for d in ("images", "labels", "panoptic"):
        (root / "validation" / d).mkdir(parents=True)
    annotations, out = [], []
    for k in range(n):
        stem = f"img{k:04d}"
        img, objects = _paint(rng, (48, 64), 5)
        Image.fromarray(img).save(root / "validation/images" / f"{stem}.jpg", quality=95)
        from ovss.imageio import load_image

        img = load_image(root / "validation/images" / f"{stem}.jpg")
        ids, segs = _gt_segments(objects, (48, 64), thing_of, 27, crowd_first=False,
                                 label_id=tuple(range(1, 66)))  # stuff: Sky (27)
        labels = np.full(ids.shape, 65, dtype=np.uint8)
        for s in segs:
            labels[ids == s["id"]] = s["category_id"]
        Image.fromarray(labels).save(root / "validation/labels" / f"{stem}.png")
        Image.fromarray(id2rgb(ids)).save(root / "validation/panoptic" / f"{stem}.png")
        annotations.append({"image_id": stem, "file_name": f"{stem}.png",
                            "segments_info": [{**s, "category_id": s["category_id"] + 1} for s in segs]})
        out.append((ids, segs))
    thing_set = set(thing_of.values())
    cats = [{"id": k + 1, "name": name, "isthing": int(k in thing_set)} for k, name in enumerate(spec.classes)]
    (root / "validation/panoptic/panoptic_2018.json").write_text(json.dumps({"annotations": annotations,
                                                                             "categories": cats}))
    return out


def _check_pq(ds, fake) -> None:
    res = evaluate(ds, segmenter=fake, progress=False, name="paint")
    total = sum(reference_pq(*ds.read_panoptic(k), *fake.segments(ds.read_image(k)), ds.num_classes)
                for k in range(len(ds)))
    assert np.array_equal(res.pq_stats[:, :3], total[:, :3]) and np.allclose(res.pq_stats[:, 3], total[:, 3],
                                                                                rtol=0, atol=1e-12)
    assert total[:, 0].sum() > 3 and total[:, 1].sum() > 0 and total[:, 2].sum() > 0
    expect = compute_pq(total, ds.panoptic.isthing)
    for key, v in expect.summary().items():
        assert res.summary()[key] == pytest.approx(v, abs=1e-9), key
    return res


def test_cityscapes_panoptic_pq(tmp_path: Path) -> None:
    cityscapes_panoptic_split(tmp_path / "cs")
    ds = open_dataset("cityscapes", tmp_path / "cs")
    assert ds.panoptic is not None and ds.panoptic.category_ids == CITYSCAPES_LABEL_IDS
    assert sum(ds.panoptic.isthing) == 8 and len(ds) == 4
    ids, segs = ds.read_panoptic(0)
    assert all(0 <= s["category_id"] < 19 for s in segs) and ds.samples[0].panoptic.name.endswith("_gtFine_panoptic.png")
    res = _check_pq(ds, PanopticPaint(panoptic=True))
    assert res.panoptic.PQ_th > 0 and res.panoptic.PQ_st > 0 and res.panoptic.n == 9  # 8 thing classes and road
    # torchrun x 2 gives the same statistics
    setup = ("from test_dataset_formats import PanopticPaint\n"
             "ovss.registry.method_class = lambda name: PanopticPaint\n"
             "ovss.registry.create_segmenter = lambda method, **kw: PanopticPaint(19, **kw)")
    run_torchrun(tmp_path, ["--dataset", "cityscapes", "--data-root", str(tmp_path / "cs"), "--method", "fake",
                            "--device", "cpu", "-o", str(tmp_path / "out"), "--no-progress", "--no-table"], setup=setup)
    stats = np.load(tmp_path / "out" / "cityscapes_fake_pq.npy")
    assert np.array_equal(stats[:, :3], res.pq_stats[:, :3])
    report = json.loads((tmp_path / "out" / "cityscapes_fake.json").read_text())
    assert report["config"]["world_size"] == 2 and report["metrics"]["PQ"] == pytest.approx(100 * res.panoptic.PQ)


def test_mapillary_vistas_pq_and_layout(tmp_path: Path) -> None:
    mapillary_split(tmp_path / "mv")
    ds = open_dataset("mapillary_vistas", tmp_path / "mv")
    assert ds.layout.name == "mask2former" and ds.ignore_index == 65 and ds.num_classes == 65
    assert ds.panoptic is not None and ds.panoptic.category_ids == tuple(range(1, 66))
    lab = ds.read_label(0)
    assert set(np.unique(lab)) <= set(range(66)) and (lab == 65).any()  # the void patch is unlabeled
    spec = get_dataset("mapillary_vistas")
    things = tuple(spec.classes.index(n) for n in ("Person", "Car", "Bicycle", "Bus", "Truck", "Bench", "Pole",
                                                   "Trash Can", "Boat"))
    _check_pq(ds, PanopticPaint(65, panoptic=True, things=things, stuff=27))


def test_half_prepared_cityscapes_and_mapillary(tmp_path: Path) -> None:
    cityscapes_panoptic_split(tmp_path / "cs", n=2)
    (tmp_path / "cs/gtFine/cityscapes_panoptic_val.json").unlink()
    with pytest.raises(DatasetError, match="half-prepared: gtFine/cityscapes_panoptic_val/ is there but "
                                           "gtFine/cityscapes_panoptic_val.json is missing"):
        open_dataset("cityscapes", tmp_path / "cs")
    mapillary_split(tmp_path / "mv", n=2)
    (tmp_path / "mv/validation/labels/img0001.png").unlink()
    with pytest.raises(DatasetError, match="have no label file"):
        open_dataset("mapillary_vistas", tmp_path / "mv")
    (tmp_path / "mv/validation/labels").rename(tmp_path / "mv/validation/labelz")
    with pytest.raises(DatasetError, match="missing validation/labels/.*Mapillary Vistas v1.2"):
        open_dataset("mapillary_vistas", tmp_path / "mv")


def test_ade847_zegformer_layout_and_split(tmp_path: Path) -> None:
    root = tmp_path / "ADE20K_2021_17_01"
    for d in ("images_detectron2_freq/validation", "annotations_detectron2_freq/val_all"):
        (root / d).mkdir(parents=True)
    lab = np.array([[0, 166, 814], [65535, 208, 797]], dtype=np.uint16)  # 166, 208: rare (unseen); 814, 797: seen
    for k in range(2):
        Image.fromarray(np.zeros((2, 3, 3), dtype=np.uint8)).save(root / f"images_detectron2_freq/validation/ADE_val_{k}.jpg")
        Image.fromarray(lab).save(root / f"annotations_detectron2_freq/val_all/ADE_val_{k}.tif")
    ds = open_dataset("ade847", root)
    assert ds.layout.name == "zegformer" and len(ds) == 2
    unseen = set(ds.spec.unseen_indices)
    assert {166, 208, 768} <= unseen and not {0, 797, 814} & unseen  # 208 and 768 are both "control panel"
    pred = tmp_path / "pred"
    pred.mkdir()
    for k in range(2):
        Image.fromarray(lab.astype(np.uint16)).save(pred / f"ADE_val_{k}.png")
    res = evaluate(ds, predictions=pred, progress=False)
    s = res.summary()
    assert s["mIoU"] == 100 and s["mIoU_unseen"] == 100 and s["mIoU_seen"] == 100 and s["hIoU"] == 100


def test_label_short_side_clip_diy_protocol(tmp_path: Path) -> None:
    import cv2
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    from ovss.data.datasets import get_dataset
    from ovss.errors import InputError
    from ovss.evaluation.metrics import confusion_matrix
    from test_datasets import build

    written = build(tmp_path / "voc", "voc21", get_dataset("voc21").layouts[0], n=3, size=(30, 47))
    rng = np.random.default_rng(4)
    (tmp_path / "pred").mkdir()
    preds = {}
    for i, _ in written:
        preds[i] = rng.integers(0, 21, size=(30, 47)).astype(np.uint8)
        Image.fromarray(preds[i]).save(tmp_path / "pred" / f"{i}.png")
    ds = open_dataset("voc21", tmp_path / "voc")
    res = evaluate(ds, predictions=tmp_path / "pred", progress=False, label_short_side=20)
    expect = np.zeros((21, 21), dtype=np.int64)
    for s in ds.samples:
        with Image.open(s.label) as im:  # CLIP-DIY: torchvision resize of the PIL mask, short side 20
            gt = np.asarray(TF.resize(im, 20, interpolation=InterpolationMode.NEAREST)).astype(np.int64)
        assert gt.shape == (20, 31)  # int(20 * 47 / 30)
        pred = cv2.resize(preds[s.id], gt.shape[::-1], interpolation=cv2.INTER_NEAREST)
        expect += confusion_matrix(pred, gt, 21, 255)
    assert np.array_equal(res.matrix, expect) and res.config["label_short_side"] == 20
    plain = evaluate(ds, predictions=tmp_path / "pred", progress=False)
    assert plain.matrix.sum() > res.matrix.sum()  # the original resolution scores more pixels
    with pytest.raises(InputError, match="positive"):
        evaluate(ds, predictions=tmp_path / "pred", progress=False, label_short_side=0)


def test_label_short_side_builds_clip_diy_with_it(tmp_path: Path) -> None:
    """``ovss eval --method clip_diy --label-short-side N``: CLIP-DIY predicts at the resized ground
    truth's size itself (its official path: 256 x 256 nearest-resized to that size once)."""
    parity = Path(__file__).resolve().parents[2] / "shared" / "parity"
    diy = parity / "clip_diy"
    if not (diy / "tiny_found_decoder.safetensors").is_file():
        pytest.skip("CLIP-DIY parity fixtures not found")
    import ovss
    from ovss.evaluation.metrics import confusion_matrix
    from test_datasets import build

    opts = dict(model=str(parity / "tiny_clip_b16.json"), pretrained=str(parity / "tiny_clip_b16.safetensors"),
                saliency_model=str(diy / "tiny_dino_s8.json"), saliency_pretrained=str(diy / "tiny_dino_s8.safetensors"),
                saliency_head=str(diy / "tiny_found_decoder.safetensors"))
    build(tmp_path / "voc", "voc21", get_dataset("voc21").layouts[0], n=1, size=(40, 56))
    ds = open_dataset("voc21", tmp_path / "voc")
    res = evaluate(ds, method="clip_diy", segmenter_options=opts, device="cpu", progress=False, label_short_side=24)
    assert res.config["segmenter_options"] and res.config["settings"]["label_short_side"] == 24
    seg = ovss.create_segmenter("clip_diy", dataset="voc21", label_short_side=24, **opts)
    from ovss.evaluation.runner import resize_to_short_side

    gt = resize_to_short_side(ds.read_label(0), 24)
    pred = seg.predict(ds.read_image(0)).labels.numpy()
    assert pred.shape == gt.shape == (24, 33)
    assert np.array_equal(res.matrix, confusion_matrix(pred, gt, 21, 255))
