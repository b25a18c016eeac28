"""Training ZSSeg's / ZegFormer's proposal network (MaskFormer v1 with a CLIP-text class head) and
ZSSeg's prompt learning, as the official code does.

Segmentation model (MendelXu/zsseg.baseline ``train_net.py`` and dingjiansw101/ZegFormer, both on
facebookresearch/MaskFormer): COCO-Stuff-164k with the **seen classes only** (unseen classes mapped to
the ignore label 255, seen classes renumbered in label order), MaskFormer's semantic mapper
(:func:`ovss.training.augment.maskformer_semantic`: short side from 320..960, 640 crop, SSD colour
augmentation, flip, padding to 640), AdamW (lr 1e-4, weight decay 1e-4, 0 for norms and embeddings,
backbone lr x 0.1; ``train_net.py`` ``build_optimizer``), poly schedule (power 0.9, no warmup),
full-model gradient clipping 0.01, 60k iterations at batch 32; losses of MaskFormer v1: class
cross-entropy (no-object weight 0.1), sigmoid focal (weight 20) and Dice (weight 1) on the matched
queries' masks upsampled to the target size, normalised by the target count summed over ranks / world
size (``mask_former/modeling/criterion.py``); Hungarian matching with costs class 1 / focal 20 / Dice 1
on targets resized to the prediction size (``matcher.py``); deep supervision. The class head classifies
against frozen CLIP text features of the seen classes (ZSSeg: learned prompts or templates + a learned
no-object embedding, ``100 * cos``; ZegFormer: its prompt set + ``bg_feature``).

ZSSeg prompt learning (``ProposalClipClassifier``, config
``zero_shot_proposal_classification_learn_prompt_bs32_10k.yaml``): one sample per (image, seen class)
pair (``load_binary_mask``; ``SAMPLE_PER_CLASS`` pairs per class drawn with replacement by
``numpy.random.default_rng(SAMPLE_SEED).choice``, ``mask_former/data/build.py:343-371``), cropped by
:func:`ovss.training.augment.zsseg_prompt_crop`, normalised with CLIP's mean/std, pixels outside the
mask set to CLIP's mean in the normalised space, CLIP image features (position embedding bicubically
resized to the 15 x 14 grid of the 244 x 224 crops, as the vendored CLIP does for every batch), logits
``100 * cos`` against the prompt features of all seen classes, cross-entropy; SGD lr 0.02, momentum 0.9,
weight decay 5e-4, cosine schedule with a constant warmup (factor 0.005, 100 iterations), batch 32.

Data layout (detectron2's prepared COCO-Stuff, or your own): ``images/<name>.jpg|png`` and
``labels/<name>.png`` with class ids 0..K-1 in the order of ``--classes`` and 255 = ignore.
Checkpoints are written in the official key layout, with the architecture as dotted config keys, so
``ovss segment --method zsseg|zegformer --checkpoint`` loads them back.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..backbones.clip import LoadedCLIP, load_clip
from ..checkpoints import load_state_dict
from ..errors import DatasetError, InputError
from ..imageio import read_image_d2
from ..importers.zegformer import ZEGFORMER_EMBED_DIM, ZEGFORMER_RELEASED
from ..importers.d2config import nest_keys
from ..importers.zsseg import ZSSEG_RELEASED, maskformer_config
from ..models.maskformer import MaskFormerV1
from ..methods import two_stage as ts
from ..methods.zsseg import COCO_STUFF_UNSEEN
from .augment import SemanticAug, maskformer_semantic, sample_random, zsseg_prompt_crop
from .engine import LRFactor
from .losses import batch_dice_cost, batch_sigmoid_focal_cost, dice_loss, sigmoid_focal_loss

IGNORE = 255


@dataclass
class TrainConfig:
    """Settings of one training run (official values as defaults; sizes as dotted detectron2 keys).

    Attributes:
        method: "zsseg" or "zegformer".
        images, labels: the training folders (see the module docstring).
        out: output folder.
        class_names: label id -> name (default: COCO-Stuff-171 in ZSSeg's order).
        unseen: class names left out of training (mapped to ignore).
        arch: dotted ``MODEL.*`` overrides of the released sizes (a ``*_tiny_config.json`` or an official YAML).
        clip_model, clip_pretrained: open_clip CLIP (name + tag, or config JSON + local weights).
        prompt: ZSSeg "learnable" / "vild" / "single"; ZegFormer "imagenet_select" / "single".
        prompt_checkpoint: ZSSeg: a checkpoint holding learned prompts (``clip_adapter.prompt_learner.*``).
        init_backbone: ResNet weights (detectron2 key names, ``backbone.`` prefix optional; .pth or
            .safetensors) to start from, as ``MODEL.WEIGHTS`` does.
        max_iter, batch_size, lr, weight_decay, backbone_lr_multiplier, clip_grad: solver.
        crop_size, min_sizes, max_size, color_aug_ssd, single_category_max_area: ``INPUT.*``.
        no_object_weight, class_weight, mask_weight, dice_weight: criterion.
        checkpoint_period, seed, device, augment: run settings.
    """

    method: str = "zsseg"
    images: str = ""
    labels: str = ""
    out: str = "output"
    class_names: list[str] = field(default_factory=list)
    unseen: list[str] = field(default_factory=lambda: list(COCO_STUFF_UNSEEN))
    arch: dict[str, Any] = field(default_factory=dict)
    clip_model: str = "ViT-B-16"
    clip_pretrained: str = "openai"
    prompt: str = ""
    prompt_checkpoint: str = ""
    init_backbone: str = ""
    prompt_lr: float = 0.02
    max_iter: int = 60000
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 1e-4
    backbone_lr_multiplier: float = 0.1
    clip_grad: float = 0.01
    crop_size: int = 640
    min_sizes: list[int] = field(default_factory=lambda: [int(x * 0.1 * 640) for x in range(5, 16)])
    max_size: int = 2560
    color_aug_ssd: bool = True
    single_category_max_area: float = 1.0
    no_object_weight: float = 0.1
    class_weight: float = 1.0
    mask_weight: float = 20.0
    dice_weight: float = 1.0
    checkpoint_period: int = 5000
    seed: int = 0
    device: str = "cpu"
    augment: bool = True


# ------------------------------------------------------------------------------------ losses

@torch.no_grad()
def hungarian_match(logits: torch.Tensor, masks: torch.Tensor, targets: list[dict[str, torch.Tensor]],
                    cost_class: float = 1.0, cost_mask: float = 20.0, cost_dice: float = 1.0) -> list[
                        tuple[torch.Tensor, torch.Tensor]]:
    """MaskFormer ``HungarianMatcher``: per image, costs -p(class), focal and Dice (targets resized to the
    prediction size, nearest), solved by ``scipy.optimize.linear_sum_assignment``.

    Args:
        logits: (B, Q, C+1); masks: (B, Q, h, w) logits; targets: per image ``labels`` (N,) and ``masks``
            (N, H, W) float.

    Returns:
        per image (query indices, target indices), int64.
    """
    from scipy.optimize import linear_sum_assignment

    out = []
    for b, tgt in enumerate(targets):
        if len(tgt["labels"]) == 0:
            out.append((torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)))
            continue
        prob = logits[b].float().softmax(-1)
        c_class = -prob[:, tgt["labels"]]
        tm = F.interpolate(tgt["masks"][:, None].float(), size=masks.shape[-2:], mode="nearest")[:, 0].flatten(1)
        om = masks[b].float().flatten(1)
        cost = (cost_mask * batch_sigmoid_focal_cost(om, tm) + cost_class * c_class
                + cost_dice * batch_dice_cost(om, tm)).cpu()
        i, j = linear_sum_assignment(cost.numpy())
        out.append((torch.as_tensor(i, dtype=torch.int64), torch.as_tensor(j, dtype=torch.int64)))
    return out


def set_criterion(layers: list[tuple[torch.Tensor, torch.Tensor]], targets: list[dict[str, torch.Tensor]],
                  num_classes: int, cfg: TrainConfig, num_masks: float | None = None,
                  indices_out: list[Any] | None = None) -> dict[str, torch.Tensor]:
    """MaskFormer ``SetCriterion`` with deep supervision: the weighted losses per layer (``loss_ce``,
    ``loss_mask``, ``loss_dice``; ``_i`` suffixes for the auxiliary layers, the last layer without).

    Args:
        layers: (class logits (B, Q, C+1), mask logits (B, Q, h, w)) per decoder layer, last = final.
        num_masks: loss normaliser (default: this batch's target count, at least 1).
        indices_out: when given, receives each layer's matching (final layer first, as the official
            criterion matches it first).
    """
    device = layers[-1][0].device
    empty_weight = torch.ones(num_classes + 1, device=device)
    empty_weight[-1] = cfg.no_object_weight
    if num_masks is None:
        num_masks = max(float(sum(len(t["labels"]) for t in targets)), 1.0)
    losses: dict[str, torch.Tensor] = {}
    n = len(layers)
    order = [n - 1] + list(range(n - 1))
    for li in order:
        logits, masks = layers[li]
        suffix = "" if li == n - 1 else f"_{li}"
        idx = hungarian_match(logits, masks, targets, cfg.class_weight, cfg.mask_weight, cfg.dice_weight)
        if indices_out is not None:
            indices_out.append(idx)
        tgt_cls = torch.full(logits.shape[:2], num_classes, dtype=torch.int64, device=device)
        for b, (i, j) in enumerate(idx):
            tgt_cls[b, i.to(device)] = targets[b]["labels"][j.to(device)]
        losses["loss_ce" + suffix] = cfg.class_weight * F.cross_entropy(logits.float().transpose(1, 2), tgt_cls,
                                                                        empty_weight)
        src = torch.cat([masks[b, i.to(device)] for b, (i, _) in enumerate(idx)])
        tgt = torch.cat([targets[b]["masks"][j.to(device)] for b, (_, j) in enumerate(idx)])
        if len(src):
            src = F.interpolate(src[:, None].float(), size=tgt.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
            tgt = tgt.float()
            losses["loss_mask" + suffix] = cfg.mask_weight * sigmoid_focal_loss(src.flatten(1), tgt.flatten(1), num_masks)
            losses["loss_dice" + suffix] = cfg.dice_weight * dice_loss(src.flatten(1), tgt.flatten(1), num_masks)
        else:
            zero = masks.sum() * 0.0
            losses["loss_mask" + suffix] = zero
            losses["loss_dice" + suffix] = zero
    return losses


# -------------------------------------------------------------------------------------- data

def read_names(path: str | Path) -> list[str]:
    """``--classes`` / ``--unseen`` file: one class per line (label id = line number, 0-based; synonyms
    after commas stay part of the name, as ZSSeg's class lists hold them).

    Raises:
        InputError: missing or empty file.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"class file not found: {p}")
    names = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not names:
        raise InputError(f"class file {p} lists no class")
    return names


class SeenClassDataset:
    """Image + label-PNG pairs with unseen classes mapped to ignore (255) and seen classes renumbered
    0..S-1 in label-id order.

    Raises:
        DatasetError: missing folders, no images, or an image without its label.
        InputError: unseen names that are not class names.
    """

    def __init__(self, images: str | Path, labels: str | Path, class_names: Sequence[str],
                 unseen: Sequence[str]) -> None:
        images, labels = Path(images), Path(labels)
        for p, what in ((images, "image"), (labels, "label")):
            if not p.is_dir():
                raise DatasetError(f"{what} folder not found: {p}")
        self.items = []
        for img in sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")):
            lab = labels / (img.stem + ".png")
            if not lab.is_file():
                raise DatasetError(f"no label {lab.name} for image {img.name} in {labels}: label PNGs are named "
                                   "like the images (prepare COCO-Stuff with detectron2's "
                                   "prepare_coco_stuff_164k_sem_seg.py)")
            self.items.append((img, lab))
        if not self.items:
            raise DatasetError(f"no images (.jpg/.png) in {images}")
        unknown = set(unseen) - set(class_names)
        if unknown:
            raise InputError(f"unseen classes not in the class list: {sorted(unknown)}")
        if len(class_names) > 255:
            raise InputError(f"{len(class_names)} classes do not fit 8-bit label PNGs with 255 = ignore")
        lut = np.full(256, IGNORE, dtype=np.uint8)
        self.seen_names = [n for n in class_names if n not in set(unseen)]
        seen_ids = [i for i, n in enumerate(class_names) if n not in set(unseen)]
        for new, old in enumerate(seen_ids):
            lut[old] = new
        self.lut = lut

    def __len__(self) -> int:
        return len(self.items)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 image and (H, W) uint8 seen-class labels (255 = ignore)."""
        img_path, lab_path = self.items[i]
        img = read_image_d2(img_path)
        lab = np.asarray(Image.open(lab_path))
        if lab.ndim != 2 or lab.shape != img.shape[:2]:
            raise DatasetError(f"label {lab_path} is not a single-channel map of the image's size")
        return img, self.lut[lab]

    def mapped(self, i: int, position: int, seed: int, aug: SemanticAug | None) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``i`` at stream ``position`` through MaskFormer's semantic mapper
        (:func:`ovss.training.augment.maskformer_semantic`, randomness from ``(seed, position)``), or as
        stored with int64 labels when ``aug`` is None."""
        img, lab = self.load(i)
        if aug is None:
            return img, lab.astype(np.int64)
        return maskformer_semantic(img, lab, sample_random(seed, position), aug)


def make_batch(pairs: list[tuple[np.ndarray, np.ndarray]], device: torch.device, divisor: int = 32) -> tuple[
        torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Normalised, zero-padded image batch (B, 3, Hp, Wp) (detectron2 ``ImageList.from_tensors``) and
    per-image targets: one binary mask per class present (``np.unique`` order, ignore dropped;
    ``mask_former_semantic_dataset_mapper.py:175-200``), padded to (Hp, Wp)."""
    mean = torch.tensor(ts.IMAGENET_MEAN_255).view(3, 1, 1)
    std = torch.tensor(ts.IMAGENET_STD_255).view(3, 1, 1)
    hp = -(-max(p[0].shape[0] for p in pairs) // divisor) * divisor
    wp = -(-max(p[0].shape[1] for p in pairs) // divisor) * divisor
    images, targets = [], []
    for img, lab in pairs:
        x = (torch.from_numpy(img.transpose(2, 0, 1).copy()).float() - mean) / std
        images.append(F.pad(x, (0, wp - x.shape[2], 0, hp - x.shape[1])))
        lab_t = torch.from_numpy(lab.astype(np.int64))
        classes = [int(c) for c in np.unique(lab) if int(c) != IGNORE]
        masks = torch.zeros(len(classes), hp, wp)
        for k, c in enumerate(classes):
            masks[k, :lab.shape[0], :lab.shape[1]] = (lab_t == c).float()
        targets.append({"labels": torch.tensor(classes, dtype=torch.int64, device=device), "masks": masks.to(device)})
    return torch.stack(images).to(device), targets


def flatten_config(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> dotted keys (``{"MODEL": {"X": 1}}`` -> ``{"MODEL.X": 1}``)."""
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten_config(v, key + "."))
        else:
            out[key] = v
    return out


def read_arch(path: str | Path) -> dict[str, Any]:
    """``--config``: an architecture JSON of dotted keys (``zsseg_tiny_config.json``'s form) or an
    official detectron2 YAML; the ``MODEL.*`` keys."""
    from ..importers.zsseg import read_config

    flat = flatten_config(read_config(path))
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in flat.items()
            if k.startswith("MODEL.") and k not in ("MODEL.WEIGHTS", "MODEL.DEVICE") and v is not None}


