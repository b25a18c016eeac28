"""Train FC-CLIP's head on COCO panoptic (or any dataset in COCO-panoptic format), as the paper did.

The recipe of the official config (fc-clip ``configs/coco/panoptic-segmentation/fcclip/
fcclip_convnext_large_eval_ade20k.yaml`` and its bases; Mask2Former ``SetCriterion`` /
``HungarianMatcher`` / ``build_optimizer`` in fc-clip ``fcclip/modeling/criterion.py``,
``fcclip/modeling/matcher.py``, ``train_net.py``):

* data: COCO panoptic train, large-scale jitter (:func:`ovss.training.augment.lsj_panoptic`: flip,
  resize scale 0.1-2.0 of a 1024 x 1024 target, fixed 1024 x 1024 crop with padding), crowd segments
  dropped (``coco_panoptic_new_baseline_dataset_mapper.py:146-153``);
* frozen CLIP; the in-vocabulary head is trained against the COCO text classifier (+ void);
* losses: class cross-entropy (weight 2, no-object weight 0.1), sigmoid BCE (5) and Dice (5) on
  12,544 points sampled with PointRend importance sampling (oversample 3, importance 0.75), normalised
  by the number of target masks summed over ranks / world size (``criterion.py`` ``forward``);
  Hungarian matching (SciPy) on the same costs with 12,544 uniform points; deep supervision;
* AdamW lr 1e-4, weight decay 0.05 (0 for norms and embeddings), full-model gradient clipping at
  0.01, step decay x0.1 at 327,778 and 355,092 of 368,750 iterations (warmup 10, factor 1.0),
  batch 16, AMP.

Random points: the official code draws them from the global torch RNG in a fixed order
(``FCCLIPOptions(point_rng="global")``, used by the parity test); ``ovss train`` draws each image's points from its
own generator seeded by the image's stream position, so the losses do not depend on how the batch is
split over ranks and accumulation steps.

``ovss train fc_clip --help`` for the command. Checkpoints use the official key names, so
``ovss segment --method fc_clip --checkpoint model_final.pth`` loads them like the released ones.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.optimize import linear_sum_assignment
from torch import nn

from ..backbones.convnext_clip import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD, load_conv_clip
from ..data.datasets import rgb2id
from ..errors import DatasetError, InputError
from ..models.mask2former import FCCLIPConfig, FCCLIPNet
from ..vocabulary import Vocabulary
from .augment import AugRandom, lsj_panoptic, sample_random
from .engine import LRFactor
from .losses import batch_dice_cost, batch_sigmoid_ce_cost, dice_loss, sigmoid_ce_loss

# ---------------------------------------------------------------------------------------------
# data


class COCOPanopticDataset(torch.utils.data.Dataset):
    """Images + panoptic PNGs + the panoptic JSON of the COCO format.

    Args:
        image_dir: folder of the images (``images[i].file_name``, or the annotation's stem with
            .jpg/.png/.jpeg).
        panoptic_json: ``panoptic_*.json`` with ``annotations`` and ``categories``.
        panoptic_dir: folder of the panoptic PNGs named by ``annotations[i].file_name``.
        image_size: LSJ target size (1024 in the paper).
        min_scale, max_scale: LSJ scale range.
        augment: apply LSJ (off: resize the long side to ``image_size`` and pad, no randomness).
        seed: seed of the per-sample random sources (with the position given to :meth:`load`).

    Items (:meth:`load`): ``image`` (3, S, S) uint8, ``labels`` (N,) contiguous class ids (category
    order of the JSON), ``masks`` (N, S, S) bool. Every annotation is kept, also those whose
    segments are all crowd (no target masks), as detectron2 does for panoptic data.

    Raises:
        DatasetError: missing files or an empty dataset.
    """

    def __init__(self, image_dir: str | Path, panoptic_json: str | Path, panoptic_dir: str | Path,
                 image_size: int = 1024, min_scale: float = 0.1, max_scale: float = 2.0,
                 augment: bool = True, seed: int = 0) -> None:
        self.image_dir, self.panoptic_dir = Path(image_dir), Path(panoptic_dir)
        path = Path(panoptic_json)
        if not path.is_file():
            raise DatasetError(f"panoptic JSON not found: {path}")
        if not self.image_dir.is_dir() or not self.panoptic_dir.is_dir():
            raise DatasetError(f"image folder {self.image_dir} or panoptic folder {self.panoptic_dir} is missing")
        try:
            data = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{path} is not a COCO panoptic JSON ({exc})") from None
        if "categories" not in data or "annotations" not in data:
            raise DatasetError(f"{path} is not a COCO panoptic JSON (no 'categories' / 'annotations')")
        self.categories = data["categories"]
        self.cat_to_contiguous = {c["id"]: i for i, c in enumerate(self.categories)}
        self.annotations = sorted(data["annotations"], key=lambda a: str(a["file_name"]))
        if not self.annotations:
            raise DatasetError(f"{path} has no annotations")
        self.images = {im["id"]: im for im in data.get("images", [])}
        self.image_size, self.min_scale, self.max_scale = image_size, min_scale, max_scale
        self.augment, self.seed = augment, seed

    def __len__(self) -> int:
        return len(self.annotations)

    def _image_path(self, ann: dict[str, Any]) -> Path:
        name = self.images.get(ann["image_id"], {}).get("file_name")
        candidates = [self.image_dir / name] if name else []
        stem = Path(ann["file_name"]).stem
        candidates += [self.image_dir / f"{stem}{ext}" for ext in (".jpg", ".png", ".jpeg")]
        for c in candidates:
            if c.is_file():
                return c
        raise DatasetError(f"image of annotation {ann['file_name']} not found in {self.image_dir}")

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 image (detectron2 ``read_image(..., "RGB")``) and its (H, W, 3) uint8 panoptic PNG."""
        from ..imageio import read_image_d2

        ann = self.annotations[i]
        image = read_image_d2(self._image_path(ann))
        pan_path = self.panoptic_dir / ann["file_name"]
        if not pan_path.is_file():
            raise DatasetError(f"panoptic PNG not found: {pan_path}")
        pan = np.asarray(Image.open(pan_path).convert("RGB"))
        if pan.shape[:2] != image.shape[:2]:
            raise DatasetError(f"{pan_path} is {pan.shape[1]}x{pan.shape[0]} but its image "
                               f"{image.shape[1]}x{image.shape[0]}")
        return image, pan

    def load(self, i: int, rng: AugRandom | None = None) -> dict[str, torch.Tensor]:
        """Sample ``i`` augmented with ``rng`` (default: seeded from ``(seed, i)``)."""
        ann = self.annotations[i]
        image, pan = self.read(i)
        s = self.image_size
        if self.augment:
            image, pan = lsj_panoptic(image, pan, rng or sample_random(self.seed, i), image_size=s,
                                      min_scale=self.min_scale, max_scale=self.max_scale)
        else:
            h, w = image.shape[:2]
            scale = min(s / h, s / w)
            nh, nw = max(int(round(h * scale)), 1), max(int(round(w * scale)), 1)
            image = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
            pan = np.asarray(Image.fromarray(pan).resize((nw, nh), Image.NEAREST))
            image = np.pad(image, ((0, s - nh), (0, s - nw), (0, 0)), constant_values=128)
            pan = np.pad(pan, ((0, s - nh), (0, s - nw), (0, 0)), constant_values=255)
        ids = rgb2id(pan)
        labels, masks = [], []
        for seg in ann["segments_info"]:
            if seg.get("iscrowd", 0):
                continue
            if seg["category_id"] not in self.cat_to_contiguous:
                raise DatasetError(f"segment {seg['id']} of {ann['file_name']} has category {seg['category_id']}, "
                                   "which the JSON's categories do not list")
            labels.append(self.cat_to_contiguous[seg["category_id"]])
            masks.append(ids == seg["id"])
        hh, ww = ids.shape
        return {"image": torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1),
                "labels": torch.tensor(labels, dtype=torch.long),
                "masks": (torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, hh, ww, dtype=torch.bool))}

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.load(i)


