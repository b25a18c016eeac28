"""Exactness of the training-free CLIP family against the official implementations' outputs.

``../shared/parity`` holds, for each method, the official code's outputs on a tiny random CLIP
and the astronaut photo with the VOC21 protocol (see its README). The second half checks the
same arithmetic on other photos, sizes and the Context59 protocol against an independent,
deliberately literal re-implementation of the official loops written here.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ovss
from ovss.imageio import load_image

FIXTURES = {  # fixture name -> (method, extra options)
    "sclip": ("sclip", {}),
    "clearclip": ("clearclip", {}),
    "maskclip": ("maskclip", {}),
    "vanilla": ("vanilla", {"residual": False}),
    "vanilla_full": ("vanilla", {}),
    "naclip": ("naclip", {}),
}


@pytest.fixture(scope="module")
def manifest(parity_dir):
    return {f["file"]: f for f in json.loads((parity_dir / "manifest.json").read_text())["files"]}


@pytest.fixture(scope="module")
def segmenters(tiny_clip):
    cache = {}

    def get(method, **kw):
        key = (method, tuple(sorted(kw.items())))
        if key not in cache:
            cache[key] = ovss.create_segmenter(method, clip=tiny_clip, **kw)
        return cache[key]

    return get


@pytest.mark.parametrize("name", list(FIXTURES))
def test_matches_official_voc21(name, parity_dir, manifest, segmenters):
    method, extra = FIXTURES[name]
    ref = np.load(parity_dir / f"{name}_voc21_astronaut.npz")
    meta = manifest[f"{name}_voc21_astronaut.npz"]
    seg = segmenters(method, dataset="voc21", **extra)
    rgb = load_image(parity_dir / "astronaut.png")
    coords = torch.from_numpy(ref["coords"]).long()
    r, c = coords[:, 0], coords[:, 1]

    x = seg.preprocess(rgb)
    assert torch.equal(x, torch.from_numpy(ref["input"])), "network input must be bitwise equal"

    vocab = seg.vocabulary()
    assert vocab.query_words == meta["query_words"]
    assert vocab.query_index == ref["query_idx"].tolist()
    text = seg.text_embeddings(vocab)
    assert (text - torch.from_numpy(ref["query_features"])).abs().max() <= 1e-5

    raw = seg.raw_logits(x, text, tuple(ref["ori_shape"].tolist()))
    if "pre_pamr_logits" in ref:
        assert (raw[:, r, c] - torch.from_numpy(ref["pre_pamr_logits"])).abs().max() <= 1e-4
    raw = seg.refine(x, raw)
    assert (raw[:, r, c] - torch.from_numpy(ref["raw_logits"])).abs().max() <= 1e-4

    res = seg.predict(parity_dir / "astronaut.png")
    assert res.scores.dtype == torch.float32 and res.labels.dtype == torch.int64
    assert res.scores.shape == (21, 512, 512) and res.labels.shape == (512, 512)
    assert (res.scores[:, r, c] - torch.from_numpy(ref["seg_logits"])).abs().max() <= 1e-4

    # labels: identical except at near ties (top-2 margin or distance to prob_thd below 1e-5)
    pred = torch.from_numpy(ref["pred"].astype(np.int64))
    diff = res.labels != pred
    diag = meta["diagnostics"]
    allowed = diag["pixels_top2_margin_below_1e-05"] + diag["pixels_max_prob_within_1e-05_of_prob_thd"]
    assert int(diff.sum()) <= allowed
    if diff.any():
        probs = res.scores if not seg.renormalize else None
        if probs is not None:
            top2 = probs.topk(2, dim=0).values
            near = ((top2[0] - top2[1]) < 1e-5) | ((top2[0] - seg.protocol.prob_threshold).abs() < 1e-5)
            assert bool(near[diff].all()), "label mismatches must be near ties"


# ---------------------------------------------------------------------------------------------
# An independent, literal re-implementation of the official pipelines (OpenAI (T, B, D) layout,
# one window at a time), for images and protocols the fixtures do not cover.

def _official_pos(visual, h, w):
    pos = visual.positional_embedding
    n = pos.shape[0] - 1
    g = int(math.sqrt(n))
    if h * w == n and h == w:
        return pos[None]
    patch = pos[1:].reshape(1, g, g, -1).permute(0, 3, 1, 2)
    patch = F.interpolate(patch, scale_factor=((h + 0.1) / g, (w + 0.1) / g), mode="bicubic")
    return torch.cat([pos[:1][None], patch.permute(0, 2, 3, 1).reshape(1, h * w, -1)], dim=1)


def _official_tokens(visual, img, method, std=5.0):
    p = visual.conv1.kernel_size[0]
    h, w = img.shape[-2] // p, img.shape[-1] // p
    x = visual.conv1(img).reshape(1, visual.conv1.out_channels, -1).permute(0, 2, 1)
    x = torch.cat([visual.class_embedding[None, None], x], dim=1)
    x = x + _official_pos(visual, h, w)
    x = visual.ln_pre(x)
    for blk in visual.transformer.resblocks[:-1]:
        x = blk(x)
    blk = visual.transformer.resblocks[-1]
    x = x.permute(1, 0, 2)  # (T, B, D) as in OpenAI CLIP
    y = blk.ln_1(x)
    attn = blk.attn
    t, b, d = y.shape
    nh = attn.num_heads
    q, k, v = F.linear(y, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (z.contiguous().view(-1, b * nh, d // nh).transpose(0, 1) for z in (q, k, v))
    s = (d // nh) ** -0.5
    if method == "sclip":
        a = F.softmax(torch.bmm(q, q.transpose(1, 2)) * s, -1) + F.softmax(torch.bmm(k, k.transpose(1, 2)) * s, -1)
    elif method == "clearclip":
        a = F.softmax(torch.bmm(q, q.transpose(1, 2)) * s, -1)
    elif method == "naclip":
        ii, jj = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        pts = np.stack([ii.ravel(), jj.ravel()], 1)
        g = np.exp(-((pts[:, None] - pts[None]) ** 2).sum(-1) / (2 * std ** 2))
        omega = torch.zeros(t, t)
        omega[1:, 1:] = torch.from_numpy(g).float()
        a = F.softmax(torch.bmm(k, k.transpose(1, 2)) * s + omega, -1)
    out = attn.out_proj(torch.bmm(a, v).transpose(0, 1).contiguous().view(-1, b, d))
    if method == "sclip":
        x = x + out
        x = x + blk.mlp(blk.ln_2(x))
    else:
        x = out
    return visual.ln_post(x.permute(1, 0, 2)) @ visual.proj, (h, w)


def _official_forward(seg, img, text, out_size, method):
    visual = seg.clip.visual
    p = seg.protocol

    def feature(crop, size):
        feats, (h, w) = _official_tokens(visual, crop, method)
        feats = feats[:, 1:]
        feats = feats / feats.norm(dim=-1, keepdim=True)
        logits = (feats @ text.T).permute(0, 2, 1).reshape(1, -1, h, w)
        return F.interpolate(logits, size=size, mode="bilinear")

    _, _, hh, ww = img.shape
    if p.crop == 0:
        if method == "naclip":
            return F.interpolate(feature(img, (hh, ww)), size=out_size, mode="bilinear")[0]
        return feature(img, out_size)[0]
    preds = img.new_zeros((1, text.shape[0], hh, ww))
    count = img.new_zeros((1, 1, hh, ww))
    nh = max(hh - p.crop + p.stride - 1, 0) // p.stride + 1
    nw = max(ww - p.crop + p.stride - 1, 0) // p.stride + 1
    for i in range(nh):
        for j in range(nw):
            y2, x2 = min(i * p.stride + p.crop, hh), min(j * p.stride + p.crop, ww)
            y1, x1 = max(y2 - p.crop, 0), max(x2 - p.crop, 0)
            crop = img[:, :, y1:y2, x1:x2]
            ch, cw = crop.shape[-2:]
            if method == "clearclip" and (ch % 16 or cw % 16):
                lr, tb = (16 - cw % 16) % 16, (16 - ch % 16) % 16
                pad = (lr // 2, lr - lr // 2, tb // 2, tb - tb // 2)
                logit = feature(F.pad(crop, pad), (ch + tb, cw + lr))[:, :, pad[2]:pad[2] + ch, pad[0]:pad[0] + cw]
            else:
                logit = feature(crop, (ch, cw))
            preds += F.pad(logit, (x1, ww - x2, y1, hh - y2))
            count[:, :, y1:y2, x1:x2] += 1
    return F.interpolate(preds / count, size=out_size, mode="bilinear")[0]


@pytest.mark.parametrize("method,dataset,image,size,step", [
    ("sclip", "context59", "chelsea", None, 1),          # 300x451: non-square, several windows
    ("clearclip", "context59", "coffee", 330, 2),        # short side not a multiple of 16: padded crops
    ("naclip", "voc21", "rocket", None, 2),               # whole image, non-square grid, PAMR
    ("sclip", "voc21", "camera", 250, 2),                 # grey image, area filter with synonyms
])
def test_other_images_and_protocols(method, dataset, image, size, step, segmenters):
    skimage_data = pytest.importorskip("skimage.data")
    rgb = np.ascontiguousarray(getattr(skimage_data, image)()[::step, ::step])
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[:, :, None], 3, 2)
    kw = {"short_side": size} if size else {}
    seg = segmenters(method, dataset=dataset, **kw)
    vocab = seg.vocabulary()
    text = seg.text_embeddings(vocab)
    x = seg.preprocess(rgb)
    out_size = rgb.shape[:2]
    with torch.no_grad():
        ref = _official_forward(seg, x, text, out_size, method)
        ours = seg.raw_logits(x, text, out_size)
    assert (ours - ref).abs().max() <= 1e-4
    res = seg.predict(rgb)
    assert res.scores.shape == (len(vocab), *out_size)
    assert res.labels.shape == out_size