# ------------------------------------------------------------------------------------- model

class ProposalModule(nn.Module):
    """Everything the segmentation stage trains: the MaskFormer and (ZSSeg) the no-object embedding.

    ``forward(images, text)`` -> (class logits (L, B, Q, C+1) for every decoder layer, mask logits
    (L, B, Q, h, w)); ``text`` (C, E) frozen seen-class features.
    """

    def __init__(self, model: MaskFormerV1, non_object: nn.Parameter | None) -> None:
        super().__init__()
        self.model = model
        self.non_object = non_object

    def classifier(self, text: torch.Tensor) -> torch.Tensor:
        if self.non_object is None:
            return text
        return torch.cat([text, self.non_object / self.non_object.norm(dim=-1, keepdim=True)])

    def forward(self, images: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(images)
        logits = self.model.predictor.classify(out["class_features"], self.classifier(text))
        return logits, out["mask_logits"]


def param_groups(module: nn.Module, lr: float, weight_decay: float, backbone_multiplier: float = 1.0
                 ) -> list[dict[str, Any]]:
    """One group per trainable parameter as detectron2 / MaskFormer ``build_optimizer`` makes them:
    lr x ``backbone_multiplier`` inside modules named ``*backbone*``, no weight decay for norm layers
    and embeddings (``WEIGHT_DECAY_NORM`` = ``WEIGHT_DECAY_EMBED`` = 0) (zsseg.baseline
    ``train_net.py`` ``build_optimizer``)."""
    norm_types = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.InstanceNorm1d,
                  nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.LocalResponseNorm)
    groups, memo = [], set()
    for module_name, m in module.named_modules():
        for pname, p in m.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in memo:
                continue
            memo.add(id(p))
            g = {"params": [p], "lr": lr, "weight_decay": weight_decay}
            if "backbone" in module_name:
                g["lr"] = lr * backbone_multiplier
            if "relative_position_bias_table" in pname or "absolute_pos_embed" in pname:
                g["weight_decay"] = 0.0
            if isinstance(m, norm_types):
                g["weight_decay"] = 0.0
            if isinstance(m, nn.Embedding):
                g["weight_decay"] = 0.0
            groups.append(g)
    return groups


