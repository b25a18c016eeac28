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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..backbones.clip import LoadedCLIP, load_clip, text_fingerprint
from ..errors import InputError, ModelLoadError
from ..imageio import d2_resize
from ..importers.cat_seg import (CLIP_VARIANTS, build_catseg, clip_shape, clip_variant, read_checkpoint,
                                 resolve_config)
from ..models.cat_seg import (CATSegNet, merge_sliding_window, postprocess, sliding_window_scores,
                              sliding_window_views)
from ..protocols import Protocol, ProtocolTable
from ..segmenter import Capabilities, Segmentation, Segmenter
from ..text import class_embeddings
from ..vocabulary import ClassesInput, Vocabulary, packaged_class_file

#: The prompt of ``PROMPT_ENSEMBLE_TYPE single`` (``cat_seg_predictor.py:84-85``), the released configs'.
TEMPLATE = "A photo of a {} in the scene"

_EVAL_SH = ("cvlab-kaist/CAT-Seg eval.sh:{lines} at 6d3a188 (TEST.SLIDING_WINDOW True, POOLING_SIZES [1,1]; "
            "INPUT.MIN_SIZE_TEST 640 / MAX_SIZE_TEST 2560 of configs/config.yaml:52-53); classes datasets/{file}")


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


def prompt_word(name: str) -> str:
    """The word a class name is prompted with: the part before the first ``", "``
    (``get_text_embeds``, ``cat_seg_predictor.py:194-198``; e.g. ADE-847's "building, edifice")."""
    return name.split(", ")[0] if ", " in name else name


def json_vocabulary(names: list[str], foreground: int | None = None, official: bool = False) -> Vocabulary:
    """A vocabulary from an official class list: display names as in the file, each prompted with
    :func:`prompt_word`. With ``foreground``, only the first ``foreground`` names are classes and the
    rest are the words of a background class at index 0 (VOC-20b)."""
    words = tuple((prompt_word(n),) for n in names)
    if foreground is None:
        return Vocabulary(tuple(names), words, None, official=official)
    bg = tuple(w for (w,) in words[foreground:])
    return Vocabulary(("background",) + tuple(names[:foreground]), (bg,) + words[:foreground], 0, official=official)


@dataclass(frozen=True)
class CATSegProtocol(Protocol):
    """One official CAT-Seg evaluation (a block of ``eval.sh``).

    Attributes:
        sliding_window: [TEST.SLIDING_WINDOW] as ``eval.sh`` sets it.
        pooling_size: [MODEL.SEM_SEG_HEAD.POOLING_SIZES] as ``eval.sh`` sets it.
        foreground: classes of the file that are dataset classes; the rest are words scoring the
            background (VOC-20b: the 20 VOC classes, then 39 PASCAL Context classes whose predictions
            count as background, ``train_net.py:57-60``); None: all.
    """

    sliding_window: bool = True
    pooling_size: tuple[int, int] = (1, 1)
    foreground: int | None = None

    def vocabulary(self) -> Vocabulary | None:
        """The official class list (``datasets/*.json``) as :func:`json_vocabulary` reads it."""
        if self.class_file is None:
            return None
        family, name = self.class_file.split("/", 1)
        return json_vocabulary(read_class_json(packaged_class_file(family, name)), self.foreground, official=True)


def _row(dataset: str, file: str, lines: str, foreground: int | None = None) -> CATSegProtocol:
    return CATSegProtocol(dataset=dataset, short_side=640, max_long_side=2560, class_file=f"cat_seg/{file}",
                          foreground=foreground, source=_EVAL_SH.format(lines=lines, file=file))


CATSEG_PROTOCOLS = ProtocolTable("cat_seg", {
    "ade20k": _row("ade20k", "ade150.json", "28-39"),
    "ade847": _row("ade847", "ade847.json", "41-52"),
    "voc20": _row("voc20", "voc20.json", "54-65"),
    # VOC-20b: VOC 2012 val with its background class, scored by VOCbEvaluator (train_net.py:43-71)
    "voc21": _row("voc21", "voc20b.json", "67-78", foreground=20),
    "context59": _row("context59", "pc59.json", "80-91"),
    "context459": _row("context459", "pc459.json", "93-104"),
    "coco_stuff": CATSegProtocol(dataset="coco_stuff", short_side=640, max_long_side=2560,
                                 class_file="cat_seg/coco.json",
                                 source="cvlab-kaist/CAT-Seg configs/config.yaml:10,32 at 6d3a188 (the training "
                                        "vocabulary on COCO-Stuff val) with eval.sh's test options"),
}, free=CATSegProtocol(dataset=None, short_side=640, max_long_side=2560,
                       source="cvlab-kaist/CAT-Seg configs/config.yaml:52-53 test size with eval.sh's test options"),
   aliases={"a-150": "ade20k", "a-847": "ade847", "pc-59": "context59", "pc-459": "context459", "pas-20": "voc20",
            "voc20b": "voc21", "pas20b": "voc21", "pas-20b": "voc21", "pascal_voc20b": "voc21", "coco": "coco_stuff"})


