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
from typing import Any, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..constants import CLIP_MEAN_255_D2, CLIP_STD_255_D2
from ..errors import ModelLoadError, UnknownNameError
from ..importers.zegformer import ZEGFORMER_EMBED_DIM, ZegFormerWeights, load_zegformer_checkpoint
from ..models.maskformer import pad_to_divisible
from ..options import NonNegative
from ..protocols import ProtocolTable
from ..segmenter import Capabilities, Segmentation
from ..text import IMAGENET_TEMPLATES
from ..vocabulary import Vocabulary
from . import two_stage as ts
from .zsseg import COCO_STUFF_UNSEEN

LAMBDA = 2.0 / 3.0  # hard-coded ``lambda_balance``


@dataclass(frozen=True)
class ZegFormerProtocol(ts.TwoStageProtocol):
    """One official evaluation setting (``configs/<dataset>/*_gzss_eval.yaml``).

    Attributes:
        ensembling: ``MASK_FORMER.ENSEMBLING``.
        gzero_calibrate: ``MASK_FORMER.GZERO_CALIBRATE`` (gamma).
        prompt: ``PROMPT_ENSEMBLE_TYPE`` of the segment classifier (single, imagenet_select, imagenet).
    """

    ensembling: bool = True
    gzero_calibrate: float = 0.1


_COCO = "coco-stuff/zegformer_R101_bs32_60k_vit16_coco-stuff_gzss_eval.yaml"
_VOC = "pascal_voc/zegformer_R101_bs32_10k_vit16_voc_gzss_eval.yaml"
_ADE847 = "ade20k-full-847-freq/zegformer_R50_bs32_60k_vit16_ade20k-full-847-freq_gzss_eval.yaml"


def _row(dataset: str | None, config: str, class_file: str, unseen: tuple[str, ...], short: int, long: int,
         prompt: str = "single", gamma: float = 0.1) -> ZegFormerProtocol:
    return ZegFormerProtocol(dataset=dataset, short_side=short, max_long_side=long,
                             class_file=class_file if dataset is not None else None,
                             source=f"dingjiansw101/ZegFormer configs/{config} (8cb9e8f)", config=config,
                             prompt=prompt, train_classes=class_file, unseen=unseen, ensembling=True,
                             gzero_calibrate=gamma)


def _lines(spec: str) -> tuple[str, ...]:
    return tuple(ts.class_lines(spec))


ZEGFORMER_PROTOCOLS = ProtocolTable("zegformer", {
    "coco_stuff": _row("coco_stuff", _COCO, "zsseg/coco_stuff_171.txt", COCO_STUFF_UNSEEN, 640, 2560),
    # ``datasets/pascal/create_voc_class_names_json.py``: 15 seen + 5 unseen, "potted plant" spelt with a space
    "voc20": _row("voc20", _VOC, "zegformer/voc20.txt", ("potted plant", "sheep", "sofa", "train", "tvmonitor"),
                  512, 2048),
    # ADE20K-Full (ADE20K_2021_17_01) frequency split, ``register_ade20k_full_zero_freq.py``: the 847 classes in
    # trainId order, unseen = the 275 "rare" ones (572 seen); the released model is an R50 (its config)
    "ade847": _row("ade847", _ADE847, "zegformer/ade847.txt", _lines("zegformer/ade847_unseen.txt"), 512, 2048,
                   prompt="imagenet_select", gamma=0.0),
}, free=_row(None, _COCO, "zsseg/coco_stuff_171.txt", COCO_STUFF_UNSEEN, 640, 2560),
   aliases={"voc": "voc20", "pascal_voc": "voc20"})
SEGMENT_TEMPLATES = {"single": ts.ZEGFORMER_SINGLE_TEMPLATES, "imagenet_select": ts.ZEGFORMER_SELECT_TEMPLATES,
                     "imagenet": IMAGENET_TEMPLATES}


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


