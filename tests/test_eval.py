"""``ovss eval``: by predictions, by segmenter, resume, reports, CLI, 2-process Gloo == 1 process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

import ovss.registry
from ovss.data import get_dataset, open_dataset
from ovss.data.datasets import Layout
from ovss.errors import InputError
from ovss.evaluation import evaluate
from ovss.evaluation.cli import register
from ovss.imageio import load_image

REPO = Path(__file__).resolve().parents[1]
PARITY = Path(__file__).resolve().parents[2] / "shared" / "parity"


def build(root: Path, name: str, layout: Layout, n: int, seed: int = 0) -> None:
    """``n`` image/label pairs of ``name`` in ``layout`` (sizes vary; real photo content where possible)."""
    spec = get_dataset(name)
    rng = np.random.default_rng(seed)
    try:
        from skimage import data as skdata

        photos = [skdata.astronaut(), skdata.coffee(), skdata.chelsea()]
    except Exception:  # scikit-image missing: synthetic content
        photos = [rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)]
    ids = []
    for k in range(n):
        h, w = int(rng.integers(24, 40)), int(rng.integers(24, 40))
        photo = photos[k % len(photos)]
        y, x = int(rng.integers(0, photo.shape[0] - h)), int(rng.integers(0, photo.shape[1] - w))
        i = f"city{k % 2}/im{k:03d}" if layout.recursive else f"im{k:03d}"
        img = root / layout.image_dir / f"{i}{layout.image_suffix}"
        img.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(photo[y:y + h, x:x + w])).save(img)
        top = spec.num_classes + (1 if layout.reduce_zero_label else 0)
        lab = rng.integers(0, min(top, 12), size=(h, w))  # few classes: some NaN classes in the metrics
        lab[rng.random((h, w)) < 0.1] = spec.ignore_index
        lab_path = root / layout.label_dir / f"{i}{layout.label_suffix}"
        lab_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(lab.astype(np.uint16 if spec.label_dtype == "uint16" else np.uint8)).save(lab_path)
        ids.append(i)
    if layout.split_file:
        (root / layout.split_file).parent.mkdir(parents=True, exist_ok=True)
        (root / layout.split_file).write_text("\n".join(ids) + "\n")


class ColourSegmenter:
    """Stand-in segmenter: label = red channel bucket (deterministic, depends on the decoded image)."""

    def __init__(self, num_classes: int, dataset: str | None = None, **kwargs: object) -> None:
        self.num_classes = num_classes
        self.kwargs = dict(kwargs, dataset=dataset)
        self.calls = 0

    def predict(self, image: np.ndarray, **kwargs: object) -> SimpleNamespace:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        self.calls += 1
        labels = torch.from_numpy(image[..., 0].astype(np.int64) * min(self.num_classes, 12) // 256)
        return SimpleNamespace(labels=labels, classes=[str(c) for c in range(self.num_classes)])

    def settings(self) -> dict:
        return {"method": "colour", "num_classes": self.num_classes}


def reference(ds, preds: list[np.ndarray]) -> dict:
    """Independent numpy mIoU/aAcc on the dataset's labels re-read and reduced here."""
    c, ign = ds.num_classes, ds.ignore_index
    inter, ap, ag = np.zeros(c), np.zeros(c), np.zeros(c)
    for s, p in zip(ds.samples, preds):
        g = np.array(Image.open(s.label)).astype(np.int64)
        if ds.layout.reduce_zero_label:
            g = np.where((g == 0) | (g == ign), ign, g - 1)
        v = g != ign
        for k in range(c):
            pk, gk = (p == k) & v, (g == k) & v
            inter[k] += (pk & gk).sum()
            ap[k] += pk.sum()
            ag[k] += gk.sum()
    union = ap + ag - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
    return {"mIoU": 100 * np.nanmean(iou), "aAcc": 100 * inter.sum() / ag.sum(), "iou": 100 * iou}


