"""Instance segmentation and mask AP: Mask2Former/FC-CLIP's instance rule (by hand and against the
official ``instance_inference`` on the tiny FC-CLIP), COCO RLE, COCOeval mask AP by hand and equal to
pycocotools run directly, through ``ovss eval`` on COCO- and Cityscapes-format data, resumed, re-scored
from saved predictions and under torchrun x 2 (Gloo)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from ovss.data.datasets import CITYSCAPES_LABEL_IDS, get_dataset, open_dataset
from ovss.errors import DatasetError, InputError
from ovss.evaluation import evaluate
from ovss.evaluation.instance import decode_mask, encode_mask, evaluate_detections, to_detections
from ovss.models.mask_inference import Instances, instance_inference
from ovss.segmenter import Capabilities
from test_datasets import build, panoptic_categories
from test_eval import run_torchrun

HERE = Path(__file__).resolve().parent
FIXTURE = HERE / "fixtures" / "fc_clip_instance"
FC = HERE.parents[1] / "shared" / "parity" / "fc_clip"


# ---- the instance rule ---------------------------------------------------------------------------


def test_instance_inference_by_hand() -> None:
    # 2 queries, 3 classes + void; class probabilities chosen directly (log), masks 2x3
    probs = torch.tensor([[0.5, 0.3, 0.1, 0.1], [0.05, 0.15, 0.6, 0.2]])
    logits = torch.tensor([[[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]], [[-1.0, -1.0, 1.0], [1.0, -3.0, -0.5]]])
    out = instance_inference(probs.log(), logits, topk=3)
    # top 3 of the 6 (query, class) probabilities: (1, 2) 0.6, (0, 0) 0.5, (0, 1) 0.3
    assert out.query.tolist() == [1, 0, 0] and out.labels.tolist() == [2, 0, 1]
    sig = torch.sigmoid(logits)
    m0 = (sig[0] * (logits[0] > 0)).sum() / ((logits[0] > 0).sum() + 1e-6)  # logit 0.0 is not in the mask
    m1 = (sig[1] * (logits[1] > 0)).sum() / ((logits[1] > 0).sum() + 1e-6)
    expect = torch.stack([0.6 * m1, 0.5 * m0, 0.3 * m0])
    assert torch.allclose(out.scores, expect, rtol=1e-6, atol=0)
    assert out.masks.dtype == torch.bool and out.masks[1].tolist() == [[True, False, True], [False, True, False]]
    assert out.query_masks.shape == (2, 2, 3) and out.mask_index.tolist() == [1, 0, 0]  # one mask per query
    # the thing filter comes after the top-k: class 2 is not a thing, so only 2 instances remain
    things = instance_inference(probs.log(), logits, topk=3, things=[0, 1])
    assert things.labels.tolist() == [0, 1] and len(things) == 2
    # top-k larger than Q x K takes every pair; an empty mask scores 0
    empty = instance_inference(probs.log(), torch.full((2, 2, 3), -1.0), topk=100)
    assert len(empty) == 6 and float(empty.scores.abs().max()) == 0.0
    rows = list(out)
    assert rows[0]["label"] == 2 and rows[0]["query"] == 1 and rows[0]["mask"].shape == (2, 3)
    with pytest.raises(ValueError, match="same Q"):
        instance_inference(probs.log(), logits[:1])


def _fixture() -> tuple[dict, dict]:
    if not (FIXTURE / "fcclip_instance_ade150_astronaut.npz").is_file():
        pytest.skip("fc_clip_instance fixture missing")
    with np.load(FIXTURE / "fcclip_instance_ade150_astronaut.npz") as z:
        ref = {k: z[k] for k in z.files}
    return ref, json.loads((FIXTURE / "manifest.json").read_text())


def _sorted_instances(scores: np.ndarray, labels: np.ndarray, masks: np.ndarray) -> tuple:
    order = np.lexsort((labels, -scores))
    return scores[order], labels[order], masks[order]


def test_rle_round_trip_and_detections() -> None:
    rng = np.random.default_rng(0)
    mask = rng.random((7, 9)) > 0.5
    rle = encode_mask(mask)
    assert rle["size"] == [7, 9] and isinstance(rle["counts"], str)
    assert np.array_equal(decode_mask(rle), mask)
    inst = Instances.from_masks(torch.from_numpy(np.stack([mask, ~mask])), torch.tensor([0.9, 0.25]),
                                torch.tensor([2, 0]))
    dets = to_detections(inst, 42, [5, 7, 11])
    assert [(d["image_id"], d["category_id"], d["score"]) for d in dets] == [(42, 11, pytest.approx(0.9)),
                                                                            (42, 5, 0.25)]
    assert np.array_equal(decode_mask(dets[1]["segmentation"]), ~mask)
    with pytest.raises(InputError, match="outside the dataset's 2 classes"):
        to_detections(inst, 1, [5, 7])


# ---- COCOeval ---------------------------------------------------------------------------------------


def _coco_gt(anns: list[dict], size: tuple[int, int] = (40, 50), cats: tuple[int, ...] = (1, 2)) -> dict:
    return {"images": [{"id": 1, "file_name": "a.jpg", "height": size[0], "width": size[1]}],
            "categories": [{"id": c, "name": f"c{c}"} for c in cats],
            "annotations": [{"id": k + 1, "image_id": 1, "iscrowd": 0, **a} for k, a in enumerate(anns)]}


def _box_mask(size: tuple[int, int], y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros(size, dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def test_mask_ap_by_hand() -> None:
    from ovss.evaluation.instance import coco_from_dict

    size = (40, 50)
    gt = _box_mask(size, 0, 10, 0, 10)  # 100 px: a small object
    rle = encode_mask(gt)
    coco = coco_from_dict(_coco_gt([{"category_id": 1, "segmentation": rle, "area": 100, "bbox": [0, 0, 10, 10]}]))
    # a detection covering 60 of the 100 pixels: IoU 0.6, a match at the thresholds 0.5, 0.55, 0.6 of 0.5:0.95
    det = {"image_id": 1, "category_id": 1, "segmentation": encode_mask(_box_mask(size, 0, 6, 0, 10)), "score": 0.7}
    m = evaluate_detections(coco, [det], [1])
    assert m.AP == pytest.approx(0.3) and m.AP50 == pytest.approx(1.0) and m.AP75 == 0.0
    assert m.APs == pytest.approx(0.3)
    assert np.isnan(m.APm) and np.isnan(m.APl) and m.summary()["APm"] is None
    assert m.per_category() == {1: pytest.approx(30.0), 2: None}
    # a higher-scored false positive of the same class first halves the precision at full recall
    fp = {**det, "segmentation": encode_mask(_box_mask(size, 20, 30, 20, 30)), "score": 0.9}
    m2 = evaluate_detections(coco, [det, fp], [1])
    assert m2.AP50 == pytest.approx(0.5, abs=0.01) and m2.num_detections == 2
    # an image without detections still counts its ground truth; none at all: NaN
    assert np.isnan(evaluate_detections(coco, [], [1]).AP)
    with pytest.raises(InputError, match="category_id 9"):
        evaluate_detections(coco, [{**det, "category_id": 9}], [1])


# ---- synthetic COCO / Cityscapes instance data and a stand-in segmenter --------------------------

PALETTE = [(r, g, 0) for r in (40, 130, 220) for g in (40, 130, 220)]  # 9 colours: one object kind each


def _paint(rng: np.random.Generator, size: tuple[int, int], n: int) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """An image of ``n`` overlapping coloured rectangles on a blue background; returns it and the
    visible (colour index, mask) of every rectangle."""
    h, w = size
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[..., 2] = 230
    owner = np.full(size, -1)
    colours = []
    for k in range(n):
        c = int(rng.integers(0, len(PALETTE)))
        y0, x0 = int(rng.integers(0, h - 8)), int(rng.integers(0, w - 8))
        y1, x1 = y0 + int(rng.integers(6, h // 2)), x0 + int(rng.integers(6, w // 2))
        img[y0:y1, x0:x1] = PALETTE[c]
        owner[y0:y1, x0:x1] = k
        colours.append(c)
    return img, [(colours[k], owner == k) for k in range(n) if (owner == k).any()]


class InstanceColour:
    """Stand-in segmenter with instance output: one instance per palette colour found in the
    image (class ``classes[colour]``, score from the colour), plus a shifted duplicate of each with
    the next class and a lower score; labels = the instance classes."""

    capabilities = Capabilities(instance=True)  # what ovss eval reads to build it with instance=True

    def __init__(self, num_classes: int = 133, instance: bool = False, dataset: str | None = None,
                 classes: tuple[int, ...] = tuple(range(0, 80, 7)), **kwargs: object) -> None:
        self.num_classes, self.instance, self.classes, self.calls = num_classes, instance, classes, 0

    def instances(self, image: np.ndarray) -> Instances:
        masks, scores, labels = [], [], []
        for j, colour in enumerate(PALETTE):
            m = (np.abs(image.astype(np.int64) - np.array(colour)).sum(-1) < 60)
            if m.sum() < 4:
                continue
            masks += [m, np.roll(m, 2, axis=1)]
            scores += [0.3 + 0.07 * j, 0.2 + 0.03 * j]
            labels += [self.classes[j], self.classes[(j + 1) % len(PALETTE)]]
        hw = image.shape[:2]
        return Instances.from_masks(torch.from_numpy(np.array(masks).reshape(-1, *hw)),
                                    torch.tensor(scores, dtype=torch.float32), torch.tensor(labels, dtype=torch.int64))

    def predict(self, image: np.ndarray, image_id: str | None = None) -> SimpleNamespace:
        self.calls += 1
        inst = self.instances(image)
        labels = np.zeros(image.shape[:2], dtype=np.int64)
        for m, lab in zip(inst.masks.numpy(), inst.labels.numpy()):
            labels[m] = lab
        return SimpleNamespace(labels=torch.from_numpy(labels), classes=[str(c) for c in range(self.num_classes)],
                               extras={"instances": inst} if self.instance else {})

    def settings(self) -> dict:
        return {"method": "instance_colour"}


def _instances_json(images: list[tuple[str, np.ndarray, list]], class_to_cat: dict[int, int], cats: list[dict],
                    image_ids: list) -> dict:
    """COCO instances JSON of painted images: each visible rectangle an instance of its colour's
    class; every 4th one stored as a polygon of its bounding box outline instead of RLE when it is a
    full rectangle; the first instance of every second image crowd."""
    anns, imgs = [], []
    for k, ((file_name, img, objects), image_id) in enumerate(zip(images, image_ids)):
        imgs.append({"id": image_id, "file_name": file_name, "height": img.shape[0], "width": img.shape[1]})
        for j, (colour, mask) in enumerate(objects):
            ys, xs = np.nonzero(mask)
            box = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
            seg: object = encode_mask(mask)
            if j % 4 == 3 and mask.sum() == box[2] * box[3]:
                x0, y0, x1, y1 = box[0], box[1], box[0] + box[2], box[1] + box[3]
                seg = [[x0, y0, x1, y0, x1, y1, x0, y1]]
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": class_to_cat[colour],
                         "segmentation": seg, "area": int(mask.sum()), "bbox": box,
                         "iscrowd": int(j == 0 and k % 2 == 1)})
    return {"images": imgs, "annotations": anns, "categories": cats}


def coco_instance_split(root: Path, n: int = 5, seed: int = 0) -> InstanceColour:
    """A ``coco_panoptic`` split (random panoptic ground truth) whose images are painted rectangles
    with COCO instance ground truth of the 80 thing classes."""
    build(root, "coco_panoptic", get_dataset("coco_panoptic").layout("panoptic"), n=n, size=(48, 64), seed=seed)
    rng = np.random.default_rng(seed)
    cats = sorted(panoptic_categories("coco_panoptic"), key=lambda c: c["id"])
    fake = InstanceColour(instance=True)
    # the GT class of each colour: the stand-in's class for most colours, another one for colour 4
    class_to_cat = {j: cats[c if j != 4 else 79]["id"] for j, c in enumerate(fake.classes)}
    pan = json.loads((root / "annotations/panoptic_val2017.json").read_text())
    images = []
    for ann in pan["annotations"]:
        img, objects = _paint(rng, (48, 64), 5)
        name = Path(ann["file_name"]).stem + ".jpg"
        Image.fromarray(img).save(root / "val2017" / name, quality=95)
        images.append((name, img, objects))
    data = _instances_json(images, class_to_cat, [c for c in cats if c["isthing"]],
                           [a["image_id"] for a in pan["annotations"]])
    (root / "annotations/instances_val2017.json").write_text(json.dumps(data))
    return fake


def direct_ap(json_file: Path, dets: list[dict], image_ids: list) -> list[float]:
    """pycocotools on its own: COCO(file), loadRes, COCOeval segm over ``image_ids``: stats[0:6]."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(json_file))
        ev = COCOeval(gt, gt.loadRes(dets), "segm")
        ev.params.imgIds = image_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(s) if s >= 0 else float("nan") for s in ev.stats[:6]]


