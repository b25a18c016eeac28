"""CAT-Seg (Cho et al., CVPR 2024, "CAT-Seg: Cost Aggregation for Open-Vocabulary Semantic
Segmentation"), exact to the official code (cvlab-kaist/CAT-Seg @ 6d3a188; files cited by name and
line: ``cat_seg_model.py``, ``cat_seg_predictor.py``, ``model.py``, ``eval.sh``, ``configs/*.yaml``).

Per image (``CATSeg.inference_sliding_window``, the path of every official evaluation): detectron2's
test resize (short side 640, Pillow bilinear), five views (the image squashed to 640 x 640 and cut
into four 384-pixel crops at stride 256, plus the whole image squashed to 384 x 384), each
normalised with CLIP's mean/std; one prompt per class ("A photo of a {} in the scene") through the
fine-tuned CLIP text tower; the cost volume between the dense CLIP image embeddings and the class
embeddings, aggregated spatially (Swin blocks) and across classes (linear attention), upsampled
with CLIP's intermediate features as guidance (:mod:`ovss.models.cat_seg`); sigmoid probabilities
of the crops are averaged where they overlap and with the whole-image view, then resized to the
image. Scores are independent per class (no softmax).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..backbones.clip import LoadedCLIP, load_clip, text_fingerprint
from ..errors import InputError, ModelLoadError, UnknownNameError, did_you_mean
from ..imageio import ImageInput, d2_resize, read_image_d2
from ..importers.cat_seg import (CLIP_VARIANTS, CATSegSettings, build_catseg, clip_shape, clip_variant,
                                 read_checkpoint, resolve_config)
from ..models.cat_seg import (CATSegNet, merge_sliding_window, postprocess, sliding_window_scores,
                              sliding_window_views)
from ..segmenter import SegmentationResult, Segmenter, check_test_size
from ..text import class_embeddings
from ..vocabulary import ClassesInput, Vocabulary, packaged_class_file, parse_classes

#: The prompt of ``PROMPT_ENSEMBLE_TYPE single`` (``cat_seg_predictor.py:84-85``), the released configs'.
TEMPLATE = "A photo of a {} in the scene"

_EVAL_SH = "cvlab-kaist/CAT-Seg eval.sh:{lines} (TEST.SLIDING_WINDOW True, POOLING_SIZES [1,1]); " \
           "INPUT.MIN_SIZE_TEST 640 / MAX_SIZE_TEST 2560 of configs/config.yaml:52-53"


@dataclass(frozen=True)
class Protocol:
    """One official CAT-Seg benchmark protocol (a block of ``eval.sh``).

    Attributes:
        dataset: ovss dataset name.
        class_file: the official class list under ``ovss/classnames/cat_seg`` (``datasets/*.json``).
        short_side, max_long_side: test resize ([INPUT.MIN_SIZE_TEST], [INPUT.MAX_SIZE_TEST]).
        sliding_window: [TEST.SLIDING_WINDOW] as ``eval.sh`` sets it.
        pooling_size: [MODEL.SEM_SEG_HEAD.POOLING_SIZES] as ``eval.sh`` sets it.
        foreground: classes of the file that are dataset classes; the rest are words scoring the
            background (VOC-20b: the 20 VOC classes, then 39 PASCAL Context classes whose
            predictions count as background, ``train_net.py:57-60``); None: all.
        source: the official evaluation this row reproduces.
    """

    dataset: str
    class_file: str
    short_side: int = 640
    max_long_side: int = 2560
    sliding_window: bool = True
    pooling_size: tuple[int, int] = (1, 1)
    foreground: int | None = None
    source: str = ""

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["pooling_size"] = list(self.pooling_size)
        return d


PROTOCOLS: dict[str, Protocol] = {
    "ade20k": Protocol("ade20k", "ade150.json", source=_EVAL_SH.format(lines="28-39") + "; ADE-150"),
    "ade847": Protocol("ade847", "ade847.json", source=_EVAL_SH.format(lines="41-52") + "; ADE-847"),
    "voc20": Protocol("voc20", "voc20.json", source=_EVAL_SH.format(lines="54-65") + "; PASCAL VOC-20"),
    "voc21": Protocol("voc21", "voc20b.json", foreground=20,
                      source=_EVAL_SH.format(lines="67-78") + "; PASCAL VOC-20b (VOCbEvaluator, train_net.py:43-71)"),
    "context59": Protocol("context59", "pc59.json", source=_EVAL_SH.format(lines="80-91") + "; PASCAL Context-59"),
    "context459": Protocol("context459", "pc459.json",
                           source=_EVAL_SH.format(lines="93-104") + "; PASCAL Context-459"),
    "coco_stuff": Protocol("coco_stuff", "coco.json",
                           source="cvlab-kaist/CAT-Seg configs/config.yaml:10,32 (the training vocabulary, "
                                  "COCO-Stuff val) with eval.sh's test options"),
}
ALIASES = {"ade150": "ade20k", "a-150": "ade20k", "a150": "ade20k", "ade20k_150": "ade20k",
           "a-847": "ade847", "a847": "ade847", "ade20k_847": "ade847", "ade20k_full": "ade847",
           "pc59": "context59", "pc-59": "context59", "pascal_context59": "context59",
           "pc459": "context459", "pc-459": "context459", "pascal_context459": "context459",
           "pas20": "voc20", "pas-20": "voc20", "pascal_voc20": "voc20",
           "voc20b": "voc21", "pas20b": "voc21", "pas-20b": "voc21", "pascal_voc20b": "voc21",
           "coco": "coco_stuff", "coco_stuff171": "coco_stuff"}


def resolve_dataset(name: str) -> str:
    """Canonical protocol name of ``name`` (aliases accepted).

    Raises:
        UnknownNameError: no such protocol.
    """
    key = ALIASES.get(name.lower(), name.lower())
    if key not in PROTOCOLS:
        names = sorted(PROTOCOLS) + sorted(ALIASES)
        raise UnknownNameError(f"unknown CAT-Seg dataset protocol {name!r}.{did_you_mean(name, names)} "
                               f"Available: {', '.join(PROTOCOLS)} (aliases: {', '.join(sorted(ALIASES))})")
    return key


def prompt_word(name: str) -> str:
    """The word a class name is prompted with: the part before the first ``", "``
    (``get_text_embeds``, ``cat_seg_predictor.py:194-198``; e.g. ADE-847's "building, edifice")."""
    return name.split(", ")[0] if ", " in name else name


def read_class_json(path: str | Path) -> list[str]:
    """An official CAT-Seg class file: a JSON list of class names.

    Raises:
        InputError: missing file, or not a JSON list of strings.
    """
    path = Path(path)
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"class file not found: {path}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read class file {path} as JSON: {exc}") from None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise InputError(f"{path} is not a CAT-Seg class file (a JSON list of class names)")
    return names


@dataclass(frozen=True)
class WordPlan:
    """How a vocabulary's classes are scored: the network sees ``words`` (one cost-volume class
    each, in this order), and class c scores the maximum over its words' probabilities.

    Attributes:
        words: (T,) prompt words in network order.
        word_class: (T,) the class index of each word.
    """

    words: tuple[str, ...]
    word_class: tuple[int, ...]


def dataset_vocabulary(dataset: str) -> tuple[Vocabulary, WordPlan]:
    """The official class list of a protocol as a vocabulary (display names = the file's names;
    VOC-20b: "background" first, scored by the 39 extra words) and its words in the file's order."""
    proto = PROTOCOLS[resolve_dataset(dataset)]
    names = read_class_json(packaged_class_file("cat_seg", proto.class_file))
    words = tuple(prompt_word(n) for n in names)
    if proto.foreground is None:
        vocab = Vocabulary(tuple(names), tuple((w,) for w in words))
        return vocab, WordPlan(words, tuple(range(len(words))))
    k = proto.foreground
    vocab = Vocabulary(("background",) + tuple(names[:k]), (words[k:],) + tuple((w,) for w in words[:k]), 0)
    return vocab, WordPlan(words, tuple(range(1, k + 1)) + (0,) * (len(words) - k))


def word_plan(vocab: Vocabulary) -> WordPlan:
    """Every query word of ``vocab`` in class order, each scoring its class."""
    return WordPlan(tuple(prompt_word(w) for w in vocab.query_words), tuple(vocab.query_index))


def _open_clip_name(model: str) -> str:
    """The QuickGELU variant of an OpenAI-CLIP open_clip name (the vendored CLIP uses QuickGELU,
    ``model_vpt.py:192``): ``ViT-B-16`` -> ``ViT-B-16-quickgelu``; other names unchanged."""
    import open_clip

    if model.lower().endswith(".json") or "quickgelu" in model:
        return model
    if model in CLIP_VARIANTS:  # the official CLIP_PRETRAINED spelling, "ViT-L/14@336px"
        return CLIP_VARIANTS[model].open_clip_name
    name = model.replace("/", "-")
    quick = f"{name}-quickgelu"
    return quick if quick in open_clip.list_models() else model


class CATSeg(Segmenter):
    """CAT-Seg with a released (or self-trained) checkpoint.

    Args:
        model: the CLIP: an open_clip model name (``ViT-B-16``, ``ViT-L-14-336``; the QuickGELU
            variant is used, as the official vendored CLIP) or an open_clip config JSON; None:
            the CLIP of the config's ``CLIP_PRETRAINED`` (or of the checkpoint's width).
        pretrained: optional CLIP weights loaded before the checkpoint (an open_clip tag or a
            file); the checkpoint's CLIP tensors replace them (CAT-Seg fine-tunes CLIP and its
            checkpoints hold all of it).
        checkpoint: the official ``.pth`` (``model_base.pth`` / ``model_large.pth``) or a
            ``.safetensors`` copy of its state dict (required).
        config: the official detectron2 YAML (``configs/vitb_384.yaml``, ...) or a JSON of its
            keys; optional (sizes come from the checkpoint, settings from :data:`RELEASED
            <ovss.importers.cat_seg.RELEASED>`); checked against the checkpoint.
        dataset: official protocol (class file, test size); aliases such as ``ade150``, ``pc59``,
            ``voc20b`` accepted.
        device: torch device.
        short_side, max_long_side: override the test resize (protocol / config: 640, 2560).
        sliding_window: the official test-time scheme (``TEST.SLIDING_WINDOW``; every official
            evaluation sets True); False runs the official whole-image path (pad to
            ``SIZE_DIVISIBILITY``, squash to CLIP's input size).
        pooling_size: class-aggregation pooling (``POOLING_SIZES``; ``eval.sh``: 1 1).
        classes: default classes of :meth:`predict` (instead of the protocol's).
        background: default background words of :meth:`predict`.
        use_cache: keep text embeddings in the on-disk cache.

    ``predict`` returns ``logits`` = per-class probabilities (C, H, W) in (0, 1) (sigmoids,
    averaged over the views; a class with several words scores their maximum) and ``labels``
    their argmax.

    Raises:
        InputError: no checkpoint, bad options, unreadable config.
        UnknownNameError: unknown dataset protocol or CLIP model.
        ModelLoadError: unreadable checkpoint, or one of another architecture (the message
            names the mismatched keys).
    """

    method = "cat_seg"
    paper = "Cho et al., CVPR 2024 (CAT-Seg)"
    protocol_table = PROTOCOLS

    def __init__(self, model: str | None = None, pretrained: str | None = None, *,
                 checkpoint: str | Path | None = None, config: str | Path | None = None,
                 dataset: str | None = None, device: str | torch.device = "cpu", short_side: int | None = None,
                 max_long_side: int | None = None, sliding_window: bool = True,
                 pooling_size: int | tuple[int, int] | list[int] | None = None, classes: ClassesInput | None = None,
                 background: list[str] | str | None = None, use_cache: bool = True) -> None:
        super().__init__(device)
        check_test_size(short_side, max_long_side)
        if checkpoint is None:
            raise InputError("CAT-Seg needs its trained checkpoint: pass checkpoint=/path/to/model_base.pth "
                             "(--checkpoint on the command line; see docs/cat_seg.md for the downloads)")
        self.dataset = resolve_dataset(dataset) if dataset else None
        self.protocol = PROTOCOLS[self.dataset] if self.dataset else None
        sd = read_checkpoint(checkpoint)
        arch, self.cfg = resolve_config(sd, config)
        variant = clip_variant(self.cfg.clip_pretrained)
        if model is None:
            model = self._default_model(sd)
        self.model_name = model
        self.clip = self._load_clip(model, pretrained)
        width, patch, blocks = clip_shape(sd)
        if max(variant.hook_layers) >= blocks - 1:
            raise ModelLoadError(f"CLIP_PRETRAINED {self.cfg.clip_pretrained!r} takes guidance from blocks "
                                 f"{list(variant.hook_layers)}, but the checkpoint's CLIP has {blocks} blocks")
        pool = self._pooling(pooling_size)
        self.net: CATSegNet = build_catseg(sd, self.clip.model, arch, self.cfg, Path(checkpoint).name,
                                           pooling_size=pool)
        del sd
        self.net.to(self.device)
        # the text tower now holds the fine-tuned weights: a new identity for the embedding cache
        self.clip = LoadedCLIP(self.net.clip, self.clip.tokenizer, self.clip.name,
                               f"{self.clip.pretrained}+{Path(checkpoint).name}", text_fingerprint(self.net.clip),
                               self.clip.config)
        self.pretrained = pretrained
        self.checkpoint, self.config_path = str(checkpoint), str(config) if config else None
        self.use_cache = use_cache
        default_short = self.protocol.short_side if self.protocol else self.cfg.min_size_test
        default_long = self.protocol.max_long_side if self.protocol else self.cfg.max_size_test
        self.short_side = int(short_side or default_short)
        self.max_long_side = int(max_long_side or default_long)
        # every protocol (eval.sh) sets TEST.SLIDING_WINDOW True; False is the official whole-image path
        self.sliding_window = bool(sliding_window)
        self.pooling_size = pool
        mean = torch.tensor(self.cfg.clip_pixel_mean, dtype=torch.float32).view(-1, 1, 1)
        std = torch.tensor(self.cfg.clip_pixel_std, dtype=torch.float32).view(-1, 1, 1)
        self.pixel_mean, self.pixel_std = mean.to(self.device), std.to(self.device)
        self._text: dict[tuple[str, ...], torch.Tensor] = {}
        self._protocol_vocab = dataset_vocabulary(self.dataset) if self.dataset else None
        self.classes = self.vocabulary(classes) if classes is not None else None
        self.background = background

    # ---- construction helpers -----------------------------------------------------------------
    def _default_model(self, sd: dict[str, torch.Tensor]) -> str:
        width = clip_shape(sd)[0]
        name = clip_variant(self.cfg.clip_pretrained).open_clip_name
        want = {"ViT-B-16-quickgelu": 768, "ViT-L-14-336-quickgelu": 1024, "ViT-L-14-quickgelu": 1024}[name]
        if want != width:
            raise InputError(f"the checkpoint's CLIP is {width} wide, not that of {name}: pass its CLIP architecture "
                             "with model=... (an open_clip name or config JSON; --model)")
        return name

    @staticmethod
    def _load_clip(model: str, pretrained: str | None) -> LoadedCLIP:
        clip = load_clip(_open_clip_name(model), pretrained or None)
        if model.lower().endswith(".json") and not clip.config.get("quick_gelu", False):
            raise ModelLoadError(f"{model} builds a CLIP with GELU, but CAT-Seg's CLIP uses QuickGELU: "
                                 "add \"quick_gelu\": true to the config")
        blocks = getattr(getattr(clip.model.visual, "transformer", None), "resblocks", None)
        if blocks is None or not isinstance(blocks[-1].attn, torch.nn.MultiheadAttention):
            raise ModelLoadError(f"{model} is not a CLIP ViT of the OpenAI layout, which CAT-Seg's checkpoints hold")
        return clip

    def _pooling(self, pooling_size: int | tuple[int, int] | list[int] | None) -> tuple[int, int]:
        if pooling_size is None:
            return tuple(self.protocol.pooling_size) if self.protocol else (1, 1)  # type: ignore[return-value]
        vals = [pooling_size] * 2 if isinstance(pooling_size, int) else list(pooling_size)
        if len(vals) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1
                                     for v in vals):
            raise InputError(f"pooling_size must be one or two positive integers, got {pooling_size!r}")
        return int(vals[0]), int(vals[1])

    # ---- vocabulary and text ------------------------------------------------------------------
    def vocabulary(self, classes: ClassesInput | Vocabulary | None) -> tuple[Vocabulary, WordPlan]:
        """The vocabulary of a call and how its classes are scored (protocol lists keep the
        official word order; an official ``.json`` class file is read as the official code does)."""
        if classes is None:
            if self._protocol_vocab is None:
                raise InputError("no classes given and no dataset protocol set: pass classes=... "
                                 "or dataset='ade20k' (or another protocol)")
            return self._protocol_vocab
        if isinstance(classes, Vocabulary):
            vocab = classes
        elif isinstance(classes, (str, Path)) and "\n" not in str(classes) and str(classes).lower().endswith(".json"):
            names = read_class_json(classes)
            vocab = Vocabulary(tuple(names), tuple((prompt_word(n),) for n in names))
        else:
            vocab = parse_classes(classes)
        if self._protocol_vocab is not None and vocab.queries == self._protocol_vocab[0].queries:
            return self._protocol_vocab
        return vocab, word_plan(vocab)

    @torch.no_grad()
    def text_embeddings(self, words: tuple[str, ...]) -> torch.Tensor:
        """(T, 1, E) L2-normalised embeddings of ``TEMPLATE.format(word)`` by the fine-tuned text
        tower (``get_text_embeds``, ``cat_seg_predictor.py:187-219``; CLIP's BPE lower-cases and
        collapses whitespace, so ADE's ``"bed "`` is "bed"). Cached in memory and on disk."""
        if words not in self._text:
            emb = class_embeddings(self.clip, list(words), (TEMPLATE,), use_cache=self.use_cache)
            self._text[words] = emb.to(self.device).unsqueeze(1)
        return self._text[words]

    # ---- inference ----------------------------------------------------------------------------
    def image_tensor(self, image: np.ndarray) -> torch.Tensor:
        """(h, w, 3) uint8 -> (3, h, w) float32 on the device (``cat_seg_model.py:189``)."""
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).to(self.device, dtype=torch.float32)

    @torch.no_grad()
    def run(self, image: np.ndarray, ori_size: tuple[int, int], plan: WordPlan,
            sliding_window: bool | None = None, intermediates: bool = True) -> dict[str, Any]:
        """Full pipeline on an already resized image, with every intermediate.

        Args:
            image: (h, w, 3) uint8 RGB at network size (detectron2's test resize applied).
            ori_size: (H, W) output size.
            plan: the words the network scores (:class:`WordPlan`).
            sliding_window: the test-time scheme (default: the segmenter's).
            intermediates: keep every intermediate (else only ``sem_seg``, ``views``, ``logits``
                and ``text_embeds``, computed a chunk of classes at a time: less memory).

        Returns:
            ``text_embeds`` (T, E); ``views`` (V, 3, R, R) CLIP inputs; the network's intermediates
            (see :meth:`ovss.models.cat_seg.CATSegNet.forward`); ``logits`` (V, T, 4h', 4w');
            with the sliding window ``scores640`` (T, 640, 640); ``sem_seg`` (T, H, W) word
            probabilities at the output size.
        """
        sliding = self.sliding_window if sliding_window is None else sliding_window
        text = self.text_embeddings(plan.words)
        x = self.image_tensor(image)
        res: dict[str, Any] = {"text_embeds": text[:, 0]}
        keep = res if intermediates else None
        r = self.net.clip_resolution
        if sliding:
            views = sliding_window_views(x, self.pixel_mean, self.pixel_std, r)
            logits = self.net(views, text, keep)
            if intermediates:
                res["scores640"] = merge_sliding_window(logits)
                res["sem_seg"] = postprocess(res["scores640"], res["scores640"].shape[-2:], ori_size)
            else:
                res["sem_seg"] = sliding_window_scores(logits, ori_size)
        else:
            # CATSeg.forward (cat_seg_model.py:141-184): pad to SIZE_DIVISIBILITY, squash to CLIP's input,
            # sem_seg_postprocess crops the 4h' x 4w' map to the input size (a no-op unless it is smaller)
            d = max(int(self.cfg.size_divisibility), 1)
            h, w = x.shape[-2:]
            padded = x.new_zeros(1, 3, (h + d - 1) // d * d, (w + d - 1) // d * d)
            padded[0, :, :h, :w] = (x - self.pixel_mean) / self.pixel_std
            views = F.interpolate(padded, size=(r, r), mode="bilinear", align_corners=False)
            logits = self.net(views, text, keep)
            res["sem_seg"] = postprocess(logits[0].sigmoid(), (int(h), int(w)), ori_size)
        res.update(views=views, logits=logits)
        return res

    def predict(self, image: ImageInput, classes: ClassesInput | Vocabulary | None = None, *,
                background: list[str] | str | None = None,
                prob_threshold: float | None = None) -> SegmentationResult:
        """Segment one image (see :class:`CATSeg`).

        ``background`` adds a background class (index 0) scored by the maximum over its words,
        each a class of the cost volume (as VOC-20b's background); ``prob_threshold`` relabels
        pixels whose top probability is below it to the background class and needs one.

        Raises:
            InputError: unreadable image, bad classes, a threshold without a background class.
        """
        img = read_image_d2(image)  # Pillow decoding, as detectron2's read_image
        vocab, plan = self.vocabulary(classes) if classes is not None or self.classes is None else self.classes
        background = self.background if background is None else background
        if background is not None:
            words = [w.strip() for w in background.split(",")] if isinstance(background, str) else list(background)
            vocab = vocab.with_background([w for w in words if w])
            plan = word_plan(vocab)
        if prob_threshold is not None and vocab.background is None:
            raise InputError("prob_threshold needs a background class: pass background=... (e.g. 'background')")
        resized = d2_resize(img, self.short_side, self.max_long_side)
        res = self.run(resized, (img.shape[0], img.shape[1]), plan, intermediates=False)
        scores = class_scores(res["sem_seg"], plan, len(vocab)).float()
        labels = scores.argmax(0)
        if prob_threshold is not None:
            labels[scores.max(0).values < prob_threshold] = int(vocab.background)
        return SegmentationResult(scores.cpu(), labels.cpu().long(), list(vocab.names), vocab.background,
                                  self.settings())

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "model": self.model_name, "pretrained": self.pretrained,
                "checkpoint": self.checkpoint, "config": self.config_path, "dataset": self.dataset,
                "protocol": self.protocol.as_dict() if self.protocol else None,
                "clip_pretrained": self.cfg.clip_pretrained, "clip_resolution": self.net.clip_resolution,
                "short_side": self.short_side, "max_long_side": self.max_long_side,
                "sliding_window": self.sliding_window, "pooling_size": list(self.pooling_size),
                "background": self.background, "template": TEMPLATE}


def class_scores(word_scores: torch.Tensor, plan: WordPlan, num_classes: int) -> torch.Tensor:
    """(T, H, W) word probabilities -> (C, H, W) class scores: each class the maximum over its words.

    Raises:
        InputError: a class without any word.
    """
    word_class = list(plan.word_class)
    if word_class == list(range(num_classes)):
        return word_scores
    groups: list[list[int]] = [[] for _ in range(num_classes)]
    for t, c in enumerate(word_class):
        groups[c].append(t)
    empty = next((c for c, g in enumerate(groups) if not g), None)
    if empty is not None:
        raise InputError(f"class {empty} has no word to score it")
    return torch.stack([word_scores[g[0]] if len(g) == 1 else word_scores[g].amax(0) for g in groups])


__all__ = ["CATSeg", "CATSegSettings", "PROTOCOLS", "Protocol", "TEMPLATE", "WordPlan", "class_scores",
           "dataset_vocabulary", "prompt_word", "read_class_json", "resolve_dataset", "word_plan"]