def write_predictions(ds, folder: Path, seed: int = 1, suffix: str = ".png") -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    preds = []
    for k, s in enumerate(ds.samples):
        g = ds.read_label(k)
        p = np.where(rng.random(g.shape) < 0.7, np.where(g == ds.ignore_index, 0, g),
                     rng.integers(0, ds.num_classes, g.shape))
        dtype = np.uint16 if ds.num_classes > 255 else np.uint8
        out = folder / f"{s.id}{suffix}"
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(p.astype(dtype)).save(out)
        preds.append(p)
    return preds


@pytest.mark.parametrize("name", ["voc21", "ade20k", "ade847", "cityscapes"])
def test_predictions_folder(tmp_path: Path, name: str) -> None:
    spec = get_dataset(name)
    build(tmp_path / "data", name, spec.layouts[0], n=4)
    ds = open_dataset(name, tmp_path / "data")
    preds = write_predictions(ds, tmp_path / "preds")
    res = evaluate(ds, predictions=tmp_path / "preds", output_dir=tmp_path / "out", progress=False)
    ref = reference(ds, preds)
    assert res.num_images == 4
    assert res.metrics.summary()["mIoU"] == pytest.approx(ref["mIoU"], abs=1e-9)
    assert res.metrics.summary()["aAcc"] == pytest.approx(ref["aAcc"], abs=1e-9)
    report = json.loads((tmp_path / "out" / f"{name}_predictions.json").read_text())
    assert report["units"] == "percent" and report["metrics"]["mIoU"] == pytest.approx(ref["mIoU"], abs=1e-9)
    assert len(report["per_class"]) == spec.num_classes
    got = np.array([np.nan if c["IoU"] is None else c["IoU"] for c in report["per_class"]])
    assert np.allclose(got, ref["iou"], equal_nan=True, atol=1e-9)
    assert report["config"]["ignore_index"] == spec.ignore_index
    assert report["config"]["layout"] == spec.layouts[0].name and report["config"]["data_root"] == str(ds.root)
    assert {"torch", "numpy", "python"} <= set(report["versions"]) and report["elapsed_s"] >= 0
    csv = (tmp_path / "out" / f"{name}_predictions.csv").read_text().splitlines()
    assert len(csv) == 2 and csv[0].startswith("dataset,name,method") and "mIoU" in csv[0]
    assert np.load(tmp_path / "out" / f"{name}_predictions_confusion.npy").sum() == res.matrix.sum()
    assert not list((tmp_path / "out").glob(".*partial*"))  # state removed after a complete run


def test_tiff_predictions_and_image_style_names(tmp_path: Path) -> None:
    # context459 (CAT-Seg layout): 16-bit TIFF labels, 65535 ignored, TIFF predictions
    build(tmp_path / "pc", "context459", get_dataset("context459").layout("catseg"), n=3)
    ds = open_dataset("context459", tmp_path / "pc")
    preds = write_predictions(ds, tmp_path / "pp", suffix=".tif")
    res = evaluate(ds, predictions=tmp_path / "pp", progress=False)
    assert res.metrics.mIoU * 100 == pytest.approx(reference(ds, preds)["mIoU"], abs=1e-9)
    # cityscapes: predictions named like the image files, without the city folders
    build(tmp_path / "cs", "cityscapes", get_dataset("cityscapes").layouts[0], n=4)
    ds = open_dataset("cityscapes", tmp_path / "cs")
    preds = write_predictions(ds, tmp_path / "tmp")
    (tmp_path / "flat").mkdir()
    for s in ds.samples:
        (tmp_path / "tmp" / f"{s.id}.png").rename(tmp_path / "flat" / s.image.name)
    res = evaluate(ds, predictions=tmp_path / "flat", progress=False)
    assert res.metrics.mIoU * 100 == pytest.approx(reference(ds, preds)["mIoU"], abs=1e-9)