def _direct_dets(ds, fake: InstanceColour, cat_of_class) -> list[dict]:
    from pycocotools import mask as mask_util

    image_ids = {im["file_name"]: im["id"] for im in json.loads(ds.instances.json_path.read_text())["images"]}
    dets = []
    for k, s in enumerate(ds.samples):
        inst = fake.instances(ds.read_image(k))
        for m, sc, lab in zip(inst.masks.numpy(), inst.scores.numpy(), inst.labels.numpy()):
            rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
            dets.append({"image_id": image_ids[next(f for f in image_ids if Path(f).name == s.image.name)],
                         "category_id": cat_of_class(int(lab)), "segmentation": rle, "score": float(sc)})
    return dets


def _same(a: list[float], b: list[float]) -> bool:
    return all((np.isnan(x) and np.isnan(y)) or x == y for x, y in zip(a, b))


def test_ovss_eval_coco_ap_equals_pycocotools_resume_and_rescoring(tmp_path: Path) -> None:
    fake = coco_instance_split(tmp_path / "coco")
    ds = open_dataset("coco_panoptic", tmp_path / "coco")
    assert ds.instances is not None and len(ds.instances.category_ids) == 80
    cats = ds.category_ids
    dets = _direct_dets(ds, fake, lambda k: cats[k])
    expect = direct_ap(ds.instances.json_path, dets, [ds.image_id(k) for k in range(len(ds))])
    full = evaluate(ds, segmenter=InstanceColour(instance=True), progress=False, name="ic", panoptic=False)
    got = [full.instance.AP, full.instance.AP50, full.instance.AP75, full.instance.APs, full.instance.APm,
           full.instance.APl]
    assert _same(got, expect), (got, expect)
    assert 0 < full.instance.AP < 1 and full.instance.num_detections == len(dets)
    assert full.config["instance"] is True
    # without instance output: no AP, or an error when asked for
    assert evaluate(ds, segmenter=InstanceColour(), progress=False, panoptic=False).instance is None
    with pytest.raises(InputError, match="has no extras\\['instances'\\]"):
        evaluate(ds, segmenter=InstanceColour(), progress=False, panoptic=False, instance=True)

    # interrupted after 3 images and resumed: detections are part of the state, the AP is the same
    def stop(i: int, sample: object) -> None:
        if i == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate(ds, segmenter=InstanceColour(instance=True), output_dir=tmp_path / "out", name="ic", progress=False,
                 save_every=1, on_image=stop, save_predictions=tmp_path / "saved", panoptic=False)
    lines = next((tmp_path / "out").glob(".coco_panoptic_ic.partial*.detections.jsonl")).read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines] == [s.id for s in ds.samples[:3]]
    # a line cut by a kill is dropped on resume (its image is not in the state yet)
    with open(next((tmp_path / "out").glob("*.detections.jsonl")), "a") as fh:
        fh.write('{"id": "000000000003", "detec')
    again = InstanceColour(instance=True)
    res = evaluate(ds, segmenter=again, output_dir=tmp_path / "out", name="ic", progress=False, panoptic=False,
                   save_predictions=tmp_path / "saved")
    assert again.calls == 2 and res.instance.AP == full.instance.AP and res.instance.APs == full.instance.APs
    assert not list((tmp_path / "out").glob(".*partial*"))  # state and detections removed when done
    report = json.loads((tmp_path / "out" / "coco_panoptic_ic.json").read_text())
    assert report["metrics"]["AP"] == pytest.approx(100 * full.instance.AP)
    assert report["per_class"][0]["AP"] is not None and report["per_class"][100]["AP"] is None  # a stuff class
    assert ",AP,AP50,AP75,APs,APm,APl" in (tmp_path / "out" / "coco_panoptic_ic.csv").read_text().splitlines()[0]
    # the detections file and the saved per-image JSONs re-score to the same AP
    saved_all = tmp_path / "out" / "coco_panoptic_ic_instances.json"
    assert len(json.loads(saved_all.read_text())) == len(dets)
    per_image = sorted((tmp_path / "saved" / "instances").glob("*.json"))
    assert len(per_image) == 5
    rescored = evaluate(ds, predictions=tmp_path / "saved", instance_predictions=saved_all, progress=False,
                        panoptic=False)
    assert rescored.instance.AP == full.instance.AP and rescored.instance.AP75 == full.instance.AP75
    with pytest.raises(InputError, match="label maps carry no instances"):
        evaluate(ds, predictions=tmp_path / "saved", instance=True, progress=False, panoptic=False)


