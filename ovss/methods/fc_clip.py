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

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..backbones.convnext_clip import ConvCLIPBackbone, load_conv_clip
from ..errors import InputError, ModelLoadError, UnknownNameError, did_you_mean
from ..imageio import ImageInput, d2_resize, read_image_d2
from ..importers.fc_clip import build_fcclip
from ..models.mask2former import classification_logits
from ..models.mask_inference import instance_inference
from ..segmenter import SegmentationResult, Segmenter, check_test_size
from ..text import class_embeddings
from ..vocabulary import ClassesInput, Vocabulary, packaged_class_file, parse_classes

#: The 14 ViLD prompt templates (``fcclip/fcclip.py: VILD_PROMPT``), in order.
VILD_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
)

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
class Protocol:
    """Per-dataset evaluation protocol of the official eval configs.

    Attributes:
        class_file: file under ``ovss/classnames/fc_clip``.
        short_side, max_long_side: test resize.
        panoptic_protocol: panoptic/instance inference is on in the official config, so masks are
            resized to the image before the semantic einsum (else after).
        things: contiguous ids of thing classes (panoptic).
        drop_first: drop the first class of the file (PASCAL VOC 20 = the 21-class file minus
            background).
    """

    class_file: str
    short_side: int = 800
    max_long_side: int = 1333
    panoptic_protocol: bool = False
    things: tuple[int, ...] = ()
    drop_first: bool = False


PROTOCOLS: dict[str, Protocol] = {
    "ade20k": Protocol("ade20k_150_with_prompt_eng.txt", panoptic_protocol=True, things=_ADE150_THINGS),
    "ade847": Protocol("ade20k_847_with_prompt_eng.txt"),
    "context59": Protocol("pascal_ctx_59_with_prompt_eng.txt"),
    "context459": Protocol("pascal_ctx_459_with_prompt_eng.txt"),
    "voc20": Protocol("pascal_voc_21_with_prompt_eng.txt", drop_first=True),
    "voc21": Protocol("pascal_voc_21_with_prompt_eng.txt"),
    "cityscapes": Protocol("cityscapes_with_prompt_eng.txt", 1024, 2560, True, tuple(range(11, 19))),
    "mapillary": Protocol("mapillary_vistas_with_prompt_eng.txt", 1024, 2560, True, _MAPILLARY_THINGS),
    "coco_panoptic": Protocol("coco_panoptic_with_prompt_eng.txt", panoptic_protocol=True, things=tuple(range(80))),
    "coco_stuff": Protocol("coco_stuff_with_prompt_eng.txt"),
    "lvis": Protocol("lvis_1203_with_prompt_eng.txt"),
}
ALIASES = {"ade150": "ade20k", "ade20k_150": "ade20k", "ade20k_847": "ade847", "ade20k_full": "ade847",
           "pc59": "context59", "pascal_context": "context59", "pascal_context59": "context59",
           "pc459": "context459", "pascal_context459": "context459", "pascal_voc20": "voc20",
           "pascal_voc21": "voc21", "pas20": "voc20", "pas21": "voc21", "mapillary_vistas": "mapillary",
           "coco": "coco_panoptic", "coco133": "coco_panoptic", "coco_stuff171": "coco_stuff"}

#: The training vocabulary (COCO panoptic, 133 classes): decides seen / unseen classes.
TRAIN_DATASET = "coco_panoptic"


def resolve_dataset(name: str) -> str:
    """Canonical protocol name of ``name`` (aliases accepted).

    Raises:
        UnknownNameError: no such protocol.
    """
    key = ALIASES.get(name.lower(), name.lower())
    if key not in PROTOCOLS:
        names = sorted(PROTOCOLS) + sorted(ALIASES)
        raise UnknownNameError(f"unknown FC-CLIP dataset protocol {name!r}.{did_you_mean(name, names)} "
                               f"Available: {', '.join(PROTOCOLS)}")
    return key