def collate(batch: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    return batch


def dataset_vocabulary(categories: Sequence[dict[str, Any]], class_file: str | Path | None = None) -> Vocabulary:
    """Class names (with synonyms) of the training categories, in contiguous order.

    The COCO panoptic categories get FC-CLIP's synonym file; otherwise ``class_file`` when given
    (FC-CLIP's ``id:name,synonym`` lines, or one class per line with synonyms after commas), else
    each category's ``name`` split on commas.

    Raises:
        InputError: the class file does not list one class per category.
    """
    from ..methods.fc_clip import dataset_vocabulary as protocol_vocab
    from ..methods.fc_clip import split_synonyms

    if class_file is not None:
        vocab = read_class_file(class_file)
    elif [c.get("id") for c in categories] == coco_panoptic_ids():
        return protocol_vocab("coco_panoptic")
    else:
        rows = [split_synonyms(c["name"]) for c in categories]
        vocab = Vocabulary(tuple(r[0] for r in rows), tuple(tuple(r) for r in rows))
    if len(vocab) != len(categories):
        raise InputError(f"the class file has {len(vocab)} classes but the dataset {len(categories)}")
    return vocab


def read_class_file(path: str | Path) -> Vocabulary:
    """``--classes FILE``: one class per line, synonyms after commas (``dog, puppy``); FC-CLIP's
    ``id:name,synonym`` lines are accepted too (the id is dropped).

    Raises:
        InputError: missing or empty file.
    """
    from ..methods.fc_clip import split_synonyms

    p = Path(path)
    if not p.is_file():
        raise InputError(f"class file not found: {p}")
    rows = []
    for line in p.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        head, sep, rest = line.partition(":")
        if sep and head.strip().isdigit():
            line = rest
        rows.append(split_synonyms(line))
    if not rows:
        raise InputError(f"class file {p} lists no class")
    return Vocabulary(tuple(r[0] for r in rows), tuple(tuple(r) for r in rows))


def coco_panoptic_ids() -> list[int]:
    """COCO panoptic category ids, read from FC-CLIP's synonym file (``id:names`` lines)."""
    from ..vocabulary import packaged_class_file

    path = packaged_class_file("fc_clip", "coco_panoptic_with_prompt_eng.txt")
    return [int(line.split(":", 1)[0]) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and line.split(":", 1)[1] != "invalid_class_id"]


# ---------------------------------------------------------------------------------------------
# losses (Mask2Former criterion.py / matcher.py; PointRend point_features.py)


def point_sample(x: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of (N, C, H, W) maps at (N, P, 2) normalised (x, y) in [0, 1] -> (N, C, P)
    (detectron2 ``projects/PointRend/point_rend/point_features.py`` ``point_sample``)."""
    return F.grid_sample(x, (2.0 * coords - 1.0).unsqueeze(2), align_corners=False).squeeze(3)


def _rand(shape: tuple[int, ...], gen: torch.Generator | None, device: torch.device) -> torch.Tensor:
    if gen is None:
        return torch.rand(*shape, device=device)
    return torch.rand(*shape, generator=gen).to(device)


def uncertain_point_coords(logits: torch.Tensor, num_points: int, oversample_ratio: float,
                           importance_ratio: float, gen: torch.Generator | None = None) -> torch.Tensor:
    """PointRend ``get_uncertain_point_coords_with_randomness`` with uncertainty ``-|logit|``.

    Args:
        logits: (N, 1, H, W) mask logits.
        gen: CPU generator of the random points (None: the global RNG on ``logits``' device).

    Returns:
        (N, num_points, 2) coordinates in [0, 1]: the most uncertain of ``oversample_ratio *
        num_points`` random points (``importance_ratio`` of them), the rest uniform.
    """
    n = logits.shape[0]
    sampled = int(num_points * oversample_ratio)
    coords = _rand((n, sampled, 2), gen, logits.device)
    uncertainty = -point_sample(logits, coords).abs()
    n_imp = int(importance_ratio * num_points)
    n_rand = num_points - n_imp
    idx = torch.topk(uncertainty[:, 0, :], k=n_imp, dim=1)[1]
    idx = idx + sampled * torch.arange(n, dtype=torch.long, device=logits.device)[:, None]
    coords = coords.view(-1, 2)[idx.view(-1), :].view(n, n_imp, 2)
    if n_rand > 0:
        coords = torch.cat([coords, _rand((n, n_rand, 2), gen, logits.device)], dim=1)
    return coords


class HungarianMatcher(nn.Module):
    """One-to-one query/target matching on class + mask BCE + Dice costs (SciPy LSAP), fc-clip
    ``fcclip/modeling/matcher.py`` ``memory_efficient_forward``: per image, one set of uniform points
    shared by predictions and targets (drawn even when the image has no target)."""

    def __init__(self, cost_class: float = 2.0, cost_mask: float = 5.0, cost_dice: float = 5.0,
                 num_points: int = 12544) -> None:
        super().__init__()
        self.cost_class, self.cost_mask, self.cost_dice, self.num_points = cost_class, cost_mask, cost_dice, num_points

    @torch.no_grad()
    def forward(self, outputs: dict[str, torch.Tensor], targets: list[dict[str, torch.Tensor]],
                generators: Sequence[torch.Generator] | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """
        Args:
            outputs: ``pred_logits`` (B, Q, K + 1), ``pred_masks`` (B, Q, h, w).
            targets: per image ``labels`` (N,) and ``masks`` (N, H, W).
            generators: per image CPU generators of the points (None: global RNG, official order).

        Returns:
            per image (query indices, target indices), int64, sorted by query.
        """
        bs, nq = outputs["pred_logits"].shape[:2]
        indices = []
        for b in range(bs):
            prob = outputs["pred_logits"][b].float().softmax(-1)
            tgt_ids = targets[b]["labels"]
            out_mask = outputs["pred_masks"][b][:, None].float()
            tgt_mask = targets[b]["masks"].to(out_mask)[:, None]
            coords = _rand((1, self.num_points, 2), generators[b] if generators else None, out_mask.device)
            if tgt_ids.numel() == 0:
                indices.append((np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)))
                continue
            tgt = point_sample(tgt_mask, coords.repeat(tgt_mask.shape[0], 1, 1)).squeeze(1)
            out = point_sample(out_mask, coords.repeat(out_mask.shape[0], 1, 1)).squeeze(1)
            cost = (self.cost_mask * batch_sigmoid_ce_cost(out, tgt) + self.cost_class * -prob[:, tgt_ids]
                    + self.cost_dice * batch_dice_cost(out, tgt))
            indices.append(linear_sum_assignment(cost.reshape(nq, -1).cpu().numpy()))
        return [(torch.as_tensor(i, dtype=torch.int64), torch.as_tensor(j, dtype=torch.int64)) for i, j in indices]


class SetCriterion(nn.Module):
    """Mask2Former's set criterion with deep supervision (fc-clip ``fcclip/modeling/criterion.py``).

    Args:
        num_classes: K training classes (the void / no-object column is index K).
        matcher: the Hungarian matcher.
        eos_coef: cross-entropy weight of the no-object class (0.1).
        weights: loss weights ``ce``, ``mask``, ``dice`` (2, 5, 5).
        num_points, oversample_ratio, importance_sample_ratio: PointRend sampling of the mask losses.
    """

    def __init__(self, num_classes: int, matcher: HungarianMatcher, eos_coef: float = 0.1,
                 weights: tuple[float, float, float] = (2.0, 5.0, 5.0), num_points: int = 12544,
                 oversample_ratio: float = 3.0, importance_sample_ratio: float = 0.75) -> None:
        super().__init__()
        self.num_classes, self.matcher = num_classes, matcher
        self.weights = dict(zip(("loss_ce", "loss_mask", "loss_dice"), weights))
        empty = torch.ones(num_classes + 1)
        empty[-1] = eos_coef
        self.register_buffer("empty_weight", empty)
        self.num_points, self.oversample_ratio, self.importance_sample_ratio = (
            num_points, oversample_ratio, importance_sample_ratio)
        self.last_indices: list[list[tuple[torch.Tensor, torch.Tensor]]] = []

    def _losses(self, outputs: dict[str, torch.Tensor], targets: list[dict[str, torch.Tensor]],
                num_masks: float, generators: Sequence[torch.Generator] | None) -> dict[str, torch.Tensor]:
        indices = self.matcher(outputs, targets, generators)
        self.last_indices.append(indices)
        logits = outputs["pred_logits"].float()
        batch_idx = torch.cat([torch.full_like(s, i) for i, (s, _) in enumerate(indices)])
        src_idx = torch.cat([s for s, _ in indices])
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        target_classes[batch_idx, src_idx] = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)]).to(
            logits.device)
        loss_ce = F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight)
        if src_idx.numel() == 0:
            zero = outputs["pred_masks"].sum() * 0.0
            return {"loss_ce": loss_ce, "loss_mask": zero, "loss_dice": zero}
        src_masks = outputs["pred_masks"][batch_idx, src_idx][:, None]
        tgt_masks = torch.cat([t["masks"][j] for t, (_, j) in zip(targets, indices)]).to(src_masks)[:, None]
        with torch.no_grad():
            if generators is None:
                coords = uncertain_point_coords(src_masks.float(), self.num_points, self.oversample_ratio,
                                                self.importance_sample_ratio)
            else:  # each image's matched masks from that image's generator
                counts = [len(s) for s, _ in indices]
                parts, at = [], 0
                for b, n in enumerate(counts):
                    if n:
                        parts.append(uncertain_point_coords(src_masks[at:at + n].float(), self.num_points,
                                                            self.oversample_ratio, self.importance_sample_ratio,
                                                            generators[b]))
                    at += n
                coords = torch.cat(parts)
            labels = point_sample(tgt_masks.float(), coords).squeeze(1)
        point_logits = point_sample(src_masks.float(), coords).squeeze(1)
        return {"loss_ce": loss_ce, "loss_mask": sigmoid_ce_loss(point_logits, labels, num_masks),
                "loss_dice": dice_loss(point_logits, labels, num_masks)}

    def forward(self, outputs: dict[str, Any], targets: list[dict[str, torch.Tensor]], num_masks: float | None = None,
                generators: Sequence[torch.Generator] | None = None) -> dict[str, torch.Tensor]:
        """Weighted losses of the final head and of every auxiliary head (suffix ``_i``).

        Args:
            num_masks: the normaliser of the mask losses (default: this batch's target count, at least 1).
            generators: per image point generators (None: global RNG in the official order).
        """
        if num_masks is None:
            num_masks = max(float(sum(len(t["labels"]) for t in targets)), 1.0)
        self.last_indices = []
        losses = {k: v * self.weights[k] for k, v in self._losses(outputs, targets, num_masks, generators).items()}
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            losses.update({f"{k}_{i}": v * self.weights[k]
                           for k, v in self._losses(aux, targets, num_masks, generators).items()})
        return losses


# ---------------------------------------------------------------------------------------------
# optimiser, model


def build_optimizer(net: nn.Module, lr: float = 1e-4, weight_decay: float = 0.05) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters, one group per parameter; no weight decay for norm layers
    and embeddings (fc-clip ``train_net.py`` ``build_optimizer`` with WEIGHT_DECAY_NORM =
    WEIGHT_DECAY_EMBED = 0; the backbone multiplier does not matter: CLIP is frozen)."""
    norm_types = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm, nn.InstanceNorm2d)
    params, seen = [], set()
    for module in net.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            wd = 0.0 if isinstance(module, (nn.Embedding,) + norm_types) else weight_decay
            params.append({"params": [p], "lr": lr, "weight_decay": wd})
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay)


def lr_factor(it: int, steps: Sequence[int], gamma: float = 0.1, warmup_iters: int = 10,
              warmup_factor: float = 1.0) -> float:
    """detectron2 WarmupMultiStepLR (linear warmup) multiplier at iteration ``it``."""
    return LRFactor("multistep", max(steps, default=1) + 1, steps, gamma, warmup_iters, warmup_factor)(it)


def load_trainable(net: FCCLIPNet, path: str | Path) -> None:
    """Initialise the head (not CLIP) from an FC-CLIP checkpoint (``--init``).

    Raises:
        InputError: tensors whose shapes do not fit the head.
    """
    from ..importers.fc_clip import read_checkpoint

    sd = read_checkpoint(path)
    own = net.state_dict()
    head = {k: v.float() for k, v in sd.items() if k in own and not k.startswith("backbone.")}
    bad = [k for k, v in head.items() if v.shape != own[k].shape]
    if bad:
        raise InputError(f"--init checkpoint does not fit the head: {bad[0]} has shape "
                         f"{tuple(head[bad[0]].shape)}, expected {tuple(own[bad[0]].shape)}")
    net.load_state_dict(head, strict=False)


def build_net(model: str, pretrained: str, cfg: FCCLIPConfig, device: str) -> FCCLIPNet:
    """Frozen CLIP + freshly initialised head (the void embedding and the decoder are trainable)."""
    backbone = load_conv_clip(model, pretrained, "cpu")
    return FCCLIPNet(backbone, cfg).to(device)


def prepare_batch(batch: list[dict[str, torch.Tensor]], device: torch.device, pad: int = 32
                  ) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Normalise with CLIP's mean/std, pad to a multiple of ``pad`` (zeros after normalisation,
    detectron2 ``ImageList.from_tensors``), pad the target masks to the same size
    (``FCCLIP.prepare_targets``)."""
    mean = torch.tensor(CLIP_PIXEL_MEAN, device=device).view(-1, 1, 1)
    std = torch.tensor(CLIP_PIXEL_STD, device=device).view(-1, 1, 1)
    h = max(int(b["image"].shape[1]) for b in batch)
    w = max(int(b["image"].shape[2]) for b in batch)
    hp, wp = (h + pad - 1) // pad * pad, (w + pad - 1) // pad * pad
    images = torch.zeros(len(batch), 3, hp, wp, device=device)
    targets = []
    for i, b in enumerate(batch):
        img = (b["image"].to(device).float() - mean) / std
        images[i, :, : img.shape[1], : img.shape[2]] = img
        masks = torch.zeros(b["masks"].shape[0], hp, wp, dtype=torch.bool, device=device)
        masks[:, : b["masks"].shape[1], : b["masks"].shape[2]] = b["masks"].to(device)
        targets.append({"labels": b["labels"].to(device), "masks": masks})
    return images, targets


def point_generators(seed: int, positions: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per image, seeded by ``(seed, stream position)``."""
    out = []
    for p in positions:
        s = np.random.SeedSequence([seed & 0xFFFFFFFF, int(p), 11]).generate_state(1)[0]
        out.append(torch.Generator().manual_seed(int(s)))
    return out


def train_step(net: FCCLIPNet, criterion: SetCriterion, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               targets: list[dict[str, torch.Tensor]], text: torch.Tensor, num_synonyms: Sequence[int],
               clip_value: float = 0.01, amp: bool = False, scaler: Any = None) -> dict[str, float]:
    """One optimisation step on one process; returns the weighted losses and their ``total``."""
    net.train()
    with torch.autocast(device_type=images.device.type, enabled=amp):
        out = net(images, text, num_synonyms)
    losses = criterion(out, targets)
    total = sum(losses.values())
    optimizer.zero_grad(set_to_none=True)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if scaler is not None:
        scaler.scale(total).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, clip_value)
        scaler.step(optimizer)
        scaler.update()
    else:
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, clip_value)
        optimizer.step()
    return {"total": float(total.detach()), **{k: float(v.detach()) for k, v in losses.items()}}