def dataset_vocabulary(dataset: str) -> Vocabulary:
    """The official class list (with synonyms) of a protocol: :meth:`ProtocolTable.vocabulary`."""
    return CATSEG_PROTOCOLS.vocabulary(dataset)


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


def word_plan(vocab: Vocabulary) -> WordPlan:
    """Every query word of ``vocab``, each scoring its class, in class order; for an official list
    with a background class (VOC-20b) in the official file's order: the classes' words first, then
    the background's (the class aggregation sums over the classes, so the order changes only the
    float rounding)."""
    order = list(range(len(vocab)))
    if vocab.official and vocab.background is not None:
        order = [c for c in order if c != vocab.background] + [vocab.background]
    pairs = [(prompt_word(w), c) for c in order for w in vocab.queries[c]]
    return WordPlan(tuple(w for w, _ in pairs), tuple(c for _, c in pairs))


def _open_clip_name(model: str) -> str:
    """The QuickGELU variant of an OpenAI-CLIP open_clip name (the vendored CLIP uses QuickGELU,
    ``model_vpt.py:192``): ``ViT-B-16`` -> ``ViT-B-16-quickgelu``; ``CLIP_PRETRAINED`` spellings
    (``ViT-L/14@336px``) accepted; config JSONs and other names unchanged."""
    import open_clip

    if model.lower().endswith(".json") or "quickgelu" in model:
        return model
    if model in CLIP_VARIANTS:
        return CLIP_VARIANTS[model].open_clip_name
    quick = f"{model.replace('/', '-')}-quickgelu"
    return quick if quick in open_clip.list_models() else model