def split_synonyms(name: str) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]`` exactly as ``prepare_class_names_from_metadata``
    (``", "`` -> ``","``, then split on ``","``; no other stripping)."""
    return name.replace(", ", ",").split(",")


def read_fcclip_class_file(path: str | Path, drop_first: bool = False) -> Vocabulary:
    """Read an FC-CLIP class file (``idx:syn1,syn2,...`` lines; ``invalid_class_id`` lines skipped,
    as ``openseg_classes.py`` does) into a vocabulary whose display names are the first synonyms.

    Raises:
        InputError: a line without ``:``.
    """
    rows: list[list[str]] = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        if ":" not in line:
            raise InputError(f"{path}:{n + 1}: expected 'id:name1,name2,...', got {line!r}")
        _, name = line.split(":", 1)
        if name == "invalid_class_id":
            continue
        rows.append(split_synonyms(name))
    if drop_first:
        rows = rows[1:]
    return Vocabulary(tuple(r[0] for r in rows), tuple(tuple(r) for r in rows))


def dataset_vocabulary(dataset: str) -> Vocabulary:
    """The official class list (with synonyms) of a dataset protocol."""
    proto = PROTOCOLS[resolve_dataset(dataset)]
    return read_fcclip_class_file(packaged_class_file("fc_clip", proto.class_file), proto.drop_first)


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


def postprocess_masks(mask_logits: torch.Tensor, input_size: tuple[int, int], output_size: tuple[int, int]
                      ) -> torch.Tensor:
    """detectron2 ``sem_seg_postprocess``: (N, Hp, Wp) -> crop to ``input_size`` -> bilinear to ``output_size``."""
    x = mask_logits[:, : input_size[0], : input_size[1]].expand(1, -1, -1, -1)
    return F.interpolate(x, size=output_size, mode="bilinear", align_corners=False)[0]


def semantic_inference(mask_cls: torch.Tensor, mask_pred: torch.Tensor) -> torch.Tensor:
    """(Q, K + 1) log-probs, (Q, H, W) mask logits -> (K, H, W) ``sum_q softmax(cls)[q, c] * sigmoid(mask_q)``."""
    return torch.einsum("qc,qhw->chw", F.softmax(mask_cls, dim=-1)[..., :-1], mask_pred.sigmoid())


def panoptic_inference(mask_cls: torch.Tensor, mask_pred: torch.Tensor, things: Sequence[int],
                       object_mask_threshold: float = 0.0, overlap_threshold: float = 0.8
                       ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Mask2Former's panoptic merge (``FCCLIP.panoptic_inference``).

    Args:
        mask_cls: (Q, K + 1) log-probabilities, void last.
        mask_pred: (Q, H, W) mask logits at the output size.
        things: contiguous ids of the thing classes (stuff segments of one class are merged).

    Returns:
        The (H, W) int32 id map (0 = no segment) and one dict per segment: ``id``,
        ``category_id`` (contiguous), ``isthing``, ``score`` (class probability of the query
        that created the segment).
    """
    num_classes = mask_cls.shape[-1] - 1
    scores, labels = F.softmax(mask_cls, dim=-1).max(-1)
    masks = mask_pred.sigmoid()
    keep = labels.ne(num_classes) & (scores > object_mask_threshold)
    cur_scores, cur_classes, cur_masks = scores[keep], labels[keep], masks[keep]
    h, w = cur_masks.shape[-2:]
    panoptic = torch.zeros((h, w), dtype=torch.int32, device=mask_pred.device)
    segments: list[dict[str, Any]] = []
    if cur_masks.shape[0] == 0:
        return panoptic, segments
    ids = (cur_scores.view(-1, 1, 1) * cur_masks).argmax(0)
    thing_set = set(int(t) for t in things)
    stuff_ids: dict[int, int] = {}
    current = 0
    for k in range(cur_classes.shape[0]):
        cls = int(cur_classes[k])
        isthing = cls in thing_set
        won = ids == k
        mask_area = int(won.sum())
        original_area = int((cur_masks[k] >= 0.5).sum())
        mask = won & (cur_masks[k] >= 0.5)
        if mask_area > 0 and original_area > 0 and int(mask.sum()) > 0:
            if mask_area / original_area < overlap_threshold:
                continue
            if not isthing:
                if cls in stuff_ids:
                    panoptic[mask] = stuff_ids[cls]
                    continue
                stuff_ids[cls] = current + 1
            current += 1
            panoptic[mask] = current
            segments.append({"id": current, "isthing": bool(isthing), "category_id": cls,
                             "score": float(cur_scores[k])})
    return panoptic, segments


