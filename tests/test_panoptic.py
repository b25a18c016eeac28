"""Panoptic quality: panopticapi's arithmetic on a hand-computed image and against an independent
re-implementation, the panoptic datasets' errors, and PQ through ``ovss eval`` (tiny FC-CLIP,
resume, saved predictions, 2-process Gloo)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Sequence

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from ovss.data.datasets import get_dataset, open_dataset
from ovss.errors import DatasetError, InputError
from ovss.evaluation import evaluate
from ovss.evaluation.panoptic import compute_pq, pq_stats
from ovss.evaluation.sources import Panoptic
from ovss.segmenter import Capabilities
from test_datasets import build, contiguous_segments, panoptic_categories, random_panoptic, write_panoptic
from test_eval import _app, run_torchrun

FC = Path(__file__).resolve().parents[2] / "shared" / "parity" / "fc_clip"


# ---- the arithmetic ------------------------------------------------------------------------------


def _from_runs(runs: list[tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """(gt id, pred id, pixel count) runs -> (6, 7) gt and pred maps (pixel order does not matter for PQ)."""
    gt = np.concatenate([np.full(n, g) for g, _, n in runs]).reshape(6, 7)
    pred = np.concatenate([np.full(n, p) for _, p, n in runs]).reshape(6, 7)
    return gt, pred


HAND_RUNS = [
    (1, 11, 8), (1, 15, 1), (1, 0, 1),   # g1 cat 0, area 10
    (2, 12, 4), (2, 11, 1), (2, 0, 3),   # g2 cat 1, area 8
    (3, 13, 9), (3, 14, 1),              # g3 cat 2 (stuff), area 10
    (4, 14, 4), (4, 16, 2),              # g4 cat 0, crowd, area 6
    (5, 0, 2),                           # g5 cat 3 (stuff), area 2
    (0, 11, 1), (0, 15, 3), (0, 0, 2),   # VOID, 6 pixels
]
HAND_GT = [{"id": 1, "category_id": 0, "area": 10}, {"id": 2, "category_id": 1, "iscrowd": 0},
           {"id": 3, "category_id": 2}, {"id": 4, "category_id": 0, "iscrowd": 1}, {"id": 5, "category_id": 3}]
HAND_PRED = [{"id": 11, "category_id": 0}, {"id": 12, "category_id": 1}, {"id": 13, "category_id": 2},
             {"id": 14, "category_id": 0}, {"id": 15, "category_id": 1}, {"id": 16, "category_id": 1}]
HAND_THINGS = [True, True, False, False, True]  # category 4 never occurs


def test_hand_computed_example() -> None:
    gt, pred = _from_runs(HAND_RUNS)
    stats = pq_stats(gt, HAND_GT, torch.from_numpy(pred).int(), HAND_PRED, 5)
    # g1 ~ p11: IoU 8 / (10 + 10 - 8 - 1 on VOID) = 8/11; g3 ~ p13: 9/10.
    # g2 ~ p12: IoU exactly 4/8 = 0.5: no match, so g2 is an FN and p12 an FP.
    # p14 (cat 0) lies 4/5 on the crowd of its class: not an FP; p15 lies 3/4 on VOID: not an FP;
    # p16 (cat 1) lies on the crowd of another class: an FP. g5 is an FN. The crowd g4 is neither.
    expect = np.array([[1, 0, 0, 8 / 11], [0, 2, 1, 0], [1, 0, 0, 0.9], [0, 0, 1, 0], [0, 0, 0, 0]])
    assert np.array_equal(stats, expect)
    m = compute_pq(stats, HAND_THINGS)
    assert m.pq[0] == pytest.approx(8 / 11) and m.rq[0] == 1 and m.sq[2] == pytest.approx(0.9)
    assert m.pq[1] == 0 and m.sq[1] == 0 and m.rq[1] == 0 and m.pq[3] == 0  # occur, so they count as 0
    assert np.isnan(m.pq[4]) and (m.n, m.n_th, m.n_st) == (4, 2, 2)
    assert m.PQ == pytest.approx((8 / 11 + 0.9) / 4) and m.SQ == pytest.approx((8 / 11 + 0.9) / 4) and m.RQ == 0.5
    assert m.PQ_th == pytest.approx(8 / 11 / 2) and m.RQ_th == 0.5
    assert m.PQ_st == pytest.approx(0.45) and m.SQ_st == pytest.approx(0.45) and m.RQ_st == 0.5
    s = m.summary()
    assert list(s) == ["PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st"]
    assert s["PQ"] == pytest.approx(100 * (8 / 11 + 0.9) / 4)
    rows = m.per_class(["a", "b", "c", "d", "e"])
    assert rows[4] == {"index": 4, "name": "e", "isthing": True, "PQ": None, "SQ": None, "RQ": None,
                       "tp": 0, "fp": 0, "fn": 0}
    assert rows[1]["fp"] == 2 and rows[1]["fn"] == 1
    # one more pixel of g2 in p12 makes it match: IoU 5 / (5 + 8 - 5) = 5/8; p16 stays an FP
    gt2, pred2 = _from_runs([r if r != (2, 0, 3) else (2, 12, 1) for r in HAND_RUNS] + [(2, 0, 2)])
    assert np.array_equal(pq_stats(gt2, HAND_GT, pred2, HAND_PRED, 5)[1], [1, 1, 0, 5 / 8])
    # no category occurs in the things: NaN (panopticapi divides by zero), None in percent
    empty = compute_pq(np.zeros((2, 4)), [True, False])
    assert np.isnan(empty.PQ_th) and empty.summary()["PQ"] is None


def test_errors_of_the_arithmetic() -> None:
    gt, pred = _from_runs(HAND_RUNS)
    with pytest.raises(InputError, match="segment id 16 is in the segment map but not in the segment list"):
        pq_stats(gt, HAND_GT, pred, HAND_PRED[:-1], 5)
    with pytest.raises(InputError, match=r"ids \[17\] are listed but have no pixel"):
        pq_stats(gt, HAND_GT, pred, HAND_PRED + [{"id": 17, "category_id": 0}], 5)
    with pytest.raises(InputError, match="category 5, outside"):
        pq_stats(gt, HAND_GT, pred, HAND_PRED[:-1] + [{"id": 16, "category_id": 5}], 5)
    with pytest.raises(InputError, match="listed twice"):
        pq_stats(gt, HAND_GT + HAND_GT[:1], pred, HAND_PRED, 5)
    with pytest.raises(InputError, match="shape"):
        pq_stats(gt, HAND_GT, pred[:, :3], HAND_PRED, 5)
    with pytest.raises(InputError, match=r"\(C, 4\)"):
        compute_pq(np.zeros((3, 3)), [True] * 3)


def reference_pq(gt: np.ndarray, gt_segs: list[dict], pred: np.ndarray, pred_segs: list[dict], c: int) -> np.ndarray:
    """Independent (C, 4) statistics from boolean masks, the rules written out from the paper and
    panopticapi's README rather than from its code."""
    stats = np.zeros((c, 4))
    void = gt == 0
    parea = {p["id"]: int((pred == p["id"]).sum()) for p in pred_segs}
    matched_g, matched_p = set(), set()
    for g in gt_segs:
        if g.get("iscrowd", 0):
            continue
        gm = gt == g["id"]
        for p in pred_segs:
            if p["category_id"] != g["category_id"]:
                continue
            pm = pred == p["id"]
            inter = int((gm & pm).sum())
            union = int((gm | (pm & ~void)).sum())
            if inter and inter / union > 0.5:
                stats[g["category_id"]] += [1, 0, 0, inter / union]
                matched_g.add(g["id"])
                matched_p.add(p["id"])
    for g in gt_segs:
        if not g.get("iscrowd", 0) and g["id"] not in matched_g:
            stats[g["category_id"], 2] += 1
    for p in pred_segs:
        if p["id"] in matched_p:
            continue
        pm = pred == p["id"]
        crowd = np.zeros_like(void)
        for g in gt_segs:
            if g.get("iscrowd", 0) and g["category_id"] == p["category_id"]:
                crowd |= gt == g["id"]
        if ((pm & void).sum() + (pm & crowd).sum()) / parea[p["id"]] <= 0.5:
            stats[p["category_id"], 1] += 1
    return stats


