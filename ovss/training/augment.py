"""The official training data pipelines, step for step, with explicit random number generators.

Every random draw is taken from an :class:`AugRandom` (a ``numpy.random.RandomState`` standing in for
detectron2's module-level ``np.random`` and a ``random.Random`` for Python's ``random``) in the order
the official code draws it, so that seeding both sides with the same state gives the same output
(``tests/fixtures/pipelines_train`` records the official mappers on fixed seeds). ovss seeds one
``AugRandom`` per sample from ``(seed, stream position)`` (:func:`sample_random`), which makes the
augmentation of a sample independent of data-loader workers, world size and resumption.

Pipelines:

* :func:`lsj_panoptic` -- FC-CLIP / Mask2Former large-scale jitter for COCO panoptic
  (fc-clip ``fcclip/data/dataset_mappers/coco_panoptic_new_baseline_dataset_mapper.py``).
* :func:`maskformer_semantic` -- MaskFormer's semantic mapper used by ZSSeg and ZegFormer
  (zsseg.baseline ``mask_former/data/dataset_mappers/mask_former_semantic_dataset_mapper.py``,
  identical in dingjiansw101/ZegFormer).
* :func:`zsseg_prompt_crop` -- ZSSeg's prompt-learning mapper (zsseg.baseline
  ``mask_former/data/dataset_mappers/mask_former_binary_semantic_dataset_mapper.py``).

Images are (H, W, 3) uint8 RGB numpy arrays; label maps as the official mappers hold them (see each
function). detectron2 file:line references are to facebookresearch/detectron2 ``02b5c4e2``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

IGNORE = 255


@dataclass
class AugRandom:
    """The two random sources of the official mappers.

    Attributes:
        np: replaces detectron2's ``np.random`` (augmentations' ``get_transform``).
        py: replaces Python's ``random`` (``ColorAugSSDTransform``).
    """

    np: np.random.RandomState
    py: random.Random

    @classmethod
    def from_seed(cls, seed: int) -> "AugRandom":
        """Both sources seeded like ``np.random.seed(seed); random.seed(seed)``."""
        return cls(np.random.RandomState(seed), random.Random(seed))


def sample_random(seed: int, position: int, stream: int = 0) -> AugRandom:
    """The random sources of the sample at ``position`` of the training stream (``stream`` tells
    independent uses apart), from ``numpy.random.SeedSequence((seed, position, stream))``."""
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(position), int(stream)])
    a, b = ss.generate_state(2)
    return AugRandom(np.random.RandomState(int(a)), random.Random(int(b)))


# ------------------------------------------------------------------ detectron2 transform primitives

def resize_image(img: np.ndarray, h: int, w: int, interp: int = Image.BILINEAR) -> np.ndarray:
    """``ResizeTransform.apply_image`` on uint8: Pillow resize (detectron2
    ``data/transforms/transform.py:117-125``)."""
    if img.ndim == 3 and img.shape[2] == 1:
        return np.asarray(Image.fromarray(img[:, :, 0], mode="L").resize((w, h), interp))[:, :, None]
    return np.asarray(Image.fromarray(img).resize((w, h), interp))


def resize_float_nearest(seg: np.ndarray, h: int, w: int) -> np.ndarray:
    """``ResizeTransform.apply_segmentation`` of a non-uint8 map (the semantic mappers hold labels as
    float64): ``F.interpolate(mode="nearest")`` (detectron2 ``data/transforms/transform.py:126-145``)."""
    t = torch.from_numpy(np.ascontiguousarray(seg))
    shape = list(t.shape)
    t = t.view(shape[:2] + [1] * (4 - len(shape)) + shape[2:]).permute(2, 3, 0, 1)
    t = F.interpolate(t, (h, w), mode="nearest")
    shape[:2] = [h, w]
    return t.permute(2, 3, 0, 1).reshape(shape).numpy()


def shortest_edge_size(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """``ResizeShortestEdge.get_output_shape`` (detectron2 ``augmentation_impl.py:182-200``)."""
    size = short * 1.0
    scale = size / min(h, w)
    newh, neww = (size, scale * w) if h < w else (scale * h, size)
    if max(newh, neww) > max_size:
        scale = max_size * 1.0 / max(newh, neww)
        newh, neww = newh * scale, neww * scale
    return int(newh + 0.5), int(neww + 0.5)


def random_flip(rng: AugRandom, prob: float = 0.5) -> bool:
    """``RandomFlip.get_transform`` (horizontal): ``np.random.uniform(0, 1) < prob``
    (detectron2 ``augmentation_impl.py:102-111``, ``augmentation.py:176-184``)."""
    return bool(rng.np.uniform(0, 1.0, []) < prob)


def pad_bottom_right(img: np.ndarray, h: int, w: int, value: float) -> np.ndarray:
    """fvcore ``PadTransform(0, 0, w - W, h - H)``: constant padding at the bottom and right."""
    ph, pw = max(h - img.shape[0], 0), max(w - img.shape[1], 0)
    if ph == 0 and pw == 0:
        return img
    pad = ((0, ph), (0, pw)) + ((0, 0),) * (img.ndim - 2)
    return np.pad(img, pad, mode="constant", constant_values=value)


# ------------------------------------------------------------------------- SSD colour augmentation

def _convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def color_aug_ssd(img: np.ndarray, rng: AugRandom, brightness_delta: int = 32, contrast: tuple[float, float] = (0.5, 1.5),
                  saturation: tuple[float, float] = (0.5, 1.5), hue_delta: int = 18) -> np.ndarray:
    """SSD photometric distortion of an RGB uint8 image (detectron2
    ``projects/PointRend/point_rend/color_augmentation.py:49-98``): brightness, then contrast,
    saturation, hue in one of two orders, each applied with probability 1/2, in OpenCV's BGR / HSV."""
    import cv2

    img = img[:, :, [2, 1, 0]]  # RGB -> BGR (:50-51)

    def brightness(x: np.ndarray) -> np.ndarray:  # :70-75
        if rng.py.randrange(2):
            return _convert(x, beta=rng.py.uniform(-brightness_delta, brightness_delta))
        return x

    def contrast_(x: np.ndarray) -> np.ndarray:  # :77-80
        if rng.py.randrange(2):
            return _convert(x, alpha=rng.py.uniform(*contrast))
        return x

    def saturation_(x: np.ndarray) -> np.ndarray:  # :82-89
        if rng.py.randrange(2):
            x = cv2.cvtColor(x, cv2.COLOR_BGR2HSV)
            x[:, :, 1] = _convert(x[:, :, 1], alpha=rng.py.uniform(*saturation))
            return cv2.cvtColor(x, cv2.COLOR_HSV2BGR)
        return x

    def hue(x: np.ndarray) -> np.ndarray:  # :91-98
        if rng.py.randrange(2):
            x = cv2.cvtColor(x, cv2.COLOR_BGR2HSV)
            x[:, :, 0] = (x[:, :, 0].astype(int) + rng.py.randint(-hue_delta, hue_delta)) % 180
            return cv2.cvtColor(x, cv2.COLOR_HSV2BGR)
        return x

    img = brightness(img)  # :52
    if rng.py.randrange(2):  # :53-60
        img = hue(saturation_(contrast_(img)))
    else:
        img = contrast_(hue(saturation_(img)))
    return np.ascontiguousarray(img[:, :, [2, 1, 0]])


