"""Hostile input (issue 20): each case of the sweep, as a regression test. Every bad input gives one
line naming what was wrong, a non-zero exit, no partial or overwritten output; the web page reads no
server file and loads no uploaded file as a model. Numbers in the comments are the issue's cases."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import ovss
import ovss.registry
from conftest import tiny_method_options
from ovss.cli import app
from ovss.errors import DatasetError, InputError, OvssError, UnknownNameError
from ovss.imageio import find_images, list_images, load_image, read_image_d2, set_max_pixels
from ovss.outputs import plan_outputs, write_outputs
from ovss.segmenter import Segmentation, SegmentationResult, Segmenter
from ovss.vocabulary import classes_argument, parse_classes, read_classes_file

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
COCO34 = ("person, bicycle, car, motorcycle, airplane, bus, train, truck, boat, traffic light, fire hydrant, "
          "stop sign, parking meter, bench, bird, cat, dog, horse, sheep, cow, elephant, bear, zebra, giraffe, "
          "backpack, umbrella, handbag, tie, suitcase, frisbee, skis, snowboard, sports ball, kite")


def one_line(r: Any) -> str:
    """The CLI's error output joined (rich wraps at the terminal width); no traceback in it."""
    assert "Traceback" not in r.output, r.output
    return " ".join(r.output.split())


@pytest.fixture(scope="module")
def tiny_args(tiny_clip_files: tuple[str, str]) -> list[str]:
    return ["--model", tiny_clip_files[0], "--pretrained", tiny_clip_files[1], "--short-side", "64"]


@pytest.fixture(scope="module")
def sclip(parity_dir: Path) -> Segmenter:
    return ovss.create_segmenter("sclip", **{**tiny_method_options("sclip", parity_dir), "short_side": 64})


