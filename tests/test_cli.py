"""The command line: outputs, folder mode, errors (exit status 2, one line, no traceback)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from ovss.cli import app, parse_extra

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
    r = runner.invoke(app, ["segment", str(photos), "-c", str(cls), "-m", "naclip", "-o", str(out),
                            "--gaussian-std", "3", "--pamr-steps", "2", *tiny_args])
    assert r.exit_code == 0, r.output
    for stem in ("cat", "coffee"):
        rep = json.loads((out / f"{stem}.json").read_text())
        assert rep["classes"] == ["cat", "cup", "table"]
        assert rep["settings"]["gaussian_std"] == 3.0 and rep["settings"]["protocol"]["pamr_steps"] == 2


@pytest.mark.parametrize("args,msg", [
    (["segment", "missing.jpg", "-c", "cat"], "not found"),
    (["segment", "{photo}", "-c", "cat, cat"], "duplicate"),
    (["segment", "{photo}", "-c", ""], "empty"),
    (["segment", "{photo}"], "--classes"),
    (["segment", "{photo}", "-c", "cat", "-m", "nope"], "unknown method"),
    (["segment", "{photo}", "-c", "cat", "--dataset", "voc99"], "no sclip protocol"),
])
def test_errors_are_one_line(args, msg, photos, tiny_args, tmp_path):
    args = [a.replace("{photo}", str(photos / "cat.jpg")) for a in args] + ["-o", str(tmp_path), *tiny_args]
    r = runner.invoke(app, args)
    assert r.exit_code == 2
    assert msg in r.output and "Traceback" not in r.output


def test_methods_command():
    r = runner.invoke(app, ["methods"])
    assert r.exit_code == 0 and "sclip" in r.output and "ECCV 2024" in r.output


def test_parse_extra():
    assert parse_extra(["--proxy-model", "x.json", "--residual", "false", "--beta=1.5", "--flag",
                        "--pamr-dilations", "8,16"]) == {
        "proxy_model": "x.json", "residual": False, "beta": 1.5, "flag": True, "pamr_dilations": [8, 16]}
