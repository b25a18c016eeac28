"""CLIP-DIY vs the official code's outputs (``shared/parity/clip_diy``), invariants, errors."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ovss.errors import InputError, ModelLoadError, UnknownNameError

PARITY = Path(__file__).resolve().parents[2] / "shared" / "parity"
DIY = PARITY / "clip_diy"
SCALES = (256, 128, 64)


@pytest.fixture(scope="module")
def files() -> dict[str, str]:
    if not (DIY / "manifest.json").is_file():
        pytest.skip(f"CLIP-DIY parity fixtures not found at {DIY} (shared/parity beside the checkout)")
    return {"clip": str(PARITY / "tiny_clip_b16.json"), "clip_w": str(PARITY / "tiny_clip_b16.safetensors"),
            "dino": str(DIY / "tiny_dino_s8.json"), "dino_w": str(DIY / "tiny_dino_s8.safetensors"),
            "head": str(DIY / "tiny_found_decoder.safetensors"), "image": str(PARITY / "astronaut.png")}


def _build(files: dict[str, str], **kw: Any) -> Any:
    import ovss

    args = dict(model=files["clip"], pretrained=files["clip_w"], saliency_model=files["dino"],
                saliency_pretrained=files["dino_w"], saliency_head=files["head"])
    args.update(kw)
    return ovss.create_segmenter("clip_diy", **args)


def _predict_recording(seg: Any, image: str) -> tuple[Any, dict[str, Any]]:
    """predict(), and the intermediates of the same call (``Segmenter.run``)."""
    return seg.predict(image), seg.run(image)


@pytest.fixture(scope="module")
def eval_run(files: dict[str, str]) -> tuple[Any, Any, dict[str, Any], dict[str, np.ndarray]]:
    seg = _build(files, dataset="voc21")
    res, rec = _predict_recording(seg, files["image"])
    return seg, res, rec, dict(np.load(DIY / "clipdiy_voc21_astronaut.npz"))


def _max(a: torch.Tensor | np.ndarray, b: np.ndarray) -> float:
    a = a.detach().float().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a, dtype=np.float32)
    return float(np.abs(a - np.asarray(b, dtype=np.float32)).max())


def test_eval_script_parity(eval_run: tuple[Any, Any, dict[str, Any], dict[str, np.ndarray]]) -> None:
    from ovss.methods.clip_diy import clip_pixel_values

    seg, res, rec, ref = eval_run
    rows, cols = ref["coords"][:, 0], ref["coords"][:, 1]
    assert np.array_equal(rec["input"].transpose(2, 0, 1), ref["input"][0])
    assert _max(rec["text"], ref["query_features"]) <= 1e-5
    assert list(rec["vocab"].names) == list(seg.default_vocabulary().names) and res.classes[0] == "background"
    for i, ps in enumerate(SCALES):
        pv = clip_pixel_values(rec["input"][:ps, :ps], seg.clip_input, seg.clip_mean, seg.clip_std)
        assert np.array_equal(pv, ref["pixel_values_first"][i])
        assert _max(rec["patch_embeds"][i], ref[f"patch_embeds_{ps}"]) <= 1e-5
        assert _max(rec["patch_logits"][i], ref[f"patch_logits_{ps}"]) <= 1e-5
        r1, c1 = rows[:1024], cols[:1024]
        assert _max(rec["scale_maps"][i][:, r1, c1], ref["scale_maps"][i]) <= 1e-5
    assert _max(rec["clip_map"][:, rows, cols], ref["clip_map"]) <= 1e-5
    assert _max(rec["found_logits"], ref["found_logits"]) <= 1e-5
    keys = _found_keys(seg, files_image=str(PARITY / "astronaut.png"))
    assert _max(keys, ref["found_feats"]) <= 1e-5
    ro, co = ref["coords_ori"][:, 0], ref["coords_ori"][:, 1]
    assert _max(rec["saliency_full"][ro, co], ref["saliency_full"]) <= 1e-5
    assert _max(rec["saliency"][rows, cols], ref["saliency"]) <= 1e-5
    assert _max(rec["gated_logits"][:, rows, cols], ref["gated_logits"]) <= 1e-5
    assert _max(rec["work_scores"][:, rows, cols], ref["seg_logits"]) <= 1e-5
    assert np.array_equal(rec["work_labels"].numpy(), ref["pred"])  # manifest: no near ties in this file
    assert np.array_equal(rec["clip_map"].argmax(0).numpy(), ref["pred_raw"])
    assert np.array_equal(res.labels.numpy(), ref["pred_ori"])
    assert res.scores.dtype == torch.float32 and tuple(res.scores.shape) == (21, 512, 512)
    assert torch.equal(res.scores.argmax(0), res.labels)
    assert res.settings["saliency"] is True and res.settings["variant"] == "eval"


def _found_keys(seg: Any, files_image: str) -> torch.Tensor:
    from ovss.backbones.dino import last_block_keys
    from ovss.constants import IMAGENET_MEAN, IMAGENET_STD
    from ovss.imageio import load_image

    x = torch.from_numpy(load_image(files_image)).permute(2, 0, 1).float().div(255)
    x = (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    with torch.no_grad():
        return last_block_keys(seg.saliency, x[None])[0]


EvalRun = tuple[Any, Any, dict[str, Any], dict[str, np.ndarray]]


def test_notebook_parity(files: dict[str, str], eval_run: EvalRun) -> None:
    from ovss.imageio import load_image

    seg = _build(files, dataset="voc21", variant="notebook", clip=eval_run[0].clip)
    res, rec = _predict_recording(seg, files["image"])
    ref = dict(np.load(DIY / "clipdiy_demo_voc21_astronaut.npz"))
    rows, cols = ref["coords"][:, 0], ref["coords"][:, 1]
    assert _max(seg.notebook_input(load_image(files["image"])), ref["input"][0]) == 0
    assert _max(rec["text"], ref["query_features"]) <= 1e-5
    for i, ps in enumerate(SCALES):
        assert _max(rec["patch_logits"][i], ref[f"patch_logits_{ps}"]) <= 1e-5
    assert _max(rec["clip_map"][:, rows, cols], ref["clip_map"]) <= 1e-5
    assert _max(rec["found_logits"], ref["found_logits"]) <= 1e-5
    assert _max(rec["saliency"][rows, cols], ref["saliency"]) <= 1e-5
    assert _max(rec["work_scores"][:, rows, cols], ref["seg_logits"]) <= 1e-5
    mismatch = int((rec["work_labels"].numpy() != ref["pred"]).sum())
    assert mismatch <= 1  # manifest: 1 pixel with a top-2 margin < 1e-5
    assert int((res.labels.numpy() != ref["pred_ori"]).sum()) <= 4 * mismatch
    assert torch.equal(res.scores.argmax(0), res.labels)


@pytest.fixture(scope="module")
def quick(files: dict[str, str], eval_run: tuple[Any, Any, dict[str, Any], dict[str, np.ndarray]]) -> Any:
    """Two scales only (10 patches), shared CLIP: for invariants."""
    return _build(files, clip=eval_run[0].clip, patch_sizes=(256, 128))


def test_class_permutation_permutes_scores(quick: Any) -> None:
    rng = np.random.default_rng(0)
    img = (rng.random((90, 150, 3)) * 255).astype(np.uint8)
    classes = ["cat", "person", "sky", "grass"]
    a = quick.predict(img, classes)
    assert a.classes == ["background"] + classes  # background added first
    perm = [2, 0, 3, 1]
    b = quick.predict(img, [classes[i] for i in perm])
    order = [0] + [p + 1 for p in perm]
    assert torch.allclose(a.scores[order], b.scores, atol=1e-6)
    top2 = a.scores.topk(2, dim=0).values
    clear = (top2[0] - top2[1]) > 1e-6
    assert torch.equal(torch.tensor(order)[b.labels][clear], a.labels[clear])


def test_non_square_image_and_no_saliency(quick: Any, files: dict[str, str]) -> None:
    rng = np.random.default_rng(1)
    img = (rng.random((61, 203, 3)) * 255).astype(np.uint8)
    res = quick.predict(img, "car, road")
    assert tuple(res.scores.shape) == (3, 61, 203) and torch.equal(res.scores.argmax(0), res.labels)
    assert torch.isfinite(res.scores).all()
    with pytest.warns(UserWarning, match="without saliency"):
        plain = _build(files, clip=quick.clip, patch_sizes=(256,), saliency_model=None)
    assert plain.settings()["saliency"] is False
    res = plain.predict(img, "car, road")
    assert tuple(res.labels.shape) == (61, 203) and res.settings["saliency"] is False


def test_errors(quick: Any, files: dict[str, str], tmp_path: Path) -> None:
    kw = dict(clip=quick.clip)
    with pytest.raises(ModelLoadError, match="saliency_head"):
        _build(files, saliency_head=None, **kw)
    with pytest.raises(ModelLoadError, match="not found"):
        _build(files, saliency_head=str(tmp_path / "missing.pt"), **kw)
    with pytest.raises(ModelLoadError, match="not a FOUND decoder"):
        _build(files, saliency_head=files["dino_w"], **kw)
    wide = tmp_path / "decoder_weights.pt"
    torch.save({"decoder": {"weight": torch.zeros(1, 384, 1, 1), "bias": torch.zeros(1)}}, wide)
    with pytest.raises(ModelLoadError, match="width is 96"):
        _build(files, saliency_head=str(wide), **kw)
    ok = tmp_path / "decoder_ok.pt"  # FOUND's own torch.save layout at the tiny width loads
    torch.save({"decoder": {"weight": torch.zeros(1, 96, 1, 1), "bias": torch.zeros(1)}}, ok)
    assert _build(files, saliency_head=str(ok), **kw).decoder is not None
    with pytest.raises(ModelLoadError, match="not found"):
        _build(files, saliency_model=str(tmp_path / "missing.json"), **kw)
    with pytest.raises(ModelLoadError, match="does not fit"):
        _build(files, saliency_pretrained=str(PARITY / "proxyclip" / "tiny_dino_b8.safetensors"), **kw)
    with pytest.raises(InputError, match="does not fit"):
        _build(files, patch_sizes=(300,), **kw)
    with pytest.raises(InputError, match="variant"):
        _build(files, variant="demo", **kw)
    with pytest.raises(UnknownNameError, match="voc21"):
        _build(files, dataset="voc22", **kw)
    with pytest.raises(InputError, match="first"):
        quick.predict(np.zeros((32, 32, 3), np.uint8), ["cat", "background"])


def test_registry() -> None:
    from ovss.registry import available_methods, method_info

    assert "clip_diy" in available_methods()
    assert method_info("clip_diy").cls == "CLIPDIY"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from ovss.methods.clip_diy import COCO_OBJECT_CLASSES, VOC21_CLASSES
    assert len(VOC21_CLASSES) == 21 and len(COCO_OBJECT_CLASSES) == 81
    assert COCO_OBJECT_CLASSES[0] == VOC21_CLASSES[0] == "background"


def test_default_saliency_weights_are_founds_300_epoch_dino(quick: Any, files: dict[str, str], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """FOUND's decoder was trained on DINO's 300-epoch ViT-S/8 (not timm's ViT-S/8 release): the
    default saliency weights are that file, fetched once into torch's hub cache; offline, the
    error says how to pass a local copy."""
    import shutil

    import ovss.backbones.clip as bc
    from ovss.backbones.dino import load_vit
    from ovss.methods.clip_diy import FOUND_DINO_URL

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(bc, "url_reachable", lambda url, timeout=1.0: False)
    with pytest.raises(ModelLoadError, match=r"dino_deitsmall8_300ep_pretrain\.pth.*--saliency-pretrained"):
        _build(files, clip=quick.clip, saliency_model="vit_small_patch8_224.dino", saliency_pretrained=None)
    # a URL whose file is in the cache loads without the network (the tiny weights stand in)
    url = "https://example.invalid/dino/tiny_dino_s8.safetensors"
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "tiny_dino_s8.safetensors"
    cached.parent.mkdir(parents=True)
    shutil.copy(files["dino_w"], cached)
    vit = load_vit(files["dino"], url, flag="--saliency-model", pretrained_flag="--saliency-pretrained")
    assert vit.pretrained == str(cached)
    assert FOUND_DINO_URL.endswith("/dino_deitsmall8_300ep_pretrain.pth")