def _perturbed(rng: np.random.Generator, gt: np.ndarray, gt_segs: list[dict], c: int
               ) -> tuple[np.ndarray, list[dict]]:
    """A prediction near the ground truth: ids renumbered, some categories changed, a shifted
    block, noise pixels, a void patch."""
    pred = np.zeros_like(gt)
    new_id = {g["id"]: int(rng.integers(1, 256 ** 3)) for g in gt_segs}
    for g in gt_segs:
        pred[gt == g["id"]] = new_id[g["id"]]
    pred = np.roll(pred, int(rng.integers(-2, 3)), axis=int(rng.integers(0, 2)))
    noise = rng.random(gt.shape) < 0.08
    pred[noise] = rng.choice(list(new_id.values()) + [0], size=int(noise.sum()))
    pred[:3, -3:] = 0
    cats = {new_id[g["id"]]: (g["category_id"] if rng.random() < 0.8 else int(rng.integers(0, c))) for g in gt_segs}
    segs = [{"id": int(i), "category_id": cats[int(i)]} for i in np.unique(pred) if i]
    return pred, segs


def test_random_maps_match_an_independent_implementation() -> None:
    rng = np.random.default_rng(0)
    c = 4
    cats = [{"id": k} for k in range(c)]
    total = np.zeros((c, 4))
    total_ref = np.zeros((c, 4))
    for _ in range(40):
        gt, segs = random_panoptic(rng, (18, 22), cats, n=int(rng.integers(3, 9)), crowd=bool(rng.random() < 0.5))
        pred, psegs = _perturbed(rng, gt, segs, c)
        got, ref = pq_stats(gt, segs, pred, psegs, c), reference_pq(gt, segs, pred, psegs, c)
        assert np.array_equal(got[:, :3], ref[:, :3]) and np.allclose(got[:, 3], ref[:, 3], rtol=0, atol=1e-12)
        total += got
        total_ref += ref
    assert total[:, 0].sum() > 20 and total[:, 1].sum() > 5 and total[:, 2].sum() > 5  # all three occur
    things = [True, False, True, False]
    m = compute_pq(total, things)
    tp, fp, fn, iou = total_ref.T
    pq = iou / (tp + fp / 2 + fn / 2)
    assert m.PQ == pytest.approx(pq.mean(), abs=1e-12)
    assert m.PQ_th == pytest.approx(pq[[0, 2]].mean(), abs=1e-12)
    assert m.RQ_st == pytest.approx((tp / (tp + fp / 2 + fn / 2))[[1, 3]].mean(), abs=1e-12)
    assert m.SQ == pytest.approx(np.where(tp > 0, iou / np.maximum(tp, 1), 0).mean(), abs=1e-12)


