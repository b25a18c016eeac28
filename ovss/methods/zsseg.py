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

``res.logits`` are these scores (not probabilities: a sum over queries); ``res.labels`` their argmax.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..backbones.clip import LoadedCLIP, load_clip
from ..errors import InputError, ModelLoadError, UnknownNameError, did_you_mean
from ..imageio import ImageInput, d2_resize, read_image_d2
from ..importers.zsseg import ZSSegWeights, load_zsseg_checkpoint
from ..models.maskformer import MaskFormerV1, pad_to_divisible
from ..segmenter import SegmentationResult, Segmenter, check_test_size
from ..vocabulary import ClassesInput, Vocabulary, packaged_class_file, parse_classes
from . import two_stage as ts

#: the 15 unseen COCO-Stuff classes of the zero-shot split (SPNet / ZS3; ``trainable_flag`` 0).
COCO_STUFF_UNSEEN = ("cow", "giraffe", "suitcase", "frisbee", "skateboard", "carrot", "scissors", "cardboard",
                     "clouds", "grass", "playingfield", "river", "road", "tree", "wall-concrete")


@dataclass(frozen=True)
class ZSSegProtocol:
    """One official evaluation setting (config file in MendelXu/zsseg.baseline ``configs/``)."""

    name: str
    config: str
    class_file: str  # under ovss/classnames/zsseg/
    prompt: str  # "learnable", "vild", "single", "imagenet"
    mask_thr: float  # MODEL.CLIP_ADAPTER.MASK_THR
    ensemble_weight: float  # MODEL.CLIP_ADAPTER.CLIP_ENSEMBLE_WEIGHT (lambda)
    short_side: int  # INPUT.MIN_SIZE_TEST
    max_long_side: int  # INPUT.MAX_SIZE_TEST
    has_trainable_flag: bool  # the dataset metadata carries trainable_flag (seen classes)


PROTOCOLS: dict[str, ZSSegProtocol] = {
    "coco_stuff": ZSSegProtocol("coco_stuff", "coco-stuff-164k-156/zero_shot_maskformer_R101c_bs32_60k.yaml",
                                "coco_stuff_171.txt", "learnable", 0.5, 0.8, 640, 2560, True),
    "ade20k": ZSSegProtocol("ade20k", "ade20k-150/cross_dataset_test_only.yaml", "ade20k_150.txt", "vild",
                            0.4, 0.5, 512, 2048, False),
    # other cross-dataset configs (values from the configs at d77c3af, shared/reference/trained-methods.md
    # 2.3); class names from ovss's benchmark list (mmseg spelling), not checked against zsseg's registration
    "context59": ZSSegProtocol("context59", "pcontext-59/cross_dataset_test_only.yaml", "dataset:context59", "vild",
                               0.5, 0.4, 512, 2048, False),
    "cityscapes": ZSSegProtocol("cityscapes", "cityscapes-19/cross_dataset_test_only.yaml", "dataset:cityscapes",
                                "vild", 0.3, 0.4, 1024, 2048, False),
    "ade847": ZSSegProtocol("ade847", "ade20k-847/cross_dataset_test_only.yaml", "dataset:ade847", "vild",
                            0.3, 0.7, 512, 2048, False),
}
ALIASES = {"coco_stuff_171": "coco_stuff", "cocostuff": "coco_stuff", "ade20k_150": "ade20k", "ade150": "ade20k",
           "ade": "ade20k", "pcontext59": "context59", "pc59": "context59", "ade20k_847": "ade847",
           "cityscapes19": "cityscapes"}


def get_protocol(dataset: str) -> ZSSegProtocol:
    """The protocol of ``dataset`` (``coco_stuff``, ``ade20k``).

    Raises:
        UnknownNameError: no such protocol.
    """
    key = ALIASES.get(dataset, dataset)
    if key not in PROTOCOLS:
        raise UnknownNameError(f"ZSSeg has no protocol for dataset {dataset!r}.{did_you_mean(dataset, list(PROTOCOLS))}"
                               f" Available: {', '.join(PROTOCOLS)}; or pass classes=... with dataset='coco_stuff'")
    return PROTOCOLS[key]