def vild_templates() -> tuple[str, ...]:
    from ..methods.fc_clip import VILD_TEMPLATES

    return VILD_TEMPLATES


# ---------------------------------------------------------------------------------------------
# the task run by ovss.training.engine


@dataclass
class FCCLIPOptions:
    """``ovss train fc_clip`` options (official values as defaults).

    Attributes:
        images, panoptic_json, panoptic_dir: the COCO-panoptic-format training set.
        model, pretrained: open_clip CLIP (name + tag, or config JSON + local weights).
        init_backbone: CLIP weights file overriding ``pretrained`` (``--init-backbone``).
        config: official detectron2 YAML or dotted-key JSON of the head sizes.
        classes: class file for a non-COCO dataset (one class per line, synonyms after commas).
        init: FC-CLIP checkpoint to initialise the head from.
        image_size, min_scale, max_scale: LSJ (``INPUT.IMAGE_SIZE / MIN_SCALE / MAX_SCALE``).
        num_points, oversample_ratio, importance_sample_ratio: PointRend sampling.
        lr, weight_decay, steps, warmup_iters: optimiser and ``WarmupMultiStepLR``.
        device: "auto", "cpu", "cuda".
        augment: LSJ on (off: fixed resize, for tests).
        point_rng: "sample" (each image's points from a generator seeded by its stream position, so
            the losses do not depend on the split over ranks) or "global" (the global torch RNG in
            the official order: what the official code does on one process; the parity test).
    """

    images: str
    panoptic_json: str
    panoptic_dir: str
    model: str = "convnext_large_d_320"
    pretrained: str = "laion2b_s29b_b131k_ft_soup"
    init_backbone: str | None = None
    config: str | None = None
    classes: str | None = None
    init: str | None = None
    image_size: int = 1024
    min_scale: float = 0.1
    max_scale: float = 2.0
    num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    lr: float = 1e-4
    weight_decay: float = 0.05
    steps: tuple[int, ...] | None = None
    warmup_iters: int = 10
    max_iter: int = 368750
    seed: int = 0
    device: str = "cpu"
    augment: bool = True
    point_rng: str = "sample"


