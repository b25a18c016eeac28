"""Shared machinery of the two-stage methods (ZSSeg / SimSeg and ZegFormer): class-agnostic mask
proposals classified by CLIP.

* detectron2's test resize (``ResizeShortestEdge`` + Pillow bilinear on uint8) and image reading;
* ZSSeg's region crops (``MaskFormerClipAdapter._preprocess_image`` + ``crop_with_mask``): tight box of the
  binarised mask (x2 / y2 exclusive), crop of the unpadded 0-255 image, outside-mask pixels set to the
  CLIP mean colour, CLIP normalisation, bicubic resize to 224 per crop;
* ZegFormer's region crops (``MaskFormer.forward``, ``CLIP_CLS_STYLE cropmask``): box from cumulative
  sums on the padded grid (inclusive last index; zero-area boxes -> whole padded image), masked
  CLIP-normalised image, ``torchvision.ops.roi_align(224, aligned=True)``;
* prompt sets: ZSSeg learned prefix prompts (``LearnablePromptExtractor``), ViLD's 14 templates,
  single prompts; ZegFormer's template x synonym averaging (``zeroshot_classifier``) with its 1 / 8 / 32
  template sets;
* a training-free path: masks from another class-agnostic generator (a callable, or a transformers
  ``mask-generation`` pipeline such as SAM) classified by the same CLIP stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..backbones.clip import LoadedCLIP, load_clip
from ..backbones.vit_dense import encode_image
from ..checkpoints import load_into
from ..constants import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN_255, IMAGENET_STD_255, VILD_TEMPLATES
from ..errors import InputError, ModelLoadError
from ..imageio import d2_resize
from ..models.maskformer import MaskFormerV1
from ..protocols import Protocol
from ..segmenter import Capabilities, Segmenter
from ..text import class_embeddings, group_embeddings
from ..vocabulary import Vocabulary, packaged_class_file

__all__ = ["VILD_TEMPLATES", "IMAGENET_MEAN_255", "IMAGENET_STD_255"]

#: ZSSeg default ``PREDEFINED_PROMPT_TEMPLATES`` ("single prompt" configs).
ZSSEG_SINGLE_TEMPLATES: tuple[str, ...] = ("a sculpture of a {}.",)
#: ZegFormer ``PROMPT_ENSEMBLE_TYPE single``.
ZEGFORMER_SINGLE_TEMPLATES: tuple[str, ...] = ("A photo of a {} in the scene",)
#: ZegFormer ``IMAGENET_TEMPLATES_SELECT`` (``PROMPT_ENSEMBLE_TYPE imagenet_select``).
ZEGFORMER_SELECT_TEMPLATES: tuple[str, ...] = (
    "itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.", "a {} in a video game.",
    "art of the {}.", "a photo of the small {}.", "A photo of a {} in the scene",
)
#: ZegFormer ``IMAGENET_TEMPLATES_SELECT_CLIP``: the 32 templates of the CLIP crop classifier.
ZEGFORMER_CLIP_TEMPLATES: tuple[str, ...] = (
    "a bad photo of the {}.", "a photo of the large {}.", "a photo of the small {}.", "a cropped photo of a {}.",
    "This is a photo of a {}", "This is a photo of a small {}", "This is a photo of a medium {}",
    "This is a photo of a large {}",
    "This is a masked photo of a {}", "This is a masked photo of a small {}", "This is a masked photo of a medium {}",
    "This is a masked photo of a large {}",
    "This is a cropped photo of a {}", "This is a cropped photo of a small {}",
    "This is a cropped photo of a medium {}", "This is a cropped photo of a large {}",
    "A photo of a {} in the scene", "a bad photo of the {} in the scene", "a photo of the large {} in the scene",
    "a photo of the small {} in the scene", "a cropped photo of a {} in the scene",
    "a photo of a masked {} in the scene", "There is a {} in the scene", "There is the {} in the scene",
    "This is a {} in the scene", "This is the {} in the scene", "This is one {} in the scene",
    "There is a masked {} in the scene", "There is the masked {} in the scene", "This is a masked {} in the scene",
    "This is the masked {} in the scene", "This is one masked {} in the scene",
)


# ---------------------------------------------------------------------------------------------- input

# ---------------------------------------------------------------------------------- ZSSeg crops

def tight_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight boxes of non-empty binary masks, detectron2 ``BitMasks.get_bounding_boxes``.

    Args:
        masks: bool (V, h, w), every mask non-empty.

    Returns:
        int64 (V, 4) (x1, y1, x2, y2) with x2 / y2 exclusive (last column / row + 1).
    """
    if masks.numel() == 0:
        return torch.zeros(0, 4, dtype=torch.int64)
    cols = masks.any(dim=1)
    rows = masks.any(dim=2)
    w, h = masks.shape[2], masks.shape[1]
    ar_w = torch.arange(w, device=masks.device)
    ar_h = torch.arange(h, device=masks.device)
    x1 = torch.where(cols, ar_w, w).amin(dim=1)
    x2 = torch.where(cols, ar_w, -1).amax(dim=1) + 1
    y1 = torch.where(rows, ar_h, h).amin(dim=1)
    y2 = torch.where(rows, ar_h, -1).amax(dim=1) + 1
    return torch.stack([x1, y1, x2, y2], dim=1).long()


