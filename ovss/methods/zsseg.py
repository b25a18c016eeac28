"""ZSSeg / SimSeg (Xu et al., ECCV 2022): MaskFormer proposals classified by CLIP crops.

Official code: MendelXu/zsseg.baseline (``mask_former/zero_shot_mask_former_model.py``
``ZeroShotMaskFormer``, ``modeling/clip_adapter``). Inference, step by step (float32):

1. detectron2 test resize (Pillow bilinear, short side / long-side cap of the protocol);
2. MaskFormer v1 (R101c) on the ImageNet-normalised, zero-padded (/32) image: per query a class
   embedding and mask logits at stride 4;
3. text classifier: learned prefix prompts (zero-shot COCO-Stuff model), ViLD templates (cross-dataset
   model) or a single template; last row = normalised learned no-object embedding;
   MaskFormer logits = ``(100 * normalize(embedding)) @ T.T``;
4. masks upsampled (bilinear) to the padded input, cropped to the resized image, sigmoid;
5. every query whose mask has a pixel above ``MASK_THR`` is cropped from the resized 0-255 image (tight
   box, outside-mask pixels = CLIP mean colour), CLIP-normalised, bicubic 224, classified by CLIP
   (``100 * cos``), softmax over the C classes (no-object column dropped first);
6. ensemble: ``p = t * p_mf^l * p_clip^(1-l) + (1-t) * p_mf^(1-l) * p_clip^l`` with p_mf the MaskFormer
   softmax over C+1 without the no-object column, t = 1 for classes seen in training (only for the
   COCO-Stuff protocol; every class counts as unseen elsewhere), p_clip = 1 for invalid queries;
7. scores ``sum_q p(q, c) * sigmoid(mask_q)`` at the resized size, bilinear to the photo's size.

``res.scores`` are these scores (not probabilities: a sum over queries); ``res.labels`` their argmax.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError, ModelLoadError, UnknownNameError
from ..importers.zsseg import ZSSegWeights, load_zsseg_checkpoint
from ..models.maskformer import pad_to_divisible
from ..options import Fraction
from ..protocols import ProtocolTable
from ..segmenter import Segmentation
from ..text import IMAGENET_TEMPLATES
from ..vocabulary import Vocabulary
from . import two_stage as ts

#: the 15 unseen COCO-Stuff classes of the zero-shot split (SPNet / ZS3; ``trainable_flag`` 0).
COCO_STUFF_UNSEEN = ("cow", "giraffe", "suitcase", "frisbee", "skateboard", "carrot", "scissors", "cardboard",
                     "clouds", "grass", "playingfield", "river", "road", "tree", "wall-concrete")

PROMPTS = ("learnable", "vild", "single", "imagenet")


@dataclass(frozen=True)
class ZSSegProtocol(ts.TwoStageProtocol):
    """One official evaluation setting (config file in ``MendelXu/zsseg.baseline`` ``configs/``).

    Attributes:
        mask_thr: ``MODEL.CLIP_ADAPTER.MASK_THR``.
        ensemble_weight: ``MODEL.CLIP_ADAPTER.CLIP_ENSEMBLE_WEIGHT`` (lambda).
    """

    mask_thr: float = 0.5
    ensemble_weight: float = 0.8


def _row(dataset: str | None, config: str, class_file: str | None, prompt: str, mask_thr: float, lam: float,
         short: int, long: int, split: bool, train_classes: str = "zsseg/coco_stuff_171.txt",
         unseen: tuple[str, ...] = COCO_STUFF_UNSEEN) -> ZSSegProtocol:
    return ZSSegProtocol(dataset=dataset, short_side=short, max_long_side=long, class_file=class_file,
                         source=f"MendelXu/zsseg.baseline configs/{config} (d77c3af)", config=config, prompt=prompt,
                         train_classes=train_classes if split else None, unseen=unseen if split else (),
                         mask_thr=mask_thr, ensemble_weight=lam)


_ZERO_SHOT = "coco-stuff-164k-156/zero_shot_maskformer_R101c_bs32_60k.yaml"
#: ``mask_former/data/datasets/register_voc_seg.py``: NOVEL_CLASS_NAMES (indices 15-19), trainable_flag 0
VOC_UNSEEN = ("pottedplant", "sheep", "sofa", "train", "tvmonitor")
# cross-dataset configs: values from the configs at d77c3af (shared/reference/trained-methods.md 2.3); the
# context59 / cityscapes / ade847 class names are ovss's benchmark lists (mmseg spelling), not zsseg's registration
ZSSEG_PROTOCOLS = ProtocolTable("zsseg", {
    "coco_stuff": _row("coco_stuff", _ZERO_SHOT, "zsseg/coco_stuff_171.txt", "learnable", 0.5, 0.8, 640, 2560, True),
    "ade20k": _row("ade20k", "ade20k-150/cross_dataset_test_only.yaml", "zsseg/ade20k_150.txt", "vild",
                   0.4, 0.5, 512, 2048, False),
    "context59": _row("context59", "pcontext-59/cross_dataset_test_only.yaml", "dataset:context59", "vild",
                      0.5, 0.4, 512, 2048, False),
    "cityscapes": _row("cityscapes", "cityscapes-19/cross_dataset_test_only.yaml", "dataset:cityscapes", "vild",
                       0.3, 0.4, 1024, 2048, False),
    "ade847": _row("ade847", "ade20k-847/cross_dataset_test_only.yaml", "dataset:ade847", "vild",
                   0.3, 0.7, 512, 2048, False),
    # the COCO-Stuff zero-shot model on PASCAL VOC (20 classes, no background); the VOC metadata's
    # trainable_flag marks VOC's 15 base classes as seen. The VOC 15/5 zero-shot models (trained on the base
    # classes: configs/voc-11k-15/*.yaml, separate region adapter, lambda 0.7) take this row with their config.
    "voc20": _row("voc20", "voc-11k-20/zero_shot_maskformer_R101c_bs16_test_only.yaml", "zsseg/voc20.txt",
                  "learnable", 0.5, 0.4, 512, 2048, True, "zsseg/voc20.txt", VOC_UNSEEN),
}, free=_row(None, _ZERO_SHOT + " (free-form: the zero-shot model's settings and seen classes)", None, "learnable",
             0.5, 0.8, 640, 2560, True), aliases={"voc": "voc20", "pascal_voc": "voc20"})


def zsseg_ensemble(p_mf: torch.Tensor, p_clip: torch.Tensor, trainable: torch.Tensor, lam: float) -> torch.Tensor:
    """ZSSeg's geometric ensemble (``ZeroShotMaskFormer.semantic_inference``).

    Args:
        p_mf: (Q, C) MaskFormer softmax over C+1 with the no-object column dropped.
        p_clip: (Q, C) CLIP probabilities, rows of invalid queries = 1.
        trainable: (C,) 1 for seen (trained) classes, 0 otherwise.
        lam: ``CLIP_ENSEMBLE_WEIGHT``.

    Returns:
        (Q, C) ``t p_mf^l p_clip^(1-l) + (1-t) p_mf^(1-l) p_clip^l``.
    """
    t = trainable[None, :].to(p_mf.dtype)
    return t * torch.pow(p_mf, lam) * torch.pow(p_clip, 1 - lam) + (1 - t) * torch.pow(p_mf, 1 - lam) * torch.pow(
        p_clip, lam)


class ZSSeg(ts.TwoStageSegmenter):
    """ZSSeg / SimSeg: a MaskFormer proposes segments, frozen CLIP classifies their crops, both ensembled.

    Args:
        model: CLIP model name for open_clip ("ViT-B-16", the official one) or an open_clip config JSON.
        pretrained: CLIP pretrained tag ("openai") or a local CLIP checkpoint.
        prompt: override the prompt set: "learnable", "vild", "single" or "imagenet".
        region_prompt: the prompt set of a separate region (crop) classifier, as the VOC 15/5 configs have
            (``SEPERATE_ADAPTER True``, ``REGION_CLIP_ADAPTER.PROMPT_LEARNER``; learned prompts read from the
            checkpoint's ``_region_clip_adapter``); None: the config's, else the same prompts as the queries.
        ensemble_weight: override lambda (CLIP_ENSEMBLE_WEIGHT); 0 disables the ensemble (pure CLIP,
            invalid queries dropped), as in the official code.
        mask_threshold: override MASK_THR (in [0, 1)).
        **kwargs: checkpoint, config, proposals, proposal_options, use_cache
            (:class:`ovss.methods.two_stage.TwoStageSegmenter`); dataset: ``coco_stuff`` (zero-shot 156 ->
            171, learned prompts, lambda 0.8, MASK_THR 0.5, 640 / 2560), ``ade20k`` (cross-dataset ADE-150,
            ViLD prompts, lambda 0.5, MASK_THR 0.4, 512 / 2048), ``context59``, ``cityscapes``, ``ade847``;
            None: the zero-shot model's settings, with a class seen when its name is one of its seen
            classes; device, short_side, max_long_side, classes (:class:`ovss.segmenter.Segmenter`).

    Raises:
        UnknownNameError: unknown dataset or prompt set.
        ModelLoadError: missing / wrong checkpoint, or a CLIP that does not fit it.
    """

    method = "zsseg"
    title = "ZSSeg"
    protocols = ZSSEG_PROTOCOLS

    def __init__(self, model: str = "ViT-B-16", pretrained: str | None = "openai", *,
                 prompt: Literal["learnable", "vild", "single", "imagenet"] | None = None,
                 region_prompt: Literal["learnable", "vild", "single", "imagenet"] | None = None,
                 ensemble_weight: Fraction | None = None, mask_threshold: Fraction | None = None,
                 **kwargs: Any) -> None:
        super().__init__(model, pretrained, **kwargs)
        cfg = dict(self.config_settings)
        for key in ("prompt", "region_prompt"):
            if cfg.get(key) == "predefined":
                cfg[key] = "single"
        self.region_prompt = region_prompt or (cfg.get("region_prompt") if cfg.get("separate_adapter") else None)
        self.prompt = prompt or cfg.get("prompt") or self.protocol.prompt
        prompt_from_protocol = prompt is None and "prompt" not in cfg
        if self.prompt not in PROMPTS:
            raise UnknownNameError(f"unknown ZSSeg prompt set {self.prompt!r}: use {', '.join(PROMPTS)}")
        self.ensemble_weight = float(ensemble_weight if ensemble_weight is not None
                                     else cfg.get("ensemble_weight", self.protocol.ensemble_weight))
        self.mask_thr = float(mask_threshold if mask_threshold is not None
                              else cfg.get("mask_thr", self.protocol.mask_thr))
        if not 0.0 <= self.mask_thr < 1.0:
            raise InputError(f"mask_threshold must be in [0, 1), got {self.mask_thr}")
        self.non_object: torch.Tensor | None = None
        self.prompts: ts.LearnablePrompts | None = None
        self.region_prompts: ts.LearnablePrompts | None = None
        if self.weights is None:
            if self.prompt == "learnable":
                self.prompt = "vild"  # no learned prompts without a checkpoint
        else:
            self._load(self.weights, prompt_from_protocol)

    def read_checkpoint(self, checkpoint: str | Path, config: Any) -> ZSSegWeights:
        return load_zsseg_checkpoint(checkpoint, config)

    def _load(self, w: ZSSegWeights, prompt_from_protocol: bool) -> None:
        emb_dim = w.config.embedding_dim
        clip_dim = self.clip.model.text_projection.shape[-1]
        if emb_dim != clip_dim:
            raise ModelLoadError(f"the checkpoint's class embeddings are {emb_dim}-d but CLIP {self.model_name} "
                                 f"has {clip_dim}-d text features: use the CLIP the checkpoint was trained with")
        self.non_object = w.non_object_embedding.to(self.device)
        if self.prompt == "learnable" and "prefix_prompt" not in w.prompts and prompt_from_protocol:
            # a checkpoint without learned prompts (the cross-dataset release) was trained with templates
            self.prompt = "vild"
        if self.prompt == "learnable":
            self.prompts = ts.LearnablePrompts(self.clip, *w.prompt_shape).to(self.device)
            self.prompts.load_tensors(w.prompts)
            self.prompts.eval()
        if self.region_prompt == "learnable":
            if not w.region_prompts:
                raise ModelLoadError(f"{w.source}: the config has a separate region classifier with learned prompts "
                                     "but the checkpoint has no '_region_clip_adapter.prompt_learner' tensors")
            self.region_prompts = ts.LearnablePrompts(self.clip, *w.region_prompt_shape).to(self.device)
            self.region_prompts.load_tensors(w.region_prompts)
            self.region_prompts.eval()
        self.config = w.config

    # ------------------------------------------------------------------------------------------
    def text_features(self, names: Sequence[str], region: bool = False) -> torch.Tensor:
        """(C, E) normalised class text features of ``names`` (no no-object row): the query classifier's,
        or with ``region`` the separate region classifier's (the same when there is none)."""
        prompt = self.region_prompt if region and self.region_prompt else self.prompt
        learned = self.region_prompts if region and self.region_prompt else self.prompts
        with torch.no_grad():
            if prompt == "learnable":
                assert learned is not None
                key = (region, tuple(names))  # the official code re-encodes every call; same numbers, kept here
                cache = self.__dict__.setdefault("_prompt_cache", {})
                if key not in cache:
                    cache[key] = learned(self.clip, names)
                    while len(cache) > 2:
                        cache.pop(next(iter(cache)))
                return cache[key]
            templates = {"vild": ts.VILD_TEMPLATES, "single": ts.ZSSEG_SINGLE_TEMPLATES}.get(prompt,
                                                                                            IMAGENET_TEMPLATES)
            return ts.template_embeddings(self.clip, names, templates, split_synonyms=False,
                                          use_cache=self.use_cache)

    @torch.no_grad()
    def segment(self, rgb: np.ndarray, vocab: Vocabulary, *, prob_threshold: float | None = None,
                image_id: str | None = None, trace: bool = False) -> Segmentation:
        """Steps 1-7 of the module docstring.

        ``trace``: ``image`` uint8 (3, h, w), ``text_features`` (C+1, E), ``pred_embed`` (Q, E),
        ``mf_logits`` (Q, C+1), ``pred_masks`` (Q, hp/4, wp/4), ``mask_logits`` (Q, h, w), ``valid`` (Q,),
        ``mask_area`` (Q,), ``boxes`` (V, 4), ``crops`` (V, 3, 224, 224), ``clip_logits`` (V, C+1),
        ``clip_probs`` (Q, C), ``ensemble_probs`` (Q, C), ``sem_seg`` (C, H, W), ``names``, ``seen``.
        """
        names = ts.class_strings(vocab)
        flag = self.seen_flags(names).float()
        resized, img = self.network_input(rgb)
        h, w = img.shape[-2:]
        out: dict[str, Any] = {"image": img, "names": names, "seen": flag.bool()}
        text = self.text_features(names)
        if self.generator is not None:
            self._run_proposals(out, resized, img, text, rgb.shape[:2])
        else:
            assert self.maskformer is not None and self.non_object is not None
            no_obj = self.non_object / self.non_object.norm(dim=-1, keepdim=True)
            text = torch.cat([text, no_obj], dim=0)
            out["text_features"] = text
            x = pad_to_divisible(self.imagenet_input(img), self.maskformer.cfg.size_divisibility)[None]
            mf = self.maskformer(x)
            emb = mf["class_features"][-1, 0]
            out["pred_embed"] = emb
            mf_logits = self.maskformer.predictor.classify(emb, text)
            out["mf_logits"] = mf_logits
            pred_masks = mf["mask_logits"][-1, 0]
            out["pred_masks"] = pred_masks
            masks = F.interpolate(pred_masks[None], size=x.shape[-2:], mode="bilinear", align_corners=False)[0]
            masks = masks[:, :h, :w]
            out["mask_logits"] = masks
            mask_prob = masks.sigmoid()
            region_text = torch.cat([self.text_features(names, region=True), no_obj]) if self.region_prompt else text
            clip_cls, valid, boxes, crops = self.classify_regions(img.float(), mask_prob, region_text)
            out.update(valid=valid, mask_area=(mask_prob > self.mask_thr).sum(dim=(1, 2)), boxes=boxes, crops=crops,
                       clip_logits=clip_cls)
            p_mf = F.softmax(mf_logits, dim=-1)[..., :-1]
            p_clip = F.softmax(clip_cls[:, :-1], dim=-1)
            if self.ensemble_weight > 0:
                full = p_mf.new_ones(p_mf.shape)
                full[valid] = p_clip
                out["clip_probs"] = full
                probs = zsseg_ensemble(p_mf, full, flag, self.ensemble_weight)
                weights = mask_prob
            else:  # official: pure CLIP on the valid queries only
                out["clip_probs"] = p_clip
                probs, weights = p_clip, mask_prob[valid]
            out["ensemble_probs"] = probs
            semseg = torch.einsum("qc,qhw->chw", probs, weights)
            out["sem_seg"] = self.to_original(semseg, rgb.shape[:2])
        extras = {"num_valid_queries": int(out["valid"].sum()) if "valid" in out else int(len(out["boxes"])),
                  "seen": [bool(s) for s in flag.tolist()]}
        return Segmentation(out["sem_seg"], extras=extras, trace=out if trace else {})

    def classify_regions(self, img: torch.Tensor, mask_prob: torch.Tensor, text: torch.Tensor) -> tuple[
            torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """CLIP logits of the valid queries' crops: (V, C+1) ``100 * cos``, valid (Q,), boxes (V, 4), crops."""
        binary = mask_prob > self.mask_thr
        valid = binary.flatten(1).any(dim=1)
        boxes = ts.tight_boxes(binary[valid])
        crops = ts.zsseg_crops(img, binary[valid], boxes)
        feats = ts.clip_image_features(self.clip, crops)
        feats = feats / feats.norm(dim=-1, keepdim=True)
        return 100.0 * feats @ text.t(), valid, boxes, crops

    def _run_proposals(self, out: dict[str, Any], resized: np.ndarray, img: torch.Tensor, text: torch.Tensor,
                       size: tuple[int, int]) -> None:
        masks = ts.proposal_masks(self.generator, resized).to(self.device)
        masks = masks[masks.flatten(1).any(dim=1)]
        boxes = ts.tight_boxes(masks)
        crops = ts.zsseg_crops(img.float(), masks, boxes)
        feats = ts.clip_image_features(self.clip, crops)
        feats = feats / feats.norm(dim=-1, keepdim=True)
        logits = 100.0 * feats @ text.t()
        probs = F.softmax(logits, dim=-1)
        semseg = torch.einsum("qc,qhw->chw", probs, masks.float()) if len(masks) else \
            img.new_zeros((text.shape[0],) + tuple(img.shape[-2:]), dtype=torch.float32)
        out.update(text_features=text, proposal_masks=masks, boxes=boxes, clip_logits=logits, clip_probs=probs,
                   sem_seg=self.to_original(semseg, size))

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "prompt": self.prompt, "region_prompt": self.region_prompt,
                "ensemble_weight": self.ensemble_weight,
                "mask_threshold": self.mask_thr}
