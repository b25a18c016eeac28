"""The speed-ups of the CLIP engine change no numbers, and memory stays bounded.

Text side: EOT trimming and the per-template prefix KV cache equal full-context ``encode_text``;
the on-disk classifier cache returns identical embeddings and rebuilds a corrupt entry with a
warning. Image side: batched windows equal one-at-a-time windows, the tiled path equals the
full-size path, a large photo's peak memory is bounded by the tiles and the returned scores,
and every precision runs. All on the tiny random CLIP of ``../shared/parity``.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ovss
from ovss.backbones.clip import text_fingerprint
from ovss.errors import InputError
from ovss.imageio import load_image
from ovss.methods.clip_dense import resize_region, tiles
from ovss.text import (IMAGENET_TEMPLATES, cache_path, class_embeddings, encode_prompts,
                       encode_template_prompts)

WORDS = ["cat", "aeroplane", "potted plant", "tv monitor", "person", "a very long name " * 20, "dog"]
TEMPLATES = ["a photo of a {}.", "{}", "{} in the wild.", "itap of the {}.", "a bad photo of the {}.",
             "a photo of a {}.", "art of the {}"]


def _full(tiny_clip, prompts):
    with torch.no_grad():
        return tiny_clip.model.encode_text(tiny_clip.tokenizer(prompts)).float()


# ----------------------------------------------------------------------------- text side
def test_trimmed_encoding_equals_full_context(tiny_clip):
    prompts = [t.format(w) for w in WORDS for t in TEMPLATES]
    full = _full(tiny_clip, prompts)
    trimmed = encode_prompts(tiny_clip, prompts, batch_size=9)
    assert trimmed.shape == full.shape
    assert (trimmed - full).abs().max() <= 1e-5


@pytest.mark.parametrize("chunk", [4096, 5])
def test_prefix_kv_cache_equals_full_context(tiny_clip, chunk):
    full = _full(tiny_clip, [t.format(w) for w in WORDS for t in TEMPLATES]).view(len(WORDS), len(TEMPLATES), -1)
    cached = encode_template_prompts(tiny_clip, WORDS, TEMPLATES, tokens_per_chunk=chunk)
    assert cached.shape == full.shape
    assert (cached - full).abs().max() <= 1e-5
    one = encode_template_prompts(tiny_clip, ["cat"], TEMPLATES)  # one word: whole prompt is "prefix"
    assert (one[0] - full[0]).abs().max() <= 1e-5


def test_classifier_matches_fixture_and_all_80_templates(tiny_clip, parity_dir):
    ref = np.load(parity_dir / "sclip_voc21_astronaut.npz")
    seg = ovss.create_segmenter("sclip", clip=tiny_clip, dataset="voc21", use_cache=False)
    words = seg.vocabulary().query_words
    emb = class_embeddings(tiny_clip, words, IMAGENET_TEMPLATES, use_cache=False)
    assert (emb - torch.from_numpy(ref["query_features"])).abs().max() <= 1e-6


def test_cached_and_uncached_classifiers_identical(tiny_clip):
    words, templates = ["cat", "dog", "sofa"], TEMPLATES[:4]
    path = cache_path(tiny_clip, words, templates)
    assert not path.exists()
    fresh = class_embeddings(tiny_clip, words, templates, use_cache=False)
    first = class_embeddings(tiny_clip, words, templates)      # computes and writes
    assert path.is_file()
    second = class_embeddings(tiny_clip, words, templates)     # reads
    assert torch.equal(fresh, first) and torch.equal(first, second)
    assert not [p for p in path.parent.iterdir() if p.suffix == ".tmp"], "no temporary files left behind"


def test_corrupt_cache_entry_is_rebuilt_with_a_warning(tiny_clip):
    words, templates = ["tree", "road"], TEMPLATES[:3]
    good = class_embeddings(tiny_clip, words, templates)
    path = cache_path(tiny_clip, words, templates)
    for garbage in (b"not a safetensors file", path.read_bytes()[: len(path.read_bytes()) // 2]):
        path.write_bytes(garbage)
        with pytest.warns(UserWarning, match="corrupt"):
            again = class_embeddings(tiny_clip, words, templates)
        assert torch.equal(again, good)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert torch.equal(class_embeddings(tiny_clip, words, templates), good)  # rebuilt entry reads


def test_cache_key_covers_weights_templates_and_words(tiny_clip):
    base = cache_path(tiny_clip, ["cat"], ["a {}."])
    assert cache_path(tiny_clip, ["dog"], ["a {}."]) != base
    assert cache_path(tiny_clip, ["cat"], ["the {}."]) != base
    model = copy.deepcopy(tiny_clip.model)
    fp = text_fingerprint(model)
    assert fp == tiny_clip.fingerprint
    with torch.no_grad():
        model.visual.proj[0, 0] += 1.0          # image tower: the text classifier does not change
    assert text_fingerprint(model) == fp
    with torch.no_grad():
        model.token_embedding.weight[5, 3] += 1e-7  # one text value, however small
    assert text_fingerprint(model) != fp


# ----------------------------------------------------------------------------- image side
@pytest.fixture(scope="module")
def photo(parity_dir):
    rgb = load_image(parity_dir / "astronaut.png")
    return np.ascontiguousarray(rgb[40:400, 10:500])  # not square: 3 x 2 windows, the last ones moved back


@pytest.mark.parametrize("method", ["sclip", "clearclip"])
def test_batched_windows_equal_one_at_a_time(tiny_clip, photo, method):
    seg = ovss.create_segmenter(method, clip=tiny_clip, dataset="voc21", templates=TEMPLATES[:2])
    x = seg.preprocess(photo)
    text = seg.text_embeddings(seg.vocabulary())
    seg.batch_size = 1
    single = seg.window_logits(x, text)
    for bs in (4, None):  # fixed and automatic
        seg.batch_size = bs
        assert (seg.window_logits(x, text) - single).abs().max() <= 1e-5
    assert seg.window_batch(224, 224, 56) >= 1


def test_resize_region_equals_interpolate():
    torch.manual_seed(0)
    for (h, w), (oh, ow) in [((21, 31), (500, 700)), ((336, 504), (400, 600)), ((40, 30), (17, 23))]:
        src = torch.randn(3, h, w)
        full = F.interpolate(src[None], size=(oh, ow), mode="bilinear", align_corners=False)[0]
        for rows, cols in [((0, oh), (0, ow)), ((3, oh // 2), (ow // 3, ow - 1)), ((oh - 1, oh), (0, 1))]:
            part = resize_region(src, (oh, ow), rows, cols)
            assert (part - full[:, rows[0]:rows[1], cols[0]:cols[1]]).abs().max() <= 1e-5
    covered = torch.zeros(50, 70, dtype=torch.int32)
    for y1, y2, x1, x2 in tiles(50, 70, 300, halo=3):
        covered[y1:y2, x1:x2] += 1
    assert bool((covered == 1).all())


@pytest.mark.parametrize("method,kw", [("sclip", {}), ("naclip", {"pamr_steps": 3, "pamr_dilations": (1, 2)})])
def test_tiled_path_equals_full_size_path(tiny_clip, photo, method, kw):
    small = np.ascontiguousarray(photo[:150, :200])
    seg = ovss.create_segmenter(method, clip=tiny_clip, dataset="voc21", templates=TEMPLATES[:2], **kw)
    ref = seg.predict(small)
    seg.full_res_budget = 0          # always tile
    seg.tile_budget = 20_000 * 4 * 6 * 56  # ~20k pixels per tile: several tiles, PAMR halos inside
    res = seg.predict(small)
    assert (res.scores - ref.scores).abs().max() <= 1e-5
    top2 = ref.scores.topk(2, dim=0).values
    assert bool(((res.labels == ref.labels) | ((top2[0] - top2[1]) < 1e-5)).all())


def _rss_peak_kib() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def test_large_photo_memory_is_bounded(tiny_clip, photo):
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak-RSS mark
    except OSError:
        pytest.skip("needs Linux /proc/self/clear_refs to measure peak memory")
    seg = ovss.create_segmenter("sclip", clip=tiny_clip, dataset="voc21", templates=TEMPLATES[:2])
    big = np.ascontiguousarray(np.tile(photo, (6, 4, 1))[:2160, :1800])  # 3.9 Mpx
    seg.predict(photo)  # warm up (text classifier, allocator)
    q = len(seg.vocabulary().query_words)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _rss_peak_kib()
    res = seg.predict(big)
    grown_mib = (_rss_peak_kib() - before) / 1024
    out_mib = (res.scores.numel() * 4 + res.labels.numel() * 8) / 2 ** 20
    full_mib = q * big.shape[0] * big.shape[1] * 4 / 2 ** 20  # one (Q, H, W) float32 map
    assert res.scores.shape == (21, 2160, 1800)
    # the returned scores + labels, the decoded photo and the tiles; the untiled path needs
    # several (Q, H, W) maps on top (~3.5 GiB here)
    assert grown_mib < out_mib + 200, (grown_mib, out_mib, full_mib)
    assert grown_mib < out_mib + full_mib / 2


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_precisions_run(tiny_clip, photo, precision):
    ctx = pytest.warns(UserWarning, match="fp16") if precision == "fp16" else warnings.catch_warnings()
    with ctx:
        seg = ovss.create_segmenter("sclip", clip=tiny_clip, dataset="voc21", templates=TEMPLATES[:2],
                                    precision=precision)
    res = seg.predict(photo)
    ref = ovss.create_segmenter("sclip", clip=tiny_clip, dataset="voc21", templates=TEMPLATES[:2]).predict(photo)
    assert res.scores.dtype == torch.float32 and bool(torch.isfinite(res.scores).all())
    assert (res.scores - ref.scores).abs().max() <= (0 if precision == "fp32" else 0.5)
    assert res.settings["precision"] == precision


def test_bad_engine_options_are_clear_errors(tiny_clip):
    with pytest.raises(InputError, match="precision"):
        ovss.create_segmenter("sclip", clip=tiny_clip, classes=["cat"], precision="int8")
    with pytest.raises(InputError, match="batch_size"):
        ovss.create_segmenter("sclip", clip=tiny_clip, classes=["cat"], batch_size=0)
    seg = ovss.create_segmenter("sclip", clip=tiny_clip, classes=["cat"], batch_size="auto")
    assert seg.batch_size is None and seg.settings()["batch_size"] == "auto"


@pytest.mark.parametrize("shape", [(5, 32), (2, 7, 32), (2, 3, 5, 32), (0, 32)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_onednn_linear_equals_f_linear(shape, with_bias):
    """ovss.kernels.linear (oneDNN on the CPU when no gradient is recorded) computes F.linear's
    products up to float32 summation order, and leaves autograd and other dtypes to F.linear."""
    from ovss import kernels

    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g)
    w, b = torch.randn(64, 32, generator=g), torch.randn(64, generator=g) if with_bias else None
    ref = F.linear(x, w, b)
    with torch.no_grad():
        out = kernels.linear(x, w, b)
    assert out.shape == ref.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    xg = x.clone().requires_grad_(True)
    kernels.linear(xg, w, b).sum().backward()  # with autograd on: F.linear, so gradients flow
    torch.testing.assert_close(xg.grad, w.sum(0).expand_as(x))
    with torch.no_grad():
        assert kernels.linear(x.bfloat16(), w.bfloat16()).dtype == torch.bfloat16


def test_encode_image_equals_open_clip_forward(tiny_clip):
    """vit_dense.encode_image (the two-stage methods' crop embeddings: fused attention, oneDNN
    products) equals open_clip's own ``visual(images)`` up to float summation order."""
    from ovss.backbones.vit_dense import encode_image

    visual = tiny_clip.model.visual
    x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(encode_image(visual, x), visual(x), rtol=1e-5, atol=1e-5)