def load_backbone_weights(model: MaskFormerV1, path: str | Path) -> None:
    """``--init-backbone``: ResNet weights with detectron2 key names (``stem.conv1.weight``,
    ``res2.0.conv1.norm.running_mean``, ...; a ``backbone.`` prefix is stripped) into ``model.backbone``.

    Raises:
        InputError: a detectron2 ``.pkl`` (pickles are not loaded: convert it to .pth/.safetensors), or
            keys / shapes that do not fit.
    """
    p = Path(path)
    if p.suffix.lower() == ".pkl":
        raise InputError(f"{p}: detectron2 .pkl files are pickles, which ovss does not load; convert it once "
                         "with `python -c \"import pickle,torch,numpy; d=pickle.load(open('R-101.pkl','rb'),"
                         "encoding='latin1')['model']; torch.save({k: torch.as_tensor(v) for k,v in d.items()}, "
                         "'R-101.pth')\"` and pass the .pth")
    sd = load_state_dict(p)
    sd = {k[len("backbone."):] if k.startswith("backbone.") else k: v for k, v in sd.items()}
    own = model.backbone.state_dict()
    hit = {k: v for k, v in sd.items() if k in own}
    if not hit:
        raise InputError(f"{p} holds no ResNet tensor with detectron2 key names (e.g. {next(iter(own))})")
    bad = [k for k, v in hit.items() if v.shape != own[k].shape]
    if bad:
        raise InputError(f"--init-backbone {p}: {bad[0]} has shape {tuple(hit[bad[0]].shape)}, the model "
                         f"{tuple(own[bad[0]].shape)}; pass the --config of that backbone")
    model.backbone.load_state_dict(hit, strict=False)


