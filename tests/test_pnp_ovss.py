"""PnP-OVSS: parity with the official code's outputs on the tiny BLIP ITM fixture, internal
consistency on another image and input size, the official quirks, and error messages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ovss.errors import InputError, ModelLoadError, UnknownNameError
from ovss.methods import pnp_ovss as P
from ovss.vocabulary import parse_classes

pytest.importorskip("pydensecrf.densecrf", reason="PnP-OVSS's dense CRF needs pydensecrf2")


# -- fixtures ----------------------------------------------------------------------------------


def pnp_run(seg, image, classes=None, **kw):
    """(PnPOutput, result class names) of one image: ``Segmenter.run``'s trace."""
    r = seg.run(image, classes, **kw)
    return r["pnp"], r["classes"]

@pytest.fixture(scope="module")
def pnp_dir(parity_dir: Path) -> Path:
    d = parity_dir / "pnp_ovss"
    if not (d / "pnp_ovss_voc_astronaut.npz").is_file():
        pytest.skip(f"PnP-OVSS parity fixtures not found in {d}")
    return d


@pytest.fixture(scope="module")
def tiny_model(pnp_dir: Path) -> str:
    return str(pnp_dir / "hf_tiny_blip_itm")


@pytest.fixture(scope="module")
def voc_seg(tiny_model: str) -> P.PnPOVSS:
    return P.PnPOVSS(model=tiny_model, dataset="voc21", image_size=224)


@pytest.fixture(scope="module")
def fixture(pnp_dir: Path) -> dict[str, np.ndarray]:
    with np.load(pnp_dir / "pnp_ovss_voc_astronaut.npz") as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def astronaut_path(parity_dir: Path) -> Path:
    return parity_dir / "astronaut.png"


@pytest.fixture(scope="module")
def voc_run(voc_seg: P.PnPOVSS, astronaut_path: Path) -> tuple[P.PnPOutput, list[str]]:
    return pnp_run(voc_seg, astronaut_path)


def _rel(a: np.ndarray | torch.Tensor, b: np.ndarray) -> float:
    a = a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    return float(np.abs(a.astype(np.float64) - b).max() / np.abs(b).max())


def _at(x: torch.Tensor, coords: np.ndarray) -> np.ndarray:
    return x.numpy()[:, coords[:, 0], coords[:, 1]]


# -- parity with the official code ---------------------------------------------------------------

def test_parity_model_and_gradcam(voc_run, fixture) -> None:
    out, _ = voc_run
    assert np.array_equal(out.input.numpy(), fixture["input"])  # bitwise
    assert np.array_equal(out.input_ids.numpy(), fixture["input_ids"])
    assert np.abs(out.itm_logits.numpy() - fixture["itm_logits"]).max() <= 1e-5
    assert _rel(out.gradcam_tokens, fixture["gradcam_tokens"]) <= 1e-5
    assert _rel(out.salience, fixture["salience"]) <= 1e-5
    for mine, ref in zip(out.dropped_patches, fixture["dropped_patches"]):
        assert set(mine.tolist()) == set(ref.tolist())
    assert _rel(out.gradcam_iter, fixture["gradcam_iter"]) <= 1e-5
    assert _rel(out.gradcam_first, fixture["gradcam_first"]) <= 1e-5
    assert _rel(out.gradcam_agg, fixture["gradcam_agg"]) <= 1e-5
    assert out.pieces[:2] == ["aero", "##plane"] and out.pieces[-3:] == ["tv", "##mon", "##itor"]


