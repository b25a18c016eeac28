"""Train the FC-CLIP head on COCO panoptic (or any dataset in COCO-panoptic format).

The recipe of the official config (``configs/coco/panoptic-segmentation/fcclip/
fcclip_convnext_large_eval_ade20k.yaml`` and its bases; Mask2Former ``SetCriterion`` /
``HungarianMatcher`` / ``build_optimizer``):

* data: COCO panoptic train, large-scale jitter (random horizontal flip, resize scale 0.1-2.0 of a
  1024 x 1024 target, fixed 1024 x 1024 crop with padding), crowd segments dropped;
* frozen CLIP; the in-vocabulary head is trained against the COCO text classifier (+ void);
* losses: class cross-entropy (weight 2, no-object weight 0.1), sigmoid BCE (5) and Dice (5) on
  12,544 points sampled with PointRend importance sampling (oversample 3, importance 0.75);
  Hungarian matching (SciPy) on the same costs with 12,544 uniform points; deep supervision on
  every decoder head;
* AdamW lr 1e-4, weight decay 0.05 (0 for norms and embeddings), full-model gradient clipping at
  0.01, step decay x0.1 at 327,778 and 355,092 of 368,750 iterations, batch 16; AMP on GPU.

Run ``python -m ovss.training.fc_clip_train --help``. Checkpoints (``model_XXXXXXX.pth`` and
``model_final.pth`` in the output folder) use the official key names, so
``ovss.create_segmenter("fc_clip", checkpoint=...)`` loads them like the released ones.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import asdict
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
from .losses import batch_dice_cost, batch_sigmoid_ce_cost, dice_loss, sigmoid_ce_loss
from ..models.mask2former import FCCLIPConfig, FCCLIPNet
from ..text import class_embeddings
from ..vocabulary import Vocabulary

# ---------------------------------------------------------------------------------------------
# data


class COCOPanopticDataset(torch.utils.data.Dataset):
    """Images + panoptic PNGs + the panoptic JSON of the COCO format.

    Args:
        image_dir: folder of the images (``<file_name stem>.jpg``, or any suffix that exists).
        panoptic_json: ``panoptic_*.json`` with ``annotations`` and ``categories``.
        panoptic_dir: folder of the panoptic PNGs named by ``annotations[i].file_name``.
        image_size: LSJ target size (1024 in the paper).
        min_scale, max_scale: LSJ scale range.
        augment: apply LSJ + flip (off: resize the long side to ``image_size`` and pad).

    Items: ``image`` (3, S, S) uint8, ``labels`` (N,) contiguous class ids, ``masks`` (N, S, S) bool.

    Raises:
        DatasetError: missing files or an empty dataset.
    """

    def __init__(self, image_dir: str | Path, panoptic_json: str | Path, panoptic_dir: str | Path,
                 image_size: int = 1024, min_scale: float = 0.1, max_scale: float = 2.0,
                 augment: bool = True) -> None:
        self.image_dir, self.panoptic_dir = Path(image_dir), Path(panoptic_dir)
        path = Path(panoptic_json)
        if not path.is_file():
            raise DatasetError(f"panoptic JSON not found: {path}")
        if not self.image_dir.is_dir() or not self.panoptic_dir.is_dir():
            raise DatasetError(f"image folder {self.image_dir} or panoptic folder {self.panoptic_dir} is missing")
        data = json.loads(path.read_text())
        self.categories = data["categories"]
        self.cat_to_contiguous = {c["id"]: i for i, c in enumerate(self.categories)}
        self.annotations = [a for a in data["annotations"]
                            if any(not s.get("iscrowd", 0) for s in a["segments_info"])]
        if not self.annotations:
            raise DatasetError(f"{path} has no annotation with a non-crowd segment")
        self.images = {im["id"]: im for im in data.get("images", [])}
        self.image_size, self.min_scale, self.max_scale, self.augment = image_size, min_scale, max_scale, augment

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

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ann = self.annotations[i]
        image = np.asarray(Image.open(self._image_path(ann)).convert("RGB"))
        pan_path = self.panoptic_dir / ann["file_name"]
        if not pan_path.is_file():
            raise DatasetError(f"panoptic PNG not found: {pan_path}")
        ids = rgb2id(np.asarray(Image.open(pan_path).convert("RGB")))
        image, ids = self._transform(image, ids)
        labels, masks = [], []
        for seg in ann["segments_info"]:
            if seg.get("iscrowd", 0):
                continue
            m = ids == seg["id"]
            if m.any():
                labels.append(self.cat_to_contiguous[seg["category_id"]])
                masks.append(m)
        s = self.image_size
        return {"image": torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1),
                "labels": torch.tensor(labels, dtype=torch.long),
                "masks": torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, s, s, dtype=torch.bool)}

    def _transform(self, image: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """LSJ (detectron2 ``ResizeScale`` + ``FixedSizeCrop``, pad value 128 / no segment)."""
        h, w = ids.shape
        s = self.image_size
        if self.augment:
            if random.random() < 0.5:
                image, ids = image[:, ::-1], ids[:, ::-1]
            scale = random.uniform(self.min_scale, self.max_scale)
            out_scale = min(s * scale / h, s * scale / w)
        else:
            out_scale = min(s / h, s / w)
        nh, nw = max(int(round(h * out_scale)), 1), max(int(round(w * out_scale)), 1)
        image = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((nw, nh), Image.BILINEAR))
        ids = np.asarray(Image.fromarray(np.ascontiguousarray(ids).astype(np.int32)).resize((nw, nh), Image.NEAREST))
        y0 = random.randint(0, max(nh - s, 0)) if self.augment else 0
        x0 = random.randint(0, max(nw - s, 0)) if self.augment else 0
        image, ids = image[y0:y0 + s, x0:x0 + s], ids[y0:y0 + s, x0:x0 + s]
        out_img = np.full((s, s, 3), 128, dtype=np.uint8)
        out_ids = np.full((s, s), -1, dtype=np.int64)
        out_img[: image.shape[0], : image.shape[1]] = image
        out_ids[: ids.shape[0], : ids.shape[1]] = ids
        return out_img, out_ids


def collate(batch: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    return batch


def dataset_vocabulary(categories: Sequence[dict[str, Any]], class_file: str | Path | None = None) -> Vocabulary:
    """Class names (with synonyms) of the training categories, in contiguous order.

    The COCO panoptic categories get FC-CLIP's synonym file; otherwise ``class_file`` (FC-CLIP
    format) when given, else each category's ``name`` split on commas.
    """
    from ..methods.fc_clip import dataset_vocabulary as protocol_vocab
    from ..methods.fc_clip import read_fcclip_class_file, split_synonyms

    if class_file is not None:
        vocab = read_fcclip_class_file(class_file)
    elif [c.get("id") for c in categories] == _coco_panoptic_ids():
        return protocol_vocab("coco_panoptic")
    else:
        rows = [split_synonyms(c["name"]) for c in categories]
        vocab = Vocabulary(tuple(r[0] for r in rows), tuple(tuple(r) for r in rows))
    if len(vocab) != len(categories):
        raise InputError(f"the class file has {len(vocab)} classes but the dataset {len(categories)}")
    return vocab


def _coco_panoptic_ids() -> list[int]:
    """COCO panoptic category ids, read from FC-CLIP's synonym file (``id:names`` lines)."""
    from ..vocabulary import packaged_class_file

    path = packaged_class_file("fc_clip", "coco_panoptic_with_prompt_eng.txt")
    return [int(line.split(":", 1)[0]) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and line.split(":", 1)[1] != "invalid_class_id"]