@pytest.fixture
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything builds a model (checks must come first)."""
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a model was loaded before the input checks")

    monkeypatch.setattr(ovss.registry, "create_segmenter", refuse)


def png(path: Path, h: int = 24, w: int = 32, value: int = 90) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(path)
    return path


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that claims ``width`` x ``height`` pixels in a few dozen bytes (IHDR + an empty IDAT)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0"))
                     + chunk(b"IEND", b""))
    return path


# ----------------------------------------------------------------------------- 1, 2: the web page
def test_web_page_loads_no_server_file_without_models_dir(tmp_path: Path) -> None:
    gr = pytest.importorskip("gradio")
    from ovss.demo.app import DemoBackend, DemoConfig, ModelCache

    loads: list[dict] = []
    backend = DemoBackend(DemoConfig(model="ViT-B-16", pretrained="openai"),
                          ModelCache(factory=lambda method, **kw: loads.append(kw)))
    upload = tmp_path / "gradio" / "abc" / "weights.pth"  # what gradio's upload route hands back
    upload.parent.mkdir(parents=True)
    upload.write_bytes(b"pickle")
    photo = png(tmp_path / "p.png")

    def run(**over: Any) -> None:
        args = dict(photo=str(photo), classes="cat", background=None, prob_threshold=None, method="sclip",
                    model="ViT-B-16", pretrained="openai", device="cpu", dataset=None, short_side="", crop="",
                    stride="", options="")
        backend.run(**{**args, **over})

    for over in ({"pretrained": str(upload)}, {"pretrained": "/etc/passwd"}, {"model": "../cfg.json"},
                 {"pretrained": "weights.safetensors"}, {"options": f"--pretrained {upload}"},
                 {"method": "zsseg", "options": f"--checkpoint {upload}"},
                 {"method": "zsseg", "options": "--config /etc/hostname"}):
        with pytest.raises(InputError, match="loads no files from the server"):
            run(**over)
    with pytest.raises(InputError, match="downloads no URLs"):
        run(pretrained="https://example.com/w.pth")
    assert loads == []  # nothing was ever loaded
    # names are not files: open_clip names/tags, hub ids, zoo names pass through to the loader
    kw = backend._request_kwargs("pnp_ovss", None, None, "cpu", None, "", "", "",
                                 "--model Salesforce/blip-itm-large-coco")
    assert kw["model"] == "Salesforce/blip-itm-large-coco"
    kw = backend._request_kwargs("sclip", "ViT-L-14", "laion2b_s32b_b82k", "cpu", None, "", "", "", "")
    assert (kw["model"], kw["pretrained"]) == ("ViT-L-14", "laion2b_s32b_b82k")
    # with --lock-model the boxes are ignored: the operator's (trusted) defaults are used
    locked = DemoBackend(DemoConfig(model="/srv/m.json", pretrained="/srv/m.safetensors", lock_model=True))
    kw = locked._request_kwargs("sclip", "x", str(upload), "cpu", None, "", "", "", f"--pretrained {upload}")
    assert (kw["model"], kw["pretrained"]) == ("/srv/m.json", "/srv/m.safetensors")
    assert gr is not None


def test_web_page_models_dir(tmp_path: Path) -> None:
    pytest.importorskip("gradio")
    from ovss.demo.app import DemoBackend, DemoConfig, check_models_dir

    models = tmp_path / "models"
    models.mkdir()
    (models / "clip.safetensors").write_bytes(b"x")
    secret = tmp_path / "secret.safetensors"
    secret.write_bytes(b"x")
    (models / "link.safetensors").symlink_to(secret)
    backend = DemoBackend(DemoConfig(model="ViT-B-16", pretrained="openai", models_dir=str(models)))

    def kwargs(pretrained: str) -> dict:
        return backend._request_kwargs("sclip", "ViT-B-16", pretrained, "cpu", None, "", "", "", "")

    assert kwargs("clip.safetensors")["pretrained"] == str((models / "clip.safetensors").resolve())
    assert kwargs(str(models / "clip.safetensors"))["pretrained"] == str((models / "clip.safetensors").resolve())
    for bad in (str(secret), "../secret.safetensors", "link.safetensors", "missing.safetensors", "/etc/passwd"):
        with pytest.raises(InputError, match="not a file of this page's models folder"):
            kwargs(bad)
    # a models folder that holds the upload or result folders (or the temp folder) is refused at start
    import tempfile

    for bad_dir in (tempfile.gettempdir(), "/"):
        with pytest.raises(InputError, match="visitors' uploads"):
            check_models_dir(bad_dir)


def test_classes_box_reads_no_file(tmp_path: Path) -> None:
    pytest.importorskip("gradio")
    from ovss.demo.app import check_classes

    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET-TOKEN\n")
    for text in (str(secret), f"@{secret}", "classes.txt"):
        with pytest.raises(InputError, match="reads no files"):
            check_classes(text, None)
    # a path without a file suffix is just a class name: its text, never the file's content
    noext = tmp_path / "cmdline"
    noext.write_text("SECRET-TOKEN")
    assert check_classes(str(noext), None).names == (str(noext),)
    assert check_classes("/proc/self/cmdline", None).names == ("/proc/self/cmdline",)


def test_class_files_only_when_asked(tmp_path: Path, sclip: Segmenter) -> None:
    f = tmp_path / "classes.txt"
    f.write_text("\ufeffcat, kitten\ndog\n", encoding="utf-8")  # 17: a BOM from a Windows editor
    want = parse_classes([("cat", "kitten"), "dog"])
    assert read_classes_file(f) == parse_classes(f) == classes_argument(f"@{f}") == want
    for text in (str(f), "classes.txt", f"@{f}"):  # the API never opens a file named by a string
        with pytest.raises(InputError, match="looks like a file name"):
            parse_classes(text)
    with pytest.raises(InputError, match="looks like a file name"):
        sclip.predict(np.zeros((16, 16, 3), np.uint8), str(f))
    assert sclip.predict(np.zeros((16, 16, 3), np.uint8), f).classes == ["cat", "dog"]
    # 7: Latin-1, binary, pipe, folder: one line each
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9, th\xe9\n".encode("latin-1"))
    with pytest.raises(InputError, match="not UTF-8 text"):
        read_classes_file(latin)
    with pytest.raises(InputError, match="not a regular file"):
        read_classes_file(tmp_path)
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        read_classes_file(fifo)
    with pytest.raises(InputError, match="strings"):
        parse_classes([1, 2])  # type: ignore[list-item]
    # FC-CLIP's id:name files go through the same explicit reader, split as FC-CLIP splits them
    from ovss.methods.fc_clip import read_fcclip_class_file
    from ovss.vocabulary import packaged_class_file

    official = packaged_class_file("fc_clip", "ade20k_150_with_prompt_eng.txt")
    assert read_classes_file(official) == read_fcclip_class_file(official)
    idn = tmp_path / "ids.txt"
    idn.write_text("0:invalid_class_id\n1:cat, kitten,kitty\n2:dog\n")
    v = read_classes_file(idn)
    assert v.names == ("cat", "dog") and v.queries[0] == ("cat", "kitten", "kitty")


def test_cli_class_file_flags(tmp_path: Path, no_model_load: None) -> None:
    f = tmp_path / "c.txt"
    f.write_text("cat\n")
    img = png(tmp_path / "a.png")
    r = runner.invoke(app, ["segment", str(img), "--classes", str(f), "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and "looks like a file name" in one_line(r) and "@FILE" in one_line(r)
    r = runner.invoke(app, ["segment", str(img), "--classes", "cat", "--classes-file", str(f)])
    assert r.exit_code == 2 and "give the classes once" in one_line(r)
    # with the class file read, the next step is the model: our stand-in refuses, proving the order
    for args in (["--classes", f"@{f}"], ["--classes-file", str(f)]):
        r = runner.invoke(app, ["segment", str(img), *args, "-o", str(tmp_path / "o")])
        assert isinstance(r.exception, AssertionError) and "model was loaded" in str(r.exception)


# ----------------------------------------------------------------------------- 3: pixel limits
def test_pixel_limit_from_the_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    huge = png_header(tmp_path / "huge.png", 60000, 60000)
    assert huge.stat().st_size < 100
    for read in (load_image, read_image_d2):
        with pytest.raises(InputError, match="resize it first"):
            read(huge)
    big = png_header(tmp_path / "big.png", 12000, 9000)  # 108 MP: past ours, within Pillow's own check
    with pytest.raises(InputError, match="108.0 megapixels, over the limit of 100"):
        load_image(big)
    small = png(tmp_path / "small.png", 32, 48)
    try:
        set_max_pixels(1000)
        with pytest.raises(InputError, match="over the limit"):
            load_image(small)
    finally:
        set_max_pixels(None)
    monkeypatch.setenv("OVSS_MAX_PIXELS", "1000")
    with pytest.raises(InputError, match="over the limit"):
        load_image(small)
    monkeypatch.setenv("OVSS_MAX_PIXELS", "lots")
    with pytest.raises(InputError, match="OVSS_MAX_PIXELS"):
        load_image(small)
    with pytest.raises(InputError, match="--max-pixels"):
        set_max_pixels(0)


def test_cli_max_pixels(tmp_path: Path, tiny_args: list[str]) -> None:
    img = png(tmp_path / "in" / "a.png", 32, 48)
    out = tmp_path / "out"
    try:
        r = runner.invoke(app, ["segment", str(img), "-c", "cat", "-o", str(out), "--max-pixels", "1000",
                                *tiny_args])
        assert r.exit_code == 2 and "48x32 = 0.0 megapixels, over the limit of 0.001" in one_line(r)
        assert not list(out.glob("*"))
        r = runner.invoke(app, ["segment", str(img), "-c", "cat", "-o", str(out), "--max-pixels", "0", *tiny_args])
        assert r.exit_code == 2 and "--max-pixels must be a positive" in one_line(r)
        write_voc(tmp_path / "voc", n=2)
        r = runner.invoke(app, ["eval", "-d", "voc21", "--data-root", str(tmp_path / "voc"), "-m", "sclip",
                                *tiny_args[:4], "--set", "short_side=64", "--max-pixels", "100", "--no-progress",
                                "-o", str(tmp_path / "res"), "--device", "cpu"])
        assert r.exit_code == 2 and "over the limit of 0.0001" in one_line(r)
    finally:
        set_max_pixels(None)


# ----------------------------------------------------------------------------- 4: long class lists
def test_long_class_list(sclip: Segmenter, tmp_path: Path) -> None:
    assert len(COCO34.encode()) > 255
    rgb = np.zeros((16, 16, 3), np.uint8)
    assert len(sclip.predict(rgb, COCO34).classes) == 34
    assert parse_classes("x" * 300).names == ("x" * 300,)  # one long name: a name, not an OSError
    pytest.importorskip("gradio")
    from ovss.demo.app import check_classes

    assert len(check_classes(COCO34, None)) == 34


# ----------------------------------------------------------------------------- 5: thin images
@pytest.mark.parametrize("method", ["sclip", "naclip"])
def test_thin_images(method: str, parity_dir: Path) -> None:
    base = tiny_method_options(method, parity_dir)
    for over, shape in (({}, (1, 300)), ({}, (500, 1)), ({"crop": 0}, (1, 300)), ({"short_side": 1}, (64, 64))):
        seg = ovss.create_segmenter(method, **{**base, "short_side": 224, **over})
        res = seg.predict(np.full(shape + (3,), 120, np.uint8), "cat, dog")
        assert res.scores.shape == (2, *shape) and bool(torch.isfinite(res.scores).all())
    # only windows thinner than a patch are padded: a normal window is left as the official code has it
    assert seg.window_padding(224, 224) == (0, 0, 0, 0) and seg.window_padding(20, 224) == (0, 0, 0, 0)
    assert seg.window_padding(7, 224) == (0, 0, 4, 5)


# ----------------------------------------------------------------------------- 6: bad output paths
def test_bad_output_paths_before_the_model(tmp_path: Path, no_model_load: None) -> None:
    img = png(tmp_path / "a.png")
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    for out, msg in ((afile, "names a file"), (afile / "sub", "which is a file"),
                     (Path("/proc/ovss-hostile-out"), "cannot write in -o folder")):
        r = runner.invoke(app, ["segment", str(img), "-c", "cat", "-o", str(out)])
        assert r.exit_code == 2 and msg in one_line(r), r.output
    assert afile.read_text() == "x"


def write_voc(root: Path, n: int = 3, ids: list[str] | None = None, bom: bool = False) -> list[str]:
    """A tiny VOC2012 (mmseg layout) of ``n`` images with labels 0..3."""
    ids = ids or [f"im{k}" for k in range(n)]
    rng = np.random.default_rng(0)
    for i in dict.fromkeys(ids):
        png(root / "JPEGImages" / f"{i}.jpg", 12, 16, value=40 * (len(i) % 5))
        lab = root / "SegmentationClass" / f"{i}.png"
        lab.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 4, (12, 16)).astype(np.uint8)).save(lab)
    split = root / "ImageSets" / "Segmentation" / "val.txt"
    split.parent.mkdir(parents=True, exist_ok=True)
    split.write_text(("\ufeff" if bom else "") + "\n".join(ids) + "\n", encoding="utf-8")
    return ids


def test_eval_output_paths_before_the_model(tmp_path: Path, no_model_load: None) -> None:
    from ovss.evaluation import evaluate

    write_voc(tmp_path / "voc")
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    for kw, msg in (({"output_dir": afile}, "-o"), ({"save_predictions": afile / "sub"}, "--save-predictions"),
                    ({"output_dir": Path("/proc/ovss-hostile-out")}, "cannot write")):
        with pytest.raises(InputError, match=msg):
            evaluate("voc21", tmp_path / "voc", method="sclip", progress=False, **kw)


# ----------------------------------------------------------------------------- 7: types and configs
def test_wrong_types_and_configs(tmp_path: Path, parity_dir: Path) -> None:
    base = tiny_method_options("sclip", parity_dir)
    for over, msg in (({"short_side": "abc"}, "short_side must be"), ({"logit_scale": float("nan")}, "logit_scale"),
                      ({"logit_scale": 0}, "logit_scale"), ({"logit_scale": -1}, "logit_scale"),
                      ({"crop": 64, "stride": 128}, "stride")):  # 15: no window would cover some pixels
        with pytest.raises(InputError, match=msg):
            ovss.create_segmenter("sclip", **{**base, **over})
    with pytest.raises(InputError, match="gaussian_std"):
        ovss.create_segmenter("naclip", **{**tiny_method_options("naclip", parity_dir), "gaussian_std": float("nan")})
    binary = tmp_path / "model.json"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(UnknownNameError, match="not valid JSON"):
        ovss.create_segmenter("sclip", model=str(binary), pretrained=None)
    cfg = json.loads((parity_dir / "tiny_clip_b16.json").read_text())
    cfg["vision_cfg"]["width"] = -64
    neg = tmp_path / "neg.json"
    neg.write_text(json.dumps(cfg))
    with pytest.raises(UnknownNameError, match="vision_cfg.width is -64"):
        ovss.create_segmenter("sclip", model=str(neg), pretrained=None)
    from ovss.importers.d2config import load_config
    from ovss.importers.zsseg import read_config

    (tmp_path / "self.yaml").write_text("_BASE_: self.yaml\nMODEL: {}\n")
    (tmp_path / "a.yaml").write_text("_BASE_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_BASE_: a.yaml\n")
    (tmp_path / "bin.yaml").write_bytes(bytes(range(128, 256)))
    (tmp_path / "negdim.yaml").write_text("MODEL:\n  MASK_FORMER:\n    HIDDEN_DIM: -256\n")
    for read in (load_config, read_config):
        for name, msg in (("self.yaml", "comes back to self.yaml"), ("a.yaml", "comes back to a.yaml"),
                          ("bin.yaml", "not UTF-8"), ("negdim.yaml", "HIDDEN_DIM is -256")):
            with pytest.raises(InputError, match=msg):
                read(tmp_path / name)


def test_eval_set_wrong_type(tmp_path: Path) -> None:
    write_voc(tmp_path / "voc")
    r = runner.invoke(app, ["eval", "-d", "voc21", "--data-root", str(tmp_path / "voc"), "-m", "sclip",
                            "--set", "short_side=abc", "-o", str(tmp_path / "out"), "--no-progress"])
    assert r.exit_code == 2 and "short_side must be" in one_line(r)


def test_api_wrong_types(sclip: Segmenter) -> None:
    rgb = np.zeros((16, 16, 3), np.uint8)
    for kw, msg in (({"prob_threshold": "nan"}, "must be a number"), ({"prob_threshold": float("nan")}, "finite"),
                    ({"prob_threshold": 7}, "<= 1"), ({"prob_threshold": -1}, ">= 0")):
        with pytest.raises(InputError, match=msg):
            sclip.predict(rgb, "cat, dog", **kw)
    with pytest.raises(InputError, match="strings"):
        sclip.predict(rgb, [1, 2])  # type: ignore[list-item]


# ----------------------------------------------------------------------------- 9-11, 14, 19: folders and outputs
def test_named_pipes_and_urls(tmp_path: Path) -> None:
    png(tmp_path / "d" / "a.png")
    os.mkfifo(tmp_path / "d" / "pipe.png")
    assert [p.name for p in list_images([tmp_path / "d"])] == ["a.png"]  # 9: a pipe is never opened
    for bad, msg in ((tmp_path / "d" / "pipe.png", "not a regular file"),
                     ("https://example.com/photo.jpg", "https://example.com/photo.jpg is a URL")):
        with pytest.raises(InputError, match=msg):
            list_images([bad])
        with pytest.raises(InputError, match="not a regular file|not found"):
            load_image(bad)
    r = runner.invoke(app, ["segment", "https://example.com/photo.jpg", "-c", "cat"])
    assert r.exit_code == 2 and "https://example.com/photo.jpg is a URL" in one_line(r)  # 19: reported verbatim


def test_output_plan_mirrors_and_refuses_collisions(tmp_path: Path) -> None:
    for rel in ("d1/a.png", "d2/a.png", "d3/a_1.png", "d2/sub/b.png"):
        png(tmp_path / rel)
    found = find_images([tmp_path / "d1", tmp_path / "d2", tmp_path / "d3"])
    assert plan_outputs(found, tmp_path / "out") == ["d1/a", "d2/a", "d2/sub/b", "d3/a_1"]
    assert plan_outputs(find_images([tmp_path / "d2"]), tmp_path / "out") == ["a", "sub/b"]
    png(tmp_path / "d1" / "a.jpg")
    with pytest.raises(InputError, match="would both write"):
        plan_outputs(find_images([tmp_path / "d1"]), tmp_path / "out")
    png(tmp_path / "e" / "x.png")
    png(tmp_path / "e" / "x_overlay.png")
    with pytest.raises(InputError, match="would overwrite the input image"):
        plan_outputs(find_images([tmp_path / "e"]), tmp_path / "e")
    (tmp_path / "o1").mkdir()
    (tmp_path / "o1" / "d1").write_text("x")  # a file where a mirrored folder goes
    with pytest.raises(InputError, match="is a file where the results"):
        plan_outputs(found, tmp_path / "o1")
    (tmp_path / "o2" / "d2" / "a_labels.png").mkdir(parents=True)  # a folder where a result goes
    with pytest.raises(InputError, match="is a folder where a result"):
        plan_outputs(found, tmp_path / "o2")


def test_cli_folders(tmp_path: Path, tiny_args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for rel in ("d1/a.png", "d2/a.png", "d3/a_1.png", "d2/c.png"):
        png(Path(rel))
    Path("d2/b.png").write_bytes(b"not a png")  # 11: between two good images
    r = runner.invoke(app, ["segment", "d1", "d2", "d3", "-c", "cat, dog", "-o", "out", *tiny_args])
    text = one_line(r)
    assert r.exit_code == 2 and "1 of 5 image(s) could not be segmented" in text and "d2/b.png: cannot read" in text
    written = sorted(str(p) for p in Path("out").rglob("*_labels.png"))
    assert written == ["out/d1/a_labels.png", "out/d2/a_labels.png", "out/d2/c_labels.png",
                       "out/d3/a_1_labels.png"]  # 10: no result overwritten, none lost
    assert json.loads(Path("out/d2/a.json").read_text())["image"] == "d2/a.png"
    # --fail-fast stops at the bad image: c.png (after it) is not segmented
    r = runner.invoke(app, ["segment", "d2", "-c", "cat", "-o", "ff", "--fail-fast", *tiny_args])
    assert r.exit_code == 2 and "b.png" in one_line(r) and "--fail-fast" in one_line(r)
    assert sorted(p.name for p in Path("ff").glob("*_labels.png")) == ["a_labels.png"]
    # 14: the -o folder inside the input folder is never read as input, so a rerun does the same work
    Path("d2/b.png").unlink()
    for _ in range(2):
        r = runner.invoke(app, ["segment", "d2", "-c", "cat", "-o", "d2/out", *tiny_args])
        assert r.exit_code == 0, r.output
    assert sorted(str(p) for p in Path("d2/out").rglob("*_labels.png")) == ["d2/out/a_labels.png",
                                                                             "d2/out/c_labels.png"]
    r = runner.invoke(app, ["segment", "d2", "-c", "cat", "-o", "d2", *tiny_args])
    assert r.exit_code == 2 and "is the input folder" in one_line(r)


def test_json_report_is_strict_and_labels_16_bit(tmp_path: Path) -> None:
    # 16: a NaN in a report is written as null; 20: more than 256 classes give a 16-bit label PNG
    c = 300
    labels = torch.arange(12 * 16).reshape(12, 16) % c
    labels[0, 0] = 299
    res = SegmentationResult(torch.zeros(c, 12, 16), labels, [f"c{k}" for k in range(c)],
                             settings={"x": float("nan"), "y": [float("inf")]})
    write_outputs(tmp_path, "sub/r", np.zeros((12, 16, 3), np.uint8), res, {"seconds": float("nan")})

    def no_constants(name: str) -> None:
        raise AssertionError(f"bare {name} in the JSON")

    report = json.loads((tmp_path / "sub" / "r.json").read_text(), parse_constant=no_constants)
    assert report["settings"] == {"x": None, "y": [None]} and report["seconds"] is None
    assert "16-bit" in report["labels_png"]
    with Image.open(tmp_path / "sub" / "r_labels.png") as im:
        assert im.mode.startswith("I")
        assert np.array_equal(np.asarray(im).astype(np.int64), labels.numpy())


# ----------------------------------------------------------------------------- 15: NaN never leaves predict
class NaNSegmenter(Segmenter):
    def segment(self, rgb: np.ndarray, vocab: Any, *, prob_threshold: float | None = None,
                image_id: str | None = None, trace: bool = False) -> Segmentation:
        scores = torch.zeros(len(vocab), *rgb.shape[:2])
        scores[0, 0, 0] = float("nan")
        return Segmentation(scores)


def test_non_finite_scores_never_leave_predict() -> None:
    with pytest.raises(OvssError, match="non-finite scores"):
        NaNSegmenter().predict(np.zeros((4, 4, 3), np.uint8), "cat, dog")


# ----------------------------------------------------------------------------- 12, 13, 17: ovss eval
def test_eval_split_file_bom_and_duplicates(tmp_path: Path) -> None:
    from ovss.data import open_dataset

    write_voc(tmp_path / "a", bom=True)
    assert [s.id for s in open_dataset("voc21", tmp_path / "a").samples] == ["im0", "im1", "im2"]
    write_voc(tmp_path / "b", ids=["im0", "im1", "im0", "im2"])
    with pytest.raises(DatasetError, match=r"lists image id 'im0' twice \(lines 1 and 3"):
        open_dataset("voc21", tmp_path / "b")


def test_eval_resume_is_keyed_by_the_prediction_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from ovss.data import open_dataset
    from ovss.evaluation import evaluate

    write_voc(tmp_path / "voc", n=4)
    ds = open_dataset("voc21", tmp_path / "voc")
    preds = tmp_path / "preds"
    preds.mkdir()

    def predictions(perfect: bool) -> None:
        for k, s in enumerate(ds.samples):
            lab = ds.read_label(k)
            Image.fromarray((lab if perfect else (lab + 1) % 4).astype(np.uint8)).save(preds / f"{s.id}.png")

    class Stop(Exception):
        pass

    def stop_after_2(i: int, sample: Any) -> None:
        if i == 1:
            raise Stop

    predictions(perfect=False)
    with pytest.raises(Stop):
        evaluate(ds, predictions=preds, output_dir=tmp_path / "out", progress=False, save_every=1,
                 on_image=stop_after_2)
    predictions(perfect=True)  # regenerated: the saved state no longer applies
    os.utime(preds / "im0.png", ns=(1, 1))  # even with equal sizes, another mtime is another file
    capsys.readouterr()
    res = evaluate(ds, predictions=preds, output_dir=tmp_path / "out", progress=False)
    assert res.config["resumed_images"] == 0 and res.summary()["mIoU"] == pytest.approx(100.0)
    assert "starting over" in capsys.readouterr().err
    # unchanged files: the interrupted run resumes, and says so
    with pytest.raises(Stop):
        evaluate(ds, predictions=preds, output_dir=tmp_path / "out", progress=False, save_every=1,
                 on_image=stop_after_2)
    res = evaluate(ds, predictions=preds, output_dir=tmp_path / "out", progress=False)
    assert res.config["resumed_images"] == 2 and res.summary()["mIoU"] == pytest.approx(100.0)
    assert "resuming: 2 of 4 images" in capsys.readouterr().err
    # --predictions naming a file says so
    with pytest.raises(InputError, match="is a file: give the folder"):
        evaluate(ds, predictions=preds / "im0.png", progress=False)


# ----------------------------------------------------------------------------- 18, 19: smaller
def test_first_create_segmenter_prints_no_import_noise(tiny_clip_files: tuple[str, str]) -> None:
    code = ("import ovss; s = ovss.create_segmenter('sclip', model=%r, pretrained=%r); print('built')"
            % tiny_clip_files)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0 and "built" in out.stdout, out.stderr
    assert "Error importing" not in out.stdout + out.stderr


def test_pnp_tune_checks_images_first(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from ovss.methods import pnp_ovss_tune

    # a hub id that cannot be reached: the images are reported first, and at once
    code = pnp_ovss_tune.main(["--images", str(tmp_path / "missing"), "--classes", "cat",
                               "--model", "no-such/model"])
    assert code == 2 and "image file not found" in capsys.readouterr().err
    code = pnp_ovss_tune.main(["--images", str(png(tmp_path / "a.png")), "--layers", "x-y",
                               "--model", "no-such/model"])
    assert code == 2 and "bad sweep range" in capsys.readouterr().err


def test_web_page_caps_the_work() -> None:
    pytest.importorskip("gradio")
    from ovss.demo.app import custom_settings

    with pytest.raises(InputError, match="at most 1024"):
        custom_settings("1e9", "", "", 1024)
    with pytest.raises(InputError, match="quarter of the crop"):
        custom_settings("", "224", "8", 1024)
    assert custom_settings("336", "224", "112", 1024) == {"short_side": 336, "crop": 224, "stride": 112}