def test_ovss_eval_cityscapes_ap_equals_pycocotools(tmp_path: Path) -> None:
    root = tmp_path / "cs"
    spec = get_dataset("cityscapes")
    build(root, "cityscapes", spec.layouts[0], n=4, size=(48, 64))
    rng = np.random.default_rng(5)
    thing_classes = (11, 12, 13, 14, 15, 16, 17, 18, 11)  # person ... bicycle (train ids)
    fake = InstanceColour(19, instance=True, classes=thing_classes)
    images = []
    for img_path in sorted((root / "leftImg8bit/val").rglob("*_leftImg8bit.png")):
        img, objects = _paint(rng, (48, 64), 4)
        Image.fromarray(img).save(img_path)
        images.append((str(img_path.relative_to(root / "leftImg8bit/val")), img, objects))
    cats = [{"id": CITYSCAPES_LABEL_IDS[t], "name": spec.classes[t]} for t in range(11, 19)]
    data = _instances_json(images, {j: CITYSCAPES_LABEL_IDS[c] for j, c in enumerate(thing_classes)}, cats,
                           [Path(f).name.replace("_leftImg8bit.png", "") for f, _, _ in images])
    (root / "gtFine/cityscapes_instances_val.json").write_text(json.dumps(data))
    ds = open_dataset("cityscapes", root)
    assert ds.instances is not None and ds.panoptic is None and ds.category_ids[11] == 24
    dets = _direct_dets(ds, fake, lambda k: CITYSCAPES_LABEL_IDS[k])
    expect = direct_ap(ds.instances.json_path, dets, [ds.image_id(k) for k in range(len(ds))])
    res = evaluate(ds, segmenter=InstanceColour(19, instance=True, classes=thing_classes), progress=False)
    got = [res.instance.AP, res.instance.AP50, res.instance.AP75, res.instance.APs, res.instance.APm,
           res.instance.APl]
    assert _same(got, expect) and res.instance.AP > 0