def test_saved_predictions_rescore_identically(tmp_path: Path) -> None:
    build(tmp_path / "d", "ade847", get_dataset("ade847").layouts[0], n=3)
    ds = open_dataset("ade847", tmp_path / "d")
    first = evaluate(ds, segmenter=ColourSegmenter(847), progress=False, save_predictions=tmp_path / "saved")
    assert np.array(Image.open(tmp_path / "saved" / f"{ds.samples[0].id}.png")).dtype == np.uint16
    again = evaluate(ds, predictions=tmp_path / "saved", progress=False)
    assert np.array_equal(first.matrix, again.matrix) and first.matrix.sum() > 0


def test_segmenter_object_and_reduce_zero_label(tmp_path: Path) -> None:
    spec = get_dataset("ade20k")
    build(tmp_path, "ade20k", spec.layout("mmseg"), n=3)
    ds = open_dataset("ade20k", tmp_path)
    seg = ColourSegmenter(150)
    res = evaluate(ds, segmenter=seg, progress=False, name="colour")
    preds = [seg.predict(load_image(s.image)).labels.numpy() for s in ds.samples]
    ref = reference(ds, preds)
    assert res.metrics.mIoU * 100 == pytest.approx(ref["mIoU"], abs=1e-9)
    assert res.config["settings"] == {"method": "colour", "num_classes": 150} and res.json_path is None


def test_method_by_name_and_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build(tmp_path / "voc", "voc20", get_dataset("voc20").layouts[0], n=5)
    made = {}

    def fake_create(method: str, **kwargs: object) -> ColourSegmenter:
        made.update(kwargs, method=method)
        made["obj"] = ColourSegmenter(20, **kwargs)
        return made["obj"]

    monkeypatch.setattr(ovss.registry, "create_segmenter", fake_create)
    res = evaluate("voc20", tmp_path / "voc", method="sclip", model="ViT-B-16", pretrained="openai", device="cpu",
                   limit=2, output_dir=tmp_path / "out", progress=False, segmenter_options={"prob_threshold": 0.2})
    assert made["method"] == "sclip" and made["dataset"] == "voc20" and made["model"] == "ViT-B-16"
    assert made["pretrained"] == "openai" and made["device"] == "cpu" and made["prob_threshold"] == 0.2
    assert made["obj"].calls == 2 and res.num_images == 2
    report = json.loads((tmp_path / "out" / "voc20_sclip.json").read_text())
    assert set(report["metrics"]) >= {"mIoU_seen", "mIoU_unseen", "hIoU"}  # VOC 15/5 split
    assert report["config"]["limit"] == 2 and report["config"]["reduce_zero_label"] is True


class Interrupt(Exception):
    pass


def test_resume_after_interruption(tmp_path: Path) -> None:
    build(tmp_path / "d", "coco_stuff", get_dataset("coco_stuff").layouts[0], n=7)
    ds = open_dataset("coco_stuff", tmp_path / "d")
    full = evaluate(ds, segmenter=ColourSegmenter(171), progress=False, name="colour")

    def stop_at_4(i: int, sample: object) -> None:
        if i == 3:
            raise Interrupt

    seg = ColourSegmenter(171)
    with pytest.raises(Interrupt):
        evaluate(ds, segmenter=seg, output_dir=tmp_path / "out", name="colour", progress=False, save_every=3,
                 on_image=stop_at_4)
    states = list((tmp_path / "out").glob(".coco_stuff_colour.partial.rank0of1.npz"))
    assert len(states) == 1 and seg.calls == 4
    seg2 = ColourSegmenter(171)
    res = evaluate(ds, segmenter=seg2, output_dir=tmp_path / "out", name="colour", progress=False)
    assert seg2.calls == 3  # only the images not yet scored
    assert np.array_equal(res.matrix, full.matrix) and res.num_images == 7
    assert not states[0].exists()
    # a different configuration does not reuse a state
    with pytest.raises(Interrupt):
        evaluate(ds, segmenter=seg2, output_dir=tmp_path / "out", name="colour", progress=False, on_image=stop_at_4)
    seg3 = ColourSegmenter(171)
    evaluate(ds, segmenter=seg3, output_dir=tmp_path / "out", name="colour", progress=False, limit=6)
    assert seg3.calls == 6


