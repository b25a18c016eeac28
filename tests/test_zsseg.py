"""ZSSeg / SimSeg: parity with the official code's outputs on the tiny fixture, importer edge cases,
crop geometry, protocols and the training-free path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import ovss
from ovss.errors import InputError, ModelLoadError, UnknownNameError
from ovss.imageio import d2_test_size
from ovss.methods import two_stage as ts

from conftest import fp32_close, max_abs_diff as _diff, same_mask_areas


@pytest.fixture(scope="module")
def zdir(parity_dir: Path) -> Path:
    d = parity_dir / "zsseg"
    if not (d / "zsseg_coco171_astronaut.npz").is_file():
        pytest.skip(f"ZSSeg fixtures missing in {d}")
    return d


@pytest.fixture(scope="module")
def seg(zdir: Path, tiny_clip_files):
    from ovss.methods.zsseg import ZSSeg

    return ZSSeg(model=tiny_clip_files[0], pretrained=tiny_clip_files[1], checkpoint=zdir / "zsseg_tiny_r101c.pth",
                 config=zdir / "zsseg_tiny_config.json", dataset="coco_stuff", short_side=320, max_long_side=1280)


@pytest.fixture(scope="module")
def run(seg, zdir: Path, parity_dir: Path):
    return seg.run(parity_dir / "astronaut.png"), dict(np.load(zdir / "zsseg_coco171_astronaut.npz"))


def test_input_and_text_features(run) -> None:
    out, z = run
    assert np.array_equal(out["image"].numpy(), z["image"])  # PIL resize as detectron2: bitwise
    assert _diff(out["text_features"], z["text_features"]) <= 1e-5


def test_maskformer_outputs(run) -> None:
    out, z = run
    assert fp32_close(out["pred_embed"], z["pred_embed"])
    assert fp32_close(out["mf_logits"], z["mf_logits"])
    assert fp32_close(out["pred_masks"], z["pred_masks"])
    ci = z["coords_input"]
    assert fp32_close(out["mask_logits"][:, ci[:, 0], ci[:, 1]], z["mask_logits_input"], scale=z["pred_masks"])


def test_regions_and_clip(run, seg) -> None:
    out, z = run
    assert np.array_equal(out["valid"].numpy(), z["valid"])
    # a mask pixel within float noise of MASK_THR may flip (README "Caveat"): that query's crop
    # changes, so its CLIP logits are compared only where the binarised mask is the official one
    same = same_mask_areas(out["mask_logits"].sigmoid(), seg.mask_thr, z["mask_area"])
    assert same.float().mean() >= 0.8
    vsame = same[out["valid"]]
    assert np.array_equal(out["boxes"].numpy()[vsame], z["boxes"][vsame])
    if vsame[0]:
        assert _diff(out["crops"][0], z["crop0"]) <= 1e-5
    assert _diff(out["clip_logits"][vsame], z["clip_logits"][vsame]) <= 1e-4
    assert _diff(out["clip_probs"][same], z["clip_probs"][same]) <= 1e-4


def test_ensemble_and_scores(run, zdir: Path) -> None:
    out, z = run
    assert _diff(out["ensemble_probs"], z["ensemble_probs"]) <= 1e-4
    c = z["coords"]
    assert _diff(out["sem_seg"][:, c[:, 0], c[:, 1]], z["seg_logits"]) <= 1e-4
    manifest = json.loads((zdir / "manifest.json").read_text())
    ties = manifest["files"][0]["diagnostics"]["pixels_top2_margin_below_1e-05"]
    assert int((out["sem_seg"].argmax(0).numpy() != z["pred"]).sum()) <= ties


def test_ensemble_from_stored_tensors(zdir: Path) -> None:
    from ovss.methods.zsseg import zsseg_ensemble

    z = np.load(zdir / "zsseg_coco171_astronaut.npz")
    flag = json.loads((zdir / "manifest.json").read_text())["protocols"]["coco171"]["trainable_flag"]
    p_mf = torch.softmax(torch.from_numpy(z["mf_logits"]), dim=-1)[:, :-1]
    got = zsseg_ensemble(p_mf, torch.from_numpy(z["clip_probs"]), torch.tensor(flag, dtype=torch.float32), 0.8)
    assert _diff(got, z["ensemble_probs"]) <= 1e-5


def test_protocol_seen_flags_match_manifest(seg, zdir: Path) -> None:
    proto = json.loads((zdir / "manifest.json").read_text())["protocols"]
    from ovss.methods.two_stage import class_strings

    names = class_strings(seg.default_vocabulary())
    flag = seg.seen_flags(names)
    assert names == proto["coco171"]["class_names"]
    assert flag.int().tolist() == proto["coco171"]["trainable_flag"]


def test_predict_api_and_user_classes(seg, parity_dir: Path) -> None:
    seg.short_side = 64
    try:
        res = seg.predict(parity_dir / "astronaut.png", classes=["person", "sky", "rocket, spaceship"])
    finally:
        seg.short_side = 320
    assert res.scores.shape == (3, 512, 512) and res.labels.shape == (512, 512)
    assert res.classes == ["person", "sky", "rocket, spaceship"]
    assert torch.isfinite(res.scores).all()
    assert torch.equal(res.labels, res.scores.argmax(0))
    with pytest.raises(InputError):
        seg.predict(parity_dir / "astronaut.png", background="background")


def test_ade150_cross_dataset_protocol(zdir: Path, tiny_clip_files, parity_dir: Path) -> None:
    seg = ovss.create_segmenter("zsseg", model=tiny_clip_files[0], pretrained=tiny_clip_files[1],
                                checkpoint=str(zdir / "zsseg_tiny_r101c.safetensors"),
                                config=str(zdir / "zsseg_tiny_config.json"), dataset="ade20k",
                                short_side=256, max_long_side=1024)
    assert (seg.prompt, seg.mask_thr, seg.ensemble_weight) == ("vild", 0.4, 0.5)
    out = seg.run(parity_dir / "astronaut.png")
    proto = json.loads((zdir / "manifest.json").read_text())["protocols"]["ade150"]
    assert out["names"] == proto["class_names"] and tuple(out["image"].shape) == (3, 256, 256)
    # every ADE class takes the unseen branch p_mf^(1-l) * p_clip^l
    p_mf = torch.softmax(out["mf_logits"], dim=-1)[:, :-1]
    expect = p_mf.pow(0.5) * out["clip_probs"].pow(0.5)
    assert torch.allclose(out["ensemble_probs"], expect, atol=1e-6)
    assert out["valid"].sum() == (torch.sigmoid(out["mask_logits"]) > 0.4).flatten(1).any(1).sum()


def test_registry_and_errors(zdir: Path, tiny_clip_files) -> None:
    assert "zsseg" in ovss.available_methods()
    with pytest.raises(UnknownNameError):
        ovss.create_segmenter("zsseg", model=tiny_clip_files[0], pretrained=tiny_clip_files[1],
                              checkpoint=str(zdir / "zsseg_tiny_r101c.pth"), dataset="mars")
    with pytest.raises(ModelLoadError, match="--config"):  # released sizes do not fit the tiny model
        ovss.create_segmenter("zsseg", model=tiny_clip_files[0], pretrained=tiny_clip_files[1],
                              checkpoint=str(zdir / "zsseg_tiny_r101c.pth"))
    with pytest.raises(ModelLoadError, match="checkpoint"):
        ovss.create_segmenter("zsseg", model=tiny_clip_files[0], pretrained=tiny_clip_files[1])
    with pytest.raises(InputError):
        ovss.create_segmenter("zsseg", model=tiny_clip_files[0], pretrained=tiny_clip_files[1],
                              checkpoint=str(zdir / "zsseg_tiny_r101c.pth"), short_side=0)


# ------------------------------------------------------------------------------------ importer

def test_importer_layouts(zdir: Path, parity_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from ovss.importers.zsseg import load_zsseg_checkpoint

    cfg = zdir / "zsseg_tiny_config.json"
    ref = load_zsseg_checkpoint(zdir / "zsseg_tiny_r101c.pth", cfg)
    assert ref.clip_state_dict is None and ref.prompt_shape == (16, 0)
    assert ref.config.dec_layers == 2 and ref.config.resnet.stem_type == "deeplab"
    assert ref.config.resnet.res5_multi_grid == [1, 2, 4]
    assert set(ref.prompts) == {"prefix_prompt", "start_signal", "dot_signal", "end_signal", "pad_signal"}
    sd = load_file(str(zdir / "zsseg_tiny_r101c.safetensors"))
    # safetensors copy (no version metadata), pre-v2 key names, and a file with the frozen CLIP inside
    old = {k.replace("sem_seg_head.pixel_decoder.", "sem_seg_head."): v for k, v in sd.items()}
    clip = {"clip_adapter.clip_model." + k: v for k, v in load_file(str(parity_dir / "tiny_clip_b16.safetensors")).items()}
    torch.save({"model": old}, tmp_path / "old.pth")
    torch.save({"model": {**sd, **clip}, "iteration": 5}, tmp_path / "with_clip.pth")
    for path in (zdir / "zsseg_tiny_r101c.safetensors", tmp_path / "old.pth", tmp_path / "with_clip.pth"):
        got = load_zsseg_checkpoint(path, cfg)
        assert got.maskformer.keys() == ref.maskformer.keys()
        assert all(torch.equal(got.maskformer[k], ref.maskformer[k]) for k in ref.maskformer)
        assert torch.equal(got.non_object_embedding, ref.non_object_embedding)
    assert len(load_zsseg_checkpoint(tmp_path / "with_clip.pth", cfg).clip_state_dict) == len(clip)


def test_importer_errors(zdir: Path, parity_dir: Path, tmp_path: Path) -> None:
    from ovss.importers.zsseg import load_zsseg_checkpoint

    with pytest.raises(ModelLoadError, match="ZegFormer"):
        load_zsseg_checkpoint(parity_dir / "zegformer" / "zegformer_tiny_r101.pth")
    with pytest.raises(ModelLoadError, match="not found"):
        load_zsseg_checkpoint(tmp_path / "missing.pth")
    sd = torch.load(zdir / "zsseg_tiny_r101c.pth", weights_only=True)["model"]
    swin = {("backbone.layers.0.blocks.0.attn.qkv.weight" if k.startswith("backbone.") else k): v
            for k, v in sd.items()}
    torch.save({"model": swin}, tmp_path / "swin.pth")
    with pytest.raises(ModelLoadError, match="not a ResNet"):
        load_zsseg_checkpoint(tmp_path / "swin.pth")
    (tmp_path / "swin.json").write_text(json.dumps({"MODEL.BACKBONE.NAME": "D2SwinTransformer"}))
    with pytest.raises(ModelLoadError, match="not supported"):
        load_zsseg_checkpoint(zdir / "zsseg_tiny_r101c.pth", tmp_path / "swin.json")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError):
        load_zsseg_checkpoint(tmp_path / "junk.pth")


def test_yaml_config_with_base_chain(tmp_path: Path) -> None:
    from ovss.importers.zsseg import ZSSEG_RELEASED, maskformer_config, read_config

    # MaskFormer's base configs hold a python tag that a safe YAML load rejects; it is read as None
    (tmp_path / "base.yaml").write_text("MODEL:\n  BACKBONE:\n    NAME: build_resnet_deeplab_backbone\n"
                                        "  RESNETS:\n    DEPTH: 50\n    STRIDE_IN_1X1: False\nINPUT:\n"
                                        "  MIN_SIZE_TRAIN: !!python/object/apply:eval [\"[int(x * 0.1 * 640) "
                                        "for x in range(5, 16)]\"]\n")
    (tmp_path / "r101c.yaml").write_text("_BASE_: base.yaml\nMODEL:\n  RESNETS:\n    DEPTH: 101\n"
                                         "    STEM_OUT_CHANNELS: 128\n    RES5_MULTI_GRID: [1, 2, 4]\n")
    raw = read_config(tmp_path / "r101c.yaml")
    assert raw["INPUT"]["MIN_SIZE_TRAIN"] is None
    cfg = maskformer_config(raw, ZSSEG_RELEASED, "embed")
    assert (cfg.resnet.depth, cfg.resnet.stem_type, cfg.resnet.stem_out_channels) == (101, "deeplab", 128)
    assert cfg.resnet.res5_multi_grid == [1, 2, 4] and not cfg.resnet.stride_in_1x1
    assert (cfg.num_queries, cfg.dec_layers, cfg.embedding_dim) == (100, 6, 512)
    from ovss.importers.zsseg import as_sequence

    assert as_sequence("(16, 0)") == [16, 0]  # detectron2 YAML tuples are strings


# ------------------------------------------------------------------------------ crop geometry

def test_tight_boxes_known_masks() -> None:
    m = torch.zeros(3, 6, 8, dtype=torch.bool)
    m[0, 2, 3] = True  # one pixel
    m[1, :, 5] = True  # one-pixel-wide vertical strip
    m[2, 1:4, 2:7] = True
    m[2, 5, 0] = True
    assert ts.tight_boxes(m).tolist() == [[3, 2, 4, 3], [5, 0, 6, 6], [0, 1, 7, 6]]


def test_zsseg_crop_fill_and_resize() -> None:
    img = torch.arange(3 * 6 * 8, dtype=torch.float32).view(3, 6, 8) % 251
    m = torch.zeros(1, 6, 8, dtype=torch.bool)
    m[0, 1:3, 2:6] = True
    m[0, 4, 2] = True
    box = ts.tight_boxes(m)
    assert box.tolist() == [[2, 1, 6, 5]]
    crop = ts.zsseg_crops(img, m, box, size=4)  # 4x4 box -> bicubic to 4x4 is the identity
    fill, mean, std = ts.zsseg_fill_and_norm()
    region = img[:, 1:5, 2:6]
    inside = m[0, 1:5, 2:6]
    expect = torch.where(inside[None], region, fill.view(3, 1, 1))
    expect = (expect - mean.view(3, 1, 1)) / std.view(3, 1, 1)
    assert torch.allclose(crop[0], expect, atol=1e-6)
    assert crop[0][:, ~inside].abs().max() < 1e-5  # mean colour normalises to ~0 (one-ulp quirk)
    assert ts.zsseg_crops(img, m[:0], box[:0], size=4).shape == (0, 3, 4, 4)


def test_empty_masks_are_invalid(seg) -> None:
    img = torch.zeros(3, 8, 8)
    probs = torch.zeros(2, 8, 8)
    probs[1, 3:5, 3:5] = 0.9
    text = torch.nn.functional.normalize(torch.randn(4, 64), dim=-1)
    logits, valid, boxes, crops = seg.classify_regions(img, probs, text)
    assert valid.tolist() == [False, True] and boxes.tolist() == [[3, 3, 5, 5]]
    assert logits.shape == (1, 4) and crops.shape == (1, 3, 224, 224)


def test_d2_resize_rounding() -> None:
    assert d2_test_size(512, 512, 320, 1280) == (320, 320)
    assert d2_test_size(300, 451, 320, 1280) == (320, 481)
    assert d2_test_size(100, 1000, 320, 1280) == (128, 1280)


# ------------------------------------------------------------------------------- training-free

def test_external_mask_generator(tiny_clip_files, parity_dir: Path) -> None:
    def two_halves(image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        m = np.zeros((3, h, w), dtype=bool)
        m[0, : h // 2] = True
        m[1, h // 2:] = True  # m[2] empty: dropped
        return m

    seg = ovss.create_segmenter("zsseg", model=tiny_clip_files[0], pretrained=tiny_clip_files[1],
                                proposals=two_halves, short_side=64, max_long_side=256)
    assert seg.prompt == "vild"
    res = seg.predict(parity_dir / "astronaut.png", classes=["person", "sky"])
    assert res.scores.shape == (2, 512, 512)
    # each half's scores are that mask's CLIP probabilities (sum to 1 away from the seam)
    assert torch.allclose(res.scores[:, 10, 10].sum(), torch.tensor(1.0), atol=1e-5)
    with pytest.raises(InputError, match="masks"):
        bad = ovss.create_segmenter("zsseg", model=tiny_clip_files[0], pretrained=tiny_clip_files[1],
                                    proposals=lambda im: np.zeros((1, 3, 3), bool), short_side=64)
        bad.predict(parity_dir / "astronaut.png", classes=["person"])


def test_transformers_sam_mask_generator(tiny_clip_files, parity_dir: Path, tmp_path: Path) -> None:
    """A (tiny, random) SAM saved locally drives the transformers mask-generation pipeline."""
    pytest.importorskip("transformers")
    from transformers import SamConfig, SamImageProcessor, SamModel
    from transformers.models.sam.configuration_sam import (SamMaskDecoderConfig, SamPromptEncoderConfig,
                                                           SamVisionConfig)

    vision = SamVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_dim=64,
                             output_channels=32, image_size=256, patch_size=16, global_attn_indexes=[1],
                             window_size=4, num_pos_feats=16)
    prompt = SamPromptEncoderConfig(hidden_size=32, image_size=256, patch_size=16, mask_input_channels=4)
    decoder = SamMaskDecoderConfig(hidden_size=32, mlp_dim=64, num_hidden_layers=2, num_attention_heads=2,
                                   iou_head_hidden_dim=32)
    torch.manual_seed(0)
    SamModel(SamConfig(vision_config=vision.to_dict(), prompt_encoder_config=prompt.to_dict(),
                       mask_decoder_config=decoder.to_dict())).eval().save_pretrained(tmp_path / "sam")
    SamImageProcessor(size={"longest_edge": 256}, pad_size={"height": 256, "width": 256}).save_pretrained(tmp_path / "sam")
    seg = ovss.create_segmenter("zsseg", model=tiny_clip_files[0], pretrained=tiny_clip_files[1],
                                proposals=str(tmp_path / "sam"), short_side=64, max_long_side=128,
                                proposal_options={"points_per_crop": 4, "points_per_batch": 16,
                                                  "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0})
    out = seg.run(parity_dir / "astronaut.png", classes=["person", "sky"])
    masks = out["proposal_masks"]
    assert masks.ndim == 3 and tuple(masks.shape[1:]) == (64, 64)
    assert out["sem_seg"].shape == (2, 512, 512) and torch.isfinite(out["sem_seg"]).all()
    with pytest.raises(ModelLoadError):
        ovss.create_segmenter("zsseg", model=tiny_clip_files[0], pretrained=tiny_clip_files[1],
                              proposals=str(tmp_path / "missing"))


def test_eval_config_overrides_protocol(zdir: Path, tiny_clip_files, tmp_path: Path) -> None:
    cfg = json.loads((zdir / "zsseg_tiny_config.json").read_text())
    cfg.update({"MODEL.CLIP_ADAPTER.MASK_THR": 0.3, "MODEL.CLIP_ADAPTER.PROMPT_LEARNER": "vild",
                "INPUT.MIN_SIZE_TEST": 256})
    (tmp_path / "eval.json").write_text(json.dumps(cfg))
    seg = ovss.create_segmenter("zsseg", model=tiny_clip_files[0], pretrained=tiny_clip_files[1],
                                checkpoint=str(zdir / "zsseg_tiny_r101c.pth"), config=str(tmp_path / "eval.json"),
                                ensemble_weight=0.6)
    assert (seg.mask_thr, seg.prompt, seg.short_side, seg.max_long_side) == (0.3, "vild", 256, 2560)
    assert seg.ensemble_weight == 0.6  # an explicit argument wins over config and protocol


def test_voc_protocols_and_separate_region_adapter(zdir: Path, tiny_clip_files, parity_dir: Path, tmp_path: Path):
    """VOC: the cross-dataset row (COCO-Stuff model, VOC's 15 base classes seen) and the 15/5 zero-shot
    configs' separate region classifier (``SEPERATE_ADAPTER``: queries classified with the predefined
    prompt, crops with the region adapter's own learned prompts)."""
    from ovss.methods.two_stage import class_strings
    from ovss.methods.zsseg import ZSSeg

    kw = dict(model=tiny_clip_files[0], pretrained=tiny_clip_files[1], short_side=64, max_long_side=128)
    seg = ZSSeg(checkpoint=zdir / "zsseg_tiny_r101c.pth", config=zdir / "zsseg_tiny_config.json", dataset="voc",
                **kw)
    names = class_strings(seg.default_vocabulary())
    assert len(names) == 20 and names[15] == "pottedplant"
    assert seg.seen_flags(names).tolist() == [True] * 15 + [False] * 5
    assert (seg.prompt, seg.mask_thr, seg.ensemble_weight, seg.region_prompt) == ("learnable", 0.5, 0.4, None)

    # a VOC 15/5 zero-shot checkpoint: the fixture's tensors plus region prompts under the official key names
    sd = torch.load(zdir / "zsseg_tiny_r101c.pth", map_location="cpu", weights_only=True)["model"]
    g = torch.Generator().manual_seed(0)
    for k in [k for k in sd if k.startswith("clip_adapter.prompt_learner.")]:
        v = sd[k] + (0.5 * torch.randn(sd[k].shape, generator=g) if k.endswith("prefix_prompt") else 0)
        sd["_region_clip_adapter." + k[len("clip_adapter."):]] = v
    ck = tmp_path / "voc15.pth"
    torch.save({"model": sd}, ck)
    cfg = json.loads((zdir / "zsseg_tiny_config.json").read_text())
    cfg.update({"MODEL.CLIP_ADAPTER.PROMPT_LEARNER": "predefined", "MODEL.CLIP_ADAPTER.SEPERATE_ADAPTER": True,
                "MODEL.CLIP_ADAPTER.REGION_CLIP_ADAPTER.PROMPT_LEARNER": "learnable",
                "MODEL.CLIP_ADAPTER.CLIP_ENSEMBLE_WEIGHT": 0.7})
    (tmp_path / "voc15.json").write_text(json.dumps(cfg))
    two = ZSSeg(checkpoint=ck, config=tmp_path / "voc15.json", dataset="voc20", **kw)
    assert (two.prompt, two.region_prompt, two.ensemble_weight) == ("single", "learnable", 0.7)
    query, region = two.text_features(["cat", "dog"]), two.text_features(["cat", "dog"], region=True)
    assert query.shape == region.shape and not torch.allclose(query, region)
    assert torch.allclose(region, two.region_prompts(two.clip, ["cat", "dog"]), atol=1e-6)
    out = two.run(parity_dir / "astronaut.png", ["person", "sky"])
    # the crops are classified with the region prompts (+ the no-object row, dropped before the softmax)
    feats = ts.clip_image_features(two.clip, out["crops"])
    feats = feats / feats.norm(dim=-1, keepdim=True)
    assert torch.allclose(out["clip_logits"][:, :2], 100.0 * feats @ region_of(two, ["person", "sky"]).t(),
                          atol=1e-4)
    torch.save({"model": {k: v for k, v in sd.items() if not k.startswith("_region")}}, ck)
    with pytest.raises(ModelLoadError, match="_region_clip_adapter"):
        ZSSeg(checkpoint=ck, config=tmp_path / "voc15.json", dataset="voc20", **kw)


def region_of(seg, names):
    return seg.text_features(names, region=True)