def test_instance_ground_truth_errors(tmp_path: Path) -> None:
    coco_instance_split(tmp_path / "coco", n=3)
    js = tmp_path / "coco/annotations/instances_val2017.json"
    data = json.loads(js.read_text())
    js.write_text(json.dumps({**data, "images": data["images"][:2]}))
    with pytest.raises(DatasetError, match="1 of the 3 images have no entry in the instances JSON"):
        open_dataset("coco_panoptic", tmp_path / "coco")
    js.write_text(json.dumps({**data, "categories": data["categories"] + [{"id": 999, "name": "x"}]}))
    with pytest.raises(DatasetError, match="categories \\[999\\] that are not category ids"):
        open_dataset("coco_panoptic", tmp_path / "coco")
    js.write_text("{")
    with pytest.raises(DatasetError, match="cannot read the instances JSON"):
        open_dataset("coco_panoptic", tmp_path / "coco")
    js.unlink()
    ds = open_dataset("coco_panoptic", tmp_path / "coco")
    assert ds.instances is None
    assert evaluate(ds, segmenter=InstanceColour(instance=True), progress=False, panoptic=False).instance is None
    with pytest.raises(InputError, match="no instance ground truth .*instances_val2017.json"):
        evaluate(ds, segmenter=InstanceColour(instance=True), progress=False, panoptic=False, instance=True)