class FCCLIPTask:
    """FC-CLIP training for :func:`ovss.training.engine.train` (see the module docstring)."""

    method = "fc_clip"

    def __init__(self, opts: FCCLIPOptions, device: torch.device, resume_config: dict[str, Any] | None = None) -> None:
        from ..importers.d2config import load_config
        from ..importers.fc_clip import config_from_d2
        from ..text import class_embeddings

        self.opts, self.device = opts, device
        if opts.point_rng not in ("sample", "global"):
            raise InputError(f"point_rng {opts.point_rng!r}: choose sample or global")
        cfg = FCCLIPConfig()
        if resume_config:
            cfg = FCCLIPConfig(**resume_config)
        elif opts.config:
            sizes, _ = config_from_d2(load_config(opts.config))
            for k, v in sizes.items():
                setattr(cfg, k, type(getattr(cfg, k))(v))
        self.data = COCOPanopticDataset(opts.images, opts.panoptic_json, opts.panoptic_dir, opts.image_size,
                                        opts.min_scale, opts.max_scale, augment=opts.augment, seed=opts.seed)
        self.vocab = dataset_vocabulary(self.data.categories, opts.classes)
        cfg.num_train_classes = len(self.vocab)
        torch.manual_seed(opts.seed)
        self.net = build_net(opts.model, opts.init_backbone or opts.pretrained, cfg, "cpu").to(device)
        if opts.init:
            load_trainable(self.net, opts.init)
        self.module = self.net
        words = [w for qs in self.vocab.queries for w in qs]
        self.text = class_embeddings(self.net.backbone.clip, words, vild_templates()).to(device)
        self.num_synonyms = [len(qs) for qs in self.vocab.queries]
        self.criterion = SetCriterion(len(self.vocab), HungarianMatcher(2.0, 5.0, 5.0, opts.num_points), 0.1,
                                      (2.0, 5.0, 5.0), opts.num_points, opts.oversample_ratio,
                                      opts.importance_sample_ratio).to(device)

    def dataset_size(self) -> int:
        return len(self.data)

    def load(self, position: int, index: int) -> dict[str, Any]:
        item = self.data.load(index, sample_random(self.opts.seed, position))
        item["position"] = position
        return item

    def num_targets(self, samples: list[dict[str, Any]]) -> int:
        return sum(len(s["labels"]) for s in samples)

    def losses(self, module: nn.Module, samples: list[dict[str, Any]], num_masks: float) -> dict[str, torch.Tensor]:
        images, targets = prepare_batch(samples, self.device)
        out = module(images, self.text, self.num_synonyms)
        gens = (point_generators(self.opts.seed, [s["position"] for s in samples])
                if self.opts.point_rng == "sample" else None)
        return self.criterion(out, targets, num_masks, gens)

    def optimizer(self) -> torch.optim.Optimizer:
        return build_optimizer(self.net, self.opts.lr, self.opts.weight_decay)

    def schedule(self) -> LRFactor:
        m = self.opts.max_iter
        steps = self.opts.steps if self.opts.steps is not None else (round(m * 327778 / 368750),
                                                                     round(m * 355092 / 368750))
        return LRFactor("multistep", m, steps, 0.1, self.opts.warmup_iters, 1.0)

    def model_state(self) -> dict[str, Any]:
        model = {k: v.detach().cpu() for k, v in self.net.head_state_dict().items()}
        model["criterion.empty_weight"] = self.criterion.empty_weight.detach().cpu()
        return {"model": model, "fcclip_config": asdict(self.net.cfg),
                "class_names": [list(q) for q in self.vocab.queries]}

    def load_model_state(self, obj: dict[str, Any]) -> None:
        self.net.load_state_dict({k: v for k, v in obj["model"].items() if not k.startswith("criterion.")},
                                 strict=False)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ovss.training.fc_clip_train ...`` = ``ovss train fc_clip ...``."""
    from .cli import run_subcommand

    return run_subcommand("fc_clip", list(argv) if argv is not None else None)


if __name__ == "__main__":
    raise SystemExit(main())
