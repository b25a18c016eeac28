"""CLIP-DIY: multi-scale patch classification with CLIP, background from FOUND saliency.

Source: Wysoczańska et al., "CLIP-DIY: CLIP Dense Inference Yields Open-Vocabulary Semantic
Segmentation For-Free", WACV 2024, Sec. 3; ``wysoczanska/clip-diy`` at f88932d:
``src/clip_conv.py::ClipConv`` (patches, prompts, maps), ``eval_clipconv.py::get_predictions``
(saliency fusion), ``src/datasets/load_dataset.py`` (256x256 resize), ``demo.ipynb::get_mask``
(notebook variant); saliency: ``thirdparty/extract_saliency.py --drop-probs`` with FOUND
(``valeoai/FOUND`` 1ad22ba ``model.py``: 1x1 convolution on DINO ViT-S/8 last-block keys).
Line numbers below are those of the stored copies read: ``src/clip_conv.py`` and
``thirdparty/extract_saliency.py`` at 8f1a378, ``eval_clipconv.py`` at 3b61389,
``src/datasets/load_dataset.py`` and ``src/datasets/pascal_voc.py`` at aaebecb, ``demo.ipynb`` at
2b662d6 (lines of the notebook's JSON), FOUND ``model.py`` at a557f2c.

Evaluation-script pipeline (``variant="eval"``, the benchmark numbers):

1. the RGB image resized to 256x256 with OpenCV bilinear on uint8 (albumentations
   ``Resize(256, 256, interpolation=1)``; aspect ratio not kept; ``load_dataset.py`` L26-27,
   ``load_data(cfg, split, False, ...)`` so no normalisation, ``eval_clipconv.py`` L36);
2. for patch sizes 256, 128, 64 with step ``ps // 2``: every patch (row-major) goes through
   CLIP's image encoder with transformers' ``CLIPImageProcessor`` (4.34) preprocessing: PIL
   bicubic resize to the model's input size on uint8, ``x * (1/255)`` in float64 -> float32,
   ``(x - mean) / std`` in float32; the L2-normalised image embedding's cosine with each class
   embedding (one prompt ``"a photo of a <name>"``, no period) gives an (n, n, C) grid, resized
   bilinearly (align_corners=False) to 256x256 over the whole canvas; the three maps are
   averaged (``clip_map``; ``clip_conv.py`` L146-149 unfold, L151-153 ``ToPILImage``, L130-144
   ``infer``, L155-172 ``_group_patches``, L102-111 ``forward``);
3. FOUND saliency on the full-resolution image: ImageNet-normalised, zero-padded right/bottom
   to a multiple of the patch size, DINO last-block keys, 1x1 conv, x8 bilinear upsampling,
   cropped, sigmoid (``extract_saliency.py`` L82, L88, L93-100; FOUND ``model.py`` L53, L55-89,
   L98); resized to 256x256 with OpenCV bilinear (``pascal_voc.py`` L174
   ``self.transform(image=saliency)``);
4. ``clip_map * [1 - s, s, ..., s]`` (class 0 = "background"), softmax over classes, argmax at
   256x256 (``eval_clipconv.py`` L53-64), nearest-resized (OpenCV) to the image size
   (``src/semseg/evaluate.py::combine_predictions`` L55-56 at 3c6d4d0; the official script resizes
   to the shape of ``dataset_raw.get_mask``, which for VOC is the ground truth nearest-resized to
   short side 448, ``pascal_voc.py`` L147-152 "fix for the eval").

Notebook variant (``variant="notebook"``): 256x256 by torch nearest on the 0-1 float image
(patches back to uint8 by ``x.mul(255).byte()``), FOUND on that 256x256 image, no softmax
(scores = gated cosines), labels resized with torch nearest (``demo.ipynb`` L113-116
``T.Resize((256, 256), interpolation=0)``, ``get_mask`` L45-68: L51 FOUND, L65
``(clip_map * logits_mask).argmax(dim=1)``, L66 ``F.interpolate(..., mode="nearest")``).

Quirks kept because they change numbers: the "an" prompt branch never fires
(``text.startswith('aeiou')``, ``clip_conv.py`` L61-62 ``_create_prompt``), so prompts read
"a photo of a aeroplane"; the gate multiplies raw cosines (for negative cosines it works
backwards; ``eval_clipconv.py`` L60 ``out_ = (out * logits_mask).softmax(dim=1)`` on the cosines
of ``clip_conv.py`` L141, whose ``#* logit_scale`` is commented out); the n x n patch grid is
stretched over the whole canvas by the bilinear resize although patch centres do not sit at the
cell centres (``clip_conv.py`` L165-168, ``F.interpolate(patches, size=(H, W), mode="bilinear",
align_corners=self.align_corners)``).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..backbones.clip import LoadedCLIP, load_clip
from ..backbones.dino import LoadedViT, last_block_keys, load_vit
from ..checkpoints import read_checkpoint
from ..constants import IMAGENET_MEAN, IMAGENET_STD
from ..errors import InputError, ModelLoadError, UnknownNameError, did_you_mean
from ..options import NonNegative, Pixels, PositiveInt
from ..protocols import Protocol, ProtocolTable
from ..segmenter import Capabilities, Segmentation, Segmenter, square_side
from ..text import class_embeddings
from ..vocabulary import BACKGROUND, Vocabulary

#: the single prompt of ``ClipConv._create_prompt`` (no period; ``src/clip_conv.py`` L61-62 at 8f1a378)
TEMPLATES = ("a photo of a {}",)

#: ``eval_clipconv.py`` / ``src/datasets/pascal_voc.py`` VOC_CLASSES (background first)
VOC21_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
                 "diningtable", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train",
                 "tv/monitor")

#: ``src/datasets/coco.py`` COCO_CLASS_NAMES_ALL
COCO_OBJECT_CLASSES = (
    "background", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep",
    "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed",
    "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven",
    "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush")

#: official protocols (``configs/cfg_clip_pascal.yaml``, ``configs/cfg_clip_coco.yaml``: same ClipConv values)
#: FOUND's saliency ViT: DINO ViT-S/8 (timm layout) with the weights FOUND itself loads, the 300-epoch
#: release (valeoai/FOUND ``model.py`` L208 at a557f2c), on which its decoder was trained
FOUND_VIT = "vit_small_patch8_224.dino"
FOUND_DINO_URL = "https://dl.fbaipublicfiles.com/dino/dino_deitsmall8_300ep_pretrain/dino_deitsmall8_300ep_pretrain.pth"
DATASET_CLASSES = {"voc21": VOC21_CLASSES, "coco_object": COCO_OBJECT_CLASSES}


@dataclass(frozen=True)
class CLIPDIYProtocol(Protocol):
    """An official class list of CLIP-DIY (its configs hold no per-dataset settings besides it).

    Attributes:
        names: (C,) the official class names, background first.
    """

    names: tuple[str, ...] = ()

    def vocabulary(self) -> Vocabulary | None:
        if not self.names:
            return None
        return Vocabulary(self.names, tuple((n,) for n in self.names), 0, official=True)


CLIPDIY_PROTOCOLS = ProtocolTable("clip_diy", {
    "voc21": CLIPDIYProtocol(dataset="voc21", short_side=256, max_long_side=256, names=VOC21_CLASSES,
                             source="wysoczanska/clip-diy configs/cfg_clip_pascal.yaml, src/datasets/pascal_voc.py"),
    "coco_object": CLIPDIYProtocol(dataset="coco_object", short_side=256, max_long_side=256, names=COCO_OBJECT_CLASSES,
                                   source="wysoczanska/clip-diy configs/cfg_clip_coco.yaml, src/datasets/coco.py"),
}, free=CLIPDIYProtocol(dataset=None, short_side=256, max_long_side=256,
                        source="wysoczanska/clip-diy configs/cfg_clip_pascal.yaml (ClipConv settings)"))

VARIANTS = ("eval", "notebook")


def load_found_decoder(path: str | Path, in_channels: int) -> nn.Conv2d:
    """FOUND's saliency decoder: a 1x1 convolution ``in_channels -> 1``.

    Accepted layouts (any of ``.pt``/``.pth``/``.safetensors``):
        - FOUND's release ``decoder_weights.pt``: ``torch.save({"decoder": {"weight": (1, C, 1, 1),
          "bias": (1,)}})`` (``FoundModel.decoder_load_weights``, FOUND ``model.py`` L156-164 at a557f2c);
        - flat keys ``decoder.weight`` / ``decoder.bias`` (the parity fixture's safetensors);
        - plain ``weight`` / ``bias``.
    C must equal the saliency ViT's width (384 for DINO ViT-S/8).

    Raises:
        ModelLoadError: missing or unreadable file, or a different layout / width.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"FOUND decoder file not found: {path} (--saliency-head)")
    raw: Any = read_checkpoint(path)  # never executes code from the file
    if isinstance(raw, dict) and isinstance(raw.get("decoder"), dict):
        sd = dict(raw["decoder"])
    elif isinstance(raw, dict):
        sd = {k[len("decoder."):] if k.startswith("decoder.") else k: v for k, v in raw.items()}
    else:
        sd = {}
    weight, bias = sd.get("weight"), sd.get("bias")
    expected = f"decoder.weight (1, {in_channels}, 1, 1) and decoder.bias (1,)"
    if (not isinstance(weight, torch.Tensor) or not isinstance(bias, torch.Tensor)
            or set(sd) != {"weight", "bias"}):
        found = ", ".join(sorted(raw)[:4]) if isinstance(raw, dict) else type(raw).__name__
        raise ModelLoadError(f"{path} is not a FOUND decoder: expected {expected} "
                             f"(FOUND's decoder_weights.pt), found keys {found}")
    if tuple(weight.shape) != (1, in_channels, 1, 1) or tuple(bias.shape) != (1,):
        raise ModelLoadError(f"FOUND decoder {path} has weight {tuple(weight.shape)} / bias {tuple(bias.shape)}, "
                             f"expected {expected}: the saliency model's width is {in_channels} "
                             "(FOUND's released decoder fits DINO ViT-S/8, vit_small_patch8_224.dino)")
    conv = nn.Conv2d(in_channels, 1, kernel_size=1)
    conv.load_state_dict({"weight": weight.float(), "bias": bias.float()})
    return conv.eval()