def test_errors(tmp_path: Path) -> None:
    build(tmp_path / "d", "voc21", get_dataset("voc21").layouts[0], n=2)
    ds = open_dataset("voc21", tmp_path / "d")
    with pytest.raises(InputError, match="exactly one of"):
        evaluate(ds, progress=False)
    with pytest.raises(InputError, match="exactly one of"):
        evaluate(ds, method="sclip", predictions=tmp_path, progress=False)
    (tmp_path / "p").mkdir()
    with pytest.raises(InputError, match=r"2 of 2 images have no prediction in .*first: image im000.jpg"):
        evaluate(ds, predictions=tmp_path / "p", progress=False)
    write_predictions(ds, tmp_path / "p")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "p" / "im001.png")
    with pytest.raises(InputError, match="im001: prediction shape"):
        evaluate(ds, predictions=tmp_path / "p", progress=False)
    with pytest.raises(InputError, match="scores 3 classes but the dataset has 21"):
        evaluate(ds, segmenter=ColourSegmenter(3), progress=False)
    with pytest.raises(InputError, match="--limit"):
        evaluate(ds, predictions=tmp_path / "p", limit=0, progress=False)


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.command("noop")
    def noop() -> None:  # a second command keeps "eval" a sub-command, as in the real app
        pass

    return app