def protocol_class_names(protocol: ZSSegProtocol, family: str = "zsseg") -> list[str]:
    """Class names of a protocol, one per line, used as whole strings (``"road, route"`` included);
    ``dataset:<name>`` takes ovss's benchmark class list (``ovss/data/dataset_classes.json``)."""
    if protocol.class_file.startswith("dataset:"):
        import json
        from importlib import resources

        text = resources.files("ovss").joinpath("data/dataset_classes.json").read_text(encoding="utf-8")
        return list(json.loads(text)[protocol.class_file.split(":", 1)[1]])
    path = packaged_class_file(family, protocol.class_file)
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def vocabulary_names(classes: ClassesInput | Vocabulary) -> list[str]:
    """One string per class: the synonyms joined with ``", "`` (the detectron2 ADE convention)."""
    vocab = classes if isinstance(classes, Vocabulary) else parse_classes(classes)
    return [", ".join(q) for q in vocab.queries]


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


class ZSSeg(Segmenter):
    """ZSSeg / SimSeg: a MaskFormer proposes segments, frozen CLIP classifies their crops, both ensembled.

    Args:
        model: CLIP model name for open_clip ("ViT-B-16", the official one) or an open_clip config JSON.
        pretrained: CLIP pretrained tag ("openai") or a local CLIP checkpoint.
        checkpoint: the released ZSSeg ``.pth`` (or one written by ``ovss.training.maskformer_train``);
            required unless ``proposals`` names another mask generator.
        config: architecture config of the checkpoint (official YAML or dotted-key JSON); None = the
            released R101c sizes.
        dataset: evaluation protocol: ``coco_stuff`` (zero-shot 156 -> 171, learned prompts, lambda 0.8,
            MASK_THR 0.5, 640 / 2560) or ``ade20k`` (cross-dataset ADE-150, ViLD prompts, lambda 0.5,
            MASK_THR 0.4, 512 / 2048); also ``context59``, ``cityscapes``, ``ade847`` (cross-dataset configs,
            ovss's class-name spelling). With ``classes=`` at predict time the protocol's settings apply and
            a class counts as seen when its name is one of the protocol's seen classes.
        short_side, max_long_side: override the protocol's test size.
            An official eval config passed as ``config`` also overrides the protocol with the inference
            keys it sets (``MODEL.CLIP_ADAPTER.MASK_THR`` / ``CLIP_ENSEMBLE_WEIGHT`` / ``PROMPT_LEARNER``,
            ``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``); explicit arguments override both.
        device: torch device.
        prompt: override the prompt set: "learnable", "vild", "single" or "imagenet".
        ensemble_weight: override lambda (CLIP_ENSEMBLE_WEIGHT); 0 disables the ensemble (pure CLIP,
            invalid queries dropped), as in the official code.
        mask_threshold: override MASK_THR.
        proposals: "maskformer" (default), or a class-agnostic mask generator (a callable image -> (N, h, w)
            bool masks, or a transformers mask-generation model id such as a SAM checkpoint folder): its
            masks are classified by the same CLIP crop stage and summed with the CLIP probabilities
            (training-free; no MaskFormer, no ensemble).
        proposal_options: keyword arguments of the transformers mask-generation pipeline call
            (``points_per_batch``, ``points_per_crop``, ``pred_iou_thresh``, ...).
        use_cache: use the on-disk text-embedding cache.

    Raises:
        UnknownNameError: unknown dataset or prompt set.
        ModelLoadError: missing / wrong checkpoint, or a CLIP that does not fit it.
    """

    method = "zsseg"
    paper = "Xu et al., ECCV 2022 (ZSSeg / SimSeg)"
    protocol_table = PROTOCOLS

    def __init__(self, model: str = "ViT-B-16", pretrained: str = "openai", checkpoint: str | Path | None = None,
                 config: str | Path | dict[str, Any] | None = None, dataset: str = "coco_stuff",
                 short_side: int | None = None, max_long_side: int | None = None, device: str = "cpu", *,
                 prompt: str | None = None, ensemble_weight: float | None = None,
                 mask_threshold: float | None = None, proposals: str | Callable[..., Any] = "maskformer",
                 proposal_options: dict[str, Any] | None = None, use_cache: bool = True) -> None:
        super().__init__(device)
        check_test_size(short_side, max_long_side)
        self.protocol = get_protocol(dataset or "coco_stuff")
        weights = load_zsseg_checkpoint(checkpoint, config) if checkpoint is not None else None
        # an official eval config's explicit inference keys apply over the protocol; arguments win
        cfg = dict(weights.settings) if weights is not None else {}
        if cfg.get("prompt") == "predefined":
            cfg["prompt"] = "single"
        self.short_side = int(short_side or cfg.get("short_side") or self.protocol.short_side)
        self.max_long_side = int(max_long_side or cfg.get("max_long_side") or self.protocol.max_long_side)
        self.prompt = prompt or cfg.get("prompt") or self.protocol.prompt
        self._prompt_from_protocol = prompt is None and "prompt" not in cfg
        if self.prompt not in ("learnable", "vild", "single", "imagenet"):
            raise UnknownNameError(f"unknown ZSSeg prompt set {self.prompt!r}: use learnable, vild, single or imagenet")
        self.ensemble_weight = float(ensemble_weight if ensemble_weight is not None
                                     else cfg.get("ensemble_weight", self.protocol.ensemble_weight))
        self.mask_thr = float(mask_threshold if mask_threshold is not None
                              else cfg.get("mask_thr", self.protocol.mask_thr))
        if not 0.0 <= self.mask_thr < 1.0 or not 0.0 <= self.ensemble_weight <= 1.0:
            raise InputError("mask_threshold must be in [0, 1) and ensemble_weight in [0, 1]")
        self.use_cache = use_cache
        self.clip: LoadedCLIP = load_clip(model, pretrained, self.device)
        self.model_name, self.pretrained = model, pretrained
        self.checkpoint = str(checkpoint) if checkpoint else None
        self.generator = (None if proposals == "maskformer"
                          else ts.mask_generator(proposals, self.device, **(proposal_options or {})))
        self.maskformer: MaskFormerV1 | None = None
        self.non_object: torch.Tensor | None = None
        self.prompts: ts.LearnablePrompts | None = None
        if weights is None:
            if self.generator is None:
                raise ModelLoadError("ZSSeg needs its checkpoint: pass checkpoint=PATH (--checkpoint) with the "
                                     "released .pth (see docs/two_stage.md), or proposals=<mask generator>")
            if self.prompt == "learnable":
                self.prompt = "vild"  # no learned prompts without a checkpoint
        else:
            self._load(weights)
        self.protocol_names = protocol_class_names(self.protocol)
        self.seen_names = ({n for n in self.protocol_names if n not in COCO_STUFF_UNSEEN}
                           if self.protocol.has_trainable_flag else set())

    def _load(self, w: ZSSegWeights) -> None:
        from ..checkpoints import load_into

        net = MaskFormerV1(w.config)
        try:
            load_into(net, w.maskformer, f"ZSSeg checkpoint {w.source}")
        except ModelLoadError as exc:
            raise ModelLoadError(f"{exc}; without --config the released ZSSeg sizes are assumed: pass the "
                                 "checkpoint's config (official YAML or dotted-key JSON) with config=... / --config") from None
        self.maskformer = net.to(self.device).eval()
        emb_dim = w.config.embedding_dim
        clip_dim = self.clip.model.text_projection.shape[-1]
        if emb_dim != clip_dim:
            raise ModelLoadError(f"the checkpoint's class embeddings are {emb_dim}-d but CLIP {self.model_name} "
                                 f"has {clip_dim}-d text features: use the CLIP the checkpoint was trained with")
        self.non_object = w.non_object_embedding.to(self.device)
        if self.prompt == "learnable" and "prefix_prompt" not in w.prompts \
                and self._prompt_from_protocol:
            # a checkpoint without learned prompts (the cross-dataset release) was trained with templates
            self.prompt = "vild"
        if self.prompt == "learnable":
            self.prompts = ts.LearnablePrompts(self.clip, *w.prompt_shape).to(self.device)
            self.prompts.load_tensors(w.prompts)
            self.prompts.eval()
        self.config = w.config

    # ------------------------------------------------------------------------------------------
    def text_features(self, names: Sequence[str]) -> torch.Tensor:
        """(C, E) normalised class text features of ``names`` (no no-object row)."""
        with torch.no_grad():
            if self.prompt == "learnable":
                assert self.prompts is not None
                key = tuple(names)  # the official code re-encodes every call; same numbers, kept in memory here
                cache = self.__dict__.setdefault("_prompt_cache", {})
                if key not in cache:
                    cache.clear()
                    cache[key] = self.prompts(self.clip, names)
                return cache[key]
            templates = {"vild": ts.VILD_TEMPLATES, "single": ts.ZSSEG_SINGLE_TEMPLATES}.get(self.prompt)
            if templates is None:
                from ..text import IMAGENET_TEMPLATES

                templates = IMAGENET_TEMPLATES
            return ts.template_embeddings(self.clip, names, templates, split_synonyms=False,
                                          use_cache=self.use_cache)

    def resolve_classes(self, classes: ClassesInput | Vocabulary | None) -> tuple[list[str], torch.Tensor]:
        """(names, trainable flag (C,) float32) for ``classes`` or the protocol's list."""
        names = self.protocol_names if classes is None else vocabulary_names(classes)
        flag = torch.tensor([1.0 if n in self.seen_names else 0.0 for n in names], device=self.device)
        return list(names), flag

    @torch.no_grad()
    def run(self, image: ImageInput, classes: ClassesInput | Vocabulary | None = None) -> dict[str, Any]:
        """Every intermediate of one image (see the module docstring for the steps).

        Returns a dict with ``image`` uint8 (3, h, w), ``text_features`` (C+1, E), ``pred_embed`` (Q, E),
        ``mf_logits`` (Q, C+1), ``pred_masks`` (Q, hp/4, wp/4), ``mask_logits`` (Q, h, w), ``valid`` (Q,),
        ``mask_area`` (Q,), ``boxes`` (V, 4), ``crops`` (V, 3, 224, 224), ``clip_logits`` (V, C+1),
        ``clip_probs`` (Q, C), ``ensemble_probs`` (Q, C), ``sem_seg`` (C, H, W), ``names``.
        """
        rgb = read_image_d2(image)
        names, flag = self.resolve_classes(classes)
        resized = d2_resize(rgb, self.short_side, self.max_long_side)
        img = torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1))).to(self.device)
        h, w = img.shape[-2:]
        out: dict[str, Any] = {"image": img, "names": names}
        text = self.text_features(names)
        if self.generator is not None:
            return self._run_proposals(out, resized, img, text, rgb.shape[:2])
        assert self.maskformer is not None and self.non_object is not None
        no_obj = self.non_object / self.non_object.norm(dim=-1, keepdim=True)
        text = torch.cat([text, no_obj], dim=0)
        out["text_features"] = text
        mean = torch.tensor(ts.PIXEL_MEAN, device=self.device).view(3, 1, 1)
        std = torch.tensor(ts.PIXEL_STD, device=self.device).view(3, 1, 1)
        x = pad_to_divisible((img.float() - mean) / std, self.maskformer.cfg.size_divisibility)[None]
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
        clip_cls, valid, boxes, crops = self.classify_regions(img.float(), mask_prob, text)
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
        out["sem_seg"] = self._to_original(semseg, rgb.shape[:2])
        return out

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
                       size: tuple[int, int]) -> dict[str, Any]:
        masks = ts.proposal_masks(self.generator, resized).to(self.device)
        keep = masks.flatten(1).any(dim=1)
        masks = masks[keep]
        boxes = ts.tight_boxes(masks)
        crops = ts.zsseg_crops(img.float(), masks, boxes)
        feats = ts.clip_image_features(self.clip, crops)
        feats = feats / feats.norm(dim=-1, keepdim=True)
        logits = 100.0 * feats @ text.t()
        probs = F.softmax(logits, dim=-1)
        semseg = torch.einsum("qc,qhw->chw", probs, masks.float()) if len(masks) else \
            img.new_zeros((text.shape[0],) + tuple(img.shape[-2:]), dtype=torch.float32)
        out.update(text_features=text, proposal_masks=masks, boxes=boxes, clip_logits=logits, clip_probs=probs,
                   sem_seg=self._to_original(semseg, size))
        return out

    @staticmethod
    def _to_original(semseg: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(semseg[None], size=tuple(size), mode="bilinear", align_corners=False)[0]

    def predict(self, image: ImageInput, classes: ClassesInput | Vocabulary | None = None, *,
                background: list[str] | str | None = None,
                prob_threshold: float | None = None) -> SegmentationResult:
        """Segment one image; ``classes=None`` uses the protocol's class list.

        ``res.logits`` (C, H, W) = the ensemble scores at the photo's size, ``res.labels`` their argmax.

        Raises:
            InputError: unreadable image, bad class list, or ``background`` / ``prob_threshold`` (ZSSeg
                has no background class).
        """
        if background is not None or prob_threshold is not None:
            raise InputError("ZSSeg has no background class: leave background and prob_threshold unset")
        out = self.run(image, classes)
        scores = out["sem_seg"].float().cpu()
        extras = {"num_valid_queries": int(out["valid"].sum()) if "valid" in out else int(len(out["boxes"]))}
        return SegmentationResult(scores, scores.argmax(dim=0), list(out["names"]), None, self.settings(), extras)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "model": self.model_name, "pretrained": str(self.pretrained),
                "checkpoint": self.checkpoint, "dataset": self.protocol.name, "prompt": self.prompt,
                "ensemble_weight": self.ensemble_weight, "mask_threshold": self.mask_thr,
                "short_side": self.short_side, "max_long_side": self.max_long_side,
                "proposals": "maskformer" if self.generator is None else "external"}