INS_SETUP = ("from test_instance import InstanceColour\n"
             "ovss.registry.method_class = lambda name: InstanceColour  # it declares instance output\n"
             "ovss.registry.create_segmenter = lambda method, **kw: InstanceColour(133, **kw)")


def test_two_process_gloo_ap_equals_one_process(tmp_path: Path) -> None:
    coco_instance_split(tmp_path / "coco", n=5, seed=2)
    single = evaluate("coco_panoptic", tmp_path / "coco", segmenter=InstanceColour(instance=True), progress=False,
                      panoptic=False)
    run_torchrun(tmp_path, ["--dataset", "coco_panoptic", "--data-root", str(tmp_path / "coco"), "--method", "fake",
                            "--device", "cpu", "-o", str(tmp_path / "out"), "--no-progress", "--no-table",
                            "--no-panoptic"], setup=INS_SETUP)
    report = json.loads((tmp_path / "out" / "coco_panoptic_fake.json").read_text())
    assert report["config"]["world_size"] == 2 and report["config"]["instance"] is True
    for k, v in single.instance.summary().items():
        assert report["metrics"][k] == v, k
    assert single.instance.AP > 0
    dets = json.loads((tmp_path / "out" / "coco_panoptic_fake_instances.json").read_text())
    assert len(dets) == single.instance.num_detections