# ---------------------------------------------------------------------------------------------
# losses (Mask2Former criterion.py / matcher.py; PointRend point_features.py)


def point_sample(x: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of (N, C, H, W) maps at (N, P, 2) normalised (x, y) in [0, 1] -> (N, C, P)."""
    return F.grid_sample(x, (2.0 * coords - 1.0).unsqueeze(2), align_corners=False).squeeze(3)


def uncertain_point_coords(logits: torch.Tensor, num_points: int, oversample_ratio: float,
                           importance_ratio: float) -> torch.Tensor:
    """PointRend ``get_uncertain_point_coords_with_randomness`` with uncertainty ``-|logit|``.

    Args:
        logits: (N, 1, H, W) mask logits.

    Returns:
        (N, num_points, 2) coordinates in [0, 1]: the most uncertain of ``oversample_ratio *
        num_points`` random points (``importance_ratio`` of them), the rest uniform.
    """
    n = logits.shape[0]
    sampled = int(num_points * oversample_ratio)
    coords = torch.rand(n, sampled, 2, device=logits.device)
    uncertainty = -point_sample(logits, coords).abs()
    n_imp = int(importance_ratio * num_points)
    n_rand = num_points - n_imp
    idx = torch.topk(uncertainty[:, 0, :], k=n_imp, dim=1)[1]
    idx = idx + sampled * torch.arange(n, dtype=torch.long, device=logits.device)[:, None]
    coords = coords.view(-1, 2)[idx.view(-1), :].view(n, n_imp, 2)
    if n_rand > 0:
        coords = torch.cat([coords, torch.rand(n, n_rand, 2, device=logits.device)], dim=1)
    return coords


class HungarianMatcher(nn.Module):
    """One-to-one query/target matching on class + mask BCE + Dice costs (SciPy LSAP)."""

    def __init__(self, cost_class: float = 2.0, cost_mask: float = 5.0, cost_dice: float = 5.0,
                 num_points: int = 12544) -> None:
        super().__init__()
        self.cost_class, self.cost_mask, self.cost_dice, self.num_points = cost_class, cost_mask, cost_dice, num_points

    @torch.no_grad()
    def forward(self, outputs: dict[str, torch.Tensor], targets: list[dict[str, torch.Tensor]]
                ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        bs, nq = outputs["pred_logits"].shape[:2]
        indices = []
        for b in range(bs):
            prob = outputs["pred_logits"][b].float().softmax(-1)
            tgt_ids = targets[b]["labels"]
            out_mask = outputs["pred_masks"][b][:, None].float()
            tgt_mask = targets[b]["masks"].to(out_mask)[:, None]
            if tgt_ids.numel() == 0:
                indices.append((np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)))
                continue
            coords = torch.rand(1, self.num_points, 2, device=out_mask.device)
            tgt = point_sample(tgt_mask, coords.repeat(tgt_mask.shape[0], 1, 1)).squeeze(1)
            out = point_sample(out_mask, coords.repeat(out_mask.shape[0], 1, 1)).squeeze(1)
            cost = (self.cost_mask * batch_sigmoid_ce_cost(out, tgt) + self.cost_class * -prob[:, tgt_ids]
                    + self.cost_dice * batch_dice_cost(out, tgt))
            indices.append(linear_sum_assignment(cost.reshape(nq, -1).cpu().numpy()))
        return [(torch.as_tensor(i, dtype=torch.int64), torch.as_tensor(j, dtype=torch.int64)) for i, j in indices]


class SetCriterion(nn.Module):
    """Mask2Former's set criterion with deep supervision.

    Args:
        num_classes: K training classes (the void / no-object column is index K).
        eos_coef: cross-entropy weight of the no-object class (0.1).
        weights: loss weights ``ce``, ``mask``, ``dice`` (2, 5, 5).
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

    def _losses(self, outputs: dict[str, torch.Tensor], targets: list[dict[str, torch.Tensor]],
                num_masks: float) -> dict[str, torch.Tensor]:
        indices = self.matcher(outputs, targets)
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
            coords = uncertain_point_coords(src_masks.float(), self.num_points, self.oversample_ratio,
                                            self.importance_sample_ratio)
            labels = point_sample(tgt_masks.float(), coords).squeeze(1)
        point_logits = point_sample(src_masks.float(), coords).squeeze(1)
        return {"loss_ce": loss_ce, "loss_mask": sigmoid_ce_loss(point_logits, labels, num_masks),
                "loss_dice": dice_loss(point_logits, labels, num_masks)}

    def forward(self, outputs: dict[str, Any], targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Weighted losses of the final head and of every auxiliary head (suffix ``_i``)."""
        num_masks = max(float(sum(len(t["labels"]) for t in targets)), 1.0)
        losses = {k: v * self.weights[k] for k, v in self._losses(outputs, targets, num_masks).items()}
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            losses.update({f"{k}_{i}": v * self.weights[k] for k, v in self._losses(aux, targets, num_masks).items()})
        return losses


# ---------------------------------------------------------------------------------------------
# optimiser, checkpoints, loop


def build_optimizer(net: FCCLIPNet, lr: float = 1e-4, weight_decay: float = 0.05) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; no weight decay for norm layers and embeddings
    (Mask2Former ``build_optimizer`` with WEIGHT_DECAY_NORM = WEIGHT_DECAY_EMBED = 0)."""
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
    f = gamma ** sum(1 for s in steps if it >= s)
    if it < warmup_iters:
        alpha = it / warmup_iters
        f *= warmup_factor * (1 - alpha) + alpha
    return f


def save_checkpoint(path: str | Path, net: FCCLIPNet, criterion: SetCriterion, optimizer: torch.optim.Optimizer | None,
                    iteration: int, extra: dict[str, Any] | None = None, scaler: Any = None) -> None:
    """Write a detectron2-style checkpoint: ``{"model": official-named tensors (no CLIP text
    tower), "optimizer", "iteration", "fcclip_config"}``; readable by :func:`ovss.importers.fc_clip.build_fcclip`."""
    model = {k: v.detach().cpu() for k, v in net.head_state_dict().items()}
    model["criterion.empty_weight"] = criterion.empty_weight.detach().cpu()
    state: dict[str, Any] = {"model": model, "iteration": iteration, "fcclip_config": asdict(net.cfg)}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    if extra:
        state.update(extra)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    (path.parent / "last_checkpoint").write_text(path.name)


def load_trainable(net: FCCLIPNet, path: str | Path) -> None:
    """Initialise the head (not CLIP) from an FC-CLIP checkpoint (``--init``)."""
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
    """Normalise with CLIP's mean/std, pad to a multiple of ``pad`` (zeros), move targets."""
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


def train_step(net: FCCLIPNet, criterion: SetCriterion, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               targets: list[dict[str, torch.Tensor]], text: torch.Tensor, num_synonyms: Sequence[int],
               clip_value: float = 0.01, amp: bool = False, scaler: Any = None) -> dict[str, float]:
    """One optimisation step; returns the weighted losses and their ``total``."""
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


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: see ``--help``."""
    p = argparse.ArgumentParser(prog="python -m ovss.training.fc_clip_train", description=__doc__.split("\n\n")[0])
    p.add_argument("--images", required=True, help="image folder (e.g. coco/train2017)")
    p.add_argument("--panoptic-json", required=True, help="panoptic JSON (e.g. annotations/panoptic_train2017.json)")
    p.add_argument("--panoptic-dir", required=True, help="panoptic PNG folder (e.g. panoptic_train2017)")
    p.add_argument("--output", required=True, help="folder for checkpoints and the log")
    p.add_argument("--model", default="convnext_large_d_320", help="open_clip CLIP name or config JSON")
    p.add_argument("--pretrained", default="laion2b_s29b_b131k_ft_soup", help="open_clip tag or local weights")
    p.add_argument("--config", help="official detectron2 YAML for the head sizes (default: the paper's)")
    p.add_argument("--class-file", help="FC-CLIP-format class file for a non-COCO dataset")
    p.add_argument("--init", help="initialise the head from an FC-CLIP checkpoint")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output")
    p.add_argument("--max-iter", type=int, default=368750)
    p.add_argument("--steps", type=int, nargs="*", default=None, help="LR decay iterations (default 327778 355092, "
                   "scaled with --max-iter)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--clip-grad", type=float, default=0.01)
    p.add_argument("--image-size", type=int, default=1024)
    p.add_argument("--num-points", type=int, default=12544)
    p.add_argument("--checkpoint-period", type=int, default=5000)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", action="store_true", help="mixed precision (GPU; the paper's setting)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-period", type=int, default=20)
    args = p.parse_args(argv)

    from ..errors import OvssError

    try:
        return _train(args)
    except OvssError as exc:
        print(f"error: {exc}")
        return 2


def _train(args: argparse.Namespace) -> int:
    from ..importers.d2config import load_config
    from ..importers.fc_clip import config_from_d2

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    cfg = FCCLIPConfig()
    if args.config:
        sizes, _ = config_from_d2(load_config(args.config))
        for k, v in sizes.items():
            setattr(cfg, k, type(getattr(cfg, k))(v))
    out_dir = Path(args.output)
    last = out_dir / "last_checkpoint"
    resume_path = out_dir / last.read_text().strip() if args.resume and last.is_file() else None
    if resume_path is not None:
        from ..checkpoints import read_checkpoint

        saved = read_checkpoint(resume_path)  # never executes code from the file
        cfg = FCCLIPConfig(**saved["fcclip_config"])
    data = COCOPanopticDataset(args.images, args.panoptic_json, args.panoptic_dir, args.image_size)
    vocab = dataset_vocabulary(data.categories, args.class_file)
    cfg.num_train_classes = len(vocab)
    net = build_net(args.model, args.pretrained, cfg, str(device))
    if args.init:
        load_trainable(net, args.init)
    text = class_embeddings(net.backbone.clip, [w for qs in vocab.queries for w in qs], _vild()).to(device)
    num_syn = [len(qs) for qs in vocab.queries]
    matcher = HungarianMatcher(2.0, 5.0, 5.0, args.num_points)
    criterion = SetCriterion(len(vocab), matcher, 0.1, (2.0, 5.0, 5.0), args.num_points).to(device)
    optimizer = build_optimizer(net, args.lr, args.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if args.amp and device.type == "cuda" else None
    start = 0
    if resume_path is not None:
        net.load_state_dict({k: v for k, v in saved["model"].items() if not k.startswith("criterion.")},
                            strict=False)
        optimizer.load_state_dict(saved["optimizer"])
        if scaler is not None and "scaler" in saved:
            scaler.load_state_dict(saved["scaler"])
        start = int(saved["iteration"])
        print(f"resumed from {resume_path} at iteration {start}")
    steps = args.steps if args.steps is not None else [round(args.max_iter * 327778 / 368750),
                                                       round(args.max_iter * 355092 / 368750)]
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         num_workers=args.workers, collate_fn=collate,
                                         persistent_workers=args.workers > 0)
    if len(loader) == 0:
        raise DatasetError(f"{len(data)} images are fewer than one batch of {args.batch_size}")
    log = (out_dir / "log.jsonl")
    out_dir.mkdir(parents=True, exist_ok=True)
    it = start
    t0 = time.time()
    while it < args.max_iter:
        for batch in loader:
            if it >= args.max_iter:
                break
            f = lr_factor(it, steps)
            for g in optimizer.param_groups:
                g["lr"] = args.lr * f
            images, targets = prepare_batch(batch, device)
            losses = train_step(net, criterion, optimizer, images, targets, text, num_syn, args.clip_grad,
                                amp=args.amp and device.type == "cuda", scaler=scaler)
            it += 1
            if not math.isfinite(losses["total"]):
                raise FloatingPointError(f"loss became {losses['total']} at iteration {it}")
            if it % args.log_period == 0 or it == args.max_iter:
                rec = {"iteration": it, "lr": args.lr * f, "time": round(time.time() - t0, 2), **losses}
                with log.open("a") as fh:
                    fh.write(json.dumps(rec) + "\n")
                print(f"iter {it}: loss {losses['total']:.4f}")
            if it % args.checkpoint_period == 0 and it < args.max_iter:
                save_checkpoint(out_dir / f"model_{it - 1:07d}.pth", net, criterion, optimizer, it, scaler=scaler)
    save_checkpoint(out_dir / "model_final.pth", net, criterion, optimizer, it, scaler=scaler)
    print(f"wrote {out_dir / 'model_final.pth'}")
    return 0


def _vild() -> tuple[str, ...]:
    from ..methods.fc_clip import VILD_TEMPLATES

    return VILD_TEMPLATES


if __name__ == "__main__":
    raise SystemExit(main())
