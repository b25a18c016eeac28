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
"""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.clip import LoadedCLIP, load_clip
from ..backbones.vit_dense import check_dense_vit, dense_features, patch_size
from ..errors import InputError
from ..imageio import ImageInput, load_image
from ..pamr import pamr
from ..protocols import BACKGROUND_DATASETS, Protocol, get_protocol
from ..segmenter import SegmentationResult, Segmenter
from ..text import IMAGENET_TEMPLATES, class_embeddings
from ..vocabulary import BACKGROUND, ClassesInput, Vocabulary, packaged_class_file, parse_classes, read_class_file

#: CLIP's normalisation on the 0-255 scale, RGB (SegDataPreProcessor of the SCLIP family).
CLIP_MEAN = (122.771, 116.746, 104.094)
CLIP_STD = (68.501, 66.632, 70.323)

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


def normalize(rgb: np.ndarray, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD) -> torch.Tensor:
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
    idx = torch.as_tensor(query_index, device=probs.device)
    return torch.stack([probs[idx == c].amax(dim=0) for c in range(num_classes)])


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
    probs = torch.softmax(raw * logit_scale, dim=0)
    probs = merge_queries(probs, vocab.query_index, len(vocab))
    bg = vocab.background
    if area_threshold is not None and bg == 0:
        counts = torch.bincount(probs.argmax(0).reshape(-1), minlength=len(vocab))[1:].to(probs.dtype)
        keep = (counts > area_threshold * counts.sum()).to(probs.dtype)
        probs[1:] *= keep.view(-1, 1, 1)
    labels = probs.argmax(0)
    if prob_threshold > 0 and bg is not None:
        labels[probs.max(0).values < prob_threshold] = bg
    if renormalize:
        probs = probs / probs.sum(0, keepdim=True)
    return probs.float(), labels.long()


class DenseCLIPSegmenter(Segmenter):
    """Training-free dense CLIP segmentation with a method-specific last block.

    Args:
        model: open_clip model name ("ViT-B-16") or open_clip model-config JSON path.
        pretrained: open_clip pretrained tag ("openai", "laion2b_s34b_b88k", ...) or a local
            checkpoint file; None/"" for random weights.
        dataset: benchmark whose official protocol to use ("voc21", "context59", ...; see
            :data:`ovss.protocols.DATASETS`), including the method's own class file; None for
            free-form use with the method's default settings.
        device: "cpu", "cuda", "cuda:1", ...
        classes: default classes for :meth:`predict` (overrides the dataset's class file).
        background: words scoring a background class (index 0); overrides the protocol's.
        short_side, long_side, crop, stride, logit_scale, prob_threshold, area_threshold,
        pamr_steps, pamr_dilations: override the protocol's values (see
            :class:`ovss.protocols.Protocol`); ``crop=0`` runs the whole image.
        templates: prompt templates (default: the 80 OpenAI ImageNet templates).
        batch_size: sliding windows per forward pass (memory bound; results do not depend on it).
        precision: "fp32" (default, exact), "fp16"/"bf16" (autocast; faster on GPU).
        use_cache: keep class embeddings in the on-disk cache.

    Raises:
        UnknownNameError: unknown model, tag or dataset protocol.
        ModelLoadError: weights unreachable, checkpoint of another architecture, or a
            non-ViT model.
    """

    family: ClassVar[str] = "sclip_naclip"
    #: NACLIP returns scores renormalised over classes (``naclip.py`` at 0cac3a6)
    renormalize: ClassVar[bool] = False
    #: whole-image logits resized to the network input first, then to the original size
    #: (NACLIP ``naclip.py``: ``forward_feature`` returns at input size, ``predict`` resizes);
    #: SCLIP and ClearCLIP resize the patch logits to the original size directly.
    whole_image_via_input: ClassVar[bool] = False

    def __init__(self, model: str = "ViT-B-16", pretrained: str | None = "openai", dataset: str | None = None,
                 device: str | torch.device = "cpu", *, classes: ClassesInput | None = None,
                 background: Sequence[str] | str | None = None, short_side: int | None = None,
                 long_side: int | None = None, crop: int | None = None, stride: int | None = None,
                 logit_scale: float | None = None, prob_threshold: float | None = None,
                 area_threshold: float | None = None, pamr_steps: int | None = None,
                 pamr_dilations: Sequence[int] | None = None, templates: Sequence[str] | None = None,
                 batch_size: int = 8, precision: str = "fp32", use_cache: bool = True,
                 clip: LoadedCLIP | None = None) -> None:
        super().__init__(device)
        if precision not in PRECISIONS:
            raise InputError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        self.protocol: Protocol = get_protocol(self.method, dataset).with_overrides(
            short_side=short_side, long_side=long_side, crop=crop, stride=stride, logit_scale=logit_scale,
            prob_threshold=prob_threshold, area_threshold=area_threshold, pamr_steps=pamr_steps,
            pamr_dilations=tuple(pamr_dilations) if pamr_dilations is not None else None)
        p = self.protocol
        if p.crop < 0 or (p.crop > 0 and p.stride <= 0) or p.short_side <= 0:
            raise InputError(f"invalid window settings: short_side={p.short_side}, crop={p.crop}, stride={p.stride}")
        self.clip = clip if clip is not None else load_clip(model, pretrained, self.device)
        check_dense_vit(self.clip.visual, self.clip.name)
        self.templates = tuple(templates) if templates is not None else IMAGENET_TEMPLATES
        if not self.templates or any(t.count("{}") != 1 for t in self.templates):
            raise InputError("each prompt template needs exactly one '{}' where the class name goes")
        self.batch_size = batch_size
        self.precision = precision
        self.use_cache = use_cache
        self._text: dict[tuple[str, ...], torch.Tensor] = {}
        self.default_vocab: Vocabulary | None = None
        if classes is not None:
            self.default_vocab = parse_classes(classes)
        elif p.class_file is not None:
            self.default_vocab = self.dataset_vocabulary()
        self.background_words = _words(background)
        if self.default_vocab is not None:
            self.default_vocab = self._with_background(self.default_vocab, self.background_words, p.prob_threshold)

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

    # ----------------------------------------------------------------- vocabulary
    def dataset_vocabulary(self) -> Vocabulary:
        """The protocol's official class file as a vocabulary (background at 0 when the
        benchmark has one; its display name is "background")."""
        p = self.protocol
        vocab = read_class_file(packaged_class_file(p.class_family, p.class_file), p.class_sep)
        if p.dataset in BACKGROUND_DATASETS:
            vocab = Vocabulary((BACKGROUND,) + vocab.names[1:], vocab.queries, 0)
        return vocab

    @staticmethod
    def _with_background(vocab: Vocabulary, words: list[str] | None, threshold: float) -> Vocabulary:
        if words is not None or (threshold > 0 and vocab.background is None):
            return vocab.with_background(words)
        return vocab

    def vocabulary(self, classes: ClassesInput | Vocabulary | None = None,
                   background: Sequence[str] | str | None = None,
                   prob_threshold: float | None = None) -> Vocabulary:
        """Resolve the vocabulary of one call (explicit classes, else the default).

        Raises:
            InputError: no classes given and no dataset protocol, or a bad class list.
        """
        thd = self.protocol.prob_threshold if prob_threshold is None else prob_threshold
        bg = _words(background)
        if classes is None:
            if self.default_vocab is None:
                raise InputError("no classes: pass classes=[...] (or --classes), or a dataset protocol "
                                 "(dataset=\"voc21\" ...) to use its class names")
            vocab = self.default_vocab
            return self._with_background(vocab, bg, thd) if bg is not None else \
                self._with_background(vocab, None, thd)
        vocab = classes if isinstance(classes, Vocabulary) else parse_classes(classes)
        return self._with_background(vocab, bg if bg is not None else self.background_words, thd)

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
        return normalize(resize_short_side(rgb, p.short_side, p.long_side)).to(self.device)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=PRECISIONS[self.precision])

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) normalised crops -> (B, E, h/p, w/p) unit-norm float32 patch features."""
        with self._autocast():
            feats = dense_features(self.clip.visual, images, self.last_block)
        return feats.float()

    @torch.no_grad()
    def raw_logits(self, image: torch.Tensor, text: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        """Cosine logits of every query at ``out_size``.

        Args:
            image: (1, 3, h, w) normalised network input.
            text: (Q, E) unit-norm query embeddings.
            out_size: (H, W) original image size.

        Returns:
            (Q, H, W) float32: the sliding-window average (or whole-image logits) resized
            bilinearly to ``out_size``.
        """
        p = self.protocol
        _, _, h, w = image.shape
        if p.crop <= 0:
            logits = torch.einsum("behw,qe->bqhw", self.features(image), text)
            if self.whole_image_via_input:
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            return F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)[0]
        boxes = window_boxes(h, w, p.crop, p.stride)
        canvas = image.new_zeros((1, text.shape[0], h, w))
        count = image.new_zeros((1, 1, h, w))
        ch, cw = boxes[0][1] - boxes[0][0], boxes[0][3] - boxes[0][2]
        pad = self.window_padding(ch, cw)
        for i in range(0, len(boxes), self.batch_size):
            chunk = boxes[i:i + self.batch_size]
            crops = torch.cat([image[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in chunk])
            if any(pad):
                crops = F.pad(crops, pad)
            logits = torch.einsum("behw,qe->bqhw", self.features(crops), text)
            logits = F.interpolate(logits, size=crops.shape[-2:], mode="bilinear", align_corners=False)
            if any(pad):
                logits = logits[:, :, pad[2]:pad[2] + ch, pad[0]:pad[0] + cw]
            for (y1, y2, x1, x2), lg in zip(chunk, logits):
                canvas[0, :, y1:y2, x1:x2] += lg
                count[0, :, y1:y2, x1:x2] += 1
        return F.interpolate(canvas / count, size=out_size, mode="bilinear", align_corners=False)[0]

    def window_padding(self, h: int, w: int) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) zero padding of an h x w window before the network
        (``protocol.pad_crops``: centred, to a multiple of the patch size, as ClearCLIP does);
        the logits are cropped back to the window afterwards."""
        if not self.protocol.pad_crops:
            return (0, 0, 0, 0)
        return centred_padding(h, w, patch_size(self.clip.visual)[0])

    def refine(self, image: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """PAMR on (Q, H, W) logits when the protocol enables it (guide: the network input
        resized bilinearly to (H, W))."""
        p = self.protocol
        if p.pamr_steps <= 0:
            return logits
        guide = F.interpolate(image, size=logits.shape[-2:], mode="bilinear", align_corners=False)
        return pamr(guide, logits[None], p.pamr_steps, p.pamr_dilations)[0]

    # ----------------------------------------------------------------- public API
    @torch.no_grad()
    def predict(self, image: ImageInput, classes: ClassesInput | Vocabulary | None = None, *,
                background: Sequence[str] | str | None = None,
                prob_threshold: float | None = None) -> SegmentationResult:
        """Segment one image; see :meth:`ovss.segmenter.Segmenter.predict`.

        Returns:
            ``logits``: (C, H, W) class probabilities (softmax over queries, max over
            synonyms, area filter applied; NACLIP: renormalised); ``labels``: (H, W).
        """
        vocab = self.vocabulary(classes, background, prob_threshold)
        rgb = load_image(image)
        height, width = rgb.shape[:2]
        x = self.preprocess(rgb)
        text = self.text_embeddings(vocab)
        raw = self.refine(x, self.raw_logits(x, text, (height, width)))
        thd = self.protocol.prob_threshold if prob_threshold is None else prob_threshold
        scores, labels = postprocess(raw, vocab, self.protocol.logit_scale, thd,
                                     self.protocol.area_threshold, self.renormalize)
        settings = self.settings()
        settings["prob_threshold"] = thd
        settings["queries"] = [list(q) for q in vocab.queries]
        return SegmentationResult(scores, labels, list(vocab.names), vocab.background, settings)

    def settings(self) -> dict[str, Any]:
        return {"method": self.method, "paper": self.paper, "model": self.clip.name,
                "pretrained": self.clip.pretrained, "protocol": self.protocol.as_dict(),
                "templates": len(self.templates), "device": str(self.device), "precision": self.precision,
                "batch_size": self.batch_size}


def _words(value: Sequence[str] | str | None) -> list[str] | None:
    if value is None:
        return None
    words = [w.strip() for w in value.split(",")] if isinstance(value, str) else [str(w).strip() for w in value]
    words = [w for w in words if w]
    return words or None
