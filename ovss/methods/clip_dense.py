"""The dense-inference engine shared by the training-free CLIP family.

One pipeline, as in the official SCLIP-family segmentors (SCLIP ``clip_segmentor.py``,
NACLIP ``naclip.py``, ClearCLIP ``clearclip_segmentor.py``):

1. resize keep-ratio to the protocol's short side S (long side <= 2048) with OpenCV bilinear
   on uint8 (mmcv ``imrescale``), normalise with CLIP's mean/std on the 0-255 scale;
2. sliding windows (crop, stride; the last window moved back to end at the border) or the
   whole image; each window's patch features come from the method's modified last block; the
   cosine logits are resized (bilinear) to the window, summed and divided by the window count;
   the result is resized (bilinear) to the original image size (whole image: directly);
3. optional PAMR on the cosine logits;
4. softmax over all queries of ``logit_scale * logits``, max over each class's queries,
   SCLIP's area filter, ``prob_threshold`` to background, argmax.

Subclasses implement :meth:`DenseCLIPSegmenter.last_block`.

Speed and memory (same numbers): sliding windows go through the encoder in batches
(``batch_size``, automatic by default: bounded by a memory budget); identical windows are
encoded once; when the (Q, H, W) logits at the original size would pass
:attr:`DenseCLIPSegmenter.full_res_budget`, steps 2-4 run tile by tile (bilinear resize, PAMR with
a halo of ``steps * max(dilations)`` pixels, softmax, max over synonyms, area filter in two passes)
so memory is bounded by the window batch and the tile, not by the photo: only the returned
(C, H, W) scores and (H, W) labels grow with it.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import warnings
from typing import Any, ClassVar, Iterator, Literal, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.clip import LoadedCLIP, load_clip
from ..backbones.vit_dense import check_dense_vit, dense_features, patch_size
from ..constants import CLIP_MEAN_255_MMSEG, CLIP_STD_255_MMSEG
from ..errors import InputError
from ..pamr import pamr
from ..options import Count, Fraction, Pixels, Positive, PositiveInt
from ..protocols import DenseCLIPProtocol
from ..segmenter import Capabilities, Segmentation, Segmenter
from ..text import IMAGENET_TEMPLATES, class_embeddings
from ..vocabulary import Vocabulary


PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resize_short_side(rgb: np.ndarray, short_side: int, long_side: int = 2048) -> np.ndarray:
    """Resize keep-ratio so the short side is ``short_side`` unless the long side would pass
    ``long_side``, exactly as mmcv ``imrescale(img, (long_side, short_side))``: factor
    ``min(long/max(h, w), short/min(h, w))``, new size ``int(dim * f + 0.5)``, cv2 bilinear.

    Args:
        rgb: (H, W, 3) uint8.

    Returns:
        (h, w, 3) uint8.
    """
    h, w = rgb.shape[:2]
    f = min(long_side / max(h, w), short_side / min(h, w))
    size = (int(w * f + 0.5), int(h * f + 0.5))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_LINEAR)


def normalize(rgb: np.ndarray, mean: Sequence[float] = CLIP_MEAN_255_MMSEG, std: Sequence[float] = CLIP_STD_255_MMSEG) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (1, 3, H, W) float32 ``(x - mean) / std`` (mmseg SegDataPreProcessor)."""
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float()
    m = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return ((x - m) / s).unsqueeze(0)


