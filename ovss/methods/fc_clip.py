"""FC-CLIP (Yu et al., NeurIPS 2023, "Convolutions Die Hard"): a single-stage Mask2Former on a
frozen convolutional CLIP, exact to the official code (bytedance/fc-clip ``fcclip/fcclip.py``).

Per image: resize (short side 800, long side <= 1333; 1024 for Cityscapes / Mapillary), normalise
with CLIP's mean/std, pad to a multiple of 32; frozen CLIP ConvNeXt features -> MSDeformAttn pixel
decoder -> masked-attention decoder whose queries are classified in CLIP's text space
(in-vocabulary logits); the final masks also pool the frozen CLIP features through CLIP's own head
(out-of-vocabulary logits); the two are fused per class by a geometric ensemble (alpha 0.4 for
classes seen in COCO training, beta 0.8 for the others), void re-enters as ``1 - p_void``; semantic
scores = ``sum_q p(q, c) * sigmoid(mask_q)``; panoptic = Mask2Former's rule.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..backbones.convnext_clip import ConvCLIPBackbone, load_conv_clip
from ..constants import VILD_TEMPLATES
from ..errors import InputError, ModelLoadError
from ..imageio import d2_resize
from ..importers.fc_clip import build_fcclip
from ..models.mask2former import classification_logits
from ..models.mask_inference import instance_inference, panoptic_inference, postprocess_masks, semantic_inference
from ..options import Fraction
from ..protocols import Protocol, ProtocolTable
from ..segmenter import Capabilities, Segmentation, Segmenter
from ..text import class_embeddings
from ..vocabulary import Vocabulary, id_name_vocabulary, packaged_class_file

# Thing classes (contiguous ids) of the panoptic datasets, from the official registrations
# (``register_ade20k_panoptic.py``, ``register_coco_panoptic_annos_semseg.py``,
# ``register_cityscapes_panoptic.py``, ``register_mapillary_vistas_panoptic.py``).
_ADE150_THINGS = (7, 8, 10, 12, 14, 15, 18, 19, 20, 22, 23, 24, 27, 30, 31, 32, 33, 35, 36, 37, 38, 39, 41, 42,
                  43, 44, 45, 47, 49, 50, 53, 55, 56, 57, 58, 62, 64, 65, 66, 67, 69, 70, 71, 72, 73, 74, 75, 76,
                  78, 80, 81, 82, 83, 85, 86, 87, 88, 89, 90, 92, 93, 95, 97, 98, 102, 103, 104, 107, 108, 110,
                  111, 112, 115, 116, 118, 119, 120, 121, 123, 124, 125, 126, 127, 129, 130, 132, 133, 134, 135,
                  136, 137, 138, 139, 142, 143, 144, 146, 147, 148, 149)
_MAPILLARY_THINGS = (0, 1, 8, 19, 20, 21, 22, 23, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 44, 45, 46, 47, 48,
                     49, 50, 51, 52, 53, 54, 55, 56, 57, 59, 60, 61, 62)


@dataclass(frozen=True)
class FCCLIPProtocol(Protocol):
    """Per-dataset evaluation protocol of the official eval configs (``configs/coco/panoptic-segmentation/
    fcclip/*`` and the ``eval_*`` dataset options of ``bytedance/fc-clip`` README; class files of
    ``fcclip/data/datasets/openseg_classes.py``).

    Attributes:
        panoptic_protocol: panoptic/instance inference is on in the official config, so masks are
            resized to the image before the semantic einsum (else after).
        things: contiguous ids of thing classes (panoptic).
        drop_first: drop the first class of the file (PASCAL VOC 20 = the 21-class file minus
            background).
    """

    panoptic_protocol: bool = False
    things: tuple[int, ...] = ()
    drop_first: bool = False

    def vocabulary(self) -> Vocabulary | None:
        if self.class_file is None:
            return None
        family, name = self.class_file.split("/", 1)
        vocab = read_fcclip_class_file(packaged_class_file(family, name), self.drop_first)
        return Vocabulary(vocab.names, vocab.queries, None, official=True)


def _row(dataset: str, class_file: str, short_side: int = 800, max_long_side: int = 1333, panoptic: bool = False,
         things: tuple[int, ...] = (), drop_first: bool = False) -> FCCLIPProtocol:
    config = _EVAL_CONFIGS.get(dataset)
    where = (f"configs/coco/panoptic-segmentation/fcclip/fcclip_convnext_large_eval_{config}.yaml" if config
             else "no official eval config: the ADE20K one's settings")
    return FCCLIPProtocol(dataset=dataset, short_side=short_side, max_long_side=max_long_side,
                          class_file=f"fc_clip/{class_file}", panoptic_protocol=panoptic, things=things,
                          drop_first=drop_first,
                          source=f"bytedance/fc-clip {where} (2b0bbe2); classes: fcclip/data/datasets/openseg_classes.py")


#: the official eval config of each protocol (``configs/coco/panoptic-segmentation/fcclip/``)
_EVAL_CONFIGS = {"ade20k": "ade20k", "ade847": "a847", "context59": "pc59", "context459": "pc459", "voc20": "pas20",
                 "voc21": "pas21", "cityscapes": "cityscapes", "mapillary": "mapillary_vistas", "coco_panoptic": "coco"}


FCCLIP_PROTOCOLS = ProtocolTable("fc_clip", {
    "ade20k": _row("ade20k", "ade20k_150_with_prompt_eng.txt", panoptic=True, things=_ADE150_THINGS),
    "ade847": _row("ade847", "ade20k_847_with_prompt_eng.txt"),
    "context59": _row("context59", "pascal_ctx_59_with_prompt_eng.txt"),
    "context459": _row("context459", "pascal_ctx_459_with_prompt_eng.txt"),
    "voc20": _row("voc20", "pascal_voc_21_with_prompt_eng.txt", drop_first=True),
    "voc21": _row("voc21", "pascal_voc_21_with_prompt_eng.txt"),
    "cityscapes": _row("cityscapes", "cityscapes_with_prompt_eng.txt", 1024, 2560, True, tuple(range(11, 19))),
    "mapillary": _row("mapillary", "mapillary_vistas_with_prompt_eng.txt", 1024, 2560, True, _MAPILLARY_THINGS),
    "coco_panoptic": _row("coco_panoptic", "coco_panoptic_with_prompt_eng.txt", panoptic=True,
                          things=tuple(range(80))),
    "coco_stuff": _row("coco_stuff", "coco_stuff_with_prompt_eng.txt"),
    "lvis": _row("lvis", "lvis_1203_with_prompt_eng.txt"),
}, free=FCCLIPProtocol(dataset=None, short_side=800, max_long_side=1333, panoptic_protocol=True,
                       source="the ADE20K panoptic eval settings (the official demo's), every class a thing"),
   aliases={"coco": "coco_panoptic"})

#: The training vocabulary (COCO panoptic, 133 classes): decides seen / unseen classes.
TRAIN_DATASET = "coco_panoptic"


def split_synonyms(name: str) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]`` exactly as ``prepare_class_names_from_metadata``
    (``", "`` -> ``","``, then split on ``","``; no other stripping)."""
    return name.replace(", ", ",").split(",")


def read_fcclip_class_file(path: str | Path, drop_first: bool = False) -> Vocabulary:
    """Read an FC-CLIP class file (``idx:syn1,syn2,...`` lines; ``invalid_class_id`` lines skipped,
    as ``openseg_classes.py`` does) into a vocabulary whose display names are the first synonyms
    (:func:`ovss.vocabulary.id_name_vocabulary`; a user's file in this format is read the same way
    when named explicitly, :func:`ovss.vocabulary.read_classes_file`).

    Raises:
        InputError: a line without ``:``.
    """
    try:
        return id_name_vocabulary(Path(path).read_text(encoding="utf-8").splitlines(), drop_first)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None


def dataset_vocabulary(dataset: str) -> Vocabulary:
    """The official class list (with synonyms) of a protocol: :meth:`ProtocolTable.vocabulary`."""
    return FCCLIP_PROTOCOLS.vocabulary(dataset)


def seen_mask(vocab: Vocabulary, train_vocab: Vocabulary) -> torch.Tensor:
    """(K,) int64: 1 where one of the class's synonyms equals (string equality) a training synonym."""
    train = {w for qs in train_vocab.queries for w in qs}
    return torch.tensor([int(not train.isdisjoint(set(qs))) for qs in vocab.queries], dtype=torch.long)


def geometric_ensemble(in_vocab: torch.Tensor, out_vocab: torch.Tensor, seen: torch.Tensor, alpha: float,
                       beta: float, valid: torch.Tensor | None = None) -> torch.Tensor:
    """FC-CLIP's class ensemble (``FCCLIP.forward``, eval branch).

    Args:
        in_vocab: (B, Q, K + 1) in-vocabulary logits, void last.
        out_vocab: (B, Q, K + 1) out-of-vocabulary logits, void last.
        seen: (K,) 1 for classes seen in training.
        alpha, beta: exponent of the out-of-vocabulary probability for seen / unseen classes.
        valid: optional (B, Q) bool; where False the ensemble uses in-vocabulary only
            (``ENSEMBLE_ON_VALID_MASK``).

    Returns:
        (B, Q, K + 1) log-probabilities ``log([softmax(s) * (1 - p_void), p_void] + 1e-8)``.
    """
    p_out = out_vocab[..., :-1].softmax(-1)
    p_in = in_vocab[..., :-1].softmax(-1)
    seen = seen.to(p_in.device)
    a: Any = alpha
    b: Any = beta
    if valid is not None:
        v = valid.to(p_in.dtype).unsqueeze(-1)
        a = torch.ones_like(p_in) * alpha * v
        b = torch.ones_like(p_in) * beta * v
    s = ((p_in ** (1 - a) * p_out ** a).log() * seen) + ((p_in ** (1 - b) * p_out ** b).log() * (1 - seen))
    p_void = F.softmax(in_vocab, dim=-1)[..., -1:]
    probs = torch.cat([s.softmax(-1) * (1.0 - p_void), p_void], dim=-1)
    return torch.log(probs + 1e-8)


class FCCLIP(Segmenter):
    """FC-CLIP with a released (or self-trained) checkpoint.

    Args:
        model: open_clip model name of the frozen CLIP (``convnext_large_d_320``; ResNet CLIPs
            such as ``RN50`` for their checkpoints) or an open_clip config JSON.
        pretrained: open_clip pretrained tag (``laion2b_s29b_b131k_ft_soup``) or a local file with
            the complete CLIP (the FC-CLIP checkpoints hold no text tower).
        checkpoint: the FC-CLIP ``.pth`` (required: FC-CLIP has no training-free mode).
        config: the official detectron2 YAML of the checkpoint (optional: sizes are read from the
            checkpoint; the YAML also sets thresholds, ensemble weights and the test size, which
            ``short_side`` / ``max_long_side`` override; without either, the protocol's).
        panoptic: also run panoptic inference (``extras["panoptic"]``).
        instance: also run instance inference (``extras["instances"]``: an
            :class:`ovss.models.mask_inference.Instances` by the official ``instance_inference``:
            the 100 best (query, class) pairs, thing classes only, masks = logits > 0).
        alpha, beta: override the geometric-ensemble exponents.
        use_cache: keep class embeddings in the on-disk cache.
        **common: dataset (class file, test size, semantic resize order, thing classes), device,
            short_side, max_long_side, classes, background: see :class:`ovss.segmenter.Segmenter`.

    ``predict`` returns ``scores`` = the semantic scores (K, H, W) (sums over queries of class
    probability x mask probability; not normalised over classes) and ``labels`` their argmax.
    Background words add a class scored like any other (stuff in panoptic output).

    Raises:
        InputError: no checkpoint, unreadable config.
        UnknownNameError: unknown dataset, CLIP model or tag.
        ModelLoadError: unreadable checkpoint or one of another architecture.
    """

    method = "fc_clip"
    capabilities = Capabilities(background=True, prob_threshold=True, panoptic=True, instance=True, decoder="pillow",
                                trainable=True, score_kind="mask_classification")
    protocols = FCCLIP_PROTOCOLS

    def __init__(self, model: str = "convnext_large_d_320", pretrained: str | None = "laion2b_s29b_b131k_ft_soup", *,
                 checkpoint: str | Path | None = None, config: str | Path | None = None, panoptic: bool = False,
                 instance: bool = False, alpha: Fraction | None = None, beta: Fraction | None = None,
                 use_cache: bool = True, **common: Any) -> None:
        super().__init__(**common)
        if checkpoint is None:
            raise InputError("FC-CLIP needs its trained checkpoint: pass checkpoint=/path/to/fcclip_cocopan.pth "
                             "(--checkpoint on the command line; see docs/fc_clip.md for the download)")
        self.backbone: ConvCLIPBackbone = load_conv_clip(model, pretrained, "cpu")
        self.net, self.cfg = build_fcclip(checkpoint, self.backbone, config)
        if config is None and self.backbone.model_type == "resnet":
            self.cfg.ensemble_on_valid_mask = True  # the released ResNet-CLIP configs set it
        self._check_clip_name(model)
        self.net.to(self.device).eval()
        self.model_name, self.pretrained, self.checkpoint = model, pretrained, str(checkpoint)
        self.config_path = str(config) if config else None
        self.panoptic = panoptic
        self.instance = instance
        self.use_cache = use_cache
        # test size: argument > the config's INPUT.MIN/MAX_SIZE_TEST > the dataset protocol
        base = self.protocols.get(self.dataset)
        short = common.get("short_side") or self.cfg.min_size_test or base.short_side
        long = common.get("max_long_side") or self.cfg.max_size_test or base.max_long_side
        self.protocol = self.protocol.with_overrides(short_side=int(short), max_long_side=int(long))
        if (self.dataset and common.get("short_side") is None and self.cfg.min_size_test
                and self.cfg.min_size_test != base.short_side):
            # as the official code, the config decides; the published numbers use the dataset's eval config
            warnings.warn(f"the config's INPUT.MIN_SIZE_TEST {self.cfg.min_size_test} is not the official "
                          f"{self.dataset} test size {base.short_side}: pass short_side="
                          f"{base.short_side} (--short-side) or that dataset's eval config for the "
                          "published protocol", stacklevel=2)
        self.alpha = self.cfg.alpha if alpha is None else float(alpha)
        self.beta = self.cfg.beta if beta is None else float(beta)
        self.train_vocab = dataset_vocabulary(TRAIN_DATASET)
        self._classifiers: dict[tuple[tuple[str, ...], ...], torch.Tensor] = {}

    def _check_clip_name(self, model: str) -> None:
        want = self.cfg.clip_model
        have = Path(model).stem if model.lower().endswith(".json") else model.replace("/", "-")
        if want and want.lower() != have.lower():
            raise ModelLoadError(f"the config was made for CLIP {want!r} but model={model!r} was given: "
                                 f"pass model={want!r} (--model {want})")

    # ---- vocabulary and text classifier -------------------------------------------------------
    def thing_classes(self, vocab: Vocabulary) -> tuple[int, ...]:
        """Thing class ids of ``vocab``: the protocol's for its own class list (shifted by a prepended
        background class, which is stuff), every non-background class for any other list."""
        own = self.default_vocabulary()
        fg = tuple(q for i, q in enumerate(vocab.queries) if i != vocab.background)
        if self.dataset is not None and own is not None and fg == own.queries:
            shift = 1 if vocab.background == 0 else 0
            return tuple(t + shift for t in self.protocol.things)
        return tuple(i for i in range(len(vocab)) if i != vocab.background)

    def text_classifier(self, vocab: Vocabulary) -> tuple[torch.Tensor, list[int]]:
        """(S, D) one L2-normalised row per synonym (14 ViLD templates averaged) and the rows per class.

        Cached in memory and on disk (``ovss.text`` cache) per synonym list.
        """
        key = vocab.queries
        if key not in self._classifiers:
            words = [w for qs in vocab.queries for w in qs]
            emb = class_embeddings(self.backbone.clip, words, VILD_TEMPLATES, use_cache=self.use_cache)
            self._classifiers[key] = emb.to(self.device)
        return self._classifiers[key], [len(qs) for qs in vocab.queries]

    # ---- inference ----------------------------------------------------------------------------
    def preprocess(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """(h, w, 3) uint8 network-size image -> normalised (1, 3, Hp, Wp) padded tensor and (h, w)."""
        x = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).to(self.device).float()
        mean = torch.tensor(self.cfg.pixel_mean, device=self.device).view(-1, 1, 1)
        std = torch.tensor(self.cfg.pixel_std, device=self.device).view(-1, 1, 1)
        x = (x - mean) / std
        h, w = x.shape[-2:]
        d = max(int(self.cfg.size_divisibility), 1)
        hp, wp = (h + d - 1) // d * d, (w + d - 1) // d * d
        padded = x.new_zeros(1, 3, hp, wp)
        padded[0, :, :h, :w] = x
        return padded, (int(h), int(w))

    @torch.no_grad()
    def run_resized(self, image: np.ndarray, ori_size: tuple[int, int], vocab: Vocabulary,
                    things: Sequence[int] = (), panoptic: bool | None = None,
                    instance: bool | None = None) -> dict[str, Any]:
        """Full pipeline on an image already resized to the network size, with every intermediate.

        Args:
            image: (h, w, 3) uint8 RGB at network size.
            ori_size: (H, W) output size.
            vocab: the classes.
            things: thing class ids (panoptic, and the instance filter).
            panoptic: run panoptic inference (default: the segmenter's setting).
            instance: run instance inference (default: the segmenter's setting).

        Returns:
            ``text_classifier`` (S + 1, D), ``features``, ``mask_features``, ``multi_scale_features``,
            ``in_vocab_logits`` (Q, K + 1), ``aux_in_vocab_logits`` list, ``pred_masks`` (Q, h/4, w/4),
            ``pooled_clip_feature`` (Q, D), ``out_vocab_logits``, ``mask_cls_results``,
            ``sem_seg`` (K, H, W), ``panoptic_seg`` / ``segments`` when panoptic, ``instances``
            (:class:`ovss.models.mask_inference.Instances`) when instance.
        """
        panoptic = self.panoptic if panoptic is None else panoptic
        instance = self.instance if instance is None else instance
        text, num_syn = self.text_classifier(vocab)
        x, size = self.preprocess(image)
        out = self.net(x, text, num_syn)
        classifier = out["text_classifier"]
        pred_masks = out["pred_masks"]
        dense = out["features"]["clip_vis_dense"]
        pool_masks = F.interpolate(pred_masks, size=dense.shape[-2:], mode="bilinear", align_corners=False)
        pooled = self.backbone.pooled_clip_features(dense, pool_masks)
        out_vocab = classification_logits(pooled, classifier, self.backbone.logit_scale, num_syn)
        valid = (pool_masks > 0).sum((-1, -2)) > 0 if self.cfg.ensemble_on_valid_mask else None
        seen = seen_mask(vocab, self.train_vocab)
        mask_cls = geometric_ensemble(out["pred_logits"], out_vocab, seen, self.alpha, self.beta, valid)[0]
        masks = F.interpolate(pred_masks, size=x.shape[-2:], mode="bilinear", align_corners=False)[0]
        # panoptic protocols (and free vocabularies: the demo runs the panoptic ADE config)
        # resize the masks to the image before the semantic sum, semantic-only protocols after it
        own = self.default_vocabulary() if self.dataset is not None else None
        own_vocab = own is not None and vocab.queries == own.queries
        before = panoptic or instance or not own_vocab or self.protocol.panoptic_protocol
        res: dict[str, Any] = {
            "text_classifier": classifier, "features": out["features"], "mask_features": out["mask_features"],
            "multi_scale_features": out["multi_scale_features"], "in_vocab_logits": out["pred_logits"][0],
            "aux_in_vocab_logits": [a["pred_logits"][0] for a in out["aux_outputs"]], "pred_masks": pred_masks[0],
            "pooled_clip_feature": pooled[0], "out_vocab_logits": out_vocab[0], "mask_cls_results": mask_cls,
            "num_synonyms": num_syn, "seen": seen,
        }
        if before:
            masks = postprocess_masks(masks, size, ori_size)
            res["sem_seg"] = semantic_inference(mask_cls, masks)
        else:
            res["sem_seg"] = postprocess_masks(semantic_inference(mask_cls, masks), size, ori_size)
        if panoptic:
            res["panoptic_seg"], res["segments"] = panoptic_inference(
                mask_cls, masks, things, self.cfg.object_mask_threshold, self.cfg.overlap_threshold)
        if instance:  # official eval configs have panoptic on: thing classes only
            res["instances"] = instance_inference(mask_cls, masks, things=things)
        return res

    def segment(self, rgb: np.ndarray, vocab: Vocabulary, *, prob_threshold: float | None = None,
                image_id: str | None = None, trace: bool = False) -> Segmentation:
        """detectron2's test resize, :meth:`run_resized`, the argmax; ``prob_threshold`` relabels pixels
        whose top score is below it to the background class."""
        resized = d2_resize(rgb, self.short_side, self.max_long_side)
        res = self.run_resized(resized, (rgb.shape[0], rgb.shape[1]), vocab, self.thing_classes(vocab))
        scores = res["sem_seg"].float()
        labels = scores.argmax(0)
        thd = self.effective_threshold(prob_threshold)
        if thd > 0 and vocab.background is not None:
            labels[scores.max(0).values < thd] = int(vocab.background)
        extras: dict[str, Any] = {}
        if "panoptic_seg" in res:
            extras["panoptic"] = {"panoptic_seg": res["panoptic_seg"].cpu(), "segments": res["segments"]}
        if "instances" in res:
            extras["instances"] = res["instances"].to("cpu")
        return Segmentation(scores, labels, extras=extras, settings={"prob_threshold": thd},
                            trace=res if trace else {})

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "model": self.model_name, "pretrained": self.pretrained,
                "checkpoint": self.checkpoint, "config": self.config_path,
                "panoptic": self.panoptic, "instance": self.instance, "short_side": self.short_side,
                "max_long_side": self.max_long_side,
                "size_divisibility": self.cfg.size_divisibility, "alpha": self.alpha, "beta": self.beta,
                "object_mask_threshold": self.cfg.object_mask_threshold,
                "overlap_threshold": self.cfg.overlap_threshold, "templates": "vild14"}
