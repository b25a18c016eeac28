"""Training the proposal network of ZSSeg / ZegFormer (MaskFormer v1 with a CLIP-text class head).

Recipe of the official code (MendelXu/zsseg.baseline ``train_net.py`` and dingjiansw101/ZegFormer, both on
facebookresearch/MaskFormer): COCO-Stuff-164k with the **seen classes only** (the 15 unseen classes are
mapped to the ignore label 255), random short-side resize + crop + flip, AdamW (lr 1e-4, weight decay
1e-4, poly schedule, backbone lr x 0.1), full-model gradient clipping 0.01, losses of MaskFormer v1:
class cross-entropy (no-object weight 0.1), sigmoid focal (weight 20) and Dice (weight 1) on the masks of
the queries matched by the Hungarian algorithm (``scipy.optimize.linear_sum_assignment``, costs class 1 /
focal 20 / Dice 1 on targets downsampled to the prediction size), deep supervision on every decoder layer.
The class head classifies against frozen CLIP text features of the seen classes (ZSSeg: learned prompts
or templates + a learned no-object embedding, ``100 * cos``; ZegFormer: its prompt set + ``bg_feature``).

ZSSeg's prompt learning (``ProposalClipClassifier``, ``ORACLE``) is available as ``prompt_learning_iters``:
before the MaskFormer, the prefix prompts are trained on ground-truth masks of seen classes cropped as at
test time (tight box, mean-colour fill, 224 bicubic) with cross-entropy over the seen classes.

Data layout (detectron2's prepared COCO-Stuff): ``images/<name>.jpg`` and ``labels/<name>.png`` with the
171 classes as 0..170 (the ZSSeg ``coco_stuff_171`` order) and 255 = ignore. Checkpoints are written in the
official key layout (``model_<iter>.pth`` and ``last_checkpoint``), with the architecture as dotted config
keys, so :mod:`ovss.importers.zsseg` / :mod:`ovss.importers.zegformer` load them back; ``resume=True`` continues
from ``last_checkpoint`` (model, optimizer, iteration).

Run: ``python -m ovss.training.maskformer_train --method zsseg --images DIR --labels DIR --out DIR``.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..backbones.clip import LoadedCLIP, load_clip
from ..errors import DatasetError, InputError
from ..imageio import d2_test_size, read_image_d2
from ..importers.zsseg import ZSSEG_RELEASED, maskformer_config
from ..importers.zegformer import ZEGFORMER_EMBED_DIM, ZEGFORMER_RELEASED
from ..models.maskformer import MaskFormerV1
from ..methods import two_stage as ts
from ..methods.zsseg import COCO_STUFF_UNSEEN
from .losses import batch_dice_cost, batch_sigmoid_focal_cost, dice_loss, sigmoid_focal_loss

IGNORE = 255


@dataclass
class TrainConfig:
    """Settings of one training run (official values as defaults; sizes as dotted detectron2 keys)."""

    method: str = "zsseg"  # "zsseg" or "zegformer"
    images: str = ""
    labels: str = ""
    out: str = "output"
    class_names: list[str] = field(default_factory=list)  # label id -> name; default COCO-Stuff-171
    unseen: list[str] = field(default_factory=lambda: list(COCO_STUFF_UNSEEN))
    arch: dict[str, Any] = field(default_factory=dict)  # dotted MODEL.* overrides of the released sizes
    clip_model: str = "ViT-B-16"
    clip_pretrained: str = "openai"
    prompt: str = ""  # ZSSeg: "learnable" (needs prompts) / "vild" / "single"; ZegFormer: "imagenet_select"/"single"
    prompt_checkpoint: str = ""  # ZSSeg: a checkpoint holding learned prompts (clip_adapter.prompt_learner.*)
    prompt_learning_iters: int = 0  # ZSSeg prompt learning before the MaskFormer (0 = off)
    prompt_lr: float = 0.02
    max_iter: int = 60000
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 1e-4
    backbone_lr_multiplier: float = 0.1
    clip_grad: float = 0.01
    crop_size: int = 640
    min_sizes: list[int] = field(default_factory=lambda: [int(640 * x / 10) for x in range(5, 16)])
    max_size: int = 2560
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
        prob = logits[b].softmax(-1)
        c_class = -prob[:, tgt["labels"]]
        tm = F.interpolate(tgt["masks"][:, None], size=masks.shape[-2:], mode="nearest")[:, 0].flatten(1)
        om = masks[b].flatten(1)
        cost = (cost_mask * batch_sigmoid_focal_cost(om, tm) + cost_class * c_class
                + cost_dice * batch_dice_cost(om, tm)).cpu()
        i, j = linear_sum_assignment(cost.numpy())
        out.append((torch.as_tensor(i, dtype=torch.int64), torch.as_tensor(j, dtype=torch.int64)))
    return out


def set_criterion(layers: list[tuple[torch.Tensor, torch.Tensor]], targets: list[dict[str, torch.Tensor]],
                  num_classes: int, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """MaskFormer ``SetCriterion`` with deep supervision; returns the weighted losses per layer
    (``loss_ce``, ``loss_mask``, ``loss_dice``; ``_i`` suffixes for the auxiliary layers) and ``total``."""
    device = layers[-1][0].device
    empty_weight = torch.ones(num_classes + 1, device=device)
    empty_weight[-1] = cfg.no_object_weight
    num_masks = max(float(sum(len(t["labels"]) for t in targets)), 1.0)
    losses: dict[str, torch.Tensor] = {}
    n = len(layers)
    for li, (logits, masks) in enumerate(layers):
        suffix = "" if li == n - 1 else f"_{li}"
        idx = hungarian_match(logits, masks, targets, cfg.class_weight, cfg.mask_weight, cfg.dice_weight)
        tgt_cls = torch.full(logits.shape[:2], num_classes, dtype=torch.int64, device=device)
        for b, (i, j) in enumerate(idx):
            tgt_cls[b, i.to(device)] = targets[b]["labels"][j.to(device)]
        losses["loss_ce" + suffix] = cfg.class_weight * F.cross_entropy(logits.transpose(1, 2), tgt_cls, empty_weight)
        src = torch.cat([masks[b, i.to(device)] for b, (i, _) in enumerate(idx)])
        tgt = torch.cat([targets[b]["masks"][j.to(device)] for b, (_, j) in enumerate(idx)])
        if len(src):
            src = F.interpolate(src[:, None], size=tgt.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
            losses["loss_mask" + suffix] = cfg.mask_weight * sigmoid_focal_loss(src.flatten(1), tgt.flatten(1), num_masks)
            losses["loss_dice" + suffix] = cfg.dice_weight * dice_loss(src.flatten(1), tgt.flatten(1), num_masks)
        else:
            zero = masks.sum() * 0.0
            losses["loss_mask" + suffix] = zero
            losses["loss_dice" + suffix] = zero
    losses["total"] = sum(v for k, v in losses.items())
    return losses


# -------------------------------------------------------------------------------------- data

class SeenClassDataset:
    """COCO-Stuff-format pairs (image, label PNG) with unseen classes mapped to ignore (255) and seen
    classes renumbered 0..S-1 in label-id order.

    Raises:
        DatasetError: missing folders, no images, or an image without its label.
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
                raise DatasetError(f"no label {lab.name} for image {img.name} in {labels}: prepare COCO-Stuff "
                                   "with detectron2's prepare_coco_stuff_164k_sem_seg.py")
            self.items.append((img, lab))
        if not self.items:
            raise DatasetError(f"no images (.jpg/.png) in {images}")
        unknown = set(unseen) - set(class_names)
        if unknown:
            raise InputError(f"unseen classes not in the class list: {sorted(unknown)}")
        lut = np.full(256, IGNORE, dtype=np.uint8)
        self.seen_names = [n for n in class_names if n not in set(unseen)]
        seen_ids = [i for i, n in enumerate(class_names) if n not in set(unseen)]
        for new, old in enumerate(seen_ids):
            lut[old] = new
        self.lut = lut

    def __len__(self) -> int:
        return len(self.items)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        img_path, lab_path = self.items[i]
        img = read_image_d2(img_path)
        lab = np.asarray(Image.open(lab_path))
        if lab.ndim != 2 or lab.shape != img.shape[:2]:
            raise DatasetError(f"label {lab_path} is not a single-channel map of the image's size")
        return img, self.lut[lab]