def test_parity_postprocessing_and_labels(voc_seg, voc_run, fixture) -> None:
    out, names = voc_run
    coords = fixture["coords"]
    assert tuple(out.seg_maps.shape[1:]) == tuple(fixture["ori_shape"])
    assert _rel(_at(out.seg_maps, coords), fixture["seg_maps"]) <= 1e-5
    assert out.background and out.final_maps.shape[0] == 21
    blur_err = float(np.abs(_at(out.blur_maps, coords) - fixture["blur_maps"]).max())
    assert blur_err <= 1e-5
    # The CRF (10 mean-field steps, strong pairwise terms over a weak softmax unary) amplifies
    # float noise in its input about 250x. With the fixture machine's kernels the blur maps are
    # bitwise equal and so are the marginals; on a CPU with other SIMD kernels (AVX2 instead of
    # AVX-512) BLIP's float32 rounding moves the blur maps by ~4e-6 and the marginals by up to
    # ~9e-4. The CRF arguments themselves are pinned exactly by test_dense_crf_official_settings.
    crf_tol = 1e-5 if blur_err == 0 else max(1e-5, 500 * blur_err)
    crf_err = float(np.abs(_at(out.crf_probs, coords) - fixture["crf_probs"]).max())
    assert crf_err <= crf_tol
    stable = fixture["pred_stable"].astype(bool)  # official CRF top-2 margin >= 1e-4
    if crf_err > 1e-5:  # labels can only flip where our own margin is within the CRF noise
        top2 = np.sort(out.crf_probs.numpy(), axis=0)[-2:]
        robust = stable & (top2[1] - top2[0] > 2 * crf_err)
        assert robust.sum() >= 0.999 * stable.sum()
        stable = robust
    assert np.array_equal(out.pred_channels[stable], fixture["pred_channels"][stable])
    res = voc_seg.result_from_output(out, names)
    assert res.scores.dtype == torch.float32 and tuple(res.scores.shape) == (21, 512, 512)
    assert res.labels.dtype == torch.int64 and tuple(res.labels.shape) == (512, 512)
    assert np.array_equal(res.labels.numpy()[stable], fixture["pred"][stable].astype(np.int64))
    assert res.classes[0] == "background" and res.classes[20] == "tvmonitor" and res.background == 0
    assert np.array_equal(res.extras["official_labels"].numpy()[stable], fixture["pred"][stable].astype(np.int64))
    # every VOC class is in the caption: the logits are the CRF marginals, summing to 1
    assert torch.allclose(res.scores.sum(0), torch.ones(512, 512), atol=1e-4)
    assert not res.extras["official_nan"]
    assert res.extras["dropped_patches"] == out.dropped_patches[:-1].tolist()