class ProposalTrainer:
    """ZSSeg / ZegFormer segmentation-stage training for :func:`ovss.training.engine.train`."""

    def __init__(self, cfg: TrainConfig, clip: LoadedCLIP | None = None) -> None:
        if cfg.method not in ("zsseg", "zegformer"):
            raise InputError(f"unknown method {cfg.method!r}: zsseg or zegformer")
        if cfg.method == "zsseg" and cfg.prompt == "learnable" and not cfg.prompt_checkpoint:
            # the official config without PROMPT_CHECKPOINT trains random prompts jointly with the MaskFormer
            # (LearnablePromptExtractor with_trainable_params); ovss trains them in stage 1 only
            raise InputError("--prompt learnable needs --prompt-checkpoint (learned by `ovss train zsseg-prompts`); "
                             "training the prompts jointly with the segmentation stage is not supported")
        self.method = cfg.method
        self.cfg = cfg
        self.device = torch.device(cfg.device)
        torch.manual_seed(cfg.seed)
        names = cfg.class_names or default_class_names()
        self.data = SeenClassDataset(cfg.images, cfg.labels, names, cfg.unseen) if cfg.images else None
        self.seen_names = (self.data.seen_names if self.data is not None
                           else [n for n in names if n not in set(cfg.unseen)])
        self.clip = clip or load_clip(cfg.clip_model, cfg.clip_pretrained, self.device)
        released = ZSSEG_RELEASED if cfg.method == "zsseg" else ZEGFORMER_RELEASED
        clip_dim = int(self.clip.model.text_projection.shape[-1])
        if cfg.method == "zsseg":
            self.flat_config = {**released, "MODEL.SEM_SEG_HEAD.EMBEDDING_DIM": clip_dim,
                                "MODEL.CLIP_ADAPTER.PROMPT_DIM": int(self.clip.model.token_embedding.weight.shape[1]),
                                **cfg.arch}
            mf_cfg = maskformer_config(nest_keys(self.flat_config), released, "embed")
        else:
            if clip_dim != ZEGFORMER_EMBED_DIM:
                raise InputError(f"ZegFormer needs a CLIP with {ZEGFORMER_EMBED_DIM}-d embeddings, got {clip_dim}")
            self.flat_config = {**released, **cfg.arch}
            mf_cfg = maskformer_config(nest_keys(self.flat_config), released, "project", embedding_dim=ZEGFORMER_EMBED_DIM)
        self.flat_config["MODEL.SEM_SEG_HEAD.NUM_CLASSES"] = len(self.seen_names)
        self.model = MaskFormerV1(mf_cfg).to(self.device)
        if cfg.init_backbone:
            load_backbone_weights(self.model, cfg.init_backbone)
        self.prompts: ts.LearnablePrompts | None = None
        non_object = None
        prompt = cfg.prompt or ("learnable" if cfg.method == "zsseg" and cfg.prompt_checkpoint
                                else ("vild" if cfg.method == "zsseg" else "imagenet_select"))
        self.prompt = prompt
        if cfg.method == "zsseg":
            width = self.clip.model.transformer.width if hasattr(self.clip.model.transformer, "width") else clip_dim
            non_object = nn.Parameter(torch.randn(1, clip_dim, device=self.device) * width ** -0.5)
            if prompt == "learnable":
                shape = self.flat_config.get("MODEL.CLIP_ADAPTER.PROMPT_SHAPE", [16, 0])
                self.prompts = ts.LearnablePrompts(self.clip, int(shape[0]), int(shape[1])).to(self.device)
                if cfg.prompt_checkpoint:
                    from ..importers.zsseg import read_d2_checkpoint

                    sd = read_d2_checkpoint(cfg.prompt_checkpoint).model
                    self.prompts.load_tensors({k.split("prompt_learner.", 1)[1]: v for k, v in sd.items()
                                               if "prompt_learner." in k})
                for p in self.prompts.parameters():
                    p.requires_grad_(False)  # stage 2 keeps the learned prompts fixed
        self.module = ProposalModule(self.model, non_object)
        self.non_object = non_object
        self.text: torch.Tensor | None = None
        self.aug = SemanticAug(min_sizes=tuple(cfg.min_sizes), max_size=cfg.max_size, crop=(cfg.crop_size, cfg.crop_size),
                               single_category_max_area=cfg.single_category_max_area, color_aug_ssd=cfg.color_aug_ssd,
                               size_divisibility=cfg.crop_size)

    # -------------------------------------------------------------------------------- text
    def text_features(self) -> torch.Tensor:
        """Frozen classifier of the seen classes: (S, E) (ZSSeg adds the no-object row at use)."""
        if self.text is None:
            with torch.no_grad():
                if self.prompts is not None:
                    self.text = self.prompts(self.clip, self.seen_names).detach()
                elif self.cfg.method == "zsseg":
                    tmpl = ts.VILD_TEMPLATES if self.prompt == "vild" else ts.ZSSEG_SINGLE_TEMPLATES
                    self.text = ts.template_embeddings(self.clip, self.seen_names, tmpl)
                else:
                    tmpl = (ts.ZEGFORMER_SINGLE_TEMPLATES if self.prompt == "single" else ts.ZEGFORMER_SELECT_TEMPLATES)
                    self.text = ts.template_embeddings(self.clip, self.seen_names, tmpl, split_synonyms=True)
        return self.text

    # ------------------------------------------------------------------------- task API
    def dataset_size(self) -> int:
        if self.data is None:
            raise DatasetError("no training data: pass --images and --labels")
        return len(self.data)

    def load(self, position: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        assert self.data is not None
        return self.data.mapped(index, position, self.cfg.seed, self.aug if self.cfg.augment else None)

    def num_targets(self, samples: list[tuple[np.ndarray, np.ndarray]]) -> int:
        return sum(int(np.sum(np.unique(lab) != IGNORE)) for _, lab in samples)

    def losses(self, module: nn.Module, samples: list[tuple[np.ndarray, np.ndarray]], num_masks: float | None = None,
               indices_out: list[Any] | None = None) -> dict[str, torch.Tensor]:
        """Weighted MaskFormer losses of one batch (with deep supervision)."""
        images, targets = make_batch(samples, self.device, self.model.cfg.size_divisibility)
        logits, masks = module(images, self.text_features())
        layers = [(logits[i], masks[i]) for i in range(logits.shape[0])]
        return set_criterion(layers, targets, len(self.seen_names), self.cfg, num_masks, indices_out)

    def optimizer(self) -> torch.optim.Optimizer:
        groups = param_groups(self.module, self.cfg.lr, self.cfg.weight_decay, self.cfg.backbone_lr_multiplier)
        return torch.optim.AdamW(groups, lr=self.cfg.lr)

    def schedule(self) -> LRFactor:
        return LRFactor("poly", self.cfg.max_iter, power=0.9)

    def model_state(self) -> dict[str, Any]:
        """``{"model": official keys, "ovss_config": dotted architecture}`` (``save_zsseg_checkpoint`` /
        ``save_zegformer_checkpoint`` layout)."""
        mf = {k if k.startswith("backbone.") else "sem_seg_head." + k: v.detach().cpu()
              for k, v in self.model.state_dict().items()}
        cfg_flat = dict(self.flat_config)
        if self.cfg.method == "zsseg":
            assert self.non_object is not None
            mf["clip_adapter.non_object_embedding"] = self.non_object.detach().cpu()
            if self.prompts is not None:
                for k, v in self.prompts.state_dict().items():
                    mf["clip_adapter.prompt_learner." + k] = v.detach().cpu()
            else:
                cfg_flat["MODEL.CLIP_ADAPTER.PROMPT_LEARNER"] = self.prompt
            empty = torch.ones(len(self.seen_names) + 1)
            empty[-1] = self.cfg.no_object_weight
            mf["criterion.empty_weight"] = empty
        return {"model": mf, "ovss_config": json.loads(json.dumps(cfg_flat)),
                "ovss_train": json.loads(json.dumps(asdict(self.cfg)))}

    def load_model_state(self, obj: dict[str, Any]) -> None:
        own = {}
        for k, v in obj["model"].items():
            if k.startswith("backbone."):
                own[k] = v
            elif k.startswith("sem_seg_head."):
                own[k[len("sem_seg_head."):]] = v
            elif k == "clip_adapter.non_object_embedding" and self.non_object is not None:
                self.non_object.data.copy_(v)
        self.model.load_state_dict(own, strict=True)
        self.text = None


def default_class_names() -> list[str]:
    """COCO-Stuff-171 in ZSSeg's label order."""
    from ..vocabulary import packaged_class_file

    path = packaged_class_file("zsseg", "coco_stuff_171.txt")
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


# ---------------------------------------------------------------------------- prompt learning

def clip_image_features_any_size(clip: LoadedCLIP, images: torch.Tensor) -> torch.Tensor:
    """CLIP ViT image embeddings (N, E) of normalised (N, 3, H, W) images of any size: the patch-grid
    position embedding is resized bicubically to the (H/16, W/16) grid with ``F.interpolate(size=...)``
    (zsseg.baseline ``third_party/CLIP/clip/model.py:339-353``; that code compares the embedding's
    length with the batch size, so it resizes for every batch, an identity at the trained grid)."""
    from ..backbones.vit_dense import pretrained_grid, run_blocks

    visual = clip.model.visual
    x = visual.conv1(images)
    b, d, gh, gw = x.shape
    x = x.reshape(b, d, gh * gw).permute(0, 2, 1)
    x = torch.cat([visual.class_embedding.to(x.dtype) + torch.zeros(b, 1, d, dtype=x.dtype, device=x.device), x], 1)
    pos = visual.positional_embedding
    h0, w0 = pretrained_grid(visual)
    grid = F.interpolate(pos[1:].permute(1, 0).reshape(1, -1, h0, w0), size=(gh, gw), mode="bicubic")
    pos = torch.cat([pos[:1], grid.reshape(-1, gh * gw).permute(1, 0)])
    x = visual.ln_pre(x + pos.to(x.dtype))
    x = run_blocks(visual, x, visual.transformer.resblocks)
    return visual.ln_post(x[:, 0]) @ visual.proj


class PromptModule(nn.Module):
    """ZSSeg prompt learning: the learnable prompts (trained) with the frozen CLIP.

    ``forward(images, masks)``: images (B, 3, H, W) uint8-valued floats, masks (B, H, W) -> logits (B, S).
    """

    def __init__(self, clip: LoadedCLIP, prompts: ts.LearnablePrompts, names: Sequence[str]) -> None:
        super().__init__()
        self.prompts = prompts
        self.clip = clip
        self.names = list(names)
        for p in clip.model.parameters():
            p.requires_grad_(False)
        self.register_buffer("pixel_mean", torch.tensor(ts.CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(ts.CLIP_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        # ProposalClipClassifier.forward (mask_former/proposal_classification.py:90-106)
        x = (images / 255.0 - self.pixel_mean) / self.pixel_std
        m = masks[:, None].to(x.dtype)
        x = x * m + (1 - m) * self.pixel_mean
        with torch.no_grad():
            f = clip_image_features_any_size(self.clip, x)
            f = f / f.norm(dim=-1, keepdim=True)
        text = self.prompts(self.clip, self.names)
        return 100.0 * f @ text.t()


@dataclass
class PromptConfig:
    """``ovss train zsseg-prompts`` settings (official values of
    ``zero_shot_proposal_classification_learn_prompt_bs32_10k.yaml`` as defaults)."""

    images: str = ""
    labels: str = ""
    class_names: list[str] = field(default_factory=list)
    unseen: list[str] = field(default_factory=lambda: list(COCO_STUFF_UNSEEN))
    clip_model: str = "ViT-B-16"
    clip_pretrained: str = "openai"
    prompt_shape: tuple[int, int] = (16, 0)
    sample_per_class: int = 32
    sample_seed: int = 0
    crop: tuple[int, int] = (224, 244)
    expand_ratio: float = 1.0
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_iters: int = 100
    warmup_factor: float = 0.005
    max_iter: int = 16000
    seed: int = 0
    device: str = "cpu"


class PromptTrainer:
    """ZSSeg prompt learning for :func:`ovss.training.engine.train` (see the module docstring)."""

    method = "zsseg-prompts"

    def __init__(self, cfg: PromptConfig, clip: LoadedCLIP | None = None) -> None:
        self.cfg = cfg
        self.device = torch.device(cfg.device)
        names = cfg.class_names or default_class_names()
        self.data = SeenClassDataset(cfg.images, cfg.labels, names, cfg.unseen)
        self.seen_names = self.data.seen_names
        self.clip = clip or load_clip(cfg.clip_model, cfg.clip_pretrained, self.device)
        torch.manual_seed(cfg.seed)
        prompts = ts.LearnablePrompts(self.clip, int(cfg.prompt_shape[0]), int(cfg.prompt_shape[1])).to(self.device)
        self.module = PromptModule(self.clip, prompts, self.seen_names).to(self.device)
        self.pairs = self._pairs()

    def _pairs(self) -> list[tuple[int, int]]:
        """(image index, seen class) samples: ``load_binary_mask`` flattening, then ``SAMPLE_PER_CLASS``
        per class with replacement (``dataset_sample_per_class``)."""
        flat = []
        for i in range(len(self.data)):
            _, lab = self.data.load(i)
            flat += [(i, int(c)) for c in np.unique(lab) if c != IGNORE]
        if not flat:
            raise DatasetError("no seen-class pixels in the training labels")
        if self.cfg.sample_per_class <= 0:
            return flat
        groups: dict[int, list[tuple[int, int]]] = {}
        for pair in flat:
            groups.setdefault(pair[1], []).append(pair)
        rng = np.random.default_rng(self.cfg.sample_seed)
        out: list[tuple[int, int]] = []
        for cat, group in groups.items():
            if len(group) < self.cfg.sample_per_class:
                out += group
            else:
                pick = rng.choice(len(group), size=self.cfg.sample_per_class)
                out += [group[k] for k in pick]
        return out

    def dataset_size(self) -> int:
        return len(self.pairs)

    def load(self, position: int, index: int) -> tuple[np.ndarray, np.ndarray, int]:
        for attempt in range(100):
            if attempt:  # the official MapDataset retries another sample; here a seeded one
                index = int(sample_random(self.cfg.seed, position, 1000 + attempt).np.randint(len(self.pairs)))
            i, cat = self.pairs[index]
            img, lab = self.data.load(i)
            out = zsseg_prompt_crop(img, lab, cat, sample_random(self.cfg.seed, position, attempt),
                                    size=self.cfg.crop, expand_ratio=self.cfg.expand_ratio)
            if out is not None:
                return out[0], out[1], cat
        raise DatasetError("100 prompt-learning crops in a row lost their mask")

    def num_targets(self, samples: list[Any]) -> int:
        return len(samples)

    def losses(self, module: nn.Module, samples: list[tuple[np.ndarray, np.ndarray, int]],
               num_masks: float | None = None) -> dict[str, torch.Tensor]:
        images = torch.stack([torch.from_numpy(s[0].transpose(2, 0, 1).copy()) for s in samples]).float().to(self.device)
        masks = torch.stack([torch.from_numpy(s[1]) for s in samples]).to(self.device)
        target = torch.tensor([s[2] for s in samples], device=self.device)
        logits = module(images, masks)
        return {"loss_cls": F.cross_entropy(logits.float(), target)}

    def optimizer(self) -> torch.optim.Optimizer:
        params = [p for p in self.module.parameters() if p.requires_grad]
        return torch.optim.SGD([{"params": params, "lr": self.cfg.lr, "weight_decay": self.cfg.weight_decay}],
                               lr=self.cfg.lr, momentum=self.cfg.momentum)

    def schedule(self) -> LRFactor:
        return LRFactor("cosine", self.cfg.max_iter, warmup_iters=self.cfg.warmup_iters,
                        warmup_factor=self.cfg.warmup_factor, warmup_method="constant")

    def model_state(self) -> dict[str, Any]:
        """The prompts under the official ``clip_adapter.prompt_learner.*`` keys (what
        ``ovss train zsseg --prompt-checkpoint`` and ``PROMPT_CHECKPOINT`` read)."""
        sd = {"clip_adapter.prompt_learner." + k: v.detach().cpu() for k, v in self.module.prompts.state_dict().items()}
        return {"model": sd, "class_names": list(self.seen_names)}

    def load_model_state(self, obj: dict[str, Any]) -> None:
        self.module.prompts.load_tensors({k.split("prompt_learner.", 1)[1]: v for k, v in obj["model"].items()
                                          if "prompt_learner." in k})


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ovss.training.maskformer_train --method zsseg ...`` = ``ovss train zsseg ...``."""
    from .cli import run_subcommand

    args = list(argv) if argv is not None else None
    import sys

    args = list(sys.argv[1:]) if args is None else args
    method = "zsseg"
    if "--method" in args:
        k = args.index("--method")
        method = args[k + 1]
        del args[k:k + 2]
    return run_subcommand(method, args)


if __name__ == "__main__":
    raise SystemExit(main())