def augment(img: np.ndarray, lab: np.ndarray, cfg: TrainConfig, rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
    """Random short-side resize (choice of ``min_sizes``, long side <= ``max_size``), random crop of
    ``crop_size`` (absolute), horizontal flip; labels resized with nearest."""
    if not cfg.augment:
        return img, lab
    short = rng.choice(cfg.min_sizes)
    h, w = d2_test_size(img.shape[0], img.shape[1], short, cfg.max_size)
    img = np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))
    lab = np.asarray(Image.fromarray(lab).resize((w, h), Image.NEAREST))
    ch, cw = min(cfg.crop_size, h), min(cfg.crop_size, w)
    y0, x0 = rng.randint(0, h - ch), rng.randint(0, w - cw)
    img, lab = img[y0:y0 + ch, x0:x0 + cw], lab[y0:y0 + ch, x0:x0 + cw]
    if rng.random() < 0.5:
        img, lab = img[:, ::-1], lab[:, ::-1]
    return np.ascontiguousarray(img), np.ascontiguousarray(lab)


def make_batch(pairs: list[tuple[np.ndarray, np.ndarray]], device: torch.device, divisor: int = 32) -> tuple[
        torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Normalised, zero-padded image batch (B, 3, Hp, Wp) and per-image targets (one binary mask per
    class present, padded to (Hp, Wp))."""
    mean = torch.tensor(ts.PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(ts.PIXEL_STD).view(3, 1, 1)
    hp = -(-max(p[0].shape[0] for p in pairs) // divisor) * divisor
    wp = -(-max(p[0].shape[1] for p in pairs) // divisor) * divisor
    images, targets = [], []
    for img, lab in pairs:
        x = (torch.from_numpy(img.transpose(2, 0, 1).copy()).float() - mean) / std
        images.append(F.pad(x, (0, wp - x.shape[2], 0, hp - x.shape[1])))
        lab_t = torch.from_numpy(lab.astype(np.int64))
        classes = [int(c) for c in torch.unique(lab_t) if int(c) != IGNORE]
        masks = torch.zeros(len(classes), hp, wp)
        for k, c in enumerate(classes):
            masks[k, :lab.shape[0], :lab.shape[1]] = (lab_t == c).float()
        targets.append({"labels": torch.tensor(classes, dtype=torch.int64, device=device), "masks": masks.to(device)})
    return torch.stack(images).to(device), targets


# ------------------------------------------------------------------------------------- model

class ProposalTrainer:
    """MaskFormer + frozen text classifier (+ learnable no-object / prompts), optimizer and checkpoints."""

    def __init__(self, cfg: TrainConfig, clip: LoadedCLIP | None = None) -> None:
        if cfg.method not in ("zsseg", "zegformer"):
            raise InputError(f"unknown method {cfg.method!r}: zsseg or zegformer")
        self.cfg = cfg
        self.device = torch.device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.rng = random.Random(cfg.seed)
        names = cfg.class_names or _default_class_names()
        self.data = SeenClassDataset(cfg.images, cfg.labels, names, cfg.unseen) if cfg.images else None
        self.seen_names = (self.data.seen_names if self.data is not None
                           else [n for n in names if n not in set(cfg.unseen)])
        self.clip = clip or load_clip(cfg.clip_model, cfg.clip_pretrained, self.device)
        released = ZSSEG_RELEASED if cfg.method == "zsseg" else ZEGFORMER_RELEASED
        from ..importers.d2config import _nest

        clip_dim = int(self.clip.model.text_projection.shape[-1])
        if cfg.method == "zsseg":
            self.flat_config = {**released, "MODEL.SEM_SEG_HEAD.EMBEDDING_DIM": clip_dim,
                                "MODEL.CLIP_ADAPTER.PROMPT_DIM": int(self.clip.model.token_embedding.weight.shape[1]),
                                **cfg.arch}
            mf_cfg = maskformer_config(_nest(self.flat_config), released, "embed")
        else:
            if clip_dim != ZEGFORMER_EMBED_DIM:
                raise InputError(f"ZegFormer needs a CLIP with {ZEGFORMER_EMBED_DIM}-d embeddings, got {clip_dim}")
            self.flat_config = {**released, **cfg.arch}
            mf_cfg = maskformer_config(_nest(self.flat_config), released, "project", embedding_dim=ZEGFORMER_EMBED_DIM)
        self.flat_config["MODEL.SEM_SEG_HEAD.NUM_CLASSES"] = len(self.seen_names)
        self.model = MaskFormerV1(mf_cfg).to(self.device)
        self.prompts: ts.LearnablePrompts | None = None
        self.non_object: torch.nn.Parameter | None = None
        prompt = cfg.prompt or ("learnable" if cfg.method == "zsseg" and (cfg.prompt_checkpoint or cfg.prompt_learning_iters)
                                else ("vild" if cfg.method == "zsseg" else "imagenet_select"))
        self.prompt = prompt
        if cfg.method == "zsseg":
            width = self.clip.model.transformer.width if hasattr(self.clip.model.transformer, "width") else clip_dim
            self.non_object = torch.nn.Parameter(torch.randn(1, clip_dim, device=self.device) * width ** -0.5)
            if prompt == "learnable":
                shape = self.flat_config.get("MODEL.CLIP_ADAPTER.PROMPT_SHAPE", [16, 0])
                self.prompts = ts.LearnablePrompts(self.clip, int(shape[0]), int(shape[1])).to(self.device)
                if cfg.prompt_checkpoint:
                    from ..importers.zsseg import read_d2_checkpoint

                    sd = read_d2_checkpoint(cfg.prompt_checkpoint).model
                    self.prompts.load_tensors({k.split("prompt_learner.", 1)[1]: v for k, v in sd.items()
                                               if "prompt_learner." in k})
        self.iteration = 0
        self.optimizer = self._optimizer()
        self.text: torch.Tensor | None = None

    def _optimizer(self) -> torch.optim.Optimizer:
        backbone = [p for p in self.model.backbone.parameters() if p.requires_grad]
        head = [p for n, p in self.model.named_parameters() if not n.startswith("backbone.") and p.requires_grad]
        if self.non_object is not None:
            head.append(self.non_object)
        groups = [{"params": head, "lr": self.cfg.lr}]
        if backbone:
            groups.append({"params": backbone, "lr": self.cfg.lr * self.cfg.backbone_lr_multiplier})
        for g in groups:
            g["initial_lr"] = g["lr"]
        return torch.optim.AdamW(groups, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)

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

    def classifier(self) -> torch.Tensor:
        text = self.text_features()
        if self.non_object is None:
            return text
        return torch.cat([text, self.non_object / self.non_object.norm(dim=-1, keepdim=True)])

    # ------------------------------------------------------------------------------- steps
    def sample(self) -> list[tuple[np.ndarray, np.ndarray]]:
        assert self.data is not None
        picks = [self.rng.randrange(len(self.data)) for _ in range(self.cfg.batch_size)]
        return [augment(*self.data.load(i), self.cfg, self.rng) for i in picks]

    def losses(self, pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, torch.Tensor]:
        """Weighted MaskFormer losses of one batch (with deep supervision)."""
        images, targets = make_batch(pairs, self.device, self.model.cfg.size_divisibility)
        out = self.model(images)
        text = self.classifier()
        logits = self.model.predictor.classify(out["class_features"], text)
        layers = [(logits[i], out["mask_logits"][i]) for i in range(logits.shape[0])]
        return set_criterion(layers, targets, len(self.seen_names), self.cfg)

    def step(self, pairs: list[tuple[np.ndarray, np.ndarray]] | None = None) -> dict[str, float]:
        """One optimisation step (poly learning rate, full-model gradient clipping)."""
        self.model.train()
        frac = min(self.iteration / max(self.cfg.max_iter, 1), 1.0)
        for g in self.optimizer.param_groups:
            g["lr"] = g["initial_lr"] * (1 - frac) ** 0.9
        loss = self.losses(pairs if pairs is not None else self.sample())
        self.optimizer.zero_grad(set_to_none=True)
        loss["total"].backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        if self.cfg.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(params, self.cfg.clip_grad)
        self.optimizer.step()
        self.iteration += 1
        return {k: float(v.detach()) for k, v in loss.items()}

    def learn_prompts(self, iters: int) -> list[float]:
        """ZSSeg prompt learning on ground-truth masks of seen classes (cross-entropy over the seen classes
        of ``100 * cos(CLIP(crop), prompts)``); returns the loss per iteration."""
        if self.prompts is None:
            raise InputError("prompt learning needs prompt='learnable' (ZSSeg only)")
        params = [p for p in (self.prompts.prefix_prompt, self.prompts.suffix_prompt) if p is not None]
        opt = torch.optim.SGD(params, lr=self.cfg.prompt_lr, momentum=0.9, weight_decay=5e-4)
        history = []
        for _ in range(iters):
            crops, labels = [], []
            for img, lab in self.sample():
                t = torch.from_numpy(img.transpose(2, 0, 1).copy()).float().to(self.device)
                lab_t = torch.from_numpy(lab.astype(np.int64)).to(self.device)
                for c in torch.unique(lab_t).tolist():
                    if c == IGNORE:
                        continue
                    m = (lab_t == c)[None]
                    crops.append(ts.zsseg_crops(t, m, ts.tight_boxes(m)))
                    labels.append(c)
            if not crops:
                continue
            with torch.no_grad():
                f = ts.clip_image_features(self.clip, torch.cat(crops))
                f = f / f.norm(dim=-1, keepdim=True)
            text = self.prompts(self.clip, self.seen_names)
            loss = F.cross_entropy(100.0 * f @ text.t(), torch.tensor(labels, device=self.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            history.append(float(loss.detach()))
        self.text = None  # the MaskFormer classifier uses the learned prompts from now on
        return history

    # -------------------------------------------------------------------------- checkpoints
    def state(self) -> dict[str, torch.Tensor]:
        sd = {k: v for k, v in self.model.state_dict().items()}
        if self.cfg.method == "zsseg":
            empty = torch.ones(len(self.seen_names) + 1)
            empty[-1] = self.cfg.no_object_weight
            sd["criterion.empty_weight"] = empty
        return sd

    def save(self, name: str | None = None) -> Path:
        """Write ``<out>/model_<iter>.pth`` (official key layout) and ``<out>/last_checkpoint``."""
        from ..importers.zegformer import save_zegformer_checkpoint
        from ..importers.zsseg import save_zsseg_checkpoint

        out = Path(self.cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        path = out / (name or f"model_{self.iteration:07d}.pth")
        extra = {"iteration": self.iteration, "optimizer": self.optimizer.state_dict(),
                 "ovss_train": json.loads(json.dumps(asdict(self.cfg)))}
        mf = {k: v for k, v in self.model.state_dict().items()}
        if self.cfg.method == "zsseg":
            prompts = {} if self.prompts is None else {k: v for k, v in self.prompts.state_dict().items()}
            assert self.non_object is not None
            cfg_flat = dict(self.flat_config)
            if self.prompts is None:
                cfg_flat["MODEL.CLIP_ADAPTER.PROMPT_LEARNER"] = self.prompt
            save_zsseg_checkpoint(path, mf, self.non_object.data, prompts, cfg_flat, extra)
        else:
            save_zegformer_checkpoint(path, mf, self.flat_config, extra)
        (out / "last_checkpoint").write_text(path.name)
        return path

    def resume(self) -> bool:
        """Load ``<out>/last_checkpoint`` if it exists (model, prompts, optimizer, iteration)."""
        out = Path(self.cfg.out)
        marker = out / "last_checkpoint"
        if not marker.is_file():
            return False
        from ..checkpoints import read_checkpoint

        obj = read_checkpoint(out / marker.read_text().strip(), map_location=self.device)  # never runs code
        sd = obj["model"]
        own, prompts = {}, {}
        for k, v in sd.items():
            if k.startswith("backbone."):
                own[k] = v
            elif k.startswith("sem_seg_head."):
                own[k[len("sem_seg_head."):]] = v
            elif k == "clip_adapter.non_object_embedding" and self.non_object is not None:
                self.non_object.data.copy_(v)
            elif k.startswith("clip_adapter.prompt_learner."):
                prompts[k[len("clip_adapter.prompt_learner."):]] = v
        if self.prompts is not None:
            self.prompts.load_tensors(prompts)
        self.model.load_state_dict(own, strict=True)
        self.optimizer.load_state_dict(obj["optimizer"])
        self.iteration = int(obj.get("iteration", 0))
        self.text = None
        return True

    def train(self, resume: bool = False, log_every: int = 20) -> Path:
        """Run to ``max_iter`` (optionally prompt learning first), checkpointing every ``checkpoint_period``."""
        if self.data is None:
            raise DatasetError("no training data: pass images= and labels=")
        if resume:
            self.resume()
        if self.cfg.prompt_learning_iters and self.iteration == 0 and self.prompts is not None:
            self.learn_prompts(self.cfg.prompt_learning_iters)
        path = None
        while self.iteration < self.cfg.max_iter:
            loss = self.step()
            if log_every and self.iteration % log_every == 0:
                print(f"iter {self.iteration}: loss {loss['total']:.4f}", flush=True)
            if self.cfg.checkpoint_period and self.iteration % self.cfg.checkpoint_period == 0:
                path = self.save()
        return path if path is not None and path.stem.endswith(f"{self.iteration:07d}") else self.save()


def _default_class_names() -> list[str]:
    from ..vocabulary import packaged_class_file

    path = packaged_class_file("zsseg", "coco_stuff_171.txt")
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: train ZSSeg's or ZegFormer's proposal network (see the module docstring)."""
    ap = argparse.ArgumentParser(prog="python -m ovss.training.maskformer_train", description=__doc__.split("\n")[0])
    ap.add_argument("--method", choices=["zsseg", "zegformer"], default="zsseg")
    ap.add_argument("--images", required=True)
    ap.add_argument("--labels", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--clip-model", default="ViT-B-16")
    ap.add_argument("--clip-pretrained", default="openai")
    ap.add_argument("--arch", help="JSON file of dotted MODEL.* keys (sizes), e.g. a *_tiny_config.json")
    ap.add_argument("--prompt", default="")
    ap.add_argument("--prompt-checkpoint", default="")
    ap.add_argument("--prompt-learning-iters", type=int, default=0)
    ap.add_argument("--max-iter", type=int, default=60000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--crop-size", type=int, default=640)
    ap.add_argument("--checkpoint-period", type=int, default=5000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args(argv)
    arch = json.loads(Path(args.arch).read_text()) if args.arch else {}
    cfg = TrainConfig(method=args.method, images=args.images, labels=args.labels, out=args.out, arch=arch,
                      clip_model=args.clip_model, clip_pretrained=args.clip_pretrained, prompt=args.prompt,
                      prompt_checkpoint=args.prompt_checkpoint, prompt_learning_iters=args.prompt_learning_iters,
                      max_iter=args.max_iter, batch_size=args.batch_size, lr=args.lr, crop_size=args.crop_size,
                      checkpoint_period=args.checkpoint_period, device=args.device)
    path = ProposalTrainer(cfg).train(resume=args.resume)
    print(f"checkpoint: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