def clip_pixel_values(patch: np.ndarray, size: tuple[int, int], mean: Sequence[float],
                      std: Sequence[float]) -> np.ndarray:
    """transformers 4.34 ``CLIPImageProcessor`` on one square uint8 patch (PIL path).

    PIL bicubic resize to ``size`` (h, w) (``reducing_gap=None``; antialiased when shrinking),
    ``x * (1/255)`` in float64 cast to float32, ``(x - mean) / std`` in float32.

    Args:
        patch: (h, w, 3) uint8 RGB.

    Returns:
        (3, H, W) float32.
    """
    img = Image.fromarray(np.ascontiguousarray(patch)).resize((size[1], size[0]), Image.BICUBIC, reducing_gap=None)
    x = (np.asarray(img) * (1 / 255)).astype(np.float32)
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def nearest_index(src: int, dst: int, rule: str) -> np.ndarray:
    """(dst,) source indices of a nearest-neighbour resize ``src -> dst``: OpenCV
    ``INTER_NEAREST`` (``rule="cv2"``) or torch ``mode="nearest"`` (``rule="torch"``)."""
    if rule == "cv2":
        idx = cv2.resize(np.arange(src, dtype=np.float32).reshape(src, 1), (1, dst), interpolation=cv2.INTER_NEAREST)
        return idx.reshape(-1).astype(np.int64)
    idx = F.interpolate(torch.arange(src, dtype=torch.float32).view(1, 1, src), size=dst, mode="nearest")
    return idx.view(-1).long().numpy()