# ---- against the official FC-CLIP instance_inference (tests/fixtures/fc_clip_instance) -------------


@pytest.fixture(scope="module")
def fc_seg():
    if not (FC / "fcclip_tiny.pth").is_file():
        pytest.skip(f"tiny FC-CLIP fixture not found in {FC}")
    import ovss

    return ovss.create_segmenter("fc_clip", dataset="ade20k", model=str(FC / "convnext_fcclip_tiny.json"),
                                 pretrained=str(FC / "tiny_convnext_clip.safetensors"),
                                 checkpoint=str(FC / "fcclip_tiny.pth"), config=str(FC / "fcclip_tiny_config.yaml"))


@pytest.mark.parametrize("vocab,dataset", [("ade150", "ade20k"), ("coco133", "coco_panoptic")])
def test_fc_clip_instances_match_official(fc_seg, vocab: str, dataset: str) -> None:
    import torch.nn.functional as F

    from ovss.methods.fc_clip import dataset_vocabulary, postprocess_masks

    man = json.loads((FIXTURE / "manifest.json").read_text())
    entry = man["files"][f"fcclip_instance_{vocab}_astronaut.npz"]
    with np.load(FIXTURE / f"fcclip_instance_{vocab}_astronaut.npz") as z:
        ref = {k: z[k] for k in z.files}
    with np.load(FC / "fcclip_ade150_astronaut.npz") as z:
        image = z["image_uint8"].transpose(1, 2, 0)
    ori = tuple(int(v) for v in ref["ori_shape"])
    things = ref["things"].tolist()
    run = fc_seg.run_resized(image, ori, dataset_vocabulary(dataset), things, panoptic=False)
    x, size = fc_seg.preprocess(image)
    masks = F.interpolate(run["pred_masks"][None], size=x.shape[-2:], mode="bilinear", align_corners=False)[0]
    masks = postprocess_masks(masks, size, ori)  # sem_seg_postprocess: what instance_inference receives
    mask_cls = run["mask_cls_results"]
    assert np.abs(mask_cls.numpy() - ref["mask_cls"]).max() <= 1e-4  # log-probabilities, CPU rounding only
    out = instance_inference(mask_cls, masks, things=things, topk=entry["topk_per_image"])
    assert len(out) == entry["num_instances"] == len(ref["scores"]) and len(out) > 20
    assert set(out.labels.tolist()) <= set(things) and len(set(out.labels.tolist())) > 3
    order = np.argsort(-ref["scores"], kind="stable")
    ref_masks = np.unpackbits(ref["mask_bank_packed"], axis=-1)[..., : ori[1]].astype(bool)[ref["mask_index"]]
    ours = np.argsort(-out.scores.numpy(), kind="stable")  # ours: by class score; compare by detection score
    assert out.labels.numpy()[ours].tolist() == ref["labels"][order].tolist()
    assert np.allclose(out.scores.numpy()[ours], ref["scores"][order], rtol=1e-4, atol=1e-7)
    # binary masks: identical except where a mask logit is within float noise of 0
    flips = int((out.masks.numpy()[ours] != ref_masks[order]).sum())
    assert flips <= entry["diagnostics"]["mask_logits_abs_lt_1e-5"] * len(out)
    # negative control: without the thing filter the stuff classes come back
    assert len(instance_inference(mask_cls, masks, topk=entry["topk_per_image"])) == entry["topk_per_image"]