# ---- datasets: half-prepared folders ------------------------------------------------------------------


def test_half_prepared_panoptic_folders(tmp_path: Path) -> None:
    coco = get_dataset("coco_panoptic")
    build(tmp_path / "c", "coco_panoptic", coco.layout("detectron2"))
    (tmp_path / "c/annotations/panoptic_val2017.json").unlink()
    with pytest.raises(DatasetError) as e:
        open_dataset("coco_panoptic", tmp_path / "c")
    msg = str(e.value)
    assert msg.startswith("coco_panoptic: missing annotations/panoptic_val2017.json in ")
    assert "panoptic_val2017/<id>.png (RGB segment ids)" in msg and "\n" not in msg
    build(tmp_path / "d", "coco_panoptic", coco.layout("detectron2"))
    for f in (tmp_path / "d/panoptic_val2017").iterdir():
        f.unlink()
    (tmp_path / "d/panoptic_val2017").rmdir()
    with pytest.raises(DatasetError, match=r"coco_panoptic: missing panoptic_val2017/ in .*annotations/panoptic"):
        open_dataset("coco_panoptic", tmp_path / "d")
    build(tmp_path / "e", "coco_panoptic", coco.layout("panoptic"))
    (tmp_path / "e/panoptic_val2017/img_001.png").unlink()
    with pytest.raises(DatasetError, match=r"1 of the 3 images listed in annotations/panoptic_val2017.json have no "
                                           r"label file .*img_001.png"):
        open_dataset("coco_panoptic", tmp_path / "e")
    (tmp_path / "e/val2017/img_002.jpg").unlink()
    with pytest.raises(DatasetError, match="have no image file .*img_002.jpg"):
        open_dataset("coco_panoptic", tmp_path / "e")
    # ADE20K: the panoptic part is optional, but half of it is an error, not a silent mIoU-only run
    ade = get_dataset("ade20k")
    build(tmp_path / "a", "ade20k", ade.layout("mmseg"), panoptic=True)
    (tmp_path / "a/ade20k_panoptic_val.json").rename(tmp_path / "a/elsewhere.json")
    with pytest.raises(DatasetError, match=r"ade20k: the panoptic ground truth in .* is half-prepared: "
                                           r"ade20k_panoptic_val/ is there but ade20k_panoptic_val.json is missing.*"
                                           r"prepare_ade20k_pan_seg.py.*mIoU only"):
        open_dataset("ade20k", tmp_path / "a")
    (tmp_path / "a/elsewhere.json").rename(tmp_path / "a/ade20k_panoptic_val.json")
    (tmp_path / "a/ade20k_panoptic_val").rename(tmp_path / "a/moved")
    with pytest.raises(DatasetError, match="ade20k_panoptic_val.json is there but ade20k_panoptic_val/ is missing"):
        open_dataset("ade20k", tmp_path / "a")
    (tmp_path / "a/moved").rename(tmp_path / "a/ade20k_panoptic_val")
    (tmp_path / "a/ade20k_panoptic_val/img_000.png").unlink()
    with pytest.raises(DatasetError, match="1 of the 3 images found in images/validation have no panoptic PNG file"):
        open_dataset("ade20k", tmp_path / "a")
    # a JSON of another dataset, and an unreadable one
    js = tmp_path / "c/annotations/panoptic_val2017.json"
    js.write_text(json.dumps({"annotations": [], "categories": panoptic_categories("ade20k")}))
    with pytest.raises(DatasetError, match="has 150 categories but the dataset has 133 classes"):
        open_dataset("coco_panoptic", tmp_path / "c")
    js.write_text("{not json")
    with pytest.raises(DatasetError, match="cannot read the panoptic JSON"):
        open_dataset("coco_panoptic", tmp_path / "c")