def label_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(h, w) of the official evaluation's ground truth: torchvision ``resize(mask, size=short_side)`` keeps
    the aspect ratio with ``long = int(short_side * long / short)`` (``src/datasets/pascal_voc.py::get_mask``,
    "fix for the eval", at f88932d)."""
    if height <= width:
        return short_side, int(short_side * width / height)
    return int(short_side * height / width), short_side


class CLIPDIY(Segmenter):
    """CLIP-DIY (official protocols: ``dataset="voc21"`` and ``"coco_object"``).

    Args:
        model: open_clip model name or config JSON (paper: ``ViT-B-32``, LAION-2B).
        pretrained: open_clip tag or local checkpoint (default ``laion2b_s34b_b79k`` =
            ``laion/CLIP-ViT-B-32-laion2B-s34B-b79K`` of the official configs).
        saliency_model: timm name or JSON config of FOUND's ViT (DINO ViT-S/8); None (or "none")
            runs without saliency (a warning; ``settings["saliency"]`` is False).
        saliency_pretrained: checkpoint (file or URL) of the saliency ViT; None: with the default
            ``saliency_model``, FOUND's own ``dino_deitsmall8_300ep_pretrain.pth`` (:data:`FOUND_DINO_URL`,
            downloaded once into torch's hub cache: the released decoder was trained on it, and timm's
            ``vit_small_patch8_224.dino`` is DINO's other ViT-S/8); with another model, timm's hub weights.
        saliency_head: FOUND decoder file (see :func:`load_found_decoder`); required with a
            saliency model.
        variant: "eval" (evaluation script) or "notebook" (``demo.ipynb``).
        img_size: working resolution (256): the image is resized to an img_size x img_size square.
        patch_sizes: patch sides in pixels on the working image (256, 128, 64).
        stride_divisor: patch step = ``ps // stride_divisor`` (2).
        patch_weights: per-scale weights applied before the mean (1, 1, 1).
        saliency_max_side: free-form use only: images longer than this are shrunk (OpenCV
            area) before FOUND, which otherwise runs at full resolution as the official script
            does (memory grows with the square of the token count); None under a dataset protocol.
        batch_size: patches per CLIP forward pass (results do not depend on it).
        label_short_side: CLIP-DIY's own scoring protocol: the scores and labels come at the size of the
            official evaluation's ground truth, nearest-resized to this short side (448 in the official
            scripts: :func:`label_size`) instead of the image size; ``ovss eval --label-short-side 448``
            resizes the ground truth the same way. None: the image size.
        use_cache: keep class embeddings in the on-disk cache.
        clip: an already loaded CLIP (skips ``model``/``pretrained``).
        **common: dataset ("voc21" or "coco_object", the official class lists, or None), device,
            short_side / max_long_side (for this square input they set ``img_size``: ``short_side``
            capped at ``max_long_side``), classes (a "background" class is put first when missing, as
            the notebook does: the saliency gate needs it at index 0), background (the words of that
            class): see :class:`ovss.segmenter.Segmenter`.

    Raises:
        UnknownNameError: unknown model, tag, dataset or variant.
        ModelLoadError: weights unreachable, wrong checkpoint or decoder layout.
        InputError: bad patch settings.
    """

    method = "clip_diy"
    capabilities = Capabilities(background=True, prob_threshold=True, decoder="opencv", score_kind="probability")
    protocols = CLIPDIY_PROTOCOLS

    def __init__(self, model: str = "ViT-B-32", pretrained: str | None = "laion2b_s34b_b79k", *,
                 saliency_model: str | None = FOUND_VIT, saliency_pretrained: str | None = None,
                 saliency_head: str | None = None, variant: Literal["eval", "notebook"] = "eval",
                 img_size: Pixels = 256, patch_sizes: Sequence[PositiveInt] = (256, 128, 64),
                 stride_divisor: PositiveInt = 2, patch_weights: Sequence[NonNegative] | None = None,
                 saliency_max_side: Pixels | None = 1024, batch_size: PositiveInt = 32,
                 label_short_side: Pixels | None = None, use_cache: bool = True,
                 clip: LoadedCLIP | None = None, **common: Any) -> None:
        super().__init__(**common)
        img_size = square_side(img_size, common.get("short_side"), common.get("max_long_side"))
        if variant not in VARIANTS:
            raise UnknownNameError(f"unknown CLIP-DIY variant {variant!r}.{did_you_mean(variant, list(VARIANTS))} "
                                   "Use 'eval' (evaluation script) or 'notebook' (demo.ipynb)")
        if isinstance(patch_sizes, (int, float)):
            patch_sizes = (patch_sizes,)  # "--patch-sizes 128" on the command line
        if isinstance(patch_weights, (int, float)):
            patch_weights = (patch_weights,)
        self.patch_sizes = tuple(int(p) for p in patch_sizes)
        if not self.patch_sizes or img_size < 1 or stride_divisor < 1:
            raise InputError(f"invalid patch settings: img_size={img_size}, patch_sizes={patch_sizes}, "
                             f"stride_divisor={stride_divisor}")
        for ps in self.patch_sizes:
            if not 0 < ps <= img_size or ps // stride_divisor < 1:
                raise InputError(f"patch size {ps} does not fit the {img_size}x{img_size} working image "
                                 f"(need 1 <= patch <= {img_size} and patch // stride_divisor >= 1)")
        weights = (tuple(float(w) for w in patch_weights) if patch_weights is not None
                   else (1.0,) * len(self.patch_sizes))
        if len(weights) != len(self.patch_sizes):
            raise InputError(f"{len(weights)} patch weights for {len(self.patch_sizes)} patch sizes")
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        self.patch_weights = weights
        self.variant = variant
        self.img_size = int(img_size)
        self.stride_divisor = int(stride_divisor)
        self.batch_size = batch_size
        self.label_short_side = label_short_side
        self.use_cache = use_cache
        self.saliency_max_side = None if self.dataset is not None else saliency_max_side
        self.clip = clip if clip is not None else load_clip(model, pretrained, self.device)
        visual = self.clip.visual
        size = getattr(visual, "image_size", (224, 224))
        self.clip_input = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
        self.clip_mean = tuple(getattr(visual, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073))
        self.clip_std = tuple(getattr(visual, "image_std", None) or (0.26862954, 0.26130258, 0.27577711))
        self.saliency: LoadedViT | None = None
        self.decoder: nn.Conv2d | None = None
        if isinstance(saliency_model, str) and saliency_model.strip().lower() in ("", "none"):
            saliency_model = None  # "--saliency-model none" on the command line
        if saliency_model:
            if not saliency_head:
                raise ModelLoadError("CLIP-DIY saliency needs FOUND's decoder: pass saliency_head=PATH or the zoo "
                                     "name found_decoder (ovss segment --saliency-head found_decoder, ovss eval "
                                     "--set saliency_head=found_decoder; FOUND's decoder_weights.pt), or saliency_model=None "
                                     "(--saliency-model none) to run without saliency")
            if saliency_pretrained is None and saliency_model == FOUND_VIT:
                saliency_pretrained = FOUND_DINO_URL
            self.saliency = load_vit(saliency_model, saliency_pretrained, self.device, flag="--saliency-model",
                                     pretrained_flag="--saliency-pretrained")
            self.decoder = load_found_decoder(saliency_head, self.saliency.embed_dim).to(self.device)
        else:
            warnings.warn("CLIP-DIY without saliency (saliency_model=None): class scores are the multi-scale CLIP "
                          "map only, not the published method", stacklevel=2)
        self._text: dict[tuple[tuple[str, ...], ...], torch.Tensor] = {}

    # ----------------------------------------------------------------- vocabulary / text
    def with_background(self, vocab: Vocabulary, words: list[str] | None, prob_threshold: float) -> Vocabulary:
        """Class 0 is always the background class (the saliency gate is ``1 - s`` on channel 0): a
        "background" entry elsewhere is an error, one is added when missing; ``words`` score it."""
        if vocab.background not in (None, 0):
            raise InputError("CLIP-DIY scores the background as class 0: put it first in the class list")
        lower = [n.lower() for n in vocab.names]
        if vocab.background is None and BACKGROUND in lower:
            i = lower.index(BACKGROUND)
            if i != 0:
                raise InputError("CLIP-DIY scores 'background' as class 0: put it first in the class list "
                                 "(or leave it out and it is added)")
            vocab = Vocabulary(vocab.names, vocab.queries, 0, official=vocab.official)
        if vocab.background is None:
            return vocab.with_background(list(words) if words else None)
        if words:
            return vocab.with_background(list(words))
        return vocab

    def text_embeddings(self, vocab: Vocabulary) -> torch.Tensor:
        """(C, E) unit-norm class embeddings: the prompt ``"a photo of a <name>"`` per query word
        (``ClipConv._embed_label``, ``clip_conv.py`` L113-121 at 8f1a378), averaged over a class's
        synonyms and re-normalised."""
        key = vocab.queries
        if key not in self._text:
            emb = class_embeddings(self.clip, vocab.query_words, TEMPLATES, self.use_cache)
            if len(vocab.query_words) != len(vocab):
                idx = torch.as_tensor(vocab.query_index, device=emb.device)
                emb = torch.stack([emb[idx == c].mean(0) for c in range(len(vocab))])
                emb = F.normalize(emb, dim=-1)
            self._text[key] = emb
        return self._text[key]

    # ----------------------------------------------------------------- image side
    def working_image(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (S, S, 3) uint8 working image (S = ``img_size``).

        eval: OpenCV bilinear on uint8; notebook: torch nearest on ``x / 255`` then
        ``x.mul(255).byte()`` (what ``ToPILImage`` does to each patch).
        """
        s = self.img_size
        if self.variant == "eval":
            return cv2.resize(rgb, (s, s), interpolation=cv2.INTER_LINEAR)
        return _to_byte(self.notebook_input(rgb))

    def notebook_input(self, rgb: np.ndarray) -> torch.Tensor:
        """notebook: ``T.Resize((S, S), interpolation=0)(ToTensor()(img))`` -> (3, S, S) float32 in [0, 1]."""
        x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div(255)
        return F.interpolate(x[None], size=(self.img_size, self.img_size), mode="nearest")[0]

    def patch_grid(self, ps: int) -> tuple[int, int]:
        """(n, step) of patch size ``ps``: n patches per side taken every ``step`` pixels."""
        step = int(ps // self.stride_divisor)
        return (self.img_size - ps) // step + 1, step

    @torch.no_grad()
    def patch_embeddings(self, work: np.ndarray) -> list[torch.Tensor]:
        """L2-normalised CLIP image embeddings of every patch, per scale.

        Args:
            work: (S, S, 3) uint8 working image.

        Returns:
            per patch size, (n*n, E) float32 in row-major patch order.
        """
        pixels = []
        counts = []
        for ps in self.patch_sizes:
            n, step = self.patch_grid(ps)
            counts.append(n * n)
            for i in range(n):
                for j in range(n):
                    patch = work[i * step:i * step + ps, j * step:j * step + ps]
                    pixels.append(clip_pixel_values(patch, self.clip_input, self.clip_mean, self.clip_std))
        batch = torch.from_numpy(np.stack(pixels))
        out = []
        for k in range(0, len(batch), self.batch_size):
            emb = self.clip.model.encode_image(batch[k:k + self.batch_size].to(self.device)).float()
            out.append(emb / emb.norm(dim=-1, keepdim=True))
        embeds = torch.cat(out)
        return list(torch.split(embeds, counts))

    def clip_map(self, embeds: list[torch.Tensor], text: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Multi-scale map (``ClipConv.forward``, ``clip_conv.py`` L102-111 at 8f1a378; cosines without
        logit scale, L141).

        Args:
            embeds: per scale (n*n, E) unit-norm patch embeddings.
            text: (C, E) unit-norm class embeddings.

        Returns:
            the merged (C, S, S) map and the per-scale (C, S, S) maps.
        """
        s = self.img_size
        maps = []
        for e in embeds:
            n = int(round(e.shape[0] ** 0.5))
            logits = e @ text.T  # (n*n, C) cosines, no logit scale
            grid = logits.reshape(1, n, n, -1).permute(0, 3, 1, 2)
            maps.append(F.interpolate(grid, size=(s, s), mode="bilinear", align_corners=False)[0])
        w = torch.tensor(self.patch_weights, dtype=maps[0].dtype, device=maps[0].device)
        merged = torch.mean(torch.stack(maps) * w.view(-1, 1, 1, 1), dim=0)
        return merged, maps

    @torch.no_grad()
    def found_logits(self, x01: torch.Tensor) -> torch.Tensor:
        """FOUND decoder output for one image.

        Args:
            x01: (3, H, W) float32 RGB in [0, 1].

        Returns:
            (ceil(H/p), ceil(W/p)) logits: ImageNet normalisation, zero padding right/bottom
            to a multiple of the patch size p, last-block keys, 1x1 conv
            (``extract_saliency.py`` L82-88 at 8f1a378, FOUND ``model.py::forward_step`` L55-89 and
            ``make_input_divisible`` L91-99 at a557f2c).
        """
        assert self.saliency is not None and self.decoder is not None
        p = self.saliency.patch_size
        mean = torch.tensor(IMAGENET_MEAN, device=x01.device).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x01.device).view(3, 1, 1)
        x = (x01 - mean) / std
        h, w = x.shape[-2:]
        x = F.pad(x, (0, (p - w % p) % p, 0, (p - h % p) % p))
        keys = last_block_keys(self.saliency, x[None].to(self.device))
        return self.decoder(keys)[0, 0]

    def saliency_probs(self, found: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``sigmoid(bilinear x p upsampling of the FOUND logits)`` cropped to ``size`` (``--drop-probs``,
        ``extract_saliency.py`` L93-100 at 8f1a378)."""
        p = self.saliency.patch_size if self.saliency is not None else 8
        up = F.interpolate(found[None, None], scale_factor=p, mode="bilinear", align_corners=False)
        return torch.sigmoid(up[0, 0, :size[0], :size[1]])

    @torch.no_grad()
    def saliency_map(self, rgb: np.ndarray, nb_input: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Saliency at the working resolution (and the FOUND logits / full map it came from).

        eval: FOUND on the full image (ToTensor: ``x / 255``), the probability map resized with
        OpenCV bilinear to S x S; notebook: FOUND on the S x S notebook input.
        """
        s = self.img_size
        if self.variant == "notebook":
            x01 = nb_input if nb_input is not None else self.notebook_input(rgb)
            found = self.found_logits(x01)
            sal = self.saliency_probs(found, (s, s))
            return {"found_logits": found, "saliency": sal}
        src = rgb
        if self.saliency_max_side is not None and max(rgb.shape[:2]) > self.saliency_max_side:
            f = self.saliency_max_side / max(rgb.shape[:2])
            src = cv2.resize(rgb, (max(1, round(rgb.shape[1] * f)), max(1, round(rgb.shape[0] * f))),
                             interpolation=cv2.INTER_AREA)
        x01 = torch.from_numpy(np.array(src, dtype=np.uint8)).permute(2, 0, 1).float().div(255)
        found = self.found_logits(x01)
        full = self.saliency_probs(found, src.shape[:2])
        sal = cv2.resize(full.float().cpu().numpy(), (s, s), interpolation=cv2.INTER_LINEAR)
        return {"found_logits": found, "saliency_full": full, "saliency": torch.from_numpy(sal).to(self.device)}

    # ----------------------------------------------------------------- the hook
    @torch.no_grad()
    def segment(self, rgb: np.ndarray, vocab: Vocabulary, *, prob_threshold: float | None = None,
                image_id: str | None = None, trace: bool = False) -> Segmentation:
        """Segment one image.

        Returns:
            ``scores`` (C, H, W): the final scores at S x S (eval: softmax over classes of the
            gated cosines; notebook: the gated cosines) nearest-resized to the image size the
            way the labels are (eval: OpenCV ``INTER_NEAREST``, as ``combine_predictions``,
            ``src/semseg/evaluate.py`` L55-56 at 3c6d4d0; notebook: torch nearest, ``demo.ipynb``
            L66), so their argmax is ``labels``. ``prob_threshold`` (no official use) sends pixels
            whose top score is below it to background. ``trace``: ``input`` (S, S, 3) uint8 working
            image, ``text`` (C, E), ``patch_embeds`` / ``patch_logits`` per scale, ``scale_maps`` and
            ``clip_map`` (C, S, S), ``found_logits``, ``saliency`` (S, S) (absent without saliency),
            ``gated_logits``, ``work_scores`` (C, S, S) final scores and ``work_labels`` (S, S) at S x S.
        """
        h, w = rgb.shape[:2]
        if self.label_short_side is not None:
            h, w = label_size(h, w, self.label_short_side)
        nb = self.notebook_input(rgb) if self.variant == "notebook" else None
        work = _to_byte(nb) if nb is not None else self.working_image(rgb)
        text = self.text_embeddings(vocab)
        embeds = self.patch_embeddings(work)
        merged, maps = self.clip_map(embeds, text)
        out: dict[str, Any] = {"input": work, "text": text, "patch_embeds": embeds,
                               "patch_logits": [e @ text.T for e in embeds], "scale_maps": maps, "clip_map": merged}
        scores = merged
        if self.saliency is not None:
            sal = self.saliency_map(rgb, nb)
            out.update(sal)
            s = sal["saliency"][None]
            gate = torch.cat([1 - s, s.expand(len(vocab) - 1, -1, -1)], dim=0)
            scores = merged * gate
            out["gated_logits"] = scores
        if self.variant == "eval":
            scores = scores.softmax(dim=0)
        out["work_scores"] = scores
        out["work_labels"] = scores.argmax(dim=0)
        rule = "cv2" if self.variant == "eval" else "torch"
        rows = torch.from_numpy(nearest_index(self.img_size, h, rule)).to(self.device)
        cols = torch.from_numpy(nearest_index(self.img_size, w, rule)).to(self.device)
        full = scores[:, rows][:, :, cols].float().contiguous()
        labels = out["work_labels"][rows][:, cols].long().contiguous()
        if prob_threshold is not None and prob_threshold > 0:
            labels[full.max(dim=0).values < prob_threshold] = 0
        return Segmentation(full, labels, settings={"prob_threshold": prob_threshold}, trace=out if trace else {})

    @property
    def score_kind(self) -> str:
        return "probability" if self.variant == "eval" else "cosine"

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "model": self.clip.name, "pretrained": self.clip.pretrained,
                "variant": self.variant,
                "img_size": self.img_size, "patch_sizes": list(self.patch_sizes),
                "stride_divisor": self.stride_divisor, "patch_weights": list(self.patch_weights),
                "templates": list(TEMPLATES), "saliency": self.saliency is not None,
                "saliency_model": self.saliency.name if self.saliency is not None else None,
                "saliency_pretrained": self.saliency.pretrained if self.saliency is not None else None,
                "saliency_max_side": self.saliency_max_side, "batch_size": self.batch_size,
                "label_short_side": self.label_short_side}


def _to_byte(x01: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8 by ``x.mul(255).byte()`` (truncation, as
    torchvision ``ToPILImage``)."""
    return np.ascontiguousarray(x01.mul(255).byte().permute(1, 2, 0).cpu().numpy())
