"""The command line: outputs, folder mode, errors (exit status 2, one line, no traceback)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import cli_args, tiny_method_options
from ovss import available_methods
from ovss.cli import app, split_extra

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_args(tiny_clip_files):
    model, weights = tiny_clip_files
    return ["--model", model, "--pretrained", weights]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from skimage import data

    d = tmp_path_factory.mktemp("photos")
    Image.fromarray(data.chelsea()).save(d / "cat.jpg", quality=95)
    Image.fromarray(data.coffee()).save(d / "coffee.png")
    return d


def test_segment_one_photo(tiny_args, photos, tmp_path):
    out = tmp_path / "out"
    r = runner.invoke(app, ["segment", str(photos / "cat.jpg"), "--classes", "cat, wall, floor",
                            "--background", "sky", "--method", "clearclip", "-o", str(out), *tiny_args])
    assert r.exit_code == 0, r.output
    labels = Image.open(out / "cat_labels.png")
    assert labels.mode == "P" and labels.size == (451, 300)
    assert set(np.unique(np.asarray(labels))) <= {0, 1, 2, 3}
    overlay = Image.open(out / "cat_overlay.png")
    assert overlay.size[1] == 300 and overlay.size[0] > 451  # photo + legend panel
    rep = json.loads((out / "cat.json").read_text())
    assert rep["classes"] == ["background", "cat", "wall", "floor"]
    assert abs(sum(rep["pixel_share"].values()) - 1) < 1e-6
    assert rep["settings"]["method"] == "clearclip" and rep["settings"]["protocol"]["crop"] == 448


def test_segment_folder_with_class_file_and_method_options(tiny_args, photos, tmp_path):
    cls = tmp_path / "classes.txt"
    cls.write_text("cat, kitten\ncup, mug\ntable\n")
    out = tmp_path / "out"
    r = runner.invoke(app, ["segment", str(photos), "-c", f"@{cls}", "-m", "naclip", "-o", str(out),
                            "--gaussian-std", "3", "--pamr-steps", "2", *tiny_args])
    assert r.exit_code == 0, r.output
    for stem in ("cat", "coffee"):
        rep = json.loads((out / f"{stem}.json").read_text())
        assert rep["classes"] == ["cat", "cup", "table"]
        assert rep["settings"]["gaussian_std"] == 3.0 and rep["settings"]["protocol"]["pamr_steps"] == 2


def _method_args(name: str, parity: Path) -> list[str]:
    """CLI options that build ``name`` from the tiny random models of ``../shared/parity``."""
    opts = tiny_method_options(name, parity)
    if name == "fc_clip":
        opts["panoptic"] = True
    return cli_args(opts)[:-1] if name == "fc_clip" else cli_args(opts)


@pytest.mark.parametrize("method", available_methods())
def test_every_method_from_the_command_line(method, parity_dir, photos, tmp_path):
    out = tmp_path / "out"
    small = tmp_path / "cat.png"
    Image.open(photos / "cat.jpg").resize((150, 100)).save(small)
    extra = _method_args(method, parity_dir)
    if method == "fc_clip":  # a boolean flag takes no value: the photo after it stays a photo
        extra = extra[:-1] + ["--panoptic", str(small)]
    else:
        extra = [str(small)] + extra
    r = runner.invoke(app, ["segment", *extra, "--classes", "cat, grass", "-m", method, "-o", str(out)])
    assert r.exit_code == 0, r.output
    labels = np.asarray(Image.open(out / "cat_labels.png"))
    rep = json.loads((out / "cat.json").read_text())
    assert labels.shape == (100, 150) and labels.max() < len(rep["classes"])
    assert {"cat", "grass"} <= set(rep["classes"]) and rep["settings"]["method"] == method
    assert abs(sum(rep["pixel_share"].values()) - 1) < 1e-6
    assert Image.open(out / "cat_overlay.png").size[1] == 100
    if method == "fc_clip":
        ids = np.asarray(Image.open(out / "cat_panoptic_ids.png").convert("RGB")).astype(np.int64)
        ids = ids[..., 0] + 256 * ids[..., 1] + 65536 * ids[..., 2]
        segments = rep["extras"]["panoptic"]["segments"]
        assert set(np.unique(ids)) <= {0} | {s["id"] for s in segments}


@pytest.mark.parametrize("args,msg", [
    (["segment", "missing.jpg", "-c", "cat"], "not found"),
    (["segment", "{photo}", "-c", "cat, cat"], "duplicate"),
    (["segment", "{photo}", "-c", ""], "empty"),
    (["segment", "{photo}"], "--classes"),
    (["segment", "{photo}", "-c", "cat", "-m", "nope"], "unknown method"),
    (["segment", "{photo}", "-c", "cat", "--dataset", "voc99"], "sclip has no protocol"),
    (["segment", "{notes}", "-c", "cat"], "cannot read"),
    (["segment", "{photo}", "-c", "cat", "--device", "gpu"], "unknown device 'gpu'"),
    (["segment", "{photo}", "-c", "cat", "--gausian-std", "3", "-m", "naclip"], "did you mean"),
    (["segment", "{photo}", "-c", "cat", "-m", "clip_diy", "--crop", "64"], "clip_diy has no option 'crop'"),
    (["segment", "{photo}", "-c", "cat", "--model", "ViT-Q-99", "--pretrained", "none"], "unknown CLIP model"),
    (["segment", "{photo}", "-c", "cat", "--model", "ViT-B-32", "--pretrained", "{weights}"], "does not fit"),
])
def test_errors_are_one_line(args, msg, photos, tiny_args, tmp_path):
    notes = tmp_path / "notes.jpg"
    notes.write_text("not an image")
    subs = {"{photo}": str(photos / "cat.jpg"), "{notes}": str(notes), "{weights}": tiny_args[3]}
    args = [subs.get(a, a) for a in args] + ["-o", str(tmp_path)]
    if "--model" not in args:
        args += tiny_args
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    assert msg.lower() in r.output.lower() and "Traceback" not in r.output


def test_offline_tag_is_one_line(photos, tmp_path, monkeypatch):
    import ovss.backbones.clip as bc

    monkeypatch.setattr(bc, "hub_file_cached", lambda repo, files: False)
    monkeypatch.setattr(bc, "hub_reachable", lambda timeout=1.0: False)
    r = runner.invoke(app, ["segment", str(photos / "cat.jpg"), "-c", "cat", "-o", str(tmp_path)])
    assert r.exit_code == 2 and "--pretrained" in r.output and "Traceback" not in r.output


def test_methods_command():
    r = runner.invoke(app, ["methods"])
    assert r.exit_code == 0 and "sclip" in r.output and "ECCV 2024" in r.output
    r = runner.invoke(app, ["methods", "naclip"])
    assert r.exit_code == 0 and "context59" in r.output and "--gaussian-std" in r.output
    r = runner.invoke(app, ["methods", "nacl1p"])
    assert r.exit_code == 2 and "unknown method" in r.output


def test_split_extra_boolean_flags():
    tokens = ["--panoptic", "a.jpg", "--beta", "2", "--crf", "false", "b.jpg", "--x=1"]
    assert split_extra(tokens, {"panoptic", "crf"}) == (["a.jpg", "b.jpg"], {"panoptic": "true", "beta": "2",
                                                                             "crf": "false", "x": "1"})
    assert split_extra(["--panoptic", "a.jpg"]) == ([], {"panoptic": "a.jpg"})  # unknown: takes a value


def test_option_text_is_parsed_by_the_declared_types():
    from ovss.options import parse_option_tokens
    from ovss.registry import parse_options

    text = parse_option_tokens(["--proxy-model", "x.json", "--beta=1.5", "--pamr-dilations", "8,16"])
    assert text == {"proxy_model": "x.json", "beta": "1.5", "pamr_dilations": "8,16"}
    assert parse_options("naclip", {"pamr_dilations": "8,16", "gaussian_std": "3", "pretrained": "none",
                                    "batch_size": "auto"}, from_text=True) == {
        "pamr_dilations": (8, 16), "gaussian_std": 3.0, "pretrained": None, "batch_size": "auto"}
    assert parse_options("fc_clip", {"panoptic": "true"}, from_text=True) == {"panoptic": True}