class ZegFormer(ts.TwoStageSegmenter):
    """ZegFormer: class-agnostic segments from a MaskFormer, classified by their queries and by CLIP on
    ROI-aligned masked crops, ensembled with CLIP's seen-class scores flattened, then calibrated.

    Args:
        model, pretrained: the CLIP (official: "ViT-B-16" / "openai"; it must have 512-d embeddings).
        prompt: segment prompt set override ("single", "imagenet_select", "imagenet").
        gzero_calibrate: override gamma (subtracted from seen-class scores).
        ensembling: override the ensemble (False: CLIP logits + background logit, softmax over queries'
            classes, as ``ENSEMBLING False``).
        clip_cls_style: what CLIP sees of a segment (``MODEL.CLIP_CLS_STYLE``): ``"cropmask"`` (default and
            the papers': the masked image cropped to the mask's box), ``"mask"`` (the whole image, masked, at
            224 x 224) or ``"crop"`` (the unmasked box), the paper's Table 6 variants.
        **kwargs: checkpoint, config, proposals, proposal_options, use_cache
            (:class:`ovss.methods.two_stage.TwoStageSegmenter`); dataset: ``coco_stuff`` (156 -> 171 GZSS,
            single prompt, ensemble, gamma 0.1, 640 / 2560), ``voc20`` (15 -> 20 GZSS, 512 / 2048); None: the
            COCO-Stuff model's settings, a class being seen when it is one of its seen classes; device,
            short_side, max_long_side, classes (:class:`ovss.segmenter.Segmenter`).
    """

    method = "zegformer"
    title = "ZegFormer"
    capabilities = Capabilities(decoder="pillow", trainable=True, score_kind="calibrated")
    protocols = ZEGFORMER_PROTOCOLS

    def __init__(self, model: str = "ViT-B-16", pretrained: str | None = "openai", *,
                 prompt: Literal["single", "imagenet_select", "imagenet"] | None = None,
                 gzero_calibrate: NonNegative | None = None, ensembling: bool | None = None,
                 clip_cls_style: Literal["cropmask", "mask", "crop"] | None = None, **kwargs: Any) -> None:
        super().__init__(model, pretrained, **kwargs)
        cfg = self.config_settings
        self.prompt = prompt or cfg.get("prompt") or self.protocol.prompt
        if self.prompt not in SEGMENT_TEMPLATES:
            raise UnknownNameError(f"unknown ZegFormer prompt set {self.prompt!r}: single, imagenet_select or imagenet")
        self.gamma = float(gzero_calibrate if gzero_calibrate is not None
                           else cfg.get("gamma", self.protocol.gzero_calibrate))
        self.ensembling = bool(ensembling if ensembling is not None else cfg.get("ensembling", self.protocol.ensembling))
        self.clip_cls_style = clip_cls_style or cfg.get("clip_cls_style") or "cropmask"

    def check_clip(self) -> None:
        dim = self.clip.model.text_projection.shape[-1]
        if dim != ZEGFORMER_EMBED_DIM:
            raise ModelLoadError(f"ZegFormer needs a CLIP with {ZEGFORMER_EMBED_DIM}-d embeddings (ViT-B-16); "
                                 f"{self.model_name} has {dim}-d")
    def read_checkpoint(self, checkpoint: str | Path, config: Any) -> ZegFormerWeights:
        return load_zegformer_checkpoint(checkpoint, config)

    def text_features(self, names: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(T_seg, T_clip), each (C, 512) normalised: segment prompts and the 32 CLIP-crop templates."""
        t_seg = ts.template_embeddings(self.clip, names, SEGMENT_TEMPLATES[self.prompt], split_synonyms=True,
                                       use_cache=self.use_cache)
        t_clip = ts.template_embeddings(self.clip, names, ts.ZEGFORMER_CLIP_TEMPLATES, split_synonyms=True,
                                        use_cache=self.use_cache)
        return t_seg, t_clip

    @torch.no_grad()
    def segment(self, rgb: np.ndarray, vocab: Vocabulary, *, prob_threshold: float | None = None,
                image_id: str | None = None, trace: bool = False) -> Segmentation:
        """Steps 1-7 of the module docstring.

        ``trace``: ``image`` uint8 (3, h, w), ``text_features_seg`` / ``text_features_clip`` (C, 512),
        ``pred_logits`` (Q, C+1), ``pred_masks`` (Q, hp/4, wp/4), ``mask_logits`` (Q, hp, wp), ``boxes``
        (Q, 4), ``crops`` (Q, 3, 224, 224), ``clip_features`` (Q, 512), ``ensemble_probs`` (Q, C),
        ``sem_seg`` (C, H, W), ``names``, ``seen``.
        """
        names = ts.class_strings(vocab)
        seen = self.seen_flags(names)
        resized, img = self.network_input(rgb)
        h, w = img.shape[-2:]
        t_seg, t_clip = self.text_features(names)
        out: dict[str, Any] = {"image": img, "names": names, "seen": seen, "text_features_seg": t_seg,
                               "text_features_clip": t_clip}
        div = self.maskformer.cfg.size_divisibility if self.maskformer is not None else 32
        cmean = torch.tensor(CLIP_MEAN_255_D2, device=self.device).view(3, 1, 1)  # MODEL.CLIP_PIXEL_MEAN
        cstd = torch.tensor(CLIP_STD_255_D2, device=self.device).view(3, 1, 1)
        clip_input = pad_to_divisible((img.float() - cmean) / cstd, div)
        if self.generator is not None:
            self._run_proposals(out, resized, clip_input, t_clip, rgb.shape[:2])
        else:
            assert self.maskformer is not None
            x = pad_to_divisible(self.imagenet_input(img), div)[None]
            mf = self.maskformer(x)
            pred_logits = self.maskformer.predictor.classify(mf["class_features"][-1, 0], t_seg)
            pred_masks = mf["mask_logits"][-1, 0]
            masks = F.interpolate(pred_masks[None], size=x.shape[-2:], mode="bilinear", align_corners=False)[0]
            out.update(pred_logits=pred_logits, pred_masks=pred_masks, mask_logits=masks)
            binary = masks.sigmoid() > 0.5
            boxes = ts.zegformer_boxes(binary)
            if self.clip_cls_style == "cropmask":
                crops = ts.zegformer_crops(clip_input, binary, boxes)
            elif self.clip_cls_style == "crop":
                crops = ts.zegformer_plain_crops(clip_input, boxes)
            else:
                crops = ts.zegformer_masked_images(clip_input, masks)
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
            semseg = self.to_original(semseg, rgb.shape[:2])
            if self.gamma > 0:
                semseg[seen] = semseg[seen] - self.gamma
            out["sem_seg"] = semseg
        extras = {"seen": [bool(s) for s in seen.tolist()]}
        return Segmentation(out["sem_seg"], extras=extras, trace=out if trace else {})

    def _run_proposals(self, out: dict[str, Any], resized: np.ndarray, clip_input: torch.Tensor,
                       t_clip: torch.Tensor, size: tuple[int, int]) -> None:
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
        out.update(proposal_masks=masks, boxes=boxes, clip_features=feats, ensemble_probs=probs,
                   sem_seg=self.to_original(semseg, size))

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "prompt": self.prompt, "gzero_calibrate": self.gamma,
                "ensembling": self.ensembling, "clip_cls_style": self.clip_cls_style}
