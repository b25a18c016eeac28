"""The Python API end to end on the tiny CLIP: inputs, invariants, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import ovss
from ovss.errors import InputError, ModelLoadError, UnknownNameError


@pytest.fixture(scope="module")
def sclip(tiny_clip_files):
    model, weights = tiny_clip_files
    return ovss.create_segmenter("sclip", model=model, pretrained=weights)


@pytest.fixture(scope="module")
def photo():
    from skimage import data

    return data.chelsea()  # 300 x 451 real photo


def test_available_methods_and_info():
    names = ovss.available_methods()
    for m in ("vanilla", "maskclip", "sclip", "clearclip", "naclip"):
        assert m in names
    assert "ECCV 2024" in ovss.method_info("sclip").paper
    with pytest.raises(UnknownNameError, match="Did you mean 'sclip'"):
        ovss.create_segmenter("sclp")


def test_predict_inputs_agree(sclip, photo, tmp_path):
    path = tmp_path / "cat.png"
    Image.fromarray(photo).save(path)
    classes = ["cat", "wall", "floor"]
    a = sclip.predict(photo, classes=classes)
    b = sclip.predict(Image.fromarray(photo), classes=classes)
    c = sclip.predict(str(path), classes=classes)
    assert a.scores.shape == (3, 300, 451) and a.scores.dtype == torch.float32
    assert a.labels.shape == (300, 451) and a.labels.dtype == torch.int64
    assert torch.equal(a.scores, b.scores) and torch.equal(a.scores, c.scores)
    assert torch.equal(a.labels, a.scores.argmax(0))
    assert a.classes == classes
    assert abs(sum(a.pixel_share().values()) - 1) < 1e-9


def test_permuting_classes_permutes_output(sclip, photo):
    classes = ["cat", "wall", "floor", "sofa"]
    perm = [2, 0, 3, 1]
    a = sclip.predict(photo, classes=classes)
    b = sclip.predict(photo, classes=[classes[i] for i in perm])
    assert torch.allclose(b.scores, a.scores[perm], atol=1e-6)
    inv = torch.tensor(perm)
    assert (inv[b.labels] != a.labels).float().mean() < 1e-3  # only exact ties may differ


def test_synonyms_take_the_max(sclip, photo):
    res = sclip.predict(photo, classes=[("cat", "kitten"), "wall"])
    assert res.classes == ["cat", "wall"] and res.scores.shape[0] == 2
    assert torch.all(res.scores.sum(0) <= 1 + 1e-5)


def test_background_and_threshold(sclip, photo):
    res = sclip.predict(photo, classes=["cat"], background="wall, floor", prob_threshold=0.9)
    assert res.classes == ["background", "cat"] and res.background == 0
    low = res.scores.max(0).values < 0.9
    assert torch.all(res.labels[low] == 0)
    res2 = sclip.predict(photo, classes=["cat", "dog"], prob_threshold=0.6)
    assert res2.classes[0] == "background" and res2.settings["queries"][0] == ["background"]


def test_dataset_protocol_uses_official_class_file(tiny_clip_files, photo):
    model, weights = tiny_clip_files
    seg = ovss.create_segmenter("clearclip", model=model, pretrained=weights, dataset="context59")
    res = seg.predict(photo)
    assert len(res.classes) == 59 and res.background is None
    assert seg.settings()["protocol"]["short_side"] == 448
    with pytest.raises(UnknownNameError, match="clearclip has no protocol for dataset 'voc22'"):
        ovss.create_segmenter("clearclip", model=model, pretrained=weights, dataset="voc22")


@pytest.mark.parametrize("bad,exc,msg", [
    ("missing.png", InputError, "not found"),
    (np.zeros((4, 4), np.float32), InputError, "uint8"),
    (np.zeros((4, 4, 2), np.uint8), InputError, "shape"),
    (42, InputError, "cannot read an image"),
])
def test_bad_images(sclip, bad, exc, msg):
    with pytest.raises(exc, match=msg):
        sclip.predict(bad, classes=["cat"])


def test_unreadable_file(sclip, tmp_path):
    f = tmp_path / "notes.jpg"
    f.write_text("not an image")
    with pytest.raises(InputError, match="cannot read"):
        sclip.predict(f, classes=["cat"])


def test_no_classes(sclip, photo):
    with pytest.raises(InputError, match="no classes"):
        sclip.predict(photo)


def test_model_errors(tiny_clip_files, tmp_path):
    model, weights = tiny_clip_files
    with pytest.raises(UnknownNameError, match="unknown CLIP model"):
        ovss.create_segmenter("sclip", model="ViT-Q-99", pretrained=None)
    with pytest.raises(UnknownNameError, match="unknown pretrained tag 'opneai'.*Did you mean 'openai'"):
        ovss.create_segmenter("sclip", model="ViT-B-16", pretrained="opneai")
    with pytest.raises(ModelLoadError, match="does not fit"):
        ovss.create_segmenter("sclip", model="ViT-B-32", pretrained=weights)
    with pytest.raises(ModelLoadError, match="not found"):
        ovss.create_segmenter("sclip", model=model, pretrained=str(tmp_path / "x.safetensors"))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match="cannot read checkpoint"):
        ovss.create_segmenter("sclip", model=model, pretrained=str(bad))


def test_offline_hub_fails_fast(monkeypatch):
    import time

    import ovss.backbones.clip as bc

    monkeypatch.setattr(bc, "hub_file_cached", lambda repo, files: False)
    monkeypatch.setattr(bc, "hub_reachable", lambda timeout=1.0: False)
    t = time.perf_counter()
    with pytest.raises(ModelLoadError, match=r"ViT-B-16 \(pretrained='openai'\).*--pretrained"):
        ovss.create_segmenter("sclip", model="ViT-B-16", pretrained="openai")
    assert time.perf_counter() - t < 30  # no retries against the network (typically < 1 s)


def test_offline_hub_probe_unmocked(monkeypatch):
    """The real reachability probe against an endpoint that refuses connections (only the local
    hub cache is taken out of the picture, so a machine that has the weights cached still tests)."""
    import time

    import ovss.backbones.clip as bc

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(bc, "hub_file_cached", lambda repo, files: False)
    t = time.perf_counter()
    assert bc.hub_reachable(timeout=1.0) is False
    with pytest.raises(ModelLoadError, match=r"ViT-B-16 \(pretrained='openai'\).*--pretrained"):
        ovss.create_segmenter("sclip", model="ViT-B-16", pretrained="openai")
    assert time.perf_counter() - t < 5


def test_vanilla_and_maskclip_options(tiny_clip, photo):
    a = ovss.create_segmenter("vanilla", clip=tiny_clip, residual=False).predict(photo, classes=["cat", "wall"])
    b = ovss.create_segmenter("vanilla", clip=tiny_clip).predict(photo, classes=["cat", "wall"])
    assert not torch.allclose(a.scores, b.scores)
    c = ovss.create_segmenter("maskclip", clip=tiny_clip, residual=True).predict(photo, classes=["cat", "wall"])
    assert c.settings["residual"] is True


def test_text_cache_skips_encoding_on_second_run(tiny_clip_files, photo, monkeypatch):
    import ovss.text as text

    model, weights = tiny_clip_files
    ovss.create_segmenter("sclip", model=model, pretrained=weights).predict(photo, classes=["zebra", "grass"])
    calls = []
    for name in ("encode_prompts", "encode_template_prompts"):  # every way text gets encoded
        real = getattr(text, name)
        monkeypatch.setattr(text, name, lambda *a, _real=real, **k: calls.append(1) or _real(*a, **k))
    seg = ovss.create_segmenter("sclip", model=model, pretrained=weights)
    res = seg.predict(photo, classes=["zebra", "grass"])
    assert calls == [] and res.scores.shape[0] == 2
    seg.predict(photo, classes=["zebra", "sky"])  # a new class list is encoded (the probe works)
    assert calls


def test_openai_tags_build_quick_gelu():
    """OpenAI's weights are QuickGELU networks; open_clip's plain configs build GELU unless told (the
    official SCLIP-family code loads them with QuickGELU)."""
    import open_clip

    from ovss.backbones.clip import hub_model_kwargs

    assert hub_model_kwargs("ViT-B-16", "openai") == {"force_quick_gelu": True}
    assert hub_model_kwargs("RN50", "openai") == {"force_quick_gelu": True}
    assert hub_model_kwargs("ViT-B-16", "laion2b_s34b_b88k") == {}
    net = open_clip.create_model("ViT-B-16", pretrained=None, **hub_model_kwargs("ViT-B-16", "openai"))
    acts = {type(m.mlp.gelu).__name__ for m in net.visual.transformer.resblocks}
    assert acts == {"QuickGELU"}
