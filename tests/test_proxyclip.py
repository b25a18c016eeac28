"""ProxyCLIP vs the official code's outputs (``shared/parity/proxyclip``), invariants, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ovss.errors import InputError, ModelLoadError, UnknownNameError

PARITY = Path(__file__).resolve().parents[2] / "shared" / "parity"
PC = PARITY / "proxyclip"


@pytest.fixture(scope="module")
def files() -> dict[str, str]:
    if not (PC / "manifest.json").is_file():
        pytest.skip(f"ProxyCLIP parity fixtures not found at {PC} (shared/parity beside the checkout)")
    return {"clip": str(PARITY / "tiny_clip_b16.json"), "clip_w": str(PARITY / "tiny_clip_b16.safetensors"),
            "dino": str(PC / "tiny_dino_b8.json"), "dino_w": str(PC / "tiny_dino_b8.safetensors"),
            "image": str(PARITY / "astronaut.png"), "npz": str(PC / "proxyclip_voc21_astronaut.npz")}


@pytest.fixture(scope="module")
def seg(files: dict[str, str]) -> Any:
    import ovss

    return ovss.create_segmenter("proxyclip", model=files["clip"], pretrained=files["clip_w"], dataset="voc21",
                                 proxy_model=files["dino"], proxy_pretrained=files["dino_w"])


@pytest.fixture(scope="module")
def small(seg: Any, files: dict[str, str]) -> Any:
    """Free-form ProxyCLIP on small windows, sharing the tiny CLIP."""
    from ovss.methods.proxyclip import ProxyCLIP

    return ProxyCLIP(clip=seg.clip, short_side=112, crop=112, stride=56, proxy_model=files["dino"],
                     proxy_pretrained=files["dino_w"], templates=["a photo of a {}."])


@pytest.fixture(scope="module")
def run(seg: Any, files: dict[str, str]) -> dict[str, Any]:
    """One predict on the fixture image, recording the window-0 intermediates on the way."""
    rec: dict[str, Any] = {}
    orig_feats, orig_tokens, orig_raw = seg.proxy_features, seg.proxy_tokens, seg.raw_logits

    def proxy_features(images: torch.Tensor) -> torch.Tensor:
        rec.setdefault("vfm_input", seg.proxy_input(images))
        out = orig_feats(images)
        rec.setdefault("vfm_features", out)
        return out

    def proxy_tokens(images: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        out = orig_tokens(images, feats)
        rec.setdefault("tokens", out)
        return out

    def raw_logits(image: torch.Tensor, text: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        rec["input"], rec["text"] = image, text
        rec["raw"] = orig_raw(image, text, out_size)
        return rec["raw"]

    seg.proxy_features, seg.proxy_tokens, seg.raw_logits = proxy_features, proxy_tokens, raw_logits
    try:
        rec["result"] = seg.predict(files["image"])
    finally:
        del seg.proxy_features, seg.proxy_tokens, seg.raw_logits
    rec["ref"] = dict(np.load(files["npz"]))
    return rec


def _max(a: torch.Tensor, b: np.ndarray) -> float:
    return float((a.detach().float().cpu() - torch.from_numpy(np.asarray(b)).float()).abs().max())


def test_inputs_and_text(run: dict[str, Any]) -> None:
    ref = run["ref"]
    assert _max(run["input"], ref["input"]) == 0
    assert _max(run["text"], ref["query_features"]) <= 1e-5
    assert run["result"].classes[0] == "background" and len(run["result"].classes) == 21


def test_window0_intermediates(seg: Any, run: dict[str, Any]) -> None:
    from ovss.methods.proxyclip import proxy_attention

    ref = run["ref"]
    assert tuple(ref["win_boxes"][0]) == (0, 336, 0, 336)
    assert _max(run["vfm_input"][:1], ref["win0_vfm_input"]) <= 1e-6
    feats = run["vfm_features"][:1]
    assert _max(feats, ref["win0_vfm_features"]) <= 1e-5
    e = torch.nn.functional.normalize(feats.flatten(2), dim=1)
    assert abs(float((e.transpose(1, 2) @ e).mean()) - float(ref["win0_sim_mean"])) <= 1e-6
    attn = proxy_attention(feats, seg.beta, seg.gamma)[0]
    assert _max(attn[torch.from_numpy(ref["win0_attn_rows_idx"]).long()], ref["win0_attn_rows"]) <= 1e-5
    tokens = run["tokens"][:1]
    assert _max(tokens, ref["win0_clip_tokens"]) <= 1e-4
    unit = tokens[0] / tokens[0].norm(dim=-1, keepdim=True)
    patch_logits = (unit @ run["text"].T).T.reshape(-1, 42, 42)
    assert _max(patch_logits, ref["win0_patch_logits"]) <= 1e-5


def test_final_scores_and_labels(run: dict[str, Any]) -> None:
    ref = run["ref"]
    rows, cols = ref["coords"][:, 0], ref["coords"][:, 1]
    res = run["result"]
    assert _max(run["raw"][:, rows, cols], ref["raw_logits"]) <= 1e-4
    assert res.scores.dtype == torch.float32 and tuple(res.scores.shape) == (21, 512, 512)
    assert _max(res.scores[:, rows, cols], ref["seg_logits"]) <= 1e-3  # README: mask-threshold flips, <= 5e-4
    assert torch.isfinite(res.scores).all()
    mismatch = int((res.labels.numpy() != ref["pred"]).sum())
    assert mismatch <= 2  # manifest: 1 pixel with a top-2 margin < 1e-6, 2 within 1e-5 of prob_thd


def test_dino_position_embedding_is_dinos_not_timms(seg: Any) -> None:
    from ovss.backbones.dino import dino_pos_embed

    pos = seg.proxy.model.pos_embed
    resized = dino_pos_embed(pos, 1, (42, 42))
    assert resized.shape == (1, 1 + 42 * 42, pos.shape[-1])
    assert torch.equal(resized[:, 0], pos[:, 0])
    assert dino_pos_embed(pos, 1, (28, 28)) is pos


def test_class_permutation_permutes_scores(small: Any) -> None:
    rng = np.random.default_rng(0)
    img = (rng.random((96, 128, 3)) * 255).astype(np.uint8)
    classes = ["cat", "person", "sky", "grass"]
    a = small.predict(img, classes)
    perm = [2, 0, 3, 1]
    b = small.predict(img, [classes[i] for i in perm])
    assert torch.allclose(a.scores[perm], b.scores, atol=1e-5)
    top2 = a.scores.topk(2, dim=0).values
    clear = (top2[0] - top2[1]) > 1e-5
    assert torch.equal(torch.tensor(perm)[b.labels][clear], a.labels[clear])


def test_non_square_windows_and_whole_image(small: Any, files: dict[str, str]) -> None:
    from ovss.methods.proxyclip import ProxyCLIP

    x = torch.randn(1, 3, 112, 160)
    with torch.no_grad():
        f = small.features(x)
    assert tuple(f.shape) == (1, 64, 14, 20)  # proxy grid (H/8, W/8), not (H/8, H/8) as the official code
    assert torch.allclose(f.norm(dim=1), torch.ones(1, 14, 20), atol=1e-5)
    wide = ProxyCLIP(clip=small.clip, short_side=112, crop=160, stride=112, proxy_model=files["dino"],
                     proxy_pretrained=files["dino_w"], templates=["a photo of a {}."])
    rng = np.random.default_rng(1)
    img = (rng.random((70, 200, 3)) * 255).astype(np.uint8)
    res = wide.predict(img, ["cat", "sky"])
    assert tuple(res.scores.shape) == (2, 70, 200) and torch.isfinite(res.scores).all()
    whole = ProxyCLIP(clip=small.clip, short_side=96, crop=0, proxy_model=files["dino"],
                      proxy_pretrained=files["dino_w"], templates=["a photo of a {}."])
    res = whole.predict(img, ["cat", "sky"])
    assert tuple(res.labels.shape) == (70, 200) and torch.equal(res.labels, res.scores.argmax(0))


def test_all_masked_row_is_an_error_not_nan() -> None:
    from ovss.methods.proxyclip import proxy_attention

    feats = torch.ones(1, 8, 4, 4) + 1e-3 * torch.randn(1, 8, 4, 4)  # every similarity ~1 > 1/beta
    with pytest.raises(InputError, match="1/beta"):
        proxy_attention(feats, 1.2, 3.0)
    attn = proxy_attention(feats, 1.0, 3.0)
    assert torch.isfinite(attn).all() and torch.allclose(attn.sum(-1), torch.ones(1, 16))


def test_errors(seg: Any, files: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ovss.methods.proxyclip import ProxyCLIP

    kw = dict(clip=seg.clip, dataset="voc21")
    with pytest.raises(ModelLoadError, match="not found"):
        ProxyCLIP(proxy_model=str(tmp_path / "missing.json"), proxy_pretrained=files["dino_w"], **kw)
    with pytest.raises(ModelLoadError, match="not found"):
        ProxyCLIP(proxy_model=files["dino"], proxy_pretrained=str(tmp_path / "missing.safetensors"), **kw)
    with pytest.raises(ModelLoadError, match="does not fit"):
        ProxyCLIP(proxy_model=files["dino"], proxy_pretrained=str(PARITY / "clip_diy" / "tiny_dino_s8.safetensors"),
                  **kw)
    with pytest.raises(ModelLoadError, match="proxy-pretrained"):
        ProxyCLIP(proxy_model=files["dino"], **kw)
    with pytest.raises(UnknownNameError, match="unknown timm model"):
        ProxyCLIP(proxy_model="vit_base_patch9_224.dino", **kw)
    with pytest.raises(UnknownNameError, match="vit_base_patch8_224.dino"):
        ProxyCLIP(proxy_model="vit_base_patch8_224.dinoo", **kw)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("ovss.backbones.dino.hub_file_cached", lambda *a: False)
    with pytest.raises(ModelLoadError, match="--proxy-pretrained"):
        ProxyCLIP(proxy_model="vit_base_patch8_224.dino", **kw)
    with pytest.raises(InputError, match="smaller than a patch"):
        ProxyCLIP(proxy_model=files["dino"], proxy_pretrained=files["dino_w"], crop=8, stride=8, clip=seg.clip)
    with pytest.raises(InputError, match="beta"):
        ProxyCLIP(proxy_model=files["dino"], proxy_pretrained=files["dino_w"], beta=0.0, **kw)
    bad = tmp_path / "bad.json"
    bad.write_text('{"model_name": "vit_base_patch8_224.dino"}')
    with pytest.raises(ModelLoadError, match='"timm"'):
        ProxyCLIP(proxy_model=str(bad), proxy_pretrained=files["dino_w"], **kw)


def test_registry_and_protocols() -> None:
    import ovss
    from ovss.registry import available_methods, method_class, method_info

    get_protocol = method_class("proxyclip").protocols.get

    assert "proxyclip" in available_methods()
    assert method_info("proxyclip").cls == "ProxyCLIP"
    p = get_protocol("voc21")
    assert (p.short_side, p.crop, p.stride, p.logit_scale, p.prob_threshold) == (336, 336, 112, 40.0, 0.2)
    assert p.class_file == "proxyclip/cls_voc21.txt" and p.class_sep == "; "
    assert get_protocol("coco_object").prob_threshold == 0.25
    city = get_protocol("cityscapes")
    assert (city.short_side, city.crop, city.stride) == (448, 224, 112)
    assert get_protocol("ade20k").short_side == 448
    assert ovss is not None
