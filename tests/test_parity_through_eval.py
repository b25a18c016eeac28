"""The FC-CLIP, ZSSeg and ZegFormer parity fixtures hold through ``ovss eval``: the astronaut photo as a
one-image dataset in the official layout, scored by the method's own protocol, gives the official label
map (up to the near ties each fixture records). This is the path a benchmark run takes (dataset
reader, the method's own decoder in the prefetch thread, ``predict`` with the image id), not the
parity tests' direct calls."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ovss.data.datasets import get_dataset
from ovss.evaluation import evaluate


def _dataset(root: Path, name: str, photo: Path) -> None:
    """``photo`` as the one image of ``name`` in its first layout. The file keeps the photo's own bytes
    (PNG) under the layout's ``.jpg`` name: both decoders read the content, not the name, so the pixels
    are the fixture's."""
    layout = get_dataset(name).layouts[0]
    img = root / layout.image_dir / f"astronaut{layout.image_suffix}"
    img.parent.mkdir(parents=True, exist_ok=True)
    img.write_bytes(photo.read_bytes())
    lab = root / layout.label_dir / f"astronaut{layout.label_suffix}"
    lab.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ones((512, 512), np.uint8)).save(lab)


def _eval_labels(tmp_path: Path, dataset: str, method: str, photo: Path, **options) -> np.ndarray:
    root = tmp_path / "data"
    _dataset(root, dataset, photo)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = evaluate(dataset, root, method=method, device="cpu", progress=False, output_dir=tmp_path / "out",
                       save_predictions=tmp_path / "pred", segmenter_options=options, panoptic=False)
    assert res.num_images == 1
    return np.asarray(Image.open(tmp_path / "pred" / "astronaut.png")).astype(np.int64)


def test_fc_clip_through_eval(parity_dir: Path, tmp_path: Path) -> None:
    fc = parity_dir / "fc_clip"
    ref = np.load(fc / "fcclip_ade150_astronaut.npz")
    diag = json.loads((fc / "manifest.json").read_text())["files"]["fcclip_ade150_astronaut.npz"]["diagnostics"]
    got = _eval_labels(tmp_path, "ade20k", "fc_clip", parity_dir / "astronaut.png",
                       model=str(fc / "convnext_fcclip_tiny.json"), pretrained=str(fc / "tiny_convnext_clip.safetensors"),
                       checkpoint=str(fc / "fcclip_tiny.pth"), config=str(fc / "fcclip_tiny_config.yaml"))
    assert int((got != ref["sem_pred"]).sum()) <= diag["sem_top2_relative_gap_lt"]["1e-05"]


def test_zsseg_through_eval(parity_dir: Path, tmp_path: Path) -> None:
    zs = parity_dir / "zsseg"
    ref = np.load(zs / "zsseg_coco171_astronaut.npz")
    ties = json.loads((zs / "manifest.json").read_text())["files"][0]["diagnostics"]["pixels_top2_margin_below_1e-05"]
    got = _eval_labels(tmp_path, "coco_stuff", "zsseg", parity_dir / "astronaut.png",
                       model=str(parity_dir / "tiny_clip_b16.json"),
                       pretrained=str(parity_dir / "tiny_clip_b16.safetensors"),
                       checkpoint=str(zs / "zsseg_tiny_r101c.pth"), config=str(zs / "zsseg_tiny_config.json"),
                       short_side=320, max_long_side=1280)
    assert int((got != ref["pred"]).sum()) <= ties


def test_zegformer_through_eval(parity_dir: Path, tmp_path: Path) -> None:
    from ovss.methods.two_stage import class_strings
    from ovss.methods.zegformer import ZEGFORMER_PROTOCOLS

    zf = parity_dir / "zegformer"
    ref = np.load(zf / "zegformer_coco171_astronaut.npz")
    man = json.loads((zf / "manifest.json").read_text())
    names = class_strings(ZEGFORMER_PROTOCOLS.get("coco_stuff").vocabulary())
    perm = np.array([man["class_names"].index(n) for n in names])  # official channel order -> label order
    want = perm.argsort()[ref["pred"]]
    got = _eval_labels(tmp_path, "coco_stuff", "zegformer", parity_dir / "astronaut.png",
                       model=str(zf / "tiny_clip_e512.json"), pretrained=str(zf / "tiny_clip_e512.safetensors"),
                       checkpoint=str(zf / "zegformer_tiny_r101.pth"), config=str(zf / "zegformer_tiny_config.json"),
                       short_side=320, max_long_side=1280)
    assert int((got != want).sum()) <= man["files"][0]["diagnostics"]["pixels_top2_margin_below_1e-05"]


@pytest.mark.parametrize("name", ["ade20k", "coco_stuff"])
def test_layouts_have_jpg_images(name: str) -> None:
    """The premise of this module: these layouts name images .jpg (so the fixtures' PNG bytes go under that name)."""
    assert get_dataset(name).layouts[0].image_suffix == ".jpg"
