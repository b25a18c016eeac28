"""FC-CLIP: parity with the official code on the tiny fixture, the importer, deformable attention,
the ensemble and panoptic inference."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ovss.errors import InputError, ModelLoadError, UnknownNameError


@pytest.fixture(scope="module")
def fc_dir(parity_dir: Path) -> Path:
    d = parity_dir / "fc_clip"
    if not (d / "fcclip_ade150_astronaut.npz").is_file():
        pytest.skip(f"FC-CLIP parity fixtures not found in {d}")
    return d


@pytest.fixture(scope="module")
def files(fc_dir: Path) -> dict[str, str]:
    return {"model": str(fc_dir / "convnext_fcclip_tiny.json"),
            "pretrained": str(fc_dir / "tiny_convnext_clip.safetensors"),
            "checkpoint": str(fc_dir / "fcclip_tiny.pth"), "config": str(fc_dir / "fcclip_tiny_config.yaml")}


@pytest.fixture(scope="module")
def seg(files: dict[str, str]):
    import ovss

    return ovss.create_segmenter("fc_clip", dataset="ade20k", panoptic=True, **files)


@pytest.fixture(scope="module")
def ref(fc_dir: Path) -> dict[str, np.ndarray]:
    with np.load(fc_dir / "fcclip_ade150_astronaut.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def diag(fc_dir: Path) -> dict:
    man = json.loads((fc_dir / "manifest.json").read_text())
    return man["files"]["fcclip_ade150_astronaut.npz"]["diagnostics"]


@pytest.fixture(scope="module")
def out(seg, ref) -> dict:
    from ovss.methods.fc_clip import dataset_vocabulary

    h, w = (int(v) for v in ref["ori_shape"])
    return seg.run_resized(ref["image_uint8"].transpose(1, 2, 0), (h, w), dataset_vocabulary("ade20k"), seg.protocol.things,
                   panoptic=True)


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy() if torch.is_tensor(t) else np.asarray(t)


def _rel(a, b) -> float:
    a, b = _np(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def test_text_classifier_matches(out, ref):
    assert np.abs(_np(out["text_classifier"]) - ref["text_classifier"]).max() <= 1e-5
    assert list(out["num_synonyms"]) == ref["num_synonyms"].tolist()
    assert _np(out["seen"]).tolist() == ref["category_overlapping_mask"].tolist()


def test_features_and_decoder_match(out, ref):
    f = out["features"]
    assert _rel(f["clip_vis_dense"][0], ref["clip_vis_dense"]) <= 1e-4
    for k in ("res2", "res3", "res4"):
        assert _rel(f[k][0], ref[f"feat_{k}"]) <= 1e-4
    ms = out["multi_scale_features"]
    assert _rel(ms[0][0], ref["ms_feat_s32"]) <= 1e-4
    assert _rel(ms[1][0], ref["ms_feat_s16"]) <= 1e-4
    c = ref["ms_feat_s8_coords"]
    assert _rel(ms[2][0][:, c[:, 0], c[:, 1]], ref["ms_feat_s8_samples"]) <= 1e-4
    c = ref["mask_features_coords"]
    assert _rel(out["mask_features"][0][:, c[:, 0], c[:, 1]], ref["mask_features_samples"]) <= 1e-4
    assert _rel(out["in_vocab_logits"], ref["in_vocab_logits"]) <= 1e-4
    assert _rel(torch.stack(out["aux_in_vocab_logits"]), ref["aux_in_vocab_logits"]) <= 1e-4
    assert _rel(out["pred_masks"], ref["pred_masks"]) <= 1e-4


def test_ensemble_and_semantic_match(out, ref, diag):
    assert _rel(out["pooled_clip_feature"], ref["pooled_clip_feature"]) <= 1e-4
    assert _rel(out["out_vocab_logits"], ref["out_vocab_logits"]) <= 1e-4
    assert _rel(out["mask_cls_results"], ref["mask_cls_results"]) <= 1e-4
    c = ref["coords"]
    assert np.abs(_np(out["sem_seg"][:, c[:, 0], c[:, 1]]) - ref["sem_seg"]).max() <= 1e-4
    mismatch = int((_np(out["sem_seg"].argmax(0)) != ref["sem_pred"]).sum())
    assert mismatch <= diag["sem_top2_relative_gap_lt"]["1e-05"]


def test_panoptic_matches(out, ref, diag):
    ties = diag["pan_probmask_top2_relative_gap_lt"]["1e-05"] + diag["pan_kept_mask_logit_abs_lt"]["1e-05"]
    assert int((_np(out["panoptic_seg"]) != ref["panoptic_seg"]).sum()) <= ties
    got = [[s["id"], s["category_id"], int(s["isthing"])] for s in out["segments"]]
    assert got == ref["panoptic_segments"].tolist()


def test_ensemble_weights_matter(seg, out, ref):
    from ovss.methods.fc_clip import geometric_ensemble

    moved = geometric_ensemble(out["in_vocab_logits"][None], out["out_vocab_logits"][None], out["seen"], 0.41, 0.8)[0]
    assert np.abs(_np(moved) - ref["mask_cls_results"]).max() > 0.05  # negative control


def test_predict_from_photo(seg, fc_dir, ref, diag):
    res = seg.predict(fc_dir.parent / "astronaut.png")
    assert res.scores.shape == (150, 512, 512) and res.scores.dtype == torch.float32
    assert res.labels.shape == (512, 512) and res.labels.dtype == torch.int64
    assert torch.equal(res.labels, res.scores.argmax(0))
    assert int((res.labels.numpy() != ref["sem_pred"]).sum()) <= diag["sem_top2_relative_gap_lt"]["1e-05"]
    assert res.settings["short_side"] == 320  # INPUT.MIN_SIZE_TEST of the given config
    pan = res.extras["panoptic"]
    _check_panoptic(pan["panoptic_seg"], pan["segments"], num_classes=150)


def _check_panoptic(pan: torch.Tensor, segments: list[dict], num_classes: int) -> None:
    ids = [s["id"] for s in segments]
    assert ids == list(range(1, len(ids) + 1))
    assert pan.dtype == torch.int32
    present = set(torch.unique(pan).tolist()) - {0}
    assert present == set(ids)  # every segment has pixels, every labelled pixel has a segment
    stuff = [s["category_id"] for s in segments if not s["isthing"]]
    assert len(stuff) == len(set(stuff))  # stuff classes are merged
    assert all(0 <= s["category_id"] < num_classes and 0 <= s["score"] <= 1 for s in segments)


def test_panoptic_inference_rules():
    from ovss.methods.fc_clip import panoptic_inference

    # 4 queries, 2 classes (+ void): q0 thing 0, q1 thing 0, q2 stuff 1 twice (merged), q3 void
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.05, 0.05, 0.9]])
    m = torch.full((4, 8, 8), -10.0)
    m[0, :4, :4] = 10
    m[1, 4:, :4] = 10
    m[2, :, 4:] = 10
    m[3] = 10
    mask_cls = torch.log(probs)
    pan, segs = panoptic_inference(mask_cls, m, things=[0])
    assert [(s["id"], s["category_id"], s["isthing"]) for s in segs] == [(1, 0, True), (2, 0, True), (3, 1, False)]
    assert (pan[:4, :4] == 1).all() and (pan[4:, :4] == 2).all() and (pan[:, 4:] == 3).all()
    _check_panoptic(pan, segs, 2)
    # a query whose mask is mostly taken by others is dropped by the overlap rule
    m[1, :4, :4] = 10
    m[1, 4:, :4] = -10
    pan, segs = panoptic_inference(mask_cls, m, things=[0])
    assert [s["category_id"] for s in segs] == [0, 1]


def test_importer_keys_and_text_tower(files, seg):
    from ovss.importers.fc_clip import read_checkpoint

    sd = read_checkpoint(files["checkpoint"])
    assert not any(k.startswith("backbone.clip_model.transformer.") for k in sd)  # no text tower
    own = seg.net.state_dict()
    for k, v in sd.items():
        if not k.startswith("criterion."):
            assert torch.equal(own[k], v.float()), k
    # the text tower and CLIP's logit scale come from the open_clip weights
    from ovss.checkpoints import load_state_dict

    clip_sd = load_state_dict(files["pretrained"])
    assert torch.equal(own["backbone.clip_model.text_projection"], clip_sd["text_projection"])
    assert float(seg.backbone.logit_scale) == pytest.approx(4.75)
    assert seg.net.cfg.num_queries == 20 and seg.net.cfg.dec_layers == 4 and seg.net.cfg.nheads == 4


def test_importer_same_from_safetensors_and_without_config(files, fc_dir, seg):
    from ovss.backbones.convnext_clip import load_conv_clip
    from ovss.importers.fc_clip import build_fcclip

    backbone = load_conv_clip(files["model"], files["pretrained"])
    net, settings = build_fcclip(fc_dir / "fcclip_tiny.safetensors", backbone)  # sizes from the shapes
    a, b = net.state_dict(), seg.net.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert settings.alpha == 0.4 and settings.beta == 0.8


def test_importer_rejects_other_architectures(files, fc_dir, tmp_path):
    from ovss.backbones.convnext_clip import load_conv_clip
    from ovss.importers.d2config import load_config
    from ovss.importers.fc_clip import build_fcclip

    backbone = load_conv_clip(files["model"], files["pretrained"])
    # a closed-vocabulary Mask2Former checkpoint
    m2f = tmp_path / "m2f.pth"
    torch.save({"model": {"sem_seg_head.predictor.class_embed.weight": torch.zeros(134, 256),
                          "backbone.res2.0.conv1.weight": torch.zeros(1)}}, m2f)
    with pytest.raises(ModelLoadError, match="not an FC-CLIP checkpoint.*Mask2Former"):
        build_fcclip(m2f, backbone)
    # a config of other sizes than the checkpoint
    cfg = load_config(files["config"])
    cfg["MODEL"]["MASK_FORMER"]["NUM_OBJECT_QUERIES"] = 250
    with pytest.raises(ModelLoadError, match="num_queries is 250 in the config but 20"):
        build_fcclip(files["checkpoint"], backbone, cfg)
    # an FC-CLIP head on another visual tower (wrong widths)
    sd = torch.load(files["checkpoint"], map_location="cpu", weights_only=True)["model"]
    sd["backbone.clip_model.visual.trunk.stem.0.weight"] = torch.zeros(8, 3, 4, 4)
    bad = tmp_path / "other.pth"
    torch.save({"model": sd}, bad)
    with pytest.raises(ModelLoadError, match="does not fit"):
        build_fcclip(bad, backbone)
    # a checkpoint of a ResNet-CLIP FC-CLIP given the ConvNeXt CLIP: named, with the fix
    res = {k.replace("visual.trunk.", "visual.layer1."): v for k, v in sd.items()}
    torch.save({"model": res}, bad)
    with pytest.raises(ModelLoadError, match="trained on a resnet CLIP but the given CLIP is a convnext.*RN50"):
        build_fcclip(bad, backbone)


def test_errors(files):
    import ovss

    with pytest.raises(InputError, match="checkpoint"):
        ovss.create_segmenter("fc_clip", model=files["model"], pretrained=files["pretrained"])
    with pytest.raises(UnknownNameError, match="fc_clip has no protocol for dataset 'ade21k'"):
        ovss.create_segmenter("fc_clip", dataset="ade21k", **files)
    with pytest.raises(ModelLoadError, match="convolutional CLIP"):
        from ovss.backbones.convnext_clip import clip_model_type

        clip_model_type(torch.nn.Linear(2, 2))


def test_custom_classes_and_threshold(seg):
    img = np.zeros((40, 60, 3), np.uint8)
    img[:, 30:] = 200
    res = seg.predict(img, ["sky", ("person", "man"), "tree"])
    assert res.scores.shape == (3, 40, 60) and res.classes == ["sky", "person", "tree"]
    res = seg.predict(img, ["sky", "tree"], prob_threshold=0.5)  # a threshold adds a "background" class
    assert res.classes == ["background", "sky", "tree"] and res.settings["queries"][0] == ["background"]
    res = seg.predict(img, ["sky", "tree"], background="background", prob_threshold=2.0)
    assert res.background == 0 and (res.labels == 0).all()


def test_official_class_file_as_classes(seg, tmp_path):
    f = tmp_path / "mine.txt"
    f.write_text("0:invalid_class_id\n1:sky,clouds\n2:tree, trees\n")
    vocab = seg.vocabulary(f)
    assert vocab.queries == (("sky", "clouds"), ("tree", "trees")) and seg.thing_classes(vocab) == (0, 1)


def test_class_files_and_protocols():
    from ovss.imageio import d2_test_size as resize_shortest_edge
    from ovss.methods.fc_clip import FCCLIP_PROTOCOLS, dataset_vocabulary, seen_mask

    ade, coco = dataset_vocabulary("ade20k"), dataset_vocabulary("coco")
    assert len(ade) == 150 and sum(len(q) for q in ade.queries) == 403
    assert len(coco) == 133 and sum(len(q) for q in coco.queries) == 254
    assert int(seen_mask(ade, coco).sum()) == 64 and int(seen_mask(coco, coco).sum()) == 133
    assert len(dataset_vocabulary("cityscapes")) == 19 and dataset_vocabulary("cityscapes").names[0] == "road"
    assert FCCLIP_PROTOCOLS.get("cityscapes").short_side == 1024 and FCCLIP_PROTOCOLS.get("ade150").short_side == 800
    assert resize_shortest_edge(300, 451, 320, 1333) == (320, 481)
    assert resize_shortest_edge(257, 389, 320, 1333) == (320, 484)
    assert resize_shortest_edge(1000, 5000, 800, 1333) == (267, 1333)


# ---- multi-scale deformable attention vs a direct, slow reference --------------------------------


def _bilinear_zero_pad(v: np.ndarray, x: float, y: float) -> np.ndarray:
    """v (D, H, W); (x, y) normalised in [0, 1], align_corners=False, zeros outside."""
    d, h, w = v.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = np.zeros(d)
    for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
        for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                out += wy * wx * v[:, yy, xx]
    return out


def test_deformable_attention_matches_direct_reference():
    from ovss.models.deform_attn import MSDeformAttn

    torch.manual_seed(0)
    c, heads, levels, points = 8, 2, 2, 3
    shapes = [(3, 4), (2, 2)]
    attn = MSDeformAttn(c, levels, heads, points)
    with torch.no_grad():
        for p in attn.parameters():
            p.add_(0.3 * torch.randn_like(p))
    s = sum(h * w for h, w in shapes)
    src = torch.randn(1, s, c)
    lq = 5
    query = torch.randn(1, lq, c)
    ref = torch.rand(1, lq, levels, 2)
    got = attn(query, ref, src, shapes)[0].detach().numpy()

    value = attn.value_proj(src)[0].detach().numpy()  # (S, C)
    off = attn.sampling_offsets(query)[0].detach().numpy().reshape(lq, heads, levels, points, 2)
    logits = attn.attention_weights(query)[0].detach().numpy().reshape(lq, heads, levels * points)
    dh = c // heads
    expect = np.zeros((lq, c))
    for q in range(lq):
        for m in range(heads):
            wts = np.exp(logits[q, m] - logits[q, m].max())
            wts = (wts / wts.sum()).reshape(levels, points)
            start = 0
            for lvl, (h, w) in enumerate(shapes):
                v = value[start:start + h * w, m * dh:(m + 1) * dh].T.reshape(dh, h, w)
                start += h * w
                for p in range(points):
                    x = ref[0, q, lvl, 0].item() + off[q, m, lvl, p, 0] / w
                    y = ref[0, q, lvl, 1].item() + off[q, m, lvl, p, 1] / h
                    expect[q, m * dh:(m + 1) * dh] += wts[lvl, p] * _bilinear_zero_pad(v, x, y)
    expect = expect @ attn.output_proj.weight.detach().numpy().T + attn.output_proj.bias.detach().numpy()
    assert np.abs(got - expect).max() < 1e-5


def test_geometric_ensemble_valid_mask_falls_back_to_in_vocab():
    from ovss.methods.fc_clip import geometric_ensemble

    torch.manual_seed(0)
    inv, outv = torch.randn(1, 3, 5), torch.randn(1, 3, 5)
    seen = torch.tensor([1, 0, 1, 0])
    res = geometric_ensemble(inv, outv, seen, 0.4, 0.8, valid=torch.tensor([[True, False, True]]))
    p_void = inv.softmax(-1)[..., -1:]
    expect = torch.log(torch.cat([inv[..., :-1].softmax(-1) * (1 - p_void), p_void], -1) + 1e-8)
    assert torch.allclose(res[0, 1], expect[0, 1], atol=1e-6)  # empty mask: in-vocabulary only
    assert not torch.allclose(res[0, 0], expect[0, 0], atol=1e-3)
    full = geometric_ensemble(inv, outv, seen, 0.4, 0.8)
    assert torch.allclose(res[0, [0, 2]], full[0, [0, 2]])  # valid masks: the usual ensemble


def test_resnet_clip_masked_attention_pool(tmp_path):
    from ovss.backbones.convnext_clip import load_conv_clip

    cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "patch_size": None},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 8, "heads": 2, "layers": 1}}
    path = tmp_path / "rn_tiny.json"
    path.write_text(json.dumps(cfg))
    torch.manual_seed(0)
    bb = load_conv_clip(str(path), None)
    assert bb.model_type == "resnet" and bb.output_channels == {"res2": 64, "res3": 128, "res4": 256, "res5": 512}
    feats = bb(torch.randn(1, 3, 64, 96))
    dense = feats["clip_vis_dense"]
    assert dense.shape == (1, 512, 2, 3) and feats["res2"].shape == (1, 64, 16, 24)
    masks = torch.full((1, 2, 2, 3), -1.0)
    masks[0, 0, 1, 2] = 1.0  # query 0 sees one pixel: the pool returns that pixel's value
    masks[0, 1] = 1.0
    pooled = bb.pooled_clip_features(dense, masks)
    assert pooled.shape == (1, 2, 32) and torch.isfinite(pooled).all()
    pool = bb.clip_model.visual.attnpool
    side = int(round((pool.positional_embedding.shape[0] - 1) ** 0.5))
    pe = pool.positional_embedding[1:].T.reshape(1, 512, side, side)
    pe = torch.nn.functional.interpolate(pe, size=(2, 3), mode="bilinear", align_corners=False)
    expect = pool.c_proj(pool.v_proj(dense[0, :, 1, 2] + pe[0, :, 1, 2]))
    assert torch.allclose(pooled[0, 0], expect, atol=1e-4)