class FCCLIP(Segmenter):
    """FC-CLIP with a released (or self-trained) checkpoint.

    Args:
        model: open_clip model name of the frozen CLIP (``convnext_large_d_320``; ResNet CLIPs
            such as ``RN50`` for their checkpoints) or an open_clip config JSON.
        pretrained: open_clip pretrained tag (``laion2b_s29b_b131k_ft_soup``) or a local file with
            the complete CLIP (the FC-CLIP checkpoints hold no text tower).
        checkpoint: the FC-CLIP ``.pth`` (required: FC-CLIP has no training-free mode).
        config: the official detectron2 YAML of the checkpoint (optional: sizes are read from the
            checkpoint; the YAML also sets thresholds, ensemble weights and the test size).
        dataset: protocol (class file, test size, semantic resize order, thing classes).
        panoptic: also run panoptic inference (``extras["panoptic"]``).
        instance: also run instance inference (``extras["instances"]``: an
            :class:`ovss.models.mask_inference.Instances`, the official ``instance_inference``:
            top 100 (query, class) pairs, thing classes only, masks = logits > 0).
        short_side, max_long_side: override the protocol's test resize.
        alpha, beta: override the geometric-ensemble exponents.
        device: torch device.

    ``predict`` returns ``logits`` = the semantic scores (K, H, W) (sums over queries of class
    probability x mask probability; not normalised over classes) and ``labels`` their argmax.

    Raises:
        InputError: no checkpoint, unreadable config.
        UnknownNameError: unknown dataset, CLIP model or tag.
        ModelLoadError: unreadable checkpoint or one of another architecture.
    """

    method = "fc_clip"
    paper = "Yu et al., NeurIPS 2023 (FC-CLIP)"
    protocol_table = PROTOCOLS

    def __init__(self, model: str = "convnext_large_d_320", pretrained: str = "laion2b_s29b_b131k_ft_soup",
                 checkpoint: str | Path | None = None, config: str | Path | None = None, dataset: str | None = "ade20k",
                 panoptic: bool = False, instance: bool = False, device: str | torch.device = "cpu",
                 short_side: int | None = None,
                 max_long_side: int | None = None, alpha: float | None = None, beta: float | None = None,
                 use_cache: bool = True) -> None:
        super().__init__(device)
        check_test_size(short_side, max_long_side)
        if checkpoint is None:
            raise InputError("FC-CLIP needs its trained checkpoint: pass checkpoint=/path/to/fcclip_cocopan.pth "
                             "(--checkpoint on the command line; see docs/fc_clip.md for the download)")
        self.dataset = resolve_dataset(dataset) if dataset else None
        self.protocol = PROTOCOLS[self.dataset] if self.dataset else None
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
        default_short = self.cfg.min_size_test or (self.protocol.short_side if self.protocol else 800)
        default_long = self.cfg.max_size_test or (self.protocol.max_long_side if self.protocol else 1333)
        self.short_side = int(short_side or default_short)
        self.max_long_side = int(max_long_side or default_long)
        if (self.protocol and short_side is None and self.cfg.min_size_test
                and self.cfg.min_size_test != self.protocol.short_side):
            # as the official code, the config decides; the published numbers use the dataset's eval config
            warnings.warn(f"the config's INPUT.MIN_SIZE_TEST {self.cfg.min_size_test} is not the official "
                          f"{self.dataset} test size {self.protocol.short_side}: pass short_side="
                          f"{self.protocol.short_side} (--short-side) or that dataset's eval config for the "
                          "published protocol", stacklevel=2)
        self.alpha = self.cfg.alpha if alpha is None else float(alpha)
        self.beta = self.cfg.beta if beta is None else float(beta)
        self.train_vocab = dataset_vocabulary(TRAIN_DATASET)
        self._protocol_vocab = dataset_vocabulary(self.dataset) if self.dataset else None
        self._classifiers: dict[tuple[tuple[str, ...], ...], torch.Tensor] = {}

    def _check_clip_name(self, model: str) -> None:
        want = self.cfg.clip_model
        have = Path(model).stem if model.lower().endswith(".json") else model.replace("/", "-")
        if want and want.lower() != have.lower():
            raise ModelLoadError(f"the config was made for CLIP {want!r} but model={model!r} was given: "
                                 f"pass model={want!r} (--model {want})")

    # ---- vocabulary and text classifier -------------------------------------------------------
    def vocabulary(self, classes: ClassesInput | Vocabulary | None) -> tuple[Vocabulary, tuple[int, ...]]:
        """The vocabulary of a call and its thing classes (custom classes are all things)."""
        if classes is None:
            if self.dataset is None:
                raise InputError("no classes given and no dataset protocol set: pass classes=... "
                                 "or dataset='ade20k' (or another protocol)")
            return dataset_vocabulary(self.dataset), self.protocol.things
        if isinstance(classes, Vocabulary):
            vocab = classes
        elif isinstance(classes, (str, Path)) and "\n" not in str(classes) and Path(classes).is_file() \
                and _is_fcclip_class_file(Path(classes)):
            vocab = read_fcclip_class_file(classes)  # an official ``id:name1,name2`` file
        else:
            vocab = parse_classes(classes)
        return vocab, tuple(range(len(vocab)))

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
    def run(self, image: np.ndarray, ori_size: tuple[int, int], vocab: Vocabulary, things: Sequence[int] = (),
            panoptic: bool | None = None, instance: bool | None = None) -> dict[str, Any]:
        """Full pipeline on an already resized image, with every intermediate.

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
        own_vocab = self._protocol_vocab is not None and vocab.queries == self._protocol_vocab.queries
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

    def predict(self, image: ImageInput, classes: ClassesInput | Vocabulary | None = None, *,
                background: list[str] | str | None = None,
                prob_threshold: float | None = None) -> SegmentationResult:
        """Segment one image (see :class:`FCCLIP`).

        ``background`` adds a background class (index 0) scored like any other class;
        ``prob_threshold`` relabels pixels whose top score is below it to that class (or to the
        protocol's background class) and needs one of them.

        Raises:
            InputError: unreadable image, bad classes, a threshold without a background class.
        """
        img = read_image_d2(image)  # Pillow decoding, as detectron2's read_image
        vocab, things = self.vocabulary(classes)
        if background is not None:
            words = [background] if isinstance(background, str) else list(background)
            had = vocab.background is not None
            vocab = vocab.with_background(words)
            if not had:  # a background class was prepended: class ids shift by one
                things = tuple(t + 1 for t in things)
        if prob_threshold is not None and vocab.background is None:
            raise InputError("prob_threshold needs a background class: pass background=... (e.g. 'background')")
        resized = d2_resize(img, self.short_side, self.max_long_side)
        res = self.run(resized, (img.shape[0], img.shape[1]), vocab, things)
        scores = res["sem_seg"].float()
        labels = scores.argmax(0)
        if prob_threshold is not None:
            labels[scores.max(0).values < prob_threshold] = int(vocab.background)
        extras: dict[str, Any] = {}
        if "panoptic_seg" in res:
            extras["panoptic"] = {"panoptic_seg": res["panoptic_seg"].cpu(), "segments": res["segments"]}
        if "instances" in res:
            extras["instances"] = res["instances"].to("cpu")
        return SegmentationResult(scores.cpu(), labels.cpu().long(), list(vocab.names), vocab.background,
                                  self.settings(), extras)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "model": self.model_name, "pretrained": self.pretrained,
                "checkpoint": self.checkpoint, "config": self.config_path, "dataset": self.dataset,
                "panoptic": self.panoptic, "instance": self.instance, "short_side": self.short_side, "max_long_side": self.max_long_side,
                "size_divisibility": self.cfg.size_divisibility, "alpha": self.alpha, "beta": self.beta,
                "object_mask_threshold": self.cfg.object_mask_threshold,
                "overlap_threshold": self.cfg.overlap_threshold, "templates": "vild14"}


def _is_fcclip_class_file(path: Path) -> bool:
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return bool(lines) and all(re.match(r"^\d+:", line) for line in lines)