class CATSeg(Segmenter):
    """CAT-Seg with a released (or self-trained) checkpoint.

    Args:
        model: the CLIP architecture: an open_clip model name (``ViT-B-16``, ``ViT-L-14-336``; the
            QuickGELU variant is built, as the official vendored CLIP) or an open_clip config JSON;
            None: the CLIP of the config's ``CLIP_PRETRAINED`` (or of the checkpoint's width).
        pretrained: CLIP weights (an open_clip tag or a file) for CLIP tensors the checkpoint lacks;
            the released checkpoints hold all of them (CAT-Seg fine-tunes CLIP), so nothing is
            downloaded for them.
        checkpoint: the official ``.pth`` (``model_base.pth`` / ``model_large.pth``, or the zoo names
            ``catseg_vitb`` / ``catseg_vitl``) or a ``.safetensors`` copy of its state dict (required).
        config: the official detectron2 YAML (``configs/vitb_384.yaml``, ...) or a JSON of its keys;
            optional (sizes come from the checkpoint, settings from the released config of its
            CLIP); checked against the checkpoint.
        sliding_window: the official test-time scheme (``TEST.SLIDING_WINDOW``; every official
            evaluation sets True); False runs the official whole-image path.
        pooling_size: class-aggregation pooling (``POOLING_SIZES``; ``eval.sh``: 1 1), one or two values.
        use_cache: keep text embeddings in the on-disk cache.
        **common: dataset (class file; aliases such as ``ade150``, ``pc59``, ``voc20b``), device,
            short_side, max_long_side (test resize; the config's, 640 / 2560), classes, background:
            see :class:`ovss.segmenter.Segmenter`.

    ``predict`` returns ``scores`` = per-class sigmoid probabilities (C, H, W) in (0, 1) averaged
    over the views (a class with several words scores their maximum, each word being a class of
    the cost volume, as VOC-20b's background) and ``labels`` their argmax.

    Raises:
        InputError: no checkpoint, bad options, unreadable config.
        UnknownNameError: unknown dataset protocol or CLIP model.
        ModelLoadError: unreadable checkpoint, or one of another architecture (the message names
            the mismatched keys).
    """

    method = "cat_seg"
    capabilities = Capabilities(background=True, prob_threshold=True, decoder="pillow", trainable=True,
                                score_kind="sigmoid")
    protocols = CATSEG_PROTOCOLS

    def __init__(self, model: str | None = None, pretrained: str | None = None, *,
                 checkpoint: str | Path | None = None, config: str | Path | None = None, sliding_window: bool = True,
                 pooling_size: tuple[int, ...] | None = None, use_cache: bool = True,
                 **common: Any) -> None:
        super().__init__(**common)
        if checkpoint is None:
            raise InputError("CAT-Seg needs its trained checkpoint: pass checkpoint=/path/to/model_base.pth or "
                             "checkpoint=\"catseg_vitb\" (--checkpoint on the command line; see docs/cat_seg.md)")
        pool = self._pooling(pooling_size)
        sd = read_checkpoint(checkpoint)
        arch, self.cfg = resolve_config(sd, config)
        variant = clip_variant(self.cfg.clip_pretrained)
        width, _, blocks = clip_shape(sd)
        if max(variant.hook_layers) >= blocks - 1:
            raise ModelLoadError(f"CLIP_PRETRAINED {self.cfg.clip_pretrained!r} takes guidance from blocks "
                                 f"{list(variant.hook_layers)}, but the checkpoint's CLIP has {blocks} blocks")
        self.model_name = model if model is not None else self._default_model(width)
        clip = self._load_clip(self.model_name)
        self.net: CATSegNet = build_catseg(sd, clip.model, arch, self.cfg, Path(checkpoint).name, pooling_size=pool,
                                           clip_fallback=self._fallback(self.model_name, pretrained))
        del sd
        self.net.to(self.device)
        # the text tower now holds the fine-tuned weights: a new identity for the embedding cache
        self.clip = LoadedCLIP(self.net.clip, clip.tokenizer, clip.name, f"{Path(checkpoint).name}",
                               text_fingerprint(self.net.clip), clip.config)
        self.pretrained = pretrained
        self.checkpoint, self.config_path = str(checkpoint), str(config) if config else None
        self.use_cache = use_cache
        # test size: argument > the config's INPUT.MIN/MAX_SIZE_TEST (eval.sh keeps them) > the protocol's
        short = common.get("short_side") or (self.cfg.min_size_test if config else self.protocol.short_side)
        long = common.get("max_long_side") or (self.cfg.max_size_test if config else self.protocol.max_long_side)
        self.protocol = self.protocol.with_overrides(short_side=int(short), max_long_side=int(long),
                                                     sliding_window=bool(sliding_window), pooling_size=pool)
        mean = torch.tensor(self.cfg.clip_pixel_mean, dtype=torch.float32).view(-1, 1, 1)
        std = torch.tensor(self.cfg.clip_pixel_std, dtype=torch.float32).view(-1, 1, 1)
        self.pixel_mean, self.pixel_std = mean.to(self.device), std.to(self.device)
        self._text: dict[tuple[str, ...], torch.Tensor] = {}

    # ---- construction helpers -----------------------------------------------------------------
    def _default_model(self, width: int) -> str:
        name = clip_variant(self.cfg.clip_pretrained).open_clip_name
        want = {"ViT-B-16-quickgelu": 768, "ViT-L-14-336-quickgelu": 1024, "ViT-L-14-quickgelu": 1024}[name]
        if want != width:
            raise InputError(f"the checkpoint's CLIP is {width} wide, not that of {name}: pass its CLIP architecture "
                             "with model=... (an open_clip name or config JSON; --model)")
        return name

    @staticmethod
    def _load_clip(model: str) -> LoadedCLIP:
        """The CLIP architecture with random weights (the checkpoint fills them)."""
        clip = load_clip(_open_clip_name(model), None)
        if model.lower().endswith(".json") and not clip.config.get("quick_gelu", False):
            raise ModelLoadError(f"{model} builds a CLIP with GELU, but CAT-Seg's CLIP uses QuickGELU: "
                                 "add \"quick_gelu\": true to the config")
        blocks = getattr(getattr(clip.model.visual, "transformer", None), "resblocks", None)
        if blocks is None or not isinstance(blocks[-1].attn, torch.nn.MultiheadAttention):
            raise ModelLoadError(f"{model} is not a CLIP ViT of the OpenAI layout, which CAT-Seg's checkpoints hold")
        return clip

    @staticmethod
    def _fallback(model: str, pretrained: str | None) -> Callable[[], dict[str, torch.Tensor]] | None:
        """Loader of the ``pretrained`` CLIP weights, called only for CLIP tensors the checkpoint lacks."""
        if not pretrained:
            return None
        name = model if Path(str(pretrained)).is_file() else model.replace("-quickgelu", "")
        return lambda: load_clip(name, pretrained).model.state_dict()

    def _pooling(self, pooling_size: tuple[int, ...] | None) -> tuple[int, int]:
        if pooling_size is None:
            return tuple(self.protocol.pooling_size)  # type: ignore[return-value]
        vals = list(pooling_size)
        if len(vals) == 1:
            vals = vals * 2
        if len(vals) != 2 or any(v < 1 for v in vals):
            raise InputError(f"pooling_size takes one or two positive integers, got {pooling_size!r}")
        return int(vals[0]), int(vals[1])

    # ---- vocabulary and text ------------------------------------------------------------------
    def vocabulary(self, classes: ClassesInput | Vocabulary | None = None, background: Any = None,
                   prob_threshold: float | None = None) -> Vocabulary:
        """As :meth:`Segmenter.vocabulary`; an official ``.json`` class file (a JSON list of names,
        ``datasets/*.json``) is read as the official code reads it (:func:`json_vocabulary`)."""
        if isinstance(classes, (str, Path)) and "\n" not in str(classes) and str(classes).lower().endswith(".json"):
            classes = json_vocabulary(read_class_json(classes))
        return super().vocabulary(classes, background, prob_threshold)

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
    def run_resized(self, image: np.ndarray, ori_size: tuple[int, int], plan: WordPlan,
                    intermediates: bool = True) -> dict[str, Any]:
        """Full pipeline on an image already resized to the network size.

        Args:
            image: (h, w, 3) uint8 RGB at network size (detectron2's test resize applied).
            ori_size: (H, W) output size.
            plan: the words the network scores (:class:`WordPlan`).
            intermediates: keep every intermediate (else only ``sem_seg``, ``views``, ``logits``
                and ``text_embeds``, computed a chunk of classes at a time: less memory).

        Returns:
            ``text_embeds`` (T, E); ``views`` (V, 3, R, R) CLIP inputs; the network's intermediates
            (see :meth:`ovss.models.cat_seg.CATSegNet.forward`); ``logits`` (V, T, 4h', 4w');
            with the sliding window ``scores640`` (T, 640, 640); ``sem_seg`` (T, H, W) word
            probabilities at the output size.
        """
        text = self.text_embeddings(plan.words)
        x = self.image_tensor(image)
        res: dict[str, Any] = {"text_embeds": text[:, 0]}
        keep = res if intermediates else None
        r = self.net.clip_resolution
        if self.protocol.sliding_window:
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
        res.update(views=views, logits=logits, words=plan.words)
        return res

    def segment(self, rgb: np.ndarray, vocab: Vocabulary, *, prob_threshold: float | None = None,
                image_id: str | None = None, trace: bool = False) -> Segmentation:
        """detectron2's test resize, :meth:`run_resized`, the maximum over each class's words, the
        argmax; ``prob_threshold`` relabels pixels whose top score is below it to the background class."""
        plan = word_plan(vocab)
        resized = d2_resize(rgb, self.short_side, self.max_long_side)
        res = self.run_resized(resized, (rgb.shape[0], rgb.shape[1]), plan, intermediates=trace)
        scores = class_scores(res["sem_seg"], plan, len(vocab)).float()
        labels = scores.argmax(0)
        thd = self.effective_threshold(prob_threshold)
        if thd > 0 and vocab.background is not None:
            labels[scores.max(0).values < thd] = int(vocab.background)
        return Segmentation(scores, labels, settings={"prob_threshold": thd}, trace=res if trace else {})

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "model": self.model_name, "pretrained": self.pretrained,
                "checkpoint": self.checkpoint, "config": self.config_path,
                "clip_pretrained": self.cfg.clip_pretrained, "clip_resolution": self.net.clip_resolution,
                "short_side": self.short_side, "max_long_side": self.max_long_side,
                "sliding_window": self.protocol.sliding_window, "pooling_size": list(self.protocol.pooling_size),
                "template": TEMPLATE}


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


__all__ = ["CATSEG_PROTOCOLS", "CATSeg", "CATSegProtocol", "TEMPLATE", "WordPlan", "class_scores",
           "dataset_vocabulary", "json_vocabulary", "prompt_word", "read_class_json", "word_plan"]