def zsseg_fill_and_norm(device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(fill, mean, std) of the ZSSeg crops, each float32 (3,): fill = float32(255.0 * c) computed in
    double (``crop_with_mask`` ``new_full(fill_value=255.0 * c)``), mean / std = float32(c) * 255 in
    float32 (the adapter's buffers); the two may differ by one ulp (README quirk 4)."""
    fill = torch.tensor([255.0 * c for c in CLIP_MEAN], dtype=torch.float32, device=device)
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32, device=device) * 255.0
    std = torch.tensor(CLIP_STD, dtype=torch.float32, device=device) * 255.0
    return fill, mean, std


def zsseg_crops(image: torch.Tensor, masks: torch.Tensor, boxes: torch.Tensor, size: int = 224) -> torch.Tensor:
    """ZSSeg region inputs: masked box crops with mean-colour fill, CLIP-normalised, bicubic to ``size``.

    Args:
        image: float32 (3, h, w) RGB 0-255 (the resized, unpadded image).
        masks: bool (V, h, w) hard masks (``MASK_MATTING False``).
        boxes: int (V, 4) from :func:`tight_boxes`.

    Returns:
        float32 (V, 3, size, size).
    """
    fill, mean, std = zsseg_fill_and_norm(image.device)
    out = []
    for m, (x1, y1, x2, y2) in zip(masks, boxes.tolist()):
        m = m[y1:y2, x1:x2].to(image.dtype)[None]
        region = image[:, y1:y2, x1:x2] * m + (1 - m) * fill.view(3, 1, 1).expand(3, y2 - y1, x2 - x1)
        region = (region[None] - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
        out.append(F.interpolate(region, size=(size, size), mode="bicubic"))
    if not out:
        return image.new_zeros(0, 3, size, size)
    return torch.cat(out)


# ------------------------------------------------------------------------------ ZegFormer crops

def zegformer_boxes(masks: torch.Tensor) -> torch.Tensor:
    """ZegFormer boxes on the padded grid: x_min = first non-empty column, x_max = **last** non-empty
    column (inclusive index, from the argmax of the cumulative column counts), same for rows; a box of zero
    area ((y_max - y_min) * (x_max - x_min) == 0: empty mask, one-pixel strip) becomes the whole padded
    image (0, 0, wp, hp).

    Args:
        masks: bool (Q, hp, wp).

    Returns:
        float32 (Q, 4) (x1, y1, x2, y2) as passed to ``roi_align``.
    """
    q, hp, wp = masks.shape
    cum_x = torch.cumsum(masks.sum(dim=1), dim=1).float()
    xmax = torch.argmax(cum_x, dim=1, keepdim=True)
    cum_x[cum_x == 0] = float("inf")
    xmin = torch.argmin(cum_x, dim=1, keepdim=True)
    cum_y = torch.cumsum(masks.sum(dim=2), dim=1).float()
    ymax = torch.argmax(cum_y, dim=1, keepdim=True)
    cum_y[cum_y == 0] = float("inf")
    ymin = torch.argmin(cum_y, dim=1, keepdim=True)
    area = (ymax - ymin) * (xmax - xmin)
    full = area == 0
    ymax[full], ymin[full], xmax[full], xmin[full] = hp, 0, wp, 0
    return torch.cat((xmin, ymin, xmax, ymax), dim=1).float()


def zegformer_crops(clip_input: torch.Tensor, masks: torch.Tensor, boxes: torch.Tensor,
                    size: int = 224) -> torch.Tensor:
    """ZegFormer ``cropmask`` inputs: ``roi_align(clip_input * mask, box, size, aligned=True)`` per query.

    Args:
        clip_input: float32 (3, hp, wp) CLIP-normalised, zero-padded image.
        masks: bool (Q, hp, wp).
        boxes: float32 (Q, 4) from :func:`zegformer_boxes`.

    Returns:
        float32 (Q, 3, size, size).
    """
    from torchvision.ops import roi_align

    masked = clip_input[None] * masks[:, None].to(clip_input.dtype)
    rois = torch.cat([torch.arange(len(boxes), dtype=boxes.dtype, device=boxes.device)[:, None], boxes], dim=1)
    return roi_align(masked, rois, size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def zegformer_plain_crops(clip_input: torch.Tensor, boxes: torch.Tensor, size: int = 224) -> torch.Tensor:
    """ZegFormer ``CLIP_CLS_STYLE crop`` inputs: ``roi_align`` of the unmasked CLIP input per box
    (``mask_former_model.py`` ``box_images = roi_align(clip_images_repeat, boxes_list, 224, aligned=True)``).

    Args:
        clip_input: float32 (3, hp, wp) CLIP-normalised, zero-padded image.
        boxes: float32 (Q, 4) from :func:`zegformer_boxes`.

    Returns:
        float32 (Q, 3, size, size).
    """
    from torchvision.ops import roi_align

    rois = torch.cat([torch.zeros(len(boxes), 1, dtype=boxes.dtype, device=boxes.device), boxes], dim=1)
    return roi_align(clip_input[None], rois, size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def zegformer_masked_images(clip_input: torch.Tensor, mask_logits: torch.Tensor, size: int = 224) -> torch.Tensor:
    """ZegFormer ``CLIP_CLS_STYLE mask`` inputs: the whole padded CLIP input resized to ``size`` (bilinear)
    times each query's mask, itself resized to ``size`` from the padded-size logits and binarised at
    sigmoid 0.5 (``mask_former_model.py``: ``images_tensor = F.interpolate(clip_images.tensor, (224, 224))``,
    ``masked_image_tensors = images_tensor.unsqueeze(1) * (mask_pred_results_224.sigmoid() > 0.5)``).

    Args:
        clip_input: float32 (3, hp, wp) CLIP-normalised, zero-padded image.
        mask_logits: float32 (Q, hp, wp) mask logits at the padded size.

    Returns:
        float32 (Q, 3, size, size).
    """
    image = F.interpolate(clip_input[None], size=(size, size), mode="bilinear", align_corners=False)
    masks = F.interpolate(mask_logits[None], size=(size, size), mode="bilinear", align_corners=False)[0]
    return image * (masks.sigmoid() > 0.5)[:, None].to(image.dtype)


# ---------------------------------------------------------------------------------- text side

def template_embeddings(clip: LoadedCLIP, names: Sequence[str], templates: Sequence[str],
                        split_synonyms: bool = False, use_cache: bool = True) -> torch.Tensor:
    """Text classifier averaged over templates (and synonyms), cached on disk (``ovss.text.cache_dir``).

    ``split_synonyms=False`` (ZSSeg ``PredefinedPromptExtractor``): per template encode, L2-normalise,
    mean over templates, L2-normalise; a name such as "road, route" is one string
    (:func:`ovss.text.class_embeddings`).
    ``split_synonyms=True`` (ZegFormer ``zeroshot_classifier``): a name with ``", "`` gives every template x
    every synonym; all are L2-normalised and averaged together, then L2-normalised
    (:func:`ovss.text.group_embeddings`).

    Returns:
        float32 (C, D), on the CLIP model's device.
    """
    if split_synonyms:
        groups = [name.split(", ") if ", " in name else [name] for name in names]
        return group_embeddings(clip, groups, templates, use_cache=use_cache)
    return class_embeddings(clip, names, templates, use_cache=use_cache)


class LearnablePrompts(nn.Module):
    """ZSSeg's learned prompts (``LearnablePromptExtractor``, CoOp-style): per class name the sequence
    [SOT, prefix (n, D), name token embeddings, suffix (m, D), ".", EOT] padded with the token-0 embedding
    to the context length, through CLIP's text transformer; the feature is taken at the EOT position.

    Buffers ``start_signal`` / ``dot_signal`` / ``end_signal`` / ``pad_signal`` (1, D) are CLIP token
    embeddings of ``tokenize("X.")`` at positions 0, 2, 3, 4 (checkpoints store them).
    """

    def __init__(self, clip: LoadedCLIP, n_prefix: int = 16, n_suffix: int = 0) -> None:
        super().__init__()
        width = clip.model.token_embedding.weight.shape[1]
        self.prefix_prompt = nn.Parameter(torch.randn(n_prefix, width) * 0.02) if n_prefix else None
        self.suffix_prompt = nn.Parameter(torch.randn(n_suffix, width) * 0.02) if n_suffix else None
        tokens = clip.tokenizer(["X."]).to(clip.model.token_embedding.weight.device)
        with torch.no_grad():
            emb = clip.model.token_embedding(tokens)[0].float()
        self.register_buffer("start_signal", emb[0:1].clone())
        self.register_buffer("dot_signal", emb[2:3].clone())
        self.register_buffer("end_signal", emb[3:4].clone())
        self.register_buffer("pad_signal", emb[4:5].clone())

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load ``prefix_prompt`` etc. from a checkpoint's ``clip_adapter.prompt_learner.*`` entries.

        Raises:
            ModelLoadError: missing prompts or a width that does not fit the CLIP text tower.
        """
        for name in ("prefix_prompt", "suffix_prompt", "start_signal", "dot_signal", "end_signal", "pad_signal"):
            own = getattr(self, name)
            if own is None:
                if name in tensors:
                    raise ModelLoadError(f"the checkpoint has learned '{name}' but the config's PROMPT_SHAPE "
                                         "has none: pass the matching --config")
                continue
            if name not in tensors:
                if name.endswith("_prompt"):
                    raise ModelLoadError(f"the checkpoint has no learned prompts ('{name}'): use a "
                                         "template prompt set (prompt='vild') or a checkpoint with prompts")
                continue
            t = tensors[name].to(own.device, torch.float32)
            if t.shape != own.shape:
                raise ModelLoadError(f"learned prompt '{name}' is {tuple(t.shape)} but this CLIP needs "
                                     f"{tuple(own.shape)}: the checkpoint and the CLIP model do not match")
            with torch.no_grad():
                own.copy_(t)

    def forward(self, clip: LoadedCLIP, names: Sequence[str]) -> torch.Tensor:
        """L2-normalised text features (C, E) of ``names``."""
        model = clip.model
        device = self.start_signal.device
        ctx = model.positional_embedding.shape[0]
        tokens = clip.tokenizer(list(names)).to(device)
        lengths = (tokens != 0).sum(dim=1) - 2  # name tokens between SOT and EOT
        with torch.no_grad():
            tok_emb = model.token_embedding(tokens).float()
        prefix = [self.start_signal] + ([self.prefix_prompt] if self.prefix_prompt is not None else [])
        suffix = ([self.suffix_prompt] if self.suffix_prompt is not None else []) + [self.dot_signal,
                                                                                     self.end_signal]
        prefix_t, suffix_t = torch.cat(prefix), torch.cat(suffix)
        seqs, eot = [], []
        for i, n in enumerate(lengths.tolist()):
            length = len(prefix_t) + n + len(suffix_t)
            if length > ctx:
                raise InputError(f"class name {names[i]!r} is too long for the learned prompts "
                                 f"({length} > {ctx} tokens)")
            seqs.append(torch.cat([prefix_t, tok_emb[i, 1:1 + n], suffix_t, self.pad_signal.expand(ctx - length, -1)]))
            eot.append(length - 1)
        x = torch.stack(seqs) + model.positional_embedding.float()
        x = model.transformer(x, attn_mask=model.attn_mask)
        x = model.ln_final(x)
        x = x[torch.arange(x.shape[0], device=device), torch.tensor(eot, device=device)] @ model.text_projection
        return x / x.norm(dim=-1, keepdim=True)


# ---------------------------------------------------------------------------------- image side

def clip_image_features(clip: LoadedCLIP, crops: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """CLIP image embeddings (N, E) of (N, 3, 224, 224) normalised crops (CLS -> ln_post -> proj), not
    normalised."""
    if len(crops) == 0:
        return crops.new_zeros(0, clip.model.text_projection.shape[-1])
    return torch.cat([encode_image(clip.model.visual, crops[i:i + batch_size]).float()
                      for i in range(0, len(crops), batch_size)])


# ------------------------------------------------------------------------------ training-free path

MaskGenerator = Callable[[np.ndarray], Any]


def mask_generator(spec: str | MaskGenerator, device: str | torch.device = "cpu", **kwargs: Any) -> MaskGenerator:
    """A class-agnostic mask generator: image (H, W, 3) uint8 -> bool (N, H, W) masks.

    Args:
        spec: a callable (returned as is), or a transformers model id / local folder for the
            ``mask-generation`` pipeline (e.g. ``"facebook/sam-vit-base"``); ``kwargs`` go to the pipeline
            call (``points_per_batch``, ``pred_iou_thresh``, ...).

    Raises:
        ModelLoadError: the pipeline cannot be built (weights not downloadable, unknown id).
    """
    if callable(spec):
        return spec
    if not isinstance(spec, str) or not spec:
        raise InputError("proposals must be 'maskformer', a callable returning (N, H, W) masks, or a "
                         "transformers mask-generation model id such as 'facebook/sam-vit-base'")
    try:
        from transformers import pipeline

        pipe = pipeline("mask-generation", model=spec, device=torch.device(device))
    except Exception as exc:
        raise ModelLoadError(f"cannot build the mask generator {spec!r}: {exc.__class__.__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}. Download the model and pass its "
                             "local folder") from None

    def generate(image: np.ndarray) -> np.ndarray:
        out = pipe(Image.fromarray(image), **kwargs)
        masks = [np.asarray(m, dtype=bool) for m in out["masks"]]
        if not masks:
            return np.zeros((0,) + image.shape[:2], dtype=bool)
        return np.stack(masks)

    return generate


def proposal_masks(generator: MaskGenerator, image: np.ndarray) -> torch.Tensor:
    """Run ``generator`` on (h, w, 3) uint8 and check its output: bool (N, h, w).

    Raises:
        InputError: the generator returned something that is not (N, h, w).
    """
    masks = generator(image)
    masks = torch.as_tensor(np.asarray(masks)) if not isinstance(masks, torch.Tensor) else masks
    if masks.ndim != 3 or tuple(masks.shape[1:]) != tuple(image.shape[:2]):
        raise InputError(f"the mask generator must return (N, {image.shape[0]}, {image.shape[1]}) masks, "
                         f"got shape {tuple(masks.shape)}")
    return masks.bool().cpu()


# ------------------------------------------------------------------------------ the shared method base

@dataclass(frozen=True)
class TwoStageProtocol(Protocol):
    """One official evaluation setting of a two-stage method (a ``configs/**/*_eval.yaml`` or
    ``cross_dataset_test_only.yaml``).

    Attributes:
        config: the official config file of the row.
        prompt: prompt set of the text classifier.
        train_classes: class file of the training vocabulary whose classes, minus ``unseen``, count
            as seen (the zero-shot split); None where every class counts as unseen (cross-dataset).
        unseen: the unseen classes of the split (whole class strings).
        class_file: ``"<family>/<file>"`` (one class per line, synonyms kept as one ``", "``-joined
            string) or ``"dataset:<name>"`` for ovss's benchmark list (``ovss/data/dataset_classes.json``).
    """

    config: str = ""
    prompt: str = ""
    train_classes: str | None = None
    unseen: tuple[str, ...] = ()

    def vocabulary(self) -> Vocabulary | None:
        """The class list; display names are the whole lines, the synonyms of a line (``", "``) its queries."""
        if self.class_file is None:
            return None
        lines = class_lines(self.class_file)
        return Vocabulary(tuple(lines), tuple(tuple(n.split(", ")) for n in lines), None, official=True)

    def seen_names(self) -> frozenset[str]:
        """Whole class strings that count as seen (trained) classes."""
        if self.train_classes is None:
            return frozenset()
        return frozenset(n for n in class_lines(self.train_classes) if n not in set(self.unseen))


def class_lines(spec: str) -> list[str]:
    """Lines of a packaged class file ``"<family>/<file>"``, or the benchmark list ``"dataset:<name>"``."""
    if spec.startswith("dataset:"):
        import json
        from importlib import resources

        text = resources.files("ovss").joinpath("data/dataset_classes.json").read_text(encoding="utf-8")
        return list(json.loads(text)[spec.split(":", 1)[1]])
    family, name = spec.split("/", 1)
    text = packaged_class_file(family, name).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def class_strings(vocab: Vocabulary) -> list[str]:
    """One string per class, its synonyms joined with ``", "`` (the detectron2 ADE convention both
    official codes use: ZSSeg encodes the string whole, ZegFormer averages over its synonyms)."""
    return [", ".join(q) for q in vocab.queries]


class TwoStageSegmenter(Segmenter):
    """What ZSSeg and ZegFormer share: the CLIP, the released MaskFormer checkpoint (or a training-free
    mask generator), detectron2's test input, seen/unseen classes, settings.

    Args:
        model, pretrained: the CLIP (official: "ViT-B-16" / "openai").
        checkpoint: the released ``.pth`` (or one written by ovss training); required unless
            ``proposals`` names another mask generator.
        config: the checkpoint's architecture config (official YAML or dotted-key JSON); None = the
            released sizes. An official eval config also overrides the protocol with the inference
            keys it sets (test size, prompt set, ensemble settings); explicit arguments win.
        proposals: "maskformer" (default), or a class-agnostic mask generator (a callable image ->
            (N, h, w) bool masks, or a transformers mask-generation model id such as a SAM checkpoint
            folder): training-free, masks classified by the CLIP crop stage only.
        proposal_options: keyword arguments of the transformers mask-generation pipeline call
            (``points_per_batch``, ``pred_iou_thresh``, ...).
        use_cache: use the on-disk text-embedding cache.
        **common: dataset, device, short_side, max_long_side, classes: see :class:`ovss.segmenter.Segmenter`.

    Raises:
        UnknownNameError: unknown dataset or prompt set.
        ModelLoadError: missing / wrong checkpoint, or a CLIP that does not fit it.
    """

    capabilities = Capabilities(decoder="pillow", trainable=True, score_kind="mask_classification")
    #: the method's name in messages ("ZSSeg", "ZegFormer")
    title: str = ""

    def __init__(self, model: str = "ViT-B-16", pretrained: str | None = "openai", *,
                 checkpoint: str | Path | None = None, config: str | Path | dict[str, Any] | None = None,
                 proposals: str | Callable[..., Any] = "maskformer", proposal_options: dict[str, Any] | None = None,
                 use_cache: bool = True, **common: Any) -> None:
        super().__init__(**common)
        self.weights = self.read_checkpoint(checkpoint, config) if checkpoint is not None else None
        # an official eval config's explicit inference keys apply over the protocol; arguments win
        self.config_settings: dict[str, Any] = dict(self.weights.settings) if self.weights is not None else {}
        base = self.protocols.get(self.dataset)
        cfg = self.config_settings
        self.protocol = self.protocol.with_overrides(
            short_side=int(common.get("short_side") or cfg.get("short_side") or base.short_side),
            max_long_side=int(common.get("max_long_side") or cfg.get("max_long_side") or base.max_long_side))
        self.use_cache = use_cache
        self.model_name, self.pretrained = model, pretrained
        self.checkpoint = str(checkpoint) if checkpoint else None
        self.clip: LoadedCLIP = load_clip(model, pretrained, self.device)
        self.check_clip()
        self.generator = (None if proposals == "maskformer"
                          else mask_generator(proposals, self.device, **(proposal_options or {})))
        self.maskformer: MaskFormerV1 | None = None
        if self.weights is None:
            if self.generator is None:
                raise ModelLoadError(f"{self.title} needs its checkpoint: pass checkpoint=PATH (--checkpoint) with the "
                                     "released .pth (see docs/two_stage.md), or proposals=<mask generator>")
        else:
            net = MaskFormerV1(self.weights.config)
            try:
                load_into(net, self.weights.maskformer, f"{self.title} checkpoint {self.weights.source}")
            except ModelLoadError as exc:
                raise ModelLoadError(f"{exc}; without --config the released {self.title} sizes are assumed: pass the "
                                     "checkpoint's config (official YAML or dotted-key JSON) with config=... / "
                                     "--config") from None
            self.maskformer = net.to(self.device).eval()
        self._seen = self.protocol.seen_names()

    def read_checkpoint(self, checkpoint: str | Path, config: str | Path | dict[str, Any] | None) -> Any:
        """The method's checkpoint reader (weights, MaskFormer config, inference settings)."""
        raise NotImplementedError

    def check_clip(self) -> None:
        """Refuse a CLIP the method cannot use, before the MaskFormer loads (default: any).

        Raises:
            ModelLoadError: a CLIP of the wrong width.
        """

    def seen_flags(self, names: Sequence[str]) -> torch.Tensor:
        """bool (C,): which whole class strings are seen classes of the protocol's split."""
        return torch.tensor([n in self._seen for n in names], dtype=torch.bool, device=self.device)

    def network_input(self, rgb: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
        """detectron2's test resize: (resized (h, w, 3) uint8, (3, h, w) uint8 tensor on the device)."""
        resized = d2_resize(rgb, self.short_side, self.max_long_side)
        return resized, torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1))).to(self.device)

    def imagenet_input(self, img: torch.Tensor) -> torch.Tensor:
        """(3, h, w) uint8 -> (3, h, w) float32 ImageNet-normalised MaskFormer input (``MODEL.PIXEL_MEAN/STD``)."""
        mean = torch.tensor(IMAGENET_MEAN_255, device=self.device).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD_255, device=self.device).view(3, 1, 1)
        return (img.float() - mean) / std

    @staticmethod
    def to_original(semseg: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(C, h, w) -> (C, H, W) bilinear (detectron2 ``sem_seg_postprocess``'s final resize)."""
        return F.interpolate(semseg[None], size=tuple(size), mode="bilinear", align_corners=False)[0]

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "model": self.model_name, "pretrained": str(self.pretrained),
                "checkpoint": self.checkpoint, "short_side": self.short_side, "max_long_side": self.max_long_side,
                "proposals": "maskformer" if self.generator is None else "external"}