def test_instance_writers() -> None:
    from ovss.outputs import instance_overlay, instances_json

    rgb = np.zeros((20, 30, 3), dtype=np.uint8)
    a, b = _box_mask((20, 30), 0, 10, 0, 10), _box_mask((20, 30), 5, 15, 5, 20)
    inst = Instances(torch.from_numpy(np.stack([a, b])), torch.tensor([0, 1, 0]), torch.tensor([0.6, 0.9, 0.1]),
                     torch.tensor([1, 0, 1]), torch.tensor([3, 4, 3]))
    rows = instances_json(inst, ["cat", "dog"])
    assert [(r["class"], r["query"], r["area"]) for r in rows] == [("cat", 4, 150), ("dog", 3, 100), ("dog", 3, 100)]
    assert np.array_equal(decode_mask(rows[0]["segmentation"]), b)
    json.dumps(rows)  # JSON-able as written
    img = np.asarray(instance_overlay(rgb, inst, ["cat", "dog"]))
    assert img.shape[0] >= 20 and img.shape[1] > 30  # the legend panel
    colours = {tuple(img[2, 2]), tuple(img[12, 12]), tuple(img[18, 2])}
    assert len(colours) == 3  # dog only, cat on top where they overlap, and the bare photo


def test_fc_clip_instance_output_eval_and_segment(tmp_path: Path) -> None:
    """FC-CLIP built with instance=True: extras["instances"], AP through ovss eval equal to
    pycocotools on its own detections, and the ``ovss segment --instance`` files."""
    if not (FC / "fcclip_tiny.pth").is_file():
        pytest.skip(f"tiny FC-CLIP fixture not found in {FC}")
    import ovss
    from typer.testing import CliRunner

    from ovss.cli import app

    files = {"model": str(FC / "convnext_fcclip_tiny.json"), "pretrained": str(FC / "tiny_convnext_clip.safetensors"),
             "checkpoint": str(FC / "fcclip_tiny.pth"), "config": str(FC / "fcclip_tiny_config.yaml")}
    seg = ovss.create_segmenter("fc_clip", dataset="coco_panoptic", instance=True, short_side=128, **files)
    assert seg.settings()["instance"] is True
    coco_instance_split(tmp_path / "coco", n=3, seed=4)
    js = tmp_path / "coco/annotations/instances_val2017.json"
    ds = open_dataset("coco_panoptic", tmp_path / "coco")
    res = seg.predict(ds.read_image(0))
    inst = res.extras["instances"]
    assert isinstance(inst, Instances) and 0 < len(inst) <= 100 and int(inst.labels.max()) < 80  # things only
    # ground truth of image 0 = its 4 best detections, so AP > 0
    data = json.loads(js.read_text())
    image_id = ds.image_id(0)
    best = to_detections(inst, image_id, ds.category_ids)
    best = sorted(best, key=lambda d: -d["score"])[:4]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != image_id] + [
        {"id": 10_000 + k, "image_id": image_id, "category_id": d["category_id"], "segmentation": d["segmentation"],
         "area": int(decode_mask(d["segmentation"]).sum()), "bbox": [0, 0, 1, 1], "iscrowd": 0}
        for k, d in enumerate(best)]
    js.write_text(json.dumps(data))
    ds = open_dataset("coco_panoptic", tmp_path / "coco")
    dets = [d for k in range(len(ds)) for d in to_detections(seg.predict(ds.read_image(k)).extras["instances"],
                                                               ds.image_id(k), ds.category_ids)]
    expect = direct_ap(js, dets, [ds.image_id(k) for k in range(len(ds))])
    got = evaluate(ds, segmenter=seg, progress=False, panoptic=False).instance
    assert _same([got.AP, got.AP50, got.AP75, got.APs, got.APm, got.APl], expect) and got.AP > 0
    # ovss segment --instance: the COCO RLE JSON and the overlay
    photo = tmp_path / "p.png"
    Image.fromarray(ds.read_image(0)).save(photo)
    args = ["segment", "--model", files["model"], "--pretrained", files["pretrained"], "--checkpoint",
            files["checkpoint"], "--config", files["config"], "--short-side", "128", "--dataset", "coco_panoptic",
            "--instance", str(photo), "-m", "fc_clip", "-o", str(tmp_path / "out")]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    rows = json.loads((tmp_path / "out" / "p_instances.json").read_text())
    assert len(rows) == len(inst) and rows[0]["score"] >= rows[-1]["score"] and rows[0]["class"] in ds.classes
    assert Image.open(tmp_path / "out" / "p_instances.png").size[1] == 48
