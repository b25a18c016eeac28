"""The method contract, held for every registered method (as timm's ``test_models.py`` does over
``list_models()``): construction with the common keywords, one predict shape for a path, a PIL image
and an array, CPU float32 scores whose argmax is the label map, class permutations, background words
and ``prob_threshold`` as declared, JSON-able settings, one-line errors, and the same labels from
``ovss segment``, ``ovss eval`` and the web page for the same image."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import ovss
from conftest import cli_args, tiny_method_options
from ovss.errors import InputError, UnknownNameError
from ovss.options import option_specs
from ovss.registry import method_class, method_info

METHODS = ovss.available_methods()
CLASSES = ["cat", "grass", "sofa"]


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    from skimage import data

    path = tmp_path_factory.mktemp("contract") / "cat.png"
    Image.fromarray(data.chelsea()).resize((96, 64), Image.BILINEAR).save(path)
    return path


_BUILT: dict[str, ovss.Segmenter] = {}


def build(method: str, parity: Path, **kw) -> ovss.Segmenter:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ovss.create_segmenter(method, device="cpu", precision="fp32", **{**tiny_method_options(method, parity),
                                                                               **kw})


@pytest.fixture(scope="module", params=METHODS)
def seg(request, parity_dir) -> ovss.Segmenter:
    if request.param not in _BUILT:
        _BUILT.clear()  # keep one model in memory at a time
        _BUILT[request.param] = build(request.param, parity_dir)
    return _BUILT[request.param]


def test_declarations(seg):
    cls = type(seg)
    cap = cls.capabilities
    assert cls.method in METHODS and method_info(cls.method).paper
    assert cap.decoder in ("opencv", "pillow") and "fp32" in cap.precisions
    # every option is typed, keyword-only past (model, pretrained), with a default
    specs = option_specs(cls)
    for name in ("dataset", "device", "short_side", "max_long_side", "precision", "classes", "background"):
        assert name in specs, name
    for name, spec in specs.items():
        assert not spec.required, name
    for ds in cls.datasets():
        row = cls.protocols.get(ds)
        assert row.dataset == ds and row.source, (ds, row)
        assert cls.protocols.get(ds.upper()) is row  # one alias rule: any letter case
    from ovss.training.cli import train_app

    assert cap.trainable == (cls.method in {c.name for c in train_app.registered_commands})  # `ovss train NAME`
    if not cap.class_order_invariant:
        assert "order" in (cls.__doc__ or "")  # the dependence is documented where it is declared
        assert cap.order_invariant_options and all(k in specs for k, _ in cap.order_invariant_options)


def test_one_predict_shape(seg, photo):
    a = seg.predict(photo, CLASSES)
    b = seg.predict(Image.open(photo), CLASSES)
    c = seg.predict(np.asarray(Image.open(photo).convert("RGB")), CLASSES)
    for r in (a, b, c):
        assert r.scores.dtype == torch.float32 and r.scores.device.type == "cpu"
        assert r.labels.dtype == torch.int64 and r.labels.device.type == "cpu"
        assert tuple(r.scores.shape) == (len(r.classes), 64, 96) and tuple(r.labels.shape) == (64, 96)
        assert bool(torch.isfinite(r.scores).all())
        assert r.score_kind == seg.score_kind
        json.dumps(r.settings)
    assert set(CLASSES) <= set(a.classes)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.labels, c.labels)
    assert torch.equal(a.scores.argmax(0), a.labels)
    json.dumps(seg.settings())
    with pytest.warns(DeprecationWarning):
        assert a.logits is a.scores


def test_class_permutation_permutes_channels(seg, photo, parity_dir):
    if not seg.capabilities.class_order_invariant:  # the declared order-independent variant
        seg = build(seg.method, parity_dir, **dict(seg.capabilities.order_invariant_options))
    a = seg.predict(photo, CLASSES)
    b = seg.predict(photo, CLASSES[::-1])
    order = [b.classes.index(n) for n in a.classes]
    assert torch.allclose(b.scores[order], a.scores, atol=1e-5, rtol=1e-5)
    lut = torch.tensor(order)
    same = (lut[a.labels] == b.labels).float().mean()
    assert float(same) > 0.999


def test_background_words(seg, photo):
    if not seg.capabilities.background:
        with pytest.raises(InputError, match="background"):
            seg.predict(photo, CLASSES, background="sky, wall")
        return
    res = seg.predict(photo, CLASSES, background="sky, wall")
    assert res.background == 0 and res.classes[0] == "background" and len(res.classes) == len(CLASSES) + 1
    assert res.settings["queries"][0] == ["sky", "wall"]


def test_prob_threshold(seg, photo):
    cap = seg.capabilities
    if not cap.prob_threshold:
        with pytest.raises(InputError, match="prob_threshold"):
            seg.predict(photo, CLASSES, prob_threshold=0.5)
        return
    with pytest.raises(InputError, match="prob_threshold"):
        seg.predict(photo, CLASSES, prob_threshold=float("nan"))
    top = cap.score_range.hi
    if top is not None:
        with pytest.raises(InputError, match="prob_threshold"):
            seg.predict(photo, CLASSES, prob_threshold=top + 6)
    thr = top if top is not None else 1e9
    res = seg.predict(photo, CLASSES, prob_threshold=thr)
    assert res.background is not None
    below = res.scores.max(0).values < thr
    assert float(below.float().mean()) > 0.5  # the case is not vacuous
    assert bool((res.labels[below] == res.background).all())  # every pixel scored below it is background


@pytest.mark.parametrize("method", METHODS)
def test_option_errors(method, parity_dir):
    with pytest.raises(InputError, match="(?i)did you mean"):
        ovss.create_segmenter(method, short_sid=64)
    with pytest.raises(InputError, match="short_side must be"):
        ovss.create_segmenter(method, short_side="abc")
    with pytest.raises(InputError, match="short_side must be"):
        ovss.create_segmenter(method, short_side=0)
    with pytest.raises(InputError, match="precision"):
        ovss.create_segmenter(method, precision="fp64")
    with pytest.raises(UnknownNameError, match=f"{method} has no protocol for dataset 'voc99'"):
        build(method, parity_dir, dataset="voc99")


# -- one image path: ovss segment, ovss eval and the web page give the same labels ------------------

#: a benchmark of ``ovss.data`` each method has an official protocol for
EVAL_DATASET = {"zsseg": "ade20k", "zegformer": "voc20", "cat_seg": "voc20"}


def _one_image_dataset(root: Path, name: str, photo: Path) -> Path:
    from ovss.data.datasets import get_dataset

    spec = get_dataset(name)
    layout = spec.layouts[0]
    rgb = np.asarray(Image.open(photo).convert("RGB"))
    img = root / layout.image_dir / f"im000{layout.image_suffix}"
    img.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(img)
    lab = root / layout.label_dir / f"im000{layout.label_suffix}"
    lab.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ones(rgb.shape[:2], np.uint8)).save(lab)
    if layout.split_file:
        (root / layout.split_file).parent.mkdir(parents=True, exist_ok=True)
        (root / layout.split_file).write_text("im000\n")
    return img


@pytest.mark.parametrize("method", METHODS)
def test_cli_eval_and_web_page_agree(method, parity_dir, photo, tmp_path):
    from ovss.cli import app
    from ovss.demo.app import DemoBackend, DemoConfig

    dataset = EVAL_DATASET.get(method, "voc21")
    opts = tiny_method_options(method, parity_dir)
    root = tmp_path / "data"
    image = _one_image_dataset(root, dataset, photo)  # a JPEG for VOC: decoders matter
    runner = CliRunner()
    r = runner.invoke(app, ["segment", str(image), "-m", method, "--dataset", dataset, "-o", str(tmp_path / "seg"),
                            *cli_args(opts)])
    assert r.exit_code == 0, r.output
    via_cli = np.asarray(Image.open(tmp_path / "seg" / "im000_labels.png"))

    r = runner.invoke(app, ["eval", "-d", dataset, "--data-root", str(root), "-m", method, "--limit", "1",
                            "--device", "cpu", "-o", str(tmp_path / "eval"), "--save-predictions",
                            str(tmp_path / "pred"), "--no-progress", "--no-table",
                            *[f"--set={k}={json.dumps(v)}" for k, v in opts.items()]])
    assert r.exit_code == 0, r.output
    via_eval = np.asarray(Image.open(tmp_path / "pred" / "im000.png"))

    backend = DemoBackend(DemoConfig(method=method, models_dir=str(parity_dir)))  # the page reads files only there
    text = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in opts.items()
                    if k not in ("model", "pretrained", "short_side"))
    _, res, _ = backend.run(str(image), "", None, None, method, opts.get("model"), opts.get("pretrained"), "cpu",
                            dataset, opts.get("short_side"), None, None, text)
    via_web = res.labels.numpy()
    assert via_cli.shape == via_eval.shape == via_web.shape == (64, 96)
    assert np.array_equal(via_cli, via_web)
    # ovss eval scores in the dataset's label space: background-less benchmarks drop nothing here, and the
    # label maps are class indices of the protocol's list in both
    assert np.array_equal(via_cli, via_eval)


def test_capabilities_replace_signature_inspection():
    """The CLI, ovss eval and the web page read declared capabilities: a method whose class declares
    panoptic output is the one ovss eval builds with panoptic=True."""
    panoptic = [m for m in METHODS if method_class(m).capabilities.panoptic]
    assert panoptic == ["fc_clip"]
    for m in panoptic:
        assert "panoptic" in option_specs(method_class(m))


def test_score_range_of_kinds():
    from ovss.segmenter import SCORE_KINDS, Capabilities

    for kind in SCORE_KINDS:
        rng = Capabilities(score_kind=kind).score_range  # type: ignore[arg-type]
        assert rng.lo is None or math.isfinite(rng.lo)