# ----------------------------------------------------------------------------- FC-CLIP LSJ

def lsj_panoptic(image: np.ndarray, pan_rgb: np.ndarray, rng: AugRandom, *, image_size: int = 1024,
                 min_scale: float = 0.1, max_scale: float = 2.0, flip: bool = True
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Large-scale jitter of an image and its panoptic PNG (fc-clip
    ``coco_panoptic_new_baseline_dataset_mapper.py:23-52`` and ``:119-140``).

    Steps: ``RandomFlip`` (horizontal, p 0.5; config ``INPUT.RANDOM_FLIP``); ``ResizeScale``: scale
    ``s ~ U(min_scale, max_scale)``, output size ``round((H, W) * min(S s / H, S s / W))``
    (detectron2 ``augmentation_impl.py:226-250``), Pillow bilinear for the image and nearest for the
    RGB-encoded panoptic PNG (uint8, so the Pillow path); ``FixedSizeCrop((S, S))``: offset
    ``round(max(size - S, 0) * u)`` with one ``u ~ U(0, 1)`` for both axes, then padding at the
    bottom/right with 128 (image) and 255 (every channel of the panoptic PNG: id 0xFFFFFF, no
    segment) (``augmentation_impl.py:307-370``).

    Args:
        image: (H, W, 3) uint8 RGB.
        pan_rgb: (H, W, 3) uint8 panoptic PNG (id = R + 256 G + 65536 B).
        rng: random sources (only ``rng.np`` is drawn from).

    Returns:
        (S, S, 3) uint8 image and (S, S, 3) uint8 panoptic PNG.
    """
    h, w = image.shape[:2]
    if flip and random_flip(rng):
        image, pan_rgb = image[:, ::-1], pan_rgb[:, ::-1]
    scale = rng.np.uniform(min_scale, max_scale)
    target = np.multiply((image_size, image_size), scale)
    out_scale = np.minimum(target[0] / h, target[1] / w)
    nh, nw = (int(v) for v in np.round(np.multiply((h, w), out_scale)).astype(int))
    image = resize_image(np.ascontiguousarray(image), nh, nw, Image.BILINEAR)
    pan_rgb = resize_image(np.ascontiguousarray(pan_rgb), nh, nw, Image.NEAREST)
    max_offset = np.maximum(np.subtract((nh, nw), (image_size, image_size)), 0)
    offset = np.round(np.multiply(max_offset, rng.np.uniform(0.0, 1.0))).astype(int)
    y0, x0 = int(offset[0]), int(offset[1])
    image = image[y0:y0 + image_size, x0:x0 + image_size]
    pan_rgb = pan_rgb[y0:y0 + image_size, x0:x0 + image_size]
    image = pad_bottom_right(image, image_size, image_size, 128)
    pan_rgb = pad_bottom_right(pan_rgb, image_size, image_size, 255)
    return np.ascontiguousarray(image), np.ascontiguousarray(pan_rgb)


# --------------------------------------------------------------- MaskFormer semantic (ZSSeg/ZegFormer)

@dataclass
class SemanticAug:
    """``INPUT.*`` of the MaskFormer semantic mapper (defaults: the COCO-Stuff configs of ZSSeg and
    ZegFormer, ``Base-COCOStuff164K-171.yaml``).

    Attributes:
        min_sizes: ``MIN_SIZE_TRAIN`` (short sides, 320..960).
        sampling: ``MIN_SIZE_TRAIN_SAMPLING`` "choice" or "range".
        max_size: ``MAX_SIZE_TRAIN``.
        crop: ``CROP.SIZE`` (h, w) of ``CROP.TYPE`` "absolute"; None disables the crop.
        single_category_max_area: ``CROP.SINGLE_CATEGORY_MAX_AREA`` (1.0: plain random crop).
        color_aug_ssd: ``COLOR_AUG_SSD``.
        size_divisibility: ``SIZE_DIVISIBILITY`` (the mapper pads to exactly this size; <= 0: no pad).
        ignore_label: label of ignored pixels (also the crop rule's ignored category).
    """

    min_sizes: Sequence[int] = tuple(int(x * 0.1 * 640) for x in range(5, 16))
    sampling: str = "choice"
    max_size: int = 2560
    crop: tuple[int, int] | None = (640, 640)
    single_category_max_area: float = 1.0
    color_aug_ssd: bool = True
    size_divisibility: int = 640
    ignore_label: int = IGNORE


def _crop_size(h: int, w: int, crop: tuple[int, int]) -> tuple[int, int]:
    # RandomCrop.get_crop_size, "absolute" (augmentation_impl.py:426-427)
    return min(crop[0], h), min(crop[1], w)


def maskformer_semantic(image: np.ndarray, sem: np.ndarray, rng: AugRandom, aug: SemanticAug = SemanticAug()
                        ) -> tuple[np.ndarray, np.ndarray]:
    """MaskFormer's training mapper for semantic segmentation (zsseg.baseline
    ``mask_former_semantic_dataset_mapper.py:64-158``).

    Steps: ``ResizeShortestEdge(MIN_SIZE_TRAIN, MAX_SIZE_TRAIN, "choice")`` (short side
    ``np.random.choice``; Pillow bilinear for the image, ``F.interpolate`` nearest for the float64
    labels); ``RandomCrop_CategoryAreaConstraint`` (absolute crop; with a max area share < 1, up to 10
    tries until more than one category is present and none but ignore covers that share,
    ``augmentation_impl.py:462-479``); ``ColorAugSSDTransform`` (:func:`color_aug_ssd`);
    ``RandomFlip``; then padding at the bottom/right to ``SIZE_DIVISIBILITY`` with 128 (image) and the
    ignore label (``:141-158``).

    Args:
        image: (H, W, 3) uint8 RGB.
        sem: (H, W) label map (any integer dtype; held as float64 as the mapper does).
        rng: random sources.
        aug: the ``INPUT`` settings.

    Returns:
        (h, w, 3) uint8 image and (h, w) int64 labels (padded size).
    """
    sem = sem.astype(np.float64)
    h, w = image.shape[:2]
    if aug.sampling == "range":
        short = int(rng.np.randint(aug.min_sizes[0], aug.min_sizes[1] + 1))
    else:
        short = int(rng.np.choice(aug.min_sizes))
    if short != 0:
        nh, nw = shortest_edge_size(h, w, short, aug.max_size)
        image = resize_image(image, nh, nw, Image.BILINEAR)
        sem = resize_float_nearest(sem, nh, nw)
    if aug.crop is not None:
        h, w = sem.shape
        if aug.single_category_max_area >= 1.0:
            ch, cw = _crop_size(h, w, aug.crop)
            y0 = int(rng.np.randint(h - ch + 1))
            x0 = int(rng.np.randint(w - cw + 1))
        else:
            for _ in range(10):
                ch, cw = _crop_size(h, w, aug.crop)
                y0 = int(rng.np.randint(h - ch + 1))
                x0 = int(rng.np.randint(w - cw + 1))
                labels, cnt = np.unique(sem[y0:y0 + ch, x0:x0 + cw], return_counts=True)
                cnt = cnt[labels != aug.ignore_label]
                if len(cnt) > 1 and np.max(cnt) < np.sum(cnt) * aug.single_category_max_area:
                    break
        image, sem = image[y0:y0 + ch, x0:x0 + cw], sem[y0:y0 + ch, x0:x0 + cw]
    if aug.color_aug_ssd:
        image = color_aug_ssd(np.ascontiguousarray(image), rng)
    if random_flip(rng):
        image, sem = image[:, ::-1], sem[:, ::-1]
    labels = sem.astype(np.int64)
    if aug.size_divisibility > 0:
        image = pad_bottom_right(image, aug.size_divisibility, aug.size_divisibility, 128)
        labels = pad_bottom_right(labels, aug.size_divisibility, aug.size_divisibility, aug.ignore_label)
    return np.ascontiguousarray(image), np.ascontiguousarray(labels)


# ------------------------------------------------------------------- ZSSeg prompt-learning crops

def _mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    # mask2box (zsseg.baseline mask_former/data/augmentations.py:14-24): x, y, w, h
    cols = np.nonzero(mask.sum(axis=0))[0]
    if len(cols) == 0:
        return None
    rows = np.nonzero(mask.sum(axis=1))[0]
    return int(cols.min()), int(rows.min()), int(cols.max() + 1 - cols.min()), int(rows.max() + 1 - rows.min())


def _expand_box(x: int, y: int, w: int, h: int, ratio: float, max_h: int, max_w: int) -> list[int]:
    # expand_box (augmentations.py:27-42)
    cx, cy = x + 0.5 * w, y + 0.5 * h
    w, h = w * ratio, h * ratio
    box = [cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h]
    box[1], box[3] = max(0, box[1]), min(max_h - 1, box[3])
    box[0], box[2] = max(0, box[0]), min(max_w - 1, box[2])
    box[2], box[3] = box[2] - box[0], box[3] - box[1]
    return [int(b) for b in box]


def zsseg_prompt_crop(image: np.ndarray, sem: np.ndarray, category: int, rng: AugRandom, *,
                      size: tuple[int, int] = (224, 244), expand_ratio: float = 1.0,
                      scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)
                      ) -> tuple[np.ndarray, np.ndarray] | None:
    """ZSSeg's prompt-learning sample: one (image, class) pair cropped around the class mask
    (zsseg.baseline ``mask_former_binary_semantic_dataset_mapper.py:66-192``).

    Steps: ``CropImageWithMask(MASK_EXPAND_RATIO)``: the tight box of ``sem == category`` expanded
    by the ratio (``np.random.choice`` of the (ratio, ratio) pair is drawn), clipped to the image
    with an inclusive right/bottom bound (``augmentations.py:45-65``); ``RandomResizedCrop(size)``:
    up to 10 draws of an area share ``U(0.08, 1)`` and a log-uniform aspect in (3/4, 4/3), else the
    centre-crop fallback, then a resize to ``(h, w) = (size[1], size[0])`` -- the official
    ``ResizeTransform(h, w, size[1], size[0])`` makes ``MIN_SIZE_TRAIN (224, 244)`` 244 high and 224
    wide (``augmentations.py:92-152``); ``RandomFlip``. Labels stay float64 (nearest resize through
    ``F.interpolate``).

    Args:
        image: (H, W, 3) uint8 RGB; sem: (H, W) labels; category: the class of the sample.

    Returns:
        (h, w, 3) uint8 crop and (h, w) bool mask of ``category``; None when the mask vanished in the
        crop (the official mapper returns None and detectron2's ``MapDataset`` draws another sample).
    """
    sem = sem.astype(np.float64)
    box = _mask_box(sem == category)
    if box is None:
        return None
    ratios = (expand_ratio, expand_ratio)
    er = float(rng.np.choice(ratios))
    x, y, w, h = _expand_box(*box, er, *sem.shape[:2])
    w, h = max(w, 1), max(h, 1)
    image, sem = image[y:y + h, x:x + w], sem[y:y + h, x:x + w]
    height, width = image.shape[:2]
    area = height * width
    log_ratio = np.log(np.array(ratio))
    ok = False
    for _ in range(10):
        target_area = area * rng.np.uniform(scale[0], scale[1])
        aspect = np.exp(rng.np.uniform(log_ratio[0], log_ratio[1]))
        cw = int(round(math.sqrt(target_area * aspect)))
        chh = int(round(math.sqrt(target_area / aspect)))
        if 0 < cw <= width and 0 < chh <= height:
            i = int(rng.np.randint(0, width - cw + 1))
            j = int(rng.np.randint(0, height - chh + 1))
            ok = True
            break
    if not ok:
        in_ratio = float(width) / float(height)
        if in_ratio < min(ratio):
            cw, chh = width, int(round(width / min(ratio)))
        elif in_ratio > max(ratio):
            chh, cw = height, int(round(height * max(ratio)))
        else:
            cw, chh = width, height
        i, j = (width - cw) // 2, (height - chh) // 2
    image, sem = image[j:j + chh, i:i + cw], sem[j:j + chh, i:i + cw]
    out_h, out_w = size[1], size[0]
    image = resize_image(np.ascontiguousarray(image), out_h, out_w, Image.BILINEAR)
    sem = resize_float_nearest(sem, out_h, out_w)
    if random_flip(rng):
        image, sem = image[:, ::-1], sem[:, ::-1]
    mask = sem.astype(np.int64) == category
    if not mask.any():
        return None
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)