def test_cli(tmp_path: Path) -> None:
    build(tmp_path / "d", "context59", get_dataset("context59").layouts[0], n=3)
    ds = open_dataset("context59", tmp_path / "d")
    preds = write_predictions(ds, tmp_path / "p")
    runner = CliRunner()
    r = runner.invoke(_app(), ["eval", "--dataset", "context59", "--data-root", str(tmp_path / "d"),
                               "--predictions", str(tmp_path / "p"), "-o", str(tmp_path / "out"), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "aeroplane" in r.output and "mIoU" in r.output
    flat = " ".join(r.output.split())  # rich wraps long lines at the terminal width
    assert "3 images found" in flat and "official context59 split has 5105" in flat
    report = json.loads((tmp_path / "out" / "context59_predictions.json").read_text())
    assert report["metrics"]["mIoU"] == pytest.approx(reference(ds, preds)["mIoU"], abs=1e-9)
    r = runner.invoke(_app(), ["eval", "--dataset", "context59", "--data-root", str(tmp_path / "missing"),
                               "--predictions", str(tmp_path / "p")])
    assert r.exit_code == 2 and "error: context59: data root" in r.output and "Traceback" not in r.output
    r = runner.invoke(_app(), ["eval", "--dataset", "voc22", "--data-root", str(tmp_path), "--predictions", "x"])
    assert r.exit_code == 2 and "Did you mean" in r.output
    r = runner.invoke(_app(), ["eval", "--dataset", "context59", "--data-root", str(tmp_path / "d"),
                               "--method", "sclip", "--set", "bad"])
    assert r.exit_code == 2 and "KEY=VALUE" in r.output


def test_cli_checkpoint_and_config_go_to_the_method(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build(tmp_path / "d", "voc21", get_dataset("voc21").layouts[0], n=2)
    made: dict = {}

    def fake_create(method: str, **kwargs: object) -> ColourSegmenter:
        made.update(kwargs)
        return ColourSegmenter(21)

    monkeypatch.setattr(ovss.registry, "create_segmenter", fake_create)
    base = ["eval", "-d", "voc21", "--data-root", str(tmp_path / "d"), "--method", "fc_clip", "--device", "cpu",
            "-o", str(tmp_path / "out"), "--no-progress", "--no-table"]
    r = CliRunner().invoke(_app(), base + ["--checkpoint", "w.pth", "--config", "c.yaml", "--set", "alpha=0.5"])
    assert r.exit_code == 0, r.output
    assert made["checkpoint"] == "w.pth" and made["config"] == "c.yaml" and made["alpha"] == 0.5
    assert "panoptic" not in made  # voc21 has no panoptic ground truth
    r = CliRunner().invoke(_app(), base + ["--set", "checkpoint=v.pth"])  # the old spelling still works
    assert r.exit_code == 0 and made["checkpoint"] == "v.pth"
    r = CliRunner().invoke(_app(), base + ["--checkpoint", "w.pth", "--set", "checkpoint=v.pth"])
    assert r.exit_code == 2 and "--checkpoint is given twice" in r.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DIST_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    import ovss.registry
    {setup}
    from ovss.cli import main  # the real `ovss` app, as `torchrun -m ovss eval` runs it
    main()
""")
COLOUR_SETUP = ("from test_eval import ColourSegmenter\n"
                "ovss.registry.create_segmenter = lambda method, **kw: ColourSegmenter(171, **kw)")


def run_torchrun(tmp_path: Path, eval_args: list[str], setup: str = COLOUR_SETUP,
                 nproc: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --nproc-per-node nproc ... eval <eval_args>`` on CPU (Gloo) with the real ``ovss``
    app, after ``setup`` (Python lines run in every process, e.g. replacing the method by a
    stand-in importable from the tests folder); asserts a zero exit status."""
    script = tmp_path / "run_eval.py"
    script.write_text(DIST_SCRIPT.format(tests=str(Path(__file__).parent), setup=setup))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr",
           "127.0.0.1", "--master-port", str(_free_port()), str(script), "eval", *eval_args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=str(REPO))
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def test_two_process_gloo_equals_one_process(tmp_path: Path) -> None:
    build(tmp_path / "d", "coco_stuff", get_dataset("coco_stuff").layouts[0], n=5)
    single = evaluate("coco_stuff", tmp_path / "d", segmenter=ColourSegmenter(171), progress=False, name="fake")
    r = run_torchrun(tmp_path, ["--dataset", "coco_stuff", "--data-root", str(tmp_path / "d"), "--method", "fake",
                                "--device", "cpu", "-o", str(tmp_path / "out"), "--no-progress", "--no-table"])
    report = json.loads((tmp_path / "out" / "coco_stuff_fake.json").read_text())
    assert report["config"]["world_size"] == 2 and report["config"]["backend"] == "gloo"
    assert report["num_images"] == 5
    matrix = np.load(tmp_path / "out" / "coco_stuff_fake_confusion.npy")
    assert np.array_equal(matrix, single.matrix)
    assert report["metrics"] == single.metrics.summary()
    assert r.stdout.count("coco_stuff / fake") == 1  # only rank 0 prints


@pytest.mark.skipif(not (PARITY / "tiny_clip_b16.safetensors").is_file(),
                    reason="shared/parity (tiny CLIP) not beside the checkout")
def test_end_to_end_sclip_tiny(tmp_path: Path) -> None:
    try:
        seg = ovss.registry.create_segmenter("sclip", model=str(PARITY / "tiny_clip_b16.json"),
                                             pretrained=str(PARITY / "tiny_clip_b16.safetensors"),
                                             dataset="voc21", device="cpu")
    except (ImportError, AttributeError, NotImplementedError) as exc:
        pytest.skip(f"sclip is not available yet: {exc}")
    build(tmp_path, "voc21", get_dataset("voc21").layouts[0], n=2)
    ds = open_dataset("voc21", tmp_path)
    preds: list[np.ndarray] = []

    class Recorder:  # keeps what the real segmenter returned, to score it independently
        def predict(self, image: np.ndarray, **kwargs):
            res = seg.predict(image, **kwargs)
            assert res.labels.dtype == torch.int64 and tuple(res.labels.shape) == image.shape[:2]
            preds.append(res.labels.numpy().copy())
            return res

    res = evaluate(ds, segmenter=Recorder(), progress=False, name="sclip", output_dir=tmp_path / "out")
    assert res.num_images == 2 and len(preds) == 2
    assert res.metrics.mIoU * 100 == pytest.approx(reference(ds, preds)["mIoU"], abs=1e-9)
    assert json.loads((tmp_path / "out" / "voc21_sclip.json").read_text())["per_class"][0]["name"] == "background"