# ---- through the evaluation loop ------------------------------------------------------------------


class PanopticColour:
    """Stand-in panoptic segmenter: one segment per (red, green) bucket of the image, void where
    blue is high; the segment's class is a fixed function of the bucket."""

    capabilities = Capabilities(panoptic=True)  # what ovss eval reads to build it with panoptic=True

    def __init__(self, num_classes: int = 133, panoptic: bool = False, dataset: str | None = None,
                 **kwargs: object) -> None:
        self.num_classes, self.panoptic, self.calls = num_classes, panoptic, 0

    def segments(self, image: np.ndarray) -> tuple[np.ndarray, list[dict]]:
        ids = (image[..., 0].astype(np.int64) // 86) * 3 + image[..., 1] // 86 + 1
        ids[image[..., 2] > 200] = 0
        return ids, [{"id": int(i), "category_id": int(i * 37 % self.num_classes), "isthing": bool(i % 2),
                      "score": 0.9} for i in np.unique(ids) if i]

    def predict(self, image: np.ndarray, **kwargs: object) -> SimpleNamespace:
        self.calls += 1
        ids, segs = self.segments(image)
        cat = {s["id"]: s["category_id"] for s in segs}
        labels = np.vectorize(lambda i: cat.get(int(i), 0))(ids)
        extras = {"panoptic": {"panoptic_seg": torch.from_numpy(ids).int(), "segments": segs}} if self.panoptic else {}
        return SimpleNamespace(labels=torch.from_numpy(labels), classes=[str(c) for c in range(self.num_classes)],
                               extras=extras)

    def settings(self) -> dict:
        return {"method": "panoptic_colour"}


def photos(n: int, size: tuple[int, int] = (48, 64)) -> list[np.ndarray]:
    """``n`` real photos (scikit-image's astronaut, coffee, chelsea, ...) resized to ``size`` (H, W)."""
    skdata = pytest.importorskip("skimage.data")
    pool = [skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.rocket()]
    return [np.asarray(Image.fromarray(pool[k % len(pool)]).resize(size[::-1], Image.BILINEAR)) for k in range(n)]


def coco_panoptic_from(root: Path, images: list[np.ndarray], predict: Callable[[np.ndarray], Panoptic],
                       own: Sequence[int], semseg: bool = False) -> None:
    """A tiny ``coco_panoptic`` split of ``images``: the images in ``own`` get the prediction of
    ``predict`` on the decoded JPEG as ground truth (with a void patch and its first segment
    crowd), the others random ground truth."""
    from ovss.imageio import load_image

    spec = get_dataset("coco_panoptic")
    layout = spec.layout("detectron2" if semseg else "panoptic")
    cats = sorted(panoptic_categories("coco_panoptic"), key=lambda c: c["id"])
    stems = [f"{k:012d}" for k in range(len(images))]
    (root / layout.image_dir).mkdir(parents=True, exist_ok=True)
    maps = {}
    for k, (stem, img) in enumerate(zip(stems, images)):
        path = root / layout.image_dir / f"{stem}.jpg"
        Image.fromarray(img).save(path, quality=95)
        if k not in own:
            continue
        ids, segs = predict(load_image(path))
        ids = ids.copy()
        ids[-6:, :10] = 0
        info = [{"id": s["id"], "category_id": cats[s["category_id"]]["id"], "iscrowd": int(j == 0),
                 "area": int((ids == s["id"]).sum())} for j, s in enumerate(segs) if (ids == s["id"]).any()]
        maps[stem] = (ids, info)
    written = write_panoptic(root, layout.panoptic, stems, "coco_panoptic", images[0].shape[:2], seed=3, maps=maps)
    if semseg:
        from ovss.data.datasets import panoptic_to_semantic

        (root / layout.label_dir).mkdir(parents=True, exist_ok=True)
        for stem, (ids, info) in written.items():
            lab = panoptic_to_semantic(ids, contiguous_segments("coco_panoptic", info))
            Image.fromarray(lab.astype(np.uint8)).save(root / layout.label_dir / f"{stem}.png")


def direct(ds, preds: list[Panoptic]) -> np.ndarray:
    """Summed :func:`pq_stats` of ``preds`` against the split's ground truth, outside the loop."""
    return sum(pq_stats(*ds.read_panoptic(k), *p, ds.num_classes) for k, p in enumerate(preds))


def test_segmenter_pq_resume_and_saved_predictions(tmp_path: Path) -> None:
    fake = PanopticColour(panoptic=True)
    coco_panoptic_from(tmp_path / "coco", photos(5), fake.segments, own=[0], semseg=True)
    ds = open_dataset("coco_panoptic", tmp_path / "coco")
    preds = [fake.segments(ds.read_image(k)) for k in range(len(ds))]
    full = evaluate(ds, segmenter=PanopticColour(panoptic=True), progress=False, name="pc")
    assert np.array_equal(full.pq_stats, direct(ds, preds)) and full.pq_stats[:, 0].sum() > 0
    assert full.config["panoptic"] is True and full.panoptic.PQ > 0
    # off: no PQ (asked, or the segmenter was built without panoptic output)
    assert evaluate(ds, segmenter=PanopticColour(panoptic=True), progress=False, panoptic=False).panoptic is None
    assert evaluate(ds, segmenter=PanopticColour(), progress=False).panoptic is None
    with pytest.raises(InputError, match="has no extras\\['panoptic'\\]"):
        evaluate(ds, segmenter=PanopticColour(), progress=False, panoptic=True)

    # interrupted after 3 images, resumed: the same statistics; PQ stats are part of the state
    def stop(i: int, sample: object) -> None:
        if i == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate(ds, segmenter=PanopticColour(panoptic=True), output_dir=tmp_path / "out", name="pc",
                 progress=False, save_every=1, on_image=stop, save_predictions=tmp_path / "saved")
    with np.load(next((tmp_path / "out").glob(".coco_panoptic_pc.partial*.npz"))) as z:
        assert z["pq"].shape == (133, 4) and z["pq"][:, :3].sum() > 0
    again = PanopticColour(panoptic=True)
    res = evaluate(ds, segmenter=again, output_dir=tmp_path / "out", name="pc", progress=False,
                   save_predictions=tmp_path / "saved")
    assert again.calls == 2 and np.array_equal(res.pq_stats, full.pq_stats)
    report = json.loads((tmp_path / "out" / "coco_panoptic_pc.json").read_text())
    assert report["metrics"]["PQ"] == pytest.approx(100 * full.panoptic.PQ) and "PQ_st" in report["metrics"]
    assert report["per_class"][0]["name"] == "person" and {"PQ", "SQ", "RQ", "isthing"} <= set(report["per_class"][0])
    assert np.array_equal(np.load(tmp_path / "out" / "coco_panoptic_pc_pq.npy"), full.pq_stats)
    header = (tmp_path / "out" / "coco_panoptic_pc.csv").read_text().splitlines()[0]
    assert ",PQ,SQ,RQ,PQ_th," in header and "PQ-0-person" in header
    # the saved predictions are COCO panoptic files that score the same
    saved = json.loads((tmp_path / "saved" / "panoptic.json").read_text())
    assert len(saved["annotations"]) == 5 and not list((tmp_path / "saved" / "panoptic").glob("*.json"))
    assert saved["annotations"][0]["segments_info"][0]["category_id"] in {c["id"] for c in saved["categories"]}
    rescored = evaluate(ds, predictions=tmp_path / "saved", panoptic_predictions=tmp_path / "saved/panoptic.json",
                        progress=False)
    assert np.array_equal(rescored.pq_stats, full.pq_stats) and np.array_equal(rescored.matrix, full.matrix)
    with pytest.raises(InputError, match="label maps carry no segments"):
        evaluate(ds, predictions=tmp_path / "saved", panoptic=True, progress=False)
    with pytest.raises(InputError, match="no panoptic ground truth"):
        build(tmp_path / "voc", "voc21", get_dataset("voc21").layouts[0])
        evaluate("voc21", tmp_path / "voc", segmenter=PanopticColour(21, panoptic=True), panoptic=True,
                 progress=False)


PAN_SETUP = ("from test_panoptic import PanopticColour\n"
             "ovss.registry.method_class = lambda name: PanopticColour  # it declares panoptic output\n"
             "ovss.registry.create_segmenter = lambda method, **kw: PanopticColour(133, **kw)")


def test_two_process_gloo_pq_equals_one_process(tmp_path: Path) -> None:
    coco_panoptic_from(tmp_path / "coco", photos(5), PanopticColour().segments, own=[0, 3])
    single = evaluate("coco_panoptic", tmp_path / "coco", segmenter=PanopticColour(panoptic=True), progress=False)
    run_torchrun(tmp_path, ["--dataset", "coco_panoptic", "--data-root", str(tmp_path / "coco"), "--method", "fake",
                            "--device", "cpu", "-o", str(tmp_path / "out"), "--no-progress", "--no-table"],
                 setup=PAN_SETUP)
    report = json.loads((tmp_path / "out" / "coco_panoptic_fake.json").read_text())
    assert report["config"]["world_size"] == 2 and report["config"]["panoptic"] is True
    stats = np.load(tmp_path / "out" / "coco_panoptic_fake_pq.npy")
    assert np.array_equal(stats[:, :3], single.pq_stats[:, :3]) and single.pq_stats[:, 0].sum() > 0
    assert np.allclose(stats[:, 3], single.pq_stats[:, 3], rtol=0, atol=1e-12)  # IoU sums: another order
    for k, v in single.summary().items():
        assert report["metrics"][k] == pytest.approx(v, abs=1e-9), k


@pytest.mark.skipif(not (FC / "fcclip_tiny.pth").is_file(), reason=f"tiny FC-CLIP fixture not found in {FC}")
def test_ovss_eval_fc_clip_tiny_end_to_end(tmp_path: Path) -> None:
    import ovss

    files = {"model": str(FC / "convnext_fcclip_tiny.json"), "pretrained": str(FC / "tiny_convnext_clip.safetensors"),
             "checkpoint": str(FC / "fcclip_tiny.pth"), "config": str(FC / "fcclip_tiny_config.yaml")}
    seg = ovss.create_segmenter("fc_clip", dataset="coco_panoptic", panoptic=True, **files)

    def panoptic_of(img: np.ndarray) -> Panoptic:
        pan = seg.predict(img).extras["panoptic"]
        return pan["panoptic_seg"].numpy().astype(np.int64), pan["segments"]

    coco_panoptic_from(tmp_path / "coco", photos(3), panoptic_of, own=[0])
    args = ["eval", "-d", "coco_panoptic", "--data-root", str(tmp_path / "coco"), "--method", "fc_clip",
            "--model", files["model"], "--pretrained", files["pretrained"], "--checkpoint", files["checkpoint"],
            "--config", files["config"], "--device", "cpu", "-o", str(tmp_path / "out"), "--no-progress"]
    r = CliRunner().invoke(_app(), args)
    assert r.exit_code == 0, r.output
    assert "Things" in r.output and "Stuff" in r.output and "PQ" in r.output
    report = json.loads((tmp_path / "out" / "coco_panoptic_fc_clip.json").read_text())
    assert report["config"]["panoptic"] is True and report["config"]["settings"]["panoptic"] is True
    assert report["config"]["segmenter_options"]["checkpoint"] == files["checkpoint"]
    ds = open_dataset("coco_panoptic", tmp_path / "coco")
    stats = direct(ds, [panoptic_of(ds.read_image(k)) for k in range(len(ds))])
    assert stats[:, 0].sum() > 0  # image 0's ground truth is the model's own output
    expect = compute_pq(stats, ds.panoptic.isthing)
    for k, v in expect.summary().items():
        assert report["metrics"][k] == pytest.approx(v, abs=1e-9), k
    assert report["metrics"]["PQ"] > 0 and report["metrics"]["mIoU"] is not None
    per = {c["index"]: c for c in report["per_class"]}
    for c in np.flatnonzero(stats[:, :3].sum(1)):
        assert per[c]["PQ"] == pytest.approx(100 * expect.pq[c], abs=1e-9)
        assert (per[c]["tp"], per[c]["fp"], per[c]["fn"]) == tuple(int(x) for x in stats[c, :3])

