"""ZegFormer (Ding et al., CVPR 2022, "Decoupling Zero-Shot Semantic Segmentation").

Official code: dingjiansw101/ZegFormer (``mask_former/mask_former_model.py`` ``MaskFormer.forward``,
``modeling/transformer/transformer_zeroshot_predictor.py``). Inference (``*_gzss_eval.yaml``), float32:

1. detectron2 test resize; MaskFormer input ImageNet-normalised, CLIP input normalised with
   ``CLIP_PIXEL_MEAN`` / ``CLIP_PIXEL_STD``, both zero-padded to /32;
2. MaskFormer v1 (R101, basic stem): per query ``x = normalize(projection_layer(h))``, segment logits
   ``[s x @ T_seg.T, s x @ bg_feature.T]`` (s = exp(logit_scale) = 100, ``bg_feature`` unnormalised);
   T_seg from the segment prompt set, averaged over templates x synonyms (``", "``-separated);
3. mask logits upsampled (bilinear) to the padded size; binary = sigmoid > 0.5 on the padded grid;
4. per query: box from the binary mask (inclusive last index; zero-area -> whole padded image),
   ``roi_align(clip_input * mask, box, 224, aligned=True)``, CLIP ``encode_image``;
5. CLIP logits ``exp(clip logit_scale) * cos(f, T_clip)`` (32 templates) with the segment classifier's
   background logit appended; softmax; background column dropped;
6. ensemble (lambda = 2/3): p_seg = softmax(segment logits)[:, :C]; p_clip on seen columns replaced by its
   mean over the seen columns; seen ``p_seg^(2/3) p_clip^(1/3)``, unseen ``p_seg^(1/3) p_clip^(2/3)``;
7. ``sum_q p * sigmoid(mask)`` on the padded grid, cropped, bilinear to the photo's size, minus
   ``GZERO_CALIBRATE`` on the seen classes.

The official GPU run casts CLIP to fp16 (the released numbers carry that rounding); ovss computes in
float32, which is what the parity fixtures hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..backbones.clip import LoadedCLIP, load_clip
from ..checkpoints import load_into
from ..errors import InputError, ModelLoadError, UnknownNameError, did_you_mean
from ..imageio import ImageInput, d2_resize, read_image_d2
from ..importers.zegformer import ZEGFORMER_EMBED_DIM, load_zegformer_checkpoint
from ..models.maskformer import MaskFormerV1, pad_to_divisible
from ..segmenter import SegmentationResult, Segmenter, check_test_size
from ..vocabulary import ClassesInput, Vocabulary, packaged_class_file
from . import two_stage as ts
from .zsseg import COCO_STUFF_UNSEEN, vocabulary_names

LAMBDA = 2.0 / 3.0  # hard-coded ``lambda_balance``


@dataclass(frozen=True)
class ZegFormerProtocol:
    """One official evaluation setting (``configs/<dataset>/*_gzss_eval.yaml``)."""

    name: str
    config: str
    class_file: str  # "<family>/<file>" under ovss/classnames/, in the dataset's label order
    unseen: tuple[str, ...]  # metadata ``val_extra_classes``
    prompt: str  # PROMPT_ENSEMBLE_TYPE of the segment classifier: single, imagenet_select, imagenet
    ensembling: bool  # MASK_FORMER.ENSEMBLING
    gzero_calibrate: float  # MASK_FORMER.GZERO_CALIBRATE
    short_side: int
    max_long_side: int


PROTOCOLS: dict[str, ZegFormerProtocol] = {
    "coco_stuff": ZegFormerProtocol("coco_stuff", "coco-stuff/zegformer_R101_bs32_60k_vit16_coco-stuff_gzss_eval.yaml",
                                    "zsseg/coco_stuff_171.txt", COCO_STUFF_UNSEEN, "single", True, 0.1, 640, 2560),
    # ``datasets/pascal/create_voc_class_names_json.py``: 15 seen + 5 unseen, "potted plant" spelt with a space
    "voc20": ZegFormerProtocol("voc20", "pascal_voc/zegformer_R101_bs32_10k_vit16_voc_gzss_eval.yaml",
                               "zegformer/voc20.txt", ("potted plant", "sheep", "sofa", "train", "tvmonitor"),
                               "single", True, 0.1, 512, 2048),
}
ALIASES = {"coco_stuff_171": "coco_stuff", "cocostuff": "coco_stuff", "voc": "voc20", "pascal_voc": "voc20"}
SEGMENT_TEMPLATES = {"single": ts.ZEGFORMER_SINGLE_TEMPLATES, "imagenet_select": ts.ZEGFORMER_SELECT_TEMPLATES}


def get_protocol(dataset: str) -> ZegFormerProtocol:
    """Raises UnknownNameError for a dataset without a ZegFormer protocol."""
    key = ALIASES.get(dataset, dataset)
    if key not in PROTOCOLS:
        raise UnknownNameError(f"ZegFormer has no protocol for dataset {dataset!r}."
                               f"{did_you_mean(dataset, list(PROTOCOLS))} Available: {', '.join(PROTOCOLS)}; "
                               "or pass classes=... with dataset='coco_stuff'")
    return PROTOCOLS[key]


def zegformer_ensemble(pred_logits: torch.Tensor, clip_logits: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """ZegFormer's ensemble (``MaskFormer.forward``, ``ENSEMBLING True``).

    Args:
        pred_logits: (Q, C+1) segment-classifier logits, last = background.
        clip_logits: (Q, C+1) CLIP crop logits with the segment background logit appended.
        seen: bool (C,).

    Returns:
        (Q, C): seen ``p_seg^(2/3) * mean_seen(p_clip)^(1/3)``, unseen ``p_seg^(1/3) * p_clip^(2/3)``.
    """
    p_seg = F.softmax(pred_logits, dim=-1)[..., :-1]
    p_clip = F.softmax(clip_logits, dim=-1)[..., :-1]
    if seen.any():  # "remove the influence of clip on seen classes"
        p_clip[:, seen] = p_clip[:, seen].mean(dim=1, keepdim=True)
    probs = p_seg.clone()
    probs[:, seen] = torch.pow(p_seg[:, seen], LAMBDA) * torch.pow(p_clip[:, seen], 1 - LAMBDA)
    probs[:, ~seen] = torch.pow(p_seg[:, ~seen], 1 - LAMBDA) * torch.pow(p_clip[:, ~seen], LAMBDA)
    return probs


class ZegFormer(Segmenter):
    """ZegFormer: class-agnostic segments from a MaskFormer, classified by their queries and by CLIP on
    ROI-aligned masked crops, ensembled with CLIP's seen-class scores flattened, then calibrated.

    Args:
        model, pretrained: the CLIP (official: "ViT-B-16" / "openai"; it must have 512-d embeddings).
        checkpoint: the released ZegFormer ``.pth`` (or one written by ovss training); required unless
            ``proposals`` names another mask generator.
        config: the checkpoint's architecture config (official YAML or dotted-key JSON); None = released R101.
        dataset: protocol (``coco_stuff``: 156 -> 171 GZSS, single prompt, ensemble, gamma 0.1, 640 / 2560;
            ``voc20``: 15 -> 20 GZSS, single prompt, ensemble, gamma 0.1, 512 / 2048).
            With ``classes=`` at predict time a class is seen when it is one of the protocol's seen classes.
        short_side, max_long_side: override the test size. An official eval config passed as ``config``
            also overrides the protocol with the inference keys it sets (``GZERO_CALIBRATE``,
            ``ENSEMBLING``, ``PROMPT_ENSEMBLE_TYPE``, ``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``).
        device: torch device.
        prompt: segment prompt set override ("single", "imagenet_select", "imagenet").
        gzero_calibrate: override gamma (subtracted from seen-class scores).
        ensembling: override the ensemble (False: CLIP logits + background logit, softmax over queries'
            classes, as ``ENSEMBLING False``).
        proposals: "maskformer", or a class-agnostic mask generator (callable or transformers
            mask-generation model id): training-free, masks classified by the CLIP crop stage only.
        proposal_options: keyword arguments of the transformers mask-generation pipeline call.
        use_cache: use the on-disk text-embedding cache.
    """

    method = "zegformer"
    paper = "Ding et al., CVPR 2022 (ZegFormer)"
    protocol_table = PROTOCOLS

    def __init__(self, model: str = "ViT-B-16", pretrained: str = "openai", checkpoint: str | Path | None = None,
                 config: str | Path | dict[str, Any] | None = None, dataset: str = "coco_stuff",
                 short_side: int | None = None, max_long_side: int | None = None, device: str = "cpu", *,
                 prompt: str | None = None, gzero_calibrate: float | None = None, ensembling: bool | None = None,
                 proposals: str | Callable[..., Any] = "maskformer",
                 proposal_options: dict[str, Any] | None = None, use_cache: bool = True) -> None:
        super().__init__(device)
        check_test_size(short_side, max_long_side)
        self.protocol = get_protocol(dataset or "coco_stuff")
        weights = load_zegformer_checkpoint(checkpoint, config) if checkpoint is not None else None
        # an official eval config's explicit inference keys apply over the protocol; arguments win
        cfg = weights.settings if weights is not None else {}
        self.short_side = int(short_side or cfg.get("short_side") or self.protocol.short_side)
        self.max_long_side = int(max_long_side or cfg.get("max_long_side") or self.protocol.max_long_side)
        self.prompt = prompt or cfg.get("prompt") or self.protocol.prompt
        if self.prompt not in ("single", "imagenet_select", "imagenet"):
            raise UnknownNameError(f"unknown ZegFormer prompt set {self.prompt!r}: single, imagenet_select or imagenet")
        self.gamma = float(gzero_calibrate if gzero_calibrate is not None
                           else cfg.get("gamma", self.protocol.gzero_calibrate))
        self.ensembling = bool(ensembling if ensembling is not None else cfg.get("ensembling", self.protocol.ensembling))
        self.use_cache = use_cache
        self.model_name, self.pretrained = model, pretrained
        self.clip: LoadedCLIP = load_clip(model, pretrained, self.device)
        dim = self.clip.model.text_projection.shape[-1]
        if dim != ZEGFORMER_EMBED_DIM:
            raise ModelLoadError(f"ZegFormer needs a CLIP with {ZEGFORMER_EMBED_DIM}-d embeddings (ViT-B-16); "
                                 f"{model} has {dim}-d")
        self.checkpoint = str(checkpoint) if checkpoint else None
        self.generator = (None if proposals == "maskformer"
                          else ts.mask_generator(proposals, self.device, **(proposal_options or {})))
        self.maskformer: MaskFormerV1 | None = None
        if weights is None:
            if self.generator is None:
                raise ModelLoadError("ZegFormer needs its checkpoint: pass checkpoint=PATH (--checkpoint) with "
                                     "the released .pth (see docs/two_stage.md), or proposals=<mask generator>")
        else:
            w = weights
            net = MaskFormerV1(w.config)
            try:
                load_into(net, w.maskformer, f"ZegFormer checkpoint {w.source}")
            except ModelLoadError as exc:
                raise ModelLoadError(f"{exc}; without --config the released ZegFormer sizes are assumed: pass the "
                                     "checkpoint's config (official YAML or dotted-key JSON) with config=... / --config") from None
            self.maskformer = net.to(self.device).eval()
        path = packaged_class_file(*self.protocol.class_file.split("/"))
        self.protocol_names = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]

    def text_features(self, names: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(T_seg, T_clip), each (C, 512) normalised: segment prompts and the 32 CLIP-crop templates."""
        if self.prompt == "imagenet":
            from ..text import IMAGENET_TEMPLATES

            seg_t: Sequence[str] = IMAGENET_TEMPLATES
        else:
            seg_t = SEGMENT_TEMPLATES[self.prompt]
        t_seg = ts.template_embeddings(self.clip, names, seg_t, split_synonyms=True, use_cache=self.use_cache)
        t_clip = ts.template_embeddings(self.clip, names, ts.ZEGFORMER_CLIP_TEMPLATES, split_synonyms=True,
                                        use_cache=self.use_cache)
        return t_seg, t_clip

    def resolve_classes(self, classes: ClassesInput | Vocabulary | None) -> tuple[list[str], torch.Tensor]:
        """(names, seen flag (C,) bool); seen = not in the protocol's ``val_extra_classes`` and, for a user
        list, one of the protocol's classes."""
        if classes is None:
            names = list(self.protocol_names)
            seen = [n not in self.protocol.unseen for n in names]
        else:
            names = vocabulary_names(classes)
            known = set(self.protocol_names)
            seen = [n in known and n not in self.protocol.unseen for n in names]
        return names, torch.tensor(seen, dtype=torch.bool, device=self.device)

    @torch.no_grad()
    def run(self, image: ImageInput, classes: ClassesInput | Vocabulary | None = None) -> dict[str, Any]:
        """Every intermediate of one image: ``image`` uint8 (3, h, w), ``text_features_seg`` /
        ``text_features_clip`` (C, 512), ``pred_logits`` (Q, C+1), ``pred_masks`` (Q, hp/4, wp/4),
        ``mask_logits`` (Q, hp, wp), ``boxes`` (Q, 4), ``crops`` (Q, 3, 224, 224), ``clip_features`` (Q, 512),
        ``ensemble_probs`` (Q, C), ``sem_seg`` (C, H, W), ``names``, ``seen``."""
        rgb = read_image_d2(image)
        names, seen = self.resolve_classes(classes)
        resized = d2_resize(rgb, self.short_side, self.max_long_side)
        img = torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1))).to(self.device)
        h, w = img.shape[-2:]
        t_seg, t_clip = self.text_features(names)
        out: dict[str, Any] = {"image": img, "names": names, "seen": seen, "text_features_seg": t_seg,
                               "text_features_clip": t_clip}
        div = self.maskformer.cfg.size_divisibility if self.maskformer is not None else 32
        cmean = torch.tensor(ts.ZEGFORMER_CLIP_PIXEL_MEAN, device=self.device).view(3, 1, 1)
        cstd = torch.tensor(ts.ZEGFORMER_CLIP_PIXEL_STD, device=self.device).view(3, 1, 1)
        clip_input = pad_to_divisible((img.float() - cmean) / cstd, div)
        if self.generator is not None:
            return self._run_proposals(out, resized, clip_input, t_clip, rgb.shape[:2])
        assert self.maskformer is not None
        mean = torch.tensor(ts.PIXEL_MEAN, device=self.device).view(3, 1, 1)
        std = torch.tensor(ts.PIXEL_STD, device=self.device).view(3, 1, 1)
        x = pad_to_divisible((img.float() - mean) / std, div)[None]
        mf = self.maskformer(x)
        pred_logits = self.maskformer.predictor.classify(mf["class_features"][-1, 0], t_seg)
        pred_masks = mf["mask_logits"][-1, 0]
        masks = F.interpolate(pred_masks[None], size=x.shape[-2:], mode="bilinear", align_corners=False)[0]
        out.update(pred_logits=pred_logits, pred_masks=pred_masks, mask_logits=masks)
        binary = masks.sigmoid() > 0.5
        boxes = ts.zegformer_boxes(binary)
        crops = ts.zegformer_crops(clip_input, binary, boxes)
        feats = ts.clip_image_features(self.clip, crops)
        out.update(boxes=boxes, crops=crops, clip_features=feats)
        f = feats / feats.norm(dim=-1, keepdim=True)
        clip_logits = self.clip.model.logit_scale.exp() * f @ t_clip.t()
        clip_logits = torch.cat((clip_logits, pred_logits[:, -1:]), dim=1)
        if self.ensembling:
            probs = zegformer_ensemble(pred_logits, clip_logits, seen)
        else:  # official ENSEMBLING False: CLIP logits through the usual softmax / drop-background inference
            probs = F.softmax(clip_logits, dim=-1)[..., :-1]
        out["ensemble_probs"] = probs
        semseg = torch.einsum("qc,qhw->chw", probs, masks.sigmoid())[:, :h, :w]
        semseg = F.interpolate(semseg[None], size=tuple(rgb.shape[:2]), mode="bilinear", align_corners=False)[0]
        if self.gamma > 0:
            semseg[seen] = semseg[seen] - self.gamma
        out["sem_seg"] = semseg
        return out

    def _run_proposals(self, out: dict[str, Any], resized: np.ndarray, clip_input: torch.Tensor,
                       t_clip: torch.Tensor, size: tuple[int, int]) -> dict[str, Any]:
        masks = ts.proposal_masks(self.generator, resized).to(self.device)
        masks = masks[masks.flatten(1).any(dim=1)]
        h, w = resized.shape[:2]
        padded = torch.zeros((len(masks),) + tuple(clip_input.shape[-2:]), dtype=torch.bool, device=self.device)
        padded[:, :h, :w] = masks
        boxes = ts.zegformer_boxes(padded)
        crops = ts.zegformer_crops(clip_input, padded, boxes)
        feats = ts.clip_image_features(self.clip, crops)
        f = feats / feats.norm(dim=-1, keepdim=True) if len(feats) else feats
        probs = F.softmax(self.clip.model.logit_scale.exp() * f @ t_clip.t(), dim=-1)
        semseg = (torch.einsum("qc,qhw->chw", probs, masks.float()) if len(masks)
                  else torch.zeros((t_clip.shape[0], h, w), device=self.device))
        semseg = F.interpolate(semseg[None], size=tuple(size), mode="bilinear", align_corners=False)[0]
        out.update(proposal_masks=masks, boxes=boxes, clip_features=feats, ensemble_probs=probs, sem_seg=semseg)
        return out

    def predict(self, image: ImageInput, classes: ClassesInput | Vocabulary | None = None, *,
                background: list[str] | str | None = None,
                prob_threshold: float | None = None) -> SegmentationResult:
        """Segment one image; ``res.logits`` (C, H, W) = calibrated ensemble scores, ``res.labels`` argmax.

        Raises:
            InputError: unreadable image, bad class list, or ``background`` / ``prob_threshold`` (ZegFormer
                has no background class in its output).
        """
        if background is not None or prob_threshold is not None:
            raise InputError("ZegFormer has no background class: leave background and prob_threshold unset")
        out = self.run(image, classes)
        scores = out["sem_seg"].float().cpu()
        extras = {"seen": [bool(s) for s in out["seen"].tolist()]}
        return SegmentationResult(scores, scores.argmax(dim=0), list(out["names"]), None, self.settings(), extras)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "model": self.model_name, "pretrained": str(self.pretrained),
                "checkpoint": self.checkpoint, "dataset": self.protocol.name, "prompt": self.prompt,
                "gzero_calibrate": self.gamma, "ensembling": self.ensembling, "short_side": self.short_side,
                "max_long_side": self.max_long_side,
                "proposals": "maskformer" if self.generator is None else "external"}