def window_boxes(height: int, width: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """Sliding windows (y1, y2, x1, x2) as mmseg ``slide_inference``: n = max(L - crop + stride - 1,
    0) // stride + 1 per axis; the last window moved back to end at the border; windows are
    ``min(crop, side)`` long."""
    boxes = []
    nh = max(height - crop + stride - 1, 0) // stride + 1
    nw = max(width - crop + stride - 1, 0) // stride + 1
    for i in range(nh):
        for j in range(nw):
            y2, x2 = min(i * stride + crop, height), min(j * stride + crop, width)
            boxes.append((max(y2 - crop, 0), y2, max(x2 - crop, 0), x2))
    return boxes


def centred_padding(h: int, w: int, multiple: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) zero padding that brings (h, w) to multiples of ``multiple``,
    split as ClearCLIP ``compute_padsize`` does (the smaller half on the left/top)."""
    lr = (multiple - w % multiple) % multiple
    tb = (multiple - h % multiple) % multiple
    return lr // 2, lr - lr // 2, tb // 2, tb - tb // 2


def merge_queries(probs: torch.Tensor, query_index: Sequence[int], num_classes: int) -> torch.Tensor:
    """(Q, H, W) query probabilities -> (C, H, W): each class takes the max over its queries."""
    if len(query_index) == num_classes:
        return probs
    members: list[list[int]] = [[] for _ in range(num_classes)]
    for q, c in enumerate(query_index):
        members[c].append(q)
    out = []
    for m in members:
        if len(m) == 1:
            out.append(probs[m[0]])
        elif m == list(range(m[0], m[-1] + 1)):  # consecutive queries: a view, no gather
            out.append(probs[m[0]:m[-1] + 1].amax(dim=0))
        else:
            out.append(probs[m].amax(dim=0))
    return torch.stack(out)


def query_probs(raw: torch.Tensor, vocab: Vocabulary, logit_scale: float) -> torch.Tensor:
    """(Q, ...) cosine logits -> (C, ...) class probabilities: softmax over all queries of
    ``logit_scale * raw``, then the max over each class's queries (SCLIP ``postprocess_result``)."""
    probs = torch.softmax(raw * logit_scale, dim=0)
    return merge_queries(probs, vocab.query_index, len(vocab))


def area_keep(counts: torch.Tensor, area_threshold: float) -> torch.Tensor:
    """SCLIP's area filter: (C,) argmax pixel counts -> (C-1,) 1/0 factors of the non-background
    classes (kept when their count is above ``area_threshold`` of all non-background pixels)."""
    fg = counts[1:].to(torch.float32)
    return (fg > area_threshold * fg.sum()).to(torch.float32)


def postprocess(raw: torch.Tensor, vocab: Vocabulary, logit_scale: float, prob_threshold: float = 0.0,
                area_threshold: float | None = None, renormalize: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn cosine logits into class scores and labels (SCLIP ``postprocess_result``).

    Args:
        raw: (Q, H, W) cosine logits at the original image size.
        vocab: the vocabulary (Q queries in C classes; background at index 0 if any).
        logit_scale: softmax temperature.
        prob_threshold: pixels whose top score is below it become background (needs one).
        area_threshold: SCLIP: classes (not background) predicted on at most this fraction of
            the foreground pixels get score 0.
        renormalize: NACLIP: divide the returned scores by their sum over classes (after the
            labels are taken).

    Returns:
        scores (C, H, W) float32 and labels (H, W) int64.
    """
    probs = query_probs(raw, vocab, logit_scale)
    bg = vocab.background
    if area_threshold is not None and bg == 0:
        counts = torch.bincount(probs.max(0).indices.reshape(-1), minlength=len(vocab))
        probs[1:] *= area_keep(counts, area_threshold).to(probs.dtype).view(-1, 1, 1)
    top, labels = probs.max(0)  # one pass; first index on ties, as argmax
    if prob_threshold > 0 and bg is not None:
        labels[top < prob_threshold] = bg
    if renormalize:
        probs = probs / probs.sum(0, keepdim=True)
    return probs.float(), labels.long()


def source_index(in_size: int, out_size: int, start: int, stop: int,
                 device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source rows and weights of output rows ``start..stop-1`` of a bilinear resize
    ``in_size -> out_size`` (align_corners=False), as PyTorch's CPU kernel computes them
    (``area_pixel_compute_source_index``: scale = in/out in float32, ``real = scale * (d + 0.5) -
    0.5`` rounded once, as a fused multiply-add, clamped at 0).

    Returns:
        i0, i1 (N,) int64 source indices and w0, w1 (N,) float32 weights.
    """
    scale = torch.tensor(in_size, dtype=torch.float32) / out_size
    d = torch.arange(start, stop, dtype=torch.float64, device=device)
    real = (scale.double().to(device) * (d + 0.5) - 0.5).float().clamp_(min=0)
    i0 = real.long()
    lam = (real - i0).clamp_(0, 1)
    i1 = torch.where(i0 < in_size - 1, i0 + 1, i0)
    return i0, i1, 1 - lam, lam


def resize_region(src: torch.Tensor, out_size: tuple[int, int], rows: tuple[int, int],
                  cols: tuple[int, int]) -> torch.Tensor:
    """Rows ``rows[0]:rows[1]`` and columns ``cols[0]:cols[1]`` of
    ``F.interpolate(src[None], out_size, mode="bilinear", align_corners=False)[0]``, computed
    without the full-size output (equal to it up to float rounding, <= 1e-6 relative).

    Args:
        src: (K, h, w) float map.
        out_size: (H, W) full output size.

    Returns:
        (K, rows[1] - rows[0], cols[1] - cols[0]).
    """
    (h, w), (oh, ow) = src.shape[-2:], out_size
    i0, i1, wy0, wy1 = source_index(h, oh, rows[0], rows[1], src.device)
    j0, j1, wx0, wx1 = source_index(w, ow, cols[0], cols[1], src.device)
    top, bottom = src[:, i0], src[:, i1]
    out = (top[:, :, j0] * wx0 + top[:, :, j1] * wx1) * wy0[:, None]
    out += (bottom[:, :, j0] * wx0 + bottom[:, :, j1] * wx1) * wy1[:, None]
    return out


def tiles(height: int, width: int, budget_px: int, halo: int = 0) -> Iterator[tuple[int, int, int, int]]:
    """Tiles (y1, y2, x1, x2) covering an image, each with its halo at most ``budget_px``
    pixels: full-width row strips when ``halo`` is 0, else squares of side ``t`` with
    ``(t + 2 halo)^2 <= budget_px`` (at least 64)."""
    if halo <= 0:
        th, tw = max(1, budget_px // max(width, 1)), width
    else:
        t = max(64, math.isqrt(max(budget_px, 1)) - 2 * halo)
        th = tw = t
    for y in range(0, height, th):
        for x in range(0, width, tw):
            yield y, min(y + th, height), x, min(x + tw, width)


def memory_budget(device: torch.device) -> int:
    """Bytes the window batch may use: half the free GPU memory on CUDA; on CPU a quarter of
    the available RAM, at most 2 GiB (``OVSS_MEMORY_BUDGET`` in bytes overrides both)."""
    env = os.environ.get("OVSS_MEMORY_BUDGET")
    if env:
        return int(float(env))
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.5)
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        avail = 8 << 30
    return int(min(avail // 4, 2 << 30))


def check_precision(precision: str, device: torch.device) -> None:
    """Warn when a reduced precision is slow on this device (bf16 on a CPU without native
    bf16 instructions, fp16 on CPU): results are still computed."""
    if device.type != "cpu" or precision == "fp32":
        return
    if precision == "fp16":
        warnings.warn("precision='fp16' on CPU is emulated and slower than fp32; use 'bf16' or 'fp32'",
                      stacklevel=3)
    elif not _cpu_has_bf16():
        warnings.warn("this CPU has no native bf16 instructions (AVX512-BF16 / AMX): precision='bf16' "
                      "will be slower than fp32", stacklevel=3)


def _cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def long_side_option(long_side: int | None, max_long_side: int | None) -> int | None:
    """``long_side`` and its alias ``max_long_side`` (the two-stage methods' and FC-CLIP's name)
    as one value.

    Raises:
        InputError: both given, with different values.
    """
    if long_side is not None and max_long_side is not None and long_side != max_long_side:
        raise InputError(f"long_side={long_side} and max_long_side={max_long_side} name the same "
                         "setting: give one of them")
    return long_side if long_side is not None else max_long_side


class DenseCLIPSegmenter(Segmenter):
    """Training-free dense CLIP segmentation with a method-specific last block.

    Args:
        model: open_clip model name ("ViT-B-16") or open_clip model-config JSON path.
        pretrained: open_clip pretrained tag ("openai", "laion2b_s34b_b88k", ...) or a local
            checkpoint file; None/"" for random weights.
        crop, stride, logit_scale, prob_threshold, area_threshold, pamr_steps, pamr_dilations:
            override the protocol's values (see :class:`ovss.protocols.DenseCLIPProtocol`);
            ``crop=0`` runs the whole image; ``stride`` may not exceed ``crop``.
        long_side: the old name of ``max_long_side`` (the resized image's longer side is at most
            this many pixels).
        templates: prompt templates (default: the 80 OpenAI ImageNet templates).
        batch_size: sliding windows per forward pass; None or "auto" (default): as many as
            :func:`memory_budget` allows (at most 32). Results do not depend on it.
        use_cache: keep class embeddings in the on-disk cache.
        clip: an already loaded CLIP (Python only; skips ``model`` / ``pretrained``).
        **common: dataset, device, short_side, max_long_side, precision ("fp32" exact; "bf16" on
            CPUs with native bf16 and GPUs, "fp16" on GPUs: the image encoder runs on a copy of
            CLIP's visual tower converted once, :meth:`compute_visual`; logits and post-processing
            stay float32), classes, background: see :class:`ovss.segmenter.Segmenter`.

    Raises:
        UnknownNameError: unknown model, tag or dataset protocol.
        ModelLoadError: weights unreachable, checkpoint of another architecture, or a
            non-ViT model.
        InputError: a bad option value (stride larger than crop, ...).
    """

    capabilities = Capabilities(background=True, prob_threshold=True, decoder="opencv", tiling=True,
                                score_kind="probability", precisions=tuple(PRECISIONS))
    #: NACLIP returns scores renormalised over classes (``naclip.py`` at 0cac3a6)
    renormalize: ClassVar[bool] = False
    #: whole-image logits resized to the network input first, then to the original size
    #: (NACLIP ``naclip.py``: ``forward_feature`` returns at input size, ``predict`` resizes);
    #: SCLIP and ClearCLIP resize the patch logits to the original size directly.
    whole_image_via_input: ClassVar[bool] = False
    #: above this many bytes for the (Q, H, W) float32 logits at the original size, predict
    #: resizes, refines and post-processes tile by tile (memory bounded; same numbers up to
    #: float rounding)
    full_res_budget: ClassVar[int] = 256 << 20
    #: bytes of float32 work memory per tile in the tiled path
    tile_budget: ClassVar[int] = 64 << 20
    #: most windows per forward pass with the automatic batch size
    max_auto_batch: ClassVar[int] = 32

    def __init__(self, model: str = "ViT-B-16", pretrained: str | None = "openai", *,
                 long_side: Pixels | None = None, crop: Count | None = None, stride: PositiveInt | None = None,
                 logit_scale: Positive | None = None, prob_threshold: Fraction | None = None,
                 area_threshold: Fraction | None = None, pamr_steps: Count | None = None,
                 pamr_dilations: Sequence[PositiveInt] | None = None, templates: Sequence[str] | None = None,
                 batch_size: PositiveInt | Literal["auto"] | None = None, use_cache: bool = True,
                 clip: LoadedCLIP | None = None, **common: Any) -> None:
        common["max_long_side"] = long_side_option(long_side, common.get("max_long_side"))
        super().__init__(**common)
        if batch_size == "auto":
            batch_size = None
        if batch_size is not None and (not isinstance(batch_size, int) or isinstance(batch_size, bool)
                                       or batch_size < 1):
            raise InputError(f"batch_size must be a positive integer or 'auto', got {batch_size!r}")
        self.protocol: DenseCLIPProtocol = self.protocol.with_overrides(
            crop=crop, stride=stride, logit_scale=logit_scale, prob_threshold=prob_threshold,
            area_threshold=area_threshold, pamr_steps=pamr_steps,
            pamr_dilations=tuple(pamr_dilations) if pamr_dilations is not None else None)
        p = self.protocol
        if p.crop < 0 or (p.crop > 0 and not 0 < p.stride <= p.crop) or p.short_side <= 0:
            raise InputError(f"invalid window settings: short_side={p.short_side}, crop={p.crop}, stride={p.stride} "
                             "(need crop >= 0 and 0 < stride <= crop: a stride beyond the crop leaves pixels "
                             "no window covers)")
        if not math.isfinite(p.logit_scale) or p.logit_scale <= 0:
            raise InputError(f"logit_scale must be a finite number > 0, got {p.logit_scale}")
        self.clip = clip if clip is not None else load_clip(model, pretrained, self.device)
        check_precision(self.precision, self.device)
        check_dense_vit(self.clip.visual, self.clip.name)
        patch = max(patch_size(self.clip.visual))
        if 0 < p.crop < patch and not p.pad_crops:
            raise InputError(f"crop {p.crop} is smaller than a patch of {self.clip.name} ({patch} px): use crop >= "
                             f"{patch} or crop=0 (whole image)")
        self.templates = tuple(templates) if templates is not None else IMAGENET_TEMPLATES
        if not self.templates or any(t.count("{}") != 1 for t in self.templates):
            raise InputError("each prompt template needs exactly one '{}' where the class name goes")
        self.batch_size: int | None = batch_size
        self.use_cache = use_cache
        self._text: dict[tuple[str, ...], torch.Tensor] = {}

    # ----------------------------------------------------------------- method hook
    def last_block(self, block: nn.Module, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """The method's replacement of CLIP's last block.

        Args:
            block: the last ``ResidualAttentionBlock`` (ln_1, attn, ln_2, mlp).
            x: (B, 1+N, D) tokens entering it, CLS first.
            grid: (h, w) patch grid, N = h*w.

        Returns:
            (B, 1+N, D) tokens that go on to ``ln_post`` and ``proj``.
        """
        raise NotImplementedError

    # ----------------------------------------------------------------- text side
    def text_embeddings(self, vocab: Vocabulary) -> torch.Tensor:
        """(Q, E) unit-norm query embeddings, cached in memory and on disk."""
        key = tuple(vocab.query_words)
        if key not in self._text:
            self._text[key] = class_embeddings(self.clip, vocab.query_words, self.templates, self.use_cache)
        return self._text[key]

    # ----------------------------------------------------------------- image side
    def preprocess(self, rgb: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 RGB -> (1, 3, h, w) float32 network input (resize + normalise)."""
        p = self.protocol
        return normalize(resize_short_side(rgb, p.short_side, p.max_long_side)).to(self.device)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast to ``precision`` (for subclasses whose features run other networks; note
        that autocast turns off ``nn.MultiheadAttention``'s fused path, which on CPU makes
        its input projection several times slower: prefer :meth:`compute_visual`)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=PRECISIONS[self.precision])

    @property
    def compute_dtype(self) -> torch.dtype:
        """dtype of the image encoder's arithmetic (``precision``)."""
        return PRECISIONS[self.precision]

    def compute_visual(self) -> nn.Module:
        """CLIP's image encoder in the working precision: the model's own for fp32; for
        bf16/fp16 a copy converted once and kept (weights cast once instead of at every layer
        call as autocast does; ``nn.MultiheadAttention`` also keeps its fused fast path, which
        autocast turns off)."""
        if self.precision == "fp32":
            return self.clip.visual
        if getattr(self, "_lowp_visual", None) is None:
            self._lowp_visual = copy.deepcopy(self.clip.visual).to(self.compute_dtype).eval()
        return self._lowp_visual

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) normalised crops -> (B, E, h/p, w/p) unit-norm float32 patch features
        (computed in ``precision``)."""
        feats = dense_features(self.compute_visual(), images.to(self.compute_dtype), self.last_block)
        return feats.float()

    def window_batch(self, height: int, width: int, queries: int = 64) -> int:
        """Windows per forward pass for (height, width) crops: ``batch_size`` when set, else
        as many as :func:`memory_budget` allows (activation estimate of one crop: tokens x
        width x 16 + heads x tokens^2 x 4 attention maps + the upsampled logits), at most
        :attr:`max_auto_batch`."""
        if self.batch_size is not None:
            return self.batch_size
        visual = self.clip.visual
        ph, pw = patch_size(visual)
        tokens = 1 + (height // ph) * (width // pw)
        blk = visual.transformer.resblocks[-1]
        dim, heads = blk.attn.embed_dim, blk.attn.num_heads
        per_window = 4 * (tokens * dim * 16 + heads * tokens * tokens * 4 + 2 * queries * height * width)
        return int(max(1, min(self.max_auto_batch, memory_budget(self.device) // max(per_window, 1))))

    @torch.no_grad()
    def window_logits(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Cosine logits of every query before the final resize to the original size.

        Sliding windows (``crop > 0``): windows of ``window_boxes`` go through :meth:`features`
        ``window_batch`` at a time (identical windows once), their logits are resized bilinearly
        to the window, summed and divided by the window count (mmseg ``slide_inference``).
        Whole image: the patch-grid logits (resized to the network input first when
        ``whole_image_via_input``).

        Args:
            image: (1, 3, h, w) normalised network input.
            text: (Q, E) unit-norm query embeddings.

        Returns:
            (Q, h, w) float32 (sliding windows / via input) or (Q, h/p, w/p) (whole image).
        """
        return self.window_logits_batch([image], text)[0]

    @torch.no_grad()
    def window_logits_batch(self, images: Sequence[torch.Tensor], text: torch.Tensor) -> list[torch.Tensor]:
        """:meth:`window_logits` of several network inputs, the sliding windows of all of them
        through the encoder together (``window_batch`` windows of one size per forward pass; each
        image's windows are summed in its own order, as one image alone)."""
        p = self.protocol
        if p.crop <= 0:
            out = []
            for image in images:
                _, _, h, w = image.shape
                pad = self.thin_padding(h, w)
                if any(pad):  # thinner than a patch (the official code raises): pad, then crop the logits back
                    logits = torch.einsum("behw,qe->bqhw", self.features(F.pad(image, pad)), text)
                    logits = F.interpolate(logits, size=(h + pad[2] + pad[3], w + pad[0] + pad[1]),
                                           mode="bilinear", align_corners=False)
                    out.append(logits[0, :, pad[2]:pad[2] + h, pad[0]:pad[0] + w])
                    continue
                logits = torch.einsum("behw,qe->bqhw", self.features(image), text)
                if self.whole_image_via_input:
                    logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
                out.append(logits[0])
            return out
        canvases, counts = [], []
        jobs: dict[tuple[int, int], list[tuple[int, tuple[int, int, int, int], int]]] = {}  # by window size
        for k, image in enumerate(images):
            _, _, h, w = image.shape
            canvases.append(image.new_zeros((text.shape[0], h, w)))
            counts.append(image.new_zeros((1, h, w)))
            boxes = window_boxes(h, w, p.crop, p.stride)
            for box in dict.fromkeys(boxes):  # a box listed twice is encoded once, counted twice
                jobs.setdefault((box[1] - box[0], box[3] - box[2]), []).append((k, box, boxes.count(box)))
        for (ch, cw), todo in jobs.items():
            pad = self.window_padding(ch, cw)
            n = self.window_batch(ch + pad[2] + pad[3], cw + pad[0] + pad[1], text.shape[0])
            for i in range(0, len(todo), n):
                chunk = todo[i:i + n]
                crops = torch.cat([images[k][:, :, y1:y2, x1:x2] for k, (y1, y2, x1, x2), _ in chunk])
                if any(pad):
                    crops = F.pad(crops, pad)
                logits = torch.einsum("behw,qe->bqhw", self.features(crops), text)
                logits = F.interpolate(logits, size=crops.shape[-2:], mode="bilinear", align_corners=False)
                if any(pad):
                    logits = logits[:, :, pad[2]:pad[2] + ch, pad[0]:pad[0] + cw]
                for (k, (y1, y2, x1, x2), times), lg in zip(chunk, logits):
                    for _ in range(times):
                        canvases[k][:, y1:y2, x1:x2] += lg
                        counts[k][:, y1:y2, x1:x2] += 1
        return [canvas / count for canvas, count in zip(canvases, counts)]

    @torch.no_grad()
    def raw_logits(self, image: torch.Tensor, text: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        """Cosine logits of every query at ``out_size``.

        Args:
            image: (1, 3, h, w) normalised network input.
            text: (Q, E) unit-norm query embeddings.
            out_size: (H, W) original image size.

        Returns:
            (Q, H, W) float32: :meth:`window_logits` resized bilinearly to ``out_size``.
        """
        low = self.window_logits(image, text)
        return F.interpolate(low[None], size=out_size, mode="bilinear", align_corners=False)[0]

    def window_padding(self, h: int, w: int) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) zero padding of an h x w window before the network
        (``protocol.pad_crops``: centred, to a multiple of the patch size, as ClearCLIP does);
        the logits are cropped back to the window afterwards. Without ``pad_crops`` a window (or a
        whole image) thinner than one patch, where the official code raises (a 1 x 300 photo resized
        to 7 x 2048), is padded the same way up to one patch; every other window is left as it is."""
        if self.protocol.pad_crops:
            return centred_padding(h, w, patch_size(self.clip.visual)[0])
        return self.thin_padding(h, w)

    def thin_padding(self, h: int, w: int) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) centred zero padding that brings a side shorter than one patch
        up to one patch; (0, 0, 0, 0) when both sides have at least a patch."""
        patch = patch_size(self.clip.visual)[0]
        if h >= patch and w >= patch:
            return (0, 0, 0, 0)
        return centred_padding(min(h, patch), min(w, patch), patch)

    def refine(self, image: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """PAMR on (Q, H, W) logits when the protocol enables it (guide: the network input
        resized bilinearly to (H, W))."""
        p = self.protocol
        if p.pamr_steps <= 0:
            return logits
        guide = F.interpolate(image, size=logits.shape[-2:], mode="bilinear", align_corners=False)
        return pamr(guide, logits[None], p.pamr_steps, p.pamr_dilations)[0]

    # ----------------------------------------------------------------- the hook
    @torch.no_grad()
    def segment(self, rgb: np.ndarray, vocab: Vocabulary, *, prob_threshold: float | None = None,
                image_id: str | None = None, trace: bool = False) -> Segmentation:
        """Steps 1-4 of the module docstring on one image.

        Returns:
            ``scores``: (C, H, W) class probabilities (softmax over queries, max over synonyms,
            area filter applied; NACLIP: renormalised); ``labels``: (H, W) after the threshold.
            ``trace``: ``input`` (1, 3, h, w), ``text`` (Q, E), ``raw_logits`` (Q, H, W) after
            PAMR (not on the tiled path).
        """
        height, width = rgb.shape[:2]
        x = self.preprocess(rgb)
        text = self.text_embeddings(vocab)
        thd = self.effective_threshold(prob_threshold)
        out: dict[str, Any] = {"input": x, "text": text} if trace else {}
        if self._tiles(text, height, width):
            scores, labels = self._tiled(x, text, (height, width), vocab, thd)
        else:
            raw = self.refine(x, self.raw_logits(x, text, (height, width)))
            if trace:
                out["raw_logits"] = raw
            scores, labels = postprocess(raw, vocab, self.protocol.logit_scale, thd,
                                         self.protocol.area_threshold, self.renormalize)
        return Segmentation(scores, labels, settings={"prob_threshold": thd}, trace=out)

    #: images per :meth:`segment_batch` in ``predict_batch``: their sliding windows share forward passes
    batch_images: ClassVar[int] = 8

    @torch.no_grad()
    def segment_batch(self, rgbs: Sequence[np.ndarray], vocab: Vocabulary, *, prob_threshold: float | None = None,
                      image_ids: Sequence[str | None] | None = None) -> list[Segmentation]:
        """:meth:`segment` of several images, their sliding windows through the encoder together
        (:meth:`window_logits_batch`); photos large enough for the tiled path go one by one."""
        text = self.text_embeddings(vocab)
        thd = self.effective_threshold(prob_threshold)
        p = self.protocol
        out: list[Segmentation | None] = [None] * len(rgbs)
        batches: list[list[tuple[int, torch.Tensor]]] = [[]]
        held = 0  # bytes of the window-logit canvases of the current batch (bounded like one image's logits)
        for i, rgb in enumerate(rgbs):
            if self._tiles(text, *rgb.shape[:2]):
                out[i] = self.segment(rgb, vocab, prob_threshold=prob_threshold)
                continue
            x = self.preprocess(rgb)
            size = 4 * text.shape[0] * x.shape[-2] * x.shape[-1]
            if batches[-1] and held + size > self.full_res_budget:
                batches.append([])
                held = 0
            batches[-1].append((i, x))
            held += size
        for batch in batches:
            lows = self.window_logits_batch([x for _, x in batch], text)
            for (i, x), low in zip(batch, lows):
                raw = F.interpolate(low[None], size=rgbs[i].shape[:2], mode="bilinear", align_corners=False)[0]
                scores, labels = postprocess(self.refine(x, raw), vocab, p.logit_scale, thd, p.area_threshold,
                                             self.renormalize)
                out[i] = Segmentation(scores, labels, settings={"prob_threshold": thd})
        return [s for s in out if s is not None]

    def _tiles(self, text: torch.Tensor, height: int, width: int) -> bool:
        """Whether an image of this size takes the tiled path (its (Q, H, W) logits pass
        :attr:`full_res_budget`)."""
        return 4 * text.shape[0] * height * width > self.full_res_budget and self.capabilities.tiling

    def _tiled(self, image: torch.Tensor, text: torch.Tensor, out_size: tuple[int, int], vocab: Vocabulary,
               prob_threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``raw_logits`` + ``refine`` + ``postprocess`` tile by tile: work memory
        :attr:`tile_budget` per tile whatever the image size (same numbers up to float rounding).
        PAMR tiles carry a halo of ``steps * max(dilations)`` pixels, beyond which a pixel's
        refined value cannot depend on the tile border; PAMR's guide (3 channels) is resized
        at full size."""
        p = self.protocol
        height, width = out_size
        low = self.window_logits(image, text)
        q, c = low.shape[0], len(vocab)
        halo = p.pamr_steps * max(p.pamr_dilations) if p.pamr_steps > 0 else 0
        per_px = 4 * (6 * q + (60 * len(p.pamr_dilations) + 3 if halo else 0))
        scores = torch.empty((c, height, width), dtype=torch.float32, device=low.device)
        # PAMR's colour affinities divide by a local std that can be ~0: the guide must be
        # bitwise the full-size one (3 channels at full size, a seventh of the returned scores)
        guide = F.interpolate(image, size=out_size, mode="bilinear", align_corners=False) if halo else None
        counts = torch.zeros(c, dtype=torch.long, device=low.device)
        for y1, y2, x1, x2 in tiles(height, width, max(1, self.tile_budget // per_px), halo):
            r1, r2, c1, c2 = max(y1 - halo, 0), min(y2 + halo, height), max(x1 - halo, 0), min(x2 + halo, width)
            raw = resize_region(low, out_size, (r1, r2), (c1, c2))
            if guide is not None:
                raw = pamr(guide[:, :, r1:r2, c1:c2], raw[None], p.pamr_steps, p.pamr_dilations)[0]
                raw = raw[:, y1 - r1:y2 - r1, x1 - c1:x2 - c1]
            probs = query_probs(raw, vocab, p.logit_scale)
            scores[:, y1:y2, x1:x2] = probs
            counts += torch.bincount(probs.max(0).indices.reshape(-1), minlength=c)
        keep = None
        if p.area_threshold is not None and vocab.background == 0:
            keep = area_keep(counts, p.area_threshold).view(-1, 1, 1)
        labels = torch.empty((height, width), dtype=torch.long, device=low.device)
        rows = max(1, self.tile_budget // (4 * c * width))
        for y in range(0, height, rows):
            s = scores[:, y:y + rows]
            if keep is not None:
                s[1:] *= keep
            top, lab = s.max(0)
            if prob_threshold > 0 and vocab.background is not None:
                lab[top < prob_threshold] = vocab.background
            labels[y:y + rows] = lab
            if self.renormalize:
                s /= s.sum(0, keepdim=True)
        return scores, labels

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "model": self.clip.name, "pretrained": self.clip.pretrained,
                "templates": len(self.templates),
                "batch_size": self.batch_size if self.batch_size is not None else "auto"}