def test_dense_crf_official_settings() -> None:
    """``dense_crf`` is the official ``densecrf`` of ``PnP_OVSS_0514_updated_segmentation.py``:
    softmax over channels -> ``unary_from_softmax`` -> Gaussian sxy 3 compat 7, bilateral sxy 50
    srgb 5 compat 10, 10 mean-field steps. Bitwise against a literal pydensecrf call."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    rng = np.random.default_rng(0)
    scores = torch.from_numpy(rng.random((4, 37, 53), dtype=np.float32))
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    probs = torch.softmax(scores, dim=0).numpy()
    d = dcrf.DenseCRF2D(53, 37, 4)
    d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    d.addPairwiseGaussian(sxy=3, compat=7)
    d.addPairwiseBilateral(sxy=50, srgb=5, rgbim=rgb.copy(), compat=10)
    ref = np.asarray(d.inference(10), dtype=np.float32).reshape(4, 37, 53)
    assert np.array_equal(P.dense_crf(scores, rgb), ref)
    assert not np.array_equal(P.dense_crf(scores, rgb, iterations=5), ref)


def test_parity_first_pass_path(voc_seg, voc_run, fixture, astronaut_path) -> None:
    from PIL import Image

    out, names = voc_run
    rgb = np.asarray(Image.open(astronaut_path).convert("RGB"))
    post = voc_seg.postprocess(out.gradcam_first, rgb, first_path=True)
    coords = fixture["coords"]
    assert np.abs(_at(post["seg_maps"], coords) - fixture["first_seg_maps"]).max() <= 1e-5
    assert np.abs(_at(post["blur_maps"], coords) - fixture["first_blur_maps"]).max() <= 1e-5
    stable = fixture["first_pred_stable"].astype(bool)
    assert np.array_equal(post["pred_channels"][stable], fixture["first_pred_channels"][stable])
    pred = P.relabel_official(post["pred_channels"], list(range(1, 21)), 1)
    assert np.array_equal(pred[stable], fixture["first_pred"][stable].astype(np.int64))


# -- internal consistency on another photo and input size ----------------------------------------

@pytest.fixture(scope="module")
def free_seg(tiny_model: str) -> P.PnPOVSS:
    return P.PnPOVSS(model=tiny_model, image_size=160)  # 10 x 10 patches, position embedding resized


@pytest.fixture(scope="module")
def chelsea() -> np.ndarray:
    skdata = pytest.importorskip("skimage.data")
    from PIL import Image

    return np.asarray(Image.fromarray(skdata.chelsea()).resize((150, 100), Image.BILINEAR))


def test_free_form_consistency(free_seg, chelsea) -> None:
    classes = ["cat", "potted plant", "sofa"]
    out, names = pnp_run(free_seg, chelsea, classes)
    g = 10
    assert names == ["background"] + classes
    assert out.input.shape == (1, 3, 160, 160) and out.gradcam_tokens.shape[-2:] == (g, g)
    counts = [len(free_seg.blip.tokenizer.tokenize(c)) for c in classes]
    assert counts[1] >= 2  # "potted plant" is several pieces: one class, pieces averaged
    flat = out.dropped_patches[:-1].reshape(-1)
    assert len(set(flat.tolist())) == flat.size and flat.min() >= 0 and flat.max() < g * g
    dropped: list[int] = []
    zs = []
    for k in range(free_seg.drop_iter):
        sal, pick = P.select_salient_patches(out.gradcam_tokens[k], dropped, 10)
        assert np.array_equal(sal, out.salience[k]) and set(pick) == set(out.dropped_patches[k])
        assert all(sal[i] == 0 for i in dropped)
        z = P.zero_patches(out.gradcam_tokens[k], dropped, g)
        zs.append(z)
        assert torch.equal(out.gradcam_iter[k], P.merge_mean(z, counts))
        dropped += [int(i) for i in pick]
    rows = zs[0][3:-1]
    assert torch.allclose(out.gradcam_iter[0][1], rows[1:1 + counts[1]].mean(0))
    assert torch.allclose(out.gradcam_agg, P.merge_mean(zs[0] * 2 + zs[1] + zs[2] + zs[3], counts), rtol=1e-6, atol=0)
    # the pass-1 input is the pass-0 input with the dropped 16 x 16 blocks at 0
    x1 = P.drop_patches(out.input, out.dropped_patches[0], g, 16)
    for p in out.dropped_patches[0]:
        r, c = (p // g) * 16, (p % g) * 16
        assert x1[..., r:r + 16, c:c + 16].abs().max() == 0
    assert int((x1 != out.input).any(1).sum()) <= 10 * 256
    res = free_seg.result_from_output(out, names)
    assert tuple(res.scores.shape) == (4, 100, 150) and tuple(res.labels.shape) == (100, 150)
    assert torch.isfinite(res.scores).all()
    assert torch.allclose(res.scores.sum(0), torch.ones(100, 150), atol=1e-4)
    assert torch.equal(res.labels, res.scores.argmax(0))
    assert free_seg.settings()["image_size"] == 160 and free_seg.settings()["merge"] == "mean"


def test_position_embedding_resize_matches_transformers(free_seg, tiny_model) -> None:
    from transformers import BlipForImageTextRetrieval

    from ovss.kernels import use_onednn_linears

    # the segmenter's linears run through oneDNN (ovss.kernels): the reference too, so that the
    # comparison stays bitwise and isolates the position-embedding resize
    ref = use_onednn_linears(BlipForImageTextRetrieval.from_pretrained(tiny_model, dtype=torch.float32).eval())
    x = torch.randn(1, 3, 160, 160, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = free_seg.blip.model.vision_model(pixel_values=x).last_hidden_state
        b = ref.vision_model(pixel_values=x, interpolate_pos_encoding=True).last_hidden_state
    assert torch.equal(a, b)


def test_switches_off_each_step(tiny_model, chelsea) -> None:
    seg = P.PnPOVSS(model=tiny_model, image_size=160, drop_iter=2, threshold=None, blur=False, crf=False,
                    background_rule="never")
    res = seg.predict(chelsea, ["cat", "sofa"])
    assert res.classes == ["cat", "sofa"] and res.background is None
    assert len(res.extras["dropped_patches"]) == 1
    assert torch.equal(res.labels, res.scores.argmax(0))
    with pytest.raises(InputError, match="background"):
        seg.predict(chelsea, ["cat", "sofa"], prob_threshold=0.5)


# -- official quirks (pure functions) -------------------------------------------------------------

def test_official_merge_sums_a_multi_piece_last_class() -> None:
    cam = torch.arange(1, 10, dtype=torch.float32)[:, None, None].expand(9, 2, 2).clone()
    # rows: a picture of | aero ##plane cat tv ##mon ##itor | [SEP]  -> values 4..8 for the pieces
    pieces = ["aero", "##plane", "cat", "tv", "##mon"]
    m = P.merge_official(cam[:9], pieces, 3)
    assert m[0, 0, 0] == (4 + 5) / 2 and m[1, 0, 0] == 6 and m[2, 0, 0] == 7 + 8  # sum, not mean
    same = P.merge_official(cam, ["cat", "dog", "cow", "car", "bus"], 5)
    assert torch.equal(same, cam[3:8])
    with pytest.raises(InputError, match="without spaces"):
        P.merge_official(cam, ["cat", "dog", "cow", "car", "bus"], 2)
    assert torch.equal(P.merge_mean(cam, [2, 1, 2])[2], (cam[6] + cam[7]) / 2)


def test_relabel_in_place_last_channel_first() -> None:
    channels = np.array([[0, 1, 2]])
    # unsorted GPT-4o list (class ids 2, 1): channel 2 -> 1, then channel 1 (now also the old
    # channel 2) -> 2, as the official in-place loop does
    assert P.relabel_official(channels, [2, 1], 1).tolist() == [[0, 2, 2]]
    assert P.relabel_official(channels, [5, 9], 1).tolist() == [[0, 5, 9]]
    assert P.relabel_official(np.array([[0, 1, 2]]), [7, 3, 4], 0).tolist() == [[7, 3, 4]]


def test_gpt4o_answers_parse_like_the_official_code() -> None:
    voc, coco = P.get_protocol("voc21"), P.get_protocol("coco_object")
    assert P.parse_gpt4o_entry("[2: 'bicycle', 15: 'person'], [100, 100]", voc) == [1, 14]
    assert P.parse_gpt4o_entry("[20: 'tvmonitor', 15: 'person'], [90, 10]", voc) == [19]
    assert P.parse_gpt4o_entry("[13: 'horse', 15: 'person'], [horse: 95%, person: 95%]", voc) == [12, 14]
    assert P.parse_gpt4o_entry("[19: train], [100%]", voc) == [18]
    assert P.parse_gpt4o_entry("[18: 'sofa', 11: 'table'], [95, 70]", voc) == [17]  # prob > 70
    assert P.parse_gpt4o_entry("[3: 'bird'], [50]", voc) == [0]  # nothing kept: first class
    assert P.parse_gpt4o_entry("", voc) == [0]
    assert P.parse_gpt4o_entry("[1: 'person', 3: 'car', 90: 'toothbrush'], [100, 80, 90]", coco) == [0, 2, 79]


def test_protocols() -> None:
    assert len(P.get_protocol("voc").caption_names) == 20
    assert P.get_protocol("psc") is P.PROTOCOLS["context59"]
    assert len(P.PROTOCOLS["context59"].caption_names) == 59
    ade = P.PROTOCOLS["ade20k"]
    assert len(ade.caption_names) == 150 and "chestofdrawers" in ade.caption_names
    stuff = P.PROTOCOLS["coco_stuff"]
    assert len(stuff.caption_names) == 172 and stuff.dataset_ids[-1] == 183 and "buildingother" in stuff.caption_names
    assert len(stuff.label_names) == 171 and 183 not in stuff.label_of_id and stuff.background_index is None
    obj = P.PROTOCOLS["coco_object"]
    assert obj.dataset_ids[-1] == 90 and obj.rescale_after_upsample and len(obj.label_names) == 81
    assert obj.label_of_id[90] == 80 and obj.label_of_id[0] == 0
    assert len(P.PROTOCOLS["context60"].label_names) == 60 and len(P.PROTOCOLS["context59"].label_names) == 59
    assert len(P.PROTOCOLS["ade20k"].label_names) == 150 and P.PROTOCOLS["voc21"].label_of_id[20] == 20
    for p in P.PROTOCOLS.values():
        assert all(" " not in n for n in p.caption_names)
    with pytest.raises(UnknownNameError, match="Did you mean"):
        P.get_protocol("contxt59")


def test_threshold_and_blur_nan_rules() -> None:
    maps = torch.zeros(2, 3, 3)
    maps[0, 1, 1] = 1.0
    maps[0, 0, 0] = 0.1
    out = P.threshold_maps(maps, 0.15)
    assert out[0, 1, 1] == 1.0 and out[0, 0, 0] == 0 and torch.equal(out[1], torch.zeros(3, 3))
    const = torch.zeros(2, 20, 20)
    const[1, :10] = 1
    assert torch.isnan(P.blur_maps(const)[0]).all()  # official: 0 / 0
    assert torch.equal(P.blur_maps(const, official=False)[0], torch.zeros(20, 20))


# -- errors -----------------------------------------------------------------------------------------

def test_input_errors(voc_seg, free_seg, chelsea) -> None:
    with pytest.raises(InputError, match="no classes"):
        free_seg.run(chelsea)
    with pytest.raises(InputError, match="not in the voc21 protocol"):
        voc_seg.run(chelsea, ["spaceship"])
    with pytest.raises(InputError, match="no background words"):
        free_seg.predict(chelsea, ["cat"], background=["sky"])
    rng = np.random.default_rng(0)
    long_names = ["".join(rng.choice(list("bcdfghjkmnpqrstvwxz"), 90)) for _ in range(7)]
    with pytest.raises(InputError, match="tokens"):
        free_seg.run(chelsea, long_names)
    with pytest.raises(InputError, match="empty"):
        free_seg.run(chelsea, [])
    with pytest.raises(InputError, match="uint8"):
        free_seg.run(np.zeros((20, 20, 3), np.float32), ["cat"])


def test_option_and_class_list_errors(tiny_model, tmp_path, chelsea) -> None:
    with pytest.raises(InputError, match="background_rule"):
        P.PnPOVSS(model=tiny_model, image_size=224, background_rule="sometimes")
    with pytest.raises(InputError, match="need a dataset"):
        P.PnPOVSS(model=tiny_model, image_size=224, class_lists={"x": "[1: 'cat'], [100]"})
    seg = P.PnPOVSS(model=tiny_model, dataset="voc21", image_size=224, crf=False, blur=False, drop_iter=1,
                    class_lists={"2007_000129": "[2: 'bicycle', 15: 'person'], [100, 100]"})
    out, _ = pnp_run(seg, chelsea, image_id="2007_000129")
    assert out.caption == "A picture of bicycle person" and out.caption_positions == [1, 14]
    res = seg.result_from_output(out, seg.caption_classes(seg.default_vocabulary())[0])
    assert set(np.unique(res.labels.numpy())) <= {0, 2, 15}
    with pytest.raises(InputError, match="not in the class lists"):
        seg.run(chelsea, image_id="2099_000001")
    with pytest.raises(ModelLoadError, match="model directory"):
        P.PnPOVSS(model=str(tmp_path), image_size=224)
    with pytest.raises(ModelLoadError, match="image_size"):
        P.PnPOVSS(model=tiny_model, image_size=100)


def test_offline_hub_name_fails_fast(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="cannot download"):
        P.PnPOVSS(model="Salesforce/blip-itm-large-coco-not-cached", image_size=336)


def test_registered() -> None:
    from ovss.registry import method_class, method_info

    assert method_class("pnp_ovss") is P.PnPOVSS
    assert method_info("pnp_ovss").paper.startswith("Luo et al.")


def test_protocol_class_selection(voc_seg) -> None:
    names, cap, pos = voc_seg.caption_classes(parse_classes(["background", "Potted Plant", "person"]))
    assert cap == ["pottedplant", "person"] and pos == [15, 14] and len(names) == 21


def test_context_label_spaces(tiny_model, chelsea) -> None:
    seg = P.PnPOVSS(model=tiny_model, dataset="psc", image_size=224, drop_iter=2, crf=False)
    out, names = pnp_run(seg, chelsea, ["sky", "cat"])  # fewer than 3 classes: background channel
    assert out.background and len(names) == 59 and out.caption_positions == [46, 14]
    out.pred_channels[:10, :10] = 0  # force some official background pixels
    res = seg.result_from_output(out, names)
    official = res.extras["official_labels"].numpy()
    assert set(np.unique(official)) <= {0, 15, 47} and (official[:10, :10] == 0).all()
    lab = res.labels.numpy()
    assert set(np.unique(lab)) <= {14, 46} and res.background is None
    assert np.array_equal(lab[official == 47], np.full((official == 47).sum(), 46))
    seg60 = P.PnPOVSS(model=tiny_model, dataset="context60", image_size=224, drop_iter=2, crf=False)
    res60 = seg60.result_from_output(out, seg60.caption_classes(seg60.default_vocabulary())[0])
    assert len(res60.classes) == 60 and np.array_equal(res60.labels.numpy(), official)


# -- label-free tuning ------------------------------------------------------------------------------

def test_tuning_sweep(free_seg, voc_seg, tiny_clip, chelsea, voc_run) -> None:
    from ovss.methods import pnp_ovss_tune as T

    seg = free_seg
    res = T.sweep(seg, [chelsea], tiny_clip, classes=["cat", "potted plant"], layers=[8], heads=[8, 9],
                  min_atts=[0.15])
    assert [r.setting.head for r in res] != [] and len(res) == 2
    assert all(0 <= r.reward <= r.max_reward == 2 for r in res)
    assert (res[0].reward, res[0].reward_scaled) >= (res[1].reward, res[1].reward_scaled)
    assert all(0.0 <= tc <= 1.0 + 1e-9 for r in res for _, _, tc in r.per_image)
    # every layer captured in one pass gives the same GradCAM as the single-layer capture
    from ovss.backbones.blip import CrossAttentionCapture, inference_with_grad, itm_forward

    out, _ = voc_run
    with inference_with_grad(), CrossAttentionCapture(voc_seg.blip.model, [3, 7]) as cap:
        itm_forward(voc_seg.blip, out.input, out.input_ids)[:, 1].sum().backward()
        a, d = cap.probs[7][0, 9], cap.grad(7)[0, 9]
    cam = (a[:, 1:].reshape(-1, 14, 14) * d[:, 1:].clamp(min=0).reshape(-1, 14, 14))[1:]
    assert torch.equal(cam, out.gradcam_tokens[0])
    masks, small = T.clip_masks(out.gradcam_first[:2], 0.15, 32)
    assert masks.shape == (2, 32, 32) and masks.dtype == bool and small.shape == (2, 24, 24)
    with pytest.raises(InputError, match="head"):
        T.sweep(seg, [chelsea], tiny_clip, classes=["cat"], heads=[12])


def test_tuning_command(tiny_model, tiny_clip_files, chelsea, tmp_path) -> None:
    import json

    from PIL import Image
    from typer.testing import CliRunner

    from ovss.cli import app

    Image.fromarray(chelsea).save(tmp_path / "cat.png")
    out = tmp_path / "scores.json"
    r = CliRunner().invoke(app, ["pnp-tune", "--images", str(tmp_path / "cat.png"), "--classes", "cat, sofa",
                                 "--model", tiny_model, "--image-size", "160", "--clip-model", tiny_clip_files[0],
                                 "--clip-pretrained", tiny_clip_files[1], "--heads", "8-9", "--min-att", "0.15",
                                 "--output", str(out)])
    assert r.exit_code == 0, r.output
    scores = json.loads(out.read_text())
    assert [s["head"] for s in scores] in ([8, 9], [9, 8]) and all(s["max_reward"] == 2 for s in scores)
    best = scores[0]
    assert f"--layer 8 --head {best['head']} --threshold 0.15" in r.output
    bad = CliRunner().invoke(app, ["pnp-tune", "--images", str(tmp_path / "missing.png"), "--classes", "cat",
                                   "--model", tiny_model, "--image-size", "160", "--clip-model", tiny_clip_files[0],
                                   "--clip-pretrained", tiny_clip_files[1], "--heads", "9"])
    assert bad.exit_code == 2 and "Traceback" not in bad.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_cuda_unavailable_message(tiny_model) -> None:
    with pytest.raises(InputError, match="CUDA is not available"):
        P.PnPOVSS(model=tiny_model, image_size=224, device="cuda")
