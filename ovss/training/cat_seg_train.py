"""Training CAT-Seg as the official code does (cvlab-kaist/CAT-Seg @ 6d3a188, ``train_net.py``,
``cat_seg/cat_seg_model.py``, ``configs/config.yaml`` + ``configs/vitb_384.yaml`` / ``vitl_336.yaml``).

The recipe (every value a flag of ``ovss train cat_seg``; the defaults are the released configs'):

* **Data**: COCO-Stuff-164k train, 171 classes in ``datasets/coco.json`` order (detectron2's
  ``coco_2017_train_stuff_all_sem_seg``: ``images/train2017/*.jpg`` + the label PNGs of
  ``datasets/prepare_coco_stuff.py``, ids 0..170, 255 = ignore), or your own images + label PNGs
  with ``--classes``. MaskFormer's semantic mapper as the config sets it
  (``mask_former_semantic_dataset_mapper.py:64-158`` via :func:`ovss.training.augment.maskformer_semantic`):
  ``ResizeShortestEdge((384,), 1333, "choice")``, ``RandomCrop_CategoryAreaConstraint`` 384 x 384
  (``SINGLE_CATEGORY_MAX_AREA`` 1.0: a plain random crop), ``ColorAugSSDTransform``, horizontal flip,
  padding to ``SIZE_DIVISIBILITY`` 384 (image 128, label 255).
* **Forward** (``CATSeg.forward``, ``cat_seg_model.py:137-174``, the training branch): ``(x - CLIP mean) /
  CLIP std``, zero padding to a multiple of 32 (``ImageList.from_tensors``), bilinear resize to CLIP's
  input (384 for ViT-B/16, 336 otherwise), the dense CLIP features, the aggregator with the config's
  ``POOLING_SIZES`` (2, 2); the class text embeddings are recomputed every iteration through the
  fine-tuned text tower (``get_text_embeds``, ``cat_seg_predictor.py:187-219``: one prompt "A photo of
  a {} in the scene" per class, the part of a name before the first ", ").
* **Loss** (``cat_seg_model.py:160-171``): logits (B, T, 96, 96) bilinearly resized to the label size,
  ``binary_cross_entropy_with_logits`` (mean) against one-hot targets over all T classes; ignored pixels
  get an all-zero target and stay in the mean.
* **Trainable parameters** (``CLIP_FINETUNE attention``, ``cat_seg_model.py:57-75``): the aggregator
  (``sem_seg_head.predictor.transformer``), ``upsample1/2``, and of CLIP only ``attn.q_proj_weight`` and
  ``attn.v_proj_weight`` of every block of both towers (the vendored CLIP keeps q, k and v apart,
  :func:`ovss.models.cat_seg_clip.split_qkv`).
* **Optimiser** (``train_net.py:175-258``): AdamW, one group per parameter, lr 2e-4 (``BASE_LR``) and
  x 0.01 (``CLIP_MULTIPLIER``) inside ``clip_model``, weight decay 1e-4, 0 for norm layers and
  embeddings (``WEIGHT_DECAY_NORM`` = ``WEIGHT_DECAY_EMBED`` = 0); full-model gradient clipping at L2
  norm 0.01; ``WarmupCosineLR`` to 0 over ``MAX_ITER`` 80,000 without warmup; ``IMS_PER_BATCH`` 4.

Checkpoints hold ``{"model": CATSeg.state_dict()}`` in the official key layout (CLIP included, q/k/v
split), so ``ovss segment -m cat_seg --checkpoint model_final.pth`` and the official code load them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.clip import load_clip
from ..errors import DatasetError, InputError
from ..importers.cat_seg import (AGG_PREFIX, CLIP_PREFIX, CLIP_VARIANTS, RELEASED, arch_from_d2, build_catseg,
                                 read_checkpoint, resolve_config, settings_from_d2)
from ..importers.d2config import load_config
from ..methods.cat_seg import TEMPLATE, prompt_word, read_class_json
from ..models.cat_seg import CATSegConfig, CATSegNet
from ..models.cat_seg_clip import split_qkv
from .augment import SemanticAug
from .engine import LRFactor
from .maskformer_train import SeenClassDataset, read_names

IGNORE = 255

#: ``MODEL.SEM_SEG_HEAD.CLIP_FINETUNE`` values (``cat_seg_model.py:57-75``)
CLIP_FINETUNE = ("attention", "full", "none")


@dataclass
class CATSegTrainOptions:
    """One training run (defaults: ``configs/vitb_384.yaml`` on ``configs/config.yaml``).

    Attributes:
        images, labels: training folders (``<name>.jpg|png`` and ``<name>.png``, ids in class order,
            255 = ignore).
        classes: class file (one name per line, or an official ``.json`` list); None: COCO-Stuff-171
            (``datasets/coco.json``).
        model: CLIP architecture (open_clip name, e.g. ``ViT-B-16``, or a config JSON); None: the one
            ``CLIP_PRETRAINED`` of the config names.
        pretrained: CLIP weights to start from (open_clip tag such as ``openai``, or a file).
        config: official YAML (or JSON of its keys) giving the sizes, ``CLIP_PRETRAINED``, ``POOLING_SIZES``
            and CLIP's mean/std; None: ``vitb_384.yaml``'s.
        init: a CAT-Seg checkpoint (official key layout) to start from instead of fresh aggregator
            weights and ``pretrained`` CLIP weights.
        pooling_size: override of ``POOLING_SIZES`` (None: the config's; (2, 2) without config).
        clip_finetune: "attention" (q/v projections), "full" or "none".
        lr, weight_decay, clip_multiplier: ``BASE_LR``, ``WEIGHT_DECAY``, ``CLIP_MULTIPLIER``.
        warmup_iters, warmup_factor: ``SOLVER.WARMUP_*`` (0, 1.0).
        max_iter: ``MAX_ITER`` (the cosine schedule's length).
        min_sizes, max_size, crop_size, color_aug_ssd, single_category_max_area: ``INPUT.*``.
        augment: False feeds images and labels as they are (tests).
        seed, device: run settings.
    """

    images: str = ""
    labels: str = ""
    classes: str | None = None
    model: str | None = None
    pretrained: str | None = "openai"
    config: str | None = None
    init: str | None = None
    pooling_size: tuple[int, int] | None = None
    clip_finetune: str = "attention"
    lr: float = 2e-4
    weight_decay: float = 1e-4
    clip_multiplier: float = 0.01
    warmup_iters: int = 0
    warmup_factor: float = 1.0
    max_iter: int = 80000
    min_sizes: tuple[int, ...] = (384,)
    max_size: int = 1333
    crop_size: int = 384
    color_aug_ssd: bool = True
    single_category_max_area: float = 1.0
    augment: bool = True
    seed: int = 0
    device: str = "cpu"


def read_class_names(path: str | Path | None) -> list[str]:
    """``--classes``: an official CAT-Seg ``.json`` list or a text file with one class per line
    (label id = position); None: COCO-Stuff-171 (``datasets/coco.json``).

    Raises:
        InputError: missing or empty file.
    """
    if path is None:
        from ..vocabulary import packaged_class_file

        return read_class_json(packaged_class_file("cat_seg", "coco.json"))
    if str(path).lower().endswith(".json"):
        return read_class_json(path)
    return read_names(path)


def semantic_aug(opts: CATSegTrainOptions) -> SemanticAug:
    """The ``INPUT.*`` of the semantic mapper for these options (``configs/config.yaml:42-57`` with
    ``vitb_384.yaml``: short side 384 of at most 1333, 384 crop, SSD colour augmentation, padding to
    ``SIZE_DIVISIBILITY`` 384)."""
    return SemanticAug(min_sizes=tuple(opts.min_sizes), max_size=opts.max_size, crop=(opts.crop_size, opts.crop_size),
                       single_category_max_area=opts.single_category_max_area, color_aug_ssd=opts.color_aug_ssd,
                       size_divisibility=opts.crop_size)


def set_trainable(net: CATSegNet, clip_finetune: str = "attention") -> None:
    """``requires_grad`` as ``CATSeg.__init__`` sets it (``cat_seg_model.py:57-75``), on the official
    CLIP parameter names (q/k/v split): with "attention", a CLIP parameter trains when its name holds
    "transformer" and either "attn" with "q_proj"/"v_proj", or "position"; "full" trains every CLIP
    parameter under "transformer"; "none" none. Everything outside CLIP trains.

    Raises:
        InputError: unknown ``clip_finetune``.
    """
    if clip_finetune not in CLIP_FINETUNE:
        raise InputError(f"--clip-finetune {clip_finetune!r}: choose {', '.join(CLIP_FINETUNE)}")
    for p in net.parameters():
        p.requires_grad_(True)
    for name, p in net.clip.named_parameters():
        train = False
        if "transformer" in name:
            if clip_finetune == "attention":
                train = ("q_proj" in name or "v_proj" in name) if "attn" in name else "position" in name
            elif clip_finetune == "full":
                train = True
        p.requires_grad_(train)


def param_groups(net: nn.Module, lr: float, weight_decay: float, clip_multiplier: float) -> list[dict[str, Any]]:
    """One AdamW group per trainable parameter as ``Trainer.build_optimizer`` makes them
    (``train_net.py:175-222``): lr x ``clip_multiplier`` inside the CLIP module (``"clip_model" in
    module_name``), no weight decay in norm layers and embeddings."""
    norm_types = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.InstanceNorm1d,
                  nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.LocalResponseNorm)
    groups, memo = [], set()
    for module_name, m in net.named_modules():
        for pname, p in m.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in memo:
                continue
            memo.add(id(p))
            g: dict[str, Any] = {"params": [p], "lr": lr, "weight_decay": weight_decay,
                                 "name": f"{module_name}.{pname}" if module_name else pname}
            if module_name == "clip" or module_name.startswith("clip."):
                g["lr"] = lr * clip_multiplier
            if "relative_position_bias_table" in pname or "absolute_pos_embed" in pname:
                g["weight_decay"] = 0.0
            if isinstance(m, (*norm_types, nn.Embedding)):
                g["weight_decay"] = 0.0
            groups.append(g)
    # CLIP's groups last, so that group 0 (the lr the engine logs) has BASE_LR; the order changes nothing else
    return sorted(groups, key=lambda g: g["lr"] != lr)


def official_state_dict(net: CATSegNet) -> dict[str, torch.Tensor]:
    """``CATSeg.state_dict()`` keys: ``clip.*`` -> ``sem_seg_head.predictor.clip_model.*``,
    ``transformer.*`` -> ``sem_seg_head.predictor.transformer.*``, ``upsample1/2.*`` as they are."""
    out: dict[str, torch.Tensor] = {}
    for k, v in net.state_dict().items():
        if k.startswith("clip."):
            k = CLIP_PREFIX + k[len("clip."):]
        elif k.startswith("transformer."):
            k = AGG_PREFIX + k[len("transformer."):]
        out[k] = v.detach().cpu()
    return out


def own_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`official_state_dict` (the network's q/k/v stay split)."""
    out = {}
    for k, v in sd.items():
        if k.startswith(CLIP_PREFIX):
            k = "clip." + k[len(CLIP_PREFIX):]
        elif k.startswith(AGG_PREFIX):
            k = "transformer." + k[len(AGG_PREFIX):]
        out[k] = v
    return out


class CATSegTrainModule(nn.Module):
    """What DDP wraps: the network and the class prompts' tokens.

    ``forward(images)`` with images (B, 3, R, R) CLIP-normalised at CLIP's input size returns the
    logits (B, T, 4h, 4w); the (T, 1, E) text embeddings are computed in the same forward through the
    (partly trainable) text tower, L2-normalised (``get_text_embeds``).
    """

    def __init__(self, net: CATSegNet, tokens: torch.Tensor) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("tokens", tokens, persistent=False)

    def text_embeddings(self) -> torch.Tensor:
        t = self.net.clip.encode_text(self.tokens)
        return (t / t.norm(dim=-1, keepdim=True)).unsqueeze(1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images, self.text_embeddings())


def semantic_bce(logits: torch.Tensor, labels: torch.Tensor, ignore: int = IGNORE) -> torch.Tensor:
    """CAT-Seg's training loss (``cat_seg_model.py:160-171``).

    Args:
        logits: (B, T, h, w) float logits.
        labels: (B, H, W) int64 class ids, ``ignore`` = no class.

    Returns:
        scalar: mean BCE-with-logits over (B, H, W, T) of the logits resized (bilinear,
        align_corners=False) to (H, W) against one-hot targets; ignored pixels have all-zero targets
        and count in the mean.
    """
    out = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    t = out.shape[1]
    out = out.permute(0, 2, 3, 1)
    mask = labels != ignore
    target = torch.zeros(out.shape, device=out.device, dtype=out.dtype)
    target[mask] = F.one_hot(labels[mask], num_classes=t).to(out.dtype)
    return F.binary_cross_entropy_with_logits(out, target)


class CATSegTask:
    """CAT-Seg training for :func:`ovss.training.engine.train`.

    Args:
        opts: the run's settings.
        device: this rank's device.

    Raises:
        InputError: bad options, a config without a CLIP the official code runs.
        DatasetError: missing or inconsistent training data.
        ModelLoadError: an ``init`` checkpoint of another architecture.
    """

    method = "cat_seg"

    def __init__(self, opts: CATSegTrainOptions, device: torch.device | str = "cpu") -> None:
        self.opts = opts
        self.device = torch.device(device)
        self.class_names = read_class_names(opts.classes)
        if len(self.class_names) > 255:
            raise InputError(f"{len(self.class_names)} classes do not fit 8-bit label PNGs with 255 = ignore")
        self.data = (SeenClassDataset(opts.images, opts.labels, self.class_names, []) if opts.images else None)
        d2 = load_config(opts.config) if opts.config else None
        torch.manual_seed(opts.seed)  # fresh aggregator weights: the same for every rank
        if opts.init:
            sd = read_checkpoint(opts.init)
            arch, self.settings = resolve_config(sd, d2)
            pool = opts.pooling_size or (tuple(arch_from_d2(d2).pooling_size) if d2 is not None else (2, 2))
            clip = load_clip(self._clip_name(), None)
            self.net = build_catseg(sd, clip.model, arch, self.settings, Path(opts.init).name,
                                    pooling_size=tuple(pool))  # type: ignore[arg-type]
            del sd
        else:
            # sizes and settings: the config's, else the released config of the CLIP's width (vitb_384 / vitl_336)
            self.settings = settings_from_d2(d2, str(opts.config)) if d2 is not None else RELEASED["vitb_384"][1]
            clip = load_clip(self._clip_name(), opts.pretrained)
            width = int(clip.model.visual.conv1.out_channels)
            row = RELEASED["vitl_336" if width == 1024 else "vitb_384"]
            if d2 is None:
                self.settings = row[1]
                arch = replace_pool(row[0], (2, 2))  # configs/vitb_384.yaml, vitl_336.yaml: POOLING_SIZES [2, 2]
            else:
                arch = arch_from_d2(d2, row[0])
            if opts.pooling_size:
                arch = replace_pool(arch, opts.pooling_size)
            variant = self._variant()
            self.net = CATSegNet(clip=clip.model, config=arch, clip_resolution=variant.resolution,
                                 hook_layers=variant.hook_layers)
        if self.settings.prompt_ensemble_type != "single":
            raise InputError(f"PROMPT_ENSEMBLE_TYPE {self.settings.prompt_ensemble_type!r}: the released configs "
                             "train with 'single'; ovss trains only that")
        split_qkv(self.net.clip)
        self.net = self.net.float().to(self.device)
        set_trainable(self.net, opts.clip_finetune)
        tokens = clip.tokenizer([TEMPLATE.format(prompt_word(n)) for n in self.class_names])
        self.module = CATSegTrainModule(self.net, tokens.to(self.device))
        self.clip_mean = torch.tensor(self.settings.clip_pixel_mean, dtype=torch.float32).view(1, 3, 1, 1).to(self.device)
        self.clip_std = torch.tensor(self.settings.clip_pixel_std, dtype=torch.float32).view(1, 3, 1, 1).to(self.device)
        self.size_divisibility = int(self.settings.size_divisibility)
        self.aug = semantic_aug(opts)

    # ---------------------------------------------------------------------------- construction
    def _variant(self) -> Any:
        name = self.settings.clip_pretrained
        if name not in CLIP_VARIANTS:
            raise InputError(f"CLIP_PRETRAINED {name!r}: ovss trains CAT-Seg with {', '.join(CLIP_VARIANTS)}")
        return CLIP_VARIANTS[name]

    def _clip_name(self) -> str:
        """``--model``, or the QuickGELU open_clip model of ``CLIP_PRETRAINED`` (the vendored CLIP)."""
        if self.opts.model:
            return self.opts.model
        return self._variant().open_clip_name

    # -------------------------------------------------------------------------------- task API
    def dataset_size(self) -> int:
        if self.data is None:
            raise DatasetError("no training data: pass --images and --labels")
        return len(self.data)

    def load(self, position: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """One sample after the semantic mapper: (384, 384, 3) uint8 image, (384, 384) int64 labels."""
        assert self.data is not None
        return self.data.mapped(index, position, self.opts.seed, self.aug if self.opts.augment else None)

    def num_targets(self, samples: list[Any]) -> int:
        return 0  # the loss is a per-pixel mean: nothing to normalise across ranks

    def batch(self, samples: list[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIP input (B, 3, R, R) and labels (B, H, W) int64 (``cat_seg_model.py:137-146``): CLIP
        normalisation, zero padding to a multiple of 32 (labels padded with ignore), bilinear resize."""
        imgs = [torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1))).to(self.device, torch.float32)
                for im, _ in samples]
        d = max(self.size_divisibility, 1)
        hp = -(-max(x.shape[1] for x in imgs) // d) * d
        wp = -(-max(x.shape[2] for x in imgs) // d) * d
        x = torch.zeros(len(imgs), 3, hp, wp, device=self.device)
        labels = torch.full((len(imgs), max(lab.shape[0] for _, lab in samples),
                             max(lab.shape[1] for _, lab in samples)), IGNORE, dtype=torch.int64)
        for i, (im, (_, lab)) in enumerate(zip(imgs, samples)):
            x[i, :, :im.shape[1], :im.shape[2]] = (im - self.clip_mean[0]) / self.clip_std[0]
            labels[i, :lab.shape[0], :lab.shape[1]] = torch.from_numpy(lab.astype(np.int64))
        r = self.net.clip_resolution
        x = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False)
        return x, labels.to(self.device)

    def losses(self, module: nn.Module, samples: list[tuple[np.ndarray, np.ndarray]],
               num_masks: float | None = None) -> dict[str, torch.Tensor]:
        """``{"loss_sem_seg": BCE}`` of one micro-batch (:func:`semantic_bce`)."""
        images, labels = self.batch(samples)
        return {"loss_sem_seg": semantic_bce(module(images), labels)}

    def optimizer(self) -> torch.optim.Optimizer:
        groups = param_groups(self.net, self.opts.lr, self.opts.weight_decay, self.opts.clip_multiplier)
        for g in groups:
            g.pop("name")
        return torch.optim.AdamW(groups, lr=self.opts.lr)

    def schedule(self) -> LRFactor:
        return LRFactor("cosine", self.opts.max_iter, warmup_iters=self.opts.warmup_iters,
                        warmup_factor=self.opts.warmup_factor)

    def model_state(self) -> dict[str, Any]:
        """``{"model": CATSeg.state_dict() keys, "ovss_train": the options}``."""
        opts = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.opts).items()}
        return {"model": official_state_dict(self.net), "ovss_train": json.loads(json.dumps(opts)),
                "class_names": list(self.class_names)}

    def load_model_state(self, obj: dict[str, Any]) -> None:
        self.net.load_state_dict(own_state_dict(obj["model"]), strict=True)


def replace_pool(arch: CATSegConfig, pool: tuple[int, ...] | list[int]) -> CATSegConfig:
    """``arch`` with ``POOLING_SIZES`` = ``pool`` (one value: both axes).

    Raises:
        InputError: not one or two positive integers.
    """
    vals = [int(v) for v in pool]
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2 or min(vals) < 1:
        raise InputError(f"--pooling-size takes one or two positive integers, got {list(pool)}")
    return replace(arch, pooling_size=(vals[0], vals[1]))

